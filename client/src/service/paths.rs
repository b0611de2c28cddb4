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
use ferry_tunnel::endpoint::{Endpoint, PeerStatus};

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

/// The path of the tunnel's gateway peer: the traversal's selection, with
/// the engine's view where the traversal has none (no relay: WireGuard
/// goes straight to the gateway's candidate, verified or not).
pub fn view(path: Option<PeerPath>, plan: &Plan, peer: Option<&PeerStatus>) -> PathView {
    let engine_endpoint = peer.and_then(|p| p.endpoint);
    let handshake_rtt = peer.and_then(|p| p.handshake_rtt);
    let Some(path) = path else {
        return PathView {
            endpoint: engine_endpoint.map(|e| e.to_string()),
            rtt: handshake_rtt,
            ..PathView::default()
        };
    };
    let kind = match path.path {
        Kind::Direct => Some(PathKind::Direct),
        Kind::UdpRelay => Some(PathKind::RelayUdp),
        Kind::WebSocketRelay => Some(PathKind::RelayWebsocket),
        Kind::None if plan.route.relay.is_none() && engine_endpoint.is_some() => Some(PathKind::Direct),
        Kind::None => None,
    };
    let endpoint = match kind {
        Some(PathKind::RelayWebsocket) => plan.websocket_url.clone(),
        _ => path.endpoint.or(engine_endpoint).map(|e| e.to_string()),
    };
    let why = match (path.path, kind) {
        (Kind::None, Some(PathKind::Direct)) => "no relay: straight to the gateway's address".to_string(),
        _ => path.why.to_string(),
    };
    PathView { kind, endpoint, rtt: path.rtt.or(handshake_rtt), why: Some(why), since: Some(path.since) }
}
