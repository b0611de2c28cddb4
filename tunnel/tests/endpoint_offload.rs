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

use ferry_tunnel::endpoint::DEFAULT_MTU;

#[test]
fn a_tcp_stream_arrives_whole_and_its_segments_are_coalesced_for_the_tun_device() {
    let (bytes, packets) = stream::stream_through_the_tunnel();
    // Without coalescing every write is one packet of at most the MTU.
    let mean = bytes / packets.max(1);
    assert!(
        mean > u64::from(DEFAULT_MTU) * 2,
        "{packets} writes of {mean} bytes on average: segments were not coalesced"
    );
}
