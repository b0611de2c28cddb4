//! A traffic generator inside the kernel: BPF_PROG_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18) runs `xdp_tx` on copies of a
//! crafted frame, and each XDP_TX sends its copy out of the given interface
//! for real. On a veth the frames reach the peer as XDP frames, the way a
//! NIC's driver hands packets to XDP; a socket sender's frames are skbs that
//! veth must copy into XDP frames first, and a sender thread cannot offer
//! more than a few hundred thousand a second. Benchmarks only.

use aya::{
    Ebpf,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};

use crate::{Error, TX_PROGRAM, load_object, load_xdp, test_run::xdp_md, xdp_mut};

/// Whether the running kernel has live frames (Linux 5.18 and newer).
/// Ferry itself runs on older kernels; what needs the generator skips.
pub fn supported() -> bool {
    kernel_at_least(5, 18)
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: utsname is plain old data and uname only writes into it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return false;
    }
    let release: String = name.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    release_at_least(&release, major, minor)
}

/// Compares a kernel release ("6.18.44-fc-v1272") with `major.minor`.
fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Frames the kernel sends per flush of its live-frames loop (at most 256).
const BATCH: u32 = 64;

/// `xdp_tx` loaded for live-frames runs.
pub struct FrameGenerator {
    ebpf: Ebpf,
}

impl FrameGenerator {
    pub fn new() -> Result<FrameGenerator, Error> {
        let mut ebpf = load_object()?;
        load_xdp(&mut ebpf, TX_PROGRAM)?;
        Ok(FrameGenerator { ebpf })
    }

    /// Sends `count` copies of `frame` (a whole Ethernet frame) out of the
    /// interface with index `ifindex` in the calling thread's network
    /// namespace, and returns when the kernel has sent them all. Frames the
    /// receiving side has no room for are dropped there, as on a wire.
    pub fn send(&mut self, frame: &[u8], ifindex: u32, count: u32) -> Result<(), Error> {
        let program: &mut Xdp = xdp_mut(&mut self.ebpf, TX_PROGRAM)?;
        let ctx = xdp_md(frame, ifindex);
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx[..]),
                repeat: count,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .map_err(|e| Error::TestRun(format!("live frames on interface {ifindex}: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn kernel_releases_compare_by_major_then_minor() {
        assert!(release_at_least("6.18.44-fc-v1272", 5, 18));
        assert!(release_at_least("5.18.0", 5, 18));
        assert!(!release_at_least("5.17.15-generic", 5, 18));
        assert!(!release_at_least("4.19.0", 5, 18));
        assert!(release_at_least("5.19", 5, 18));
        assert!(!release_at_least("garbage", 5, 18));
    }
}
