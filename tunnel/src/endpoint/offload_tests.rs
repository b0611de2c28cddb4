//! The TUN offloads as the endpoint uses them: tun-rs splits a TCP
//! super-segment read from the device into packets (TSO) and coalesces
//! decrypted packets into super-packets for one write (GRO). These property
//! tests drive both with the endpoint's own offset and buffer sizes, check
//! every checksum from scratch, and check that a stream split and coalesced
//! again is the same bytes; malformed input is refused, never a panic.

use proptest::prelude::*;
use tun_rs::{
    GROTable, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};

use super::{GRO_CAPACITY, ReadError, SPLIT_SLOTS, TUN_OFFSET, TX_BATCH, read_error};

/// virtio-net's "checksum is partial: complete it at csum_start/offset".
const NEEDS_CSUM: u8 = 1;
/// What the header room of a packet holds until GRO writes a header there:
/// packets merged into another keep it, so it tells them apart.
const SENTINEL: u8 = 0xa5;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

/// The one's-complement sum of `data` added to `sum`, unfolded.
fn add_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The sum of the TCP pseudo-header for a segment of `tcp_len` bytes.
fn pseudo_sum(packet: &[u8], v6: bool, tcp_len: usize) -> u32 {
    let (addrs, len_bytes) = if v6 {
        (&packet[8..40], (tcp_len as u32).to_be_bytes().to_vec())
    } else {
        (&packet[12..20], (tcp_len as u16).to_be_bytes().to_vec())
    };
    add_words(add_words(6, addrs), &len_bytes)
}

fn ip_header_len(packet: &[u8], v6: bool) -> usize {
    if v6 { 40 } else { usize::from(packet[0] & 0x0f) * 4 }
}

/// A whole packet's checks, from scratch: IP length, IPv4 header checksum,
/// TCP checksum over the pseudo-header. Returns (seq, flags, payload).
fn check_packet(packet: &[u8], v6: bool) -> (u32, u8, Vec<u8>) {
    let iph = ip_header_len(packet, v6);
    if v6 {
        assert_eq!(usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40, packet.len(), "IPv6 length");
    } else {
        assert_eq!(usize::from(u16::from_be_bytes([packet[2], packet[3]])), packet.len(), "IPv4 length");
        assert_eq!(fold(add_words(0, &packet[..iph])), 0xffff, "IPv4 header checksum");
    }
    let tcp = &packet[iph..];
    assert_eq!(fold(add_words(pseudo_sum(packet, v6, tcp.len()), tcp)), 0xffff, "TCP checksum");
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let data_at = usize::from(tcp[12] >> 4) * 4;
    (seq, tcp[13], tcp[data_at..].to_vec())
}

/// A TCP stream's super-segment as the kernel hands it to a TUN device with
/// TSO: one IP and TCP header, the checksum partial (pseudo-header only).
#[derive(Clone, Debug)]
struct Stream {
    v6: bool,
    mss: u16,
    seq: u32,
    ip_id: u16,
    timestamps: bool,
    last_flags: u8,
    payload: Vec<u8>,
}

impl Stream {
    fn super_segment(&self) -> (VirtioNetHdr, Vec<u8>) {
        let options: &[u8] = if self.timestamps { &[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9] } else { &[] };
        let tcp_len = 20 + options.len() + self.payload.len();
        let mut packet = Vec::new();
        if self.v6 {
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            packet.extend_from_slice(&[6, 64]);
            packet.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            packet.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            packet.extend_from_slice(&self.ip_id.to_be_bytes());
            packet.extend_from_slice(&[0x40, 0, 64, 6, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2]);
            let check = !fold(add_words(0, &packet));
            packet[10..12].copy_from_slice(&check.to_be_bytes());
        }
        let iph = packet.len();
        packet.extend_from_slice(&40000u16.to_be_bytes());
        packet.extend_from_slice(&5201u16.to_be_bytes());
        packet.extend_from_slice(&self.seq.to_be_bytes());
        packet.extend_from_slice(&77u32.to_be_bytes());
        packet.push((((20 + options.len()) / 4) as u8) << 4);
        packet.push(ACK | self.last_flags);
        packet.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        packet.extend_from_slice(options);
        packet.extend_from_slice(&self.payload);
        // CHECKSUM_PARTIAL: the field holds the pseudo-header's sum.
        let partial = fold(pseudo_sum(&packet, self.v6, tcp_len));
        packet[iph + 16..iph + 18].copy_from_slice(&partial.to_be_bytes());
        let header = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type: if self.v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 },
            hdr_len: (iph + 20 + options.len()) as u16,
            gso_size: self.mss,
            csum_start: iph as u16,
            csum_offset: 16,
        };
        (header, packet)
    }
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        any::<bool>(),
        536u16..=1380,
        any::<u32>(),
        any::<u16>(),
        any::<bool>(),
        prop_oneof![Just(0u8), Just(PSH), Just(PSH | FIN)],
    )
        .prop_flat_map(|(v6, mss, seq, ip_id, timestamps, last_flags)| {
            // What one TSO read carries: at most 64 KiB, at MSS 536 about
            // 122 segments (the device's segment cap is the kernel's to
            // keep; here the split has a whole batch of slots).
            let max = 65_535 - 120;
            proptest::collection::vec(any::<u8>(), 1..max).prop_map(move |payload| Stream {
                v6,
                mss,
                seq,
                ip_id,
                timestamps,
                last_flags,
                payload,
            })
        })
}

/// Splits a super-segment into packets at the endpoint's offset, with a
/// whole batch's slots.
fn split(header: VirtioNetHdr, packet: &mut [u8], v6: bool) -> std::io::Result<Vec<Vec<u8>>> {
    split_into(header, packet, v6, TX_BATCH)
}

fn split_into(
    header: VirtioNetHdr,
    packet: &mut [u8],
    v6: bool,
    slots: usize,
) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = vec![vec![0u8; TUN_OFFSET + 1500]; slots];
    let mut sizes = vec![0usize; out.len()];
    let count = tun_rs::gso_split(packet, header, &mut out, &mut sizes, TUN_OFFSET, v6)?;
    Ok(out.iter().zip(&sizes).take(count).map(|(b, &n)| b[TUN_OFFSET..TUN_OFFSET + n].to_vec()).collect())
}

/// Checks that `packets`, in order, are `stream` cut at its MSS with correct
/// headers; returns the payload they carry.
fn check_segments(stream: &Stream, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, packet) in packets.iter().enumerate() {
        let (seq, flags, data) = check_packet(packet, stream.v6);
        assert_eq!(seq, stream.seq.wrapping_add(payload.len() as u32), "segment {i} sequence number");
        let last = i + 1 == packets.len();
        assert_eq!(flags, if last { ACK | stream.last_flags } else { ACK }, "segment {i} flags");
        if !last {
            assert_eq!(data.len(), usize::from(stream.mss), "segment {i} size");
        }
        payload.extend_from_slice(&data);
    }
    payload
}

/// Runs tun-rs's GRO over `packets` as the endpoint does (each at
/// TUN_OFFSET in a buffer of GRO_CAPACITY) and returns what it would write:
/// (virtio-net header, packet) for each buffer it did not merge away.
fn coalesce(packets: &[Vec<u8>]) -> std::io::Result<Vec<(VirtioNetHdr, Vec<u8>)>> {
    let mut bufs: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut b = Vec::with_capacity(GRO_CAPACITY);
            b.resize(TUN_OFFSET, SENTINEL);
            b.extend_from_slice(p);
            b
        })
        .collect();
    GROTable::new().apply_gro(&mut bufs, TUN_OFFSET, false)?;
    let header_at = TUN_OFFSET - VIRTIO_NET_HDR_LEN;
    bufs.iter()
        .filter(|b| b[header_at..TUN_OFFSET].iter().any(|&x| x != SENTINEL))
        .map(|b| Ok((VirtioNetHdr::decode(&b[header_at..TUN_OFFSET])?, b[TUN_OFFSET..].to_vec())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A super-segment splits into MSS-sized packets whose IP and TCP
    /// checksums hold from scratch, and GRO coalesces them back into one
    /// super-packet whose own split is the same stream.
    #[test]
    fn tcp_streams_split_and_coalesced_are_the_same_bytes(stream in stream()) {
        let (header, mut packet) = stream.super_segment();
        let packets = split(header, &mut packet, stream.v6).expect("a well-formed super-segment splits");
        prop_assert_eq!(packets.len(), stream.payload.len().div_ceil(usize::from(stream.mss)));
        prop_assert_eq!(check_segments(&stream, &packets), stream.payload.clone());

        let written = coalesce(&packets).expect("GRO takes well-formed packets");
        // One flow, contiguous, PSH only at the end: all of it in one write,
        // but for a FIN, which GRO leaves alone.
        let expected = if stream.last_flags & FIN != 0 && packets.len() > 1 { 2 } else { 1 };
        prop_assert_eq!(written.len(), expected, "{} packets became {} writes", packets.len(), written.len());
        let mut again = Vec::new();
        for (header, mut coalesced) in written {
            if header.gso_type == 0 {
                again.push(coalesced);
            } else {
                prop_assert_eq!(header.gso_size, stream.mss);
                prop_assert_eq!(header.flags & NEEDS_CSUM, NEEDS_CSUM);
                again.extend(split(header, &mut coalesced, stream.v6).expect("GRO's super-packet splits"));
            }
        }
        prop_assert_eq!(check_segments(&stream, &again), stream.payload);
    }

    /// Two flows' packets interleaved are coalesced per flow, never mixed.
    #[test]
    fn interleaved_flows_are_coalesced_apart(a in stream(), b in stream()) {
        let mut b = b;
        b.v6 = a.v6;
        b.seq = a.seq.wrapping_add(0x4000_0000);
        let (ha, mut pa) = a.super_segment();
        let (hb, mut pb) = b.super_segment();
        // Another source port makes it another flow.
        let iph = ip_header_len(&pb, b.v6);
        pb[iph..iph + 2].copy_from_slice(&40001u16.to_be_bytes());
        let sa = split(ha, &mut pa, a.v6).expect("splits");
        let sb = split(hb, &mut pb, b.v6).expect("splits");
        let mut mixed = Vec::new();
        for i in 0..sa.len().max(sb.len()) {
            mixed.extend(sa.get(i).cloned());
            mixed.extend(sb.get(i).cloned());
        }
        let written = coalesce(&mixed).expect("GRO takes well-formed packets");
        let mut by_port: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for (header, mut packet) in written {
            let port = u16::from_be_bytes([packet[iph], packet[iph + 1]]);
            let packets = if header.gso_type == 0 { vec![packet] } else { split(header, &mut packet, a.v6).expect("splits") };
            by_port[usize::from(port - 40000)].extend(packets);
        }
        prop_assert_eq!(check_segments(&a, &by_port[0]), a.payload);
        prop_assert_eq!(check_segments(&b, &by_port[1]), b.payload);
    }

    /// Arbitrary bytes under an arbitrary virtio-net header are split or
    /// refused with an error; GRO takes arbitrary packets without a panic.
    #[test]
    fn malformed_headers_and_packets_are_refused_without_a_panic(
        flags in any::<u8>(),
        gso_type in prop_oneof![Just(VIRTIO_NET_HDR_GSO_TCPV4), Just(VIRTIO_NET_HDR_GSO_TCPV6), any::<u8>()],
        hdr_len in any::<u16>(),
        gso_size in any::<u16>(),
        csum_start in prop_oneof![0u16..80, any::<u16>()],
        csum_offset in prop_oneof![Just(16u16), any::<u16>()],
        mut bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        v6 in any::<bool>(),
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..16),
    ) {
        if let Some(first) = bytes.first_mut() {
            *first = (*first & 0x0f) | if v6 { 0x60 } else { 0x40 };
        }
        let header = VirtioNetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
        if let Err(err) = split(header, &mut bytes, v6) {
            // Refused by tun-rs, never mistaken for the read failing.
            prop_assert_ne!(read_error(&err), ReadError::Os, "{}", err);
        }
        let _ = coalesce(&packets);
    }

    /// A super-segment of more segments than a read's slots is refused as
    /// no room, not as malformed, and one that fits is split: the endpoint
    /// counts the two apart by tun-rs's message, which this pins.
    #[test]
    fn too_many_segments_for_the_slots_is_no_room(stream in stream()) {
        let (header, mut packet) = stream.super_segment();
        let segments = stream.payload.len().div_ceil(usize::from(stream.mss));
        match split_into(header, &mut packet, stream.v6, SPLIT_SLOTS) {
            Ok(packets) => prop_assert!(segments <= SPLIT_SLOTS && packets.len() == segments),
            Err(err) => {
                prop_assert!(segments > SPLIT_SLOTS, "{segments} segments refused: {err}");
                prop_assert_eq!(read_error(&err), ReadError::NoRoom);
            }
        }
    }

    /// Valid segments with one byte changed anywhere are coalesced or
    /// refused, never a panic.
    #[test]
    fn corrupted_segments_never_panic(stream in stream(), at in any::<prop::sample::Index>(), which in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let (header, mut packet) = stream.super_segment();
        let mut packets = split(header, &mut packet, stream.v6).expect("splits");
        let victim = which.index(packets.len());
        let byte = at.index(packets[victim].len());
        packets[victim][byte] ^= mask;
        let _ = coalesce(&packets);
    }
}

/// Only TCP gets the 64 KiB buffers: UDP and anything else get one MTU's
/// worth, so GRO never hands a socket hundreds of small datagrams at once.
#[test]
fn tcp_alone_is_given_room_to_coalesce() {
    let tcp = Stream {
        v6: false,
        mss: 1000,
        seq: 1,
        ip_id: 1,
        timestamps: false,
        last_flags: 0,
        payload: vec![1; 10],
    };
    let (_, v4) = tcp.super_segment();
    let (_, v6) = Stream { v6: true, ..tcp }.super_segment();
    assert!(super::is_tcp(&v4) && super::is_tcp(&v6));
    for tcp in [&v4, &v6] {
        assert_eq!(super::packet_capacity(true, tcp), GRO_CAPACITY);
        // Without offloads nothing is coalesced: TCP needs no more room.
        assert_eq!(super::packet_capacity(false, tcp), super::SMALL_CAPACITY);
    }
    let mut udp4 = v4.clone();
    udp4[9] = 17;
    let mut udp6 = v6.clone();
    udp6[6] = 17;
    for other in [&udp4[..], &udp6[..], &[], &[0x45], &[0x60, 0, 0, 0, 0, 0], &[0x15; 40]] {
        assert!(!super::is_tcp(other), "{other:?}");
        assert_eq!(super::packet_capacity(true, other), super::SMALL_CAPACITY);
    }
    const { assert!(super::SMALL_CAPACITY < 2 * super::TUN_OFFSET + 2 * 1500) };
}

/// Only a refusal the offloads may have caused falls back to a device
/// without them: a name in use or a missing capability fails as it is.
#[test]
fn only_an_offload_refusal_falls_back() {
    use std::io::Error;
    const EPERM: i32 = 1;
    const EBUSY: i32 = 16;
    const EINVAL: i32 = 22;
    const EOPNOTSUPP: i32 = 95;
    for code in [EINVAL, EOPNOTSUPP] {
        assert!(super::offload_refused(&Error::from_raw_os_error(code)), "{code}");
    }
    for code in [EPERM, EBUSY] {
        assert!(!super::offload_refused(&Error::from_raw_os_error(code)), "{code}");
    }
    assert!(!super::offload_refused(&Error::other("not from the kernel")));
}
