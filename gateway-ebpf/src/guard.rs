//! The gateway's uplink guard.
//!
//! The WireGuard port is the only thing a gateway exposes toward the WAN. This
//! program drops datagrams to that port whose shape no WireGuard message can
//! have, before they cost a socket wakeup or a MAC check in userspace. It is a
//! cheap filter, not a policy: everything that is not UDP to the port passes.
//! When the daemon keeps the indices map complete, messages addressed to a
//! receiver index that no live handshake or session holds are dropped too.
//! Two kinds of datagrams that are not WireGuard share the port, because
//! both must use the WireGuard socket's NAT mapping: Ferry path probes (type
//! 16, 84 bytes) pass only with a receiver tag that a live path agent holds,
//! and STUN Binding success responses (the answers to the gateway's own
//! server-reflexive queries) pass only with a valid shape and from one of the
//! gateway's STUN servers. Both rules are always on: userspace fills their maps
//! before it needs them, and with empty maps nothing of either kind is
//! expected.
//! The guard matches the destination port, not the address: on an uplink
//! whose traffic is all for this host that is the same; on a bridged or
//! promiscuous uplink, WireGuard to another host's port would be judged by
//! this host's indices (the port is configurable for that reason).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use ferry_ebpf_common::guard::{
    COOKIE_REPLY_LEN, COOKIE_REPLY_RECEIVER_OFFSET, GuardConfig, INITIATION_LEN, IndexKey, MAX_INDICES,
    MAX_PROBE_TAGS, MAX_STUN_SERVERS, Outcome, PROBE_LEN, PROBE_TAG_OFFSET, PROBE_TYPE, ProbeTagKey,
    RESPONSE_LEN, RESPONSE_RECEIVER_OFFSET, STUN_BINDING_SUCCESS, STUN_MAGIC_COOKIE, StunServerKey,
    TRANSPORT_RECEIVER_OFFSET, stun_len_ok, transport_len_ok,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::packet::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_UDP, be16_at, ptr_at, ptr_at_rechecked,
};

#[map(name = "GUARD_CONFIG")]
static GUARD_CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);

#[map(name = "GUARD_COUNTERS")]
static GUARD_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Outcome::COUNT, 0);

#[map(name = "GUARD_INDICES")]
static GUARD_INDICES: HashMap<IndexKey, u8> = HashMap::with_max_entries(MAX_INDICES, 0);

#[map(name = "GUARD_PROBE_TAGS")]
static GUARD_PROBE_TAGS: HashMap<ProbeTagKey, u8> = HashMap::with_max_entries(MAX_PROBE_TAGS, 0);

#[map(name = "GUARD_STUN_SERVERS")]
static GUARD_STUN_SERVERS: HashMap<StunServerKey, u8> = HashMap::with_max_entries(MAX_STUN_SERVERS, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// Stacked 802.1Q/802.1ad tags the guard looks through (QinQ).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the guard walks to find UDP. Real traffic to a
/// WireGuard port has none; the bound keeps the verifier's work small.
const MAX_EXT_HEADERS: usize = 4;

#[xdp]
pub fn uplink_guard(ctx: XdpContext) -> u32 {
    let outcome = classify(&ctx);
    if let Some(counter) = GUARD_COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while we run.
        unsafe { *counter += 1 };
    }
    if outcome.drops() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// Where the UDP header starts and how many bytes the IP layer says follow it,
/// and where the IP header is (to find the source address, rarely needed).
struct UdpLocation {
    offset: usize,
    ip_payload_len: usize,
    ip_offset: usize,
    v6: bool,
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Outcome {
    let (port, follow_indices) = match GUARD_CONFIG.get(0) {
        Some(config) => (config.port, config.follows_indices()),
        None => return Outcome::PassOtherPort,
    };

    let Some(mut ethertype) = be16_at(ctx, ETH_HLEN - 2) else {
        return Outcome::PassMalformed;
    };
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = be16_at(ctx, offset + 2) else {
            return Outcome::PassMalformed;
        };
        ethertype = inner;
        offset += VLAN_HLEN;
    }

    let udp = match ethertype {
        ETH_P_IP => match locate_udp_v4(ctx, offset) {
            Ok(udp) => udp,
            Err(outcome) => return outcome,
        },
        ETH_P_IPV6 => match locate_udp_v6(ctx, offset) {
            Ok(udp) => udp,
            Err(outcome) => return outcome,
        },
        _ => return Outcome::PassNotIp,
    };

    // A UDP header that is not inside the IP datagram is read from padding.
    if udp.ip_payload_len < UdpHdr::LEN {
        return Outcome::PassMalformed;
    }
    let Some(header) = ptr_at::<UdpHdr>(ctx, udp.offset) else {
        return Outcome::PassMalformed;
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let header = unsafe { &*header };
    if header.dst != port || port == [0, 0] {
        return Outcome::PassOtherPort;
    }
    let udp_len = u16::from_be_bytes(header.len) as usize;
    if udp_len < UdpHdr::LEN || udp_len > udp.ip_payload_len {
        return Outcome::DropTruncated;
    }
    let message_offset = udp.offset + UdpHdr::LEN;
    let message_len = udp_len - UdpHdr::LEN;
    if ctx.data() + message_offset + message_len > ctx.data_end() {
        return Outcome::DropTruncated;
    }
    let outcome = classify_message(ctx, message_offset, message_len);
    match outcome {
        Outcome::AllowProbe => return check_probe_tag(ctx, message_offset),
        Outcome::AllowStun => return check_stun_server(ctx, &udp, header.src),
        _ => {}
    }
    if follow_indices {
        let receiver_offset = match outcome {
            Outcome::AllowResponse => RESPONSE_RECEIVER_OFFSET,
            Outcome::AllowCookieReply => COOKIE_REPLY_RECEIVER_OFFSET,
            Outcome::AllowTransport => TRANSPORT_RECEIVER_OFFSET,
            _ => return outcome,
        };
        // The length rules above put the index inside the message.
        let Some(receiver) = ptr_at::<IndexKey>(ctx, message_offset + receiver_offset) else {
            return Outcome::DropTruncated;
        };
        // SAFETY: ptr_at checked the four bytes are inside the packet.
        let key = unsafe { *receiver };
        // SAFETY: the value is only tested for presence, never read.
        if unsafe { GUARD_INDICES.get(&key) }.is_none() {
            return Outcome::DropUnknownIndex;
        }
    }
    outcome
}

/// A probe of the right shape passes only to a tag a live path agent holds.
#[inline(always)]
fn check_probe_tag(ctx: &XdpContext, message_offset: usize) -> Outcome {
    // The length rule put the tag inside the message.
    let Some(tag) = ptr_at_rechecked::<ProbeTagKey>(ctx, message_offset + PROBE_TAG_OFFSET) else {
        return Outcome::DropTruncated;
    };
    // SAFETY: ptr_at checked the eight bytes are inside the packet.
    let key = unsafe { *tag };
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { GUARD_PROBE_TAGS.get(&key) }.is_none() {
        return Outcome::DropUnknownProbeTag;
    }
    Outcome::AllowProbe
}

/// A STUN answer of the right shape passes only from one of our STUN servers.
#[inline(always)]
fn check_stun_server(ctx: &XdpContext, udp: &UdpLocation, source_port: [u8; 2]) -> Outcome {
    let mut key = StunServerKey { addr: [0; 16], port: source_port };
    if udp.v6 {
        // The source address sits 8 bytes into the IPv6 header.
        let Some(source) = ptr_at::<[u8; 16]>(ctx, udp.ip_offset + 8) else {
            return Outcome::DropTruncated;
        };
        // SAFETY: ptr_at checked the sixteen bytes are inside the packet.
        key.addr = unsafe { *source };
    } else {
        // The source address sits 12 bytes into the IPv4 header.
        let Some(source) = ptr_at::<[u8; 4]>(ctx, udp.ip_offset + 12) else {
            return Outcome::DropTruncated;
        };
        // SAFETY: ptr_at checked the four bytes are inside the packet.
        let [a, b, c, d] = unsafe { *source };
        key.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d];
    }
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { GUARD_STUN_SERVERS.get(&key) }.is_none() {
        return Outcome::DropUnknownStunServer;
    }
    Outcome::AllowStun
}

/// Applies STUN's shape rules for a Binding success response to a payload of
/// `len` (at least 4) bytes inside the packet whose first two are its type.
#[inline(always)]
fn classify_stun(ctx: &XdpContext, offset: usize, len: usize, attributes_len: usize) -> Outcome {
    if !stun_len_ok(len, attributes_len) {
        return Outcome::DropBadLength;
    }
    let Some(cookie) = ptr_at_rechecked::<[u8; 4]>(ctx, offset + 4) else {
        return Outcome::DropTruncated;
    };
    // SAFETY: ptr_at checked the four bytes are inside the packet.
    // Without the magic cookie it is no STUN message this side of RFC 3489.
    if unsafe { *cookie } != STUN_MAGIC_COOKIE {
        return Outcome::DropBadType;
    }
    Outcome::AllowStun
}

/// Applies WireGuard's shape rules to a UDP payload of `len` bytes, all of which
/// the caller has checked are inside the packet.
#[inline(always)]
fn classify_message(ctx: &XdpContext, offset: usize, len: usize) -> Outcome {
    // Reading the type word could hit Ethernet padding on tiny frames, so the
    // length decides first.
    if len < 4 {
        return Outcome::DropBadLength;
    }
    let Some(head) = ptr_at::<[u8; 4]>(ctx, offset) else {
        return Outcome::DropTruncated;
    };
    // SAFETY: ptr_at checked the four bytes are inside the packet.
    let head = unsafe { *head };
    // STUN's type (first two bits zero) and length are big-endian u16s; a
    // WireGuard type word never has a non-zero second byte.
    if [head[0], head[1]] == STUN_BINDING_SUCCESS {
        return classify_stun(ctx, offset, len, u16::from_be_bytes([head[2], head[3]]) as usize);
    }
    // The type is a little-endian u32 whose upper three bytes are reserved zero;
    // wireguard-go and the kernel module compare all four bytes.
    if head[1] | head[2] | head[3] != 0 {
        return Outcome::DropBadType;
    }
    match head[0] {
        1 if len == INITIATION_LEN => Outcome::AllowInitiation,
        2 if len == RESPONSE_LEN => Outcome::AllowResponse,
        3 if len == COOKIE_REPLY_LEN => Outcome::AllowCookieReply,
        4 if transport_len_ok(len) => Outcome::AllowTransport,
        PROBE_TYPE if len == PROBE_LEN => Outcome::AllowProbe,
        1..=4 | PROBE_TYPE => Outcome::DropBadLength,
        _ => Outcome::DropBadType,
    }
}

#[inline(always)]
fn locate_udp_v4(ctx: &XdpContext, offset: usize) -> Result<UdpLocation, Outcome> {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, offset) else {
        return Err(Outcome::PassMalformed);
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let ip = unsafe { &*ip };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len {
        return Err(Outcome::PassMalformed);
    }
    if ip.proto != IPPROTO_UDP {
        return Err(Outcome::PassNotUdp);
    }
    // More-fragments flag or a non-zero offset.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(Outcome::PassFragment);
    }
    if header_len != Ipv4Hdr::LEN {
        return Err(Outcome::PassIpOptions);
    }
    Ok(UdpLocation {
        offset: offset + Ipv4Hdr::LEN,
        ip_payload_len: total_len - Ipv4Hdr::LEN,
        ip_offset: offset,
        v6: false,
    })
}

#[inline(always)]
fn locate_udp_v6(ctx: &XdpContext, offset: usize) -> Result<UdpLocation, Outcome> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, offset) else {
        return Err(Outcome::PassMalformed);
    };
    // SAFETY: ptr_at checked the header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Outcome::PassMalformed);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let mut next = ip.next_hdr;
    let mut header_offset = offset + Ipv6Hdr::LEN;
    let mut ext_len = 0usize;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            IPPROTO_UDP => break,
            IPPROTO_FRAGMENT => return Err(Outcome::PassFragment),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let Some(ext) = ptr_at::<[u8; 2]>(ctx, header_offset) else {
                    return Err(Outcome::PassMalformed);
                };
                // SAFETY: ptr_at checked the two bytes are inside the packet.
                let [ext_next, ext_units] = unsafe { *ext };
                let current = next;
                next = ext_next;
                if current == IPPROTO_AH {
                    // AH counts 4-byte units, minus 2 (RFC 4302).
                    (ext_units as usize + 2) * 4
                } else {
                    (ext_units as usize + 1) * 8
                }
            }
            _ => return Err(Outcome::PassNotUdp),
        };
        header_offset += len;
        ext_len += len;
    }
    if next != IPPROTO_UDP {
        return Err(match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => Outcome::PassExtHeaders,
            IPPROTO_FRAGMENT => Outcome::PassFragment,
            _ => Outcome::PassNotUdp,
        });
    }
    if ext_len > payload_len {
        return Err(Outcome::PassMalformed);
    }
    Ok(UdpLocation {
        offset: header_offset,
        ip_payload_len: payload_len - ext_len,
        ip_offset: offset,
        v6: true,
    })
}
