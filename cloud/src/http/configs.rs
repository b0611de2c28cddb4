//! A client's own view of its issued configuration, authenticated by the
//! configuration's watch token (`Authorization: Bearer <watch_token>`), not
//! by a user: the technician's privileged client service holds only that
//! token, never the user's login. A user's token gives no access here, and a
//! watch token none anywhere else (see `crate::configs` for how long it
//! works). Also the STUN servers, for any logged-in user.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{StatusCode, header, request::Parts},
    response::sse::{Event, KeepAlive, Sse},
};
use ferry_api::{CandidatesUpdate, ConfigState, ConfigStatus, StunServers, parse_candidates};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::{Body, Caller, Validate, source},
    problem::{ApiError, ApiResult},
};
use crate::{
    app::Actor,
    audit,
    configs::{self, ConfigRecord, GatewayNow},
    gateways,
    hub::Change,
    sessions::{self, State as SessionState},
};

/// How often an idle event stream sends a comment, so that proxies and the
/// client see the connection alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Longest bearer accepted: a watch token is 64 hex digits.
const MAX_TOKEN_LEN: usize = 256;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status, revoke))
        .routes(routes!(events))
        .routes(routes!(set_candidates))
        .routes(routes!(stun))
}

/// The holder of a configuration's watch token.
pub struct Holder {
    pub record: ConfigRecord,
    pub source: Option<String>,
}

impl Holder {
    /// The configuration's user, for the audit log.
    fn actor(&self) -> Actor {
        // A configuration's own token, not a person's credential: nothing
        // of the user's record was read for it.
        Actor { name: self.record.user.clone(), source: self.source.clone(), user: None }
    }
}

impl FromRequestParts<AppState> for Holder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let source = source(parts);
        let Path(config_id) = Path::<u64>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("the configuration id must be a number"))?;
        let record = configs::get(&state.store, config_id)?;
        let refuse = |detail: String| {
            state.audit(audit::Event {
                actor: "anonymous".into(),
                action: "config.token".into(),
                allowed: false,
                source: source.clone(),
                session: record.as_ref().map(|r| r.session_id.to_string()),
                gateway: record.as_ref().map(|r| r.gateway_id.to_string()),
                detail: Some(detail.clone()),
            });
            ApiError::unauthorized(detail)
        };
        let Some(header) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "send `Authorization: Bearer <watch_token>` with the configuration's watch token",
            ));
        };
        let Some(token) = header
            .to_str()
            .ok()
            .filter(|h| h.len() <= MAX_TOKEN_LEN)
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return Err(refuse("the Authorization header is not `Bearer <watch_token>`".into()));
        };
        // One answer for an unknown configuration and a wrong token, so
        // that nobody learns which configurations exist.
        let wrong = || format!("not the watch token of configuration {config_id}");
        let Some(record) = record.clone() else { return Err(refuse(wrong())) };
        if record.watch_hash.is_empty() {
            return Err(refuse(format!("configuration {config_id} was revoked by its client")));
        }
        if !record.matches(token) {
            return Err(refuse(wrong()));
        }
        if state.now_ms() >= record.expires_ms {
            return Err(refuse(format!("configuration {config_id} expired")));
        }
        Ok(Holder { record, source })
    }
}

/// The configuration's status now; None if its record is gone.
fn status_of(state: &AppState, config_id: u64) -> ApiResult<Option<ConfigStatus>> {
    let Some(record) = configs::get(&state.store, config_id)? else { return Ok(None) };
    let session = sessions::get(&state.store, record.session_id)?;
    let gateway = gateways::get(&state.store, record.gateway_id)?;
    let now =
        GatewayNow { gateway: gateway.as_ref(), connected: state.hub.gateway(record.gateway_id).is_some() };
    Ok(Some(configs::status(&record, session.as_ref(), now, state.now_ms())))
}

fn current(state: &AppState, holder: &Holder) -> ApiResult<ConfigStatus> {
    status_of(state, holder.record.id)?
        .ok_or_else(|| ApiError::internal(format!("configuration {} lost its record", holder.record.id)))
}

/// Refuses a change to a configuration that is not in force.
fn in_force(status: &ConfigStatus) -> ApiResult<()> {
    if status.state == ConfigState::Live {
        return Ok(());
    }
    let why = status.detail.clone().unwrap_or_else(|| "it is not in force".into());
    Err(ApiError::conflict(
        "config-not-live",
        "Configuration not in force",
        format!("configuration {} is {}: {why}", status.config_id, status.state.label()),
    ))
}

/// The configuration's status: in force, or ended (and why), revoked or
/// expired, with the gateway's direct-path candidates while in force.
#[utoipa::path(get, path = "/api/v1/configs/{config_id}", tag = "configs", security(("watch_token" = [])),
    params(("config_id" = u64, Path)),
    responses((status = 200, body = ConfigStatus), (status = 401, body = super::Problem)))]
async fn status(State(state): State<AppState>, holder: Holder) -> ApiResult<Json<ConfigStatus>> {
    Ok(Json(current(&state, &holder)?))
}

/// The configuration's status as server-sent events: one `status` event at
/// once and another on every change (the session ended, expired, the
/// configuration was revoked, the gateway's candidates or connection
/// changed), with a keep-alive comment every 15 s. After a final status
/// (ended, revoked, expired) the stream ends.
#[utoipa::path(get, path = "/api/v1/configs/{config_id}/events", tag = "configs",
    security(("watch_token" = [])), params(("config_id" = u64, Path)),
    responses((status = 200, content_type = "text/event-stream", body = ConfigStatus,
            description = "`event: status` frames, each with a ConfigStatus as its data"),
        (status = 401, body = super::Problem)))]
async fn events(
    State(state): State<AppState>,
    holder: Holder,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    // Subscribed before the first read, so no change falls in between.
    let watch = Watch {
        changes: state.hub.subscribe(),
        closing: state.hub.closing(),
        config_id: holder.record.id,
        session_id: holder.record.session_id,
        gateway_id: holder.record.gateway_id,
        last: None,
        done: false,
        state,
    };
    let stream = futures_util::stream::unfold(watch, Watch::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

/// One client's event stream.
struct Watch {
    state: AppState,
    changes: broadcast::Receiver<Change>,
    closing: watch::Receiver<bool>,
    config_id: u64,
    session_id: u64,
    gateway_id: u64,
    last: Option<ConfigStatus>,
    done: bool,
}

impl Watch {
    /// The next status that differs from the last one sent; None ends the
    /// stream (after a final status, at shutdown, or if the store fails, in
    /// which case the client connects again).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Watch)> {
        if self.done {
            return None;
        }
        let concerns = [Change::Session(self.session_id), Change::Gateway(self.gateway_id)];
        loop {
            if self.last.is_some() {
                tokio::select! {
                    _ = self.closing.wait_for(|closing| *closing) => return None,
                    change = self.changes.recv() => match change {
                        Ok(change) if concerns.contains(&change) => {}
                        Ok(_) => continue,
                        // Missed some: look again, whatever they were.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                }
            }
            let status = match status_of(&self.state, self.config_id) {
                Ok(Some(status)) => status,
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(config = self.config_id, detail = %error.detail, "ending an event stream");
                    return None;
                }
            };
            if self.last.as_ref() == Some(&status) {
                continue;
            }
            let event = Event::default()
                .event("status")
                .data(String::from_utf8_lossy(&crate::store::to_json(&status)));
            self.done = status.state.is_final();
            self.last = Some(status);
            return Some((Ok(event), self));
        }
    }
}

impl Validate for CandidatesUpdate {
    fn validate(&self) -> Result<(), String> {
        parse_candidates(&self.candidates).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The client's new direct-path candidates (after it moved): they replace
/// the previous ones, and the gateway gets them in its desired state at once.
#[utoipa::path(put, path = "/api/v1/configs/{config_id}/candidates", tag = "configs",
    request_body = CandidatesUpdate, security(("watch_token" = [])), params(("config_id" = u64, Path)),
    responses((status = 200, body = ConfigStatus), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 409, body = super::Problem)))]
async fn set_candidates(
    State(state): State<AppState>,
    holder: Holder,
    Body(update): Body<CandidatesUpdate>,
) -> ApiResult<Json<ConfigStatus>> {
    let candidates =
        parse_candidates(&update.candidates).map_err(|e| ApiError::bad_request(e.to_string()))?;
    in_force(&current(&state, &holder)?)?;
    let config_id = holder.record.id;
    let list: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
    let changed = state.change_session_audited(
        holder.record.session_id,
        &holder.actor(),
        "config.candidates",
        |s| {
            let live = s.state == SessionState::Active;
            Ok(match s.configs.iter_mut().find(|c| c.id == config_id).filter(|_| live) {
                Some(config) => {
                    config.candidates = candidates.clone();
                    true
                }
                None => false,
            })
        },
        |_, found| found.then(|| format!("configuration {config_id}: candidates {}", list.join(" "))),
    )?;
    let status = current(&state, &holder)?;
    match changed {
        Some((_, true)) => Ok(Json(status)),
        // It stopped meanwhile.
        _ => in_force(&status).map(|()| Json(status)),
    }
}

/// Revoke the configuration (the client's `disconnect`): the gateway drops
/// the peer and the relay its allocation at once, and the watch token stops
/// working.
#[utoipa::path(delete, path = "/api/v1/configs/{config_id}", tag = "configs", security(("watch_token" = [])),
    params(("config_id" = u64, Path)),
    responses((status = 204), (status = 401, body = super::Problem), (status = 409, body = super::Problem)))]
async fn revoke(State(state): State<AppState>, holder: Holder) -> ApiResult<StatusCode> {
    in_force(&current(&state, &holder)?)?;
    match state.revoke_config(holder.record.session_id, holder.record.id, &holder.actor())? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => in_force(&current(&state, &holder)?).map(|()| StatusCode::NO_CONTENT),
    }
}

/// The STUN servers of the relays connected now, where a client learns its
/// server-reflexive candidates before it asks for a configuration.
#[utoipa::path(get, path = "/api/v1/stun", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = StunServers), (status = 401, body = super::Problem)))]
async fn stun(State(state): State<AppState>, _caller: Caller) -> Json<StunServers> {
    Json(StunServers { servers: state.hub.stun_servers().iter().map(|s| s.to_string()).collect() })
}
