//! What the traversal reports: each peer's path, and counters for metrics.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ferry_connect::ws::WsState;
use ferry_paths::ProbeStats;

use crate::transport::RelayTransport;

/// The reasons a [`PeerPath`] gives besides [`ferry_paths::why`]'s, as stable strings.
pub mod why {
    /// `Auto` moved the peer to the WebSocket relay: no handshake over UDP.
    pub const NO_HANDSHAKE_OVER_UDP: &str = "no handshake over the UDP relay";
    /// `Auto` moved the peer back to the UDP relay: no handshake over the WebSocket either.
    pub const NO_HANDSHAKE_OVER_WEBSOCKET: &str = "no handshake over the WebSocket relay";
}

/// Which way a peer's WireGuard datagrams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// Straight to the peer, on a path verified both ways.
    Direct,
    UdpRelay,
    WebSocketRelay,
    /// Nowhere known yet: no relay and no verified direct path.
    None,
}

impl PathKind {
    /// Stable names for status output and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::UdpRelay => "udp-relay",
            PathKind::WebSocketRelay => "websocket-relay",
            PathKind::None => "none",
        }
    }

    pub const ALL: [PathKind; 4] =
        [PathKind::Direct, PathKind::UdpRelay, PathKind::WebSocketRelay, PathKind::None];
}

/// One peer's path, for `sessions` and `ferry status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPath {
    /// The path selected for the peer's datagrams.
    pub path: PathKind,
    /// Where WireGuard sends the peer's datagrams now: the direct address,
    /// the UDP relay's address, or the WebSocket transport's virtual address
    /// (`ferry_tunnel::endpoint::is_virtual`). WireGuard's roaming may have
    /// moved it since the selection (the peer's datagrams came from elsewhere).
    pub endpoint: Option<SocketAddr>,
    /// Round-trip time: the direct path's smoothed probe RTT, or over a relay
    /// the last handshake's (initiation to response, when this end initiated).
    pub rtt: Option<Duration>,
    /// When the path took effect.
    pub since: Instant,
    /// Why (one of [`ferry_paths::why`] or [`why`]).
    pub why: &'static str,
    /// The relay transport in use for relayed datagrams (also while direct).
    pub relay: Option<RelayTransport>,
    /// The WebSocket relay connection's state, while that transport is in use.
    pub websocket: Option<WsState>,
    /// This end's address as the peer last saw it (from a probe answer).
    pub observed: Option<SocketAddr>,
    /// Candidate addresses of the peer being probed (remote and peer-reflexive).
    pub candidates: usize,
}

/// Peers by path, for a gauge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts([u64; PathKind::ALL.len()]);

impl PathCounts {
    pub fn get(&self, kind: PathKind) -> u64 {
        self.0[kind as usize]
    }

    pub(crate) fn count(&mut self, kind: PathKind) {
        self.0[kind as usize] += 1;
    }
}

/// Counters since [`Traversal::start`](crate::Traversal::start), for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraversalStats {
    /// Probes sent, received and dropped by reason (from [`ferry_paths::Paths`]).
    pub probes: ProbeStats,
    /// STUN Binding requests sent (retransmissions included).
    pub stun_requests: u64,
    /// STUN answers taken: ours, from the server asked.
    pub stun_answers: u64,
    /// STUN-framed datagrams that answered no request of ours (another
    /// source, another transaction, a replay): dropped.
    pub stun_unmatched: u64,
    /// Our transactions answered with an error or without an address.
    pub stun_failed: u64,
    /// Datagrams on the side channel that are neither probes nor STUN: dropped.
    pub side_other: u64,
    /// Probes and STUN requests the socket refused to send.
    pub send_failures: u64,
    /// Remote candidates not probed: unusable or in a denied prefix.
    pub candidates_refused: u64,
    /// `Auto` moves between the UDP and the WebSocket relay.
    pub transport_switches: u64,
    /// Handshakes started through the relay because this end's address
    /// changed (its NAT mapped it anew, as STUN showed, or its host
    /// addresses changed), so that the relay binds it again.
    pub relay_rebinds: u64,
    /// WebSocket relay datagrams dropped (no connection, queue full), over
    /// the connections in use now.
    pub websocket_dropped: u64,
    /// Peers by path now.
    pub paths: PathCounts,
    /// STUN servers asked.
    pub stun_servers: usize,
    /// This end's candidates now (as published).
    pub local_candidates: usize,
}
