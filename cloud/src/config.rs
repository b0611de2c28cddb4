//! The cloud's TOML configuration (`/etc/ferry/cloud.toml` by default).
//!
//! ```toml
//! listen = "127.0.0.1:7600"
//! data_dir = "/var/lib/ferry-cloud"
//! allow_plain_http = false
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::Deserialize;

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub allow_plain_http: bool,
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("cloud");
    Ok(ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the cloud configuration")?
        .config)
}
