//! Properties of the gateway programs and their loader, in the kernel:
//! any sequence of forwarding tables leaves the maps equal to the last one
//! applied (invalid or oversized ones change nothing), counter slots stay
//! unique, no packet, however mangled, is forwarded unless the table
//! whitelists it, no ICMP error is translated unless it quotes a live
//! flow exactly, and every TCP segment and UDP datagram the TUN program
//! forwards is the one an independent translation makes, whether or not
//! its address change shows in the checksum. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod gateway_support;

use std::{cell::RefCell, collections::BTreeSet, net::Ipv4Addr};

use etherparse::{
    Icmpv4Type,
    icmpv4::{DestUnreachableHeader, ParameterProblemHeader, TimeExceededCode},
};
use ferry_ebpf::{
    common::gateway::{Outcome, PROTO_TCP, PROTO_UDP},
    gateway::{Capacity, ForwardingTable, GatewayForwarder, Protocol, TargetSpec},
    test_run::{self, TcAction, Verdict},
};
use gateway_support::{
    ETH, HMI, PEER_A1, PEER_A2, PROXY_HMI, PROXY_SNMP, Port, SESSION_A, SNAT, SNMP, TUNNEL_NET,
    assert_checksums_valid, forwarder, icmp_error, spec, table, tcp, translated, udp,
};
use proptest::prelude::*;

const CAPACITY: Capacity = Capacity { peers: 8, targets: 8, flows: 1024 };

thread_local! {
    static SMALL: RefCell<GatewayForwarder> = RefCell::new(
        GatewayForwarder::load_for_test(TUNNEL_NET, 1, false, CAPACITY)
            .expect("loading the gateway programs (run as root)"),
    );
    static FULL: RefCell<GatewayForwarder> = RefCell::new(forwarder());
    /// [`forwarder`] with one UDP flow, PEER_A2:50000 -> PROXY_SNMP:161: the
    /// technician's packet that keeps it alive, and the packet the gateway
    /// sent for it.
    static ONE_FLOW: (GatewayForwarder, Vec<u8>, Vec<u8>) = {
        let f = forwarder();
        let get = udp(PEER_A2, 50000, PROXY_SNMP, 161, 64, b"snmp get");
        let run = test_run::run_tc(f.tunnel_program().unwrap(), &get).unwrap();
        assert_eq!(run.action, TcAction::Ok);
        let nat_port = f.flows().unwrap()[0].nat_port;
        let sent = translated(&get, SNAT, SNMP, Port::Source(nat_port));
        (f, get, sent)
    };
    /// [`forwarder`] with two entries that admit anything for PEER_A1:
    /// PROXY_HMI to BALANCED, an address change the L4 checksum does not
    /// see, and PROXY_SEEN to HMI, one it does.
    static CHECKSUMS: GatewayForwarder = {
        let words = |a: [u8; 4]| u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]));
        assert_eq!((words(PEER_A1) + words(PROXY_HMI)) % 0xffff, (words(SNAT) + words(BALANCED)) % 0xffff);
        let mut f = forwarder();
        let mut t = table();
        t.targets.insert((SESSION_A, PROXY_HMI.into()), spec(BALANCED, Protocol::Any, &[]));
        t.targets.insert((SESSION_A, PROXY_SEEN.into()), spec(HMI, Protocol::Any, &[]));
        f.apply(&t).unwrap();
        f
    };
}

/// The words of [PEER_A1, PROXY_HMI] and [SNAT, BALANCED] have the same one's
/// complement sum.
const BALANCED: [u8; 4] = [192, 176, 0, 10];
const PROXY_SEEN: [u8; 4] = [100, 96, 1, 14];

/// Whether `frame` is an ICMP error to the gateway that quotes `sent`'s
/// flow exactly: the only ones the LAN program may translate. `sent` is the
/// packet the gateway sent for the flow.
fn quotes_flow(frame: &[u8], sent: &[u8]) -> bool {
    let ip = &frame[ETH..];
    let s = &sent[ETH..];
    ip.len() >= 20 + 8 + 28
        && frame[12..14] == [8, 0]
        && ip[0] == 0x45
        && u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0
        && u16::from_be_bytes([ip[2], ip[3]]) >= 56
        && ip[9] == 1
        && [3, 11, 12].contains(&ip[20])
        && ip[16..20] == SNAT
        && ip[28] == 0x45
        && u16::from_be_bytes([ip[34], ip[35]]) & 0x1fff == 0
        // Protocol, addresses and ports of the quote.
        && ip[28 + 9] == s[9]
        && ip[28 + 12..28 + 20] == s[12..20]
        && ip[48..52] == s[20..24]
}

fn icmp_error_kind() -> impl Strategy<Value = Icmpv4Type> {
    prop_oneof![
        (0u8..16, any::<u16>()).prop_map(|(code, mtu)| Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::from_values(code, mtu).unwrap()
        )),
        Just(Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)),
        Just(Icmpv4Type::TimeExceeded(TimeExceededCode::FragmentReassemblyTimeExceeded)),
        any::<u8>()
            .prop_map(|p| Icmpv4Type::ParameterProblem(ParameterProblemHeader::PointerIndicatesError(p))),
    ]
}

fn peer_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 96, i / 4, i % 4 + 2)
}

fn proxy_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 96, i / 4, i % 4 + 10)
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Any), Just(Protocol::Icmp), Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn target_spec() -> impl Strategy<Value = TargetSpec> {
    (0u8..12, any::<bool>(), protocol(), prop::collection::vec((1u16..60000, 0u16..5000), 0..=4), 0u8..20)
        .prop_map(|(real, other_snat, protocol, ranges, invalid)| {
            let mut ports: Vec<(u16, u16)> =
                ranges.into_iter().map(|(first, len)| (first, first.saturating_add(len))).collect();
            if protocol == Protocol::Icmp {
                ports.clear();
            }
            // Now and then a table the loader must refuse.
            match invalid {
                0 => ports = vec![(1, 2); 17],
                1 => ports = vec![(9, 8)],
                _ => {}
            }
            TargetSpec {
                real: Ipv4Addr::new(10, 20, 0, real + 2),
                snat: if other_snat { Ipv4Addr::new(10, 20, 0, 250) } else { Ipv4Addr::new(10, 20, 0, 1) },
                protocol,
                ports,
            }
        })
}

fn forwarding_table() -> impl Strategy<Value = ForwardingTable> {
    (
        prop::collection::btree_map(0u8..12, 1u64..5, 0..=10),
        prop::collection::btree_map((1u64..5, 0u8..12), target_spec(), 0..=10),
    )
        .prop_map(|(peers, targets)| ForwardingTable {
            peers: peers.into_iter().map(|(i, s)| (peer_addr(i), s)).collect(),
            targets: targets.into_iter().map(|((s, i), spec)| ((s, proxy_addr(i)), spec)).collect(),
        })
}

/// Whether the TUN program may forward `frame` under `table`: IPv4, no
/// fragment, TTL above 1, a peer of a session to one of its proxies, with a
/// protocol and port the entry allows (ICMP: an echo request).
fn whitelisted(table: &ForwardingTable, frame: &[u8]) -> bool {
    let ip = &frame[ETH..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return false;
    }
    let header_len = (ip[0] & 0x0f) as usize * 4;
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 || ip[8] <= 1 {
        return false;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let Some(&session) = table.peers.get(&src) else { return false };
    let Some(spec) = table.targets.get(&(session, dst)) else { return false };
    let protocol = ip[9];
    if spec.protocol != Protocol::Any && spec.protocol.number() != protocol {
        return false;
    }
    let l4 = &ip[header_len.min(ip.len())..];
    match protocol {
        6 | 17 if l4.len() >= 4 => {
            let port = u16::from_be_bytes([l4[2], l4[3]]);
            spec.ports.is_empty() || spec.ports.iter().any(|&(a, b)| (a..=b).contains(&port))
        }
        1 => l4.len() >= 8 && l4[0] == 8 && l4[1] == 0,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn maps_equal_the_last_table_applied(tables in prop::collection::vec(forwarding_table(), 1..6)) {
        SMALL.with(|f| {
            let mut f = f.borrow_mut();
            for table in &tables {
                let before = f.applied().clone();
                let result = f.apply(table);
                let expected = if result.is_ok() { table } else { &before };
                prop_assert_eq!(f.applied(), expected, "{:?}", result);
                let (kernel, slots) = f.read_back().unwrap();
                prop_assert_eq!(&kernel, expected);
                let unique: BTreeSet<u32> = slots.values().copied().collect();
                prop_assert_eq!(unique.len(), slots.len(), "counter slots are shared: {:?}", slots);
                prop_assert!(slots.values().all(|&s| s < CAPACITY.targets));
                for (key, slot) in &slots {
                    prop_assert_eq!(f.slot(key.0, key.1), Some(*slot));
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn mangled_packets_are_never_forwarded_unless_whitelisted(
        kind in 0u8..4,
        src in prop_oneof![Just([100, 96, 1, 2]), Just([100, 96, 2, 2]), any::<[u8; 4]>()],
        dst in prop_oneof![Just([100, 96, 1, 10]), Just([100, 96, 1, 11]), Just([100, 96, 1, 12]),
                           Just([100, 96, 1, 13]), Just([100, 96, 2, 10]), any::<[u8; 4]>()],
        sport in any::<u16>(),
        dport in prop_oneof![Just(22u16), Just(161), Just(502), any::<u16>()],
        ttl in any::<u8>(),
        flips in prop::collection::vec((0usize..64, any::<u8>()), 0..4),
        cut in 0usize..80,
    ) {
        let mut frame = match kind {
            0 => tcp(src, sport, dst, dport, ttl, b"payload"),
            1 => udp(src, sport, dst, dport, ttl, b"payload"),
            2 => gateway_support::ping(src, dst, sport, ttl),
            _ => gateway_support::pong(src, dst, sport, ttl),
        };
        for (at, value) in flips {
            let at = ETH + at % (frame.len() - ETH);
            frame[at] = value;
        }
        // BPF_PROG_RUN refuses to build an IPv4 skb shorter than an IPv4
        // header (random_bytes_never_crash_either_program covers short ones
        // under other ethertypes).
        let keep = frame.len().saturating_sub(cut).max(ETH + 20);
        frame.truncate(keep);
        FULL.with(|f| {
            let f = f.borrow();
            let run = test_run::run_tc(f.tunnel_program().unwrap(), &frame).unwrap();
            prop_assert!(matches!(run.action, TcAction::Ok | TcAction::Shot), "{:?}", run.action);
            if run.action == TcAction::Ok {
                prop_assert!(whitelisted(&table(), &frame), "forwarded {:02x?}", frame);
            }
            let run = test_run::run(f.lan_program().unwrap(), &frame).unwrap();
            prop_assert!(matches!(run.verdict, Verdict::Pass | Verdict::Drop), "{:?}", run.verdict);
            Ok(())
        })?;
    }

    #[test]
    fn mangled_icmp_errors_are_translated_only_for_the_live_flow_they_quote(
        from in prop_oneof![Just(SNMP), Just([10, 20, 0, 254]), any::<[u8; 4]>()],
        to in prop_oneof![3 => Just(SNAT), 1 => any::<[u8; 4]>()],
        kind in icmp_error_kind(),
        quote in prop_oneof![Just(28usize), Just(36), 20usize..=36],
        flips in prop::collection::vec((0usize..64, any::<u8>()), 0..3),
        cut in prop_oneof![Just(0usize), 0usize..40],
    ) {
        ONE_FLOW.with(|(f, get, sent)| {
            // The flow is live for every case, however long the run takes.
            let run = test_run::run_tc(f.tunnel_program().unwrap(), get).unwrap();
            prop_assert_eq!(run.action, TcAction::Ok);
            let mut frame = icmp_error(from, to, kind, sent, quote);
            for (at, value) in flips {
                let at = ETH + at % (frame.len() - ETH);
                frame[at] = value;
            }
            // See mangled_packets_are_never_forwarded_unless_whitelisted.
            let keep = frame.len().saturating_sub(cut).max(ETH + 20);
            frame.truncate(keep);
            let before = f.counters().unwrap();
            let run = test_run::run(f.lan_program().unwrap(), &frame).unwrap();
            let delta = f.counters().unwrap().since(&before);
            prop_assert!(matches!(run.verdict, Verdict::Pass | Verdict::Drop), "{:?}", run.verdict);
            if delta.get(Outcome::ForwardedIcmpError) > 0 {
                prop_assert!(quotes_flow(&frame, sent), "translated {:02x?}", frame);
                // Toward the technician, from the proxy, about its own packet.
                let out = &run.packet[ETH..];
                prop_assert_eq!(&out[12..20], &[PROXY_SNMP, PEER_A2].concat()[..]);
                prop_assert_eq!(&out[28 + 12..28 + 22], &[&PEER_A2[..], &PROXY_SNMP, &50000u16.to_be_bytes()].concat()[..]);
            } else {
                // And every error that does quote it is translated.
                prop_assert!(!quotes_flow(&frame, sent), "not translated {:02x?}", frame);
            }
            Ok(())
        })?;
    }

    #[test]
    fn random_bytes_never_crash_either_program(bytes in prop::collection::vec(any::<u8>(), ETH + 1..200)) {
        // See above: BPF_PROG_RUN itself refuses short IPv4 skbs.
        prop_assume!(bytes[12..14] != [8, 0] || bytes.len() >= ETH + 20);
        FULL.with(|f| {
            let f = f.borrow();
            let run = test_run::run_tc(f.tunnel_program().unwrap(), &bytes).unwrap();
            if run.action == TcAction::Ok {
                prop_assert!(whitelisted(&table(), &bytes));
            }
            let run = test_run::run(f.lan_program().unwrap(), &bytes).unwrap();
            prop_assert!(matches!(run.verdict, Verdict::Pass | Verdict::Drop));
            Ok(())
        })?;
    }

    #[test]
    fn tcp_and_udp_are_translated_as_an_independent_translation_does(
        is_tcp in any::<bool>(),
        balanced in any::<bool>(),
        sport in any::<u16>(),
        dport in any::<u16>(),
        ttl in 2u8..=255,
        payload in prop::collection::vec(any::<u8>(), 0..64),
        no_udp_checksum in prop::bool::weighted(0.1),
    ) {
        let (proxy, real) = if balanced { (PROXY_HMI, BALANCED) } else { (PROXY_SEEN, HMI) };
        let mut frame = if is_tcp {
            tcp(PEER_A1, sport, proxy, dport, ttl, &payload)
        } else {
            udp(PEER_A1, sport, proxy, dport, ttl, &payload)
        };
        if !is_tcp && no_udp_checksum {
            frame[ETH + 26..ETH + 28].copy_from_slice(&[0, 0]);
        }
        CHECKSUMS.with(|f| {
            let run = test_run::run_tc(f.tunnel_program().unwrap(), &frame).unwrap();
            prop_assert_eq!(run.action, TcAction::Ok);
            let protocol = if is_tcp { PROTO_TCP } else { PROTO_UDP };
            let flow = f
                .flows()
                .unwrap()
                .into_iter()
                .find(|fl| {
                    fl.protocol == protocol
                        && fl.peer.port() == sport
                        && fl.proxy == Ipv4Addr::from(proxy)
                        && fl.target_port == dport
                })
                .expect("the flow the packet started or took");
            let expected = translated(&frame, SNAT, real, Port::Source(flow.nat_port));
            prop_assert_eq!(&run.packet, &expected);
            assert_checksums_valid(&run.packet);
            // The flow's next packets take the established flow's fast
            // path (its hint names its slot now): translated the same.
            for _ in 0..2 {
                let run = test_run::run_tc(f.tunnel_program().unwrap(), &frame).unwrap();
                prop_assert_eq!(run.action, TcAction::Ok);
                prop_assert_eq!(&run.packet, &expected);
            }
            Ok(())
        })?;
    }
}
