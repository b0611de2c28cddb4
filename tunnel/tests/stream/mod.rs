//! A TCP stream through two real endpoints in lab namespaces joined by a
//! veth, for the offload tests (each test file runs in its own process, so
//! one can set the environment the endpoints read).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use ferry_lab::{Lab, Netns};
use ferry_tunnel::{
    PrivateKey,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig, EndpointStats},
    proto::PeerConfig,
};
use tokio::runtime::Runtime;

/// Enough for TCP to leave slow start and send full super-segments.
pub const STREAM_BYTES: usize = 24 << 20;

fn start_in(rt: &Runtime, ns: &Netns, config: EndpointConfig) -> Endpoint {
    let handle = rt.handle().clone();
    ns.run_in(move || handle.block_on(Endpoint::start(config))).unwrap().unwrap()
}

/// Bytes and packets the TUN device `ifname` in `ns` received from the
/// endpoint (its "receive" side in /proc/net/dev: what the endpoint wrote).
fn rx_counters(ns: &Netns, ifname: &str) -> (u64, u64) {
    let dev = ns.exec("cat", &["/proc/net/dev"]).unwrap();
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{ifname}:")))
        .unwrap_or_else(|| panic!("{ifname} not in /proc/net/dev:\n{dev}"));
    let fields: Vec<u64> = line.split_whitespace().map(|f| f.parse().unwrap()).collect();
    (fields[0], fields[1])
}

/// The stream's byte at `offset`: not periodic in any small power of two, so
/// a misplaced segment shows.
fn pattern(offset: usize) -> u8 {
    (offset.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// The application's writes: large enough that the sender's TCP stack
/// builds full 64 KiB super-segments.
const WRITE_BYTES: usize = 64 << 10;

/// What a stream through the tunnel did.
pub struct Outcome {
    /// Bytes and packets the receiving endpoint wrote to its TUN device.
    pub bytes: u64,
    pub packets: u64,
    /// The sending endpoint's counters, which read the super-segments.
    pub sender: EndpointStats,
    /// The sending TUN device's `gso_max_segs`.
    #[allow(dead_code, reason = "only the offload tests read it; the module is compiled into each")]
    pub sender_gso_max_segs: u32,
}

/// A link's `gso_max_segs`, as `ip -d link show` reports it.
fn gso_max_segs(ns: &Netns, ifname: &str) -> u32 {
    let link = ns.exec("ip", &["-d", "link", "show", "dev", ifname]).unwrap();
    let mut words = link.split_whitespace();
    words
        .find(|w| *w == "gso_max_segs")
        .and_then(|_| words.next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no gso_max_segs for {ifname}:\n{link}"))
}

/// Sends a TCP stream of [`STREAM_BYTES`] from A to B through the tunnel,
/// checks that it arrives whole, and returns what the endpoints did. With
/// `mss`, B advertises it (a route's `advmss`) so A's TCP stack cuts its
/// super-segments at that MSS.
pub fn stream_with_mss(mss: Option<u16>) -> Outcome {
    let lab = Lab::new().unwrap();
    let (ns_a, ns_b) = (lab.netns("off-a").unwrap(), lab.netns("off-b").unwrap());
    lab.wire(&ns_a, &["192.0.2.1/24"], &ns_b, &["192.0.2.2/24"]).unwrap();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let mut peer_of_a = PeerConfig::new(kb.public_key());
    peer_of_a.allowed_ips = vec!["10.78.0.2/32".parse().unwrap()];
    peer_of_a.endpoint = Some("192.0.2.2:51820".parse().unwrap());
    let mut peer_of_b = PeerConfig::new(ka.public_key());
    peer_of_b.allowed_ips = vec!["10.78.0.1/32".parse().unwrap()];
    let config = |name: String, key: PrivateKey, address: &str, peer: PeerConfig| EndpointConfig {
        name,
        private_key: key,
        listen_port: 51820,
        addresses: vec![address.parse().unwrap()],
        mtu: DEFAULT_MTU,
        peers: vec![peer],
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let b_if = lab.ifname("offb");
    let a_if = lab.ifname("offa");
    let a = start_in(&rt, &ns_a, config(a_if.clone(), ka, "10.78.0.1/24", peer_of_a));
    let _b = start_in(&rt, &ns_b, config(b_if.clone(), kb, "10.78.0.2/24", peer_of_b));
    if let Some(mss) = mss {
        let mss = mss.to_string();
        ns_b.exec("ip", &["route", "add", "10.78.0.1/32", "dev", &b_if, "advmss", &mss, "initrwnd", "1000"])
            .unwrap();
        // A super-segment is at most half the congestion window, and TSO
        // sizes it to about a millisecond at the pacing rate: on a loaded
        // machine both stay small. These floors make super-segments as
        // large as 64 KiB (and the device) allow from the first window on.
        ns_a.exec("ip", &["route", "add", "10.78.0.2/32", "dev", &a_if, "initcwnd", "1000"]).unwrap();
        ns_a.exec("sysctl", &["-w", "net.ipv4.tcp_min_tso_segs=128"]).unwrap();
    }

    let listener = ns_b.run_in(|| TcpListener::bind("10.78.0.2:5201").unwrap()).unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut received = Vec::with_capacity(STREAM_BYTES);
        stream.read_to_end(&mut received).unwrap();
        received
    });
    let (bytes_before, packets_before) = rx_counters(&ns_b, &b_if);
    ns_a.run_in(|| {
        // The first SYN waits for the handshake; connect retries it.
        let mut stream =
            TcpStream::connect_timeout(&"10.78.0.2:5201".parse().unwrap(), Duration::from_secs(20)).unwrap();
        let data: Vec<u8> = (0..STREAM_BYTES).map(pattern).collect();
        for chunk in data.chunks(WRITE_BYTES) {
            stream.write_all(chunk).unwrap();
        }
    })
    .unwrap();
    let received = receiver.join().unwrap();
    assert_eq!(received.len(), STREAM_BYTES);
    if let Some(at) = received.iter().enumerate().position(|(i, b)| *b != pattern(i)) {
        panic!("the stream differs from byte {at} on");
    }

    let (bytes_after, packets_after) = rx_counters(&ns_b, &b_if);
    let (bytes, packets) = (bytes_after - bytes_before, packets_after - packets_before);
    assert!(bytes >= STREAM_BYTES as u64, "{bytes} bytes through B's TUN device");
    Outcome { bytes, packets, sender: a.stats(), sender_gso_max_segs: gso_max_segs(&ns_a, &a_if) }
}
