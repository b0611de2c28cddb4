//! The web console, served at `/` beside the API.
//!
//! Each page is an HTML shell rendered here: the navigation and the
//! controls that the caller's role allows, and the console's own script,
//! which reads and changes everything through the JSON API (`/api/v1`) with
//! the console's session cookie. So the console has no path of its own into
//! the store: every read and every change goes through the API's handlers
//! and rights checks, and a control hidden from a role would be refused by
//! the API all the same.

pub mod assets;
/// The security headers, shared with the gateway's local panel.
pub use ferry_daemon::web::headers;

use askama::Template;
use axum::{
    Router,
    extract::{Path, Query, Request, State},
    http::{StatusCode, Uri, header, request::Parts},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Deserialize;

use crate::{
    app::AppState,
    auth::Scope,
    http::extract::Caller,
    rights::{self, Action, Ownership, Role},
};

/// The console's routes (HTML pages and their assets; the API has its own).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/sessions") }))
        .route("/login", get(login))
        .route("/password", get(|s: State<AppState>, r: Request| page(s, r, Kind::Password)))
        .route("/account", get(|s: State<AppState>, r: Request| page(s, r, Kind::Account)))
        .route("/sessions", get(|s: State<AppState>, r: Request| page(s, r, Kind::Sessions)))
        .route("/sessions/{id}", get(session))
        .route("/gateways", get(|s: State<AppState>, r: Request| page(s, r, Kind::Gateways)))
        .route("/users", get(|s: State<AppState>, r: Request| page(s, r, Kind::Users)))
        .route("/audit", get(|s: State<AppState>, r: Request| page(s, r, Kind::Audit)))
        .route("/relays", get(|s: State<AppState>, r: Request| page(s, r, Kind::Relays)))
        .route("/static/{name}", get(assets::serve))
        .with_state(state)
}

/// What the caller's role may do, for showing only the controls that work.
/// The API enforces every one of these again.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rights {
    pub manage_users: bool,
    pub add_gateway: bool,
    pub view_gateways: bool,
    pub create_session: bool,
    pub add_devices: bool,
    pub view_all_sessions: bool,
    pub start_others: bool,
    pub end_others: bool,
    pub read_audit: bool,
    pub manage_relays: bool,
}

impl Rights {
    pub fn of(role: Role) -> Rights {
        let may = |action| rights::allowed(role, action);
        Rights {
            manage_users: may(Action::ManageUsers),
            add_gateway: may(Action::AddGateway),
            view_gateways: may(Action::ViewGateways),
            create_session: may(Action::CreateSession),
            add_devices: may(Action::AddDevicesToSession),
            view_all_sessions: may(Action::ViewSession(Ownership::Others)),
            start_others: may(Action::StartSession(Ownership::Others)),
            end_others: may(Action::EndSession(Ownership::Others)),
            read_audit: may(Action::ReadAudit),
            manage_relays: may(Action::ManageRelays),
        }
    }

    /// The rights as words for the page's `data-may`, which the script reads.
    pub fn words(&self) -> String {
        let all = [
            (self.manage_users, "manage_users"),
            (self.add_gateway, "add_gateway"),
            (self.view_gateways, "view_gateways"),
            (self.create_session, "create_session"),
            (self.add_devices, "add_devices"),
            (self.view_all_sessions, "view_all_sessions"),
            (self.start_others, "start_others"),
            (self.end_others, "end_others"),
            (self.read_audit, "read_audit"),
            (self.manage_relays, "manage_relays"),
        ];
        all.iter().filter(|(yes, _)| *yes).map(|(_, word)| *word).collect::<Vec<_>>().join(" ")
    }
}

pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// What every page shows around its own part.
pub struct Shell {
    pub title: &'static str,
    /// The page's name for the script (`data-page`).
    pub page: &'static str,
    pub user: String,
    pub user_id: u64,
    pub role: &'static str,
    pub csrf: String,
    /// The cloud certificate's fingerprint, for the commands shown.
    pub pin: String,
    pub may: Rights,
    pub may_words: String,
    pub nav: Vec<NavItem>,
    pub script: &'static str,
    pub style: &'static str,
    /// The account must replace its one-time password first.
    pub must_change_password: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Password,
    Account,
    Sessions,
    Session,
    Gateways,
    Users,
    Audit,
    Relays,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::Account => "account",
            Kind::Sessions => "sessions",
            Kind::Session => "session",
            Kind::Gateways => "gateways",
            Kind::Users => "users",
            Kind::Audit => "audit",
            Kind::Relays => "relays",
        }
    }

    /// The right a page needs beyond being logged in, with its scope and
    /// the audit action of a refusal.
    fn needs(self) -> Option<(Action, Scope, &'static str)> {
        match self {
            Kind::Gateways => Some((Action::ViewGateways, Scope::GatewaysRead, "console.gateways")),
            Kind::Users => Some((Action::ManageUsers, Scope::UsersRead, "console.users")),
            Kind::Audit => Some((Action::ReadAudit, Scope::AuditRead, "console.audit")),
            Kind::Relays => Some((Action::ManageRelays, Scope::GatewaysRead, "console.relays")),
            Kind::Password | Kind::Account | Kind::Sessions | Kind::Session => None,
        }
    }
}

fn nav(rights: Rights, current: Kind) -> Vec<NavItem> {
    let sessions = if rights.view_all_sessions { "Sessions" } else { "My sessions" };
    let mut items = vec![(Kind::Sessions, "/sessions", sessions)];
    if rights.view_gateways {
        items.push((Kind::Gateways, "/gateways", "Gateways"));
    }
    if rights.manage_users {
        items.push((Kind::Users, "/users", "Users"));
    }
    if rights.read_audit {
        items.push((Kind::Audit, "/audit", "Audit log"));
    }
    if rights.manage_relays {
        items.push((Kind::Relays, "/relays", "Relays"));
    }
    items
        .into_iter()
        .map(|(kind, href, label)| NavItem {
            href,
            label,
            current: kind == current || (current == Kind::Session && kind == Kind::Sessions),
        })
        .collect()
}

fn shell(state: &AppState, caller: &Caller, kind: Kind, title: &'static str) -> Shell {
    let rights = Rights::of(caller.user.role);
    let assets = assets::assets();
    Shell {
        title,
        page: kind.name(),
        user: caller.user.name.clone(),
        user_id: caller.user.id,
        role: caller.user.role.label(),
        csrf: caller.console_session().map(|f| f.session.csrf_token.clone()).unwrap_or_default(),
        pin: state.tls_pin().unwrap_or_default().to_string(),
        may: rights,
        may_words: rights.words(),
        nav: nav(rights, kind),
        script: &assets.script.path,
        style: &assets.style.path,
        must_change_password: caller.user.must_change_password,
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    script: &'static str,
    style: &'static str,
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    shell: Shell,
    id: u64,
}

#[derive(Template)]
#[template(path = "gateways.html")]
struct GatewaysPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "relays.html")]
struct RelaysPage {
    shell: Shell,
}

#[derive(Template)]
#[template(path = "forbidden.html")]
struct ForbiddenPage {
    shell: Shell,
    reason: String,
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the server's log")
                .into_response()
        }
    }
}

/// Where a visitor who is not logged in goes: the login page, which then
/// brings them back.
fn to_login(uri: &Uri) -> Response {
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    let query: String = next
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Redirect::to(&format!("/login?next={query}")).into_response()
}

/// The caller of a page, or the answer that sends them elsewhere: to the
/// login page, to the password page (one-time password), or a refusal.
fn admit(state: &AppState, parts: &Parts, kind: Kind, title: &'static str) -> Result<Shell, Box<Response>> {
    let caller = Caller::authenticate(parts, state).map_err(|_| Box::new(to_login(&parts.uri)))?;
    if caller.user.must_change_password && kind != Kind::Password {
        return Err(Box::new(Redirect::to("/password").into_response()));
    }
    if !caller.user.must_change_password && kind == Kind::Password {
        return Err(Box::new(Redirect::to("/account").into_response()));
    }
    if let Some((action, scope, what)) = kind.needs()
        && let Err(refused) = caller.authorize(state, action, scope, what, None, None)
    {
        let mut reason = refused.detail;
        if let Some(first) = reason.get(..1) {
            reason = first.to_uppercase() + &reason[1..];
        }
        // No page script runs on a refusal: there is nothing to load.
        let page = ForbiddenPage {
            shell: Shell { page: "forbidden", ..shell(state, &caller, kind, "Not allowed") },
            reason,
        };
        let mut response = render(&page);
        *response.status_mut() = StatusCode::FORBIDDEN;
        return Err(Box::new(response));
    }
    Ok(shell(state, &caller, kind, title))
}

async fn page(State(state): State<AppState>, request: Request, kind: Kind) -> Response {
    let (parts, _) = request.into_parts();
    let title = match kind {
        Kind::Password => "Choose your password",
        Kind::Account => "Your account",
        Kind::Sessions => "Sessions",
        Kind::Session => "Session",
        Kind::Gateways => "Gateways",
        Kind::Users => "Users",
        Kind::Audit => "Audit log",
        Kind::Relays => "Relays",
    };
    let shell = match admit(&state, &parts, kind, title) {
        Ok(shell) => shell,
        Err(response) => return *response,
    };
    match kind {
        Kind::Password => render(&PasswordPage { shell }),
        Kind::Account => render(&AccountPage { shell }),
        Kind::Sessions | Kind::Session => render(&SessionsPage { shell }),
        Kind::Gateways => render(&GatewaysPage { shell }),
        Kind::Users => render(&UsersPage { shell }),
        Kind::Audit => render(&AuditPage { shell }),
        Kind::Relays => render(&RelaysPage { shell }),
    }
}

async fn session(State(state): State<AppState>, Path(id): Path<u64>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    match admit(&state, &parts, Kind::Session, "Session") {
        Ok(shell) => render(&SessionPage { shell, id }),
        Err(response) => *response,
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// The login page; someone logged in already goes on.
async fn login(State(state): State<AppState>, Query(query): Query<LoginQuery>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if parts.headers.contains_key(header::COOKIE)
        && let Ok(caller) = Caller::authenticate(&parts, &state)
        && caller.console_session().is_some()
    {
        // Only a path of this site: never an address elsewhere.
        let next = query.next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'));
        return Redirect::to(next.as_deref().unwrap_or("/")).into_response();
    }
    let assets = assets::assets();
    render(&LoginPage { script: &assets.script.path, style: &assets.style.path })
}
