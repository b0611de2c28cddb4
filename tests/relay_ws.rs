//! The WebSocket relay: a technician's site that lets only TCP out runs
//! `ferry-relay ws-bridge` beside a stock wireguard-go, whose Endpoint is the
//! bridge; the gateway side stays on UDP. The relay pairs the two sides by
//! the same binding rules, over TLS with a pinned certificate.

use std::time::Duration;

use ferry_tests::{
    bin_path,
    relay_lab::{CLIENT_TUN, GW_TUN, RELAY_IP, RelayLab, WS_TOKEN},
    wg::{iperf3, ping},
};

fn websocket_peer_bridged_to_udp_peer(xdp: &str) {
    let mut lab = RelayLab::new();
    let certified = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    let (cert, key) = (lab.lab.dir().join("relay.crt"), lab.lab.dir().join("relay.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let pin = ferry_control::pin::format_fingerprint(&ferry_control::pin::fingerprint(certified.cert.der()));
    let websocket = format!("{RELAY_IP}:443");
    lab.start_relay(
        xdp,
        &[
            "--websocket",
            &websocket,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // The technician's site drops every UDP datagram leaving it.
    lab.client_ns
        .exec(
            "nft",
            &["add table inet site; add chain inet site out { type filter hook output priority 0; }; \
                 add rule inet site out oifname != \"lo\" meta l4proto udp drop"],
        )
        .unwrap();
    let token_file = lab.lab.dir().join("ws.token");
    std::fs::write(&token_file, WS_TOKEN).unwrap();
    let mut bridge = lab
        .client_ns
        .spawn_program(
            bin_path("ferry-relay"),
            &[
                "ws-bridge",
                "--url",
                &format!("wss://{websocket}/"),
                "--token-file",
                token_file.to_str().unwrap(),
                "--pin",
                &pin,
                "--listen",
                "127.0.0.1:51821",
                "--log",
                "debug",
            ],
        )
        .unwrap();
    bridge.wait_for_output("127.0.0.1:51821", Duration::from_secs(10)).unwrap();
    let _gw = lab.gateway_go(false);
    let _client = lab.client_go_to("127.0.0.1:51821");
    assert!(
        ping(&lab.client_ns, GW_TUN, 20),
        "no ping over the WebSocket relay ({xdp}): {}",
        bridge.stderr()
    );
    let up = iperf3(&lab.gw_ns, GW_TUN, &lab.client_ns, 2);
    let down = iperf3(&lab.client_ns, CLIENT_TUN, &lab.gw_ns, 2);
    assert!(up > 1e6 && down > 1e6, "iperf3 over the WebSocket relay ({xdp}): {up} and {down} bit/s");
    assert!(lab.metric("ferry_relay_forwarded_packets_total", "path=\"websocket\"") > 1000.0);
    assert_eq!(lab.metric("ferry_relay_websocket_connections", ""), 1.0);
    // A wrong token is refused with 401 and counted. The bridge keeps
    // retrying (an allocation can be late), so it is stopped here.
    let refused_before = lab.metric("ferry_relay_websocket_refused_total", "reason=\"token\"");
    let mut refused = lab
        .client_ns
        .spawn_program(
            bin_path("ferry-relay"),
            &[
                "ws-bridge",
                "--url",
                &format!("wss://{websocket}/"),
                "--token",
                "not-the-token-of-any-allocation",
                "--pin",
                &pin,
                "--listen",
                "127.0.0.1:51822",
            ],
        )
        .unwrap();
    refused.wait_for_output("the relay refused the token (401)", Duration::from_secs(20)).unwrap();
    assert!(refused.try_status().is_none(), "a refused bridge retries: {}", refused.stderr());
    refused.kill();
    assert!(
        lab.metric("ferry_relay_websocket_refused_total", "reason=\"token\"") > refused_before,
        "{}",
        lab.metrics()
    );
    bridge.kill();
}

#[test]
fn websocket_peer_bridged_to_udp_peer_xdp_native() {
    websocket_peer_bridged_to_udp_peer("native");
}

#[test]
fn websocket_peer_bridged_to_udp_peer_xdp_off() {
    websocket_peer_bridged_to_udp_peer("off");
}
