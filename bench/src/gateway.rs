//! The gateway's whitelist/NAT programs.
//!
//! BPF_PROG_RUN rows: the kernel's time per packet of `gateway_lan_in` on a
//! reply of an established flow and of `gateway_tunnel_in` on a packet of an
//! established flow, with 10 and with 10,000 whitelist entries, against the
//! empty XDP_PASS program on the same frame.
//!
//! Unlike the relay's frames, a translated packet is never a fixed point of
//! the program (proxy and real address differ by construction, and the TTL
//! drops), and BPF_PROG_RUN's `repeat` runs on the same buffer. So every run
//! is its own BPF_PROG_RUN call with repeat 1 on a fresh copy of the frame,
//! and the kernel's figure per call includes one clock read; the empty
//! program is measured the same way, so the difference is the programs' own
//! cost.
//!
//! A `traffic` part (iperf3 through a full gateway) is to be appended to
//! [`run`].

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, ensure};
use ferry_ebpf::{
    PASS_PROGRAM,
    common::gateway::Outcome,
    gateway::{Capacity, ForwardingTable, GatewayForwarder, Protocol, TargetSpec},
    load_object, load_xdp,
    test_run::{self, TcAction, Verdict},
};
use ferry_lab::packet;

use crate::{
    guard::median_ns,
    report::{Better, Row},
};

/// BPF_PROG_RUN calls per measurement round (each with repeat 1).
const CALLS: u32 = 50_000;
const SESSION: u64 = 1;
const PEER: [u8; 4] = [100, 96, 0, 2];
const PROXY: [u8; 4] = [100, 96, 0, 10];
const REAL: [u8; 4] = [10, 20, 0, 5];
const SNAT: [u8; 4] = [10, 20, 0, 1];
const PEER_PORT: u16 = 40_000;
const TARGET_PORT: u16 = 502;

/// BPF_PROG_RUN first (no traffic), then iperf3 through the whole gateway
/// against wireguard-go + nftables (`gateway_traffic`).
pub fn run() -> Result<Vec<Row>> {
    let mut rows = prog_run_rows()?;
    rows.extend(crate::gateway_traffic::rows()?);
    Ok(rows)
}

/// ns per packet with BPF_PROG_RUN.
pub fn prog_run_rows() -> Result<Vec<Row>> {
    let mut object = load_object()?;
    let empty = load_xdp(&mut object, PASS_PROGRAM)?;
    let mut rows = Vec::new();
    for (entries, label) in [(10u32, "10"), (10_000, "10k")] {
        let f = loaded(entries)?;
        // A 1400-byte Modbus/TCP-sized segment both ways.
        let request = packet::tcp4(PEER, PEER_PORT, PROXY, TARGET_PORT, &[0x42; 1346]);
        let run = test_run::run_tc(f.tunnel_program()?, &request)?;
        ensure!(run.action == TcAction::Redirect, "the measured packet was not forwarded: {:?}", run.action);
        let nat_port = u16::from_be_bytes([run.packet[34], run.packet[35]]);
        let reply = packet::tcp4(REAL, TARGET_PORT, SNAT, nat_port, &[0x24; 1346]);
        let run = test_run::run(f.lan_program()?, &reply)?;
        ensure!(run.verdict == Verdict::Pass, "the reply was not translated: {:?}", run.verdict);

        let before = f.counters()?;
        let tunnel_ns = median_ns(|| per_call(|| test_run::time_tc(f.tunnel_program()?, &request, 1)))?;
        let lan_ns = median_ns(|| per_call(|| test_run::time(f.lan_program()?, &reply, 1)))?;
        let delta = f.counters()?.since(&before);
        let calls = CALLS as u64 * crate::guard::ROUNDS as u64;
        ensure!(
            delta.get(Outcome::ForwardedToTarget) == calls
                && delta.get(Outcome::ForwardedFromTarget) == calls,
            "not every timed run was translated: {delta:?}"
        );
        let empty_request = median_ns(|| per_call(|| test_run::time(empty, &request, 1)))?;
        let empty_reply = median_ns(|| per_call(|| test_run::time(empty, &reply, 1)))?;
        for (metric, ns, empty_ns) in [
            (format!("lan_in_reply_{label}_ns"), lan_ns, empty_reply),
            (format!("tunnel_in_flow_{label}_ns"), tunnel_ns, empty_request),
        ] {
            rows.push(Row::new(
                "gateway",
                &metric,
                "ns/packet",
                ns,
                empty_ns,
                "empty XDP_PASS program (repeat 1 per call)",
                Better::Lower,
            ));
        }
    }
    Ok(rows)
}

/// The mean of the kernel's figure over [`CALLS`] calls of `measure`.
fn per_call(
    mut measure: impl FnMut() -> Result<Duration, ferry_ebpf::Error>,
) -> Result<Duration, ferry_ebpf::Error> {
    let mut total = Duration::ZERO;
    for _ in 0..CALLS {
        total += measure()?;
    }
    Ok(total / CALLS)
}

/// The programs loaded for BPF_PROG_RUN (redirecting, as attached) with
/// `entries` whitelist entries, one of which is the measured one.
fn loaded(entries: u32) -> Result<GatewayForwarder> {
    let mut f =
        GatewayForwarder::load_for_test((Ipv4Addr::new(100, 96, 0, 0), 12), 1, true, Capacity::default())
            .context("loading the gateway programs (run as root)")?;
    let mut table = ForwardingTable { peers: BTreeMap::new(), targets: BTreeMap::new() };
    let spec = |real: [u8; 4]| TargetSpec {
        real: real.into(),
        snat: SNAT.into(),
        protocol: Protocol::Tcp,
        // A realistic entry: a few services, the measured port last.
        ports: vec![(22, 22), (80, 80), (443, 443), (TARGET_PORT, TARGET_PORT)],
    };
    table.peers.insert(PEER.into(), SESSION);
    table.targets.insert((SESSION, PROXY.into()), spec(REAL));
    // The others spread over sessions of 100 targets each, with a peer each.
    for i in 1..entries {
        let session = SESSION + 1 + (i / 100) as u64;
        let [_, _, b, c] = (i + 0x1_0000).to_be_bytes();
        let proxy = Ipv4Addr::new(100, 97, b, c);
        table.targets.insert((session, proxy), spec([10, 21, b, c]));
        table.peers.insert(Ipv4Addr::new(100, 98, (session >> 8) as u8, session as u8), session);
    }
    ensure!(table.targets.len() == entries as usize, "built {} entries", table.targets.len());
    f.apply(&table)?;
    Ok(f)
}
