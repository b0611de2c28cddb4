//! Crafted packets for XDP tests: well-formed Ethernet frames with correct
//! checksums (built with etherparse), and WireGuard-shaped payloads.

use etherparse::PacketBuilder;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An Ethernet + IPv4 + UDP frame.
pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4(src, dst, 64).udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("writing to a Vec cannot fail");
    frame
}

/// An Ethernet + IPv6 + UDP frame.
pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv6(src, dst, 64).udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("writing to a Vec cannot fail");
    frame
}

/// An Ethernet + IPv4 + TCP frame (a bare SYN-less segment with the payload).
pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4(src, dst, 64).tcp(sport, dport, 1, 65535);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("writing to a Vec cannot fail");
    frame
}

/// An Ethernet + IPv4 + ICMP echo request.
pub fn icmp4_echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4(src, dst, 64).icmpv4_echo_request(1, 1);
    let mut frame = Vec::with_capacity(builder.size(8));
    builder.write(&mut frame, &[0u8; 8]).expect("writing to a Vec cannot fail");
    frame
}

/// An ARP request frame.
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&sender);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

/// A WireGuard-shaped payload: the message type as a little-endian u32, then
/// `len - 4` deterministic filler bytes. `len` below 4 gives a prefix of that.
pub fn wireguard(message_type: u8, len: usize) -> Vec<u8> {
    let mut payload = vec![message_type, 0, 0, 0];
    payload.extend((0..len.saturating_sub(4)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7)));
    payload.truncate(len);
    payload
}

/// Offset of the IPv4/IPv6 header in frames built here.
pub const ETH_LEN: usize = 14;
