//! The relay's TOML configuration (`/etc/ferry/relay.toml` by default).
//!
//! ```toml
//! interface = "eth0"   # the public interface XDP attaches to
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public interface.
    pub interface: Option<String>,
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("relay");
    Ok(ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the relay configuration")?
        .config)
}
