//! The STUN and WebSocket listeners (wired with the stun and ws modules).

use anyhow::Result;

use crate::{config::Config, metrics::Metrics, runtime::Relay};

pub async fn start(_config: &Config, _relay: &Relay, _metrics: &Metrics) -> Result<()> {
    Ok(())
}
