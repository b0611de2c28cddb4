//! The local control socket's messages: one JSON [`Request`] line from the
//! client, one JSON [`Response`] line from the daemon, then the connection
//! closes.
//!
//! ```text
//! > {"type":"remote","on":true}
//! < {"type":"switch","on":true,"changed":true}
//! ```

use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The switch: answered with [`Response::Switch`] (`changed: false`).
    Status,
    /// Turns remote maintenance on or off; off ends every session at once.
    /// Answered with [`Response::Switch`].
    Remote { on: bool },
    /// Approves a session waiting for the customer. Answered with
    /// [`Response::Done`] or [`Response::Error`].
    Approve { session: u64 },
    /// Denies a session waiting for the customer.
    Deny { session: u64 },
    /// Ends one active session: it stops forwarding, and the cloud ends it
    /// as ended by the customer. Answered with [`Response::Done`] or
    /// [`Response::Error`].
    End { session: u64 },
    /// Answered with [`Response::Sessions`].
    Sessions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Switch { on: bool, changed: bool },
    Done { message: String },
    Sessions { sessions: Vec<SessionReport> },
    Error { message: String },
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error { message: message.into() }
    }
}

/// One session as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    pub id: u64,
    pub name: String,
    /// Who started it, when the cloud says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// How long it may run once active, in seconds, when the cloud says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
    /// `active`, `waiting_for_approval`, `denied`, `ended` (by the customer
    /// here), `expired`, `switched_off` or `clock_unknown` (the cloud not
    /// reached since a reboot: nothing forwards).
    pub state: String,
    pub expires_ms: u64,
    /// How long until `expires_ms` by the cloud's clock as the daemon keeps
    /// it (the gateway's own wall clock may be off); left out while the
    /// daemon does not know the cloud's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_ms: Option<u64>,
    pub approval_required: bool,
    pub peers: Vec<PeerReport>,
    pub targets: Vec<TargetReport>,
}

/// One technician's WireGuard peer in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub user: String,
    /// The peer's WireGuard public key, base64.
    pub public_key: String,
    pub tunnel_address: String,
    /// Where its packets come from, once known.
    pub endpoint: Option<String>,
    /// The path its packets take: `direct`, `udp-relay`,
    /// `websocket-relay` or `none`.
    pub transport: String,
    /// Why the path is the one it is (`verified`, `dead`, `relay`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_why: Option<String>,
    /// Round-trip time in microseconds: the direct path's probes, or the
    /// last handshake's over a relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    pub last_handshake_s_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One whitelisted device reachable in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    /// Where technicians reach it inside the tunnel.
    pub proxy_address: String,
    /// Its real address in the machine network.
    pub address: String,
    pub protocol: String,
    /// e.g. `502, 8080-8090`, or `all`.
    pub ports: String,
    pub to_target_bytes: u64,
    pub from_target_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_json() {
        assert_eq!(serde_json::to_string(&Request::Status).unwrap(), r#"{"type":"status"}"#);
        assert_eq!(
            serde_json::to_string(&Request::Remote { on: true }).unwrap(),
            r#"{"type":"remote","on":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"type":"approve","session":12}"#).unwrap(),
            Request::Approve { session: 12 }
        );
        assert!(serde_json::from_str::<Request>(r#"{"type":"remote"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Response::Switch { on: false, changed: true }).unwrap(),
            r#"{"type":"switch","on":false,"changed":true}"#
        );
    }
}
