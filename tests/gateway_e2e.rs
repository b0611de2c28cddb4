//! The gateway daemon end to end, one test per property, in the gateway lab
//! (see `gateway_lab.rs` for the topology): the real cloud, a real relay, the
//! real `ferry-gateway` behind a NAT, and a technician with Debian's
//! wireguard-go configured from the cloud's wg-quick file.
//!
//! What the daemon must do for these tests (its CLI contract):
//! - `ferry-gateway --config F enroll --cloud URL --token T` exits 0 once
//!   enrolled;
//! - `ferry-gateway --config F --log debug run` prints `ferry-gateway ready`
//!   when it is up (also while the cloud is unreachable) and exits 0 on
//!   SIGTERM;
//! - `remote on|off|status` exit 0; `status` prints the word `on` or `off`
//!   (exactly one of them, any case, any surrounding text); `remote off` has
//!   stopped the traffic when it returns (or within the 1 s bound below);
//! - `approve <session id>` / `deny <session id>` exit 0;
//! - `sessions --json` prints JSON that mentions each session it knows by id.
//!
//! Waits are bounded waits for behaviour, never speed measurements.

use std::time::{Duration, Instant};

use ferry_tests::{gateway_lab::*, technician::EngineTechnician};
use serde_json::Value;

const T: Duration = Duration::from_secs(5);
/// A first handshake through the relay, or a reconnect after a restart.
const SETTLE: Duration = Duration::from_secs(30);

struct Site {
    lab: GatewayLab,
    gateway: GatewayRecord,
    tech: User,
}

/// Cloud with the admin logged in, a relay registered, the gateway created,
/// enrolled and running, and a technician: the customer has not switched
/// remote maintenance on.
fn site(options: Options) -> Site {
    let mut lab = GatewayLab::new(options);
    lab.start_cloud_and_login();
    lab.start_relay();
    let gateway = lab.create_gateway("press line 3");
    lab.enroll(&gateway.enrolment_token);
    lab.start_gateway();
    lab.wait_gateway_at_cloud(gateway.id, false);
    let tech = lab.create_technician("tech1");
    Site { lab, gateway, tech }
}

impl Site {
    fn switch_on(&self) {
        self.lab.remote("on");
        assert!(self.lab.switch_status(), "`remote status` after `remote on`");
        self.lab.wait_gateway_at_cloud(self.gateway.id, true);
    }

    /// Prepares a session released to the technician and starts it as the
    /// technician; returns its id and the start's answer.
    fn start(&mut self, targets: &[&str], max_duration_s: u64, approval: bool) -> (u64, Value) {
        let id = self.lab.create_session(self.gateway.id, targets, &[self.tech.id], max_duration_s, approval);
        let (status, session) = self.lab.start_session(&mut self.tech, id);
        assert_eq!(status, 200, "starting session {id}: {session}");
        (id, session)
    }

    /// A running session with the technician's tunnel up and the plc-web
    /// page reachable through it.
    fn running(&mut self, targets: &[&str], max_duration_s: u64) -> (u64, TechTunnel) {
        let (id, session) = self.start(targets, max_duration_s, false);
        assert_eq!(session["state"], "active", "{session}");
        let tunnel = self.lab.technician_tunnel(&mut self.tech, id);
        let first = targets[0];
        let port = if first == "echo" { ECHO_PORT } else { HTTP_PORT };
        let reached = eventually(SETTLE, || match first {
            "echo" => echo_round_trip(&self.lab.tech_ns, tunnel.proxy(first), port, T),
            _ => http_get(&self.lab.tech_ns, tunnel.proxy(first), port, T).map(drop),
        });
        assert!(
            reached.is_ok(),
            "{first} not reachable through the tunnel: {reached:?}\n{}\n{}",
            tunnel.wg_quick,
            tunnel.go.show("dump")
        );
        (id, tunnel)
    }

    /// Waits until `sessions --json` lists the session.
    fn gateway_knows(&self, id: u64) {
        let mut last = Value::Null;
        let known = poll(Duration::from_secs(15), || {
            last = self.lab.gateway_sessions();
            lists_session(&last, id)
        });
        assert!(known, "`sessions --json` does not show session {id}: {last}");
    }
}

/// Whether `sessions --json` (an array of sessions) lists session `id`; only
/// the `id` field counts, so a byte counter or an expiry that happens to
/// equal it does not.
fn lists_session(sessions: &Value, id: u64) -> bool {
    sessions.as_array().is_some_and(|list| list.iter().any(|session| session["id"].as_u64() == Some(id)))
}

#[test]
fn only_the_session_id_field_lists_a_session() {
    let sessions =
        serde_json::json!([{"id": 7, "expires_ms": 42, "peers": [{"rx_bytes": 42, "tx_bytes": 9}]}]);
    assert!(lists_session(&sessions, 7));
    for other in [42, 9, 0] {
        assert!(!lists_session(&sessions, other), "{other}");
    }
    assert!(!lists_session(&serde_json::json!({"id": 7}), 7), "not an array of sessions");
}

/// A machine that sends to the gateway's LAN address as its router (a
/// compromised PLC, a misconfigured route) must not reach the plant's IT
/// network through it, whatever state the daemon is in: while it runs, its
/// LAN program drops what the kernel would route elsewhere; a stopped
/// daemon turns the LAN's forwarding off, and after a SIGKILL `close-lan`
/// (the systemd unit's ExecStopPost) does. Before that, a stopped gateway
/// routed the machine network onto the uplink's network.
#[test]
fn the_machine_network_is_never_routed_onto_the_uplink_s_network() {
    let mut site = site(Options::default());
    let lab = &mut site.lab;
    let router_ns = lab.site_router().ns.clone();
    let router_lan = lab.site_router().lan_addr.clone();
    // The plant's IT network: what arrives at its router from the machine
    // network, counted before any filter of the router's own.
    router_ns
        .exec(
            "nft",
            &["add table ip it_watch; \
               add chain ip it_watch in { type filter hook prerouting priority -300; }; \
               add rule ip it_watch in ip saddr 192.168.50.0/24 counter"],
        )
        .unwrap();
    let arrived = |ns: &ferry_lab::Netns| -> u64 {
        let rules = ns.exec("nft", &["list", "table", "ip", "it_watch"]).unwrap();
        rules.split("packets ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap()
    };
    lab.probe_ns.ip(&["route", "add", &format!("{router_lan}/32"), "via", GW_LAN_IP]).unwrap();
    let send = |lab: &GatewayLab| {
        let to = format!("{router_lan}:9");
        lab.probe_ns
            .run_in(move || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..3 {
                    socket.send_to(b"from the machine network", to.as_str()).unwrap();
                }
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    };
    let forwarding = |lab: &GatewayLab| -> String {
        let key = format!("net.ipv4.conf.{}.forwarding", lab.gw_lan_if);
        lab.gw_ns.exec("sysctl", &["-n", &key]).unwrap().trim().to_string()
    };

    assert_eq!(forwarding(lab), "1", "the daemon runs: the tunnel's replies need it");
    send(lab);
    assert_eq!(arrived(&router_ns), 0, "routed while the daemon runs");

    lab.stop_gateway();
    assert_eq!(forwarding(lab), "0", "a stopped daemon closes the LAN");
    send(lab);
    assert_eq!(arrived(&router_ns), 0, "routed by a stopped gateway");

    lab.start_gateway();
    assert_eq!(forwarding(lab), "1");
    lab.kill_gateway();
    // What the systemd unit runs after the kill.
    lab.gateway_ok(&["close-lan"]);
    assert_eq!(forwarding(lab), "0");
    send(lab);
    assert_eq!(arrived(&router_ns), 0, "routed by a killed gateway after close-lan");

    // The check can fail: with the forwarding on and no daemon, the
    // machine network's datagrams do reach the plant's network.
    lab.gw_ns.exec("sysctl", &["-w", &format!("net.ipv4.conf.{}.forwarding=1", lab.gw_lan_if)]).unwrap();
    send(lab);
    assert!(arrived(&router_ns) > 0, "the probe's datagrams should have been routed");
}

#[test]
fn the_switch_is_off_by_default() {
    let mut site = site(Options::default());
    assert!(!site.lab.switch_status(), "a freshly enrolled gateway has remote maintenance on");
    let view = site.lab.gateway_view(site.gateway.id);
    assert_eq!(view["last_seen"]["switch_on"], false, "{view}");
    let id = site.lab.create_session(site.gateway.id, &["plc-web"], &[site.tech.id], 600, false);
    let (status, problem) = site.lab.start_session(&mut site.tech, id);
    assert_eq!((status, problem_type(&problem)), (409, "switch-off"), "{problem}");
    assert_eq!(site.lab.session_state(id).0, "prepared");
}

#[test]
fn only_whitelisted_ports_are_reachable_through_proxy_addresses() {
    let mut site = site(Options::default());
    site.switch_on();
    let (_, tunnel) = site.running(&["plc-web", "echo"], 600);
    assert_whitelist(&site.lab, &tunnel);
}

#[test]
fn the_machine_network_cannot_reach_into_the_tunnel() {
    let mut site = site(Options::default());
    site.switch_on();
    let (_, tunnel) = site.running(&["plc-web", "echo"], 600);
    let listener = Server::counter(&site.lab.tech_ns, &tunnel.address, 9000);
    assert_lan_cannot_reach(&site.lab.target_a, &tunnel.address, 9000, &listener, Duration::from_secs(3));
    assert_lan_cannot_reach(&site.lab.target_b, &tunnel.address, 9000, &listener, Duration::from_secs(3));
    // The tunnel itself still works the other way round.
    assert_eq!(http_get(&site.lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, T).unwrap(), PLC_PAGE);
}

/// Forged WireGuard messages (shape right, receiver index made up) sent to the
/// gateway's WireGuard port from a host on the customer network.
fn forge_messages(lab: &GatewayLab, count: u32) {
    let to: std::net::SocketAddr = format!("{GW_UPLINK_IP}:{GATEWAY_WG_PORT}").parse().unwrap();
    lab.site_router()
        .ns
        .run_in(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in 0..count {
                let receiver = 0x5eed_0000u32 ^ i.wrapping_mul(2_654_435_761);
                let (kind, len, at) = if i % 2 == 0 { (4u8, 48, 4) } else { (2u8, 92, 8) };
                let mut message = vec![0u8; len];
                message[0] = kind;
                message[at..at + 4].copy_from_slice(&receiver.to_le_bytes());
                socket.send_to(&message, to).unwrap();
            }
        })
        .unwrap();
}

#[test]
fn the_uplink_guard_follows_the_engines_session_indices() {
    let mut site = site(Options::default());
    const UNKNOWN: &str = "ferry_gateway_guard_packets_total{outcome=\"drop_unknown_index\"}";
    const TRANSPORT: &str = "ferry_gateway_guard_packets_total{outcome=\"allow_transport\"}";
    const INDICES: &str = "ferry_gateway_guard_indices";
    // Metrics refresh every 2 s.
    wait_until(Duration::from_secs(10), "the guard to follow the engine's indices", || {
        site.lab.gateway_metric("ferry_gateway_guard_follows_indices") == 1.0
    });
    assert_eq!(site.lab.gateway_metric(INDICES), 0.0, "no session, no index");

    site.switch_on();
    let (_, tunnel) = site.running(&["echo"], 600);
    // The live session's traffic came through the guard: it knew the indices
    // before the technician could use them.
    wait_until(Duration::from_secs(10), "the guard to count the session's transport", || {
        site.lab.gateway_metric(TRANSPORT) > 0.0 && site.lab.gateway_metric(INDICES) >= 1.0
    });

    // Messages to indices the engine never handed out stop in XDP.
    let before = site.lab.gateway_metric(UNKNOWN);
    forge_messages(&site.lab, 40);
    wait_until(Duration::from_secs(10), "the guard to drop 40 forged messages", || {
        site.lab.gateway_metric(UNKNOWN) >= before + 40.0
    });

    // Record the session's real transport messages as they reach the gateway.
    let capture = ferry_tests::pcap::Capture::start(
        &site.lab.lab,
        &site.lab.gw_ns,
        &site.lab.gw_uplink_if,
        &format!("udp dst port {GATEWAY_WG_PORT}"),
    );
    for _ in 0..5 {
        echo_round_trip(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, T).expect("the session's echo");
    }
    let frames = capture.stop();
    let recorded: Vec<Vec<u8>> = frames.iter().filter_map(|frame| transport_payload(frame)).collect();
    assert!(
        !recorded.is_empty(),
        "no transport message of the session among {} frames: {:02x?}",
        frames.len(),
        frames.first()
    );

    // Switching off removes the peer, and its indices leave the guard.
    site.lab.remote("off");
    wait_until(Duration::from_secs(10), "the guard to forget the session's indices", || {
        site.lab.gateway_metric(INDICES) == 0.0
    });
    // The session's own messages, replayed after its end, stop in XDP too.
    // The technician's client goes first, so that its keepalives to the dead
    // indices do not count as replays.
    drop(tunnel);
    std::thread::sleep(Duration::from_secs(3)); // two metric refreshes
    let before = site.lab.gateway_metric(UNKNOWN);
    let allowed_before = site.lab.gateway_metric(TRANSPORT);
    replay(&site.lab, &recorded);
    let replayed = recorded.len() as f64;
    wait_until(Duration::from_secs(10), "the guard to drop the replayed messages", || {
        site.lab.gateway_metric(UNKNOWN) >= before + replayed
    });
    assert_eq!(site.lab.gateway_metric(TRANSPORT), allowed_before, "a replayed message passed the guard");
    assert_eq!(site.lab.gateway_metric("ferry_gateway_guard_map_errors_total"), 0.0);
}

/// The WireGuard transport message in an Ethernet/IPv4/UDP frame, if any.
fn transport_payload(frame: &[u8]) -> Option<Vec<u8>> {
    let packet = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::TransportSlice::Udp(udp)) = &packet.transport else { return None };
    let payload = udp.payload();
    (payload.len() >= 32 && payload[..4] == [4, 0, 0, 0]).then(|| payload.to_vec())
}

/// Sends `messages` to the gateway's WireGuard port from the customer network.
fn replay(lab: &GatewayLab, messages: &[Vec<u8>]) {
    let to: std::net::SocketAddr = format!("{GW_UPLINK_IP}:{GATEWAY_WG_PORT}").parse().unwrap();
    let messages = messages.to_vec();
    lab.site_router()
        .ns
        .run_in(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for message in messages {
                socket.send_to(&message, to).unwrap();
            }
        })
        .unwrap();
}

#[test]
fn remote_off_stops_traffic_at_once_and_ends_the_session() {
    let mut site = site(Options::default());
    site.switch_on();
    let (id, tunnel) = site.running(&["echo", "plc-web"], 600);
    let echo = EchoLoop::start(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, T).unwrap();
    // Answers in the last 400 ms before the switch-off (counted forward from
    // a start: an Instant before it could predate the machine's boot).
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let before = started + Duration::from_millis(100);
    assert!(echo.answers_after(before) > 0, "the echo loop was not answered before the switch-off");

    switch_off_stops(&site.lab, echo);

    let session = site.lab.wait_session_state(id, "ended", Duration::from_secs(15));
    assert_eq!(session["end_reason"]["by"], "customer", "{session}");
    assert!(!site.lab.switch_status());
    assert_no_answer(
        &site.lab.tech_ns,
        tunnel.proxy("plc-web"),
        HTTP_PORT,
        Duration::from_secs(3),
        "after off",
    );
    // Only the customer can switch on again: a new start is refused.
    let (status, problem) = site.lab.start_session(&mut site.tech, id);
    assert_eq!((status, problem_type(&problem)), (409, "switch-off"), "{problem}");
    let switches = site.lab.audit(&format!("action=gateway.switch&gateway={}", site.gateway.id));
    assert_eq!(switches.last().map(|e| e["detail"].clone()), Some("off".into()), "{switches:?}");
}

#[test]
fn approval_required_sessions_wait_for_the_customer() {
    let mut site = site(Options::default());
    site.switch_on();
    let (id, session) = site.start(&["plc-web", "echo"], 600, true);
    assert_eq!(session["state"], "waiting_for_approval", "{session}");
    site.gateway_knows(id);
    // No traffic before the approval: the cloud issues no configuration.
    let keys = ferry_tests::wg::Keys::generate(&site.lab.tech_ns);
    let (status, problem) = site.lab.request_wg_quick(&mut site.tech, id, &keys.public);
    assert_eq!((status, problem_type(&problem)), (409, "session-not-active"), "{problem}");

    site.lab.gateway_ok(&["approve", &id.to_string()]);
    site.lab.wait_session_state(id, "active", Duration::from_secs(15));
    let tunnel = site.lab.technician_tunnel(&mut site.tech, id);
    let page = eventually(SETTLE, || http_get(&site.lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, T));
    assert_eq!(page.unwrap(), PLC_PAGE);
    assert_whitelist(&site.lab, &tunnel);

    // A second session: the customer denies it.
    let (denied, session) = site.start(&["echo"], 600, true);
    assert_eq!(session["state"], "waiting_for_approval", "{session}");
    site.gateway_knows(denied);
    site.lab.gateway_ok(&["deny", &denied.to_string()]);
    let session = site.lab.wait_session_state(denied, "ended", Duration::from_secs(15));
    assert_eq!(session["end_reason"]["by"], "denied", "{session}");
    let actor = format!("gateway:{}", site.gateway.id);
    let approvals = site.lab.audit("action=session.approve");
    assert!(approvals.iter().any(|e| e["actor"] == actor.as_str() && e["allowed"] == true), "{approvals:?}");
    let denials = site.lab.audit("action=session.deny");
    assert!(denials.iter().any(|e| e["actor"] == actor.as_str()), "{denials:?}");
    // The approved one runs on.
    assert_eq!(site.lab.session_state(id).0, "active");
}

#[test]
fn a_session_expires_at_the_gateway_while_the_cloud_is_down() {
    let mut site = site(Options::default());
    site.switch_on();
    // The cloud's shortest session: 60 s.
    let (id, tunnel) = site.running(&["plc-web"], 60);
    let expires_ms = site.lab.session(id)["expires_ms"].as_u64().unwrap();
    site.lab.kill_cloud();
    let web = tunnel.proxy("plc-web").to_string();
    let tech = site.lab.tech_ns.clone();
    let get = || http_get(&tech, &web, HTTP_PORT, Duration::from_secs(2));
    eventually(T, get).expect("traffic stopped when the cloud went away");
    // Still working shortly before the end.
    let until = |ms: u64| Duration::from_millis(ms.saturating_sub(unix_ms()));
    std::thread::sleep(until(expires_ms.saturating_sub(8_000)));
    eventually(T, get).expect("traffic stopped before the session's end");
    // Then it stops: a bounded wait of 5 s past the expiry for the
    // gateway's timer to act (behaviour, not speed).
    std::thread::sleep(until(expires_ms));
    let stopped = poll(Duration::from_secs(5), || get().is_err());
    assert!(stopped, "traffic still flows 5 s after the session expired\n{}", site.lab.gateway_log());
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        assert!(get().is_err(), "traffic came back after the expiry");
    }
}

#[test]
fn a_restarted_gateway_restores_its_state_and_loses_no_audit_event() {
    let mut site = site(Options::default());
    site.switch_on();
    let (id, tunnel) = site.running(&["plc-web", "echo"], 600);

    // A crash: the switch stays on and the session forwards again.
    site.lab.kill_gateway();
    site.lab.start_gateway();
    assert!(site.lab.switch_status(), "the switch is off after a restart");
    let page = eventually(SETTLE, || http_get(&site.lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, T));
    assert_eq!(page.unwrap(), PLC_PAGE, "no traffic after the restart");
    eventually(T, || echo_round_trip(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, T)).unwrap();
    site.lab.wait_gateway_at_cloud(site.gateway.id, true);
    assert_eq!(site.lab.session_state(id).0, "active");

    // Events made while the cloud is down, kept across another crash.
    let filter = format!("action=gateway.switch&gateway={}", site.gateway.id);
    let before = site.lab.audit(&filter).len();
    site.lab.kill_cloud();
    site.lab.remote("off");
    site.lab.remote("on");
    site.lab.kill_gateway();
    site.lab.start_gateway();
    assert!(site.lab.switch_status());
    assert!(site.lab.start_cloud().is_none(), "the cloud started afresh");
    let mut switches = Vec::new();
    let delivered = poll(Duration::from_secs(30), || {
        switches = site.lab.audit(&filter);
        switches.len() >= before + 2
    });
    assert!(
        delivered,
        "the switch events from the outage did not arrive: {switches:?}\n{}",
        site.lab.gateway_log()
    );
    let details: Vec<&str> = switches[before..].iter().filter_map(|e| e["detail"].as_str()).collect();
    let off = details.iter().position(|d| *d == "off");
    let on_after = off.and_then(|i| details[i..].iter().position(|d| *d == "on"));
    assert!(on_after.is_some(), "not off then on after the outage: {details:?}");
    // The switch-off ended the session, as the customer's act.
    let session = site.lab.wait_session_state(id, "ended", Duration::from_secs(15));
    assert_eq!(session["end_reason"]["by"], "customer", "{session}");
    site.lab.wait_gateway_at_cloud(site.gateway.id, true);
}

#[test]
fn a_tcp443_only_site_works_over_the_websocket_relay() {
    let mut site = site(Options { tcp443_only: true, ..Options::default() });
    site.switch_on();
    let (_, tunnel) = site.running(&["plc-web", "echo"], 600);
    assert_whitelist(&site.lab, &tunnel);
    // The site lets no UDP out, so this went over TCP 443 to the relay.
    let ws = site.lab.gw_ns.exec("ss", &["-Htn", "state", "established", "dst", RELAY_WS]).unwrap();
    assert!(!ws.trim().is_empty(), "no TCP connection from the gateway to the relay's WebSocket listener");
}

#[test]
fn a_tcp443_only_site_works_over_the_tls_websocket_relay() {
    let mut site = site(Options { tcp443_only: true, relay_tls: true, ..Options::default() });
    site.switch_on();
    let (_, tunnel) = site.running(&["plc-web", "echo"], 600);
    assert_whitelist(&site.lab, &tunnel);
    // The site lets no UDP out, so this went over TCP 443 to the relay, over
    // TLS verified with the pin the relay reported through the cloud.
    let ws = site.lab.gw_ns.exec("ss", &["-Htn", "state", "established", "dst", RELAY_WS]).unwrap();
    assert!(!ws.trim().is_empty(), "no TCP connection from the gateway to the relay's WebSocket listener");
    let relay = site.lab.relay_health(site.lab.relay_id.unwrap());
    assert_eq!(relay["websocket_pin"].as_str(), site.lab.relay_pin.as_deref(), "{relay}");
}

#[test]
fn a_ferry_technician_goes_direct_to_the_gateway_behind_its_nat() {
    let mut site = site(Options::default());
    site.switch_on();
    let (id, _) = site.start(&["plc-web"], 600, false);
    let tech = EngineTechnician::connect(&site.lab, &mut site.tech, id);
    // The gateway learned its public mapping from the relay's STUN server,
    // through its WireGuard socket and its uplink guard, and reported it
    // with its uplink address.
    let endpoints: Vec<&str> =
        tech.config["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(endpoints.iter().any(|e| e.starts_with(&format!("{SITE_WAN_IP}:"))), "{endpoints:?}");
    assert!(endpoints.contains(&format!("{GW_UPLINK_IP}:{GATEWAY_WG_PORT}").as_str()), "{endpoints:?}");

    let proxy = tech.proxy("plc-web");
    let page = eventually(SETTLE, || http_get(&site.lab.tech_ns, &proxy, HTTP_PORT, T));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE));
    // Direct, to the gateway's public mapping (WireGuard's roaming may
    // follow a last datagram through the relay for a moment).
    wait_until(SETTLE, "the technician's path to go direct", || {
        tech.traversal.status(&tech.gateway).is_some_and(|p| {
            p.path == ferry_traversal::PathKind::Direct
                && p.endpoint.is_some_and(|e| e.ip().to_string() == SITE_WAN_IP)
        })
    });
    // The gateway sees the same: direct, verified, to the technician's own address.
    let tech_port = tech.endpoint.local_port();
    let mut peer = Value::Null;
    // WireGuard's roaming may point the peer back at the relay for a moment
    // when a last datagram arrives that way; the traversal re-points it, so
    // wait for the direct path and its endpoint together.
    let direct_endpoint = format!("{TECH_IP}:{tech_port}");
    wait_until(SETTLE, "the gateway to report the direct path", || {
        let sessions = site.lab.gateway_sessions();
        peer = sessions
            .as_array()
            .and_then(|all| all.iter().find(|s| s["id"] == id))
            .map_or(Value::Null, |s| s["peers"][0].clone());
        peer["transport"] == "direct" && peer["endpoint"] == direct_endpoint.as_str()
    });
    assert_eq!(peer["path_why"], "verified", "{peer}");
    assert!(peer["rtt_us"].as_u64().is_some(), "{peer}");
    assert_eq!(http_get(&site.lab.tech_ns, &proxy, HTTP_PORT, T).as_deref(), Ok(PLC_PAGE));
    // The uplink guard let the peer's probes and the STUN answers through
    // (metrics refresh every 2 s), and the gateway counts its direct peer.
    wait_until(Duration::from_secs(10), "the gateway's metrics", || {
        site.lab.gateway_metric("ferry_gateway_paths{path=\"direct\"}") == 1.0
    });
    let allowed = |outcome: &str| {
        site.lab.gateway_metric(&format!("ferry_gateway_guard_packets_total{{outcome=\"{outcome}\"}}"))
    };
    assert!(allowed("allow_probe") > 0.0 && allowed("allow_stun") > 0.0, "{}", site.lab.gateway_metrics());
    assert!(site.lab.gateway_metric("ferry_gateway_stun_answers_total") > 0.0);
    // The tunnel's own drops are exported from the start, and a healthy
    // session through a TUN device with offloads has none of them.
    let metrics = site.lab.gateway_metrics();
    for reason in ["tun_malformed", "tun_no_room", "virtual_spoofed"] {
        let sample = format!("ferry_gateway_tunnel_dropped_total{{reason=\"{reason}\"}} 0");
        assert!(metrics.lines().any(|l| l == sample), "{sample} missing:\n{metrics}");
    }
}

/// The site's WAN link goes down and up while the control channel is idle
/// (its NAT mappings go with it: masquerading forgets the flows of a link
/// that went down): the cloud's next message, a session started, must
/// still reach the gateway. The soak found that it never did: the idle
/// channel stayed dead while the cloud showed the gateway online, so
/// sessions started afterwards never reached the gateway and sessions ended
/// at the cloud stayed active there. Now the gateway's keepalive pings
/// remake the path, and a silent channel is replaced.
#[test]
fn the_control_channel_survives_the_site_link_going_down_and_up() {
    let mut site = site(Options::default());
    site.switch_on();
    let router = site.lab.site_router();
    router.ns.ip(&["link", "set", &router.wan_if, "down"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    router.ns.ip(&["link", "set", &router.wan_if, "up"]).unwrap();
    router.ns.ip(&["route", "replace", "default", "via", "198.51.100.1"]).unwrap();
    let (id, session) = site.start(&["plc-web"], 600, false);
    assert_eq!(session["state"], "active", "{session}");
    // Beyond the keepalive (10 s), the cloud's backed-off retransmission
    // and the silence limit (35 s) with a reconnect.
    let mut last = Value::Null;
    let known = poll(Duration::from_secs(60), || {
        last = site.lab.gateway_sessions();
        lists_session(&last, id)
    });
    assert!(known, "the gateway never learnt of session {id} after its link went down and up: {last}");
}

/// The tunnel's wg-quick file points at the relay.
fn assert_through_relay(tunnel: &TechTunnel) {
    let endpoint = format!("Endpoint = {RELAY_IP}:");
    assert!(
        tunnel.wg_quick.contains(&endpoint),
        "the session does not go through the relay:\n{}",
        tunnel.wg_quick
    );
}

/// How soon traffic through the relay resumes once a killed relay runs
/// again (README, the relay's Restarts): it restores its allocations, on the same ports,
/// and its bindings from its state file, so the peers' next datagrams
/// forward. Beyond WireGuard's 5 s handshake retry, for a peer whose data
/// went unanswered while the relay was down.
const RELAY_RECOVERY: Duration = Duration::from_secs(20);

/// The soak found that a SIGKILL and restart of the relay broke every
/// session through it for good: the restarted relay had lost its bindings,
/// the technician's stock WireGuard kept sending to the same relay port, and
/// the idle gateway sent nothing that would have bound it again.
fn a_session_through_the_relay_survives_a_relay_kill_and_restart(xdp: &'static str) {
    let mut site = site(Options { relay_xdp: xdp, ..Options::default() });
    site.switch_on();
    let (_, tunnel) = site.running(&["echo"], 600);
    assert_through_relay(&tunnel);
    for round in 1..=2 {
        // The case the soak found is an idle gateway: one with data in
        // flight (the echo connection's last segments) re-initiates a
        // handshake 15 s after it went unanswered, which binds it again even
        // at a relay that forgot it. So the echo connection closes first.
        std::thread::sleep(Duration::from_secs(3));
        site.lab.kill_relay();
        let saved = std::fs::read_to_string(site.lab.lab.dir().join("relay-state.json")).unwrap_or_default();
        assert!(
            echo_round_trip(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, Duration::from_secs(2))
                .is_err(),
            "round {round}: the echo was answered while the relay was down (not through the relay?)"
        );
        site.lab.restart_relay();
        let resumed = eventually(RELAY_RECOVERY, || {
            echo_round_trip(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, Duration::from_secs(2))
        });
        assert!(
            resumed.is_ok(),
            "round {round}: no echo through the restarted relay within {RELAY_RECOVERY:?}: {resumed:?}\n\
             the relay's state file when it was killed: {saved}\n{}",
            tunnel.go.show("dump")
        );
    }
}

#[test]
fn a_session_through_the_relay_survives_a_relay_kill_and_restart_xdp_off() {
    a_session_through_the_relay_survives_a_relay_kill_and_restart("off");
}

#[test]
fn a_session_through_the_relay_survives_a_relay_kill_and_restart_xdp_native() {
    a_session_through_the_relay_survives_a_relay_kill_and_restart("native");
}

/// How soon a relayed session carries traffic again after its site's NAT
/// forgot every mapping: the gateway asks its STUN servers every 25 s from
/// the WireGuard socket, sees its address moved, and starts a handshake
/// through the relay, answered at once, which moves the relay's binding.
const NAT_RECOVERY: Duration = Duration::from_secs(60);

/// The soak found (a 30-minute run, seed 398032777, on PostgreSQL) that a
/// flush of the conntrack table of a site behind a symmetric NAT broke its
/// gateway's relayed sessions for minutes: the NAT gave the gateway's
/// WireGuard socket a new external port, the relay kept sending the
/// technician's datagrams to the old one (dropped by the NAT), and dropped
/// the gateway's keepalives from the new one, since a relay moves a binding
/// only with a handshake completed through it. The technician's stock
/// wireguard-go retried its handshakes into the old binding; the gateway,
/// holding valid session keys, started none until they expired (up to 3
/// minutes after the last handshake). Now a gateway whose server-reflexive
/// address moves starts a handshake through the relay for each relayed peer.
#[test]
fn a_relayed_session_comes_back_after_the_sites_nat_forgets_its_mappings() {
    let mut site =
        site(Options { site: ferry_world::Site::BehindNat(ferry_lab::Nat::Symmetric), ..Options::default() });
    site.switch_on();
    let (_, tunnel) = site.running(&["echo"], 600);
    assert_through_relay(&tunnel);
    // As in the relay-kill test: the case is an idle gateway (one with data
    // in flight would start a handshake 15 s after it went unanswered).
    std::thread::sleep(Duration::from_secs(3));
    let flushed = site.lab.site_router().ns.output("conntrack", &["-F"]).unwrap();
    assert!(flushed.status.success(), "conntrack -F: {}", String::from_utf8_lossy(&flushed.stderr));
    let cut = Instant::now();
    // The first echo right after the flush: its data reaches the relay and
    // goes on to the old mapping.
    assert!(
        echo_round_trip(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, Duration::from_secs(2)).is_err(),
        "the echo was answered right after the NAT's flush: the flush left the gateway's mapping as it was"
    );
    let resumed = eventually(NAT_RECOVERY, || {
        echo_round_trip(&site.lab.tech_ns, tunnel.proxy("echo"), ECHO_PORT, Duration::from_secs(2))
    });
    assert!(
        resumed.is_ok(),
        "no echo within {NAT_RECOVERY:?} of the site's NAT forgetting its mappings: {resumed:?}\n{}\n{}",
        tunnel.go.show("dump"),
        site.lab
            .gateway_metrics()
            .lines()
            .filter(|l| l.contains("relay_rebinds") || l.contains("stun"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("traffic back {:?} after the flush", cut.elapsed());
    // And the gateway knew why: STUN showed its address moved (the metrics
    // are refreshed every few seconds, so a bounded wait for the count).
    let back = cut.elapsed();
    let counted = poll(Duration::from_secs(15), || {
        metric_value(&site.lab.gateway_metrics(), "ferry_gateway_relay_rebinds_total") >= 1.0
    });
    assert!(counted, "traffic came back {back:?} after the flush without a rebinding handshake");
}

/// Drops every packet in and out of the cloud's namespace (loopback
/// excepted), silently, as the soak's outage does, until the guard drops.
struct CloudUnreachable<'a>(&'a ferry_lab::Netns);

const OUTAGE_TABLE: &str = "test_outage";

impl<'a> CloudUnreachable<'a> {
    fn begin(cloud_ns: &'a ferry_lab::Netns) -> CloudUnreachable<'a> {
        let rules = format!(
            "add table inet {OUTAGE_TABLE}; \
             add chain inet {OUTAGE_TABLE} in {{ type filter hook input priority -10; }}; \
             add rule inet {OUTAGE_TABLE} in iifname != \"lo\" drop; \
             add chain inet {OUTAGE_TABLE} out {{ type filter hook output priority -10; }}; \
             add rule inet {OUTAGE_TABLE} out oifname != \"lo\" drop"
        );
        cloud_ns.exec("nft", &[&rules]).unwrap();
        CloudUnreachable(cloud_ns)
    }
}

impl Drop for CloudUnreachable<'_> {
    fn drop(&mut self) {
        let _ = self.0.exec("nft", &[&format!("delete table inet {OUTAGE_TABLE}")]);
    }
}

/// The soak found wg-quick files without the relay (seed 2): a
/// configuration issued shortly after the cloud had been unreachable got
/// no relay allocation, although the relay had started it at once. The
/// relay's control channel had kept its TCP connection through the outage
/// (22 s, under any silence limit), but the health report it had sent
/// into it was being retransmitted with TCP's exponential backoff, and
/// everything it sent after it, the allocation's answer included, waited
/// behind it until the next retransmission, seconds after the cloud had
/// given up waiting (3 s); the cloud's own message, with nothing
/// outstanding, had arrived at once. Now a message from the cloud that
/// arrives while a ping of the relay's has long gone unanswered makes the
/// relay take its channel for stuck and reconnect, and the first snapshot
/// of a connection answers for every allocation, running ones included.
///
/// The outage starts 5 s after a health report reached the cloud (not at
/// once: the cloud's delayed acknowledgement of it would be lost too, and
/// the acknowledgement arriving afterwards would undo the backoff), so the
/// relay's next report, 5 s in, is the first segment lost; 22 s like the
/// soak's, it ends 17 s after that report, which TCP (200 ms doubling)
/// retransmits 12.6 and 25.4 s after it: the configuration is asked for
/// with about 8 s of the relay's backoff to go.
#[test]
fn a_configuration_issued_just_after_the_cloud_was_unreachable_goes_through_the_relay() {
    let mut site = site(Options::default());
    site.switch_on();
    let (id, session) = site.start(&["echo"], 600, false);
    assert_eq!(session["state"], "active", "{session}");
    let relay_id = site.lab.relay_id.expect("the relay is registered");
    let seen = |lab: &GatewayLab| lab.relay_health(relay_id)["seen_ms"].as_u64();
    let before = seen(&site.lab);
    wait_until(Duration::from_secs(30), "a health report of the relay", || seen(&site.lab) != before);
    std::thread::sleep(Duration::from_secs(5));
    {
        let _outage = CloudUnreachable::begin(&site.lab.cloud_ns);
        std::thread::sleep(Duration::from_secs(22));
    }
    let keys = ferry_tests::wg::Keys::generate(&site.lab.tech_ns);
    let (status, body) = site.lab.request_wg_quick(&mut site.tech, id, &keys.public);
    assert_eq!(status, 200, "wg-quick for session {id}: {body}");
    let wg_quick = body.as_str().unwrap_or_default();
    assert!(
        wg_quick.contains(&format!("Endpoint = {RELAY_IP}:")),
        "the configuration issued after the outage has no relay endpoint:\n{wg_quick}"
    );
}

/// How far the gateway's wall clock is stepped, each way: far beyond any
/// session in this test, as a bad RTC or a mistyped `date -s` would.
const CLOCK_STEP_S: i64 = 2 * 3600;

/// Issue 18's "the gateway's clock stepped": a session ends at its end by
/// the cloud's clock, whatever the gateway's wall clock does meanwhile. A
/// step forward must not cut it (traffic goes on); a step back must not
/// keep it open past its end, also with the cloud gone and the gateway
/// restarted while its clock is wrong. Only the gateway's CLOCK_REALTIME
/// moves (libfaketime), as under a real step; its monotonic clocks and
/// every other process's clock stay right. The technician is Ferry's own
/// client on the direct path, and the relay is killed before the end: the
/// relay ends its allocations by its own clock, which would stand in for
/// the gateway's on a relayed path.
#[test]
fn a_session_ends_at_its_true_end_when_the_gateways_clock_steps() {
    let mut site = site(Options { gateway_faketime: true, ..Options::default() });
    site.switch_on();
    // Long enough for a gateway restart and a new handshake before its end.
    let (id, session) = site.start(&["plc-web"], 120, false);
    assert_eq!(session["state"], "active", "{session}");
    let expires_ms = site.lab.session(id)["expires_ms"].as_u64().unwrap();
    let tech = EngineTechnician::connect(&site.lab, &mut site.tech, id);
    let proxy = tech.proxy("plc-web");
    let tech_ns = site.lab.tech_ns.clone();
    let get = || http_get(&tech_ns, &proxy, HTTP_PORT, Duration::from_secs(2));
    eventually(SETTLE, get).expect("plc-web through the technician's tunnel");
    let direct =
        || tech.traversal.status(&tech.gateway).is_some_and(|p| p.path == ferry_traversal::PathKind::Direct);
    wait_until(SETTLE, "the technician's path to go direct", direct);

    // Forward: by the gateway's own clock the session ended two hours ago.
    site.lab.step_gateway_clock(CLOCK_STEP_S);
    for _ in 0..3 {
        // Past the daemon's 250 ms tick each time.
        std::thread::sleep(Duration::from_secs(1));
        eventually(T, get).unwrap_or_else(|e| {
            panic!(
                "traffic stopped after the gateway's clock stepped forward, {} s before the session's end: \
                 {e}\n{}",
                expires_ms.saturating_sub(unix_ms()) / 1000,
                site.lab.gateway_log()
            )
        });
    }

    // Back: by the gateway's own clock the session has two hours left. The
    // cloud and the relay go away, so that neither's end of the session can
    // stand in for the gateway's, and the gateway restarts with its clock
    // still wrong (it keeps the cloud's time across a restart of the same
    // boot).
    site.lab.step_gateway_clock(-CLOCK_STEP_S);
    site.lab.kill_cloud();
    site.lab.kill_relay();
    site.lab.kill_gateway();
    site.lab.start_gateway();
    eventually(SETTLE, get).expect("no traffic after the gateway's restart with its clock stepped back");
    assert!(
        unix_ms() + 5_000 < expires_ms,
        "the session's end came too close to tell a late end from an early one; \
         the restart took until {} s before it",
        expires_ms.saturating_sub(unix_ms()) / 1000
    );
    let until = |ms: u64| Duration::from_millis(ms.saturating_sub(unix_ms()));
    std::thread::sleep(until(expires_ms));
    // A bounded wait of 5 s past the end for the gateway's timer to act
    // (behaviour, not speed), as with the cloud down and no step.
    let stopped = poll(Duration::from_secs(5), || get().is_err());
    assert!(
        stopped,
        "traffic still flows 5 s after the session's end, the gateway's clock stepped back {CLOCK_STEP_S} s\n{}",
        site.lab.gateway_log()
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        assert!(get().is_err(), "traffic came back after the session's end");
    }
    site.lab.step_gateway_clock(0);
}
