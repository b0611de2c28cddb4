//! The few REST types of the cloud's `/api/v1` that the client reads and
//! writes, mirroring the JSON of `cloud/src/http/{auth,sessions,users}.rs`.
//!
//! Stand-in for the crate `ferry-api`: the names and fields are those of that
//! crate, so that switching to it is deleting this file and importing
//! `ferry_api` in its place. Unknown fields are ignored when reading, so a
//! newer cloud stays readable.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
    /// The current TOTP code, for accounts with a second factor.
    pub totp: Option<String>,
}

#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    /// Single use: exchanged at /api/v1/auth/refresh for a new pair.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserView,
}

/// Also the body of a logout, which revokes the token.
#[derive(Serialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Administrator,
    RemoteConnectAdministrator,
    RemoteConnectUser,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserView {
    pub id: u64,
    pub name: String,
    pub role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Prepared,
    WaitingForApproval,
    Active,
    Ended,
    Expired,
}

/// Why a session ended; `by` names the kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum EndReason {
    User { name: String },
    Customer,
    Denied,
    UserDisabled { name: String },
    ApprovalTimeout,
    Duration,
}

/// A session as `GET /api/v1/sessions` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionView {
    pub id: u64,
    pub name: String,
    pub gateway_id: u64,
    pub targets: Vec<String>,
    pub max_duration_s: u64,
    pub approval_required: bool,
    pub state: State,
    pub started_by: Option<String>,
    pub expires_ms: Option<u64>,
    pub end_reason: Option<EndReason>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigRequest {
    /// The client's WireGuard public key (base64); the private key stays.
    pub public_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigTarget {
    pub name: String,
    pub proxy_address: IpAddr,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
}

// No `Debug`: it holds the WebSocket token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRelay {
    pub udp: Option<SocketAddr>,
    pub websocket_url: String,
    pub websocket_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_pin: Option<String>,
}

// No `Debug`: it holds the relay's WebSocket token (and, from ferry-api on,
// the watch token).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    pub config_id: u64,
    pub session_id: u64,
    pub session_name: String,
    /// The configuration stops working then (milliseconds since the epoch).
    pub expires_ms: u64,
    /// The client's tunnel address, a /32.
    pub address: String,
    /// The gateway's WireGuard public key.
    pub peer_public_key: String,
    /// Only the session's targets (split tunnelling).
    pub allowed_ips: Vec<String>,
    /// Direct endpoint candidates of the gateway.
    pub endpoints: Vec<String>,
    pub relay: Option<ConfigRelay>,
    pub persistent_keepalive: u16,
    pub targets: Vec<ConfigTarget>,
}

/// The body of every error answer (RFC 9457).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// `urn:ferry:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// The stable part of `type` that clients match on, e.g. `switch-off`.
    pub fn slug(&self) -> &str {
        self.kind.strip_prefix("urn:ferry:problem:").unwrap_or(&self.kind)
    }
}

/// Stands for the private key in a `wg-quick` file: the cloud never has it.
pub const PRIVATE_KEY_PLACEHOLDER: &str = "__FERRY_PRIVATE_KEY__";
