//! The protocol's behaviour, driven through the device with injected time: two
//! devices pass datagrams by hand, and the clock jumps.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

use super::*;
use crate::proto::messages::{COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN};

const A_TUNNEL: [u8; 4] = [10, 0, 0, 1];
const B_TUNNEL: [u8; 4] = [10, 0, 0, 2];

struct Net {
    a: Device,
    b: Device,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    t0: Instant,
    elapsed: Duration,
    /// Datagrams in flight, from A to B and from B to A.
    to_b: Vec<Transmit>,
    to_a: Vec<Transmit>,
    /// A model of an index-following packet filter in front of each device
    /// (the gateway's uplink guard), fed only by the devices' index journals.
    guards: Option<[HashSet<u32>; 2]>,
    /// Datagrams those filters would have refused.
    guard_refused: u64,
    /// Every datagram delivered, with its side (0 = to A, 1 = to B), for
    /// replaying later.
    delivered: Vec<(usize, Vec<u8>)>,
}

/// A device RNG that gives the same numbers for the same seed.
fn seeded(seed: u64) -> DeviceRng {
    Box::new(ChaCha20Rng::seed_from_u64(seed))
}

fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(payload);
    p
}

impl Net {
    fn new(psk_a: Option<[u8; 32]>, psk_b: Option<[u8; 32]>) -> Net {
        Net::with_keys(PrivateKey::generate(), PrivateKey::generate(), psk_a, psk_b, [1, 2])
    }

    /// Two peers with these keys, whose devices draw from RNGs with these
    /// seeds.
    fn with_keys(
        ka: PrivateKey,
        kb: PrivateKey,
        psk_a: Option<[u8; 32]>,
        psk_b: Option<[u8; 32]>,
        seeds: [u64; 2],
    ) -> Net {
        let a_addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let b_addr: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let mut a = Device::new(DeviceConfig::new(ka.clone()), seeded(seeds[0]));
        let mut b = Device::new(DeviceConfig::new(kb.clone()), seeded(seeds[1]));
        let mut pa = PeerConfig::new(kb.public_key());
        pa.endpoint = Some(b_addr);
        pa.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
        pa.preshared_key = psk_a.map(PresharedKey::from_bytes);
        let mut pb = PeerConfig::new(ka.public_key());
        pb.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
        pb.preshared_key = psk_b.map(PresharedKey::from_bytes);
        a.add_peer(pa).unwrap();
        b.add_peer(pb).unwrap();
        Net {
            a,
            b,
            a_addr,
            b_addr,
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            to_b: vec![],
            to_a: vec![],
            guards: None,
            guard_refused: 0,
            delivered: vec![],
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.t0 + self.elapsed,
            wall: Tai64N::from_unix(Duration::from_secs(1_800_000_000) + self.elapsed),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now();
        self.a.update_timers(now, &mut self.to_b);
        self.b.update_timers(now, &mut self.to_a);
        self.sync_guards();
    }

    /// Puts a filter model in front of both devices, starting from the indices
    /// live now.
    fn watch_indices(&mut self) {
        let a: HashSet<u32> = self.a.watch_indices().into_iter().collect();
        let b: HashSet<u32> = self.b.watch_indices().into_iter().collect();
        self.guards = Some([a, b]);
    }

    /// Applies both journals to the filter models, as a shell does before it
    /// sends what a call produced, and checks each model equals its device.
    fn sync_guards(&mut self) {
        let Some([guard_a, guard_b]) = &mut self.guards else { return };
        for (device, guard) in [(&mut self.a, guard_a), (&mut self.b, guard_b)] {
            for change in device.drain_index_changes() {
                match change {
                    IndexChange::Added(i) => assert!(guard.insert(i), "index {i} added twice"),
                    IndexChange::Removed(i) => assert!(guard.remove(&i), "index {i} removed but never added"),
                }
            }
            let live: HashSet<u32> = device.indices.keys().collect();
            assert_eq!(*guard, live, "the journal lost track of the device's indices");
        }
    }

    /// Whether the filter in front of `side` (0 = A, 1 = B) lets `datagram`
    /// through: initiations always, other messages only to a known receiver
    /// index (the uplink guard's rule).
    fn guard_admits(&self, side: usize, datagram: &[u8]) -> bool {
        let Some(guards) = &self.guards else { return true };
        let receiver = match datagram.first() {
            Some(2) if datagram.len() >= 12 => &datagram[8..12],
            Some(3 | 4) if datagram.len() >= 8 => &datagram[4..8],
            _ => return true,
        };
        guards[side].contains(&u32::from_le_bytes(receiver.try_into().expect("four bytes")))
    }

    /// Lets time pass in 100 ms steps, delivering whatever the timers send.
    fn run_for(&mut self, total: Duration) {
        let step = Duration::from_millis(100);
        let mut left = total;
        while left > Duration::ZERO {
            let by = left.min(step);
            self.advance(by);
            self.pump();
            left -= by;
        }
    }

    /// A sends an IP packet to B's tunnel address.
    fn a_sends(&mut self, payload: &[u8]) -> Result<Sent, SendError> {
        let packet = ipv4(A_TUNNEL, B_TUNNEL, payload);
        let mut out = vec![0u8; 2048];
        let now = self.now();
        let sent = self.a.send_packet(now, &packet, &mut out, &mut self.to_b);
        self.sync_guards();
        let sent = sent?;
        if let Sent::Datagram { to, len } = sent {
            self.to_b.push(Transmit { to, payload: out[..len].to_vec() });
        }
        Ok(sent)
    }

    fn b_sends(&mut self, payload: &[u8]) -> Result<Sent, SendError> {
        let packet = ipv4(B_TUNNEL, A_TUNNEL, payload);
        let mut out = vec![0u8; 2048];
        let now = self.now();
        let sent = self.b.send_packet(now, &packet, &mut out, &mut self.to_a);
        self.sync_guards();
        let sent = sent?;
        if let Sent::Datagram { to, len } = sent {
            self.to_a.push(Transmit { to, payload: out[..len].to_vec() });
        }
        Ok(sent)
    }

    /// Delivers everything in flight, both ways, until quiet. Returns the
    /// payloads of packets delivered to B and to A.
    fn pump(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut at_b, mut at_a) = (vec![], vec![]);
        for _ in 0..20 {
            if self.to_b.is_empty() && self.to_a.is_empty() {
                break;
            }
            let now = self.now();
            for t in std::mem::take(&mut self.to_b) {
                assert_eq!(t.to, self.b_addr);
                let admitted = self.guard_admits(1, &t.payload);
                self.delivered.push((1, t.payload.clone()));
                let mut d = t.payload;
                let incoming = self.b.handle_datagram(now, self.a_addr, &mut d, &mut self.to_a);
                self.sync_guards();
                self.check_refusal(admitted, &incoming);
                if let Incoming::Packet { range, .. } = incoming {
                    at_b.push(d[range][20..].to_vec());
                }
            }
            for t in std::mem::take(&mut self.to_a) {
                assert_eq!(t.to, self.a_addr);
                let admitted = self.guard_admits(0, &t.payload);
                self.delivered.push((0, t.payload.clone()));
                let mut d = t.payload;
                let incoming = self.a.handle_datagram(now, self.b_addr, &mut d, &mut self.to_b);
                self.sync_guards();
                self.check_refusal(admitted, &incoming);
                if let Incoming::Packet { range, .. } = incoming {
                    at_a.push(d[range][20..].to_vec());
                }
            }
        }
        (at_b, at_a)
    }

    /// The datagram was delivered anyway; a filter may refuse only what the
    /// device itself drops for naming an unknown index.
    fn check_refusal(&mut self, admitted: bool, incoming: &Incoming) {
        if !admitted {
            self.guard_refused += 1;
            assert_eq!(*incoming, Incoming::Dropped(Drop::UnknownIndex), "the filter refused a live message");
        }
    }

    fn drops(&self, device: &Device, reason: Drop) -> u64 {
        device.stats.drops.get(&reason).copied().unwrap_or(0)
    }
}

/// The agreement between the device's maps that its lookups rely on: keys,
/// indices and routes name only live peers, and each index is held by the
/// peer it names.
fn assert_consistent(device: &Device) {
    assert_eq!(device.by_key.len(), device.peers.len());
    for (key, id) in &device.by_key {
        assert_eq!(device.peers.get(id).map(|p| p.public_key), Some(*key), "a key names a lost peer");
    }
    for index in device.indices.keys() {
        let owner = device.indices.get(&index).copied();
        let held =
            owner.and_then(|id| device.peers.get(&id)).is_some_and(|p| p.indices().any(|i| i == index));
        assert!(held, "index {index} is not held by the peer it names");
    }
    for (id, peer) in &device.peers {
        for index in peer.indices() {
            assert_eq!(device.indices.get(&index), Some(id), "peer {id:?} holds an unlisted index");
        }
    }
    for ip in [A_TUNNEL, B_TUNNEL] {
        if let Some(id) = device.allowed_ips.lookup(IpAddr::from(ip)) {
            assert!(device.peers.contains_key(&id), "a route names a lost peer");
        }
    }
    assert_eq!(device.stats.internal_inconsistencies, 0);
}

/// The lengths of the datagrams in flight, sorted (the order of a handshake
/// and a data packet sent in one call does not matter).
fn kinds(transmits: &[Transmit]) -> Vec<usize> {
    let mut lens: Vec<usize> = transmits.iter().map(|t| t.payload.len()).collect();
    lens.sort_unstable();
    lens
}

fn handshaken(psk: Option<[u8; 32]>) -> Net {
    let mut net = Net::new(psk, psk);
    assert_eq!(net.a_sends(b"hello").unwrap(), Sent::Queued);
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"hello".to_vec()]);
    net
}

#[test]
fn first_packet_starts_the_handshake_and_data_flows_both_ways() {
    for psk in [None, Some([0x42; 32])] {
        let mut net = Net::new(psk, psk);
        assert_eq!(net.a_sends(b"queued 1").unwrap(), Sent::Queued);
        assert_eq!(net.a_sends(b"queued 2").unwrap(), Sent::Queued);
        assert_eq!(kinds(&net.to_b), vec![INITIATION_LEN], "one initiation for two packets");
        let (at_b, at_a) = net.pump();
        assert_eq!(at_b, vec![b"queued 1".to_vec(), b"queued 2".to_vec()]);
        assert!(at_a.is_empty());
        assert!(matches!(net.b_sends(b"reply").unwrap(), Sent::Datagram { .. }));
        assert!(matches!(net.a_sends(b"more").unwrap(), Sent::Datagram { .. }));
        let (at_b, at_a) = net.pump();
        assert_eq!((at_b, at_a), (vec![b"more".to_vec()], vec![b"reply".to_vec()]));
        let a_peer = net.a.peer_id(&net.b.public_key()).unwrap();
        assert_eq!(net.a.peer_stats(a_peer).unwrap().handshakes_completed, 1);
    }
}

#[test]
fn a_psk_mismatch_never_completes() {
    let mut net = Net::new(Some([1; 32]), Some([2; 32]));
    net.a_sends(b"x").unwrap();
    let (at_b, _) = net.pump();
    assert!(at_b.is_empty());
    assert_eq!(net.drops(&net.a, Drop::Handshake(HandshakeError::Decrypt)), 1);
}

#[test]
fn the_responder_sends_only_after_the_initiator_confirms() {
    let mut net = Net::new(None, None);
    net.a_sends(b"x").unwrap();
    // Deliver only the initiation.
    let init = net.to_b.remove(0);
    let now = net.now();
    let mut d = init.payload;
    assert_eq!(net.b.handle_datagram(now, net.a_addr, &mut d, &mut net.to_a), Incoming::Handled);
    assert_eq!(kinds(&net.to_a), vec![RESPONSE_LEN]);
    let response = net.to_a.remove(0);
    // B holds the new keys as unconfirmed: its packet waits, and it does not
    // start a handshake of its own.
    assert_eq!(net.b_sends(b"early").unwrap(), Sent::Queued);
    assert!(net.to_a.is_empty());
    // A completes and sends the staged packet; that confirms B's keys, and
    // B's staged packet follows.
    net.to_a.push(response);
    let (at_b, at_a) = net.pump();
    assert_eq!(at_b, vec![b"x".to_vec()]);
    assert_eq!(at_a, vec![b"early".to_vec()]);
}

#[test]
fn initiator_confirms_with_a_keepalive_when_nothing_is_staged() {
    let mut net = Net::new(None, None);
    // A keepalive timer with no keys starts a handshake; after it, A has
    // nothing staged and must still confirm.
    let id = net.a.peer_id(&net.b.public_key()).unwrap();
    net.a.initiate_handshake(id, net.now(), &mut net.to_b, false);
    net.pump();
    assert!(matches!(net.b_sends(b"now allowed").unwrap(), Sent::Datagram { .. }));
}

#[test]
fn a_receiver_with_nothing_to_say_sends_a_keepalive_after_ten_seconds() {
    let mut net = handshaken(None);
    net.advance(KEEPALIVE_TIMEOUT - Duration::from_millis(1));
    assert!(net.to_a.is_empty());
    net.advance(Duration::from_millis(1));
    assert_eq!(kinds(&net.to_a), vec![32], "an empty transport message");
    net.pump();
    net.advance(KEEPALIVE_TIMEOUT * 2);
    assert!(net.to_a.is_empty(), "one keepalive per received burst");
}

#[test]
fn a_sender_that_hears_nothing_for_fifteen_seconds_rehandshakes() {
    let mut net = handshaken(None);
    net.advance(KEEPALIVE_TIMEOUT); // B's keepalive confirms liveness...
    net.pump();
    net.a_sends(b"data").unwrap();
    net.to_b.clear(); // ...but this packet and everything after it is lost.
    net.advance(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - Duration::from_millis(1));
    assert!(net.to_b.is_empty());
    net.advance(REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(1));
    assert_eq!(kinds(&net.to_b), vec![INITIATION_LEN]);
}

#[test]
fn the_initiator_rekeys_after_two_minutes_of_sending() {
    let mut net = handshaken(None);
    net.run_for(REKEY_AFTER_TIME - Duration::from_secs(1));
    assert!(matches!(net.a_sends(b"still fresh").unwrap(), Sent::Datagram { .. }));
    assert_eq!(kinds(&net.to_b), vec![64]);
    net.pump();
    net.run_for(Duration::from_secs(1));
    // The packet goes out with the old keys, and a handshake starts.
    assert!(matches!(net.a_sends(b"old keys").unwrap(), Sent::Datagram { .. }));
    assert_eq!(kinds(&net.to_b), vec![64, INITIATION_LEN], "data with the old keys and an initiation");
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"old keys".to_vec()]);
    let id = net.a.peer_id(&net.b.public_key()).unwrap();
    assert_eq!(net.a.peer_stats(id).unwrap().handshakes_completed, 2);
}

#[test]
fn the_responder_does_not_rekey_on_time() {
    let mut net = handshaken(None);
    net.b_sends(b"confirm").unwrap();
    net.pump();
    net.run_for(REKEY_AFTER_TIME + Duration::from_secs(1));
    assert!(matches!(net.b_sends(b"responder").unwrap(), Sent::Datagram { .. }));
    assert_eq!(kinds(&net.to_a), vec![64], "no initiation from the responder");
}

#[test]
fn keys_are_rejected_after_three_minutes() {
    let mut net = handshaken(None);
    net.elapsed += REJECT_AFTER_TIME;
    assert_eq!(net.a_sends(b"too late").unwrap(), Sent::Queued);
    assert_eq!(kinds(&net.to_b), vec![INITIATION_LEN]);
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"too late".to_vec()]);
}

#[test]
fn handshakes_are_retried_every_rekey_timeout_then_given_up_after_ninety_seconds() {
    let mut net = Net::new(None, None);
    net.a_sends(b"into the void").unwrap();
    let mut initiations = vec![net.elapsed];
    net.to_b.clear();
    for _ in 0..(200 * 10) {
        net.advance(Duration::from_millis(100));
        if !net.to_b.is_empty() {
            assert_eq!(kinds(&net.to_b), vec![INITIATION_LEN]);
            net.to_b.clear();
            initiations.push(net.elapsed);
        }
    }
    // The first plus MAX_HANDSHAKE_ATTEMPTS + 1 retries (wireguard-go gives up
    // once the attempts exceed the maximum), REKEY_TIMEOUT plus up to 333 ms
    // of jitter apart, then silence.
    assert_eq!(initiations.len(), 2 + MAX_HANDSHAKE_ATTEMPTS as usize, "{initiations:?}");
    for pair in initiations.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= REKEY_TIMEOUT
                && gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(100),
            "{gap:?}"
        );
    }
    let last = *initiations.last().unwrap();
    let bound = (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + Duration::from_millis(100))
        * (MAX_HANDSHAKE_ATTEMPTS + 1);
    assert!(last >= REKEY_ATTEMPT_TIME && last <= bound, "{last:?}");
    let id = net.a.peer_id(&net.b.public_key()).unwrap();
    assert_eq!(net.a.staged_len(id), 0, "staged packets are dropped on giving up");
}

#[test]
fn key_material_is_erased_after_nine_minutes_of_silence() {
    let mut net = handshaken(None);
    net.advance(KEEPALIVE_TIMEOUT);
    net.pump();
    net.advance(REJECT_AFTER_TIME * 3);
    net.to_a.clear();
    net.to_b.clear();
    let b_peer = net.b.peer_id(&net.a.public_key()).unwrap();
    assert!(net.b.peer(b_peer).unwrap().current.is_none());
    assert!(net.b.indices.is_empty());
    assert_eq!(net.b_sends(b"after erase").unwrap(), Sent::Queued);
}

#[test]
fn persistent_keepalive_keeps_an_idle_tunnel_warm() {
    let mut net = handshaken(None);
    let b_key = net.b.public_key();
    let mut config = PeerConfig::new(b_key);
    config.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    config.persistent_keepalive = Some(Duration::from_secs(25));
    net.a.add_peer(config).unwrap();
    net.a_sends(b"arm").unwrap();
    net.pump();
    let mut keepalives = 0;
    for _ in 0..100 {
        net.advance(Duration::from_secs(1));
        keepalives += net.to_b.iter().filter(|t| t.payload.len() == 32).count();
        net.pump();
    }
    assert!((3..=5).contains(&keepalives), "{keepalives} keepalives in 100 s with a 25 s interval");
}

#[test]
fn persistent_keepalive_starts_without_any_traffic() {
    // A client behind NAT must make itself reachable on its own.
    let mut net = Net::new(None, None);
    let b_key = net.b.public_key();
    let mut config = PeerConfig::new(b_key);
    config.endpoint = Some(net.b_addr);
    config.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    config.persistent_keepalive = Some(Duration::from_secs(25));
    net.a.add_peer(config).unwrap();
    net.advance(Duration::from_millis(100));
    assert_eq!(kinds(&net.to_b), vec![INITIATION_LEN], "no keys yet: the keepalive starts a handshake");
    net.pump();
    // Now B can reach A without A ever having sent data.
    assert!(matches!(net.b_sends(b"reach the client").unwrap(), Sent::Datagram { .. }));
    let (_, at_a) = net.pump();
    assert_eq!(at_a, vec![b"reach the client".to_vec()]);
}

#[test]
fn crossed_handshakes_leave_no_stale_index_even_after_removal() {
    let mut net = Net::new(None, None);
    // Give B an endpoint too, and let both initiate at the same moment.
    let a_key = net.a.public_key();
    let mut config = PeerConfig::new(a_key);
    config.endpoint = Some(net.a_addr);
    config.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    net.b.add_peer(config).unwrap();
    for _ in 0..5 {
        net.elapsed += REJECT_AFTER_TIME;
        let a_init = net.a_sends(b"from a").unwrap();
        let b_init = net.b_sends(b"from b").unwrap();
        assert_eq!((a_init, b_init), (Sent::Queued, Sent::Queued));
        net.pump();
    }
    // Each side holds at most current, previous, next and one handshake.
    assert!(
        net.a.indices.len() <= 4 && net.b.indices.len() <= 4,
        "{} {}",
        net.a.indices.len(),
        net.b.indices.len()
    );
    let b_indices: Vec<u32> = net.b.indices.keys().collect();
    // B removes A: no index may survive, and a packet naming any of them is
    // refused, not a panic.
    assert!(net.b.remove_peer(&a_key));
    assert!(net.b.indices.is_empty());
    let now = net.now();
    for index in b_indices {
        let mut forged = vec![4u8, 0, 0, 0];
        forged.extend_from_slice(&index.to_le_bytes());
        forged.resize(48, 0);
        assert_eq!(
            net.b.handle_datagram(now, net.a_addr, &mut forged, &mut Vec::new()),
            Incoming::Dropped(Drop::UnknownIndex)
        );
    }
}

#[test]
fn under_load_a_handshake_needs_a_cookie_first() {
    let mut net = Net::new(None, None);
    let until = net.now().instant + Duration::from_secs(60);
    net.b.set_under_load_until(until);
    net.a_sends(b"x").unwrap();
    let (at_b, _) = net.pump();
    assert!(at_b.is_empty());
    assert_eq!(net.drops(&net.b, Drop::CookieRequired), 1);
    assert_eq!(net.b.stats.cookie_replies_sent, 1);
    // The retry carries mac2 with the cookie and goes through.
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"x".to_vec()]);
    assert_eq!(net.drops(&net.b, Drop::CookieRequired), 1);
}

#[test]
fn handshake_floods_are_detected_and_rate_limited_per_source() {
    let mut net = Net::new(None, None);
    net.b.load_threshold = 10;
    // 100 distinct initiations a second (fresh timestamps) from one source.
    let mut outcomes = Vec::new();
    for i in 0..200u64 {
        net.elapsed += Duration::from_millis(10);
        let now = Now {
            instant: net.t0 + net.elapsed,
            wall: Tai64N::from_unix(Duration::from_secs(1_900_000_000 + i)),
        };
        let id = PeerId(0);
        let mut tx = Vec::new();
        net.a.peers.get_mut(&id).unwrap().timers.last_initiation_sent = None;
        net.a.initiate_handshake(id, now, &mut tx, false);
        let mut d = tx.remove(0).payload;
        let mut replies = Vec::new();
        outcomes.push(net.b.handle_datagram(now, net.a_addr, &mut d, &mut replies));
        // A takes cookie replies, so its next initiation carries mac2.
        for r in replies.into_iter().filter(|r| r.payload.len() == COOKIE_REPLY_LEN) {
            let mut r = r.payload;
            net.a.handle_datagram(now, net.b_addr, &mut r, &mut Vec::new());
        }
    }
    assert!(net.drops(&net.b, Drop::CookieRequired) >= 1, "{:?}", net.b.stats);
    assert!(net.drops(&net.b, Drop::RateLimited) > 50, "{:?}", net.b.stats);
    let accepted = outcomes.iter().filter(|o| **o == Incoming::Handled).count();
    assert!(accepted >= 10, "legitimate handshakes still get through: {accepted}");
}

#[test]
fn a_replayed_initiation_is_refused() {
    let mut net = Net::new(None, None);
    net.a_sends(b"x").unwrap();
    let init = net.to_b[0].payload.clone();
    net.pump();
    net.advance(Duration::from_secs(1));
    let now = net.now();
    let mut replay = init.clone();
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut replay, &mut Vec::new()),
        Incoming::Dropped(Drop::ReplayedInitiation)
    );
}

/// The gateway's clock steps (issue 18's fault): an hour back, then its
/// initiations must still be later than those the peer accepted, or the
/// peer refuses them as replays and only the peer can start a handshake.
#[test]
fn a_wall_clock_stepped_back_does_not_turn_our_initiations_into_replays() {
    let mut net = Net::new(None, None);
    let id = PeerId(0);
    net.a_sends(b"x").unwrap();
    net.pump();
    assert!(net.a.peers[&id].current.is_some(), "the first handshake completes");
    let back = |net: &Net| Now {
        instant: net.now().instant,
        wall: Tai64N::from_unix(Duration::from_secs(1_800_000_000 - 3600)),
    };
    for round in 0..3 {
        net.advance(Duration::from_secs(10));
        let mut out = Vec::new();
        net.a.rekey(id, back(&net), &mut out);
        assert_eq!(out.len(), 1, "round {round}: one initiation");
        let mut initiation = out.remove(0).payload;
        assert_eq!(
            net.b.handle_datagram(net.now(), net.a_addr, &mut initiation, &mut net.to_a),
            Incoming::Handled,
            "round {round}: the initiation made with the clock an hour back is taken"
        );
        assert_eq!(net.drops(&net.b, Drop::ReplayedInitiation), 0);
        net.pump();
    }
}

#[test]
fn initiations_faster_than_the_flood_interval_are_refused() {
    let mut net = Net::new(None, None);
    let id = PeerId(0);
    let mut first = Vec::new();
    net.a.initiate_handshake(id, net.now(), &mut first, false);
    // A second initiation with a later timestamp but only 10 ms later.
    let later = Now {
        instant: net.now().instant + Duration::from_millis(10),
        wall: Tai64N::from_unix(Duration::from_secs(1_800_000_100)),
    };
    let mut second = Vec::new();
    net.a.peers.get_mut(&id).unwrap().timers.last_initiation_sent = None;
    net.a.initiate_handshake(id, later, &mut second, false);
    let mut d1 = first.remove(0).payload;
    let mut d2 = second.remove(0).payload;
    assert_eq!(net.b.handle_datagram(net.now(), net.a_addr, &mut d1, &mut Vec::new()), Incoming::Handled);
    assert_eq!(
        net.b.handle_datagram(later, net.a_addr, &mut d2, &mut Vec::new()),
        Incoming::Dropped(Drop::InitiationFlood)
    );
}

#[test]
fn replayed_and_forged_transport_packets_are_dropped() {
    let mut net = handshaken(None);
    net.a_sends(b"once").unwrap();
    let packet = net.to_b[0].payload.clone();
    let (at_b, _) = net.pump();
    assert_eq!(at_b.len(), 1);
    let now = net.now();
    let mut again = packet.clone();
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut again, &mut Vec::new()),
        Incoming::Dropped(Drop::Session(SessionError::Replay))
    );
    let mut forged = packet.clone();
    forged[40] ^= 1;
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut forged, &mut Vec::new()),
        Incoming::Dropped(Drop::Session(SessionError::Decrypt))
    );
    let mut stranger = packet;
    stranger[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut stranger, &mut Vec::new()),
        Incoming::Dropped(Drop::UnknownIndex)
    );
}

#[test]
fn an_inner_source_outside_the_senders_allowed_ips_is_dropped() {
    let mut net = handshaken(None);
    // A routes 10.9.9.9 to B too, and sends from a source B does not allow.
    let b_key = net.b.public_key();
    let mut config = PeerConfig::new(b_key);
    config.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    net.a.add_peer(config).unwrap();
    let spoofed = ipv4([10, 0, 0, 99], B_TUNNEL, b"spoofed");
    let mut out = vec![0u8; 256];
    let now = net.now();
    let Sent::Datagram { len, .. } = net.a.send_packet(now, &spoofed, &mut out, &mut net.to_b).unwrap()
    else {
        panic!()
    };
    let mut d = out[..len].to_vec();
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut d, &mut Vec::new()),
        Incoming::Dropped(Drop::SourceNotAllowed)
    );
}

#[test]
fn the_endpoint_follows_the_latest_authenticated_packet() {
    let mut net = handshaken(None);
    let moved: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    net.a_sends(b"from afar").unwrap();
    let mut d = net.to_b.remove(0).payload;
    let now = net.now();
    assert!(matches!(net.b.handle_datagram(now, moved, &mut d, &mut Vec::new()), Incoming::Packet { .. }));
    let Sent::Datagram { to, .. } = net.b_sends(b"back").unwrap() else { panic!() };
    assert_eq!(to, moved);
    // A forgery from yet another address does not move it.
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&[0u8; 44]);
    let elsewhere: SocketAddr = "203.0.113.66:1".parse().unwrap();
    net.b.handle_datagram(now, elsewhere, &mut forged, &mut Vec::new());
    let Sent::Datagram { to, .. } = net.b_sends(b"still").unwrap() else { panic!() };
    assert_eq!(to, moved);
}

#[test]
fn a_removed_peer_is_gone_at_once_and_can_come_back() {
    let mut net = handshaken(None);
    let a_key = net.a.public_key();
    net.a_sends(b"in flight").unwrap();
    assert!(net.b.remove_peer(&a_key));
    let (at_b, _) = net.pump();
    assert!(at_b.is_empty());
    assert_eq!(net.drops(&net.b, Drop::UnknownIndex), 1);
    assert!(matches!(net.b_sends(b"x"), Err(SendError::NoRoute(_))));
    let mut config = PeerConfig::new(a_key);
    config.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    net.b.add_peer(config).unwrap();
    // A's old keys are unknown to B now: A's keys time out or A rekeys.
    net.elapsed += REJECT_AFTER_TIME;
    net.a_sends(b"again").unwrap();
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"again".to_vec()]);
}

#[test]
fn garbage_bad_macs_and_strangers_are_counted() {
    let mut net = handshaken(None);
    let now = net.now();
    let mut junk = vec![9u8; 100];
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut junk, &mut Vec::new()),
        Incoming::Dropped(Drop::Malformed)
    );
    // A stranger's initiation: mac1 is right (B's public key is public) but
    // the static key is no peer of B's.
    let mut stranger = Device::new(DeviceConfig::new(PrivateKey::generate()), seeded(3));
    let mut config = PeerConfig::new(net.b.public_key());
    config.endpoint = Some(net.b_addr);
    config.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    let id = stranger.add_peer(config).unwrap();
    let mut tx = Vec::new();
    stranger.initiate_handshake(id, now, &mut tx, false);
    let mut init = tx.remove(0).payload;
    let mut tampered = init.clone();
    tampered[120] ^= 1;
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut tampered, &mut Vec::new()),
        Incoming::Dropped(Drop::BadMac1)
    );
    assert_eq!(
        net.b.handle_datagram(now, net.a_addr, &mut init, &mut Vec::new()),
        Incoming::Dropped(Drop::Handshake(HandshakeError::UnknownPeer))
    );
}

#[test]
fn sending_needs_a_route_an_endpoint_and_an_ip_packet() {
    let mut net = Net::new(None, None);
    let mut out = vec![0u8; 256];
    let now = net.now();
    let mut tx = Vec::new();
    assert_eq!(net.a.send_packet(now, b"not ip", &mut out, &mut tx), Err(SendError::NotIp));
    let elsewhere = ipv4(A_TUNNEL, [10, 9, 9, 9], b"x");
    assert_eq!(
        net.a.send_packet(now, &elsewhere, &mut out, &mut tx),
        Err(SendError::NoRoute("10.9.9.9".parse().unwrap()))
    );
    assert_eq!(net.b_sends(b"no endpoint yet"), Err(SendError::NoEndpoint));
}

#[test]
fn counters_near_the_limits_rekey_then_stop() {
    let mut net = handshaken(None);
    // Past REKEY_TIMEOUT, so a new initiation is allowed.
    net.run_for(REKEY_TIMEOUT + Duration::from_secs(1));
    let id = net.a.peer_id(&net.b.public_key()).unwrap();
    net.a.peers.get_mut(&id).unwrap().current.as_mut().unwrap().set_next_counter(REKEY_AFTER_MESSAGES + 1);
    assert!(matches!(net.a_sends(b"worn").unwrap(), Sent::Datagram { .. }));
    assert_eq!(kinds(&net.to_b), vec![64, INITIATION_LEN], "rekey after REKEY_AFTER_MESSAGES");
    net.to_b.clear();
    net.a.peers.get_mut(&id).unwrap().current.as_mut().unwrap().set_next_counter(REJECT_AFTER_MESSAGES);
    assert_eq!(net.a_sends(b"exhausted").unwrap(), Sent::Queued);
}

#[test]
fn an_index_filter_fed_by_the_journal_refuses_only_dead_indices() {
    let mut net = Net::new(None, None);
    net.watch_indices();
    assert_eq!(net.a_sends(b"hello").unwrap(), Sent::Queued);
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"hello".to_vec()]);
    // Rekeys, an idle spell that erases every key, and a fresh start.
    net.run_for(REKEY_AFTER_TIME + Duration::from_secs(1));
    net.a_sends(b"after rekey").unwrap();
    net.pump();
    net.run_for(REJECT_AFTER_TIME * 3 + Duration::from_secs(1));
    assert!(net.a.indices.is_empty() && net.b.indices.is_empty(), "keys erased after 9 min of silence");
    net.a_sends(b"again").unwrap();
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"again".to_vec()]);
    assert_eq!(net.guard_refused, 0, "nothing live was refused");

    // A transport message naming an index B never gave out is refused by the
    // filter (and would be by B).
    let unknown =
        (0..).map(|i: u32| i.wrapping_mul(2_654_435_761)).find(|i| !net.b.indices.contains(*i)).unwrap();
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&unknown.to_le_bytes());
    forged.resize(48, 0);
    assert!(!net.guard_admits(1, &forged));
    // A removed peer's indices leave the filter at once.
    let a_key = net.a.public_key();
    assert!(net.b.remove_peer(&a_key));
    net.sync_guards();
    assert!(net.guards.as_ref().unwrap()[1].is_empty());
}

#[test]
fn an_unwatched_device_keeps_no_journal() {
    let mut net = handshaken(None);
    assert_eq!(net.a.drain_index_changes().count(), 0);
    // Watching starts from the live set, not from history.
    let live = net.a.watch_indices();
    assert_eq!(live.len(), net.a.indices.len());
    assert_eq!(net.a.drain_index_changes().count(), 0);
}

/// Only a bug can make the maps disagree; if one ever does, each step that
/// meets it is dropped and counted, where it used to panic under the
/// endpoint's lock and stop every tunnel of the daemon. Here B loses its peer
/// A but keeps A's indices, key and route, and every path that looked A up
/// through them is driven.
#[test]
fn maps_that_name_a_lost_peer_drop_and_count_instead_of_panicking() {
    let mut net = handshaken(None);
    let a_key = net.a.public_key();
    let lost = net.b.peer_id(&a_key).unwrap();
    let now = net.now();
    // A transport packet, and A's response to an initiation of B's, in flight.
    net.a_sends(b"data").unwrap();
    let mut data = net.to_b.pop().unwrap().payload;
    net.b.rekey(lost, now, &mut net.to_a);
    let mut init = net.to_a.pop().unwrap().payload;
    let mut answers = Vec::new();
    assert_eq!(net.a.handle_datagram(now, net.b_addr, &mut init, &mut answers), Incoming::Handled);
    let mut response = answers.pop().unwrap().payload;
    assert_eq!(response.len(), RESPONSE_LEN);
    // A cookie reply naming B's live session.
    let session_index = net.b.peer(lost).unwrap().current.as_ref().unwrap().local_index;
    let mut cookie = vec![3, 0, 0, 0];
    cookie.extend_from_slice(&session_index.to_le_bytes());
    cookie.resize(COOKIE_REPLY_LEN, 0);

    net.b.peers.remove(&lost);
    let from = net.a_addr;
    let mut tx = Vec::new();
    for datagram in [&mut data, &mut response, &mut cookie] {
        assert_eq!(
            net.b.handle_datagram(now, from, datagram, &mut tx),
            Incoming::Dropped(Drop::InternalInconsistency)
        );
    }
    // An initiation finds no peer behind the key: refused as a stranger's.
    net.a.rekey(net.a.peer_id(&net.b.public_key()).unwrap(), now, &mut answers);
    let mut init = answers.pop().unwrap().payload;
    assert_eq!(
        net.b.handle_datagram(now, from, &mut init, &mut tx),
        Incoming::Dropped(Drop::Handshake(HandshakeError::UnknownPeer))
    );
    // A route to the lost peer is no route.
    assert_eq!(net.b_sends(b"x"), Err(SendError::NoRoute(IpAddr::from(A_TUNNEL))));
    net.b.update_timers(net.now(), &mut tx);
    assert!(tx.is_empty());
    assert_eq!(net.drops(&net.b, Drop::InternalInconsistency), 3);
    assert_eq!(net.b.stats.internal_inconsistencies, 4);

    // Configuring A again replaces what was left of it, and A gets through.
    let mut config = PeerConfig::new(a_key);
    config.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
    let again = net.b.add_peer(config).unwrap();
    assert_ne!(again, lost);
    assert_eq!(net.b.stats.internal_inconsistencies, 5);
    net.b.stats.internal_inconsistencies = 0;
    assert_consistent(&net.b);
    net.to_a.clear();
    net.elapsed += REJECT_AFTER_TIME;
    net.a_sends(b"again").unwrap();
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"again".to_vec()]);
    assert_consistent(&net.a);
    assert_consistent(&net.b);
}

/// What two devices with fixed keys say to each other: a lost initiation, its
/// retry, the response and two data packets, with the receiver indices each
/// holds and the retry's deadline (which carries the jitter).
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    datagrams: Vec<Vec<u8>>,
    indices: [Vec<u32>; 2],
    retry_after: Duration,
}

fn transcript(seeds: [u64; 2]) -> Transcript {
    let (ka, kb) = (PrivateKey::from_bytes([1; 32]), PrivateKey::from_bytes([2; 32]));
    let mut net = Net::with_keys(ka, kb, None, None, seeds);
    net.a_sends(b"lost").unwrap();
    let mut datagrams: Vec<Vec<u8>> = net.to_b.drain(..).map(|t| t.payload).collect();
    let retry_at = net.a.next_deadline().unwrap();
    let retry_after = retry_at - net.t0;
    net.advance(retry_after);
    net.pump();
    net.b_sends(b"back").unwrap();
    net.pump();
    datagrams.extend(net.delivered.drain(..).map(|(_, d)| d));
    let mut indices = [net.a.indices.keys().collect::<Vec<_>>(), net.b.indices.keys().collect::<Vec<_>>()];
    for side in &mut indices {
        side.sort_unstable();
    }
    Transcript { datagrams, indices, retry_after }
}

#[test]
fn the_same_seed_gives_the_same_indices_handshakes_and_jitter() {
    let first = transcript([7, 8]);
    // Initiation, retried initiation, response, A's confirmation of "lost"
    // (staged, sent with the new keys) and B's "back".
    assert_eq!(first.datagrams.len(), 5, "{first:?}");
    assert_eq!(first.datagrams[0].len(), INITIATION_LEN);
    assert_eq!(first.datagrams[1].len(), INITIATION_LEN);
    assert_eq!(first.datagrams[2].len(), RESPONSE_LEN);
    assert_eq!(first, transcript([7, 8]), "the same seeds must replay byte for byte");

    // Another seed for A changes A's ephemeral and index (the initiation)
    // but not the wall-clock timestamp: it is the RNG that varies them.
    let other = transcript([9, 8]);
    assert_ne!(other.datagrams[0], first.datagrams[0]);
    assert_ne!(other.indices[0], first.indices[0]);
    // A fresh seed for B alone leaves A's first initiation as it was.
    let other_b = transcript([7, 10]);
    assert_eq!(other_b.datagrams[0], first.datagrams[0]);
    assert_ne!(other_b.datagrams[2], first.datagrams[2]);
    // Jitter stays within its bound.
    for t in [&first, &other, &other_b] {
        assert!(t.retry_after >= REKEY_TIMEOUT && t.retry_after <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    }
}

#[test]
fn probe_secrets_agree_at_both_ends_and_only_for_peers() {
    let net = Net::new(None, None);
    let (a_key, b_key) = (net.a.public_key(), net.b.public_key());
    let at_a = net.a.probe_secrets(&b_key).unwrap();
    let at_b = net.b.probe_secrets(&a_key).unwrap();
    assert_eq!(at_a.key, at_b.key);
    assert_eq!(at_a.tag_out, at_b.tag_in, "what A sends B must find as its own");
    assert_eq!(at_b.tag_out, at_a.tag_in);
    assert_ne!(at_a.tag_in, at_a.tag_out, "a probe reflected back must not match");
    assert_eq!(
        at_a,
        ProbeSecrets::derive(
            &net.a.peer(net.a.peer_id(&b_key).unwrap()).unwrap().static_static,
            a_key.as_bytes(),
            b_key.as_bytes()
        )
    );
    let stranger = PrivateKey::generate().public_key();
    assert!(net.a.probe_secrets(&stranger).is_none());
    // A third party with its own key pair and A as its peer gets other secrets.
    let mut third = Device::new(DeviceConfig::new(PrivateKey::generate()), seeded(4));
    third.add_peer(PeerConfig::new(a_key)).unwrap();
    let at_third = third.probe_secrets(&a_key).unwrap();
    assert_ne!(at_third.key, at_a.key);
    assert_ne!(at_third.tag_out, at_a.tag_in);
}

#[test]
fn the_initiator_measures_the_handshake_round_trip_and_both_note_the_last_rx() {
    let mut net = Net::new(None, None);
    let (a_key, b_key) = (net.a.public_key(), net.b.public_key());
    let a_id = net.a.peer_id(&b_key).unwrap();
    let b_id = net.b.peer_id(&a_key).unwrap();
    assert_eq!(net.a.peer_stats(a_id).unwrap().last_rx, None);
    net.a_sends(b"hello").unwrap();
    // The initiation takes 30 ms to arrive and the response 40 ms back.
    net.elapsed += Duration::from_millis(30);
    let mut init = net.to_b.remove(0).payload;
    let now = net.now();
    assert_eq!(net.b.handle_datagram(now, net.a_addr, &mut init, &mut net.to_a), Incoming::Handled);
    assert_eq!(net.b.peer_stats(b_id).unwrap().last_rx, Some(now.instant));
    net.elapsed += Duration::from_millis(40);
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"hello".to_vec()]);
    let a_stats = net.a.peer_stats(a_id).unwrap();
    assert_eq!(a_stats.handshake_rtt, Some(Duration::from_millis(70)));
    assert_eq!(a_stats.last_rx, Some(net.now().instant));
    // The responder started no round trip of its own.
    assert_eq!(net.b.peer_stats(b_id).unwrap().handshake_rtt, None);
    // Junk and forgeries are not authenticated traffic.
    net.elapsed += Duration::from_secs(1);
    let before = net.b.peer_stats(b_id).unwrap().last_rx;
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&[0u8; 44]);
    let now = net.now();
    net.b.handle_datagram(now, net.a_addr, &mut forged, &mut Vec::new());
    assert_eq!(net.b.peer_stats(b_id).unwrap().last_rx, before);
    net.a_sends(b"later").unwrap();
    net.pump();
    assert_eq!(net.b.peer_stats(b_id).unwrap().last_rx, Some(net.now().instant));
}

#[test]
fn the_shell_can_point_a_peer_elsewhere_and_roaming_still_applies() {
    let mut net = handshaken(None);
    let b_key = net.b.public_key();
    let relay: SocketAddr = "[100::1]:9".parse().unwrap();
    assert!(net.a.set_endpoint(&b_key, relay));
    let Sent::Datagram { to, .. } = net.a_sends(b"via relay").unwrap() else { panic!() };
    assert_eq!(to, relay);
    assert!(!net.a.set_endpoint(&PrivateKey::generate().public_key(), relay));
    // An authenticated packet from B's address moves A back.
    net.to_b.clear();
    net.b_sends(b"direct").unwrap();
    let (_, at_a) = net.pump();
    assert_eq!(at_a, vec![b"direct".to_vec()]);
    let Sent::Datagram { to, .. } = net.a_sends(b"again").unwrap() else { panic!() };
    assert_eq!(to, net.b_addr);
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// One step of a random life of two peers.
    #[derive(Clone, Debug)]
    enum Step {
        ASends,
        BSends,
        Wait(u64),
        RekeyA,
        BRemovesA,
        BReaddsA,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::ASends),
            3 => Just(Step::BSends),
            4 => (0u64..200_000).prop_map(Step::Wait),
            1 => Just(Step::RekeyA),
            1 => Just(Step::BRemovesA),
            1 => Just(Step::BReaddsA),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        /// Through handshakes, rekeys, retries, expiry and peer removal, an
        /// index filter fed only by the journals always equals each device's
        /// index table, and never refuses a datagram the device accepts (both
        /// checked on every call by the harness).
        #[test]
        fn the_index_journal_tracks_the_live_indices(steps in proptest::collection::vec(step(), 1..40)) {
            let mut net = Net::new(None, None);
            let a_key = net.a.public_key();
            net.watch_indices();
            for step in steps {
                match step {
                    Step::ASends => { let _ = net.a_sends(b"a"); }
                    Step::BSends => { let _ = net.b_sends(b"b"); }
                    Step::Wait(ms) => net.run_for(Duration::from_millis(ms)),
                    Step::RekeyA => {
                        let now = net.now();
                        let id = net.a.peers().next().map(|(id, _)| id).expect("A has its peer");
                        net.a.rekey(id, now, &mut net.to_b);
                        net.sync_guards();
                    }
                    Step::BRemovesA => { net.b.remove_peer(&a_key); net.sync_guards(); }
                    Step::BReaddsA => {
                        let mut config = PeerConfig::new(a_key);
                        config.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
                        let _ = net.b.add_peer(config);
                        net.sync_guards();
                    }
                }
                net.pump();
            }
        }
    }

    /// A step of a life with an attacker on the path.
    #[derive(Clone, Debug)]
    enum Hostile {
        Life(Step),
        /// A datagram of random bytes under a message type's header and
        /// length, naming one of the target's live indices where the type
        /// has a receiver, so it reaches the lookups behind the index.
        Garbage {
            to_b: bool,
            kind: u8,
            pick: usize,
            body: Vec<u8>,
        },
        /// A datagram delivered earlier, again, maybe with a byte flipped.
        Replay {
            pick: usize,
            flip: Option<(usize, u8)>,
        },
    }

    fn hostile() -> impl Strategy<Value = Hostile> {
        prop_oneof![
            6 => step().prop_map(Hostile::Life),
            2 => (any::<bool>(), 0u8..6, any::<usize>(), proptest::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(to_b, kind, pick, body)| Hostile::Garbage { to_b, kind, pick, body }),
            2 => (any::<usize>(), proptest::option::of((any::<usize>(), 1u8..=255)))
                .prop_map(|(pick, flip)| Hostile::Replay { pick, flip }),
        ]
    }

    fn garbage(target: &Device, kind: u8, pick: usize, body: Vec<u8>) -> Vec<u8> {
        let live: Vec<u32> = target.indices.keys().collect();
        let receiver = if live.is_empty() { 0 } else { live[pick % live.len()] };
        let (len, receiver_at) = match kind {
            1 => (INITIATION_LEN, None),
            2 => (RESPONSE_LEN, Some(8)),
            3 => (COOKIE_REPLY_LEN, Some(4)),
            4 => (32 + body.len() / 16 * 16, Some(4)),
            _ => return body,
        };
        let mut datagram = body;
        datagram.resize(len.max(8), 0);
        datagram[..4].copy_from_slice(&[kind, 0, 0, 0]);
        if let Some(at) = receiver_at {
            datagram[at..at + 4].copy_from_slice(&receiver.to_le_bytes());
        }
        datagram
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

        /// Real traffic, rekeys, expiry and peer changes mixed with garbage
        /// aimed at live indices and replayed or altered datagrams: nothing
        /// panics, the maps always agree (so no lookup between them can
        /// miss), and no inconsistency is ever counted.
        #[test]
        fn hostile_datagrams_never_break_the_maps(steps in proptest::collection::vec(hostile(), 1..40)) {
            let mut net = Net::new(None, None);
            let a_key = net.a.public_key();
            let attacker: SocketAddr = "203.0.113.9:4444".parse().unwrap();
            for step in steps {
                match step {
                    Hostile::Life(Step::ASends) => { let _ = net.a_sends(b"a"); }
                    Hostile::Life(Step::BSends) => { let _ = net.b_sends(b"b"); }
                    Hostile::Life(Step::Wait(ms)) => net.run_for(Duration::from_millis(ms)),
                    Hostile::Life(Step::RekeyA) => {
                        let now = net.now();
                        let id = net.a.peers().next().map(|(id, _)| id).expect("A has its peer");
                        net.a.rekey(id, now, &mut net.to_b);
                    }
                    Hostile::Life(Step::BRemovesA) => { net.b.remove_peer(&a_key); }
                    Hostile::Life(Step::BReaddsA) => {
                        let mut config = PeerConfig::new(a_key);
                        config.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
                        let _ = net.b.add_peer(config);
                    }
                    Hostile::Garbage { to_b, kind, pick, body } => {
                        let now = net.now();
                        let target = if to_b { &mut net.b } else { &mut net.a };
                        let mut datagram = garbage(target, kind, pick, body);
                        let result = target.handle_datagram(now, attacker, &mut datagram, &mut Vec::new());
                        prop_assert!(!matches!(result, Incoming::Packet { .. }), "{:?}", result);
                    }
                    Hostile::Replay { pick, flip } => {
                        if !net.delivered.is_empty() {
                            let (side, mut datagram) = net.delivered[pick % net.delivered.len()].clone();
                            if let Some((at, x)) = flip.filter(|_| !datagram.is_empty()) {
                                let i = at % datagram.len();
                                datagram[i] ^= x;
                            }
                            let now = net.now();
                            if side == 1 {
                                net.b.handle_datagram(now, net.a_addr, &mut datagram, &mut net.to_a);
                            } else {
                                net.a.handle_datagram(now, net.b_addr, &mut datagram, &mut net.to_b);
                            }
                        }
                    }
                }
                net.pump();
                assert_consistent(&net.a);
                assert_consistent(&net.b);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary datagrams, and mutations of real ones, never panic and
        /// never yield a packet from a forged datagram.
        #[test]
        fn arbitrary_datagrams_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..400),
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
            kind in 0u8..6,
        ) {
            let mut net = handshaken(None);
            net.a_sends(b"sample").unwrap();
            let real = net.to_b.remove(0).payload;
            let mut datagram = match kind {
                0 => raw,
                1 => { let mut r = raw; if r.len() >= 4 { r[..4].copy_from_slice(&[1, 0, 0, 0]); } r.resize(148, 0); r }
                2 => { let mut r = raw; if r.len() >= 4 { r[..4].copy_from_slice(&[2, 0, 0, 0]); } r.resize(92, 0); r }
                3 => { let mut r = raw; if r.len() >= 4 { r[..4].copy_from_slice(&[3, 0, 0, 0]); } r.resize(64, 0); r }
                _ => real.clone(),
            };
            for (at, x) in flips {
                if !datagram.is_empty() {
                    let i = at % datagram.len();
                    datagram[i] ^= x | 1;
                }
            }
            // Two flips of one byte cancel out; only a changed datagram counts.
            let mutated = kind < 4 || datagram != real;
            let now = net.now();
            let result = net.b.handle_datagram(now, net.a_addr, &mut datagram, &mut Vec::new());
            if mutated {
                prop_assert!(!matches!(result, Incoming::Packet { .. }), "{:?}", result);
            }
        }
    }
}

/// A's packets for B, prepared in one batch and sealed in reverse order, as
/// crypto threads may finish them: B takes them all.
#[test]
fn messages_prepared_in_a_batch_can_be_sealed_in_any_order() {
    let mut net = handshaken(None);
    let now = net.now();
    let mut batch: Vec<(Vec<u8>, SealJob)> = (0..5u8)
        .map(|i| {
            let mut out = vec![0u8; 2048];
            let packet = ipv4(A_TUNNEL, B_TUNNEL, &[i; 100]);
            match net.a.prepare_packet(now, &packet, &mut out, &mut net.to_b) {
                Ok(Prepared::Seal { job, .. }) => (out, job),
                _ => panic!("no session to seal with"),
            }
        })
        .collect();
    for (out, job) in batch.iter_mut().rev() {
        job.seal(out);
    }
    for (i, (mut out, job)) in batch.into_iter().enumerate() {
        let incoming = net.b.handle_datagram(now, net.a_addr, &mut out[..job.len], &mut Vec::new());
        let Incoming::Packet { range, .. } = incoming else { panic!("packet {i}: {incoming:?}") };
        assert_eq!(out[range][20..], [i as u8; 100]);
    }
}

/// What a pending open's AEAD made of its datagram.
type Opened = Result<Range<usize>, SessionError>;

/// The receive side in its three steps, with the AEADs run in reverse order
/// and a copy, a forgery and a stranger in the batch: what comes out is what
/// handle_datagram gives one by one, in the order the datagrams arrived.
#[test]
fn a_received_batch_opened_in_any_order_is_finished_in_arrival_order() {
    let mut net = handshaken(None);
    for i in 0..4u8 {
        net.a_sends(&[i; 64]).unwrap();
    }
    let mut datagrams: Vec<Vec<u8>> = net.to_b.drain(..).map(|t| t.payload).collect();
    let copy = datagrams[1].clone();
    let mut forged = datagrams[2].clone();
    forged[40] ^= 1;
    let mut stranger = datagrams[3].clone();
    stranger[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    datagrams.extend([copy, forged, stranger]);

    let now = net.now();
    let mut transmits = Vec::new();
    let mut steps: Vec<Result<(PendingOpen, Option<Opened>), Incoming>> = datagrams
        .iter_mut()
        .map(|d| match net.b.begin_datagram(now, net.a_addr, d, &mut transmits) {
            Begin::Open(pending) => Ok((pending, None)),
            Begin::Done(incoming) => Err(incoming),
        })
        .collect();
    for (step, datagram) in steps.iter_mut().zip(datagrams.iter_mut()).rev() {
        if let Ok((pending, opened)) = step {
            *opened = Some(pending.open(datagram));
        }
    }
    let outcomes: Vec<Result<Vec<u8>, Incoming>> = steps
        .into_iter()
        .zip(datagrams.iter())
        .map(|(step, datagram)| {
            let incoming = match step {
                Ok((pending, opened)) => {
                    net.b.finish_open(now, pending, opened.expect("opened"), datagram, &mut transmits)
                }
                Err(incoming) => incoming,
            };
            match incoming {
                Incoming::Packet { range, .. } => Ok(datagram[range][20..].to_vec()),
                other => Err(other),
            }
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            Ok(vec![0; 64]),
            Ok(vec![1; 64]),
            Ok(vec![2; 64]),
            Ok(vec![3; 64]),
            Err(Incoming::Dropped(Drop::Session(SessionError::Replay))),
            Err(Incoming::Dropped(Drop::Session(SessionError::Decrypt))),
            Err(Incoming::Dropped(Drop::UnknownIndex)),
        ]
    );
}

/// A session removed while its datagrams were being decrypted (the peer
/// removed under the lock by another task): they are dropped when finished.
#[test]
fn datagrams_of_a_session_that_went_away_during_their_aead_are_dropped() {
    let mut net = handshaken(None);
    net.a_sends(b"late").unwrap();
    let mut datagram = net.to_b.remove(0).payload;
    let now = net.now();
    let mut transmits = Vec::new();
    let Begin::Open(pending) = net.b.begin_datagram(now, net.a_addr, &mut datagram, &mut transmits) else {
        panic!("not transport data");
    };
    let opened = pending.open(&mut datagram);
    assert!(opened.is_ok());
    let a_key = net.a.public_key();
    assert!(net.b.remove_peer(&a_key));
    assert_eq!(
        net.b.finish_open(now, pending, opened, &datagram, &mut transmits),
        Incoming::Dropped(Drop::UnknownIndex)
    );
    assert_consistent(&net.b);
}

/// A flood of initiations with a valid mac1 (anyone who knows B's public
/// key can compute it) from many sources, at the default load threshold:
/// B answers with cookie replies instead of doing Diffie-Hellman for each,
/// counts them, and the session A already has keeps passing traffic both
/// ways all along (the WireGuard paper, section 5.3: under load, a
/// handshake needs a cookie; transport data never does).
#[test]
fn an_initiation_flood_engages_cookies_and_the_live_session_keeps_working() {
    let mut net = Net::new(None, None);
    net.a_sends(b"before").unwrap();
    let (at_b, _) = net.pump();
    assert_eq!(at_b, vec![b"before".to_vec()]);

    // The attacker: a device of its own that knows B's public key, which B
    // does not know.
    let mut attacker = Device::new(DeviceConfig::new(PrivateKey::generate()), seeded(3));
    let mut target = PeerConfig::new(net.b.identity.public);
    target.endpoint = Some(net.b_addr);
    target.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
    let id = attacker.add_peer(target).unwrap();

    const FLOOD: u64 = 5000;
    let mut delivered = (0, 0);
    let mut cookie_replies = 0;
    for i in 0..FLOOD {
        // 5000 initiations in one second, from 250 addresses.
        net.elapsed += Duration::from_micros(200);
        let now = Now {
            instant: net.t0 + net.elapsed,
            wall: Tai64N::from_unix(Duration::from_secs(1_900_000_000 + i)),
        };
        let mut tx = Vec::new();
        attacker.peers.get_mut(&id).unwrap().timers.last_initiation_sent = None;
        attacker.initiate_handshake(id, now, &mut tx, false);
        let mut initiation = tx.remove(0).payload;
        let from = SocketAddr::from(([203, 0, 113, (i % 250) as u8], 40000 + (i % 7) as u16));
        let mut replies = Vec::new();
        let incoming = net.b.handle_datagram(now, from, &mut initiation, &mut replies);
        assert_ne!(incoming, Incoming::Handled, "a stranger's initiation got through");
        cookie_replies += replies.iter().filter(|r| r.payload.len() == COOKIE_REPLY_LEN).count() as u64;
        assert!(replies.iter().all(|r| r.to == from && r.payload.len() == COOKIE_REPLY_LEN), "{replies:?}");
        // The live session, every 100 initiations, both ways.
        if i % 100 == 0 {
            net.a_sends(format!("a{i}").as_bytes()).unwrap();
            net.b_sends(format!("b{i}").as_bytes()).unwrap();
            let (at_b, at_a) = net.pump();
            assert_eq!(at_b, vec![format!("a{i}").into_bytes()], "A's packet {i} did not arrive");
            assert_eq!(at_a, vec![format!("b{i}").into_bytes()], "B's packet {i} did not arrive");
            delivered.0 += 1;
            delivered.1 += 1;
        }
    }
    let required = net.drops(&net.b, Drop::CookieRequired);
    // Past the threshold (1000 a second), every initiation without mac2 got
    // a cookie reply, counted.
    assert!(required >= FLOOD - 1100, "{:?}", net.b.stats);
    assert_eq!(net.b.stats.cookie_replies_sent, required);
    assert_eq!(cookie_replies, required);
    assert_eq!(net.b.stats.handshakes_received, FLOOD + 1);
    assert_eq!(delivered, (FLOOD / 100, FLOOD / 100));
    println!(
        "{FLOOD} initiations: {required} cookie replies, {} refused otherwise; {} packets each way on the live session",
        FLOOD - required,
        delivered.0
    );
}

/// Each drop's label is in `Drop::LABELS`, once: the gateway shows every
/// label at zero from the start, so one missing there would appear only
/// with its first drop.
#[test]
fn every_drop_label_is_listed_once() {
    use crate::proto::{handshake::HandshakeError, session::SessionError};
    let all = [
        Drop::Malformed,
        Drop::UnknownIndex,
        Drop::BadMac1,
        Drop::CookieRequired,
        Drop::RateLimited,
        Drop::Handshake(HandshakeError::Decrypt),
        Drop::ReplayedInitiation,
        Drop::InitiationFlood,
        Drop::UnexpectedResponse,
        Drop::BadCookieReply,
        Drop::Session(SessionError::Expired),
        Drop::BadInnerPacket,
        Drop::SourceNotAllowed,
        Drop::InternalInconsistency,
    ];
    let listed: HashSet<&str> = Drop::LABELS.into_iter().collect();
    assert_eq!(listed.len(), Drop::LABELS.len(), "a label listed twice");
    let labels: HashSet<&str> = all.iter().map(|d| d.label()).collect();
    assert_eq!(labels, listed);
}
