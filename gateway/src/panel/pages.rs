//! The panel's pages and actions. Every page is rendered here and works
//! without script; a state-changing request is a form post that carries the
//! session's CSRF token, and answers with a redirect (or the page again with
//! the daemon's refusal).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Form,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use ferry_control::gateway::{GatewayEvent, PanelLoginOutcome};
use serde::Deserialize;
use tokio::sync::watch;

use super::{
    DIAGNOSE_TIMEOUT, Panel,
    auth::{self, Found, Login},
    live::Snapshot,
};
use crate::{
    cmd::{self, diagnose},
    local::{PeerReport, Request, Response as Answer, SessionReport},
};

// ---------------------------------------------------------------- views

/// What every page shows around its own part.
pub struct Shell {
    pub title: &'static str,
    /// The page's name (`data-page`, the current navigation entry).
    pub page: &'static str,
    pub gateway: String,
    pub csrf: String,
    pub logged_in: bool,
    pub script: &'static str,
    pub style: &'static str,
}

fn shell(panel: &Panel, page: &'static str, title: &'static str, csrf: Option<&Found>) -> Shell {
    let assets = super::assets::assets();
    Shell {
        title,
        page,
        gateway: panel.gateway_name.clone(),
        csrf: csrf.map(|f| f.csrf.clone()).unwrap_or_default(),
        logged_in: csrf.is_some(),
        script: &assets.script.path,
        style: &assets.style.path,
    }
}

/// The live part of the main page: the switch and the sessions.
pub struct LiveView {
    pub csrf: String,
    pub now_ms: u64,
    pub switch_on: bool,
    pub waiting: Vec<SessionView>,
    pub active: Vec<SessionView>,
    /// Sessions the cloud still lists that do not run here: denied, ended,
    /// expired, or stopped by the switch.
    pub other: Vec<SessionView>,
}

pub struct SessionView {
    pub id: u64,
    pub name: String,
    pub started_by: String,
    /// How long it may run once approved.
    pub duration: String,
    pub expires_ms: u64,
    /// The time left, as rendered (the script counts it down).
    pub left: String,
    pub state: String,
    pub targets: Vec<TargetView>,
    pub peers: Vec<PeerView>,
    pub to_machines: String,
    pub from_machines: String,
}

pub struct TargetView {
    pub name: String,
    pub address: String,
    pub what: String,
}

pub struct PeerView {
    pub user: String,
    pub connected: bool,
    pub path: String,
    /// `direct`, `relay`, `websocket` or `none`, for the badge's colour.
    pub path_class: String,
    pub endpoint: String,
    pub received: String,
    pub sent: String,
}

fn left(expires_ms: u64, now_ms: u64) -> String {
    if expires_ms <= now_ms {
        return "0s".into();
    }
    cmd::human_duration(Duration::from_millis(expires_ms - now_ms))
}

/// A session's time left: the daemon's count by the cloud's clock, else by
/// this machine's wall clock.
fn session_left(s: &SessionReport, now_ms: u64) -> String {
    match s.left_ms {
        Some(ms) => left(ms, 0),
        None => left(s.expires_ms, now_ms),
    }
}

/// A WireGuard session key older than this means the peer is gone.
const CONNECTED_WITHIN_S: u64 = 180;

fn peer_view(peer: &PeerReport) -> PeerView {
    let connected = peer.last_handshake_s_ago.is_some_and(|s| s < CONNECTED_WITHIN_S);
    let (path, class) = match (connected, peer.transport.as_str()) {
        (false, _) => ("Not connected", "none"),
        (true, "direct") => ("Direct", "direct"),
        (true, "udp-relay") => ("Relay (UDP)", "relay"),
        (true, "websocket-relay") => ("Relay (WebSocket)", "websocket"),
        (true, _) => ("Connecting", "none"),
    };
    PeerView {
        user: peer.user.clone(),
        connected,
        path: path.to_string(),
        path_class: class.to_string(),
        endpoint: peer.endpoint.clone().unwrap_or_default(),
        received: cmd::human_bytes(peer.rx_bytes),
        sent: cmd::human_bytes(peer.tx_bytes),
    }
}

fn session_view(s: &SessionReport, now_ms: u64) -> SessionView {
    let to: u64 = s.targets.iter().map(|t| t.to_target_bytes).sum();
    let from: u64 = s.targets.iter().map(|t| t.from_target_bytes).sum();
    let state = match s.state.as_str() {
        "denied" => "denied by you",
        "ended" => "ended by you",
        "expired" => "expired",
        "switched_off" => "stopped: remote maintenance is off",
        "clock_unknown" => "stopped until the cloud is reached: the gateway cannot tell the time",
        "waiting_for_approval" => "waiting for your approval",
        "active" => "active",
        other => other,
    };
    SessionView {
        id: s.id,
        name: s.name.clone(),
        started_by: s.started_by.clone().unwrap_or_else(|| "(not known)".into()),
        duration: s
            .max_duration_s
            .map_or_else(|| "(not known)".into(), |d| cmd::human_duration(Duration::from_secs(d))),
        expires_ms: s.expires_ms,
        left: session_left(s, now_ms),
        state: state.to_string(),
        targets: s
            .targets
            .iter()
            .map(|t| TargetView {
                name: t.name.clone(),
                address: t.address.clone(),
                what: if t.protocol == "tcp" || t.protocol == "udp" {
                    format!("{} {}", t.protocol, t.ports)
                } else {
                    t.protocol.clone()
                },
            })
            .collect(),
        peers: s.peers.iter().map(peer_view).collect(),
        to_machines: cmd::human_bytes(to),
        from_machines: cmd::human_bytes(from),
    }
}

fn live_view(snapshot: &Snapshot, found: &Found, now_ms: u64) -> LiveView {
    let mut view = LiveView {
        csrf: found.csrf.clone(),
        now_ms,
        switch_on: snapshot.switch_on,
        waiting: Vec::new(),
        active: Vec::new(),
        other: Vec::new(),
    };
    let mut sessions: Vec<&SessionReport> = snapshot.sessions.iter().collect();
    sessions.sort_by_key(|s| s.id);
    for s in sessions {
        let list = match s.state.as_str() {
            "waiting_for_approval" => &mut view.waiting,
            "active" => &mut view.active,
            _ => &mut view.other,
        };
        list.push(session_view(s, now_ms));
    }
    view
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    shell: Shell,
    problem: Option<String>,
    note: Option<String>,
    no_password: bool,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    shell: Shell,
    live: LiveView,
    problem: Option<String>,
}

#[derive(Template)]
#[template(path = "live.html")]
struct LiveFragment {
    live: LiveView,
}

pub struct CheckView {
    pub status: &'static str,
    pub name: String,
    pub detail: String,
    pub took: String,
}

#[derive(Template)]
#[template(path = "diagnostics.html")]
struct DiagnosticsPage {
    shell: Shell,
    checks: Vec<CheckView>,
    cloud_reachable: bool,
    problem: Option<String>,
}

#[derive(Template)]
#[template(path = "refused.html")]
struct RefusedPage {
    shell: Shell,
    reason: String,
}

fn render(template: &impl Template, status: StatusCode) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a panel page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the gateway's log")
                .into_response()
        }
    }
}

// ------------------------------------------------------ cookies, guards

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(auth::COOKIE)?.strip_prefix('=').map(str::to_string))
}

fn set_cookie(value: &str, clear: bool) -> HeaderValue {
    let end = if clear { "; Max-Age=0" } else { "" };
    let cookie = format!("{}={value}; Path=/; HttpOnly; Secure; SameSite=Strict{end}", auth::COOKIE);
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The session of a page request (a person's: it counts as use).
fn session(panel: &Panel, headers: &HeaderMap) -> Option<Found> {
    panel.auth.session(&cookie_of(headers)?, cmd::monotonic_ms(), true)
}

fn refused(panel: &Panel, remote: SocketAddr, reason: String) -> Response {
    tracing::warn!(%remote, reason, "the panel refused a request");
    let page = RefusedPage { shell: shell(panel, "refused", "Request refused", None), reason };
    render(&page, StatusCode::FORBIDDEN)
}

/// The checks every state-changing request passes: from the panel's own
/// origin, a live session, and that session's CSRF token.
#[allow(clippy::result_large_err, reason = "the error is the answer, built once per refusal")]
fn guard(panel: &Panel, remote: SocketAddr, headers: &HeaderMap, csrf: &str) -> Result<Found, Response> {
    if let Err(reason) = ferry_daemon::web::same_origin(headers) {
        return Err(refused(panel, remote, reason));
    }
    let Some(found) = session(panel, headers) else {
        return Err(Redirect::to("/login?expired=1").into_response());
    };
    if csrf.is_empty() {
        return Err(refused(panel, remote, "the request carries no CSRF token".into()));
    }
    if !found.csrf_matches(csrf) {
        return Err(refused(
            panel,
            remote,
            "the CSRF token does not match this session; reload the page".into(),
        ));
    }
    Ok(found)
}

// --------------------------------------------------------------- pages

#[derive(Deserialize)]
pub struct LoginQuery {
    expired: Option<String>,
}

pub async fn login_page(
    State(panel): State<Arc<Panel>>,
    Query(query): Query<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    if session(&panel, &headers).is_some() {
        return Redirect::to("/").into_response();
    }
    let note = query.expired.map(|_| "Your session ended. Please log in again.".to_string());
    let page = LoginPage {
        shell: shell(&panel, "login", "Log in", None),
        problem: None,
        note,
        no_password: !panel.auth.has_password(),
    };
    render(&page, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    password: String,
}

/// Refusals during a wait or a lock are audited at most this often.
const REFUSAL_AUDIT_EVERY_MS: u64 = 60_000;

pub async fn login(
    State(panel): State<Arc<Panel>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(reason) = ferry_daemon::web::same_origin(&headers) {
        return refused(&panel, remote, reason);
    }
    let now = cmd::now_ms();
    let outcome = match panel.auth.login_at(form.password, now, cmd::monotonic_ms()).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(error = %e, "the panel's login failed");
            let page = LoginPage {
                shell: shell(&panel, "login", "Log in", None),
                problem: Some("The gateway could not check the password; see its log.".into()),
                note: None,
                no_password: false,
            };
            return render(&page, StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let (audit, status, problem) = match &outcome {
        Login::Success { .. } => (PanelLoginOutcome::Success, StatusCode::SEE_OTHER, String::new()),
        Login::BadPassword => {
            (PanelLoginOutcome::BadPassword, StatusCode::UNAUTHORIZED, "Wrong password.".to_string())
        }
        Login::NoPassword => (
            PanelLoginOutcome::BadPassword,
            StatusCode::UNAUTHORIZED,
            "No password is set for this panel yet.".to_string(),
        ),
        Login::Throttled { retry_after_ms } => (
            PanelLoginOutcome::Throttled,
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong passwords: try again in {} s.", retry_after_ms.div_ceil(1000)),
        ),
        Login::Locked { until_ms } => (
            PanelLoginOutcome::Locked,
            StatusCode::TOO_MANY_REQUESTS,
            format!("The panel is locked after repeated wrong passwords, for {} more.", left(*until_ms, now)),
        ),
        Login::LockedNow { until_ms } => (
            PanelLoginOutcome::LockedNow,
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong passwords: the panel is locked for {}.", left(*until_ms, now)),
        ),
    };
    let refusal = matches!(audit, PanelLoginOutcome::Throttled | PanelLoginOutcome::Locked);
    let audited = !refusal || {
        let mut last = panel.last_refusal_audit_ms.lock();
        let due = now >= *last + REFUSAL_AUDIT_EVERY_MS;
        if due {
            *last = now;
        }
        due
    };
    if audited {
        panel.record(GatewayEvent::PanelLogin { outcome: audit, from: remote.ip() });
    }
    tracing::info!(%remote, outcome = audit.label(), "panel login");
    match outcome {
        Login::Success { cookie, .. } => {
            let mut response = Redirect::to("/").into_response();
            response.headers_mut().insert(header::SET_COOKIE, set_cookie(&cookie, false));
            response
        }
        _ => {
            let page = LoginPage {
                shell: shell(&panel, "login", "Log in", None),
                problem: Some(problem),
                note: None,
                no_password: !panel.auth.has_password(),
            };
            render(&page, status)
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(panel): State<Arc<Panel>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(response) = guard(&panel, remote, &headers, &form.csrf) {
        return response;
    }
    if let Some(cookie) = cookie_of(&headers)
        && panel.auth.logout(&cookie)
    {
        panel.record(GatewayEvent::PanelLogout { from: remote.ip() });
        tracing::info!(%remote, "panel logout");
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie("", true));
    response
}

async fn index_with(panel: &Panel, found: Found, problem: Option<String>, status: StatusCode) -> Response {
    let now = cmd::now_ms();
    let snapshot = match panel.daemon.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::error!(error = %e, "the panel could not ask the daemon");
            return (StatusCode::SERVICE_UNAVAILABLE, "the gateway daemon does not answer; see its log")
                .into_response();
        }
    };
    let live = live_view(&snapshot, &found, now);
    let page = IndexPage { shell: shell(panel, "index", "Remote maintenance", Some(&found)), live, problem };
    render(&page, status)
}

pub async fn index(State(panel): State<Arc<Panel>>, headers: HeaderMap) -> Response {
    match session(&panel, &headers) {
        Some(found) => index_with(&panel, found, None, StatusCode::OK).await,
        None => Redirect::to("/login").into_response(),
    }
}

/// After an action: back to the main page, or the page again with the
/// daemon's refusal.
async fn answered(panel: &Panel, found: Found, answer: Answer) -> Response {
    match answer {
        Answer::Error { message } => index_with(panel, found, Some(message), StatusCode::CONFLICT).await,
        _ => Redirect::to("/").into_response(),
    }
}

#[derive(Deserialize)]
pub struct SwitchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    on: String,
}

pub async fn switch(
    State(panel): State<Arc<Panel>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SwitchForm>,
) -> Response {
    let found = match guard(&panel, remote, &headers, &form.csrf) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let on = match form.on.as_str() {
        "on" => true,
        "off" => false,
        other => return refused(&panel, remote, format!("the switch has no position {other:?}")),
    };
    tracing::info!(%remote, on, "the panel switches remote maintenance");
    let answer = panel.daemon.ask(Request::Remote { on }).await;
    answered(&panel, found, answer).await
}

pub async fn decide(
    State(panel): State<Arc<Panel>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((session, action)): Path<(u64, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let request = match action.as_str() {
        "approve" => Request::Approve { session },
        "deny" => Request::Deny { session },
        "end" => Request::End { session },
        _ => return (StatusCode::NOT_FOUND, "no such action").into_response(),
    };
    let found = match guard(&panel, remote, &headers, &form.csrf) {
        Ok(found) => found,
        Err(response) => return response,
    };
    tracing::info!(%remote, session, action, "the panel decides");
    let answer = panel.daemon.ask(request).await;
    answered(&panel, found, answer).await
}

/// Runs `ferry-gateway diagnose`'s checks on a thread of their own (they
/// block, with their own runtime).
async fn run_diagnose(panel: &Panel) -> Result<diagnose::Report, String> {
    let paths = panel.paths.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("panel-diagnose".into())
        .spawn(move || {
            let _ = done.send(diagnose::collect(&paths));
        })
        .map_err(|e| format!("starting the checks: {e}"))?;
    match tokio::time::timeout(DIAGNOSE_TIMEOUT, result).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(_)) => Err("the checks stopped without a report".into()),
        Err(_) => Err(format!("the checks took longer than {} s", DIAGNOSE_TIMEOUT.as_secs())),
    }
}

pub async fn diagnostics(State(panel): State<Arc<Panel>>, headers: HeaderMap) -> Response {
    let Some(found) = session(&panel, &headers) else { return Redirect::to("/login").into_response() };
    let shell = shell(&panel, "diagnostics", "Diagnostics", Some(&found));
    let page = match run_diagnose(&panel).await {
        Ok(report) => DiagnosticsPage {
            shell,
            cloud_reachable: report.cloud_reachable,
            checks: report
                .checks
                .iter()
                .map(|c| CheckView {
                    status: match c.status {
                        diagnose::Status::Ok => "ok",
                        diagnose::Status::Fail => "fail",
                        diagnose::Status::Info => "info",
                        diagnose::Status::Skipped => "skipped",
                    },
                    name: c.name.clone(),
                    detail: c.detail.clone(),
                    took: c.ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
                })
                .collect(),
            problem: None,
        },
        Err(problem) => {
            DiagnosticsPage { shell, checks: Vec::new(), cloud_reachable: false, problem: Some(problem) }
        }
    };
    render(&page, StatusCode::OK)
}

/// The same report as text, as `ferry-gateway diagnose` prints it, to hand
/// to IT.
pub async fn diagnostics_text(State(panel): State<Arc<Panel>>, headers: HeaderMap) -> Response {
    if session(&panel, &headers).is_none() {
        return Redirect::to("/login").into_response();
    }
    match run_diagnose(&panel).await {
        Ok(report) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"ferry-gateway-diagnose.txt\""),
            ],
            report.to_string(),
        )
            .into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, problem).into_response(),
    }
}

// --------------------------------------------------------- live updates

/// How often an idle stream checks that its session still holds.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Server-sent events: `event: live` with the live part of the main page
/// (HTML, rendered here) at once and whenever the switch or a session
/// changes; `event: ended` when the session ended (then the stream ends).
/// Listening does not count as use of the session.
pub async fn events(State(panel): State<Arc<Panel>>, headers: HeaderMap) -> Response {
    let Some(cookie) = cookie_of(&headers) else { return StatusCode::UNAUTHORIZED.into_response() };
    if panel.auth.session(&cookie, cmd::monotonic_ms(), false).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let changes = panel.latest.subscribe();
    let feed = Feed { panel, cookie, changes, first: true, ended: false };
    Sse::new(futures_util::stream::unfold(feed, Feed::next))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

struct Feed {
    panel: Arc<Panel>,
    cookie: String,
    changes: watch::Receiver<Option<Snapshot>>,
    first: bool,
    ended: bool,
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Feed)> {
        if self.ended {
            return None;
        }
        let snapshot = if self.first {
            self.first = false;
            self.panel.daemon.snapshot().await.ok()
        } else {
            loop {
                tokio::select! {
                    changed = self.changes.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        break self.changes.borrow_and_update().clone();
                    }
                    () = tokio::time::sleep(KEEP_ALIVE) => {
                        if self.panel.auth.session(&self.cookie, cmd::monotonic_ms(), false).is_none() {
                            break None;
                        }
                    }
                }
            }
        };
        let found = self.panel.auth.session(&self.cookie, cmd::monotonic_ms(), false);
        let (Some(found), Some(snapshot)) = (found, snapshot) else {
            if self.panel.auth.session(&self.cookie, cmd::monotonic_ms(), false).is_none() {
                self.ended = true;
                return Some((Ok(Event::default().event("ended").data("session ended")), self));
            }
            // The daemon did not answer this time; the next change will do.
            return Some((Ok(Event::default().comment("no answer from the daemon")), self));
        };
        let fragment = LiveFragment { live: live_view(&snapshot, &found, cmd::now_ms()) };
        let html = match fragment.render() {
            Ok(html) => html.replace('\r', ""),
            Err(error) => {
                tracing::error!(%error, "rendering the panel's live part failed");
                return None;
            }
        };
        Some((Ok(Event::default().event("live").data(html)), self))
    }
}
