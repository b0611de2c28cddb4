//! Roles and the user view.

use serde::{Deserialize, Serialize};

/// The three roles, from most to least powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages gateways, users and rights, and everything below.
    Administrator,
    /// Prepares, starts, ends and watches sessions on existing gateways.
    RemoteConnectAdministrator,
    /// Starts and uses the sessions released to them.
    RemoteConnectUser,
}

impl Role {
    pub const ALL: [Role; 3] =
        [Role::Administrator, Role::RemoteConnectAdministrator, Role::RemoteConnectUser];

    pub const fn label(self) -> &'static str {
        match self {
            Role::Administrator => "Administrator",
            Role::RemoteConnectAdministrator => "remoteConnect Administrator",
            Role::RemoteConnectUser => "remoteConnect User",
        }
    }
}

/// A user as the API shows it: never the password hash or TOTP secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    pub id: u64,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_ms: u64,
    pub totp_enabled: bool,
    pub locked_until_ms: Option<u64>,
    /// Set for accounts made with a one-time password.
    pub must_change_password: bool,
}
