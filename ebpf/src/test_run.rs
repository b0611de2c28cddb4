//! BPF_PROG_RUN on XDP programs: run a loaded program on a crafted packet
//! without any traffic. Tests use it for verdicts and rewritten bytes, benches
//! for the kernel-measured time per packet.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, Xdp};

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
    Ok(XdpRun { verdict: Verdict::from(result.return_value), packet: out })
}

/// Runs `program` `repeat` times on `packet` inside the kernel and returns the
/// kernel's average time per run, which excludes the syscall.
pub fn time(program: &Xdp, packet: &[u8], repeat: u32) -> Result<Duration, Error> {
    let result = program
        .test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() })
        .map_err(|e| Error::TestRun(e.to_string()))?;
    Ok(result.duration)
}
