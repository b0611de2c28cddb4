//! The relay's XDP forwarder.
//!
//! BPF_PROG_RUN rows: the kernel's own time per forwarded packet, with `repeat`
//! runs on one frame, against an empty XDP_PASS program on the same frame and
//! interface. The FIB rows run in a lab namespace where the peer has a
//! permanent neighbour entry, so `bpf_fib_lookup` succeeds as on a relay whose
//! next hop is resolved. `fib_*` rows hit the next-hop cache (the first run
//! fills it; the check counts the FIB lookups of the timed runs), the
//! `fib_uncached_*` rows run with the cache off, so every packet pays the
//! lookup as a miss does.
//!
//! Then the release `ferry-relay` forwarding traffic between namespaces, XDP
//! against its userspace path: see [`crate::relay_traffic`].

use anyhow::{Context, Result, ensure};
use aya::programs::Xdp;
use ferry_ebpf::{
    PASS_PROGRAM,
    common::relay::{ACTION_FORWARD, BENCH_STEP_PROGRAMS, BindingKey, FAMILY_V4, Outcome, RelayConfig},
    if_index, load_object, load_xdp,
    relay::{self, RelayForwarder},
    test_run::{self, Verdict},
};
use ferry_lab::{Lab, packet};

use crate::{
    guard::{ROUNDS, median_ns},
    report::{Better, Row},
};

const REPEAT: u32 = 2_000_000;
/// The goal for a forwarded packet with a million bindings: program
/// time above the empty program's.
const GOAL_NS: f64 = 50.0;
/// Bindings of the large case, and the map's size (a power of two above it).
const MANY_BINDINGS: u32 = 1_000_000;
const MAX_BINDINGS: u32 = 1 << 20;

const UPLINK_MAC: [u8; 6] = [0x02, 0x52, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0x50, 0, 0, 0, 0x07];
const PEER4: [u8; 4] = [203, 0, 113, 7];
const PEER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const ALLOCATION: u16 = 50_000;

pub fn run() -> Result<Vec<Row>> {
    let mut rows = prog_run_rows()?;
    rows.extend(crate::relay_traffic::rows()?);
    Ok(rows)
}

/// ns per forwarded packet with BPF_PROG_RUN.
pub fn prog_run_rows() -> Result<Vec<Row>> {
    let lab = Lab::new().context("a lab namespace (run as root)")?;
    let netns = lab.netns("relay-bench")?;
    let far = lab.netns("relay-far")?;
    let uplink = lab.veth(&netns, &far)?.a;
    netns.ip(&["link", "set", "dev", &uplink, "down"])?;
    netns.ip(&["link", "set", "dev", &uplink, "address", &mac(UPLINK_MAC)])?;
    netns.ip(&["link", "set", "dev", &uplink, "up"])?;
    netns.add_addr(&uplink, "203.0.113.1/24")?;
    netns.add_addr(&uplink, "2001:db8:1::1/64")?;
    for peer in ["203.0.113.7", "2001:db8:1::7"] {
        netns.ip(&[
            "neigh",
            "replace",
            peer,
            "lladdr",
            &mac(PEER_MAC),
            "dev",
            &uplink,
            "nud",
            "permanent",
        ])?;
    }
    netns.enable_forwarding()?;
    netns.run_in(move || measure(&uplink)).context("entering the lab namespace")?
}

/// Runs in the lab namespace, where `uplink` is the interface the frames
/// arrive on and leave by.
fn measure(uplink: &str) -> Result<Vec<Row>> {
    let ifindex = if_index(uplink)?;
    let mut forwarder =
        RelayForwarder::load(MAX_BINDINGS, 1024).context("loading the relay forwarder (run as root)")?;
    forwarder.load_bench_steps()?;
    let mut object = load_object()?;
    let empty = load_xdp(&mut object, PASS_PROGRAM)?;

    // BPF_PROG_RUN repeats on one buffer and keeps what the program wrote, so
    // a frame that left for a peer would be "other address" from the second
    // run on. The measured frame goes from the peer's address and the
    // allocation port to the same: with the peer's address configured as the
    // relay's and a binding of (peer, port) to itself, each run rewrites it
    // into identical bytes and takes the whole forwarding path, FIB lookup
    // included, every time. TTL 64 from the start keeps the bytes fixed.
    let frame4 = packet::udp4(PEER4, ALLOCATION, PEER4, ALLOCATION, &packet::wireguard(4, 1440));
    let frame6 = packet::udp6(PEER6, ALLOCATION, PEER6, ALLOCATION, &packet::wireguard(4, 1420));
    for (peer, frame) in [(std::net::IpAddr::from(PEER4), &frame4), (PEER6.into(), &frame6)] {
        let peer = std::net::SocketAddr::new(peer, ALLOCATION);
        forwarder.insert(&relay::key(peer, ALLOCATION), &relay::binding(peer, ACTION_FORWARD, 0))?;
        ensure!(frame.len() <= 1514, "the frame must fit the uplink's MTU");
    }
    let config = |fib| relay::config(Some(PEER4.into()), Some(PEER6.into()), ALLOCATION..=ALLOCATION, fib);

    let mut rows = Vec::new();
    let mut row = |forwarder: &RelayForwarder, metric: &str, frame: &[u8], fib: Fib| -> Result<(f64, f64)> {
        let ns = forwarded_ns(forwarder, forwarder.program()?, frame, ifindex, fib)?;
        let empty_ns = median_ns(|| test_run::time_on(empty, frame, REPEAT, ifindex))?;
        rows.push(Row::new(
            "relay",
            metric,
            "ns/packet",
            ns,
            empty_ns,
            "empty XDP_PASS program",
            Better::Lower,
        ));
        Ok((ns, empty_ns))
    };

    let uncached = |fib| RelayConfig { next_hop_lifetime_ms: 0, ..config(fib) };

    forwarder.configure(config(true))?;
    // Two bindings (one per family); the one-binding figure is IPv4's.
    row(&forwarder, "fib_1_binding_ns", &frame4, Fib::Cached)?;
    forwarder.configure(uncached(true))?;
    row(&forwarder, "fib_uncached_1_binding_ns", &frame4, Fib::Uncached)?;
    forwarder.configure(config(false))?;
    row(&forwarder, "mac_swap_1_binding_ns", &frame4, Fib::Off)?;

    fill(&mut forwarder, MANY_BINDINGS)?;
    forwarder.configure(config(true))?;
    let (goal_ns, goal_empty_ns) = row(&forwarder, "fib_1m_bindings_ns", &frame4, Fib::Cached)?;
    row(&forwarder, "fib_1m_bindings_v6_ns", &frame6, Fib::Cached)?;
    // The cached path step by step: each variant stops after one more step
    // (BENCH_STEP_PROGRAMS); the difference between two rows is that step's
    // cost, the last step's is fib_1m_bindings_ns minus the cache row.
    let mut steps = Vec::new();
    for &(name, step) in BENCH_STEP_PROGRAMS {
        let program = forwarder.bench_step(name)?;
        let ns = forwarded_ns(&forwarder, program, &frame4, ifindex, Fib::Cached)?;
        let empty_ns = median_ns(|| test_run::time_on(empty, &frame4, REPEAT, ifindex))?;
        steps.push(Row::new(
            "relay",
            &format!("step_{step}_1m_bindings_ns"),
            "ns/packet",
            ns,
            empty_ns,
            "empty XDP_PASS program",
            Better::Lower,
        ));
    }
    forwarder.configure(uncached(true))?;
    row(&forwarder, "fib_uncached_1m_bindings_ns", &frame4, Fib::Uncached)?;
    row(&forwarder, "fib_uncached_1m_bindings_v6_ns", &frame6, Fib::Uncached)?;
    forwarder.configure(config(false))?;
    row(&forwarder, "mac_swap_1m_bindings_ns", &frame4, Fib::Off)?;

    rows.extend(steps);
    rows.push(Row::new(
        "relay",
        "fib_1m_bindings_over_empty_ns",
        "ns/packet",
        goal_ns - goal_empty_ns,
        GOAL_NS,
        "goal: <= 50 ns/packet above the empty program with 1M bindings",
        Better::Lower,
    ));
    Ok(rows)
}

/// How a row uses the FIB.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fib {
    /// Next hops from the cache, which the check run fills.
    Cached,
    /// A `bpf_fib_lookup` for every packet.
    Uncached,
    /// MAC swap, no lookup.
    Off,
}

/// The median ns per run of the forwarder's `program` (the real one or a
/// step variant) on `frame`, after checking that the
/// frame is forwarded (XDP_TX), that every timed run forwarded it, and that
/// the timed runs asked the FIB as `fib` says.
fn forwarded_ns(
    forwarder: &RelayForwarder,
    program: &Xdp,
    frame: &[u8],
    ifindex: u32,
    fib: Fib,
) -> Result<f64> {
    let run = test_run::run_on(program, frame, ifindex)?;
    ensure!(run.verdict == Verdict::Tx, "the measured frame was not forwarded: {:?}", run.verdict);
    ensure!(run.packet[14..] == frame[14..], "the measured frame is not a fixed point of the forwarder");
    let before = forwarder.counters()?;
    let lookups_before = forwarder.fib_lookups()?;
    let ns = median_ns(|| test_run::time_on(program, frame, REPEAT, ifindex))?;
    let delta = forwarder.counters()?.since(&before);
    let lookups = forwarder.fib_lookups()? - lookups_before;
    let runs = REPEAT as u64 * ROUNDS as u64;
    ensure!(
        delta.get(Outcome::ForwardTx) == runs && delta.total() == runs,
        "not every timed run was forwarded: {delta:?}"
    );
    // A cached next hop expires (DEFAULT_NEXT_HOP_LIFETIME_MS) and is looked
    // up again: a handful of lookups per second of timed runs.
    let expected = match fib {
        Fib::Cached => lookups * 10_000 < runs,
        Fib::Uncached => lookups == runs,
        Fib::Off => lookups == 0,
    };
    ensure!(expected, "{lookups} FIB lookups in {runs} timed runs");
    Ok(ns)
}

/// Adds distinct bindings (10.0.0.0/8 senders on the allocation port) until
/// the map holds `total`.
fn fill(forwarder: &mut RelayForwarder, total: u32) -> Result<()> {
    let to = relay::binding("198.51.100.2:51820".parse()?, ACTION_FORWARD, 1);
    let mut i = 0u32;
    while forwarder.len() < total {
        let [_, b, c, d] = i.to_be_bytes();
        let key = BindingKey {
            addr: [10, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 40_000u16.to_be_bytes(),
            relay_port: ALLOCATION.to_be_bytes(),
            family: FAMILY_V4,
            _pad: [0; 3],
        };
        forwarder.insert(&key, &to)?;
        i += 1;
    }
    Ok(())
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}
