//! The uplink guard's cost per packet, measured in the kernel with
//! BPF_PROG_RUN `repeat`, against an empty XDP_PASS program on the same frames.

use anyhow::{Context, Result, ensure};
use ferry_ebpf::{
    PASS_PROGRAM,
    guard::UplinkGuard,
    load_object, load_xdp,
    test_run::{self, Verdict},
};
use ferry_lab::packet;

use crate::report::{Better, Row};

const PORT: u16 = 51820;
const REPEAT: u32 = 2_000_000;
pub(crate) const ROUNDS: usize = 9;
/// The goal: at most this many ns of program time above the empty one.
const GOAL_OVERHEAD_NS: f64 = 30.0;

pub fn run() -> Result<Vec<Row>> {
    let guard = UplinkGuard::load(PORT).context("loading the guard (run as root)")?;
    let mut object = load_object()?;
    let empty = load_xdp(&mut object, PASS_PROGRAM)?;

    let client = [192, 0, 2, 7];
    let gateway = [198, 51, 100, 2];
    // A transport message as large as a 1500-byte packet carries,
    // junk to the port, and a TCP segment the guard only glances at.
    let cases = [
        (
            "valid_data",
            packet::udp4(client, 40000, gateway, PORT, &packet::wireguard(4, 1440)),
            Verdict::Pass,
        ),
        ("junk_drop", packet::udp4(client, 40000, gateway, PORT, &[0x42; 100]), Verdict::Drop),
        ("non_udp_pass", packet::tcp4(client, 40000, gateway, 443, &[0; 64]), Verdict::Pass),
    ];

    let mut rows = Vec::new();
    let mut valid_overhead = None;
    for (name, frame, verdict) in &cases {
        let run = test_run::run(guard.program()?, frame)?;
        ensure!(run.verdict == *verdict, "{name}: expected {verdict:?}, got {:?}", run.verdict);
        let ferry_ns = median_ns(|| test_run::time(guard.program()?, frame, REPEAT))?;
        let empty_ns = median_ns(|| test_run::time(empty, frame, REPEAT))?;
        if *name == "valid_data" {
            valid_overhead = Some(ferry_ns - empty_ns);
        }
        rows.push(Row::new(
            "guard",
            &format!("{name}_ns"),
            "ns/packet",
            ferry_ns,
            empty_ns,
            "empty XDP_PASS program",
            Better::Lower,
        ));
    }
    rows.extend(index_rule(|frame| median_ns(|| test_run::time(empty, frame, REPEAT)), client, gateway)?);
    let overhead = valid_overhead.expect("valid_data is measured").max(0.5);
    rows.push(Row::new(
        "guard",
        "valid_data_overhead_ns",
        "ns/packet",
        overhead,
        GOAL_OVERHEAD_NS,
        "goal: 30 ns above empty program",
        Better::Lower,
    ));
    Ok(rows)
}

/// The receiver-index rule as `ferry-gateway run` uses it: a full-size
/// transport message to a live index, and one to an unknown index, with the
/// map holding 10 and 10,000 indices (a hash lookup: the size should not show).
fn index_rule(
    empty_ns: impl Fn(&[u8]) -> Result<f64>,
    client: [u8; 4],
    gateway: [u8; 4],
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for live in [10u32, 10_000] {
        let mut guard = UplinkGuard::load(PORT).context("loading the guard (run as root)")?;
        for i in 0..live {
            guard.add_index(i.wrapping_mul(2_654_435_761))?;
        }
        guard.follow_indices(true)?;
        let mut known = packet::wireguard(4, 1440);
        known[4..8].copy_from_slice(&(live - 1).wrapping_mul(2_654_435_761).to_le_bytes());
        let mut unknown = known.clone();
        unknown[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        for (name, message, verdict) in
            [("live_index", known, Verdict::Pass), ("unknown_index_drop", unknown, Verdict::Drop)]
        {
            let frame = packet::udp4(client, 40000, gateway, PORT, &message);
            let run = test_run::run(guard.program()?, &frame)?;
            ensure!(run.verdict == verdict, "{name}: expected {verdict:?}, got {:?}", run.verdict);
            let ferry_ns = median_ns(|| test_run::time(guard.program()?, &frame, REPEAT))?;
            rows.push(Row::new(
                "guard",
                &format!("{name}_{live}_indices_ns"),
                "ns/packet",
                ferry_ns,
                empty_ns(&frame)?,
                "empty XDP_PASS program",
                Better::Lower,
            ));
        }
    }
    Ok(rows)
}

/// The median of several rounds of the kernel's average ns per run.
pub(crate) fn median_ns(
    mut measure: impl FnMut() -> Result<std::time::Duration, ferry_ebpf::Error>,
) -> Result<f64> {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        samples.push(measure()?.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[ROUNDS / 2])
}
