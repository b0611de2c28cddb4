//! The UDP loop around [`respond`](super::respond).

use std::time::Duration;

use tokio::net::UdpSocket;

use super::{Outcome, respond};
use crate::metrics::{Metrics, OutcomeLabels};

/// Larger than any STUN request worth answering; a longer datagram arrives
/// cut and fails the length check.
const RECV_BUFFER: usize = 2048;

/// Answers STUN Binding requests on `socket` until the task is dropped,
/// counting every datagram in `metrics.stun_requests` by outcome
/// (`answered`, `error_response`, `not_binding`, `malformed`). Receive and
/// send errors are logged and skipped: one peer's unreachable port must not
/// stop the service.
pub async fn serve(socket: UdpSocket, metrics: Metrics) {
    let mut buf = vec![0u8; RECV_BUFFER];
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(%addr, "STUN server listening");
    }
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "STUN receive failed");
                // Not a busy loop if the error persists.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let outcome = respond(&buf[..len], from);
        metrics.stun_requests.get_or_create(&OutcomeLabels { outcome: outcome.label() }).inc();
        match &outcome {
            Outcome::Malformed(e) => {
                tracing::debug!(%from, len, error = %e, "STUN: dropped a malformed datagram")
            }
            Outcome::NotBinding => {
                tracing::debug!(%from, len, "STUN: no answer to a message that is not a Binding request")
            }
            Outcome::Answered(_) | Outcome::ErrorResponse(_) => {}
        }
        if let Some(response) = outcome.response()
            && let Err(e) = socket.send_to(response, from).await
        {
            tracing::debug!(%from, error = %e, "STUN: sending the response failed");
        }
    }
}
