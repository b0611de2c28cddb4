//! The gateway's whitelist and proxy-address NAT.
//!
//! Technicians' decrypted packets come out of the WireGuard engine into a TUN
//! device. Each session owns a tunnel subnet; every whitelisted target device
//! of the session has a *proxy address* inside that subnet. The TC program on
//! the TUN checks `(peer, proxy, protocol, port)` against the whitelist,
//! rewrites the packet to the target's real LAN address from the gateway's
//! LAN address (SNAT, with a NAT port of its own) and sends it out of the LAN
//! interface. The XDP program on the LAN interface translates replies of known
//! flows, and ICMP errors about them, back and drops everything else that would cross from the machine
//! network into the tunnel, or be routed anywhere by the gateway.
//!
//! Userspace owns the whitelist ([`PEERS_MAP`], [`TARGETS_MAP`]); the programs
//! own the conntrack maps, which userspace only reads and sweeps.

/// The TC (sched_cls) program on the TUN device's ingress.
pub const TUNNEL_PROGRAM: &str = "gateway_tunnel_in";
/// The XDP program on the LAN interface.
pub const LAN_PROGRAM: &str = "gateway_lan_in";

/// Benchmark variants of [`TUNNEL_PROGRAM`] and [`LAN_PROGRAM`]: the same
/// programs, leaving the packet as they found it so that BPF_PROG_RUN can
/// repeat them on one buffer. Never attached.
pub const BENCH_TUNNEL_PROGRAM: &str = "bench_gateway_tunnel_in";
pub const BENCH_LAN_PROGRAM: &str = "bench_gateway_lan_in";

/// An array with one [`GatewayConfig`].
pub const CONFIG_MAP: &str = "GW_CONFIG";
/// A hash map from a peer's tunnel address (`[u8; 4]`) to [`PeerEntry`].
pub const PEERS_MAP: &str = "GW_PEERS";
/// A hash map from [`TargetKey`] to [`TargetRule`].
pub const TARGETS_MAP: &str = "GW_TARGETS";
/// An LRU hash map from [`FlowKey`] to [`FlowForward`]: technician -> target.
pub const CT_FORWARD_MAP: &str = "GW_CT_FWD";
/// An array of [`FlowReverse`] indexed by [`nat_slot`]: target -> technician.
/// An array, not a hash: the verifier inlines its lookups, so a reply (and
/// the TUN program's check that a flow still owns its NAT port) costs a few
/// instructions instead of a hash lookup.
pub const NAT_SLOTS_MAP: &str = "GW_NAT_SLOTS";
/// An array of `u32` [`NAT_SLOTS_MAP`] indices, [`FWD_HINTS`] of them, at
/// [`flow_hash`] of a flow's key: where the TUN program looks for an
/// established flow's slot before it asks the forward map. Only a hint: the
/// slot must hold the packet's whole flow ([`FlowReverse::is_flow`]).
pub const FWD_HINTS_MAP: &str = "GW_FWD_HINT";
/// Entries of [`FWD_HINTS_MAP`] (a power of two).
pub const FWD_HINTS: u32 = 65_536;
/// A hash map from a [`NAT_SLOTS_MAP`] index (`u32`) to `u8`: whoever
/// inserts an index with BPF_NOEXIST (a program claiming a NAT port,
/// userspace sweeping) is the slot's only writer until it deletes it.
pub const NAT_CLAIMS_MAP: &str = "GW_NAT_CLAIMS";
/// A per-CPU array of [`TargetTraffic`] indexed by [`TargetRule::counter`].
pub const TRAFFIC_MAP: &str = "GW_TRAFFIC";
/// An array of [`RuleGeneration`] indexed by [`TargetRule::counter`]: what
/// lets an established flow skip the peer and whitelist lookups.
pub const GENERATIONS_MAP: &str = "GW_RULE_GEN";
/// A per-CPU array of `u64` indexed by [`Outcome`].
pub const COUNTERS_MAP: &str = "GW_COUNTERS";

/// The load-time global (a `u32` in `.rodata`) with the length of the link
/// header in front of the IPv4 header on the TUN program's packets: 0 on a
/// real TUN device (L3, no header), 14 under BPF_PROG_RUN, which insists on
/// an Ethernet header for sched_cls programs.
pub const L2_LEN_GLOBAL: &str = "GW_L2_LEN";

/// Peers (technicians' tunnel addresses) the map holds unless sized at load.
pub const DEFAULT_MAX_PEERS: u32 = 4096;
/// Whitelist entries (and per-target counter slots) unless sized at load.
pub const DEFAULT_MAX_TARGETS: u32 = 16_384;
/// Forward conntrack entries unless sized at load. (The reverse entries
/// have one slot per protocol, bucket and NAT port: [`NAT_SLOTS`].)
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;

/// Port ranges one whitelist entry can hold.
pub const MAX_RANGES: usize = 16;

/// [`TargetRule::protocol`] values (IANA protocol numbers, 0 for any).
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// NAT ports, inclusive. Outside Linux's default ephemeral range
/// (32768..=60999), so translated flows never collide with the gateway's own
/// sockets. (A host that widened its ephemeral range should also list them
/// in `net.ipv4.ip_local_reserved_ports`; nothing sets that yet.)
pub const NAT_PORT_MIN: u16 = 61_000;
pub const NAT_PORT_MAX: u16 = 65_535;
/// Successive ports tried after the flow's hashed one before giving up.
pub const NAT_PORT_TRIES: u32 = 8;
/// NAT ports per protocol and bucket.
pub const NAT_PORTS: u32 = (NAT_PORT_MAX - NAT_PORT_MIN) as u32 + 1;
/// Buckets of the remote side (target address and port, SNAT address) per
/// protocol: a NAT port holds one flow per protocol and bucket. All flows
/// to one target port share a bucket, and so at most [`NAT_PORTS`] flows,
/// as they did when the reverse map was a hash keyed by the whole reply
/// (the port is the only part of the reply the gateway chooses).
pub const NAT_BUCKETS: u32 = 4;
/// Protocols with NAT ports: TCP, UDP, ICMP echo.
pub const NAT_PROTOCOLS: u32 = 3;
/// Entries of [`NAT_SLOTS_MAP`]: the most flows the gateway tracks at once.
pub const NAT_SLOTS: u32 = NAT_PROTOCOLS * NAT_BUCKETS * NAT_PORTS;
/// Concurrent claims of NAT slots ([`NAT_CLAIMS_MAP`]); a new flow's claim
/// that finds the map full tries the next port, a claim of a flow's own
/// slot drops the packet (`Outcome::NatSlotBusy`).
pub const NAT_CLAIMS: u32 = 256;

/// Idle time after which a TCP flow is forgotten, unless userspace sets
/// another ([`FlowTimeouts`]).
pub const DEFAULT_TCP_TIMEOUT_NS: u64 = 2 * 3600 * 1_000_000_000;
/// Idle time after which a UDP or ICMP flow is forgotten, unless userspace
/// sets another.
pub const DEFAULT_OTHER_TIMEOUT_NS: u64 = 120 * 1_000_000_000;
/// Idle time after which a flow that never saw a reply gives its NAT port
/// to a new flow that finds every port it could take in use, unless
/// userspace sets another ([`FlowTimeouts::unanswered_ns`]).
pub const DEFAULT_UNANSWERED_TIMEOUT_NS: u64 = 10 * 1_000_000_000;

/// [`GatewayConfig::flags`]: return TC_ACT_OK instead of redirecting to the
/// LAN interface after a rewrite (tests that look at the rewritten packet
/// with BPF_PROG_RUN and want a plain verdict).
pub const FLAG_NO_REDIRECT: u32 = 1;

/// How long a flow may stay idle before it is forgotten, by protocol, in
/// nanoseconds of CLOCK_MONOTONIC (the programs read it with
/// bpf_ktime_get_coarse_ns: a tick's precision is plenty for timeouts of
/// seconds, and it costs a fraction of a precise read). Userspace sets them,
/// as Linux's conntrack has its `nf_conntrack_*_timeout` sysctls; the
/// programs and userspace's sweep judge flows by the same ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_ns: u64,
    /// UDP and ICMP echo.
    pub other_ns: u64,
    /// Any protocol, for a flow whose target never answered
    /// ([`FlowReverse::replied`]) and only when a new flow finds every NAT
    /// port it could take in use: SYNs to devices that never answer (or a
    /// flood of them) do not hold a bucket's ports for the TCP timeout.
    pub unanswered_ns: u64,
}

impl FlowTimeouts {
    pub const DEFAULT: FlowTimeouts = FlowTimeouts {
        tcp_ns: DEFAULT_TCP_TIMEOUT_NS,
        other_ns: DEFAULT_OTHER_TIMEOUT_NS,
        unanswered_ns: DEFAULT_UNANSWERED_TIMEOUT_NS,
    };

    /// The idle timeout of a flow of `protocol`.
    #[inline(always)]
    pub const fn of(&self, protocol: u8) -> u64 {
        if protocol == PROTO_TCP { self.tcp_ns } else { self.other_ns }
    }

    /// Whether a flow of `protocol` last seen at `last_seen` has been idle
    /// longer than its timeout at `now`. Only the age is compared, never a
    /// timestamp with a timeout: the clock counts from boot, so on a machine
    /// up for less than a timeout `now - timeout` does not exist. A stamp
    /// after `now` (another CPU refreshed the flow a moment after we read
    /// the clock) is a live flow.
    #[inline(always)]
    pub const fn expired(&self, protocol: u8, last_seen: u64, now: u64) -> bool {
        now > last_seen && now - last_seen > self.of(protocol)
    }

    /// Whether a flow that never saw a reply, last seen at `last_seen`, may
    /// give its NAT port to a new flow at `now` (see [`Self::unanswered_ns`]).
    #[inline(always)]
    pub const fn unanswered_expired(&self, last_seen: u64, now: u64) -> bool {
        now > last_seen && now - last_seen > self.unanswered_ns
    }
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        FlowTimeouts::DEFAULT
    }
}

/// The programs' configuration, written by userspace before attaching (and
/// again when the flow timeouts change).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Where the TUN program sends rewritten packets.
    pub lan_ifindex: u32,
    /// The tunnel network (all sessions' subnets), network order, and its mask.
    pub tunnel_net: [u8; 4],
    pub tunnel_mask: [u8; 4],
    pub tunnel_prefix: u8,
    pub _pad: [u8; 3],
    /// [`FLAG_NO_REDIRECT`], ...
    pub flags: u32,
    pub _pad2: [u8; 4],
    pub timeouts: FlowTimeouts,
}

impl GatewayConfig {
    /// Whether `addr` lies inside the tunnel network.
    pub const fn in_tunnel_net(&self, addr: [u8; 4]) -> bool {
        let m = self.tunnel_mask;
        let n = self.tunnel_net;
        addr[0] & m[0] == n[0] & m[0]
            && addr[1] & m[1] == n[1] & m[1]
            && addr[2] & m[2] == n[2] & m[2]
            && addr[3] & m[3] == n[3] & m[3]
            && self.tunnel_prefix != 0
    }
}

/// The session a technician's tunnel address belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEntry {
    pub session: u64,
}

/// A whitelist entry's key: a proxy address inside a session's subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub session: u64,
    pub proxy: [u8; 4],
    pub _pad: [u8; 4],
}

/// An inclusive destination port range, network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub first: [u8; 2],
    pub last: [u8; 2],
}

/// What a proxy address stands for and what may reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetRule {
    /// The target's address on the machine network.
    pub real: [u8; 4],
    /// The gateway's LAN address, the source of translated packets.
    pub snat: [u8; 4],
    /// [`PROTO_ANY`], [`PROTO_ICMP`], [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// Ranges in use in `ranges`; 0 allows every port.
    pub range_count: u8,
    pub _pad: [u8; 2],
    /// The entry's slot in [`TRAFFIC_MAP`] and [`GENERATIONS_MAP`].
    pub counter: u32,
    /// The entry's generations when it was written, copied into the flows
    /// it creates ([`RuleGeneration`]).
    pub generation: RuleGeneration,
    pub ranges: [PortRange; MAX_RANGES],
}

/// Where a whitelist entry stands, in [`GENERATIONS_MAP`] at the entry's
/// slot. Userspace gives every entry generations unique over the loaded
/// programs' life (never 0) and changes them when the entry's flows must be
/// judged again; 0 means no entry holds the slot.
///
/// A flow remembers the generations of the entry that created it. As long
/// as the slot still holds them, nothing the flow's packets were checked
/// against has changed: the peer still belongs to the session, the entry
/// still exists with the same addresses, protocol and ports. So the
/// programs check an established flow with one array lookup instead of the
/// peer and whitelist lookups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleGeneration {
    /// Changes with any change of the entry or its session's peers: the
    /// TUN program checks it on every packet of a flow, so a port taken off
    /// the whitelist cuts its flows at once.
    pub rule: u64,
    /// Changes when the entry is removed, its real or SNAT address changes,
    /// what it allows narrows (a port or protocol taken off), or a peer
    /// leaves its session: replies and ICMP errors check it. A widening
    /// alone keeps it, so it does not cut the replies of flows that are
    /// still allowed.
    pub path: u64,
}

impl RuleGeneration {
    /// Whether `flow` (a flow's copy) is still the slot's (`self`) for the
    /// TUN program.
    #[inline(always)]
    pub const fn admits(&self, flow: &RuleGeneration) -> bool {
        self.rule != 0 && self.rule == flow.rule
    }

    /// Whether replies of a flow with `flow` may still be translated.
    #[inline(always)]
    pub const fn routes(&self, flow: &RuleGeneration) -> bool {
        self.path != 0 && self.path == flow.path
    }
}

impl TargetRule {
    /// Whether TCP or UDP destination port `port` is allowed.
    #[inline(always)]
    pub fn port_allowed(&self, port: u16) -> bool {
        let count = self.range_count as usize;
        if count == 0 {
            return true;
        }
        let mut i = 0;
        // A bounded loop the verifier can unroll or walk; `count` only ends it
        // early.
        while i < MAX_RANGES {
            if i >= count {
                break;
            }
            let range = &self.ranges[i];
            if port >= u16::from_be_bytes(range.first) && port <= u16::from_be_bytes(range.last) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A flow from the technician's side: `(protocol, peer, peer port or ICMP
/// id, proxy, destination port)`. ICMP flows have destination port 0.
/// Aligned to 4 bytes: the programs then read its fields a word at a time,
/// not byte by byte (fewer registers, less stack).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: u8,
    pub _pad: [u8; 3],
    pub peer: [u8; 4],
    pub proxy: [u8; 4],
    pub peer_port: [u8; 2],
    pub dport: [u8; 2],
}

/// How a flow is translated toward the target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowForward {
    pub nat_port: [u8; 2],
    pub _pad: [u8; 2],
    pub real: [u8; 4],
    pub snat: [u8; 4],
    pub counter: u32,
    pub session: u64,
    /// bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC, to a tick) of the last
    /// packet toward the target that looked this entry up (most find their
    /// NAT slot through its hint and refresh only the slot's stamp); the
    /// NAT slot's stamp, which every packet either way refreshes, decides
    /// whether the flow lives.
    pub last_seen_ns: u64,
    /// The kernel's jiffies when `last_seen_ns` was taken ([`FlowReverse::last_tick`]).
    pub last_tick: u64,
    /// The whitelist entry's generations when the flow was admitted.
    pub generation: RuleGeneration,
}

/// The slot of [`NAT_SLOTS_MAP`] that holds the flow of `protocol` whose
/// replies come from `real`:`target_port` to `snat`:`nat_port`; None for a
/// port outside the NAT range or a protocol without NAT ports. The slot
/// holds the whole reply's addresses and ports: a reply must match them
/// ([`FlowReverse::is_reply`]), so the index is exact. Both sides use it.
#[inline(always)]
pub fn nat_slot(
    protocol: u8,
    real: [u8; 4],
    snat: [u8; 4],
    target_port: [u8; 2],
    nat_port: [u8; 2],
) -> Option<u32> {
    let proto = match protocol {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        PROTO_ICMP => 2,
        _ => return None,
    };
    let port = u16::from_be_bytes(nat_port);
    if port < NAT_PORT_MIN {
        return None;
    }
    // A multiplicative hash of the remote side; its top bits pick the
    // bucket. Cheap: it runs on every reply.
    let h = (u32::from_be_bytes(real) ^ u32::from_be_bytes(snat).rotate_left(16))
        .wrapping_add(u16::from_be_bytes(target_port) as u32)
        .wrapping_mul(0x9e37_79b1);
    let bucket = h >> (32 - NAT_BUCKETS.trailing_zeros());
    Some((proto * NAT_BUCKETS + bucket) * NAT_PORTS + (port - NAT_PORT_MIN) as u32)
}

/// A NAT slot: the flow that owns a NAT port of a protocol and bucket, and
/// how its replies are translated back toward the technician. All zeroes:
/// free.
///
/// `seq` makes the slot a sequence lock. Its only writer at a time is
/// whoever holds its claim ([`NAT_CLAIMS_MAP`]); the writer makes `seq`
/// odd, writes, and makes it even again, each with a volatile store.
/// Readers read `seq`, the fields and `seq` again, all volatile, and trust
/// the fields only if both reads are the same even value, so that they
/// never mix two flows' fields (a reply from one flow's target sent to
/// another flow's technician). Stamps are the exception: anyone refreshes
/// them in place, and a stamp of the wrong flow is only a recent time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowReverse {
    pub peer: [u8; 4],
    pub proxy: [u8; 4],
    pub peer_port: [u8; 2],
    /// The reply's source port (ICMP: 0).
    pub target_port: [u8; 2],
    /// The reply's source and destination addresses.
    pub real: [u8; 4],
    pub snat: [u8; 4],
    pub counter: u32,
    pub seq: u32,
    /// The flow's protocol and NAT port (what the slot's index also says).
    pub protocol: u8,
    /// 1 once the LAN program translated a reply of the flow; 0 from its
    /// start. Stored outside the sequence lock, as stamps are: a 1 written
    /// into a slot another flow took meanwhile only keeps that flow from
    /// being taken over early ([`FlowTimeouts::unanswered_ns`]).
    pub replied: u8,
    pub nat_port: [u8; 2],
    pub session: u64,
    /// When the flow last saw a packet; decides whether it is still alive.
    pub last_seen_ns: u64,
    /// The kernel's jiffies (bpf_jiffies64, which the verifier turns into a
    /// load) when `last_seen_ns` was taken; 0 for a stamp from userspace.
    /// The coarse clock moves with the tick, so while the tick is the same
    /// a new stamp would be the same and the flow cannot have expired: the
    /// programs read the clock (a helper call, the largest single cost of an
    /// established flow's packet) at most once per tick and flow. A stamp
    /// taken right at a tick boundary can be one tick old (the kernel
    /// increments jiffies before it advances the coarse clock), and it then
    /// stands for the whole tick: a flow may expire up to one tick early.
    pub last_tick: u64,
    /// As [`FlowForward::generation`]; `path` 0: the slot is free.
    pub generation: RuleGeneration,
}

impl FlowReverse {
    /// Whether the slot holds a flow (free slots are all zeroes; every
    /// flow has a generation).
    #[inline(always)]
    pub const fn in_use(&self) -> bool {
        self.generation.path != 0
    }

    /// Whether the slot holds the flow a technician's packet with `key`
    /// belongs to (the flow's session and translation are the slot's,
    /// judged by its generations).
    #[inline(always)]
    pub fn is_flow(&self, key: &FlowKey) -> bool {
        self.in_use()
            && self.protocol == key.protocol
            && self.peer == key.peer
            && self.peer_port == key.peer_port
            && self.proxy == key.proxy
            && self.target_port == key.dport
    }

    /// Whether a reply from `real`:`target_port` to `snat` is this flow's.
    #[inline(always)]
    pub fn is_reply(&self, real: [u8; 4], snat: [u8; 4], target_port: [u8; 2]) -> bool {
        self.real == real && self.snat == snat && self.target_port == target_port
    }
}

/// Per-target traffic the programs translated: packets and IP bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetTraffic {
    pub to_target_packets: u64,
    pub to_target_bytes: u64,
    pub from_target_packets: u64,
    pub from_target_bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), only integers and byte arrays, laid out without
    // implicit padding (explicit `_pad` fields), and every bit pattern is a
    // valid value.
    unsafe impl aya::Pod for super::GatewayConfig {}
    unsafe impl aya::Pod for super::FlowTimeouts {}
    unsafe impl aya::Pod for super::PeerEntry {}
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::PortRange {}
    unsafe impl aya::Pod for super::TargetRule {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowForward {}
    unsafe impl aya::Pod for super::FlowReverse {}
    unsafe impl aya::Pod for super::TargetTraffic {}
    unsafe impl aya::Pod for super::RuleGeneration {}
}

/// What one of the gateway's programs did with a packet. The discriminant
/// indexes [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// TUN: whitelisted, translated and sent to the target.
    ForwardedToTarget = 0,
    /// LAN: a reply of a known flow, translated back toward the technician.
    ForwardedFromTarget,
    /// TUN: not IPv4 (IPv6 is not forwarded yet); dropped.
    NotIpv4,
    /// TUN: too short or inconsistent headers; dropped.
    Malformed,
    /// TUN: an IPv4 fragment (the whitelist needs ports); dropped.
    Fragment,
    /// TUN: TTL 1 or 0, which a router must not forward; dropped. (Replies
    /// from the LAN keep their TTL for the kernel's forwarding to check.)
    TtlExceeded,
    /// TUN: the source is no technician of an active session; dropped.
    UnknownPeer,
    /// TUN: the destination is no proxy address of the peer's session (the
    /// gateway's own tunnel address included); dropped.
    NotWhitelisted,
    /// TUN: the entry does not allow this protocol, or the protocol cannot be
    /// translated (only TCP, UDP and ICMP echo can); dropped.
    ProtocolNotAllowed,
    /// TUN: the entry does not allow this destination port; dropped.
    PortNotAllowed,
    /// TUN: ICMP other than an echo request; dropped.
    IcmpNotEcho,
    /// TUN: every NAT port the flow could take is in use; dropped.
    NatPortsExhausted,
    /// TUN: a checksum or store helper failed; dropped.
    RewriteFailed,
    /// LAN: a reply to a NAT port whose flow is unknown or expired; dropped.
    NoConntrack,
    /// LAN: a reply of a flow whose session ended or whose target was removed
    /// from the whitelist; dropped.
    SessionEnded,
    /// LAN: unsolicited traffic toward the tunnel network; dropped.
    LanToTunnel,
    /// LAN: the kernel would route it elsewhere, but the gateway never routes
    /// the machine network anywhere; dropped.
    LanForwardBlocked,
    /// LAN: for the gateway host itself; passed.
    LanToHost,
    /// LAN: not IPv4 (ARP, IPv6, ...); passed to the stack.
    LanNotIpv4,
    /// LAN: an ICMP error (destination unreachable, time exceeded, parameter
    /// problem) about a packet of a live flow, translated back toward the
    /// technician with the proxy address as its source.
    ForwardedIcmpError,
    /// TUN: the packet's flow holds a NAT slot that another writer (a new
    /// flow probing its port on another CPU, the userspace sweep) held at
    /// that moment; dropped rather than moving the flow to another NAT
    /// port, which would break a TCP connection. Its next packet goes on.
    NatSlotBusy,
}

impl Outcome {
    pub const COUNT: u32 = 21;

    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Outcome::ForwardedToTarget,
        Outcome::ForwardedFromTarget,
        Outcome::NotIpv4,
        Outcome::Malformed,
        Outcome::Fragment,
        Outcome::TtlExceeded,
        Outcome::UnknownPeer,
        Outcome::NotWhitelisted,
        Outcome::ProtocolNotAllowed,
        Outcome::PortNotAllowed,
        Outcome::IcmpNotEcho,
        Outcome::NatPortsExhausted,
        Outcome::RewriteFailed,
        Outcome::NoConntrack,
        Outcome::SessionEnded,
        Outcome::LanToTunnel,
        Outcome::LanForwardBlocked,
        Outcome::LanToHost,
        Outcome::LanNotIpv4,
        Outcome::ForwardedIcmpError,
        Outcome::NatSlotBusy,
    ];

    /// Whether the program drops packets with this outcome.
    pub const fn drops(self) -> bool {
        !matches!(
            self,
            Outcome::ForwardedToTarget
                | Outcome::ForwardedFromTarget
                | Outcome::LanToHost
                | Outcome::LanNotIpv4
                | Outcome::ForwardedIcmpError
        )
    }

    /// A stable snake_case name for metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::ForwardedToTarget => "forwarded_to_target",
            Outcome::ForwardedFromTarget => "forwarded_from_target",
            Outcome::NotIpv4 => "not_ipv4",
            Outcome::Malformed => "malformed",
            Outcome::Fragment => "fragment",
            Outcome::TtlExceeded => "ttl_exceeded",
            Outcome::UnknownPeer => "unknown_peer",
            Outcome::NotWhitelisted => "not_whitelisted",
            Outcome::ProtocolNotAllowed => "protocol_not_allowed",
            Outcome::PortNotAllowed => "port_not_allowed",
            Outcome::IcmpNotEcho => "icmp_not_echo",
            Outcome::NatPortsExhausted => "nat_ports_exhausted",
            Outcome::RewriteFailed => "rewrite_failed",
            Outcome::NoConntrack => "no_conntrack",
            Outcome::SessionEnded => "session_ended",
            Outcome::LanToTunnel => "lan_to_tunnel",
            Outcome::LanForwardBlocked => "lan_forward_blocked",
            Outcome::LanToHost => "lan_to_host",
            Outcome::LanNotIpv4 => "lan_not_ipv4",
            Outcome::ForwardedIcmpError => "forwarded_icmp_error",
            Outcome::NatSlotBusy => "nat_slot_busy",
        }
    }
}

/// Hashes a flow key into the offset of its first NAT port candidate. Both
/// sides use it: the program to allocate, userspace tests to predict.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    // A murmur3-style mix: cheap, and every input bit moves the result.
    // Word by word, without an array: the TUN program's stack is full.
    #[inline(always)]
    fn mix(h: u32, word: u32) -> u32 {
        let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
        (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
    }
    let mut h = mix(0x9747_b28c, u32::from_be_bytes(key.peer));
    h = mix(h, u32::from_be_bytes(key.proxy));
    h = mix(h, (u16::from_be_bytes(key.peer_port) as u32) << 16 | u16::from_be_bytes(key.dport) as u32);
    h = mix(h, key.protocol as u32);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A flow key's entry in [`FWD_HINTS_MAP`]. Not [`flow_hash`]: the hint
/// is looked up on every packet of an established flow, so it takes a
/// cheaper mix (one multiplication) of the key's four words; a poor spread
/// only costs hint misses, which the forward map answers.
#[inline(always)]
pub fn flow_hint(key: &FlowKey) -> u32 {
    flow_hint_words([
        u32::from_ne_bytes([key.protocol, 0, 0, 0]),
        u32::from_ne_bytes(key.peer),
        u32::from_ne_bytes(key.proxy),
        u32::from_ne_bytes([key.peer_port[0], key.peer_port[1], key.dport[0], key.dport[1]]),
    ])
}

/// [`flow_hint`] of a key given as its four words, each as the key's bytes
/// in memory order (the protocol alone in the first): what the TUN
/// program's fast path has in its registers after loading the headers as
/// words.
#[inline(always)]
pub fn flow_hint_words(words: [u32; 4]) -> u32 {
    let mixed = words[0] ^ words[1].rotate_left(5) ^ words[2].rotate_left(11) ^ words[3].rotate_left(19);
    // The top bits of a multiplicative hash are its best mixed.
    mixed.wrapping_mul(0x9e37_79b1) >> (32 - FWD_HINTS.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_match_ranges() {
        let mut rule = TargetRule::default();
        assert!(rule.port_allowed(1));
        rule.range_count = 2;
        rule.ranges[0] = PortRange { first: 80u16.to_be_bytes(), last: 80u16.to_be_bytes() };
        rule.ranges[1] = PortRange { first: 1000u16.to_be_bytes(), last: 2000u16.to_be_bytes() };
        rule.ranges[2] = PortRange { first: 0u16.to_be_bytes(), last: 65535u16.to_be_bytes() };
        assert!(rule.port_allowed(80) && rule.port_allowed(1000) && rule.port_allowed(2000));
        assert!(!rule.port_allowed(81) && !rule.port_allowed(2001) && !rule.port_allowed(0));
    }

    #[test]
    fn tunnel_net_membership() {
        let config = GatewayConfig {
            tunnel_net: [100, 96, 0, 0],
            tunnel_mask: [255, 240, 0, 0],
            tunnel_prefix: 12,
            ..Default::default()
        };
        assert!(config.in_tunnel_net([100, 111, 255, 255]));
        assert!(!config.in_tunnel_net([100, 112, 0, 1]));
        assert!(!GatewayConfig::default().in_tunnel_net([1, 2, 3, 4]));
    }

    #[test]
    fn flows_expire_by_age_past_their_protocols_timeout() {
        let t = FlowTimeouts { tcp_ns: 1_000, other_ns: 10, unanswered_ns: 100 };
        // Exactly the timeout old is still alive; a nanosecond more is not.
        assert!(!t.expired(PROTO_TCP, 5_000, 6_000));
        assert!(t.expired(PROTO_TCP, 5_000, 6_001));
        assert!(!t.expired(PROTO_UDP, 5_000, 5_010));
        assert!(t.expired(PROTO_UDP, 5_000, 5_011));
        assert!(t.expired(PROTO_ICMP, 5_000, 5_011));
        // A machine up for less than the timeout: a flow stamped at boot is
        // young, not dead, and nothing underflows.
        let d = FlowTimeouts::DEFAULT;
        let thirty_s = 30_000_000_000;
        assert!(!d.expired(PROTO_TCP, 0, thirty_s));
        assert!(!d.expired(PROTO_UDP, 1, thirty_s));
        assert!(d.expired(PROTO_UDP, 1, d.other_ns + 2));
        // Stamped after `now` by another CPU; and the extremes.
        assert!(!d.expired(PROTO_TCP, thirty_s + 1, thirty_s));
        assert!(!d.expired(PROTO_TCP, u64::MAX, 0));
        assert!(d.expired(PROTO_TCP, 0, u64::MAX));
        let never = FlowTimeouts { tcp_ns: u64::MAX, other_ns: u64::MAX, unanswered_ns: u64::MAX };
        assert!(!never.expired(PROTO_TCP, 0, u64::MAX));
        assert!(!never.unanswered_expired(0, u64::MAX));
        assert!(!t.unanswered_expired(5_000, 5_100) && t.unanswered_expired(5_000, 5_101));
        assert!(!t.unanswered_expired(5_101, 5_000));
        assert_eq!(GatewayConfig::default().timeouts, FlowTimeouts::DEFAULT);
        // Explicit padding only: the timeouts sit 8-aligned after `_pad2`.
        assert_eq!(core::mem::size_of::<GatewayConfig>(), 48);
        assert_eq!(core::mem::offset_of!(GatewayConfig, timeouts), 24);
    }

    #[test]
    fn outcomes_are_complete_and_named_uniquely() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
            assert_eq!(Outcome::ALL.iter().filter(|p| p.name() == o.name()).count(), 1);
        }
    }
}
