//! The HTTP API: REST under `/api/v1`, documented by the OpenAPI document
//! at `/api/v1/openapi.json`, which is generated from the same handlers that
//! serve the routes (utoipa-axum), so the two cannot drift apart.

mod audit;
mod auth;
mod configs;
mod document;
mod events;
pub mod extract;
mod gateways;
mod meta;
pub mod problem;
pub mod sessions;
mod tokens;
mod users;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

pub use crate::app::AppState;
use crate::metrics::RequestLabels;
pub use extract::BodyBudget;
pub use problem::{ApiError, Problem};

/// The largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry cloud API",
        description = "Users, gateways, relays, sessions, approvals, configuration issuance and the audit log \
                       of Ferry's control plane. Authenticate with `Authorization: Bearer <token>`: an access \
                       token from /api/v1/auth/login, or an API token. The web console (served at `/`) uses \
                       the same operations with its session cookie from /api/v1/auth/session instead; its \
                       requests that change state send the session's CSRF token in `X-CSRF-Token`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "meta", description = "Health, version, metrics and this document"),
        (name = "auth", description = "Login, token refresh, the caller's own account"),
        (name = "users", description = "User accounts and roles (Administrator)"),
        (name = "tokens", description = "Scoped API tokens for automation (Administrator)"),
        (name = "gateways", description = "Gateways, their targets, and enrolment"),
        (name = "relays", description = "Relays and their health"),
        (name = "control", description = "WebSocket control channels of gateways and relays (ferry-control protocol)"),
        (name = "sessions", description = "Preparing, starting and ending sessions; configuration issuance"),
        (name = "configs", description = "A client's own issued configuration: status, events, new candidates, \
                                           revocation. Authenticated by the configuration's watch token, not by a user"),
        (name = "audit", description = "The hash-chained audit log: query, export as JSON Lines, verify"),
        (name = "events", description = "Changes as server-sent events, for live views such as the web console"),
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
        components.add_security_scheme(
            "console",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::console::COOKIE,
                "The web console's session cookie (from POST /api/v1/auth/session); requests that change \
                 state also send the session's CSRF token in `X-CSRF-Token`",
            ))),
        );
        components.add_security_scheme(
            "watch_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The `watch_token` of one issued configuration (from POST /api/v1/sessions/{id}/config); \
                         it works only for that configuration's endpoints",
                    ))
                    .build(),
            ),
        );
    }
}

/// The router with its OpenAPI document, with the standard body budget.
pub fn api(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let budget = BodyBudget::standard(&state.metrics);
    api_with(state, budget)
}

/// The router with its OpenAPI document; request bodies are read within
/// `budget`.
#[allow(
    clippy::expect_used,
    reason = "the OpenAPI document is plain data built at startup; it always serializes"
)]
pub fn api_with(state: AppState, budget: BodyBudget) -> (Router, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(meta::routes())
        .merge(auth::routes())
        .merge(users::routes())
        .merge(tokens::routes())
        .merge(gateways::routes())
        .merge(sessions::routes())
        .merge(configs::routes())
        .merge(crate::channels::routes())
        .merge(audit::routes())
        .merge(events::routes())
        .split_for_parts();
    let mut json = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    document::complete(&mut json);
    state.set_openapi(json.to_string());
    // The count is outside the body's reading, so that its refusals (408,
    // 413, 503) are counted like every other answer.
    let router = router
        .fallback(meta::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(budget, extract::whole_body))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state);
    (router, doc)
}

/// The API and the web console on one router, every response with the
/// console's security headers, with the standard body budget.
pub fn router(state: AppState) -> Router {
    let budget = BodyBudget::standard(&state.metrics);
    router_with(state, budget)
}

/// The API and the web console on one router; request bodies are read
/// within `budget`.
pub fn router_with(state: AppState, budget: BodyBudget) -> Router {
    api_with(state.clone(), budget.clone())
        .0
        .merge(
            crate::console::routes(state).layer(middleware::from_fn_with_state(budget, extract::whole_body)),
        )
        .layer(middleware::from_fn(crate::console::headers::secure))
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
