//! The gateway's whitelist/NAT programs.
//!
//! BPF_PROG_RUN rows: the kernel's time per packet of `gateway_lan_in` on a
//! reply of an established flow and of `gateway_tunnel_in` on a packet of an
//! established flow, with 10 and with 10,000 whitelist entries, each against
//! an empty program of its own type: BPF_PROG_RUN of the TUN program (TC)
//! builds an skb, which an XDP run does not, so an empty TC program is the
//! TUN program's baseline and an empty XDP program the LAN program's.
//!
//! A translated packet is not a fixed point of the program (proxy and real
//! address differ by construction, and the TTL drops), while BPF_PROG_RUN's
//! `repeat` runs on the same buffer. The benchmark variants
//! (`bench_gateway_*`, see gateway-ebpf's `bench.rs`) run the real programs'
//! code between saving the frame's first 64 bytes and writing them back, so
//! every run sees the same packet and [`REPEAT`] runs fit in one call; the
//! kernel's figure is then the mean over those runs, without the syscall and
//! with the clock read spread over all of them. Their baselines are the
//! `bench_*_restore` programs, which do only the saving and writing back on
//! top of an empty program of the same type: the difference is the real
//! programs' own time. Rows `*_restore_ns` show what the saving and writing
//! back cost above the plain empty programs, and `*_overhead_ns` rows set the
//! program time against the goal.

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};
use ferry_ebpf::{
    PASS_PROGRAM, TC_PASS_PROGRAM, TC_RESTORE_PROGRAM, XDP_RESTORE_PROGRAM,
    common::gateway::Outcome,
    gateway::{Capacity, ForwardingTable, GatewayForwarder, Protocol, TargetSpec},
    load_object, load_tc, load_xdp,
    test_run::{self, TcAction, Verdict},
};
use ferry_lab::packet;

use crate::{
    guard::{ROUNDS, median_ns},
    report::{Better, Row},
};

/// Runs per BPF_PROG_RUN call.
const REPEAT: u32 = 1_000_000;
/// The goal: at most this many ns above the empty program.
const GOAL_OVERHEAD_NS: f64 = 30.0;
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

/// The empty programs and the save-and-restore programs, loaded.
struct Baselines {
    object: Ebpf,
}

impl Baselines {
    fn load() -> Result<Self> {
        let mut object = load_object()?;
        load_xdp(&mut object, PASS_PROGRAM)?;
        load_xdp(&mut object, XDP_RESTORE_PROGRAM)?;
        load_tc(&mut object, TC_PASS_PROGRAM)?;
        load_tc(&mut object, TC_RESTORE_PROGRAM)?;
        Ok(Baselines { object })
    }

    fn xdp(&self, name: &str) -> Result<&Xdp> {
        Ok(self.object.program(name).context("missing program")?.try_into()?)
    }

    fn tc(&self, name: &str) -> Result<&SchedClassifier> {
        Ok(self.object.program(name).context("missing program")?.try_into()?)
    }
}

/// ns per packet with BPF_PROG_RUN.
pub fn prog_run_rows() -> Result<Vec<Row>> {
    let base = Baselines::load()?;
    let (empty_xdp, restore_xdp) = (base.xdp(PASS_PROGRAM)?, base.xdp(XDP_RESTORE_PROGRAM)?);
    let (empty_tc, restore_tc) = (base.tc(TC_PASS_PROGRAM)?, base.tc(TC_RESTORE_PROGRAM)?);
    let mut rows = Vec::new();
    let mut restore_rows = None;
    for (entries, label) in [(10u32, "10"), (10_000, "10k")] {
        let mut f = loaded(entries)?;
        f.load_bench_variants()?;
        // A 1400-byte Modbus/TCP-sized segment both ways.
        let request = packet::tcp4(PEER, PEER_PORT, PROXY, TARGET_PORT, &[0x42; 1346]);
        let run = test_run::run_tc(f.tunnel_program()?, &request)?;
        ensure!(run.action == TcAction::Redirect, "the measured packet was not forwarded: {:?}", run.action);
        let nat_port = u16::from_be_bytes([run.packet[34], run.packet[35]]);
        let reply = packet::tcp4(REAL, TARGET_PORT, SNAT, nat_port, &[0x24; 1346]);
        let run = test_run::run(f.lan_program()?, &reply)?;
        ensure!(run.verdict == Verdict::Pass, "the reply was not translated: {:?}", run.verdict);

        // The variants translate like the real programs and leave the packet
        // as they found it.
        let run = test_run::run_tc(f.bench_tunnel_program()?, &request)?;
        ensure!(run.action == TcAction::Redirect, "the bench variant did not forward: {:?}", run.action);
        ensure!(run.packet == request, "the TUN bench variant changed the packet");
        let run = test_run::run(f.bench_lan_program()?, &reply)?;
        ensure!(run.verdict == Verdict::Pass, "the bench variant did not translate: {:?}", run.verdict);
        ensure!(run.packet == reply, "the LAN bench variant changed the packet");

        let before = f.counters()?;
        let tunnel_ns = median_ns(|| test_run::time_tc(f.bench_tunnel_program()?, &request, REPEAT))?;
        let lan_ns = median_ns(|| test_run::time(f.bench_lan_program()?, &reply, REPEAT))?;
        let delta = f.counters()?.since(&before);
        let runs = REPEAT as u64 * ROUNDS as u64;
        ensure!(
            delta.get(Outcome::ForwardedToTarget) == runs && delta.get(Outcome::ForwardedFromTarget) == runs,
            "not every timed run was translated: {delta:?}"
        );
        let tc_restore = median_ns(|| test_run::time_tc(restore_tc, &request, REPEAT))?;
        let xdp_restore = median_ns(|| test_run::time(restore_xdp, &reply, REPEAT))?;
        let tc_empty = median_ns(|| test_run::time_tc(empty_tc, &request, REPEAT))?;
        let xdp_empty = median_ns(|| test_run::time(empty_xdp, &reply, REPEAT))?;
        let lan = format!("lan_in_reply_{label}");
        let tunnel = format!("tunnel_in_flow_{label}");
        for (metric, ns, restore_ns, kind) in
            [(&lan, lan_ns, xdp_restore, "XDP"), (&tunnel, tunnel_ns, tc_restore, "TC")]
        {
            rows.push(Row::new(
                "gateway",
                &format!("{metric}_ns"),
                "ns/packet",
                ns,
                restore_ns,
                &format!("empty {kind} program + the same 64-byte restore"),
                Better::Lower,
            ));
            rows.push(Row::new(
                "gateway",
                &format!("{metric}_overhead_ns"),
                "ns/packet",
                (ns - restore_ns).max(0.5),
                GOAL_OVERHEAD_NS,
                &format!("goal: 30 ns above the empty {kind} program"),
                Better::Lower,
            ));
        }
        restore_rows.get_or_insert([
            Row::new(
                "gateway",
                "xdp_restore_ns",
                "ns/packet",
                xdp_restore,
                xdp_empty,
                "empty XDP program (XDP_PASS)",
                Better::Lower,
            ),
            Row::new(
                "gateway",
                "tc_restore_ns",
                "ns/packet",
                tc_restore,
                tc_empty,
                "empty TC program (TC_ACT_OK)",
                Better::Lower,
            ),
        ]);
    }
    rows.extend(restore_rows.into_iter().flatten());
    Ok(rows)
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
