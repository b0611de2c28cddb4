//! One peer's candidates, selection and schedule.

use std::collections::VecDeque;
use std::mem;
use std::net::SocketAddr;
use std::time::Instant;

use rand_core::CryptoRngCore;

use crate::candidate::{Candidate, is_usable, replaces};
use crate::probe::{self, NONCE_LEN, ProbeBody, ProbeDrop, TxId};
use crate::replay::NonceCache;
use crate::secrets::{PeerKey, ProbeSecrets};
use crate::status::{CandidateOrigin, Event, PathStatus, ProbeStats, Selected, Transmit, why};
use crate::timing::{
    FAST_INTERVAL, FAST_PHASE, MAX_PEER_REFLEXIVE, MAX_QUEUED_TRANSMITS_PER_PEER, MAX_REMOTE_CANDIDATES,
    before,
};

/// The parts of [`Paths`](crate::Paths) a peer writes to while it works.
pub(crate) struct Io<'a> {
    pub(crate) rng: &'a mut (dyn CryptoRngCore + Send),
    pub(crate) stats: &'a mut ProbeStats,
    pub(crate) transmits: &'a mut VecDeque<(PeerKey, Transmit)>,
    pub(crate) events: &'a mut VecDeque<Event>,
}

impl Io<'_> {
    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.rng.fill_bytes(&mut bytes);
        bytes
    }
}

#[derive(Debug)]
pub(crate) struct Peer {
    key: PeerKey,
    pub(crate) secrets: ProbeSecrets,
    relay: Option<SocketAddr>,
    /// Remote candidates in the order given, then peer-reflexive ones.
    candidates: Vec<Candidate>,
    selected: Selected,
    selected_since: Instant,
    why: &'static str,
    nonces: NonceCache,
    pub(crate) queued: usize,
    observed: Option<SocketAddr>,
}

impl Peer {
    pub(crate) fn new(key: PeerKey, secrets: ProbeSecrets, relay: Option<SocketAddr>, now: Instant) -> Peer {
        Peer {
            key,
            secrets,
            relay,
            candidates: Vec::new(),
            selected: Selected::None,
            selected_since: now,
            why: why::NO_PATH,
            nonces: NonceCache::default(),
            queued: 0,
            observed: None,
        }
    }

    fn is_direct(&self) -> bool {
        matches!(self.selected, Selected::Direct(_))
    }

    fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.candidates.iter().position(|c| c.addr == addr)
    }

    /// Replaces the remote candidates. Known addresses keep their state (and
    /// schedule: an unchanged list starts no new fast phase); a live one that
    /// left the list stays as peer-reflexive until it dies and expires.
    pub(crate) fn set_remote(&mut self, list: Vec<SocketAddr>, now: Instant, io: &mut Io<'_>) {
        let mut wanted: Vec<SocketAddr> = Vec::new();
        for addr in list {
            let refused = !is_usable(addr)
                || Some(addr) == self.relay
                || wanted.contains(&addr)
                || wanted.len() >= MAX_REMOTE_CANDIDATES;
            if refused {
                io.stats.candidates_ignored = io.stats.candidates_ignored.saturating_add(1);
            } else {
                wanted.push(addr);
            }
        }
        let mut old: Vec<Option<Candidate>> = mem::take(&mut self.candidates).into_iter().map(Some).collect();
        let mut next = Vec::with_capacity(wanted.len() + MAX_PEER_REFLEXIVE);
        for addr in &wanted {
            let known = old.iter_mut().find(|slot| slot.as_ref().is_some_and(|c| c.addr == *addr));
            let mut candidate = match known.and_then(Option::take) {
                Some(candidate) => candidate,
                None => Candidate::new(*addr, CandidateOrigin::Remote, now),
            };
            candidate.origin = CandidateOrigin::Remote;
            candidate.withdrawn = false;
            next.push(candidate);
        }
        for mut candidate in old.into_iter().flatten() {
            match candidate.origin {
                CandidateOrigin::PeerReflexive => next.push(candidate),
                CandidateOrigin::Remote if candidate.is_live(now) => {
                    candidate.origin = CandidateOrigin::PeerReflexive;
                    candidate.withdrawn = true;
                    next.push(candidate);
                }
                CandidateOrigin::Remote => {}
            }
        }
        self.candidates = next;
        while self.reflexive_count() > MAX_PEER_REFLEXIVE {
            if !self.evict_reflexive(io) {
                break;
            }
        }
        self.select(now, io);
        self.send_due(now, io);
    }

    pub(crate) fn set_relay(&mut self, relay: Option<SocketAddr>, now: Instant, io: &mut Io<'_>) {
        let old = mem::replace(&mut self.relay, relay);
        if let Some(relay) = relay {
            let before = self.candidates.len();
            self.candidates.retain(|c| c.addr != relay);
            let removed = before.saturating_sub(self.candidates.len());
            io.stats.candidates_ignored = io.stats.candidates_ignored.saturating_add(removed as u64);
        }
        if self.selected == Selected::Relay && relay.is_some() && old != relay {
            // The shell must re-point the peer at the new relay address.
            self.set_selected(Selected::Relay, why::RELAY_CHANGED, now, io);
        }
        self.select(now, io);
        self.send_due(now, io);
    }

    /// Restarts the fast phase of every candidate (this end's network changed).
    pub(crate) fn restart(&mut self, now: Instant, io: &mut Io<'_>) {
        for candidate in &mut self.candidates {
            candidate.restart(now, now);
        }
        self.send_due(now, io);
    }

    /// Time passed: expire what is old, check liveness, select, ping what is due.
    pub(crate) fn on_timeout(&mut self, now: Instant, io: &mut Io<'_>) {
        self.nonces.expire(now);
        let mut timeouts = 0usize;
        for candidate in &mut self.candidates {
            timeouts += candidate.expire_pings(now);
            candidate.check_dead(now);
        }
        io.stats.ping_timeouts = io.stats.ping_timeouts.saturating_add(timeouts as u64);
        // Select before expiring, so that the selected path (kept below) is a live one.
        self.select(now, io);
        let selected = match self.selected {
            Selected::Direct(addr) => Some(addr),
            _ => None,
        };
        let before = self.candidates.len();
        self.candidates.retain(|c| {
            Some(c.addr) == selected || c.is_live(now) || c.expires_at().is_none_or(|at| now < at)
        });
        let expired = before.saturating_sub(self.candidates.len());
        io.stats.reflexive_expired = io.stats.reflexive_expired.saturating_add(expired as u64);
        self.send_due(now, io);
    }

    /// The earliest time at which [`Peer::on_timeout`] has something to do.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.candidates.iter().flat_map(|c| [Some(c.next_ping), c.dead_at(), c.expires_at()]).flatten().min()
    }

    pub(crate) fn handle_ping(
        &mut self,
        from: SocketAddr,
        txid: TxId,
        nonce: &[u8; NONCE_LEN],
        now: Instant,
        io: &mut Io<'_>,
    ) -> Result<(), ProbeDrop> {
        if !is_usable(from) {
            return Err(ProbeDrop::BadSource);
        }
        self.nonces.insert(nonce, now);
        io.stats.pings_received = io.stats.pings_received.saturating_add(1);
        // A ping never moves a path: it earns a pong to its source, of its own size.
        if self.send(from, &ProbeBody::Pong { txid, observed: from }, io) {
            io.stats.pongs_sent = io.stats.pongs_sent.saturating_add(1);
        }
        if Some(from) == self.relay {
            return Ok(());
        }
        let index = match self.position(from) {
            Some(index) => Some(index),
            None => self.add_reflexive(from, now, io),
        };
        if let Some(candidate) = index.and_then(|index| self.candidates.get_mut(index)) {
            candidate.last_seen = now;
            // A triggered check: the peer is probing this pair right now, so
            // ping back at once rather than at the next slot, at most every
            // FAST_INTERVAL so that two ends cannot drive each other faster.
            let recently =
                candidate.last_ping.is_some_and(|at| now.saturating_duration_since(at) < FAST_INTERVAL);
            if !candidate.is_live(now) && !recently {
                candidate.next_ping = now;
            }
        }
        self.send_due(now, io);
        Ok(())
    }

    pub(crate) fn handle_pong(
        &mut self,
        from: SocketAddr,
        txid: TxId,
        observed: SocketAddr,
        nonce: &[u8; NONCE_LEN],
        now: Instant,
        io: &mut Io<'_>,
    ) -> Result<(), ProbeDrop> {
        let Some(index) = self.candidates.iter().position(|c| c.is_outstanding(&txid, now)) else {
            return Err(ProbeDrop::Unsolicited);
        };
        let Some(candidate) = self.candidates.get_mut(index) else {
            return Err(ProbeDrop::Unsolicited);
        };
        if candidate.addr != from {
            // Left outstanding, and its nonce unrecorded: a copy raced ahead
            // from elsewhere must not spoil the genuine pong.
            return Err(ProbeDrop::WrongSource);
        }
        if !candidate.verify(&txid, now) {
            return Err(ProbeDrop::Unsolicited);
        }
        self.nonces.insert(nonce, now);
        self.observed = Some(observed);
        io.stats.pongs_received = io.stats.pongs_received.saturating_add(1);
        self.select(now, io);
        self.send_due(now, io);
        Ok(())
    }

    pub(crate) fn is_replay(&self, nonce: &[u8; NONCE_LEN]) -> bool {
        self.nonces.contains(nonce)
    }

    pub(crate) fn note_rx(&mut self, from: SocketAddr, now: Instant, io: &mut Io<'_>) {
        if Some(from) == self.relay || !is_usable(from) {
            return;
        }
        match self.position(from) {
            Some(index) => {
                if let Some(candidate) = self.candidates.get_mut(index) {
                    candidate.note_rx(now);
                }
                // Traffic on another path than the selected one may make the
                // selected one the staler of the two.
                if self.selected != Selected::Direct(from) {
                    self.select(now, io);
                }
            }
            None => {
                // WireGuard authenticated it: the peer is at a new address
                // (it roamed). Verify it with pings like any candidate.
                self.add_reflexive(from, now, io);
                self.send_due(now, io);
            }
        }
    }

    fn reflexive_count(&self) -> usize {
        self.candidates.iter().filter(|c| c.origin == CandidateOrigin::PeerReflexive).count()
    }

    /// Adds a peer-reflexive candidate, pushing out the least recently seen
    /// one (never the selected path) at the bound; returns its index.
    fn add_reflexive(&mut self, addr: SocketAddr, now: Instant, io: &mut Io<'_>) -> Option<usize> {
        if self.reflexive_count() >= MAX_PEER_REFLEXIVE && !self.evict_reflexive(io) {
            return None;
        }
        self.candidates.push(Candidate::new(addr, CandidateOrigin::PeerReflexive, now));
        io.stats.reflexive_added = io.stats.reflexive_added.saturating_add(1);
        Some(self.candidates.len() - 1)
    }

    fn evict_reflexive(&mut self, io: &mut Io<'_>) -> bool {
        let selected = match self.selected {
            Selected::Direct(addr) => Some(addr),
            _ => None,
        };
        let victim = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.origin == CandidateOrigin::PeerReflexive && Some(c.addr) != selected)
            .min_by_key(|(_, c)| c.last_seen)
            .map(|(index, _)| index);
        match victim {
            Some(index) => {
                self.candidates.remove(index);
                io.stats.reflexive_evicted = io.stats.reflexive_evicted.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Picks the path: the best live direct candidate (keeping the current one
    /// unless another [`replaces`] it), else the relay, else none.
    pub(crate) fn select(&mut self, now: Instant, io: &mut Io<'_>) {
        let current = match self.selected {
            Selected::Direct(addr) => self
                .position(addr)
                .filter(|index| self.candidates.get(*index).is_some_and(|c| c.is_live(now))),
            _ => None,
        };
        let mut best = current;
        for (index, candidate) in self.candidates.iter().enumerate() {
            if !candidate.is_live(now) || Some(index) == best {
                continue;
            }
            let wins = match best.and_then(|b| self.candidates.get(b)) {
                None => true,
                Some(incumbent) => replaces(candidate, incumbent, now),
            };
            if wins {
                best = Some(index);
            }
        }
        let leaving_why = match self.selected {
            Selected::Direct(addr) if self.position(addr).is_some() => {
                if current.is_some() {
                    why::BETTER
                } else {
                    why::DEAD
                }
            }
            Selected::Direct(_) => why::CANDIDATES,
            _ => why::VERIFIED,
        };
        let (selected, reason) = match best.and_then(|index| self.candidates.get(index)) {
            Some(candidate) => (Selected::Direct(candidate.addr), leaving_why),
            None if self.is_direct() => {
                let fallback = if self.relay.is_some() { Selected::Relay } else { Selected::None };
                (fallback, leaving_why)
            }
            None if self.relay.is_some() => (Selected::Relay, why::RELAY),
            None => (Selected::None, why::NO_PATH),
        };
        if selected == self.selected {
            return;
        }
        let leaving_direct = self.is_direct() && !matches!(selected, Selected::Direct(_));
        self.set_selected(selected, reason, now, io);
        if leaving_direct {
            // Back on the relay: probe every candidate again at once, then
            // at the slow pace, to move back as soon as a path answers.
            let phase_start = before(now, FAST_PHASE);
            for candidate in &mut self.candidates {
                candidate.restart(phase_start, now);
            }
        }
    }

    fn set_selected(&mut self, selected: Selected, reason: &'static str, now: Instant, io: &mut Io<'_>) {
        self.selected = selected;
        self.selected_since = now;
        self.why = reason;
        let key = self.key;
        io.events.retain(|event| *event.peer() != key);
        io.events.push_back(Event::Selected { peer: key, selected, why: reason });
    }

    /// Pings every candidate whose slot has come.
    pub(crate) fn send_due(&mut self, now: Instant, io: &mut Io<'_>) {
        let direct = self.is_direct();
        for index in 0..self.candidates.len() {
            let due = self.candidates.get(index).is_some_and(|c| c.next_ping <= now);
            if !due {
                continue;
            }
            let txid: TxId = io.random();
            let Some(candidate) = self.candidates.get_mut(index) else {
                continue;
            };
            candidate.sent_ping(txid, now, direct);
            let to = candidate.addr;
            if self.send(to, &ProbeBody::Ping { txid }, io) {
                io.stats.pings_sent = io.stats.pings_sent.saturating_add(1);
            }
        }
    }

    /// Seals and queues a probe; false when it could not be.
    fn send(&mut self, to: SocketAddr, body: &ProbeBody, io: &mut Io<'_>) -> bool {
        let nonce: [u8; NONCE_LEN] = io.random();
        let Ok(payload) = probe::seal(&self.secrets, &nonce, body) else {
            io.stats.seal_failed = io.stats.seal_failed.saturating_add(1);
            return false;
        };
        if self.queued >= MAX_QUEUED_TRANSMITS_PER_PEER {
            io.stats.transmits_dropped = io.stats.transmits_dropped.saturating_add(1);
            return false;
        }
        self.queued += 1;
        io.transmits.push_back((self.key, Transmit { to, payload: payload.to_vec() }));
        true
    }

    pub(crate) fn status(&self) -> PathStatus {
        let selected_candidate = match self.selected {
            Selected::Direct(addr) => self.position(addr).and_then(|index| self.candidates.get(index)),
            _ => None,
        };
        PathStatus {
            selected: self.selected,
            selected_since: self.selected_since,
            why: self.why,
            relay: self.relay,
            rtt: selected_candidate.and_then(|c| c.srtt),
            last_pong: self.candidates.iter().filter_map(|c| c.last_pong).max(),
            observed: self.observed,
            candidates: self.candidates.iter().map(Candidate::status).collect(),
        }
    }

    pub(crate) fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    pub(crate) fn remembered_nonces(&self) -> usize {
        self.nonces.len()
    }
}
