//! The REST types of Ferry's cloud API (`/api/v1`) that clients read and
//! write: login and tokens, the sessions a user sees, issued configurations
//! and their status, problem documents. The cloud serves exactly these types
//! (it re-uses them, it does not copy them), so a client that depends on this
//! crate alone reads and writes what the server does.
//!
//! With the feature `openapi` every type also derives utoipa's `ToSchema`,
//! for the cloud's generated OpenAPI document.

pub mod auth;
pub mod config;
pub mod problem;
pub mod sessions;
pub mod targets;
pub mod users;

pub use auth::{
    ApiToken, CreatedToken, LoginRequest, NewToken, PasswordChange, RefreshRequest, Scope, TokenResponse,
    TotpCode, TotpEnrolment,
};
pub use config::{
    CandidateError, CandidatesUpdate, ClientConfig, ConfigRelay, ConfigRequest, ConfigState, ConfigStatus,
    ConfigTarget, MAX_CANDIDATES, PRIVATE_KEY_PLACEHOLDER, StunServers, parse_candidate, parse_candidates,
    wg_quick,
};
pub use problem::Problem;
pub use sessions::{EndReason, SessionView, State};
pub use targets::{PortRange, Protocol};
pub use users::{Role, UserView};
