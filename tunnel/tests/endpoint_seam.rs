//! The endpoint's seam for direct paths, on real endpoints (TUN and UDP) in
//! lab namespaces: non-WireGuard datagrams on the socket reach the side
//! channel, `send_raw` leaves from the WireGuard socket, and transports other
//! than the socket carry real tunnel traffic through virtual addresses until
//! they are detached. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ferry_lab::{Lab, Netns};
use ferry_tunnel::{
    PrivateKey,
    endpoint::{DEFAULT_MTU, DatagramSink, Endpoint, EndpointConfig, SideDatagram, VirtualPort, is_virtual},
    proto::{PeerConfig, messages::is_wireguard, session::Session},
};
use tokio::{
    net::UdpSocket,
    runtime::Runtime,
    sync::mpsc::{self, error::TryRecvError},
};

const PROBE_LEN: usize = 84;
/// How long a step that should happen at once may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Starts an endpoint whose TUN device and socket live in `ns`; its tasks
/// run on `rt`.
fn start_in(rt: &Runtime, ns: &Netns, config: EndpointConfig) -> Endpoint {
    let handle = rt.handle().clone();
    ns.run_in(move || handle.block_on(Endpoint::start(config))).unwrap().unwrap()
}

fn config(name: String, key: PrivateKey, address: &str, peers: Vec<PeerConfig>) -> EndpointConfig {
    EndpointConfig {
        name,
        private_key: key,
        listen_port: 0,
        addresses: vec![address.parse().unwrap()],
        mtu: DEFAULT_MTU,
        peers,
    }
}

/// A UDP socket bound in `ns`, for use on `rt`.
fn socket_in(rt: &Runtime, ns: &Netns, bind: SocketAddr) -> UdpSocket {
    let std_socket = ns
        .run_in(move || {
            let s = std::net::UdpSocket::bind(bind).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .unwrap();
    let _guard = rt.enter();
    UdpSocket::from_std(std_socket).unwrap()
}

/// Something shaped like a path probe: type 16, then noise.
fn probe(seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..PROBE_LEN).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    p[..4].copy_from_slice(&[16, 0, 0, 0]);
    p
}

async fn next_side(rx: &mut mpsc::Receiver<SideDatagram>) -> SideDatagram {
    tokio::time::timeout(PATIENCE, rx.recv()).await.expect("a side datagram").expect("the channel is open")
}

/// Waits until the endpoint has accounted for `n` side datagrams in all.
async fn side_accounted(endpoint: &Endpoint, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = endpoint.stats();
        if stats.side_delivered + stats.side_dropped >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {stats:?} of {n} side datagrams accounted for");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A transport sink that keeps what it is given.
#[derive(Default)]
struct Keep(parking_lot::Mutex<Vec<Vec<u8>>>);

impl DatagramSink for Keep {
    fn send(&self, datagram: &[u8]) {
        self.0.lock().push(datagram.to_vec());
    }
}

#[test]
fn side_datagrams_come_out_and_raw_datagrams_go_out_of_the_wireguard_socket() {
    let lab = Lab::new().unwrap();
    let ns = lab.netns("side").unwrap();
    // An address in the discard prefix that a local socket can send from: a
    // spoofer's way of posing as a transport.
    ns.add_addr("lo", "100::5/128").unwrap();
    let rt = runtime();
    let endpoint =
        start_in(&rt, &ns, config(lab.ifname("side"), PrivateKey::generate(), "10.78.0.1/24", vec![]));
    let port = endpoint.local_port();
    let plain = socket_in(&rt, &ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let plain_addr = plain.local_addr().unwrap();
    let spoofer = socket_in(&rt, &ns, "[100::5]:0".parse().unwrap());
    let to_endpoint = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    rt.block_on(async {
        // Nothing is set yet: a probe is dropped and counted.
        plain.send_to(&probe(0), to_endpoint).await.unwrap();
        side_accounted(&endpoint, 1).await;
        assert_eq!(endpoint.stats().side_dropped, 1);

        let (tx, mut rx) = mpsc::channel(8);
        endpoint.set_side_channel(tx);
        plain.send_to(&probe(1), to_endpoint).await.unwrap();
        let got = next_side(&mut rx).await;
        assert_eq!(got, SideDatagram { from: plain_addr, payload: probe(1) });

        // WireGuard-typed junk goes to the device, not the side channel, and
        // a datagram from a virtual address is refused outright; the probe
        // sent after them is the next thing on the channel.
        let mut junk = vec![4u8, 0, 0, 0];
        junk.resize(40, 0xee);
        plain.send_to(&junk, to_endpoint).await.unwrap();
        spoofer.send_to(&probe(2), SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await.unwrap();
        plain.send_to(&probe(3), to_endpoint).await.unwrap();
        assert_eq!(next_side(&mut rx).await.payload, probe(3));
        assert_eq!(endpoint.stats().virtual_spoofed, 1);
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));

        // A full channel drops at once rather than stall the receive path.
        let (tx, mut rx) = mpsc::channel(1);
        endpoint.set_side_channel(tx);
        let before = endpoint.stats();
        for seed in 10..13 {
            plain.send_to(&probe(seed), to_endpoint).await.unwrap();
        }
        side_accounted(&endpoint, before.side_delivered + before.side_dropped + 3).await;
        let after = endpoint.stats();
        assert_eq!(
            (after.side_delivered - before.side_delivered, after.side_dropped - before.side_dropped),
            (1, 2)
        );
        assert_eq!(rx.recv().await.unwrap().payload, probe(10));

        // send_raw leaves from the WireGuard port.
        endpoint.send_raw(plain_addr, b"stun-ish query").await.unwrap();
        let mut buf = [0u8; 64];
        let (len, from) = tokio::time::timeout(PATIENCE, plain.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..len], b"stun-ish query");
        assert_eq!(from.port(), port);

        // A transport's side datagrams come from its virtual address, and
        // raw datagrams to that address go to its sink until it detaches.
        let (tx, mut rx) = mpsc::channel(8);
        endpoint.set_side_channel(tx);
        let sink = Arc::new(Keep::default());
        let transport = endpoint.attach_transport(sink.clone());
        let virtual_addr = transport.addr();
        assert!(is_virtual(virtual_addr));
        transport.deliver(probe(20)).await;
        assert_eq!(next_side(&mut rx).await, SideDatagram { from: virtual_addr, payload: probe(20) });
        endpoint.send_raw(virtual_addr, b"pong").await.unwrap();
        assert_eq!(*sink.0.lock(), vec![b"pong".to_vec()]);
        drop(transport);
        assert!(endpoint.send_raw(virtual_addr, b"pong").await.is_err());
        assert_eq!(sink.0.lock().len(), 1);
    });
    drop(endpoint);
    drop(rt);
}

/// A transport that forwards every datagram, as its own datagram, to the
/// other endpoint's virtual port through a channel: no socket anywhere.
struct Forward {
    tx: mpsc::Sender<Vec<u8>>,
    sent: AtomicU64,
    /// Calls whose bytes were not one WireGuard datagram.
    not_wireguard: AtomicU64,
}

impl Forward {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Arc<Forward> {
        Arc::new(Forward { tx, sent: AtomicU64::new(0), not_wireguard: AtomicU64::new(0) })
    }
}

impl DatagramSink for Forward {
    fn send(&self, datagram: &[u8]) {
        // A GSO batch starts like its first datagram but is longer than any
        // one datagram can be.
        if !is_wireguard(datagram) || datagram.len() > Session::sealed_len(usize::from(DEFAULT_MTU)) {
            self.not_wireguard.fetch_add(1, Ordering::Relaxed);
        }
        if self.tx.try_send(datagram.to_vec()).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Delivers what arrives on `rx` through `port` until the task is aborted,
/// which drops the port and so detaches it.
fn deliverer(
    rt: &Runtime,
    port: VirtualPort,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        while let Some(datagram) = rx.recv().await {
            port.deliver(datagram).await;
        }
    })
}

fn ping(ns: &Netns, to: &str, wait_secs: &str) -> bool {
    let output = ns.output("ping", &["-n", "-c", "1", "-W", wait_secs, to]).unwrap();
    output.status.success()
}

#[test]
fn virtual_transports_carry_a_handshake_ping_and_udp_burst_without_udp_until_detached() {
    let lab = Lab::new().unwrap();
    // Two namespaces with no link between them: only the transports join them.
    let (ns_a, ns_b) = (lab.netns("vt-a").unwrap(), lab.netns("vt-b").unwrap());
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let mut peer_of_a = PeerConfig::new(kb.public_key());
    peer_of_a.allowed_ips = vec!["10.79.0.2/32".parse().unwrap()];
    let mut peer_of_b = PeerConfig::new(ka.public_key());
    peer_of_b.allowed_ips = vec!["10.79.0.1/32".parse().unwrap()];
    let rt = runtime();
    let a = start_in(&rt, &ns_a, config(lab.ifname("vta"), ka.clone(), "10.79.0.1/24", vec![peer_of_a]));
    let b = start_in(&rt, &ns_b, config(lab.ifname("vtb"), kb.clone(), "10.79.0.2/24", vec![peer_of_b]));

    let (a_to_b, from_a) = mpsc::channel(1024);
    let (b_to_a, from_b) = mpsc::channel(1024);
    let (sink_a, sink_b) = (Forward::new(a_to_b), Forward::new(b_to_a));
    let port_a = a.attach_transport(sink_a.clone());
    let port_b = b.attach_transport(sink_b.clone());
    assert_ne!(port_a.addr(), port_b.addr());
    assert!(a.set_peer_endpoint(&kb.public_key(), port_a.addr()));
    assert!(b.set_peer_endpoint(&ka.public_key(), port_b.addr()));
    assert!(!a.set_peer_endpoint(&PrivateKey::generate().public_key(), port_a.addr()));
    // What A sends arrives at B through B's port, and the other way round.
    let into_a = deliverer(&rt, port_a, from_b);
    let into_b = deliverer(&rt, port_b, from_a);

    // The first ping starts the handshake over the transports and waits for
    // it in the staging queue.
    assert!(ping(&ns_a, "10.79.0.2", "5"), "ping over the virtual transports");
    let status_a = a.status().pop().unwrap();
    assert_eq!(status_a.public_key, kb.public_key());
    assert!(status_a.endpoint.is_some_and(is_virtual), "{status_a:?}");
    assert!(status_a.handshakes >= 1 && status_a.rx_bytes > 0 && status_a.tx_bytes > 0, "{status_a:?}");
    assert!(status_a.handshake_rtt.is_some(), "A initiated, so A measured the round trip: {status_a:?}");
    assert!(status_a.last_rx.is_some());
    let status_b = b.status().pop().unwrap();
    assert!(status_b.last_rx.is_some() && status_b.handshakes >= 1, "{status_b:?}");
    assert!(status_b.endpoint.is_some_and(is_virtual), "{status_b:?}");

    // A burst of equal-sized datagrams leaves A's TUN device in few reads,
    // so the engine batches them for GSO; the transport gets them one by one
    // (B could not decrypt a batch), and all arrive.
    let receiver = socket_in(&rt, &ns_b, "10.79.0.2:7000".parse().unwrap());
    let sender = socket_in(&rt, &ns_a, "10.79.0.1:0".parse().unwrap());
    const BURST: usize = 64;
    rt.block_on(async {
        let before = sink_a.sent.load(Ordering::Relaxed);
        for i in 0..BURST {
            sender.send_to(&[i as u8; 1000], "10.79.0.2:7000").await.unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut seen = [false; BURST];
        for _ in 0..BURST {
            let (len, from) = tokio::time::timeout(PATIENCE, receiver.recv_from(&mut buf))
                .await
                .expect("the burst arrives")
                .unwrap();
            assert_eq!((len, from.ip()), (1000, IpAddr::from([10, 79, 0, 1])));
            seen[usize::from(buf[0])] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!(sink_a.sent.load(Ordering::Relaxed) - before >= BURST as u64);
    });
    assert_eq!(a.stats().virtual_unroutable, 0);
    for sink in [&sink_a, &sink_b] {
        assert_eq!(sink.not_wireguard.load(Ordering::Relaxed), 0, "a sink got a batch or junk");
    }

    // Detaching A's transport (its port drops with the task) stops traffic.
    into_a.abort();
    assert!(rt.block_on(into_a).unwrap_err().is_cancelled());
    let sent_before = sink_a.sent.load(Ordering::Relaxed);
    assert!(!ping(&ns_a, "10.79.0.2", "2"), "a ping got through a detached transport");
    assert_eq!(sink_a.sent.load(Ordering::Relaxed), sent_before, "A's sink was still used");
    assert!(a.stats().virtual_unroutable > 0, "{:?}", a.stats());

    into_b.abort();
    drop((a, b));
    drop(rt);
}
