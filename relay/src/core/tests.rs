//! The binding rules, driven with crafted handshake messages.

use std::{net::SocketAddr, time::Duration};

use ferry_tunnel::PublicKey;
use proptest::prelude::*;

use super::{handshake::tests::handshake, *};

struct World {
    alloc: Allocation,
    gw_key: PublicKey,
    client_key: PublicKey,
    now: Instant,
}

fn udp(last: u8, port: u16) -> PeerAddr {
    PeerAddr::Udp(SocketAddr::from(([192, 0, 2, last], port)))
}

const GW: PeerAddr =
    PeerAddr::Udp(SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2)), 51820));

fn client() -> PeerAddr {
    udp(7, 40000)
}

fn mallory() -> PeerAddr {
    udp(66, 666)
}

fn transport() -> Vec<u8> {
    let mut m = vec![0u8; 64];
    m[0] = 4;
    m
}

impl World {
    fn new() -> World {
        let (gw_key, client_key) = handshake::tests::keys();
        let now = Instant::now();
        let alloc = Allocation::new(Validator::new(&gw_key, &client_key), Timeouts::default(), now);
        World { alloc, gw_key, client_key, now }
    }

    fn send(&mut self, from: PeerAddr, datagram: &[u8]) -> Decision {
        self.alloc.handle(from, datagram, self.now)
    }

    /// `initiator` at `from` initiates; the other side answers from `responder_at`.
    fn handshake(&mut self, initiator: Side, from: PeerAddr, responder_at: PeerAddr, index: u32) -> Decision {
        let (to_key, back_key) = match initiator {
            Side::Client => (self.gw_key, self.client_key),
            Side::Gateway => (self.client_key, self.gw_key),
        };
        let first = self.send(from, &handshake(1, index, 0, &to_key));
        if first != Decision::Forward(responder_at) {
            return first;
        }
        self.send(responder_at, &handshake(2, index + 1, index, &back_key))
    }

    fn bind_both(&mut self) {
        // The client's first initiation finds no gateway yet.
        assert_eq!(
            self.send(client(), &handshake(1, 1, 0, &self.gw_key.clone())),
            Decision::Drop(DropReason::NoPeer)
        );
        assert_eq!(self.handshake(Side::Gateway, GW, client(), 10), Decision::Forward(GW));
        assert_eq!(self.alloc.bound(Side::Gateway), Some(GW));
        assert_eq!(self.alloc.bound(Side::Client), Some(client()));
        assert!(self.alloc.take_changed());
    }
}

#[test]
fn a_completed_handshake_binds_both_sides_and_transport_flows() {
    let mut w = World::new();
    assert_eq!(w.send(client(), &transport()), Decision::Drop(DropReason::Unbound));
    w.bind_both();
    assert_eq!(w.send(client(), &transport()), Decision::Forward(GW));
    assert_eq!(w.send(GW, &transport()), Decision::Forward(client()));
    assert_eq!(w.alloc.routes(), Some([(GW, client()), (client(), GW)]));
}

#[test]
fn roaming_moves_a_binding_only_when_the_handshake_completes() {
    let mut w = World::new();
    w.bind_both();
    let moved = udp(8, 40001);
    // Transport from the new address is not forwarded.
    assert_eq!(w.send(moved, &transport()), Decision::Drop(DropReason::Unbound));
    // The initiation is delivered, but the binding stays until the response.
    let gw_key = w.gw_key;
    assert_eq!(w.send(moved, &handshake(1, 20, 0, &gw_key)), Decision::Forward(GW));
    assert_eq!(w.alloc.bound(Side::Client), Some(client()));
    assert_eq!(w.send(client(), &transport()), Decision::Forward(GW));
    let client_key = w.client_key;
    assert_eq!(w.send(GW, &handshake(2, 21, 20, &client_key)), Decision::Forward(moved));
    assert_eq!(w.alloc.bound(Side::Client), Some(moved));
    assert_eq!(w.send(GW, &transport()), Decision::Forward(moved));
    assert_eq!(w.send(client(), &transport()), Decision::Drop(DropReason::Unbound));
}

#[test]
fn a_forged_initiation_is_delivered_but_steals_nothing() {
    let mut w = World::new();
    w.bind_both();
    let gw_key = w.gw_key;
    // Mallory knows the public keys, so mac1 is valid: the gateway gets it and,
    // unable to decrypt it, never answers.
    assert_eq!(w.send(mallory(), &handshake(1, 99, 0, &gw_key)), Decision::Forward(GW));
    assert_eq!(w.alloc.bound(Side::Client), Some(client()));
    assert_eq!(w.send(mallory(), &transport()), Decision::Drop(DropReason::Unbound));
    // Responses and cookie replies she makes up answer nothing delivered to her.
    let client_key = w.client_key;
    for index in [0, 1, 10, 99] {
        assert_eq!(
            w.send(mallory(), &handshake(2, 5, index, &client_key)),
            Decision::Drop(DropReason::UnknownIndex)
        );
        let mut cookie = vec![0u8; 64];
        cookie[0] = 3;
        cookie[4..8].copy_from_slice(&index.to_le_bytes());
        assert_eq!(w.send(mallory(), &cookie), Decision::Drop(DropReason::UnknownIndex));
    }
    assert!(!w.alloc.take_changed());
    assert_eq!(w.send(client(), &transport()), Decision::Forward(GW));
}

#[test]
fn a_response_from_elsewhere_than_the_delivery_address_is_refused() {
    let mut w = World::new();
    w.bind_both();
    let (gw_key, client_key) = (w.gw_key, w.client_key);
    assert_eq!(w.send(client(), &handshake(1, 30, 0, &gw_key)), Decision::Forward(GW));
    // Right index, wrong source.
    assert_eq!(
        w.send(mallory(), &handshake(2, 31, 30, &client_key)),
        Decision::Drop(DropReason::UnknownIndex)
    );
    // Right source, right index, but mac1 for the wrong side.
    assert_eq!(w.send(GW, &handshake(2, 31, 30, &gw_key)), Decision::Drop(DropReason::UnknownIndex));
    assert_eq!(w.send(GW, &handshake(2, 31, 30, &client_key)), Decision::Forward(client()));
    // A response is good once.
    assert_eq!(w.send(GW, &handshake(2, 31, 30, &client_key)), Decision::Drop(DropReason::UnknownIndex));
}

#[test]
fn bad_mac1_and_garbage_are_dropped_with_reasons() {
    let mut w = World::new();
    let stranger = handshake::tests::keys().0;
    assert_eq!(w.send(client(), &handshake(1, 1, 0, &stranger)), Decision::Drop(DropReason::BadMac1));
    assert_eq!(w.send(client(), b"hello"), Decision::Drop(DropReason::Malformed));
}

#[test]
fn cookie_replies_go_back_to_the_initiator() {
    let mut w = World::new();
    w.bind_both();
    let gw_key = w.gw_key;
    assert_eq!(w.send(client(), &handshake(1, 40, 0, &gw_key)), Decision::Forward(GW));
    let mut cookie = vec![0u8; 64];
    cookie[0] = 3;
    cookie[4..8].copy_from_slice(&40u32.to_le_bytes());
    assert_eq!(w.send(GW, &cookie), Decision::Forward(client()));
}

#[test]
fn idle_bindings_fall_back_to_candidates_and_a_handshake_restores_them() {
    let mut w = World::new();
    w.bind_both();
    w.now += Duration::from_secs(100);
    assert_eq!(w.send(client(), &transport()), Decision::Forward(GW));
    w.alloc.poll(w.now + Duration::from_secs(150));
    assert_eq!(w.alloc.bound(Side::Client), Some(client()), "traffic keeps bindings alive");
    w.now += Duration::from_secs(201);
    w.alloc.poll(w.now);
    assert!(w.alloc.take_changed());
    assert_eq!(w.alloc.routes(), None);
    assert_eq!(w.send(client(), &transport()), Decision::Drop(DropReason::Unbound));
    // The old addresses are candidates: the next handshake goes through.
    assert_eq!(w.handshake(Side::Client, client(), GW, 50), Decision::Forward(client()));
    assert!(w.alloc.routes().is_some());
}

#[test]
fn unanswered_initiations_expire() {
    let mut w = World::new();
    w.bind_both();
    let (gw_key, client_key) = (w.gw_key, w.client_key);
    assert_eq!(w.send(client(), &handshake(1, 60, 0, &gw_key)), Decision::Forward(GW));
    w.now += Duration::from_secs(11);
    assert_eq!(w.send(GW, &handshake(2, 61, 60, &client_key)), Decision::Drop(DropReason::UnknownIndex));
}

#[test]
fn a_websocket_peer_is_bound_like_a_udp_one_and_forgotten_on_close() {
    let mut w = World::new();
    let ws = PeerAddr::Ws(3);
    let gw_key = w.gw_key;
    assert_eq!(w.send(ws, &handshake(1, 1, 0, &gw_key)), Decision::Drop(DropReason::NoPeer));
    assert_eq!(w.handshake(Side::Gateway, GW, ws, 70), Decision::Forward(GW));
    assert_eq!(w.send(ws, &transport()), Decision::Forward(GW));
    assert_eq!(w.send(GW, &transport()), Decision::Forward(ws));
    w.alloc.forget(ws);
    assert_eq!(w.send(GW, &transport()), Decision::Drop(DropReason::Unbound));
}

#[derive(Clone, Debug)]
enum Attack {
    Initiation { as_client: bool, index: u32 },
    Response { to_client: bool, index: u32 },
    Cookie { index: u32 },
    Transport,
    Garbage(Vec<u8>),
}

fn attack() -> impl Strategy<Value = Attack> {
    prop_oneof![
        (any::<bool>(), any::<u32>()).prop_map(|(as_client, index)| Attack::Initiation { as_client, index }),
        (any::<bool>(), any::<u32>()).prop_map(|(to_client, index)| Attack::Response { to_client, index }),
        any::<u32>().prop_map(|index| Attack::Cookie { index }),
        Just(Attack::Transport),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Attack::Garbage),
    ]
}

proptest! {
    /// Whatever an off-path attacker who knows both public keys sends, from
    /// any of a few addresses, interleaved with the peers' own rekeys, the
    /// bindings never point at the attacker and only its mac1-valid
    /// initiations reach a peer.
    #[test]
    fn an_off_path_attacker_never_gets_a_binding(
        attacks in proptest::collection::vec((attack(), 0u8..3, any::<bool>()), 1..60)
    ) {
        let mut w = World::new();
        w.bind_both();
        let (gw_key, client_key) = (w.gw_key, w.client_key);
        let mut index = 1000;
        for (attack, port, rekey) in attacks {
            let from = udp(66, 600 + u16::from(port));
            let datagram = match attack {
                Attack::Initiation { as_client, index } => {
                    handshake(1, index, 0, if as_client { &gw_key } else { &client_key })
                }
                Attack::Response { to_client, index } => {
                    handshake(2, 1, index, if to_client { &client_key } else { &gw_key })
                }
                Attack::Cookie { index } => {
                    let mut c = vec![0u8; 64];
                    c[0] = 3;
                    c[4..8].copy_from_slice(&index.to_le_bytes());
                    c
                }
                Attack::Transport => transport(),
                Attack::Garbage(bytes) => bytes,
            };
            let is_initiation = datagram.len() == 148 && datagram[0] == 1;
            match w.send(from, &datagram) {
                Decision::Forward(to) => {
                    prop_assert!(is_initiation, "forwarded a non-initiation from the attacker");
                    prop_assert!(to == GW || to == client());
                }
                Decision::Drop(_) => {}
            }
            if rekey {
                index += 2;
                prop_assert_eq!(w.handshake(Side::Client, client(), GW, index), Decision::Forward(client()));
            }
            w.now += Duration::from_millis(100);
            prop_assert_eq!(w.alloc.bound(Side::Gateway), Some(GW));
            prop_assert_eq!(w.alloc.bound(Side::Client), Some(client()));
        }
    }
}
