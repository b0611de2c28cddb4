//! Gateways and their targets (Administrators add them; session preparers
//! see them), enrolment, and relays.

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::{Body, Caller, Path, Source, Validate},
    problem::{ApiError, ApiResult},
};
use crate::{
    audit::Event,
    auth::Scope,
    gateways::{self, ENROL_TTL_MS, EnrolError, Gateway, Target, valid_label},
    relays::{self, Relay},
    rights::Action,
    sessions::addressing::MAX_TARGETS,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, update))
        .routes(routes!(new_enrolment_token))
        .routes(routes!(enrol))
        .routes(routes!(list_relays, create_relay))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGateway {
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
    /// Where it stands: the customer, plant or machine.
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub site: String,
    #[serde(default)]
    #[schema(max_items = 1024)]
    pub targets: Vec<Target>,
    /// Lifetime of the enrolment token in seconds (60 to 604800; default a day).
    #[schema(minimum = 60, maximum = 604_800)]
    pub enrolment_ttl_s: Option<u64>,
}

fn validate_targets(targets: &[Target]) -> Result<(), String> {
    if targets.len() > 1024 {
        return Err("at most 1024 targets per gateway".into());
    }
    for (i, t) in targets.iter().enumerate() {
        t.validate()?;
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(format!("target name `{}` appears twice", t.name));
        }
    }
    Ok(())
}

impl Validate for NewGateway {
    fn validate(&self) -> Result<(), String> {
        if !valid_label(&self.name) || !valid_label(&self.site) {
            return Err("`name` and `site` must be 1 to 64 letters, digits, spaces, `. _ -`".into());
        }
        if self.enrolment_ttl_s.is_some_and(|t| !(60..=604_800).contains(&t)) {
            return Err("`enrolment_ttl_s` must be 60 to 604800".into());
        }
        validate_targets(&self.targets)
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EnrolmentToken {
    pub gateway_id: u64,
    /// One-time: the gateway presents it once, at enrolment.
    pub token: String,
    pub expires_ms: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedGateway {
    pub gateway: Gateway,
    pub enrolment: EnrolmentToken,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayChange {
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub name: Option<String>,
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub site: Option<String>,
    /// Replaces the whole target list.
    #[schema(max_items = 1024)]
    pub targets: Option<Vec<Target>>,
}

impl Validate for GatewayChange {
    fn validate(&self) -> Result<(), String> {
        if self.name.as_deref().is_some_and(|n| !valid_label(n))
            || self.site.as_deref().is_some_and(|s| !valid_label(s))
        {
            return Err("`name` and `site` must be 1 to 64 letters, digits, spaces, `. _ -`".into());
        }
        self.targets.as_deref().map_or(Ok(()), validate_targets)
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    #[schema(max_length = 200)]
    pub token: String,
    /// The gateway's Ed25519 public key, 64 hex digits. It signs every
    /// control connection from now on.
    #[schema(pattern = r"^[0-9A-Fa-f]{64}$")]
    pub identity_key: String,
}

impl Validate for EnrolRequest {
    fn validate(&self) -> Result<(), String> {
        if self.token.chars().count() > 200 {
            return Err("`token` is too long".into());
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.identity_key, &mut key)
            .map_err(|_| "`identity_key` must be 64 hex digits (an Ed25519 public key)".to_string())
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    pub gateway_id: u64,
    pub name: String,
    /// Where to open the control channel (relative to the cloud's URL).
    pub control_path: String,
}

/// Fills in the live part of a gateway's state.
fn with_live(state: &AppState, gateway: Gateway) -> Gateway {
    let live = state.hub.gateway(gateway.id);
    with_report(gateway, live)
}

fn with_report(mut gateway: Gateway, live: Option<crate::hub::GatewayLive>) -> Gateway {
    gateway.last_seen.online = live.is_some();
    if let Some(live) = live {
        gateway.last_seen.switch_on = live.switch_on;
        gateway.last_seen.software_version = Some(live.software_version);
    }
    gateway
}

/// All gateways with their targets and last-seen state.
#[utoipa::path(get, path = "/api/v1/gateways", tag = "gateways", security(("bearer" = [])),
    responses((status = 200, body = Vec<Gateway>), (status = 403, body = super::Problem)))]
async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Gateway>>> {
    caller.authorize(&state, Action::ViewGateways, Scope::GatewaysRead, "gateway.list", None, None)?;
    // One look at who is connected, not one per gateway.
    let mut live = state.hub.gateways_live();
    Ok(Json(
        gateways::list(&state.store)?
            .into_iter()
            .map(|g| {
                let report = live.remove(&g.id);
                with_report(g, report)
            })
            .collect(),
    ))
}

/// Add a gateway; returns it with a one-time enrolment token.
#[utoipa::path(post, path = "/api/v1/gateways", tag = "gateways", request_body = NewGateway,
    security(("bearer" = [])),
    responses((status = 201, body = CreatedGateway), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<NewGateway>,
) -> ApiResult<(StatusCode, Json<CreatedGateway>)> {
    caller.authorize(&state, Action::AddGateway, Scope::GatewaysWrite, "gateway.create", None, None)?;
    let now = state.now_ms();
    let gateway = gateways::create(&state.store, &request.name, &request.site, request.targets, now, |g| {
        Some(caller.event("gateway.create", true, None, Some(g.id), Some(g.name.clone())))
    })?;
    let ttl = request.enrolment_ttl_s.map_or(ENROL_TTL_MS, |s| s * 1000);
    let token = gateways::enrolment_token(&state.store, gateway.id, ttl, now)?;
    let enrolment = EnrolmentToken { gateway_id: gateway.id, token, expires_ms: now + ttl };
    Ok((StatusCode::CREATED, Json(CreatedGateway { gateway, enrolment })))
}

/// One gateway.
#[utoipa::path(get, path = "/api/v1/gateways/{id}", tag = "gateways", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, body = Gateway), (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<Json<Gateway>> {
    caller.authorize(&state, Action::ViewGateways, Scope::GatewaysRead, "gateway.get", None, Some(id))?;
    let gateway =
        gateways::get(&state.store, id)?.ok_or_else(|| ApiError::not_found(format!("no gateway {id}")))?;
    Ok(Json(with_live(&state, gateway)))
}

/// Rename a gateway or replace its targets.
#[utoipa::path(patch, path = "/api/v1/gateways/{id}", tag = "gateways", request_body = GatewayChange,
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 200, body = Gateway), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
    Body(change): Body<GatewayChange>,
) -> ApiResult<Json<Gateway>> {
    caller.authorize(&state, Action::AddGateway, Scope::GatewaysWrite, "gateway.update", None, Some(id))?;
    let change_gateway = |g: &mut Gateway| {
        if let Some(name) = &change.name {
            g.name = name.clone();
        }
        if let Some(site) = &change.site {
            g.site = site.clone();
        }
        if let Some(targets) = &change.targets {
            g.targets = targets.clone();
        }
    };
    let detail = |g: &Gateway| {
        let targets: Vec<&str> = g.targets.iter().map(|t| t.name.as_str()).collect();
        format!("{} at {}, targets {}", g.name, g.site, targets.join(" "))
    };
    let (gateway, ()) =
        gateways::modify_audited(&state.store, id, state.now_ms(), change_gateway, |g, _| {
            Some(caller.event("gateway.update", true, None, Some(id), Some(detail(g))))
        })?
        .ok_or_else(|| ApiError::not_found(format!("no gateway {id}")))?;
    // Live sessions resolve target names against the new list.
    state.hub.touch_gateway(id);
    Ok(Json(with_live(&state, gateway)))
}

/// A new one-time enrolment token (re-enrolment); earlier tokens stop working.
#[utoipa::path(post, path = "/api/v1/gateways/{id}/enrolment-token", tag = "gateways",
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 201, body = EnrolmentToken), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem)))]
async fn new_enrolment_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<(StatusCode, Json<EnrolmentToken>)> {
    caller.authorize(
        &state,
        Action::AddGateway,
        Scope::GatewaysWrite,
        "gateway.enrolment_token",
        None,
        Some(id),
    )?;
    gateways::get(&state.store, id)?.ok_or_else(|| ApiError::not_found(format!("no gateway {id}")))?;
    let now = state.now_ms();
    let token = gateways::enrolment_token(&state.store, id, ENROL_TTL_MS, now)?;
    state.audit(caller.event("gateway.enrolment_token", true, None, Some(id), None));
    Ok((StatusCode::CREATED, Json(EnrolmentToken { gateway_id: id, token, expires_ms: now + ENROL_TTL_MS })))
}

/// A gateway enrols: it presents its one-time token and its identity key.
/// No login; the token is the credential, and it works once.
#[utoipa::path(post, path = "/api/v1/enrol", tag = "gateways", request_body = EnrolRequest,
    responses((status = 200, body = Enrolled), (status = 401, body = super::Problem)))]
async fn enrol(
    State(state): State<AppState>,
    Source(source): Source,
    Body(request): Body<EnrolRequest>,
) -> ApiResult<Json<Enrolled>> {
    let now = state.now_ms();
    let identity_key = request.identity_key.to_ascii_lowercase();
    let event = |gateway: &Gateway| Event {
        actor: format!("gateway:{}", gateway.id),
        action: "gateway.enrol".into(),
        allowed: true,
        source: source.clone(),
        session: None,
        gateway: Some(gateway.id.to_string()),
        detail: Some(format!("identity key {identity_key}")),
    };
    match gateways::enrol(&state.store, &request.token, &identity_key, now, event) {
        Ok(gateway) => Ok(Json(Enrolled {
            gateway_id: gateway.id,
            name: gateway.name,
            control_path: "/api/v1/control/gateway".into(),
        })),
        Err(EnrolError::Store(e)) => Err(e.into()),
        // Not the token's fault: a 503 to try again, like other contention
        // that outlasts its retries.
        Err(e @ EnrolError::Contended) => Err(crate::store::BackendError::Unavailable(e.to_string()).into()),
        Err(e) => {
            state.audit(Event {
                actor: "anonymous".into(),
                action: "gateway.enrol".into(),
                allowed: false,
                source,
                session: None,
                gateway: None,
                detail: Some(e.to_string()),
            });
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "enrolment-refused",
                "Enrolment refused",
                e.to_string(),
            ))
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRelay {
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
}

impl Validate for NewRelay {
    fn validate(&self) -> Result<(), String> {
        valid_label(&self.name)
            .then_some(())
            .ok_or_else(|| "`name` must be 1 to 64 letters, digits, `. _ -`".into())
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedRelay {
    pub relay: Relay,
    /// The relay's credential for its control channel, shown this once.
    pub token: String,
}

/// All relays with their health.
#[utoipa::path(get, path = "/api/v1/relays", tag = "relays", security(("bearer" = [])),
    responses((status = 200, body = Vec<Relay>), (status = 403, body = super::Problem)))]
async fn list_relays(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<Relay>>> {
    caller.authorize(&state, Action::ManageRelays, Scope::GatewaysRead, "relay.list", None, None)?;
    let mut list = relays::list(&state.store)?;
    for relay in &mut list {
        relay.health.online = state.hub.relay(relay.id).is_some();
    }
    Ok(Json(list))
}

/// Register a relay; returns its token once.
#[utoipa::path(post, path = "/api/v1/relays", tag = "relays", request_body = NewRelay, security(("bearer" = [])),
    responses((status = 201, body = CreatedRelay), (status = 403, body = super::Problem)))]
async fn create_relay(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<NewRelay>,
) -> ApiResult<(StatusCode, Json<CreatedRelay>)> {
    caller.authorize(&state, Action::ManageRelays, Scope::GatewaysWrite, "relay.create", None, None)?;
    let (relay, token) = relays::create(&state.store, &request.name, state.now_ms(), |r| {
        Some(caller.event("relay.create", true, None, None, Some(r.name.clone())))
    })?;
    Ok((StatusCode::CREATED, Json(CreatedRelay { relay, token })))
}

/// Bounds targets per session (proxy addresses are a /24's upper half).
pub fn check_session_targets(gateway: &Gateway, names: &[String]) -> Result<(), ApiError> {
    if names.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(format!("at most {MAX_TARGETS} targets per session")));
    }
    for (i, name) in names.iter().enumerate() {
        if !gateway.targets.iter().any(|t| &t.name == name) {
            return Err(ApiError::bad_request(format!("gateway {} has no target `{name}`", gateway.id)));
        }
        if names[..i].contains(name) {
            return Err(ApiError::bad_request(format!("target `{name}` appears twice")));
        }
    }
    Ok(())
}
