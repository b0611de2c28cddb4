//! The gateway's uplink guard: an XDP program that drops datagrams to the
//! WireGuard port that cannot be WireGuard messages, Ferry path probes or STUN
//! answers; probes whose receiver tag no live path agent holds; STUN answers
//! from anyone but the gateway's STUN servers; and, when it follows the
//! engine's indices, messages that name no live receiver index.

/// Name of the guard's XDP program in the object.
pub const PROGRAM: &str = "uplink_guard";
/// Name of the configuration map (an array with one [`GuardConfig`]).
pub const CONFIG_MAP: &str = "GUARD_CONFIG";
/// Name of the per-CPU counter map, indexed by [`Outcome`].
pub const COUNTERS_MAP: &str = "GUARD_COUNTERS";
/// Name of the hash map of live local receiver indices: key [`IndexKey`],
/// value unused (1).
pub const INDICES_MAP: &str = "GUARD_INDICES";
/// Room for the indices of 4096 peers, each holding at most four (current,
/// previous and next session, one handshake in flight).
pub const MAX_INDICES: u32 = 16_384;

/// Name of the hash map of live probe receiver tags: key [`ProbeTagKey`],
/// value unused (1). The probe rule is always on: with the map empty no probe
/// passes, which is right, since a gateway with no live path agent expects none.
pub const PROBE_TAGS_MAP: &str = "GUARD_PROBE_TAGS";
/// One tag per peer with a path agent, four times the peers the indices map
/// is sized for.
pub const MAX_PROBE_TAGS: u32 = 16_384;
/// Name of the hash map of the STUN servers the gateway queries from its
/// WireGuard socket: key [`StunServerKey`], value unused (1). Always on: with
/// the map empty no STUN answer passes.
pub const STUN_SERVERS_MAP: &str = "GUARD_STUN_SERVERS";
/// The gateway asks the STUN servers of its relays; a handful in practice.
pub const MAX_STUN_SERVERS: u32 = 256;

/// Where a message carries the receiver index it is addressed to.
pub const RESPONSE_RECEIVER_OFFSET: usize = 8;
pub const COOKIE_REPLY_RECEIVER_OFFSET: usize = 4;
pub const TRANSPORT_RECEIVER_OFFSET: usize = 4;

/// A local receiver index as the four bytes on the wire (WireGuard writes
/// indices little-endian), so the program compares bytes without swapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IndexKey {
    pub wire: [u8; 4],
}

impl IndexKey {
    pub const fn new(index: u32) -> Self {
        Self { wire: index.to_le_bytes() }
    }

    pub const fn index(&self) -> u32 {
        u32::from_le_bytes(self.wire)
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), one byte array, no padding, every bit pattern is valid.
unsafe impl aya::Pod for IndexKey {}

/// A Ferry path probe's receiver tag as the eight bytes on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProbeTagKey {
    pub tag: [u8; PROBE_TAG_LEN],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), one byte array, no padding, every bit pattern is valid.
unsafe impl aya::Pod for ProbeTagKey {}

/// A STUN server's address as the guard sees it in a datagram's IP and UDP
/// headers: an IPv6 address (IPv4 as `::ffff:a.b.c.d`, RFC 4291's mapped form,
/// so one map serves both families) and the port, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StunServerKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
}

impl StunServerKey {
    pub const fn v4(ip: [u8; 4], port: u16) -> Self {
        let [a, b, c, d] = ip;
        Self { addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d], port: port.to_be_bytes() }
    }

    pub const fn v6(ip: [u8; 16], port: u16) -> Self {
        Self { addr: ip, port: port.to_be_bytes() }
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only byte arrays (alignment 1, so no padding), every bit
// pattern is valid.
unsafe impl aya::Pod for StunServerKey {}

/// Ferry's path probe (`ferry_paths::probe`, mirrored here because the eBPF
/// side cannot depend on it; a test checks the two agree): a type word that
/// WireGuard does not use, a fixed length, and the receiver tag after the type.
pub const PROBE_TYPE: u8 = 16;
pub const PROBE_LEN: usize = 84;
pub const PROBE_TAG_OFFSET: usize = 4;
pub const PROBE_TAG_LEN: usize = 8;

/// STUN (RFC 8489): the Binding success response's type, the magic cookie
/// every RFC 5389+ message carries at bytes 4..8, and the 20-byte header
/// whose length field (bytes 2..4) counts the attributes after it, always a
/// multiple of 4.
pub const STUN_BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
pub const STUN_HEADER_LEN: usize = 20;
/// The largest STUN answer the guard passes: RFC 8489 asks senders without
/// path MTU knowledge to stay within 548 bytes (576 minus IPv4 and UDP
/// headers); a Binding success carries a few addresses and a fingerprint.
pub const STUN_MAX_LEN: usize = 548;

/// Whether `len` bytes whose header says `attributes_len` can be a STUN
/// Binding success response the guard passes.
pub const fn stun_len_ok(len: usize, attributes_len: usize) -> bool {
    len >= STUN_HEADER_LEN
        && len <= STUN_MAX_LEN
        && attributes_len == len - STUN_HEADER_LEN
        && attributes_len.is_multiple_of(4)
}

/// WireGuard message lengths (the protocol's fixed wire sizes).
pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
/// A transport message is a 16-byte header plus at least the 16-byte tag.
pub const TRANSPORT_MIN_LEN: usize = 32;
/// Senders pad the encrypted packet to a multiple of 16 but never beyond
/// their MTU (the kernel's `calculate_skb_padding`, wireguard-go's
/// `calculatePaddingSize`): with an MTU that is not a multiple of 16, such as
/// the default 1420, a full-size packet is padded only to the MTU. An MTU is
/// at least 68 (IPv4's minimum), so an unaligned body shorter than that cannot
/// come from a WireGuard sender.
pub const MIN_UNALIGNED_BODY: usize = 68;

/// Whether `len` bytes can be a transport message: the header, a body padded
/// to 16 or to the sender's MTU, and the tag.
pub const fn transport_len_ok(len: usize) -> bool {
    if len < TRANSPORT_MIN_LEN {
        return false;
    }
    let body = len - TRANSPORT_MIN_LEN;
    body.is_multiple_of(16) || body >= MIN_UNALIGNED_BODY
}

/// The guard's configuration, written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// The WireGuard UDP port, network byte order. Zero disables the guard:
    /// every packet passes and is counted as `PassOtherPort`.
    pub port: [u8; 2],
    /// Non-zero: responses, cookie replies and transport messages must name
    /// an index in the indices map. Only a daemon that keeps that map
    /// complete turns it on.
    pub follow_indices: u8,
    pub _pad: u8,
}

impl GuardConfig {
    pub const fn new(port: u16) -> Self {
        Self { port: port.to_be_bytes(), follow_indices: 0, _pad: 0 }
    }

    pub const fn following_indices(self, on: bool) -> Self {
        Self { follow_indices: on as u8, ..self }
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    pub const fn follows_indices(&self) -> bool {
        self.follow_indices != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only byte arrays, no padding, every bit pattern is valid.
unsafe impl aya::Pod for GuardConfig {}

/// What the guard decided about one packet. The discriminant is the index into
/// the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = 0,
    /// IP, but not UDP.
    PassNotUdp,
    /// UDP to a port other than the WireGuard port.
    PassOtherPort,
    /// An IPv4 or IPv6 fragment; reassembly is the stack's job.
    PassFragment,
    /// IPv4 with options (IHL > 5).
    PassIpOptions,
    /// More IPv6 extension headers than the guard walks.
    PassExtHeaders,
    /// Too short or inconsistent to parse up to the UDP port (short Ethernet or
    /// IP header, bad version or IHL, truncated extension or UDP header, or an
    /// IP payload too short to hold the UDP header). The stack's own
    /// validation drops these; the guard only counts them.
    PassMalformed,
    /// A handshake initiation of exactly 148 bytes.
    AllowInitiation,
    /// A handshake response of exactly 92 bytes.
    AllowResponse,
    /// A cookie reply of exactly 64 bytes.
    AllowCookieReply,
    /// A transport message: at least 32 bytes, with a body padded to 16 or to
    /// the sender's MTU (see [`transport_len_ok`]).
    AllowTransport,
    /// A Ferry path probe of exactly 84 bytes whose receiver tag a live path
    /// agent of this gateway holds.
    AllowProbe,
    /// A STUN Binding success response of a valid shape from one of the
    /// gateway's STUN servers (the answer to its server-reflexive query).
    AllowStun,
    /// To the WireGuard port, but the first four bytes are no message type
    /// (neither WireGuard's, a probe's nor a STUN Binding success response's
    /// with its magic cookie).
    DropBadType,
    /// A known message type with a length that type cannot have (for STUN: a
    /// length field that disagrees with the datagram, or over 548 bytes).
    DropBadLength,
    /// To the WireGuard port, but the UDP length field is below 8 or claims more
    /// bytes than the packet carries.
    DropTruncated,
    /// A well-formed response, cookie reply or transport message whose
    /// receiver index no live handshake or session holds (only while the
    /// guard follows the indices): a stale, replayed-after-expiry or forged
    /// message, refused before it costs a lookup and an AEAD in userspace.
    DropUnknownIndex,
    /// A well-formed probe whose receiver tag no live path agent holds: for a
    /// peer that is gone, reflected back at us, or forged.
    DropUnknownProbeTag,
    /// A well-formed STUN Binding success response from an address that is
    /// not one of the gateway's STUN servers.
    DropUnknownStunServer,
}

impl Outcome {
    /// Number of outcomes, the size of the counter array.
    pub const COUNT: u32 = 19;

    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Outcome::PassNotIp,
        Outcome::PassNotUdp,
        Outcome::PassOtherPort,
        Outcome::PassFragment,
        Outcome::PassIpOptions,
        Outcome::PassExtHeaders,
        Outcome::PassMalformed,
        Outcome::AllowInitiation,
        Outcome::AllowResponse,
        Outcome::AllowCookieReply,
        Outcome::AllowTransport,
        Outcome::AllowProbe,
        Outcome::AllowStun,
        Outcome::DropBadType,
        Outcome::DropBadLength,
        Outcome::DropTruncated,
        Outcome::DropUnknownIndex,
        Outcome::DropUnknownProbeTag,
        Outcome::DropUnknownStunServer,
    ];

    /// Whether the guard drops packets with this outcome.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Outcome::DropBadType
                | Outcome::DropBadLength
                | Outcome::DropTruncated
                | Outcome::DropUnknownIndex
                | Outcome::DropUnknownProbeTag
                | Outcome::DropUnknownStunServer
        )
    }

    /// A stable snake_case name, used for metrics and the CLI's counter output.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::PassNotIp => "pass_not_ip",
            Outcome::PassNotUdp => "pass_not_udp",
            Outcome::PassOtherPort => "pass_other_port",
            Outcome::PassFragment => "pass_fragment",
            Outcome::PassIpOptions => "pass_ip_options",
            Outcome::PassExtHeaders => "pass_ext_headers",
            Outcome::PassMalformed => "pass_malformed",
            Outcome::AllowInitiation => "allow_initiation",
            Outcome::AllowResponse => "allow_response",
            Outcome::AllowCookieReply => "allow_cookie_reply",
            Outcome::AllowTransport => "allow_transport",
            Outcome::AllowProbe => "allow_probe",
            Outcome::AllowStun => "allow_stun",
            Outcome::DropBadType => "drop_bad_type",
            Outcome::DropBadLength => "drop_bad_length",
            Outcome::DropTruncated => "drop_truncated",
            Outcome::DropUnknownIndex => "drop_unknown_index",
            Outcome::DropUnknownProbeTag => "drop_unknown_probe_tag",
            Outcome::DropUnknownStunServer => "drop_unknown_stun_server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_complete_and_named_uniquely() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
            assert_eq!(Outcome::ALL.iter().filter(|p| p.name() == o.name()).count(), 1);
        }
    }

    #[test]
    fn probe_constants_match_ferry_paths() {
        use ferry_paths::probe;
        assert_eq!(PROBE_TYPE, probe::PROBE_TYPE);
        assert_eq!([PROBE_TYPE, 0, 0, 0], probe::PROBE_TYPE_WORD);
        assert_eq!(PROBE_LEN, probe::PROBE_LEN);
        assert_eq!(PROBE_TAG_LEN, ferry_paths::TAG_LEN);
        // The tag's offset is private to ferry-paths: find it in a sealed probe.
        let secrets = ferry_paths::ProbeSecrets::derive(&[1; 32], &[2; 32], &[3; 32]);
        let sealed = probe::seal(&secrets, &[4; probe::NONCE_LEN], &probe::ProbeBody::Ping { txid: [5; 12] })
            .expect("sealing a probe");
        assert_eq!(sealed[PROBE_TAG_OFFSET..PROBE_TAG_OFFSET + PROBE_TAG_LEN], secrets.tag_out);
        assert_eq!(probe::probe_tag(&sealed), Ok(secrets.tag_out));
    }

    #[test]
    fn stun_lengths() {
        assert!(stun_len_ok(20, 0));
        assert!(stun_len_ok(32, 12));
        assert!(stun_len_ok(548, 528));
        assert!(!stun_len_ok(552, 532), "over 548 bytes");
        assert!(!stun_len_ok(19, 0));
        assert!(!stun_len_ok(34, 14), "not a multiple of 4");
        assert!(!stun_len_ok(32, 8), "length field disagrees");
        assert!(!stun_len_ok(32, 16));
    }

    #[test]
    fn stun_server_keys_map_ipv4_into_ipv6() {
        let key = StunServerKey::v4([192, 0, 2, 1], 3478);
        assert_eq!(key.addr, core::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets());
        assert_eq!(key.port, [0x0d, 0x96]);
        assert_eq!(key.port(), 3478);
        assert_eq!(core::mem::size_of::<StunServerKey>(), 18);
    }
}
