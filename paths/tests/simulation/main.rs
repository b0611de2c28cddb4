//! Two `Paths` (a gateway and a client) talking through simulated NATs, with
//! virtual time and seeded randomness: which path wins in each NAT case,
//! fallback and recovery, roaming, and what a third party cannot do.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod net;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_paths::probe::{self, ProbeBody};
use ferry_paths::{
    CandidateOrigin, CandidateState, DIRECT_DEAD_AFTER, PROBE_LEN, PeerKey, PeerSetup, ProbeSecrets,
    ProbeStats, SLOW_INTERVAL, Selected, why,
};
use net::{
    ATTACKER, CANDIDATES_KNOWN, CLIENT, CLIENT_KEY, GW, NatKind, Net, Packet, Placement, RELAY, Scenario,
    start,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use NatKind::{Cone, Symmetric};
use Placement::{Behind, Public};

const SECOND: Duration = Duration::from_secs(1);

/// Within a second of both ends knowing each other's candidates, both ends
/// are on a direct path, traffic flows on it both ways, and it stays put.
fn assert_goes_direct(gateway: Placement, client: Placement) -> Net {
    let mut net = start(&Scenario::new(gateway, client));
    // Both start on the relay at once.
    for host in [GW, CLIENT] {
        assert_eq!(net.hosts[host].log.first().map(|e| (e.1, e.2)), Some((Selected::Relay, why::RELAY)));
    }
    net.run_until(net.at(CANDIDATES_KNOWN + SECOND));
    for host in [GW, CLIENT] {
        let h = &net.hosts[host];
        assert!(
            matches!(h.selected, Selected::Direct(_)),
            "{gateway:?}/{client:?}: {} is on {:?} after 1 s; events {:?}",
            h.name,
            h.selected,
            h.log
        );
        let status = h.paths.status(&h.peer).unwrap();
        assert_eq!(status.selected, h.selected);
        assert!(status.rtt.is_some_and(|rtt| rtt >= Duration::from_millis(30)), "{:?}", status.rtt);
        assert!(status.observed.is_some());
    }
    eprintln!("{gateway:?}/{client:?}: gateway {:?}, client {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
    let events = (net.hosts[GW].log.len(), net.hosts[CLIENT].log.len());
    let received = (net.hosts[GW].data_received, net.hosts[CLIENT].data_received);
    net.run_for(60 * SECOND);
    assert_eq!(
        events,
        (net.hosts[GW].log.len(), net.hosts[CLIENT].log.len()),
        "the selection moved: {:?} / {:?}",
        net.hosts[GW].log,
        net.hosts[CLIENT].log
    );
    assert!(net.hosts[GW].data_received > received.0 + 500);
    assert!(net.hosts[CLIENT].data_received > received.1 + 500);
    net
}

/// Neither end ever leaves the relay, though both keep trying.
fn assert_stays_on_relay(gateway: Placement, client: Placement) {
    let mut net = start(&Scenario::new(gateway, client));
    net.run_for(90 * SECOND);
    for host in [GW, CLIENT] {
        let h = &net.hosts[host];
        assert_eq!(h.log, vec![(h.log[0].0, Selected::Relay, why::RELAY)], "{}", h.name);
        assert!(h.paths.stats().pings_sent > 40, "{}: {:?}", h.name, h.paths.stats());
        assert_eq!(h.paths.stats().pongs_received, 0);
        assert_eq!(h.data_received, 0);
    }
}

#[test]
fn public_and_public_go_direct() {
    let net = assert_goes_direct(Public, Public);
    assert_eq!(net.selected(GW), Selected::Direct(net.hosts[CLIENT].addr));
    assert_eq!(net.selected(CLIENT), Selected::Direct(net.hosts[GW].addr));
}

#[test]
fn public_and_cone_go_direct() {
    assert_goes_direct(Public, Behind(Cone));
    assert_goes_direct(Behind(Cone), Public);
}

#[test]
fn cone_and_cone_go_direct() {
    let net = assert_goes_direct(Behind(Cone), Behind(Cone));
    // Each end's ping to the other's host candidate (the same private
    // address as its own) came back to itself and was refused by its tag.
    for host in [GW, CLIENT] {
        assert!(net.hosts[host].paths.stats().unknown_tag > 0);
        let status = net.hosts[host].paths.status(&net.hosts[host].peer).unwrap();
        let own = status.candidates.iter().find(|c| c.addr == net.hosts[host].addr).unwrap();
        assert_eq!(own.state, CandidateState::Probing);
    }
}

#[test]
fn public_and_symmetric_go_direct_through_a_peer_reflexive_candidate() {
    for (gateway, client, symmetric_end) in
        [(Public, Behind(Symmetric), CLIENT), (Behind(Symmetric), Public, GW)]
    {
        let net = assert_goes_direct(gateway, client);
        // The public end reaches the symmetric end at the mapping its pings
        // came from, which no STUN server saw.
        let public_end = 1 - symmetric_end;
        let h = &net.hosts[public_end];
        let status = h.paths.status(&h.peer).unwrap();
        let Selected::Direct(addr) = h.selected else { unreachable!() };
        let selected = status.candidates.iter().find(|c| c.addr == addr).unwrap();
        assert_eq!(selected.origin, CandidateOrigin::PeerReflexive);
        assert_eq!(selected.state, CandidateState::Live);
    }
}

#[test]
fn cone_and_symmetric_stay_on_the_relay() {
    assert_stays_on_relay(Behind(Cone), Behind(Symmetric));
    assert_stays_on_relay(Behind(Symmetric), Behind(Cone));
}

#[test]
fn symmetric_and_symmetric_stay_on_the_relay() {
    assert_stays_on_relay(Behind(Symmetric), Behind(Symmetric));
}

#[test]
fn behind_the_same_nat_the_host_path_wins() {
    let mut net = start(&Scenario { shared_nat: true, ..Scenario::new(Behind(Cone), Behind(Cone)) });
    net.run_until(net.at(CANDIDATES_KNOWN + SECOND));
    assert_eq!(net.selected(GW), Selected::Direct(net.hosts[CLIENT].addr));
    assert_eq!(net.selected(CLIENT), Selected::Direct(net.hosts[GW].addr));
}

/// With hairpinning, the server-reflexive path works too and costs the same
/// round trip here: the tie goes to the private address.
#[test]
fn behind_a_hairpinning_nat_the_host_path_wins_the_tie() {
    let mut net =
        start(&Scenario { shared_nat: true, hairpin: true, ..Scenario::new(Behind(Cone), Behind(Cone)) });
    net.run_until(net.at(CANDIDATES_KNOWN + 3 * SECOND));
    for (host, other) in [(GW, CLIENT), (CLIENT, GW)] {
        assert_eq!(net.selected(host), Selected::Direct(net.hosts[other].addr));
        let h = &net.hosts[host];
        let status = h.paths.status(&h.peer).unwrap();
        let live: Vec<_> =
            status.candidates.iter().filter(|c| c.state == CandidateState::Live).map(|c| c.addr).collect();
        assert_eq!(live.len(), 2, "{}: {:?}", h.name, status.candidates);
        assert!(live.iter().any(|addr| !net::is_private(addr.ip())));
    }
}

/// Cuts the direct paths at 10 s and restores them at 20 s.
fn cut_and_restore(gateway: Placement, client: Placement) {
    let mut net = start(&Scenario::new(gateway, client));
    net.run_until(net.at(10 * SECOND));
    assert!(net.both_direct());
    net.cut = true;
    let cut_at = net.elapsed();
    net.run_for(DIRECT_DEAD_AFTER);
    assert!(net.both_relay(), "{:?} / {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
    for host in [GW, CLIENT] {
        let (at, selected, reason) = *net.hosts[host].log.last().unwrap();
        assert_eq!((selected, reason), (Selected::Relay, why::DEAD));
        // Not before the path stopped working, and within the dead bound.
        assert!(at > cut_at && at <= cut_at + DIRECT_DEAD_AFTER, "fell back at {at:?}");
    }
    net.run_until(net.at(20 * SECOND));
    assert!(net.both_relay());
    net.cut = false;
    let restored_at = net.elapsed();
    let back = net.run_until_true(SLOW_INTERVAL + SECOND, Net::both_direct);
    assert!(back.is_some(), "{:?} / {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
    for host in [GW, CLIENT] {
        let (at, _, reason) = *net.hosts[host].log.last().unwrap();
        assert_eq!(reason, why::VERIFIED);
        assert!(at > restored_at);
    }
    let received = net.hosts[GW].data_received;
    net.run_for(10 * SECOND);
    assert!(net.both_direct());
    assert!(net.hosts[GW].data_received > received + 50);
}

#[test]
fn cut_direct_path_falls_back_to_the_relay_and_comes_back_cone_cone() {
    cut_and_restore(Behind(Cone), Behind(Cone));
}

#[test]
fn cut_direct_path_falls_back_to_the_relay_and_comes_back_public_symmetric() {
    cut_and_restore(Public, Behind(Symmetric));
}

/// The client's NAT gets a new public address (all mappings lost). The public
/// gateway learns the new address from the client's pings alone.
#[test]
fn client_roams_behind_a_new_nat_address_public_gateway() {
    let mut net = start(&Scenario::new(Public, Behind(Cone)));
    net.run_until(net.at(10 * SECOND));
    assert!(net.both_direct());
    let new_ip = Ipv4Addr::new(198, 51, 100, 77);
    net.nats[0].renumber(new_ip);
    let found = net.run_until_true(DIRECT_DEAD_AFTER + SECOND, |net| {
        net.both_direct()
            && matches!(net.selected(GW), Selected::Direct(addr) if addr.ip() == IpAddr::V4(new_ip))
    });
    assert!(found.is_some(), "{:?} / {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
    net.run_for(10 * SECOND);
    assert!(net.both_direct());
    assert!(matches!(net.selected(GW), Selected::Direct(addr) if addr.ip() == IpAddr::V4(new_ip)));
    eprintln!("roamed, public gateway: {:?} / {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
}

/// Both behind cone NATs, the client's changes: its pings alone cannot pass
/// the gateway's NAT, so the shells do what they must: the client notices,
/// gathers again and the cloud passes the new candidates to the gateway.
#[test]
fn client_roams_behind_a_new_nat_address_cone_gateway() {
    let mut net = start(&Scenario::new(Behind(Cone), Behind(Cone)));
    net.run_until(net.at(10 * SECOND));
    assert!(net.both_direct());
    let new_ip = Ipv4Addr::new(198, 51, 100, 77);
    let client_nat = net.hosts[CLIENT].nat.unwrap();
    net.nats[client_nat].renumber(new_ip);
    net.run_for(SECOND / 2);
    let now = net.now;
    net.hosts[CLIENT].paths.network_changed(now);
    let candidates = net.gather(CLIENT);
    net.flush(CLIENT);
    net.run_for(SECOND / 2);
    net.set_remote_candidates(GW, candidates);
    let given_at = net.elapsed();
    let found = net.run_until_true(2 * SECOND, |net| {
        net.both_direct()
            && matches!(net.selected(GW), Selected::Direct(addr) if addr.ip() == IpAddr::V4(new_ip))
    });
    assert!(
        found.is_some_and(|at| at < given_at + SECOND),
        "{:?} / {:?}",
        net.hosts[GW].log,
        net.hosts[CLIENT].log
    );
    net.run_for(10 * SECOND);
    assert!(net.both_direct());
    eprintln!("roamed, cone gateway: {:?} / {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
}

fn opens_as(secrets: &ProbeSecrets, packet: &Packet, ping: bool) -> bool {
    match probe::open(secrets, &packet.payload) {
        Ok(opened) => matches!(opened.body, ProbeBody::Ping { .. }) == ping,
        Err(_) => false,
    }
}

/// Steals the next datagram from `from` that opens with `secrets` as a ping
/// (or a pong), running the network until it passes.
fn steal(net: &mut Net, from: SocketAddr, secrets: &ProbeSecrets, ping: bool) -> Packet {
    let secrets = secrets.clone();
    let stolen = net.stolen.len();
    net.steal_next(move |packet| packet.src == from && opens_as(&secrets, packet, ping));
    assert!(net.run_until_true(10 * SECOND, |net| net.stolen.len() > stolen).is_some());
    net.stolen.last().unwrap().clone()
}

fn delta(after: &ProbeStats, before: &ProbeStats) -> [u64; 8] {
    [
        after.unknown_tag - before.unknown_tag,
        after.bad_auth - before.bad_auth,
        after.replayed - before.replayed,
        after.unsolicited - before.unsolicited,
        after.wrong_source - before.wrong_source,
        after.bad_length - before.bad_length,
        after.pongs_received - before.pongs_received,
        after.pings_received - before.pings_received,
    ]
}

/// A third party who sees every datagram forges probes, replays pings and
/// pongs, races a pong from its own address and relays a stolen ping: nobody's
/// selection moves, and each trick lands in its own counter.
#[test]
fn forged_and_replayed_probes_move_nobody() {
    let mut net = start(&Scenario::new(Public, Public));
    net.run_until(net.at(3 * SECOND));
    assert!(net.both_direct());
    let (gw_addr, client_addr) = (net.hosts[GW].addr, net.hosts[CLIENT].addr);
    let selections = (net.selected(GW), net.selected(CLIENT));
    let logs = (net.hosts[GW].log.clone(), net.hosts[CLIENT].log.clone());
    let gw_secrets = net.hosts[GW].secrets.clone();
    let client_secrets = net.hosts[CLIENT].secrets.clone();
    let mut attacker_rng = ChaCha20Rng::seed_from_u64(66);

    // Random probes of the right type and length: no known tag.
    let gw_before = *net.hosts[GW].paths.stats();
    let client_before = *net.hosts[CLIENT].paths.stats();
    for _ in 0..50 {
        let mut forged = vec![0u8; PROBE_LEN];
        attacker_rng.fill_bytes(&mut forged);
        forged[..4].copy_from_slice(&[16, 0, 0, 0]);
        net.inject(ATTACKER, gw_addr, forged.clone());
        net.inject(client_addr, gw_addr, forged.clone());
        net.inject(ATTACKER, client_addr, forged);
    }
    // The right tag, seen on the wire, with the rest forged: fails the AEAD.
    let to_gateway =
        net.tap.iter().rev().find(|p| p.dst == gw_addr && opens_as(&gw_secrets, p, true)).unwrap().clone();
    for _ in 0..20 {
        let mut forged = to_gateway.payload.clone();
        attacker_rng.fill_bytes(&mut forged[12..]);
        net.inject(client_addr, gw_addr, forged);
    }
    // Probes that were delivered already, sent again from the attacker and
    // from the genuine source: replays.
    let ping = to_gateway;
    let pong = net
        .tap
        .iter()
        .rev()
        .find(|p| p.dst == client_addr && opens_as(&client_secrets, p, false))
        .unwrap()
        .clone();
    net.inject(ATTACKER, gw_addr, ping.payload.clone());
    net.inject(client_addr, gw_addr, ping.payload);
    net.inject(ATTACKER, client_addr, pong.payload.clone());
    net.inject(gw_addr, client_addr, pong.payload);
    // A WireGuard-sized datagram of the probe type but the wrong length.
    net.inject(ATTACKER, gw_addr, vec![16, 0, 0, 0, 1, 2, 3]);
    net.run_for(SECOND);
    assert_eq!(delta(net.hosts[GW].paths.stats(), &gw_before)[..6], [100, 20, 2, 0, 0, 1]);
    assert_eq!(delta(net.hosts[CLIENT].paths.stats(), &client_before)[..6], [50, 0, 2, 0, 0, 0]);

    // A pong raced from the attacker's address (a copy taken off the wire)
    // is refused, and does not spoil the genuine one behind it.
    let raced = steal(&mut net, gw_addr, &client_secrets, false);
    let client_before = *net.hosts[CLIENT].paths.stats();
    net.inject(ATTACKER, client_addr, raced.payload.clone());
    net.inject(gw_addr, client_addr, raced.payload);
    net.run_for(SECOND / 10);
    let d = delta(net.hosts[CLIENT].paths.stats(), &client_before);
    assert_eq!((d[4], d[2]), (1, 0), "wrong_source once, no replay");
    assert!(d[6] >= 1, "the genuine pong counted");

    // A pong held back until its ping expired matches nothing.
    let held = steal(&mut net, gw_addr, &client_secrets, false);
    net.run_for(6 * SECOND);
    let client_before = *net.hosts[CLIENT].paths.stats();
    net.inject(gw_addr, client_addr, held.payload);
    net.run_for(SECOND / 10);
    assert_eq!(delta(net.hosts[CLIENT].paths.stats(), &client_before)[3], 1, "unsolicited");

    // A ping taken off the wire and sent on from the attacker's address: the
    // gateway answers it there (same size) and tries that address, which
    // never answers, so it never becomes a path and is forgotten.
    let gw_before = *net.hosts[GW].paths.stats();
    let relayed = steal(&mut net, client_addr, &gw_secrets, true);
    net.inject(ATTACKER, gw_addr, relayed.payload);
    net.run_for(SECOND);
    assert_eq!(net.hosts[GW].paths.stats().reflexive_added - gw_before.reflexive_added, 1);
    let status = net.hosts[GW].paths.status(&CLIENT_KEY).unwrap();
    let attacker = status.candidates.iter().find(|c| c.addr == ATTACKER).unwrap();
    assert_eq!(attacker.state, CandidateState::Probing);
    assert!(net.attacker_inbox.iter().all(|p| p.payload.len() == PROBE_LEN));
    assert!(!net.attacker_inbox.is_empty());
    net.run_for(40 * SECOND);
    let status = net.hosts[GW].paths.status(&CLIENT_KEY).unwrap();
    assert!(status.candidates.iter().all(|c| c.addr != ATTACKER));
    assert!(net.hosts[GW].paths.stats().reflexive_expired >= 1);

    assert_eq!((net.selected(GW), net.selected(CLIENT)), selections);
    assert_eq!((net.hosts[GW].log.clone(), net.hosts[CLIENT].log.clone()), logs, "no event at either end");
}

#[test]
fn remove_peer_stops_every_transmit_for_it() {
    let mut net = start(&Scenario::new(Public, Public));
    // A second peer of the gateway, somewhere unreachable, keeps it busy.
    let other = PeerKey([0xd1; 32]);
    let other_candidate: SocketAddr = "198.51.100.99:51820".parse().unwrap();
    let setup = PeerSetup {
        secrets: ProbeSecrets::derive(&[3; 32], &net::GATEWAY_KEY.0, &other.0),
        relay: Some(RELAY),
        remote_candidates: vec![other_candidate],
    };
    let now = net.now;
    net.hosts[GW].paths.add_peer(other, setup, now).unwrap();
    net.run_until(net.at(3 * SECOND));
    assert!(net.both_direct());
    let client_addr = net.hosts[CLIENT].addr;
    let gw_addr = net.hosts[GW].addr;

    let now = net.now;
    let client_tag = net.hosts[GW].secrets.tag_in;
    net.hosts[GW].paths.remove_peer(&CLIENT_KEY);
    // The shell drops the peer too: no more data to it.
    net.hosts[GW].selected = Selected::None;
    assert!(net.hosts[GW].paths.status(&CLIENT_KEY).is_none());
    assert!(net.hosts[GW].paths.tags_in().all(|tag| tag != client_tag));
    let sent_before = net.tap.len();
    let unknown_before = net.hosts[GW].paths.stats().unknown_tag;
    net.hosts[GW].paths.handle_timeout(now);
    net.run_for(30 * SECOND);
    let from_gateway: Vec<&Packet> = net.tap[sent_before..].iter().filter(|p| p.src == gw_addr).collect();
    assert!(from_gateway.iter().all(|p| p.dst != client_addr), "the gateway still sent to the removed peer");
    assert!(from_gateway.iter().any(|p| p.dst == other_candidate), "the other peer is still probed");
    assert_eq!(net.hosts[GW].other_events, vec![(other, Selected::Relay)]);
    // The client's probes now meet a stranger, and it falls back.
    assert!(net.hosts[GW].paths.stats().unknown_tag > unknown_before);
    assert_eq!(net.selected(CLIENT), Selected::Relay);

    // Removing the last peer leaves nothing scheduled at all.
    net.hosts[GW].paths.remove_peer(&other);
    assert_eq!(net.hosts[GW].paths.poll_transmit(), None);
    assert_eq!(net.hosts[GW].paths.poll_event(), None);
    assert_eq!(net.hosts[GW].paths.poll_timeout(), None);
    let sent_before = net.tap.len();
    net.run_for(30 * SECOND);
    assert!(net.tap[sent_before..].iter().all(|p| p.src != gw_addr));
    assert_eq!(net.hosts[GW].paths.memory().peers, 0);
    assert_eq!(net.hosts[GW].paths.memory().queued_transmits, 0);
}

/// 10 % loss each way: WireGuard traffic on the path keeps it alive between
/// lost heartbeats, so the selection does not flap.
#[test]
fn lossy_path_with_traffic_stays_direct() {
    let mut net = start(&Scenario { seed: 7, ..Scenario::new(Behind(Cone), Behind(Cone)) });
    net.loss_percent = 10;
    net.run_until(net.at(CANDIDATES_KNOWN + 2 * SECOND));
    assert!(net.both_direct());
    let events = (net.hosts[GW].log.len(), net.hosts[CLIENT].log.len());
    net.run_for(120 * SECOND);
    assert!(net.both_direct());
    assert_eq!(events, (net.hosts[GW].log.len(), net.hosts[CLIENT].log.len()));
}

/// Authenticated WireGuard traffic keeps a verified path alive when
/// something drops the probes; without traffic either, it dies.
#[test]
fn wireguard_traffic_keeps_a_verified_path_alive() {
    let mut net = start(&Scenario::new(Behind(Cone), Public));
    net.run_until(net.at(3 * SECOND));
    assert!(net.both_direct());
    net.drop_probes = true;
    net.run_for(30 * SECOND);
    assert!(net.both_direct());
    net.data_interval = None;
    // The last datagrams are still in flight for a few milliseconds.
    net.run_for(DIRECT_DEAD_AFTER + SECOND / 10);
    assert!(net.both_relay(), "{:?} / {:?}", net.hosts[GW].log, net.hosts[CLIENT].log);
}

/// The same seed gives the same run, datagram for datagram.
#[test]
fn runs_are_reproducible() {
    let run = || {
        let mut net = start(&Scenario::new(Behind(Cone), Behind(Cone)));
        net.run_until(net.at(5 * SECOND));
        net.cut = true;
        net.run_for(10 * SECOND);
        net.cut = false;
        net.run_for(5 * SECOND);
        (net.tap, net.hosts[GW].log.clone(), net.hosts[CLIENT].log.clone())
    };
    let first = run();
    assert!(first.0.len() > 100);
    assert_eq!(first, run());
}
