//! Traversal on real endpoints in lab namespaces: two Ferry endpoints, each
//! behind its own NAT router (real nftables masquerade) on a simulated
//! internet, and a real `ferry-relay` (UDP relay, STUN server, WebSocket
//! relay) with a static allocation for the pair. Each side learns its
//! server-reflexive address from the relay's STUN server through its
//! WireGuard socket; the test hands each side's candidates to the other, as
//! the cloud does. Needs root and the workspace's binaries
//! (`cargo build -p ferry-relay`).
//!
//! ```text
//!                      inet (forwards)
//!        198.51.100.1/24 | 203.0.113.254/24 | 192.0.2.1/24
//!   nat-a (WAN .2)     relay 203.0.113.1      nat-b (WAN .2)
//!   LAN 10.1.0.1/24    UDP 40000, STUN 3478,  LAN 10.2.0.1/24
//!        |             WebSocket :443 (ws)         |
//!   side a 10.1.0.2                           side b 10.2.0.2
//!   tunnel 10.77.0.1                          tunnel 10.77.0.2
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_lab::{Lab, Nat, Netns, Process, Router, workspace_bin};
use ferry_traversal::{
    PathKind, PeerPlan, RelayPlan, RelayTransport, TransportMode, Traversal, TraversalOptions, WebSocketRelay,
};
use ferry_tunnel::{
    PrivateKey, PublicKey,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig},
    proto::PeerConfig,
};
use tokio::runtime::Runtime;

const RELAY_IP: &str = "203.0.113.1";
const RELAY_UDP: &str = "203.0.113.1:40000";
const STUN: &str = "203.0.113.1:3478";
const WS_URL: &str = "ws://203.0.113.1:443/";
const WS_TOKEN: &str = "traversal-lab-websocket-token-0123456789";
const A_WAN: &str = "198.51.100.2";
const B_WAN: &str = "192.0.2.2";
const A_TUN: &str = "10.77.0.1";
const B_TUN: &str = "10.77.0.2";
/// How long something that should happen may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// Fields drop in order: the traversal and the endpoint before their runtime.
struct Side {
    endpoint: Arc<Endpoint>,
    traversal: Traversal,
    _rt: Runtime,
    ns: Netns,
    _router: Router,
    key: PublicKey,
}

/// Fields drop in order: the sides before the namespaces.
struct World {
    a: Side,
    b: Side,
    relay: Process,
    _relay_ns: Netns,
    inet: Netns,
    _lab: Lab,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ferry-relay stderr ---\n{}", self.relay.stderr());
        }
        self.relay.kill();
    }
}

/// The endpoint of one side, with the other side as its only peer (no
/// endpoint: the traversal sets it), and its traversal, on a runtime of its
/// own whose threads were all made inside the side's namespace: the sockets
/// the traversal opens later (the WebSocket relay's TCP connections) are
/// made on them, so they must be there, as in a daemon that runs in one
/// namespace.
fn side(
    lab: &Lab,
    ns: Netns,
    router: Router,
    (key, other): (PrivateKey, PublicKey),
    (address, other_tun): (&str, &str),
    options: TraversalOptions,
) -> Side {
    let mut peer = PeerConfig::new(other);
    peer.allowed_ips = vec![format!("{other_tun}/32").parse().unwrap()];
    peer.persistent_keepalive = Some(Duration::from_secs(25));
    let config = EndpointConfig {
        name: lab.ifname("t"),
        private_key: key.clone(),
        listen_port: 0,
        addresses: vec![address.parse().unwrap()],
        mtu: DEFAULT_MTU,
        peers: vec![peer],
    };
    let rt = ns
        .run_in(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
        })
        .unwrap();
    let handle = rt.handle().clone();
    let (endpoint, traversal) = ns
        .run_in(move || {
            let endpoint = Arc::new(handle.block_on(Endpoint::start(config)).unwrap());
            let _entered = handle.enter();
            let traversal = Traversal::start(endpoint.clone(), options);
            traversal.set_stun_servers(vec![STUN.parse().unwrap()]);
            (endpoint, traversal)
        })
        .unwrap();
    Side { endpoint, traversal, _rt: rt, ns, _router: router, key: key.public_key() }
}

/// The lab with side a behind `nat_a` and side b behind `nat_b`, the relay
/// running, both endpoints and traversals started (no peer managed yet).
fn world(nat_a: Nat, nat_b: Nat, options_a: TraversalOptions) -> World {
    let lab = Lab::new().unwrap();
    let inet = lab.netns("inet").unwrap();
    inet.enable_forwarding().unwrap();
    let relay_ns = lab.netns("relay").unwrap();
    let relay_link = lab.wire(&inet, &["203.0.113.254/24"], &relay_ns, &["203.0.113.1/24"]).unwrap();
    relay_ns.ip(&["route", "add", "default", "via", "203.0.113.254"]).unwrap();
    let router_a =
        lab.nat_router("nat-a", nat_a, &inet, "198.51.100.1/24", "198.51.100.2/24", "10.1.0.1/24").unwrap();
    let router_b =
        lab.nat_router("nat-b", nat_b, &inet, "192.0.2.1/24", "192.0.2.2/24", "10.2.0.1/24").unwrap();
    let (ns_a, ns_b) = (lab.netns("side-a").unwrap(), lab.netns("side-b").unwrap());
    router_a.attach(&ns_a, "10.1.0.2/24").unwrap();
    router_b.attach(&ns_b, "10.2.0.2/24").unwrap();

    let (key_a, key_b) = (PrivateKey::generate(), PrivateKey::generate());
    let allocations = lab.dir().join("allocations.toml");
    std::fs::write(
        &allocations,
        format!(
            "[[allocation]]\nid = 1\nsession_id = 1\ngateway_key = \"{}\"\nclient_key = \"{}\"\nport = 40000\n\
             websocket_token = \"{WS_TOKEN}\"\n",
            key_a.public_key().to_base64(),
            key_b.public_key().to_base64()
        ),
    )
    .unwrap();
    let relay_bin = workspace_bin("ferry-relay").unwrap();
    let mut relay = relay_ns
        .spawn_program(
            relay_bin,
            &[
                "run",
                "--xdp",
                "off",
                "--interface",
                &relay_link.b,
                "--public-ipv4",
                RELAY_IP,
                "--ports",
                "40000-40009",
                "--allocations",
                allocations.to_str().unwrap(),
                "--metrics",
                "off",
                "--stun",
                STUN,
                "--websocket",
                "203.0.113.1:443",
                "--log",
                "debug",
            ],
        )
        .unwrap();
    if let Err(e) = relay.wait_for_output("ferry-relay ready", PATIENCE) {
        relay.kill();
        panic!("ferry-relay did not start: {e}\n{}", relay.stderr());
    }

    let (pub_a, pub_b) = (key_a.public_key(), key_b.public_key());
    let a = side(&lab, ns_a, router_a, (key_a, pub_b), ("10.77.0.1/24", B_TUN), options_a);
    let b = side(&lab, ns_b, router_b, (key_b, pub_a), ("10.77.0.2/24", A_TUN), TraversalOptions::default());
    World { a, b, relay, _relay_ns: relay_ns, inet, _lab: lab }
}

fn relay_plan(mode: TransportMode, candidates: Vec<SocketAddr>) -> PeerPlan {
    PeerPlan {
        relay: Some(RelayPlan {
            udp: RELAY_UDP.parse().unwrap(),
            websocket: Some(WebSocketRelay { url: WS_URL.into(), token: WS_TOKEN.into(), pin: None }),
        }),
        candidates,
        mode,
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// This side's candidates, once one of them is its NAT's public address
/// (learned from the relay's STUN server through the WireGuard socket).
fn reflexive_candidates(side: &Side, wan: &str) -> Vec<SocketAddr> {
    let wan: IpAddr = wan.parse().unwrap();
    let mut candidates = side.traversal.local_candidates();
    wait_until("a server-reflexive candidate", || {
        candidates.borrow_and_update().iter().any(|c| c.ip() == wan)
    });
    candidates.borrow().clone()
}

fn path(side: &Side, other: &Side) -> PathKind {
    side.traversal.status(&other.key).map_or(PathKind::None, |s| s.path)
}

fn ping(ns: &Netns, to: &str) -> bool {
    ns.output("ping", &["-n", "-c", "1", "-W", "2", to]).unwrap().status.success()
}

fn wait_ping(ns: &Netns, to: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !ping(ns, to) {
        assert!(Instant::now() < deadline, "no ping to {to} through the tunnel");
    }
}

/// Sequence numbers answered by a finished `ping -n` run.
fn answered(output: &str) -> Vec<u32> {
    output
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Adds `rules` (for the forward hook) to the simulated internet's router.
fn internet_drops(inet: &Netns, table: &str, rules: &[String]) {
    let mut script = format!(
        "add table inet {table}; add chain inet {table} through {{ type filter hook forward priority -10; }};"
    );
    for rule in rules {
        script.push_str(&format!(" add rule inet {table} through {rule};"));
    }
    inet.exec("nft", &[&script]).unwrap();
}

/// Drops every datagram between the two NATs' public addresses, so that
/// only the relay can carry the pair.
fn cut_direct(inet: &Netns) {
    let rules = [
        format!("ip saddr {A_WAN} ip daddr {B_WAN} meta l4proto udp drop"),
        format!("ip saddr {B_WAN} ip daddr {A_WAN} meta l4proto udp drop"),
    ];
    internet_drops(inet, "cut", &rules);
}

/// Drops everything to and from the relay: only a direct path can carry the pair.
fn cut_relay(inet: &Netns) {
    internet_drops(
        inet,
        "norelay",
        &[format!("ip daddr {RELAY_IP} drop"), format!("ip saddr {RELAY_IP} drop")],
    );
}

#[test]
fn cone_nats_start_on_the_relay_then_go_direct_over_reflexive_candidates() {
    let w = world(Nat::Cone, Nat::Cone, TraversalOptions::default());
    let (a, b) = (&w.a, &w.b);
    // First the relay only, as before the cloud has candidates.
    a.traversal.upsert_peer(b.key, relay_plan(TransportMode::Udp, vec![])).unwrap();
    b.traversal.upsert_peer(a.key, relay_plan(TransportMode::Udp, vec![])).unwrap();
    assert_eq!((path(a, b), path(b, a)), (PathKind::UdpRelay, PathKind::UdpRelay));
    wait_ping(&a.ns, B_TUN);
    let relay: SocketAddr = RELAY_UDP.parse().unwrap();
    assert_eq!(a.traversal.status(&b.key).unwrap().endpoint, Some(relay));

    // Then each side's candidates to the other, as the cloud passes them.
    let (cand_a, cand_b) = (reflexive_candidates(a, A_WAN), reflexive_candidates(b, B_WAN));
    assert!(cand_a.iter().any(|c| c.ip() == "10.1.0.2".parse::<IpAddr>().unwrap()), "{cand_a:?}");
    let mut pings = a.ns.spawn_program("ping", &["-n", "-i", "0.2", "-c", "40", B_TUN]).unwrap();
    a.traversal.upsert_peer(b.key, relay_plan(TransportMode::Udp, cand_b.clone())).unwrap();
    b.traversal.upsert_peer(a.key, relay_plan(TransportMode::Udp, cand_a.clone())).unwrap();
    let b_public = *cand_b.iter().find(|c| c.ip() == B_WAN.parse::<IpAddr>().unwrap()).unwrap();
    // WireGuard's roaming may point the peer back at the relay for a moment
    // when a last datagram arrives that way (roaming stays on, by design);
    // the traversal re-points it at its next status read, so wait for the
    // direct path and its endpoint together.
    wait_until("both sides to go direct, a's peer endpoint at b's public address", || {
        path(a, b) == PathKind::Direct
            && path(b, a) == PathKind::Direct
            && a.traversal.status(&b.key).and_then(|s| s.endpoint) == Some(b_public)
    });
    let status = a.traversal.status(&b.key).unwrap();
    assert_eq!(status.why, ferry_paths::why::VERIFIED);
    assert!(status.rtt.is_some(), "{status:?}");
    assert_eq!(status.relay, Some(RelayTransport::Udp));
    assert_eq!(status.observed.map(|o| o.ip()), Some(A_WAN.parse().unwrap()), "{status:?}");
    // Ping went on through the move.
    pings.wait_timeout(PATIENCE).unwrap();
    let replies = answered(&pings.stdout()).len();
    assert!(replies >= 36, "only {replies} of 40 pings answered across the move:\n{}", pings.stdout());

    // The pair no longer needs the relay.
    cut_relay(&w.inet);
    for _ in 0..5 {
        assert!(ping(&a.ns, B_TUN) && ping(&b.ns, A_TUN), "ping over the direct path without the relay");
    }
    let stats = a.traversal.stats();
    assert!(stats.stun_answers >= 1 && stats.probes.pongs_received >= 1, "{stats:?}");
    assert_eq!(stats.paths.get(PathKind::Direct), 1, "{stats:?}");
    // Forgetting the peer stops its probes and its tag at once.
    assert_eq!(*a.traversal.probe_tags().borrow(), vec![a.endpoint.probe_secrets(&b.key).unwrap().tag_in]);
    assert!(a.traversal.remove_peer(&b.key));
    assert!(a.traversal.probe_tags().borrow().is_empty());
    assert!(a.traversal.status(&b.key).is_none());
    let sent = a.traversal.stats().probes.pings_sent;
    std::thread::sleep(ferry_paths::HEARTBEAT_INTERVAL * 2);
    assert_eq!(a.traversal.stats().probes.pings_sent, sent, "probes after remove_peer");
}

/// The lab with each side managing the other, given the other's candidates
/// as soon as it has a server-reflexive one, on the UDP relay.
fn paired(nat_a: Nat, nat_b: Nat) -> World {
    let w = world(nat_a, nat_b, TraversalOptions::default());
    let (cand_a, cand_b) = (reflexive_candidates(&w.a, A_WAN), reflexive_candidates(&w.b, B_WAN));
    w.a.traversal.upsert_peer(w.b.key, relay_plan(TransportMode::Udp, cand_b)).unwrap();
    w.b.traversal.upsert_peer(w.a.key, relay_plan(TransportMode::Udp, cand_a)).unwrap();
    w
}

#[test]
fn a_symmetric_nat_keeps_the_pair_on_the_relay() {
    let w = paired(Nat::Cone, Nat::Symmetric);
    let (a, b) = (&w.a, &w.b);
    wait_ping(&a.ns, B_TUN);
    // Through the fast phase and beyond: probes go out, none is answered.
    let until = Instant::now() + ferry_paths::FAST_PHASE + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!((path(a, b), path(b, a)), (PathKind::UdpRelay, PathKind::UdpRelay));
        std::thread::sleep(Duration::from_millis(200));
    }
    for side in [a, b] {
        let probes = side.traversal.stats().probes;
        assert!(probes.pings_sent > 10 && probes.pongs_received == 0, "{probes:?}");
    }
    for _ in 0..3 {
        assert!(ping(&a.ns, B_TUN) && ping(&b.ns, A_TUN), "ping over the relay");
    }
}

#[test]
fn a_cut_direct_path_falls_back_to_the_relay_and_traffic_goes_on() {
    let w = paired(Nat::Cone, Nat::Cone);
    let (a, b) = (&w.a, &w.b);
    wait_until("both sides to go direct", || {
        path(a, b) == PathKind::Direct && path(b, a) == PathKind::Direct
    });
    wait_ping(&a.ns, B_TUN);

    let mut pings = a.ns.spawn_program("ping", &["-n", "-i", "0.2", "-c", "100", B_TUN]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    cut_direct(&w.inet);
    let cut = Instant::now();
    wait_until("both sides to fall back to the relay", || {
        path(a, b) == PathKind::UdpRelay && path(b, a) == PathKind::UdpRelay
    });
    let fallback = cut.elapsed();
    let status = a.traversal.status(&b.key).unwrap();
    assert_eq!(status.why, ferry_paths::why::DEAD, "{status:?}");
    assert_eq!(status.endpoint, Some(RELAY_UDP.parse().unwrap()), "{status:?}");
    pings.wait_timeout(Duration::from_secs(40)).unwrap();
    let seqs = answered(&pings.stdout());
    // The last pings of the run, sent well after the fallback, came back over the relay.
    let late = seqs.iter().filter(|s| **s > 90).count();
    assert!(
        late >= 8,
        "traffic did not go on over the relay (fell back {fallback:?} after the cut): {seqs:?}"
    );
}

#[test]
fn a_tcp443_only_site_reaches_the_other_side_over_the_websocket_relay_in_auto() {
    let options = TraversalOptions { transport_grace: Duration::from_secs(3), ..TraversalOptions::default() };
    let w = world(Nat::TcpOnly443, Nat::Cone, options);
    let (a, b) = (&w.a, &w.b);
    let cand_b = reflexive_candidates(b, B_WAN);
    a.traversal.upsert_peer(b.key, relay_plan(TransportMode::Auto, cand_b)).unwrap();
    b.traversal.upsert_peer(a.key, relay_plan(TransportMode::Udp, vec![])).unwrap();
    assert_eq!(path(a, b), PathKind::UdpRelay);
    wait_until("side a to move to the WebSocket relay", || path(a, b) == PathKind::WebSocketRelay);
    let status = a.traversal.status(&b.key).unwrap();
    assert_eq!(status.why, ferry_traversal::why::NO_HANDSHAKE_OVER_UDP, "{status:?}");
    assert!(status.endpoint.is_some_and(ferry_tunnel::endpoint::is_virtual), "{status:?}");
    wait_ping(&a.ns, B_TUN);
    assert!(ping(&b.ns, A_TUN));
    let status = a.traversal.status(&b.key).unwrap();
    assert_eq!(status.path, PathKind::WebSocketRelay, "Auto left a working WebSocket: {status:?}");
    assert!(status.websocket.as_ref().is_some_and(|s| s.is_up()), "{status:?}");
    let stats = a.traversal.stats();
    assert_eq!((stats.transport_switches, stats.paths.get(PathKind::WebSocketRelay)), (1, 1), "{stats:?}");
    // Nothing but TCP 443 left the site: no STUN answer, no direct path.
    assert_eq!(stats.stun_answers, 0, "{stats:?}");
    let tcp = w.a.ns.exec("ss", &["-Htn", "state", "established", "dst", "203.0.113.1:443"]).unwrap();
    assert!(!tcp.trim().is_empty(), "no WebSocket connection from side a");
}
