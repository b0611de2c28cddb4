//! The gateway's whitelist/NAT programs in the kernel, with BPF_PROG_RUN on
//! crafted packets: whitelisted TCP, UDP and ICMP echo translated byte for
//! byte (checksums recomputed from scratch), every kind of refusal dropped
//! and counted, replies and ICMP errors translated back only for known, live
//! flows, and the LAN side's protection of the tunnel. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod gateway_support;

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    Icmpv4Header, Icmpv4Type,
    icmpv4::{DestUnreachableHeader, ParameterProblemHeader, TimeExceededCode},
};

use ferry_ebpf::{
    common::gateway::{
        FlowKey, NAT_PORT_MAX, NAT_PORT_MIN, NAT_PORT_TRIES, Outcome, PROTO_TCP, PROTO_UDP, flow_hash,
        flow_hint, nat_slot,
    },
    gateway::{Capacity, Flow, FlowTimeouts, ForwardingTable, GatewayForwarder, Protocol, monotonic_ns},
    test_run::{self, TcAction, Verdict},
};
use gateway_support::*;

/// Runs `frame` through the TUN program and checks the action and that
/// exactly `expected` was counted. Returns the packet as the program left it.
fn tunnel(f: &GatewayForwarder, frame: &[u8], expected: Outcome) -> Vec<u8> {
    let before = f.counters().unwrap();
    let run = test_run::run_tc(f.tunnel_program().unwrap(), frame).unwrap();
    let delta = f.counters().unwrap().since(&before);
    let counted: Vec<_> = delta.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counted, vec![(expected, 1)], "frame {frame:02x?}");
    let action = if expected == Outcome::ForwardedToTarget { TcAction::Ok } else { TcAction::Shot };
    assert_eq!(run.action, action, "{expected:?}");
    run.packet
}

/// Like [`tunnel`] for the LAN program; an untranslated frame must be
/// unchanged.
fn lan(f: &GatewayForwarder, frame: &[u8], expected: Outcome) -> Vec<u8> {
    lan_on(f, frame, 0, expected)
}

fn lan_on(f: &GatewayForwarder, frame: &[u8], ifindex: u32, expected: Outcome) -> Vec<u8> {
    let before = f.counters().unwrap();
    let run = test_run::run_on(f.lan_program().unwrap(), frame, ifindex).unwrap();
    let delta = f.counters().unwrap().since(&before);
    let counted: Vec<_> = delta.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counted, vec![(expected, 1)], "frame {frame:02x?}");
    let verdict = if expected.drops() { Verdict::Drop } else { Verdict::Pass };
    assert_eq!(run.verdict, verdict, "{expected:?}");
    if !matches!(expected, Outcome::ForwardedFromTarget | Outcome::ForwardedIcmpError) {
        assert_eq!(run.packet, frame, "an untranslated frame was modified ({expected:?})");
    }
    run.packet
}

/// The flow the TUN program created for `(protocol, peer, proxy, dport)`.
fn flow(f: &GatewayForwarder, protocol: u8, peer: SocketAddrV4, proxy: [u8; 4], dport: u16) -> Flow {
    let flows = f.flows().unwrap();
    *flows
        .iter()
        .find(|fl| {
            fl.protocol == protocol
                && fl.peer == peer
                && fl.proxy == Ipv4Addr::from(proxy)
                && fl.target_port == dport
        })
        .unwrap_or_else(|| panic!("no flow for {peer} -> {proxy:?} in {flows:#?}"))
}

fn sa(addr: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr.into(), port)
}

fn assert_same(got: &[u8], expected: &[u8]) {
    assert_eq!(got.len(), expected.len(), "length");
    if got != expected {
        panic!("translated frame differs\n     got {:02x?}\nexpected {:02x?}", got, expected);
    }
    assert_checksums_valid(got);
}

#[test]
fn whitelisted_tcp_is_translated_both_ways() {
    let f = forwarder();
    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 502, 64, b"modbus");
    let out = tunnel(&f, &syn, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 502);
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&fl.nat_port));
    assert_eq!((fl.session, fl.real, fl.snat, fl.target_port), (SESSION_A, PLC.into(), SNAT.into(), 502));
    assert_same(&out, &translated(&syn, SNAT, PLC, Port::Source(fl.nat_port)));

    // The same flow keeps its NAT port.
    let again = tcp(PEER_A1, 40000, PROXY_PLC, 502, 17, b"more");
    let out = tunnel(&f, &again, Outcome::ForwardedToTarget);
    assert_same(&out, &translated(&again, SNAT, PLC, Port::Source(fl.nat_port)));
    assert_eq!(f.flows().unwrap().len(), 1);

    let reply = tcp(PLC, 502, SNAT, fl.nat_port, 64, b"answer");
    let out = lan(&f, &reply, Outcome::ForwardedFromTarget);
    assert_same(&out, &translated_reply(&reply, PROXY_PLC, PEER_A1, Port::Destination(40000)));

    let traffic = f.traffic(SESSION_A, PROXY_PLC.into()).unwrap().unwrap();
    assert_eq!((traffic.to_target_packets, traffic.from_target_packets), (2, 1));
    assert_eq!(traffic.to_target_bytes, (syn.len() - ETH + again.len() - ETH) as u64);
    assert_eq!(traffic.from_target_bytes, (reply.len() - ETH) as u64);
    assert_eq!(f.traffic(SESSION_A, PROXY_SNMP.into()).unwrap().unwrap().to_target_packets, 0);
    assert_eq!(f.traffic(SESSION_A, [100, 96, 1, 99].into()).unwrap(), None);
}

#[test]
fn whitelisted_udp_is_translated_both_ways_and_a_zero_checksum_stays_zero() {
    let f = forwarder();
    let get = udp(PEER_A2, 50000, PROXY_SNMP, 161, 64, b"snmp get");
    let out = tunnel(&f, &get, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_UDP, sa(PEER_A2, 50000), PROXY_SNMP, 161);
    assert_same(&out, &translated(&get, SNAT, SNMP, Port::Source(fl.nat_port)));

    let reply = udp(SNMP, 161, SNAT, fl.nat_port, 64, b"snmp response");
    let out = lan(&f, &reply, Outcome::ForwardedFromTarget);
    assert_same(&out, &translated_reply(&reply, PROXY_SNMP, PEER_A2, Port::Destination(50000)));

    // Without a checksum, both ways.
    let mut bare = udp(PEER_A2, 50000, PROXY_SNMP, 162, 64, b"trap");
    bare[ETH + 26..ETH + 28].fill(0);
    let out = tunnel(&f, &bare, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_UDP, sa(PEER_A2, 50000), PROXY_SNMP, 161);
    let fl162 = flow(&f, PROTO_UDP, sa(PEER_A2, 50000), PROXY_SNMP, 162);
    assert_eq!(&out[ETH + 26..ETH + 28], [0, 0]);
    assert_same(&out, &translated(&bare, SNAT, SNMP, Port::Source(fl162.nat_port)));
    let mut bare_reply = udp(SNMP, 161, SNAT, fl.nat_port, 64, b"x");
    bare_reply[ETH + 26..ETH + 28].fill(0);
    let out = lan(&f, &bare_reply, Outcome::ForwardedFromTarget);
    assert_eq!(&out[ETH + 26..ETH + 28], [0, 0]);
    assert_same(&out, &translated_reply(&bare_reply, PROXY_SNMP, PEER_A2, Port::Destination(50000)));
}

#[test]
fn ping_is_translated_with_the_echo_id_as_port() {
    let f = forwarder();
    for (proxy, real) in [(PROXY_SENSOR, SENSOR), (PROXY_HMI, HMI)] {
        let request = ping(PEER_A1, proxy, 4242, 64);
        let out = tunnel(&f, &request, Outcome::ForwardedToTarget);
        let fl = flow(&f, 1, sa(PEER_A1, 4242), proxy, 0);
        assert_eq!(fl.target_port, 0);
        assert_same(&out, &translated(&request, SNAT, real, Port::EchoId(fl.nat_port)));

        let reply = pong(real, SNAT, fl.nat_port, 64);
        let out = lan(&f, &reply, Outcome::ForwardedFromTarget);
        assert_same(&out, &translated_reply(&reply, proxy, PEER_A1, Port::EchoId(4242)));
    }
    // Echo replies from the technician and other ICMP go nowhere.
    tunnel(&f, &pong(PEER_A1, PROXY_SENSOR, 1, 64), Outcome::IcmpNotEcho);
}

/// A router between the gateway and the targets.
const ROUTER: [u8; 4] = [10, 20, 0, 254];
/// IPv4 header + the first 8 bytes of L4: what every router quotes at least.
const SHORT_QUOTE: usize = 28;

fn unreachable(code: DestUnreachableHeader) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(code)
}

fn time_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

/// Sends `error` (about `sent`, quoting `quote` bytes) through the LAN
/// program and compares it with the independently built translation.
fn error_translated(
    f: &GatewayForwarder,
    error: &[u8],
    sent: &[u8],
    quote: usize,
    back: ([u8; 4], [u8; 4], Port),
) {
    let (proxy, peer, port) = back;
    let out = lan(f, error, Outcome::ForwardedIcmpError);
    assert_same(&out, &translated_error(error, sent, quote, proxy, peer, port));
    // Whoever sent it, the technician sees the proxy address.
    assert_eq!(out[ETH + 12..ETH + 20], [proxy, peer].concat());
}

#[test]
fn icmp_errors_about_a_udp_flow_are_translated_back() {
    let f = forwarder();
    let get = udp(PEER_A2, 50000, PROXY_SNMP, 161, 64, b"snmp get");
    let out = tunnel(&f, &get, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_UDP, sa(PEER_A2, 50000), PROXY_SNMP, 161);
    let sent = translated(&get, SNAT, SNMP, Port::Source(fl.nat_port));
    assert_same(&out, &sent);
    let back = (PROXY_SNMP, PEER_A2, Port::Source(50000));
    let whole = sent.len() - ETH;

    // Nothing listens on the port: the technician's socket gets "connection
    // refused". Host unreachable and fragmentation needed (with the MTU) from
    // the target or a router, time exceeded and parameter problem from a
    // router, quoting the minimum or the whole packet.
    let kinds = [
        (SNMP, unreachable(DestUnreachableHeader::Port)),
        (ROUTER, unreachable(DestUnreachableHeader::Host)),
        (SNMP, unreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 })),
        (ROUTER, unreachable(DestUnreachableHeader::FilterProhibited)),
        (ROUTER, time_exceeded()),
        (ROUTER, Icmpv4Type::ParameterProblem(ParameterProblemHeader::PointerIndicatesError(9))),
    ];
    for (from, kind) in kinds {
        for quote in [SHORT_QUOTE, whole] {
            let error = icmp_error(from, SNAT, kind.clone(), &sent, quote);
            error_translated(&f, &error, &sent, quote, back);
        }
    }
    // Errors are delivered on the target's behalf; they count as its traffic.
    let traffic = f.traffic(SESSION_A, PROXY_SNMP.into()).unwrap().unwrap();
    assert_eq!(traffic.from_target_packets, 12);

    // A datagram sent without a checksum is quoted without one, and its
    // translation too.
    let mut bare = udp(PEER_A2, 50000, PROXY_SNMP, 162, 64, b"trap");
    bare[ETH + 26..ETH + 28].fill(0);
    tunnel(&f, &bare, Outcome::ForwardedToTarget);
    let fl162 = flow(&f, PROTO_UDP, sa(PEER_A2, 50000), PROXY_SNMP, 162);
    let sent = translated(&bare, SNAT, SNMP, Port::Source(fl162.nat_port));
    assert_eq!(sent[ETH + 26..ETH + 28], [0, 0]);
    let error = icmp_error(SNMP, SNAT, unreachable(DestUnreachableHeader::Port), &sent, SHORT_QUOTE);
    error_translated(&f, &error, &sent, SHORT_QUOTE, back);
    let out = lan(&f, &error, Outcome::ForwardedIcmpError);
    assert_eq!(out[ETH + 28 + 26..ETH + 28 + 28], [0, 0]);
}

#[test]
fn icmp_errors_about_a_tcp_flow_are_translated_back_with_the_quoted_checksum() {
    let f = forwarder();
    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 502, 64, b"modbus");
    let out = tunnel(&f, &syn, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 502);
    let sent = translated(&syn, SNAT, PLC, Port::Source(fl.nat_port));
    assert_same(&out, &sent);
    let back = (PROXY_PLC, PEER_A1, Port::Source(40000));
    // 28: ports and sequence number only; 36: up to the checksum; 38: just
    // the checksum in; 40: the whole header; and the whole packet.
    for quote in [SHORT_QUOTE, 36, 38, 40, sent.len() - ETH] {
        for (from, kind) in [
            (ROUTER, unreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 })),
            (PLC, unreachable(DestUnreachableHeader::Host)),
            (ROUTER, time_exceeded()),
        ] {
            let error = icmp_error(from, SNAT, kind, &sent, quote);
            error_translated(&f, &error, &sent, quote, back);
        }
    }
    // Half a checksum (a quote ending inside it) cannot be updated without
    // its other byte: it stays as quoted, and the ICMP checksum covers it so.
    let error = icmp_error(ROUTER, SNAT, time_exceeded(), &sent, 37);
    let out = lan(&f, &error, Outcome::ForwardedIcmpError);
    let mut expected = translated_error(&error, &sent, 37, PROXY_PLC, PEER_A1, Port::Source(40000));
    let half = ETH + 20 + 8 + 36;
    expected[half] = sent[ETH + 36];
    let icmp = Icmpv4Header::with_checksum(time_exceeded(), &expected[ETH + 28..]);
    expected[ETH + 20..ETH + 28].copy_from_slice(&icmp.to_bytes());
    assert_same(&out, &expected);

    // A router's time exceeded quotes the packet as it reached it, TTL 1.
    let last_hop =
        translated(&tcp(PEER_A1, 40000, PROXY_PLC, 502, 2, b"x"), SNAT, PLC, Port::Source(fl.nat_port));
    assert_eq!(last_hop[ETH + 8], 1);
    let error = icmp_error(ROUTER, SNAT, time_exceeded(), &last_hop, 40);
    error_translated(&f, &error, &last_hop, 40, back);
}

#[test]
fn icmp_errors_about_a_ping_are_translated_back() {
    let f = forwarder();
    let request = ping(PEER_A1, PROXY_SENSOR, 4242, 64);
    let out = tunnel(&f, &request, Outcome::ForwardedToTarget);
    let fl = flow(&f, 1, sa(PEER_A1, 4242), PROXY_SENSOR, 0);
    let sent = translated(&request, SNAT, SENSOR, Port::EchoId(fl.nat_port));
    assert_same(&out, &sent);
    let back = (PROXY_SENSOR, PEER_A1, Port::EchoId(4242));
    for (from, kind) in [
        (ROUTER, unreachable(DestUnreachableHeader::Host)),
        (ROUTER, unreachable(DestUnreachableHeader::Network)),
        (SENSOR, unreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 576 })),
        (ROUTER, time_exceeded()),
    ] {
        for quote in [SHORT_QUOTE, sent.len() - ETH] {
            let error = icmp_error(from, SNAT, kind.clone(), &sent, quote);
            error_translated(&f, &error, &sent, quote, back);
        }
    }
}

#[test]
fn icmp_errors_about_unknown_or_dead_flows_are_not_translated() {
    let mut f = forwarder();
    let port_unreachable = unreachable(DestUnreachableHeader::Port);
    // Errors quoting packets the gateway never sent go where every ICMP
    // message to the gateway went before: the host, untouched.
    let never_sent = udp(SNAT, 61234, SNMP, 161, 64, b"snmp get");
    lan(&f, &icmp_error(SNMP, SNAT, port_unreachable.clone(), &never_sent, SHORT_QUOTE), Outcome::LanToHost);
    let never_pinged = ping(SNAT, SENSOR, 61234, 64);
    lan(&f, &icmp_error(ROUTER, SNAT, time_exceeded(), &never_pinged, SHORT_QUOTE), Outcome::LanToHost);

    let get = udp(PEER_A2, 50000, PROXY_SNMP, 161, 64, b"snmp get");
    tunnel(&f, &get, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_UDP, sa(PEER_A2, 50000), PROXY_SNMP, 161);
    let sent = translated(&get, SNAT, SNMP, Port::Source(fl.nat_port));
    let error = icmp_error(SNMP, SNAT, port_unreachable.clone(), &sent, SHORT_QUOTE);
    error_translated(&f, &error, &sent, SHORT_QUOTE, (PROXY_SNMP, PEER_A2, Port::Source(50000)));

    // Quotes that do not name the flow exactly: another NAT port, target
    // port, target, protocol, or SNAT address (the error's destination too).
    let other_port = translated(&get, SNAT, SNMP, Port::Source(fl.nat_port ^ 1));
    let mut other_dport = sent.clone();
    other_dport[ETH + 22..ETH + 24].copy_from_slice(&162u16.to_be_bytes());
    let other_target = translated(&get, SNAT, HMI, Port::Source(fl.nat_port));
    let mut as_tcp = sent.clone();
    as_tcp[ETH + 9] = PROTO_TCP;
    reseal_ip(&mut as_tcp);
    for quoted in [&other_port, &other_dport, &other_target, &as_tcp] {
        lan(&f, &icmp_error(SNMP, SNAT, port_unreachable.clone(), quoted, SHORT_QUOTE), Outcome::LanToHost);
    }
    let other_snat = [10, 20, 0, 2];
    let elsewhere = translated(&get, other_snat, SNMP, Port::Source(fl.nat_port));
    lan(
        &f,
        &icmp_error(SNMP, other_snat, port_unreachable.clone(), &elsewhere, SHORT_QUOTE),
        Outcome::LanToHost,
    );
    // The right quote in an error to another address than its source.
    lan(&f, &icmp_error(SNMP, other_snat, port_unreachable.clone(), &sent, SHORT_QUOTE), Outcome::LanToHost);
    // Too short a quote to hold the ports, a quoted header with options, a
    // later fragment, and ICMP that is no error (a redirect, type 5).
    lan(&f, &icmp_error(SNMP, SNAT, port_unreachable.clone(), &sent, SHORT_QUOTE - 1), Outcome::LanToHost);
    let mut with_options = sent.clone();
    with_options[ETH] = 0x46;
    lan(
        &f,
        &icmp_error(SNMP, SNAT, port_unreachable.clone(), &with_options, SHORT_QUOTE),
        Outcome::LanToHost,
    );
    let mut later_fragment = sent.clone();
    later_fragment[ETH + 6..ETH + 8].copy_from_slice(&[0x00, 0x10]);
    lan(
        &f,
        &icmp_error(SNMP, SNAT, port_unreachable.clone(), &later_fragment, SHORT_QUOTE),
        Outcome::LanToHost,
    );
    let mut redirect = error.clone();
    redirect[ETH + 20] = 5;
    lan(&f, &redirect, Outcome::LanToHost);

    // An expired flow; the same flow, seen a moment ago, is alive.
    let ages = ages();
    f.set_timeouts(ages.timeouts).unwrap();
    f.insert_flow(&Flow { last_seen_ns: ages.long_ago, ..fl }).unwrap();
    lan(&f, &error, Outcome::LanToHost);
    f.insert_flow(&Flow { last_seen_ns: monotonic_ns(), ..fl }).unwrap();
    error_translated(&f, &error, &sent, SHORT_QUOTE, (PROXY_SNMP, PEER_A2, Port::Source(50000)));
    f.set_timeouts(FlowTimeouts::DEFAULT).unwrap();

    // Only the two translated errors count as the target's traffic.
    let traffic = f.traffic(SESSION_A, PROXY_SNMP.into()).unwrap().unwrap();
    assert_eq!(traffic.from_target_packets, 2);

    // The session ended (its peer left) with the flow still in the map, the
    // peer came back in another session, and the target was removed.
    let mut t = table();
    t.peers.remove(&PEER_A2.into());
    f.apply(&t).unwrap();
    assert!(!f.flows().unwrap().is_empty());
    lan(&f, &error, Outcome::LanToHost);
    t.peers.insert(PEER_A2.into(), SESSION_B);
    f.apply(&t).unwrap();
    lan(&f, &error, Outcome::LanToHost);
    let mut t = table();
    t.targets.remove(&(SESSION_A, PROXY_SNMP.into()));
    f.apply(&t).unwrap();
    lan(&f, &error, Outcome::LanToHost);
}

#[test]
fn everything_not_whitelisted_is_dropped_and_counted() {
    let f = forwarder();
    // Wrong port, wrong protocol.
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 23, 64, b""), Outcome::PortNotAllowed);
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_SNMP, 161, 64, b""), Outcome::ProtocolNotAllowed);
    tunnel(&f, &udp(PEER_A1, 40000, PROXY_SNMP, 163, 64, b""), Outcome::PortNotAllowed);
    tunnel(&f, &ping(PEER_A1, PROXY_PLC, 1, 64), Outcome::ProtocolNotAllowed);
    // No such proxy, the gateway's own tunnel address, an address outside.
    tunnel(&f, &tcp(PEER_A1, 40000, [100, 96, 1, 99], 22, 64, b""), Outcome::NotWhitelisted);
    tunnel(&f, &tcp(PEER_A1, 40000, GATEWAY_TUN, 22, 64, b""), Outcome::NotWhitelisted);
    tunnel(&f, &tcp(PEER_A1, 40000, PLC, 22, 64, b""), Outcome::NotWhitelisted);
    // Unknown peer, and a peer of another session.
    tunnel(&f, &tcp([100, 96, 1, 77], 40000, PROXY_PLC, 22, 64, b""), Outcome::UnknownPeer);
    tunnel(&f, &tcp(PEER_B, 40000, PROXY_PLC, 22, 64, b""), Outcome::NotWhitelisted);
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_B, 22, 64, b""), Outcome::NotWhitelisted);
    // TTL 1 (and 0).
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 1, b""), Outcome::TtlExceeded);
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 0, b""), Outcome::TtlExceeded);
    // A fragment (more-fragments set), and a later fragment.
    for frags in [[0x20, 0x00], [0x00, 0x10]] {
        let mut frag = udp(PEER_A2, 50000, PROXY_SNMP, 161, 64, &[7; 32]);
        frag[ETH + 6..ETH + 8].copy_from_slice(&frags);
        reseal_ip(&mut frag);
        tunnel(&f, &frag, Outcome::Fragment);
    }
    // Not IPv4: an IPv6 packet behind the (test-only) Ethernet header.
    let v6 = ferry_lab::packet::udp6([0xfd; 16], 1, [0xfd; 16], 2, b"v6");
    tunnel(&f, &v6, Outcome::NotIpv4);
    // Other IP protocols cannot be translated (GRE to an any-protocol entry).
    let mut gre = tcp(PEER_A1, 40000, PROXY_HMI, 22, 64, b"");
    gre[ETH + 9] = 47;
    reseal_ip(&mut gre);
    tunnel(&f, &gre, Outcome::ProtocolNotAllowed);
    // Truncated: an IPv4 header claiming TCP with no room for it.
    let mut short = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    short.truncate(ETH + 20 + 2);
    short[ETH + 2..ETH + 4].copy_from_slice(&22u16.to_be_bytes());
    reseal_ip(&mut short);
    tunnel(&f, &short, Outcome::Malformed);
    assert!(f.flows().unwrap().is_empty(), "a refused packet created a flow");
}

/// The established flow's fast path takes only what the full path would
/// forward: packets of live flows that must be refused are refused with the
/// full path's outcome, and the flows go on.
#[test]
fn packets_of_established_flows_are_refused_as_any_other() {
    let f = forwarder();
    let request = tcp(PEER_A1, 40000, PROXY_PLC, 502, 64, b"modbus");
    tunnel(&f, &request, Outcome::ForwardedToTarget);
    let get = udp(PEER_A2, 50000, PROXY_SNMP, 161, 64, &[7; 32]);
    tunnel(&f, &get, Outcome::ForwardedToTarget);
    let flows = f.flows().unwrap().len();

    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 502, 1, b"modbus"), Outcome::TtlExceeded);
    tunnel(&f, &udp(PEER_A2, 50000, PROXY_SNMP, 161, 1, b""), Outcome::TtlExceeded);
    for frags in [[0x20, 0x00], [0x00, 0x10]] {
        let mut frag = get.clone();
        frag[ETH + 6..ETH + 8].copy_from_slice(&frags);
        reseal_ip(&mut frag);
        tunnel(&f, &frag, Outcome::Fragment);
    }
    // An IPv4 length too short for the TCP header it claims.
    let mut short = request.clone();
    short.truncate(ETH + 20 + 8);
    short[ETH + 2..ETH + 4].copy_from_slice(&28u16.to_be_bytes());
    reseal_ip(&mut short);
    tunnel(&f, &short, Outcome::Malformed);
    // Not IPv4 any more, with the same addresses and ports.
    let mut v5 = request.clone();
    v5[ETH] = 0x55;
    tunnel(&f, &v5, Outcome::NotIpv4);

    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 502);
    let out = tunnel(&f, &request, Outcome::ForwardedToTarget);
    assert_same(&out, &translated(&request, SNAT, PLC, Port::Source(fl.nat_port)));
    assert_eq!(f.flows().unwrap().len(), flows);
}

#[test]
fn replies_need_a_known_live_flow() {
    let mut f = forwarder();
    // Nothing sent yet: TCP/UDP to a NAT port is dropped, ICMP passes (the
    // host's own ping), other ports go to the host.
    lan(&f, &tcp(PLC, 502, SNAT, 61234, 64, b""), Outcome::NoConntrack);
    lan(&f, &udp(SNMP, 161, SNAT, 65535, 64, b""), Outcome::NoConntrack);
    lan(&f, &pong(SENSOR, SNAT, 61234, 64), Outcome::LanToHost);
    lan(&f, &tcp(PLC, 502, SNAT, 22, 64, b""), Outcome::LanToHost);

    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    tunnel(&f, &syn, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    // From the wrong source, the wrong port, the wrong protocol: no flow.
    lan(&f, &tcp(HMI, 22, SNAT, fl.nat_port, 64, b""), Outcome::NoConntrack);
    lan(&f, &tcp(PLC, 23, SNAT, fl.nat_port, 64, b""), Outcome::NoConntrack);
    lan(&f, &udp(PLC, 22, SNAT, fl.nat_port, 64, b""), Outcome::NoConntrack);
    // TTL 1 is the kernel's to refuse (with ICMP time exceeded) after the
    // translation: one hop, one decrement.
    let last_hop = tcp(PLC, 22, SNAT, fl.nat_port, 1, b"");
    let out = lan(&f, &last_hop, Outcome::ForwardedFromTarget);
    assert_same(&out, &translated_reply(&last_hop, PROXY_PLC, PEER_A1, Port::Destination(40000)));
    lan(&f, &tcp(PLC, 22, SNAT, fl.nat_port, 64, b""), Outcome::ForwardedFromTarget);

    // Whether a flow is dead is its idle time against the timeout in force:
    // the same flow, idle for a while, is alive under the default timeouts
    // (the sweep keeps it too) ...
    let ages = ages();
    let idle = Flow { last_seen_ns: ages.long_ago, ..fl };
    f.insert_flow(&idle).unwrap();
    assert_eq!(f.expire_flows().unwrap(), 0);
    lan(&f, &tcp(PLC, 22, SNAT, fl.nat_port, 64, b""), Outcome::ForwardedFromTarget);
    // ... and under shorter ones an expired flow is no flow, and the sweep
    // removes both halves.
    f.insert_flow(&idle).unwrap();
    f.set_timeouts(ages.timeouts).unwrap();
    assert_eq!(f.timeouts(), ages.timeouts);
    lan(&f, &tcp(PLC, 22, SNAT, fl.nat_port, 64, b""), Outcome::NoConntrack);
    assert_eq!(f.expire_flows().unwrap(), 2);
    assert!(f.flows().unwrap().is_empty());
    // The next packet of the flow starts it again, alive under them too.
    tunnel(&f, &syn, Outcome::ForwardedToTarget);
    assert_eq!(f.flows().unwrap().len(), 1);
    assert_eq!(f.expire_flows().unwrap(), 0);
}

#[test]
fn ending_a_session_cuts_its_replies_at_once() {
    let mut f = forwarder();
    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    tunnel(&f, &syn, Outcome::ForwardedToTarget);
    tunnel(&f, &tcp(PEER_B, 40000, PROXY_B, 22, 64, b""), Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    let reply = tcp(PLC, 22, SNAT, fl.nat_port, 64, b"");

    // The peer leaves, the session's targets stay: replies stop even though
    // the flow is still in the map.
    let mut t = table();
    t.peers.remove(&PEER_A1.into());
    f.apply(&t).unwrap();
    assert_eq!(f.flows().unwrap().len(), 2);
    lan(&f, &reply, Outcome::SessionEnded);
    tunnel(&f, &syn, Outcome::UnknownPeer);

    // The peer comes back in another session: its old flow is not its.
    t.peers.insert(PEER_A1.into(), SESSION_B);
    f.apply(&t).unwrap();
    lan(&f, &reply, Outcome::SessionEnded);

    // Removing the target cuts replies too.
    let mut t = table();
    t.targets.remove(&(SESSION_A, PROXY_PLC.into()));
    f.apply(&t).unwrap();
    lan(&f, &reply, Outcome::SessionEnded);

    // Ending session A removes its flows, not B's.
    let mut t = table();
    t.peers.retain(|_, s| *s != SESSION_A);
    t.targets.retain(|(s, _), _| *s != SESSION_A);
    let report = f.apply(&t).unwrap();
    assert_eq!((report.sessions_ended, report.flows_removed), (1, 2));
    let flows = f.flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].session, SESSION_B);
    lan(&f, &reply, Outcome::NoConntrack);
}

/// The NAT port a flow tries `i`-th, as the programs pick them.
fn nat_candidate(key: &FlowKey, i: u32) -> u16 {
    let ports = (NAT_PORT_MAX - NAT_PORT_MIN) as u32 + 1;
    (NAT_PORT_MIN as u32 + (flow_hash(key) + i) % ports) as u16
}

#[test]
fn two_peers_with_the_same_port_get_different_nat_ports() {
    let mut f = forwarder();
    // Make the collision certain: flow 2's first candidate is taken by a live
    // flow before it starts.
    let second = FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer: PEER_A2,
        proxy: PROXY_PLC,
        peer_port: 40000u16.to_be_bytes(),
        dport: 22u16.to_be_bytes(),
    };
    let candidate = |i: u32| nat_candidate(&second, i);
    let now = monotonic_ns();
    let first = Flow {
        protocol: PROTO_TCP,
        session: SESSION_A,
        peer: sa(PEER_A1, 40000),
        proxy: PROXY_PLC.into(),
        target_port: 22,
        real: PLC.into(),
        snat: SNAT.into(),
        nat_port: candidate(0),
        counter: f.slot(SESSION_A, PROXY_PLC.into()).unwrap(),
        last_seen_ns: now,
    };
    f.insert_flow(&first).unwrap();
    let out = tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    assert_eq!(
        u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]),
        candidate(0),
        "the first flow kept its port"
    );
    let out = tunnel(&f, &tcp(PEER_A2, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), candidate(1));

    // Both replies find their own technician.
    let out = lan(&f, &tcp(PLC, 22, SNAT, candidate(0), 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(out[ETH + 16..ETH + 20], PEER_A1);
    let out = lan(&f, &tcp(PLC, 22, SNAT, candidate(1), 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(out[ETH + 16..ETH + 20], PEER_A2);

    // A third flow whose every candidate is held by live flows is refused;
    // once one of them has expired, it takes that port.
    let ages = ages();
    f.set_timeouts(ages.timeouts).unwrap();
    let first = Flow { last_seen_ns: monotonic_ns(), ..first };
    let third = FlowKey { peer_port: 40001u16.to_be_bytes(), ..second };
    let third_candidate = |i: u32| nat_candidate(&third, i);
    for i in 0..NAT_PORT_TRIES {
        let blocker =
            Flow { peer: sa([100, 96, 1, 100 + i as u8], 1), nat_port: third_candidate(i), ..first };
        f.insert_flow(&blocker).unwrap();
    }
    let third_syn = tcp(PEER_A2, 40001, PROXY_PLC, 22, 64, b"");
    tunnel(&f, &third_syn, Outcome::NatPortsExhausted);
    f.insert_flow(&Flow {
        peer: sa([100, 96, 1, 103], 1),
        nat_port: third_candidate(3),
        last_seen_ns: ages.long_ago,
        ..first
    })
    .unwrap();
    let out = tunnel(&f, &third_syn, Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), third_candidate(3));
}

#[test]
fn lan_traffic_toward_the_tunnel_is_dropped() {
    let f = forwarder();
    lan(&f, &tcp(PLC, 22, PEER_A1, 40000, 64, b""), Outcome::LanToTunnel);
    lan(&f, &udp(PLC, 5353, PROXY_PLC, 161, 64, b""), Outcome::LanToTunnel);
    lan(&f, &ping(PLC, [100, 111, 255, 255], 1, 64), Outcome::LanToTunnel);
    lan(&f, &ferry_lab::packet::arp_request(PLC, SNAT), Outcome::LanNotIpv4);
    lan(&f, &udp(PLC, 68, [255, 255, 255, 255], 67, 64, b""), Outcome::LanToHost);
}

/// The FIB decides between the host and somewhere else: in a namespace where
/// the LAN interface has an address and a default route exists.
#[test]
fn lan_traffic_for_the_host_passes_and_routed_traffic_is_blocked() {
    let lab = ferry_lab::Lab::new().expect("a lab (run as root)");
    let gw = lab.netns("gw-fib").unwrap();
    let machine = lab.netns("machine").unwrap();
    let link = lab.wire(&gw, &["10.20.0.1/24"], &machine, &["10.20.0.5/24"]).unwrap();
    gw.ip(&["route", "add", "default", "via", "10.20.0.254"]).unwrap();
    gw.ip(&[
        "neigh",
        "replace",
        "10.20.0.254",
        "lladdr",
        "02:00:00:00:00:fe",
        "dev",
        &link.a,
        "nud",
        "permanent",
    ])
    .unwrap();
    gw.enable_forwarding().unwrap();
    let lan_if = link.a.clone();
    gw.run_in(move || {
        let ifindex = ferry_ebpf::if_index(&lan_if).unwrap();
        let f = forwarder();
        lan_on(&f, &tcp(PLC, 40000, SNAT, 22, 64, b""), ifindex, Outcome::LanToHost);
        lan_on(&f, &tcp(PLC, 40000, [192, 0, 2, 1], 443, 64, b""), ifindex, Outcome::LanForwardBlocked);
        lan_on(&f, &udp(PLC, 40000, [10, 20, 0, 9], 53, 64, b""), ifindex, Outcome::LanForwardBlocked);
        lan_on(&f, &udp(PLC, 40000, [10, 20, 0, 255], 9, 64, b""), ifindex, Outcome::LanToHost);
    })
    .unwrap();
}

#[test]
fn the_tunnel_program_redirects_to_the_lan_interface() {
    let mut f = GatewayForwarder::load_for_test(TUNNEL_NET, 1, true, Capacity::default()).unwrap();
    f.apply(&table()).unwrap();
    let run =
        test_run::run_tc(f.tunnel_program().unwrap(), &tcp(PEER_A1, 1, PROXY_PLC, 22, 64, b"")).unwrap();
    assert_eq!(run.action, TcAction::Redirect);
    let run =
        test_run::run_tc(f.tunnel_program().unwrap(), &tcp(PEER_A1, 1, PROXY_PLC, 23, 64, b"")).unwrap();
    assert_eq!(run.action, TcAction::Shot);
}

#[test]
fn outcomes_have_stable_names() {
    let f = forwarder();
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    let outcomes = f.outcomes().unwrap();
    assert_eq!(outcomes.len(), Outcome::COUNT as usize);
    assert!(outcomes.contains(&("forwarded_to_target", 1)));
    assert!(outcomes.contains(&("lan_forward_blocked", 0)));
}

#[test]
fn bad_configurations_and_tables_are_refused_with_typed_errors() {
    use ferry_ebpf::{
        AttachMode, Error,
        gateway::{ForwarderConfig, Protocol, TableError},
    };
    for prefix in [0, 33] {
        let err =
            GatewayForwarder::load_for_test(([100, 96, 0, 0].into(), prefix), 1, false, Capacity::default())
                .err()
                .expect("a bad tunnel prefix is refused");
        assert!(matches!(err, Error::InvalidTable(TableError::BadTunnelNet { .. })), "{err}");
    }
    let err = GatewayForwarder::attach(&ForwarderConfig {
        tunnel_if: "fy-no-such-tun".into(),
        lan_if: "fy-no-such-lan".into(),
        tunnel_net: TUNNEL_NET,
        xdp_mode: AttachMode::Native,
        timeouts: FlowTimeouts::DEFAULT,
    })
    .err()
    .expect("unknown interfaces are refused");
    assert!(matches!(err, Error::UnknownInterface(_)), "{err}");

    let mut f =
        GatewayForwarder::load_for_test(TUNNEL_NET, 1, false, Capacity { peers: 2, targets: 3, flows: 16 })
            .unwrap();
    f.apply(&table()).expect_err("5 targets in a map of 3");
    let mut small = ForwardingTable::default();
    small.peers.insert(PEER_A1.into(), SESSION_A);
    small.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Tcp, &[(22, 22)]));
    f.apply(&small).unwrap();
    let mut too_many = table();
    too_many.targets.retain(|(s, _), _| *s == SESSION_A);
    too_many.targets.insert((SESSION_A, PROXY_SENSOR.into()), spec(SENSOR, Protocol::Tcp, &[(1, 2); 17]));
    too_many.peers.clear();
    let err = f.apply(&too_many).unwrap_err();
    assert!(matches!(err, Error::InvalidTable(TableError::TooManyRanges { count: 17, .. })), "{err}");
    let mut big = small.clone();
    big.peers.insert(PEER_A2.into(), SESSION_A);
    big.peers.insert(PEER_B.into(), SESSION_B);
    let err = f.apply(&big).unwrap_err();
    assert!(
        matches!(err, Error::InvalidTable(TableError::TooLarge { what: "peers", count: 3, capacity: 2 })),
        "{err}"
    );
    // Nothing of the refused tables reached the maps.
    assert_eq!(f.applied(), &small);
    assert_eq!(f.read_back().unwrap().0, small);
}

/// An established flow's packets skip the peer and whitelist lookups (the
/// flow carries its entry's generations): every change of what it was
/// admitted by must still reach it at once, in both directions.
#[test]
fn established_flows_follow_whitelist_changes_at_once() {
    let mut f = forwarder();
    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    let data = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"established");
    tunnel(&f, &syn, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    let sent = tunnel(&f, &data, Outcome::ForwardedToTarget);
    assert_same(&sent, &translated(&data, SNAT, PLC, Port::Source(fl.nat_port)));
    let reply = tcp(PLC, 22, SNAT, fl.nat_port, 64, b"reply");
    lan(&f, &reply, Outcome::ForwardedFromTarget);

    // A widening (another port added) keeps the flow and its replies.
    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Tcp, &[(22, 22), (502, 502)]));
    f.apply(&t).unwrap();
    lan(&f, &reply, Outcome::ForwardedFromTarget);
    tunnel(&f, &data, Outcome::ForwardedToTarget);

    // Port 22 taken off the entry: the flow's next packet is refused, and
    // the target's replies are cut at once too, before the technician
    // sends anything: it must not keep answering over a removed port.
    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Tcp, &[(502, 502)]));
    f.apply(&t).unwrap();
    lan(&f, &reply, Outcome::SessionEnded);
    tunnel(&f, &data, Outcome::PortNotAllowed);
    lan(&f, &reply, Outcome::SessionEnded);
    // Only TCP allowed to the PLC no more: refused by protocol.
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Udp, &[(22, 22)]));
    f.apply(&t).unwrap();
    tunnel(&f, &data, Outcome::ProtocolNotAllowed);

    // Back as it was: the flow is admitted again with its NAT port, and its
    // next packets and replies take the short path again.
    f.apply(&table()).unwrap();
    let sent = tunnel(&f, &data, Outcome::ForwardedToTarget);
    assert_same(&sent, &translated(&data, SNAT, PLC, Port::Source(fl.nat_port)));
    tunnel(&f, &data, Outcome::ForwardedToTarget);
    lan(&f, &reply, Outcome::ForwardedFromTarget);
    assert_eq!(f.flows().unwrap().len(), 1);

    // The entry now points at another device: the old translation's replies
    // are cut, and the flow's next packet goes to the new device.
    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(HMI, Protocol::Tcp, &[(22, 22)]));
    f.apply(&t).unwrap();
    lan(&f, &reply, Outcome::SessionEnded);
    let moved = tunnel(&f, &data, Outcome::ForwardedToTarget);
    let now = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    assert_eq!(now.real, Ipv4Addr::from(HMI));
    assert_same(&moved, &translated(&data, SNAT, HMI, Port::Source(now.nat_port)));

    // The peer moves to session B, which has no such proxy: refused at once,
    // and the replies of its session A flow are cut.
    let mut t = table();
    t.peers.insert(PEER_A1.into(), SESSION_B);
    f.apply(&t).unwrap();
    tunnel(&f, &data, Outcome::NotWhitelisted);
    lan(&f, &tcp(HMI, 22, SNAT, now.nat_port, 64, b"reply"), Outcome::SessionEnded);

    // Another peer leaving session A cuts the flows of every peer of the
    // session for a packet (the entries get new generations), which the
    // full path then admits again as they are.
    f.apply(&table()).unwrap();
    let data2 = tcp(PEER_A2, 40001, PROXY_PLC, 22, 64, b"established");
    tunnel(&f, &data2, Outcome::ForwardedToTarget);
    let fl2 = flow(&f, PROTO_TCP, sa(PEER_A2, 40001), PROXY_PLC, 22);
    let mut t = table();
    t.peers.remove(&PEER_A1.into());
    f.apply(&t).unwrap();
    tunnel(&f, &data, Outcome::UnknownPeer);
    let sent = tunnel(&f, &data2, Outcome::ForwardedToTarget);
    assert_same(&sent, &translated(&data2, SNAT, PLC, Port::Source(fl2.nat_port)));
    lan(&f, &tcp(PLC, 22, SNAT, fl2.nat_port, 64, b"reply"), Outcome::ForwardedFromTarget);
}

/// The programs read the clock only when a flow's stamp is from an earlier
/// tick of the kernel's jiffies (a tick is at most 10 ms: HZ >= 100). A flow
/// they stamped is still judged by its age in a later tick, and its stamp
/// moves on with its packets.
#[test]
fn flows_the_programs_stamped_age_and_are_stamped_again_in_later_ticks() {
    let mut f = forwarder();
    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    tunnel(&f, &syn, Outcome::ForwardedToTarget);
    let first = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let data = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"later");
    tunnel(&f, &data, Outcome::ForwardedToTarget);
    let second = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    assert!(second.last_seen_ns > first.last_seen_ns, "{first:?} then {second:?}");
    assert_eq!(second.nat_port, first.nat_port);

    // Idle past a millisecond's timeout: its reply is refused, although the
    // programs stamped it themselves ...
    let reply = tcp(PLC, 22, SNAT, second.nat_port, 64, b"reply");
    f.set_timeouts(FlowTimeouts { tcp_ns: 1_000_000, other_ns: 1_000_000, ..FlowTimeouts::DEFAULT }).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    lan(&f, &reply, Outcome::NoConntrack);
    // ... and its next packet starts it again, stamped anew.
    std::thread::sleep(std::time::Duration::from_millis(50));
    tunnel(&f, &data, Outcome::ForwardedToTarget);
    let third = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    assert!(third.last_seen_ns > second.last_seen_ns, "{second:?} then {third:?}");
    f.set_timeouts(FlowTimeouts::DEFAULT).unwrap();
    let third_reply = tcp(PLC, 22, SNAT, third.nat_port, 64, b"reply");
    let out = lan(&f, &third_reply, Outcome::ForwardedFromTarget);
    assert_same(&out, &translated_reply(&third_reply, PROXY_PLC, PEER_A1, Port::Destination(40000)));
}

/// The TUN program tells a full L4 checksum from a partial one by what its
/// address update did to the field. When the addresses leaving and arriving
/// sum to the same (the update changes nothing), it cannot: the port is then
/// the helper's again. Checksums from scratch either way.
#[test]
fn an_address_change_the_checksum_does_not_see_is_translated_right() {
    let mut f = forwarder();
    // Real addresses whose words make up for the peer and proxy addresses
    // that leave, against the SNAT address that arrives.
    let (plc, hmi) = ([192, 176, 0, 7], [192, 176, 0, 10]);
    assert_eq!(folded(&[PEER_A1, PROXY_PLC]), folded(&[SNAT, plc]));
    assert_eq!(folded(&[PEER_A1, PROXY_HMI]), folded(&[SNAT, hmi]));
    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(plc, Protocol::Tcp, &[(22, 22)]));
    t.targets.insert((SESSION_A, PROXY_HMI.into()), spec(hmi, Protocol::Any, &[]));
    f.apply(&t).unwrap();

    for payload in [&b""[..], b"established"] {
        let segment = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, payload);
        let out = tunnel(&f, &segment, Outcome::ForwardedToTarget);
        let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
        assert_same(&out, &translated(&segment, SNAT, plc, Port::Source(fl.nat_port)));
        let datagram = udp(PEER_A1, 50000, PROXY_HMI, 161, 64, payload);
        let out = tunnel(&f, &datagram, Outcome::ForwardedToTarget);
        let fl = flow(&f, PROTO_UDP, sa(PEER_A1, 50000), PROXY_HMI, 161);
        assert_same(&out, &translated(&datagram, SNAT, hmi, Port::Source(fl.nat_port)));
    }
}

/// A UDP checksum the translation turns into zero is sent as all ones (zero
/// means "no checksum"), both when the program updates the port itself (the
/// address update told it the checksum is a full one) and when the checksum
/// helper does (addresses that balance: the update could not tell).
#[test]
fn a_udp_checksum_that_becomes_zero_is_sent_as_all_ones() {
    let mut f = forwarder();
    let hmi = [192, 176, 0, 10];
    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_HMI.into()), spec(hmi, Protocol::Any, &[]));
    f.apply(&t).unwrap();
    let in_place = (PEER_A2, PROXY_SNMP, SNMP);
    let by_helper = (PEER_A1, PROXY_HMI, hmi);
    assert_ne!(folded(&[PEER_A2, PROXY_SNMP]), folded(&[SNAT, SNMP]));
    assert_eq!(folded(&[PEER_A1, PROXY_HMI]), folded(&[SNAT, hmi]));

    for (peer, proxy, real) in [in_place, by_helper] {
        let first = udp(peer, 50000, proxy, 161, 64, &[0; 8]);
        tunnel(&f, &first, Outcome::ForwardedToTarget);
        let fl = flow(&f, PROTO_UDP, sa(peer, 50000), proxy, 161);
        // The translated checksum of the same datagram with a zero word is
        // the word that makes the translated sum all ones, i.e. the checksum
        // zero.
        let check = &translated(&first, SNAT, real, Port::Source(fl.nat_port))[ETH + 26..ETH + 28];
        let mut payload = [0u8; 8];
        payload[..2].copy_from_slice(check);
        let datagram = udp(peer, 50000, proxy, 161, 64, &payload);
        let expected = translated(&datagram, SNAT, real, Port::Source(fl.nat_port));
        assert_eq!(&expected[ETH + 26..ETH + 28], [0xff, 0xff]);
        let out = tunnel(&f, &datagram, Outcome::ForwardedToTarget);
        assert_same(&out, &expected);
    }
}

/// Replies alone keep a flow alive: a UDP flow that only the target has
/// talked on for longer than the timeout (a stream of readings, say) is
/// still there, sweep or not, and the technician's next datagram goes out
/// from the NAT port its replies arrive at, not from a new one.
#[test]
fn a_flow_kept_alive_by_replies_alone_keeps_its_nat_port_through_the_sweep() {
    let mut f = forwarder();
    let key = FlowKey {
        protocol: PROTO_UDP,
        _pad: [0; 3],
        peer: PEER_A1,
        proxy: PROXY_SNMP,
        peer_port: 50000u16.to_be_bytes(),
        dport: 161u16.to_be_bytes(),
    };
    let candidate = |i: u32| nat_candidate(&key, i);
    // The flow took its second candidate (the first was held when it
    // started, and is free again now), and was last stamped long ago.
    let ages = ages();
    let idle = Flow {
        protocol: PROTO_UDP,
        session: SESSION_A,
        peer: sa(PEER_A1, 50000),
        proxy: PROXY_SNMP.into(),
        target_port: 161,
        real: SNMP.into(),
        snat: SNAT.into(),
        nat_port: candidate(1),
        counter: f.slot(SESSION_A, PROXY_SNMP.into()).unwrap(),
        last_seen_ns: ages.long_ago,
    };
    f.insert_flow(&idle).unwrap();
    // A reply while timeouts keep the flow alive: it stamps the flow's
    // reverse half only. Then timeouts under which the forward half's own
    // stamp is dead and the reply's is not.
    let reply = udp(SNMP, 161, SNAT, idle.nat_port, 64, b"reading");
    f.set_timeouts(FlowTimeouts {
        tcp_ns: u64::MAX / 2,
        other_ns: u64::MAX / 2,
        unanswered_ns: u64::MAX / 2,
    })
    .unwrap();
    lan(&f, &reply, Outcome::ForwardedFromTarget);
    f.set_timeouts(ages.timeouts).unwrap();
    lan(&f, &reply, Outcome::ForwardedFromTarget);
    let listed = flow(&f, PROTO_UDP, sa(PEER_A1, 50000), PROXY_SNMP, 161);
    assert!(listed.last_seen_ns > ages.long_ago, "the reply's stamp is the flow's: {listed:?}");

    assert_eq!(f.expire_flows().unwrap(), 0, "the sweep kept the flow: {:#?}", f.flows().unwrap());
    let datagram = udp(PEER_A1, 50000, PROXY_SNMP, 161, 64, b"set");
    let out = tunnel(&f, &datagram, Outcome::ForwardedToTarget);
    assert_same(&out, &translated(&datagram, SNAT, SNMP, Port::Source(idle.nat_port)));
    let fl = flow(&f, PROTO_UDP, sa(PEER_A1, 50000), PROXY_SNMP, 161);
    assert_eq!(fl.nat_port, idle.nat_port);
    lan(&f, &reply, Outcome::ForwardedFromTarget);
}

/// The NAT slot of a TCP reply from `real`:`port` to the SNAT address's
/// `nat_port`.
fn tcp_slot(real: [u8; 4], port: u16, nat_port: u16) -> u32 {
    nat_slot(PROTO_TCP, real, SNAT, port.to_be_bytes(), nat_port.to_be_bytes()).unwrap()
}

#[test]
fn a_reply_from_another_remote_that_lands_on_a_used_nat_slot_is_dropped() {
    let f = forwarder();
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    let slot = tcp_slot(PLC, 22, fl.nat_port);
    // Another address, and another port of the target, whose replies to the
    // same NAT port index the very same slot: the slot holds the whole
    // reply, and they are not it.
    let stranger =
        (100..=255u8).map(|d| [10, 20, 0, d]).find(|&r| tcp_slot(r, 22, fl.nat_port) == slot).unwrap();
    let other_port = (23..=2000u16).find(|&p| tcp_slot(PLC, p, fl.nat_port) == slot).unwrap();
    lan(&f, &tcp(stranger, 22, SNAT, fl.nat_port, 64, b""), Outcome::NoConntrack);
    lan(&f, &tcp(PLC, other_port, SNAT, fl.nat_port, 64, b""), Outcome::NoConntrack);
    // The flow's own replies still cross.
    let out = lan(&f, &tcp(PLC, 22, SNAT, fl.nat_port, 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(out[ETH + 16..ETH + 20], PEER_A1);
}

#[test]
fn a_nat_port_holds_one_flow_per_remote_bucket() {
    let mut f = forwarder();
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    let first = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    let taken = first.nat_port;
    let bucket_of = |real: [u8; 4], port: u16| tcp_slot(real, port, taken);
    // The HMI allows every port: one whose replies share the first flow's
    // bucket, and one whose replies do not.
    let same = (1..=2000u16).find(|&p| bucket_of(HMI, p) == bucket_of(PLC, 22)).unwrap();
    let other = (1..=2000u16).find(|&p| bucket_of(HMI, p) != bucket_of(PLC, 22)).unwrap();
    // A technician port that makes the NAT port the first flow holds the
    // second flow's first candidate.
    let key = |peer_port: u16, dport: u16| FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer: PEER_A2,
        proxy: PROXY_HMI,
        peer_port: peer_port.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    let colliding = |dport: u16| (1..=65535u16).find(|&p| nat_candidate(&key(p, dport), 0) == taken).unwrap();

    // Same bucket: the port is taken, the flow takes the next candidate.
    let p = colliding(same);
    let out = tunnel(&f, &tcp(PEER_A2, p, PROXY_HMI, same, 64, b""), Outcome::ForwardedToTarget);
    let got = u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]);
    assert_eq!(got, nat_candidate(&key(p, same), 1));
    // Another bucket: the same NAT port serves both flows.
    let q = colliding(other);
    let out = tunnel(&f, &tcp(PEER_A2, q, PROXY_HMI, other, 64, b""), Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), taken);

    // Every reply finds its own technician and port.
    let out = lan(&f, &tcp(PLC, 22, SNAT, taken, 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(
        (out[ETH + 16..ETH + 20].to_vec(), [out[ETH + 22], out[ETH + 23]]),
        (PEER_A1.to_vec(), 40000u16.to_be_bytes())
    );
    let out = lan(&f, &tcp(HMI, other, SNAT, taken, 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(
        (out[ETH + 16..ETH + 20].to_vec(), [out[ETH + 22], out[ETH + 23]]),
        (PEER_A2.to_vec(), q.to_be_bytes())
    );
    let out = lan(&f, &tcp(HMI, same, SNAT, got, 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(
        (out[ETH + 16..ETH + 20].to_vec(), [out[ETH + 22], out[ETH + 23]]),
        (PEER_A2.to_vec(), p.to_be_bytes())
    );
    // Not across: the HMI's reply to the first flow's port is no flow's.
    lan(&f, &tcp(HMI, same, SNAT, taken, 64, b""), Outcome::NoConntrack);
    assert_eq!(f.flows().unwrap().len(), 3);
    let _ = f.expire_flows().unwrap();
    assert_eq!(f.flows().unwrap().len(), 3, "the sweep keeps live flows");
}

#[test]
fn the_sweep_frees_nat_slots_and_their_ports_serve_new_flows() {
    let mut f = forwarder();
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    let old = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    // Idle past short timeouts: the sweep removes both halves, and frees
    // the slot, not only judges it dead.
    let ages = ages();
    f.insert_flow(&Flow { last_seen_ns: ages.long_ago, ..old }).unwrap();
    f.set_timeouts(ages.timeouts).unwrap();
    assert_eq!(f.expire_flows().unwrap(), 2);
    assert!(f.flows().unwrap().is_empty());
    // Under the default timeouts again, the old flow's stamp would be alive:
    // a new flow whose first candidate is that port gets it only because
    // the slot is free.
    f.set_timeouts(FlowTimeouts::default()).unwrap();
    let key = |peer_port: u16| FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer: PEER_A2,
        proxy: PROXY_PLC,
        peer_port: peer_port.to_be_bytes(),
        dport: 22u16.to_be_bytes(),
    };
    let p = (1..=65535u16).find(|&p| nat_candidate(&key(p), 0) == old.nat_port).unwrap();
    let out = tunnel(&f, &tcp(PEER_A2, p, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), old.nat_port);
    let out = lan(&f, &tcp(PLC, 22, SNAT, old.nat_port, 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(out[ETH + 16..ETH + 20], PEER_A2);
    // The old flow's next packet takes another port; its old one stays the
    // new flow's.
    let out = tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    assert_ne!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), old.nat_port);
    assert_eq!(f.flows().unwrap().len(), 2);
}

#[test]
fn flows_whose_keys_share_a_hint_keep_their_own_translation() {
    let f = forwarder();
    let key = |peer: [u8; 4], peer_port: u16, proxy: [u8; 4], dport: u16| FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer,
        proxy,
        peer_port: peer_port.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    let hint = flow_hint;
    let first = key(PEER_A1, 40000, PROXY_PLC, 22);
    // A flow to another target (the HMI allows every port) whose key hashes
    // to the same hint.
    let (port, dport) = (1..=65535u16)
        .flat_map(|p| (80..=90u16).map(move |d| (p, d)))
        .find(|&(p, d)| hint(&key(PEER_A2, p, PROXY_HMI, d)) == hint(&first))
        .unwrap();
    let to_plc = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    let to_hmi = tcp(PEER_A2, port, PROXY_HMI, dport, 64, b"");
    let nat_port = |out: &[u8]| u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]);
    let out = tunnel(&f, &to_plc, Outcome::ForwardedToTarget);
    let plc_port = nat_port(&out);
    let out = tunnel(&f, &to_hmi, Outcome::ForwardedToTarget);
    let hmi_port = nat_port(&out);
    // Each packet finds the other flow's slot through the hint first: the
    // slot is not its flow, so the forward map decides, and every packet
    // keeps its own target and NAT port.
    for _ in 0..3 {
        let out = tunnel(&f, &to_plc, Outcome::ForwardedToTarget);
        assert_eq!((out[ETH + 16..ETH + 20].to_vec(), nat_port(&out)), (PLC.to_vec(), plc_port));
        let out = tunnel(&f, &to_hmi, Outcome::ForwardedToTarget);
        assert_eq!((out[ETH + 16..ETH + 20].to_vec(), nat_port(&out)), (HMI.to_vec(), hmi_port));
    }
    assert_eq!(f.flows().unwrap().len(), 2);
}

/// The pseudo-header sum of a frame's IPv4 packet, folded, not complemented:
/// what the checksum field of a CHECKSUM_PARTIAL packet holds.
fn pseudo_header_sum(frame: &[u8]) -> u16 {
    let ip = &frame[ETH..];
    let l4_len = u16::from_be_bytes([ip[2], ip[3]]) as u32 - 20;
    let mut sum = ip[9] as u32 + l4_len;
    for pair in ip[12..20].chunks(2) {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn a_full_checksum_that_equals_the_pseudo_header_sum_is_translated_right() {
    let f = forwarder();
    // The programs update a full checksum in place, and leave a field that
    // equals the pseudo-header sum (a partial checksum, or a full one by
    // chance) to the kernel's helper. Two payload bytes chosen so that the
    // full checksum is that sum: the packet must come out as any other.
    for (protocol, csum_at) in [(PROTO_TCP, 16), (PROTO_UDP, 6)] {
        let build = |w: u16| match protocol {
            PROTO_TCP => tcp(PEER_A1, 40002, PROXY_PLC, 22, 64, &w.to_be_bytes()),
            _ => udp(PEER_A1, 50002, PROXY_HMI, 161, 64, &w.to_be_bytes()),
        };
        let at = ETH + 20 + csum_at;
        let segment = (0..=u16::MAX)
            .map(build)
            .find(|p| u16::from_be_bytes([p[at], p[at + 1]]) == pseudo_header_sum(p))
            .unwrap();
        assert_checksums_valid(&segment);
        let out = tunnel(&f, &segment, Outcome::ForwardedToTarget);
        let (proxy, real, port, peer_port) =
            if protocol == PROTO_TCP { (PROXY_PLC, PLC, 22, 40002) } else { (PROXY_HMI, HMI, 161, 50002) };
        let fl = flow(&f, protocol, sa(PEER_A1, peer_port), proxy, port);
        assert_same(&out, &translated(&segment, SNAT, real, Port::Source(fl.nat_port)));
        assert_checksums_valid(&out);
    }
}

/// The gateway's GW_NAT_CLAIMS map, opened by id through the TUN program
/// that uses it (this test's own forwarder: tests load one each).
fn nat_claims(f: &GatewayForwarder) -> aya::maps::HashMap<aya::maps::MapData, u32, u8> {
    let ids = f.tunnel_program().unwrap().info().unwrap().map_ids().unwrap().unwrap();
    let data = ids
        .into_iter()
        .map(|id| aya::maps::MapData::from_id(id).unwrap())
        .find(|m| m.info().unwrap().name_as_str() == Some("GW_NAT_CLAIMS"))
        .expect("the TUN program uses GW_NAT_CLAIMS");
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap()
}

/// A flow re-admitted after a whitelist change while another writer (a
/// new flow probing through its NAT port on another CPU, or the sweep
/// judging the slot) holds its slot's claim for a moment: the flow must
/// keep its NAT port (the target would see a connection from a new port,
/// and a TCP connection breaks), or at worst lose this one packet. The
/// claim is held here from userspace, as a concurrent writer would hold it.
#[test]
fn a_flow_readmitted_while_its_slot_is_claimed_keeps_its_nat_port() {
    let mut f = forwarder();
    let data = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"established");
    tunnel(&f, &data, Outcome::ForwardedToTarget);
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    let slot = tcp_slot(PLC, 22, fl.nat_port);

    // A widening: new generations, the same path; the flow's next packet
    // takes the full path and is re-admitted under its slot's claim.
    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Tcp, &[(22, 22), (502, 503)]));
    f.apply(&t).unwrap();

    let mut claims = nat_claims(&f);
    claims.insert(slot, 0, 1 /* BPF_NOEXIST */).unwrap();
    let before = f.counters().unwrap();
    let run = test_run::run_tc(f.tunnel_program().unwrap(), &data).unwrap();
    let delta = f.counters().unwrap().since(&before);
    claims.remove(&slot).unwrap();
    if run.action == TcAction::Ok {
        let sent = u16::from_be_bytes([run.packet[ETH + 20], run.packet[ETH + 21]]);
        assert_eq!(sent, fl.nat_port, "the established flow was moved to another NAT port");
    } else {
        let counted: Vec<_> = delta.iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counted, vec![(Outcome::NatSlotBusy, 1)]);
    }
    // Whatever happened to that packet, the flow still has one NAT port.
    let sent = tunnel(&f, &data, Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([sent[ETH + 20], sent[ETH + 21]]), fl.nat_port);
}

/// One session's technician opens a few thousand TCP connections (SYNs,
/// each from another source port, the ports picked with the public
/// flow_hash so that every NAT port of one bucket is some flow's first
/// candidate) to one port of its own, whitelisted device. Every flow to a
/// remote of that bucket shares those NAT ports: another session's
/// technician's first connection to its own device finds them all taken.
/// Flows that never saw a reply give their ports up once idle past the
/// unanswered timeout (10 s by default, a millisecond here), not the TCP
/// idle timeout (2 hours). (A flood the device answers is not covered:
/// see docs/gateway.md.)
#[test]
fn one_session_cannot_take_the_nat_ports_of_another_sessions_devices() {
    let mut f = forwarder();
    let bucket = |real: [u8; 4], port: u16| {
        tcp_slot(real, port, NAT_PORT_MIN) / (NAT_PORT_MAX - NAT_PORT_MIN + 1) as u32
    };
    let victim_bucket = bucket(PLC, 22);
    let dport = (1..=65535u16).find(|&p| bucket(B_TARGET, p) == victim_bucket).unwrap();
    let key = |peer_port: u16| FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer: PEER_B,
        proxy: PROXY_B,
        peer_port: peer_port.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    let mut first_candidates = std::collections::BTreeMap::new();
    for p in 1..=65535u16 {
        first_candidates.entry(nat_candidate(&key(p), 0)).or_insert(p);
    }
    let mut admitted = 0;
    for &p in first_candidates.values() {
        let run =
            test_run::run_tc(f.tunnel_program().unwrap(), &tcp(PEER_B, p, PROXY_B, dport, 64, b"")).unwrap();
        admitted += usize::from(run.action == TcAction::Ok);
    }
    assert!(admitted > 4000, "{admitted} flood flows admitted");
    // Session A's technician, to another device: within the unanswered
    // timeout, the flood's flows still hold the ports.
    let victim = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    tunnel(&f, &victim, Outcome::NatPortsExhausted);
    f.set_timeouts(FlowTimeouts { unanswered_ns: 1_000_000, ..FlowTimeouts::DEFAULT }).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    tunnel(&f, &victim, Outcome::ForwardedToTarget);
    // The flood flow that gave its port up lost it; the victim keeps it.
    let fl = flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22);
    tunnel(&f, &tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"data"), Outcome::ForwardedToTarget);
    assert_eq!(flow(&f, PROTO_TCP, sa(PEER_A1, 40000), PROXY_PLC, 22).nat_port, fl.nat_port);
}

/// A flow that answered keeps its port past the unanswered timeout: only
/// flows whose target never replied are taken over early.
#[test]
fn an_answered_flow_is_not_taken_over_before_its_idle_timeout() {
    let mut f = forwarder();
    let key = |peer: [u8; 4], peer_port: u16| FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer,
        proxy: PROXY_PLC,
        peer_port: peer_port.to_be_bytes(),
        dport: 22u16.to_be_bytes(),
    };
    let newcomer = key(PEER_A2, 40001);
    let counter = f.slot(SESSION_A, PROXY_PLC.into()).unwrap();
    let now = monotonic_ns();
    // Every candidate of the newcomer held by a live flow that never saw a
    // reply, but one, which did.
    for i in 0..NAT_PORT_TRIES {
        let blocker = Flow {
            protocol: PROTO_TCP,
            session: SESSION_A,
            peer: sa([100, 96, 1, 100 + i as u8], 1),
            proxy: PROXY_PLC.into(),
            target_port: 22,
            real: PLC.into(),
            snat: SNAT.into(),
            nat_port: nat_candidate(&newcomer, i),
            counter,
            last_seen_ns: now,
        };
        f.insert_flow(&blocker).unwrap();
    }
    let answered = nat_candidate(&newcomer, 0);
    lan(&f, &tcp(PLC, 22, SNAT, answered, 64, b""), Outcome::ForwardedFromTarget);
    f.set_timeouts(FlowTimeouts { unanswered_ns: 1_000_000, ..FlowTimeouts::DEFAULT }).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = tunnel(&f, &tcp(PEER_A2, 40001, PROXY_PLC, 22, 64, b""), Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), nat_candidate(&newcomer, 1));
    // The answered flow's replies still find their technician.
    let out = lan(&f, &tcp(PLC, 22, SNAT, answered, 64, b""), Outcome::ForwardedFromTarget);
    assert_eq!(out[ETH + 16..ETH + 20], [100, 96, 1, 100]);
}

/// Flows cut by their whitelist entry's removal give their NAT ports to new
/// flows that find every other candidate taken, without waiting for their
/// idle timeout.
#[test]
fn nat_ports_of_flows_cut_by_a_removed_entry_serve_new_flows() {
    let mut f = forwarder();
    // Session B also reaches the PLC, through an entry that goes away.
    const PROXY_B_PLC: [u8; 4] = [100, 96, 2, 11];
    let mut t = table();
    t.targets.insert((SESSION_B, PROXY_B_PLC.into()), spec(PLC, Protocol::Tcp, &[(22, 22)]));
    f.apply(&t).unwrap();
    let newcomer = FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer: PEER_A1,
        proxy: PROXY_PLC,
        peer_port: 40000u16.to_be_bytes(),
        dport: 22u16.to_be_bytes(),
    };
    let counter = f.slot(SESSION_B, PROXY_B_PLC.into()).unwrap();
    for i in 0..NAT_PORT_TRIES {
        let blocker = Flow {
            protocol: PROTO_TCP,
            session: SESSION_B,
            peer: sa(PEER_B, 1000 + i as u16),
            proxy: PROXY_B_PLC.into(),
            target_port: 22,
            real: PLC.into(),
            snat: SNAT.into(),
            nat_port: nat_candidate(&newcomer, i),
            counter,
            last_seen_ns: monotonic_ns(),
        };
        f.insert_flow(&blocker).unwrap();
        // Answered: only the cut can free them.
        lan(&f, &tcp(PLC, 22, SNAT, blocker.nat_port, 64, b""), Outcome::ForwardedFromTarget);
    }
    let syn = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"");
    tunnel(&f, &syn, Outcome::NatPortsExhausted);
    f.apply(&table()).unwrap();
    let out = tunnel(&f, &syn, Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), nat_candidate(&newcomer, 0));
}

/// The same, for a flow whose NAT port is not its first candidate, and
/// whose first candidate is free again by then: re-admitted while its own
/// slot's claim is busy, it must not take the free port before its own.
#[test]
fn a_flow_readmitted_while_its_slot_is_claimed_does_not_move_to_an_earlier_free_port() {
    let mut f = forwarder();
    let key = FlowKey {
        protocol: PROTO_TCP,
        _pad: [0; 3],
        peer: PEER_A1,
        proxy: PROXY_PLC,
        peer_port: 40000u16.to_be_bytes(),
        dport: 22u16.to_be_bytes(),
    };
    let ages = ages();
    f.set_timeouts(ages.timeouts).unwrap();
    let blocker = Flow {
        protocol: PROTO_TCP,
        session: SESSION_A,
        peer: sa(PEER_A2, 1),
        proxy: PROXY_PLC.into(),
        target_port: 22,
        real: PLC.into(),
        snat: SNAT.into(),
        nat_port: nat_candidate(&key, 0),
        counter: f.slot(SESSION_A, PROXY_PLC.into()).unwrap(),
        last_seen_ns: monotonic_ns(),
    };
    f.insert_flow(&blocker).unwrap();
    let data = tcp(PEER_A1, 40000, PROXY_PLC, 22, 64, b"established");
    let out = tunnel(&f, &data, Outcome::ForwardedToTarget);
    let own = nat_candidate(&key, 1);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), own);
    // The first candidate's flow has expired: its port is free for a new
    // flow, not for this one.
    f.insert_flow(&Flow { last_seen_ns: ages.long_ago, ..blocker }).unwrap();

    let mut t = table();
    t.targets.insert((SESSION_A, PROXY_PLC.into()), spec(PLC, Protocol::Tcp, &[(22, 22), (502, 503)]));
    f.apply(&t).unwrap();
    let slot = tcp_slot(PLC, 22, own);
    let mut claims = nat_claims(&f);
    claims.insert(slot, 0, 1 /* BPF_NOEXIST */).unwrap();
    tunnel(&f, &data, Outcome::NatSlotBusy);
    claims.remove(&slot).unwrap();
    let out = tunnel(&f, &data, Outcome::ForwardedToTarget);
    assert_eq!(u16::from_be_bytes([out[ETH + 20], out[ETH + 21]]), own);
}
