//! The relay's forwarder.
//!
//! A relay allocation is one UDP port shared by the two peers of a session.
//! Once userspace has bound both peers (it validates the handshakes), WireGuard
//! transport datagrams between them never need to reach a socket: this program
//! looks up `(allocation port, source address, source port)`, rewrites the IP
//! and UDP headers toward the other peer and sends the frame back out. It never
//! sees plaintext and needs none: the datagrams stay sealed end to end.
//!
//! Everything the program cannot forward on its own it passes, unchanged, to
//! the allocation's socket, where userspace applies the same rules slowly.
//!
//! With the FIB on, the next hop of a binding's peer comes from a cache in the
//! binding itself (`Binding::next_hop`) that `bpf_fib_lookup` fills on a
//! miss: the lookup is most of a forwarded packet's cost, and a cache of its
//! own would cost a second map lookup. An entry is used only while it carries
//! the current generation (userspace bumps it on every route, neighbour and
//! link change it hears of over netlink) and has not expired
//! (`RelayConfig::next_hop_lifetime_ms`, a bound that holds even when no
//! notification arrives). See docs/relay-xdp.md.

use core::mem;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup, xdp_action},
    helpers::generated::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_jiffies64, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use ferry_ebpf_common::{
    guard::TRANSPORT_MIN_LEN,
    relay::{
        ACTION_FORWARD, Binding, BindingKey, BindingKey4, CachedHop, DEFAULT_MAX_BINDINGS, DEFAULT_MAX_SLOTS,
        FAMILY_V4, FAMILY_V6, FLAG_FIB, MAX_TICK_NS, NextHop as CachedNextHop, Outcome, RelayConfig, Traffic,
        Wanted, fingerprint, fingerprint_halves, mac_word,
    },
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    csum::{replace, sum, sum_not, udp_checksum},
    packet::{ETH_P_IP, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_UDP, be16_at, ptr_at, ptr_at_mut},
};

#[map(name = "RELAY_CONFIG")]
static RELAY_CONFIG: Array<RelayConfig> = Array::with_max_entries(1, 0);

// Not preallocated: a preallocated hash map recycles an element the moment
// userspace replaces or deletes it, so a lookup running at that time could read
// another allocation's peer and send a datagram there. Without preallocation
// elements are freed after an RCU grace period, and lookups cost the same.
#[map(name = "RELAY_BINDINGS")]
static RELAY_BINDINGS: HashMap<BindingKey4, Binding> =
    HashMap::with_max_entries(DEFAULT_MAX_BINDINGS, BPF_F_NO_PREALLOC);

/// IPv6 senders' bindings: a 24-byte key would cost IPv4 lookups twice the
/// hashing and comparing they need.
#[map(name = "RELAY_BINDINGS6")]
static RELAY_BINDINGS6: HashMap<BindingKey, Binding> =
    HashMap::with_max_entries(DEFAULT_MAX_BINDINGS, BPF_F_NO_PREALLOC);

#[map(name = "RELAY_COUNTERS")]
static RELAY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Outcome::COUNT, 0);

#[map(name = "RELAY_TRAFFIC")]
static RELAY_TRAFFIC: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(DEFAULT_MAX_SLOTS, 0);

#[map(name = "RELAY_NEXT_HOP_GEN")]
static RELAY_NEXT_HOP_GEN: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "RELAY_FIB_LOOKUPS")]
static RELAY_FIB_LOOKUPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The miss path's lookup parameters: on the stack they would not fit beside
/// the rest of the program's 512 bytes.
#[repr(C)]
struct FibScratch {
    fib: FibLookup,
}

#[map(name = "RELAY_FIB_SCRATCH")]
static RELAY_FIB_SCRATCH: PerCpuArray<FibScratch> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = EthHdr::LEN;
/// Only option-less IPv4 and IPv6 without extension headers are forwarded, so
/// the UDP header sits at a fixed offset, which keeps the verifier's job small.
const UDP4_OFFSET: usize = ETH_HLEN + Ipv4Hdr::LEN;
const UDP6_OFFSET: usize = ETH_HLEN + Ipv6Hdr::LEN;
/// The TTL / hop limit of forwarded datagrams. The relay re-originates them
/// (its own address is the source), as its userspace path does with 64.
const TTL: u8 = 64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const WG_TRANSPORT: u8 = 4;

#[xdp]
pub fn relay_forward(ctx: XdpContext) -> u32 {
    verdict(forward::<{ Step::All as u8 }>(&ctx))
}

/// How far a run of [`forward`] goes: the real program goes all the way, the
/// benchmark's variants (`crate::bench`) stop after a step and report
/// [`Outcome::ForwardTx`] without touching the frame, so that the cost of
/// each step can be measured as the difference between two variants.
#[repr(u8)]
pub enum Step {
    /// The configuration, the Ethernet, IP and UDP headers and the WireGuard
    /// message type.
    Parse = 1,
    /// And the binding lookup (with the checksum sums of the addresses).
    Binding,
    /// And the next-hop generation read.
    Generation,
    /// And the clock (`bpf_jiffies64`).
    Clock,
    /// And the binding's next-hop cache: its read and checks.
    Cache,
    /// And the rewrite: the real program.
    All,
}

/// Counts `outcome` and turns it into the XDP verdict.
#[inline(always)]
pub fn verdict(outcome: Outcome) -> u32 {
    if let Some(counter) = RELAY_COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe { *counter += 1 };
    }
    match outcome {
        Outcome::ForwardTx => xdp_action::XDP_TX,
        // bpf_redirect with no flags only records the target and always
        // returns XDP_REDIRECT.
        Outcome::ForwardRedirect => xdp_action::XDP_REDIRECT,
        outcome if outcome.drops() => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The next hop `bpf_fib_lookup` found. The MACs as cache words
/// ([`mac_word`]; the upper 16 bits do not matter): from the cache they go to
/// the frame with shifts, not through byte arrays on the stack.
#[derive(Clone, Copy)]
struct Hop {
    ifindex: u32,
    smac: u64,
    dmac: u64,
}

/// A transport message to an allocation port: its UDP header and the length
/// of the WireGuard message it carries.
struct Transport {
    udp: *mut UdpHdr,
    payload_len: usize,
}

#[inline(always)]
pub fn forward<const UPTO: u8>(ctx: &XdpContext) -> Outcome {
    let Some(config) = RELAY_CONFIG.get(0) else {
        return Outcome::PassOtherPort;
    };
    // VLAN tags are not walked: a relay's uplink delivers untagged frames, and
    // anything tagged reaches the stack as it is.
    match be16_at(ctx, ETH_HLEN - 2) {
        Some(ETH_P_IP) => forward_v4::<UPTO>(ctx, config),
        Some(ETH_P_IPV6) => forward_v6::<UPTO>(ctx, config),
        Some(_) => Outcome::PassNotIp,
        None => Outcome::PassMalformed,
    }
}

#[inline(always)]
fn forward_v4<const UPTO: u8>(ctx: &XdpContext, config: &RelayConfig) -> Outcome {
    let Some(ip) = ptr_at_mut::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Outcome::PassMalformed;
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let ip = unsafe { &mut *ip };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len {
        return Outcome::PassMalformed;
    }
    if ip.proto != IPPROTO_UDP {
        return Outcome::PassNotUdp;
    }
    // More-fragments flag or a non-zero offset.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Outcome::PassFragment;
    }
    if header_len != Ipv4Hdr::LEN {
        return Outcome::PassIpOptions;
    }
    if config.addr4 == [0; 4] || ip.dst_addr != config.addr4 {
        return Outcome::PassOtherPort;
    }
    let transport = match transport(ctx, UDP4_OFFSET, total_len - Ipv4Hdr::LEN, config) {
        Ok(transport) => transport,
        Err(outcome) => return outcome,
    };
    if UPTO == Step::Parse as u8 {
        return Outcome::ForwardTx;
    }
    // SAFETY: transport() checked the header lies inside the packet.
    let udp = unsafe { &mut *transport.udp };

    let src = ip.src_addr;
    let key = BindingKey4 { addr: src, port: udp.src, relay_port: udp.dst };
    let (binding, cache) = match lookup(&RELAY_BINDINGS, &key, FAMILY_V4) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    let peer = [binding.addr[0], binding.addr[1], binding.addr[2], binding.addr[3]];
    // The relay's address replaces the sender's, the peer's replaces the
    // relay's: for the checksums only the sender's address leaves and the
    // peer's arrives (RFC 1624 incremental updates, eqn. 3).
    let removed = settled(sum_not(&src));
    let added = settled(sum(&peer));
    if UPTO == Step::Binding as u8 {
        return Outcome::ForwardTx;
    }

    let next_hop = if config.flags & FLAG_FIB != 0 {
        let request = Request {
            family: FAMILY_V4,
            // Without the ECN bits, which routing ignores (the kernel masks
            // them): a peer marking congestion would otherwise miss the cache
            // with every change of its marks.
            tos: ip.tos & TOS_ROUTED,
            in_ifindex: ctx.ingress_ifindex() as u32,
            sport: udp.dst,
            dport: binding.port,
            flowinfo: 0,
            ip_len: total_len as u32,
        };
        // Written by next_hop when it returns true; never zeroed (a memset).
        let mut hop = mem::MaybeUninit::<Hop>::uninit();
        if !next_hop::<UPTO>(ctx, config, binding, cache, &request, hop.as_mut_ptr()) {
            return Outcome::PassNoRoute;
        }
        if UPTO != Step::All as u8 {
            return Outcome::ForwardTx;
        }
        // SAFETY: next_hop returned true, so it wrote every field.
        Some(unsafe { hop.assume_init() })
    } else {
        None
    };

    let old_ttl = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_be_bytes([TTL, ip.proto]);
    ip.check = replace(ip.check, removed + !old_ttl as u32, added + new_ttl as u32).to_be_bytes();
    ip.src_addr = ip.dst_addr;
    ip.dst_addr = peer;
    ip.ttl = TTL;
    // Zero means the sender computed no checksum; it stays that way.
    if udp.check != [0, 0] {
        udp.check = udp_checksum(replace_ports(udp, removed, added, binding.port));
    }
    udp.src = udp.dst;
    udp.dst = binding.port;

    finish(ctx, next_hop, binding, transport.payload_len)
}

#[inline(always)]
fn forward_v6<const UPTO: u8>(ctx: &XdpContext, config: &RelayConfig) -> Outcome {
    let Some(ip) = ptr_at_mut::<Ipv6Hdr>(ctx, ETH_HLEN) else {
        return Outcome::PassMalformed;
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let ip = unsafe { &mut *ip };
    if ip.vcf[0] >> 4 != 6 {
        return Outcome::PassMalformed;
    }
    // WireGuard senders put no extension headers in front of UDP; whatever
    // does is the stack's to handle.
    match ip.next_hdr {
        IPPROTO_UDP => {}
        IPPROTO_FRAGMENT => return Outcome::PassFragment,
        _ => return Outcome::PassNotUdp,
    }
    if config.addr6 == [0; 16] || ip.dst_addr != config.addr6 {
        return Outcome::PassOtherPort;
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let transport = match transport(ctx, UDP6_OFFSET, payload_len, config) {
        Ok(transport) => transport,
        Err(outcome) => return outcome,
    };
    if UPTO == Step::Parse as u8 {
        return Outcome::ForwardTx;
    }
    // SAFETY: transport() checked the header lies inside the packet.
    let udp = unsafe { &mut *transport.udp };
    // IPv6 requires a UDP checksum; the stack drops datagrams without one, and
    // an incremental update of zero would invent a wrong one.
    if udp.check == [0, 0] {
        return Outcome::PassMalformed;
    }

    let mut slot = mem::MaybeUninit::uninit();
    let key: &mut BindingKey = zeroed(&mut slot);
    copy_bytes(&mut key.addr, &ip.src_addr);
    key.port = udp.src;
    key.relay_port = udp.dst;
    key.family = FAMILY_V6;
    let (binding, cache) = match lookup(&RELAY_BINDINGS6, key, FAMILY_V6) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    // See forward_v4: only the sender's address leaves the pseudo-header sum
    // and only the peer's arrives. IPv6 has no header checksum. Summed before
    // the next-hop step, so that the addresses need not stay in registers
    // (or spill) across it.
    let removed = settled(sum_not(&ip.src_addr));
    let added = settled(sum(&binding.addr));
    if UPTO == Step::Binding as u8 {
        return Outcome::ForwardTx;
    }

    let next_hop = if config.flags & FLAG_FIB != 0 {
        let vcf = ip.vcf;
        let request = Request {
            family: FAMILY_V6,
            // The traffic class straddles the first two bytes.
            // ECN masked as for IPv4.
            tos: ((vcf[0] << 4) | (vcf[1] >> 4)) & TOS_ROUTED,
            in_ifindex: ctx.ingress_ifindex() as u32,
            sport: udp.dst,
            dport: binding.port,
            // Traffic class and flow label, as the kernel's own forwarding
            // path hands them to the route lookup.
            flowinfo: u32::from_ne_bytes([vcf[0] & 0x0f, vcf[1], vcf[2], vcf[3]]),
            ip_len: (Ipv6Hdr::LEN + payload_len) as u32,
        };
        // Written by next_hop when it returns true; never zeroed (a memset).
        let mut hop = mem::MaybeUninit::<Hop>::uninit();
        if !next_hop::<UPTO>(ctx, config, binding, cache, &request, hop.as_mut_ptr()) {
            return Outcome::PassNoRoute;
        }
        if UPTO != Step::All as u8 {
            return Outcome::ForwardTx;
        }
        // SAFETY: next_hop returned true, so it wrote every field.
        Some(unsafe { hop.assume_init() })
    } else {
        None
    };

    udp.check = udp_checksum(replace_ports(udp, removed, added, binding.port));
    udp.src = udp.dst;
    udp.dst = binding.port;
    // The relay's address (the datagram's destination) is the source now.
    copy_bytes(&mut ip.src_addr, &config.addr6);
    copy_bytes(&mut ip.dst_addr, &binding.addr);
    ip.hop_limit = TTL;

    finish(ctx, next_hop, binding, transport.payload_len)
}

/// Checks the UDP header at `offset` and the WireGuard message behind it, and
/// returns the header if the message is a transport message to an allocation
/// port. `ip_payload_len` is what the IP header says follows it.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    offset: usize,
    ip_payload_len: usize,
    config: &RelayConfig,
) -> Result<Transport, Outcome> {
    // A UDP header that is not inside the IP datagram is read from padding.
    if ip_payload_len < UdpHdr::LEN {
        return Err(Outcome::PassMalformed);
    }
    let Some(udp) = ptr_at_mut::<UdpHdr>(ctx, offset) else {
        return Err(Outcome::PassMalformed);
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let header = unsafe { &*udp };
    let (port_min, port_max) = config.port_range();
    let port = u16::from_be_bytes(header.dst);
    if port < port_min || port > port_max {
        return Err(Outcome::PassOtherPort);
    }
    let udp_len = u16::from_be_bytes(header.len) as usize;
    if udp_len < UdpHdr::LEN || udp_len > ip_payload_len || ctx.data() + offset + udp_len > ctx.data_end() {
        return Err(Outcome::DropTruncated);
    }
    let payload_len = udp_len - UdpHdr::LEN;
    // The length decides first: on a tiny frame the type word could be
    // Ethernet padding.
    if payload_len < 4 {
        return Err(Outcome::DropBadType);
    }
    let Some(head) = ptr_at::<[u8; 4]>(ctx, offset + UdpHdr::LEN) else {
        return Err(Outcome::DropTruncated);
    };
    // SAFETY: ptr_at checked the four bytes are inside the packet.
    let head = unsafe { *head };
    // A little-endian u32 whose upper three bytes are reserved zero.
    if head[1] | head[2] | head[3] != 0 {
        return Err(Outcome::DropBadType);
    }
    match head[0] {
        // Handshakes move bindings and need their MACs checked: userspace's.
        1..=3 => Err(Outcome::PassHandshake),
        WG_TRANSPORT if payload_len >= TRANSPORT_MIN_LEN => Ok(Transport { udp, payload_len }),
        _ => Err(Outcome::DropBadType),
    }
}

/// The binding for `key`, if the program may forward with it, and its
/// next-hop cache's words (`Binding::next_hop`), which the program alone
/// writes, each with one 8-byte store.
#[inline(always)]
fn lookup<K>(
    map: &'static HashMap<K, Binding>,
    key: &K,
    family: u8,
) -> Result<(&'static Binding, *mut u64), Outcome> {
    let Some(binding) = map.get_ptr_mut(key) else {
        return Err(Outcome::DropUnbound);
    };
    // SAFETY: within the element the lookup returned.
    let cache = unsafe { core::ptr::addr_of_mut!((*binding).next_hop.words) }.cast::<u64>();
    // SAFETY: the map is not preallocated: userspace's replacement is a new
    // element, and this one stays valid and unchanged for this run, so every
    // field comes from the same version. Not copied: a copy's address bytes
    // spill one by one, past the 512-byte stack.
    let binding = unsafe { &*binding };
    // Anything but an explicit forward (a WebSocket peer, the other IP family,
    // an action this program does not know) is userspace's.
    if binding.action != ACTION_FORWARD || binding.family != family {
        return Err(Outcome::PassUserspace);
    }
    Ok((binding, cache))
}

/// Route lookup parameters for a datagram from the allocation port to the
/// peer's port with an IP length of `ip_len`, received on the ingress
/// interface, written over `fib`. The caller fills in the addresses.
#[inline(always)]
fn fib_params(
    fib: &mut FibLookup,
    ctx: &XdpContext,
    family: u8,
    sport: [u8; 2],
    dport: [u8; 2],
    ip_len: usize,
) {
    // All zeroes is the documented starting point. Word by word, volatile:
    // LLVM would otherwise make a memset call of it, which BPF has not.
    let words = (fib as *mut FibLookup).cast::<u32>();
    for i in 0..mem::size_of::<FibLookup>() / 4 {
        // SAFETY: within the struct, which is plain old data of u32 alignment.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    fib.family = family;
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = u16::from_ne_bytes(sport);
    fib.dport = u16::from_ne_bytes(dport);
    // Host order; the helper compares it with the route's MTU. An IPv6
    // payload length near 64 KiB would wrap: such a datagram is no XDP frame.
    fib.__bindgen_anon_1.tot_len = ip_len.min(u16::MAX as usize) as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
}

/// A map key on the stack, aligned to 8 bytes for [`zeroed`].
#[repr(C, align(8))]
struct Aligned<T>(T);

/// Zeroes `slot` with 8-byte word stores and returns it. Zero-initialised
/// byte arrays otherwise become memset calls, a byte loop in BPF: tens of ns
/// for a key, on every packet. In place: returning the value would copy it,
/// and LLVM makes a memset of that copy again.
#[inline(always)]
fn zeroed<T: Copy>(slot: &mut mem::MaybeUninit<Aligned<T>>) -> &mut T {
    let words = slot.as_mut_ptr().cast::<u64>();
    for i in 0..mem::size_of::<Aligned<T>>() / 8 {
        // SAFETY: within the slot, which is 8-aligned and a multiple of 8
        // bytes long.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: only plain-old-data structs of integers and byte arrays are
    // made this way, for which all zeroes is a valid value.
    unsafe { &mut slot.assume_init_mut().0 }
}

/// Copies an address byte by byte. Plain assignment of a byte array often
/// becomes a memmove call, a loop, in BPF; volatile stores stay inline.
#[inline(always)]
fn copy_bytes<const N: usize>(dst: &mut [u8; N], src: &[u8; N]) {
    for i in 0..N {
        // SAFETY: i < N, within dst.
        unsafe { core::ptr::write_volatile(dst.as_mut_ptr().add(i), src[i]) };
    }
}

/// The TOS / traffic class bits routing can depend on: the DSCP, not ECN.
const TOS_ROUTED: u8 = 0xfc;

/// What the next hop of a datagram depends on besides its binding's peer,
/// and what a FIB lookup for it needs.
struct Request {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    family: u8,
    /// The IPv4 TOS / IPv6 traffic class without ECN, and the ingress
    /// interface: TOS and policy routing can depend on both, so a cached
    /// answer is used only for datagrams with the same.
    tos: u8,
    in_ifindex: u32,
    /// The allocation port and the peer's port, network order.
    sport: [u8; 2],
    dport: [u8; 2],
    /// IPv6 only: traffic class and flow label as bpf_fib_lookup takes them.
    flowinfo: u32,
    /// The IP length, header included.
    ip_len: u32,
}

/// Writes the next hop toward `binding`'s peer to `*hop`, from the binding's
/// cache (`cache`, its six words) if it holds a current answer for this
/// datagram's `request`, else from the FIB ([`fib_fill`]). False: the FIB has
/// no usable answer.
#[inline(always)]
fn next_hop<const UPTO: u8>(
    ctx: &XdpContext,
    config: &RelayConfig,
    binding: &'static Binding,
    cache: *mut u64,
    request: &Request,
    hop: *mut Hop,
) -> bool {
    let lifetime_ms = config.next_hop_lifetime_ms;
    // Read before the lookup: an answer the FIB gave before a change must
    // carry the generation from before userspace's bump, never the one after.
    let Some(generation) = RELAY_NEXT_HOP_GEN.get(0) else {
        return false;
    };
    let generation = settled(*generation);
    if UPTO == Step::Generation as u8 {
        return true;
    }
    // The tick counter: the verifier turns this helper into one load of
    // `jiffies` (a coarse clock is a helper call, about 13 ns). 32 bits are
    // enough for lifetimes below 2^31 ticks, compared with wrapping.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    if UPTO == Step::Clock as u8 {
        return true;
    }
    let words = read_words(cache);
    // Two 8-byte loads: the binding is 8-aligned and starts with the address.
    let addr = (binding as *const Binding).cast::<u64>();
    // SAFETY: within the binding.
    let (first, second) = unsafe { (core::ptr::read_volatile(addr), core::ptr::read_volatile(addr.add(1))) };
    let wanted = Wanted {
        generation,
        in_ifindex: request.in_ifindex,
        tos: request.tos,
        fingerprint: fingerprint_halves(first, second),
        now,
        ip_len: request.ip_len,
    };
    if lifetime_ms != 0 && CachedHop::serves(&words, &wanted) {
        if UPTO == Step::Cache as u8 {
            return true;
        }
        // SAFETY: the caller's Hop, written whole.
        unsafe { hop.write(Hop { ifindex: words[2] as u32, smac: words[1], dmac: words[0] }) };
        return true;
    }
    let stamp = Stamp { request, binding, cache, generation, now };
    fib_fill(XdpContext::new(ctx.ctx), config, &stamp, hop)
}

/// A miss: the datagram's [`Request`], its binding and the binding's cache,
/// the generation read before the lookup and the tick it was read in. (One
/// argument: BPF calls take five.)
struct Stamp<'a> {
    request: &'a Request,
    binding: &'static Binding,
    cache: *mut u64,
    generation: u32,
    now: u32,
}

/// The miss path of [`next_hop`]: asks the FIB, caches its answer in the
/// binding with `stamp` (unless the cache is off) and writes it to `*hop`.
///
/// A function of its own (a BPF-to-BPF call, with a stack frame of its own),
/// and the lookup's parameters in a per-CPU scratch slot: inlined into both
/// families' paths, the program's stack grew past 512 bytes.
#[inline(never)]
fn fib_fill(ctx: XdpContext, config: &RelayConfig, stamp: &Stamp, hop: *mut Hop) -> bool {
    let lifetime_ms = config.next_hop_lifetime_ms;
    let request = stamp.request;
    let addr = &stamp.binding.addr;
    let ip_len = request.ip_len as usize;
    if let Some(lookups) = RELAY_FIB_LOOKUPS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe { *lookups += 1 };
    }
    let Some(scratch) = RELAY_FIB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, used only by this CPU while we run.
    let scratch = unsafe { &mut *scratch };
    let fib = &mut scratch.fib;
    if request.family == FAMILY_V4 {
        fib_params(fib, &ctx, AF_INET, request.sport, request.dport, ip_len);
        fib.__bindgen_anon_2.tos = request.tos;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(config.addr4);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
    } else {
        fib_params(fib, &ctx, AF_INET6, request.sport, request.dport, ip_len);
        fib.__bindgen_anon_2.flowinfo = request.flowinfo;
        fib.__bindgen_anon_3.ipv6_src = words32(&config.addr6);
        fib.__bindgen_anon_4.ipv6_dst = words32(addr);
    }
    let Some(found) = fib_lookup(&ctx, fib) else {
        return false;
    };
    if lifetime_ms != 0 {
        let tick_ns = if config.tick_ns == 0 { MAX_TICK_NS } else { config.tick_ns };
        // Rounded up: the entry lives at most one tick longer than asked,
        // as the coarse clock's did.
        let ticks = (lifetime_ms as u64 * 1_000_000).div_ceil(tick_ns as u64).min(i32::MAX as u64) as u32;
        // Any tag but 0 (an empty cache) tells this write from another
        // CPU's at the same time.
        // SAFETY: a helper without arguments.
        let tag = unsafe { bpf_get_prandom_u32() } as u16;
        let entry = CachedNextHop {
            dmac: fib.dmac,
            smac: fib.smac,
            ifindex: found.ifindex,
            // The FIB checked this length against the route's MTU.
            max_len: ip_len.min(u16::MAX as usize) as u16,
            in_ifindex: request.in_ifindex,
            tos: request.tos,
            generation: stamp.generation,
            expires: stamp.now.wrapping_add(ticks),
            fingerprint: fingerprint(addr),
        };
        write_words(stamp.cache, &CachedHop::encode(&entry, if tag == 0 { 1 } else { tag }));
    }
    // SAFETY: the caller's Hop, written whole.
    unsafe { hop.write(found) };
    true
}

/// The six words of a binding's next-hop cache, each with one 8-byte load
/// (volatile: LLVM must neither split nor merge them).
#[inline(always)]
fn read_words(cache: *const u64) -> [u64; 6] {
    let mut words = [0u64; 6];
    for (i, word) in words.iter_mut().enumerate() {
        // SAFETY: the binding element holds six aligned words at `cache`.
        *word = unsafe { core::ptr::read_volatile(cache.add(i)) };
    }
    words
}

/// Writes a binding's next-hop cache, each word with one 8-byte store.
#[inline(always)]
fn write_words(cache: *mut u64, words: &[u64; 6]) {
    for (i, word) in words.iter().enumerate() {
        // SAFETY: as in read_words.
        unsafe { core::ptr::write_volatile(cache.add(i), *word) };
    }
}

/// Asks the kernel's FIB for the next hop. Anything short of a complete answer
/// (no route, no neighbour entry yet, the MTU too small, forwarding disabled)
/// is None: userspace sends that datagram and the kernel resolves the rest.
#[inline(always)]
fn fib_lookup(ctx: &XdpContext, fib: &mut FibLookup) -> Option<Hop> {
    // SAFETY: fib points at a complete bpf_fib_lookup.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, mem::size_of::<FibLookup>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(Hop { ifindex: fib.ifindex, smac: mac_word(&fib.smac), dmac: mac_word(&fib.dmac) })
}

/// Sets the Ethernet addresses, counts the allocation's traffic and picks
/// the way out.
#[inline(always)]
fn finish(ctx: &XdpContext, next_hop: Option<Hop>, binding: &Binding, payload_len: usize) -> Outcome {
    let Some(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else {
        // The IP header was read behind it; the verifier wants its own check.
        return Outcome::PassMalformed;
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let eth = unsafe { &mut *eth };
    let outcome = match next_hop {
        Some(hop) => {
            write_mac(&mut eth.dst_addr, hop.dmac);
            write_mac(&mut eth.src_addr, hop.smac);
            if hop.ifindex == ctx.ingress_ifindex() as u32 {
                Outcome::ForwardTx
            } else {
                // SAFETY: a helper call with plain integer arguments.
                unsafe { bpf_redirect(hop.ifindex, 0) };
                Outcome::ForwardRedirect
            }
        }
        None => {
            // Both peers sit behind the router the frame came from.
            let router = eth.src_addr;
            eth.src_addr = eth.dst_addr;
            eth.dst_addr = router;
            Outcome::ForwardTx
        }
    };
    if let Some(traffic) = RELAY_TRAFFIC.get_ptr_mut(binding.slot) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += payload_len as u64;
        }
    }
    outcome
}

/// Writes the MAC in the low 48 bits of `word` ([`mac_word`]).
#[inline(always)]
fn write_mac(mac: &mut [u8; 6], word: u64) {
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = (word >> (8 * i)) as u8;
    }
}

/// The UDP checksum after the address change (`removed`/`added` from the
/// caller) and the port change: the allocation port moves from destination to
/// source, so only the sender's port leaves and the peer's arrives.
#[inline(always)]
fn replace_ports(udp: &UdpHdr, removed: u32, added: u32, peer_port: [u8; 2]) -> u16 {
    let old_port = !u16::from_be_bytes(udp.src) as u32;
    let new_port = u16::from_be_bytes(peer_port) as u32;
    replace(udp.check, removed + old_port, added + new_port)
}

/// `sum`, computed here and now. Left to itself LLVM loads the summed bytes
/// before the next-hop call, adds them after it and spills every byte across
/// it: more than the 512-byte stack holds.
#[inline(always)]
fn settled(sum: u32) -> u32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&sum) }
}

/// An IPv6 address as the four network-order words bpf_fib_lookup takes.
#[inline(always)]
fn words32(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
