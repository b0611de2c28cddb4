//! Login, refresh, logout and the caller's own account (password, TOTP).

use std::sync::OnceLock;

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use ferry_api::{
    LoginRequest, PasswordChange, RefreshRequest, TokenResponse, TotpCode, TotpEnrolment, UserView,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::{Body, Caller, Source, Validate, same_origin, source},
    problem::{ApiError, ApiResult},
};
use crate::{
    audit::Event,
    auth::{
        ACCESS_TTL_MS, LoginOutcome, REFRESH_TTL_MS, UserLogin as _,
        console::{self, ConsoleSession},
        refresh::{self, RefreshError},
        totp::TotpState,
    },
    metrics::OutcomeLabels,
    password,
    users::{self, User},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh_token))
        .routes(routes!(logout))
        .routes(routes!(console_login, console_session, console_logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(totp_enrol))
        .routes(routes!(totp_qr))
        .routes(routes!(totp_confirm))
        .routes(routes!(totp_disable))
}

impl Validate for LoginRequest {
    fn validate(&self) -> Result<(), String> {
        // Counted in characters, as the document's lengths are.
        if !(1..=64).contains(&self.name.chars().count()) {
            return Err("`name` must be 1 to 64 characters".into());
        }
        if self.password.chars().count() > password::MAX_LEN {
            return Err("`password` is too long".into());
        }
        if self.totp.as_ref().is_some_and(|code| code.chars().count() > 16) {
            return Err("`totp` is too long".into());
        }
        Ok(())
    }
}

impl Validate for RefreshRequest {
    fn validate(&self) -> Result<(), String> {
        (self.refresh_token.chars().count() <= 200)
            .then_some(())
            .ok_or_else(|| "`refresh_token` is too long".into())
    }
}

fn event(actor: &str, action: &str, allowed: bool, source: &Option<String>, detail: Option<String>) -> Event {
    Event {
        actor: actor.to_string(),
        action: action.to_string(),
        allowed,
        source: source.clone(),
        session: None,
        gateway: None,
        detail,
    }
}

fn login_event(name: &str, outcome: LoginOutcome, source: &Option<String>) -> Event {
    let allowed = outcome == LoginOutcome::Success;
    event(name, "auth.login", allowed, source, (!allowed).then(|| outcome_label(outcome).into()))
}

fn tokens(state: &AppState, user: &User, refresh_token: String) -> TokenResponse {
    TokenResponse {
        access_token: state.access.issue(user.id, &user.name, user.role, user.token_epoch, state.now_ms()),
        token_type: "Bearer".into(),
        expires_in: ACCESS_TTL_MS / 1000,
        refresh_token,
        refresh_expires_in: REFRESH_TTL_MS / 1000,
        user: UserView::from(user),
    }
}

/// Checks against a real hash when the user is unknown, so that the answer
/// takes as long as for a known user with a wrong password.
#[allow(
    clippy::expect_used,
    reason = "Argon2 with default parameters hashes any password of the allowed length"
)]
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| password::hash(&password::one_time()).expect("a fresh password hashes"))
}

fn refusal(outcome: LoginOutcome, now_ms: u64) -> ApiError {
    match outcome {
        LoginOutcome::Throttled { retry_after_ms } => ApiError::too_many(
            "login-throttled",
            "Login slowed down",
            "too many failed logins for this account; wait before trying again",
            retry_after_ms,
        ),
        LoginOutcome::Locked { until_ms, .. } => ApiError::too_many(
            "account-locked",
            "Account locked",
            "too many failed logins: the account is locked for a while",
            until_ms.saturating_sub(now_ms),
        ),
        LoginOutcome::TotpRequired => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "totp-required",
            "TOTP code required",
            "this account has a second factor: send the current code as `totp`",
        ),
        LoginOutcome::BadTotp => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "totp-wrong",
            "Wrong TOTP code",
            "the TOTP code is wrong or used",
        ),
        LoginOutcome::Disabled => ApiError::new(
            StatusCode::FORBIDDEN,
            "account-disabled",
            "Account disabled",
            "this account is disabled",
        ),
        LoginOutcome::BadCredentials | LoginOutcome::Success => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad-credentials",
            "Wrong name or password",
            "the name or the password is wrong",
        ),
    }
}

fn outcome_label(outcome: LoginOutcome) -> &'static str {
    match outcome {
        LoginOutcome::Success => "success",
        LoginOutcome::BadCredentials => "bad_credentials",
        LoginOutcome::TotpRequired => "totp_required",
        LoginOutcome::BadTotp => "bad_totp",
        LoginOutcome::Throttled { .. } => "throttled",
        LoginOutcome::Locked { .. } => "locked",
        LoginOutcome::Disabled => "disabled",
    }
}

/// Log in with name and password (and TOTP code, if enabled).
///
/// After 3 consecutive failures each attempt must wait longer (1 s, doubling
/// up to 60 s); after 10 the account is locked for 15 minutes. Refusals name
/// the wait in `Retry-After`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem), (status = 429, body = super::Problem)))]
async fn login(
    State(state): State<AppState>,
    Source(source): Source,
    Body(request): Body<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let user = check_login(&state, &source, &request, None).await?;
    let refresh = refresh::issue(&state.store, user.id, state.now_ms())?;
    Ok(Json(tokens(&state, &user, refresh)))
}

/// The login check that the API's token login and the console's session
/// login share: throttling, lockout, TOTP, metrics and audit. `how` goes in
/// the audit entry of a success.
async fn check_login(
    state: &AppState,
    source: &Option<String>,
    request: &LoginRequest,
    how: Option<&str>,
) -> ApiResult<User> {
    let now = state.now_ms();
    let count = |outcome| {
        state.metrics.logins.get_or_create(&OutcomeLabels { outcome: outcome_label(outcome) }).inc()
    };
    let Some(user) = users::by_name(&state.store, &request.name)? else {
        let password = request.password.clone();
        tokio::task::spawn_blocking(move || password::verify(&password, decoy_hash())).await?;
        count(LoginOutcome::BadCredentials);
        state.audit(event(&request.name, "auth.login", false, source, Some("unknown user".into())));
        return Err(refusal(LoginOutcome::BadCredentials, now));
    };
    if let Some(refused) = state.policy.gate(&user, now) {
        count(refused);
        state.audit(event(&user.name, "auth.login", false, source, Some(outcome_label(refused).into())));
        return Err(refusal(refused, now));
    }
    let (password, hash) = (request.password.clone(), user.password_hash.clone());
    let password_ok = tokio::task::spawn_blocking(move || password::verify(&password, &hash)).await?;
    // The attempt's audit entry goes in the same commit as the counters it
    // moved; an attempt that moved nothing is recorded on its own.
    let recorded = std::cell::Cell::new(false);
    let name = user.name.clone();
    let entry = |outcome: LoginOutcome| {
        let mut entry = login_event(&name, outcome, source);
        if outcome == LoginOutcome::Success {
            entry.detail = how.map(str::to_string);
        }
        entry
    };
    let (user, outcome) = users::modify_audited(
        &state.store,
        user.id,
        now,
        |u| Ok::<_, ApiError>(state.policy.record(u, now, password_ok, request.totp.as_deref())),
        |_, outcome| {
            recorded.set(true);
            Some(entry(*outcome))
        },
    )?
    .ok_or_else(|| refusal(LoginOutcome::BadCredentials, now))?;
    count(outcome);
    let allowed = outcome == LoginOutcome::Success;
    if !recorded.get() {
        state.audit(entry(outcome));
    }
    if let LoginOutcome::Locked { until_ms, new: true } = outcome {
        state.audit(event(
            &user.name,
            "auth.lockout",
            false,
            source,
            Some(format!("locked until {until_ms} after repeated failed logins")),
        ));
    }
    if !allowed {
        return Err(refusal(outcome, now));
    }
    Ok(user)
}

/// The web console's session: who is logged in, the CSRF token its
/// state-changing requests send in `X-CSRF-Token`, and when it ends.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ConsoleSessionView {
    pub user: UserView,
    pub csrf_token: String,
    pub created_ms: u64,
    /// When it ends unless used before: 30 minutes after the last request,
    /// 12 hours after login at the latest.
    pub expires_ms: u64,
}

fn session_view(user: &User, session: &ConsoleSession) -> ConsoleSessionView {
    ConsoleSessionView {
        user: UserView::from(user),
        csrf_token: session.csrf_token.clone(),
        created_ms: session.created_ms,
        expires_ms: session.expires_ms(),
    }
}

fn set_cookie(value: &str, max_age_zero: bool) -> HeaderValue {
    let end = if max_age_zero { "; Max-Age=0" } else { "" };
    let cookie = format!("{}={value}; Path=/; HttpOnly; Secure; SameSite=Strict{end}", console::COOKIE);
    // The value is hex (or empty), the rest fixed ASCII.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A new console session for `user`: the record, and the response header
/// that hands its cookie to the browser.
fn open_console_session(state: &AppState, user: &User) -> ApiResult<(ConsoleSession, HeaderValue)> {
    let (cookie, session) = console::create(&state.store, user, state.now_ms())?;
    Ok((session, set_cookie(&cookie, false)))
}

/// Refuses a request that a page of another origin could have sent.
pub struct SameOrigin;

impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        same_origin(parts).map(|()| SameOrigin).map_err(|reason| {
            state.audit(event("anonymous", "auth.csrf", false, &source(parts), Some(reason.clone())));
            ApiError::new(StatusCode::FORBIDDEN, "csrf-refused", "Request refused", reason)
        })
    }
}

/// Log in to the web console: the same check as /api/v1/auth/login
/// (throttling, lockout, TOTP, audit), answered with a session cookie
/// (`ferry_console`: HttpOnly, Secure, SameSite=Strict) instead of tokens.
/// The request must come from the console's own origin (`Origin` or
/// `Sec-Fetch-Site`).
#[utoipa::path(post, path = "/api/v1/auth/session", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = ConsoleSessionView,
            headers(("Set-Cookie" = String, description = "The console session cookie"))),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem),
        (status = 429, body = super::Problem)))]
async fn console_login(
    State(state): State<AppState>,
    Source(source): Source,
    _: SameOrigin,
    Body(request): Body<LoginRequest>,
) -> ApiResult<Response> {
    let user = check_login(&state, &source, &request, Some("console session")).await?;
    let (session, cookie) = open_console_session(&state, &user)?;
    let mut response = Json(session_view(&user, &session)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

fn console_only(caller: &Caller) -> ApiResult<&console::Found> {
    // Not authenticated the way this operation needs: 401, as for a
    // missing credential, so that a client knows to log in to the console.
    caller.console_session().ok_or_else(|| {
        ApiError::unauthorized(
            "this operation needs the console's session cookie (from POST /api/v1/auth/session), not a bearer token",
        )
    })
}

/// The caller's console session, with its CSRF token.
#[utoipa::path(get, path = "/api/v1/auth/session", tag = "auth", security(("console" = [])),
    responses((status = 200, body = ConsoleSessionView), (status = 401, body = super::Problem)))]
async fn console_session(caller: Caller) -> ApiResult<Json<ConsoleSessionView>> {
    let found = console_only(&caller)?;
    Ok(Json(session_view(&caller.user, &found.session)))
}

/// Log out of the web console: the session ends at the server (its cookie
/// opens nothing any more) and the browser is told to drop the cookie.
#[utoipa::path(delete, path = "/api/v1/auth/session", tag = "auth", security(("console" = [])),
    responses((status = 204, headers(("Set-Cookie" = String, description = "Clears the cookie"))),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem)))]
async fn console_logout(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    console_only(&caller)?;
    if let Some(cookie) = caller.console_cookie() {
        console::end(&state.store, cookie)?;
    }
    state.audit(caller.event("auth.logout", true, None, None, Some("console session".into())));
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie("", true));
    Ok(response)
}

/// Exchange a refresh token for a new access and refresh token. Each refresh
/// token works once; using one twice revokes that login's tokens.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = super::Problem)))]
async fn refresh_token(
    State(state): State<AppState>,
    Source(source): Source,
    Body(request): Body<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let now = state.now_ms();
    let refuse = |actor: &str, detail: String| {
        state.audit(event(actor, "auth.refresh", false, &source, Some(detail.clone())));
        ApiError::new(StatusCode::UNAUTHORIZED, "refresh-refused", "Refresh refused", detail)
    };
    let (user_id, new_token) = match refresh::rotate(&state.store, &request.refresh_token, now) {
        Ok(pair) => pair,
        Err(RefreshError::Store(e)) => return Err(ApiError::internal(e)),
        Err(e @ RefreshError::Reused { user_id }) => {
            let name = users::get(&state.store, user_id)?.map_or_else(|| user_id.to_string(), |u| u.name);
            return Err(refuse(&name, e.to_string()));
        }
        Err(e) => return Err(refuse("anonymous", e.to_string())),
    };
    let user =
        users::get(&state.store, user_id)?.ok_or_else(|| refuse("anonymous", "no such user".into()))?;
    if user.disabled {
        refresh::revoke_user(&state.store, user.id)?;
        return Err(refuse(&user.name, "the user is disabled".into()));
    }
    state.audit(event(&user.name, "auth.refresh", true, &source, None));
    Ok(Json(tokens(&state, &user, new_token)))
}

/// Log out: revoke the refresh token and every token rotated from it.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    Source(source): Source,
    Body(request): Body<RefreshRequest>,
) -> ApiResult<StatusCode> {
    if let Some(user_id) = refresh::revoke(&state.store, &request.refresh_token)? {
        let name = users::get(&state.store, user_id)?.map_or_else(|| user_id.to_string(), |u| u.name);
        state.audit(event(&name, "auth.logout", true, &source, None));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own account.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = super::Problem)))]
async fn me(caller: Caller) -> Json<UserView> {
    Json(UserView::from(&caller.user))
}

impl Validate for PasswordChange {
    fn validate(&self) -> Result<(), String> {
        if self.current_password.chars().count() > password::MAX_LEN {
            return Err("`current_password` is too long".into());
        }
        let len = self.new_password.chars().count();
        if !(password::MIN_LEN..=password::MAX_LEN).contains(&len) {
            return Err(format!(
                "`new_password` must be {} to {} characters",
                password::MIN_LEN,
                password::MAX_LEN
            ));
        }
        Ok(())
    }
}

/// Change the caller's password. Every token and console session of the
/// account stops working; a console caller gets a new session cookie.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "auth", request_body = PasswordChange,
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = super::Problem), (status = 403, body = super::Problem)))]
async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<PasswordChange>,
) -> ApiResult<Response> {
    let hash = caller.user.password_hash.clone();
    let current = request.current_password.clone();
    if !tokio::task::spawn_blocking(move || password::verify(&current, &hash)).await? {
        state.audit(caller.event("user.password", false, None, None, Some("wrong current password".into())));
        return Err(ApiError::forbidden("the current password is wrong"));
    }
    let new_hash = tokio::task::spawn_blocking(move || password::hash(&request.new_password))
        .await?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (user, ()) = users::modify_audited(
        &state.store,
        caller.user.id,
        state.now_ms(),
        |u| {
            u.password_hash = new_hash.clone();
            u.token_epoch += 1;
            u.must_change_password = false;
            Ok::<_, ApiError>(())
        },
        |_, _| Some(caller.event("user.password", true, None, None, None)),
    )?
    .ok_or_else(|| ApiError::not_found("no such user"))?;
    refresh::revoke_user(&state.store, caller.user.id)?;
    console::end_user(&state.store, caller.user.id)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    // The browser that changed it goes on in a new session; every other
    // session of the account has ended.
    if caller.console_session().is_some() {
        let (_, cookie) = open_console_session(&state, &user)?;
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

impl Validate for TotpCode {
    fn validate(&self) -> Result<(), String> {
        (self.code.chars().count() <= 16).then_some(()).ok_or_else(|| "`code` is too long".into())
    }
}

/// Start enrolling a TOTP second factor: returns the secret to scan. It is
/// not required at login until confirmed with a code.
#[utoipa::path(post, path = "/api/v1/me/totp", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = TotpEnrolment), (status = 409, body = super::Problem)))]
async fn totp_enrol(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<TotpEnrolment>> {
    if caller.user.totp.as_ref().is_some_and(|t| t.confirmed) {
        return Err(ApiError::conflict("totp-enabled", "TOTP already on", "disable it first to enrol again"));
    }
    let pending = TotpState::generate();
    let url = pending.url(&caller.user.name);
    let secret = pending.secret.clone();
    users::modify_audited(
        &state.store,
        caller.user.id,
        state.now_ms(),
        |u| {
            u.totp = Some(pending.clone());
            Ok::<_, ApiError>(())
        },
        |_, _| Some(caller.event("user.totp_enrol", true, None, None, None)),
    )?;
    Ok(Json(TotpEnrolment { secret, otpauth_url: url }))
}

/// The pending TOTP enrolment's `otpauth://` URL as a QR code (SVG), for an
/// authenticator app to scan. Only while enrolment is not yet confirmed.
#[utoipa::path(get, path = "/api/v1/me/totp/qr", tag = "auth", security(("bearer" = [])),
    responses((status = 200, content_type = "image/svg+xml", body = String),
        (status = 401, body = super::Problem), (status = 404, body = super::Problem)))]
async fn totp_qr(caller: Caller) -> ApiResult<Response> {
    let Some(pending) = caller.user.totp.as_ref().filter(|t| !t.confirmed) else {
        return Err(ApiError::not_found("no TOTP enrolment is pending; start one with POST /api/v1/me/totp"));
    };
    let svg = crate::qr::svg(&pending.url(&caller.user.name)).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-store")], svg).into_response())
}

/// Confirm TOTP enrolment with a current code; from then on login needs it.
#[utoipa::path(post, path = "/api/v1/me/totp/confirm", tag = "auth", request_body = TotpCode,
    security(("bearer" = [])), responses((status = 204), (status = 400, body = super::Problem)))]
async fn totp_confirm(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<TotpCode>,
) -> ApiResult<StatusCode> {
    let now = state.now_ms();
    let (_, accepted) = users::modify_audited(
        &state.store,
        caller.user.id,
        now,
        |u| {
            let pending = u.totp.as_mut().filter(|t| !t.confirmed);
            Ok::<_, ApiError>(pending.is_some_and(|t| {
                t.confirmed = t.check(&request.code, now);
                t.confirmed
            }))
        },
        |_, accepted| accepted.then(|| caller.event("user.totp_confirm", true, None, None, None)),
    )?
    .ok_or_else(|| ApiError::not_found("no such user"))?;
    if !accepted {
        state.audit(caller.event("user.totp_confirm", false, None, None, None));
        return Err(ApiError::bad_request("the code is wrong, or no TOTP enrolment is pending"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Turn the second factor off; needs a current code.
#[utoipa::path(post, path = "/api/v1/me/totp/disable", tag = "auth", request_body = TotpCode,
    security(("bearer" = [])), responses((status = 204), (status = 400, body = super::Problem)))]
async fn totp_disable(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<TotpCode>,
) -> ApiResult<StatusCode> {
    let now = state.now_ms();
    let (_, accepted) = users::modify_audited(
        &state.store,
        caller.user.id,
        now,
        |u| {
            let ok = u.totp.as_mut().is_some_and(|t| t.confirmed && t.check(&request.code, now));
            if ok {
                u.totp = None;
            }
            Ok::<_, ApiError>(ok)
        },
        |_, accepted| accepted.then(|| caller.event("user.totp_disable", true, None, None, None)),
    )?
    .ok_or_else(|| ApiError::not_found("no such user"))?;
    if !accepted {
        state.audit(caller.event("user.totp_disable", false, None, None, None));
        return Err(ApiError::bad_request("the code is wrong, or TOTP is not on"));
    }
    Ok(StatusCode::NO_CONTENT)
}
