//! One remote address of a peer and what we know about the path to it.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::probe::TxId;
use crate::status::{CandidateOrigin, CandidateState, CandidateStatus};
use crate::timing::{
    DIRECT_DEAD_AFTER, FAST_INTERVAL, FAST_PHASE, HEARTBEAT_INTERVAL, MAX_OUTSTANDING_PER_CANDIDATE,
    PEER_REFLEXIVE_TTL, PING_TIMEOUT, RETRY_INTERVAL, RTT_TIE_MARGIN, SLOW_INTERVAL, SLOW_PHASE, STALE_AFTER,
    after,
};

#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) addr: SocketAddr,
    pub(crate) origin: CandidateOrigin,
    /// The schedule's reference: the fast phase runs for [`FAST_PHASE`] from here.
    pub(crate) phase_start: Instant,
    pub(crate) next_ping: Instant,
    pub(crate) last_ping: Option<Instant>,
    outstanding: VecDeque<(TxId, Instant)>,
    pub(crate) srtt: Option<Duration>,
    pub(crate) last_pong: Option<Instant>,
    pub(crate) last_rx: Option<Instant>,
    /// Any sign of the peer at this address (valid ping, pong, WireGuard);
    /// peer-reflexive candidates expire from it.
    pub(crate) last_seen: Instant,
    /// Verified and not yet found silent; kept as a flag so that a deadline
    /// that passed is reported once, not forever.
    live: bool,
    /// A remote candidate the peer no longer lists, kept while it works.
    pub(crate) withdrawn: bool,
    pings_sent: u64,
    pongs_received: u64,
}

impl Candidate {
    pub(crate) fn new(addr: SocketAddr, origin: CandidateOrigin, now: Instant) -> Candidate {
        Candidate {
            addr,
            origin,
            phase_start: now,
            next_ping: now,
            last_ping: None,
            outstanding: VecDeque::new(),
            srtt: None,
            last_pong: None,
            last_rx: None,
            last_seen: now,
            live: false,
            withdrawn: false,
            pings_sent: 0,
            pongs_received: 0,
        }
    }

    /// The last pong or WireGuard datagram from it.
    fn last_alive(&self) -> Option<Instant> {
        match (self.last_pong, self.last_rx) {
            (Some(pong), Some(rx)) => Some(pong.max(rx)),
            (Some(pong), None) => Some(pong),
            (None, _) => None,
        }
    }

    /// When the path dies unless heard from again (only while live).
    pub(crate) fn dead_at(&self) -> Option<Instant> {
        if !self.live {
            return None;
        }
        self.last_alive().map(|last| after(last, DIRECT_DEAD_AFTER))
    }

    /// Live but not heard from for [`STALE_AFTER`]: it missed a heartbeat.
    pub(crate) fn is_stale(&self, now: Instant) -> bool {
        self.last_alive().is_none_or(|last| now.saturating_duration_since(last) > STALE_AFTER)
    }

    pub(crate) fn is_live(&self, now: Instant) -> bool {
        self.dead_at().is_some_and(|dead_at| now < dead_at)
    }

    /// Turns the live flag off once the deadline passed.
    pub(crate) fn check_dead(&mut self, now: Instant) {
        if self.live && !self.is_live(now) {
            self.live = false;
        }
    }

    pub(crate) fn state(&self) -> CandidateState {
        match (self.live, self.last_pong) {
            (true, _) => CandidateState::Live,
            (false, Some(_)) => CandidateState::Dead,
            (false, None) => CandidateState::Probing,
        }
    }

    /// When this candidate is forgotten (peer-reflexive ones only).
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        match self.origin {
            CandidateOrigin::PeerReflexive => Some(after(self.last_seen, PEER_REFLEXIVE_TTL)),
            CandidateOrigin::Remote => None,
        }
    }

    /// The interval to the next ping, given whether the peer is on a direct path.
    pub(crate) fn interval(&self, now: Instant, peer_direct: bool) -> Duration {
        if self.is_live(now) {
            return HEARTBEAT_INTERVAL;
        }
        let age = now.saturating_duration_since(self.phase_start);
        if age < FAST_PHASE {
            FAST_INTERVAL
        } else if peer_direct || age >= SLOW_PHASE {
            RETRY_INTERVAL
        } else {
            SLOW_INTERVAL
        }
    }

    /// Records a ping sent now with `txid`, forgetting the oldest beyond the bound.
    pub(crate) fn sent_ping(&mut self, txid: TxId, now: Instant, peer_direct: bool) {
        while self.outstanding.len() >= MAX_OUTSTANDING_PER_CANDIDATE {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((txid, now));
        self.last_ping = Some(now);
        self.pings_sent = self.pings_sent.saturating_add(1);
        self.next_ping = after(now, self.interval(now, peer_direct));
    }

    /// Whether `txid` is one of our pings to this candidate still waiting for its pong.
    pub(crate) fn is_outstanding(&self, txid: &TxId, now: Instant) -> bool {
        self.outstanding
            .iter()
            .any(|(id, sent)| id == txid && now.saturating_duration_since(*sent) < PING_TIMEOUT)
    }

    /// Consumes the transaction and marks the path verified; returns whether it matched.
    pub(crate) fn verify(&mut self, txid: &TxId, now: Instant) -> bool {
        let Some(position) = self.outstanding.iter().position(|(id, _)| id == txid) else {
            return false;
        };
        let Some((_, sent)) = self.outstanding.remove(position) else {
            return false;
        };
        let sample = now.saturating_duration_since(sent);
        // RFC 6298's smoothing: one new sample moves the estimate by an eighth.
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(srtt) => (srtt.saturating_mul(7).saturating_add(sample)) / 8,
        });
        self.last_pong = Some(now);
        self.last_seen = now;
        self.live = true;
        self.pongs_received = self.pongs_received.saturating_add(1);
        true
    }

    /// Authenticated WireGuard traffic arrived from this address.
    pub(crate) fn note_rx(&mut self, now: Instant) {
        self.last_seen = now;
        // Traffic keeps a verified path alive; it never verifies one by itself.
        if self.is_live(now) {
            self.last_rx = Some(now);
        }
    }

    /// Forgets outstanding pings past their timeout; returns how many.
    pub(crate) fn expire_pings(&mut self, now: Instant) -> usize {
        let before = self.outstanding.len();
        self.outstanding.retain(|(_, sent)| now.saturating_duration_since(*sent) < PING_TIMEOUT);
        before.saturating_sub(self.outstanding.len())
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Restarts the schedule as if the candidate were new (`phase_start`)
    /// with a ping due at once.
    pub(crate) fn restart(&mut self, phase_start: Instant, now: Instant) {
        self.phase_start = phase_start;
        self.next_ping = now;
    }

    pub(crate) fn status(&self) -> CandidateStatus {
        CandidateStatus {
            addr: self.addr,
            origin: self.origin,
            state: self.state(),
            rtt: self.srtt,
            last_pong: self.last_pong,
            last_rx: self.last_rx,
            pings_sent: self.pings_sent,
            pongs_received: self.pongs_received,
        }
    }
}

/// Whether the live path `challenger` should replace the live path
/// `incumbent`: the incumbent has been withdrawn by the peer or went quiet
/// (the peer probably moved) while the challenger did not, or the challenger
/// is [`better`].
pub(crate) fn replaces(challenger: &Candidate, incumbent: &Candidate, now: Instant) -> bool {
    if incumbent.withdrawn != challenger.withdrawn {
        return incumbent.withdrawn;
    }
    let (incumbent_stale, challenger_stale) = (incumbent.is_stale(now), challenger.is_stale(now));
    if incumbent_stale != challenger_stale {
        return incumbent_stale;
    }
    better(challenger, incumbent)
}

/// Whether `a` is a better direct path than `b`: a clearly lower round-trip
/// time wins; about the same (within 1 ms or 10 %) goes to a private address
/// over a public one, which keeps traffic inside a shared LAN.
pub(crate) fn better(a: &Candidate, b: &Candidate) -> bool {
    let (rtt_a, rtt_b) = (a.srtt.unwrap_or(Duration::MAX), b.srtt.unwrap_or(Duration::MAX));
    let margin = RTT_TIE_MARGIN.max(rtt_a.min(rtt_b) / 10);
    if rtt_a.saturating_add(margin) < rtt_b {
        return true;
    }
    if rtt_b.saturating_add(margin) < rtt_a {
        return false;
    }
    is_private(a.addr.ip()) && !is_private(b.addr.ip())
}

/// Host-scope addresses: RFC 1918, link-local, loopback, IPv6 unique-local.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// Addresses a datagram can be sent to (and an answer can come from).
pub(crate) fn is_usable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = match ip {
        IpAddr::V4(v4) => v4.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(addr: &str, rtt_ms: u64, t0: Instant) -> Candidate {
        let mut candidate = Candidate::new(addr.parse().unwrap(), CandidateOrigin::Remote, t0);
        candidate.sent_ping([1; 12], t0, false);
        assert!(candidate.verify(&[1; 12], t0 + Duration::from_millis(rtt_ms)));
        candidate
    }

    #[test]
    fn lower_rtt_wins_and_private_wins_ties() {
        let t0 = Instant::now();
        let public_fast = verified("198.51.100.1:1", 10, t0);
        let public_slow = verified("198.51.100.2:1", 40, t0);
        let private_same = verified("192.168.1.2:1", 10, t0);
        let private_slightly_slower = verified("192.168.1.3:1", 11, t0);
        assert!(better(&public_fast, &public_slow));
        assert!(!better(&public_slow, &public_fast));
        assert!(better(&private_same, &public_fast));
        assert!(!better(&public_fast, &private_same));
        assert!(better(&private_slightly_slower, &public_fast));
        assert!(!better(&public_fast, &public_fast));
    }

    #[test]
    fn smoothed_rtt_moves_by_an_eighth() {
        let t0 = Instant::now();
        let mut candidate = verified("198.51.100.1:1", 80, t0);
        assert_eq!(candidate.srtt, Some(Duration::from_millis(80)));
        let t1 = t0 + Duration::from_secs(1);
        candidate.sent_ping([2; 12], t1, true);
        assert!(candidate.verify(&[2; 12], t1 + Duration::from_millis(160)));
        assert_eq!(candidate.srtt, Some(Duration::from_millis(90)));
    }

    #[test]
    fn a_transaction_is_single_use_and_expires() {
        let t0 = Instant::now();
        let mut candidate = Candidate::new("198.51.100.1:1".parse().unwrap(), CandidateOrigin::Remote, t0);
        candidate.sent_ping([1; 12], t0, false);
        assert!(candidate.is_outstanding(&[1; 12], t0 + PING_TIMEOUT - Duration::from_millis(1)));
        assert!(!candidate.is_outstanding(&[1; 12], t0 + PING_TIMEOUT));
        assert!(candidate.verify(&[1; 12], t0 + Duration::from_millis(5)));
        assert!(!candidate.is_outstanding(&[1; 12], t0 + Duration::from_millis(6)));
        assert!(!candidate.verify(&[1; 12], t0 + Duration::from_millis(6)));
    }

    #[test]
    fn liveness_lasts_dead_after_from_the_last_sign() {
        let t0 = Instant::now();
        let mut candidate = verified("198.51.100.1:1", 10, t0);
        let pong_at = t0 + Duration::from_millis(10);
        assert!(candidate.is_live(pong_at + DIRECT_DEAD_AFTER - Duration::from_millis(1)));
        candidate.note_rx(pong_at + Duration::from_secs(3));
        assert!(candidate.is_live(pong_at + DIRECT_DEAD_AFTER + Duration::from_secs(2)));
        let dead = pong_at + Duration::from_secs(3) + DIRECT_DEAD_AFTER;
        assert!(!candidate.is_live(dead));
        candidate.check_dead(dead);
        assert_eq!(candidate.state(), CandidateState::Dead);
        // Traffic after death does not revive it; only a pong does.
        candidate.note_rx(dead + Duration::from_millis(1));
        assert_eq!(candidate.state(), CandidateState::Dead);
        assert_eq!(candidate.dead_at(), None);
    }

    #[test]
    fn schedule_fast_then_slow_then_retry() {
        let t0 = Instant::now();
        let candidate = Candidate::new("198.51.100.1:1".parse().unwrap(), CandidateOrigin::Remote, t0);
        assert_eq!(candidate.interval(t0, false), FAST_INTERVAL);
        assert_eq!(candidate.interval(t0 + FAST_PHASE, false), SLOW_INTERVAL);
        assert_eq!(candidate.interval(t0 + FAST_PHASE, true), RETRY_INTERVAL);
        assert_eq!(candidate.interval(t0 + SLOW_PHASE, false), RETRY_INTERVAL);
        let live = verified("198.51.100.2:1", 10, t0);
        assert_eq!(live.interval(t0 + Duration::from_millis(20), true), HEARTBEAT_INTERVAL);
    }

    #[test]
    fn outstanding_pings_are_bounded() {
        let t0 = Instant::now();
        let mut candidate = Candidate::new("198.51.100.1:1".parse().unwrap(), CandidateOrigin::Remote, t0);
        for i in 0..100u8 {
            candidate.sent_ping([i; 12], t0, false);
        }
        assert_eq!(candidate.outstanding(), MAX_OUTSTANDING_PER_CANDIDATE);
        assert!(candidate.is_outstanding(&[99; 12], t0));
        assert!(!candidate.is_outstanding(&[0; 12], t0));
    }

    #[test]
    fn usable_addresses() {
        for bad in ["0.0.0.0:1", "192.0.2.1:0", "255.255.255.255:1", "224.0.0.1:1", "[::]:1", "[ff02::1]:1"] {
            assert!(!is_usable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.0.2.1:1", "10.0.0.1:51820", "[2001:db8::1]:1", "127.0.0.1:1"] {
            assert!(is_usable(good.parse().unwrap()), "{good}");
        }
    }
}
