//! The small HTTP endpoint every daemon serves: Prometheus `/metrics` and
//! `/healthz`. It binds to loopback by default; put it behind your
//! scraper's network.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

type Encode = Arc<dyn Fn() -> String + Send + Sync>;

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding the metrics listener on {addr}: {e}")))
}

/// Serves until the listener fails; `encode` renders the registry in the
/// OpenMetrics text format on every scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    encode: impl Fn() -> String + Send + Sync + 'static,
) -> std::io::Result<()> {
    let encode: Encode = Arc::new(encode);
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(encode);
    axum::serve(listener, app).await
}

async fn scrape(State(encode): State<Encode>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], encode())
}
