//! What the caller tells the traversal about a peer, and the checks on it.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use ferry_connect::ws::{OptionsError, WsRelayOptions};
use ferry_tunnel::{endpoint::is_virtual, proto::IpNet};

/// How a peer's traffic may reach it when there is no direct path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TransportMode {
    /// The UDP relay first; the WebSocket relay when no handshake completes
    /// over UDP within [`TraversalOptions::transport_grace`](crate::TraversalOptions::transport_grace),
    /// and back to UDP when none completes over the WebSocket either.
    #[default]
    Auto,
    /// The UDP relay only.
    Udp,
    /// The WebSocket relay only (a site that lets only TCP 443 out).
    Websocket,
}

impl TransportMode {
    pub fn label(self) -> &'static str {
        match self {
            TransportMode::Auto => "auto",
            TransportMode::Udp => "udp",
            TransportMode::Websocket => "websocket",
        }
    }
}

/// A relay allocation that carries the peer's datagrams when no direct path
/// does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayPlan {
    /// The allocation's UDP address (for this end's side).
    pub udp: SocketAddr,
    /// The same allocation over the relay's WebSocket, if it offers one.
    pub websocket: Option<WebSocketRelay>,
}

/// The relay's WebSocket for one allocation. `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct WebSocketRelay {
    /// `ws://` or `wss://`.
    pub url: String,
    /// The allocation's bearer token.
    pub token: String,
    /// SHA-256 of the relay's DER certificate; required for `wss://`.
    pub pin: Option<[u8; 32]>,
}

impl WebSocketRelay {
    pub(crate) fn options(&self) -> WsRelayOptions {
        WsRelayOptions::new(self.url.clone(), self.token.clone(), self.pin)
    }
}

impl fmt::Debug for WebSocketRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketRelay")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("pin", &self.pin.map(|p| ferry_connect::pin::format_fingerprint(&p)))
            .finish()
    }
}

/// Everything the traversal needs to know about one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// The relay allocation, if the peer has one.
    pub relay: Option<RelayPlan>,
    /// The peer's own candidates (host and server-reflexive addresses of its
    /// WireGuard socket), as the cloud passed them on. Unusable addresses and
    /// those in [`TraversalOptions::deny`](crate::TraversalOptions::deny) are
    /// dropped (counted in [`TraversalStats::candidates_refused`](crate::TraversalStats::candidates_refused)).
    pub candidates: Vec<SocketAddr>,
    pub mode: TransportMode,
}

/// Why [`Traversal::upsert_peer`](crate::Traversal::upsert_peer) refused a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The endpoint has no such WireGuard peer: add it there first.
    #[error("the endpoint has no such peer; add it to the endpoint first")]
    UnknownPeer,
    /// Another peer's probes carry the same receiver tag (the same key twice).
    #[error("another peer already uses this peer's probe tag")]
    TagInUse,
    /// `Websocket` mode without a WebSocket relay.
    #[error("the WebSocket transport was asked for, but the relay offers no WebSocket")]
    NoWebSocket,
    /// The WebSocket relay's settings cannot work (scheme, pin, token).
    #[error("the relay's WebSocket: {0}")]
    WebSocket(#[from] OptionsError),
}

impl PeerPlan {
    /// The checks no retry fixes, before anything changes.
    pub(crate) fn check(&self) -> Result<(), PlanError> {
        let websocket = self.relay.as_ref().and_then(|r| r.websocket.as_ref());
        match (self.mode, websocket) {
            (TransportMode::Websocket, None) if self.relay.is_some() => Err(PlanError::NoWebSocket),
            (TransportMode::Websocket | TransportMode::Auto, Some(ws)) => Ok(ws.options().check()?),
            _ => Ok(()),
        }
    }

    /// Whether the relay side of two plans is the same (candidates aside).
    pub(crate) fn same_relay(&self, other: &PeerPlan) -> bool {
        self.relay == other.relay && self.mode == other.mode
    }
}

/// Addresses of an IP that can be a direct path at all: not loopback,
/// unspecified, multicast, broadcast, IPv6 link-local (it would need a scope)
/// or a transport's virtual address, and in none of the `deny` prefixes.
pub(crate) fn usable_ip(ip: IpAddr, deny: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    let special = match ip {
        IpAddr::V4(v4) => v4.is_broadcast() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || is_virtual(SocketAddr::new(ip, 0)),
    };
    let denied = deny.iter().any(|net| net.contains(ip));
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || special || denied)
}

/// The peer's candidates worth probing, in their order, IPv4 as IPv4, each
/// once; returns them and how many were refused.
pub(crate) fn remote_candidates(candidates: &[SocketAddr], deny: &[IpNet]) -> (Vec<SocketAddr>, usize) {
    let mut kept: Vec<SocketAddr> = Vec::with_capacity(candidates.len());
    let mut refused = 0;
    for candidate in candidates {
        let addr = SocketAddr::new(candidate.ip().to_canonical(), candidate.port());
        if addr.port() == 0 || !usable_ip(addr.ip(), deny) || kept.contains(&addr) {
            refused += 1;
        } else {
            kept.push(addr);
        }
    }
    (kept, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn remote_candidates_drop_the_unusable_and_the_denied() {
        let deny: Vec<IpNet> = vec!["192.168.50.0/24".parse().unwrap(), "100.96.0.0/12".parse().unwrap()];
        let given = addrs(&[
            "198.51.100.2:51820",
            "127.0.0.1:51820",
            "0.0.0.0:51820",
            "224.0.0.1:51820",
            "255.255.255.255:51820",
            "169.254.1.1:51820",
            "[fe80::1]:51820",
            "[::1]:51820",
            "[100::7]:9",
            "192.168.50.10:51820",
            "100.100.0.1:51820",
            "192.0.2.7:0",
            "[::ffff:198.51.100.2]:51820",
            "10.1.0.2:51820",
            "[2001:db8::2]:51820",
        ]);
        let (kept, refused) = remote_candidates(&given, &deny);
        assert_eq!(kept, addrs(&["198.51.100.2:51820", "10.1.0.2:51820", "[2001:db8::2]:51820"]));
        assert_eq!(refused, given.len() - 3);
    }

    #[test]
    fn plans_that_cannot_work_are_refused_before_anything_starts() {
        let ws =
            |url: &str, pin: Option<[u8; 32]>| WebSocketRelay { url: url.into(), token: "t0ken".into(), pin };
        let plan = |mode, websocket| PeerPlan {
            relay: Some(RelayPlan { udp: "203.0.113.1:40000".parse().unwrap(), websocket }),
            candidates: vec![],
            mode,
        };
        assert_eq!(plan(TransportMode::Websocket, None).check(), Err(PlanError::NoWebSocket));
        assert_eq!(plan(TransportMode::Udp, None).check(), Ok(()));
        assert_eq!(plan(TransportMode::Auto, None).check(), Ok(()));
        assert!(matches!(
            plan(TransportMode::Auto, Some(ws("wss://203.0.113.1/", None))).check(),
            Err(PlanError::WebSocket(OptionsError::PinRequired(_)))
        ));
        assert_eq!(
            plan(TransportMode::Websocket, Some(ws("wss://203.0.113.1/", Some([1; 32])))).check(),
            Ok(())
        );
        // The UDP-only mode never dials, so the WebSocket settings do not matter.
        assert_eq!(plan(TransportMode::Udp, Some(ws("https://x/", None))).check(), Ok(()));
        let no_relay = PeerPlan { relay: None, candidates: vec![], mode: TransportMode::Websocket };
        assert_eq!(no_relay.check(), Ok(()));
        let text = format!("{:?}", ws("ws://203.0.113.1/", None));
        assert!(!text.contains("t0ken"), "{text}");
    }
}
