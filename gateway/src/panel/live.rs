//! What the panel shows, read from the daemon through the same request path
//! as the local socket, and kept fresh for the open pages' live updates.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::local::{Request, Response, SessionReport, server::Call};

/// How often the daemon is asked while a page listens for updates.
pub const POLL: Duration = Duration::from_secs(1);

/// The switch and the sessions, as the daemon answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub switch_on: bool,
    pub sessions: Vec<SessionReport>,
}

/// The daemon's request path, as the local socket uses it.
#[derive(Clone)]
pub struct Daemon {
    requests: mpsc::Sender<Call>,
}

impl Daemon {
    pub fn new(requests: mpsc::Sender<Call>) -> Daemon {
        Daemon { requests }
    }

    /// One request, one answer (errors as [`Response::Error`]).
    pub async fn ask(&self, request: Request) -> Response {
        crate::local::server::ask(request, &self.requests).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        let switch_on = match self.ask(Request::Status).await {
            Response::Switch { on, .. } => on,
            Response::Error { message } => return Err(message),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        let sessions = match self.ask(Request::Sessions).await {
            Response::Sessions { sessions } => sessions,
            Response::Error { message } => return Err(message),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        Ok(Snapshot { switch_on, sessions })
    }
}

/// Asks the daemon every [`POLL`] while anyone subscribes to `latest`, and
/// publishes what changed. Ends when the daemon stops answering requests.
pub async fn poll(daemon: Daemon, latest: watch::Sender<Option<Snapshot>>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if latest.receiver_count() == 0 {
            continue;
        }
        if daemon.requests.is_closed() {
            return;
        }
        match daemon.snapshot().await {
            Ok(snapshot) => {
                latest.send_if_modified(|old| {
                    let changed = old.as_ref() != Some(&snapshot);
                    *old = Some(snapshot);
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "the panel's live view could not ask the daemon"),
        }
    }
}
