//! The change feed: server-sent events that name what changed (a session, a
//! gateway, a relay) so that a client (the web console) reads it again, each
//! filtered by what the caller may see. An event carries no state: the
//! client reads that through the API, under the same rights checks.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, extract::Caller, problem::ApiResult};
use crate::{
    auth::Scope,
    hub::Change,
    rights::{Action, Ownership},
    sessions,
};

/// How often an idle stream sends a comment and checks that the caller's
/// credential still holds (a logged-out console session, a disabled user or
/// an expired access token ends the stream).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Session,
    Gateway,
    Relay,
}

/// The data of a `change` event: read `/api/v1/{kind}s/{id}` again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEvent {
    pub kind: ChangeKind,
    pub id: u64,
}

/// Changes as server-sent events: `event: change` with a ChangeEvent as its
/// data, for each session, gateway or relay the caller may see that changed
/// (a remoteConnect User hears only of the sessions released to them); and
/// `event: resync` when the server dropped some (the client then reads
/// everything again). A keep-alive comment comes every 15 s. The stream
/// ends when the caller's credential stops holding: logout, password
/// change, disabling, a role change, or an access token's expiry.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = ChangeEvent,
            description = "`event: change` frames with a ChangeEvent as data; `event: resync` frames"),
        (status = 401, body = super::Problem)))]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let feed = Feed { changes: state.hub.subscribe(), closing: state.hub.closing(), state, caller };
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

struct Feed {
    state: AppState,
    caller: Caller,
    changes: broadcast::Receiver<Change>,
    closing: watch::Receiver<bool>,
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Feed)> {
        loop {
            let change = tokio::select! {
                _ = self.closing.wait_for(|closing| *closing) => return None,
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    if !self.caller.still_valid(&self.state) {
                        return None;
                    }
                    continue;
                }
                change = self.changes.recv() => change,
            };
            let event = match change {
                Ok(change) => match self.visible(change) {
                    Some(event) => {
                        let data = String::from_utf8_lossy(&crate::store::to_json(&event)).into_owned();
                        Event::default().event("change").data(data)
                    }
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if !self.caller.still_valid(&self.state) {
                return None;
            }
            return Some((Ok(event), self));
        }
    }

    /// The event for `change`, if the caller may see what changed.
    fn visible(&self, change: Change) -> Option<ChangeEvent> {
        let caller = &self.caller;
        let (kind, id, allowed) = match change {
            Change::Session(id) => {
                let all = caller.may(Action::ViewSession(Ownership::Others), Scope::SessionsRead);
                let own = || {
                    caller.may(Action::ViewSession(Ownership::Own), Scope::SessionsRead)
                        && sessions::get(&self.state.store, id)
                            .ok()
                            .flatten()
                            .is_some_and(|s| s.released_to_user(caller.user.id))
                };
                (ChangeKind::Session, id, all || own())
            }
            Change::Gateway(id) => {
                (ChangeKind::Gateway, id, caller.may(Action::ViewGateways, Scope::GatewaysRead))
            }
            Change::Relay(id) => {
                (ChangeKind::Relay, id, caller.may(Action::ManageRelays, Scope::GatewaysRead))
            }
        };
        allowed.then_some(ChangeEvent { kind, id })
    }
}
