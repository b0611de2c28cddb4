use tokio::signal::unix::{SignalKind, signal};

/// Waits for SIGINT or SIGTERM and returns its name.
pub async fn shutdown() -> std::io::Result<&'static str> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}
