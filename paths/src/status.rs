//! What the state machine hands out: selections, events, transmits, status and counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::probe::ProbeDrop;
use crate::secrets::PeerKey;

/// Where a peer's WireGuard datagrams should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selected {
    /// To the relay address the peer was set up with.
    Relay,
    /// Straight to this address, verified both ways.
    Direct(SocketAddr),
    /// Nowhere known: no relay and no direct path.
    None,
}

/// The reasons [`Event::Selected`] gives, as stable strings.
pub mod why {
    /// Starting on the relay, or a relay was given while no direct path was live.
    pub const RELAY: &str = "relay";
    /// The relay's address changed while the peer was on the relay.
    pub const RELAY_CHANGED: &str = "relay changed";
    /// Neither a relay nor a live direct path.
    pub const NO_PATH: &str = "no path";
    /// A direct path answered our ping from the address we pinged.
    pub const VERIFIED: &str = "verified";
    /// Another live direct path took over: the one in use went quiet or was
    /// withdrawn by the peer, or the other has a clearly lower round-trip time
    /// (or is a private address at about the same round-trip time).
    pub const BETTER: &str = "better path";
    /// The selected direct path went silent for [`DIRECT_DEAD_AFTER`](crate::DIRECT_DEAD_AFTER).
    pub const DEAD: &str = "dead";
    /// The selected direct path's candidate was taken away (it became the relay's address).
    pub const CANDIDATES: &str = "candidates changed";
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's traffic should now go as `selected` says. Events of one peer
    /// that were not polled yet are replaced by the newest, so the queue holds
    /// at most one event per peer and the last one always wins.
    Selected { peer: PeerKey, selected: Selected, why: &'static str },
}

impl Event {
    /// The peer the event is about.
    pub fn peer(&self) -> &PeerKey {
        match self {
            Event::Selected { peer, .. } => peer,
        }
    }
}

/// A probe to send from the WireGuard socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// How a candidate came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateOrigin {
    /// Given by [`Paths::set_remote_candidates`](crate::Paths::set_remote_candidates) or at `add_peer`.
    Remote,
    /// Learned from a valid ping or authenticated WireGuard traffic from an
    /// unlisted address (or a live remote candidate that was taken off the list).
    PeerReflexive,
}

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateState {
    /// Never answered.
    Probing,
    /// Verified both ways and heard from within [`DIRECT_DEAD_AFTER`](crate::DIRECT_DEAD_AFTER).
    Live,
    /// Answered once, silent since.
    Dead,
}

/// One candidate address of a peer, for `ferry status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateStatus {
    pub addr: SocketAddr,
    pub origin: CandidateOrigin,
    pub state: CandidateState,
    /// Smoothed round-trip time of its pings.
    pub rtt: Option<Duration>,
    pub last_pong: Option<Instant>,
    /// Last authenticated WireGuard datagram from it while it was live.
    pub last_rx: Option<Instant>,
    pub pings_sent: u64,
    pub pongs_received: u64,
}

/// The path state of one peer, for `ferry status` (as of the last call that
/// was given a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathStatus {
    pub selected: Selected,
    /// When `selected` took effect.
    pub selected_since: Instant,
    /// Why it did (one of [`why`]).
    pub why: &'static str,
    pub relay: Option<SocketAddr>,
    /// Smoothed round-trip time of the selected direct path.
    pub rtt: Option<Duration>,
    /// The last pong from any candidate.
    pub last_pong: Option<Instant>,
    /// This end's address as the peer last saw it (from its pong).
    pub observed: Option<SocketAddr>,
    pub candidates: Vec<CandidateStatus>,
}

/// Counters of everything the state machine did or refused, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub pings_sent: u64,
    pub pongs_sent: u64,
    /// Valid, fresh pings answered.
    pub pings_received: u64,
    /// Pongs that answered an outstanding ping from the address pinged.
    pub pongs_received: u64,
    /// Pings that got no pong within [`PING_TIMEOUT`](crate::PING_TIMEOUT).
    pub ping_timeouts: u64,
    pub not_probe: u64,
    pub bad_length: u64,
    pub unknown_tag: u64,
    pub bad_auth: u64,
    pub bad_body: u64,
    pub replayed: u64,
    pub unsolicited: u64,
    pub wrong_source: u64,
    pub bad_source: u64,
    /// Transmits not queued because the peer's queue was full.
    pub transmits_dropped: u64,
    /// Probes that could not be sealed (never expected).
    pub seal_failed: u64,
    pub reflexive_added: u64,
    /// Peer-reflexive candidates pushed out by newer ones (the bound).
    pub reflexive_evicted: u64,
    /// Peer-reflexive candidates forgotten after [`PEER_REFLEXIVE_TTL`](crate::PEER_REFLEXIVE_TTL).
    pub reflexive_expired: u64,
    /// Remote candidates not taken: unusable, duplicate, the relay's address, or over the bound.
    pub candidates_ignored: u64,
}

impl ProbeStats {
    /// The counter of one drop reason.
    pub fn dropped(&self, reason: ProbeDrop) -> u64 {
        match reason {
            ProbeDrop::NotProbe => self.not_probe,
            ProbeDrop::BadLength => self.bad_length,
            ProbeDrop::UnknownTag => self.unknown_tag,
            ProbeDrop::BadAuth => self.bad_auth,
            ProbeDrop::BadBody => self.bad_body,
            ProbeDrop::Replayed => self.replayed,
            ProbeDrop::Unsolicited => self.unsolicited,
            ProbeDrop::WrongSource => self.wrong_source,
            ProbeDrop::BadSource => self.bad_source,
        }
    }

    /// All drops, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        ProbeDrop::ALL.iter().map(|reason| self.dropped(*reason)).sum()
    }

    pub(crate) fn count(&mut self, reason: ProbeDrop) {
        let counter = match reason {
            ProbeDrop::NotProbe => &mut self.not_probe,
            ProbeDrop::BadLength => &mut self.bad_length,
            ProbeDrop::UnknownTag => &mut self.unknown_tag,
            ProbeDrop::BadAuth => &mut self.bad_auth,
            ProbeDrop::BadBody => &mut self.bad_body,
            ProbeDrop::Replayed => &mut self.replayed,
            ProbeDrop::Unsolicited => &mut self.unsolicited,
            ProbeDrop::WrongSource => &mut self.wrong_source,
            ProbeDrop::BadSource => &mut self.bad_source,
        };
        *counter = counter.saturating_add(1);
    }
}

/// What the state machine holds, for checking its bounds (tests, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    pub peers: usize,
    pub candidates: usize,
    pub outstanding_pings: usize,
    pub remembered_nonces: usize,
    pub queued_transmits: usize,
    pub queued_events: usize,
    /// The largest per-peer figures.
    pub max_remote_candidates: usize,
    pub max_peer_reflexive: usize,
    pub max_outstanding_per_candidate: usize,
    pub max_nonces: usize,
    pub max_queued_transmits: usize,
}
