//! Shared by the gateway tests: a forwarding table with two sessions, packets
//! built with etherparse, and the translations the programs must produce,
//! computed independently (fields set by hand, checksums from scratch).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]
#![allow(dead_code)]

use std::net::Ipv4Addr;

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
use ferry_ebpf::gateway::{
    Capacity, FlowTimeouts, ForwardingTable, GatewayForwarder, Protocol, TargetSpec, monotonic_ns,
};

pub const TUNNEL_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 96, 0, 0), 12);
pub const ETH: usize = 14;

pub const SESSION_A: u64 = 1;
pub const SESSION_B: u64 = 2;
/// Technicians of session A and B.
pub const PEER_A1: [u8; 4] = [100, 96, 1, 2];
pub const PEER_A2: [u8; 4] = [100, 96, 1, 3];
pub const PEER_B: [u8; 4] = [100, 96, 2, 2];
/// The gateway's own tunnel address in session A's subnet.
pub const GATEWAY_TUN: [u8; 4] = [100, 96, 1, 1];
/// Session A's proxies: a PLC (TCP 22 and 502), an SNMP agent (UDP 161-162),
/// a pingable sensor (ICMP) and an HMI (anything).
pub const PROXY_PLC: [u8; 4] = [100, 96, 1, 10];
pub const PROXY_SNMP: [u8; 4] = [100, 96, 1, 11];
pub const PROXY_SENSOR: [u8; 4] = [100, 96, 1, 12];
pub const PROXY_HMI: [u8; 4] = [100, 96, 1, 13];
/// Session B's only proxy.
pub const PROXY_B: [u8; 4] = [100, 96, 2, 10];

pub const PLC: [u8; 4] = [10, 20, 0, 5];
pub const SNMP: [u8; 4] = [10, 20, 0, 6];
pub const SENSOR: [u8; 4] = [10, 20, 0, 7];
pub const HMI: [u8; 4] = [10, 20, 0, 8];
pub const B_TARGET: [u8; 4] = [10, 20, 0, 9];
/// The gateway's LAN address.
pub const SNAT: [u8; 4] = [10, 20, 0, 1];

pub fn spec(real: [u8; 4], protocol: Protocol, ports: &[(u16, u16)]) -> TargetSpec {
    TargetSpec { real: real.into(), snat: SNAT.into(), protocol, ports: ports.to_vec() }
}

pub fn table() -> ForwardingTable {
    let mut t = ForwardingTable::default();
    t.peers.insert(PEER_A1.into(), SESSION_A);
    t.peers.insert(PEER_A2.into(), SESSION_A);
    t.peers.insert(PEER_B.into(), SESSION_B);
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Tcp, &[(22, 22), (502, 502)]));
    t.targets.insert((SESSION_A, PROXY_SNMP.into()), spec(SNMP, Protocol::Udp, &[(161, 162)]));
    t.targets.insert((SESSION_A, PROXY_SENSOR.into()), spec(SENSOR, Protocol::Icmp, &[]));
    t.targets.insert((SESSION_A, PROXY_HMI.into()), spec(HMI, Protocol::Any, &[]));
    t.targets.insert((SESSION_B, PROXY_B.into()), spec(B_TARGET, Protocol::Any, &[]));
    t
}

/// Loaded for BPF_PROG_RUN (TC_ACT_OK instead of redirect) with [`table`].
pub fn forwarder() -> GatewayForwarder {
    let mut f = GatewayForwarder::load_for_test(TUNNEL_NET, 1, false, Capacity::default())
        .expect("loading the gateway programs (run as root)");
    f.apply(&table()).unwrap();
    f
}

/// A time long enough ago to make a flow dead, and flow timeouts that make it
/// so, on a machine up for any time: the programs' clock counts from boot, so
/// "long ago" can be no earlier than the boot, and the timeouts must be
/// shorter than the machine's uptime.
#[derive(Clone, Copy, Debug)]
pub struct Ages {
    /// A flow stamped then is dead under [`Ages::timeouts`] (and alive under
    /// the default TCP timeout: it is at most an hour ago).
    pub long_ago: u64,
    /// Half the age of `long_ago`: a flow stamped now stays alive under them
    /// for half the machine's uptime (at most half an hour), far longer than
    /// a test takes.
    pub timeouts: FlowTimeouts,
}

pub fn ages() -> Ages {
    let now = monotonic_ns();
    let age = now.min(3_600_000_000_000);
    assert!(age >= 2_000_000, "CLOCK_MONOTONIC at {now} ns: the machine cannot have booted that recently");
    let half = age / 2;
    Ages { long_ago: now - age, timeouts: FlowTimeouts { tcp_ns: half, other_ns: half, unanswered_ns: half } }
}

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// Ethernet + IPv4 + TCP SYN with `payload`.
pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, ttl).tcp(sport, dport, 1000, 65535).syn();
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, ttl).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

pub fn ping(src: [u8; 4], dst: [u8; 4], id: u16, ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, ttl).icmpv4_echo_request(id, 7);
    let mut out = Vec::new();
    b.write(&mut out, b"ping payload").unwrap();
    out
}

pub fn pong(src: [u8; 4], dst: [u8; 4], id: u16, ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, ttl).icmpv4_echo_reply(id, 7);
    let mut out = Vec::new();
    b.write(&mut out, b"ping payload").unwrap();
    out
}

/// A field a translation changes besides the addresses.
#[derive(Clone, Copy, Debug)]
pub enum Port {
    Source(u16),
    Destination(u16),
    EchoId(u16),
}

/// What a router translating `frame` must send: addresses and `port`
/// replaced, TTL - 1, every checksum computed from scratch (a zero UDP
/// checksum stays zero), the Ethernet header and trailing bytes as they were.
/// The TUN program routes by itself (redirect), so it decrements the TTL.
pub fn translated(frame: &[u8], src: [u8; 4], dst: [u8; 4], port: Port) -> Vec<u8> {
    translate(frame, src, dst, port, 1)
}

/// The same for a reply the LAN program translates and passes to the
/// kernel, whose forwarding decrements the TTL: the program leaves it.
pub fn translated_reply(frame: &[u8], src: [u8; 4], dst: [u8; 4], port: Port) -> Vec<u8> {
    translate(frame, src, dst, port, 0)
}

fn translate(frame: &[u8], src: [u8; 4], dst: [u8; 4], port: Port, hops: u8) -> Vec<u8> {
    let (mut ip, rest) = Ipv4Header::from_slice(&frame[ETH..]).unwrap();
    let l4_len = ip.total_len as usize - ip.header_len();
    let (l4, trailer) = rest.split_at(l4_len);
    ip.source = src;
    ip.destination = dst;
    ip.time_to_live -= hops;
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = frame[..ETH].to_vec();
    out.extend_from_slice(&ip.to_bytes());
    match ip.protocol.0 {
        6 => {
            let (mut tcp, payload) = TcpHeader::from_slice(l4).unwrap();
            match port {
                Port::Source(p) => tcp.source_port = p,
                Port::Destination(p) => tcp.destination_port = p,
                Port::EchoId(_) => panic!("TCP has no echo id"),
            }
            tcp.checksum = tcp.calc_checksum_ipv4(&ip, payload).unwrap();
            out.extend_from_slice(&tcp.to_bytes());
            out.extend_from_slice(payload);
        }
        17 => {
            let (mut udp, payload) = UdpHeader::from_slice(l4).unwrap();
            match port {
                Port::Source(p) => udp.source_port = p,
                Port::Destination(p) => udp.destination_port = p,
                Port::EchoId(_) => panic!("UDP has no echo id"),
            }
            if udp.checksum != 0 {
                udp.checksum = udp.calc_checksum_ipv4(&ip, payload).unwrap();
            }
            out.extend_from_slice(&udp.to_bytes());
            out.extend_from_slice(payload);
        }
        1 => {
            let (mut icmp, payload) = Icmpv4Header::from_slice(l4).unwrap();
            let Port::EchoId(id) = port else { panic!("ICMP translates the echo id") };
            icmp.icmp_type = match icmp.icmp_type {
                Icmpv4Type::EchoRequest(h) => Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq: h.seq }),
                Icmpv4Type::EchoReply(h) => Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq: h.seq }),
                other => panic!("not an echo: {other:?}"),
            };
            icmp.update_checksum(payload);
            out.extend_from_slice(&icmp.to_bytes());
            out.extend_from_slice(payload);
        }
        other => panic!("protocol {other}"),
    }
    out.extend_from_slice(trailer);
    out
}

/// The ICMP error `kind` that `from` (the target, or a router on the way)
/// sends to `to` about the packet in the Ethernet frame `sent`, quoting its
/// first `quote` bytes from the IPv4 header on. Checksums from scratch.
pub fn icmp_error(from: [u8; 4], to: [u8; 4], kind: Icmpv4Type, sent: &[u8], quote: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(from, to, 64).icmpv4(kind);
    let mut out = Vec::new();
    b.write(&mut out, &sent[ETH..ETH + quote]).unwrap();
    out
}

/// What the LAN program must make of `error`, an ICMP error quoting the
/// first `quote` bytes of `sent` (the packet the gateway sent to the target):
/// the outer header from `proxy` to `peer` (TTL and all else as it was), and
/// as the quote the first `quote` bytes of `sent` translated back by hand,
/// i.e. the source `peer` with `port` (source port or echo id), the
/// destination `proxy`, every checksum of the *whole* packet recomputed from
/// scratch before cutting; the ICMP checksum from scratch over that quote.
pub fn translated_error(
    error: &[u8],
    sent: &[u8],
    quote: usize,
    proxy: [u8; 4],
    peer: [u8; 4],
    port: Port,
) -> Vec<u8> {
    let original = translate(sent, peer, proxy, port, 0);
    let quoted = &original[ETH..ETH + quote];
    let (mut ip, rest) = Ipv4Header::from_slice(&error[ETH..]).unwrap();
    let (icmp, _) = Icmpv4Header::from_slice(rest).unwrap();
    assert_eq!(ip.total_len as usize, ip.header_len() + icmp.header_len() + quote, "quote length");
    ip.source = proxy;
    ip.destination = peer;
    ip.header_checksum = ip.calc_header_checksum();
    let icmp = Icmpv4Header::with_checksum(icmp.icmp_type, quoted);
    let mut out = error[..ETH].to_vec();
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(&icmp.to_bytes());
    out.extend_from_slice(quoted);
    out.extend_from_slice(&error[out.len()..]);
    out
}

/// Recomputes every checksum of an Ethernet + IPv4 frame from scratch and
/// compares it with the one in the frame.
pub fn assert_checksums_valid(frame: &[u8]) {
    let (ip, rest) = Ipv4Header::from_slice(&frame[ETH..]).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header checksum");
    let l4 = &rest[..ip.total_len as usize - ip.header_len()];
    match ip.protocol.0 {
        6 => {
            let (tcp, payload) = TcpHeader::from_slice(l4).unwrap();
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).unwrap(), "TCP checksum");
        }
        17 => {
            let (udp, payload) = UdpHeader::from_slice(l4).unwrap();
            if udp.checksum != 0 {
                assert_eq!(udp.checksum, udp.calc_checksum_ipv4(&ip, payload).unwrap(), "UDP checksum");
            }
        }
        1 => {
            let (icmp, payload) = Icmpv4Header::from_slice(l4).unwrap();
            let expected = Icmpv4Header::with_checksum(icmp.icmp_type.clone(), payload);
            assert_eq!(icmp.checksum, expected.checksum, "ICMP checksum");
        }
        other => panic!("protocol {other}"),
    }
}

/// Sets the IPv4 header checksum of a frame after a test edited the header.
pub fn reseal_ip(frame: &mut [u8]) {
    let (mut ip, _) = Ipv4Header::from_slice(&frame[ETH..]).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let bytes = ip.to_bytes();
    frame[ETH..ETH + bytes.len()].copy_from_slice(&bytes);
}

/// The sum of the 16-bit words of addresses, folded (one's complement).
pub fn folded(addresses: &[[u8; 4]]) -> u32 {
    let mut sum: u32 = addresses
        .iter()
        .map(|a| u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum % 0xffff
}
