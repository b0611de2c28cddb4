//! tun-rs's TUN offloads as the endpoint drives them, on arbitrary input: a
//! read (virtio-net header, then a packet) split into packets at the
//! endpoint's offset, then those packets and the rest of the input run
//! through GRO in buffers of the endpoint's capacity. Refusals are fine; a
//! panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

/// As in ferry_tunnel::endpoint: the room before each packet, and the
/// capacity of a decrypted packet's buffer.
const TUN_OFFSET: usize = 16;
const GRO_CAPACITY: usize = 2 * TUN_OFFSET + 65_535;

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_at_checked(VIRTIO_NET_HDR_LEN) else { return };
    let Ok(header) = VirtioNetHdr::decode(header) else { return };
    let (read, extra) = rest.split_at(rest.len().min(4096));
    let mut read = read.to_vec();
    let v6 = read.first().is_some_and(|b| b >> 4 == 6);
    let mut out = vec![vec![0u8; TUN_OFFSET + 1500]; 64];
    let mut sizes = vec![0usize; out.len()];
    let mut packets: Vec<Vec<u8>> = Vec::new();
    if let Ok(count) = tun_rs::gso_split(&mut read, header, &mut out, &mut sizes, TUN_OFFSET, v6) {
        packets
            .extend(out.iter().zip(&sizes).take(count).map(|(b, &n)| b[TUN_OFFSET..TUN_OFFSET + n].to_vec()));
    }
    // The rest of the input as more packets: two length bytes, then the packet.
    let mut extra = extra;
    while let [a, b, tail @ ..] = extra {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        packets.push(tail[..len].to_vec());
        extra = &tail[len..];
    }
    let mut bufs: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut b = Vec::with_capacity(GRO_CAPACITY);
            b.resize(TUN_OFFSET, 0);
            b.extend_from_slice(p);
            b
        })
        .collect();
    let _ = GROTable::new().apply_gro(&mut bufs, TUN_OFFSET, true);
});
