//! The endpoint's device lock outlives a panic under it: a UAPI request that
//! panics while it holds the device fails alone, and the engine tasks that
//! share the lock go on answering handshakes. Runs a real endpoint (TUN and
//! UDP) in a namespace of its own; the peer is the protocol core driven by
//! hand over a plain UDP socket. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use ferry_lab::Lab;
use ferry_tunnel::{
    PrivateKey,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig},
    proto::{Device, DeviceConfig, Incoming, Now, PeerConfig, Sent},
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
use tokio::net::UdpSocket;

/// An IPv4 packet from the peer's tunnel address to the endpoint's.
fn packet() -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 9, 0, 2]);
    p[16..20].copy_from_slice(&[10, 9, 0, 1]);
    p
}

/// The peer sends one packet; its initiation goes to the endpoint, and the
/// endpoint's response must come back and complete the handshake.
async fn handshake(peer: &mut Device, socket: &UdpSocket) {
    let mut out = vec![0u8; 256];
    let mut transmits = Vec::new();
    let sent = peer.send_packet(Now::system(), &packet(), &mut out, &mut transmits).unwrap();
    assert_eq!(sent, Sent::Queued);
    let initiation = transmits.pop().expect("an initiation");
    socket.send_to(&initiation.payload, initiation.to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("the endpoint answers the initiation")
        .unwrap();
    assert_eq!(from, initiation.to);
    let incoming = peer.handle_datagram(Now::system(), from, &mut buf[..len], &mut transmits);
    assert_eq!(incoming, Incoming::Handled, "a valid response");
}

#[test]
fn a_panic_under_the_device_lock_leaves_the_engine_running() {
    let lab = Lab::new().unwrap();
    let ns = lab.netns("lock").unwrap();
    let name = lab.ifname("wg");
    ns.run_in(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let ours = PrivateKey::generate();
            let theirs = PrivateKey::generate();
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let mut config = PeerConfig::new(theirs.public_key());
            config.allowed_ips = vec!["10.9.0.2/32".parse().unwrap()];
            let endpoint = Endpoint::start(EndpointConfig {
                name,
                private_key: ours.clone(),
                listen_port: 0,
                addresses: vec!["10.9.0.1/24".parse().unwrap()],
                mtu: DEFAULT_MTU,
                peers: vec![config],
            })
            .await
            .unwrap();

            let mut peer = Device::new(DeviceConfig::new(theirs), Box::new(ChaCha20Rng::seed_from_u64(1)));
            let mut config = PeerConfig::new(ours.public_key());
            config.endpoint = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, endpoint.local_port())));
            config.allowed_ips = vec!["10.9.0.0/24".parse().unwrap()];
            peer.add_peer(config).unwrap();
            handshake(&mut peer, &socket).await;

            let panicked = catch_unwind(AssertUnwindSafe(|| {
                endpoint.with_device(|_| panic!("a bug in a UAPI request"));
            }));
            assert!(panicked.is_err());

            // A new peer, added through the lock, handshakes: the receive
            // task still takes the lock and answers.
            let mut peer = Device::new(
                DeviceConfig::new(PrivateKey::generate()),
                Box::new(ChaCha20Rng::seed_from_u64(2)),
            );
            let mut config = PeerConfig::new(peer.public_key());
            config.allowed_ips = vec!["10.9.0.3/32".parse().unwrap()];
            endpoint.add_peer(config).unwrap();
            let mut config = PeerConfig::new(ours.public_key());
            config.endpoint = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, endpoint.local_port())));
            config.allowed_ips = vec!["10.9.0.0/24".parse().unwrap()];
            peer.add_peer(config).unwrap();
            handshake(&mut peer, &socket).await;
            assert_eq!(endpoint.with_device(|device| device.peers().count()), 2);
        });
    })
    .unwrap();
}
