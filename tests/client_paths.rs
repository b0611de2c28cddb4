//! The technician's client `ferry` with the real `ferry-gateway` in the
//! gateway lab: the technician's laptop at home behind a NAT router (the
//! world's `Technician::BehindNat`, public address 192.0.2.2), its `ferry
//! service` in the laptop's namespace, the technician using the CLI as a
//! local user. Each test is one property of
//! the client's paths: the relay first and a direct path once verified, the
//! fall back to the relay when the direct path is cut in the middle of a
//! transfer, the WebSocket relay from a network that lets only TCP 443 out,
//! roaming to another network without a new `connect`, the customer's
//! switch-off during a direct-path transfer, and the cloud's rights.
//!
//! Waits are bounded waits for behaviour, never speed measurements.
//!
//! Run as root after `cargo build -p ferry-client -p ferry-gateway -p
//! ferry-cloud -p ferry-relay --bins`:
//! `cargo test -p ferry-tests --test client_paths`.

use std::{
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use ferry_lab::{Nat, Netns, Process};
use ferry_tests::{client_lab::*, gateway_lab::*};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
/// A first handshake, a move to another path.
const SETTLE: Duration = Duration::from_secs(30);
const IPERF_PORT: u16 = 5201;

/// The lab with the real gateway behind the customer's cone NAT, remote
/// maintenance switched on, a technician account `tech1` logged in with
/// `ferry login` as the local user TECH on a laptop at home behind a NAT of
/// `nat` kind, whose `ferry service` runs.
struct Site {
    lab: GatewayLab,
    gateway: GatewayRecord,
    account: User,
    service: Service,
    tech: FerryUser,
}

fn site(options: Options, nat: Nat) -> Site {
    let mut lab = GatewayLab::new(Options { technician: Technician::BehindNat(nat), ..options });
    // `ping` as a local user: an ICMP datagram socket, no privilege.
    lab.tech_ns.sysctl("net.ipv4.ping_group_range=0 2147483647").unwrap();
    lab.start_cloud_and_login();
    lab.start_relay();
    let gateway = lab.create_gateway("press line 3");
    more_targets(&lab, gateway.id);
    lab.enroll(&gateway.enrolment_token);
    lab.start_gateway();
    lab.wait_gateway_at_cloud(gateway.id, false);
    lab.remote("on");
    lab.wait_gateway_at_cloud(gateway.id, true);
    // The gateway's candidates (its uplink, and its NAT's mapping that the
    // relay's STUN server saw) are at the cloud before anyone connects.
    wait_until(SETTLE, "the gateway's candidates at the cloud", || {
        let endpoints = lab.gateway_view(gateway.id)["endpoints"].clone();
        endpoints
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e.as_str().is_some_and(|e| e.starts_with(SITE_WAN_IP))))
    });
    let account = lab.create_technician("tech1");
    let service = Service::start(&lab.tech_ns);
    let tech = FerryUser::new(&lab.tech_ns, TECH, &service);
    // A network that lets only TCP 443 out reaches the cloud there.
    tech.login(&lab.technician_cloud_url(), "tech1", TECH_PASSWORD);
    Site { lab, gateway, account, service, tech }
}

/// Besides plc-web and echo: `iperf` (target-b, tcp 5201) and `ping`
/// (target-a, icmp).
fn more_targets(lab: &GatewayLab, gateway: u64) {
    let tcp = |name: &str, address: &str, port: u16| json!({"name": name, "address": address, "protocol": "tcp", "ports": [{"first": port, "last": port}]});
    let targets = json!({"targets": [
        tcp("plc-web", TARGET_A_IP, HTTP_PORT),
        tcp("echo", TARGET_B_IP, ECHO_PORT),
        tcp("iperf", TARGET_B_IP, IPERF_PORT),
        {"name": "ping", "address": TARGET_A_IP, "protocol": "icmp", "ports": []},
    ]});
    let (status, answer) = lab.admin("PATCH", &format!("/api/v1/gateways/{gateway}"), targets);
    assert_eq!(status, 200, "{answer}");
}

impl Site {
    /// A session released to tech1, started with `ferry start`.
    fn started(&self, targets: &[&str]) -> u64 {
        let id = self.lab.create_session(self.gateway.id, targets, &[self.account.id], 600, false);
        let out = self.tech.ferry(&["start", &id.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        id
    }

    /// `ferry connect`, which must work.
    fn connect(&self, session: u64) -> Value {
        self.tech.connect(session, 40).unwrap_or_else(|out| panic!("{}\n{}", text(&out), self.logs()))
    }

    /// The tunnel of `tunnel`'s configuration as `ferry status` shows it now.
    fn now(&self, tunnel: &Value) -> Value {
        self.tech.tunnel(&tunnel["config_id"])
    }

    /// Waits until the tunnel's path is `path` for the reason `why` (any
    /// with None); returns the tunnel then.
    fn wait_path(&self, tunnel: &Value, path: &str, why: Option<&str>) -> Value {
        let mut last = Value::Null;
        let reached = poll(SETTLE, || {
            last = self.now(tunnel);
            last["path"] == path && why.is_none_or(|why| last["path_why"] == why)
        });
        assert!(reached, "the path did not become {path} ({why:?}): {last:#}\n{}", self.logs());
        last
    }

    /// The gateway's view of the session's one peer (`sessions --json`).
    fn gateway_peer(&self, session: u64) -> Value {
        let sessions = self.lab.gateway_sessions();
        sessions
            .as_array()
            .and_then(|all| all.iter().find(|s| s["id"] == session))
            .map_or(Value::Null, |s| s["peers"][0].clone())
    }

    fn logs(&self) -> String {
        format!("{}\n--- gateway log ---\n{}", self.service.log(), self.lab.gateway_log())
    }
}

/// The proxy address of `target` in a tunnel of `ferry status`.
fn proxy(tunnel: &Value, target: &str) -> String {
    let targets = tunnel["targets"].as_array().unwrap();
    let found = targets.iter().find(|t| t["name"] == target).unwrap_or_else(|| panic!("{target}: {tunnel}"));
    found["proxy_address"].as_str().unwrap().to_string()
}

/// A firewall in the internet that drops UDP between two public addresses,
/// both ways: the direct path between the two NATs, not their ways to the
/// relay. Lifted when dropped.
struct Cut {
    inet: Netns,
}

impl Cut {
    fn between(lab: &GatewayLab, a: &str, b: &str) -> Cut {
        lab.inet
            .exec(
                "nft",
                &[&format!(
                    "add table ip ferry_cut; \
                     add chain ip ferry_cut forward {{ type filter hook forward priority -10; }}; \
                     add rule ip ferry_cut forward ip saddr {a} ip daddr {b} meta l4proto udp drop; \
                     add rule ip ferry_cut forward ip saddr {b} ip daddr {a} meta l4proto udp drop"
                )],
            )
            .unwrap();
        Cut { inet: lab.inet.clone() }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = self.inet.exec("nft", &["delete", "table", "ip", "ferry_cut"]);
    }
}

/// `iperf3 -s` for one test on target-b.
fn iperf_server(lab: &GatewayLab) -> Process {
    let port = IPERF_PORT.to_string();
    let mut server = lab
        .target_b
        .spawn_program("iperf3", &["-s", "-1", "--forceflush", "-B", TARGET_B_IP, "-p", &port])
        .unwrap();
    server.wait_for_output("Server listening", T).unwrap();
    server
}

/// `iperf3 -c` as TECH from the technician's machine (through the tunnel:
/// TECH's packets to the proxy address are routed into it): a TCP transfer
/// of `seconds` at a modest rate, reporting JSON.
fn iperf_client(ns: &Netns, proxy: &str, seconds: u32) -> Child {
    let (mut cmd, netns) = command_as(TECH, Some(ns), "iperf3");
    let (port, time) = (IPERF_PORT.to_string(), seconds.to_string());
    cmd.args(["-c", proxy, "-p", &port, "-t", &time, "-b", "8M", "-i", "1", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    drop(netns);
    child
}

/// Waits for the child within `timeout` (killed after it).
fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// The first answered ping goes through the relay (the direct path is held
/// back by a firewall at first); once it is let through, the tunnel moves to
/// the direct path, verified both ways, and both ends say so. Then a TCP
/// transfer over the direct path has that path cut in the middle: the
/// tunnel falls back to the relay and the transfer finishes; lifted, the
/// direct path comes back.
#[test]
fn a_cone_nat_technician_starts_on_the_relay_goes_direct_and_keeps_a_transfer_when_the_direct_path_is_cut() {
    let site = site(Options::default(), Nat::Cone);
    let id = site.started(&["plc-web", "iperf", "ping"]);
    let held_back = Cut::between(&site.lab, TECH_IP, SITE_WAN_IP);
    let tunnel = site.connect(id);
    assert_eq!(tunnel["path"], "relay_udp", "{tunnel:#}");
    assert!(tunnel["last_handshake_ms"].is_u64(), "the handshake came through the relay: {tunnel:#}");
    assert!(tunnel["peer_endpoint"].as_str().unwrap().starts_with(&format!("{RELAY_IP}:")), "{tunnel:#}");
    let reflexive = tunnel["local_candidates"].as_array().unwrap();
    assert!(
        reflexive.iter().any(|c| c.as_str().unwrap().starts_with(&format!("{TECH_IP}:"))),
        "the technician's NAT mapping, from the relay's STUN server: {tunnel:#}"
    );
    let ping = proxy(&tunnel, "ping");
    let answered = eventually(SETTLE, || ping_as(&site.lab.tech_ns, TECH, &ping));
    assert_eq!(answered, Ok(()), "{}", site.logs());
    assert_eq!(site.now(&tunnel)["path"], "relay_udp", "the first answered ping went through the relay");

    drop(held_back);
    // Verified by this end's own probes.
    let direct = site.wait_path(&tunnel, "direct", Some("verified"));
    assert!(direct["peer_endpoint"].as_str().unwrap().starts_with(&format!("{SITE_WAN_IP}:")), "{direct:#}");
    assert!(direct["rtt_ms"].is_f64(), "{direct:#}");
    assert_eq!(ping_as(&site.lab.tech_ns, TECH, &ping), Ok(()));
    let page = get_as(&site.lab.tech_ns, TECH, &proxy(&tunnel, "plc-web"), HTTP_PORT);
    assert_eq!(page.as_deref(), Ok(PLC_PAGE));
    let mut peer = Value::Null;
    let seen = poll(SETTLE, || {
        peer = site.gateway_peer(id);
        peer["transport"] == "direct"
    });
    assert!(seen, "the gateway does not report the direct path: {peer:#}");
    assert!(peer["endpoint"].as_str().unwrap().starts_with(&format!("{TECH_IP}:")), "{peer:#}");
    let out = site.tech.ferry(&["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("  path:           direct, for ") && shown.contains("(verified)"), "{shown}");

    // A transfer over the direct path, cut in its middle.
    let _server = iperf_server(&site.lab);
    let started = Instant::now();
    let transfer = iperf_client(&site.lab.tech_ns, &proxy(&tunnel, "iperf"), 16);
    std::thread::sleep(Duration::from_secs(3));
    // The transfer began on the direct path.
    site.wait_path(&tunnel, "direct", Some("verified"));
    let cut = Cut::between(&site.lab, TECH_IP, SITE_WAN_IP);
    let cut_at = started.elapsed().as_secs_f64();
    // The direct path stopped answering: back on the relay.
    site.wait_path(&tunnel, "relay_udp", Some("dead"));
    let out = finish(transfer, Duration::from_secs(60));
    assert!(out.status.success(), "iperf3: {}\n{}", text(&out), site.logs());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or_default();
    assert!(received > 0, "{report:#}");
    // Data moved after the fall back, not only before the cut.
    let after_cut: u64 = report["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["sum"]["start"].as_f64().unwrap_or_default() > cut_at + 6.0)
        .map(|i| i["sum"]["bytes"].as_u64().unwrap_or_default())
        .sum();
    assert!(after_cut > 0, "nothing went through the relay after the cut at {cut_at:.1} s: {report:#}");

    drop(cut);
    let again = site.wait_path(&tunnel, "direct", Some("verified"));
    assert!(again["ended"].is_null());
}

/// A network that lets only TCP to port 443 out: no STUN, no UDP relay; the
/// tunnel takes the relay's WebSocket (wss, with the pin the cloud passes
/// on) and works.
#[test]
fn a_tcp_443_only_technician_reaches_the_gateway_over_the_websocket_relay() {
    let site = site(Options { relay_tls: true, ..Options::default() }, Nat::TcpOnly443);
    let id = site.started(&["plc-web", "echo"]);
    let tunnel = site.connect(id);
    assert_eq!(tunnel["path"], "relay_websocket", "{tunnel:#}\n{}", site.logs());
    assert_eq!(tunnel["peer_endpoint"], format!("wss://{RELAY_WS}/"), "{tunnel:#}");
    assert_eq!(tunnel["path_why"], "no handshake over the UDP relay", "{tunnel:#}");
    assert!(tunnel["last_handshake_ms"].is_u64(), "{tunnel:#}");
    let page = eventually(SETTLE, || get_as(&site.lab.tech_ns, TECH, &proxy(&tunnel, "plc-web"), HTTP_PORT));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE), "{}", site.logs());
    let echo = connect_as(&site.lab.tech_ns, TECH, &proxy(&tunnel, "echo"), ECHO_PORT).unwrap();
    let echo = EchoLoop::over(echo, T).unwrap();
    let since = Instant::now();
    assert!(poll(T, || echo.answers_after(since) >= 10), "the echo over the WebSocket relay");
    let out = site.tech.ferry(&["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("  path:           relay (WebSocket), for "), "{shown}");
    assert_eq!(site.now(&tunnel)["path"], "relay_websocket");
}

/// The technician's machine moves to another network (another NAT, another
/// address): the tunnel finds its way again without a new `connect`. The
/// new candidates reach the gateway through the cloud, which lets it verify
/// a direct path to the new network.
#[test]
fn a_technician_who_moves_to_another_network_gets_the_tunnel_back_by_itself() {
    let site = site(Options::default(), Nat::Cone);
    let id = site.started(&["plc-web", "echo"]);
    let tunnel = site.connect(id);
    let web = proxy(&tunnel, "plc-web");
    site.wait_path(&tunnel, "direct", None);
    assert_eq!(get_as(&site.lab.tech_ns, TECH, &web, HTTP_PORT).as_deref(), Ok(PLC_PAGE));

    let lab = &site.lab;
    let second = AwayNetwork::roam(lab, Nat::Cone);
    let page = eventually(Duration::from_secs(60), || get_as(&lab.tech_ns, TECH, &web, HTTP_PORT));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE), "{}", site.logs());
    let mut now = Value::Null;
    let back = poll(Duration::from_secs(60), || {
        now = site.now(&tunnel);
        now["path"] == "direct"
            && now["local_candidates"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c.as_str().is_some_and(|c| c.starts_with(&second.wan_ip))))
    });
    assert!(back, "no direct path from the new network: {now:#}\n{}", site.logs());
    assert!(now["ended"].is_null() && now["config_id"] == tunnel["config_id"], "the same tunnel: {now:#}");
    // The new candidates reached the cloud (with the configuration's watch
    // token), which handed them to the gateway.
    let configs = lab.session(id)["configs"].clone();
    let config = configs.as_array().unwrap().iter().find(|c| c["id"] == tunnel["config_id"]).unwrap();
    let reported = config["candidates"].as_array().unwrap();
    assert!(reported.iter().any(|c| c.as_str().unwrap().starts_with(&second.wan_ip)), "{config:#}");
    assert!(!reported.iter().any(|c| c.as_str().unwrap().starts_with(TECH_IP)), "{config:#}");
    let mut peer = Value::Null;
    let verified = poll(SETTLE, || {
        peer = site.gateway_peer(id);
        peer["transport"] == "direct"
            && peer["endpoint"].as_str().is_some_and(|e| e.starts_with(&second.wan_ip))
    });
    assert!(verified, "the gateway did not verify the new network: {peer:#}\n{}", site.logs());
    assert_eq!(get_as(&lab.tech_ns, TECH, &web, HTTP_PORT).as_deref(), Ok(PLC_PAGE));
    assert_eq!(site.tech.status().len(), 1, "no other tunnel came or went");
}

/// The customer switches off while a transfer runs over the direct path:
/// the traffic stops at once, the tunnel goes down and says why, and the
/// ended session cannot be connected to again. A technician the session is
/// not released to can neither start nor connect it.
#[test]
fn the_customer_ends_a_direct_path_transfer_at_once_and_only_released_technicians_get_in() {
    let site = site(Options::default(), Nat::Cone);
    let id = site.lab.create_session(site.gateway.id, &["plc-web", "echo"], &[site.account.id], 600, false);

    // Another account, used by another local user of the same machine.
    site.lab.create_technician("tech2");
    let other = FerryUser::new(&site.lab.tech_ns, COLLEAGUE, &site.service);
    other.login(&site.lab.technician_cloud_url(), "tech2", TECH_PASSWORD);
    for command in ["start", "connect"] {
        let out = other.ferry(&[command, &id.to_string()]);
        assert_eq!(out.status.code(), Some(4), "{command}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not released to you"), "{}", text(&out));
    }
    // The cloud itself refuses, whatever the client does.
    let (_, token) = site.lab.login(&site.lab.office_ns, "tech2", TECH_PASSWORD);
    for action in ["start", "config"] {
        let body = json!({"public_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "candidates": []});
        let path = format!("/api/v1/sessions/{id}/{action}");
        let (status, answer) = site.lab.api_from(&site.lab.office_ns, "POST", &path, Some(&token), body);
        assert!(matches!(status, 403 | 404), "{action}: {status} {answer}");
    }
    assert_eq!(site.lab.session_state(id).0, "prepared");

    let out = site.tech.ferry(&["start", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let tunnel = site.connect(id);
    site.wait_path(&tunnel, "direct", None);
    let stream = connect_as(&site.lab.tech_ns, TECH, &proxy(&tunnel, "echo"), ECHO_PORT).unwrap();
    let echo = EchoLoop::over(stream, T).unwrap();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(echo.answers_after(started) > 0, "the echo loop was not answered before the switch-off");
    // The transfer runs over the direct path.
    site.wait_path(&tunnel, "direct", Some("verified"));

    switch_off_stops(&site.lab, echo);
    let mut now = Value::Null;
    let ended = poll(SETTLE, || {
        now = site.now(&tunnel);
        now["ended"]["cause"] == "ended"
    });
    assert!(ended, "{now:#}\n{}", site.logs());
    assert_eq!(now["ended"]["reason"], "ended by the customer (switch off)", "{now:#}");
    assert!(ferry_rules(&site.lab.tech_ns).is_empty(), "the tunnel's routing is gone");
    let out = site.tech.ferry(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("down: ended by the customer"), "{}", text(&out));

    // Connecting to the ended session is refused, and says why.
    let out = site.tech.connect(id, 5).expect_err("connect after the end");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("session {id} is ended (ended by the customer (switch off))")), "{said}");
    assert!(said.contains("cannot be connected to any more"), "{said}");
}
