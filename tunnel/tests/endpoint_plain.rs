//! The endpoint without TUN offloads, as where the kernel refuses them
//! (forced here with FERRY_TUN_OFFLOAD=0, which is why this test has a
//! process of its own): the same TCP stream arrives whole, one packet per
//! write. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod stream;

use ferry_tunnel::endpoint::{DEFAULT_MTU, OFFLOAD_ENV};

#[test]
fn without_offloads_a_tcp_stream_arrives_whole_one_packet_per_write() {
    // SAFETY: this process's only test, set before any thread reads it.
    unsafe { std::env::set_var(OFFLOAD_ENV, "0") };
    let stream::Outcome { bytes, packets, sender, .. } = stream::stream_with_mss(None);
    assert_eq!((sender.tun_no_room, sender.tun_malformed), (0, 0), "TUN reads refused: {sender:?}");
    assert!(
        bytes <= packets * u64::from(DEFAULT_MTU),
        "{packets} writes for {bytes} bytes: something was coalesced without offloads"
    );
}
