//! Sessions: prepare, release, start, end, and configuration issuance.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use ferry_api::{ClientConfig, ConfigRelay, ConfigRequest, ConfigTarget, parse_candidates, wg_quick};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::{Body, Caller, Params, Path, Validate},
    gateways::check_session_targets,
    problem::{ApiError, ApiResult},
};
use crate::{
    app::Actor,
    auth::Scope,
    configs::{self, ConfigRecord},
    gateways::{self, Gateway, valid_label},
    rights::{Action, Ownership},
    sessions::{
        self, EndReason, IssuedConfig, RelayAllocation, Session, SessionError, State as SessionState,
        addressing,
    },
    users,
};

/// How long configuration issuance waits for a relay's allocation.
const RELAY_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest session: 7 days.
const MAX_DURATION_S: u64 = 7 * 24 * 3600;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, update))
        .routes(routes!(start))
        .routes(routes!(end))
        .routes(routes!(issue_config))
        .routes(routes!(issue_wg_quick))
}

fn ownership(caller: &Caller, session: &Session) -> Ownership {
    if session.released_to_user(caller.user.id) { Ownership::Own } else { Ownership::Others }
}

/// The caller's user when their right to `others` (an action on sessions
/// not released to them) is missing: the change must then find the session
/// still released to them on whatever document it commits
/// ([`Session::still_released`]).
fn only_if_released(caller: &Caller, others: Action) -> Option<u64> {
    (!caller.may(others, Scope::SessionsWrite)).then_some(caller.user.id)
}

fn actor(caller: &Caller) -> Actor {
    caller.actor()
}

fn load(state: &AppState, id: u64) -> ApiResult<Session> {
    sessions::get(&state.store, id)?.ok_or_else(|| ApiError::not_found(format!("no session {id}")))
}

/// [`load`] with the stored document, which the change that follows starts
/// from rather than reading the session a second time.
fn load_stored(state: &AppState, id: u64) -> ApiResult<(Session, Vec<u8>)> {
    sessions::get_stored(&state.store, id)?.ok_or_else(|| ApiError::not_found(format!("no session {id}")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
    pub gateway_id: u64,
    /// Names of the gateway's targets.
    pub targets: Vec<String>,
    /// User ids the session is released to.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub released_to: Vec<u64>,
    /// 60 s to 7 days.
    #[schema(minimum = 60, maximum = 604_800)]
    pub max_duration_s: u64,
    /// Whether the customer must approve each start at the gateway.
    #[serde(default)]
    pub approval_required: bool,
}

impl Validate for NewSession {
    fn validate(&self) -> Result<(), String> {
        if !valid_label(&self.name) {
            return Err("`name` must be 1 to 64 letters, digits, spaces, `. _ -`".into());
        }
        if !(60..=MAX_DURATION_S).contains(&self.max_duration_s) {
            return Err(format!("`max_duration_s` must be 60 to {MAX_DURATION_S}"));
        }
        if self.released_to.len() > 256 {
            return Err("`released_to` lists at most 256 users".into());
        }
        Ok(())
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionChange {
    #[serde(default)]
    #[schema(max_items = 256)]
    pub add_targets: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub remove_targets: Vec<String>,
    /// User ids to release the session to.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub release: Vec<u64>,
    /// User ids to withdraw it from (their issued configurations go too).
    #[serde(default)]
    #[schema(max_items = 256)]
    pub unrelease: Vec<u64>,
    /// 60 s to 7 days.
    #[schema(minimum = 60, maximum = 604_800)]
    pub max_duration_s: Option<u64>,
}

impl Validate for SessionChange {
    fn validate(&self) -> Result<(), String> {
        let lens =
            [self.add_targets.len(), self.remove_targets.len(), self.release.len(), self.unrelease.len()];
        if lens.iter().all(|&l| l == 0) && self.max_duration_s.is_none() {
            return Err("nothing to change".into());
        }
        if lens.iter().any(|&l| l > 256) {
            return Err("at most 256 entries per list".into());
        }
        if self.max_duration_s.is_some_and(|d| !(60..=MAX_DURATION_S).contains(&d)) {
            return Err(format!("`max_duration_s` must be 60 to {MAX_DURATION_S}"));
        }
        Ok(())
    }
}

fn check_users(state: &AppState, ids: &[u64]) -> ApiResult<()> {
    for id in ids {
        users::get(&state.store, *id)?.ok_or_else(|| ApiError::bad_request(format!("no user {id}")))?;
    }
    Ok(())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sessions in this state.
    pub state: Option<SessionState>,
}

/// Sessions the caller may see: all for admins, the ones released to them
/// for remoteConnect Users.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = Vec<Session>), (status = 403, body = super::Problem)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(query): Params<ListQuery>,
) -> ApiResult<Json<Vec<Session>>> {
    caller.authorize(
        &state,
        Action::ViewSession(Ownership::Own),
        Scope::SessionsRead,
        "session.list",
        None,
        None,
    )?;
    let all_visible = caller.may(Action::ViewSession(Ownership::Others), Scope::SessionsRead);
    let wanted = query.state;
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = sessions::page(&state.store, after, 500)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        out.extend(page.into_iter().filter(|s| {
            (all_visible || s.released_to_user(caller.user.id)) && wanted.is_none_or(|w| s.state == w)
        }));
    }
    Ok(Json(out))
}

/// Prepare a session on a gateway.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body = NewSession,
    security(("bearer" = [])),
    responses((status = 201, body = Session), (status = 400, body = super::Problem), (status = 403, body = super::Problem)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<NewSession>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let gw = Some(request.gateway_id);
    caller.authorize(&state, Action::CreateSession, Scope::SessionsWrite, "session.create", None, gw)?;
    let gateway = gateways::get(&state.store, request.gateway_id)?
        .ok_or_else(|| ApiError::bad_request(format!("no gateway {}", request.gateway_id)))?;
    check_session_targets(&gateway, &request.targets)?;
    check_users(&state, &request.released_to)?;
    let mut released = request.released_to;
    released.sort_unstable();
    released.dedup();
    let who = actor(&caller);
    let session = sessions::create_audited_async(
        &state.store,
        Session::new(
            0,
            request.name,
            gateway.id,
            request.targets,
            released,
            request.max_duration_s,
            request.approval_required,
            caller.user.name.clone(),
            state.now_ms(),
        ),
        state.now_ms(),
        |s| Some(who.session_event("session.create", true, s, Some(s.name.clone()))),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, body = Session), (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<Json<Session>> {
    let session = load(&state, id)?;
    let action = Action::ViewSession(ownership(&caller, &session));
    caller.authorize(
        &state,
        action,
        Scope::SessionsRead,
        "session.get",
        Some(id),
        Some(session.gateway_id),
    )?;
    Ok(Json(session))
}

/// Add or remove targets, release to or withdraw from users, change the
/// maximum duration. A live session's gateway gets the change at once.
#[utoipa::path(patch, path = "/api/v1/sessions/{id}", tag = "sessions", request_body = SessionChange,
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 200, body = Session), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
    Body(change): Body<SessionChange>,
) -> ApiResult<Json<Session>> {
    let session = load(&state, id)?;
    let gw = Some(session.gateway_id);
    if !change.add_targets.is_empty() || !change.remove_targets.is_empty() {
        caller.authorize(
            &state,
            Action::AddDevicesToSession,
            Scope::SessionsWrite,
            "session.targets",
            Some(id),
            gw,
        )?;
    }
    if !change.release.is_empty() || !change.unrelease.is_empty() || change.max_duration_s.is_some() {
        caller.authorize(
            &state,
            Action::CreateSession,
            Scope::SessionsWrite,
            "session.update",
            Some(id),
            gw,
        )?;
    }
    let gateway = gateways::get(&state.store, session.gateway_id)?
        .ok_or_else(|| ApiError::internal(format!("session {id} names a missing gateway")))?;
    check_users(&state, &change.release)?;
    let mut targets = session.targets.clone();
    targets.retain(|t| !change.remove_targets.contains(t));
    for t in &change.add_targets {
        if !targets.contains(t) {
            targets.push(t.clone());
        }
    }
    check_session_targets(&gateway, &targets)?;
    let detail = format!(
        "targets +{:?} -{:?}, released +{:?} -{:?}",
        change.add_targets, change.remove_targets, change.release, change.unrelease
    );
    let (session, ()) = state
        .change_session_audited(
            id,
            &actor(&caller),
            "session.update",
            |s| {
                s.targets.retain(|t| !change.remove_targets.contains(t));
                for t in &change.add_targets {
                    if !s.targets.contains(t) {
                        s.targets.push(t.clone());
                    }
                }
                for user in &change.release {
                    if !s.released_to.contains(user) {
                        s.released_to.push(*user);
                    }
                }
                s.released_to.retain(|u| !change.unrelease.contains(u));
                s.configs.retain(|c| !change.unrelease.contains(&c.user_id));
                if let Some(d) = change.max_duration_s {
                    s.max_duration_s = d;
                }
                Ok(())
            },
            |_, _| Some(detail.clone()),
        )?
        .ok_or_else(|| ApiError::not_found(format!("no session {id}")))?;
    Ok(Json(session))
}

/// Start a session. The gateway must be online with its switch on; if the
/// session requires it, it waits for the customer's approval first.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/start", tag = "sessions", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, body = Session), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<Json<Session>> {
    let (session, stored) = load_stored(&state, id)?;
    let action = Action::StartSession(ownership(&caller, &session));
    caller.authorize(
        &state,
        action,
        Scope::SessionsWrite,
        "session.start",
        Some(id),
        Some(session.gateway_id),
    )?;
    let view = state.hub.gateway_view(session.gateway_id);
    let now = state.now_ms();
    let name = caller.user.name.clone();
    let only_for = only_if_released(&caller, Action::StartSession(Ownership::Others));
    let started = state
        .change_session_detached(
            id,
            Some(stored),
            actor(&caller),
            "session.start",
            move |s| {
                s.still_released(only_for)?;
                Ok(s.start(&name, now, view)?)
            },
            |_, new_state| Some(new_state.label().into()),
        )
        .await;
    match started {
        Ok(Some((session, _))) => Ok(Json(session)),
        Ok(None) => Err(ApiError::not_found(format!("no session {id}"))),
        Err(
            e @ (SessionError::Refused(_)
            | SessionError::NoLongerReleased(_)
            | SessionError::ActorChanged(_)
            | SessionError::ActorRoleChanged(_)),
        ) => {
            state.audit_session(&actor(&caller), "session.start", false, &session, Some(e.to_string()));
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// End a session at once: the gateway and the relay drop its keys and
/// bindings immediately.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/end", tag = "sessions", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, body = Session), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
async fn end(State(state): State<AppState>, caller: Caller, Path(id): Path<u64>) -> ApiResult<Json<Session>> {
    let (session, stored) = load_stored(&state, id)?;
    let action = Action::EndSession(ownership(&caller, &session));
    caller.authorize(
        &state,
        action,
        Scope::SessionsWrite,
        "session.end",
        Some(id),
        Some(session.gateway_id),
    )?;
    let reason = EndReason::User { name: caller.user.name.clone() };
    let only_for = only_if_released(&caller, Action::EndSession(Ownership::Others));
    match state.end_session_async(id, Some(stored), reason, &actor(&caller), only_for).await {
        Ok(Some(session)) => Ok(Json(session)),
        Ok(None) => Err(ApiError::not_found(format!("no session {id}"))),
        // An end expects nothing of its actor's record (Actor::taking_away).
        Err(e @ (SessionError::Refused(_) | SessionError::NoLongerReleased(_))) => {
            state.audit_session(&actor(&caller), "session.end", false, &session, Some(e.to_string()));
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

impl Validate for ConfigRequest {
    fn validate(&self) -> Result<(), String> {
        parse_key(&self.public_key)?;
        parse_candidates(&self.candidates).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "`public_key` must be base64 (as `wg pubkey` prints)".to_string())?;
    bytes.try_into().map_err(|_| "`public_key` must be 32 bytes".to_string())
}

/// A configuration just issued, with the secret that is shown once.
struct Issued {
    session: Session,
    gateway: Gateway,
    config: IssuedConfig,
    watch_token: String,
}

/// Issues a configuration for the caller's key, revoking the caller's
/// previous one in this session, and returns it with the gateway.
async fn issue(state: &AppState, caller: &Caller, id: u64, request: &ConfigRequest) -> ApiResult<Issued> {
    let key = request.public_key.as_str();
    let candidates =
        parse_candidates(&request.candidates).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let session = load(state, id)?;
    let action = Action::StartSession(ownership(caller, &session));
    let gw = Some(session.gateway_id);
    caller.authorize(state, action, Scope::SessionsWrite, "session.config", Some(id), gw)?;
    if session.state != SessionState::Active {
        let detail = format!("the session is {}, not active", session.state.label());
        state.audit_session(&actor(caller), "session.config", false, &session, Some(detail.clone()));
        return Err(ApiError::conflict("session-not-active", "Session not active", detail));
    }
    let gateway = gateways::get(&state.store, session.gateway_id)?
        .ok_or_else(|| ApiError::internal(format!("session {id} names a missing gateway")))?;
    if state.hub.gateway(gateway.id).map(|l| l.wg_public_key).or(gateway.wg_public_key.clone()).is_none() {
        return Err(ApiError::conflict(
            "gateway-key-unknown",
            "Gateway key unknown",
            "the gateway has not reported its WireGuard key yet",
        ));
    }
    let config_id = state.store.backend().generate_id()?;
    let now = state.now_ms();
    let relay = state.hub.pick_relay().map(|(relay_id, live)| {
        let mut token = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
        RelayAllocation {
            relay_id,
            allocation_id: config_id,
            gateway_endpoint: None,
            client_endpoint: None,
            websocket_url: live.websocket_url,
            websocket_token: hex::encode(token),
            websocket_pin: live.websocket_pin,
        }
    });
    let answer = relay.as_ref().map(|_| state.hub.expect_allocation(config_id));
    let detail = |s: &Session, _: &()| {
        let address = s.configs.iter().find(|c| c.id == config_id).map(|c| c.tunnel_address.to_string());
        Some(format!("key {key}, address {}", address.unwrap_or_default()))
    };
    let issue = |s: &mut Session| {
        if s.state != SessionState::Active {
            return Err(SessionError::Refused(sessions::Refusal::NotRunning));
        }
        let index = s.subnet_index.ok_or(SessionError::Refused(sessions::Refusal::NotRunning))?;
        s.configs.retain(|c| c.user_id != caller.user.id);
        let slot = (addressing::FIRST_CLIENT..=addressing::LAST_CLIENT)
            .find(|slot| s.configs.iter().all(|c| c.tunnel_address != addressing::client(index, *slot)))
            .ok_or(SessionError::PoolExhausted)?;
        s.configs.push(IssuedConfig {
            id: config_id,
            user_id: caller.user.id,
            user: caller.user.name.clone(),
            public_key: key.to_string(),
            tunnel_address: addressing::client(index, slot),
            issued_ms: now,
            expires_ms: s.expires_ms.unwrap_or(now),
            relay: relay.clone(),
            candidates: candidates.clone(),
            peer: None,
        });
        Ok(())
    };
    let issued = state.change_session_audited(id, &actor(caller), "session.config", issue, detail);
    let mut session = match issued {
        Ok(Some((session, ()))) => session,
        Ok(None) => return Err(ApiError::not_found(format!("no session {id}"))),
        Err(e) => {
            state.hub.forget_allocation(config_id);
            if matches!(e, SessionError::ActorChanged(_) | SessionError::ActorRoleChanged(_))
                && let Ok(Some(session)) = sessions::get(&state.store, id)
            {
                state.audit_session(&actor(caller), "session.config", false, &session, Some(e.to_string()));
            }
            return Err(e.into());
        }
    };
    let (watch_token, watch_hash) = configs::new_watch_token();
    let record = ConfigRecord {
        id: config_id,
        session_id: id,
        gateway_id: session.gateway_id,
        user_id: caller.user.id,
        user: caller.user.name.clone(),
        watch_hash,
        issued_ms: now,
        expires_ms: session.configs.iter().find(|c| c.id == config_id).map_or(now, |c| c.expires_ms),
        end: None,
    };
    if let Err(e) = configs::put(&state.store, &record) {
        // Nobody can watch it: take it back rather than hand it out.
        state.hub.forget_allocation(config_id);
        let _ = state.change_session(id, |s| {
            s.configs.retain(|c| c.id != config_id);
            Ok(())
        });
        return Err(e.into());
    }
    if let Some(answer) = answer {
        let endpoints = match tokio::time::timeout(RELAY_ANSWER_TIMEOUT, answer).await {
            Ok(Ok(Ok(endpoints))) => Some(endpoints),
            Ok(Ok(Err(reason))) => {
                tracing::warn!(session = id, %reason, "the relay refused the allocation");
                None
            }
            _ => {
                state.hub.forget_allocation(config_id);
                tracing::warn!(session = id, "the relay did not answer the allocation in time");
                None
            }
        };
        let filled = state.change_session(id, |s| {
            if let Some(c) = s.configs.iter_mut().find(|c| c.id == config_id) {
                match endpoints {
                    Some((gateway_side, client_side)) => {
                        if let Some(r) = c.relay.as_mut() {
                            r.gateway_endpoint = Some(gateway_side);
                            r.client_endpoint = Some(client_side);
                        }
                    }
                    None => c.relay = None,
                }
            }
            Ok(())
        })?;
        if let Some((latest, ())) = filled {
            session = latest;
        }
    }
    let config = session.configs.iter().find(|c| c.id == config_id).cloned().ok_or_else(|| {
        ApiError::conflict("session-not-active", "Session not active", "the session ended meanwhile")
    })?;
    Ok(Issued { session, gateway, config, watch_token })
}

fn client_config(state: &AppState, issued: &Issued) -> ClientConfig {
    let Issued { session, gateway, config, watch_token } = issued;
    let index = session.subnet_index.unwrap_or_default();
    let targets: Vec<ConfigTarget> = session
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let t = gateway.targets.iter().find(|t| &t.name == name)?;
            Some(ConfigTarget {
                name: t.name.clone(),
                proxy_address: addressing::proxy(index, i),
                protocol: t.protocol,
                ports: t.ports.clone(),
            })
        })
        .collect();
    let peer_public_key = state
        .hub
        .gateway(gateway.id)
        .map(|l| l.wg_public_key)
        .or(gateway.wg_public_key.clone())
        .unwrap_or_default();
    ClientConfig {
        config_id: config.id,
        session_id: session.id,
        session_name: session.name.clone(),
        expires_ms: config.expires_ms,
        address: format!("{}/32", config.tunnel_address),
        peer_public_key,
        allowed_ips: targets.iter().map(|t| format!("{}/32", t.proxy_address)).collect(),
        endpoints: gateway.endpoints.iter().map(|e| e.to_string()).collect(),
        relay: config.relay.as_ref().map(|r| ConfigRelay {
            udp: r.client_endpoint,
            websocket_url: r.websocket_url.clone(),
            websocket_token: r.websocket_token.clone(),
            websocket_pin: r.websocket_pin.clone(),
        }),
        persistent_keepalive: 25,
        targets,
        stun_servers: state.hub.stun_servers().iter().map(|s| s.to_string()).collect(),
        watch_token: watch_token.clone(),
    }
}

/// Get a one-time configuration for the caller's WireGuard key. Issuing a
/// new one revokes the caller's previous configuration of this session.
///
/// The client's direct-path `candidates` go to the gateway, which probes
/// them; the answer has the gateway's (`endpoints`), the relays' STUN
/// servers, and the configuration's `watch_token` for `/api/v1/configs/{config_id}`.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/config", tag = "sessions", request_body = ConfigRequest,
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 200, body = ClientConfig), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem), (status = 404, body = super::Problem),
        (status = 409, body = super::Problem)))]
async fn issue_config(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
    Body(request): Body<ConfigRequest>,
) -> ApiResult<Json<ClientConfig>> {
    let issued = issue(&state, &caller, id, &request).await?;
    Ok(Json(client_config(&state, &issued)))
}

/// The same configuration as a `wg-quick` file for a stock WireGuard client.
/// It carries a placeholder for the private key, which never leaves the client.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/config/wg-quick", tag = "sessions",
    request_body = ConfigRequest, security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem), (status = 404, body = super::Problem),
        (status = 409, body = super::Problem)))]
async fn issue_wg_quick(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
    Body(request): Body<ConfigRequest>,
) -> ApiResult<Response> {
    let issued = issue(&state, &caller, id, &request).await?;
    let config = client_config(&state, &issued);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], wg_quick(&config, &request.public_key))
        .into_response())
}
