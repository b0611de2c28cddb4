//! The gateway's uplink guard: an XDP program that drops datagrams to the
//! WireGuard port that cannot be WireGuard messages, and, when it follows the
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
    /// To the WireGuard port, but the first four bytes are no message type.
    DropBadType,
    /// A known message type with a length that type cannot have.
    DropBadLength,
    /// To the WireGuard port, but the UDP length field is below 8 or claims more
    /// bytes than the packet carries.
    DropTruncated,
    /// A well-formed response, cookie reply or transport message whose
    /// receiver index no live handshake or session holds (only while the
    /// guard follows the indices): a stale, replayed-after-expiry or forged
    /// message, refused before it costs a lookup and an AEAD in userspace.
    DropUnknownIndex,
}

impl Outcome {
    /// Number of outcomes, the size of the counter array.
    pub const COUNT: u32 = 15;

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
        Outcome::DropBadType,
        Outcome::DropBadLength,
        Outcome::DropTruncated,
        Outcome::DropUnknownIndex,
    ];

    /// Whether the guard drops packets with this outcome.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Outcome::DropBadType
                | Outcome::DropBadLength
                | Outcome::DropTruncated
                | Outcome::DropUnknownIndex
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
            Outcome::DropBadType => "drop_bad_type",
            Outcome::DropBadLength => "drop_bad_length",
            Outcome::DropTruncated => "drop_truncated",
            Outcome::DropUnknownIndex => "drop_unknown_index",
        }
    }
}
