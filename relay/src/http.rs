//! The relay's `/metrics` and `/healthz` (the endpoint is
//! `ferry_daemon::metrics_http`, shared by the daemons).

use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::metrics::Metrics;

pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9478);

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    Ok(ferry_daemon::metrics_http::bind(addr).await?)
}

pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> Result<()> {
    ferry_daemon::metrics_http::serve(listener, move || metrics.encode()).await.context("serving metrics")
}
