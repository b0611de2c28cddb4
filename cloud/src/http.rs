//! The HTTP API.

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    metrics::{Metrics, RequestLabels},
    store::Store,
};

#[derive(Clone)]
pub struct AppState {
    store: Store,
    metrics: Metrics,
}

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState { store, metrics: Metrics::new() }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/version", get(version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    match state.store.schema_version() {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable", &err.to_string()),
    }
}

async fn version(State(state): State<AppState>) -> Response {
    match state.store.schema_version() {
        Ok(schema) => Json(json!({
            "name": "ferry-cloud",
            "version": env!("CARGO_PKG_VERSION"),
            "schema_version": schema,
        }))
        .into_response(),
        Err(err) => problem(StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable", &err.to_string()),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Not Found",
        &format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// An RFC 9457 problem document.
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
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
