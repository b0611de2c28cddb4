//! The gateway's TOML configuration (`/etc/ferry/gateway.toml` by default).
//!
//! ```toml
//! [uplink]
//! interface = "enp1s0"     # toward the customer network and the internet
//! wireguard_port = 51820   # the one UDP port the gateway exposes
//! xdp_mode = "auto"        # auto, native or generic
//! ```

use std::{num::NonZeroU16, path::Path};

use anyhow::{Context, Result};
use ferry_ebpf::AttachMode;
use serde::Deserialize;

pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub uplink: Uplink,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub interface: Option<String>,
    pub wireguard_port: Option<NonZeroU16>,
    #[serde(default, deserialize_with = "de_attach_mode")]
    pub xdp_mode: Option<AttachMode>,
}

fn de_attach_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<AttachMode>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("gateway");
    let loaded = ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the gateway configuration")?;
    if let Some(source) = &loaded.source {
        tracing::debug!(file = %source.display(), "configuration loaded");
    }
    Ok(loaded.config)
}
