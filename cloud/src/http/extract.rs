//! Request extractors: validated JSON bodies and the authenticated caller.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State, rejection::JsonRejection},
    http::{Method, StatusCode, header, request::Parts},
};
use ferry_daemon::web::sources::{self, Over, Share, Tally};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use serde::de::DeserializeOwned;

use super::{AppState, problem::ApiError};
use crate::{
    audit::Event,
    auth::{Scope, access::AccessError, api_tokens, console},
    metrics::{Metrics, ReasonLabels},
    rights::{self, Action},
    users::{self, User},
};

/// Inputs that can be checked beyond their JSON shape.
pub trait Validate {
    fn validate(&self) -> Result<(), String>;
}

/// A JSON body that parsed and validated. Rejections are problem documents
/// that name the field and the problem.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + Validate, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => {
                value.validate().map_err(ApiError::bad_request)?;
                Ok(Body(value))
            }
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// How long a client may take to send a request body, from the end of its
/// head: a client that trickles its body cannot hold a connection forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a body beyond [`super::BODY_LIMIT`] is read and dropped
/// before the refusal.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Bytes of request bodies held at once, by all clients together. Bodies
/// are read whole before anything checks the caller's credentials (see
/// [`whole_body`]), so without a budget every open connection could hold a
/// body of [`super::BODY_LIMIT`]: 4096 × 64 KiB = 256 MiB, from anyone.
/// The API's bodies are small (a login is under 200 bytes): 16 MiB is 256
/// bodies of the largest size at once.
pub const BODY_BUDGET: usize = 16 * 1024 * 1024;

/// Bytes of request bodies held at once from one client address (an IPv4
/// address, an IPv6 /64): 16 bodies of the largest size. One address then
/// cannot spend the budget of everyone; that takes 16 addresses.
pub const BODY_BUDGET_PER_SOURCE: usize = 1024 * 1024;

/// The bytes request bodies may hold while they are read and handled: in
/// all and per client address. A body is charged for what has arrived of
/// it (not for what its `Content-Length` announces: announcing costs an
/// attacker nothing), chunk by chunk, and keeps its charge until its
/// handler has answered. A chunk over either limit gets the request a 503:
/// what it held is given back at once, and the rest of the body is read
/// and dropped as for a 413. Bytes read only to be dropped are never held
/// and are not charged.
///
/// So whatever the clients do, request bodies hold at most
/// [`BODY_BUDGET`] bytes in all and [`BODY_BUDGET_PER_SOURCE`] per address.
/// What each connection buffers below HTTP (hyper's read buffer, TLS
/// records) is bounded per connection instead
/// (`ferry_daemon::web::server::MAX_BUFFER`), and connections in number
/// (`MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_SOURCE`).
#[derive(Clone)]
pub struct BodyBudget {
    tally: Arc<Tally>,
    held: Gauge,
    refused: Family<ReasonLabels, Counter>,
    read_timeout: Duration,
}

impl BodyBudget {
    /// A budget of `total` bytes, `per_source` of them from one address,
    /// reported in `metrics`.
    pub fn new(total: usize, per_source: usize, metrics: &Metrics) -> BodyBudget {
        BodyBudget {
            tally: Tally::new(total, per_source),
            held: metrics.body_bytes_held.clone(),
            refused: metrics.bodies_refused.clone(),
            read_timeout: BODY_READ_TIMEOUT,
        }
    }

    /// The same budget, with bodies read within `timeout` rather than
    /// [`BODY_READ_TIMEOUT`].
    pub fn with_read_timeout(self, timeout: Duration) -> BodyBudget {
        BodyBudget { read_timeout: timeout, ..self }
    }

    /// The default budget ([`BODY_BUDGET`], [`BODY_BUDGET_PER_SOURCE`]).
    pub fn standard(metrics: &Metrics) -> BodyBudget {
        BodyBudget::new(BODY_BUDGET, BODY_BUDGET_PER_SOURCE, metrics)
    }

    /// Bytes held now, by all requests.
    pub fn held(&self) -> usize {
        self.tally.total()
    }

    fn charge(&self, source: sources::Source) -> Charge {
        Charge { share: self.tally.share(source), held: self.held.clone(), refused: self.refused.clone() }
    }
}

/// What one request's body holds of the budget; given back when dropped.
struct Charge {
    share: Share,
    held: Gauge,
    refused: Family<ReasonLabels, Counter>,
}

impl Charge {
    fn grow(&mut self, bytes: usize) -> Result<(), ApiError> {
        match self.share.grow(bytes) {
            Ok(()) => {
                self.held.inc_by(gauge_value(bytes));
                Ok(())
            }
            Err(over) => {
                let (labels, whose) = match over {
                    Over::Total => (ReasonLabels::GLOBAL, "all clients"),
                    Over::PerSource => (ReasonLabels::PER_SOURCE, "your address"),
                };
                self.refused.get_or_create(&labels).inc();
                tracing::debug!(source = %self.share.source(), reason = over.label(), "body budget spent");
                Err(ApiError {
                    retry_after_s: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "Server busy",
                        format!(
                            "the server holds as many request bodies as it will for {whose} now; try again \
                             shortly"
                        ),
                    )
                })
            }
        }
    }

    /// Gives back everything charged so far.
    fn clear(&mut self) {
        let source = self.share.source();
        self.held.dec_by(gauge_value(self.share.amount()));
        // The old share gives its bytes back as it goes.
        self.share = self.share.tally().share(source);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.dec_by(gauge_value(self.share.amount()));
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Middleware: every request's body is read whole before the handler runs,
/// within [`BODY_READ_TIMEOUT`] (or the budget's own), [`super::BODY_LIMIT`]
/// and the [`BodyBudget`] (the API's bodies are small). A handler that
/// refuses a request before reading its body (no credential, no right)
/// would otherwise leave the body unread, and hyper then closes the
/// connection: a client that reuses it (every keep-alive pool does) finds it
/// closed under its next request.
pub async fn whole_body(
    State(budget): State<BodyBudget>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    // Without the connection's address (a router served without it, as in
    // some tests), every request counts as one source.
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip());
    let mut charge = budget.charge(sources::Source::of(ip));
    let response = match read_body(body, &mut charge, budget.read_timeout).await {
        Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(refusal) => refusal.into_response(),
    };
    // The body (and what the handler made of it) is held until here.
    drop(charge);
    response
}

/// Reads a body of at most [`super::BODY_LIMIT`] bytes, charging `charge`
/// for what it keeps. A larger one is refused (413), and one the budget
/// cannot take (503), but first read on to its end (up to [`DRAIN_LIMIT`]
/// more) and dropped: most clients send their whole body before they read
/// the answer, and a connection closed under them would be all they see,
/// not the problem that says why.
async fn read_body(
    body: axum::body::Body,
    charge: &mut Charge,
    timeout: Duration,
) -> Result<axum::body::Bytes, ApiError> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut beyond = 0usize;
    // Once the budget refuses, the body is drained as one too large is, so
    // that the client sees the 503 rather than a reset.
    let mut refused = None;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
            if beyond == 0 && refused.is_none() {
                if kept.len() + chunk.len() <= super::BODY_LIMIT {
                    match charge.grow(chunk.len()) {
                        Ok(()) => {
                            // Exactly what is charged: no doubling of the capacity.
                            kept.reserve_exact(chunk.len());
                            kept.extend_from_slice(&chunk);
                            continue;
                        }
                        Err(refusal) => refused = Some(refusal),
                    }
                }
                // Too large or refused: nothing more is kept, so what was
                // kept is given back while the rest is drained.
                kept = Vec::new();
                charge.clear();
            }
            beyond += chunk.len();
            if beyond > DRAIN_LIMIT {
                break;
            }
        }
        Ok::<_, ApiError>(())
    };
    let (timed_out, failed) = match tokio::time::timeout(timeout, read).await {
        Ok(result) => (false, result.err()),
        Err(_) => (true, None),
    };
    // A refusal was counted when it was made: it is the answer even if
    // the rest of the body then failed to arrive.
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    if let Some(failure) = failed {
        return Err(failure);
    }
    if timed_out {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Body too slow",
            format!("the request body did not arrive within {} s", timeout.as_secs_f32()),
        ));
    }
    if beyond > 0 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("request bodies are limited to {} bytes", super::BODY_LIMIT),
        ));
    }
    Ok(kept.into())
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid body", e.body_text())
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("request bodies are limited to {} bytes", super::BODY_LIMIT),
        ),
        other => ApiError::bad_request(other.body_text()),
    }
}

/// Query parameters; a bad one is a problem document that names it.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Params(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Path parameters; one that does not parse (an id that is not a number)
/// is a problem document that names it, as every other refusal.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The client's address, from the connection (proxies' headers are not
/// trusted: they are the client's to forge).
pub fn source(parts: &Parts) -> Option<String> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

/// Where a request came from, for the audit log; never refuses.
pub struct Source(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(source(parts)))
    }
}

/// How a caller proved who they are.
#[derive(Clone, Debug)]
pub enum Via {
    /// A login's five-minute access token.
    Access,
    /// A scoped API token.
    ApiToken,
    /// The web console's session cookie; its state-changing requests carry
    /// the session's CSRF token and come from the console's own origin.
    Console(Box<console::Found>),
}

/// The credential as presented, kept so that a long-lived response (an
/// event stream) can check it again later.
#[derive(Clone)]
enum Credential {
    Bearer(String),
    Cookie(String),
}

/// An authenticated user: by a five-minute access token, by an API token
/// limited to `scopes`, or by a console session cookie. The user record is
/// read fresh on every request, so disabling a user or changing a role
/// takes effect at once.
pub struct Caller {
    pub user: User,
    /// `user` as their credential was checked (see [`Caller::actor`]).
    checked: crate::sessions::ActingUser,
    /// None for a login's access token or a console session (all the
    /// role's rights).
    pub scopes: Option<Vec<Scope>>,
    pub source: Option<String>,
    pub via: Via,
    credential: Credential,
}

/// Why a credential was refused, and whether the refusal is worth an audit
/// entry (a missing credential is not: it is how every anonymous request
/// starts).
struct Refusal {
    detail: String,
    audit: bool,
}

impl Refusal {
    fn audited(detail: impl Into<String>) -> Refusal {
        Refusal { detail: detail.into(), audit: true }
    }
}

/// The value of the console's cookie in a request, if any.
pub fn console_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == console::COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

fn credential(parts: &Parts) -> Result<Credential, Refusal> {
    if let Some(header) = parts.headers.get(header::AUTHORIZATION) {
        return match header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) {
            Some(bearer) => Ok(Credential::Bearer(bearer.to_string())),
            None => Err(Refusal::audited("the Authorization header is not `Bearer <token>`")),
        };
    }
    match console_cookie(parts) {
        Some(cookie) => Ok(Credential::Cookie(cookie)),
        None => Err(Refusal {
            detail: "send `Authorization: Bearer <token>`; log in at /api/v1/auth/login".into(),
            audit: false,
        }),
    }
}

/// Who a credential belongs to: the user, the token's scopes, and how.
type Identity = (User, crate::sessions::ActingUser, Option<Vec<Scope>>, Via);

/// Who a credential belongs to now, with what it allows.
fn identify(
    state: &AppState,
    credential: &Credential,
    now: u64,
) -> Result<Result<Identity, Refusal>, ApiError> {
    // An API token names its user: both are read in one round trip.
    let mut read_user: Option<Vec<u8>> = None;
    let (user_id, scopes, epoch, via) = match credential {
        Credential::Bearer(bearer) if api_tokens::is_api_token(bearer) => {
            match api_tokens::authenticate_with_user(&state.store, bearer, now) {
                Ok((token, user)) => {
                    read_user = user;
                    (token.user_id, Some(token.scopes), None, Via::ApiToken)
                }
                Err(api_tokens::ApiTokenError::Store(e)) => return Err(e.into()),
                Err(e) => return Ok(Err(Refusal::audited(e.to_string()))),
            }
        }
        Credential::Bearer(bearer) => match state.access.verify(bearer, now) {
            Ok((id, claims)) => (id, None, Some(claims.epoch), Via::Access),
            Err(e @ (AccessError::Expired | AccessError::Invalid)) => {
                return Ok(Err(Refusal::audited(e.to_string())));
            }
        },
        Credential::Cookie(cookie) => match console::find(&state.store, cookie, now)? {
            Ok(found) => {
                (found.session.user_id, None, Some(found.session.epoch), Via::Console(Box::new(found)))
            }
            Err(refused) => return Ok(Err(Refusal::audited(refused.to_string()))),
        },
    };
    let read_user = match read_user {
        Some(bytes) => Some(bytes),
        None => {
            let (collection, key) = users::stored_at(user_id);
            state.store.backend().get(collection, &key)?
        }
    };
    let user = match read_user {
        Some(bytes) => Some((users::from_stored(&bytes)?, bytes)),
        None => None,
    };
    Ok(match user {
        Some((user, _)) if user.disabled => Err(Refusal::audited(format!("user {} is disabled", user.name))),
        Some((user, _)) if epoch.is_some_and(|e| e != user.token_epoch) => Err(Refusal::audited(match via {
            Via::Console(_) => {
                "the console session was ended (password changed or user disabled); log in again"
            }
            _ => "the access token was revoked; log in again",
        })),
        Some((user, stored)) => {
            let checked = crate::sessions::ActingUser { id: user.id, stored, role: user.role, epoch };
            Ok((user, checked, scopes, via))
        }
        None => Err(Refusal::audited("the credential's user no longer exists")),
    })
}

/// Whether a request comes from a page of the server's own origin (the
/// check is shared with the gateway's panel: `ferry_daemon::web`).
pub fn same_origin(parts: &Parts) -> Result<(), String> {
    ferry_daemon::web::same_origin(&parts.headers)
}

/// The checks a console request that changes state must pass: its own
/// origin and the session's CSRF token.
fn csrf_check(parts: &Parts, found: &console::Found) -> Result<(), String> {
    same_origin(parts)?;
    let presented = parts.headers.get(console::CSRF_HEADER).and_then(|v| v.to_str().ok());
    match presented {
        Some(token) if found.session.csrf_matches(token) => Ok(()),
        Some(_) => Err("the X-CSRF-Token header does not match the console session".into()),
        None => Err("a console request that changes state must send the X-CSRF-Token header".into()),
    }
}

impl Caller {
    /// Authenticates a request by its bearer token or its console cookie;
    /// a console request that changes state must also pass the CSRF
    /// checks. Unlike the extractor, it lets an account with a one-time
    /// password through (the console's pages send it to the password page).
    pub fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
        let source = source(parts);
        let refuse = |refusal: Refusal| {
            if refusal.audit {
                state.audit(Event {
                    actor: "anonymous".into(),
                    action: "auth.token".into(),
                    allowed: false,
                    source: source.clone(),
                    session: None,
                    gateway: None,
                    detail: Some(refusal.detail.clone()),
                });
            }
            ApiError::unauthorized(refusal.detail)
        };
        let credential = credential(parts).map_err(refuse)?;
        let now = state.now_ms();
        let (user, checked, scopes, via) = identify(state, &credential, now)?.map_err(refuse)?;
        let caller = Caller { user, checked, scopes, source, via, credential };
        if let Via::Console(found) = &caller.via {
            let safe = matches!(parts.method, Method::GET | Method::HEAD);
            if !safe && let Err(reason) = csrf_check(parts, found) {
                state.audit(caller.event("auth.csrf", false, None, None, Some(reason.clone())));
                return Err(ApiError::new(StatusCode::FORBIDDEN, "csrf-refused", "Request refused", reason));
            }
            // Only what a person does keeps the session from idling out:
            // not the event stream, nor the reads the console's script
            // makes by itself when an event arrives.
            let automatic = safe
                && (parts.uri.path() == "/api/v1/events"
                    || parts.headers.contains_key(console::BACKGROUND_HEADER));
            if !automatic {
                console::touch(&state.store, found, now)?;
            }
        }
        Ok(caller)
    }

    /// Whether the credential this caller came with still holds, for the
    /// same user in the same role (an event stream ends when it does not).
    pub fn still_valid(&self, state: &AppState) -> bool {
        matches!(
            identify(state, &self.credential, state.now_ms()),
            Ok(Ok((user, _, _, _))) if user.id == self.user.id && user.role == self.user.role
        )
    }

    /// The console session the caller came with, if any.
    pub fn console_session(&self) -> Option<&console::Found> {
        match &self.via {
            Via::Console(found) => Some(found),
            _ => None,
        }
    }

    /// The console cookie's value, if the caller came with one.
    pub fn console_cookie(&self) -> Option<&str> {
        match (&self.via, &self.credential) {
            (Via::Console(_), Credential::Cookie(cookie)) => Some(cookie),
            _ => None,
        }
    }
}

/// Paths an account with a one-time password may use: its own account,
/// the password change, and the console session (to log out).
const ONE_TIME_PASSWORD_PATHS: [&str; 3] = ["/api/v1/me", "/api/v1/me/password", "/api/v1/auth/session"];

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::authenticate(parts, state)?;
        if caller.user.must_change_password && !ONE_TIME_PASSWORD_PATHS.contains(&parts.uri.path()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "password-change-required",
                "Password change required",
                "this account has a one-time password: set your own at /api/v1/me/password first",
            ));
        }
        Ok(caller)
    }
}

impl Caller {
    /// The caller as the one who acts, for the audit log and for the
    /// session changes made for them, which expect their user record
    /// unchanged since their credential was checked
    /// ([`crate::sessions::ActingUser`]).
    pub fn actor(&self) -> crate::app::Actor {
        crate::app::Actor {
            name: self.user.name.clone(),
            source: self.source.clone(),
            user: Some(self.checked.clone()),
        }
    }

    /// Whether the caller's role and token allow `action` (no audit).
    pub fn may(&self, action: Action, scope: Scope) -> bool {
        rights::allowed(self.user.role, action) && self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }

    /// Checks the rights table and the token's scopes. A refusal is
    /// audited as `what`, with the reason, and answered 403.
    pub fn authorize(
        &self,
        state: &AppState,
        action: Action,
        scope: Scope,
        what: &str,
        session: Option<u64>,
        gateway: Option<u64>,
    ) -> Result<(), ApiError> {
        let reason = if !rights::allowed(self.user.role, action) {
            format!("a {} may not {}", self.user.role.label(), action.label())
        } else if self.scopes.as_ref().is_some_and(|s| !s.contains(&scope)) {
            format!("this API token lacks the scope {}", scope.label())
        } else {
            return Ok(());
        };
        state.audit(self.event(what, false, session, gateway, Some(reason.clone())));
        Err(ApiError::forbidden(reason))
    }

    /// An audit event by this caller.
    pub fn event(
        &self,
        what: &str,
        allowed: bool,
        session: Option<u64>,
        gateway: Option<u64>,
        detail: Option<String>,
    ) -> Event {
        Event {
            actor: self.user.name.clone(),
            action: what.to_string(),
            allowed,
            source: self.source.clone(),
            session: session.map(|s| s.to_string()),
            gateway: gateway.map(|g| g.to_string()),
            detail,
        }
    }
}
