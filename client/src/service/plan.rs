//! What the service makes of a configuration before it touches the system.
//!
//! The configuration reaches the service through the caller, who could have
//! written any of it: so only what a Ferry cloud issues is accepted. The
//! tunnel address and the proxy addresses are single IPv4 addresses in the
//! shared address space of RFC 6598 (100.64.0.0/10), where the cloud's pool
//! is: a user cannot make the service put 8.8.8.8 on a TUN device and so take
//! it away from the other users of the machine. The routes only ever change
//! the caller's own traffic (see `routing`).
//!
//! How the datagrams travel is the traversal's (`ferry_traversal`): the
//! relay's UDP allocation at once, its WebSocket (TCP 443) when no handshake
//! comes over UDP, and a direct path to one of the gateway's candidates once
//! it is verified both ways. A configuration needs one of those: a relay, or
//! a gateway candidate. Without a relay, WireGuard starts at the gateway's
//! first candidate.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use ferry_api::{ClientConfig, ConfigRelay, PortRange, Protocol};
use ferry_connect::{pin::parse_fingerprint, ws::WsRelayOptions};
use ferry_traversal::{PeerPlan, RelayPlan, TransportMode, WebSocketRelay};
use ferry_tunnel::{PublicKey, proto::IpNet};

use crate::protocol::TargetView;

/// RFC 6598's shared address space, which holds the cloud's tunnel pool.
const SHARED_SPACE: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// The prefixes that are never a direct-path candidate: the shared address
/// space (another tunnel's address, the cloud's pool).
pub fn never_candidates() -> Vec<IpNet> {
    let (net, len) = SHARED_SPACE;
    IpNet::new(IpAddr::V4(net), len).into_iter().collect()
}
/// The cloud gives a session at most 64 targets.
const MAX_TARGETS: usize = 64;
const MAX_NAME: usize = 128;

/// A configuration the service can carry out.
#[derive(Debug)]
pub struct Plan {
    pub config_id: u64,
    pub session_id: u64,
    pub session_name: String,
    pub expires_ms: u64,
    pub address: IpAddr,
    pub peer: PublicKey,
    /// The proxy addresses: the only destinations routed into the tunnel.
    pub allowed: Vec<IpNet>,
    /// The traversal's part: the relay (UDP, WebSocket), the gateway's
    /// candidates, the transport mode.
    pub route: PeerPlan,
    /// Where WireGuard sends before the traversal chose a path: with a
    /// relay none (the traversal points the peer at the relay at once),
    /// without one the gateway's first candidate.
    pub first_endpoint: Option<SocketAddr>,
    /// The relay's WebSocket URL in use, for `ferry status` (its virtual
    /// address in the engine means nothing to a user).
    pub websocket_url: Option<String>,
    /// What of the configuration is not used, and why.
    pub notes: Vec<String>,
    pub keepalive: Option<Duration>,
    pub targets: Vec<TargetView>,
}

fn in_shared_space(ip: IpAddr) -> bool {
    let (net, len) = SHARED_SPACE;
    match ip {
        IpAddr::V4(v4) => u32::from(v4) >> (32 - len) == u32::from(net) >> (32 - len),
        IpAddr::V6(_) => false,
    }
}

/// `A.B.C.D/32` in the shared address space.
fn host_address(text: &str, what: &str) -> Result<IpAddr, String> {
    let (ip, len) = text.trim().split_once('/').unwrap_or((text.trim(), "32"));
    let ip: IpAddr = ip.parse().map_err(|_| format!("{what} {text:?} is not an address"))?;
    if len != "32" || !in_shared_space(ip) {
        return Err(format!(
            "{what} {text:?} is not a single address in 100.64.0.0/10, as a Ferry cloud issues"
        ));
    }
    Ok(ip)
}

fn usable_endpoint(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !in_shared_space(ip)
}

fn service(protocol: Protocol, ports: &[PortRange]) -> String {
    let name = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "any",
    };
    let ports: Vec<String> = ports
        .iter()
        .map(|p| if p.first == p.last { p.first.to_string() } else { format!("{}-{}", p.first, p.last) })
        .collect();
    if ports.is_empty() { name.to_string() } else { format!("{name} {}", ports.join(",")) }
}

/// Checks `config` and says what to set up, or why not.
pub fn plan(config: &ClientConfig) -> Result<Plan, String> {
    let address = host_address(&config.address, "the tunnel address")?;
    let peer = PublicKey::from_base64(&config.peer_public_key)
        .map_err(|e| format!("the gateway's public key {:?}: {e}", config.peer_public_key))?;
    if config.allowed_ips.is_empty() || config.allowed_ips.len() > MAX_TARGETS {
        return Err(format!(
            "the configuration names {} proxy addresses, not 1 to {MAX_TARGETS}",
            config.allowed_ips.len()
        ));
    }
    let mut allowed = Vec::with_capacity(config.allowed_ips.len());
    for text in &config.allowed_ips {
        let ip = host_address(text, "the proxy address")?;
        if ip == address {
            return Err(format!("the proxy address {ip} is the tunnel address"));
        }
        let net = IpNet::new(ip, 32).map_err(|e| e.to_string())?;
        if !allowed.contains(&net) {
            allowed.push(net);
        }
    }
    if config.targets.len() > MAX_TARGETS {
        return Err(format!(
            "the configuration names {} targets, more than {MAX_TARGETS}",
            config.targets.len()
        ));
    }
    let mut targets = Vec::with_capacity(config.targets.len());
    for t in &config.targets {
        if !allowed.iter().any(|net| net.contains(t.proxy_address)) {
            return Err(format!(
                "target {:?} is at {}, which is not among the proxy addresses",
                t.name, t.proxy_address
            ));
        }
        targets.push(TargetView {
            name: printable(&t.name),
            proxy_address: t.proxy_address.to_string(),
            service: service(t.protocol, &t.ports),
        });
    }
    let mut notes = Vec::new();
    let relay = match &config.relay {
        Some(relay) => relay_plan(relay, &mut notes)?,
        None => None,
    };
    let (candidates, refused) = gateway_candidates(&config.endpoints);
    notes.extend(refused.iter().cloned());
    let first_endpoint = match (&relay, candidates.first()) {
        (Some(_), _) => None,
        (None, Some(first)) => Some(*first),
        (None, None) => {
            let why = refused.first().map_or("none given".to_string(), |r| r.clone());
            return Err(format!(
                "the configuration has no way to the gateway: no relay allocation, and no usable gateway candidate ({why})"
            ));
        }
    };
    let websocket_url = relay.as_ref().and_then(|r| r.websocket.as_ref()).map(|ws| ws.url.clone());
    let mode = match &relay {
        Some(RelayPlan { udp, .. }) if udp.port() == 0 => TransportMode::Websocket,
        _ => TransportMode::Auto,
    };
    Ok(Plan {
        config_id: config.config_id,
        session_id: config.session_id,
        session_name: printable(&config.session_name),
        expires_ms: config.expires_ms,
        address,
        peer,
        allowed,
        route: PeerPlan { relay, candidates, mode },
        first_endpoint,
        websocket_url,
        notes,
        keepalive: (config.persistent_keepalive > 0)
            .then(|| Duration::from_secs(u64::from(config.persistent_keepalive.min(3600)))),
        targets,
    })
}

/// The relay allocation as the traversal takes it: its UDP address, and its
/// WebSocket when that can be verified (a `wss://` relay without a pin is
/// not used, as the gateway does not: there is nothing to check its
/// certificate against). A relay that offers only a WebSocket gets an
/// unspecified UDP address, which the WebSocket transport mode never uses.
fn relay_plan(relay: &ConfigRelay, notes: &mut Vec<String>) -> Result<Option<RelayPlan>, String> {
    if let Some(udp) = relay.udp
        && !usable_endpoint(udp)
    {
        return Err(format!("the relay endpoint {udp} is not an address a relay can have"));
    }
    let websocket = match websocket(relay) {
        Ok(websocket) => websocket,
        Err(why) => {
            notes.push(why);
            None
        }
    };
    Ok(match (relay.udp, websocket) {
        (Some(udp), websocket) => Some(RelayPlan { udp, websocket }),
        (None, Some(websocket)) => {
            Some(RelayPlan { udp: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), websocket: Some(websocket) })
        }
        (None, None) => None,
    })
}

fn websocket(relay: &ConfigRelay) -> Result<Option<WebSocketRelay>, String> {
    let url = relay.websocket_url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let tls = url.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("wss://"));
    let pin = match (&relay.websocket_pin, tls) {
        (Some(text), true) => Some(parse_fingerprint(text).ok_or_else(|| {
            format!("the relay's WebSocket is not used: its pin {text:?} is not a SHA-256 fingerprint")
        })?),
        _ => None,
    };
    let options = WsRelayOptions::new(url.to_string(), relay.websocket_token.clone(), pin);
    options.check().map_err(|e| format!("the relay's WebSocket is not used: {e}"))?;
    Ok(Some(WebSocketRelay { url: url.to_string(), token: relay.websocket_token.clone(), pin }))
}

/// The gateway's candidates that can be a direct path, each once, and why
/// the others are not.
pub fn gateway_candidates(texts: &[String]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut kept: Vec<SocketAddr> = Vec::new();
    let mut refused = Vec::new();
    for text in texts.iter().take(ferry_api::MAX_CANDIDATES) {
        match text.trim().parse::<SocketAddr>() {
            Err(_) => refused.push(format!("the gateway candidate {:?} is not an IP:port", printable(text))),
            Ok(addr) if !usable_endpoint(addr) => {
                refused.push(format!("the gateway candidate {addr} is not an address a gateway can have"))
            }
            Ok(addr) if !kept.contains(&addr) => kept.push(addr),
            Ok(_) => {}
        }
    }
    (kept, refused)
}

/// Names as the cloud allows them; anything else is cut or replaced, as it
/// ends up on the user's terminal.
fn printable(text: &str) -> String {
    text.chars().take(MAX_NAME).map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferry_api::{ConfigRelay, ConfigTarget};

    pub fn example(peer: &str) -> ClientConfig {
        ClientConfig {
            config_id: 9,
            session_id: 8,
            session_name: "press line 3".into(),
            expires_ms: 4_000_000_000_000,
            address: "100.96.0.2/32".into(),
            peer_public_key: peer.into(),
            allowed_ips: vec!["100.96.0.100/32".into(), "100.96.0.101/32".into()],
            endpoints: vec!["192.0.2.130:51820".into()],
            relay: None,
            persistent_keepalive: 25,
            targets: vec![ConfigTarget {
                name: "plc-web".into(),
                proxy_address: "100.96.0.100".parse().unwrap(),
                protocol: Protocol::Tcp,
                ports: vec![PortRange { first: 8080, last: 8080 }, PortRange { first: 9000, last: 9010 }],
            }],
            stun_servers: vec!["203.0.113.1:3478".into()],
            watch_token: "watch".into(),
        }
    }

    fn key() -> String {
        ferry_tunnel::PrivateKey::generate().public_key().to_base64()
    }

    #[test]
    fn a_cloud_configuration_is_planned() {
        let plan = plan(&example(&key())).unwrap();
        assert_eq!(plan.address, "100.96.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            plan.allowed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["100.96.0.100/32", "100.96.0.101/32"]
        );
        assert_eq!(plan.first_endpoint, Some("192.0.2.130:51820".parse().unwrap()));
        assert_eq!(plan.route.relay, None);
        assert_eq!(plan.route.candidates, vec!["192.0.2.130:51820".parse::<SocketAddr>().unwrap()]);
        assert_eq!(plan.targets[0].service, "tcp 8080,9000-9010");
        assert_eq!(plan.keepalive, Some(Duration::from_secs(25)));

        let mut relayed = example(&key());
        relayed.relay = Some(ConfigRelay {
            udp: Some("203.0.113.1:40007".parse().unwrap()),
            websocket_url: "ws://203.0.113.1:443/".into(),
            websocket_token: "t".into(),
            websocket_pin: None,
        });
        let plan = super::plan(&relayed).unwrap();
        let relay = plan.route.relay.clone().unwrap();
        assert_eq!(relay.udp, "203.0.113.1:40007".parse().unwrap());
        assert_eq!(relay.websocket.map(|ws| ws.url), Some("ws://203.0.113.1:443/".to_string()));
        assert_eq!((plan.first_endpoint, plan.route.mode), (None, TransportMode::Auto));
        assert_eq!(plan.websocket_url.as_deref(), Some("ws://203.0.113.1:443/"));
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn the_relays_websocket_needs_a_pin_with_tls() {
        let with = |url: &str, pin: Option<&str>, udp: Option<&str>| {
            let mut config = example(&key());
            config.endpoints = vec![];
            config.relay = Some(ConfigRelay {
                udp: udp.map(|u| u.parse().unwrap()),
                websocket_url: url.into(),
                websocket_token: "t0ken".into(),
                websocket_pin: pin.map(str::to_string),
            });
            plan(&config)
        };
        let pin = "AB".repeat(32);
        // wss:// without a pin cannot be verified: not used, said why; the
        // UDP allocation still carries the tunnel.
        let plan = with("wss://203.0.113.1/", None, Some("203.0.113.1:40007")).unwrap();
        let relay = plan.route.relay.clone().unwrap();
        assert_eq!(relay.websocket, None);
        assert!(plan.notes[0].contains("needs the relay certificate's SHA-256 pin"), "{:?}", plan.notes);
        let plan = with("wss://203.0.113.1/", Some(&pin), Some("203.0.113.1:40007")).unwrap();
        assert_eq!(plan.route.relay.unwrap().websocket.unwrap().pin, Some([0xAB; 32]));
        // A pin is meaningless for plain ws://.
        let plan = with("ws://203.0.113.1/", Some(&pin), Some("203.0.113.1:40007")).unwrap();
        assert_eq!(plan.route.relay.unwrap().websocket.unwrap().pin, None);
        let refused = with("wss://203.0.113.1/", Some("nope"), Some("203.0.113.1:40007")).unwrap();
        assert!(refused.notes[0].contains("not a SHA-256 fingerprint"), "{:?}", refused.notes);
        // A relay with a WebSocket only: that transport alone.
        let plan = with("ws://203.0.113.1/", None, None).unwrap();
        assert_eq!(plan.route.mode, TransportMode::Websocket);
        // Nothing usable at all.
        let err = with("wss://203.0.113.1/", None, None).unwrap_err();
        assert!(err.contains("no way to the gateway"), "{err}");
    }

    #[test]
    fn what_a_cloud_does_not_issue_is_refused() {
        let refused = |change: &dyn Fn(&mut ClientConfig), why: &str| {
            let mut config = example(&key());
            change(&mut config);
            let err = plan(&config).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        };
        refused(&|c| c.address = "8.8.8.8/32".into(), "100.64.0.0/10");
        refused(&|c| c.address = "100.96.0.0/24".into(), "single address");
        refused(&|c| c.address = "fd00::2/128".into(), "100.64.0.0/10");
        refused(&|c| c.allowed_ips = vec!["0.0.0.0/0".into()], "100.64.0.0/10");
        refused(&|c| c.allowed_ips = vec!["192.168.50.10/32".into()], "100.64.0.0/10");
        refused(&|c| c.allowed_ips = vec![], "not 1 to 64");
        refused(&|c| c.allowed_ips = vec!["100.96.0.2/32".into()], "is the tunnel address");
        refused(&|c| c.targets[0].proxy_address = "100.96.0.199".parse().unwrap(), "not among the proxy");
        refused(&|c| c.peer_public_key = "short".into(), "public key");
        refused(&|c| c.endpoints = vec![], "no way to the gateway");
        refused(&|c| c.endpoints = vec!["0.0.0.0:51820".into()], "not an address");
        refused(&|c| c.endpoints = vec!["100.96.0.1:51820".into()], "not an address");
        refused(&|c| c.endpoints = vec!["gateway:51820".into()], "not an IP:port");
        refused(
            &|c| {
                c.relay = Some(ConfigRelay {
                    udp: Some("0.0.0.0:4000".parse().unwrap()),
                    websocket_url: String::new(),
                    websocket_token: String::new(),
                    websocket_pin: None,
                })
            },
            "not an address a relay can have",
        );
    }

    #[test]
    fn names_reach_the_terminal_printable() {
        let mut config = example(&key());
        config.session_name = format!("evil\x1b[2J{}", "x".repeat(500));
        let plan = plan(&config).unwrap();
        assert!(plan.session_name.starts_with("evil?[2J"));
        assert_eq!(plan.session_name.chars().count(), MAX_NAME);
    }
}
