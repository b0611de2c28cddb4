//! What the service makes of a configuration before it touches the system.
//!
//! The configuration reaches the service through the caller, who could have
//! written any of it: so only what a Ferry cloud issues is accepted. The
//! tunnel address and the proxy addresses are single IPv4 addresses in the
//! shared address space of RFC 6598 (100.64.0.0/10), where the cloud's pool
//! is: a user cannot make the service put 8.8.8.8 on a TUN device and so take
//! it away from the other users of the machine. The routes only ever change
//! the caller's own traffic (see `routing`).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use ferry_api::{ClientConfig, PortRange, Protocol};
use ferry_tunnel::{PublicKey, proto::IpNet};

use crate::protocol::{PathKind, TargetView};

/// RFC 6598's shared address space, which holds the cloud's tunnel pool.
const SHARED_SPACE: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
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
    pub endpoint: SocketAddr,
    pub path: PathKind,
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
    // Phase 1 carries the tunnel over UDP only: the relay's allocation, else
    // the gateway's first candidate. The WebSocket relay comes with its
    // transport (ferry-connect) and direct paths with path selection.
    let relay_udp = config.relay.as_ref().and_then(|r| r.udp);
    let (endpoint, path) = match relay_udp {
        Some(udp) => (udp, PathKind::RelayUdp),
        None => {
            let first = config.endpoints.first().ok_or(
                "the configuration has no UDP endpoint: neither a relay allocation nor a gateway candidate",
            )?;
            let addr: SocketAddr =
                first.parse().map_err(|_| format!("the gateway candidate {first:?} is not an IP:port"))?;
            (addr, PathKind::Direct)
        }
    };
    if !usable_endpoint(endpoint) {
        return Err(format!("the endpoint {endpoint} is not an address a gateway or relay can have"));
    }
    Ok(Plan {
        config_id: config.config_id,
        session_id: config.session_id,
        session_name: printable(&config.session_name),
        expires_ms: config.expires_ms,
        address,
        peer,
        allowed,
        endpoint,
        path,
        keepalive: (config.persistent_keepalive > 0)
            .then(|| Duration::from_secs(u64::from(config.persistent_keepalive.min(3600)))),
        targets,
    })
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
        assert_eq!(
            (plan.endpoint.to_string(), plan.path),
            ("192.0.2.130:51820".to_string(), PathKind::Direct)
        );
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
        assert_eq!(
            (plan.endpoint.to_string(), plan.path),
            ("203.0.113.1:40007".to_string(), PathKind::RelayUdp)
        );
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
        refused(&|c| c.endpoints = vec![], "no UDP endpoint");
        refused(&|c| c.endpoints = vec!["0.0.0.0:51820".into()], "not an address");
        refused(&|c| c.endpoints = vec!["100.96.0.1:51820".into()], "not an address");
        refused(&|c| c.endpoints = vec!["gateway:51820".into()], "not an IP:port");
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
