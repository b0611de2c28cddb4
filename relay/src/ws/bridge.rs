//! The `ferry-relay ws-bridge` subcommand: lets a stock WireGuard use the
//! WebSocket relay. The bridge itself is `ferry_connect::ws::bridge` (a
//! local UDP socket carried over a reconnecting WebSocket); this is its
//! command line. The daemon wires it as
//!
//! ```text
//! Command::WsBridge(args) => {
//!     let options = args.into_options()?;
//!     let shutdown = ferry_daemon::signals::Shutdown::install()?;
//!     runtime.block_on(ferry_relay::ws::bridge::run(options, async move { shutdown.wait().await; }))
//! }
//! ```

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, bail};
pub use ferry_connect::ws::bridge::{
    Bridge, BridgeError, BridgeOptions, DEFAULT_LISTEN, DEFAULT_LISTEN_ADDR, run,
};

/// The `ferry-relay ws-bridge` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BridgeArgs {
    /// The relay's WebSocket URL (ws:// or wss://), as the session's
    /// configuration gives it.
    #[arg(long)]
    pub url: String,
    /// The allocation's token. A command line is visible to every local
    /// user: prefer the environment or --token-file.
    #[arg(long, env = "FERRY_WS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the relay's certificate (AB:CD:... or hex),
    /// required for wss://.
    #[arg(long)]
    pub pin: Option<String>,
    /// The local UDP address; point the WireGuard peer's Endpoint here.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

impl BridgeArgs {
    pub fn into_options(self) -> anyhow::Result<BridgeOptions> {
        let token = match (self.token, &self.token_file) {
            (Some(token), None) => token,
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token from {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => bail!("give the allocation's token with --token-file or FERRY_WS_TOKEN"),
            (Some(_), Some(_)) => bail!("give the token once: --token or --token-file"),
        };
        let pin = match &self.pin {
            None => None,
            Some(text) => Some(ferry_connect::pin::parse_fingerprint(text).with_context(|| {
                format!("{text:?} is not a SHA-256 fingerprint (32 hex byte pairs like AB:CD:...)")
            })?),
        };
        let mut options = BridgeOptions::new(self.url, token, pin);
        options.listen = self.listen;
        options.check().context("the WebSocket bridge's settings (--url, --token, --pin)")?;
        Ok(options)
    }
}
