//! One allocation's bindings: who the two peers are, where they are, and
//! where each datagram goes. Pure: fed datagrams and time, it returns
//! decisions; the runtime does the sending and mirrors the bindings into XDP.
//!
//! The rules:
//! - A handshake initiation or response with a valid mac1 names its sender's
//!   side. An initiation is delivered to the other side's bound address, or,
//!   before that side is bound, to the last address it sent an initiation
//!   from (its candidate). Every address that sends a valid initiation
//!   becomes its side's candidate; it does not change a binding.
//! - A binding is committed, or moved (roaming), only when a handshake
//!   completes through the relay: a response arrives from the address the
//!   initiation was delivered to, with a receiver index equal to the
//!   initiation's sender index. The responder accepted the initiation, which
//!   it only does if the initiator holds its private key; so the initiator's
//!   address is bound. The responder is bound at the address it answered
//!   from if its side had no binding yet.
//! - Until then the old binding stays and keeps forwarding. Transport
//!   messages are forwarded only from a bound address to the other side's
//!   bound address; everything else is dropped, with a reason.
//!
//! A forger who knows both public keys can make mac1-valid initiations. They
//! are delivered to the real peer, which cannot decrypt them and does not
//! answer, so no binding moves. Before both sides are bound a forger could
//! answer an initiation itself and be bound as the responder; the real
//! responder takes its binding back with its next handshake, which is
//! delivered to the committed initiator.

use std::{collections::VecDeque, fmt, time::Duration};

use super::{
    Instant,
    handshake::{Classified, Invalid, Side, Validator},
};

/// Where a peer is: a UDP address, or a WebSocket connection of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    Udp(std::net::SocketAddr),
    Ws(crate::ws::ConnId),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Udp(addr) => write!(f, "udp {addr}"),
            PeerAddr::Ws(conn) => write!(f, "websocket #{conn}"),
        }
    }
}

/// What to do with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Forward(PeerAddr),
    Drop(DropReason),
}

/// Why a datagram was not forwarded. The names are metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a WireGuard message.
    Malformed,
    /// A handshake message whose mac1 fits neither peer.
    BadMac1,
    /// A valid initiation, but the other side has never been seen.
    NoPeer,
    /// A transport message from an address with no binding, or whose other
    /// side has none.
    Unbound,
    /// A response or cookie reply that answers no initiation delivered from
    /// this address.
    UnknownIndex,
}

impl DropReason {
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadMac1 => "bad_mac1",
            DropReason::NoPeer => "no_peer",
            DropReason::Unbound => "unbound",
            DropReason::UnknownIndex => "unknown_index",
        }
    }
}

impl From<Invalid> for DropReason {
    fn from(invalid: Invalid) -> Self {
        match invalid {
            Invalid::Malformed(_) => DropReason::Malformed,
            Invalid::BadMac1 => DropReason::BadMac1,
        }
    }
}

/// Timers of an allocation.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Bindings with no traffic for this long fall back to candidates.
    /// WireGuard sessions die after 180 s without a handshake, so a peer that
    /// is still there has rekeyed within this time.
    pub idle: Duration,
    /// An initiation waits this long for its response (WireGuard retries
    /// after 5 s).
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { idle: Duration::from_secs(200), handshake: Duration::from_secs(10) }
    }
}

/// Initiations remembered per allocation while they wait for a response.
const MAX_PENDING: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Pending {
    sender: u32,
    initiator: Side,
    from: PeerAddr,
    delivered_to: PeerAddr,
    at: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct SideState {
    bound: Option<PeerAddr>,
    candidate: Option<PeerAddr>,
}

/// The binding state machine of one allocation.
pub struct Allocation {
    validator: Validator,
    timeouts: Timeouts,
    sides: [SideState; 2],
    pending: VecDeque<Pending>,
    last_activity: Instant,
    /// Set whenever a binding changes; the runtime takes it to resync XDP.
    changed: bool,
    /// Set whenever a candidate changes: what the state file keeps moved,
    /// but XDP (bindings only) has nothing to resync.
    candidates_changed: bool,
}

impl Allocation {
    pub fn new(validator: Validator, timeouts: Timeouts, now: Instant) -> Allocation {
        Allocation {
            validator,
            timeouts,
            sides: Default::default(),
            pending: VecDeque::new(),
            last_activity: now,
            changed: false,
            candidates_changed: false,
        }
    }

    /// Binds `side` at `addr` without a handshake: a binding the relay
    /// committed before it restarted (see `state_file`), read back from its
    /// own record. Peers cannot be asked to prove it again: a stock WireGuard
    /// peer keeps its session and an idle one sends no handshake.
    pub fn restore(&mut self, side: Side, addr: PeerAddr) {
        self.bind(side, addr);
    }

    /// Makes `addr` the candidate of `side` (restored, as [`restore`]): the
    /// other side's initiations are delivered there until it is bound.
    ///
    /// [`restore`]: Allocation::restore
    pub fn restore_candidate(&mut self, side: Side, addr: PeerAddr) {
        let state = &mut self.sides[side.index()];
        if state.bound.is_none() {
            state.candidate = Some(addr);
        }
    }

    pub fn candidate(&self, side: Side) -> Option<PeerAddr> {
        self.sides[side.index()].candidate
    }

    /// Decides where `datagram`, received from `from`, goes.
    pub fn handle(&mut self, from: PeerAddr, datagram: &[u8], now: Instant) -> Decision {
        let classified = match self.validator.classify(datagram) {
            Ok(classified) => classified,
            Err(invalid) => return Decision::Drop(invalid.into()),
        };
        match classified {
            Classified::Transport => self.transport(from, now),
            Classified::Initiation { to, sender } => self.initiation(from, to.other(), sender, now),
            Classified::Response { to, receiver, .. } => self.response(from, to, receiver, now),
            Classified::CookieReply { receiver } => self.cookie_reply(from, receiver, now),
        }
    }

    fn transport(&mut self, from: PeerAddr, now: Instant) -> Decision {
        match self.bound_side(from).and_then(|side| self.sides[side.other().index()].bound) {
            Some(to) => {
                self.last_activity = now;
                Decision::Forward(to)
            }
            None => Decision::Drop(DropReason::Unbound),
        }
    }

    fn initiation(&mut self, from: PeerAddr, initiator: Side, sender: u32, now: Instant) -> Decision {
        self.expire_pending(now);
        let state = &mut self.sides[initiator.index()];
        if state.bound != Some(from) && state.candidate != Some(from) {
            state.candidate = Some(from);
            self.candidates_changed = true;
        }
        let other = self.sides[initiator.other().index()];
        let Some(delivered_to) = other.bound.or(other.candidate) else {
            return Decision::Drop(DropReason::NoPeer);
        };
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending { sender, initiator, from, delivered_to, at: now });
        Decision::Forward(delivered_to)
    }

    fn response(&mut self, from: PeerAddr, initiator: Side, receiver: u32, now: Instant) -> Decision {
        self.expire_pending(now);
        let position = self
            .pending
            .iter()
            .position(|p| p.sender == receiver && p.initiator == initiator && p.delivered_to == from);
        let Some(pending) = position.and_then(|at| self.pending.remove(at)) else {
            return Decision::Drop(DropReason::UnknownIndex);
        };
        // The initiator proved its key: bind it where it initiated from.
        self.bind(initiator, pending.from);
        let responder = initiator.other();
        if self.sides[responder.index()].bound.is_none() {
            self.bind(responder, from);
        }
        // Older initiations of the same initiator are answered or lost.
        self.pending.retain(|p| p.initiator != initiator || p.at > pending.at);
        self.last_activity = now;
        Decision::Forward(pending.from)
    }

    fn cookie_reply(&mut self, from: PeerAddr, receiver: u32, now: Instant) -> Decision {
        self.expire_pending(now);
        match self.pending.iter().find(|p| p.sender == receiver && p.delivered_to == from) {
            Some(p) => Decision::Forward(p.from),
            None => Decision::Drop(DropReason::UnknownIndex),
        }
    }

    fn bind(&mut self, side: Side, addr: PeerAddr) {
        let state = &mut self.sides[side.index()];
        if state.bound != Some(addr) {
            state.bound = Some(addr);
            state.candidate = None;
            self.changed = true;
        }
    }

    fn expire_pending(&mut self, now: Instant) {
        let timeout = self.timeouts.handshake;
        self.pending.retain(|p| now.saturating_duration_since(p.at) < timeout);
    }

    /// The side bound at `addr`, if any.
    pub fn bound_side(&self, addr: PeerAddr) -> Option<Side> {
        Side::BOTH.into_iter().find(|side| self.sides[side.index()].bound == Some(addr))
    }

    pub fn bound(&self, side: Side) -> Option<PeerAddr> {
        self.sides[side.index()].bound
    }

    /// The forwarding pairs `(from, to)` while both sides are bound.
    pub fn routes(&self) -> Option<[(PeerAddr, PeerAddr); 2]> {
        let (gateway, client) = (self.sides[0].bound?, self.sides[1].bound?);
        Some([(gateway, client), (client, gateway)])
    }

    /// Traffic forwarded elsewhere (XDP) on this allocation's behalf.
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Applies the idle timeout: with no traffic for that long, bindings
    /// become candidates again, so the next handshake re-proves them.
    pub fn poll(&mut self, now: Instant) {
        self.expire_pending(now);
        if now.saturating_duration_since(self.last_activity) >= self.timeouts.idle {
            for state in &mut self.sides {
                if let Some(addr) = state.bound.take() {
                    state.candidate = Some(addr);
                    self.changed = true;
                }
            }
        }
    }

    /// A WebSocket connection ended: forget it on either side.
    pub fn forget(&mut self, addr: PeerAddr) {
        for state in &mut self.sides {
            if state.bound == Some(addr) {
                state.bound = None;
                self.changed = true;
            }
            if state.candidate == Some(addr) {
                state.candidate = None;
                self.candidates_changed = true;
            }
        }
        self.pending.retain(|p| p.from != addr && p.delivered_to != addr);
    }

    /// Whether bindings changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Whether a candidate changed (and no binding did, necessarily) since
    /// the last call: the state file keeps candidates, so that after a
    /// restart the other side's first initiation still has somewhere to go.
    pub fn take_candidates_changed(&mut self) -> bool {
        std::mem::take(&mut self.candidates_changed)
    }
}
