//! Logging in, refreshing and logging out, the caller's password and second
//! factor, and scoped API tokens.

use serde::{Deserialize, Serialize};

use crate::users::UserView;

#[derive(Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub password: String,
    /// The current TOTP code, for accounts with a second factor.
    #[cfg_attr(feature = "openapi", schema(max_length = 16))]
    pub totp: Option<String>,
}

// By hand so that the password can never reach a log through `{:?}`.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// A signed access token, valid for `expires_in` seconds.
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    /// Single use: exchange it at /api/v1/auth/refresh for a new pair.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserView,
}

// By hand so that the tokens can never reach a log through `{:?}`.
impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

// Also the body of a logout, which revokes the token.
#[derive(Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub refresh_token: String,
}

#[derive(Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub current_password: String,
    /// 12 to 1024 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 12, max_length = 1024))]
    pub new_password: String,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpEnrolment {
    /// Base32 secret, shown this once.
    pub secret: String,
    pub otpauth_url: String,
}

#[derive(Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    #[cfg_attr(feature = "openapi", schema(max_length = 16))]
    pub code: String,
}

/// What a token may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scope {
    #[serde(rename = "sessions:read")]
    SessionsRead,
    #[serde(rename = "sessions:write")]
    SessionsWrite,
    #[serde(rename = "gateways:read")]
    GatewaysRead,
    #[serde(rename = "gateways:write")]
    GatewaysWrite,
    #[serde(rename = "users:read")]
    UsersRead,
    #[serde(rename = "users:write")]
    UsersWrite,
    #[serde(rename = "audit:read")]
    AuditRead,
}

impl Scope {
    pub const fn label(self) -> &'static str {
        match self {
            Scope::SessionsRead => "sessions:read",
            Scope::SessionsWrite => "sessions:write",
            Scope::GatewaysRead => "gateways:read",
            Scope::GatewaysWrite => "gateways:write",
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::AuditRead => "audit:read",
        }
    }
}

// An API token as the API shows it: never its secret or the secret's hash.
// (Plain comments on types whose OpenAPI schema has no description.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    pub id: u64,
    /// The creator, whose rights the token uses.
    pub user_id: u64,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

#[derive(Deserialize, Serialize, Debug)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1 to 64 characters, not all spaces.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64, pattern = r"\S"))]
    pub name: String,
    /// 1 to 16 scopes.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 16))]
    pub scopes: Vec<Scope>,
    /// Lifetime in days (1 to 3650); none for no expiry.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3650))]
    pub expires_in_days: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub token: ApiToken,
    /// The bearer secret, shown this once.
    pub secret: String,
}
