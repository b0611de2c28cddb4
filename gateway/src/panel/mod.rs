//! The customer's local panel: a small HTTPS site on the gateway's LAN
//! address (or loopback), never on the uplink, for the plant operators. It
//! shows and flips the remote-maintenance switch, approves or denies the
//! sessions that wait, shows the live ones (technician, path, traffic) and
//! ends one, and runs `ferry-gateway diagnose` for the site's IT.
//!
//! Every action goes to the daemon through the same request path as the
//! local socket's commands (`local::server::ask`), so the panel and the
//! command line change the same state and send the same audit events.
//! Logins and logouts are audited too (`panel_login`, `panel_logout`).
//!
//! Pages are rendered here (askama) and work without script; our own small
//! script swaps in the live part as the daemon's state changes (server-sent
//! events, `/events`). Security as for the cloud's console: a password with
//! slowdown and lockout ([`auth`]), an HttpOnly, Secure, SameSite=Strict
//! session cookie, a CSRF token and a same-origin check on every
//! state-changing request, a Content-Security-Policy without inline script,
//! no framing, and a logout that ends the session in the daemon.

mod assets;
pub mod auth;
pub mod listen;
mod live;
mod pages;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use axum::{
    Router, middleware,
    routing::{get, post},
};
use ferry_control::gateway::GatewayEvent;
pub use ferry_daemon::login::lockout::Lockout;
use tokio::sync::{Notify, mpsc, watch};

use self::{auth::Auth, live::Daemon};
use crate::{cmd::Paths, local::server::Call, state::Store};

/// The common name of the panel's self-signed certificate.
const CERT_NAME: &str = "ferry-gateway panel";

/// Where the panel's TLS pair lives: `<data dir>/panel/tls/`.
pub fn tls_dir(data_dir: &std::path::Path) -> PathBuf {
    auth::panel_dir(data_dir).join("tls")
}

/// What the daemon gives the panel.
pub struct Setup {
    pub listen: SocketAddr,
    /// The interface the socket is bound to (the LAN's, or `lo`).
    pub device: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// The gateway's name, as enrolled.
    pub gateway_name: String,
    /// The daemon's request path (the local socket's).
    pub requests: mpsc::Sender<Call>,
    /// The audit queue and the cloud channel's wake-up.
    pub store: Store,
    pub events: Arc<Notify>,
    /// The slowdown and lockout after wrong passwords (the cloud's).
    pub lockout: Lockout,
}

/// The panel's shared state.
pub struct Panel {
    daemon: Daemon,
    auth: Auth,
    store: Store,
    events: Arc<Notify>,
    latest: watch::Sender<Option<live::Snapshot>>,
    paths: Paths,
    gateway_name: String,
    /// When a refused login attempt was last audited: refusals during a
    /// wait or a lock are audited at most once a minute.
    last_refusal_audit_ms: parking_lot::Mutex<u64>,
}

impl Panel {
    fn record(&self, event: GatewayEvent) {
        match self.store.enqueue(event, crate::cmd::now_ms()) {
            Ok(_) => self.events.notify_one(),
            Err(e) => tracing::error!(error = %e, "could not queue an audit event of the panel"),
        }
    }
}

/// A running panel.
pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub task: tokio::task::JoinHandle<()>,
}

/// Makes the panel's certificate on first start, binds the listener (bound
/// to `setup.device`) and serves until the task is aborted.
pub async fn start(setup: Setup) -> Result<Running> {
    let dir = tls_dir(&setup.data_dir);
    let names = vec![setup.listen.ip().to_string()];
    let (cert, key) = ferry_daemon::tls::ensure_self_signed(&dir, CERT_NAME, &names)
        .context("making the panel's certificate")?;
    let fingerprint =
        ferry_daemon::tls::fingerprint_file(&cert).context("reading the panel's certificate")?;
    let tls = ferry_daemon::tls::server_config(&cert, &key, &[ferry_daemon::tls::ALPN_HTTP11])
        .context("loading the panel's certificate")?;
    let listener = listen::bind(setup.listen, &setup.device)
        .with_context(|| format!("binding the panel on {} (interface {})", setup.listen, setup.device))?;
    let addr = listener.local_addr().context("the panel's address")?;
    let (latest, _) = watch::channel(None);
    let daemon = Daemon::new(setup.requests);
    let panel = Arc::new(Panel {
        daemon: daemon.clone(),
        auth: Auth::new(&setup.data_dir, setup.lockout),
        store: setup.store,
        events: setup.events,
        latest: latest.clone(),
        paths: Paths { data_dir: setup.data_dir, socket: setup.socket },
        gateway_name: setup.gateway_name,
        last_refusal_audit_ms: parking_lot::Mutex::new(0),
    });
    let app = router(panel.clone());
    let task = tokio::spawn(async move {
        let poller = tokio::spawn(live::poll(daemon, latest));
        if let Err(e) =
            ferry_daemon::web::server::serve(listener, app, Some(tls), std::future::pending()).await
        {
            tracing::error!(error = %e, "the panel stopped");
        }
        poller.abort();
    });
    if !panel.auth.has_password() {
        tracing::warn!("the panel has no password yet: set one with `ferry-gateway panel password`");
    }
    Ok(Running { addr, fingerprint, task })
}

fn router(panel: Arc<Panel>) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/switch", post(pages::switch))
        .route("/sessions/{id}/{action}", post(pages::decide))
        .route("/diagnostics", get(pages::diagnostics))
        .route("/diagnostics.txt", get(pages::diagnostics_text))
        .route("/events", get(pages::events))
        .route("/static/{name}", get(assets::serve))
        .with_state(panel)
        .layer(middleware::from_fn(ferry_daemon::web::headers::secure))
}

/// How long the diagnostics may take before the page gives up on them.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests;
