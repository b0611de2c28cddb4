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

use crate::packet::{ETH_P_IP, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_UDP};

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
    /// And the next-hop generation read.
    Generation,
    /// And the clock (`bpf_jiffies64`).
    Clock,
    /// And the binding lookup.
    Binding,
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

// The headers are read and written as whole words at fixed offsets, as C
// programs read them through `struct iphdr`: a byte array's fields become a
// load, shift and or per byte in BPF, several times the instructions. The
// offsets below are aligned in the verifier's model of a packet, whose start
// it takes to be 2 bytes past a 4-byte boundary (NET_IP_ALIGN), so that the
// IP header is 4-aligned: a u16 at an even offset, a u32 at 2 mod 4, a u64 at
// 6 mod 8. The verifier accepts them even when it checks alignment strictly;
// on machines without that need (x86-64, arm64) the JIT emits plain loads
// whatever the real alignment. Words are little-endian loads of network-order
// bytes; the Internet checksum does not care in which order the bytes of its
// 16-bit words are summed, as long as it is the same order throughout
// (RFC 1071, 2.(B)), so the checksums are updated on the raw words.

/// Byte 12 of the frame: the EtherType, as a raw (little-endian) u16.
const ETHERTYPE_AT: usize = 12;
const RAW_ETH_P_IP: u16 = ETH_P_IP.swap_bytes();
const RAW_ETH_P_IPV6: u16 = ETH_P_IPV6.swap_bytes();

/// Reads the `T` (an integer) at `offset` from `data` with one load.
///
/// # Safety
/// The caller checked that the `size_of::<T>()` bytes at `data + offset` lie
/// inside the packet; the offset is aligned for `T` in the verifier's model
/// (see above).
#[inline(always)]
unsafe fn load<T: Copy>(data: usize, offset: usize) -> T {
    // SAFETY: the caller's. Volatile: one access of exactly this width.
    unsafe { core::ptr::read_volatile((data + offset) as *const T) }
}

/// Writes `value` at `offset` from `data` with one store.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn store<T: Copy>(data: usize, offset: usize, value: T) {
    // SAFETY: the caller's.
    unsafe { core::ptr::write_volatile((data + offset) as *mut T, value) }
}

/// The big-endian u16 whose bytes were loaded little-endian into `raw`.
#[inline(always)]
fn be(raw: u16) -> u16 {
    raw.swap_bytes()
}

/// A transport message to an allocation port: its UDP header as two raw words
/// and the length of the WireGuard message it carries.
struct Transport {
    /// Source and destination port (the allocation port), raw.
    ports: u32,
    /// Length and checksum, raw.
    len_check: u32,
    payload_len: usize,
}

impl Transport {
    fn sender_port(&self) -> u16 {
        self.ports as u16
    }

    fn relay_port(&self) -> u16 {
        (self.ports >> 16) as u16
    }

    fn check(&self) -> u16 {
        (self.len_check >> 16) as u16
    }
}

/// A binding the program forwards with, and its next-hop cache's words
/// (`Binding::next_hop`), which the program alone writes, each with one
/// 8-byte store.
struct Bound {
    binding: &'static Binding,
    cache: *mut u64,
    /// The binding's words 2: the peer's port (raw), family, action, slot.
    meta: u64,
}

impl Bound {
    fn peer_port(&self) -> u16 {
        self.meta as u16
    }

    fn slot(&self) -> u32 {
        (self.meta >> 32) as u32
    }

    /// The binding's first two words: the peer's address.
    fn addr_words(&self) -> (u64, u64) {
        let words = (self.binding as *const Binding).cast::<u64>();
        // SAFETY: within the binding, which is 8-aligned and starts with
        // the address. Volatile: two loads, not sixteen.
        unsafe { (core::ptr::read_volatile(words), core::ptr::read_volatile(words.add(1))) }
    }
}

#[inline(always)]
pub fn forward<const UPTO: u8>(ctx: &XdpContext) -> Outcome {
    let Some(config) = RELAY_CONFIG.get(0) else {
        return Outcome::PassOtherPort;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        return Outcome::PassMalformed;
    }
    // VLAN tags are not walked: a relay's uplink delivers untagged frames, and
    // anything tagged reaches the stack as it is.
    // SAFETY: checked just above.
    match unsafe { load::<u16>(data, ETHERTYPE_AT) } {
        RAW_ETH_P_IP => forward_v4::<UPTO>(ctx, data, end, config),
        RAW_ETH_P_IPV6 => forward_v6::<UPTO>(ctx, data, end, config),
        _ => Outcome::PassNotIp,
    }
}

#[inline(always)]
fn forward_v4<const UPTO: u8>(ctx: &XdpContext, data: usize, end: usize, config: &RelayConfig) -> Outcome {
    if data + UDP4_OFFSET > end {
        return Outcome::PassMalformed;
    }
    // SAFETY (the three): inside the IPv4 header, checked just above.
    // Version and IHL, TOS, total length, ID, flags and fragment offset.
    let head = unsafe { load::<u64>(data, ETH_HLEN) };
    // TTL, protocol, header checksum, source address.
    let middle = unsafe { load::<u64>(data, ETH_HLEN + 8) };
    let dst = unsafe { load::<u32>(data, ETH_HLEN + 16) };
    let vihl = head as u8;
    let header_len = (vihl & 0x0f) as usize * 4;
    let total_len = be((head >> 16) as u16) as usize;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len {
        return Outcome::PassMalformed;
    }
    if (middle >> 8) as u8 != IPPROTO_UDP {
        return Outcome::PassNotUdp;
    }
    // More-fragments flag or a non-zero offset (0x3fff of the big-endian
    // field, whose high byte comes first).
    if (head >> 48) & 0xff3f != 0 {
        return Outcome::PassFragment;
    }
    if header_len != Ipv4Hdr::LEN {
        return Outcome::PassIpOptions;
    }
    let relay = u32::from_ne_bytes(config.addr4);
    if relay == 0 || dst != relay {
        return Outcome::PassOtherPort;
    }
    let transport = match transport::<UDP4_OFFSET>(data, end, total_len - Ipv4Hdr::LEN, config) {
        Ok(transport) => transport,
        Err(outcome) => return outcome,
    };
    if UPTO == Step::Parse as u8 {
        return Outcome::ForwardTx;
    }
    let moment = match moment::<UPTO>(config) {
        Ok(moment) => moment,
        Err(outcome) => return outcome,
    };

    let src = (middle >> 32) as u32;
    // BindingKey4: the address, the sender's port, the allocation port.
    let key = src as u64 | (transport.ports as u64) << 32;
    // SAFETY: a BindingKey4 is 8 bytes of byte arrays, any bits are one.
    let key = unsafe { &*(&key as *const u64).cast::<BindingKey4>() };
    let bound = match lookup(&RELAY_BINDINGS, key, FAMILY_V4) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    if UPTO == Step::Binding as u8 {
        return Outcome::ForwardTx;
    }

    let next_hop = if let Some(moment) = moment {
        // Read once: three dependent loads (the verifier's rewrite of the
        // field), needed by the cache check and by finish.
        let in_ifindex = ctx.ingress_ifindex() as u32;
        let request = Request {
            family: FAMILY_V4,
            // Without the ECN bits, which routing ignores (the kernel masks
            // them): a peer marking congestion would otherwise miss the cache
            // with every change of its marks.
            tos: (head >> 8) as u8 & TOS_ROUTED,
            in_ifindex,
            sport: transport.relay_port().to_ne_bytes(),
            dport: bound.peer_port().to_ne_bytes(),
            flowinfo: 0,
            ip_len: total_len as u32,
        };
        let Some(hop) = next_hop::<UPTO>(ctx, config, &bound, request, moment) else {
            return Outcome::PassNoRoute;
        };
        if UPTO != Step::All as u8 {
            return Outcome::ForwardTx;
        }
        Some((hop, in_ifindex))
    } else {
        None
    };

    let peer = bound.addr_words().0 as u32;
    // The relay's address replaces the sender's, the peer's replaces the
    // relay's: for the checksums only the sender's address leaves and the
    // peer's arrives (RFC 1624 incremental updates, eqn. 3), and the TTL.
    let addresses = (!src) as u64 + peer as u64;
    let old_ttl = middle as u16;
    let new_ttl = u16::from_ne_bytes([TTL, IPPROTO_UDP]);
    let ip_check = updated((middle >> 16) as u16, addresses + (!old_ttl) as u64 + new_ttl as u64);
    // SAFETY (both): inside the IPv4 header.
    unsafe {
        store::<u64>(data, ETH_HLEN + 8, new_ttl as u64 | (ip_check as u64) << 16 | (dst as u64) << 32);
        // The destination address and the ports.
        store::<u64>(
            data,
            ETH_HLEN + 16,
            peer as u64 | (transport.relay_port() as u64) << 32 | (bound.peer_port() as u64) << 48,
        );
    }
    let check = transport.check();
    // Zero means the sender computed no checksum; it stays that way.
    if check != 0 {
        let udp_check = udp_checksum(updated(check, ports_change(addresses, &transport, &bound)));
        // SAFETY: inside the UDP header, which transport() checked.
        unsafe { store::<u16>(data, UDP4_OFFSET + 6, udp_check) };
    }

    finish(data, RAW_ETH_P_IP, next_hop, &bound, transport.payload_len)
}

#[inline(always)]
fn forward_v6<const UPTO: u8>(ctx: &XdpContext, data: usize, end: usize, config: &RelayConfig) -> Outcome {
    if data + UDP6_OFFSET > end {
        return Outcome::PassMalformed;
    }
    // SAFETY: inside the IPv6 header, checked just above. Version, traffic
    // class, flow label, payload length, next header, hop limit.
    let head = unsafe { load::<u64>(data, ETH_HLEN) };
    if (head as u8) >> 4 != 6 {
        return Outcome::PassMalformed;
    }
    // WireGuard senders put no extension headers in front of UDP; whatever
    // does is the stack's to handle.
    match (head >> 48) as u8 {
        IPPROTO_UDP => {}
        IPPROTO_FRAGMENT => return Outcome::PassFragment,
        _ => return Outcome::PassNotUdp,
    }
    let relay = relay_addr6(config);
    // SAFETY (both): inside the IPv6 header.
    let dst = unsafe { (load::<u64>(data, ETH_HLEN + 24), load::<u64>(data, ETH_HLEN + 32)) };
    if relay.0 | relay.1 == 0 || dst != relay {
        return Outcome::PassOtherPort;
    }
    let payload_len = be((head >> 32) as u16) as usize;
    let transport = match transport::<UDP6_OFFSET>(data, end, payload_len, config) {
        Ok(transport) => transport,
        Err(outcome) => return outcome,
    };
    if UPTO == Step::Parse as u8 {
        return Outcome::ForwardTx;
    }
    // IPv6 requires a UDP checksum; the stack drops datagrams without one, and
    // an incremental update of zero would invent a wrong one.
    if transport.check() == 0 {
        return Outcome::PassMalformed;
    }
    let moment = match moment::<UPTO>(config) {
        Ok(moment) => moment,
        Err(outcome) => return outcome,
    };

    // SAFETY (both): inside the IPv6 header.
    let src = unsafe { (load::<u64>(data, ETH_HLEN + 8), load::<u64>(data, ETH_HLEN + 16)) };
    let key = Aligned([src.0, src.1, transport.ports as u64 | (FAMILY_V6 as u64) << 32]);
    // SAFETY: a BindingKey is 24 bytes of byte arrays, any bits are one; the
    // three words are its address, its ports, its family and zero padding.
    let key = unsafe { &*(&key as *const Aligned<[u64; 3]>).cast::<BindingKey>() };
    let bound = match lookup(&RELAY_BINDINGS6, key, FAMILY_V6) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    if UPTO == Step::Binding as u8 {
        return Outcome::ForwardTx;
    }

    let next_hop = if let Some(moment) = moment {
        let in_ifindex = ctx.ingress_ifindex() as u32;
        let vcf = (head as u32).to_ne_bytes();
        let request = Request {
            family: FAMILY_V6,
            // The traffic class straddles the first two bytes.
            // ECN masked as for IPv4.
            tos: ((vcf[0] << 4) | (vcf[1] >> 4)) & TOS_ROUTED,
            in_ifindex,
            sport: transport.relay_port().to_ne_bytes(),
            dport: bound.peer_port().to_ne_bytes(),
            // Traffic class and flow label, as the kernel's own forwarding
            // path hands them to the route lookup.
            flowinfo: u32::from_ne_bytes([vcf[0] & 0x0f, vcf[1], vcf[2], vcf[3]]),
            ip_len: (Ipv6Hdr::LEN + payload_len) as u32,
        };
        let Some(hop) = next_hop::<UPTO>(ctx, config, &bound, request, moment) else {
            return Outcome::PassNoRoute;
        };
        if UPTO != Step::All as u8 {
            return Outcome::ForwardTx;
        }
        Some((hop, in_ifindex))
    } else {
        None
    };

    // See forward_v4: only the sender's address leaves the pseudo-header sum
    // and only the peer's arrives. IPv6 has no header checksum.
    let peer = bound.addr_words();
    let addresses = complement_sum(src.0) + complement_sum(src.1) + plain_sum(peer.0) + plain_sum(peer.1);
    let udp_check = udp_checksum(updated(transport.check(), ports_change(addresses, &transport, &bound)));
    // SAFETY (all): inside the IPv6 and UDP headers.
    unsafe {
        // The relay's address (the datagram's destination) is the source now.
        store::<u64>(data, ETH_HLEN + 8, relay.0);
        store::<u64>(data, ETH_HLEN + 16, relay.1);
        store::<u64>(data, ETH_HLEN + 24, peer.0);
        store::<u64>(data, ETH_HLEN + 32, peer.1);
        store::<u8>(data, ETH_HLEN + 7, TTL);
        store::<u32>(data, UDP6_OFFSET, transport.relay_port() as u32 | (bound.peer_port() as u32) << 16);
        store::<u16>(data, UDP6_OFFSET + 6, udp_check);
    }

    finish(data, RAW_ETH_P_IPV6, next_hop, &bound, transport.payload_len)
}

/// The relay's IPv6 address as two raw words. It sits 4 bytes into the
/// configuration, so it is read as four u32.
#[inline(always)]
fn relay_addr6(config: &RelayConfig) -> (u64, u64) {
    let words = core::ptr::addr_of!(config.addr6).cast::<u32>();
    // SAFETY: within the configuration, 4-aligned (it follows a [u8; 4] at
    // the start of a struct with u32 fields).
    let w = |i| unsafe { core::ptr::read_volatile(words.add(i)) } as u64;
    (w(0) | w(1) << 32, w(2) | w(3) << 32)
}

/// Checks the UDP header at `OFFSET` and the WireGuard message behind it,
/// and returns the header if the message is a transport message to an
/// allocation port. `ip_payload_len` is what the IP header says follows it.
#[inline(always)]
fn transport<const OFFSET: usize>(
    data: usize,
    end: usize,
    ip_payload_len: usize,
    config: &RelayConfig,
) -> Result<Transport, Outcome> {
    // A UDP header that is not inside the IP datagram is read from padding.
    if ip_payload_len < UdpHdr::LEN || data + OFFSET + UdpHdr::LEN > end {
        return Err(Outcome::PassMalformed);
    }
    // SAFETY (both): inside the UDP header, checked just above.
    let ports = unsafe { load::<u32>(data, OFFSET) };
    let len_check = unsafe { load::<u32>(data, OFFSET + 4) };
    let (port_min, port_max) = config.port_range();
    let port = be((ports >> 16) as u16);
    if port < port_min || port > port_max {
        return Err(Outcome::PassOtherPort);
    }
    let udp_len = be(len_check as u16) as usize;
    if udp_len < UdpHdr::LEN || udp_len > ip_payload_len || data + OFFSET + udp_len > end {
        return Err(Outcome::DropTruncated);
    }
    let payload_len = udp_len - UdpHdr::LEN;
    // The length decides first: on a tiny frame the type word could be
    // Ethernet padding.
    if payload_len < 4 {
        return Err(Outcome::DropBadType);
    }
    if data + OFFSET + UdpHdr::LEN + 4 > end {
        return Err(Outcome::DropTruncated);
    }
    // SAFETY: checked just above.
    let head = unsafe { load::<u32>(data, OFFSET + UdpHdr::LEN) };
    // A little-endian u32 whose upper three bytes are reserved zero.
    if head >> 8 != 0 {
        return Err(Outcome::DropBadType);
    }
    match head as u8 {
        // Handshakes move bindings and need their MACs checked: userspace's.
        1..=3 => Err(Outcome::PassHandshake),
        WG_TRANSPORT if payload_len >= TRANSPORT_MIN_LEN => Ok(Transport { ports, len_check, payload_len }),
        _ => Err(Outcome::DropBadType),
    }
}

/// The binding for `key`, if the program may forward with it.
#[inline(always)]
fn lookup<K>(map: &'static HashMap<K, Binding>, key: &K, family: u8) -> Result<Bound, Outcome> {
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
    // SAFETY: within the binding, 8-aligned: the port, family, action, slot.
    let meta = unsafe { core::ptr::read_volatile((binding as *const Binding).cast::<u64>().add(2)) };
    // Anything but an explicit forward (a WebSocket peer, the other IP family,
    // an action this program does not know) is userspace's.
    if (meta >> 16) as u16 != u16::from_ne_bytes([family, ACTION_FORWARD]) {
        return Err(Outcome::PassUserspace);
    }
    Ok(Bound { binding, cache, meta })
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

/// A map key on the stack, aligned to 8 bytes: its words are written with
/// 8-byte stores.
#[repr(C, align(8))]
struct Aligned<T>(T);

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

/// What a cached next hop is checked against, and a new one stamped with:
/// the next-hop generation and the tick (the low 32 bits of `jiffies`).
#[derive(Clone, Copy)]
struct Moment {
    generation: u32,
    now: u32,
}

/// The [`Moment`] of a transport message, with the FIB on (else None). Read
/// before the binding lookup, not after it: LLVM takes the generation's map
/// lookup and the tick's helper for calls (the verifier inlines both) and,
/// after the binding lookup, would spill every value the cache check needs
/// around each of them. Both are still read before any FIB lookup, as they
/// must be: an answer the FIB gave before a change carries the generation
/// from before userspace's bump, never the one after, and an entry's
/// lifetime counts from the tick in which its datagram was read. An Err is
/// the outcome of a benchmark variant that stops here.
#[inline(always)]
fn moment<const UPTO: u8>(config: &RelayConfig) -> Result<Option<Moment>, Outcome> {
    if config.flags & FLAG_FIB == 0 {
        return Ok(None);
    }
    let Some(generation) = RELAY_NEXT_HOP_GEN.get(0) else {
        return Err(Outcome::PassNoRoute);
    };
    // Volatile: one load, here; a later use does not read the map again.
    // SAFETY: a reference to the map's element.
    let generation = unsafe { core::ptr::read_volatile(generation) };
    if UPTO == Step::Generation as u8 {
        return Err(Outcome::ForwardTx);
    }
    // The tick counter: the verifier turns this helper into one load of
    // `jiffies` (a coarse clock is a helper call, about 13 ns). 32 bits are
    // enough for lifetimes below 2^31 ticks, compared with wrapping.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_jiffies64() } as u32;
    if UPTO == Step::Clock as u8 {
        return Err(Outcome::ForwardTx);
    }
    Ok(Some(Moment { generation, now }))
}

/// The next hop toward `bound`'s peer, from the binding's cache (its six
/// words) if it holds a current answer for this datagram's `request`, else
/// from the FIB ([`fib_fill`]). None: the FIB has no usable answer.
#[inline(always)]
fn next_hop<const UPTO: u8>(
    ctx: &XdpContext,
    config: &RelayConfig,
    bound: &Bound,
    request: Request,
    moment: Moment,
) -> Option<Hop> {
    let (binding, cache) = (bound.binding, bound.cache);
    let Moment { generation, now } = moment;
    if config.next_hop_lifetime_ms != 0 {
        let (first, second) = bound.addr_words();
        let wanted = Wanted {
            generation,
            in_ifindex: request.in_ifindex,
            tos: request.tos,
            fingerprint: fingerprint_halves(first, second),
            now,
            ip_len: request.ip_len,
        };
        // SAFETY: the binding element holds six aligned words at `cache`.
        // Volatile: each word with one 8-byte load, neither split nor merged.
        let word = |i: usize| unsafe { core::ptr::read_volatile(cache.add(i)) };
        if let Some([dmac, smac, ifindex]) = CachedHop::serve(word, &wanted) {
            return Some(Hop { ifindex: ifindex as u32, smac, dmac });
        }
    }
    // The parameters go to the stack only here, on a miss.
    let stamp = Stamp { request, binding, cache, generation, now };
    let mut hop = mem::MaybeUninit::<Hop>::uninit();
    // SAFETY: fib_fill wrote the whole Hop when it returns true.
    fib_fill(XdpContext::new(ctx.ctx), config, &stamp, hop.as_mut_ptr()).then(|| unsafe { hop.assume_init() })
}

/// A miss: the datagram's [`Request`], its binding and the binding's cache,
/// the generation read before the lookup and the tick it was read in. (One
/// argument: BPF calls take five.)
struct Stamp {
    request: Request,
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
    let request = &stamp.request;
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

/// Writes a binding's next-hop cache, each word with one 8-byte store.
#[inline(always)]
fn write_words(cache: *mut u64, words: &[u64; 6]) {
    for (i, word) in words.iter().enumerate() {
        // SAFETY: the binding element holds six aligned words at `cache`.
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
/// the way out: `next_hop` is the FIB's answer and the ingress interface
/// (None: the FIB is off). `ethertype` is the frame's, raw.
#[inline(always)]
fn finish(
    data: usize,
    ethertype: u16,
    next_hop: Option<(Hop, u32)>,
    bound: &Bound,
    payload_len: usize,
) -> Outcome {
    let (dmac, smac, outcome) = match next_hop {
        Some((hop, in_ifindex)) => {
            let outcome = if hop.ifindex == in_ifindex {
                Outcome::ForwardTx
            } else {
                // SAFETY: a helper call with plain integer arguments.
                unsafe { bpf_redirect(hop.ifindex, 0) };
                Outcome::ForwardRedirect
            };
            (hop.dmac, hop.smac, outcome)
        }
        // Both peers sit behind the router the frame came from.
        None => {
            // SAFETY (all): the Ethernet header, behind the IP header that
            // was read.
            let dmac = unsafe { load::<u16>(data, 0) as u64 | (load::<u32>(data, 2) as u64) << 16 };
            let smac = unsafe { load::<u32>(data, 6) as u64 | (load::<u16>(data, 10) as u64) << 32 };
            (smac, dmac, Outcome::ForwardTx)
        }
    };
    // SAFETY (all): the Ethernet header. The source MAC goes with the
    // EtherType in one word.
    unsafe {
        store::<u16>(data, 0, dmac as u16);
        store::<u32>(data, 2, (dmac >> 16) as u32);
        store::<u64>(data, 6, (smac & LOW48) | (ethertype as u64) << 48);
    }
    if let Some(traffic) = RELAY_TRAFFIC.get_ptr_mut(bound.slot()) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe {
            (*traffic).packets += 1;
            (*traffic).bytes += payload_len as u64;
        }
    }
    outcome
}

/// The low 48 bits of a word: a MAC ([`mac_word`]).
const LOW48: u64 = (1 << 48) - 1;

/// The checksum `check` after a change whose one's complement sum of 16-bit
/// words is `delta` (the removed words complemented, the added ones plain;
/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). `delta` may be summed from
/// 32-bit words: a 32-bit word counts as the sum of its 16-bit halves once
/// folded.
#[inline(always)]
fn updated(check: u16, delta: u64) -> u16 {
    !fold((!check) as u64 + delta)
}

/// Folds a sum into 16 bits with end-around carry. Enough folds for any sum
/// below 2^63.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The one's complement sum of the complements of the two 32-bit halves of
/// `word` (unfolded).
#[inline(always)]
fn complement_sum(word: u64) -> u64 {
    plain_sum(!word)
}

/// The sum of the two 32-bit halves of `word` (unfolded).
#[inline(always)]
fn plain_sum(word: u64) -> u64 {
    (word & 0xffff_ffff) + (word >> 32)
}

/// The UDP checksum's change: the addresses' (`addresses`, from the caller)
/// and the ports': the allocation port moves from destination to source, so
/// only the sender's port leaves and the peer's arrives.
#[inline(always)]
fn ports_change(addresses: u64, transport: &Transport, bound: &Bound) -> u64 {
    addresses + (!transport.sender_port()) as u64 + bound.peer_port() as u64
}

/// A checksum of zero means "none" in UDP; a computed zero is sent as all ones
/// (RFC 768), which is the same value in one's complement.
#[inline(always)]
fn udp_checksum(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
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
