//! The endpoint's TUN offloads on real endpoints in lab namespaces joined by
//! a veth: a TCP stream through the tunnel arrives whole, and the receiving
//! endpoint hands its TUN device coalesced super-packets (GRO) rather than
//! one write per packet. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod stream;

use ferry_tunnel::endpoint::{DEFAULT_MTU, TUN_GSO_MAX_SEGS};

#[test]
fn a_tcp_stream_arrives_whole_and_its_segments_are_coalesced_for_the_tun_device() {
    let stream::Outcome { bytes, packets, sender, .. } = stream::stream_with_mss(None);
    assert_eq!((sender.tun_no_room, sender.tun_malformed), (0, 0), "TUN reads refused: {sender:?}");
    // Without coalescing every write is one packet of at most the MTU, so a
    // mean above it is only reached by writes that carry several. (How many
    // a write carries depends on how the reads interleave: a CI run on a
    // loaded machine averaged 2,803 bytes, 1.97 MTUs, where twice the MTU
    // was asked for before.)
    let mean = bytes / packets.max(1);
    assert!(
        mean > u64::from(DEFAULT_MTU),
        "{packets} writes of {mean} bytes on average: segments were not coalesced"
    );
}

/// A small MSS (536, common on PLCs) makes a 64 KiB super-segment of about
/// 120 segments, more than a TUN read may have slots for: the device's GSO
/// segment cap keeps every super-segment within them, so none is refused
/// and dropped (each drop a retransmission the stream would hide).
///
/// Whether the uncapped device loses one here depends on how the reads
/// interleave (three large super-segments queued at once), which a loaded
/// machine rarely gives: the cap itself is checked too.
#[test]
fn a_stream_at_mss_536_loses_no_super_segment_to_the_read_slots() {
    let outcome = stream::stream_with_mss(Some(536));
    let sender = outcome.sender;
    assert_eq!(outcome.sender_gso_max_segs, TUN_GSO_MAX_SEGS, "the sender's TUN device is not capped");
    assert_eq!((sender.tun_no_room, sender.tun_malformed), (0, 0), "TUN reads refused: {sender:?}");
}
