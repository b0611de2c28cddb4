//! The XDP forwarder's next-hop cache against real route and neighbour
//! changes, on veth between namespaces: a client sends to the relay's
//! allocation, the forwarder redirects to the peer through one of two
//! routers, and the routers' sockets tell which one got the datagram. A
//! router's stack delivers a frame only if it carries the router's own MAC,
//! so a datagram that arrives also proves the MAC was the right one.
//!
//! The cache's lifetime is an hour here: whatever follows a change within
//! the test did so because `ferry_relay::next_hops::watch` invalidated the
//! cache. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry_ebpf::{
    AttachMode,
    common::relay::{ACTION_FORWARD, Outcome, RelayConfig},
    pass::PassProgram,
    relay::{self, RelayForwarder},
};
use ferry_lab::{Lab, Netns, packet::wireguard};
use ferry_relay::next_hops;

const RELAY: &str = "192.0.2.1";
const CLIENT: &str = "192.0.2.7:40000";
/// The peer's address, which both routers own: whichever gets the datagram
/// delivers it to its own socket.
const PEER: &str = "198.51.100.8:51820";
const ALLOCATION: u16 = 50000;
const ROUTER1: &str = "203.0.113.2";
const ROUTER2: &str = "203.0.113.18";
const ROUTER1_MAC: &str = "02:52:00:00:01:01";
const ROUTER1_NEW_MAC: &str = "02:52:00:00:01:77";
const ROUTER2_MAC: &str = "02:52:00:00:02:01";
const HOUR_MS: u32 = 3_600_000;

/// Fields drop in order: the watcher's runtime first (it holds the
/// forwarder), then the forwarder (which detaches), then the lab.
struct Setup {
    runtime: tokio::runtime::Runtime,
    forwarder: Arc<Mutex<RelayForwarder>>,
    _pass: Vec<PassProgram>,
    relay_ns: Netns,
    router1: Netns,
    /// The relay's interfaces toward the routers, and router 1's end.
    to_router1: String,
    to_router2: String,
    router1_if: String,
    client: UdpSocket,
    at_router1: UdpSocket,
    at_router2: UdpSocket,
    _lab: Lab,
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn setup() -> Setup {
    let lab = Lab::new().expect("a lab (run as root)");
    let relay_ns = lab.netns("relay").unwrap();
    let net = lab.netns("client").unwrap();
    let router1 = lab.netns("router1").unwrap();
    let router2 = lab.netns("router2").unwrap();
    // IPv4 only: IPv6 link-local addresses finishing DAD a second or two
    // after the links come up add routes, whose notifications would
    // invalidate the cache whatever the test changed.
    for scope in ["all", "default"] {
        relay_ns.sysctl(&format!("net.ipv6.conf.{scope}.disable_ipv6=1")).unwrap();
    }

    let uplink = lab.wire(&relay_ns, &[&format!("{RELAY}/24")], &net, &["192.0.2.7/24"]).unwrap();
    // Full checksums from the client: a partial one would be rewritten as if
    // it were complete.
    net.exec("ethtool", &["-K", &uplink.b, "tx", "off"]).unwrap();
    let mut pass = Vec::new();
    let mut routers = Vec::new();
    for (router, relay_addr, router_addr, router_mac) in [
        (&router1, "203.0.113.1/28", ROUTER1, ROUTER1_MAC),
        (&router2, "203.0.113.17/28", ROUTER2, ROUTER2_MAC),
    ] {
        let link = lab.wire(&relay_ns, &[relay_addr], router, &[&format!("{router_addr}/28")]).unwrap();
        router.ip(&["link", "set", "dev", &link.b, "address", router_mac]).unwrap();
        router.ip(&["link", "set", "dev", "lo", "up"]).unwrap();
        router.add_addr("lo", "198.51.100.8/32").unwrap();
        // The relay's source address has no route back here.
        for scope in ["all", &link.b] {
            router.sysctl(&format!("net.ipv4.conf.{scope}.rp_filter=0")).unwrap();
        }
        relay_ns
            .ip(&["neigh", "replace", router_addr, "lladdr", router_mac, "dev", &link.a, "nud", "permanent"])
            .unwrap();
        // XDP_REDIRECT into a veth is delivered promptly only to a peer with
        // an XDP program.
        let end = link.b.clone();
        pass.push(router.run_in(move || PassProgram::attach(&end)).unwrap().unwrap());
        routers.push(link);
    }
    relay_ns.ip(&["route", "add", "198.51.100.0/24", "via", ROUTER1, "dev", &routers[0].a]).unwrap();
    relay_ns.enable_forwarding().unwrap();

    let iface = uplink.a.clone();
    let forwarder = relay_ns
        .run_in(move || {
            let mut f = RelayForwarder::load(16, 4).expect("loading the relay forwarder");
            f.configure(RelayConfig {
                next_hop_lifetime_ms: HOUR_MS,
                ..relay::config(Some(RELAY.parse().unwrap()), None, ALLOCATION..=ALLOCATION, true)
            })
            .unwrap();
            f.insert(&relay::key(sa(CLIENT), ALLOCATION), &relay::binding(sa(PEER), ACTION_FORWARD, 1))
                .unwrap();
            f.attach(&iface, AttachMode::Native).unwrap();
            f
        })
        .unwrap();

    let bind = |ns: &Netns, addr: &'static str| {
        let socket = ns.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        socket
    };
    Setup {
        runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        forwarder: Arc::new(Mutex::new(forwarder)),
        _pass: pass,
        client: bind(&net, CLIENT),
        at_router1: bind(&router1, PEER),
        at_router2: bind(&router2, PEER),
        relay_ns,
        router1,
        to_router1: routers[0].a.clone(),
        to_router2: routers[1].a.clone(),
        router1_if: routers[0].b.clone(),
        _lab: lab,
    }
}

impl Setup {
    /// Starts the netlink watcher in the relay's namespace; it runs on this
    /// setup's runtime.
    fn watch(&self) -> tokio::task::JoinHandle<()> {
        let forwarder = self.forwarder.clone();
        let handle = self.runtime.handle().clone();
        self.relay_ns
            .run_in(move || {
                // The netlink socket is opened here, in the relay's namespace.
                let _entered = handle.enter();
                next_hops::watch(
                    move || {
                        forwarder.lock().unwrap().invalidate_next_hops().unwrap();
                    },
                    |_| {},
                )
            })
            .unwrap()
            .expect("subscribing to netlink notifications")
    }

    /// Sends one datagram from the client through the relay and returns the
    /// router that delivered it (1 or 2), or None if neither did within
    /// `wait` (a bound for a slow machine; it returns as soon as one did).
    fn send_within(&self, id: u8, wait: Duration) -> Option<u8> {
        // The runtime's thread is this one: let the watcher read what the
        // kernel sent meanwhile.
        self.runtime.block_on(tokio::task::yield_now());
        self.send_unwatched(id, wait)
    }

    /// [`send_within`](Self::send_within) without letting the watcher run
    /// first: whatever the kernel notified since it last ran is not yet
    /// read.
    fn send_unwatched(&self, id: u8, wait: Duration) -> Option<u8> {
        let mut message = wireguard(4, 64);
        *message.last_mut().unwrap() = id;
        self.client.send_to(&message, (RELAY, ALLOCATION)).unwrap();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        loop {
            for (router, socket) in [(1, &self.at_router1), (2, &self.at_router2)] {
                // A datagram that went out before may still be queued: only
                // this one counts.
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    assert_eq!(
                        from,
                        SocketAddr::from(([192, 0, 2, 1], ALLOCATION)),
                        "the relay's allocation is the source"
                    );
                    if buf[..n] == message[..] {
                        return Some(router);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// [`send_within`](Self::send_within) a datagram that must arrive.
    fn send(&self, id: u8) -> Option<u8> {
        self.send_within(id, Duration::from_secs(5))
    }

    /// Sends datagrams until one arrives at `router`. The deadline is there
    /// to fail a broken watcher, not to measure it.
    fn until_delivered_by(&self, router: u8, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut id: u8 = 100;
        loop {
            id = id.wrapping_add(1);
            if self.send_within(id, Duration::from_millis(500)) == Some(router) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: datagrams never reached router {router}");
        }
    }

    fn generation(&self) -> u32 {
        self.forwarder.lock().unwrap().next_hop_generation().unwrap()
    }

    /// Starts the watcher and waits for its first invalidation (made once
    /// subscribed), so that any later one answers a change.
    fn watch_subscribed(&self) -> tokio::task::JoinHandle<()> {
        let before = self.generation();
        let watcher = self.watch();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.generation() == before {
            assert!(Instant::now() < deadline, "the watcher never invalidated after subscribing");
            self.runtime.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        watcher
    }

    fn redirects(&self) -> u64 {
        self.forwarder.lock().unwrap().counters().unwrap().get(Outcome::ForwardRedirect)
    }
}

#[test]
fn a_route_change_moves_cached_traffic_to_the_new_next_hop() {
    let s = setup();
    let _watcher = s.watch_subscribed();
    assert_eq!(s.send(1), Some(1), "through router 1 first");
    assert_eq!(s.send(2), Some(1), "and from the cache");
    let lookups = s.forwarder.lock().unwrap().fib_lookups().unwrap();

    s.relay_ns.ip(&["route", "replace", "198.51.100.0/24", "via", ROUTER2, "dev", &s.to_router2]).unwrap();
    s.until_delivered_by(2, "after the route moved to router 2");
    // Settled: every datagram now goes to router 2, each from the cache.
    for id in 3..6 {
        assert_eq!(s.send(id), Some(2));
    }
    let forwarder = s.forwarder.lock().unwrap();
    assert!(forwarder.fib_lookups().unwrap() > lookups, "the change sent the next datagram to the FIB");
    drop(forwarder);
    assert!(s.redirects() >= 5, "the forwarder, not the stack, delivered them");
}

#[test]
fn a_neighbour_change_moves_cached_traffic_to_the_new_mac() {
    let s = setup();
    let _watcher = s.watch_subscribed();
    assert_eq!(s.send(1), Some(1));
    assert_eq!(s.forwarder.lock().unwrap().fib_lookups().unwrap(), 1);
    let subscribed = s.generation();

    // Router 1's interface takes another MAC, and the relay learns it.
    s.router1.ip(&["link", "set", "dev", &s.router1_if, "address", ROUTER1_NEW_MAC]).unwrap();
    s.relay_ns
        .ip(&[
            "neigh",
            "replace",
            ROUTER1,
            "lladdr",
            ROUTER1_NEW_MAC,
            "dev",
            &s.to_router1,
            "nud",
            "permanent",
        ])
        .unwrap();
    // Before the watcher reads the notification (it runs only when this
    // thread lets it), the cache (an hour's lifetime) still sends to the old
    // MAC, which router 1's stack ignores: the case the watcher is for. (A
    // second is plenty for a datagram that arrives at all; a late one could
    // only make this pass wrongly, never fail.)
    assert_eq!(
        s.send_unwatched(2, Duration::from_secs(1)),
        None,
        "a stale next hop was not used: the test would prove nothing"
    );
    assert_eq!(s.forwarder.lock().unwrap().fib_lookups().unwrap(), 1, "the stale one came from the cache");

    s.until_delivered_by(1, "after router 1's MAC changed");
    assert_ne!(s.generation(), subscribed, "the neighbour change invalidated the cache");
    for id in 3..6 {
        assert_eq!(s.send(id), Some(1));
    }
    assert!(s.redirects() >= 5, "the forwarder, not the stack, delivered them");
}

/// A route through a nexthop object goes when the object is deleted, with
/// no route notification: only the nexthop group tells. The peer's /32
/// goes through nexthop 7 (router 1), the /24 under it through router 2.
#[test]
fn deleting_a_nexthop_object_moves_cached_traffic() {
    let s = setup();
    s.relay_ns.ip(&["route", "replace", "198.51.100.0/24", "via", ROUTER2, "dev", &s.to_router2]).unwrap();
    s.relay_ns.ip(&["nexthop", "add", "id", "7", "via", ROUTER1, "dev", &s.to_router1]).unwrap();
    s.relay_ns.ip(&["route", "add", "198.51.100.8/32", "nhid", "7"]).unwrap();
    let _watcher = s.watch_subscribed();
    assert_eq!(s.send(1), Some(1), "through nexthop 7 first");
    assert_eq!(s.send(2), Some(1), "and from the cache");
    let cached = s.generation();

    s.relay_ns.ip(&["nexthop", "del", "id", "7"]).unwrap();
    s.until_delivered_by(2, "after nexthop 7 was deleted");
    assert_ne!(s.generation(), cached, "the deletion invalidated the cache");
    for id in 3..6 {
        assert_eq!(s.send(id), Some(2));
    }
}
