//! The relay forwarder in the kernel, with BPF_PROG_RUN on crafted frames:
//! every branch's verdict and the counter it bumps, passed frames untouched,
//! and forwarded frames byte for byte against frames built independently with
//! checksums computed from scratch. The FIB cases run in a lab namespace with
//! permanent neighbour entries. Needs root (BPF programs, namespaces).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use etherparse::{Ipv4Header, Ipv6Header, UdpHeader};
use ferry_ebpf::{
    Error,
    common::relay::{
        ACTION_FORWARD, ACTION_USERSPACE, Binding, BindingKey, FAMILY_V6, Outcome, RelayConfig, Traffic,
    },
    if_index,
    relay::{self, RelayForwarder},
    test_run::{self, Verdict, XdpRun},
};
use ferry_lab::{
    Lab,
    packet::{self, DST_MAC, ETH_LEN, SRC_MAC, wireguard},
};
use proptest::prelude::*;

// The relay, a technician's client and a gateway on the simulated internet.
const RELAY4: [u8; 4] = [203, 0, 113, 1];
const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const GATEWAY4: [u8; 4] = [198, 51, 100, 2];
const RELAY6: [u8; 16] = v6(0x1, 1);
const CLIENT6: [u8; 16] = v6(0xc, 7);
const GATEWAY6: [u8; 16] = v6(0x6, 2);
const CLIENT_PORT: u16 = 40000;
const GATEWAY_PORT: u16 = 51820;
const PORT_MIN: u16 = 50000;
const PORT_MAX: u16 = 50999;
/// The allocation both peers send to.
const ALLOCATION: u16 = 50123;
const SLOT: u32 = 3;

/// 2001:db8:<net>::<host>
const fn v6(net: u8, host: u8) -> [u8; 16] {
    [0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]
}

fn sock(addr: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(addr.into(), port)
}

fn config(fib: bool) -> RelayConfig {
    relay::config(Some(RELAY4.into()), Some(RELAY6.into()), PORT_MIN..=PORT_MAX, fib)
}

fn forwarder(fib: bool) -> RelayForwarder {
    let mut f = RelayForwarder::load(64, 16).expect("loading the relay forwarder (run as root)");
    f.configure(config(fib)).unwrap();
    f
}

/// A forwarder without FIB with the client bound to the gateway and back, in
/// both families.
fn bound() -> RelayForwarder {
    let mut f = forwarder(false);
    bind_both(&mut f);
    f
}

fn bind_both(f: &mut RelayForwarder) {
    for (client, gateway) in
        [(IpAddr::from(CLIENT4), IpAddr::from(GATEWAY4)), (CLIENT6.into(), GATEWAY6.into())]
    {
        let client = sock(client, CLIENT_PORT);
        let gateway = sock(gateway, GATEWAY_PORT);
        f.insert(&relay::key(client, ALLOCATION), &relay::binding(gateway, ACTION_FORWARD, SLOT)).unwrap();
        f.insert(&relay::key(gateway, ALLOCATION), &relay::binding(client, ACTION_FORWARD, SLOT)).unwrap();
    }
}

/// A datagram from the client to the allocation, Ethernet from the router
/// (SRC_MAC) to the relay (DST_MAC).
fn to_relay4(payload: &[u8]) -> Vec<u8> {
    packet::udp4(CLIENT4, CLIENT_PORT, RELAY4, ALLOCATION, payload)
}

fn to_relay6(payload: &[u8]) -> Vec<u8> {
    packet::udp6(CLIENT6, CLIENT_PORT, RELAY6, ALLOCATION, payload)
}

/// The verdict an outcome must come with.
fn verdict_of(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::ForwardTx => Verdict::Tx,
        Outcome::ForwardRedirect => Verdict::Redirect,
        o if o.drops() => Verdict::Drop,
        _ => Verdict::Pass,
    }
}

/// Runs `frame` through the forwarder as received on `ifindex` and checks the
/// verdict, that exactly the `expected` counter grew by one, and that a frame
/// that was not forwarded is unchanged.
fn check_on(f: &RelayForwarder, frame: &[u8], ifindex: u32, expected: Outcome) -> XdpRun {
    let before = f.counters().unwrap();
    let run = test_run::run_on(f.program().unwrap(), frame, ifindex).unwrap();
    let delta = f.counters().unwrap().since(&before);
    let counted: Vec<_> = delta.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counted, vec![(expected, 1)], "frame {frame:02x?}");
    assert_eq!(run.verdict, verdict_of(expected), "{expected:?}");
    if !expected.forwards() {
        assert_eq!(run.packet, frame, "a frame that was not forwarded was modified ({expected:?})");
    }
    run
}

fn check(f: &RelayForwarder, frame: &[u8], expected: Outcome) -> XdpRun {
    check_on(f, frame, 0, expected)
}

/// Checks a forwarded frame: exactly `expected`, and its checksums valid.
fn assert_forwarded(run: &XdpRun, expected: &[u8]) {
    assert_eq!(run.packet.len(), expected.len(), "length of the forwarded frame");
    if run.packet != expected {
        panic!(
            "forwarded frame differs\n     got {:02x?}\nexpected {:02x?}",
            &run.packet[..expected.len().min(80)],
            &expected[..expected.len().min(80)]
        );
    }
    assert_checksums_valid(&run.packet);
}

// --- Expected frames, built independently of the program -------------------

/// What the relay must send for `input`: Ethernet `eth_src` -> `eth_dst`,
/// from the relay's address and the allocation port to `to`, TTL / hop limit
/// 64, everything else as received, checksums computed from scratch
/// (etherparse). Bytes after the IP datagram (Ethernet padding) stay.
fn expected(input: &[u8], eth_src: [u8; 6], eth_dst: [u8; 6], to: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&eth_dst);
    out.extend_from_slice(&eth_src);
    out.extend_from_slice(&input[12..ETH_LEN]);
    let ip = &input[ETH_LEN..];
    match to.ip() {
        IpAddr::V4(peer) => {
            let (mut header, rest) = Ipv4Header::from_slice(ip).unwrap();
            let ip_end = header.total_len as usize - header.header_len();
            let (mut udp, payload) = UdpHeader::from_slice(&rest[..ip_end]).unwrap();
            header.source = header.destination;
            header.destination = peer.octets();
            header.time_to_live = 64;
            header.header_checksum = header.calc_header_checksum();
            udp.source_port = udp.destination_port;
            udp.destination_port = to.port();
            if udp.checksum != 0 {
                udp.checksum = udp.calc_checksum_ipv4(&header, payload).unwrap();
            }
            out.extend_from_slice(&header.to_bytes());
            out.extend_from_slice(&udp.to_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(&rest[ip_end..]);
        }
        IpAddr::V6(peer) => {
            let (mut header, rest) = Ipv6Header::from_slice(ip).unwrap();
            let ip_end = header.payload_length as usize;
            let (mut udp, payload) = UdpHeader::from_slice(&rest[..ip_end]).unwrap();
            header.source = header.destination;
            header.destination = peer.octets();
            header.hop_limit = 64;
            udp.source_port = udp.destination_port;
            udp.destination_port = to.port();
            udp.checksum = udp.calc_checksum_ipv6(&header, payload).unwrap();
            out.extend_from_slice(&header.to_bytes());
            out.extend_from_slice(&udp.to_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(&rest[ip_end..]);
        }
    }
    out
}

/// The Ethernet addresses swapped: what the relay sends without FIB.
fn expected_swapped(input: &[u8], to: SocketAddr) -> Vec<u8> {
    let dst: [u8; 6] = input[..6].try_into().unwrap();
    let src: [u8; 6] = input[6..12].try_into().unwrap();
    expected(input, dst, src, to)
}

// --- Checksums from scratch, our own code (a second opinion to etherparse) --

/// The one's complement sum of `parts` as big-endian 16-bit words (each part
/// padded to even length), folded, not complemented.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u64;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The UDP checksum's pseudo-header for a v4 or v6 frame.
fn pseudo_header(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[ETH_LEN..];
    let mut pseudo = Vec::new();
    if ip[0] >> 4 == 4 {
        let udp_len = &ip[20 + 4..20 + 6];
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(udp_len);
    } else {
        let udp_len = u16::from_be_bytes([ip[40 + 4], ip[40 + 5]]) as u32;
        pseudo.extend_from_slice(&ip[8..40]);
        pseudo.extend_from_slice(&udp_len.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
    }
    pseudo
}

/// Where the UDP header starts and how long the UDP datagram is.
fn udp_range(frame: &[u8]) -> std::ops::Range<usize> {
    let start = ETH_LEN + if frame[ETH_LEN] >> 4 == 4 { 20 } else { 40 };
    let len = u16::from_be_bytes([frame[start + 4], frame[start + 5]]) as usize;
    start..start + len
}

fn assert_checksums_valid(frame: &[u8]) {
    let v4 = frame[ETH_LEN] >> 4 == 4;
    if v4 {
        assert_eq!(ones_sum(&[&frame[ETH_LEN..ETH_LEN + 20]]), 0xffff, "IPv4 header checksum");
    }
    let udp = udp_range(frame);
    let check = u16::from_be_bytes([frame[udp.start + 6], frame[udp.start + 7]]);
    if v4 && check == 0 {
        return;
    }
    assert_ne!(check, 0, "an IPv6 UDP checksum of zero");
    assert_eq!(ones_sum(&[&pseudo_header(frame), &frame[udp]]), 0xffff, "UDP checksum");
}

/// Recomputes both checksums of a frame whose fields a test changed, with
/// our own sum. `udp_none` writes "no checksum" (IPv4 only).
fn seal(frame: &mut [u8], udp_none: bool) {
    if frame[ETH_LEN] >> 4 == 4 {
        frame[ETH_LEN + 10..ETH_LEN + 12].fill(0);
        let check = !ones_sum(&[&frame[ETH_LEN..ETH_LEN + 20]]);
        frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&check.to_be_bytes());
    }
    let udp = udp_range(frame);
    frame[udp.start + 6..udp.start + 8].fill(0);
    if udp_none {
        return;
    }
    let check = match !ones_sum(&[&pseudo_header(frame), &frame[udp.clone()]]) {
        0 => 0xffff,
        check => check,
    };
    frame[udp.start + 6..udp.start + 8].copy_from_slice(&check.to_be_bytes());
}

/// Sets the IPv4 TTL or IPv6 hop limit and reseals.
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    let at = if frame[ETH_LEN] >> 4 == 4 { ETH_LEN + 8 } else { ETH_LEN + 7 };
    frame[at] = ttl;
    seal(&mut frame, false);
    frame
}

/// Sets the IPv4 TOS or IPv6 traffic class and reseals.
fn with_tos(mut frame: Vec<u8>, tos: u8) -> Vec<u8> {
    if frame[ETH_LEN] >> 4 == 4 {
        frame[ETH_LEN + 1] = tos;
    } else {
        frame[ETH_LEN] = 0x60 | tos >> 4;
        frame[ETH_LEN + 1] = (tos << 4) | (frame[ETH_LEN + 1] & 0x0f);
    }
    seal(&mut frame, false);
    frame
}

// --- Forwarding without FIB ------------------------------------------------

#[test]
fn transport_messages_are_forwarded_with_swapped_macs_and_fresh_checksums() {
    let f = bound();
    for len in [32, 33, 48, 148, 1452] {
        let frame = with_ttl(to_relay4(&wireguard(4, len)), 17);
        let run = check(&f, &frame, Outcome::ForwardTx);
        assert_forwarded(&run, &expected_swapped(&frame, sock(GATEWAY4, GATEWAY_PORT)));

        let frame = with_ttl(to_relay6(&wireguard(4, len)), 1);
        let run = check(&f, &frame, Outcome::ForwardTx);
        assert_forwarded(&run, &expected_swapped(&frame, sock(GATEWAY6, GATEWAY_PORT)));
    }
    // And back from the gateway to the client, on the same allocation.
    let frame = packet::udp4(GATEWAY4, GATEWAY_PORT, RELAY4, ALLOCATION, &wireguard(4, 64));
    let run = check(&f, &frame, Outcome::ForwardTx);
    assert_forwarded(&run, &expected_swapped(&frame, sock(CLIENT4, CLIENT_PORT)));
    let frame = packet::udp6(GATEWAY6, GATEWAY_PORT, RELAY6, ALLOCATION, &wireguard(4, 64));
    let run = check(&f, &frame, Outcome::ForwardTx);
    assert_forwarded(&run, &expected_swapped(&frame, sock(CLIENT6, CLIENT_PORT)));
    // The forwarded frame is what the test built, not an artefact of it.
    assert_eq!(&run.packet[ETH_LEN + 8..ETH_LEN + 24], &RELAY6);
    assert_eq!(&run.packet[ETH_LEN + 24..ETH_LEN + 40], &CLIENT6);
    assert_eq!(run.packet[ETH_LEN + 7], 64);
    assert_eq!(&run.packet[..6], &SRC_MAC);
    assert_eq!(&run.packet[6..12], &DST_MAC);
}

#[test]
fn a_zero_ipv4_udp_checksum_stays_zero() {
    let f = bound();
    let mut frame = to_relay4(&wireguard(4, 96));
    seal(&mut frame, true);
    let run = check(&f, &frame, Outcome::ForwardTx);
    assert_forwarded(&run, &expected_swapped(&frame, sock(GATEWAY4, GATEWAY_PORT)));
    assert_eq!(&run.packet[ETH_LEN + 20 + 6..ETH_LEN + 20 + 8], &[0, 0]);
}

#[test]
fn a_zero_ipv6_udp_checksum_goes_to_the_stack() {
    // IPv6 requires the checksum; the stack drops such datagrams, and an
    // incremental update cannot produce a right one from nothing.
    let f = bound();
    let mut frame = to_relay6(&wireguard(4, 96));
    seal(&mut frame, true);
    check(&f, &frame, Outcome::PassMalformed);
}

#[test]
fn ethernet_padding_after_the_datagram_is_kept() {
    let f = bound();
    let mut frame = to_relay4(&wireguard(4, 32));
    frame.extend_from_slice(&[0xee; 6]);
    let run = check(&f, &frame, Outcome::ForwardTx);
    assert_forwarded(&run, &expected_swapped(&frame, sock(GATEWAY4, GATEWAY_PORT)));
}

#[test]
fn every_allocation_port_in_the_range_is_forwarded_and_none_outside() {
    let mut f = forwarder(false);
    let gateway = sock(GATEWAY4, GATEWAY_PORT);
    for port in [PORT_MIN, PORT_MIN + 1, ALLOCATION, PORT_MAX] {
        f.insert(&relay::key(sock(CLIENT4, CLIENT_PORT), port), &relay::binding(gateway, ACTION_FORWARD, 0))
            .unwrap();
        let frame = packet::udp4(CLIENT4, CLIENT_PORT, RELAY4, port, &wireguard(4, 32));
        let run = check(&f, &frame, Outcome::ForwardTx);
        assert_forwarded(&run, &expected_swapped(&frame, gateway));
        // The allocation port is the source the peer sees.
        assert_eq!(&run.packet[ETH_LEN + 20..ETH_LEN + 22], &port.to_be_bytes());
    }
    for port in [PORT_MIN - 1, PORT_MAX + 1, 53, 0, 65535] {
        f.insert(&relay::key(sock(CLIENT4, CLIENT_PORT), port), &relay::binding(gateway, ACTION_FORWARD, 0))
            .unwrap();
        check(
            &f,
            &packet::udp4(CLIENT4, CLIENT_PORT, RELAY4, port, &wireguard(4, 32)),
            Outcome::PassOtherPort,
        );
        check(
            &f,
            &packet::udp6(CLIENT6, CLIENT_PORT, RELAY6, port, &wireguard(4, 32)),
            Outcome::PassOtherPort,
        );
    }
}

#[test]
fn datagrams_to_other_addresses_pass_untouched() {
    let mut f = bound();
    check(
        &f,
        &packet::udp4(CLIENT4, CLIENT_PORT, GATEWAY4, ALLOCATION, &wireguard(4, 32)),
        Outcome::PassOtherPort,
    );
    check(
        &f,
        &packet::udp6(CLIENT6, CLIENT_PORT, GATEWAY6, ALLOCATION, &wireguard(4, 32)),
        Outcome::PassOtherPort,
    );
    // The allocation port as source does not make a datagram ours.
    check(
        &f,
        &packet::udp4(RELAY4, ALLOCATION, CLIENT4, CLIENT_PORT, &wireguard(4, 32)),
        Outcome::PassOtherPort,
    );
    // A family without a configured address is not forwarded at all.
    f.configure(relay::config(None, Some(RELAY6.into()), PORT_MIN..=PORT_MAX, false)).unwrap();
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::PassOtherPort);
    check(
        &f,
        &packet::udp4(CLIENT4, CLIENT_PORT, [0; 4], ALLOCATION, &wireguard(4, 32)),
        Outcome::PassOtherPort,
    );
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::ForwardTx);
    f.configure(relay::config(Some(RELAY4.into()), None, PORT_MIN..=PORT_MAX, false)).unwrap();
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::PassOtherPort);
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::ForwardTx);
    // Unconfigured: everything passes.
    f.configure(RelayConfig::default()).unwrap();
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::PassOtherPort);
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::PassOtherPort);
}

#[test]
fn handshakes_pass_to_userspace_whatever_their_length() {
    let f = bound();
    for message_type in 1..=3 {
        for len in [4, 32, 64, 92, 148, 200] {
            check(&f, &to_relay4(&wireguard(message_type, len)), Outcome::PassHandshake);
            check(&f, &to_relay6(&wireguard(message_type, len)), Outcome::PassHandshake);
        }
    }
    // From an unbound address too: handshakes are how bindings come about.
    let frame = packet::udp4([192, 0, 2, 99], 1, RELAY4, ALLOCATION, &wireguard(1, 148));
    check(&f, &frame, Outcome::PassHandshake);
}

#[test]
fn no_wireguard_message_is_dropped() {
    let f = bound();
    for message_type in [0u8, 5, 0x7f, 0xff] {
        check(&f, &to_relay4(&wireguard(message_type, 148)), Outcome::DropBadType);
        check(&f, &to_relay6(&wireguard(message_type, 32)), Outcome::DropBadType);
    }
    for reserved in 1..4 {
        let mut payload = wireguard(4, 32);
        payload[reserved] = 1;
        check(&f, &to_relay4(&payload), Outcome::DropBadType);
        check(&f, &to_relay6(&payload), Outcome::DropBadType);
    }
    // Shorter than a type word, or a transport message without room for its
    // header and tag.
    for len in [0, 1, 3, 4, 16, 31] {
        check(&f, &to_relay4(&wireguard(4, len)), Outcome::DropBadType);
        check(&f, &to_relay6(&wireguard(4, len)), Outcome::DropBadType);
    }
    // A 4-byte payload padded to Ethernet's minimum: the UDP length decides.
    let mut padded = to_relay4(&wireguard(4, 4));
    padded.resize(80, 0);
    check(&f, &padded, Outcome::DropBadType);
}

#[test]
fn lying_udp_lengths_are_dropped_as_truncated() {
    let f = bound();
    for (frame, udp_at) in
        [(to_relay4(&wireguard(4, 48)), ETH_LEN + 20), (to_relay6(&wireguard(4, 48)), ETH_LEN + 40)]
    {
        let set_len = |len: u16| {
            let mut frame = frame.clone();
            frame[udp_at + 4..udp_at + 6].copy_from_slice(&len.to_be_bytes());
            frame
        };
        // Below the UDP header, beyond the IP payload.
        for len in [0u16, 7, 8 + 49, 0xffff] {
            check(&f, &set_len(len), Outcome::DropTruncated);
        }
        // Both IP and UDP claim more than the frame carries.
        let mut cut = frame.clone();
        cut.truncate(frame.len() - 1);
        check(&f, &cut, Outcome::DropTruncated);
    }
}

#[test]
fn unbound_senders_are_dropped_and_removal_unbinds() {
    let mut f = bound();
    for frame in [
        packet::udp4([192, 0, 2, 8], CLIENT_PORT, RELAY4, ALLOCATION, &wireguard(4, 32)),
        packet::udp4(CLIENT4, CLIENT_PORT + 1, RELAY4, ALLOCATION, &wireguard(4, 32)),
        packet::udp4(CLIENT4, CLIENT_PORT, RELAY4, ALLOCATION + 1, &wireguard(4, 32)),
        packet::udp6(v6(0xc, 8), CLIENT_PORT, RELAY6, ALLOCATION, &wireguard(4, 32)),
        packet::udp6(CLIENT6, CLIENT_PORT, RELAY6, ALLOCATION + 1, &wireguard(4, 32)),
    ] {
        check(&f, &frame, Outcome::DropUnbound);
    }

    let client4 = relay::key(sock(CLIENT4, CLIENT_PORT), ALLOCATION);
    let client6 = relay::key(sock(CLIENT6, CLIENT_PORT), ALLOCATION);
    assert_eq!(f.len(), 4);
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::ForwardTx);
    assert!(f.remove(&client4).unwrap());
    assert!(!f.remove(&client4).unwrap(), "removed twice");
    assert_eq!(f.len(), 3);
    assert_eq!(f.get(&client4).unwrap(), None);
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::DropUnbound);
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::ForwardTx);
    assert!(f.remove(&client6).unwrap());
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::DropUnbound);
    // The gateway's direction is still bound.
    let frame = packet::udp4(GATEWAY4, GATEWAY_PORT, RELAY4, ALLOCATION, &wireguard(4, 32));
    check(&f, &frame, Outcome::ForwardTx);
}

#[test]
fn userspace_bindings_and_family_mismatches_pass_to_the_socket() {
    let mut f = forwarder(false);
    let client4 = relay::key(sock(CLIENT4, CLIENT_PORT), ALLOCATION);
    let client6 = relay::key(sock(CLIENT6, CLIENT_PORT), ALLOCATION);

    // The gateway is on WebSocket (or userspace wants this one anyway).
    f.insert(&client4, &relay::binding(sock(GATEWAY4, GATEWAY_PORT), ACTION_USERSPACE, SLOT)).unwrap();
    f.insert(&client6, &relay::binding(sock(GATEWAY6, GATEWAY_PORT), ACTION_USERSPACE, SLOT)).unwrap();
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::PassUserspace);
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::PassUserspace);
    // An action this program does not know is userspace's too.
    f.insert(&client4, &relay::binding(sock(GATEWAY4, GATEWAY_PORT), 7, SLOT)).unwrap();
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::PassUserspace);

    // The peers are on different IP families: the relay cannot rewrite one
    // into the other.
    f.insert(&client4, &relay::binding(sock(GATEWAY6, GATEWAY_PORT), ACTION_FORWARD, SLOT)).unwrap();
    f.insert(&client6, &relay::binding(sock(GATEWAY4, GATEWAY_PORT), ACTION_FORWARD, SLOT)).unwrap();
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::PassUserspace);
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::PassUserspace);
    // Replaced, not added.
    assert_eq!(f.len(), 2);
    assert_eq!(f.traffic(SLOT).unwrap(), Traffic::default());
}

#[test]
fn fragments_options_and_other_protocols_pass() {
    let f = bound();
    let frags_at = ETH_LEN + 6;
    for frags in [0x2000u16 /* more fragments */, 0x0001 /* offset 8 */, 0x3fff] {
        let mut frame = to_relay4(&wireguard(4, 100));
        frame[frags_at..frags_at + 2].copy_from_slice(&frags.to_be_bytes());
        seal(&mut frame, false);
        check(&f, &frame, Outcome::PassFragment);
    }
    // Don't-fragment alone is not a fragment.
    let mut frame = to_relay4(&wireguard(4, 32));
    frame[frags_at..frags_at + 2].copy_from_slice(&0x4000u16.to_be_bytes());
    seal(&mut frame, false);
    let run = check(&f, &frame, Outcome::ForwardTx);
    assert_forwarded(&run, &expected_swapped(&frame, sock(GATEWAY4, GATEWAY_PORT)));

    check(&f, &with_ipv4_options(&to_relay4(&wireguard(4, 32)), 4), Outcome::PassIpOptions);
    check(&f, &with_ipv4_options(&to_relay4(&wireguard(4, 32)), 40), Outcome::PassIpOptions);
    // IPv6: a fragment header, or any other header before UDP.
    check(&f, &ipv6_with_ext(44, &wireguard(4, 32)), Outcome::PassFragment);
    for next in [0u8, 43, 60, 51] {
        check(&f, &ipv6_with_ext(next, &wireguard(4, 32)), Outcome::PassNotUdp);
    }
    check(
        &f,
        &packet::tcp4(CLIENT4, CLIENT_PORT, RELAY4, ALLOCATION, &wireguard(4, 32)),
        Outcome::PassNotUdp,
    );
    check(&f, &packet::icmp4_echo(CLIENT4, RELAY4), Outcome::PassNotUdp);
    check(&f, &packet::arp_request(CLIENT4, RELAY4), Outcome::PassNotIp);
    // A VLAN tag is not looked through.
    let mut tagged = to_relay4(&wireguard(4, 32));
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x2a]);
    check(&f, &tagged, Outcome::PassNotIp);
}

#[test]
fn malformed_and_truncated_frames_are_never_forwarded() {
    let f = bound();
    let ipv4 = to_relay4(&wireguard(4, 64));
    let ipv6 = to_relay6(&wireguard(4, 64));
    check(&f, &ipv4, Outcome::ForwardTx);
    check(&f, &ipv6, Outcome::ForwardTx);
    // Cut anywhere short of the whole frame: never sent on.
    for frame in [&ipv4, &ipv6, &to_relay4(&wireguard(1, 148)), &to_relay6(&wireguard(2, 92))] {
        for len in ETH_LEN..frame.len() {
            let cut = &frame[..len];
            let before = f.counters().unwrap();
            let run = test_run::run(f.program().unwrap(), cut).unwrap();
            let delta = f.counters().unwrap().since(&before);
            assert_eq!(delta.total(), 1, "cut at {len}");
            assert_eq!(delta.forwarded(), 0, "cut at {len}: {delta:?}");
            assert!(matches!(run.verdict, Verdict::Pass | Verdict::Drop), "cut at {len}: {:?}", run.verdict);
            assert_eq!(run.packet, cut, "cut at {len}");
        }
    }
    // Headers cut short are malformed; the UDP header complete but the
    // datagram cut is truncated.
    for len in [ETH_LEN, ETH_LEN + 19, ETH_LEN + 20 + 7] {
        check(&f, &ipv4[..len], Outcome::PassMalformed);
    }
    for len in [ETH_LEN + 39, ETH_LEN + 40 + 7] {
        check(&f, &ipv6[..len], Outcome::PassMalformed);
    }
    check(&f, &ipv4[..ETH_LEN + 20 + 8], Outcome::DropTruncated);
    check(&f, &ipv6[..ETH_LEN + 40 + 8 + 20], Outcome::DropTruncated);

    // Bad version or IHL, total length shorter than the header.
    for vihl in [0x65u8, 0x40, 0x44] {
        let mut bad = ipv4.clone();
        bad[ETH_LEN] = vihl;
        check(&f, &bad, Outcome::PassMalformed);
    }
    let mut bad = ipv4.clone();
    bad[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&19u16.to_be_bytes());
    check(&f, &bad, Outcome::PassMalformed);
    // The IP datagram ends inside the UDP header.
    let mut bad = ipv4.clone();
    bad[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&27u16.to_be_bytes());
    check(&f, &bad, Outcome::PassMalformed);
    let mut bad = ipv6.clone();
    bad[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&7u16.to_be_bytes());
    check(&f, &bad, Outcome::PassMalformed);
    let mut bad = ipv6.clone();
    bad[ETH_LEN] = 0x45;
    check(&f, &bad, Outcome::PassMalformed);
}

#[test]
fn traffic_is_counted_per_slot_and_slots_reset() {
    let mut f = forwarder(false);
    let (a, b) = (5u32, 9u32);
    let gateway4 = sock(GATEWAY4, GATEWAY_PORT);
    let gateway6 = sock(GATEWAY6, GATEWAY_PORT);
    f.insert(
        &relay::key(sock(CLIENT4, CLIENT_PORT), ALLOCATION),
        &relay::binding(gateway4, ACTION_FORWARD, a),
    )
    .unwrap();
    f.insert(
        &relay::key(sock(CLIENT6, CLIENT_PORT), ALLOCATION),
        &relay::binding(gateway6, ACTION_FORWARD, a),
    )
    .unwrap();
    f.insert(&relay::key(sock(CLIENT4, CLIENT_PORT), PORT_MIN), &relay::binding(gateway4, ACTION_FORWARD, b))
        .unwrap();

    let mut expected_a = Traffic::default();
    for len in [32, 100, 1400] {
        check(&f, &to_relay4(&wireguard(4, len)), Outcome::ForwardTx);
        check(&f, &to_relay6(&wireguard(4, len)), Outcome::ForwardTx);
        expected_a.packets += 2;
        expected_a.bytes += 2 * len as u64;
    }
    // Padding after the datagram is not payload.
    let mut padded = to_relay4(&wireguard(4, 40));
    padded.extend_from_slice(&[0; 10]);
    check(&f, &padded, Outcome::ForwardTx);
    expected_a.packets += 1;
    expected_a.bytes += 40;
    // Nothing that is not forwarded counts.
    check(&f, &to_relay4(&wireguard(1, 148)), Outcome::PassHandshake);
    check(&f, &to_relay4(&wireguard(9, 148)), Outcome::DropBadType);

    check(&f, &packet::udp4(CLIENT4, CLIENT_PORT, RELAY4, PORT_MIN, &wireguard(4, 64)), Outcome::ForwardTx);
    assert_eq!(f.traffic(a).unwrap(), expected_a);
    assert_eq!(f.traffic(b).unwrap(), Traffic { packets: 1, bytes: 64 });
    assert_eq!(f.traffic(0).unwrap(), Traffic::default());

    f.reset_slot(a).unwrap();
    assert_eq!(f.traffic(a).unwrap(), Traffic::default());
    assert_eq!(f.traffic(b).unwrap(), Traffic { packets: 1, bytes: 64 });
    check(&f, &to_relay4(&wireguard(4, 48)), Outcome::ForwardTx);
    assert_eq!(f.traffic(a).unwrap(), Traffic { packets: 1, bytes: 48 });

    // Slots beyond the map are an error, not a panic; a binding with such a
    // slot still forwards, uncounted.
    assert!(f.traffic(f.slots()).is_err());
    f.insert(
        &relay::key(sock(CLIENT4, CLIENT_PORT), ALLOCATION),
        &relay::binding(gateway4, ACTION_FORWARD, f.slots() + 100),
    )
    .unwrap();
    check(&f, &to_relay4(&wireguard(4, 48)), Outcome::ForwardTx);
}

#[test]
fn a_full_binding_map_refuses_new_keys_visibly() {
    let mut f = RelayForwarder::load(4, 2).unwrap();
    f.configure(config(false)).unwrap();
    assert_eq!((f.capacity(), f.slots(), f.len()), (4, 2, 0));
    let key = |port: u16| relay::key(sock(CLIENT4, port), ALLOCATION);
    let to = relay::binding(sock(GATEWAY4, GATEWAY_PORT), ACTION_FORWARD, 0);
    for port in 1..=4 {
        f.insert(&key(port), &to).unwrap();
    }
    assert_eq!(f.len(), 4);
    match f.insert(&key(5), &to) {
        Err(Error::MapFull { name, capacity }) => assert_eq!((name, capacity), ("RELAY_BINDINGS", 4)),
        other => panic!("expected MapFull, got {other:?}"),
    }
    assert_eq!(f.len(), 4);
    // Replacing a binding in a full map works.
    let moved = relay::binding(sock(GATEWAY4, GATEWAY_PORT + 1), ACTION_FORWARD, 1);
    f.insert(&key(2), &moved).unwrap();
    assert_eq!(f.get(&key(2)).unwrap(), Some(moved));
    assert_eq!(f.len(), 4);
    // Removing makes room.
    assert!(f.remove(&key(1)).unwrap());
    f.insert(&key(5), &to).unwrap();
    assert_eq!(f.len(), 4);
    let frame = packet::udp4(CLIENT4, 5, RELAY4, ALLOCATION, &wireguard(4, 32));
    check(&f, &frame, Outcome::ForwardTx);
    let frame = packet::udp4(CLIENT4, 1, RELAY4, ALLOCATION, &wireguard(4, 32));
    check(&f, &frame, Outcome::DropUnbound);
}

#[test]
fn keys_are_what_the_program_looks_up() {
    // The std helpers and the program agree on the key layout: a binding made
    // from socket addresses (IPv4-mapped too) is found.
    let mut f = forwarder(false);
    let mapped: SocketAddr = format!("[::ffff:{}]:{CLIENT_PORT}", Ipv4Addr::from(CLIENT4)).parse().unwrap();
    f.insert(
        &relay::key(mapped, ALLOCATION),
        &relay::binding(sock(GATEWAY4, GATEWAY_PORT), ACTION_FORWARD, 0),
    )
    .unwrap();
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::ForwardTx);
    let key = BindingKey {
        addr: CLIENT6,
        port: CLIENT_PORT.to_be_bytes(),
        relay_port: ALLOCATION.to_be_bytes(),
        family: FAMILY_V6,
        _pad: [0; 3],
    };
    assert_eq!(relay::key(sock(Ipv6Addr::from(CLIENT6), CLIENT_PORT), ALLOCATION), key);
    f.insert(
        &key,
        &Binding {
            addr: GATEWAY6,
            port: GATEWAY_PORT.to_be_bytes(),
            family: FAMILY_V6,
            action: ACTION_FORWARD,
            slot: 0,
            next_hop: Default::default(),
        },
    )
    .unwrap();
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::ForwardTx);
}

#[test]
fn fib_without_an_ingress_interface_passes_unchanged() {
    // BPF_PROG_RUN without a ctx has no ingress interface; the lookup fails and
    // the frame goes to userspace untouched.
    let mut f = forwarder(true);
    bind_both(&mut f);
    check(&f, &to_relay4(&wireguard(4, 32)), Outcome::PassNoRoute);
    check(&f, &to_relay6(&wireguard(4, 32)), Outcome::PassNoRoute);
    assert_eq!(f.traffic(SLOT).unwrap(), Traffic::default());
}

#[test]
fn the_kernel_refuses_frames_shorter_than_ethernet() {
    let f = bound();
    for len in [0, 1, 13] {
        assert!(test_run::run(f.program().unwrap(), &vec![0u8; len]).is_err(), "{len}-byte frame ran");
    }
}

// --- Forwarding with FIB, in a lab namespace --------------------------------

const UPLINK_MAC: [u8; 6] = [0x02, 0x52, 0, 0, 0, 0x01];
const OTHER_MAC: [u8; 6] = [0x02, 0x52, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x50, 0, 0, 0, 0x07];
/// On the uplink's subnet, with a permanent neighbour entry.
const PEER4: [u8; 4] = [203, 0, 113, 7];
const PEER6: [u8; 16] = v6(0x1, 7);
/// On the uplink's subnet, with no neighbour entry.
const STRANGER4: [u8; 4] = [203, 0, 113, 9];
const STRANGER6: [u8; 16] = v6(0x1, 9);
/// Nowhere the relay has a route to.
const UNROUTED4: [u8; 4] = [100, 64, 0, 1];
const UNROUTED6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A relay namespace with two interfaces: the uplink, which has the relay's
/// addresses and the peer's neighbour entries, and another one.
struct Router {
    _lab: Lab,
    netns: ferry_lab::Netns,
    uplink: String,
    other: String,
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

fn router() -> Router {
    let lab = Lab::new().expect("a lab (run as root)");
    let netns = lab.netns("relay").unwrap();
    let far = lab.netns("far").unwrap();
    let relay4 = format!("{}/24", Ipv4Addr::from(RELAY4));
    let relay6 = format!("{}/64", Ipv6Addr::from(RELAY6));
    let uplink = lab.veth(&netns, &far).unwrap().a;
    let other = lab.veth(&netns, &far).unwrap().a;
    // Addresses after the MACs: taking a link down drops its IPv6 addresses.
    for (iface, address, addrs) in [
        (&uplink, UPLINK_MAC, [&*relay4, &*relay6]),
        (&other, OTHER_MAC, ["198.18.0.1/24", "2001:db8:2::1/64"]),
    ] {
        netns.ip(&["link", "set", "dev", iface, "down"]).unwrap();
        netns.ip(&["link", "set", "dev", iface, "address", &mac(address)]).unwrap();
        netns.ip(&["link", "set", "dev", iface, "up"]).unwrap();
        for addr in addrs {
            netns.add_addr(iface, addr).unwrap();
        }
    }
    for peer in [Ipv4Addr::from(PEER4).to_string(), Ipv6Addr::from(PEER6).to_string()] {
        netns
            .ip(&["neigh", "replace", &peer, "lladdr", &mac(PEER_MAC), "dev", &uplink, "nud", "permanent"])
            .unwrap();
    }
    // bpf_fib_lookup answers only for interfaces that forward, as the stack
    // would.
    netns.enable_forwarding().unwrap();
    Router { _lab: lab, netns, uplink, other }
}

/// Runs `test` with the forwarder, in the router's namespace, with the
/// uplink's and the other interface's indexes.
fn in_router(router: &Router, test: impl FnOnce(&mut RelayForwarder, u32, u32) + Send + 'static) {
    let (uplink, other) = (router.uplink.clone(), router.other.clone());
    router
        .netns
        .run_in(move || {
            let mut f = forwarder(true);
            test(&mut f, if_index(&uplink).unwrap(), if_index(&other).unwrap());
        })
        .unwrap();
}

#[test]
fn fib_picks_tx_or_redirect_and_the_next_hops_macs() {
    let router = router();
    in_router(&router, |f, uplink, other| {
        for (client, peer) in [(IpAddr::from(CLIENT4), IpAddr::from(PEER4)), (CLIENT6.into(), PEER6.into())] {
            let key = relay::key(sock(client, CLIENT_PORT), ALLOCATION);
            f.insert(&key, &relay::binding(sock(peer, GATEWAY_PORT), ACTION_FORWARD, SLOT)).unwrap();
            let frame = with_ttl(
                match client {
                    IpAddr::V4(_) => to_relay4(&wireguard(4, 200)),
                    IpAddr::V6(_) => to_relay6(&wireguard(4, 200)),
                },
                3,
            );
            let expected = expected(&frame, UPLINK_MAC, PEER_MAC, sock(peer, GATEWAY_PORT));
            // In and out of the uplink: XDP_TX.
            let run = check_on(f, &frame, uplink, Outcome::ForwardTx);
            assert_forwarded(&run, &expected);
            // In from the other interface, out of the uplink: XDP_REDIRECT,
            // with the same bytes.
            let run = check_on(f, &frame, other, Outcome::ForwardRedirect);
            assert_forwarded(&run, &expected);
        }
        assert_eq!(f.traffic(SLOT).unwrap(), Traffic { packets: 4, bytes: 4 * 200 });
    });
}

#[test]
fn fib_without_a_neighbour_or_a_route_passes_unchanged() {
    let router = router();
    in_router(&router, |f, uplink, other| {
        for (client, peer) in [
            (IpAddr::from(CLIENT4), IpAddr::from(STRANGER4)),
            (CLIENT4.into(), UNROUTED4.into()),
            (CLIENT6.into(), STRANGER6.into()),
            (CLIENT6.into(), UNROUTED6.into()),
        ] {
            let key = relay::key(sock(client, CLIENT_PORT), ALLOCATION);
            f.insert(&key, &relay::binding(sock(peer, GATEWAY_PORT), ACTION_FORWARD, SLOT)).unwrap();
            let frame = match client {
                IpAddr::V4(_) => to_relay4(&wireguard(4, 64)),
                IpAddr::V6(_) => to_relay6(&wireguard(4, 64)),
            };
            check_on(f, &frame, uplink, Outcome::PassNoRoute);
            check_on(f, &frame, other, Outcome::PassNoRoute);
        }
        // A datagram too big for the route's MTU is userspace's as well.
        let key = relay::key(sock(CLIENT4, CLIENT_PORT), ALLOCATION);
        f.insert(&key, &relay::binding(sock(PEER4, GATEWAY_PORT), ACTION_FORWARD, SLOT)).unwrap();
        let big = to_relay4(&wireguard(4, 1500 - 28 + 1));
        check_on(f, &big, uplink, Outcome::PassNoRoute);
        check_on(f, &to_relay4(&wireguard(4, 1500 - 28)), uplink, Outcome::ForwardTx);
        assert_eq!(f.traffic(SLOT).unwrap().packets, 1);
    });
}

// --- The next-hop cache -----------------------------------------------------

/// The peer's MAC after it changed (a new router, a replaced NIC).
const NEW_PEER_MAC: [u8; 6] = [0x02, 0x50, 0, 0, 0, 0x77];

/// Points the peer's neighbour entries (both families) at `address`, as a
/// changed neighbour would: the kernel's answer changes, the cache does not
/// know yet.
fn set_peer_mac(netns: &ferry_lab::Netns, uplink: &str, address: [u8; 6]) {
    for peer in [Ipv4Addr::from(PEER4).to_string(), Ipv6Addr::from(PEER6).to_string()] {
        netns
            .ip(&["neigh", "replace", &peer, "lladdr", &mac(address), "dev", uplink, "nud", "permanent"])
            .unwrap();
    }
}

/// Binds the client to the peer in both families and returns, per family,
/// the frame from the client and the peer's address.
fn bind_to_peer(f: &mut RelayForwarder, payload: usize) -> [(Vec<u8>, SocketAddr); 2] {
    [(IpAddr::from(CLIENT4), IpAddr::from(PEER4)), (CLIENT6.into(), PEER6.into())].map(|(client, peer)| {
        let peer = sock(peer, GATEWAY_PORT);
        f.insert(
            &relay::key(sock(client, CLIENT_PORT), ALLOCATION),
            &relay::binding(peer, ACTION_FORWARD, SLOT),
        )
        .unwrap();
        let frame = match client {
            IpAddr::V4(_) => to_relay4(&wireguard(4, payload)),
            IpAddr::V6(_) => to_relay6(&wireguard(4, payload)),
        };
        (frame, peer)
    })
}

/// Forwards `frame` from the uplink and checks the bytes (next hop `dmac`,
/// checksums from scratch) and how many FIB lookups it took.
fn forward_via(f: &RelayForwarder, frame: &[u8], uplink: u32, peer: SocketAddr, dmac: [u8; 6], lookups: u64) {
    let before = f.fib_lookups().unwrap();
    let run = check_on(f, frame, uplink, Outcome::ForwardTx);
    assert_forwarded(&run, &expected(frame, UPLINK_MAC, dmac, peer));
    assert_eq!(f.fib_lookups().unwrap() - before, lookups, "FIB lookups for one frame to {peer}");
}

/// A lifetime no test outlives, so that a hit never depends on how fast the
/// test runs.
const HOUR_MS: u32 = 3_600_000;

#[test]
fn next_hops_are_cached_until_the_generation_moves() {
    let router = router();
    let (netns, uplink_name) = (router.netns.clone(), router.uplink.clone());
    in_router(&router, move |f, uplink, _| {
        f.configure(RelayConfig { next_hop_lifetime_ms: HOUR_MS, ..config(true) }).unwrap();
        for (frame, peer) in bind_to_peer(f, 200) {
            let generation = f.next_hop_generation().unwrap();
            // The first frame asks the FIB and fills the cache, the second
            // one is answered from it.
            forward_via(f, &frame, uplink, peer, PEER_MAC, 1);
            forward_via(f, &frame, uplink, peer, PEER_MAC, 0);
            // The kernel's neighbour changes; without an invalidation the
            // cache still answers (what the netlink watcher and the lifetime
            // are there for).
            set_peer_mac(&netns, &uplink_name, NEW_PEER_MAC);
            forward_via(f, &frame, uplink, peer, PEER_MAC, 0);
            // One write: the next frame asks the FIB again and gets the new
            // MAC, and the one after it is cached again.
            assert_eq!(f.invalidate_next_hops().unwrap(), generation.wrapping_add(1));
            forward_via(f, &frame, uplink, peer, NEW_PEER_MAC, 1);
            forward_via(f, &frame, uplink, peer, NEW_PEER_MAC, 0);
            set_peer_mac(&netns, &uplink_name, PEER_MAC);
            f.invalidate_next_hops().unwrap();
        }
    });
}

/// Routing ignores ECN: a peer's congestion marks reuse the cached next
/// hop of its DSCP; another DSCP (which TOS rules may route elsewhere) asks
/// the FIB.
#[test]
fn ecn_marks_share_a_cached_next_hop_and_another_dscp_does_not() {
    let router = router();
    in_router(&router, |f, uplink, _| {
        f.configure(RelayConfig { next_hop_lifetime_ms: HOUR_MS, ..config(true) }).unwrap();
        for (frame, peer) in bind_to_peer(f, 200) {
            const EF: u8 = 0xb8;
            forward_via(f, &with_tos(frame.clone(), EF), uplink, peer, PEER_MAC, 1);
            for ecn in 1..=3 {
                forward_via(f, &with_tos(frame.clone(), EF | ecn), uplink, peer, PEER_MAC, 0);
            }
            forward_via(f, &with_tos(frame.clone(), 0x20), uplink, peer, PEER_MAC, 1);
            forward_via(f, &with_tos(frame, 0x20 | 2), uplink, peer, PEER_MAC, 0);
        }
    });
}

#[test]
fn cached_next_hops_expire_after_their_lifetime() {
    const LIFETIME_MS: u32 = 20;
    let router = router();
    let (netns, uplink_name) = (router.netns.clone(), router.uplink.clone());
    in_router(&router, move |f, uplink, _| {
        f.configure(RelayConfig { next_hop_lifetime_ms: LIFETIME_MS, ..config(true) }).unwrap();
        let pairs = bind_to_peer(f, 200);
        for (frame, peer) in &pairs {
            forward_via(f, frame, uplink, *peer, PEER_MAC, 1);
        }
        set_peer_mac(&netns, &uplink_name, NEW_PEER_MAC);
        // Longer than the lifetime plus a tick of the coarse clock: whatever
        // the scheduler does, the entries have expired by then.
        std::thread::sleep(std::time::Duration::from_millis(u64::from(LIFETIME_MS) + 100));
        for (frame, peer) in &pairs {
            forward_via(f, frame, uplink, *peer, NEW_PEER_MAC, 1);
        }
    });
}

#[test]
fn without_a_lifetime_every_datagram_asks_the_fib() {
    let router = router();
    in_router(&router, |f, uplink, _| {
        f.configure(RelayConfig { next_hop_lifetime_ms: 0, ..config(true) }).unwrap();
        for (frame, peer) in bind_to_peer(f, 64) {
            for _ in 0..3 {
                forward_via(f, &frame, uplink, peer, PEER_MAC, 1);
            }
        }
    });
}

#[test]
fn a_datagram_longer_than_the_cached_ones_asks_the_fib_for_the_mtu() {
    let router = router();
    in_router(&router, |f, uplink, _| {
        f.configure(RelayConfig { next_hop_lifetime_ms: HOUR_MS, ..config(true) }).unwrap();
        // Payloads for an IP length of 1500 (the uplink's MTU) and 1501.
        for (header, family) in [(28usize, 0usize), (48, 1)] {
            let small = &bind_to_peer(f, 64)[family];
            forward_via(f, &small.0, uplink, small.1, PEER_MAC, 1);
            // Too big for the route: the cache must not wave it through.
            let too_big = &bind_to_peer(f, 1500 - header + 1)[family];
            let before = f.fib_lookups().unwrap();
            check_on(f, &too_big.0, uplink, Outcome::PassNoRoute);
            assert_eq!(f.fib_lookups().unwrap() - before, 1);
            // The longest that fits is looked up once, then cached, and the
            // short one still is.
            let longest = &bind_to_peer(f, 1500 - header)[family];
            forward_via(f, &longest.0, uplink, longest.1, PEER_MAC, 1);
            forward_via(f, &longest.0, uplink, longest.1, PEER_MAC, 0);
            forward_via(f, &small.0, uplink, small.1, PEER_MAC, 0);
        }
    });
}

// --- Properties -------------------------------------------------------------

/// Runs `test` with a forwarder shared by the proptest cases of a thread:
/// loading per case would spend the time in the verifier.
fn with_shared<T>(test: impl FnOnce(&mut RelayForwarder) -> T) -> T {
    thread_local! {
        static SHARED: RefCell<Option<RelayForwarder>> = const { RefCell::new(None) };
    }
    SHARED.with(|cell| {
        let mut shared = cell.borrow_mut();
        let f = shared.get_or_insert_with(|| {
            let mut f = RelayForwarder::load(1024, 16).expect("loading the relay forwarder (run as root)");
            f.configure(config(false)).unwrap();
            bind_both(&mut f);
            f
        });
        test(f)
    })
}

/// Checksum values worth hitting on purpose: the ends of the range, where
/// end-around carries and the zero rule live.
fn checksum_target() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(0xffff), Just(1), Just(0xfffe), Just(0x8000), any::<u16>()]
}

/// The 16-bit word that, added to data whose checksum field sums to `sum`
/// without it, makes the checksum `target`: sum + w = ~target.
fn steer(sum: u16, target: u16) -> u16 {
    let w = (!target as u32) + (!sum as u32);
    ((w & 0xffff) + (w >> 16)) as u16
}

#[derive(Debug, Clone)]
struct Case {
    v6: bool,
    client: [u8; 16],
    client_port: u16,
    peer: [u8; 16],
    peer_port: u16,
    allocation: u16,
    ttl: u8,
    tos: u8,
    payload: Vec<u8>,
    padding: usize,
    udp_none: bool,
    ip_target: u16,
    udp_target: u16,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        (any::<[u8; 16]>(), any::<u16>(), any::<[u8; 16]>(), any::<u16>(), PORT_MIN..=PORT_MAX),
        (any::<u8>(), any::<u8>(), 32usize..1400, any::<u64>(), 0usize..8, prop::bool::weighted(0.1)),
        (checksum_target(), checksum_target()),
    )
        .prop_map(
            |(
                v6,
                (client, client_port, peer, peer_port, allocation),
                (ttl, tos, len, seed, padding, udp_none),
                (ip_target, udp_target),
            )| {
                let mut payload = wireguard(4, len);
                let mut state = seed;
                for byte in &mut payload[4..] {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    *byte = (state >> 56) as u8;
                }
                Case {
                    v6,
                    client,
                    client_port,
                    peer,
                    peer_port,
                    allocation,
                    ttl,
                    tos,
                    payload,
                    padding,
                    udp_none: udp_none && !v6,
                    ip_target,
                    udp_target,
                }
            },
        )
}

impl Case {
    fn client(&self) -> SocketAddr {
        if self.v6 {
            sock(Ipv6Addr::from(self.client), self.client_port)
        } else {
            sock(Ipv4Addr::from(<[u8; 4]>::try_from(&self.client[..4]).unwrap()), self.client_port)
        }
    }

    fn peer(&self) -> SocketAddr {
        if self.v6 {
            sock(Ipv6Addr::from(self.peer), self.peer_port)
        } else {
            sock(Ipv4Addr::from(<[u8; 4]>::try_from(&self.peer[..4]).unwrap()), self.peer_port)
        }
    }

    /// The received frame with IP id and payload word 1 (bytes 4..6) set.
    fn frame_with(&self, id: u16, word: u16) -> Vec<u8> {
        let mut payload = self.payload.clone();
        payload[4..6].copy_from_slice(&word.to_be_bytes());
        let client = self.client();
        let mut frame = match client.ip() {
            IpAddr::V4(ip) => packet::udp4(ip.octets(), client.port(), RELAY4, self.allocation, &payload),
            IpAddr::V6(ip) => packet::udp6(ip.octets(), client.port(), RELAY6, self.allocation, &payload),
        };
        if self.v6 {
            frame[ETH_LEN] = 0x60 | self.tos >> 4;
            frame[ETH_LEN + 1] = (self.tos << 4) | (frame[ETH_LEN + 1] & 0x0f);
            frame[ETH_LEN + 7] = self.ttl;
        } else {
            frame[ETH_LEN + 1] = self.tos;
            frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
            frame[ETH_LEN + 8] = self.ttl;
        }
        seal(&mut frame, self.udp_none);
        frame.extend(std::iter::repeat_n(0xa5, self.padding));
        frame
    }

    /// A received frame whose forwarded checksums come out at the targets:
    /// the IP id and one payload word are chosen to steer them there.
    fn frame(&self) -> Vec<u8> {
        let probe = expected_swapped(&self.frame_with(0, 0), self.peer());
        let mut header = probe[ETH_LEN..ETH_LEN + 20].to_vec();
        header[10..12].fill(0);
        let id = if self.v6 { 0 } else { steer(ones_sum(&[&header]), self.ip_target) };
        let udp = udp_range(&probe);
        let mut segment = probe[udp].to_vec();
        segment[6..8].fill(0);
        let word = steer(ones_sum(&[&pseudo_header(&probe), &segment]), self.udp_target);
        self.frame_with(id, word)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random addresses, ports, TTLs, payloads and checksum values: the
    /// forwarded frame is exactly the independently built one, and its
    /// checksums verify from scratch.
    #[test]
    fn forwarded_frames_always_have_valid_checksums(case in case()) {
        let frame = case.frame();
        assert_checksums_valid(&frame);
        let run = with_shared(|f| {
            let key = relay::key(case.client(), case.allocation);
            let replaced = f.get(&key).unwrap();
            f.insert(&key, &relay::binding(case.peer(), ACTION_FORWARD, 0)).unwrap();
            let run = test_run::run(f.program().unwrap(), &frame).unwrap();
            match replaced {
                Some(binding) => f.insert(&key, &binding).unwrap(),
                None => assert!(f.remove(&key).unwrap()),
            }
            run
        });
        prop_assert_eq!(run.verdict, Verdict::Tx);
        let expected = expected_swapped(&frame, case.peer());
        prop_assert_eq!(&run.packet, &expected);
        assert_checksums_valid(&run.packet);
        if case.udp_none {
            let udp = udp_range(&run.packet);
            prop_assert_eq!(&run.packet[udp.start + 6..udp.start + 8], &[0, 0]);
        }
    }

    /// Arbitrary bytes, and valid frames with one byte changed: one counter
    /// moves, nothing crashes, and a frame that is not forwarded is unchanged.
    #[test]
    fn arbitrary_frames_are_classified_once(
        frame in prop_oneof![
            proptest::collection::vec(any::<u8>(), 14..300),
            (any::<bool>(), any::<usize>(), any::<u8>()).prop_map(|(v6, at, byte)| {
                let mut frame = if v6 { to_relay6(&wireguard(4, 48)) } else { to_relay4(&wireguard(4, 48)) };
                let at = at % frame.len();
                frame[at] = byte;
                frame
            }),
        ]
    ) {
        let (run, delta) = with_shared(|f| {
            let before = f.counters().unwrap();
            let run = test_run::run(f.program().unwrap(), &frame).unwrap();
            (run, f.counters().unwrap().since(&before))
        });
        prop_assert_eq!(delta.total(), 1);
        match run.verdict {
            Verdict::Tx => prop_assert_eq!(delta.get(Outcome::ForwardTx), 1),
            Verdict::Pass | Verdict::Drop => prop_assert_eq!(run.packet, frame),
            other => prop_assert!(false, "verdict {:?}", other),
        }
    }
}

/// Inserts `len` bytes of IPv4 options (NOPs, then end-of-list) after the
/// 20-byte header and fixes IHL, total length and the checksums.
fn with_ipv4_options(frame: &[u8], len: usize) -> Vec<u8> {
    assert!(len.is_multiple_of(4) && len <= 40);
    let ip = ETH_LEN;
    let mut out = frame[..ip + 20].to_vec();
    out.extend(std::iter::repeat_n(1u8, len - 1));
    out.push(0);
    out.extend_from_slice(&frame[ip + 20..]);
    out[ip] = 0x40 | ((20 + len) / 4) as u8;
    let total = u16::from_be_bytes([out[ip + 2], out[ip + 3]]) + len as u16;
    out[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    out
}

/// An IPv6 frame to the allocation with one 8-byte extension header of type
/// `next` in front of the UDP header.
fn ipv6_with_ext(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = to_relay6(payload);
    let udp = frame.split_off(ETH_LEN + 40);
    frame[ETH_LEN + 6] = next;
    let payload_len = (8 + udp.len()) as u16;
    frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
    // Eight bytes: length 0 in AH's 4-byte units minus 2 and in the others'
    // 8-byte units minus 1.
    frame.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
    frame.extend(udp);
    frame
}
