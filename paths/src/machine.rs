//! [`Paths`]: all peers of one endpoint.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand_core::{CryptoRng, CryptoRngCore, RngCore};

use crate::peer::{Io, Peer};
use crate::probe::{self, ProbeBody, ProbeDrop};
use crate::secrets::{PeerKey, ProbeSecrets, TAG_LEN};
use crate::status::{Event, MemoryUse, PathStatus, ProbeStats, Transmit};

/// How to reach a peer at first.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    pub secrets: ProbeSecrets,
    /// Where relayed datagrams go (a UDP relay, or a virtual address of the WebSocket relay).
    pub relay: Option<SocketAddr>,
    /// The peer's candidates (host and server-reflexive addresses of its WireGuard socket).
    pub remote_candidates: Vec<SocketAddr>,
}

/// A peer could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddPeerError {
    /// Another peer's probes carry the same receiver tag; the two could not
    /// be told apart (only possible with the same key pair twice).
    #[error("another peer already uses this probe tag")]
    TagInUse,
}

/// Path selection for every peer of one endpoint, sans IO. See the crate
/// documentation for the call protocol.
pub struct Paths {
    rng: Box<dyn CryptoRngCore + Send>,
    // Ordered maps: iteration order (and so the order of transmits) does not
    // depend on a hasher's seed, which keeps simulations reproducible.
    peers: BTreeMap<PeerKey, Peer>,
    by_tag: BTreeMap<[u8; TAG_LEN], PeerKey>,
    transmits: VecDeque<(PeerKey, Transmit)>,
    events: VecDeque<Event>,
    stats: ProbeStats,
}

impl std::fmt::Debug for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paths")
            .field("peers", &self.peers.len())
            .field("transmits", &self.transmits.len())
            .field("events", &self.events.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

macro_rules! io {
    ($self:ident) => {
        Io {
            rng: $self.rng.as_mut(),
            stats: &mut $self.stats,
            transmits: &mut $self.transmits,
            events: &mut $self.events,
        }
    };
}

impl Paths {
    /// A state machine with no peers, drawing transaction ids and nonces from `rng`.
    pub fn new(rng: impl RngCore + CryptoRng + Send + 'static) -> Paths {
        Paths {
            rng: Box::new(rng),
            peers: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ProbeStats::default(),
        }
    }

    /// Starts managing `peer`: selects the relay at once (if there is one) and
    /// starts probing its candidates. Adding a known peer again starts it over.
    pub fn add_peer(&mut self, peer: PeerKey, setup: PeerSetup, now: Instant) -> Result<(), AddPeerError> {
        if self.by_tag.get(&setup.secrets.tag_in).is_some_and(|owner| *owner != peer) {
            return Err(AddPeerError::TagInUse);
        }
        self.remove_peer(&peer);
        let PeerSetup { secrets, relay, remote_candidates } = setup;
        self.by_tag.insert(secrets.tag_in, peer);
        let mut state = Peer::new(peer, secrets, relay, now);
        let mut io = io!(self);
        state.select(now, &mut io);
        state.set_remote(remote_candidates, now, &mut io);
        self.peers.insert(peer, state);
        Ok(())
    }

    /// Forgets `peer` at once: its candidates, its queued transmits and
    /// events; no probe for it goes out after this.
    pub fn remove_peer(&mut self, peer: &PeerKey) {
        if let Some(state) = self.peers.remove(peer) {
            self.by_tag.remove(&state.secrets.tag_in);
        }
        self.transmits.retain(|(owner, _)| owner != peer);
        self.events.retain(|event| event.peer() != peer);
    }

    /// Replaces the peer's remote candidates (the cloud pushed new ones).
    /// Unchanged addresses keep their state; new ones are pinged at once.
    pub fn set_remote_candidates(&mut self, peer: &PeerKey, candidates: Vec<SocketAddr>, now: Instant) {
        let mut io = io!(self);
        if let Some(state) = self.peers.get_mut(peer) {
            state.set_remote(candidates, now, &mut io);
        }
    }

    /// Sets (or takes away) the peer's relay address.
    pub fn set_relay(&mut self, peer: &PeerKey, relay: Option<SocketAddr>, now: Instant) {
        let mut io = io!(self);
        if let Some(state) = self.peers.get_mut(peer) {
            state.set_relay(relay, now, &mut io);
        }
    }

    /// This end's network changed (new addresses, new NAT): every candidate
    /// of every peer is probed fast again.
    pub fn network_changed(&mut self, now: Instant) {
        let mut io = io!(self);
        for state in self.peers.values_mut() {
            state.restart(now, &mut io);
        }
    }

    /// A datagram of the probe type ([`is_probe`](crate::is_probe)) arrived
    /// on the WireGuard socket from `from`. `Err` says why it was dropped (and
    /// was counted); the shell need not do anything with it.
    pub fn handle_probe(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Result<(), ProbeDrop> {
        let result = self.probe(from, datagram, now);
        if let Err(reason) = result {
            self.stats.count(reason);
        }
        result
    }

    fn probe(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Result<(), ProbeDrop> {
        let tag = probe::probe_tag(datagram)?;
        let key = self.by_tag.get(&tag).copied().ok_or(ProbeDrop::UnknownTag)?;
        let mut io = io!(self);
        let state = self.peers.get_mut(&key).ok_or(ProbeDrop::UnknownTag)?;
        let opened = probe::open(&state.secrets, datagram)?;
        if state.is_replay(&opened.nonce) {
            return Err(ProbeDrop::Replayed);
        }
        match opened.body {
            ProbeBody::Ping { txid } => state.handle_ping(from, txid, &opened.nonce, now, &mut io),
            ProbeBody::Pong { txid, observed } => {
                state.handle_pong(from, txid, observed, &opened.nonce, now, &mut io)
            }
        }
    }

    /// Authenticated WireGuard traffic of `peer` arrived from `from`: keeps a
    /// live direct path to that address alive, and makes an unknown address a
    /// candidate to verify (the peer roamed).
    pub fn note_rx(&mut self, peer: &PeerKey, from: SocketAddr, now: Instant) {
        let mut io = io!(self);
        if let Some(state) = self.peers.get_mut(peer) {
            state.note_rx(from, now, &mut io);
        }
    }

    /// Time reached `now` (at or after [`poll_timeout`](Paths::poll_timeout)):
    /// pings what is due, expires what is old, falls back from dead paths.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut io = io!(self);
        for state in self.peers.values_mut() {
            state.on_timeout(now, &mut io);
        }
    }

    /// The next probe to send from the WireGuard socket.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let (owner, transmit) = self.transmits.pop_front()?;
        if let Some(state) = self.peers.get_mut(&owner) {
            state.queued = state.queued.saturating_sub(1);
        }
        Some(transmit)
    }

    /// The next selection change to carry out.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Paths::handle_timeout) must be called next;
    /// `None` when nothing is scheduled (no peer has a candidate).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(Peer::next_timeout).min()
    }

    /// The receiver tags of valid probes for this end (for the gateway's uplink guard).
    pub fn tags_in(&self) -> impl Iterator<Item = [u8; TAG_LEN]> + '_ {
        self.by_tag.keys().copied()
    }

    /// The path state of `peer`, for `ferry status`.
    pub fn status(&self, peer: &PeerKey) -> Option<PathStatus> {
        self.peers.get(peer).map(Peer::status)
    }

    /// The peers being managed.
    pub fn peers(&self) -> impl Iterator<Item = &PeerKey> + '_ {
        self.peers.keys()
    }

    /// Counters of probes sent, received and dropped (by reason).
    pub fn stats(&self) -> &ProbeStats {
        &self.stats
    }

    /// What is held in memory, with the per-peer maxima.
    pub fn memory(&self) -> MemoryUse {
        let mut memory = MemoryUse {
            peers: self.peers.len(),
            queued_transmits: self.transmits.len(),
            queued_events: self.events.len(),
            ..MemoryUse::default()
        };
        for state in self.peers.values() {
            let candidates = state.candidates();
            let reflexive = candidates
                .iter()
                .filter(|c| c.origin == crate::status::CandidateOrigin::PeerReflexive)
                .count();
            memory.candidates += candidates.len();
            memory.max_remote_candidates =
                memory.max_remote_candidates.max(candidates.len().saturating_sub(reflexive));
            memory.max_peer_reflexive = memory.max_peer_reflexive.max(reflexive);
            for candidate in candidates {
                memory.outstanding_pings += candidate.outstanding();
                memory.max_outstanding_per_candidate =
                    memory.max_outstanding_per_candidate.max(candidate.outstanding());
            }
            memory.remembered_nonces += state.remembered_nonces();
            memory.max_nonces = memory.max_nonces.max(state.remembered_nonces());
            memory.max_queued_transmits = memory.max_queued_transmits.max(state.queued);
        }
        memory
    }
}
