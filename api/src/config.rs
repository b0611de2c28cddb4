//! Issued configurations: what a client asks for, what it gets, and how it
//! watches one until it ends (with the configuration's own watch token).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    sessions::{EndReason, State},
    targets::{PortRange, Protocol},
};

/// Most direct-path candidates a client or gateway reports.
pub const MAX_CANDIDATES: usize = 16;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    /// The client's WireGuard public key (base64, as `wg pubkey` prints).
    /// The private key never leaves the client.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))]
    pub public_key: String,
    /// The client's direct-path candidates as `IP:port`: its host addresses
    /// and what the relays' STUN servers saw, with the port of its WireGuard
    /// socket. At most 16; the gateway probes them.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub candidates: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigTarget {
    pub name: String,
    /// Reach the target at this address through the tunnel.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub proxy_address: IpAddr,
    pub protocol: Protocol,
    pub ports: Vec<PortRange>,
}

// No `Debug`: it holds the WebSocket token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigRelay {
    /// The relay allocation's UDP endpoint for the client side.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub udp: Option<SocketAddr>,
    pub websocket_url: String,
    pub websocket_token: String,
    /// SHA-256 fingerprint of the relay's certificate for a `wss://` URL
    /// (`ferry-relay ws-bridge --pin`); absent when the relay reported none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_pin: Option<String>,
}

// No `Debug`: it holds the relay's WebSocket token and the watch token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientConfig {
    pub config_id: u64,
    pub session_id: u64,
    pub session_name: String,
    /// The configuration stops working then (the session's end).
    pub expires_ms: u64,
    /// The client's tunnel address, a /32.
    pub address: String,
    /// The gateway's WireGuard public key.
    pub peer_public_key: String,
    /// Only the session's targets: everything else stays on the client's
    /// own network (split tunnelling).
    pub allowed_ips: Vec<String>,
    /// Direct endpoint candidates of the gateway (STUN).
    pub endpoints: Vec<String>,
    pub relay: Option<ConfigRelay>,
    pub persistent_keepalive: u16,
    pub targets: Vec<ConfigTarget>,
    /// The relays' STUN servers (`IP:port`), for the client's
    /// server-reflexive candidates after it moves.
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// Authenticates this configuration's own endpoints under
    /// `/api/v1/configs/{config_id}` (`Authorization: Bearer <watch_token>`):
    /// its status and events, new candidates, revocation. Shown this once;
    /// it works for nothing else, and not after the configuration expired.
    #[serde(default)]
    pub watch_token: String,
}

/// Where an issued configuration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    /// In force: the gateway has the peer.
    Live,
    /// The session ended (by a user, the customer, a denial or a disabled
    /// user): see `end_reason`.
    Ended,
    /// Taken back while the session went on: revoked by its client, replaced
    /// by a newer configuration of the same user, or withdrawn from the user.
    Revoked,
    /// Its time ran out.
    Expired,
}

impl ConfigState {
    /// Whether it can never become live again: a watcher stops here.
    pub fn is_final(self) -> bool {
        self != ConfigState::Live
    }

    pub fn label(self) -> &'static str {
        match self {
            ConfigState::Live => "live",
            ConfigState::Ended => "ended",
            ConfigState::Revoked => "revoked",
            ConfigState::Expired => "expired",
        }
    }
}

/// An issued configuration as its client watches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigStatus {
    pub config_id: u64,
    pub session_id: u64,
    pub state: ConfigState,
    /// Why the session ended, when the configuration ended or expired with it.
    pub end_reason: Option<EndReason>,
    /// The same or another reason in words (for example who revoked it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub session_state: State,
    pub expires_ms: u64,
    /// The gateway's direct-path candidates (`IP:port`) while live.
    pub gateway_endpoints: Vec<String>,
    /// Whether the gateway's control channel to the cloud is up.
    pub gateway_connected: bool,
}

/// New direct-path candidates of a client, after it moved.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CandidatesUpdate {
    /// `IP:port`, at most 16; they replace the previous ones.
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub candidates: Vec<String>,
}

/// The STUN servers of the relays that are connected now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StunServers {
    /// `IP:port`.
    pub servers: Vec<String>,
}

/// Why a candidate is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CandidateError {
    TooMany { count: usize },
    NotAnAddress { index: usize, text: String },
    Unusable { index: usize, addr: SocketAddr, why: &'static str },
}

impl std::fmt::Display for CandidateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CandidateError::TooMany { count } => {
                write!(f, "`candidates` lists {count} addresses, at most {MAX_CANDIDATES} are allowed")
            }
            CandidateError::NotAnAddress { index, text } => {
                // Cut, so that a hostile entry cannot fill the answer or a log.
                let shown: String = text.chars().take(64).collect();
                write!(f, "`candidates[{index}]`: {shown:?} is not an IP:port address")
            }
            CandidateError::Unusable { index, addr, why } => {
                write!(f, "`candidates[{index}]`: {addr} is {why}, not a peer's address")
            }
        }
    }
}

impl std::error::Error for CandidateError {}

/// One candidate: a unicast `IP:port` another host could send to. The
/// unspecified, loopback, multicast and broadcast addresses and port 0 are
/// refused: a gateway probing them would reach itself or nobody.
pub fn parse_candidate(index: usize, text: &str) -> Result<SocketAddr, CandidateError> {
    let addr: SocketAddr =
        text.parse().map_err(|_| CandidateError::NotAnAddress { index, text: text.to_string() })?;
    let ip = addr.ip().to_canonical();
    let why = if addr.port() == 0 {
        Some("on port 0")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    };
    match why {
        Some(why) => Err(CandidateError::Unusable { index, addr, why }),
        None => Ok(addr),
    }
}

/// A client's candidates, checked, in their order, without repeats.
pub fn parse_candidates(list: &[String]) -> Result<Vec<SocketAddr>, CandidateError> {
    if list.len() > MAX_CANDIDATES {
        return Err(CandidateError::TooMany { count: list.len() });
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for (index, text) in list.iter().enumerate() {
        let addr = parse_candidate(index, text)?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Stands for the private key in a `wg-quick` file: the cloud never has it.
pub const PRIVATE_KEY_PLACEHOLDER: &str = "__FERRY_PRIVATE_KEY__";

/// Renders a `wg-quick` file. The endpoint is the relay's client side if
/// there is one, else the first direct candidate.
pub fn wg_quick(config: &ClientConfig, public_key: &str) -> String {
    let mut out = format!(
        "# Ferry session \"{}\" ({}), configuration {}, valid until {} ms since the epoch.\n",
        config.session_name, config.session_id, config.config_id, config.expires_ms
    );
    for t in &config.targets {
        let ports: Vec<String> = t
            .ports
            .iter()
            .map(|p| if p.first == p.last { p.first.to_string() } else { format!("{}-{}", p.first, p.last) })
            .collect();
        out += &format!("# target {}: {} {:?} {}\n", t.name, t.proxy_address, t.protocol, ports.join(","));
    }
    out += &format!(
        "[Interface]\n# Put the private key of {public_key} on the next line in place of the placeholder.\nPrivateKey = {PRIVATE_KEY_PLACEHOLDER}\nAddress = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
        config.address,
        config.peer_public_key,
        config.allowed_ips.join(", ")
    );
    let endpoint = config
        .relay
        .as_ref()
        .and_then(|r| r.udp.map(|u| u.to_string()))
        .or_else(|| config.endpoints.first().cloned());
    match endpoint {
        Some(endpoint) => out += &format!("Endpoint = {endpoint}\n"),
        None => out += "# No endpoint yet: neither a relay allocation nor a direct candidate is known.\n",
    }
    out += &format!("PersistentKeepalive = {}\n", config.persistent_keepalive);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_must_be_unicast_addresses_with_a_port() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_candidates(&list(&["192.0.2.7:51820", "[2001:db8::7]:51820", "192.0.2.7:51820"])).unwrap(),
            vec!["192.0.2.7:51820".parse::<SocketAddr>().unwrap(), "[2001:db8::7]:51820".parse().unwrap()],
            "in order, without repeats"
        );
        for (bad, why) in [
            ("0.0.0.0:5", "unspecified"),
            ("[::]:5", "unspecified"),
            ("127.0.0.1:5", "loopback"),
            ("[::ffff:127.0.0.1]:5", "loopback"),
            ("224.0.0.1:5", "multicast"),
            ("[ff02::1]:5", "multicast"),
            ("255.255.255.255:5", "broadcast"),
            ("192.0.2.7:0", "port 0"),
        ] {
            let err = parse_candidates(&list(&["192.0.2.1:1", bad])).unwrap_err();
            assert!(matches!(err, CandidateError::Unusable { index: 1, .. }), "{bad}: {err}");
            let text = err.to_string();
            assert!(text.starts_with("`candidates[1]`:") && text.contains(why), "{text}");
        }
        for bad in ["192.0.2.7", "host:51820", "", "192.0.2.7:99999"] {
            let err = parse_candidates(&list(&[bad])).unwrap_err();
            assert!(matches!(err, CandidateError::NotAnAddress { index: 0, .. }), "{bad}: {err}");
        }
        let long = "x".repeat(10_000);
        assert!(parse_candidates(&list(&[&long])).unwrap_err().to_string().len() < 200);
        let many: Vec<String> = (1..=17).map(|i| format!("192.0.2.{i}:1")).collect();
        assert_eq!(parse_candidates(&many).unwrap_err(), CandidateError::TooMany { count: 17 });
        assert_eq!(parse_candidates(&many[..16]).unwrap().len(), 16);
    }

    #[test]
    fn a_config_status_reads_as_documented() {
        let status = ConfigStatus {
            config_id: 3,
            session_id: 2,
            state: ConfigState::Ended,
            end_reason: Some(EndReason::Customer { session_only: false }),
            detail: None,
            session_state: State::Ended,
            expires_ms: 10,
            gateway_endpoints: vec![],
            gateway_connected: true,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "ended");
        assert_eq!(json["end_reason"]["by"], "customer");
        assert_eq!(json["session_state"], "ended");
        assert!(json.get("detail").is_none());
        assert_eq!(serde_json::from_value::<ConfigStatus>(json).unwrap(), status);
        assert!(ConfigState::Revoked.is_final() && !ConfigState::Live.is_final());
    }
}
