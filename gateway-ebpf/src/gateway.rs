//! The gateway's whitelist and proxy-address NAT.
//!
//! `gateway_tunnel_in` (TC ingress on the TUN device) lets a technician's
//! packet through only if its source is a peer of an active session and its
//! destination, protocol and port are whitelisted for that session; it then
//! rewrites proxy -> real destination and peer -> gateway LAN source with a
//! NAT port of its own, and sends the packet out of the LAN interface.
//! `gateway_lan_in` (XDP on the LAN interface) translates the replies of those
//! flows back, and the ICMP errors about them (port or host unreachable,
//! fragmentation needed, time exceeded, parameter problem), and keeps the
//! machine network from reaching the tunnel or being routed anywhere by the
//! gateway.
//!
//! The whitelist is checked on every packet, not only when a flow starts:
//! removing an entry or ending a session cuts its flows at once, both ways.
//! For a packet of an established flow the check is one array lookup: the
//! flow remembers the generations of the whitelist entry that admitted it,
//! and userspace changes them in the entry's slot whenever the entry, or
//! its session's peers, change (`RuleGeneration`). Conntrack otherwise only
//! remembers NAT ports.

use core::{
    mem,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{
        BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibLookup,
        xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_redirect_neigh, bpf_skb_change_head,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use ferry_ebpf_common::gateway::{
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_PEERS, DEFAULT_MAX_TARGETS, FLAG_NO_REDIRECT, FWD_HINTS, FlowForward,
    FlowKey, FlowReverse, FlowTimeouts, GatewayConfig, NAT_CLAIMS, NAT_PORT_MIN, NAT_PORT_TRIES, NAT_PORTS,
    NAT_SLOTS, Outcome, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PeerEntry, RuleGeneration, TargetKey,
    TargetRule, TargetTraffic, flow_hash, flow_hint, flow_hint_words, nat_slot,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum::{fold, replace, sum, sum_not, udp_checksum},
    packet::{ETH_P_IP, be16_at, ptr_at_mut},
};

/// Length of the link header before the IPv4 header of the TUN program's
/// packets: 0 on a TUN device, 14 under BPF_PROG_RUN (which requires an
/// Ethernet header for sched_cls). Set by the loader; read-only at run time.
#[unsafe(no_mangle)]
static GW_L2_LEN: Global<u32> = Global::new(0);

#[map(name = "GW_CONFIG")]
static GW_CONFIG: Array<GatewayConfig> = Array::with_max_entries(1, 0);

// Not preallocated, like the relay's bindings: a preallocated hash map reuses
// an element the moment userspace replaces or deletes it, so a lookup running
// then could read another session's entry. Without preallocation elements are
// freed after an RCU grace period.
#[map(name = "GW_PEERS")]
static GW_PEERS: HashMap<[u8; 4], PeerEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_PEERS, BPF_F_NO_PREALLOC);

#[map(name = "GW_TARGETS")]
static GW_TARGETS: HashMap<TargetKey, TargetRule> =
    HashMap::with_max_entries(DEFAULT_MAX_TARGETS, BPF_F_NO_PREALLOC);

// LRU: when flows outnumber the map, the least recently used are forgotten
// instead of new ones being refused. Every entry is re-validated against its
// NAT slot and the whitelist before use, so an evicted forward half only
// costs a new NAT port.
#[map(name = "GW_CT_FWD")]
static GW_CT_FWD: LruHashMap<FlowKey, FlowForward> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

// An array indexed by protocol, bucket and NAT port (`nat_slot`): the
// verifier inlines its lookups. Slots are written under a claim in
// GW_NAT_CLAIMS and read under their sequence lock (`FlowReverse::seq`).
#[map(name = "GW_NAT_SLOTS")]
static GW_NAT_SLOTS: Array<FlowReverse> = Array::with_max_entries(NAT_SLOTS, 0);

// Where a new flow's forward entry is put together: the TUN program's stack
// has no room for it.
#[map(name = "GW_FWD_SCRATCH")]
static GW_FWD_SCRATCH: PerCpuArray<FlowForward> = PerCpuArray::with_max_entries(1, 0);

// Where an established flow's NAT slot is, by its key's hash: the TUN
// program's short path finds the slot with two inlined array lookups
// instead of a hash lookup of the forward map. A plain u32 per entry, so
// one store writes it whole; a wrong or stale hint only fails the check of
// the slot it names.
#[map(name = "GW_FWD_HINT")]
static GW_FWD_HINT: Array<u32> = Array::with_max_entries(FWD_HINTS, 0);

#[map(name = "GW_NAT_CLAIMS")]
static GW_NAT_CLAIMS: HashMap<u32, u8> = HashMap::with_max_entries(NAT_CLAIMS, 0);

#[map(name = "GW_TRAFFIC")]
static GW_TRAFFIC: PerCpuArray<TargetTraffic> = PerCpuArray::with_max_entries(DEFAULT_MAX_TARGETS, 0);

// An array: the verifier inlines its lookups, so checking an established
// flow's whitelist entry costs a few instructions.
#[map(name = "GW_RULE_GEN")]
static GW_RULE_GEN: Array<RuleGeneration> = Array::with_max_entries(DEFAULT_MAX_TARGETS, 0);

#[map(name = "GW_COUNTERS")]
static GW_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Outcome::COUNT, 0);

const ETH_HLEN: usize = EthHdr::LEN;
const IPV4_HLEN: usize = Ipv4Hdr::LEN;
/// The L4 header of an option-less IPv4 packet in an Ethernet frame.
const LAN_L4: usize = ETH_HLEN + IPV4_HLEN;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// What an ICMP error must hold for a translation: its own header, the
/// quoted IPv4 header without options and the first 8 bytes of the quoted L4
/// header (RFC 792/1812 quote at least those), where ports and echo ids sit.
const ERROR_QUOTE: usize = ICMP_HLEN + IPV4_HLEN + 8;
/// Offsets inside that quote: the quoted IPv4 header and its L4 header.
const INNER_IP: usize = ICMP_HLEN;
const INNER_L4: usize = ICMP_HLEN + IPV4_HLEN;
/// Where a quoted TCP header's checksum sits, and where it ends.
const TCP_CHECK: usize = 16;
const AF_INET: u8 = 2;
/// Size argument of bpf_l3/l4_csum_replace for a 2-byte field.
const CSUM_16: u64 = 2;

/// The kernel's tick count. The verifier replaces the helper call with a
/// load of `jiffies` (any 64-bit JIT), so it costs next to nothing: it
/// decides whether a flow's stamp needs the clock at all
/// ([`FlowReverse::last_tick`]). The kernel increments jiffies before it
/// advances the coarse clock, so a stamp taken at a tick boundary can be
/// one tick old and stand for the whole tick: a flow may expire up to one
/// tick early.
#[inline(always)]
fn tick() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() }
}

/// CLOCK_MONOTONIC to a tick, for flows' stamps: a real helper call.
#[inline(always)]
fn clock() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A TUN packet's time: its tick, and the clock once some flow needed it.
/// Read at most once per packet, however many of the short path, the full
/// path and a new flow look at it.
struct Now {
    tick: u64,
    /// 0 until read (no reading of a clock that counts from boot is 0 once
    /// programs run): 8 bytes of the TUN program's full stack, not an
    /// Option's 16.
    ns: u64,
}

impl Now {
    #[inline(always)]
    fn ns(&mut self) -> u64 {
        if self.ns == 0 {
            self.ns = clock();
        }
        self.ns
    }
}

fn count(outcome: Outcome) {
    if let Some(counter) = GW_COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe { *counter += 1 };
    }
}

fn count_traffic(slot: u32, to_target: bool, bytes: u64) {
    if let Some(traffic) = GW_TRAFFIC.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe {
            if to_target {
                (*traffic).to_target_packets += 1;
                (*traffic).to_target_bytes += bytes;
            } else {
                (*traffic).from_target_packets += 1;
                (*traffic).from_target_bytes += bytes;
            }
        }
    }
}

// --- Technician -> target: TC on the TUN device ----------------------------
//
// Why TC and not XDP: the WireGuard engine writes GRO-coalesced TCP
// super-segments into the TUN with virtio-net NEEDS_CSUM, i.e. skbs in
// CHECKSUM_PARTIAL state, whose TCP checksum field holds only the
// pseudo-header sum. An XDP program cannot see ip_summed, so it cannot know
// whether it is updating a full checksum or a pseudo-header one, and would
// corrupt one of the two. bpf_l4_csum_replace knows the skb's state and does
// the right thing for both (BPF_F_PSEUDO_HDR marks the address changes that
// enter the pseudo-header). The IPv4 header's checksum is always a full one:
// it is updated in place. And generic XDP on a TUN gains nothing: the skb
// already exists, and generic XDP would even linearize 64 KiB super-segments.
//
// bpf_redirect_neigh to the LAN interface skips the kernel's input routing
// (no forwarding or accept_local sysctls needed on the TUN) and fills in the
// Ethernet header from the neighbour table, resolving it if needed.
//
// An established flow takes a short path: its NAT slot, found through the
// hint at its key's hash (or, if the hint names another slot, through its
// forward entry), and the array slot of its whitelist entry's generations,
// nothing else ([`RuleGeneration`]). Everything else (new flows, refusals, flows whose
// entry changed) takes the full path, which checks the peer and the
// whitelist as before and gives every refusal its outcome. Before both, the
// commonest case of the short path (a TCP or UDP packet with a full
// checksum whose hint names its slot) takes [`fast_path`], a straight line
// on whole words; whatever it does not take starts over in the full
// program as if it had not run.

#[classifier]
pub fn gateway_tunnel_in(ctx: TcContext) -> i32 {
    tunnel_verdict(&ctx)
}

/// The TUN program's body, shared with its benchmark variant.
#[inline(always)]
pub(crate) fn tunnel_verdict(ctx: &TcContext) -> i32 {
    let (outcome, lan_ifindex, no_redirect) = match GW_CONFIG.get(0) {
        Some(config) => {
            let outcome = match fast_path(ctx, config) {
                Some(outcome) => outcome,
                None => tunnel_in(ctx, config),
            };
            (outcome, config.lan_ifindex, config.flags & FLAG_NO_REDIRECT != 0)
        }
        None => (Outcome::Malformed, 0, false),
    };
    count(outcome);
    if outcome != Outcome::ForwardedToTarget {
        return TC_ACT_SHOT as i32;
    }
    if no_redirect {
        return TC_ACT_OK as i32;
    }
    // SAFETY: no parameters (NULL, 0): the helper looks the next hop up in
    // the FIB and the neighbour table of `lan_ifindex`.
    unsafe { bpf_redirect_neigh(lan_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Reads the integer `T` at packet address `at` with one load.
///
/// # Safety
/// The caller checked that the `size_of::<T>()` bytes at `at` lie in the
/// linear data, and called no helper that may move it since.
#[inline(always)]
unsafe fn load<T: Copy>(at: usize) -> T {
    // SAFETY: the caller's. Volatile: one access of exactly this width.
    unsafe { read_volatile(at as *const T) }
}

/// Writes `value` at packet address `at` with one store.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
unsafe fn store<T: Copy>(at: usize, value: T) {
    // SAFETY: the caller's.
    unsafe { write_volatile(at as *mut T, value) }
}

/// Reads the integer `T` at byte `offset` of NAT slot `slot` with one
/// volatile load (see [`reply_slot`] on the order of the loads).
///
/// # Safety
/// `slot` is an array element, and `offset` the offset of a field of
/// `FlowReverse` (or of two adjacent ones) aligned for `T`.
#[inline(always)]
unsafe fn slot_load<T: Copy>(slot: *const FlowReverse, offset: usize) -> T {
    // SAFETY: the caller's.
    unsafe { read_volatile((slot as usize + offset) as *const T) }
}

/// Where a TCP packet's checksum sits, and a UDP packet's, from their
/// headers' start.
const TCP_CSUM_AT: usize = 16;
const UDP_CSUM_AT: usize = 6;
/// Fragment offset and more-fragments flag in the IPv4 header's second word
/// loaded little-endian (bytes 6 and 7 in its upper half).
const RAW_FRAGMENT_BITS: u32 = 0xff3f_0000;
/// Version 4, a 20-byte header: the IPv4 header's first byte without
/// options.
const IPV4_NO_OPTIONS: u8 = 0x45;

/// The established flow's fast path: a TCP or UDP packet without IP
/// options or fragmentation, its headers in the linear data, a full L4
/// checksum (or a UDP packet without one), and a flow whose hint names its
/// NAT slot and whose whitelist entry has not changed since it started.
/// What it admits, the full path ([`tunnel_in`]) would admit by
/// [`hinted`] and translate the same, bit for bit; anything else (None)
/// goes there, which judges it from the start: a None leaves the packet
/// and the maps as they were.
///
/// Headers are read and written as whole words at fixed offsets, the
/// relay's way: the byte arrays of the full path cost a load, a shift and
/// an or per byte, and their spills. Words are little-endian loads of
/// network-order bytes; Internet checksums do not depend on the order of
/// the bytes of their 16-bit words as long as it is the same throughout
/// (RFC 1071, 2.(B)), so they are updated on the raw words. (x86-64 only,
/// see the docs: no alignment constraints on packet loads.)
#[inline(always)]
fn fast_path(ctx: &TcContext, config: &GatewayConfig) -> Option<Outcome> {
    let l2 = if GW_L2_LEN.load() == ETH_HLEN as u32 { ETH_HLEN } else { 0 };
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = start + l2;
    if ip + IPV4_HLEN + UDP_HLEN > end {
        return None;
    }
    // SAFETY: the 28 bytes at `ip` lie in the linear data.
    let (w0, w1, w2, src, dst, ports) = unsafe {
        (
            load::<u32>(ip),
            load::<u32>(ip + 4),
            load::<u32>(ip + 8),
            load::<u32>(ip + 12),
            load::<u32>(ip + 16),
            load::<u32>(ip + IPV4_HLEN),
        )
    };
    let ttl = w2 as u8;
    let protocol = (w2 >> 8) as u8;
    let udp = protocol == PROTO_UDP;
    let (l4_min, csum_at) = match protocol {
        PROTO_TCP => (TCP_HLEN, TCP_CSUM_AT),
        PROTO_UDP => (UDP_HLEN, UDP_CSUM_AT),
        _ => return None,
    };
    let total_len = ((w0 >> 16) as u16).swap_bytes() as u32;
    if w0 as u8 != IPV4_NO_OPTIONS
        || w1 & RAW_FRAGMENT_BITS != 0
        || ttl <= 1
        || total_len < (IPV4_HLEN + l4_min) as u32
    {
        return None;
    }
    let csum_field = ip + IPV4_HLEN + csum_at;
    if csum_field + 2 > end {
        return None;
    }
    // SAFETY: checked just above.
    let before = unsafe { load::<u16>(csum_field) };

    // A checksum field equal to the pseudo-header's sum may be a
    // partial one (see is_full_checksum), which the full path hands to the
    // helper; checked first, so that such a packet leaves nothing changed
    // here. The sum is byte-order independent, so it is compared on the
    // raw words.
    let l4_len = (total_len - IPV4_HLEN as u32).swap_bytes() >> 16;
    let pseudo = fold(sum_word(src) + sum_word(dst) + ((protocol as u32) << 8) + l4_len);
    if before == pseudo {
        return None;
    }

    let hint = flow_hint_words([protocol as u32, src, dst, ports]);
    let index = *GW_FWD_HINT.get(hint)?;
    let slot = GW_NAT_SLOTS.get_ptr_mut(index)?;
    // Under the slot's sequence lock, as hinted() reads it: peer, proxy and
    // the two ports are the slot's first three words, in the key's order.
    // SAFETY: `slot` is an array element, valid for the program's run; the
    // offsets are FlowReverse's fields'.
    let (nat_port, real, snat, counter, generation, last_seen, last_tick) = unsafe {
        let seq = read_volatile(&(*slot).seq);
        if seq & 1 != 0 {
            return None;
        }
        let ours = read_volatile(&(*slot).generation.path) != 0
            && read_volatile(&(*slot).protocol) == protocol
            && slot_load::<u32>(slot, mem::offset_of!(FlowReverse, peer)) == src
            && slot_load::<u32>(slot, mem::offset_of!(FlowReverse, proxy)) == dst
            && slot_load::<u32>(slot, mem::offset_of!(FlowReverse, peer_port)) == ports;
        let nat_port = slot_load::<u16>(slot, mem::offset_of!(FlowReverse, nat_port));
        let real = slot_load::<u32>(slot, mem::offset_of!(FlowReverse, real));
        let snat = slot_load::<u32>(slot, mem::offset_of!(FlowReverse, snat));
        let counter = read_volatile(&(*slot).counter);
        let generation = read_volatile(&(*slot).generation.rule);
        let last_seen = read_volatile(&(*slot).last_seen_ns);
        let last_tick = read_volatile(&(*slot).last_tick);
        if !ours || read_volatile(&(*slot).seq) != seq {
            return None;
        }
        (nat_port, real, snat, counter, generation, last_seen, last_tick)
    };
    let current = GW_RULE_GEN.get(counter)?;
    if current.rule == 0 || current.rule != generation {
        return None;
    }
    let tick = tick();
    if last_tick != tick {
        let ns = clock();
        if config.timeouts.expired(protocol, last_seen, ns) {
            return None;
        }
        // In place, without the claim: see established().
        // SAFETY: an array element, valid for the program's run.
        unsafe {
            (*slot).last_seen_ns = ns;
            (*slot).last_tick = tick;
        }
    }

    // The address change as the full path computes it (rewrite_to_target).
    let addresses = sum_word(!src) + sum_word(!dst) + sum_word(snat) + sum_word(real);
    let csum = if udp && before == 0 {
        // A UDP packet without checksum keeps it, as the helper would.
        0
    } else {
        let mangle = |check: u16| if udp && check == 0 { 0xffff } else { check };
        let after = mangle(csum_fold(csum_add(addresses, !(before as u32))));
        let port = csum_add(csum_add(!(after as u32), !(ports as u16 as u32)), nat_port as u32);
        mangle(csum_fold(port))
    };
    // The IPv4 checksum with the TTL, as rewrite_to_target() does it (RFC
    // 1624), on the raw words.
    let ttl_proto = w2 & 0xffff;
    let ip_sum = (!(w2 >> 16) & 0xffff) + addresses + (!ttl_proto & 0xffff) + (ttl_proto - 1);
    let ip_check = !fold(ip_sum) as u32;
    // SAFETY: every field written lies in the bytes checked above, and no
    // helper ran since.
    unsafe {
        store::<u32>(ip + 8, (ttl_proto - 1) | ip_check << 16);
        store::<u32>(ip + 12, snat);
        store::<u32>(ip + 16, real);
        store::<u16>(ip + IPV4_HLEN, nat_port);
        store::<u16>(csum_field, csum);
    }
    // The IP packet's length (a GRO super-segment counts whole).
    let bytes = (ctx.len() as usize - l2) as u64;
    // See forward().
    let redirect = config.flags & FLAG_NO_REDIRECT == 0;
    // SAFETY: the skb pointer is the program's context.
    if redirect && l2 == 0 && unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN as u32, 0) } != 0 {
        return Some(Outcome::RewriteFailed);
    }
    count_traffic(counter, true, bytes);
    Some(Outcome::ForwardedToTarget)
}

/// The sum of the two 16-bit halves of `word`.
#[inline(always)]
fn sum_word(word: u32) -> u32 {
    (word & 0xffff) + (word >> 16)
}

/// The L4 fields of a technician's packet that the whitelist and NAT use.
struct Ports {
    /// The source port, or the ICMP echo id.
    peer_port: [u8; 2],
    /// The destination port; 0 for ICMP.
    dport: [u8; 2],
    /// Where the L4 checksum sits, as an offset into the packet.
    /// A u32, not a usize: 8 bytes less of the TUN program's full stack.
    csum_offset: u32,
}

/// How a flow's packets are translated: from its forward entry, or from the
/// whitelist entry that admitted it.
#[derive(Clone, Copy)]
struct Translation {
    nat_port: [u8; 2],
    real: [u8; 4],
    snat: [u8; 4],
    counter: u32,
}

/// A pointer to `T` at `offset` in the skb's linear data. A TUN super-segment
/// may carry little of its headers there: then they are pulled in first
/// (which moves the data, so pointers are taken only after every pull).
#[inline(always)]
fn linear<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let need = offset + mem::size_of::<T>();
    if ctx.data() + need > ctx.data_end() {
        ctx.pull_data(need as u32).ok()?;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Like [`linear`], for bytes known to be in the linear data already. The
/// offset is hidden from the optimiser, which would otherwise merge the
/// check with an earlier one the verifier no longer trusts after a helper
/// call.
#[inline(always)]
fn linear_now<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let offset = core::hint::black_box(offset);
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn tunnel_in(ctx: &TcContext, config: &GatewayConfig) -> Outcome {
    // Only the two values the loader may set; anything else is treated as a
    // TUN, which is the only place the program is attached.
    let l2 = if GW_L2_LEN.load() == ETH_HLEN as u32 { ETH_HLEN } else { 0 };
    let Some(ip) = linear::<[u8; IPV4_HLEN]>(ctx, l2) else {
        // Shorter than an IPv4 header: a short IPv6 packet is still IPv6.
        return match ctx.load::<u8>(l2) {
            Ok(first) if first >> 4 != 4 => Outcome::NotIpv4,
            _ => Outcome::Malformed,
        };
    };
    // SAFETY: linear() checked the bytes lie in the linear data. A copy:
    // helpers below may move the data.
    let ip = unsafe { *ip };
    if ip[0] >> 4 != 4 {
        return Outcome::NotIpv4;
    }
    let header_len = (ip[0] & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if header_len < IPV4_HLEN || total_len < header_len {
        return Outcome::Malformed;
    }
    // More-fragments flag or a non-zero offset: later fragments carry no
    // ports to check.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Outcome::Fragment;
    }
    let protocol = ip[9];
    let l4 = l2 + header_len;
    let ip_payload = total_len - header_len;
    let mut now = Now { tick: tick(), ns: 0 };

    // The short path: a packet of an established flow whose whitelist entry
    // has not changed since. Anything it does not take ends in the full path.
    if ip[8] > 1 {
        if let Some(ports) = ports_of(ctx, protocol, l4, ip_payload) {
            let flow = flow_key(&ip, &ports);
            let hint = flow_hint(&flow);
            let known = match hinted(&flow, hint, &config.timeouts, &mut now) {
                Some(translation) => Some(translation),
                None => established(&flow, hint, None, &config.timeouts, &mut now),
            };
            if let Some(translation) = known {
                return forward(ctx, config, l2, &ip, &ports, translation);
            }
        }
    }

    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let Some(peer) = GW_PEERS.get_ptr(src) else {
        return Outcome::UnknownPeer;
    };
    // SAFETY: the map is not preallocated, so the element stays valid for this
    // run even if userspace deletes it meanwhile.
    let session = unsafe { (*peer).session };
    let Some(rule) = GW_TARGETS.get_ptr(TargetKey { session, proxy: dst, _pad: [0; 4] }) else {
        return Outcome::NotWhitelisted;
    };
    // SAFETY: as above.
    let rule = unsafe { &*rule };
    if rule.protocol != PROTO_ANY && rule.protocol != protocol {
        return Outcome::ProtocolNotAllowed;
    }

    let ports = match protocol {
        PROTO_TCP | PROTO_UDP => {
            let min_len = if protocol == PROTO_TCP { TCP_HLEN } else { UDP_HLEN };
            if ip_payload < min_len {
                return Outcome::Malformed;
            }
            let Some(ports) = ports_of(ctx, protocol, l4, ip_payload) else {
                return Outcome::Malformed;
            };
            if !rule.port_allowed(u16::from_be_bytes(ports.dport)) {
                return Outcome::PortNotAllowed;
            }
            ports
        }
        PROTO_ICMP => {
            if ip_payload < ICMP_HLEN {
                return Outcome::Malformed;
            }
            let Ok(head) = ctx.load::<[u8; ICMP_HLEN]>(l4) else {
                return Outcome::Malformed;
            };
            // Echo requests only: their id plays the port's role in the NAT.
            // Other ICMP from a technician (errors, timestamps) has nothing
            // to translate and no business on the machine network.
            if head[0] != ICMP_ECHO_REQUEST || head[1] != 0 {
                return Outcome::IcmpNotEcho;
            }
            let Some(ports) = ports_of(ctx, protocol, l4, ip_payload) else {
                return Outcome::Malformed;
            };
            ports
        }
        // Nothing else can be translated (no ports to NAT).
        _ => return Outcome::ProtocolNotAllowed,
    };
    if ip[8] <= 1 {
        return Outcome::TtlExceeded;
    }

    let flow = flow_key(&ip, &ports);
    let hint = flow_hint(&flow);
    let translation = match established(&flow, hint, Some((session, rule)), &config.timeouts, &mut now) {
        Some(translation) => translation,
        // The clock, read already if the flow was found expired: the same
        // reading.
        _ => match new_flow(&flow, session, rule, now.tick, now.ns()) {
            CLAIM_NONE => return Outcome::NatPortsExhausted,
            CLAIM_BUSY => return Outcome::NatSlotBusy,
            claim => Translation {
                nat_port: nat_port_of(claim - CLAIM_FIRST),
                real: rule.real,
                snat: rule.snat,
                counter: rule.counter,
            },
        },
    };
    forward(ctx, config, l2, &ip, &ports, translation)
}

/// The ports of a TCP or UDP packet, or the id of an ICMP echo request; None
/// for anything else, or a packet too short for them.
#[inline(always)]
fn ports_of(ctx: &TcContext, protocol: u8, l4: usize, ip_payload: usize) -> Option<Ports> {
    match protocol {
        PROTO_TCP | PROTO_UDP => {
            let (min_len, csum_at) = if protocol == PROTO_TCP { (TCP_HLEN, 16) } else { (UDP_HLEN, 6) };
            if ip_payload < min_len {
                return None;
            }
            let head = linear::<[u8; 4]>(ctx, l4)?;
            // SAFETY: linear() checked the bytes lie in the linear data.
            let head = unsafe { *head };
            Some(Ports {
                peer_port: [head[0], head[1]],
                dport: [head[2], head[3]],
                csum_offset: (l4 + csum_at) as u32,
            })
        }
        PROTO_ICMP => {
            if ip_payload < ICMP_HLEN {
                return None;
            }
            let head = linear::<[u8; ICMP_HLEN]>(ctx, l4)?;
            // SAFETY: as above.
            let head = unsafe { *head };
            if head[0] != ICMP_ECHO_REQUEST || head[1] != 0 {
                return None;
            }
            Some(Ports { peer_port: [head[4], head[5]], dport: [0, 0], csum_offset: (l4 + 2) as u32 })
        }
        _ => None,
    }
}

/// Keys are built as four aligned words: the BPF backend cannot store the
/// three unaligned zero bytes of `_pad: [0; 3]` (or of zeroed memory after
/// the protocol byte) and called the object's byte-by-byte memset for them
/// on every packet.
#[inline(always)]
fn flow_key(ip: &[u8; IPV4_HLEN], ports: &Ports) -> FlowKey {
    let words = [
        u32::from_ne_bytes([ip[9], 0, 0, 0]),
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        u32::from_ne_bytes([ports.peer_port[0], ports.peer_port[1], ports.dport[0], ports.dport[1]]),
    ];
    // SAFETY: FlowKey is repr(C), 16 bytes of byte arrays in this order,
    // without padding; every bit pattern is a valid value.
    unsafe { mem::transmute::<[u32; 4], FlowKey>(words) }
}

/// Rewrites an admitted packet and sends it on its way.
#[inline(always)]
fn forward(
    ctx: &TcContext,
    config: &GatewayConfig,
    l2: usize,
    ip: &[u8; IPV4_HLEN],
    ports: &Ports,
    translation: Translation,
) -> Outcome {
    if rewrite_to_target(ctx, l2, ip, ports, &translation).is_none() {
        return Outcome::RewriteFailed;
    }
    // The IP packet's length (a GRO super-segment counts whole).
    let bytes = (ctx.len() as usize - l2) as u64;
    // bpf_redirect_neigh pulls an Ethernet header off before it routes (it
    // drops skbs whose MAC header does not precede the network header, as on
    // a TUN's ingress) and writes the real one from the neighbour table. A
    // zeroed header in front is what bpf_skb_change_head is for: L3 -> L2
    // redirects. (Since Linux 5.12 it is not capped at the TUN's MTU.)
    let redirect = config.flags & FLAG_NO_REDIRECT == 0;
    // SAFETY: the skb pointer is the program's context.
    if redirect && l2 == 0 && unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_HLEN as u32, 0) } != 0 {
        return Outcome::RewriteFailed;
    }
    count_traffic(translation.counter, true, bytes);
    Outcome::ForwardedToTarget
}

/// What a reply's translation needs of its flow's NAT slot.
#[derive(Clone, Copy)]
struct Back {
    peer: [u8; 4],
    proxy: [u8; 4],
    peer_port: [u8; 2],
    counter: u32,
    path: u64,
    last_seen_ns: u64,
    last_tick: u64,
}

/// [`Back`] of the flow in NAT slot `slot` if it is the one a reply from
/// `real`:`target_port` to `snat` belongs to, read under the slot's
/// sequence lock (see [`FlowReverse::seq`]): None if not, or while a
/// writer is at it, or if one wrote it meanwhile. Volatile reads: the
/// compiler keeps them in this order, and the CPU does too on x86-64, whose
/// loads are not reordered with other loads (nor stores with other stores,
/// on the writer's side). Field by field, not a copy of the slot: only
/// what the reply needs.
#[inline(always)]
fn reply_slot(slot: *const FlowReverse, real: [u8; 4], snat: [u8; 4], target_port: [u8; 2]) -> Option<Back> {
    // SAFETY: `slot` is an array element, valid for the program's run.
    unsafe {
        let seq = read_volatile(&(*slot).seq);
        if seq & 1 != 0 {
            return None;
        }
        let path = read_volatile(&(*slot).generation.path);
        let ours = path != 0
            && read_volatile(&(*slot).real) == real
            && read_volatile(&(*slot).snat) == snat
            && read_volatile(&(*slot).target_port) == target_port;
        let back = Back {
            peer: read_volatile(&(*slot).peer),
            proxy: read_volatile(&(*slot).proxy),
            peer_port: read_volatile(&(*slot).peer_port),
            counter: read_volatile(&(*slot).counter),
            path,
            last_seen_ns: read_volatile(&(*slot).last_seen_ns),
            last_tick: read_volatile(&(*slot).last_tick),
        };
        if !ours || read_volatile(&(*slot).seq) != seq {
            return None;
        }
        Some(back)
    }
}

/// Whether NAT slot `slot` belongs to `flow` of `session`, translated to
/// `real` from `snat`, judged under its sequence lock as [`reply_slot`] does
/// but in place (the TUN program's stack has no room for a copy): its
/// stamp and tick, and whether it has `admitted`'s counter and generations.
#[inline(always)]
fn owned_slot(
    slot: *const FlowReverse,
    flow: &FlowKey,
    session: u64,
    real: [u8; 4],
    snat: [u8; 4],
    admitted: Option<&TargetRule>,
) -> Option<(u64, u64, bool)> {
    // SAFETY: `slot` is an array element, valid for the program's run.
    unsafe {
        let seq = read_volatile(&(*slot).seq);
        if seq & 1 != 0 {
            return None;
        }
        let owned = read_volatile(&(*slot).generation.path) != 0
            && read_volatile(&(*slot).peer) == flow.peer
            && read_volatile(&(*slot).peer_port) == flow.peer_port
            && read_volatile(&(*slot).proxy) == flow.proxy
            && read_volatile(&(*slot).session) == session
            && read_volatile(&(*slot).real) == real
            && read_volatile(&(*slot).snat) == snat
            && read_volatile(&(*slot).target_port) == flow.dport;
        let last_seen = read_volatile(&(*slot).last_seen_ns);
        let last_tick = read_volatile(&(*slot).last_tick);
        let current = match admitted {
            Some(rule) => {
                read_volatile(&(*slot).counter) == rule.counter
                    && read_volatile(&(*slot).generation) == rule.generation
            }
            None => true,
        };
        if !owned || read_volatile(&(*slot).seq) != seq {
            return None;
        }
        Some((last_seen, last_tick, current))
    }
}

/// What [`with_claim`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    Written,
    /// Someone else holds the claim right now (another CPU, or the
    /// userspace sweep), or the claims map is full: the slot could not be
    /// judged.
    Busy,
    /// `accept` declined the slot as it is.
    Declined,
}

/// Writes NAT slot `index` as its only writer: `accept` judges the slot as
/// it is, and only then `write` writes it, between the sequence lock's two
/// stores (odd while it writes), so that readers see either the old or the
/// new flow, never a mix.
#[inline(always)]
fn with_claim(
    index: u32,
    accept: impl FnOnce(&FlowReverse) -> bool,
    write: impl FnOnce(*mut FlowReverse),
) -> Claim {
    if GW_NAT_CLAIMS.insert(&index, &0, BPF_NOEXIST as u64).is_err() {
        return Claim::Busy;
    }
    let written = match GW_NAT_SLOTS.get_ptr_mut(index) {
        // SAFETY: an array element; only its stamps may change under us.
        Some(slot) if accept(unsafe { &*slot }) => {
            // SAFETY: as above; the claim makes us its only writer.
            unsafe {
                let odd = read_volatile(&(*slot).seq) | 1;
                write_volatile(&mut (*slot).seq, odd);
                write(slot);
                write_volatile(&mut (*slot).seq, odd.wrapping_add(1));
            }
            Claim::Written
        }
        _ => Claim::Declined,
    };
    let _ = GW_NAT_CLAIMS.remove(&index);
    written
}

/// Points hint `hint` (a flow key's hash) at NAT slot `index`.
#[inline(always)]
fn set_hint(hint: u32, index: u32) {
    if let Some(entry) = GW_FWD_HINT.get_ptr_mut(hint) {
        // SAFETY: an array element; one aligned 4-byte store, which no
        // reader sees half done.
        unsafe { write_volatile(entry, index) };
    }
}

/// The short path's first try: how an established, live flow whose hint
/// names its NAT slot is translated, without the forward map. The slot
/// holds the flow's whole key and its translation, under its sequence
/// lock; the whitelist entry's generations in the slot admit it as the
/// forward entry's would. Refreshes the slot's stamp (once per tick). None:
/// no such slot, or anything to judge again; the forward map decides.
#[inline(always)]
fn hinted(flow: &FlowKey, hint: u32, timeouts: &FlowTimeouts, now: &mut Now) -> Option<Translation> {
    let index = *GW_FWD_HINT.get(hint)?;
    let slot = GW_NAT_SLOTS.get_ptr_mut(index)?;
    // SAFETY: `slot` is an array element, valid for the program's run.
    let (translation, generation, last_seen, last_tick) = unsafe {
        let seq = read_volatile(&(*slot).seq);
        if seq & 1 != 0 {
            return None;
        }
        let ours = read_volatile(&(*slot).generation.path) != 0
            && read_volatile(&(*slot).protocol) == flow.protocol
            && read_volatile(&(*slot).peer) == flow.peer
            && read_volatile(&(*slot).peer_port) == flow.peer_port
            && read_volatile(&(*slot).proxy) == flow.proxy
            && read_volatile(&(*slot).target_port) == flow.dport;
        let translation = Translation {
            nat_port: read_volatile(&(*slot).nat_port),
            real: read_volatile(&(*slot).real),
            snat: read_volatile(&(*slot).snat),
            counter: read_volatile(&(*slot).counter),
        };
        let generation = read_volatile(&(*slot).generation.rule);
        let last_seen = read_volatile(&(*slot).last_seen_ns);
        let last_tick = read_volatile(&(*slot).last_tick);
        if !ours || read_volatile(&(*slot).seq) != seq {
            return None;
        }
        (translation, generation, last_seen, last_tick)
    };
    let current = GW_RULE_GEN.get(translation.counter)?;
    if current.rule == 0 || current.rule != generation {
        return None;
    }
    let tick = now.tick;
    if last_tick != tick {
        let ns = now.ns();
        if timeouts.expired(flow.protocol, last_seen, ns) {
            return None;
        }
        // In place, without the claim: see established().
        // SAFETY: an array element, valid for the program's run.
        unsafe {
            (*slot).last_seen_ns = ns;
            (*slot).last_tick = tick;
        }
    }
    Some(translation)
}

/// How an established, live flow is translated; refreshes its timestamps
/// (once per tick: see [`FlowReverse::last_tick`]).
///
/// `admitted`: None on the short path, which trusts the flow's copy of its
/// whitelist entry's generations if the entry's slot still holds them.
/// Otherwise the session and entry the full path just checked, against
/// which the flow's translation is checked instead; the flow then takes the
/// entry's current generations, and its next packets the short path.
#[inline(always)]
fn established(
    flow: &FlowKey,
    hint: u32,
    admitted: Option<(u64, &TargetRule)>,
    timeouts: &FlowTimeouts,
    now: &mut Now,
) -> Option<Translation> {
    let forward = GW_CT_FWD.get_ptr_mut(flow)?;
    // SAFETY: an element of an LRU map stays valid during this run (RCU); a
    // concurrent writer can only change timestamps, counters and
    // generations.
    let forward = unsafe { &mut *forward };
    let session = match admitted {
        None => {
            let current = GW_RULE_GEN.get(forward.counter)?;
            if !current.admits(&forward.generation) {
                return None;
            }
            forward.session
        }
        // A flow of an earlier session of the same peer address, or of an
        // entry whose real address or SNAT address changed since, is not
        // this flow.
        Some((session, rule)) => {
            if forward.session != session || forward.real != rule.real || forward.snat != rule.snat {
                return None;
            }
            session
        }
    };
    let index = nat_slot(flow.protocol, forward.real, forward.snat, flow.dport, forward.nat_port)?;
    let slot = GW_NAT_SLOTS.get_ptr_mut(index)?;
    // The slot owns the NAT port; if it was freed or taken over by another
    // flow, this flow needs a new port.
    let rule = admitted.map(|(_, rule)| rule);
    let (last_seen, last_tick, current) = owned_slot(slot, flow, session, forward.real, forward.snat, rule)?;
    // Stamped in this tick, both halves: alive, and a new stamp would be
    // the same one.
    let tick = now.tick;
    let refresh = last_tick != tick || forward.last_tick != tick;
    let now = if refresh { now.ns() } else { 0 };
    if refresh && timeouts.expired(flow.protocol, last_seen, now) {
        return None;
    }
    if let Some(rule) = rule {
        if !current {
            let (real, snat) = (forward.real, forward.snat);
            let taken = with_claim(
                index,
                |current| owns(current, flow, session, real, snat),
                // SAFETY: an array element, under the claim.
                |slot| unsafe {
                    write_volatile(&mut (*slot).counter, rule.counter);
                    write_volatile(&mut (*slot).generation, rule.generation);
                },
            );
            // Busy: new_flow() finds the flow in its slot and drops this
            // one packet rather than give the flow another port.
            if taken != Claim::Written {
                return None;
            }
        }
        forward.counter = rule.counter;
        forward.generation = rule.generation;
    }
    if refresh {
        // In place, without the claim: a stamp written into a slot another
        // flow took meanwhile is only a recent time for that flow.
        // SAFETY: an array element, valid for the program's run.
        unsafe {
            (*slot).last_seen_ns = now;
            (*slot).last_tick = tick;
        }
        forward.last_seen_ns = now;
        forward.last_tick = tick;
    }
    set_hint(hint, index);
    Some(Translation {
        nat_port: forward.nat_port,
        real: forward.real,
        snat: forward.snat,
        counter: forward.counter,
    })
}

/// Whether a NAT slot belongs to `flow` of `session`, translated to `real`
/// from `snat`.
#[inline(always)]
fn owns(reverse: &FlowReverse, flow: &FlowKey, session: u64, real: [u8; 4], snat: [u8; 4]) -> bool {
    reverse.in_use()
        && reverse.peer == flow.peer
        && reverse.peer_port == flow.peer_port
        && reverse.proxy == flow.proxy
        && reverse.session == session
        && reverse.is_reply(real, snat, flow.dport)
}

/// Whether NAT slot `slot` holds `flow` of `session`, translated to `real`
/// from `snat`, read without the claim under its sequence lock: None while
/// a writer is at it (or wrote it meanwhile), when it cannot be told.
#[inline(always)]
fn holds(
    slot: *const FlowReverse,
    flow: &FlowKey,
    session: u64,
    real: [u8; 4],
    snat: [u8; 4],
) -> Option<bool> {
    // SAFETY: `slot` is an array element, valid for the program's run.
    unsafe {
        let seq = read_volatile(&(*slot).seq);
        if seq & 1 != 0 {
            return None;
        }
        let held = read_volatile(&(*slot).generation.path) != 0
            && read_volatile(&(*slot).protocol) == flow.protocol
            && read_volatile(&(*slot).peer) == flow.peer
            && read_volatile(&(*slot).peer_port) == flow.peer_port
            && read_volatile(&(*slot).proxy) == flow.proxy
            && read_volatile(&(*slot).target_port) == flow.dport
            && read_volatile(&(*slot).session) == session
            && read_volatile(&(*slot).real) == real
            && read_volatile(&(*slot).snat) == snat;
        if read_volatile(&(*slot).seq) != seq {
            return None;
        }
        Some(held)
    }
}

/// Whether the flow in a NAT slot was cut by its whitelist entry's removal,
/// narrowing or change of address (or its session's end): its replies are
/// refused already ([`live_flow`]), and its next packet is judged anew.
#[inline(always)]
fn cut(reverse: &FlowReverse) -> bool {
    match GW_RULE_GEN.get(reverse.counter) {
        Some(current) => current.path != reverse.generation.path,
        None => true,
    }
}

/// Writes `flow` into NAT slot `slot`: every field but `seq` and `replied`,
/// one volatile store each, so that none moves out from between the
/// sequence lock's two stores. (No FlowReverse on the stack: it would not
/// fit.)
///
/// # Safety
/// `slot` is an array element, and the caller holds its claim.
#[inline(always)]
unsafe fn write_flow(
    slot: *mut FlowReverse,
    flow: &FlowKey,
    session: u64,
    rule: &TargetRule,
    port: [u8; 2],
    tick: u64,
    now: u64,
) {
    // SAFETY: the caller's.
    unsafe {
        write_volatile(&mut (*slot).protocol, flow.protocol);
        write_volatile(&mut (*slot).nat_port, port);
        write_volatile(&mut (*slot).peer, flow.peer);
        write_volatile(&mut (*slot).proxy, flow.proxy);
        write_volatile(&mut (*slot).peer_port, flow.peer_port);
        write_volatile(&mut (*slot).target_port, flow.dport);
        write_volatile(&mut (*slot).real, rule.real);
        write_volatile(&mut (*slot).snat, rule.snat);
        write_volatile(&mut (*slot).counter, rule.counter);
        write_volatile(&mut (*slot).session, session);
        write_volatile(&mut (*slot).last_seen_ns, now);
        write_volatile(&mut (*slot).last_tick, tick);
        write_volatile(&mut (*slot).generation, rule.generation);
    }
}

/// What [`claim_own`], [`claim_free`] and [`new_flow`] return: no slot
/// claimed; the flow's own slot is busy (the packet is dropped, the flow
/// keeps its port); or, from [`CLAIM_FIRST`] on, the slot claimed plus it.
/// Plain integers, not an Option: an Option's undefined payload in its
/// None, returned from a subprogram, is a read of an uninitialised
/// register to the verifier.
const CLAIM_NONE: u32 = 0;
const CLAIM_BUSY: u32 = 1;
const CLAIM_FIRST: u32 = 2;

/// The flow's candidate slots: the first slot of its bucket (a candidate's
/// slot is it plus the port's offset) and the offset of its hashed port.
#[inline(always)]
fn candidates(flow: &FlowKey, rule: &TargetRule) -> Option<(u32, u32)> {
    let first = nat_slot(flow.protocol, rule.real, rule.snat, flow.dport, NAT_PORT_MIN.to_be_bytes())?;
    Some((first, flow_hash(flow) % NAT_PORTS))
}

/// The flow's own slot, if one of its candidates still holds it (its
/// forward half was evicted, its entry changed, or its slot was busy a
/// moment ago), written anew under its claim. A live flow must never move
/// to another port, whatever the candidates before its own hold now. A
/// slot being written may be the flow's: [`CLAIM_BUSY`], and the packet is
/// dropped (it waits for nothing).
#[inline(never)]
fn claim_own(flow: &FlowKey, session: u64, rule: &TargetRule, tick: u64, now: u64) -> u32 {
    let Some((first, start)) = candidates(flow, rule) else {
        return CLAIM_NONE;
    };
    for i in 0..NAT_PORT_TRIES {
        let offset = (start + i) % NAT_PORTS;
        let Some(slot) = GW_NAT_SLOTS.get_ptr(first + offset) else {
            continue;
        };
        match holds(slot, flow, session, rule.real, rule.snat) {
            Some(false) => continue,
            None => return CLAIM_BUSY,
            Some(true) => {}
        }
        let port = ((NAT_PORT_MIN as u32 + offset) as u16).to_be_bytes();
        return match with_claim(
            first + offset,
            |current| owns(current, flow, session, rule.real, rule.snat),
            // SAFETY: an array element, under the claim. `replied` stays:
            // the same flow.
            |slot| unsafe { write_flow(slot, flow, session, rule, port, tick, now) },
        ) {
            Claim::Written => first + offset + CLAIM_FIRST,
            Claim::Busy => CLAIM_BUSY,
            // Freed or taken over since it was read: a new flow after all.
            Claim::Declined => CLAIM_NONE,
        };
    }
    CLAIM_NONE
}

/// A slot for a new flow: the first candidate that is free or holds an
/// expired flow.
#[inline(never)]
fn claim_free(flow: &FlowKey, session: u64, rule: &TargetRule, tick: u64, now: u64) -> u32 {
    let Some(config) = GW_CONFIG.get(0) else {
        return CLAIM_NONE;
    };
    let timeouts = &config.timeouts;
    let Some((first, start)) = candidates(flow, rule) else {
        return CLAIM_NONE;
    };
    for i in 0..NAT_PORT_TRIES {
        let offset = (start + i) % NAT_PORTS;
        let port = ((NAT_PORT_MIN as u32 + offset) as u16).to_be_bytes();
        let taken = with_claim(
            first + offset,
            |current| !current.in_use() || timeouts.expired(flow.protocol, current.last_seen_ns, now),
            // SAFETY: an array element, under the claim.
            |slot| unsafe {
                write_flow(slot, flow, session, rule, port, tick, now);
                write_volatile(&mut (*slot).replied, 0);
            },
        );
        if taken == Claim::Written {
            return first + offset + CLAIM_FIRST;
        }
    }
    CLAIM_NONE
}

/// Frees, for a new flow whose every candidate is live, the first candidate
/// whose flow was cut by a whitelist change, or never saw a reply and has
/// been idle past [`FlowTimeouts::unanswered_ns`]; [`claim_free`] then
/// takes it (unless another CPU's new flow took it first). Whether it
/// freed one (1) or not (0). Frees rather than takes: a frame of its own
/// with fewer arguments and live values, which fits beside the TUN
/// program's where a second round of [`claim_free`]'s did not.
#[inline(never)]
fn free_stale(flow: &FlowKey, rule: &TargetRule, now: u64) -> u32 {
    let Some(config) = GW_CONFIG.get(0) else {
        return 0;
    };
    let unanswered = config.timeouts.unanswered_ns;
    let Some((first, start)) = candidates(flow, rule) else {
        return 0;
    };
    for i in 0..NAT_PORT_TRIES {
        let offset = (start + i) % NAT_PORTS;
        let freed = with_claim(
            first + offset,
            |current| {
                current.in_use()
                    && (cut(current)
                        || (current.replied == 0
                            && now > current.last_seen_ns
                            && now - current.last_seen_ns > unanswered))
            },
            // Free: its generation 0 is what tells (FlowReverse::in_use).
            // SAFETY: an array element, under the claim.
            |slot| unsafe { write_volatile(&mut (*slot).generation, RuleGeneration::default()) },
        );
        if freed == Claim::Written {
            return 1;
        }
    }
    0
}

/// The NAT port of NAT slot `index`, as it sits in a packet.
#[inline(always)]
fn nat_port_of(index: u32) -> [u8; 2] {
    ((NAT_PORT_MIN as u32 + index % NAT_PORTS) as u16).to_be_bytes()
}

/// Claims a NAT port for a flow the short path did not find: the port it
/// holds already if one of its candidate slots (its hashed port and the
/// next few) still holds it ([`claim_own`]), otherwise a free one
/// ([`claim_free`]), otherwise one of a cut or unanswered flow
/// ([`free_stale`]), and writes its forward half ([`forward_half`]). Each
/// a subprogram called from here, none from another: the TUN program's
/// stack and any two nested frames would not fit. Returns [`CLAIM_NONE`]
/// (every port it could take is in use), [`CLAIM_BUSY`] or the claimed
/// slot plus [`CLAIM_FIRST`].
#[inline(always)]
fn new_flow(flow: &FlowKey, session: u64, rule: &TargetRule, tick: u64, now: u64) -> u32 {
    let mut claim = claim_own(flow, session, rule, tick, now);
    if claim == CLAIM_NONE {
        claim = claim_free(flow, session, rule, tick, now);
    }
    if claim == CLAIM_NONE && free_stale(flow, rule, now) != 0 {
        claim = claim_free(flow, session, rule, tick, now);
    }
    if claim < CLAIM_FIRST {
        return claim;
    }
    forward_half(flow, session, rule, claim - CLAIM_FIRST)
}

/// Writes the forward half of `flow`, which just claimed NAT slot `index`,
/// stamped as the slot is; frees the slot again if it cannot.
#[inline(never)]
fn forward_half(flow: &FlowKey, session: u64, rule: &TargetRule, index: u32) -> u32 {
    let nat_port = nat_port_of(index);
    let Some(slot) = GW_NAT_SLOTS.get_ptr(index) else {
        return CLAIM_NONE;
    };
    // SAFETY: an array element; only stamps, which anyone may refresh.
    let (now, tick) = unsafe { (read_volatile(&(*slot).last_seen_ns), read_volatile(&(*slot).last_tick)) };
    set_hint(flow_hint(flow), index);
    let inserted = match GW_FWD_SCRATCH.get_ptr_mut(0) {
        Some(forward) => {
            // SAFETY: a per-CPU slot, used only by this CPU while we run.
            let forward = unsafe { &mut *forward };
            *forward = FlowForward {
                nat_port,
                _pad: [0; 2],
                real: rule.real,
                snat: rule.snat,
                counter: rule.counter,
                session,
                last_seen_ns: now,
                last_tick: tick,
                generation: rule.generation,
            };
            GW_CT_FWD.insert(flow, forward, BPF_ANY as u64).is_ok()
        }
        None => false,
    };
    if !inserted {
        // Without the forward half the port would stay claimed for nothing.
        with_claim(
            index,
            |current| owns(current, flow, session, rule.real, rule.snat),
            // Free: its generation 0 is what tells (FlowReverse::in_use).
            // SAFETY: an array element, under the claim.
            |slot| unsafe { write_volatile(&mut (*slot).generation, RuleGeneration::default()) },
        );
        return CLAIM_NONE;
    }
    index + CLAIM_FIRST
}

/// Rewrites proxy -> real destination, peer -> SNAT source, the source port
/// (ICMP: echo id) -> NAT port and TTL - 1. The L4 checksum with the
/// kernel's helper (see above), the rest in place. None: the packet's
/// headers could not be reached, and it is left as it was.
#[inline(always)]
fn rewrite_to_target(
    ctx: &TcContext,
    l2: usize,
    ip: &[u8; IPV4_HLEN],
    ports: &Ports,
    translation: &Translation,
) -> Option<()> {
    let (real, snat) = (&translation.real, &translation.snat);
    // One checksum difference for the address change, computed here instead
    // of by a helper per field: the helper takes it with size 0 ("by diff").
    // It is a 32-bit sum of 16-bit words read in memory order, as the
    // kernel's csum_partial sums packet bytes; a dozen words cannot overflow.
    let addresses = sum_ne_not(&[ip[12], ip[13], ip[14], ip[15]])
        + sum_ne_not(&[ip[16], ip[17], ip[18], ip[19]])
        + sum_ne(snat)
        + sum_ne(real);

    // The L4 checksum covers the addresses through the pseudo-header (not for
    // ICMP): BPF_F_PSEUDO_HDR, so that a CHECKSUM_PARTIAL pseudo-header sum is
    // updated too. The port (ICMP: echo id) is covered as data, which the
    // helper leaves to the checksum completion of a CHECKSUM_PARTIAL skb.
    // Helpers first: they may move the data, and the pointers below are taken
    // after them.
    let protocol = ip[9];
    let udp = protocol == PROTO_UDP;
    let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let old_port = u16::from_ne_bytes(ports.peer_port);
    let new_port = u16::from_ne_bytes(translation.nat_port);
    let port_done = if protocol == PROTO_ICMP {
        false
    } else {
        let field = linear::<[u8; 2]>(ctx, ports.csum_offset as usize)?;
        // SAFETY: linear() checked the bytes lie in the linear data.
        let before = unsafe { *field };
        if is_full_checksum(ip, before) {
            let before = u16::from_ne_bytes(before);
            // A UDP packet without checksum keeps it, as the helper would.
            if !(udp && before == 0) {
                let mangle = |check: u16| if udp && check == 0 { 0xffff } else { check };
                // The helper's two steps, as it computes them (see
                // port_by_state): bit for bit what it would write.
                let after = mangle(csum_fold(csum_add(addresses, !(before as u32))));
                let port = csum_add(csum_add(!(after as u32), !(old_port as u32)), new_port as u32);
                // SAFETY: no helper since linear(): the field is still there.
                unsafe { *field = mangle(csum_fold(port)).to_ne_bytes() };
            }
            true
        } else {
            let before = u16::from_ne_bytes(before) as u32 | (udp as u32) << 16;
            let port_pair = old_port as u32 | (new_port as u32) << 16;
            if !checksum_by_helper(ctx, ports.csum_offset, before, addresses, port_pair) {
                return None;
            }
            true
        }
    };
    if !port_done {
        ctx.l4_csum_replace(ports.csum_offset as usize, old_port as u64, new_port as u64, mangled | CSUM_16)
            .ok()?;
    }

    // TCP/UDP: the source port at the start of the header; ICMP: the echo id
    // 4 bytes in. Both were read through linear(), so they are in the
    // linear data; linear_now() only repeats the bounds check.
    let port_offset = l2 + (ip[0] & 0x0f) as usize * 4 + if protocol == PROTO_ICMP { 4 } else { 0 };
    // The IPv4 checksum is never partial: updated here (RFC 1624), with the
    // TTL, which shares its word with the protocol.
    let removed = sum_not(&[ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19]])
        + !u16::from_be_bytes([ip[8], ip[9]]) as u32;
    let added = sum(&[snat[0], snat[1], snat[2], snat[3], real[0], real[1], real[2], real[3]])
        + u16::from_be_bytes([ip[8] - 1, ip[9]]) as u32;
    let check = replace([ip[10], ip[11]], removed, added).to_be_bytes();
    let header = linear_now::<[u8; IPV4_HLEN]>(ctx, l2)?;
    // SAFETY: linear_now() checked the bytes lie in the linear data.
    unsafe {
        let header = &mut *header;
        header[8] = ip[8] - 1;
        [header[10], header[11]] = check;
        [header[12], header[13], header[14], header[15]] = *snat;
        [header[16], header[17], header[18], header[19]] = *real;
    }
    let port = linear_now::<[u8; 2]>(ctx, port_offset)?;
    // SAFETY: as above.
    unsafe { *port = translation.nat_port };
    Some(())
}

/// The L4 checksum of a TCP or UDP packet that may be partial: the address
/// change with the helper (BPF_F_PSEUDO_HDR), the port's share in place
/// where the helper's result tells the skb's state ([`port_by_state`]) and
/// with the helper again where it does not. False: a helper failed.
///
/// A function of its own (a BPF subprogram), arguments packed into five
/// registers: inlined, its locals leave the TUN program's stack no room for
/// the new-flow subprogram's frame. `before`: the field as read (native
/// order) and, in bit 16, whether the packet is UDP; `ports`: the old port
/// and, in the high half, the new one (both native order).
#[inline(never)]
fn checksum_by_helper(ctx: &TcContext, csum_offset: u32, before: u32, addresses: u32, ports: u32) -> bool {
    let csum_offset = csum_offset as usize;
    let udp = before >> 16 != 0;
    let before = before as u16;
    let (old_port, new_port) = (ports as u16, (ports >> 16) as u16);
    let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if ctx.l4_csum_replace(csum_offset, 0, addresses as u64, BPF_F_PSEUDO_HDR as u64 | mangled).is_err() {
        return false;
    }
    match port_by_state(ctx, csum_offset, before, addresses, udp, old_port, new_port) {
        Some(true) => true,
        Some(false) => {
            ctx.l4_csum_replace(csum_offset, old_port as u64, new_port as u64, mangled | CSUM_16).is_ok()
        }
        None => false,
    }
}

/// Whether a TCP or UDP packet's checksum field `field` holds a full
/// checksum, without asking the kernel (a helper call, the largest single
/// cost of an established flow's packet on a machine with retpolines).
///
/// A CHECKSUM_PARTIAL skb (what a NEEDS_CSUM write into the TUN makes) holds
/// the sum of its pseudo-header in the field, with the L4 length its IPv4
/// header says: the checksum completion adds the data to it, and the
/// kernel's GSO segmentation relies on that length. A field that holds
/// anything else is a full checksum, or a partial one that was wrong before
/// the gateway touched it (its completion would be wrong in any case). A
/// field equal to the pseudo-header sum is a partial one, or a full one by
/// a chance of 1 in 65,536: not known, and the helper, which knows the skb,
/// decides as before.
#[inline(always)]
fn is_full_checksum(ip: &[u8; IPV4_HLEN], field: [u8; 2]) -> bool {
    let header_len = (ip[0] & 0x0f) as u32 * 4;
    let l4_len = (u16::from_be_bytes([ip[2], ip[3]]) as u32).wrapping_sub(header_len) & 0xffff;
    let sum = u16::from_be_bytes([ip[12], ip[13]]) as u32
        + u16::from_be_bytes([ip[14], ip[15]]) as u32
        + u16::from_be_bytes([ip[16], ip[17]]) as u32
        + u16::from_be_bytes([ip[18], ip[19]]) as u32
        + ip[9] as u32
        + l4_len;
    let sum = (sum & 0xffff) + (sum >> 16);
    let pseudo = ((sum & 0xffff) + (sum >> 16)) as u16;
    u16::from_be_bytes(field) != pseudo
}

/// The port's share of the L4 checksum, without a second helper call where
/// the first one told the skb's checksum state: true when it is done (or
/// has nothing to do), false when the helper must do it.
///
/// The port is covered as data: a CHECKSUM_PARTIAL skb's field (the
/// pseudo-header sum) must not change with it, any other's must. Which of
/// the two the skb is only the kernel knows, but the address update just
/// made shows it: the helper added the difference to a partial sum and
/// subtracted it from a full checksum (inet_proto_csum_replace_by_diff).
/// Both results are computed here as the kernel computes them; when the
/// field holds exactly one of them, the state is known. Otherwise (a
/// difference of zero, a UDP packet without checksum) the helper decides,
/// as before.
#[inline(always)]
fn port_by_state(
    ctx: &TcContext,
    csum_offset: usize,
    before: u16,
    addresses: u32,
    udp: bool,
    old_port: u16,
    new_port: u16,
) -> Option<bool> {
    // A UDP packet without checksum keeps it: the helper leaves a zero
    // alone, and would leave it alone for the port too.
    if udp && before == 0 {
        return Some(true);
    }
    let mangle = |check: u16| if udp && check == 0 { 0xffff } else { check };
    let full = mangle(csum_fold(csum_add(addresses, !(before as u32))));
    let partial = mangle(!csum_fold(csum_add(addresses, before as u32)));
    let field = linear_now::<[u8; 2]>(ctx, csum_offset)?;
    // SAFETY: linear_now() checked the bytes lie in the linear data.
    let field = unsafe { &mut *field };
    let after = u16::from_ne_bytes(*field);
    if full == partial {
        return Some(false);
    }
    if after == partial {
        return Some(true);
    }
    if after != full {
        return Some(false);
    }
    // inet_proto_csum_replace2 for a full checksum, and the helper's
    // mangling of a UDP zero.
    let port = csum_add(csum_add(!(after as u32), !(old_port as u32)), new_port as u32);
    *field = mangle(csum_fold(port)).to_ne_bytes();
    Some(true)
}

/// The kernel's csum_add: a 32-bit one's complement sum.
#[inline(always)]
fn csum_add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// The kernel's csum_fold: 32 bits folded to 16, complemented.
#[inline(always)]
fn csum_fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    !(((sum & 0xffff) + (sum >> 16)) as u16)
}

/// The sum of the 16-bit words of `bytes` in memory order.
#[inline(always)]
fn sum_ne(bytes: &[u8; 4]) -> u32 {
    u16::from_ne_bytes([bytes[0], bytes[1]]) as u32 + u16::from_ne_bytes([bytes[2], bytes[3]]) as u32
}

/// The sum of the complemented 16-bit words of `bytes` in memory order.
#[inline(always)]
fn sum_ne_not(bytes: &[u8; 4]) -> u32 {
    !u16::from_ne_bytes([bytes[0], bytes[1]]) as u32 + !u16::from_ne_bytes([bytes[2], bytes[3]]) as u32
}

// --- Target -> technician, and everything else: XDP on the LAN ------------
//
// Native XDP: frames from the wire carry full checksums, so the incremental
// full-checksum updates below are right. (On a veth in tests the sending side
// must have TX checksum offload off, just as a wire delivers full checksums.)
// The same holds for ICMP errors: every checksum in them, outer and quoted,
// is updated the same way, never recomputed.

#[xdp]
pub fn gateway_lan_in(ctx: XdpContext) -> u32 {
    lan_verdict(&ctx)
}

/// The LAN program's body, shared with its benchmark variant.
#[inline(always)]
pub(crate) fn lan_verdict(ctx: &XdpContext) -> u32 {
    let outcome = match GW_CONFIG.get(0) {
        Some(config) => lan_in(ctx, config),
        None => Outcome::LanToHost,
    };
    count(outcome);
    if outcome.drops() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[inline(always)]
fn lan_in(ctx: &XdpContext, config: &GatewayConfig) -> Outcome {
    // VLAN tags are not walked: the machine network is the LAN interface's
    // untagged one. Tagged frames reach the stack as they are.
    match be16_at(ctx, ETH_HLEN - 2) {
        Some(ETH_P_IP) => {}
        _ => return Outcome::LanNotIpv4,
    }
    let Some(ip) = ptr_at_mut::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Outcome::Malformed;
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let ip = unsafe { &mut *ip };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || header_len < IPV4_HLEN || total_len < header_len {
        return Outcome::Malformed;
    }
    // Replies are option-less and unfragmented (the targets answer packets
    // the gateway sent); anything else is at most for the host itself.
    if header_len == IPV4_HLEN && u16::from_be_bytes(ip.frags) & 0x3fff == 0 {
        if let Some(outcome) = reply(ctx, ip, total_len, &config.timeouts) {
            return outcome;
        }
    }
    let dst = ip.dst_addr;
    if config.in_tunnel_net(dst) {
        return Outcome::LanToTunnel;
    }
    // Multicast, class E and the limited broadcast never go through the FIB
    // in the kernel's input path (DHCP answers to 255.255.255.255); they are
    // the host's, which never routes them.
    if dst[0] >= 224 {
        return Outcome::LanToHost;
    }
    if routed_elsewhere(ctx, ip, total_len) { Outcome::LanForwardBlocked } else { Outcome::LanToHost }
}

/// Translates a reply of a known, live flow back toward the technician, or
/// an ICMP error about one of its packets ([`icmp_error`]). None: the packet
/// is neither, and takes the path of any other LAN packet.
#[inline(always)]
fn reply(ctx: &XdpContext, ip: &mut Ipv4Hdr, total_len: usize, timeouts: &FlowTimeouts) -> Option<Outcome> {
    let protocol = ip.proto;
    let (target_port, nat_port) = match protocol {
        PROTO_TCP | PROTO_UDP => {
            let head = ptr_at_mut::<[u8; 4]>(ctx, LAN_L4)?;
            // SAFETY: ptr_at checked the bytes are inside the packet.
            let head = unsafe { *head };
            ([head[0], head[1]], [head[2], head[3]])
        }
        PROTO_ICMP => {
            let head = ptr_at_mut::<[u8; ICMP_HLEN]>(ctx, LAN_L4)?;
            // SAFETY: as above.
            let head = unsafe { *head };
            match head[0] {
                ICMP_ECHO_REPLY if head[1] == 0 => ([0, 0], [head[4], head[5]]),
                // Every code: the technician's stack decides what a port
                // unreachable or a fragmentation needed means for it.
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    return icmp_error(ctx, ip, total_len, timeouts);
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    if u16::from_be_bytes(nat_port) < NAT_PORT_MIN {
        return None;
    }
    // Unknown or dead flows to a NAT port: TCP and UDP are dropped (nothing on
    // the gateway listens there, the ports are reserved for the NAT); an ICMP
    // echo reply may answer the host's own ping, whose id can be anything.
    let unknown = if protocol == PROTO_ICMP { None } else { Some(Outcome::NoConntrack) };
    let tick = tick();
    let (slot, reverse, refresh) =
        match live_flow(protocol, ip.src_addr, ip.dst_addr, target_port, nat_port, timeouts, tick) {
            Ok(flow) => flow,
            Err(Dead::Unknown) => return unknown,
            Err(Dead::Ended) => return Some(Outcome::SessionEnded),
        };
    let counter = reverse.counter;
    let reverse = &reverse;
    // The TTL is left alone: the packet passes to the kernel, whose
    // forwarding into the TUN decrements it (and drops an expired one), so
    // one hop costs one.

    // The target's address and the SNAT address leave, the proxy and the
    // peer arrive (RFC 1624 incremental updates).
    let removed = sum_not(&ip.src_addr) + sum_not(&ip.dst_addr);
    let added = sum(&reverse.proxy) + sum(&reverse.peer);
    let port_removed = !u16::from_be_bytes(nat_port) as u32;
    let port_added = u16::from_be_bytes(reverse.peer_port) as u32;
    match protocol {
        PROTO_TCP => {
            let tcp = ptr_at_mut::<[u8; TCP_HLEN]>(ctx, LAN_L4)?;
            // SAFETY: ptr_at checked the header is inside the packet.
            let tcp = unsafe { &mut *tcp };
            let check = replace([tcp[16], tcp[17]], removed + port_removed, added + port_added);
            [tcp[16], tcp[17]] = check.to_be_bytes();
            [tcp[2], tcp[3]] = reverse.peer_port;
        }
        PROTO_UDP => {
            let udp = ptr_at_mut::<[u8; UDP_HLEN]>(ctx, LAN_L4)?;
            // SAFETY: as above.
            let udp = unsafe { &mut *udp };
            // Zero: the sender computed no checksum; it stays that way.
            if udp[6] | udp[7] != 0 {
                let check = replace([udp[6], udp[7]], removed + port_removed, added + port_added);
                [udp[6], udp[7]] = udp_checksum(check);
            }
            [udp[2], udp[3]] = reverse.peer_port;
        }
        _ => {
            let icmp = ptr_at_mut::<[u8; ICMP_HLEN]>(ctx, LAN_L4)?;
            // SAFETY: as above.
            let icmp = unsafe { &mut *icmp };
            // ICMP has no pseudo-header: only the id changes.
            let check = replace([icmp[2], icmp[3]], port_removed, port_added);
            [icmp[2], icmp[3]] = check.to_be_bytes();
            [icmp[4], icmp[5]] = reverse.peer_port;
        }
    }
    readdress_to_technician(ip, reverse, counter, total_len);
    // SAFETY: an array element, valid for the program's run. One byte,
    // outside the sequence lock (see FlowReverse::replied); stored once.
    unsafe {
        if read_volatile(&(*slot).replied) == 0 {
            write_volatile(&mut (*slot).replied, 1);
        }
    }
    if let Some(now) = refresh {
        // In place, without the claim: see established().
        // SAFETY: an array element, valid for the program's run.
        unsafe {
            (*slot).last_seen_ns = now;
            (*slot).last_tick = tick;
        }
    }
    Some(Outcome::ForwardedFromTarget)
}

/// The outer header of a packet going back to the technician: its sender
/// (the target, or a router for an error) becomes the proxy address, the SNAT
/// address the peer. The TTL is left to the kernel's forwarding. Counted as
/// the target's traffic: it is delivered on that proxy's behalf.
#[inline(always)]
fn readdress_to_technician(ip: &mut Ipv4Hdr, reverse: &Back, counter: u32, total_len: usize) {
    let removed = sum_not(&ip.src_addr) + sum_not(&ip.dst_addr);
    let added = sum(&reverse.proxy) + sum(&reverse.peer);
    ip.check = replace(ip.check, removed, added).to_be_bytes();
    ip.src_addr = reverse.proxy;
    ip.dst_addr = reverse.peer;
    count_traffic(counter, false, total_len as u64);
}

/// Why [`live_flow`] refuses a reply key.
enum Dead {
    /// No such flow, or it has expired.
    Unknown,
    /// The flow's session ended, or its target left the whitelist or now
    /// translates to another real or SNAT address.
    Ended,
}

/// The NAT slot of the live flow a reply from `real`:`target_port` to
/// `snat`:`nat_port` belongs to, a consistent copy of it, and the time to
/// stamp it with if its stamp is from an earlier tick than `tick` (None:
/// stamped in this tick, alive without a clock read). Replies and ICMP
/// errors share it, so that whatever cuts one cuts the other.
#[inline(always)]
fn live_flow(
    protocol: u8,
    real: [u8; 4],
    snat: [u8; 4],
    target_port: [u8; 2],
    nat_port: [u8; 2],
    timeouts: &FlowTimeouts,
    tick: u64,
) -> Result<(*mut FlowReverse, Back, Option<u64>), Dead> {
    let index = nat_slot(protocol, real, snat, target_port, nat_port).ok_or(Dead::Unknown)?;
    let slot = GW_NAT_SLOTS.get_ptr_mut(index).ok_or(Dead::Unknown)?;
    // A slot being written counts as unknown: the reply is dropped as one
    // that raced its flow's start or end would be.
    // The slot is exact only with the whole reply: a packet from another
    // address or port to a valid NAT port is no reply of its flow.
    let flow = reply_slot(slot, real, snat, target_port).ok_or(Dead::Unknown)?;
    let refresh = if flow.last_tick == tick { None } else { Some(clock()) };
    if let Some(now) = refresh {
        if timeouts.expired(protocol, flow.last_seen_ns, now) {
            return Err(Dead::Unknown);
        }
    }
    // Ending a session, a peer leaving it, or the entry's removal or change
    // of address change the path generation of the entry's slot at once
    // (userspace, before any sweep of the conntrack maps): that cuts replies.
    match GW_RULE_GEN.get(flow.counter) {
        Some(current) if current.path != 0 && current.path == flow.path => Ok((slot, flow, refresh)),
        _ => Err(Dead::Ended),
    }
}

/// Translates an ICMP error that quotes a packet the gateway sent for a live
/// flow (SNAT address and NAT port -> target) back toward the technician, as
/// if the proxy address had sent it about the technician's own packet.
/// None: no such error; the packet takes the path it took before errors were
/// translated (usually the host's, whose stack finds no socket and drops it).
///
/// The outer source becomes the flow's proxy address whoever sent the error
/// (the target, or a router on the way to it): the technician only ever sees
/// proxy addresses, never the machine network's. Only option-less outer and
/// quoted headers are handled, so every offset is a constant.
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    ip: &mut Ipv4Hdr,
    total_len: usize,
    timeouts: &FlowTimeouts,
) -> Option<Outcome> {
    if total_len < IPV4_HLEN + ERROR_QUOTE {
        return None;
    }
    let msg = ptr_at_mut::<[u8; ERROR_QUOTE]>(ctx, LAN_L4)?;
    // SAFETY: ptr_at checked the bytes are inside the packet.
    let msg = unsafe { &mut *msg };
    // A quoted header with options moves the ports; a later fragment quotes
    // none. The gateway sends neither.
    if msg[INNER_IP] != 0x45 || u16::from_be_bytes([msg[INNER_IP + 6], msg[INNER_IP + 7]]) & 0x1fff != 0 {
        return None;
    }
    let protocol = msg[INNER_IP + 9];
    let snat = [msg[INNER_IP + 12], msg[INNER_IP + 13], msg[INNER_IP + 14], msg[INNER_IP + 15]];
    let real = [msg[INNER_IP + 16], msg[INNER_IP + 17], msg[INNER_IP + 18], msg[INNER_IP + 19]];
    // An error goes to the quoted packet's source; one addressed elsewhere is
    // not about a packet the gateway sent.
    if snat != ip.dst_addr {
        return None;
    }
    let l4 = INNER_L4;
    let (target_port, nat_port, port_at) = match protocol {
        PROTO_TCP | PROTO_UDP => ([msg[l4 + 2], msg[l4 + 3]], [msg[l4], msg[l4 + 1]], l4),
        // The gateway only sends echo requests; their id is the NAT port.
        PROTO_ICMP if msg[l4] == ICMP_ECHO_REQUEST && msg[l4 + 1] == 0 => {
            ([0, 0], [msg[l4 + 4], msg[l4 + 5]], l4 + 4)
        }
        _ => return None,
    };
    if u16::from_be_bytes(nat_port) < NAT_PORT_MIN {
        return None;
    }
    // Errors about dead flows are not translated, whatever killed the flow.
    // Read only: an error does not keep a flow alive.
    let (_, reverse, _) = live_flow(protocol, real, snat, target_port, nat_port, timeouts, tick()).ok()?;
    let counter = reverse.counter;
    let reverse = &reverse;

    // A quoted TCP checksum lies past the 8 bytes above, and only in quotes
    // long enough (the ICMP message's length, not the frame's, which may
    // carry an Ethernet trailer). Half of one cannot be updated without its
    // other byte; it stays as quoted. The pointer is taken before anything
    // is written, so that a failed check leaves the packet whole.
    let quoted_l4 = total_len - IPV4_HLEN - INNER_L4;
    let tcp_check = if protocol == PROTO_TCP && quoted_l4 >= TCP_CHECK + 2 {
        let check = ptr_at_mut::<[u8; 2]>(ctx, LAN_L4 + INNER_L4 + TCP_CHECK)?;
        // SAFETY: ptr_at checked the bytes are inside the packet.
        Some(unsafe { &mut *check })
    } else {
        None
    };

    // The quoted packet: SNAT -> peer source, real -> proxy destination,
    // NAT port -> the technician's port or echo id (RFC 1624 updates).
    let addr_removed = sum_not(&snat) + sum_not(&real);
    let addr_added = sum(&reverse.peer) + sum(&reverse.proxy);
    let port_removed = !u16::from_be_bytes(nat_port) as u32;
    let port_added = u16::from_be_bytes(reverse.peer_port) as u32;
    // The outer ICMP checksum covers the whole quote: the addresses, the
    // port, and both quoted checksums, which change too.
    let mut icmp_removed = addr_removed + port_removed;
    let mut icmp_added = addr_added + port_added;

    // The quoted L4 checksum: TCP and UDP cover the addresses through the
    // pseudo-header, an echo only its id.
    let (l4_removed, l4_added) = if protocol == PROTO_ICMP {
        (port_removed, port_added)
    } else {
        (addr_removed + port_removed, addr_added + port_added)
    };
    let old_l4 = match protocol {
        PROTO_TCP => tcp_check.as_deref().copied(),
        // Zero: the sender computed no checksum; it stays that way.
        PROTO_UDP if msg[l4 + 6] | msg[l4 + 7] != 0 => Some([msg[l4 + 6], msg[l4 + 7]]),
        PROTO_ICMP => Some([msg[l4 + 2], msg[l4 + 3]]),
        _ => None,
    };
    if let Some(old) = old_l4 {
        let check = replace(old, l4_removed, l4_added);
        let new = if protocol == PROTO_UDP { udp_checksum(check) } else { check.to_be_bytes() };
        icmp_removed += !u16::from_be_bytes(old) as u32;
        icmp_added += u16::from_be_bytes(new) as u32;
        match tcp_check {
            Some(field) => *field = new,
            None if protocol == PROTO_UDP => [msg[l4 + 6], msg[l4 + 7]] = new,
            None => [msg[l4 + 2], msg[l4 + 3]] = new,
        }
    }
    [msg[port_at], msg[port_at + 1]] = reverse.peer_port;

    let old_inner = [msg[INNER_IP + 10], msg[INNER_IP + 11]];
    let inner = replace(old_inner, addr_removed, addr_added).to_be_bytes();
    icmp_removed += !u16::from_be_bytes(old_inner) as u32;
    icmp_added += u16::from_be_bytes(inner) as u32;
    [msg[INNER_IP + 10], msg[INNER_IP + 11]] = inner;
    [msg[INNER_IP + 12], msg[INNER_IP + 13], msg[INNER_IP + 14], msg[INNER_IP + 15]] = reverse.peer;
    [msg[INNER_IP + 16], msg[INNER_IP + 17], msg[INNER_IP + 18], msg[INNER_IP + 19]] = reverse.proxy;

    [msg[2], msg[3]] = replace([msg[2], msg[3]], icmp_removed, icmp_added).to_be_bytes();

    readdress_to_technician(ip, reverse, counter, total_len);
    Some(Outcome::ForwardedIcmpError)
}

/// Whether the kernel would forward this packet out of some interface (a
/// unicast route that is not local). The gateway never routes the machine
/// network anywhere; only translated replies (XDP_PASS above) cross.
#[inline(always)]
fn routed_elsewhere(ctx: &XdpContext, ip: &Ipv4Hdr, total_len: usize) -> bool {
    // SAFETY: bpf_fib_lookup is plain old data; all zeroes is its documented
    // starting point.
    let mut fib: FibLookup = unsafe { mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.__bindgen_anon_1.tot_len = total_len as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    // SAFETY: fib points at a complete bpf_fib_lookup on our stack.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, mem::size_of::<FibLookup>() as i32, 0) };
    rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64
}
