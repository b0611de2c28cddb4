//! The probing schedule and the bounds, in one place.

use std::time::{Duration, Instant};

/// Ping interval during a candidate's first [`FAST_PHASE`]: both ends ping
/// each other's candidates at once, so each NAT has a mapping and a filter
/// entry open when the other's pings arrive (simultaneous open).
pub const FAST_INTERVAL: Duration = Duration::from_millis(200);
/// How long a new (or restarted) candidate is pinged fast.
pub const FAST_PHASE: Duration = Duration::from_secs(3);
/// Ping interval after the fast phase while the peer has no direct path.
pub const SLOW_INTERVAL: Duration = Duration::from_secs(2);
/// Age of a candidate after which it is pinged only every [`RETRY_INTERVAL`].
pub const SLOW_PHASE: Duration = Duration::from_secs(30);
/// Ping interval of candidates that have not answered for a long time, and
/// of unverified alternatives while a direct path is in use.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Ping interval of live direct paths (the selected one and live alternatives).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A direct path with neither a pong nor authenticated WireGuard traffic from
/// it for this long is dead.
pub const DIRECT_DEAD_AFTER: Duration = Duration::from_secs(5);
/// A live path not heard from for this long (it missed a heartbeat's pong)
/// gives way to a live path that was heard from since.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// A ping's transaction id matches a pong for this long after it was sent.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Peer-reflexive candidates are forgotten this long after their last sign of life.
pub const PEER_REFLEXIVE_TTL: Duration = Duration::from_secs(30);
/// Round-trip times closer than this (or 10 % of the smaller) count as a tie.
pub const RTT_TIE_MARGIN: Duration = Duration::from_millis(1);

/// Remote candidates kept per peer (the rest of a longer list is ignored).
pub const MAX_REMOTE_CANDIDATES: usize = 16;
/// Peer-reflexive candidates kept per peer (the least recently seen one goes first).
pub const MAX_PEER_REFLEXIVE: usize = 8;
/// Outstanding pings remembered per candidate (older ones are forgotten first).
pub const MAX_OUTSTANDING_PER_CANDIDATE: usize = 8;
/// Transmits waiting in [`Paths::poll_transmit`](crate::Paths::poll_transmit) per peer;
/// beyond it new ones are dropped and counted.
pub const MAX_QUEUED_TRANSMITS_PER_PEER: usize = 64;
/// Nonces remembered per peer for replay detection, and for how long.
pub const REPLAY_WINDOW: Duration = crate::replay::NonceCache::WINDOW;
/// See [`REPLAY_WINDOW`].
pub const MAX_REMEMBERED_NONCES: usize = crate::replay::NonceCache::CAPACITY;

/// `t + d`, or `t` in the (theoretical) case that it does not fit.
pub(crate) fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// `t - d`, or `t` when that precedes what an `Instant` can hold.
pub(crate) fn before(t: Instant, d: Duration) -> Instant {
    t.checked_sub(d).unwrap_or(t)
}
