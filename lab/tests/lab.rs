//! The lab itself: namespaces, links, NAT behaviour, processes and cleanup.
//! These run as root and in parallel with each other.

use std::{
    collections::HashSet,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use ferry_lab::{Lab, Nat, Netns};

const SERVER: &str = "203.0.113.10";

/// An internet namespace with a server namespace on 203.0.113.0/24 and one NAT
/// router whose LAN holds a host at 10.0.0.2.
struct Site {
    _lab: Lab,
    server: Netns,
    internet: Netns,
    host: Netns,
}

fn site(nat: Nat) -> Site {
    let lab = Lab::new().unwrap();
    let internet = lab.netns("internet").unwrap();
    let server = lab.netns("server").unwrap();
    lab.wire(&internet, &["203.0.113.1/24"], &server, &[&format!("{SERVER}/24")]).unwrap();
    server.ip(&["route", "add", "default", "via", "203.0.113.1"]).unwrap();
    let router = lab
        .nat_router("router", nat, &internet, "198.51.100.1/24", "198.51.100.2/24", "10.0.0.1/24")
        .unwrap();
    let host = lab.netns("host").unwrap();
    router.attach(&host, "10.0.0.2/24").unwrap();
    Site { _lab: lab, server, internet, host }
}

fn udp(ns: &Netns, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = ns.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    socket
}

/// The source address the server sees for a datagram from `client`.
fn observed_source(client: &UdpSocket, server: &UdpSocket) -> Option<SocketAddr> {
    client.send_to(b"ping", server.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    server.recv_from(&mut buf).ok().map(|(_, from)| from)
}

#[test]
fn namespaces_are_isolated_and_removed_on_drop() {
    let lab = Lab::new().unwrap();
    let a = lab.netns("a").unwrap();
    let b = lab.netns("b").unwrap();
    let c = lab.netns("c").unwrap();
    lab.wire(&a, &["192.0.2.1/24", "2001:db8::1/64"], &b, &["192.0.2.2/24", "2001:db8::2/64"]).unwrap();
    a.exec("ping", &["-c1", "-W2", "192.0.2.2"]).unwrap();
    a.exec("ping", &["-c1", "-W2", "2001:db8::2"]).unwrap();
    // c has no link: the same address is unreachable from it.
    assert!(c.exec("ping", &["-c1", "-W1", "192.0.2.2"]).is_err());

    let paths: Vec<_> = [&a, &b, &c].iter().map(|ns| ns.path()).collect();
    assert!(paths.iter().all(|p| p.exists()));
    let dir = lab.dir().to_path_buf();
    drop((a, b, c));
    drop(lab);
    for path in paths {
        assert!(!path.exists(), "{} survived the lab", path.display());
    }
    assert!(!dir.exists());
}

#[test]
fn processes_run_inside_and_die_with_their_handle() {
    let lab = Lab::new().unwrap();
    let ns = lab.netns("proc").unwrap();
    let mut sleeper = ns
        .spawn_program("sh", &["-c", "echo started; ip -o link show | wc -l; echo oops >&2; exec sleep 60"])
        .unwrap();
    sleeper.wait_for_output("oops", Duration::from_secs(5)).unwrap();
    // Only loopback exists inside a fresh namespace.
    assert_eq!(sleeper.stdout(), "started\n1\n");
    assert_eq!(sleeper.stderr(), "oops\n");
    let pid = sleeper.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(sleeper);
    assert!(gone_or_reused(pid), "pid {pid} still runs or is an unreaped zombie");

    let mut quitter = ns.spawn_program("sh", &["-c", "exit 3"]).unwrap();
    assert_eq!(quitter.wait_timeout(Duration::from_secs(5)).unwrap().code(), Some(3));
    let err = ns.exec("sh", &["-c", "echo bad >&2; exit 1"]).unwrap_err().to_string();
    assert!(err.contains("bad"), "{err}");
}

/// Killed and reaped: the pid is gone, or already reused by a live process
/// that is neither a zombie nor our `sleep 60`.
fn gone_or_reused(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    // The state is the field after the parenthesised command name.
    let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    state != Some("Z") && !cmdline.contains("sleep")
}

#[test]
fn sweep_removes_namespaces_of_dead_runs_only() {
    // The first lab of a process sweeps too; make it before the stale object.
    let lab = Lab::new().unwrap();
    let live = lab.netns("live").unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("fy-{dead_pid}-0-stale");
    std::process::Command::new("ip").args(["netns", "add", &stale]).status().unwrap();
    assert!(Path::new("/run/netns").join(&stale).exists());
    let stale_dir = std::env::temp_dir().join(format!("ferry-lab-{dead_pid}-stale"));
    std::fs::create_dir_all(stale_dir.join("cloud-data")).unwrap();

    ferry_lab::sweep_stale();
    assert!(!Path::new("/run/netns").join(&stale).exists(), "the stale namespace survived");
    assert!(!stale_dir.exists(), "the stale lab folder survived");
    assert!(live.path().exists(), "a live run's namespace was swept");
    assert!(lab.dir().exists(), "a live run's lab folder was swept");
}

#[test]
fn cone_nat_keeps_one_mapping_for_every_destination() {
    let site = site(Nat::Cone);
    let client = udp(&site.host, "10.0.0.2:40000");
    let mut seen = HashSet::new();
    for port in 3478..3482 {
        let server = udp(&site.server, &format!("{SERVER}:{port}"));
        let from = observed_source(&client, &server).expect("datagram through the NAT");
        assert_eq!(from.ip().to_string(), "198.51.100.2", "masqueraded to the WAN address");
        seen.insert(from.port());
    }
    assert_eq!(seen.len(), 1, "cone NAT gave several mappings: {seen:?}");
}

#[test]
fn symmetric_nat_maps_each_destination_to_a_new_port() {
    let site = site(Nat::Symmetric);
    let client = udp(&site.host, "10.0.0.2:40000");
    let mut seen = HashSet::new();
    for port in 3478..3482 {
        let server = udp(&site.server, &format!("{SERVER}:{port}"));
        let from = observed_source(&client, &server).expect("datagram through the NAT");
        assert_eq!(from.ip().to_string(), "198.51.100.2");
        seen.insert(from.port());
    }
    assert!(seen.len() > 1, "symmetric NAT reused one port for 4 destinations: {seen:?}");
}

#[test]
fn nat_drops_unsolicited_inbound() {
    let site = site(Nat::Cone);
    let client = udp(&site.host, "10.0.0.2:40000");
    let server = udp(&site.server, &format!("{SERVER}:3478"));
    let mapped = observed_source(&client, &server).unwrap();
    // The server may answer on the mapping it saw...
    server.send_to(b"reply", mapped).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.recv_from(&mut buf).unwrap().0, 5);
    // ...but another internet host may not, even on the same port.
    let stranger = udp(&site.internet, "198.51.100.1:5555");
    stranger.send_to(b"intrude", mapped).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(client.recv_from(&mut buf).is_err(), "unsolicited datagram crossed the NAT");
}

#[test]
fn cone_nat_keeps_the_mapping_when_the_peer_punches_first() {
    let site = site(Nat::Cone);
    let client = udp(&site.host, "10.0.0.2:40000");
    let server = udp(&site.server, &format!("{SERVER}:3478"));
    let mapped = observed_source(&client, &server).unwrap();
    // A peer that learned the mapping sends to it before the host has sent
    // anything to the peer: dropped, and it must leave no trace...
    let peer = udp(&site.internet, "198.51.100.1:6000");
    peer.send_to(b"punch", mapped).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // ...so that the host's datagram to the peer leaves from the same
    // mapping, and the peer's next one gets in: simultaneous open.
    assert_eq!(observed_source(&client, &peer), Some(mapped), "the mapping moved after the peer's punch");
    peer.send_to(b"punch", mapped).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.recv_from(&mut buf).unwrap(), (5, "198.51.100.1:6000".parse().unwrap()));
}

#[test]
fn tcp_only_443_lets_nothing_else_out() {
    let site = site(Nat::TcpOnly443);
    let client = udp(&site.host, "10.0.0.2:40000");
    let server = udp(&site.server, &format!("{SERVER}:3478"));
    assert_eq!(observed_source(&client, &server), None, "UDP crossed a TCP-443-only firewall");

    let https: SocketAddr = format!("{SERVER}:443").parse().unwrap();
    let http: SocketAddr = format!("{SERVER}:80").parse().unwrap();
    let listeners = site
        .server
        .run_in(move || (TcpListener::bind(https).unwrap(), TcpListener::bind(http).unwrap()))
        .unwrap();
    let connect = |addr: SocketAddr| {
        site.host.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()).unwrap()
    };
    assert!(connect(https), "TCP 443 must pass");
    assert!(!connect(http), "TCP 80 must not pass");
    let (_stream, from) = listeners.0.accept().unwrap();
    assert_eq!(from.ip().to_string(), "198.51.100.2");
}

#[test]
fn hosts_behind_one_router_reach_each_other() {
    // A home LAN: the router's filter is for what crosses it, not for the
    // switch between its own hosts (br_netfilter would put bridged frames
    // through the forward chain).
    for nat in [Nat::Cone, Nat::Symmetric, Nat::TcpOnly443] {
        let lab = Lab::new().unwrap();
        let internet = lab.netns("internet").unwrap();
        let router = lab
            .nat_router("router", nat, &internet, "198.51.100.1/24", "198.51.100.2/24", "10.0.0.1/24")
            .unwrap();
        let (laptop, nas) = (lab.netns("laptop").unwrap(), lab.netns("nas").unwrap());
        router.attach(&laptop, "10.0.0.2/24").unwrap();
        router.attach(&nas, "10.0.0.3/24").unwrap();
        let addr: SocketAddr = "10.0.0.3:8080".parse().unwrap();
        let _listener = nas.run_in(move || TcpListener::bind(addr).unwrap()).unwrap();
        let reached =
            laptop.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()).unwrap();
        assert!(reached, "{nat:?}: the laptop cannot reach the NAS on its own LAN");
    }
}

/// The delay line (no `sch_netem` in the CI kernel): what the router
/// forwards through one interface is held for the delay both ways, or
/// dropped at the loss rate; stopped, the link is as before.
#[test]
fn a_delay_line_holds_and_drops_what_a_router_forwards() {
    use ferry_lab::delay::{DelayLine, Impairment};
    let lab = Lab::new().unwrap();
    let (a, router, b) = (lab.netns("a").unwrap(), lab.netns("r").unwrap(), lab.netns("b").unwrap());
    router.enable_forwarding().unwrap();
    let to_a = lab.wire(&router, &["10.91.0.1/30"], &a, &["10.91.0.2/30"]).unwrap();
    lab.wire(&router, &["10.92.0.1/30"], &b, &["10.92.0.2/30"]).unwrap();
    a.ip(&["route", "add", "default", "via", "10.91.0.1"]).unwrap();
    b.ip(&["route", "add", "default", "via", "10.92.0.1"]).unwrap();
    let ping =
        |count: &str| a.output("ping", &["-n", "-c", count, "-i", "0.2", "-W", "3", "10.92.0.2"]).unwrap();

    // Held: datagrams to b wait in a line whose delay would outlast the
    // test, b gets none of them, and a stop lets them go, in order.
    let sink = b.run_in(|| std::net::UdpSocket::bind("10.92.0.2:9000")).unwrap().unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let long = Impairment { loss_percent: 0, delay: Duration::from_secs(3600) };
    let line = DelayLine::start(&router, &to_a.a, long, 1).unwrap();
    a.run_in(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for n in [b"one", b"two", b"six"] {
            socket.send_to(n, "10.92.0.2:9000").unwrap();
        }
    })
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while line.holding() < 3 {
        assert!(std::time::Instant::now() < deadline, "the line holds {} datagrams, not 3", line.holding());
        std::thread::sleep(Duration::from_millis(20));
    }
    sink.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(sink.recv(&mut buf).is_err(), "a held datagram reached b");
    sink.set_nonblocking(false).unwrap();
    let stats = line.stop().unwrap();
    assert_eq!((stats.passed, stats.dropped), (3, 0), "{stats:?}");
    for expected in [b"one", b"two", b"six"] {
        let n = sink.recv(&mut buf).expect("a released datagram");
        assert_eq!(&buf[..n], expected);
    }

    // A short delay: pings go both ways through it, each held once on its
    // way in and once on its way out.
    let delay = Duration::from_millis(150);
    let line = DelayLine::start(&router, &to_a.a, Impairment { loss_percent: 0, delay }, 1).unwrap();
    let held = ping("4");
    assert!(held.status.success(), "{held:?}");
    let stats = line.stop().unwrap();
    assert_eq!((stats.passed, stats.dropped), (8, 0), "{stats:?}");

    let line = DelayLine::start(&router, &to_a.a, Impairment { loss_percent: 100, delay }, 1).unwrap();
    assert!(!ping("2").status.success(), "nothing passes a line that loses everything");
    let stats = line.stop().unwrap();
    assert_eq!((stats.passed, stats.dropped), (0, 2), "{stats:?}");

    // Stopped: the rules are gone, and the link carries everything again.
    assert!(ping("2").status.success());
    let rules = router.exec("iptables", &["-S", "FORWARD"]).unwrap();
    assert!(!rules.contains("NFQUEUE"), "{rules}");
}
