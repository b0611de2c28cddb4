//! Who is calling: login with lockout, short-lived signed access tokens,
//! rotating refresh tokens, scoped API tokens and TOTP. Everything here is
//! independent of HTTP; `crate::http` turns it into endpoints.

pub mod access;
pub mod api_tokens;
pub mod console;
pub mod login;
pub mod refresh;
pub mod secret;
pub mod totp;

pub use access::{ACCESS_TTL_MS, AccessClaims, AccessKey};
pub use api_tokens::{ApiToken, Scope};
pub use login::{LoginOutcome, LoginPolicy, UserLogin};
pub use refresh::REFRESH_TTL_MS;
