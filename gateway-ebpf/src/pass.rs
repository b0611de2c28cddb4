//! Programs that pass everything: the baselines of the XDP and TC
//! micro-benchmarks. The XDP one is also what tests attach to the receiving
//! end of a veth so that XDP_TX/XDP_REDIRECT frames are delivered there.

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Sends every frame back out of the interface it arrived on. Run by
/// BPF_PROG_RUN in live-frames mode on a crafted frame, it is a traffic
/// generator inside the kernel: the frames reach a veth's peer as XDP frames,
/// as a NIC's driver hands them to XDP, at rates no socket sender reaches.
#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// BPF_PROG_RUN of a TC program builds an skb and runs the program on it,
/// which an XDP program does not: TC programs are measured against this one.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}
