//! `Paths` driven by hand, one peer, exact times: the schedule, verification,
//! the dead rule, peer-reflexive candidates, relay changes and events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_paths::probe::{self, ProbeBody, TxId};
use ferry_paths::{
    AddPeerError, CandidateOrigin, CandidateState, DIRECT_DEAD_AFTER, Event, FAST_INTERVAL, FAST_PHASE,
    HEARTBEAT_INTERVAL, MAX_PEER_REFLEXIVE, MAX_REMOTE_CANDIDATES, PEER_REFLEXIVE_TTL, Paths, PeerKey,
    PeerSetup, ProbeDrop, ProbeSecrets, RETRY_INTERVAL, SLOW_INTERVAL, SLOW_PHASE, Selected, Transmit, why,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const ME: [u8; 32] = [1; 32];
const PEER: PeerKey = PeerKey([2; 32]);
const MS: Duration = Duration::from_millis(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn relay() -> SocketAddr {
    addr("203.0.113.1:3478")
}

/// This end's and the peer's secrets.
fn secrets() -> (ProbeSecrets, ProbeSecrets) {
    (ProbeSecrets::derive(&[9; 32], &ME, &PEER.0), ProbeSecrets::derive(&[9; 32], &PEER.0, &ME))
}

struct Fixture {
    paths: Paths,
    t0: Instant,
    theirs: ProbeSecrets,
    nonce: u64,
}

impl Fixture {
    fn new(relay: Option<SocketAddr>, candidates: Vec<SocketAddr>) -> Fixture {
        let (mine, theirs) = secrets();
        let mut paths = Paths::new(ChaCha20Rng::seed_from_u64(1));
        let t0 = Instant::now();
        paths.add_peer(PEER, PeerSetup { secrets: mine, relay, remote_candidates: candidates }, t0).unwrap();
        Fixture { paths, t0, theirs, nonce: 0 }
    }

    fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.paths.poll_transmit()).collect()
    }

    fn events(&mut self) -> Vec<(Selected, &'static str)> {
        std::iter::from_fn(|| self.paths.poll_event())
            .map(|Event::Selected { peer, selected, why }| {
                assert_eq!(peer, PEER);
                (selected, why)
            })
            .collect()
    }

    fn next_nonce(&mut self) -> [u8; 24] {
        self.nonce += 1;
        let mut nonce = [0xee; 24];
        nonce[..8].copy_from_slice(&self.nonce.to_le_bytes());
        nonce
    }

    /// What the peer reads in a transmit of ours.
    fn read(&self, transmit: &Transmit) -> ProbeBody {
        probe::open(&self.theirs, &transmit.payload).unwrap().body
    }

    fn ping_txid(&self, transmit: &Transmit) -> TxId {
        match self.read(transmit) {
            ProbeBody::Ping { txid } => txid,
            other => panic!("not a ping: {other:?}"),
        }
    }

    /// The peer's pong to `txid`.
    fn pong(&mut self, txid: TxId) -> Vec<u8> {
        let nonce = self.next_nonce();
        let observed = addr("198.51.100.50:40000");
        probe::seal(&self.theirs, &nonce, &ProbeBody::Pong { txid, observed }).unwrap().to_vec()
    }

    /// A fresh ping from the peer.
    fn ping(&mut self, txid: TxId) -> Vec<u8> {
        let nonce = self.next_nonce();
        probe::seal(&self.theirs, &nonce, &ProbeBody::Ping { txid }).unwrap().to_vec()
    }

    /// Runs to `until`, calling `handle_timeout` exactly when asked; returns
    /// every transmit with the time it was made.
    fn run(&mut self, until: Instant) -> Vec<(Instant, Transmit)> {
        let mut out = Vec::new();
        while let Some(at) = self.paths.poll_timeout().filter(|at| *at <= until) {
            self.paths.handle_timeout(at);
            out.extend(self.transmits().into_iter().map(|t| (at, t)));
        }
        out
    }
}

#[test]
fn paths_can_move_to_another_thread() {
    fn is_send<T: Send>() {}
    is_send::<Paths>();
}

#[test]
fn starts_on_the_relay_and_pings_every_candidate_at_once() {
    let candidates = vec![addr("192.0.2.1:51820"), addr("10.0.0.1:51820")];
    let mut f = Fixture::new(Some(relay()), candidates.clone());
    assert_eq!(f.events(), vec![(Selected::Relay, why::RELAY)]);
    let sent = f.transmits();
    assert_eq!(sent.iter().map(|t| t.to).collect::<Vec<_>>(), candidates);
    for transmit in &sent {
        assert!(matches!(f.read(transmit), ProbeBody::Ping { .. }));
    }
    assert_eq!(f.paths.stats().pings_sent, 2);
    assert_eq!(f.paths.poll_timeout(), Some(f.t0 + FAST_INTERVAL));
}

#[test]
fn without_relay_or_candidates_nothing_happens() {
    let mut f = Fixture::new(None, Vec::new());
    assert_eq!(f.events(), vec![]);
    assert_eq!(f.paths.status(&PEER).unwrap().selected, Selected::None);
    assert_eq!(f.paths.poll_timeout(), None);
    assert!(f.transmits().is_empty());
}

#[test]
fn candidates_are_filtered_deduplicated_and_bounded() {
    let mut list = vec![
        addr("0.0.0.0:51820"),
        addr("192.0.2.1:0"),
        addr("224.0.0.1:51820"),
        relay(),
        addr("192.0.2.1:51820"),
        addr("192.0.2.1:51820"),
    ];
    list.extend((0..30).map(|i| SocketAddr::new(format!("198.51.100.{i}").parse().unwrap(), 51820)));
    let mut f = Fixture::new(Some(relay()), list);
    let status = f.paths.status(&PEER).unwrap();
    assert_eq!(status.candidates.len(), MAX_REMOTE_CANDIDATES);
    assert_eq!(status.candidates[0].addr, addr("192.0.2.1:51820"));
    // 4 unusable or the relay's, 1 duplicate, 15 over the bound.
    assert_eq!(f.paths.stats().candidates_ignored, 4 + 1 + 15);
    assert_eq!(f.transmits().len(), MAX_REMOTE_CANDIDATES);
}

/// 200 ms for the first 3 s, 2 s until 30 s, then 5 s.
#[test]
fn the_probing_schedule() {
    let mut f = Fixture::new(Some(relay()), vec![addr("192.0.2.1:51820")]);
    let mut times = vec![f.t0];
    f.transmits();
    times.extend(f.run(f.t0 + Duration::from_secs(60)).into_iter().map(|(at, _)| at));
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let fast = (FAST_PHASE.as_millis() / FAST_INTERVAL.as_millis()) as usize;
    assert!(gaps[..fast].iter().all(|gap| *gap == FAST_INTERVAL), "{gaps:?}");
    for (time, gap) in times.iter().zip(&gaps) {
        let age = *time - f.t0;
        let expected = if age < FAST_PHASE {
            FAST_INTERVAL
        } else if age < SLOW_PHASE {
            SLOW_INTERVAL
        } else {
            RETRY_INTERVAL
        };
        assert_eq!(*gap, expected, "at {age:?}");
    }
    assert!(times.len() > fast + 13 + 5);
}

#[test]
fn a_pong_verifies_heartbeats_keep_it_and_silence_kills_it() {
    let target = addr("192.0.2.1:51820");
    let other = addr("198.51.100.9:51820");
    let mut f = Fixture::new(Some(relay()), vec![target, other]);
    f.events();
    let sent = f.transmits();
    let txid = f.ping_txid(&sent[0]);
    let pong = f.pong(txid);

    // From elsewhere: refused, and the transaction stays open.
    let t = f.t0 + 30 * MS;
    assert_eq!(f.paths.handle_probe(other, &pong, t), Err(ProbeDrop::WrongSource));
    assert_eq!(f.events(), vec![]);
    assert_eq!(f.paths.handle_probe(target, &pong, t), Ok(()));
    assert_eq!(f.events(), vec![(Selected::Direct(target), why::VERIFIED)]);
    // Single use.
    assert_eq!(f.paths.handle_probe(target, &pong, t + MS), Err(ProbeDrop::Replayed));
    let fresh_copy = f.pong(txid);
    assert_eq!(f.paths.handle_probe(target, &fresh_copy, t + MS), Err(ProbeDrop::Unsolicited));

    let status = f.paths.status(&PEER).unwrap();
    assert_eq!(status.rtt, Some(30 * MS));
    assert_eq!(status.last_pong, Some(t));
    assert_eq!(status.observed, Some(addr("198.51.100.50:40000")));

    // Answer every heartbeat to the target for 20 s: it stays, pinged every 2 s.
    let mut heartbeats = Vec::new();
    let mut now = t;
    while now < t + Duration::from_secs(20) {
        now += 10 * MS;
        for (at, transmit) in f.run(now) {
            if transmit.to == target {
                heartbeats.push(at);
                let pong = f.pong(f.ping_txid(&transmit));
                f.paths.handle_probe(target, &pong, at + 10 * MS).unwrap();
            }
        }
    }
    assert_eq!(f.events(), vec![]);
    assert!(heartbeats.len() >= 9, "{heartbeats:?}");
    assert!(heartbeats.windows(2).all(|w| w[1] - w[0] == HEARTBEAT_INTERVAL), "{heartbeats:?}");
    let last_pong = f.paths.status(&PEER).unwrap().last_pong.unwrap();

    // Then silence: dead exactly DIRECT_DEAD_AFTER after the last pong.
    let before_dead = f.run(last_pong + DIRECT_DEAD_AFTER - MS);
    assert_eq!(f.events(), vec![]);
    assert!(!before_dead.is_empty());
    let at_dead = f.run(last_pong + DIRECT_DEAD_AFTER);
    assert_eq!(f.events(), vec![(Selected::Relay, why::DEAD)]);
    // Back on the relay, every candidate is pinged at once.
    let pinged: Vec<SocketAddr> =
        at_dead.iter().filter(|(at, _)| *at == last_pong + DIRECT_DEAD_AFTER).map(|(_, t)| t.to).collect();
    assert!(pinged.contains(&target) && pinged.contains(&other), "{pinged:?}");
    assert_eq!(f.paths.status(&PEER).unwrap().candidates[0].state, CandidateState::Dead);

    // The next pong moves it back.
    let (at, transmit) = at_dead.into_iter().find(|(_, t)| t.to == target).unwrap();
    let pong = f.pong(f.ping_txid(&transmit));
    f.paths.handle_probe(target, &pong, at + 10 * MS).unwrap();
    assert_eq!(f.events(), vec![(Selected::Direct(target), why::VERIFIED)]);
}

#[test]
fn wireguard_traffic_keeps_a_live_path_but_never_makes_one() {
    let target = addr("192.0.2.1:51820");
    let mut f = Fixture::new(Some(relay()), vec![target]);
    f.events();
    // Traffic from a candidate that never answered verifies nothing.
    f.paths.note_rx(&PEER, target, f.t0 + MS);
    assert_eq!(f.paths.status(&PEER).unwrap().selected, Selected::Relay);
    let sent = f.transmits();
    let pong = f.pong(f.ping_txid(&sent[0]));
    let verified_at = f.t0 + 20 * MS;
    f.paths.handle_probe(target, &pong, verified_at).unwrap();
    f.events();
    // No more pongs, but traffic every second for 30 s.
    let mut now = verified_at;
    for _ in 0..30 {
        now += Duration::from_secs(1);
        f.run(now);
        f.paths.note_rx(&PEER, target, now);
    }
    assert_eq!(f.events(), vec![]);
    assert_eq!(f.paths.status(&PEER).unwrap().selected, Selected::Direct(target));
    f.run(now + DIRECT_DEAD_AFTER);
    assert_eq!(f.events(), vec![(Selected::Relay, why::DEAD)]);
}

#[test]
fn a_ping_earns_a_pong_to_its_source_and_makes_it_a_candidate() {
    let mut f = Fixture::new(Some(relay()), vec![addr("192.0.2.1:51820")]);
    f.events();
    f.transmits();
    let source = addr("198.51.100.77:3333");
    let ping = f.ping([7; 12]);
    let t = f.t0 + 50 * MS;
    f.paths.handle_probe(source, &ping, t).unwrap();
    let sent = f.transmits();
    assert_eq!(sent.len(), 2, "a pong and a triggered ping");
    assert_eq!(sent[0].to, source);
    assert_eq!(f.read(&sent[0]), ProbeBody::Pong { txid: [7; 12], observed: source });
    assert_eq!(sent[1].to, source);
    assert!(matches!(f.read(&sent[1]), ProbeBody::Ping { .. }));
    // The ping moved nothing.
    assert_eq!(f.events(), vec![]);
    let status = f.paths.status(&PEER).unwrap();
    let learned = status.candidates.iter().find(|c| c.addr == source).unwrap();
    assert_eq!((learned.origin, learned.state), (CandidateOrigin::PeerReflexive, CandidateState::Probing));
    // The same ping again (from anywhere) is a replay and earns nothing.
    assert_eq!(f.paths.handle_probe(source, &ping, t + MS), Err(ProbeDrop::Replayed));
    assert_eq!(f.paths.handle_probe(addr("192.0.2.99:1"), &ping, t + MS), Err(ProbeDrop::Replayed));
    assert!(f.transmits().is_empty());
    // Our own probe sent back to us carries the wrong tag.
    assert_eq!(f.paths.handle_probe(source, &sent[1].payload, t + MS), Err(ProbeDrop::UnknownTag));
    // Unanswered, it is forgotten PEER_REFLEXIVE_TTL after its last sign.
    f.run(t + PEER_REFLEXIVE_TTL - MS);
    assert!(f.paths.status(&PEER).unwrap().candidates.iter().any(|c| c.addr == source));
    f.run(t + PEER_REFLEXIVE_TTL);
    assert!(f.paths.status(&PEER).unwrap().candidates.iter().all(|c| c.addr != source));
    assert_eq!(f.paths.stats().reflexive_expired, 1);
}

#[test]
fn peer_reflexive_candidates_are_bounded() {
    let mut f = Fixture::new(Some(relay()), Vec::new());
    for i in 0..20u8 {
        let ping = f.ping([i; 12]);
        let source = SocketAddr::new(format!("198.51.100.{i}").parse().unwrap(), 4000);
        f.paths.handle_probe(source, &ping, f.t0 + u32::from(i) * MS).unwrap();
    }
    let status = f.paths.status(&PEER).unwrap();
    assert_eq!(status.candidates.len(), MAX_PEER_REFLEXIVE);
    // The most recent ones stayed.
    assert!(status.candidates.iter().any(|c| c.addr.ip().to_string() == "198.51.100.19"));
    assert_eq!(f.paths.stats().reflexive_evicted, 20 - MAX_PEER_REFLEXIVE as u64);
}

#[test]
fn relay_changes_and_events_coalesce() {
    let mut f = Fixture::new(Some(relay()), Vec::new());
    assert_eq!(f.events(), vec![(Selected::Relay, why::RELAY)]);
    let new_relay = addr("203.0.113.2:3478");
    f.paths.set_relay(&PEER, Some(new_relay), f.t0);
    assert_eq!(f.events(), vec![(Selected::Relay, why::RELAY_CHANGED)]);
    f.paths.set_relay(&PEER, Some(new_relay), f.t0);
    assert_eq!(f.events(), vec![]);
    // Two changes before the shell looks: only the last one is reported.
    f.paths.set_relay(&PEER, None, f.t0);
    f.paths.set_relay(&PEER, Some(relay()), f.t0);
    assert_eq!(f.events(), vec![(Selected::Relay, why::RELAY)]);
    f.paths.set_relay(&PEER, None, f.t0);
    assert_eq!(f.events(), vec![(Selected::None, why::NO_PATH)]);
}

#[test]
fn a_second_peer_with_the_same_tag_is_refused_and_re_adding_starts_over() {
    let mut f = Fixture::new(Some(relay()), vec![addr("192.0.2.1:51820")]);
    let (mine, _) = secrets();
    let setup = PeerSetup { secrets: mine.clone(), relay: None, remote_candidates: Vec::new() };
    assert_eq!(f.paths.add_peer(PeerKey([3; 32]), setup.clone(), f.t0), Err(AddPeerError::TagInUse));
    assert_eq!(f.paths.peers().count(), 1);
    assert_eq!(f.paths.tags_in().collect::<Vec<_>>(), vec![mine.tag_in]);
    f.paths.add_peer(PEER, setup, f.t0).unwrap();
    assert!(f.paths.status(&PEER).unwrap().candidates.is_empty());
    // The old peer's queued probes went with it.
    assert!(f.transmits().is_empty());
}

#[test]
fn network_changed_restarts_the_fast_phase() {
    let target = addr("192.0.2.1:51820");
    let mut f = Fixture::new(Some(relay()), vec![target]);
    f.transmits();
    let later = f.t0 + Duration::from_secs(40);
    f.run(later);
    f.paths.network_changed(later);
    assert_eq!(f.transmits().len(), 1, "pinged at once");
    let next = f.run(later + Duration::from_secs(1));
    assert_eq!(next.len(), 5, "then every 200 ms");
}
