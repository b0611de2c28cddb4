//! BPF_PROG_RUN on XDP and TC programs: run a loaded program on a crafted packet
//! without any traffic. Tests use it for verdicts and rewritten bytes, benches
//! for the kernel-measured time per packet.

use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};

use crate::Error;

/// Headroom for programs that grow the packet (bpf_xdp_adjust_head/tail).
const OUT_SLACK: usize = 256;

/// The XDP verdicts (`enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl From<u32> for Verdict {
    fn from(value: u32) -> Self {
        match value {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => Verdict::Other(other),
        }
    }
}

/// What one run of an XDP program did to a packet.
#[derive(Clone, Debug)]
pub struct XdpRun {
    pub verdict: Verdict,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// Runs `program` once on `packet`.
pub fn run(program: &Xdp, packet: &[u8]) -> Result<XdpRun, Error> {
    run_on(program, packet, 0)
}

/// Runs `program` once on `packet` as if it had arrived on the interface with
/// index `ingress_ifindex` in the calling thread's network namespace (0: none,
/// as [`run`]). Helpers such as `bpf_fib_lookup` then see that interface.
pub fn run_on(program: &Xdp, packet: &[u8], ingress_ifindex: u32) -> Result<XdpRun, Error> {
    let mut out = vec![0u8; packet.len() + OUT_SLACK];
    let ctx = xdp_md(packet, ingress_ifindex);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
            repeat: 1,
            ..Default::default()
        })
        .map_err(|e| Error::TestRun(format!("{e} (packet of {} bytes)", packet.len())))?;
    out.truncate(result.data_size_out as usize);
    Ok(XdpRun { verdict: Verdict::from(result.return_value), packet: out })
}

/// Runs `program` `repeat` times on `packet` inside the kernel and returns the
/// kernel's average time per run, which excludes the syscall.
pub fn time(program: &Xdp, packet: &[u8], repeat: u32) -> Result<Duration, Error> {
    time_on(program, packet, repeat, 0)
}

/// [`time`] with the packet arriving on `ingress_ifindex`, as in [`run_on`].
pub fn time_on(program: &Xdp, packet: &[u8], repeat: u32, ingress_ifindex: u32) -> Result<Duration, Error> {
    let ctx = xdp_md(packet, ingress_ifindex);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
            repeat,
            ..Default::default()
        })
        .map_err(|e| Error::TestRun(e.to_string()))?;
    Ok(result.duration)
}

/// A `struct xdp_md` for BPF_PROG_RUN's ctx_in: the kernel wants `data` at 0
/// (no metadata), `data_end` at the packet's length, and takes the ingress
/// interface (with receive queue 0) from it.
pub(crate) fn xdp_md(packet: &[u8], ingress_ifindex: u32) -> [u8; 24] {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let fields = [0, packet.len() as u32, 0, ingress_ifindex, 0, 0];
    let mut ctx = [0u8; 24];
    for (bytes, field) in ctx.chunks_exact_mut(4).zip(fields) {
        bytes.copy_from_slice(&field.to_ne_bytes());
    }
    ctx
}

/// The TC verdicts a classifier returns (`TC_ACT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAction {
    Ok,
    Shot,
    Redirect,
    Other(i32),
}

impl From<u32> for TcAction {
    fn from(value: u32) -> Self {
        match value as i32 {
            0 => TcAction::Ok,
            2 => TcAction::Shot,
            7 => TcAction::Redirect,
            other => TcAction::Other(other),
        }
    }
}

/// What one run of a TC classifier did to a packet.
#[derive(Clone, Debug)]
pub struct TcRun {
    pub action: TcAction,
    /// The packet as the program left it (with the Ethernet header
    /// BPF_PROG_RUN requires for sched_cls programs).
    pub packet: Vec<u8>,
}

/// Runs a TC classifier once on `packet`, which must start with an Ethernet
/// header (the kernel parses it to set up the skb).
pub fn run_tc(program: &SchedClassifier, packet: &[u8]) -> Result<TcRun, Error> {
    let mut out = vec![0u8; packet.len() + OUT_SLACK];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .map_err(|e| Error::TestRun(format!("{e} (packet of {} bytes)", packet.len())))?;
    out.truncate(result.data_size_out as usize);
    Ok(TcRun { action: TcAction::from(result.return_value), packet: out })
}

/// Runs a TC classifier `repeat` times on one skb built from `packet` (each
/// run sees what the previous one left) and returns the kernel's average time
/// per run.
pub fn time_tc(program: &SchedClassifier, packet: &[u8], repeat: u32) -> Result<Duration, Error> {
    let result = program
        .test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() })
        .map_err(|e| Error::TestRun(e.to_string()))?;
    Ok(result.duration)
}
