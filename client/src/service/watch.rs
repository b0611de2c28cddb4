//! The service's watch on a tunnel's configuration at the cloud: the
//! configuration's own event stream (`GET /api/v1/configs/{id}/events`,
//! authenticated by its watch token only), so that the tunnel goes down as
//! soon as the session ends, the configuration is revoked or expires, with
//! the reason. A cloud that cannot be reached leaves the tunnel up: the
//! watch tries again, slower and slower, and the local expiry timer still
//! holds.

use std::time::Duration;

use ferry_api::ConfigStatus;
use ferry_connect::backoff::Backoff;
use ferry_connect::http::{Client, Method, Request, Response};
use rand_core::OsRng;
use tokio::{sync::mpsc, task::JoinHandle};

use super::Event;
use crate::{
    cloud::{self, sse::SseParser},
    protocol::CloudLink,
};

/// The cloud sends a keep-alive every 15 s; a stream quiet for longer than
/// this is taken for a dead connection.
const QUIET_LIMIT: Duration = Duration::from_secs(45);
/// How long `ferry disconnect` waits for the cloud to confirm a revocation.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a watch learned.
#[derive(Debug)]
pub enum News {
    /// The event stream is open.
    Connected,
    /// The cloud cannot be reached now; the watch tries again.
    Lost(String),
    /// The configuration's status (the last one the watch sends when final).
    Status(Box<ConfigStatus>),
    /// The cloud refuses the watch token: the configuration is gone there.
    Refused(String),
}

/// Why one stream ended.
enum Stop {
    Done,
    Lost(String),
}

/// Watches configuration `config_id` for tunnel `tunnel` until it is final,
/// the cloud refuses the token, or the task is aborted.
pub fn spawn(
    link: &CloudLink,
    config_id: u64,
    token: String,
    tunnel: u64,
    events: mpsc::Sender<Event>,
) -> Result<JoinHandle<()>, String> {
    let transport = cloud::transport(&link.url, link.pin.as_deref()).map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        let path = format!("/api/v1/configs/{config_id}/events");
        let tell = |news| {
            let events = events.clone();
            async move { events.send(Event::Watch { tunnel, news }).await.is_ok() }
        };
        let mut backoff = Backoff::new();
        loop {
            match follow(&transport, &path, &token, &tell, &mut backoff).await {
                Stop::Done => return,
                Stop::Lost(why) => {
                    tracing::info!(config = config_id, why, "the configuration's watch lost the cloud");
                    if !tell(News::Lost(why)).await {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay(&mut OsRng)).await;
                }
            }
        }
    }))
}

async fn follow<F, Fut>(transport: &Client, path: &str, token: &str, tell: &F, backoff: &mut Backoff) -> Stop
where
    F: Fn(News) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut opened = match transport.open(Request::get(path).bearer(Some(token))).await {
        Ok(opened) => opened,
        Err(e) => return Stop::Lost(e.to_string()),
    };
    match opened.status {
        200 => {}
        401 | 404 => {
            let status = opened.status;
            let detail = match opened.rest(16 * 1024).await {
                Ok(body) => cloud::problem(&Response { status, headers: Default::default(), body }).detail,
                Err(e) => e.to_string(),
            };
            tell(News::Refused(detail)).await;
            return Stop::Done;
        }
        other => return Stop::Lost(format!("the cloud answered HTTP {other}")),
    }
    if !tell(News::Connected).await {
        return Stop::Done;
    }
    backoff.reset();
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(QUIET_LIMIT, opened.next_chunk()).await {
            Err(_) => return Stop::Lost(format!("nothing from the cloud for {} s", QUIET_LIMIT.as_secs())),
            Ok(None) => return Stop::Lost("the cloud closed the event stream".into()),
            Ok(Some(Err(e))) => return Stop::Lost(e.to_string()),
            Ok(Some(Ok(chunk))) => chunk,
        };
        for event in parser.feed(&chunk) {
            if event.event != "status" {
                continue;
            }
            let status: ConfigStatus = match serde_json::from_str(&event.data) {
                Ok(status) => status,
                Err(e) => {
                    tracing::debug!(error = %e, "a status event this client does not read");
                    continue;
                }
            };
            let last = status.state.is_final();
            if !tell(News::Status(Box::new(status))).await || last {
                return Stop::Done;
            }
        }
    }
}

/// `DELETE /api/v1/configs/{id}`: the gateway drops the peer and the relay
/// its allocation at once. Already revoked, ended or expired counts as done.
pub async fn revoke(link: &CloudLink, config_id: u64, token: &str) -> Result<(), String> {
    let transport = cloud::transport(&link.url, link.pin.as_deref()).map_err(|e| e.to_string())?;
    let path = format!("/api/v1/configs/{config_id}");
    let sent = tokio::time::timeout(
        REVOKE_TIMEOUT,
        transport.send(Request::new(Method::DELETE, &path).bearer(Some(token))),
    );
    match sent.await {
        Err(_) => Err(format!("no answer within {} s", REVOKE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(answer)) if matches!(answer.status, 204 | 401 | 409) => Ok(()),
        Ok(Ok(answer)) => Err(cloud::problem(&answer).detail),
    }
}
