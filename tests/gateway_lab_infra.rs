//! The gateway lab itself, without the gateway daemon: the topology, NAT and
//! the tcp443-only site, the machine network's devices, the technician's
//! overlapping home LAN, the cloud and the relay registered with it, the
//! admin's API flow up to the refusal of a session on an offline gateway,
//! and the technician's tunnel from a wg-quick file in the cloud's format
//! against a stock WireGuard stand-in.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use ferry_api::{ClientConfig, ConfigTarget, PortRange, Protocol, wg_quick};
use ferry_lab::Netns;
use ferry_tests::{gateway_lab::*, stand_in_gateway::StandInGateway, wg::Keys};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

/// Whether a UDP datagram from `from` reaches a socket bound in `to` at
/// `ip:port` within a second (three tries).
fn udp_reaches(from: &Netns, to: &Netns, ip: &str, port: u16) -> bool {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let receiver = to.run_in(move || UdpSocket::bind(addr)).unwrap().unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let sender = from.run_in(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    let mut buffer = [0u8; 64];
    (0..3).any(|_| {
        sender.send_to(b"ferry udp probe", addr).unwrap();
        receiver.recv_from(&mut buffer).is_ok()
    })
}

/// The address a TCP connection from `from` arrives from at `to`.
fn seen_source(from: &Netns, to: &Netns, ip: &str, port: u16) -> Option<std::net::IpAddr> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let listener = to.run_in(move || TcpListener::bind(addr)).unwrap().unwrap();
    let _client = from.run_in(move || TcpStream::connect_timeout(&addr, T)).unwrap().ok()?;
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + T;
    loop {
        if let Ok((_, peer)) = listener.accept() {
            return Some(peer.ip());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn topology_nat_machine_network_and_the_technicians_own_lan() {
    let mut lab = GatewayLab::new(Options::default());
    lab.start_cloud().expect("a first start prints a one-time password");

    // The cloud, through the customer's NAT: the site's public address.
    let (status, health) = lab.api_from(&lab.gw_ns, "GET", "/healthz", None, Value::Null);
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    let source = seen_source(&lab.gw_ns, &lab.cloud_ns, CLOUD_IP, 9100);
    assert_eq!(source, Some(SITE_WAN_IP.parse().unwrap()), "the cloud sees the gateway through the NAT");
    // A cone NAT lets UDP out (the control for the tcp443-only test).
    assert!(udp_reaches(&lab.gw_ns, &lab.relay_ns, RELAY_IP, 40050));
    // Nothing on the internet reaches into the site.
    assert_no_answer(
        &lab.tech_ns,
        GW_UPLINK_IP,
        22,
        Duration::from_secs(2),
        "the customer network from outside",
    );
    assert_no_answer(&lab.tech_ns, SITE_WAN_IP, 8080, Duration::from_secs(2), "the site's public address");

    // The machine network: both devices answer a helper device on the LAN,
    // and the gateway namespace sits on it.
    assert_eq!(http_get(&lab.probe_ns, TARGET_A_IP, HTTP_PORT, T).unwrap(), PLC_PAGE);
    assert_eq!(http_get(&lab.probe_ns, TARGET_A_IP, OTHER_HTTP_PORT, T).unwrap(), ADMIN_PAGE);
    echo_round_trip(&lab.probe_ns, TARGET_B_IP, ECHO_PORT, T).unwrap();
    echo_round_trip(&lab.probe_ns, TARGET_B_IP, OTHER_ECHO_PORT, T).unwrap();
    assert_eq!(http_get(&lab.gw_ns, TARGET_A_IP, HTTP_PORT, T).unwrap(), PLC_PAGE);
    // Devices on the LAN send full checksums, as on a wire.
    let features = lab.target_a.exec("ethtool", &["-k", &target_if(&lab.target_a)]).unwrap();
    assert!(features.contains("tx-checksumming: off"), "{features}");
    // The machine network does not reach the internet by itself: the
    // gateway namespace does not forward.
    assert_no_answer(
        &lab.target_a,
        CLOUD_IP,
        7600,
        Duration::from_secs(2),
        "the cloud from the machine network",
    );

    // The technician's own LAN is 192.168.50.0/24 too, with its own device at .10.
    let route = lab.tech_ns.ip(&["route", "get", HOME_DEVICE_IP]).unwrap();
    assert!(route.contains(&lab.tech_lan_if), "{route}");
    assert_eq!(http_get(&lab.tech_ns, HOME_DEVICE_IP, HTTP_PORT, T).unwrap(), HOME_PAGE);
    assert!(lab.tech_ns.ip(&["-4", "addr"]).unwrap().contains(&format!("{TECH_LAN_IP}/24")));
}

fn target_if(ns: &Netns) -> String {
    ns.ip(&["-o", "-4", "addr", "show"])
        .unwrap()
        .lines()
        .find(|l| l.contains("192.168.50."))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string()
}

#[test]
fn a_tcp443_only_site_lets_only_tcp_443_out() {
    let mut lab = GatewayLab::new(Options { tcp443_only: true, ..Options::default() });
    lab.start_cloud();
    // No UDP leaves the site: not to the relay's allocation ports, not to STUN.
    assert!(!udp_reaches(&lab.gw_ns, &lab.relay_ns, RELAY_IP, 40050), "UDP left a tcp443-only site");
    assert!(!udp_reaches(&lab.gw_ns, &lab.relay_ns, RELAY_IP, 3478), "UDP left a tcp443-only site");
    // TCP 443 to the relay's WebSocket address passes; other ports do not.
    let relay443 = Server::counter(&lab.relay_ns, RELAY_IP, 443);
    let before = relay443.accepted();
    let ok = lab
        .gw_ns
        .run_in(|| TcpStream::connect_timeout(&format!("{RELAY_IP}:443").parse().unwrap(), T))
        .unwrap();
    assert!(ok.is_ok(), "TCP 443 to the relay: {ok:?}");
    assert!(poll(T, || relay443.accepted() > before));
    assert!(seen_source(&lab.gw_ns, &lab.relay_ns, RELAY_IP, 8443).is_none(), "TCP 8443 left the site");
    // The cloud: 7600 is blocked, 443 reaches it (redirected in its namespace).
    assert_no_answer(&lab.gw_ns, CLOUD_IP, CLOUD_PORT, Duration::from_secs(2), "the cloud on 7600");
    let health = http_get_path(&lab.gw_ns, "/healthz");
    assert!(health.is_ok(), "the cloud on 443: {health:?}");
    assert_eq!(lab.cloud_url(), format!("http://{CLOUD_IP}:443"));
}

fn http_get_path(ns: &Netns, path: &str) -> Result<(), String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {CLOUD_IP}\r\n\r\n");
    let answer = tcp_exchange(ns, CLOUD_IP, 443, request.as_bytes(), None, T)?;
    let text = String::from_utf8_lossy(&answer);
    text.starts_with("HTTP/1.0 200").then_some(()).ok_or_else(|| text.into_owned())
}

#[test]
fn the_relay_registers_with_the_cloud() {
    let mut lab = GatewayLab::new(Options::default());
    lab.start_cloud_and_login();
    let id = lab.start_relay();
    let health = lab.relay_health(id);
    assert_eq!(health["online"], true, "{health}");
    assert_eq!(health["udp"], format!("{RELAY_IP}:40000"), "{health}");
    lab.relay.as_mut().unwrap().wait_for_output("connected to the cloud", T).unwrap();
    // Its WebSocket listener answers on 203.0.113.1:443 (plain ws) from the internet.
    let stream = lab.tech_ns.run_in(|| TcpStream::connect_timeout(&RELAY_WS.parse().unwrap(), T)).unwrap();
    assert!(stream.is_ok(), "{stream:?}");
}

/// The world's second relay (the soak's): its own address, port range,
/// registration and metrics, and a kill of it leaves the first relay alone.
#[test]
fn a_second_relay_registers_and_its_kill_leaves_the_first_alone() {
    let mut lab = GatewayLab::new(Options { second_relay: true, ..Options::default() });
    lab.start_cloud_and_login();
    let first = lab.start_relay();
    let second = lab.start_relay_at(1);
    assert_ne!(first, second);
    assert_eq!(lab.relay_count(), 2);
    for (index, id, udp) in
        [(0, first, format!("{RELAY_IP}:40000")), (1, second, format!("{RELAY2_IP}:40100"))]
    {
        let health = lab.relay_health(id);
        assert_eq!(health["online"], true, "relay {index}: {health}");
        assert_eq!(health["udp"], udp, "relay {index}: {health}");
        // Its gauge goes to 1 once the cloud's welcome arrives, just after
        // the cloud shows it online.
        let mut metrics = String::new();
        let connected = poll(T, || {
            metrics = lab.relay_metrics_at(index).unwrap_or_default();
            metric_value(&metrics, "ferry_relay_control_connected") == 1.0
        });
        assert!(connected, "relay {index}: {metrics}");
    }
    let stream = lab.tech_ns.run_in(|| TcpStream::connect_timeout(&RELAY2_WS.parse().unwrap(), T)).unwrap();
    assert!(stream.is_ok(), "{stream:?}");

    lab.kill_relay_at(1);
    assert!(lab.relay_process_at(1).is_none());
    assert!(
        poll(Duration::from_secs(30), || lab.relay_health(second)["online"] == false),
        "the killed relay is still online at the cloud: {}",
        lab.relay_health(second)
    );
    assert!(lab.relay.as_mut().unwrap().try_status().is_none(), "the first relay exited");
    assert_eq!(lab.relay_health(first)["online"], true, "{}", lab.relay_health(first));
    lab.restart_relay_at(1);
    assert_eq!(lab.relay_health(second)["online"], true, "{}", lab.relay_health(second));
}

#[test]
fn the_admin_flow_and_a_session_on_an_offline_gateway() {
    let mut lab = GatewayLab::new(Options::default());
    lab.start_cloud_and_login();
    let gateway = lab.create_gateway("press line 3");
    assert!(!gateway.enrolment_token.is_empty());
    let view = lab.gateway_view(gateway.id);
    assert_eq!(view["last_seen"]["online"], false, "{view}");
    let targets: Vec<(&str, &str)> = view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["address"].as_str().unwrap()))
        .collect();
    assert_eq!(targets, [("plc-web", TARGET_A_IP), ("echo", TARGET_B_IP)]);

    let mut tech = lab.create_technician("tech1");
    // A remoteConnect User may not prepare sessions.
    let (status, _) = lab.tech_call(
        &mut tech,
        "POST",
        "/api/v1/sessions",
        json!({"name": "mine", "gateway_id": gateway.id, "targets": ["echo"], "max_duration_s": 60}),
    );
    assert_eq!(status, 403);
    let session = lab.create_session(gateway.id, &["plc-web", "echo"], &[tech.id], 600, false);
    let (status, problem) = lab.start_session(&mut tech, session);
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem_type(&problem), "gateway-offline", "{problem}");
    assert_eq!(lab.session_state(session).0, "prepared");
    // No configuration for a session that does not run.
    let keys = Keys::generate(&lab.tech_ns);
    let (status, problem) = lab.request_wg_quick(&mut tech, session, &keys.public);
    assert_eq!((status, problem_type(&problem)), (409, "session-not-active"), "{problem}");
    // The refusal is in the audit log, with the technician as actor.
    let refused = lab.audit("action=session.start");
    assert!(
        refused.iter().any(|e| e["actor"] == "tech1" && e["allowed"] == false),
        "{}",
        serde_json::to_string_pretty(&refused).unwrap()
    );
}

/// The technician's side of every e2e test, against a stock wireguard-go
/// standing in for the gateway in the office namespace: the cloud's wg-quick
/// format, split tunnelling beside the overlapping home LAN, the traffic
/// helpers, the echo loop and the "machine network cannot reach the tunnel"
/// assertion.
#[test]
fn a_technician_tunnel_from_a_wg_quick_file() {
    let lab = GatewayLab::new(Options::default());
    let stand_in_keys = Keys::generate(&lab.office_ns);
    let tech_keys = Keys::generate(&lab.tech_ns);
    let stand_in = lab.office_wireguard(&stand_in_keys, &tech_keys.public);
    lab.office_ns.add_addr(&stand_in.ifname, "100.96.0.101/32").unwrap();
    let _page = Server::http(&lab.office_ns, "100.96.0.100", HTTP_PORT, PLC_PAGE);
    let _echo = Server::echo(&lab.office_ns, "100.96.0.101", ECHO_PORT);

    let target = |name: &str, last: u8, port: u16| ConfigTarget {
        name: name.into(),
        proxy_address: format!("100.96.0.{last}").parse().unwrap(),
        protocol: Protocol::Tcp,
        ports: vec![PortRange { first: port, last: port }],
    };
    let config = ClientConfig {
        config_id: 9,
        session_id: 8,
        session_name: "stand-in".into(),
        expires_ms: unix_ms() + 600_000,
        address: "100.96.0.2/32".into(),
        peer_public_key: stand_in_keys.public.clone(),
        allowed_ips: vec!["100.96.0.100/32".into(), "100.96.0.101/32".into()],
        endpoints: vec![format!("{OFFICE_IP}:{GATEWAY_WG_PORT}")],
        relay: None,
        persistent_keepalive: 25,
        targets: vec![target("plc-web", 100, HTTP_PORT), target("echo", 101, ECHO_PORT)],
        stun_servers: vec![],
        watch_token: String::new(),
    };
    let text = wg_quick(&config, &tech_keys.public);
    let tunnel = lab.tunnel_from_wg_quick(tech_keys, text);
    assert_eq!(tunnel.address, "100.96.0.2");
    assert_eq!(tunnel.proxy("plc-web"), "100.96.0.100");
    assert_eq!(tunnel.proxy("echo"), "100.96.0.101");

    let page =
        eventually(Duration::from_secs(15), || http_get(&lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, T));
    assert_eq!(page.unwrap(), PLC_PAGE);
    echo_round_trip(&lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, T).unwrap();
    // Split tunnel: the home LAN stays the technician's own.
    assert_eq!(http_get(&lab.tech_ns, HOME_DEVICE_IP, HTTP_PORT, T).unwrap(), HOME_PAGE);
    assert!(lab.tech_ns.ip(&["route", "get", HOME_DEVICE_IP]).unwrap().contains(&lab.tech_lan_if));
    assert!(lab.tech_ns.ip(&["route", "get", "100.96.0.100"]).unwrap().contains(&tunnel.go.ifname));
    assert_no_answer(
        &lab.tech_ns,
        tunnel.proxy("plc-web"),
        OTHER_HTTP_PORT,
        Duration::from_secs(2),
        "no service",
    );

    // The machine network has no way toward the technician's tunnel address.
    let listener = Server::counter(&lab.tech_ns, &tunnel.address, 9000);
    assert_lan_cannot_reach(&lab.target_a, &tunnel.address, 9000, &listener, Duration::from_secs(2));

    // The echo loop notices a cut within a bound (the stand-in forgets the peer).
    let echo = EchoLoop::start(&lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, T).unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert!(echo.answers_after(started + Duration::from_millis(50)) > 0);
    stand_in.remove_peer(&tunnel.keys.public);
    let cut = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(echo.answers_after(cut + Duration::from_millis(200)), 0, "answers after the cut");
}

/// The whole path of a session without the daemon: a stand-in gateway (real
/// enrolment and control channel, stock wireguard-go and nftables DNAT
/// behind the customer's NAT) lets the cloud start sessions, issue the
/// technician's wg-quick file with the relay's allocation, and the relay
/// carry the tunnel. The e2e tests' helpers and assertions run against it.
#[test]
fn a_session_through_the_relay_to_a_stand_in_gateway() {
    let mut lab = GatewayLab::new(Options::default());
    lab.start_cloud_and_login();
    lab.start_relay();
    let gateway = lab.create_gateway("press line 3");
    let mut stand_in = StandInGateway::enrol_and_connect(&lab, &gateway.enrolment_token, false);
    lab.wait_gateway_at_cloud(gateway.id, false);
    let mut tech = lab.create_technician("tech1");
    let session = lab.create_session(gateway.id, &["plc-web", "echo"], &[tech.id], 600, false);
    let (status, problem) = lab.start_session(&mut tech, session);
    assert_eq!((status, problem_type(&problem)), (409, "switch-off"), "{problem}");

    stand_in.switch(true);
    lab.wait_gateway_at_cloud(gateway.id, true);
    let (status, started) = lab.start_session(&mut tech, session);
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["state"], "active");
    let tunnel = lab.technician_tunnel(&mut tech, session);
    let endpoint = tunnel.wg_quick.lines().find_map(|l| l.strip_prefix("Endpoint = ")).unwrap_or_default();
    assert!(endpoint.starts_with(&format!("{RELAY_IP}:")), "not through the relay:\n{}", tunnel.wg_quick);
    let state = stand_in.wait_for_peer(&tunnel.keys.public, Duration::from_secs(15));
    let _data_path = stand_in.data_path(&lab, &state);

    let page =
        eventually(Duration::from_secs(30), || http_get(&lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, T));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE), "{}", tunnel.go.show("dump"));
    assert_whitelist(&lab, &tunnel);
    let listener = Server::counter(&lab.tech_ns, &tunnel.address, 9000);
    assert_lan_cannot_reach(&lab.target_a, &tunnel.address, 9000, &listener, Duration::from_secs(2));

    // The customer's switch-off ends the session at the cloud.
    stand_in.switch(false);
    let ended = lab.wait_session_state(session, "ended", Duration::from_secs(10));
    assert_eq!(ended["end_reason"]["by"], "customer", "{ended}");
    let switches = lab.audit(&format!("action=gateway.switch&gateway={}", gateway.id));
    let details: Vec<&str> = switches.iter().filter_map(|e| e["detail"].as_str()).collect();
    assert!(details.ends_with(&["on", "off"]), "{details:?}");
}
