//! `ferry-relay` between two stock WireGuard peers (Debian's wireguard-go),
//! each of which only knows the relay's allocation address, in network
//! namespaces: ping and iperf3 through the relay with XDP native and with
//! XDP off (userspace, recvmmsg/sendmmsg), Ferry's engine on one side,
//! roaming, a forger, and the end of an allocation. Every run checks the
//! checksums of what arrived.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use ferry_tests::{
    pcap::{Capture, assert_checksums},
    relay_lab::{ATTACKER_IP, CLIENT_TUN, GW_TUN, PORT, RELAY_IP, RelayLab, forged_handshake, received},
    wg::{iperf3, iperf3_server, ping, wait_for},
};

fn forwarded(lab: &RelayLab, path: &str) -> f64 {
    lab.metric("ferry_relay_forwarded_packets_total", &format!("path=\"{path}\""))
}

fn fast_path(xdp: &str) -> &'static str {
    if xdp == "off" { "userspace" } else { "xdp" }
}

fn ping_and_iperf(xdp: &str, v6: bool) {
    let mut lab = RelayLab::new();
    lab.start_relay(xdp, &[]);
    let _gw = lab.gateway_go(v6);
    let _client = lab.client_go(v6);
    assert!(ping(&lab.client_ns, GW_TUN, 20), "no ping through the relay ({xdp})");
    let capture = Capture::start(&lab.lab, &lab.gw_ns, &lab.gw_if, "udp");
    let up = iperf3(&lab.gw_ns, GW_TUN, &lab.client_ns, 2);
    let down = iperf3(&lab.client_ns, CLIENT_TUN, &lab.gw_ns, 2);
    assert!(up > 1e6 && down > 1e6, "iperf3 through the relay ({xdp}): {up} and {down} bit/s");
    let checked = assert_checksums(&capture.stop());
    assert!(checked > 1000, "only {checked} UDP frames captured");
    assert!(forwarded(&lab, fast_path(xdp)) > 1000.0, "{}", lab.metrics());
    if xdp == "off" {
        assert_eq!(forwarded(&lab, "xdp"), 0.0);
    }
}

fn wireguard_go_peers_ping_and_iperf3_through_the_relay(xdp: &str) {
    ping_and_iperf(xdp, false);
}

fn ipv6_peers(xdp: &str) {
    ping_and_iperf(xdp, true);
}

fn ferrys_engine_on_one_side(xdp: &str) {
    let mut lab = RelayLab::new();
    lab.start_relay(xdp, &[]);
    let _gw = lab.gateway_go(false);
    let _client = lab.client_ferry();
    assert!(ping(&lab.client_ns, GW_TUN, 20), "Ferry's engine could not reach wireguard-go ({xdp})");
    let up = iperf3(&lab.gw_ns, GW_TUN, &lab.client_ns, 2);
    assert!(up > 1e6, "iperf3 from Ferry's engine through the relay ({xdp}): {up} bit/s");
}

fn attacker_socket(lab: &RelayLab) -> UdpSocket {
    let addr: SocketAddr = format!("{ATTACKER_IP}:51820").parse().unwrap();
    lab.attacker_ns.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap()
}

fn a_forger_who_knows_the_port_and_keys_is_not_forwarded_and_steals_no_binding(xdp: &str) {
    let mut lab = RelayLab::new();
    lab.start_relay(xdp, &[]);
    let gw = lab.gateway_go(false);
    let _client = lab.client_go(false);
    assert!(ping(&lab.client_ns, GW_TUN, 20));
    let capture = Capture::start(&lab.lab, &lab.gw_ns, &lab.gw_if, "udp");
    let relay: SocketAddr = format!("{RELAY_IP}:{PORT}").parse().unwrap();
    let socket = attacker_socket(&lab);
    let marker = b"FORGED-BY-MALLORY";
    for i in 0..50u32 {
        // Transport messages and garbage, marked.
        let mut transport = vec![4, 0, 0, 0];
        transport.extend_from_slice(&i.to_le_bytes());
        transport.extend_from_slice(&[0; 8]);
        transport.extend_from_slice(marker);
        transport.resize(64, 0);
        socket.send_to(&transport, relay).unwrap();
        socket.send_to(marker, relay).unwrap();
        // Responses and cookie replies for indices it cannot know.
        socket.send_to(&forged_handshake(2, i, i * 7919, &lab.client_keys.public), relay).unwrap();
        // Initiations with a valid mac1 claiming to be the client: they
        // reach the gateway, which cannot decrypt them and stays silent.
        socket.send_to(&forged_handshake(1, 1000 + i, 0, &lab.gw_keys.public), relay).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(ping(&lab.client_ns, GW_TUN, 5), "the tunnel broke after the forgeries ({xdp})");
    let frames = capture.stop();
    let leaked = frames.iter().filter(|f| f.windows(marker.len()).any(|w| w == marker)).count();
    assert_eq!(leaked, 0, "forged datagrams reached the gateway ({xdp})");
    // The gateway still sends to the client's real address.
    assert!(gw.show("endpoints").contains(&format!("{RELAY_IP}:{PORT}")));
    let unbound = lab.metric("ferry_relay_drops_total", "reason=\"unbound\"");
    let unknown = lab.metric("ferry_relay_drops_total", "reason=\"unknown_index\"");
    let malformed = lab.metric("ferry_relay_drops_total", "reason=\"malformed\"");
    assert!(unbound >= 50.0 && unknown >= 50.0 && malformed >= 50.0, "{}", lab.metrics());
    assert_eq!(lab.metric("ferry_relay_bindings", ""), 2.0);
}

fn ending_the_allocation_stops_forwarding_within_a_second(xdp: &str) {
    let mut lab = RelayLab::new();
    lab.start_relay(xdp, &[]);
    let gw = lab.gateway_go(false);
    let _client = lab.client_go(false);
    assert!(ping(&lab.client_ns, GW_TUN, 20));
    // A steady stream toward the gateway.
    let _flood = lab.client_ns.spawn_program("ping", &["-i", "0.01", "-q", GW_TUN]).unwrap();
    wait_for(|| received(&gw) > 20_000, "traffic through the relay");
    lab.write_allocations(false);
    lab.reload();
    let ended = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(ended.elapsed()));
    let after_one_second = received(&gw);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(received(&gw), after_one_second, "datagrams still forwarded after the end ({xdp})");
    assert_eq!(lab.metric("ferry_relay_allocations", ""), 0.0);
    assert_eq!(lab.metric("ferry_relay_bindings", ""), 0.0);
}

fn a_peer_roams_mid_transfer(xdp: &str) {
    let mut lab = RelayLab::new();
    lab.start_relay(xdp, &[]);
    let gw = lab.gateway_go(false);
    let _client = lab.client_go(false);
    assert!(ping(&lab.client_ns, GW_TUN, 20));
    // TCP's retransmission backoff would otherwise decide, not the relay,
    // how long after the new binding the transfer resumes.
    lab.client_ns.sysctl("net.ipv4.tcp_rto_max_ms=1000").unwrap();
    lab.client_ns.sysctl("net.ipv4.tcp_retries2=60").unwrap();
    let _server = iperf3_server(&lab.gw_ns, GW_TUN);
    let mut transfer =
        lab.client_ns.spawn_program("iperf3", &["-c", GW_TUN, "-t", "30", "-i", "1", "-J"]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The client's address changes, as behind a NAT that rebinds.
    lab.client_ns.sysctl(&format!("net.ipv4.conf.{}.promote_secondaries=1", lab.client_if)).unwrap();
    lab.client_ns.add_addr(&lab.client_if, "192.0.2.3/25").unwrap();
    lab.client_ns.ip(&["addr", "del", "192.0.2.2/25", "dev", &lab.client_if]).unwrap();
    // WireGuard starts a new handshake when its data gets no answer; it
    // completes through the relay, which moves the binding.
    let relay = lab.relay.as_ref().unwrap();
    wait_for_long(|| relay.stderr().contains("udp 192.0.2.3:"), "the relay to bind the new address");
    let at_rebind = received(&gw);
    // The same TCP connection carries on: its retransmissions (after an
    // exponential backoff of unknown length) and what follows reach the
    // gateway from the new address, and the transfer ends cleanly.
    assert!(transfer.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", transfer.stderr());
    let after = received(&gw) - at_rebind;
    assert!(
        after > 100_000,
        "only {after} bytes reached the gateway after the roam ({xdp}); iperf3: {}",
        transfer.stdout().lines().filter(|l| l.contains("\"bytes\"")).collect::<Vec<_>>().join(" ")
    );
    assert!(ping(&lab.client_ns, GW_TUN, 5));
}

fn wait_for_long(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each case runs with XDP native and with XDP off (userspace), as separate
/// tests so they run in parallel.
macro_rules! both_modes {
    ($($case:ident),* $(,)?) => {
        mod xdp_native {
            $(#[test] fn $case() { super::$case("native") })*
        }
        mod xdp_off {
            $(#[test] fn $case() { super::$case("off") })*
        }
    };
}

both_modes!(
    wireguard_go_peers_ping_and_iperf3_through_the_relay,
    ipv6_peers,
    ferrys_engine_on_one_side,
    a_forger_who_knows_the_port_and_keys_is_not_forwarded_and_steals_no_binding,
    ending_the_allocation_stops_forwarding_within_a_second,
    a_peer_roams_mid_transfer,
);
