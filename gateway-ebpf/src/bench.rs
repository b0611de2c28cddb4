//! Variants of the gateway's programs for its BPF_PROG_RUN benchmark.
//!
//! BPF_PROG_RUN's `repeat` runs a program again and again on the same
//! buffer, but a translated packet is no packet of the same flow any more
//! (the addresses and ports change, the TTL drops). Each variant saves the
//! first [`SAVED`] bytes of the frame (every header the translation
//! touches), runs the real program's body and writes the bytes back, so
//! every run sees the same packet and takes the same path, and many runs
//! fit in one call. The `*_restore` programs do only the saving and the
//! writing back: their time above the empty program is what the variants
//! add to the real programs' time.
//!
//! Userspace loads these only for the benchmark; they share the real
//! programs' maps.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    gateway::{lan_verdict, tunnel_verdict},
    packet::{ptr_at, ptr_at_mut},
};

/// Ethernet, an option-less IPv4 header and a TCP header, and then some.
const SAVED: usize = 64;

#[xdp]
pub fn bench_gateway_lan_in(ctx: XdpContext) -> u32 {
    let Some(saved) = save_xdp(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    let verdict = lan_verdict(&ctx);
    if restore_xdp(&ctx, &saved) { verdict } else { xdp_action::XDP_ABORTED }
}

#[classifier]
pub fn bench_gateway_tunnel_in(ctx: TcContext) -> i32 {
    let Some(saved) = save_tc(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    let verdict = tunnel_verdict(&ctx);
    if restore_tc(&ctx, &saved) { verdict } else { TC_ACT_SHOT as i32 }
}

#[xdp]
pub fn bench_xdp_restore(ctx: XdpContext) -> u32 {
    let Some(mut saved) = save_xdp(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    // Without a program in between the compiler would drop the copy.
    core::hint::black_box(&mut saved);
    if restore_xdp(&ctx, &saved) { xdp_action::XDP_PASS } else { xdp_action::XDP_ABORTED }
}

#[classifier]
pub fn bench_tc_restore(ctx: TcContext) -> i32 {
    let Some(mut saved) = save_tc(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    core::hint::black_box(&mut saved);
    if restore_tc(&ctx, &saved) { TC_ACT_OK as i32 } else { TC_ACT_SHOT as i32 }
}

#[inline(always)]
fn save_xdp(ctx: &XdpContext) -> Option<[u8; SAVED]> {
    let head = ptr_at::<[u8; SAVED]>(ctx, 0)?;
    // SAFETY: ptr_at checked the bytes are inside the packet.
    Some(unsafe { *head })
}

#[inline(always)]
fn restore_xdp(ctx: &XdpContext, saved: &[u8; SAVED]) -> bool {
    match ptr_at_mut::<[u8; SAVED]>(ctx, 0) {
        // SAFETY: as above.
        Some(head) => unsafe {
            *head = *saved;
            true
        },
        None => false,
    }
}

#[inline(always)]
fn save_tc(ctx: &TcContext) -> Option<[u8; SAVED]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + SAVED > end {
        return None;
    }
    // SAFETY: the bytes lie in the skb's linear data, checked just above.
    Some(unsafe { *(start as *const [u8; SAVED]) })
}

/// Helpers that change the packet invalidate every pointer into it: the
/// bounds are read again.
#[inline(always)]
fn restore_tc(ctx: &TcContext, saved: &[u8; SAVED]) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + SAVED > end {
        return false;
    }
    // SAFETY: as in save_tc.
    unsafe { *(start as *mut [u8; SAVED]) = *saved };
    true
}
