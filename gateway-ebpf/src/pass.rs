//! An XDP program that passes everything.
//!
//! It is the baseline of the XDP micro-benchmarks, and the program tests attach
//! to the receiving end of a veth so that XDP_TX/XDP_REDIRECT frames are
//! delivered there.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
