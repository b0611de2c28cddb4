//! The cloud's web console in a real browser (Debian's headless Chromium,
//! driven by Playwright): a real `ferry-cloud serve` over HTTPS with its
//! self-signed certificate (the browser trusts exactly its key), a fresh
//! data folder, port 0. Each test runs one scenario script under
//! `tests/browser/console/` and answers what it asks of the gateway side.
//! Screenshots: `target/screenshots/console/`.

use std::net::SocketAddr;

use ferry_control::{
    SessionId, WgKey,
    gateway::{GatewayEvent, PathKind},
};
use ferry_tests::{
    browser::Scenario,
    cloud::{Cloud, spawn},
    control_gateway::{ControlGateway, pinned_call},
};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "admin passphrase for the console test";

struct Running {
    cloud: Cloud,
    /// The cloud's data folder, removed after the test.
    _dir: tempfile::TempDir,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let cloud = spawn(dir.path(), &[]);
        assert!(cloud.fingerprint.is_some(), "the cloud serves HTTPS");
        Running { cloud, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.cloud.addr
    }

    fn pin(&self) -> &str {
        self.cloud.fingerprint.as_deref().unwrap()
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        pinned_call(self.addr(), self.pin(), method, path, token, body)
    }

    fn login(&self, name: &str, password: &str) -> String {
        let (status, body) =
            self.call("POST", "/api/v1/auth/login", None, Some(json!({"name": name, "password": password})));
        assert_eq!(status, 200, "login {name}: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// The admin with its own password, through the API; an access token.
    fn admin(&self) -> String {
        let one_time = self.cloud.one_time_password().unwrap();
        let first = self.login("admin", &one_time);
        let change = json!({"current_password": one_time, "new_password": ADMIN_PASSWORD});
        assert_eq!(self.call("POST", "/api/v1/me/password", Some(&first), Some(change)).0, 204);
        self.login("admin", ADMIN_PASSWORD)
    }

    fn user(&self, admin: &str, name: &str, role: &str, password: &str) -> u64 {
        let (status, body) = self.call(
            "POST",
            "/api/v1/users",
            Some(admin),
            Some(json!({"name": name, "role": role, "password": password})),
        );
        assert_eq!(status, 201, "{body}");
        body["user"]["id"].as_u64().unwrap()
    }

    fn audit(&self, admin: &str, query: &str) -> Vec<Value> {
        let (status, body) =
            self.call("GET", &format!("/api/v1/audit?limit=1000&{query}"), Some(admin), None);
        assert_eq!(status, 200, "{body}");
        body["entries"].as_array().unwrap().clone()
    }

    fn scenario(&self, script: &str) -> Scenario {
        Scenario::new(script).screenshots("console").env("FERRY_URL", self.url()).env("FERRY_PIN", self.pin())
    }
}

/// The value of `--name VALUE` in a command line.
fn arg<'a>(command: &'a str, name: &str) -> Option<&'a str> {
    let mut words = command.split_whitespace();
    words.by_ref().find(|w| *w == name)?;
    words.next()
}

/// An Administrator's first login, a technician, a gateway with targets and
/// its enrolment command, a session released to the technician; the
/// technician's start refused while the gateway is offline; then the
/// gateway enrols with the very command the console showed, the start waits
/// for the customer, the approval, a client's peer with its path and bytes,
/// and the customer's switch-off ending it: every change appears on the open
/// pages without a reload.
#[test]
fn the_console_follows_a_session_from_preparation_to_the_customers_switch_off() {
    let running = Running::start();
    let mut gateway: Option<ControlGateway> = None;
    running
        .scenario("console/lifecycle.mjs")
        .env("FERRY_ADMIN_ONE_TIME", running.cloud.one_time_password().unwrap())
        .run(|kind, request| match kind {
            "enrol" => {
                let command = request["command"].as_str().unwrap_or_default();
                if arg(command, "--cloud") != Some(running.url().as_str()) {
                    return Err(format!("the command names another cloud: {command}"));
                }
                if arg(command, "--pin") != Some(running.pin()) {
                    return Err(format!("the command pins another certificate: {command}"));
                }
                let token = arg(command, "--token").ok_or("the command has no --token")?;
                let g = ControlGateway::enrol_and_connect(running.addr(), running.pin(), token, true);
                let id = g.id;
                gateway = Some(g);
                Ok(json!({"gateway_id": id}))
            }
            "approve" => {
                let g = gateway.as_ref().ok_or("no gateway enrolled")?;
                g.approve(request["session"].as_u64().ok_or("no session")?);
                Ok(json!({}))
            }
            "switch" => {
                let g = gateway.as_ref().ok_or("no gateway enrolled")?;
                g.switch(request["on"].as_bool().ok_or("no position")?);
                Ok(json!({}))
            }
            "connect_peer" => {
                // What `ferry connect` does at the cloud, then what the
                // gateway reports once the peer's handshake arrives.
                let g = gateway.as_ref().ok_or("no gateway enrolled")?;
                let session = request["session"].as_u64().ok_or("no session")?;
                let token = running.login(
                    request["user"].as_str().unwrap_or_default(),
                    request["password"].as_str().unwrap_or_default(),
                );
                let key = [7u8; 32];
                let endpoint = "198.51.100.20:51820";
                let (status, config) = running.call(
                    "POST",
                    &format!("/api/v1/sessions/{session}/config"),
                    Some(&token),
                    Some(json!({"public_key": WgKey(key).to_string(), "candidates": [endpoint]})),
                );
                if status != 200 {
                    return Err(format!("issuing a configuration: {status} {config}"));
                }
                g.event(GatewayEvent::PeerConnected {
                    session_id: SessionId(session),
                    public_key: WgKey(key),
                    endpoint: Some(endpoint.parse().unwrap()),
                    path: Some(PathKind::Direct),
                });
                g.event(GatewayEvent::Bytes {
                    session_id: SessionId(session),
                    target: Some("plc".into()),
                    rx: 123_456,
                    tx: 65_432,
                });
                Ok(json!({"path": "direct", "endpoint": endpoint, "bytes": "120.6 KiB"}))
            }
            other => Err(format!("unknown request {other}")),
        });
    // What the pages did is what the cloud recorded.
    let admin = running.login("admin", ADMIN_PASSWORD);
    let actions: Vec<String> = running
        .audit(&admin, "")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_string())
        .collect();
    for action in ["user.create", "gateway.create", "gateway.enrol", "session.create", "session.approve"] {
        assert!(actions.iter().any(|a| a == action), "no {action} in {actions:?}");
    }
    let refused_start = running
        .audit(&admin, "action=session.start&allowed=false")
        .into_iter()
        .any(|e| e["detail"].as_str().is_some_and(|d| d.contains("offline")));
    assert!(refused_start, "the refused start is in the audit log");
}

/// A remoteConnect User's view: their session only, no admin pages, the
/// API refusing what the pages hide, and forged requests (no CSRF token, a
/// wrong one, a cross-site form post) refused and audited.
#[test]
fn a_remote_connect_user_sees_only_their_sessions_and_forged_requests_fail() {
    let running = Running::start();
    let admin = running.admin();
    let tech1 = running.user(&admin, "tech1", "remote_connect_user", "technician one passphrase");
    let tech2 = running.user(&admin, "tech2", "remote_connect_user", "technician two passphrase");
    let (status, gateway) = running.call(
        "POST",
        "/api/v1/gateways",
        Some(&admin),
        Some(json!({"name": "Mill 2", "site": "Plant Ulm", "targets": [
            {"name": "plc", "address": "192.168.10.5", "protocol": "tcp", "ports": [{"first": 502, "last": 502}]}]})),
    );
    assert_eq!(status, 201, "{gateway}");
    let gateway_id = gateway["gateway"]["id"].as_u64().unwrap();
    let session = |name: &str, user: u64| {
        let (status, body) = running.call(
            "POST",
            "/api/v1/sessions",
            Some(&admin),
            Some(json!({"name": name, "gateway_id": gateway_id, "targets": ["plc"], "released_to": [user],
                "max_duration_s": 3600})),
        );
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().unwrap()
    };
    let own = session("Mill 2 service", tech1);
    let other = session("Mill 2 audit", tech2);
    running
        .scenario("console/rights.mjs")
        .env("FERRY_USER", "tech1")
        .env("FERRY_USER_PASSWORD", "technician one passphrase")
        .env("FERRY_OWN_SESSION", "Mill 2 service")
        .env("FERRY_OWN_SESSION_ID", own.to_string())
        .env("FERRY_OTHER_SESSION", "Mill 2 audit")
        .env("FERRY_OTHER_SESSION_ID", other.to_string())
        .run(|kind, _| Err(format!("nothing to ask here ({kind})")));
    let refusals = running.audit(&admin, "actor=tech1&allowed=false");
    let csrf = refusals.iter().filter(|e| e["action"] == "auth.csrf").count();
    assert!(csrf >= 3, "the forged requests are audited: {refusals:?}");
    assert!(refusals.iter().any(|e| e["action"] == "console.users"), "the refused page is audited");
    let (_, session) = running.call("GET", &format!("/api/v1/sessions/{own}"), Some(&admin), None);
    assert_eq!(session["state"], "prepared", "no forged request changed the session");
}

/// The security headers, the policy against injected script, framing by
/// another site, the cookie's flags, the origin checks, and a logout that
/// ends the session at the server.
#[test]
fn console_security_headers_cookie_framing_origin_and_logout() {
    let running = Running::start();
    let admin = running.admin();
    running.user(&admin, "ops", "remote_connect_administrator", "operations passphrase");
    running
        .scenario("console/security.mjs")
        .env("FERRY_USER", "ops")
        .env("FERRY_USER_PASSWORD", "operations passphrase")
        .run(|kind, _| Err(format!("nothing to ask here ({kind})")));
    let logouts = running.audit(&admin, "actor=ops&action=auth.logout");
    assert_eq!(logouts.len(), 1, "{logouts:?}");
    let refused = running.audit(&admin, "actor=ops&action=auth.csrf&allowed=false");
    assert_eq!(refused.len(), 3, "the three foreign requests are audited: {refused:?}");
}

/// TOTP enrolment with a QR code, then a login that asks for the code.
#[test]
fn totp_enrolment_shows_a_qr_code_and_the_login_then_asks_for_the_code() {
    let running = Running::start();
    let admin = running.admin();
    running.user(&admin, "alice", "administrator", "alice's long passphrase");
    running
        .scenario("console/totp.mjs")
        .env("FERRY_USER", "alice")
        .env("FERRY_USER_PASSWORD", "alice's long passphrase")
        .run(|kind, _| Err(format!("nothing to ask here ({kind})")));
    let (status, users) = running.call("GET", "/api/v1/users", Some(&admin), None);
    assert_eq!(status, 200);
    let alice = users.as_array().unwrap().iter().find(|u| u["name"] == "alice").unwrap();
    assert_eq!(alice["totp_enabled"], true, "{alice}");
}
