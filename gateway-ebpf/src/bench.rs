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
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};

use crate::{
    gateway::{lan_verdict, tunnel_verdict},
    packet::{ptr_at, ptr_at_mut},
    relay::{Step, forward, verdict},
};

// The relay forwarder stopped after each step (see `relay::Step`): a
// forwarded frame comes back unchanged from each, so the repeats need no
// restoring. The real program is the last step.

#[xdp]
pub fn bench_relay_parse(ctx: XdpContext) -> u32 {
    verdict(forward::<{ Step::Parse as u8 }>(&ctx))
}

#[xdp]
pub fn bench_relay_binding(ctx: XdpContext) -> u32 {
    verdict(forward::<{ Step::Binding as u8 }>(&ctx))
}

#[xdp]
pub fn bench_relay_generation(ctx: XdpContext) -> u32 {
    verdict(forward::<{ Step::Generation as u8 }>(&ctx))
}

#[xdp]
pub fn bench_relay_clock(ctx: XdpContext) -> u32 {
    verdict(forward::<{ Step::Clock as u8 }>(&ctx))
}

#[xdp]
pub fn bench_relay_cache(ctx: XdpContext) -> u32 {
    verdict(forward::<{ Step::Cache as u8 }>(&ctx))
}

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

/// The TC variant keeps its saved bytes here, not on its stack: the TUN
/// program and its new-flow subprogram leave no room for them there. Its
/// baseline, `bench_tc_restore`, does the same.
#[map(name = "BENCH_TC_SAVED")]
static BENCH_TC_SAVED: PerCpuArray<Saved> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn bench_gateway_tunnel_in(ctx: TcContext) -> i32 {
    let Some(saved) = BENCH_TC_SAVED.get_ptr_mut(0) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: a per-CPU slot, used only by this CPU while we run.
    let saved = unsafe { &mut *saved };
    let Some(words) = save_tc(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    *saved = words;
    let verdict = tunnel_verdict(&ctx);
    if restore_tc(&ctx, saved) { verdict } else { TC_ACT_SHOT as i32 }
}

#[xdp]
pub fn bench_xdp_restore(ctx: XdpContext) -> u32 {
    // Volatile accesses: the copy stays without a program in between.
    let Some(saved) = save_xdp(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if restore_xdp(&ctx, &saved) { xdp_action::XDP_PASS } else { xdp_action::XDP_ABORTED }
}

#[classifier]
pub fn bench_tc_restore(ctx: TcContext) -> i32 {
    let Some(saved) = BENCH_TC_SAVED.get_ptr_mut(0) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: as in bench_gateway_tunnel_in.
    let saved = unsafe { &mut *saved };
    let Some(words) = save_tc(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    *saved = words;
    if restore_tc(&ctx, saved) { TC_ACT_OK as i32 } else { TC_ACT_SHOT as i32 }
}

/// Eight words rather than 64 bytes, each read and written with a volatile
/// access: the BPF backend copies a byte array byte by byte (it cannot
/// assume alignment), and turns a plain copy of words into a call of its
/// byte-by-byte memcpy; either cost more than the program measured. The
/// frame's start is 8-aligned under BPF_PROG_RUN, and x86's JIT would not
/// mind otherwise.
type Saved = [u64; SAVED / 8];

#[inline(always)]
fn read_words(head: *const u64) -> Saved {
    let mut saved = [0u64; SAVED / 8];
    for (i, word) in saved.iter_mut().enumerate() {
        // SAFETY: the caller checked that SAVED bytes from `head` are inside
        // the packet.
        *word = unsafe { core::ptr::read_volatile(head.add(i)) };
    }
    saved
}

#[inline(always)]
fn write_words(head: *mut u64, saved: &Saved) {
    for (i, word) in saved.iter().enumerate() {
        // SAFETY: as in read_words.
        unsafe { core::ptr::write_volatile(head.add(i), *word) };
    }
}

#[inline(always)]
fn save_xdp(ctx: &XdpContext) -> Option<Saved> {
    let head = ptr_at::<Saved>(ctx, 0)?;
    Some(read_words(head as *const u64))
}

#[inline(always)]
fn restore_xdp(ctx: &XdpContext, saved: &Saved) -> bool {
    match ptr_at_mut::<Saved>(ctx, 0) {
        Some(head) => {
            write_words(head as *mut u64, saved);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn save_tc(ctx: &TcContext) -> Option<Saved> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + SAVED > end {
        return None;
    }
    Some(read_words(start as *const u64))
}

/// Helpers that change the packet invalidate every pointer into it: the
/// bounds are read again.
#[inline(always)]
fn restore_tc(ctx: &TcContext, saved: &Saved) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + SAVED > end {
        return false;
    }
    write_words(start as *mut u64, saved);
    true
}
