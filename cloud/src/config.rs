//! The cloud's TOML configuration (`/etc/ferry/cloud.toml` by default).
//!
//! ```toml
//! listen = "127.0.0.1:7600"
//! data_dir = "/var/lib/ferry-cloud"
//! allow_plain_http = false
//! # TLS from these files; without them, a self-signed certificate is made
//! # in data_dir/tls on first start. Set both or neither.
//! tls_cert = "/etc/ferry/cloud-cert.pem"
//! tls_key = "/etc/ferry/cloud-key.pem"
//! # Extra DNS names or IP addresses for the self-signed certificate, beside
//! # localhost, 127.0.0.1 and ::1 (only used when it is made).
//! tls_names = ["cloud.example.com", "192.0.2.10"]
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
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub tls_names: Vec<String>,
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("cloud");
    Ok(ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the cloud configuration")?
        .config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_parse_and_default_to_none() {
        let config: Config = ferry_daemon::config::parse(
            "tls_cert = \"/etc/ferry/c.pem\"\ntls_key = \"/etc/ferry/k.pem\"\ntls_names = [\"cloud.example\"]\n",
        )
        .unwrap();
        assert_eq!(config.tls_cert.as_deref(), Some(Path::new("/etc/ferry/c.pem")));
        assert_eq!(config.tls_key.as_deref(), Some(Path::new("/etc/ferry/k.pem")));
        assert_eq!(config.tls_names, ["cloud.example"]);

        let config: Config = ferry_daemon::config::parse("").unwrap();
        assert!(config.tls_cert.is_none() && config.tls_key.is_none() && config.tls_names.is_empty());
    }
}
