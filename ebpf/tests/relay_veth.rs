//! The relay forwarder attached to a real veth: datagrams between two UDP
//! sockets behind the same router go through the relay's allocation port and
//! arrive from the relay's address, with checksums the receiving stack
//! accepts, in both families, with FIB and with the MAC swap. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use aya::{Ebpf, programs::XdpMode};
use ferry_ebpf::{
    AttachMode, PASS_PROGRAM,
    common::relay::{ACTION_FORWARD, Outcome},
    load_object, load_xdp,
    relay::{self, RelayForwarder},
};
use ferry_lab::{Lab, Netns, packet::wireguard};

const ALLOCATION: u16 = 50000;
const NET_MAC: &str = "02:4e:00:00:00:01";

/// Fields drop in order: the programs detach before the lab goes.
struct Setup {
    forwarder: RelayForwarder,
    _pass: Ebpf,
    net: Netns,
    _lab: Lab,
}

/// A relay namespace on a veth whose far end (the "internet") holds both
/// peers' addresses.
fn setup(fib: bool) -> Setup {
    let lab = Lab::new().expect("a lab (run as root)");
    let relay_ns = lab.netns("relay").unwrap();
    let net = lab.netns("net").unwrap();
    let link = lab.veth(&relay_ns, &net).unwrap();
    // The MAC before the addresses: taking a link down drops IPv6 addresses.
    net.ip(&["link", "set", "dev", &link.b, "down"]).unwrap();
    net.ip(&["link", "set", "dev", &link.b, "address", NET_MAC]).unwrap();
    net.ip(&["link", "set", "dev", &link.b, "up"]).unwrap();
    for addr in ["192.0.2.1/24", "2001:db8::1/64"] {
        relay_ns.add_addr(&link.a, addr).unwrap();
    }
    for addr in ["192.0.2.7/24", "192.0.2.8/24", "2001:db8::7/64", "2001:db8::8/64"] {
        net.add_addr(&link.b, addr).unwrap();
    }
    // Full checksums from the senders: a partial one would be rewritten as if
    // it were complete.
    net.exec("ethtool", &["-K", &link.b, "tx", "off"]).unwrap();
    // veth delivers XDP_TX frames at once only to a peer with an XDP program
    // (with GRO alone they wait for the next packet).
    let far_end = link.b.clone();
    let pass = net
        .run_in(move || {
            let mut ebpf = load_object().unwrap();
            load_xdp(&mut ebpf, PASS_PROGRAM).unwrap().attach(&far_end, XdpMode::Driver).unwrap();
            ebpf
        })
        .unwrap();
    if fib {
        relay_ns.enable_forwarding().unwrap();
        for peer in ["192.0.2.7", "192.0.2.8", "2001:db8::7", "2001:db8::8"] {
            relay_ns
                .ip(&["neigh", "replace", peer, "lladdr", NET_MAC, "dev", &link.a, "nud", "permanent"])
                .unwrap();
        }
    }
    let uplink = link.a.clone();
    let forwarder = relay_ns
        .run_in(move || {
            let mut f = RelayForwarder::load(16, 4).expect("loading the relay forwarder");
            f.configure(relay::config(
                Some("192.0.2.1".parse().unwrap()),
                Some("2001:db8::1".parse().unwrap()),
                ALLOCATION..=ALLOCATION,
                fib,
            ))
            .unwrap();
            f.attach(&uplink, AttachMode::Native).unwrap();
            f
        })
        .unwrap();
    Setup { forwarder, _pass: pass, net, _lab: lab }
}

fn bind(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let socket = ns.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    socket
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

fn relay_both_ways(s: &mut Setup, relay_ip: &str, client_ip: &str, gateway_ip: &str) {
    let relay = sa(relay_ip, ALLOCATION);
    let client_addr = sa(client_ip, 40000);
    let gateway_addr = sa(gateway_ip, 51820);
    let client = bind(&s.net, client_addr);
    let gateway = bind(&s.net, gateway_addr);
    s.forwarder
        .insert(&relay::key(client_addr, ALLOCATION), &relay::binding(gateway_addr, ACTION_FORWARD, 1))
        .unwrap();
    s.forwarder
        .insert(&relay::key(gateway_addr, ALLOCATION), &relay::binding(client_addr, ACTION_FORWARD, 1))
        .unwrap();

    let before = s.forwarder.counters().unwrap();
    let mut buf = [0u8; 2048];
    for (len, (from, to)) in
        [32, 1400, 77].into_iter().zip([(&client, &gateway), (&gateway, &client), (&client, &gateway)])
    {
        let message = wireguard(4, len);
        from.send_to(&message, relay).unwrap();
        let (n, source) = to.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!("{len} bytes via {relay}: {e}; {:?}", s.forwarder.counters().unwrap())
        });
        assert_eq!(&buf[..n], &message[..]);
        assert_eq!(source, relay, "the peer sees the relay's allocation, not the other peer");
    }
    let delta = s.forwarder.counters().unwrap().since(&before);
    assert_eq!(delta.get(Outcome::ForwardTx), 3, "{delta:?}");
    assert_eq!(s.forwarder.traffic(1).unwrap().packets, 3);
    s.forwarder.reset_slot(1).unwrap();
}

#[test]
fn mac_swap_forwards_between_sockets() {
    let mut s = setup(false);
    relay_both_ways(&mut s, "192.0.2.1", "192.0.2.7", "192.0.2.8");
    relay_both_ways(&mut s, "2001:db8::1", "2001:db8::7", "2001:db8::8");
}

#[test]
fn fib_forwards_between_sockets() {
    let mut s = setup(true);
    relay_both_ways(&mut s, "192.0.2.1", "192.0.2.7", "192.0.2.8");
    relay_both_ways(&mut s, "2001:db8::1", "2001:db8::7", "2001:db8::8");
}
