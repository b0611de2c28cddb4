//! The STUN and WebSocket listeners, started beside the allocations.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::{
    metrics::Metrics,
    runtime::Relay,
    stun,
    ws::{self, server::WsLimits},
};

/// Where the listeners go; `None` leaves one off.
pub struct Listeners {
    pub stun: Option<SocketAddr>,
    pub websocket: Option<SocketAddr>,
    /// Certificate chain and key (PEM) for the WebSocket listener.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Binds both listeners (so a taken port fails the start, not later) and
/// serves them until `stop` turns true. Returns where the STUN listener is
/// bound, if it runs.
pub async fn start(
    listeners: Listeners,
    relay: &Relay,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>> {
    let mut stun_bound = None;
    if let Some(addr) = listeners.stun {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding the STUN listener on {addr}"))?;
        stun_bound = Some(socket.local_addr().context("the STUN listener's address")?);
        tokio::spawn(stun::server::serve(socket, metrics.clone()));
    }
    if let Some(addr) = listeners.websocket {
        let tls = match &listeners.tls {
            Some((cert, key)) => Some(
                ws::server::tls_acceptor(cert, key)
                    .with_context(|| format!("loading the WebSocket TLS certificate {}", cert.display()))?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the WebSocket listener on {addr}"))?;
        let directory: Arc<dyn ws::Directory> = Arc::new(relay.clone());
        let mut stop = stop;
        tokio::spawn(ws::server::serve(
            listener,
            tls,
            directory,
            WsLimits::default(),
            metrics.clone(),
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            },
        ));
    }
    Ok(stun_bound)
}
