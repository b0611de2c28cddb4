//! The benchmarks' in-kernel traffic generator: frames sent with BPF_PROG_RUN's
//! live frames out of one end of a veth arrive at the other end's socket,
//! each copy once. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use ferry_ebpf::{generator::FrameGenerator, pass::PassProgram};
use ferry_lab::{Lab, packet};

#[test]
fn generated_frames_reach_the_peer_s_socket_once_each() {
    if !ferry_ebpf::generator::supported() {
        eprintln!("skipped: this kernel has no BPF_PROG_RUN live frames (Linux 5.18)");
        return;
    }
    let lab = Lab::new().expect("a lab (run as root)");
    let sender = lab.netns("gen").unwrap();
    let receiver = lab.netns("sink").unwrap();
    let link = lab.wire(&sender, &["192.0.2.1/24"], &receiver, &["192.0.2.2/24"]).unwrap();
    // veth takes XDP frames only into an end that runs an XDP program.
    let sink_if = link.b.clone();
    let _pass = receiver.run_in(move || PassProgram::attach(&sink_if)).unwrap().unwrap();
    let socket = receiver.run_in(|| UdpSocket::bind("192.0.2.2:9000")).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    // Each skb veth builds from an XDP frame is charged a whole page: room
    // for all of them, or the socket drops half.
    let bytes: libc::c_int = 4 << 20;
    // SAFETY: a valid socket and an int option of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());

    let mut frame = packet::udp4([192, 0, 2, 1], 9001, [192, 0, 2, 2], 9000, b"ferry generator");
    frame[..6].copy_from_slice(&receiver.mac(&link.b).unwrap());
    frame[6..12].copy_from_slice(&sender.mac(&link.a).unwrap());
    const COUNT: u32 = 100;
    let iface = link.a.clone();
    sender
        .run_in(move || {
            let index = ferry_ebpf::if_index(&iface).unwrap();
            FrameGenerator::new().expect("loading xdp_tx").send(&frame, index, COUNT).unwrap();
        })
        .unwrap();

    let mut received = 0;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(10);
    while received < COUNT && Instant::now() < deadline {
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            assert_eq!(&buf[..len], b"ferry generator");
            assert_eq!(from.to_string(), "192.0.2.1:9001");
            received += 1;
        }
    }
    assert_eq!(received, COUNT, "of {COUNT} generated frames");
    // And no more than that.
    assert!(socket.recv_from(&mut buf).is_err(), "a frame arrived twice");
}
