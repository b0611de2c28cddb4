//! Each tunnel's paths: a `ferry_traversal::Traversal` on its endpoint,
//! made with the endpoint at `prepare`. It gathers this machine's candidates
//! from the tunnel's own WireGuard socket (host addresses at once,
//! server-reflexive ones as the relays' STUN servers answer), and once the
//! configuration is there carries the tunnel: the relay's UDP allocation at
//! once, its WebSocket when no handshake comes over UDP, a direct path to the
//! gateway when one is verified both ways, back to the relay when that path
//! stops answering.
//!
//! The service runs in the technician's network namespace, so the
//! traversal's netlink socket and the runtime threads that dial the
//! WebSocket relay are in it too.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_traversal::{PathKind as Kind, PeerPath, Traversal, TraversalOptions};
use ferry_tunnel::endpoint::{Endpoint, PeerStatus, is_virtual};

use super::plan::{Plan, never_candidates};
use crate::protocol::PathKind;

/// How long `prepare` waits for the STUN servers' answers: the host
/// candidates are there at once, and a server that has not answered by
/// then is left out of this configuration request (its answer still goes
/// to the cloud later, as a roaming update).
pub const GATHER_WAIT: Duration = Duration::from_millis(800);
/// How often `prepare` looks whether every STUN server answered.
const GATHER_TICK: Duration = Duration::from_millis(20);
/// How long the tunnel may go without a handshake over one relay transport
/// before it tries the other. WireGuard sends a second initiation after
/// 5 s, so this leaves room for two; shorter than the gateway's, since a
/// technician waits for `ferry connect`.
pub const TRANSPORT_GRACE: Duration = Duration::from_secs(8);

/// The traversal of a new endpoint. Inside the service's runtime.
pub fn start(endpoint: Arc<Endpoint>) -> Traversal {
    let options = TraversalOptions {
        deny: never_candidates(),
        transport_grace: TRANSPORT_GRACE,
        ..TraversalOptions::default()
    };
    Traversal::start(endpoint, options)
}

/// This machine's candidates once every one of `servers` STUN servers
/// answered, or after [`GATHER_WAIT`]: all of them, and the
/// server-reflexive ones alone.
pub async fn gather(traversal: &Traversal, servers: usize) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let deadline = tokio::time::Instant::now() + GATHER_WAIT;
    let mut candidates = traversal.local_candidates();
    loop {
        let stats = traversal.stats();
        let host_read = !candidates.borrow_and_update().is_empty();
        if host_read && stats.stun_answers >= servers as u64 {
            break;
        }
        let tick = (tokio::time::Instant::now() + GATHER_TICK).min(deadline);
        // A change of the candidates, or the next look at the answers.
        let _ = tokio::time::timeout_at(tick, candidates.changed()).await;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let all = candidates.borrow().clone();
    (all, traversal.reflexive_candidates())
}

/// How the tunnel's datagrams travel now, for `ferry status`.
#[derive(Debug, Default, PartialEq)]
pub struct PathView {
    pub kind: Option<PathKind>,
    /// Where they go: the gateway's or the relay's address, or the relay's
    /// WebSocket URL.
    pub endpoint: Option<String>,
    pub rtt: Option<Duration>,
    pub why: Option<String>,
    pub since: Option<Instant>,
}

/// The path of the tunnel's gateway peer as WireGuard takes it: where the
/// engine sends (its endpoint) says which path it is, and the traversal why
/// and since when. They differ only for a moment: WireGuard follows the
/// source of the gateway's authenticated datagrams, so when the gateway
/// moves to a path first, this end's datagrams follow before its own
/// traversal has verified or re-pointed it.
pub fn view(path: Option<PeerPath>, plan: &Plan, peer: Option<&PeerStatus>) -> PathView {
    let engine_endpoint = peer.and_then(|p| p.endpoint);
    let handshake_rtt = peer.and_then(|p| p.handshake_rtt);
    let relay_udp = plan.route.relay.as_ref().map(|r| r.udp);
    let sent_by_engine = engine_endpoint.map(|at| match at {
        at if is_virtual(at) => PathKind::RelayWebsocket,
        at if Some(at) == relay_udp => PathKind::RelayUdp,
        _ => PathKind::Direct,
    });
    let Some(path) = path else {
        return PathView {
            kind: sent_by_engine,
            endpoint: engine_endpoint.map(|e| e.to_string()),
            rtt: handshake_rtt,
            ..PathView::default()
        };
    };
    let selected = match path.path {
        Kind::Direct => Some(PathKind::Direct),
        Kind::UdpRelay => Some(PathKind::RelayUdp),
        Kind::WebSocketRelay => Some(PathKind::RelayWebsocket),
        Kind::None => None,
    };
    let kind = sent_by_engine.or(selected);
    let why = match (selected, kind) {
        (None, Some(PathKind::Direct)) if relay_udp.is_none() => {
            "no relay: straight to the gateway's address"
        }
        (selected, kind) if selected != kind => "following the gateway's datagrams",
        _ => path.why,
    };
    let endpoint = match kind {
        Some(PathKind::RelayWebsocket) => plan.websocket_url.clone(),
        _ => engine_endpoint.or(path.endpoint).map(|e| e.to_string()),
    };
    let rtt = match (kind, selected) {
        (Some(PathKind::Direct), Some(PathKind::Direct)) => path.rtt,
        _ => handshake_rtt,
    };
    PathView { kind, endpoint, rtt, why: Some(why.to_string()), since: Some(path.since) }
}

#[cfg(test)]
mod tests {
    use ferry_api::ConfigRelay;
    use ferry_traversal::RelayTransport;

    use super::*;
    use crate::service::plan::{plan, tests::example};

    fn relayed() -> Plan {
        let mut config = example(&ferry_tunnel::PrivateKey::generate().public_key().to_base64());
        config.relay = Some(ConfigRelay {
            udp: Some("203.0.113.1:40007".parse().unwrap()),
            websocket_url: "wss://203.0.113.1:443/".into(),
            websocket_token: "t".into(),
            websocket_pin: Some("AB".repeat(32)),
        });
        plan(&config).unwrap()
    }

    fn path(kind: Kind, why: &'static str) -> PeerPath {
        PeerPath {
            path: kind,
            endpoint: None,
            rtt: Some(Duration::from_micros(700)),
            since: Instant::now(),
            why,
            relay: Some(RelayTransport::Udp),
            websocket: None,
            observed: None,
            candidates: 2,
        }
    }

    fn engine(at: &str) -> PeerStatus {
        PeerStatus {
            public_key: ferry_tunnel::PrivateKey::generate().public_key(),
            endpoint: Some(at.parse().unwrap()),
            allowed_ips: vec![],
            last_handshake: None,
            handshake_rtt: Some(Duration::from_millis(3)),
            last_rx: None,
            handshakes: 1,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
            has_preshared_key: false,
        }
    }

    #[test]
    fn the_path_is_where_wireguard_sends() {
        let plan = relayed();
        let shown = view(Some(path(Kind::UdpRelay, "relay")), &plan, Some(&engine("203.0.113.1:40007")));
        assert_eq!(
            (shown.kind, shown.endpoint.as_deref(), shown.why.as_deref(), shown.rtt),
            (
                Some(PathKind::RelayUdp),
                Some("203.0.113.1:40007"),
                Some("relay"),
                Some(Duration::from_millis(3))
            )
        );
        let shown = view(Some(path(Kind::Direct, "verified")), &plan, Some(&engine("198.51.100.2:51820")));
        assert_eq!(
            (shown.kind, shown.why.as_deref(), shown.rtt),
            (Some(PathKind::Direct), Some("verified"), Some(Duration::from_micros(700)))
        );
        // The gateway went direct first; WireGuard followed its datagrams.
        let shown = view(Some(path(Kind::UdpRelay, "relay")), &plan, Some(&engine("198.51.100.2:51820")));
        assert_eq!(
            (shown.kind, shown.why.as_deref()),
            (Some(PathKind::Direct), Some("following the gateway's datagrams"))
        );
        // The WebSocket's virtual address means nothing to a user: its URL.
        let shown =
            view(Some(path(Kind::WebSocketRelay, "no handshake")), &plan, Some(&engine("[100::3]:9")));
        assert_eq!(
            (shown.kind, shown.endpoint.as_deref()),
            (Some(PathKind::RelayWebsocket), Some("wss://203.0.113.1:443/"))
        );
        // No relay: straight to the gateway's candidate, verified or not.
        let mut direct_only = relayed();
        direct_only.route.relay = None;
        let shown = view(Some(path(Kind::None, "no path")), &direct_only, Some(&engine("192.0.2.130:51820")));
        assert_eq!(
            (shown.kind, shown.why.as_deref()),
            (Some(PathKind::Direct), Some("no relay: straight to the gateway's address"))
        );
        assert_eq!(view(Some(path(Kind::None, "no path")), &plan, None).kind, None);
    }
}
