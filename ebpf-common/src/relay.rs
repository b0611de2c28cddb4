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
    ("bench_relay_generation", "generation"),
    ("bench_relay_clock", "clock"),
    ("bench_relay_binding", "binding"),
    ("bench_relay_cache", "cache"),
];
/// An array with one [`RelayConfig`].
pub const CONFIG_MAP: &str = "RELAY_CONFIG";
/// A hash map from [`BindingKey4`] to [`Binding`]: the bindings of IPv4
/// senders. An 8-byte key: the lookup hashes and compares a third of what an
/// IPv6 key costs, on the path every forwarded IPv4 datagram takes.
pub const BINDINGS_MAP: &str = "RELAY_BINDINGS";
/// A hash map from [`BindingKey`] to [`Binding`]: the bindings of IPv6
/// senders (and of any key that is not IPv4).
pub const BINDINGS6_MAP: &str = "RELAY_BINDINGS6";
/// A per-CPU array of `u64` indexed by [`Outcome`].
pub const COUNTERS_MAP: &str = "RELAY_COUNTERS";
/// A per-CPU array of [`Traffic`] indexed by an allocation's slot.
pub const TRAFFIC_MAP: &str = "RELAY_TRAFFIC";
/// An array with one `u32`: the current next-hop generation. A cached
/// [`NextHop`] of another generation is not used, so bumping it invalidates
/// the whole cache with one write.
pub const NEXT_HOP_GENERATION_MAP: &str = "RELAY_NEXT_HOP_GEN";
/// A per-CPU array with one `u64`: the `bpf_fib_lookup` calls the program made
/// (cache misses, and every forwarded datagram while the cache is off).
pub const FIB_LOOKUPS_MAP: &str = "RELAY_FIB_LOOKUPS";

/// Bindings each of the two maps (IPv4, IPv6) holds unless the operator sets
/// another size at load time (two per allocation).
pub const DEFAULT_MAX_BINDINGS: u32 = 131_072;
/// Allocation slots (per-allocation counters) unless set at load time.
pub const DEFAULT_MAX_SLOTS: u32 = 65_536;
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
    /// reused from a binding's cache ([`Binding::next_hop`]), in
    /// milliseconds. 0: no cache, every forwarded datagram asks the FIB.
    pub next_hop_lifetime_ms: u32,
    /// The length of the kernel's tick (1/HZ) in ns, which the program needs
    /// to count the lifetime in ticks (`bpf_jiffies64`). Userspace reads it
    /// with `clock_getres(CLOCK_MONOTONIC_COARSE)`. 0: unknown, the program
    /// assumes [`MAX_TICK_NS`], which makes lifetimes shorter, never longer.
    pub tick_ns: u32,
}

/// The longest kernel tick there is (HZ=100), assumed when
/// [`RelayConfig::tick_ns`] is 0.
pub const MAX_TICK_NS: u32 = 10_000_000;

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

/// [`BindingKey`] for an IPv4 sender, as [`BINDINGS_MAP`] keeps it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingKey4 {
    pub addr: [u8; 4],
    /// The sender's UDP port, network byte order.
    pub port: [u8; 2],
    /// The allocation port, network order.
    pub relay_port: [u8; 2],
}

impl BindingKey4 {
    /// The IPv4 part of `key` (which must be [`FAMILY_V4`]).
    pub const fn of(key: &BindingKey) -> BindingKey4 {
        BindingKey4 {
            addr: [key.addr[0], key.addr[1], key.addr[2], key.addr[3]],
            port: key.port,
            relay_port: key.relay_port,
        }
    }
}

/// Where datagrams from a bound peer go: the other peer of the allocation,
/// and the next hop toward it once the program has looked it up.
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
    /// The program's cache of the next hop toward `addr` ([`CachedHop`]).
    /// Userspace writes it empty (zero); replacing a binding empties it.
    pub next_hop: CachedHop,
}

/// A binding's cached next hop: what `bpf_fib_lookup` answered for a
/// datagram to the binding's peer, and what the answer depends on. Kept in the
/// binding itself, so that a forwarded datagram needs no map lookup besides
/// its binding's.
///
/// Several CPUs can miss and write the same binding's cache at once, and a
/// CPU can read it while another writes. So the cache is six words, each
/// written and read with one 8-byte access (single-copy atomic): six bytes of
/// data and, in the last two, a random 16-bit tag, the same in every word of
/// one write. A read whose six tags are not all the same saw parts of two
/// writes and is a miss, on any CPU architecture and without barriers (two
/// writes racing on one binding draw the same tag once in 65,536; a mix of
/// them is then used until the entry's lifetime or the next invalidation). A tag of 0 is an empty
/// cache. Only the program reads and writes the words; the layout is
/// [`CachedHop::encode`]'s and [`CachedHop::decode`]'s.
///
/// Word by word: the next hop's MAC (`dmac`); the egress interface's MAC
/// (`smac`); the egress interface and the longest IP length the FIB accepted
/// for the route's MTU; the ingress interface and the TOS / traffic class
/// without ECN the answer was for (policy and TOS routing); the generation
/// read before the lookup and two bytes of the destination's fingerprint; the
/// tick (`bpf_jiffies64`, low 32 bits) from which it is not used, and the
/// fingerprint's other two bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedHop {
    pub words: [u64; 6],
}

// The program reads the cache with 8-byte loads at these offsets.
const _: () = assert!(core::mem::size_of::<Binding>() == 72 && core::mem::align_of::<Binding>() == 8);
const _: () = assert!(core::mem::offset_of!(Binding, next_hop) == 24);
const _: () = assert!(core::mem::size_of::<BindingKey4>() == 8);

/// A next hop as [`CachedHop`] holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The Ethernet destination (the next hop's MAC) and source (the egress
    /// interface's MAC).
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress interface's index.
    pub ifindex: u32,
    /// The largest IP length (header included) the FIB accepted for this
    /// route's MTU; a longer datagram asks the FIB again.
    pub max_len: u16,
    /// The interface the datagram that asked arrived on, and its TOS /
    /// traffic class without the ECN bits: routing can depend on both.
    pub in_ifindex: u32,
    pub tos: u8,
    /// The [`NEXT_HOP_GENERATION_MAP`] value read before the lookup.
    pub generation: u32,
    /// The low 32 bits of `bpf_jiffies64` from which the entry is not used.
    pub expires: u32,
    /// [`fingerprint`] of the destination the answer was for: a binding's
    /// element can be reused for another binding while a program still
    /// holds it, and its write then lands in the other binding's cache.
    pub fingerprint: u32,
}

/// The destination address folded into 32 bits (exact for IPv4).
#[inline(always)]
pub fn fingerprint(addr: &[u8; 16]) -> u32 {
    let half = |i: usize| {
        u64::from_ne_bytes([
            addr[i],
            addr[i + 1],
            addr[i + 2],
            addr[i + 3],
            addr[i + 4],
            addr[i + 5],
            addr[i + 6],
            addr[i + 7],
        ])
    };
    fingerprint_halves(half(0), half(8))
}

/// [`fingerprint`] of the address whose two halves, read as native-order
/// words, are `first` and `second`: the program reads them with two 8-byte
/// loads from the binding (which is 8-aligned, the address first).
#[inline(always)]
pub fn fingerprint_halves(first: u64, second: u64) -> u32 {
    let folded = first ^ second;
    folded as u32 ^ (folded >> 32) as u32
}

/// A MAC address as the low 48 bits of a cache word (first byte lowest).
#[inline(always)]
pub fn mac_word(mac: &[u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// The MAC address in the low 48 bits of `word` ([`mac_word`]).
#[inline(always)]
pub fn word_mac(word: u64) -> [u8; 6] {
    let b = word.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// What a datagram needs of a binding's cached next hop to use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The current generation.
    pub generation: u32,
    /// The datagram's ingress interface and TOS / traffic class without ECN.
    pub in_ifindex: u32,
    pub tos: u8,
    /// [`fingerprint`] of the binding's peer.
    pub fingerprint: u32,
    /// The low 32 bits of `bpf_jiffies64` now.
    pub now: u32,
    /// The datagram's IP length.
    pub ip_len: u32,
}

impl CachedHop {
    /// The first three words (the next hop's MAC, the egress interface's MAC
    /// and the egress interface, as [`encode`](Self::encode) lays them out)
    /// if the six words that `word` reads (by index) are one whole write that
    /// serves `wanted`: what [`decode`](Self::decode) and a comparison of
    /// each field say. The hit path runs this for every forwarded datagram,
    /// so each word is checked as it is read and then dropped (BPF has few
    /// registers: six words and what they are compared with, all live at
    /// once, spill to the stack).
    #[inline(always)]
    pub fn serve(word: impl Fn(usize) -> u64, wanted: &Wanted) -> Option<[u64; 3]> {
        const TAG: u64 = !((1 << 48) - 1);
        let fp = wanted.fingerprint as u64;
        let first = word(0);
        let tag = first & TAG;
        if tag == 0
            || word(3) != wanted.in_ifindex as u64 | (wanted.tos as u64) << 32 | tag
            || word(4) != wanted.generation as u64 | (fp & 0xffff) << 32 | tag
        {
            return None;
        }
        let last = word(5);
        if last >> 32 != (fp >> 16 | tag >> 32) || ((last as u32).wrapping_sub(wanted.now) as i32) <= 0 {
            return None;
        }
        let third = word(2);
        if third & TAG != tag || wanted.ip_len > ((third >> 32) & 0xffff) as u32 {
            return None;
        }
        let second = word(1);
        if second & TAG != tag {
            return None;
        }
        Some([first, second, third])
    }

    /// The words for `hop`, written with `tag` (not 0).
    #[inline(always)]
    pub fn encode(hop: &NextHop, tag: u16) -> [u64; 6] {
        let t = tag as u64;
        let fp = hop.fingerprint;
        [
            mac_word(&hop.dmac) | t << 48,
            mac_word(&hop.smac) | t << 48,
            hop.ifindex as u64 | (hop.max_len as u64) << 32 | t << 48,
            hop.in_ifindex as u64 | (hop.tos as u64) << 32 | t << 48,
            hop.generation as u64 | ((fp & 0xffff) as u64) << 32 | t << 48,
            hop.expires as u64 | ((fp >> 16) as u64) << 32 | t << 48,
        ]
    }

    /// The next hop in `words`, or None for an empty cache or a read that
    /// mixed two writes.
    #[inline(always)]
    pub fn decode(w: &[u64; 6]) -> Option<NextHop> {
        let tag = w[0] >> 48;
        if tag == 0
            || (w[1] >> 48) != tag
            || (w[2] >> 48) != tag
            || (w[3] >> 48) != tag
            || (w[4] >> 48) != tag
            || (w[5] >> 48) != tag
        {
            return None;
        }
        Some(NextHop {
            dmac: word_mac(w[0]),
            smac: word_mac(w[1]),
            ifindex: w[2] as u32,
            max_len: (w[2] >> 32) as u16,
            in_ifindex: w[3] as u32,
            tos: (w[3] >> 32) as u8,
            generation: w[4] as u32,
            expires: w[5] as u32,
            fingerprint: ((w[4] >> 32) & 0xffff) as u32 | (((w[5] >> 32) & 0xffff) as u32) << 16,
        })
    }
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
    // SAFETY (all five): repr(C), only integers and byte arrays laid out
    // without implicit padding, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RelayConfig {}
    unsafe impl aya::Pod for super::BindingKey {}
    unsafe impl aya::Pod for super::BindingKey4 {}
    unsafe impl aya::Pod for super::Binding {}
    unsafe impl aya::Pod for super::Traffic {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hop() -> NextHop {
        NextHop {
            dmac: [2, 0x50, 0, 0, 0, 7],
            smac: [2, 0x52, 0, 0, 0, 1],
            ifindex: 0x0102_0304,
            max_len: 1500,
            in_ifindex: 0x0a0b_0c0d,
            tos: 0xb8,
            generation: 0xdead_beef,
            expires: 0x8000_0001,
            fingerprint: fingerprint(&[0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
        }
    }

    #[test]
    fn a_cached_hop_decodes_to_what_was_encoded() {
        assert_eq!(CachedHop::decode(&CachedHop::encode(&hop(), 0xffff)), Some(hop()));
        assert_eq!(CachedHop::decode(&CachedHop::encode(&NextHop::default(), 1)), Some(NextHop::default()));
    }

    #[test]
    fn an_empty_cache_and_a_mix_of_two_writes_are_misses() {
        assert_eq!(CachedHop::decode(&CachedHop::default().words), None);
        let first = CachedHop::encode(&hop(), 7);
        let second = CachedHop::encode(&NextHop { dmac: [9; 6], ..hop() }, 8);
        for i in 0..6 {
            let mut torn = first;
            torn[i] = second[i];
            assert_eq!(CachedHop::decode(&torn), None, "word {i} from another write");
        }
    }

    fn serves(words: &[u64; 6], wanted: &Wanted) -> bool {
        CachedHop::serve(|i| words[i], wanted).is_some()
    }

    /// `serve` says what decoding and comparing each field says.
    #[test]
    fn serves_agrees_with_decoding() {
        let reference = |w: &[u64; 6], wanted: &Wanted| match CachedHop::decode(w) {
            Some(hop) => {
                hop.generation == wanted.generation
                    && hop.in_ifindex == wanted.in_ifindex
                    && hop.tos == wanted.tos
                    && hop.fingerprint == wanted.fingerprint
                    && (hop.expires.wrapping_sub(wanted.now) as i32) > 0
                    && wanted.ip_len <= hop.max_len as u32
            }
            None => false,
        };
        let words = CachedHop::encode(&hop(), 0x1234);
        let fits = Wanted {
            generation: hop().generation,
            in_ifindex: hop().in_ifindex,
            tos: hop().tos,
            fingerprint: hop().fingerprint,
            now: hop().expires.wrapping_sub(5),
            ip_len: 1500,
        };
        let cases = [
            fits,
            Wanted { generation: fits.generation + 1, ..fits },
            Wanted { in_ifindex: fits.in_ifindex ^ 1, ..fits },
            Wanted { tos: 0x20, ..fits },
            Wanted { fingerprint: fits.fingerprint ^ 1, ..fits },
            Wanted { fingerprint: fits.fingerprint ^ 0x1_0000, ..fits },
            Wanted { now: hop().expires, ..fits },
            Wanted { now: hop().expires.wrapping_add(1000), ..fits },
            Wanted { ip_len: 1501, ..fits },
            Wanted { ip_len: 64, ..fits },
        ];
        for wanted in &cases {
            assert_eq!(serves(&words, wanted), reference(&words, wanted), "{wanted:?}");
        }
        assert!(serves(&words, &fits));
        assert_eq!(CachedHop::serve(|i| words[i], &fits), Some([words[0], words[1], words[2]]));
        assert!(!serves(&CachedHop::default().words, &Wanted::default()));
        let other = CachedHop::encode(&hop(), 0x1235);
        for i in 0..6 {
            let mut torn = words;
            torn[i] = other[i];
            assert!(!serves(&torn, &fits), "word {i} from another write");
        }
    }

    #[test]
    fn ipv4_fingerprints_are_the_address() {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        assert_eq!(fingerprint(&addr), u32::from_ne_bytes([203, 0, 113, 7]));
        let v6 = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_ne!(fingerprint(&v6), fingerprint(&[0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8]));
    }
}
