//! The web console's side of the API without a browser: console sessions by
//! cookie (login through the shared login check, CSRF token and origin on
//! every state change, logout, timeouts, the ways a session ends), the
//! pages' gates and headers, the change feed and what each caller hears of
//! it, and the gateway's peer reports. Over real HTTP with a clock the test
//! moves.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod common;

use std::{
    io::{BufRead, BufReader},
    sync::mpsc,
    time::Duration,
};

use common::{
    Api, PASSWORD,
    peers::{TestGateway, TestRelay},
};
use ferry_cloud::{auth::console, rights::Role};
use ferry_control::{
    SessionId, WgKey,
    gateway::{GatewayEvent, PathKind},
};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(10);

/// An answer with its headers.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn problem(&self) -> &str {
        self.body["type"].as_str().unwrap_or("").trim_start_matches("urn:ferry:problem:")
    }

    /// The console cookie this answer sets (`name=value`).
    fn cookie(&self) -> Option<String> {
        let set = self.header("set-cookie")?;
        let pair = set.split(';').next()?.trim();
        pair.strip_prefix(&format!("{}=", console::COOKIE)).filter(|v| !v.is_empty())?;
        Some(pair.to_string())
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build()
        .new_agent()
}

fn request(api: &Api, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
    let mut builder = ureq::http::Request::builder().method(method).uri(format!("{}{path}", api.base));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Some(body) => {
            builder = builder.header("Content-Type", "application/json");
            body.to_string().into_bytes()
        }
        None => Vec::new(),
    };
    let mut response =
        agent().run(builder.body(body).unwrap()).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, headers, body, text }
}

/// A browser's console session: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
    origin: String,
}

impl Browser {
    fn login(api: &Api, name: &str) -> Browser {
        Browser::try_login(api, name, PASSWORD).unwrap_or_else(|a| panic!("console login {name}: {a:?}"))
    }

    fn try_login(api: &Api, name: &str, password: &str) -> Result<Browser, Answer> {
        let origin = api.base.clone();
        let answer = request(
            api,
            "POST",
            "/api/v1/auth/session",
            &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
            Some(json!({"name": name, "password": password})),
        );
        if answer.status != 200 {
            return Err(answer);
        }
        let cookie = answer.cookie().expect("a session cookie");
        let csrf = answer.body["csrf_token"].as_str().unwrap().to_string();
        Ok(Browser { cookie, csrf, origin })
    }

    fn get(&self, api: &Api, path: &str) -> Answer {
        request(api, "GET", path, &[("Cookie", &self.cookie)], None)
    }

    /// A state change as the console's script sends it.
    fn send(&self, api: &Api, method: &str, path: &str, body: Option<Value>) -> Answer {
        let headers = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", self.csrf.as_str()),
            ("Origin", self.origin.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
        ];
        request(api, method, path, &headers, body)
    }
}

fn audit_actions(api: &Api, actor: &str, allowed: bool) -> Vec<String> {
    api.audit()
        .into_iter()
        .filter(|e| e.event.actor == actor && e.event.allowed == allowed)
        .map(|e| e.event.action)
        .collect()
}

#[test]
fn a_console_login_sets_a_strict_session_cookie_that_authenticates() {
    let api = Api::start();
    api.user("alice", Role::Administrator);
    let answer = request(
        &api,
        "POST",
        "/api/v1/auth/session",
        &[("Origin", &api.base)],
        Some(json!({"name": "alice", "password": PASSWORD})),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let set = answer.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|p| p == flag), "{flag} missing in {set}");
    }
    assert!(!set.contains("Max-Age") && !set.contains("Expires"), "a session cookie: {set}");
    let csrf = answer.body["csrf_token"].as_str().unwrap();
    assert_eq!(csrf.len(), 64);
    assert_eq!(answer.body["user"]["name"], "alice");
    let cookie = answer.cookie().unwrap();
    assert!(!cookie.contains(csrf), "the token is not the cookie");
    // No token reaches the page, and the session's record is keyed by a hash.
    assert!(answer.body.get("access_token").is_none());
    let value = cookie.split_once('=').unwrap().1;
    let store = &api.store;
    assert!(
        store
            .backend()
            .get(ferry_cloud::store::Collection::ConsoleSessions, value.as_bytes())
            .unwrap()
            .is_none()
    );

    let me = request(&api, "GET", "/api/v1/me", &[("Cookie", &cookie)], None);
    assert_eq!((me.status, me.body["name"].as_str()), (200, Some("alice")), "{me:?}");
    let session = request(&api, "GET", "/api/v1/auth/session", &[("Cookie", &cookie)], None);
    assert_eq!(session.body["csrf_token"].as_str(), Some(csrf));
    // A bearer caller has no console session to show.
    let (token, _) = api.login("alice");
    let bearer = format!("Bearer {token}");
    let session = request(&api, "GET", "/api/v1/auth/session", &[("Authorization", &bearer)], None);
    assert_eq!(session.status, 401, "{session:?}");
    assert!(audit_actions(&api, "alice", true).contains(&"auth.login".to_string()));
}

#[test]
fn a_console_login_from_another_origin_is_refused() {
    let api = Api::start();
    api.user("alice", Role::Administrator);
    let body = json!({"name": "alice", "password": PASSWORD});
    for headers in [
        vec![("Origin", "https://evil.example")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Origin", "null")],
        vec![],
    ] {
        let answer = request(&api, "POST", "/api/v1/auth/session", &headers, Some(body.clone()));
        assert_eq!((answer.status, answer.problem()), (403, "csrf-refused"), "{headers:?}: {answer:?}");
        assert!(answer.cookie().is_none());
    }
    assert_eq!(audit_actions(&api, "anonymous", false).iter().filter(|a| *a == "auth.csrf").count(), 4);
}

#[test]
fn console_logins_share_the_apis_throttling_and_second_factor() {
    let api = Api::start();
    api.user("alice", Role::RemoteConnectUser);
    for _ in 0..3 {
        let refused = Browser::try_login(&api, "alice", "not the password at all").err().unwrap();
        assert_eq!((refused.status, refused.problem()), (401, "bad-credentials"));
    }
    // The API's login counts the console's failures.
    let api_login =
        api.call("POST", "/api/v1/auth/login", None, Some(json!({"name": "alice", "password": PASSWORD})));
    assert_eq!((api_login.status, api_login.problem()), (429, "login-throttled"), "{api_login:?}");
    let refused = Browser::try_login(&api, "alice", PASSWORD).err().unwrap();
    assert_eq!(refused.problem(), "login-throttled");
    api.clock.advance(2_000);
    let browser = Browser::login(&api, "alice");

    // With TOTP on, the console's login asks for the code.
    let enrol = browser.send(&api, "POST", "/api/v1/me/totp", None);
    assert_eq!(enrol.status, 200, "{enrol:?}");
    let qr = browser.get(&api, "/api/v1/me/totp/qr");
    assert_eq!((qr.status, qr.header("content-type")), (200, Some("image/svg+xml")));
    assert!(qr.text.contains("<svg"));
    let mut state = ferry_cloud::users::by_name(&api.store, "alice").unwrap().unwrap().totp.unwrap();
    let code = state.code_at(api.clock.now()).unwrap();
    let confirm = browser.send(&api, "POST", "/api/v1/me/totp/confirm", Some(json!({"code": code})));
    assert_eq!(confirm.status, 204, "{confirm:?}");
    assert_eq!(browser.get(&api, "/api/v1/me/totp/qr").status, 404, "no QR once confirmed");
    api.clock.advance(30_000);
    let refused = Browser::try_login(&api, "alice", PASSWORD).err().unwrap();
    assert_eq!((refused.status, refused.problem()), (401, "totp-required"));
    state.last_step = 0;
    let code = state.code_at(api.clock.now()).unwrap();
    let answer = request(
        &api,
        "POST",
        "/api/v1/auth/session",
        &[("Origin", &api.base)],
        Some(json!({"name": "alice", "password": PASSWORD, "totp": code})),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn cookie_requests_that_change_state_need_the_csrf_token_and_the_own_origin() {
    let api = Api::start();
    api.user("alice", Role::Administrator);
    let b = Browser::login(&api, "alice");
    let path = "/api/v1/users";
    let body = || Some(json!({"name": "bob", "role": "remote_connect_user"}));
    let wrong = "0".repeat(64);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no token", vec![("Cookie", &b.cookie), ("Origin", &b.origin)]),
        ("wrong token", vec![("Cookie", &b.cookie), ("Origin", &b.origin), ("X-CSRF-Token", &wrong)]),
        ("short token", vec![("Cookie", &b.cookie), ("Origin", &b.origin), ("X-CSRF-Token", &b.csrf[..10])]),
        (
            "foreign origin",
            vec![("Cookie", &b.cookie), ("Origin", "https://evil.example"), ("X-CSRF-Token", &b.csrf)],
        ),
        (
            "cross-site fetch",
            vec![("Cookie", &b.cookie), ("Sec-Fetch-Site", "cross-site"), ("X-CSRF-Token", &b.csrf)],
        ),
        ("no origin", vec![("Cookie", &b.cookie), ("X-CSRF-Token", &b.csrf)]),
    ];
    for (what, headers) in &cases {
        let answer = request(&api, "POST", path, headers, body());
        assert_eq!((answer.status, answer.problem()), (403, "csrf-refused"), "{what}: {answer:?}");
    }
    assert!(ferry_cloud::users::by_name(&api.store, "bob").unwrap().is_none(), "nothing was created");
    let refusals = audit_actions(&api, "alice", false);
    assert_eq!(refusals.iter().filter(|a| *a == "auth.csrf").count(), cases.len(), "{refusals:?}");

    // Reads need no token; the real thing works.
    assert_eq!(b.get(&api, path).status, 200);
    let created = b.send(&api, "POST", path, body());
    assert_eq!(created.status, 201, "{created:?}");
    // Bearer requests are not the console's: no token, no origin check.
    let (token, _) = api.login("alice");
    let bearer = format!("Bearer {token}");
    let answer = request(
        &api,
        "POST",
        path,
        &[("Authorization", &bearer), ("Origin", "https://evil.example")],
        Some(json!({"name": "carol", "role": "remote_connect_user"})),
    );
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[test]
fn logout_ends_the_session_at_the_server() {
    let api = Api::start();
    api.user("alice", Role::RemoteConnectUser);
    let b = Browser::login(&api, "alice");
    let other = Browser::login(&api, "alice");
    // Logout is a state change like any other.
    let forged = request(&api, "DELETE", "/api/v1/auth/session", &[("Cookie", &b.cookie)], None);
    assert_eq!(forged.status, 403);
    let out = b.send(&api, "DELETE", "/api/v1/auth/session", None);
    assert_eq!(out.status, 204, "{out:?}");
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let replay = b.get(&api, "/api/v1/me");
    assert_eq!(replay.status, 401, "the old cookie after logout: {replay:?}");
    assert_eq!(b.get(&api, "/sessions").status, 303, "pages send it to the login");
    assert_eq!(other.get(&api, "/api/v1/me").status, 200, "another login of the same user goes on");
    assert!(audit_actions(&api, "alice", true).contains(&"auth.logout".to_string()));
}

#[test]
fn console_sessions_end_after_30_idle_minutes_or_12_hours() {
    let api = Api::start();
    api.user("alice", Role::RemoteConnectUser);
    let b = Browser::login(&api, "alice");
    api.clock.advance(29 * 60_000);
    assert_eq!(b.get(&api, "/api/v1/me").status, 200);
    api.clock.advance(29 * 60_000);
    assert_eq!(b.get(&api, "/api/v1/me").status, 200, "use keeps it alive");
    api.clock.advance(30 * 60_000);
    let idle = b.get(&api, "/api/v1/me");
    assert_eq!(idle.status, 401, "{idle:?}");
    assert!(idle.body["detail"].as_str().unwrap().contains("30 minutes"), "{idle:?}");

    // Neither the event stream nor the script's own reads count as use.
    let b = Browser::login(&api, "alice");
    let background = [("Cookie", b.cookie.as_str()), ("X-Ferry-Background", "1")];
    api.clock.advance(20 * 60_000);
    assert_eq!(request(&api, "GET", "/api/v1/sessions", &background, None).status, 200);
    assert_eq!(events_status(&api, &b.cookie), 200);
    api.clock.advance(11 * 60_000);
    assert_eq!(b.get(&api, "/api/v1/me").status, 401, "31 minutes without a person's request");

    let b = Browser::login(&api, "alice");
    for _ in 0..35 {
        api.clock.advance(20 * 60_000);
        assert_eq!(b.get(&api, "/api/v1/me").status, 200);
    }
    api.clock.advance(20 * 60_000);
    let old = b.get(&api, "/api/v1/me");
    assert_eq!(old.status, 401, "12 hours after login: {old:?}");
    assert!(old.body["detail"].as_str().unwrap().contains("12 hours"), "{old:?}");
}

#[test]
fn disabling_resetting_or_changing_a_password_ends_console_sessions() {
    let api = Api::start();
    let root = api.user("root", Role::Administrator);
    let tech = api.user("tech", Role::RemoteConnectUser);
    let admin = Browser::login(&api, "root");

    // The user's own password change: their other sessions end, the browser
    // that changed it goes on with a new cookie.
    let a = Browser::login(&api, "tech");
    let b = Browser::login(&api, "tech");
    let new_password = "a brand new passphrase";
    let changed = a.send(
        &api,
        "POST",
        "/api/v1/me/password",
        Some(json!({"current_password": PASSWORD, "new_password": new_password})),
    );
    assert_eq!(changed.status, 204, "{changed:?}");
    let renewed = changed.cookie().expect("a new cookie for the browser that changed it");
    assert_ne!(renewed, a.cookie);
    assert_eq!(a.get(&api, "/api/v1/me").status, 401, "the old cookie of the changing browser");
    assert_eq!(b.get(&api, "/api/v1/me").status, 401, "another session");
    let me = request(&api, "GET", "/api/v1/me", &[("Cookie", &renewed)], None);
    assert_eq!(me.status, 200, "{me:?}");

    // An Administrator resets it: a one-time password, the sessions end.
    let c = Browser::try_login(&api, "tech", new_password).unwrap();
    let reset = admin.send(&api, "POST", &format!("/api/v1/users/{tech}/password"), None);
    assert_eq!(reset.status, 200, "{reset:?}");
    let one_time = reset.body["one_time_password"].as_str().unwrap().to_string();
    assert_eq!(reset.body["user"]["must_change_password"], true);
    assert_eq!(c.get(&api, "/api/v1/me").status, 401);
    // With the one-time password only the password change is open.
    let d = Browser::try_login(&api, "tech", &one_time).unwrap();
    let blocked = d.get(&api, "/api/v1/sessions");
    assert_eq!((blocked.status, blocked.problem()), (403, "password-change-required"));
    let page = d.get(&api, "/sessions");
    assert_eq!((page.status, page.header("location")), (303, Some("/password")));
    assert_eq!(d.get(&api, "/password").status, 200);
    let own = admin.send(&api, "POST", &format!("/api/v1/users/{root}/password"), None);
    assert_eq!(own.status, 409, "an Administrator changes their own password themselves: {own:?}");

    // Disabled: every session ends, and enabling again does not revive them.
    let e = Browser::try_login(&api, "tech", &one_time).unwrap();
    let disabled =
        admin.send(&api, "PATCH", &format!("/api/v1/users/{tech}"), Some(json!({"disabled": true})));
    assert_eq!(disabled.status, 200, "{disabled:?}");
    assert_eq!(e.get(&api, "/api/v1/me").status, 401);
    let enabled =
        admin.send(&api, "PATCH", &format!("/api/v1/users/{tech}"), Some(json!({"disabled": false})));
    assert_eq!(enabled.status, 200);
    assert_eq!(e.get(&api, "/api/v1/me").status, 401);
    assert!(audit_actions(&api, "root", true).contains(&"user.password_reset".to_string()));
}

#[test]
fn pages_need_a_session_and_show_only_what_the_role_may() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    api.user("tech", Role::RemoteConnectUser);
    let anonymous = request(&api, "GET", "/sessions?x=1", &[], None);
    assert_eq!(
        (anonymous.status, anonymous.header("location")),
        (303, Some("/login?next=/sessions%3Fx%3D1"))
    );
    let login = request(&api, "GET", "/login", &[], None);
    assert_eq!(login.status, 200);
    let headers = |a: &Answer, cache: &str| {
        assert_eq!(
            a.header("content-security-policy"),
            Some(ferry_cloud::console::headers::CONTENT_SECURITY_POLICY)
        );
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(a.header("cache-control"), Some(cache));
    };
    headers(&login, "no-store");
    let root = Browser::login(&api, "root");
    let tech = Browser::login(&api, "tech");

    let page = root.get(&api, "/sessions");
    assert_eq!(page.status, 200);
    headers(&page, "no-store");
    for link in
        ["href=\"/gateways\"", "href=\"/users\"", "href=\"/audit\"", "href=\"/relays\"", "id=\"prepare\""]
    {
        assert!(page.text.contains(link), "an Administrator's page lacks {link}");
    }
    assert!(page.text.contains(&format!("content=\"{}\"", root.csrf)), "the page carries the CSRF token");
    let page = tech.get(&api, "/sessions");
    assert_eq!(page.status, 200);
    assert!(page.text.contains("My sessions"));
    for hidden in
        ["href=\"/gateways\"", "href=\"/users\"", "href=\"/audit\"", "href=\"/relays\"", "id=\"prepare\""]
    {
        assert!(!page.text.contains(hidden), "a technician's page shows {hidden}");
    }
    for path in ["/users", "/gateways", "/audit", "/relays"] {
        let refused = tech.get(&api, path);
        assert_eq!(refused.status, 403, "{path}");
        headers(&refused, "no-store");
        assert!(refused.text.contains("Not allowed"), "{path}");
        assert!(!refused.text.contains("data-page=\"users\""), "a refusal runs no page script");
    }
    let refusals = audit_actions(&api, "tech", false);
    for what in ["console.users", "console.gateways", "console.audit", "console.relays"] {
        assert!(refusals.contains(&what.to_string()), "{what} not audited: {refusals:?}");
    }
    // Every page: the script and style by hashed name, nothing inline.
    for path in ["/sessions", "/sessions/1", "/gateways", "/users", "/audit", "/relays", "/account"] {
        let page = root.get(&api, path);
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.text.contains("<script>") && !page.text.contains("style="), "{path} has inline code");
        let script = page.text.split("<script src=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        let asset = request(&api, "GET", &script, &[], None);
        assert_eq!(asset.status, 200, "{script}");
        assert_eq!(asset.header("content-type"), Some("text/javascript; charset=utf-8"));
        headers(&asset, "public, max-age=31536000, immutable");
        let etag = asset.header("etag").unwrap().to_string();
        assert_eq!(request(&api, "GET", &script, &[("If-None-Match", &etag)], None).status, 304);
    }
    assert_eq!(request(&api, "GET", "/static/console.0000000000000000.js", &[], None).status, 404);
    // A logged-in visitor of the login page goes on; only to this site.
    let next = root.get(&api, "/login?next=/audit");
    assert_eq!((next.status, next.header("location")), (303, Some("/audit")));
    let away = root.get(&api, "/login?next=//evil.example/");
    assert_eq!((away.status, away.header("location")), (303, Some("/")));
}

/// The status of an event stream request (the stream is dropped at once).
fn events_status(api: &Api, cookie: &str) -> u16 {
    let request = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{}/api/v1/events", api.base))
        .header("Cookie", cookie)
        .body(Vec::new())
        .unwrap();
    agent().run(request).unwrap().status().as_u16()
}

/// Reads a server-sent event stream with the given headers: each `change`
/// or `resync` event as `Some((event, data))`, then `None` at its end.
fn events(api: &Api, headers: &[(&str, &str)]) -> mpsc::Receiver<Option<(String, Value)>> {
    let mut builder = ureq::http::Request::builder().method("GET").uri(format!("{}/api/v1/events", api.base));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = agent().run(builder.body(Vec::new()).unwrap()).unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
    let reader = BufReader::new(response.into_body().into_reader());
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut event, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(part) = line.strip_prefix("data:") {
                data.push_str(part.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if sender.send(Some((std::mem::take(&mut event), value))).is_err() {
                    return;
                }
                data.clear();
            }
        }
        let _ = sender.send(None);
    });
    receiver
}

fn next_change(feed: &mpsc::Receiver<Option<(String, Value)>>) -> Option<(String, Value)> {
    feed.recv_timeout(PATIENCE).expect("an event or the stream's end in time")
}

#[test]
fn the_change_feed_tells_each_caller_only_what_they_may_see() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let t1 = api.user("tech1", Role::RemoteConnectUser);
    let t2 = api.user("tech2", Role::RemoteConnectUser);
    let (admin, _) = api.login("root");
    let (gateway, key) = TestGateway::create_and_enrol(&api, &admin, "press-4", 9);
    let session = |name: &str, user: u64| {
        let body = json!({"name": name, "gateway_id": gateway, "targets": ["plc"], "released_to": [user],
            "max_duration_s": 3600});
        let created = api.post("/api/v1/sessions", &admin, body);
        assert_eq!(created.status, 201, "{created:?}");
        created.body["id"].as_u64().unwrap()
    };
    let own = session("own", t1);
    let other = session("other", t2);
    let bearer = format!("Bearer {admin}");
    let admin_feed = events(&api, &[("Authorization", &bearer)]);
    let tech = Browser::login(&api, "tech1");
    let tech_feed = events(&api, &[("Cookie", &tech.cookie)]);
    let touch = |id: u64, seconds: u64| {
        let changed = api.call(
            "PATCH",
            &format!("/api/v1/sessions/{id}"),
            Some(&admin),
            Some(json!({"max_duration_s": seconds})),
        );
        assert_eq!(changed.status, 200, "{changed:?}");
    };
    touch(other, 120);
    let gw = api.runtime().block_on(TestGateway::connect(api.addr, gateway, &key, true)).unwrap();
    touch(own, 180);
    let change = |kind: &str, id: u64| Some(("change".to_string(), json!({"kind": kind, "id": id})));
    // The admin hears of everything, in order (the gateway may report
    // more than once as it connects).
    let mut heard = Vec::new();
    while heard.last() != Some(&change("session", own)) {
        let next = next_change(&admin_feed);
        if heard.last() != Some(&next) {
            heard.push(next);
        }
    }
    assert_eq!(heard, [change("session", other), change("gateway", gateway), change("session", own)]);
    // The technician heard of their own session only: not of the other
    // session, nor of the gateway, which came before it.
    assert_eq!(next_change(&tech_feed), change("session", own));

    // A logout ends the stream: the next change it would have told is not sent.
    assert_eq!(tech.send(&api, "DELETE", "/api/v1/auth/session", None).status, 204);
    touch(own, 240);
    assert_eq!(next_change(&tech_feed), None, "the stream ended at the logout");
    assert_eq!(next_change(&admin_feed), change("session", own));
    drop(gw);
    // Without a credential there is no stream.
    let refused = request(&api, "GET", "/api/v1/events", &[], None);
    assert_eq!(refused.status, 401);
}

#[test]
fn peer_reports_show_each_clients_path_and_traffic_live() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let tech_id = api.user("tech", Role::RemoteConnectUser);
    let (admin, _) = api.login("root");
    let (tech, _) = api.login("tech");
    let (gateway, key) = TestGateway::create_and_enrol(&api, &admin, "press-4", 11);
    let mut gw = api.runtime().block_on(TestGateway::connect(api.addr, gateway, &key, true)).unwrap();
    let relay = api.post("/api/v1/relays", &admin, json!({"name": "relay-1"}));
    let relay_id = relay.body["relay"]["id"].as_u64().unwrap();
    let _relay = api
        .runtime()
        .block_on(TestRelay::start(api.addr, relay_id, relay.body["token"].as_str().unwrap()))
        .unwrap();
    let created = api.post(
        "/api/v1/sessions",
        &admin,
        json!({"name": "s", "gateway_id": gateway, "targets": ["plc"], "released_to": [tech_id], "max_duration_s": 3600}),
    );
    let id = created.body["id"].as_u64().unwrap();
    assert_eq!(api.post(&format!("/api/v1/sessions/{id}/start"), &tech, json!({})).status, 200);
    let key_of = |n: u8| WgKey([n; 32]);
    let issued = api.post(
        &format!("/api/v1/sessions/{id}/config"),
        &tech,
        json!({"public_key": key_of(1).to_string(), "candidates": ["198.51.100.20:51820"]}),
    );
    assert_eq!(issued.status, 200, "{issued:?}");
    let relay_endpoint: std::net::SocketAddr = {
        let session = api.get(&format!("/api/v1/sessions/{id}"), &admin);
        session.body["configs"][0]["relay"]["gateway_endpoint"].as_str().unwrap().parse().unwrap()
    };
    let bearer = format!("Bearer {admin}");
    let feed = events(&api, &[("Authorization", &bearer)]);
    let mut peer = |endpoint: Option<std::net::SocketAddr>, path: Option<PathKind>| {
        api.runtime().block_on(gw.event(GatewayEvent::PeerConnected {
            session_id: SessionId(id),
            public_key: key_of(1),
            endpoint,
            path,
        }))
    };
    let report = || api.get(&format!("/api/v1/sessions/{id}"), &admin).body["configs"][0]["peer"].clone();
    let expect_session_event = |feed: &mpsc::Receiver<Option<(String, Value)>>| loop {
        let (_, change) = next_change(feed).unwrap();
        if change == json!({"kind": "session", "id": id}) {
            return;
        }
    };
    let direct: std::net::SocketAddr = "198.51.100.20:51820".parse().unwrap();
    for (endpoint, reported, path) in [
        // A gateway that does not say which path: the endpoint tells.
        (relay_endpoint, None, "relay"),
        (direct, None, "direct"),
        ("127.0.0.1:40123".parse().unwrap(), None, "websocket"),
        // One that says: a peer on the relay's WebSocket is reported at the
        // allocation's address, which alone would read as the UDP relay.
        (relay_endpoint, Some(PathKind::WebsocketRelay), "websocket"),
        (relay_endpoint, Some(PathKind::UdpRelay), "relay"),
    ] {
        peer(Some(endpoint), reported);
        expect_session_event(&feed);
        let now = report();
        assert_eq!(now["connected"], true, "{now}");
        assert_eq!(now["path"], path, "{endpoint} {reported:?}: {now}");
        assert_eq!(now["endpoint"], endpoint.to_string());
    }
    // The path changes while connected: the report follows, and the audit
    // log has it.
    api.runtime().block_on(gw.event(GatewayEvent::PeerPath {
        session_id: SessionId(id),
        public_key: key_of(1),
        path: PathKind::Direct,
        endpoint: Some(direct),
    }));
    expect_session_event(&feed);
    let now = report();
    assert_eq!((now["connected"].clone(), now["path"].clone()), (json!(true), json!("direct")), "{now}");
    assert_eq!(now["endpoint"], direct.to_string());
    let audit = api.get(&format!("/api/v1/audit?session={id}&action=session.peer_path"), &admin).body;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert!(
        entries[0]["detail"].as_str().unwrap().contains("now via direct from 198.51.100.20:51820"),
        "{audit}"
    );
    api.runtime().block_on(
        gw.event(GatewayEvent::PeerDisconnected { session_id: SessionId(id), public_key: key_of(1) }),
    );
    expect_session_event(&feed);
    assert_eq!(report()["connected"], false);
    // Traffic reports reach the feed too.
    api.runtime().block_on(gw.event(GatewayEvent::Bytes {
        session_id: SessionId(id),
        target: Some("plc".into()),
        rx: 1000,
        tx: 2000,
    }));
    expect_session_event(&feed);
    let session = api.get(&format!("/api/v1/sessions/{id}"), &admin).body;
    assert_eq!((session["bytes_rx"].as_u64(), session["bytes_tx"].as_u64()), (Some(1000), Some(2000)));
    // A report of a key the session does not know changes nothing.
    api.runtime().block_on(gw.event(GatewayEvent::PeerConnected {
        session_id: SessionId(id),
        public_key: key_of(2),
        endpoint: Some(relay_endpoint),
        path: Some(PathKind::UdpRelay),
    }));
    assert_eq!(report()["connected"], false, "{}", report());
}

#[test]
fn releasable_users_are_for_those_who_prepare_sessions() {
    let api = Api::start();
    api.user("rcadmin", Role::RemoteConnectAdministrator);
    let disabled = api.user("gone", Role::RemoteConnectUser);
    api.user("tech", Role::RemoteConnectUser);
    ferry_cloud::users::modify(&api.store, disabled, |u| {
        u.disabled = true;
        Ok::<_, ferry_cloud::users::UserError>(())
    })
    .unwrap();
    let (rc, _) = api.login("rcadmin");
    let (tech, _) = api.login("tech");
    let list = api.get("/api/v1/users/releasable", &rc);
    assert_eq!(list.status, 200, "{list:?}");
    let names: Vec<&str> =
        list.body.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rcadmin", "tech"]);
    assert_eq!(api.get("/api/v1/users", &rc).status, 403, "the full list stays the Administrator's");
    assert_eq!(api.get("/api/v1/users/releasable", &tech).status, 403);
}
