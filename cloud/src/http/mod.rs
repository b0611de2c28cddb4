//! The HTTP API: REST under `/api/v1`, documented by the OpenAPI document
//! at `/api/v1/openapi.json`, which is generated from the same handlers that
//! serve the routes (utoipa-axum), so the two cannot drift apart.

mod auth;
pub mod extract;
mod meta;
pub mod problem;
mod tokens;
mod users;

use std::{
    ops::Deref,
    sync::{Arc, OnceLock},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

use crate::{
    audit::{self, Event},
    auth::{AccessKey, LoginPolicy},
    clock::{SharedClock, SystemClock},
    metrics::{Metrics, RequestLabels},
    store::{BackendError, Store},
};
pub use problem::{ApiError, Problem};

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub metrics: Metrics,
    pub clock: SharedClock,
    pub access: AccessKey,
    pub policy: LoginPolicy,
    openapi: OnceLock<String>,
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(store: Store) -> Result<AppState, BackendError> {
        AppState::with_clock(store, Arc::new(SystemClock))
    }

    pub fn with_clock(store: Store, clock: SharedClock) -> Result<AppState, BackendError> {
        Ok(AppState(Arc::new(Inner {
            access: AccessKey::load_or_create(&store)?,
            store,
            metrics: Metrics::new(),
            clock,
            policy: LoginPolicy::default(),
            openapi: OnceLock::new(),
        })))
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Appends to the audit log. A failure is logged and counted; it does
    /// not undo the action, which is already durable.
    pub fn audit(&self, event: Event) {
        if let Err(error) = audit::append(&self.store, self.now_ms(), event) {
            self.metrics.audit_failures.inc();
            tracing::error!(%error, "appending to the audit log failed");
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry cloud API",
        description = "Users, gateways, relays, sessions, approvals, configuration issuance and the audit log \
                       of Ferry's control plane. Authenticate with `Authorization: Bearer <token>`: an access \
                       token from /api/v1/auth/login, or an API token."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "meta", description = "Health, version, metrics and this document"),
        (name = "auth", description = "Login, token refresh, the caller's own account"),
        (name = "users", description = "User accounts and roles (Administrator)"),
        (name = "tokens", description = "Scoped API tokens for automation (Administrator)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router with its OpenAPI document.
pub fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(meta::routes())
        .merge(auth::routes())
        .merge(users::routes())
        .merge(tokens::routes())
        .split_for_parts();
    let _ = state.openapi.set(doc.to_json().expect("the OpenAPI document serializes"));
    let router = router
        .fallback(meta::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state);
    (router, doc)
}

pub fn router(state: AppState) -> Router {
    api(state).0
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels { method, route, status: response.status().as_u16() })
        .inc();
    response
}

impl AppState {
    /// A user was just disabled by `by`: end what they started and revoke
    /// what was issued to them.
    pub fn user_disabled(&self, user: &crate::users::User, by: &str) -> Result<(), ApiError> {
        tracing::info!(user = %user.name, by, "user disabled");
        Ok(())
    }
}
