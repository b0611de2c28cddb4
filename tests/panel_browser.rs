//! THE life cycle of issue 15 in a real browser, against the real
//! `ferry-cloud` (HTTPS), a real relay and the real `ferry-gateway` in the
//! gateway lab (see `gateway_lab.rs`): an admin creates a user, a gateway
//! and a session on the console; the technician logs in and starts it; the
//! console shows it waiting; the plant operator approves on the gateway's
//! local panel (at 800x480); the console shows it active; the technician's
//! tunnel comes up and both faces show its path and traffic; the operator
//! switches off on the panel, and the technician's page shows the session
//! ended by the customer within seconds.
//!
//! Headless Chromium runs in the test's own namespace and reaches the lab
//! through loopback forwarders: the console at 127.0.0.1 (into the office,
//! an admin's network on the internet), the panel at 127.0.0.2 (into a
//! device of the machine network, where the panel is reachable). The
//! console's enrolment command names the address the browser used, so the
//! gateway is given the cloud's lab address with the command's pin and
//! token. Screenshots: `target/screenshots/panel/`.
//!
//! Run as root after `cargo build --bins`:
//! `cargo test -p ferry-tests --test panel_browser`.

use std::{net::Ipv4Addr, time::Duration};

use ferry_lab::Forwarder;
use ferry_tests::{browser::Scenario, gateway_lab::*, panel::panel_addr};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "admin passphrase for the panel lab test";
const PANEL_PASSWORD: &str = "plant operator passphrase";
const SETTLE: Duration = Duration::from_secs(30);

/// The value of `--name VALUE` in a command line.
fn arg<'a>(command: &'a str, name: &str) -> Option<&'a str> {
    let mut words = command.split_whitespace();
    words.by_ref().find(|w| *w == name)?;
    words.next()
}

/// How the console and the panel name a path the gateway reports.
fn path_labels(transport: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match transport {
        "direct" => Some(("direct", "direct", "Direct")),
        "udp-relay" => Some(("relay", "relay (UDP)", "Relay (UDP)")),
        "websocket-relay" => Some(("websocket", "relay (WebSocket)", "Relay (WebSocket)")),
        _ => None,
    }
}

#[test]
fn the_life_cycle_through_the_console_and_the_gateway_panel() {
    let mut lab = GatewayLab::new(Options { cloud_tls: true, ..Options::default() });
    let one_time = lab.start_cloud().expect("the first start prints a one-time password");
    let pin = lab.cloud_pin.clone().unwrap();
    let console = Forwarder::start(Ipv4Addr::LOCALHOST.into(), 0, &lab.office_ns, lab.cloud_addr()).unwrap();
    let panel = Forwarder::start(Ipv4Addr::new(127, 0, 0, 2).into(), 0, &lab.probe_ns, panel_addr()).unwrap();
    let console_url = format!("https://{}", console.addr);
    let panel_url = format!("https://{}", panel.addr);
    let version = lab.gateway_ok(&["--version"]);
    let version = version.split_whitespace().last().unwrap_or_default().to_string();

    let mut enrolled = false;
    let mut tunnel = None;
    let transcript = Scenario::new("panel/lifecycle-lab.mjs")
        .screenshots("panel")
        .timeout(Duration::from_secs(420))
        .env("FERRY_URL", &console_url)
        .env("FERRY_PIN", &pin)
        .env("FERRY_ADMIN_ONE_TIME", &one_time)
        .env("FERRY_PLC_ADDRESS", TARGET_A_IP)
        .env("FERRY_PLC_PORT", HTTP_PORT.to_string())
        .env("FERRY_RELAY_NAME", "relay-lab")
        .env("FERRY_GATEWAY_VERSION", &version)
        .run(|kind, request| match kind {
            "enrol" => {
                let command = request["command"].as_str().unwrap_or_default();
                if arg(command, "--cloud") != Some(console_url.as_str()) {
                    return Err(format!("the command names another cloud: {command}"));
                }
                if arg(command, "--pin") != Some(pin.as_str()) {
                    return Err(format!("the command pins another certificate: {command}"));
                }
                let token = arg(command, "--token").ok_or("the command has no --token")?;
                // The admin chose their password on the console; the relay
                // comes now, before anyone needs it.
                let (_, admin) = lab.login(&lab.office_ns, "admin", ADMIN_PASSWORD);
                *lab.admin_token.lock().unwrap() = Some(admin);
                lab.start_relay();
                let cloud = lab.cloud_url();
                lab.gateway_ok(&["enroll", "--cloud", &cloud, "--pin", &pin, "--token", token]);
                lab.set_panel_password(PANEL_PASSWORD);
                lab.start_gateway();
                enrolled = true;
                Ok(json!({
                    "panel_url": panel_url,
                    "panel_pin": lab.panel_pin(),
                    "panel_password": PANEL_PASSWORD,
                }))
            }
            "connect_peer" => {
                // The technician's client: a configuration for a fresh key
                // from the technician's network, wireguard-go from the
                // wg-quick file, a page of the PLC through the tunnel.
                let session = request["session"].as_u64().ok_or("no session")?;
                let name = request["user"].as_str().unwrap_or_default().to_string();
                let password = request["password"].as_str().unwrap_or_default().to_string();
                let (id, token) = lab.login(&lab.tech_ns, &name, &password);
                let mut user = User { id, name, password, token };
                let up = lab.technician_tunnel(&mut user, session);
                let proxy = up.proxy("plc").to_string();
                let page = eventually(SETTLE, || http_get(&lab.tech_ns, &proxy, HTTP_PORT, SETTLE));
                if page.as_deref() != Ok(PLC_PAGE) {
                    return Err(format!("the PLC through the tunnel: {page:?}\n{}", up.go.show("dump")));
                }
                tunnel = Some(up);
                // What the gateway says of the peer, and that the cloud
                // has the same path from it.
                let mut peer = Value::Null;
                let connected = poll(SETTLE, || {
                    let sessions = lab.gateway_sessions();
                    peer = sessions
                        .as_array()
                        .and_then(|l| l.iter().find(|s| s["id"] == session))
                        .and_then(|s| s["peers"].get(0).cloned())
                        .unwrap_or_default();
                    peer["last_handshake_s_ago"].is_u64()
                        && path_labels(peer["transport"].as_str().unwrap_or("")).is_some()
                });
                if !connected {
                    return Err(format!("the gateway does not show the peer connected: {peer}"));
                }
                let transport = peer["transport"].as_str().unwrap_or_default();
                let (cloud_path, console_path, panel_path) = path_labels(transport).ok_or("no path")?;
                let endpoint = peer["endpoint"].as_str().unwrap_or_default().to_string();
                let mut report = Value::Null;
                let reported = poll(SETTLE, || {
                    report = lab.session(session)["configs"][0]["peer"].clone();
                    report["connected"] == true && report["path"] == cloud_path
                });
                if !reported {
                    return Err(format!(
                        "the cloud's report of the peer {report} is not the gateway's {peer}"
                    ));
                }
                if report["endpoint"] != endpoint.as_str() {
                    return Err(format!("the cloud's endpoint {report} is not the gateway's {endpoint}"));
                }
                Ok(json!({"console_path": console_path, "panel_path": panel_path, "endpoint": endpoint}))
            }
            other => Err(format!("unknown request {other}")),
        });
    assert!(enrolled, "the gateway enrolled");
    drop(tunnel);

    // What the pages did is what the cloud recorded, as the gateway's doing
    // where the customer acted.
    let gateway_entries: Vec<(String, bool, String)> = lab
        .audit("")
        .iter()
        .filter(|e| e["actor"].as_str().is_some_and(|a| a.starts_with("gateway:")))
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["allowed"].as_bool().unwrap_or_default(),
                e["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let has = |action: &str, detail: &str| {
        gateway_entries.iter().any(|(a, allowed, d)| a == action && *allowed && d.contains(detail))
    };
    for (action, detail) in [
        ("gateway.panel_login", "local panel login from 192.168.50.20: success"),
        ("gateway.switch", "on"),
        ("session.approve", ""),
        ("session.peer_connected", " via "),
        ("gateway.switch", "off"),
        ("session.end", "ended by the customer (switch off)"),
        ("gateway.panel_logout", "from 192.168.50.20"),
    ] {
        assert!(has(action, detail), "no {action} ({detail}) by the gateway in {gateway_entries:#?}");
    }
    assert!(transcript.log.contains("screenshot"), "{}", transcript.log);
    let shots = ferry_tests::browser::screenshots_dir("panel");
    for shot in ["panel-switch-off", "panel-waiting-approval", "panel-active-session", "panel-desktop"] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}.png in {}", shots.display());
    }
}
