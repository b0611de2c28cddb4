//! The uplink guard in the kernel, with BPF_PROG_RUN on crafted frames: every
//! branch's verdict, the counter it bumps, and packets left untouched on pass.
//! Needs root (loading BPF programs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use ferry_ebpf::{
    common::guard::Outcome,
    guard::UplinkGuard,
    test_run::{self, Verdict},
};
use ferry_lab::packet::{self, ETH_LEN, wireguard};
use proptest::prelude::*;

const PORT: u16 = 51820;
const CLIENT: [u8; 4] = [192, 0, 2, 7];
const GATEWAY: [u8; 4] = [198, 51, 100, 2];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const GATEWAY6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn guard() -> UplinkGuard {
    UplinkGuard::load(PORT).expect("loading the guard (run as root)")
}

/// Runs `frame` through the guard and checks the verdict, that exactly the
/// `expected` counter grew by one, and that a passed frame is unchanged.
fn check(guard: &UplinkGuard, frame: &[u8], expected: Outcome) {
    let before = guard.counters().unwrap();
    let run = test_run::run(guard.program().unwrap(), frame).unwrap();
    let delta = guard.counters().unwrap().since(&before);
    let counted: Vec<_> = delta.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counted, vec![(expected, 1)], "frame {frame:02x?}");
    let verdict = if expected.drops() { Verdict::Drop } else { Verdict::Pass };
    assert_eq!(run.verdict, verdict, "{expected:?}");
    if verdict == Verdict::Pass {
        assert_eq!(run.packet, frame, "a passed frame was modified");
    }
}

fn wg4(message_type: u8, len: usize) -> Vec<u8> {
    packet::udp4(CLIENT, 40000, GATEWAY, PORT, &wireguard(message_type, len))
}

fn wg6(message_type: u8, len: usize) -> Vec<u8> {
    packet::udp6(CLIENT6, 40000, GATEWAY6, PORT, &wireguard(message_type, len))
}

/// A message of `message_type` and `len` bytes (the guard's shape rule holds)
/// addressed to receiver index `receiver`.
fn addressed(message_type: u8, len: usize, receiver: u32) -> Vec<u8> {
    let mut message = wireguard(message_type, len);
    let at = if message_type == 2 { 8 } else { 4 };
    message[at..at + 4].copy_from_slice(&receiver.to_le_bytes());
    packet::udp4(CLIENT, 40000, GATEWAY, PORT, &message)
}

#[test]
fn following_indices_drops_messages_to_dead_indices_only() {
    let mut g = guard();
    g.follow_indices(true).unwrap();
    g.add_index(0x1122_3344).unwrap();
    g.add_index(7).unwrap();
    assert_eq!(g.indices().unwrap(), vec![7, 0x1122_3344]);
    // Live indices: every addressed type passes.
    check(&g, &addressed(2, 92, 0x1122_3344), Outcome::AllowResponse);
    check(&g, &addressed(3, 64, 7), Outcome::AllowCookieReply);
    check(&g, &addressed(4, 32, 7), Outcome::AllowTransport);
    check(&g, &addressed(4, 1452, 0x1122_3344), Outcome::AllowTransport);
    // Same over IPv6.
    let mut transport = wireguard(4, 48);
    transport[4..8].copy_from_slice(&7u32.to_le_bytes());
    check(&g, &packet::udp6(CLIENT6, 40000, GATEWAY6, PORT, &transport), Outcome::AllowTransport);
    // Any other index, including the live ones byte-swapped, is dropped.
    for receiver in [0, 8, 0x4433_2211, 0x0700_0000, u32::MAX] {
        check(&g, &addressed(2, 92, receiver), Outcome::DropUnknownIndex);
        check(&g, &addressed(3, 64, receiver), Outcome::DropUnknownIndex);
        check(&g, &addressed(4, 32, receiver), Outcome::DropUnknownIndex);
    }
    // A response's sender index (bytes 4..8) is not its receiver.
    let mut response = wireguard(2, 92);
    response[4..8].copy_from_slice(&7u32.to_le_bytes());
    response[8..12].copy_from_slice(&9u32.to_le_bytes());
    check(&g, &packet::udp4(CLIENT, 40000, GATEWAY, PORT, &response), Outcome::DropUnknownIndex);
    // Initiations name no receiver: they still pass on shape alone.
    check(&g, &wg4(1, 148), Outcome::AllowInitiation);
    // Shape still comes first.
    check(&g, &addressed(4, 33, 7), Outcome::DropBadLength);
    // An index that goes is refused with the next packet.
    assert!(g.remove_index(7).unwrap());
    assert!(!g.remove_index(7).unwrap(), "a missing index is no error");
    check(&g, &addressed(4, 32, 7), Outcome::DropUnknownIndex);
    // Turned off, indices do not matter, and the port survives a change.
    g.follow_indices(false).unwrap();
    check(&g, &addressed(4, 32, 7), Outcome::AllowTransport);
    g.follow_indices(true).unwrap();
    g.set_port(PORT).unwrap();
    assert!(g.follows_indices().unwrap());
    check(&g, &addressed(4, 32, 7), Outcome::DropUnknownIndex);
}

/// A probe-shaped payload: the type word, `tag` and filler up to `len` bytes.
fn probe(type_word: [u8; 4], tag: [u8; 8], len: usize) -> Vec<u8> {
    let mut payload = type_word.to_vec();
    payload.extend_from_slice(&tag);
    payload.extend((0..len.saturating_sub(12)).map(|i| (i as u8).wrapping_mul(13)));
    payload.truncate(len);
    payload
}

const PROBE: [u8; 4] = [16, 0, 0, 0];
const LIVE_TAG: [u8; 8] = [0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18];

#[test]
fn probes_pass_at_their_length_with_a_live_tag_only() {
    let mut g = guard();
    let probe4 = |tag, len| packet::udp4(CLIENT, 40000, GATEWAY, PORT, &probe(PROBE, tag, len));
    // No path agent, no probe: the rule is on without any tag.
    check(&g, &probe4(LIVE_TAG, 84), Outcome::DropUnknownProbeTag);
    g.add_probe_tag(LIVE_TAG).unwrap();
    g.add_probe_tag([9; 8]).unwrap();
    assert_eq!(g.probe_tags().unwrap(), vec![[9; 8], LIVE_TAG]);
    check(&g, &probe4(LIVE_TAG, 84), Outcome::AllowProbe);
    check(&g, &probe4([9; 8], 84), Outcome::AllowProbe);
    check(
        &g,
        &packet::udp6(CLIENT6, 40000, GATEWAY6, PORT, &probe(PROBE, LIVE_TAG, 84)),
        Outcome::AllowProbe,
    );
    // Any other tag, the live one reversed or off by one bit among them.
    let mut reversed = LIVE_TAG;
    reversed.reverse();
    let mut flipped = LIVE_TAG;
    flipped[7] ^= 1;
    for tag in [[0; 8], [0xff; 8], reversed, flipped] {
        check(&g, &probe4(tag, 84), Outcome::DropUnknownProbeTag);
    }
    // Shape comes first: a live tag at any other length, or behind another
    // type word, is malformed.
    for len in [0, 4, 12, 83, 85, 92, 148] {
        check(&g, &probe4(LIVE_TAG, len), Outcome::DropBadLength);
    }
    for type_word in [[16, 0, 0, 1], [16, 1, 0, 0], [17, 0, 0, 0], [15, 0, 0, 0], [0, 0, 0, 16]] {
        let frame = packet::udp4(CLIENT, 40000, GATEWAY, PORT, &probe(type_word, LIVE_TAG, 84));
        check(&g, &frame, Outcome::DropBadType);
    }
    // The index rule does not apply to probes (they carry no index).
    g.follow_indices(true).unwrap();
    check(&g, &probe4(LIVE_TAG, 84), Outcome::AllowProbe);
    check(&g, &addressed(4, 32, 7), Outcome::DropUnknownIndex);
    // A tag that goes is refused with the next packet.
    assert!(g.remove_probe_tag(LIVE_TAG).unwrap());
    assert!(!g.remove_probe_tag(LIVE_TAG).unwrap(), "a missing tag is no error");
    check(&g, &probe4(LIVE_TAG, 84), Outcome::DropUnknownProbeTag);
    check(&g, &probe4([9; 8], 84), Outcome::AllowProbe);
    // Behind VLAN tags and IPv6 extension headers too.
    check(&g, &with_vlan_tags(&probe4([9; 8], 84), &[0x88a8, 0x8100]), Outcome::AllowProbe);
    check(&g, &ipv6_with_ext(&[(0, 8), (60, 16)], &probe(PROBE, [9; 8], 84)), Outcome::AllowProbe);
    check(&g, &ipv6_with_ext(&[(0, 8)], &probe(PROBE, LIVE_TAG, 84)), Outcome::DropUnknownProbeTag);
}

#[test]
fn the_probe_tag_map_holds_16384_tags_and_refuses_more() {
    let mut g = guard();
    let max = ferry_ebpf::common::guard::MAX_PROBE_TAGS;
    for i in 0..max {
        g.add_probe_tag(u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()).unwrap();
    }
    assert!(g.add_probe_tag([0xee; 8]).is_err(), "a full map refuses, it does not evict");
    assert_eq!(g.probe_tags().unwrap().len(), max as usize);
}

const STUN_SERVER: [u8; 4] = [203, 0, 113, 9];
const STUN_SERVER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x34, 0x78];
const STUN_PORT: u16 = 3478;
const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// A STUN message of `len` bytes: `message_type`, a length field of
/// `length_field`, `cookie`, a transaction id and filler attributes.
fn stun(message_type: u16, length_field: u16, cookie: [u8; 4], len: usize) -> Vec<u8> {
    let mut payload = message_type.to_be_bytes().to_vec();
    payload.extend_from_slice(&length_field.to_be_bytes());
    payload.extend_from_slice(&cookie);
    payload.extend_from_slice(b"transaction!");
    payload.extend((0..len.saturating_sub(20)).map(|i| (i as u8).wrapping_mul(7)));
    payload.truncate(len);
    payload
}

/// A well-formed Binding success response of `len` bytes.
fn stun_success(len: usize) -> Vec<u8> {
    stun(0x0101, (len - 20) as u16, COOKIE, len)
}

#[test]
fn stun_success_responses_pass_from_our_servers_only() {
    let mut g = guard();
    let from_server = |payload: &[u8]| packet::udp4(STUN_SERVER, STUN_PORT, GATEWAY, PORT, payload);
    let from_server6 = |payload: &[u8]| packet::udp6(STUN_SERVER6, STUN_PORT, GATEWAY6, PORT, payload);
    // No server known: no answer expected.
    check(&g, &from_server(&stun_success(32)), Outcome::DropUnknownStunServer);
    let server4 = std::net::SocketAddr::from((STUN_SERVER, STUN_PORT));
    let server6 = std::net::SocketAddr::from((STUN_SERVER6, STUN_PORT));
    g.add_stun_server(server4).unwrap();
    g.add_stun_server(server6).unwrap();
    assert_eq!(g.stun_servers().unwrap(), vec![server4, server6]);
    // Any length from the bare header to 548 bytes, in steps of 4.
    for len in [20, 32, 44, 100, 548] {
        check(&g, &from_server(&stun_success(len)), Outcome::AllowStun);
        check(&g, &from_server6(&stun_success(len)), Outcome::AllowStun);
    }
    check(&g, &with_vlan_tags(&from_server(&stun_success(32)), &[0x8100]), Outcome::AllowStun);
    // From another port or address of the server, or another host.
    let unknown = [
        packet::udp4(STUN_SERVER, STUN_PORT + 1, GATEWAY, PORT, &stun_success(32)),
        packet::udp4([203, 0, 113, 10], STUN_PORT, GATEWAY, PORT, &stun_success(32)),
        packet::udp4(CLIENT, 40000, GATEWAY, PORT, &stun_success(32)),
        packet::udp6(CLIENT6, STUN_PORT, GATEWAY6, PORT, &stun_success(32)),
        // The IPv4 server's address inside an IPv6 source (the deprecated
        // IPv4-compatible form) is another address.
        packet::udp6(
            std::net::Ipv4Addr::from(STUN_SERVER).to_ipv6_compatible().octets(),
            STUN_PORT,
            GATEWAY6,
            PORT,
            &stun_success(32),
        ),
    ];
    for frame in unknown {
        check(&g, &frame, Outcome::DropUnknownStunServer);
    }
    // Malformed, from a known server.
    let mut bad_cookie = COOKIE;
    bad_cookie[3] ^= 0x80;
    check(&g, &from_server(&stun(0x0101, 12, bad_cookie, 32)), Outcome::DropBadType);
    check(&g, &from_server(&stun(0x0101, 12, [0; 4], 32)), Outcome::DropBadType);
    // Length field disagreeing with the datagram, not a multiple of 4, over
    // 548 bytes, shorter than the header.
    for (length_field, len) in
        [(8, 32), (16, 32), (0, 32), (14, 34), (532, 552), (980, 1000), (0, 19), (0, 4)]
    {
        check(&g, &from_server(&stun(0x0101, length_field, COOKIE, len)), Outcome::DropBadLength);
    }
    // Other STUN classes and methods: a request, an error response, an
    // indication, and a success with the two top bits set.
    for message_type in [0x0001u16, 0x0111, 0x0011, 0x4101, 0x0103] {
        check(&g, &from_server(&stun(message_type, 12, COOKIE, 32)), Outcome::DropBadType);
    }
    // The index rule does not apply to STUN.
    g.follow_indices(true).unwrap();
    check(&g, &from_server(&stun_success(32)), Outcome::AllowStun);
    // A server that goes is refused with the next packet; its IPv4-mapped
    // IPv6 form names the same entry.
    let mapped =
        std::net::SocketAddr::from((std::net::Ipv4Addr::from(STUN_SERVER).to_ipv6_mapped(), STUN_PORT));
    assert!(g.remove_stun_server(mapped).unwrap());
    assert!(!g.remove_stun_server(server4).unwrap(), "a missing server is no error");
    check(&g, &from_server(&stun_success(32)), Outcome::DropUnknownStunServer);
    check(&g, &from_server6(&stun_success(32)), Outcome::AllowStun);
    assert_eq!(g.stun_servers().unwrap(), vec![server6]);
}

#[test]
fn the_index_map_holds_four_indices_for_each_of_4096_peers() {
    let mut g = guard();
    let max = ferry_ebpf::common::guard::MAX_INDICES;
    for index in 0..max {
        g.add_index(index.wrapping_mul(2_654_435_761)).unwrap();
    }
    assert!(g.add_index(u32::MAX).is_err(), "a full map refuses, it does not evict");
    assert_eq!(g.indices().unwrap().len(), max as usize);
}

#[test]
fn each_message_type_passes_at_its_exact_length_only() {
    let g = guard();
    for build in [wg4 as fn(u8, usize) -> Vec<u8>, wg6] {
        check(&g, &build(1, 148), Outcome::AllowInitiation);
        check(&g, &build(2, 92), Outcome::AllowResponse);
        check(&g, &build(3, 64), Outcome::AllowCookieReply);
        // Bodies padded to 16, and full-size packets padded only up to an MTU
        // that is not a multiple of 16: 1420 (the default), 1412 (PPPoE), 68.
        for len in [32, 48, 1440, 1456, 32 + 1420, 32 + 1412, 32 + 68] {
            check(&g, &build(4, len), Outcome::AllowTransport);
        }
        for len in [147, 149, 0x94 + 16] {
            check(&g, &build(1, len), Outcome::DropBadLength);
        }
        for len in [91, 93, 148] {
            check(&g, &build(2, len), Outcome::DropBadLength);
        }
        for len in [63, 65, 92] {
            check(&g, &build(3, len), Outcome::DropBadLength);
        }
        // Too short for a tag, or an unaligned body shorter than any MTU.
        for len in [4, 16, 17, 31, 33, 40, 32 + 67] {
            check(&g, &build(4, len), Outcome::DropBadLength);
        }
    }
}

#[test]
fn unknown_types_and_nonzero_reserved_bytes_are_dropped() {
    let g = guard();
    for message_type in [0u8, 5, 0x7f, 0xff] {
        check(&g, &wg4(message_type, 148), Outcome::DropBadType);
        check(&g, &wg6(message_type, 32), Outcome::DropBadType);
    }
    for reserved in 1..4 {
        let mut payload = wireguard(4, 32);
        payload[reserved] = 1;
        check(&g, &packet::udp4(CLIENT, 1, GATEWAY, PORT, &payload), Outcome::DropBadType);
    }
}

#[test]
fn payloads_too_short_for_a_type_are_dropped() {
    let g = guard();
    for len in 0..4 {
        check(&g, &wg4(4, len), Outcome::DropBadLength);
    }
    // Ethernet pads a 4-byte payload frame to 60 bytes; the UDP length, not the
    // frame, decides. A type-4 word followed by padding is still 4 bytes long.
    let mut padded = wg4(4, 4);
    padded.resize(60, 0);
    check(&g, &padded, Outcome::DropBadLength);
    // A full transport message whose frame carries trailing padding passes.
    let mut padded = wg4(4, 32);
    padded.extend_from_slice(&[0; 6]);
    check(&g, &padded, Outcome::AllowTransport);
}

#[test]
fn lying_udp_lengths_are_dropped_as_truncated() {
    let g = guard();
    let udp_len_at = ETH_LEN + 20 + 4;
    let set_udp_len =
        |frame: &mut Vec<u8>, len: u16| frame[udp_len_at..udp_len_at + 2].copy_from_slice(&len.to_be_bytes());

    // UDP length below its own header.
    for len in [0u16, 7] {
        let mut frame = wg4(4, 32);
        set_udp_len(&mut frame, len);
        check(&g, &frame, Outcome::DropTruncated);
    }
    // UDP length beyond what IPv4's total length leaves for it.
    let mut frame = wg4(4, 32);
    set_udp_len(&mut frame, 8 + 48);
    check(&g, &frame, Outcome::DropTruncated);
    // Both headers claim more than the frame carries (cut off on the wire).
    let mut frame = wg4(4, 48);
    frame.truncate(frame.len() - 16);
    check(&g, &frame, Outcome::DropTruncated);
    // IPv6: payload length and UDP length both beyond the frame.
    let mut frame = wg6(1, 148);
    frame.truncate(frame.len() - 1);
    check(&g, &frame, Outcome::DropTruncated);
}

#[test]
fn other_ports_protocols_and_ethertypes_pass_untouched() {
    let g = guard();
    check(&g, &packet::udp4(CLIENT, 40000, GATEWAY, 53, &[0xde; 40]), Outcome::PassOtherPort);
    // The WireGuard port as *source* does not make a datagram ours.
    check(&g, &packet::udp4(GATEWAY, PORT, CLIENT, 40000, &[0xde; 40]), Outcome::PassOtherPort);
    check(&g, &packet::udp6(CLIENT6, 40000, GATEWAY6, 443, &[0; 3]), Outcome::PassOtherPort);
    check(&g, &packet::tcp4(CLIENT, 40000, GATEWAY, PORT, &wireguard(9, 20)), Outcome::PassNotUdp);
    check(&g, &packet::icmp4_echo(CLIENT, GATEWAY), Outcome::PassNotUdp);
    check(&g, &packet::arp_request(CLIENT, GATEWAY), Outcome::PassNotIp);
    let mut ipv6_tcp = wg6(4, 32);
    ipv6_tcp[ETH_LEN + 6] = 6;
    check(&g, &ipv6_tcp, Outcome::PassNotUdp);
}

#[test]
fn fragments_and_ipv4_options_pass() {
    let g = guard();
    let frags_at = ETH_LEN + 6;
    for frags in [0x2000u16 /* more fragments */, 0x0001 /* offset 8 */, 0x2010] {
        let mut frame = wg4(7, 100);
        frame[frags_at..frags_at + 2].copy_from_slice(&frags.to_be_bytes());
        check(&g, &frame, Outcome::PassFragment);
    }
    // Don't-fragment alone is not a fragment.
    let mut frame = wg4(4, 32);
    frame[frags_at..frags_at + 2].copy_from_slice(&0x4000u16.to_be_bytes());
    check(&g, &frame, Outcome::AllowTransport);

    check(&g, &with_ipv4_options(&wg4(7, 100), 4), Outcome::PassIpOptions);
    check(&g, &with_ipv4_options(&wg4(4, 32), 40), Outcome::PassIpOptions);
    check(&g, &ipv6_with_ext(&[(44, 8)], &wireguard(4, 32)), Outcome::PassFragment);
}

#[test]
fn ipv6_extension_headers_are_walked_up_to_four() {
    let g = guard();
    // Hop-by-hop, routing, destination options (8-byte units) and AH (4-byte
    // units) in front of UDP: the guard still sees the WireGuard payload.
    check(&g, &ipv6_with_ext(&[(0, 8)], &wireguard(4, 32)), Outcome::AllowTransport);
    check(&g, &ipv6_with_ext(&[(0, 8), (60, 16)], &wireguard(7, 32)), Outcome::DropBadType);
    check(
        &g,
        &ipv6_with_ext(&[(0, 8), (43, 24), (51, 12), (60, 8)], &wireguard(1, 148)),
        Outcome::AllowInitiation,
    );
    check(&g, &ipv6_with_ext(&[(51, 16)], &wireguard(2, 91)), Outcome::DropBadLength);
    // A fragment header behind another one.
    check(&g, &ipv6_with_ext(&[(0, 8), (44, 8)], &wireguard(4, 32)), Outcome::PassFragment);
    // Five headers is more than the guard walks.
    check(
        &g,
        &ipv6_with_ext(&[(0, 8), (60, 8), (60, 8), (60, 8), (60, 8)], &wireguard(7, 32)),
        Outcome::PassExtHeaders,
    );
    // An unknown next header behind options.
    let mut frame = ipv6_with_ext(&[(60, 8)], &wireguard(4, 32));
    frame[ETH_LEN + 40] = 6;
    check(&g, &frame, Outcome::PassNotUdp);
}

#[test]
fn vlan_tags_are_looked_through() {
    let g = guard();
    check(&g, &with_vlan_tags(&wg4(4, 32), &[0x8100]), Outcome::AllowTransport);
    check(&g, &with_vlan_tags(&wg6(9, 32), &[0x88a8, 0x8100]), Outcome::DropBadType);
    // A third tag is beyond the guard's reach: not IP as far as it can tell.
    check(&g, &with_vlan_tags(&wg4(9, 32), &[0x88a8, 0x8100, 0x8100]), Outcome::PassNotIp);
}

#[test]
fn malformed_and_truncated_frames_are_counted_and_passed_to_the_stack() {
    let g = guard();
    let ipv4 = wg4(4, 32);
    let ipv6 = wg6(4, 32);
    // An Ethernet header and nothing else, or a partial IP header.
    for len in [ETH_LEN, ETH_LEN + 1, ETH_LEN + 19] {
        check(&g, &ipv4[..len], Outcome::PassMalformed);
    }
    for len in [ETH_LEN, ETH_LEN + 39] {
        check(&g, &ipv6[..len], Outcome::PassMalformed);
    }
    // IP header complete, UDP header cut short.
    check(&g, &ipv4[..ETH_LEN + 20 + 4], Outcome::PassMalformed);
    check(&g, &ipv6[..ETH_LEN + 40 + 7], Outcome::PassMalformed);
    // Bad version or IHL, total length shorter than the header.
    let mut bad = ipv4.clone();
    bad[ETH_LEN] = 0x65;
    check(&g, &bad, Outcome::PassMalformed);
    for vihl in [0x40u8, 0x44] {
        let mut bad = ipv4.clone();
        bad[ETH_LEN] = vihl;
        check(&g, &bad, Outcome::PassMalformed);
    }
    let mut bad = ipv4.clone();
    bad[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&19u16.to_be_bytes());
    check(&g, &bad, Outcome::PassMalformed);
    // The IP datagram ends inside the UDP header (the rest is padding).
    let mut bad = ipv4.clone();
    bad[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&24u16.to_be_bytes());
    check(&g, &bad, Outcome::PassMalformed);
    let mut bad = ipv6.clone();
    bad[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&7u16.to_be_bytes());
    check(&g, &bad, Outcome::PassMalformed);
    let mut bad = ipv6.clone();
    bad[ETH_LEN] = 0x45;
    check(&g, &bad, Outcome::PassMalformed);
    // An extension header cut off by the end of the frame.
    let frame = ipv6_with_ext(&[(0, 8), (60, 64)], &[]);
    check(&g, &frame[..ETH_LEN + 40 + 8 + 1], Outcome::PassMalformed);
    // Extension headers longer than the IPv6 payload length claims.
    let mut frame = ipv6_with_ext(&[(60, 16)], &wireguard(4, 32));
    frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&8u16.to_be_bytes());
    check(&g, &frame, Outcome::PassMalformed);
    // A VLAN tag with no room for its inner ethertype.
    check(&g, &with_vlan_tags(&ipv4, &[0x8100])[..ETH_LEN + 1], Outcome::PassMalformed);
}

#[test]
fn the_kernel_refuses_frames_shorter_than_ethernet() {
    // BPF_PROG_RUN will not run XDP on less than ETH_HLEN bytes, and no
    // Ethernet driver hands XDP such a frame. The guard still bounds-checks the
    // ethertype read; this documents why no test can reach that branch.
    let g = guard();
    for len in [0, 1, 13] {
        let frame = vec![0u8; len];
        assert!(test_run::run(g.program().unwrap(), &frame).is_err(), "{len}-byte frame ran");
    }
}

#[test]
fn port_zero_disables_and_set_port_switches() {
    let mut g = guard();
    g.set_port(0).unwrap();
    check(&g, &wg4(9, 9), Outcome::PassOtherPort);
    g.set_port(PORT + 1).unwrap();
    check(&g, &wg4(9, 9), Outcome::PassOtherPort);
    check(&g, &packet::udp4(CLIENT, 1, GATEWAY, PORT + 1, &wireguard(9, 9)), Outcome::DropBadType);
}

#[test]
fn counters_add_up_across_many_runs() {
    let g = guard();
    let frames = [
        (wg4(4, 64), Outcome::AllowTransport),
        (wg4(1, 148), Outcome::AllowInitiation),
        (wg4(8, 64), Outcome::DropBadType),
        (packet::udp4(CLIENT, 1, GATEWAY, 53, b"dns"), Outcome::PassOtherPort),
    ];
    for round in 1..=25u64 {
        for (frame, _) in &frames {
            test_run::run(g.program().unwrap(), frame).unwrap();
        }
        let counters = g.counters().unwrap();
        for (_, outcome) in &frames {
            assert_eq!(counters.get(*outcome), round);
        }
        assert_eq!(counters.total(), 4 * round);
        assert_eq!(counters.dropped(), round);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes never crash the program or the kernel, the verdict is
    /// pass or drop, one counter moves, and a passed frame is unchanged.
    #[test]
    fn arbitrary_frames_are_classified_once(frame in proptest::collection::vec(any::<u8>(), 14..600)) {
        let g = shared_guard();
        let before = g.counters().unwrap();
        let run = test_run::run(g.program().unwrap(), &frame).unwrap();
        let delta = g.counters().unwrap().since(&before);
        prop_assert_eq!(delta.total(), 1);
        prop_assert!(matches!(run.verdict, Verdict::Pass | Verdict::Drop));
        if run.verdict == Verdict::Pass {
            prop_assert_eq!(run.packet, frame);
        }
    }

    /// Well-formed datagrams to the port: the verdict is exactly WireGuard's
    /// shape rule, over IPv4 and IPv6 and any type and length.
    #[test]
    fn wireguard_shape_rule_holds(v6 in any::<bool>(), message_type in 0u8..8, len in 0usize..1600) {
        let g = shared_guard();
        let frame = if v6 { wg6(message_type, len) } else { wg4(message_type, len) };
        let expected = expected_outcome(message_type, len);
        let before = g.counters().unwrap();
        let run = test_run::run(g.program().unwrap(), &frame).unwrap();
        let delta = g.counters().unwrap().since(&before);
        prop_assert_eq!(delta.get(expected), 1, "type {} len {}", message_type, len);
        prop_assert_eq!(run.verdict == Verdict::Drop, expected.drops());
    }
}

/// What a sender can put on the wire, derived from the senders' own padding
/// (not from the program): WireGuard pads a packet of `len` bytes with the
/// kernel's `calculate_skb_padding` (wireguard-go's `calculatePaddingSize`
/// is the same), so a transport message is 32 bytes plus that padded size for
/// some packet length and some MTU of at least 68. Handshake messages have
/// their fixed sizes.
fn expected_outcome(message_type: u8, len: usize) -> Outcome {
    if len < 4 {
        return Outcome::DropBadLength;
    }
    match (message_type, len) {
        (1, 148) => Outcome::AllowInitiation,
        (2, 92) => Outcome::AllowResponse,
        (3, 64) => Outcome::AllowCookieReply,
        (4, l) if producible_transport_lengths().contains(&l) => Outcome::AllowTransport,
        (1..=4, _) => Outcome::DropBadLength,
        _ => Outcome::DropBadType,
    }
}

fn padded_size(packet_len: usize, mtu: usize) -> usize {
    let mut last_unit = packet_len;
    if last_unit > mtu {
        last_unit %= mtu;
    }
    let padded = mtu.min(last_unit.next_multiple_of(16));
    packet_len + (padded - last_unit)
}

fn producible_transport_lengths() -> &'static std::collections::HashSet<usize> {
    static SET: std::sync::OnceLock<std::collections::HashSet<usize>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let mut set = std::collections::HashSet::new();
        for mtu in 68..=1600 {
            for packet_len in 0..=1600 {
                set.insert(32 + padded_size(packet_len, mtu));
            }
        }
        set
    })
}

/// One guard for all proptest cases in a thread: loading per case would spend
/// the time in the verifier.
fn shared_guard() -> &'static UplinkGuard {
    thread_local! {
        static GUARD: &'static UplinkGuard = Box::leak(Box::new(guard()));
    }
    GUARD.with(|g| *g)
}

/// Inserts `len` bytes of IPv4 options (NOPs, then end-of-list) after the
/// 20-byte header and fixes IHL and total length.
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

/// Inserts 802.1Q/802.1ad tags (outermost first) after the MAC addresses.
fn with_vlan_tags(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for tpid in tpids {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&[0x00, 0x2a]);
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// An Ethernet + IPv6 frame with the given extension headers (type, length
/// in bytes) in front of a UDP header to PORT and `payload`.
fn ipv6_with_ext(exts: &[(u8, usize)], payload: &[u8]) -> Vec<u8> {
    let mut frame = packet::udp6(CLIENT6, 40000, GATEWAY6, PORT, payload);
    let udp = frame.split_off(ETH_LEN + 40);
    let mut chain = Vec::new();
    for (i, &(kind, len)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(17, |e| e.0);
        let units = if kind == 51 { len / 4 - 2 } else { len / 8 - 1 };
        let mut header = vec![0u8; len];
        header[0] = next;
        header[1] = units as u8;
        chain.extend(header);
    }
    if let Some(&(first, _)) = exts.first() {
        frame[ETH_LEN + 6] = first;
    }
    let payload_len = (chain.len() + udp.len()) as u16;
    frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&payload_len.to_be_bytes());
    frame.extend(chain);
    frame.extend(udp);
    frame
}
