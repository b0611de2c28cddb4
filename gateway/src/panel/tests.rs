//! The panel over real HTTPS on loopback, with a stand-in for the daemon's
//! request path (it answers what the daemon would and records what it was
//! asked) and a real state store for the audit queue.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use ferry_control::gateway::{GatewayEvent, PanelLoginOutcome};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request as HttpRequest, header};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};

use super::{Lockout, Setup, start};
use crate::{
    local::{PeerReport, Request, Response, SessionReport, TargetReport, server::Call},
    state::Store,
};

const PASSWORD: &str = "plant operator passphrase";

/// What the stand-in daemon was asked, and its switch.
#[derive(Default)]
struct Asked {
    requests: Vec<Request>,
    switch_on: bool,
}

fn sessions() -> Vec<SessionReport> {
    let target = TargetReport {
        name: "plc".into(),
        proxy_address: "100.96.0.100".into(),
        address: "192.168.10.5".into(),
        protocol: "tcp".into(),
        ports: "502".into(),
        to_target_bytes: 4096,
        from_target_bytes: 8192,
    };
    vec![
        SessionReport {
            id: 7,
            name: "Press 4 maintenance".into(),
            started_by: Some("tech1".into()),
            max_duration_s: Some(3600),
            state: "waiting_for_approval".into(),
            expires_ms: u64::MAX / 2,
            left_ms: None,
            approval_required: true,
            peers: vec![],
            targets: vec![target.clone()],
        },
        SessionReport {
            id: 8,
            name: "Mill firmware".into(),
            started_by: Some("tech2".into()),
            max_duration_s: Some(7200),
            state: "active".into(),
            expires_ms: u64::MAX / 2,
            left_ms: None,
            approval_required: false,
            peers: vec![PeerReport {
                user: "tech2".into(),
                public_key: "AAAA".into(),
                tunnel_address: "100.96.0.2".into(),
                endpoint: Some("203.0.113.1:40001".into()),
                transport: "udp-relay".into(),
                path_why: None,
                rtt_us: None,
                last_handshake_s_ago: Some(3),
                rx_bytes: 123_456,
                tx_bytes: 65_432,
            }],
            targets: vec![target],
        },
    ]
}

/// Answers like the daemon: the switch, the sessions, decisions.
fn stand_in(asked: Arc<Mutex<Asked>>) -> mpsc::Sender<Call> {
    let (tx, mut rx) = mpsc::channel::<Call>(4);
    tokio::spawn(async move {
        while let Some((request, answer)) = rx.recv().await {
            let mut asked = asked.lock().unwrap();
            let response = match &request {
                Request::Status => Response::Switch { on: asked.switch_on, changed: false },
                Request::Remote { on } => {
                    let changed = asked.switch_on != *on;
                    asked.switch_on = *on;
                    Response::Switch { on: *on, changed }
                }
                Request::Sessions => Response::Sessions { sessions: sessions() },
                Request::Approve { session: 7 }
                | Request::Deny { session: 7 }
                | Request::End { session: 8 } => Response::Done { message: "done".into() },
                Request::Approve { session } | Request::Deny { session } | Request::End { session } => {
                    Response::error(format!("session {session} is active, not waiting for approval"))
                }
            };
            if !matches!(request, Request::Status | Request::Sessions) {
                asked.requests.push(request);
            }
            let _ = answer.send(response);
        }
    });
    tx
}

struct Running {
    addr: SocketAddr,
    fingerprint: String,
    asked: Arc<Mutex<Asked>>,
    store: Store,
    task: tokio::task::JoinHandle<()>,
    /// The audit queue's own folder: a restarted panel gets a new one while
    /// the old task lets go of its database.
    _state: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn panel(dir: &std::path::Path, lockout: Lockout) -> Option<Running> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: binding to a device needs root on older kernels");
        return None;
    }
    let asked = Arc::new(Mutex::new(Asked::default()));
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path()).unwrap();
    let running = start(Setup {
        listen: "127.0.0.1:0".parse().unwrap(),
        device: "lo".into(),
        data_dir: dir.to_path_buf(),
        socket: dir.join("control.sock"),
        gateway_name: "Press line 4".into(),
        requests: stand_in(asked.clone()),
        store: store.clone(),
        events: Arc::new(Notify::new()),
        lockout,
    })
    .await
    .unwrap();
    Some(Running {
        addr: running.addr,
        fingerprint: running.fingerprint,
        asked,
        store,
        task: running.task,
        _state: state,
    })
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The session cookie's value from a login's `Set-Cookie`.
    fn cookie(&self) -> String {
        let set = self.header("set-cookie");
        set.strip_prefix("ferry_panel=").and_then(|v| v.split(';').next()).unwrap().to_string()
    }

    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        self.body[at..at + 64].to_string()
    }
}

/// One request over TLS that trusts only the panel's certificate.
async fn call(
    panel: &Running,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Answer {
    let pin = ferry_connect::pin::parse_fingerprint(&panel.fingerprint).unwrap();
    let verifier = Arc::new(ferry_connect::pin::PinnedVerifier::new(pin));
    let config = ferry_connect::pin::client_config(verifier, &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(panel.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let mut request =
        HttpRequest::builder().method(method).uri(path).header(header::HOST, panel.addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if form.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let request = request.body(Full::new(Bytes::from(form.unwrap_or_default().to_string()))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (head, body) = response.into_parts();
    let body = if head.headers.get(header::CONTENT_TYPE).is_some_and(|v| v == "text/event-stream") {
        // A stream: its first event is enough.
        let mut body = body;
        let mut text = String::new();
        while !text.contains("\n\n") {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap();
            let Some(Ok(frame)) = frame else { break };
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        text
    } else {
        String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned()
    };
    Answer { status: head.status.as_u16(), headers: head.headers, body }
}

/// The headers a browser sends with a form post from the panel's own page.
fn same_origin(panel: &Running) -> String {
    format!("https://{}", panel.addr)
}

async fn login(panel: &Running, password: &str) -> Answer {
    let origin = same_origin(panel);
    let form = format!("password={}", password.replace(' ', "+"));
    call(panel, "POST", "/login", &[("origin", &origin)], Some(&form)).await
}

/// Logs in; returns the cookie header and the CSRF token.
async fn logged_in(panel: &Running) -> (String, String) {
    let answer = login(panel, PASSWORD).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = format!("ferry_panel={}", answer.cookie());
    let page = call(panel, "GET", "/", &[("cookie", &cookie)], None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    (cookie, page.csrf())
}

fn panel_events(store: &Store) -> Vec<GatewayEvent> {
    store
        .pending(100)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .filter(|e| matches!(e, GatewayEvent::PanelLogin { .. } | GatewayEvent::PanelLogout { .. }))
        .collect()
}

/// A `<script>` with content, or an event handler attribute (`onclick=`).
fn has_inline_script(html: &str) -> bool {
    let handler = html.match_indices(" on").any(|(at, _)| {
        let rest = &html[at + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    });
    handler || html.contains("<script>") || html.split("<script").skip(1).any(|s| !s.contains("></script>"))
}

fn assert_secure_headers(answer: &Answer, what: &str) {
    assert_eq!(
        answer.header("content-security-policy"),
        ferry_daemon::web::headers::CONTENT_SECURITY_POLICY,
        "{what}"
    );
    let csp = answer.header("content-security-policy");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(answer.header("x-frame-options"), "DENY", "{what}");
    assert_eq!(answer.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(answer.header("referrer-policy"), "no-referrer", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_cookie_and_logout_ends_the_session_at_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    super::auth::set_password(dir.path(), PASSWORD).unwrap();
    let Some(panel) = panel(dir.path(), Lockout::default()).await else { return };

    let page = call(&panel, "GET", "/", &[], None).await;
    assert_eq!((page.status, page.header("location")), (303, "/login"), "anonymous: to the login page");
    let page = call(&panel, "GET", "/login", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"password\"") && page.body.contains("Press line 4"), "{}", page.body);
    assert!(!has_inline_script(&page.body), "no inline script: {}", page.body);

    let wrong = login(&panel, "not the password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong password"), "{}", wrong.body);
    assert!(wrong.header("set-cookie").is_empty());

    let answer = login(&panel, PASSWORD).await;
    assert_eq!((answer.status, answer.header("location")), (303, "/"));
    let set = answer.header("set-cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.split("; ").any(|part| part == flag), "{flag} in {set}");
    }
    assert_eq!(answer.cookie().len(), 64);
    let cookie = format!("ferry_panel={}", answer.cookie());
    let page = call(&panel, "GET", "/", &[("cookie", &cookie)], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Remote maintenance is <strong id=\"switch-state\">OFF"), "{}", page.body);
    let csrf = page.csrf();

    let origin = same_origin(&panel);
    let out = call(
        &panel,
        "POST",
        "/logout",
        &[("cookie", &cookie), ("origin", &origin)],
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!((out.status, out.header("location")), (303, "/login"));
    assert!(out.header("set-cookie").contains("Max-Age=0"), "{}", out.header("set-cookie"));
    // The old cookie opens nothing any more: the session ended at the gateway.
    let page = call(&panel, "GET", "/", &[("cookie", &cookie)], None).await;
    assert_eq!((page.status, page.header("location")), (303, "/login"));
    let events = call(&panel, "GET", "/events", &[("cookie", &cookie)], None).await;
    assert_eq!(events.status, 401);

    let from = "127.0.0.1".parse().unwrap();
    assert_eq!(
        panel_events(&panel.store),
        [
            GatewayEvent::PanelLogin { outcome: PanelLoginOutcome::BadPassword, from },
            GatewayEvent::PanelLogin { outcome: PanelLoginOutcome::Success, from },
            GatewayEvent::PanelLogout { from },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    super::auth::set_password(dir.path(), PASSWORD).unwrap();
    let Some(panel) = panel(dir.path(), Lockout::default()).await else { return };
    let (cookie, _) = logged_in(&panel).await;
    for path in ["/login", "/", "/nowhere"] {
        let answer = call(&panel, "GET", path, &[("cookie", &cookie)], None).await;
        assert_secure_headers(&answer, path);
        assert_eq!(answer.header("cache-control"), "no-store", "{path}");
    }
    let page = call(&panel, "GET", "/", &[("cookie", &cookie)], None).await;
    let script =
        page.body.split("<script src=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string();
    let asset = call(&panel, "GET", &script, &[], None).await;
    assert_eq!(asset.status, 200);
    assert_secure_headers(&asset, &script);
    assert!(asset.header("cache-control").contains("immutable"));
    assert!(asset.header("content-type").starts_with("text/javascript"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_requests_need_the_csrf_token_and_the_panels_origin() {
    let dir = tempfile::tempdir().unwrap();
    super::auth::set_password(dir.path(), PASSWORD).unwrap();
    let Some(panel) = panel(dir.path(), Lockout::default()).await else { return };
    let (cookie, csrf) = logged_in(&panel).await;
    let origin = same_origin(&panel);
    let on = |token: &str| format!("csrf={token}&on=on");
    type Forged<'a> = (Vec<(&'a str, &'a str)>, String, &'a str);
    let forged: Vec<Forged> = vec![
        (vec![("cookie", &cookie), ("origin", &origin)], "on=on".into(), "no token"),
        (vec![("cookie", &cookie), ("origin", &origin)], on(&"0".repeat(64)), "a wrong token"),
        (vec![("cookie", &cookie), ("origin", &origin)], on(&csrf[..63]), "a cut token"),
        (vec![("cookie", &cookie), ("origin", "https://attacker.example")], on(&csrf), "another origin"),
        (
            vec![("cookie", &cookie), ("origin", &origin), ("sec-fetch-site", "cross-site")],
            on(&csrf),
            "a cross-site fetch",
        ),
        (vec![("cookie", &cookie)], on(&csrf), "no origin at all"),
    ];
    for (headers, form, what) in &forged {
        let answer = call(&panel, "POST", "/switch", headers, Some(form)).await;
        assert_eq!(answer.status, 403, "{what}: {}", answer.body);
        assert!(answer.body.contains("Request refused"), "{what}");
        assert_secure_headers(&answer, what);
        let answer = call(&panel, "POST", "/sessions/7/approve", headers, Some(form)).await;
        assert_eq!(answer.status, 403, "{what}");
    }
    // Without a session (what a cross-site form gets: no SameSite=Strict cookie).
    let answer = call(&panel, "POST", "/switch", &[("origin", &origin)], Some(&on(&csrf))).await;
    assert_eq!((answer.status, answer.header("location")), (303, "/login?expired=1"));
    // A login posted from another site.
    let answer =
        call(&panel, "POST", "/login", &[("origin", "https://attacker.example")], Some("password=x")).await;
    assert_eq!(answer.status, 403);
    assert!(panel.asked.lock().unwrap().requests.is_empty(), "nothing forged reached the daemon");

    // The real thing goes through, to the daemon's request path.
    let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    let answer = call(&panel, "POST", "/switch", &headers, Some(&on(&csrf))).await;
    assert_eq!((answer.status, answer.header("location")), (303, "/"));
    for (path, status) in [("/sessions/7/approve", 303), ("/sessions/7/deny", 303), ("/sessions/8/end", 303)]
    {
        let answer = call(&panel, "POST", path, &headers, Some(&format!("csrf={csrf}"))).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
    }
    // The daemon's refusal shows on the page.
    let answer = call(&panel, "POST", "/sessions/8/approve", &headers, Some(&format!("csrf={csrf}"))).await;
    assert_eq!(answer.status, 409);
    assert!(answer.body.contains("session 8 is active, not waiting for approval"), "{}", answer.body);
    assert_eq!(
        panel.asked.lock().unwrap().requests,
        [
            Request::Remote { on: true },
            Request::Approve { session: 7 },
            Request::Deny { session: 7 },
            Request::End { session: 8 },
            Request::Approve { session: 8 },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_page_and_its_live_updates_show_the_switch_waiting_and_live_sessions() {
    let dir = tempfile::tempdir().unwrap();
    super::auth::set_password(dir.path(), PASSWORD).unwrap();
    let Some(panel) = panel(dir.path(), Lockout::default()).await else { return };
    let (cookie, csrf) = logged_in(&panel).await;
    let page = call(&panel, "GET", "/", &[("cookie", &cookie)], None).await;
    for expected in [
        "Waiting for your approval",
        "Press 4 maintenance",
        "Asked by</dt><dd class=\"who\">tech1",
        "1h00m once approved",
        "192.168.10.5 · tcp 502",
        "Mill firmware",
        "Relay (UDP)",
        "203.0.113.1:40001",
        "↓ 120.6 KiB · ↑ 63.9 KiB",
        "action=\"/sessions/7/approve\"",
        "action=\"/sessions/8/end\"",
    ] {
        assert!(page.body.contains(expected), "{expected:?} in\n{}", page.body);
    }
    let events = call(&panel, "GET", "/events", &[("cookie", &cookie)], None).await;
    assert_eq!(events.status, 200);
    assert!(events.body.starts_with("event: live\n"), "{}", events.body);
    assert!(events.body.contains("id=\"switch\"") && events.body.contains(&csrf), "{}", events.body);
    assert!(!events.body.contains('\r'));
    assert_eq!(call(&panel, "GET", "/events", &[], None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_survives_a_restart_of_the_panel() {
    let dir = tempfile::tempdir().unwrap();
    super::auth::set_password(dir.path(), PASSWORD).unwrap();
    // The cloud's counts without its waits, so the test needs no clock.
    let lockout = Lockout { base_delay_ms: 0, max_delay_ms: 0, ..Lockout::default() };
    {
        let Some(panel) = panel(dir.path(), lockout).await else { return };
        for _ in 0..9 {
            assert_eq!(login(&panel, "not the password").await.status, 401);
        }
        let locked = login(&panel, "not the password").await;
        assert_eq!(locked.status, 429);
        assert!(locked.body.contains("locked for"), "{}", locked.body);
        let right = login(&panel, PASSWORD).await;
        assert_eq!(right.status, 429, "the right password does not open a locked panel");
        let from = "127.0.0.1".parse().unwrap();
        let events = panel_events(&panel.store);
        assert_eq!(events.len(), 11, "{events:?}");
        assert_eq!(events[9], GatewayEvent::PanelLogin { outcome: PanelLoginOutcome::LockedNow, from });
        assert_eq!(events[10], GatewayEvent::PanelLogin { outcome: PanelLoginOutcome::Locked, from });
        // More refusals in the same minute are not audited again.
        assert_eq!(login(&panel, PASSWORD).await.status, 429);
        assert_eq!(panel_events(&panel.store).len(), 11);
    }
    let Some(panel) = panel(dir.path(), lockout).await else { return };
    assert_eq!(login(&panel, PASSWORD).await.status, 429, "still locked after a restart");
    // Root sets a new password: the lock is lifted.
    super::auth::set_password(dir.path(), PASSWORD).unwrap();
    assert_eq!(login(&panel, PASSWORD).await.status, 303);
}
