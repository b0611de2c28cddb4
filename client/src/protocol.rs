//! What the `ferry` commands and `ferry service` say over the service's Unix
//! socket: one JSON request line, one JSON answer line, then the connection
//! closes. Every request carries the protocol version `v`; a service that
//! speaks another answers with an error that says so.
//!
//! ```text
//! > {"v":1,"op":"prepare","session_id":12}
//! < {"v":1,"answer":"prepared","prepare_id":3,"public_key":"...","candidates":[]}
//! > {"v":1,"op":"up","prepare_id":3,"config":{...}}
//! < {"v":1,"answer":"tunnel","tunnel":{...}}
//! > {"v":1,"op":"status"}
//! < {"v":1,"answer":"tunnels","tunnels":[...]}
//! ```
//!
//! The caller is who the kernel says it is (`SO_PEERCRED`): every tunnel
//! belongs to the uid that prepared it, and no other uid sees or drives it.

use serde::{Deserialize, Serialize};

use ferry_api::ClientConfig;

pub const VERSION: u32 = 1;
/// Where the service listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ferry/client.sock";
/// The longest line either side reads (a configuration is a few KiB).
pub const MAX_LINE: usize = 256 * 1024;

#[derive(Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Make a key pair and a WireGuard socket for a session, and ask the
    /// STUN servers (`IP:port`) what they see of that socket; answered with
    /// [`Answer::Prepared`]. The private key stays in the service.
    Prepare {
        session_id: u64,
        #[serde(default)]
        stun_servers: Vec<String>,
    },
    /// Bring the prepared tunnel up with the configuration the cloud issued
    /// for its public key; answered with [`Answer::Tunnel`]. With `cloud`,
    /// the service watches the configuration there (with its watch token,
    /// never the user's login) and takes the tunnel down when it ends.
    Up {
        prepare_id: u64,
        config: Box<ClientConfig>,
        #[serde(default)]
        cloud: Option<CloudLink>,
    },
    /// Forget a preparation whose configuration never came.
    Cancel { prepare_id: u64 },
    /// Take the caller's tunnels down: the one of `session` (an id or a
    /// name), or all of them. Answered with [`Answer::Tunnels`], the ones
    /// taken down.
    Down { session: Option<String> },
    /// The caller's tunnels, live and recently ended.
    Status,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the configuration: it holds the relay's token.
        match self {
            Request::Prepare { session_id, .. } => write!(f, "prepare(session {session_id})"),
            Request::Up { prepare_id, config, .. } => {
                write!(f, "up(prepared {prepare_id}, configuration {})", config.config_id)
            }
            Request::Cancel { prepare_id } => write!(f, "cancel({prepare_id})"),
            Request::Down { session } => write!(f, "down({session:?})"),
            Request::Status => write!(f, "status"),
        }
    }
}

/// Where the cloud that issued a configuration is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudLink {
    /// `https://host:port`.
    pub url: String,
    /// The SHA-256 fingerprint of its certificate, for https.
    pub pin: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Prepared {
        prepare_id: u64,
        /// base64, as the cloud wants it in the configuration request.
        public_key: String,
        /// This machine's direct-path candidates (`IP:port` of the tunnel's
        /// UDP socket): the host ones and the server-reflexive ones.
        candidates: Vec<String>,
        /// The server-reflexive ones alone: what the STUN servers saw.
        #[serde(default)]
        reflexive: Vec<String>,
    },
    Tunnel {
        tunnel: Box<TunnelView>,
    },
    Tunnels {
        tunnels: Vec<TunnelView>,
    },
    Done,
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request's version or shape is not one this service knows.
    Protocol,
    /// No such preparation or tunnel (of this caller).
    NotFound,
    /// The configuration cannot be used (bad address, key, endpoint).
    Invalid,
    /// Too many tunnels or preparations for this user.
    Limit,
    /// The system refused (TUN device, routes).
    Failed,
}

impl Answer {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Answer {
        Answer::Error { code, message: message.into() }
    }
}

/// How a tunnel's datagrams travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Straight to the gateway's address.
    Direct,
    /// Through the relay's UDP allocation.
    RelayUdp,
    /// Through the relay's WebSocket (TCP 443).
    RelayWebsocket,
}

impl PathKind {
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::RelayUdp => "relay (UDP)",
            PathKind::RelayWebsocket => "relay (WebSocket)",
        }
    }
}

/// Why a tunnel is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// The configuration's time ran out.
    Expired,
    /// `ferry disconnect`.
    Disconnected,
    /// A new `ferry connect` to the same session replaced it.
    Replaced,
    /// The cloud says the session ended (by a user, an admin, the customer).
    Ended,
    /// The cloud took the configuration back.
    Revoked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub cause: EndCause,
    /// In words: "expired", "ended by the customer (switch off)".
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    pub name: String,
    pub proxy_address: String,
    /// `tcp 8080`, `udp 161-162`, `icmp`.
    pub service: String,
}

/// One tunnel as `ferry status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunnelView {
    pub session_id: u64,
    pub session_name: String,
    pub config_id: u64,
    /// The TUN device.
    pub interface: String,
    /// This end's WireGuard public key (the private one stays in the service).
    pub public_key: String,
    /// This end's tunnel address.
    pub address: String,
    pub targets: Vec<TargetView>,
    /// Set once the tunnel is down; it stays listed for a while with why.
    pub ended: Option<Ended>,
    pub path: Option<PathKind>,
    /// Why this path (`verified`, `direct path stopped answering`, `no
    /// handshake over the UDP relay`...).
    #[serde(default)]
    pub path_why: Option<String>,
    /// Milliseconds since the epoch when the path took effect.
    #[serde(default)]
    pub path_since_ms: Option<u64>,
    /// Where the gateway's datagrams go now: the gateway's address (direct),
    /// the relay's UDP address, or the relay's WebSocket URL.
    pub peer_endpoint: Option<String>,
    /// Milliseconds since the epoch of the last completed handshake.
    pub last_handshake_ms: Option<u64>,
    /// The round trip: of the path probes on a direct path, of the last
    /// handshake through a relay.
    pub rtt_ms: Option<f64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// When the configuration expires (milliseconds since the epoch).
    pub expires_ms: u64,
    pub connected_ms: u64,
    /// How the watch on the configuration at the cloud is doing ("watching",
    /// "cloud unreachable, retrying: ..."); none without a watch.
    #[serde(default)]
    pub cloud: Option<String>,
    /// This machine's direct-path candidates now (`IP:port`), as the cloud
    /// passes them to the gateway.
    #[serde(default)]
    pub local_candidates: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let line = r#"{"v":1,"op":"prepare","session_id":12}"#;
        let parsed: Envelope<Request> = serde_json::from_str(line).unwrap();
        assert_eq!(parsed.v, 1);
        assert!(matches!(parsed.body, Request::Prepare { session_id: 12, .. }));
        let parsed: Envelope<Request> =
            serde_json::from_str(r#"{"v":1,"op":"down","session":null}"#).unwrap();
        assert!(matches!(parsed.body, Request::Down { session: None }));
        assert!(serde_json::from_str::<Envelope<Request>>(r#"{"v":1,"op":"launch"}"#).is_err());

        let answer = Envelope { v: VERSION, body: Answer::error(ErrorCode::NotFound, "no tunnel") };
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v": 1, "answer": "error", "code": "not_found", "message": "no tunnel"})
        );
    }
}
