//! Bounds-checked access to packet headers, written so the verifier can follow
//! every offset.

use core::mem;

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// A pointer to a `T` at `offset` bytes into the packet, if the whole `T` lies
/// before `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Like [`ptr_at`], for a read that an earlier check over a variable length
/// already covers (such as a field inside a UDP payload whose length was
/// checked against the packet): the compiler would drop the bounds check as
/// redundant, but the verifier cannot follow that reasoning and rejects the
/// read. Hiding the offset from the optimiser keeps the check.
#[inline(always)]
pub fn ptr_at_rechecked<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    ptr_at::<T>(ctx, core::hint::black_box(offset))
}

/// Like [`ptr_at`], for headers the program rewrites.
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// Reads a big-endian u16 at `offset`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: ptr_at checked that the two bytes are inside the packet.
    Some(u16::from_be_bytes(unsafe { *p }))
}
