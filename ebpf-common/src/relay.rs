//! The relay's XDP forwarder: forwards WireGuard transport datagrams between
//! the two bound peers of an allocation without a copy to userspace.
//!
//! Userspace owns all policy. It validates handshakes, decides bindings and
//! writes them into [`BINDINGS_MAP`]; the program only looks up
//! `(allocation port, source address, source port)`, rewrites the IP and UDP
//! headers toward the other peer and transmits. Everything it cannot forward
//! itself (handshakes, fragments, IP options, a peer on the other IP family or
//! on WebSocket, no route yet) it passes, unchanged, to the allocation's
//! socket, where userspace applies the same rules.

/// Name of the forwarder's XDP program in the object.
pub const PROGRAM: &str = "relay_forward";
/// The forwarder stopped after each step of a forwarded datagram's path, in
/// order, for the benchmark's breakdown: (program, what it does up to there).
/// Each shares the real program's maps and returns XDP_TX without touching
/// the frame. The real program is the last step.
pub const BENCH_STEP_PROGRAMS: &[(&str, &str)] = &[
    ("bench_relay_parse", "parse"),
    ("bench_relay_binding", "binding"),
    ("bench_relay_generation", "generation"),
    ("bench_relay_clock", "clock"),
    ("bench_relay_cache", "cache"),
];
/// An array with one [`RelayConfig`].
pub const CONFIG_MAP: &str = "RELAY_CONFIG";
/// A hash map from [`BindingKey`] to [`Binding`].
pub const BINDINGS_MAP: &str = "RELAY_BINDINGS";
/// A per-CPU array of `u64` indexed by [`Outcome`].
pub const COUNTERS_MAP: &str = "RELAY_COUNTERS";
/// A per-CPU array of [`Traffic`] indexed by an allocation's slot.
pub const TRAFFIC_MAP: &str = "RELAY_TRAFFIC";
/// An LRU hash map from [`NextHopKey`] to [`NextHop`]: the next hops
/// `bpf_fib_lookup` found, per destination.
pub const NEXT_HOPS_MAP: &str = "RELAY_NEXT_HOPS";
/// An array with one `u32`: the current next-hop generation. A cached
/// [`NextHop`] of another generation is not used, so bumping it invalidates
/// the whole cache with one write.
pub const NEXT_HOP_GENERATION_MAP: &str = "RELAY_NEXT_HOP_GEN";
/// A per-CPU array with one `u64`: the `bpf_fib_lookup` calls the program made
/// (cache misses, and every forwarded datagram while the cache is off).
pub const FIB_LOOKUPS_MAP: &str = "RELAY_FIB_LOOKUPS";

/// Bindings the map holds unless the operator sets another size at load time
/// (two per allocation).
pub const DEFAULT_MAX_BINDINGS: u32 = 131_072;
/// Allocation slots (per-allocation counters) unless set at load time.
pub const DEFAULT_MAX_SLOTS: u32 = 65_536;
/// Cached next hops unless set at load time. Destinations beyond it are
/// evicted least recently used first and looked up again when they return.
pub const DEFAULT_MAX_NEXT_HOPS: u32 = 65_536;
/// How long a cached next hop is used at most, in milliseconds, unless the
/// operator sets another lifetime ([`RelayConfig::next_hop_lifetime_ms`]).
/// It bounds how long a route or neighbour change can go unnoticed if the
/// relay's netlink watcher misses it (or is not running).
pub const DEFAULT_NEXT_HOP_LIFETIME_MS: u32 = 1_000;

/// [`RelayConfig::flags`]: find the next hop with `bpf_fib_lookup` and send
/// with XDP_TX or XDP_REDIRECT as the FIB says. Without it the program swaps
/// the Ethernet addresses and sends back out of the ingress interface, which
/// is right only when every peer is reached through the router the packet
/// came from (a relay with one uplink).
///
/// The kernel answers such lookups only for an ingress interface that
/// forwards (`net.ipv4.conf.<iface>.forwarding`, `net.ipv6.conf.<iface>.forwarding`);
/// otherwise every transport datagram ends up as [`Outcome::PassNoRoute`].
pub const FLAG_FIB: u32 = 1;

/// The IP family values of keys and bindings.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// [`Binding::action`]: rewrite and send.
pub const ACTION_FORWARD: u8 = 0;
/// [`Binding::action`]: pass to the allocation's socket; userspace forwards
/// (the other peer is on WebSocket, or on the other IP family).
pub const ACTION_USERSPACE: u8 = 1;

/// The forwarder's configuration, written by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's public IPv4 address. Only datagrams to it are forwarded,
    /// and forwarded datagrams leave from it. All zero: no IPv4.
    pub addr4: [u8; 4],
    /// The relay's public IPv6 address. All zero: no IPv6.
    pub addr6: [u8; 16],
    /// The allocation port range, inclusive, network byte order.
    pub port_min: [u8; 2],
    pub port_max: [u8; 2],
    /// [`FLAG_FIB`], ...
    pub flags: u32,
    /// With [`FLAG_FIB`]: how long a next hop found by `bpf_fib_lookup` is
    /// reused from [`NEXT_HOPS_MAP`], in milliseconds. 0: no cache, every
    /// forwarded datagram asks the FIB.
    pub next_hop_lifetime_ms: u32,
}

impl RelayConfig {
    pub const fn port_range(&self) -> (u16, u16) {
        (u16::from_be_bytes(self.port_min), u16::from_be_bytes(self.port_max))
    }
}

/// Where a datagram came from: the allocation port it was sent to and the
/// sender's address. IPv4 addresses sit in the first four bytes of `addr`,
/// the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingKey {
    pub addr: [u8; 16],
    /// The sender's UDP port, network byte order.
    pub port: [u8; 2],
    /// The allocation port (the datagram's destination port), network order.
    pub relay_port: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Where datagrams from a bound peer go: the other peer of the allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Binding {
    pub addr: [u8; 16],
    /// The other peer's UDP port, network byte order.
    pub port: [u8; 2],
    pub family: u8,
    /// [`ACTION_FORWARD`] or [`ACTION_USERSPACE`].
    pub action: u8,
    /// The allocation's slot in [`TRAFFIC_MAP`].
    pub slot: u32,
}

/// What a cached FIB answer is kept under: the destination, the interface
/// the datagram arrived on (policy routing, and the forwarding switch the
/// kernel checks there) and the IPv4 TOS / IPv6 traffic class without the
/// ECN bits (TOS routes and rules). The relay's own address is fixed per
/// family. Not every input of `bpf_fib_lookup` is here: the ports and L4
/// protocol (and the IPv6 flow label) are not, so the cache ignores
/// port-based policy routing (`ip rule ... sport/dport/ipproto`) and L4
/// multipath hashing; such setups should set `next_hop_lifetime_ms = 0`.
/// IPv4 destinations sit in the first four bytes of `addr`, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NextHopKey {
    pub addr: [u8; 16],
    /// The ingress interface's index.
    pub ifindex: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub tos: u8,
    pub _pad: [u8; 2],
}

/// A next hop `bpf_fib_lookup` found, as cached in [`NEXT_HOPS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The Ethernet destination (the next hop's MAC) and source (the egress
    /// interface's MAC).
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress interface's index.
    pub ifindex: u32,
    /// The [`NEXT_HOP_GENERATION_MAP`] value read before the lookup.
    pub generation: u32,
    /// The largest IP length (header included) the FIB accepted for this
    /// route's MTU; a longer datagram asks the FIB again.
    pub max_len: u16,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_coarse_ns` after which the entry is not used.
    pub expires_ns: u64,
    /// The destination the entry was made for, checked against the key on
    /// every hit: an LRU element can be reused for another key while a
    /// lookup on another CPU still holds it.
    pub addr: [u8; 16],
}

/// Per-allocation traffic forwarded by the program: datagrams and their UDP
/// payload bytes (the WireGuard messages, as userspace counts them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all six): repr(C), only integers and byte arrays laid out without
    // implicit padding, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RelayConfig {}
    unsafe impl aya::Pod for super::BindingKey {}
    unsafe impl aya::Pod for super::Binding {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::NextHopKey {}
    unsafe impl aya::Pod for super::NextHop {}
}

/// What the forwarder did with one packet. The discriminant indexes
/// [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not IPv4 or IPv6 (ARP, VLAN-tagged, ...).
    PassNotIp = 0,
    /// IP, but not UDP (or IPv6 with extension headers before UDP).
    PassNotUdp,
    /// UDP, but not to the relay's address and allocation port range (STUN,
    /// the WebSocket listener's neighbours, anything else on the host).
    PassOtherPort,
    /// An IPv4 or IPv6 fragment: the stack reassembles, the socket forwards.
    PassFragment,
    /// IPv4 with options (IHL > 5): userspace forwards.
    PassIpOptions,
    /// A handshake initiation, response or cookie reply: userspace validates
    /// mac1, moves bindings and forwards.
    PassHandshake,
    /// A binding that asks for userspace (peer on WebSocket or the other IP
    /// family).
    PassUserspace,
    /// `bpf_fib_lookup` found no usable next hop (no route, no neighbour entry
    /// yet, MTU): userspace forwards this one and the kernel resolves.
    PassNoRoute,
    /// Too short or inconsistent to parse to the UDP header, or an IPv6
    /// datagram to an allocation port without a UDP checksum (which IPv6
    /// forbids, and which no incremental update can fix); the stack drops.
    PassMalformed,
    /// A transport message from an address with no binding on that port.
    DropUnbound,
    /// To an allocation port, with a UDP length below 8 or beyond the packet.
    DropTruncated,
    /// To an allocation port, but no WireGuard message type or length.
    DropBadType,
    /// Forwarded out of the ingress interface.
    ForwardTx,
    /// Forwarded out of another interface.
    ForwardRedirect,
}

impl Outcome {
    pub const COUNT: u32 = 14;

    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Outcome::PassNotIp,
        Outcome::PassNotUdp,
        Outcome::PassOtherPort,
        Outcome::PassFragment,
        Outcome::PassIpOptions,
        Outcome::PassHandshake,
        Outcome::PassUserspace,
        Outcome::PassNoRoute,
        Outcome::PassMalformed,
        Outcome::DropUnbound,
        Outcome::DropTruncated,
        Outcome::DropBadType,
        Outcome::ForwardTx,
        Outcome::ForwardRedirect,
    ];

    pub const fn drops(self) -> bool {
        matches!(self, Outcome::DropUnbound | Outcome::DropTruncated | Outcome::DropBadType)
    }

    pub const fn forwards(self) -> bool {
        matches!(self, Outcome::ForwardTx | Outcome::ForwardRedirect)
    }

    /// A stable snake_case name for metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::PassNotIp => "pass_not_ip",
            Outcome::PassNotUdp => "pass_not_udp",
            Outcome::PassOtherPort => "pass_other_port",
            Outcome::PassFragment => "pass_fragment",
            Outcome::PassIpOptions => "pass_ip_options",
            Outcome::PassHandshake => "pass_handshake",
            Outcome::PassUserspace => "pass_userspace",
            Outcome::PassNoRoute => "pass_no_route",
            Outcome::PassMalformed => "pass_malformed",
            Outcome::DropUnbound => "drop_unbound",
            Outcome::DropTruncated => "drop_truncated",
            Outcome::DropBadType => "drop_bad_type",
            Outcome::ForwardTx => "forward_tx",
            Outcome::ForwardRedirect => "forward_redirect",
        }
    }
}
