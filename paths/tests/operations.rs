//! Arbitrary sequences of calls and datagrams: `Paths` never panics, stays
//! within its bounds, keeps its selection consistent, never spins on a past
//! timeout, and sends nothing for a peer it does not have.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_paths::probe::{self, ProbeBody, TxId};
use ferry_paths::{
    CandidateState, Event, MAX_OUTSTANDING_PER_CANDIDATE, MAX_PEER_REFLEXIVE, MAX_QUEUED_TRANSMITS_PER_PEER,
    MAX_REMEMBERED_NONCES, MAX_REMOTE_CANDIDATES, PROBE_LEN, Paths, PeerKey, PeerSetup, ProbeSecrets,
    Selected,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const PEERS: u8 = 4;
const LOCAL: [u8; 32] = [0x10; 32];

fn remote_key(peer: u8) -> PeerKey {
    PeerKey([0x20 + peer; 32])
}

/// (this end's secrets, the peer's secrets) for peer `peer`.
fn secrets(peer: u8) -> (ProbeSecrets, ProbeSecrets) {
    let ss = [0x30 + peer; 32];
    let remote = remote_key(peer).0;
    (ProbeSecrets::derive(&ss, &LOCAL, &remote), ProbeSecrets::derive(&ss, &remote, &LOCAL))
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        peer: u8,
        relay: Option<SocketAddr>,
        candidates: Vec<SocketAddr>,
    },
    Remove(u8),
    SetCandidates(u8, Vec<SocketAddr>),
    SetRelay(u8, Option<SocketAddr>),
    Junk {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Ping {
        peer: u8,
        from: SocketAddr,
        txid: TxId,
        nonce: [u8; 24],
    },
    /// The peer answers one of our pings, from where it went or elsewhere.
    Answer {
        which: usize,
        elsewhere: Option<SocketAddr>,
        nonce: [u8; 24],
    },
    /// Something sends one of the valid datagrams again.
    Replay {
        which: usize,
        from: Option<SocketAddr>,
    },
    NoteRx {
        peer: u8,
        from: SocketAddr,
    },
    Advance(u32),
    Timeout,
    Drain(u8),
    NetworkChanged,
}

fn address() -> impl Strategy<Value = SocketAddr> + Clone {
    let pool: Vec<SocketAddr> = [
        "192.0.2.1:51820",
        "192.0.2.2:51820",
        "198.51.100.7:4000",
        "10.0.0.2:51820",
        "[2001:db8::1]:51820",
        "0.0.0.0:0",
        "203.0.113.9:3478",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    prop_oneof![
        4 => proptest::sample::select(pool),
        1 => (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        1 => (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let peer = 0..PEERS;
    let candidates = proptest::collection::vec(address(), 0..40);
    prop_oneof![
        2 => (peer.clone(), proptest::option::of(address()), candidates.clone())
            .prop_map(|(peer, relay, candidates)| Op::Add { peer, relay, candidates }),
        1 => peer.clone().prop_map(Op::Remove),
        2 => (peer.clone(), candidates).prop_map(|(peer, c)| Op::SetCandidates(peer, c)),
        1 => (peer.clone(), proptest::option::of(address())).prop_map(|(peer, relay)| Op::SetRelay(peer, relay)),
        2 => (address(), proptest::collection::vec(any::<u8>(), 0..120), any::<bool>()).prop_map(|(from, mut bytes, typed)| {
            if typed && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&[16, 0, 0, 0]);
            }
            Op::Junk { from, bytes }
        }),
        4 => (peer.clone(), address(), any::<TxId>(), any::<[u8; 24]>())
            .prop_map(|(peer, from, txid, nonce)| Op::Ping { peer, from, txid, nonce }),
        6 => (any::<usize>(), proptest::option::weighted(0.2, address()), any::<[u8; 24]>())
            .prop_map(|(which, elsewhere, nonce)| Op::Answer { which, elsewhere, nonce }),
        2 => (any::<usize>(), proptest::option::of(address())).prop_map(|(which, from)| Op::Replay { which, from }),
        3 => (peer, address()).prop_map(|(peer, from)| Op::NoteRx { peer, from }),
        4 => prop_oneof![0..300u32, 0..70_000u32].prop_map(Op::Advance),
        4 => Just(Op::Timeout),
        3 => (0..100u8).prop_map(Op::Drain),
        1 => Just(Op::NetworkChanged),
    ]
}

struct Harness {
    paths: Paths,
    now: Instant,
    present: BTreeSet<u8>,
    /// Pings we sent: (peer, to, txid), newest last, bounded.
    pings: Vec<(u8, SocketAddr, TxId)>,
    /// Valid datagrams delivered so far: (from, payload), bounded.
    delivered: Vec<(SocketAddr, Vec<u8>)>,
    transmits_seen: u64,
}

impl Harness {
    fn new(seed: u64) -> Harness {
        Harness {
            paths: Paths::new(ChaCha20Rng::seed_from_u64(seed)),
            now: Instant::now(),
            present: BTreeSet::new(),
            pings: Vec::new(),
            delivered: Vec::new(),
            transmits_seen: 0,
        }
    }

    fn deliver(&mut self, from: SocketAddr, payload: Vec<u8>) {
        let _ = self.paths.handle_probe(from, &payload, self.now);
        if self.delivered.len() >= 64 {
            self.delivered.remove(0);
        }
        self.delivered.push((from, payload));
    }

    fn drain(&mut self, limit: usize) -> Result<(), TestCaseError> {
        for _ in 0..limit {
            let Some(transmit) = self.paths.poll_transmit() else { break };
            self.transmits_seen += 1;
            prop_assert_eq!(transmit.payload.len(), PROBE_LEN);
            prop_assert!(transmit.to.port() != 0 && !transmit.to.ip().is_unspecified());
            // Every probe goes to a peer we have: it carries that peer's tag.
            let owner = self.present.iter().copied().find(|peer| {
                let (_, theirs) = secrets(*peer);
                probe::probe_tag(&transmit.payload) == Ok(theirs.tag_in)
            });
            prop_assert!(owner.is_some(), "a probe for a peer that is not there");
            let Some(peer) = owner else { continue };
            let (_, theirs) = secrets(peer);
            let opened = probe::open(&theirs, &transmit.payload);
            prop_assert!(opened.is_ok());
            if let Ok(opened) = opened
                && let ProbeBody::Ping { txid } = opened.body
            {
                if self.pings.len() >= 64 {
                    self.pings.remove(0);
                }
                self.pings.push((peer, transmit.to, txid));
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Add { peer, relay, candidates } => {
                let setup = PeerSetup { secrets: secrets(peer).0, relay, remote_candidates: candidates };
                prop_assert!(self.paths.add_peer(remote_key(peer), setup, self.now).is_ok());
                self.present.insert(peer);
            }
            Op::Remove(peer) => {
                self.paths.remove_peer(&remote_key(peer));
                self.present.remove(&peer);
            }
            Op::SetCandidates(peer, candidates) => {
                self.paths.set_remote_candidates(&remote_key(peer), candidates, self.now)
            }
            Op::SetRelay(peer, relay) => self.paths.set_relay(&remote_key(peer), relay, self.now),
            Op::Junk { from, bytes } => {
                prop_assert!(self.paths.handle_probe(from, &bytes, self.now).is_err());
            }
            Op::Ping { peer, from, txid, nonce } => {
                let wire = probe::seal(&secrets(peer).1, &nonce, &ProbeBody::Ping { txid }).unwrap();
                self.deliver(from, wire.to_vec());
            }
            Op::Answer { which, elsewhere, nonce } => {
                if !self.pings.is_empty() {
                    let (peer, to, txid) = self.pings[which % self.pings.len()];
                    let observed: SocketAddr = "192.0.2.200:1".parse().unwrap();
                    let body = ProbeBody::Pong { txid, observed };
                    let wire = probe::seal(&secrets(peer).1, &nonce, &body).unwrap();
                    self.deliver(elsewhere.unwrap_or(to), wire.to_vec());
                }
            }
            Op::Replay { which, from } => {
                if !self.delivered.is_empty() {
                    let (original, payload) = self.delivered[which % self.delivered.len()].clone();
                    let _ = self.paths.handle_probe(from.unwrap_or(original), &payload, self.now);
                }
            }
            Op::NoteRx { peer, from } => self.paths.note_rx(&remote_key(peer), from, self.now),
            Op::Advance(ms) => self.now += Duration::from_millis(u64::from(ms)),
            Op::Timeout => {
                self.paths.handle_timeout(self.now);
                // Nothing due is left behind: the next timeout is in the future.
                if let Some(next) = self.paths.poll_timeout() {
                    prop_assert!(next > self.now, "poll_timeout {:?} not after now", next - self.now);
                }
            }
            Op::Drain(limit) => {
                self.drain(usize::from(limit))?;
                while let Some(event) = self.paths.poll_event() {
                    let Event::Selected { peer, .. } = event;
                    prop_assert!(self.present.iter().any(|p| remote_key(*p) == peer));
                }
            }
            Op::NetworkChanged => self.paths.network_changed(self.now),
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let memory = self.paths.memory();
        prop_assert_eq!(memory.peers, self.present.len());
        prop_assert!(memory.max_remote_candidates <= MAX_REMOTE_CANDIDATES);
        prop_assert!(memory.max_peer_reflexive <= MAX_PEER_REFLEXIVE);
        prop_assert!(memory.max_outstanding_per_candidate <= MAX_OUTSTANDING_PER_CANDIDATE);
        prop_assert!(memory.max_nonces <= MAX_REMEMBERED_NONCES);
        prop_assert!(memory.max_queued_transmits <= MAX_QUEUED_TRANSMITS_PER_PEER);
        prop_assert!(memory.queued_transmits <= MAX_QUEUED_TRANSMITS_PER_PEER * self.present.len());
        prop_assert!(memory.queued_events <= self.present.len());
        prop_assert_eq!(self.paths.tags_in().count(), self.present.len());
        for peer in &self.present {
            let status = self.paths.status(&remote_key(*peer));
            prop_assert!(status.is_some());
            let Some(status) = status else { continue };
            match status.selected {
                Selected::Direct(addr) => {
                    let candidate = status.candidates.iter().find(|c| c.addr == addr);
                    prop_assert!(candidate.is_some_and(|c| c.state == CandidateState::Live), "{:?}", status);
                    prop_assert!(Some(addr) != status.relay);
                }
                Selected::Relay => prop_assert!(status.relay.is_some()),
                Selected::None => {}
            }
            let addrs: BTreeSet<SocketAddr> = status.candidates.iter().map(|c| c.addr).collect();
            prop_assert_eq!(addrs.len(), status.candidates.len(), "duplicate candidates");
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_operations_stay_sane(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..300)) {
        let mut harness = Harness::new(seed);
        for op in ops {
            harness.apply(op)?;
        }
        harness.drain(usize::MAX)?;
        for peer in 0..PEERS {
            harness.paths.remove_peer(&remote_key(peer));
        }
        harness.present.clear();
        prop_assert_eq!(harness.paths.poll_transmit(), None);
        prop_assert_eq!(harness.paths.poll_timeout(), None);
        prop_assert_eq!(harness.paths.memory().candidates, 0);
    }

}

proptest! {
    // Each case is 150 simulated seconds of steady traffic.
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// A peer that answers every ping at once, from where it went, for a long
    /// time: the per-peer bounds hold under steady valid traffic too.
    #[test]
    fn a_busy_honest_peer_stays_within_bounds(seed in any::<u64>(), candidates in proptest::collection::vec(address(), 0..40)) {
        let mut harness = Harness::new(seed);
        harness.apply(Op::Add { peer: 0, relay: Some("203.0.113.1:3478".parse().unwrap()), candidates })?;
        let mut nonce = 0u64;
        for step in 0..1500u32 {
            harness.apply(Op::Advance(100))?;
            harness.apply(Op::Timeout)?;
            harness.drain(usize::MAX)?;
            let pings = std::mem::take(&mut harness.pings);
            for (which, _) in pings.iter().enumerate() {
                harness.pings = pings.clone();
                nonce += 1;
                let mut bytes = [0u8; 24];
                bytes[..8].copy_from_slice(&nonce.to_le_bytes());
                harness.apply(Op::Answer { which, elsewhere: None, nonce: bytes })?;
            }
            harness.pings.clear();
            // And the peer pings us from a few addresses of its own.
            nonce += 1;
            let mut bytes = [0u8; 24];
            bytes[..8].copy_from_slice(&nonce.to_le_bytes());
            let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, (step % 20) as u8 + 1)), 51820);
            harness.apply(Op::Ping { peer: 0, from, txid: [step as u8; 12], nonce: bytes })?;
            harness.drain(usize::MAX)?;
        }
        // The replay memory filled up and held at its bound.
        prop_assert_eq!(harness.paths.memory().max_nonces, MAX_REMEMBERED_NONCES);
        prop_assert!(harness.paths.stats().pongs_received > 0);
    }
}
