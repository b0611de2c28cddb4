//! `ferry-gateway guard` on a real veth between two namespaces: WireGuard-shaped
//! datagrams reach a UDP socket, malformed ones do not, other ports are
//! untouched, the counters agree, and SIGINT detaches the program. Path probes
//! reach the socket only with a live tag, STUN answers only from a known
//! server.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use ferry_lab::{Lab, Netns, Process, packet::wireguard};
use ferry_tests::bin_path;
use nix::sys::signal::Signal;

const PORT: u16 = 51820;
const OTHER_PORT: u16 = 9999;

struct Setup {
    _lab: Lab,
    wan: Netns,
    gateway: Netns,
    uplink: String,
    guard: Process,
}

fn setup(mode: &str) -> Setup {
    setup_with(mode, &[])
}

fn setup_with(mode: &str, extra: &[&str]) -> Setup {
    let lab = Lab::new().unwrap();
    let wan = lab.netns("wan").unwrap();
    let gateway = lab.netns("gateway").unwrap();
    let link = lab
        .wire(&wan, &["192.0.2.1/24", "2001:db8::1/64"], &gateway, &["192.0.2.2/24", "2001:db8::2/64"])
        .unwrap();
    let port = PORT.to_string();
    let mut args = vec!["guard", "--iface", &link.b, "--port", &port, "--mode", mode, "--json"];
    args.extend_from_slice(extra);
    let mut guard = gateway.spawn_program(bin_path("ferry-gateway"), &args).unwrap();
    guard.wait_for_output("uplink guard attached", Duration::from_secs(20)).unwrap();
    Setup { _lab: lab, wan, gateway, uplink: link.b, guard }
}

fn bind(ns: &Netns, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = ns.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket
}

/// Sends every payload, then a marker that the guard passes, and returns the
/// payloads that arrived before the marker. veth keeps order, so whatever did
/// not arrive by then was dropped.
fn deliver(from: &UdpSocket, to: SocketAddr, receiver: &UdpSocket, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let marker = {
        let mut m = wireguard(4, 48);
        m[8..16].copy_from_slice(b"MARKER!!");
        m
    };
    for payload in payloads {
        from.send_to(payload, to).unwrap();
    }
    from.send_to(&marker, to).unwrap();
    let mut arrived = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = receiver.recv_from(&mut buf).expect("the marker must arrive");
        if buf[..n] == marker[..] {
            return arrived;
        }
        arrived.push(buf[..n].to_vec());
    }
}

fn valid() -> Vec<Vec<u8>> {
    vec![wireguard(1, 148), wireguard(2, 92), wireguard(3, 64), wireguard(4, 32), wireguard(4, 1440)]
}

fn malformed() -> Vec<Vec<u8>> {
    let mut reserved = wireguard(4, 32);
    reserved[2] = 0xff;
    vec![
        wireguard(1, 147),
        wireguard(2, 93),
        wireguard(3, 100),
        wireguard(4, 33),
        wireguard(4, 16),
        wireguard(9, 148),
        reserved,
        Vec::new(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ]
}

fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    ns.ip(&["-d", "link", "show", "dev", iface]).unwrap().contains("prog/xdp")
}

fn run_scenario(mode: &str) {
    let mut s = setup(mode);
    assert!(xdp_attached(&s.gateway, &s.uplink), "no XDP program on {}", s.uplink);

    let wg = bind(&s.gateway, &format!("[::]:{PORT}"));
    let other = bind(&s.gateway, &format!("[::]:{OTHER_PORT}"));
    let sender4 = bind(&s.wan, "192.0.2.1:0");
    let sender6 = bind(&s.wan, "[2001:db8::1]:0");

    for (sender, gateway_ip) in [(&sender4, "192.0.2.2"), (&sender6, "[2001:db8::2]")] {
        let wg_addr: SocketAddr = format!("{gateway_ip}:{PORT}").parse().unwrap();
        let other_addr: SocketAddr = format!("{gateway_ip}:{OTHER_PORT}").parse().unwrap();
        assert_eq!(deliver(sender, wg_addr, &wg, &valid()), valid(), "valid messages to {wg_addr}");
        assert_eq!(deliver(sender, wg_addr, &wg, &malformed()), Vec::<Vec<u8>>::new(), "junk to {wg_addr}");
        // The same junk to another port is none of the guard's business.
        let mut to_other = malformed();
        to_other.push(wireguard(4, 32));
        let marker_free = deliver(sender, other_addr, &other, &to_other);
        assert_eq!(marker_free, to_other, "traffic to {other_addr} was touched");
    }

    s.guard.signal(Signal::SIGINT).unwrap();
    let status = s.guard.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "guard exited with {status}: {}", s.guard.stderr());
    assert!(!xdp_attached(&s.gateway, &s.uplink), "the program stayed attached after SIGINT");

    let counters = last_json_line(&s.guard.stdout());
    // Per family, to the WireGuard port: 5 valid messages (2 of them
    // transport) and 2 transport markers pass; of the 9 malformed, 6 have a
    // bad length (the empty one included) and 3 a bad type word.
    let expect = [
        ("allow_initiation", 2),
        ("allow_response", 2),
        ("allow_cookie_reply", 2),
        ("allow_transport", 2 * (2 + 2)),
        ("drop_bad_length", 2 * 6),
        ("drop_bad_type", 2 * 3),
        ("drop_truncated", 0),
    ];
    for (name, count) in expect {
        assert_eq!(counters[name], count, "{name} in {counters:?}");
    }
    // 11 datagrams per family to the other port (9 malformed, 1 valid, the
    // marker); the kernel's own ARP and neighbour discovery count elsewhere.
    assert!(counters["pass_other_port"] >= 22, "{counters:?}");
}

const LIVE_TAG: [u8; 8] = *b"live-tag";
const STUN_PORT: u16 = 3478;

/// A path probe's shape (`ferry_paths::probe`): type word 16, the receiver
/// tag, 72 more bytes. The guard checks shape and tag, not the AEAD.
fn probe(tag: [u8; 8]) -> Vec<u8> {
    let mut p = vec![16, 0, 0, 0];
    p.extend_from_slice(&tag);
    p.extend((0..72u8).map(|i| i.wrapping_mul(29)));
    p
}

/// A STUN Binding success response carrying an XOR-MAPPED-ADDRESS (RFC 8489).
fn stun_success() -> Vec<u8> {
    let mut p = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    p.extend_from_slice(b"transaction!");
    p.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
    p
}

#[test]
fn probes_with_a_live_tag_and_stun_answers_from_a_known_server_reach_the_socket() {
    let tag = hex(&LIVE_TAG);
    let servers = [format!("192.0.2.1:{STUN_PORT}"), format!("[2001:db8::1]:{STUN_PORT}")];
    let mut s = setup_with(
        "native",
        &["--probe-tag", &tag, "--stun-server", &servers[0], "--stun-server", &servers[1]],
    );
    let wg = bind(&s.gateway, &format!("[::]:{PORT}"));
    for (ip, gateway_ip) in [("192.0.2.1", "192.0.2.2"), ("[2001:db8::1]", "[2001:db8::2]")] {
        let wg_addr: SocketAddr = format!("{gateway_ip}:{PORT}").parse().unwrap();
        let peer = bind(&s.wan, &format!("{ip}:0"));
        let stun_server = bind(&s.wan, &format!("{ip}:{STUN_PORT}"));
        let mut bad_length = probe(LIVE_TAG);
        bad_length.push(0);
        let mut bad_cookie = stun_success();
        bad_cookie[7] ^= 1;
        let arrived = deliver(&peer, wg_addr, &wg, &[probe(LIVE_TAG), probe(*b"deadpeer"), bad_length]);
        assert_eq!(arrived, vec![probe(LIVE_TAG)], "probes to {wg_addr}");
        let arrived = deliver(&stun_server, wg_addr, &wg, &[stun_success(), bad_cookie]);
        assert_eq!(arrived, vec![stun_success()], "STUN from the server to {wg_addr}");
        // The same answer from another port of the same host is not the server's.
        let arrived = deliver(&peer, wg_addr, &wg, &[stun_success()]);
        assert_eq!(arrived, Vec::<Vec<u8>>::new(), "STUN from elsewhere to {wg_addr}");
    }

    s.guard.signal(Signal::SIGINT).unwrap();
    let status = s.guard.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "guard exited with {status}: {}", s.guard.stderr());
    let counters = last_json_line(&s.guard.stdout());
    let expect = [
        ("allow_probe", 2),
        ("drop_unknown_probe_tag", 2),
        ("drop_bad_length", 2),
        ("allow_stun", 2),
        ("drop_bad_type", 2),
        ("drop_unknown_stun_server", 2),
        // The markers, three per family.
        ("allow_transport", 6),
    ];
    for (name, count) in expect {
        assert_eq!(counters[name], count, "{name} in {counters:?}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn last_json_line(stdout: &str) -> BTreeMap<String, u64> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no counters in {stdout:?}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn native_xdp_drops_malformed_and_delivers_the_rest() {
    run_scenario("native");
}

#[test]
fn generic_xdp_drops_malformed_and_delivers_the_rest() {
    run_scenario("generic");
}

#[test]
fn sigterm_also_detaches_and_a_killed_guard_leaves_nothing_attached() {
    let mut s = setup("native");
    s.guard.signal(Signal::SIGTERM).unwrap();
    assert!(s.guard.wait_timeout(Duration::from_secs(10)).unwrap().success());
    assert!(!xdp_attached(&s.gateway, &s.uplink));

    // SIGKILL gives no chance to clean up: the kernel drops the bpf_link with
    // the process's file descriptors.
    let mut guard = s
        .gateway
        .spawn_program(bin_path("ferry-gateway"), &["guard", "--iface", &s.uplink, "--port", "51820"])
        .unwrap();
    guard.wait_for_output("uplink guard attached", Duration::from_secs(20)).unwrap();
    assert!(xdp_attached(&s.gateway, &s.uplink));
    guard.signal(Signal::SIGKILL).unwrap();
    guard.wait_timeout(Duration::from_secs(5)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while xdp_attached(&s.gateway, &s.uplink) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!xdp_attached(&s.gateway, &s.uplink), "a killed guard left its program attached");
    // And the wan side can still reach the gateway.
    s.wan.exec("ping", &["-c1", "-W2", "192.0.2.2"]).unwrap();
}
