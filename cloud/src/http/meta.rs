//! Health, version, metrics and the OpenAPI document.

use axum::{
    Json,
    extract::{Request, State},
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, problem::ApiError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(version))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
struct Version {
    name: &'static str,
    version: &'static str,
    schema_version: u32,
}

/// Whether the server and its storage answer.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, body = Health), (status = 503, body = super::Problem)))]
async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.schema_version().map_err(unavailable)?;
    Ok(Json(Health { status: "ok" }))
}

/// The server's version and storage schema.
#[utoipa::path(get, path = "/api/v1/version", tag = "meta",
    responses((status = 200, body = Version), (status = 503, body = super::Problem)))]
async fn version(State(state): State<AppState>) -> Result<Json<Version>, ApiError> {
    let schema_version = state.store.schema_version().map_err(unavailable)?;
    Ok(Json(Version { name: "ferry-cloud", version: env!("CARGO_PKG_VERSION"), schema_version }))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "storage-unavailable",
        "Storage unavailable",
        e.to_string(),
    )
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    // What the store holds, read at the scrape: a restarted cloud shows it
    // before any session changes, and a leak shows at all.
    if let Ok(n) = crate::sessions::live_count(&state.store) {
        state.metrics.sessions_live.set(n as i64);
    }
    if let Ok(n) = crate::sessions::subnets_held(&state.store) {
        state.metrics.subnets_held.set(n as i64);
    }
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi(State(state): State<AppState>) -> Response {
    let doc = state.openapi_json().unwrap_or_default().to_string();
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

pub async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", request.method(), request.uri().path()))
}
