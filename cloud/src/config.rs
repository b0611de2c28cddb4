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
//! # Audit entries older than this many days are removed (1 to 36500).
//! audit_retention_days = 550
//! # Connections open at once from one client address (an IPv4 address, an
//! # IPv6 /64), of 4096 in all; more are closed at once (1 to 4096).
//! max_connections_per_source = 256
//! # Bytes of request bodies held at once from one client address, of
//! # 16 MiB in all (65536 to 16777216). Raise it with the connection cap
//! # behind a proxy that connects for many clients.
//! max_body_bytes_per_source = 1048576
//! # Where the documents live. Absent: sled, embedded in data_dir. A
//! # PostgreSQL URL lets several ferry-cloud replicas share one database:
//! storage = "postgresql://ferry@db.example/ferry"
//! # or, to keep the password out of this file:
//! # [storage]
//! # url = "postgresql://ferry@db.example/ferry"
//! # password_file = "/etc/ferry/cloud-db-password"
//! # pool_size = 16
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7600);

/// How long audit entries are kept unless configured otherwise.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 550;
/// A hundred years: beyond that a number is more likely a typo than a policy.
pub const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;

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
    /// Days to keep audit entries (default 550).
    pub audit_retention_days: Option<u32>,
    /// Connections open at once from one address (default 256).
    pub max_connections_per_source: Option<usize>,
    /// Bytes of request bodies held at once from one address (default 1 MiB).
    pub max_body_bytes_per_source: Option<usize>,
    /// The database; sled in `data_dir` when absent.
    pub storage: Option<StorageConfig>,
}

/// `storage = "postgresql://..."`, or a `[storage]` table.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum StorageConfig {
    Url(String),
    Table(StorageTable),
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageTable {
    pub url: String,
    /// A file whose first line is the database password.
    pub password_file: Option<PathBuf>,
    /// Connections each replica keeps open at most (default 16).
    pub pool_size: Option<usize>,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show only where it points.
        match self.options() {
            Ok(options) => write!(f, "StorageConfig({})", options.describe()),
            Err(_) => write!(f, "StorageConfig(invalid)"),
        }
    }
}

impl StorageConfig {
    /// A URL given on the command line.
    pub fn from_url(url: String) -> StorageConfig {
        StorageConfig::Url(url)
    }

    /// The connection settings it names.
    pub fn options(&self) -> std::result::Result<crate::store::PgOptions, String> {
        let (url, password_file, pool_size) = match self {
            StorageConfig::Url(url) => (url, None, None),
            StorageConfig::Table(t) => (&t.url, t.password_file.as_deref(), t.pool_size),
        };
        if !crate::store::postgres::is_url(url) {
            return Err(format!(
                "storage must be a postgres:// or postgresql:// URL (leave it out for sled in data_dir), not `{}`",
                url.split(['@', '?']).next().unwrap_or_default()
            ));
        }
        let mut options = crate::store::PgOptions::parse(url, password_file)?;
        if let Some(size) = pool_size {
            if !(2..=1000).contains(&size) {
                return Err(format!("storage.pool_size must be 2 to 1000, not {size}"));
            }
            options.pool_size = size;
        }
        Ok(options)
    }
}

/// Checks a retention in days, for the config and the command line alike.
pub fn check_retention_days(days: u32) -> Result<u32, String> {
    if (1..=MAX_AUDIT_RETENTION_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(format!(
            "the audit retention must be 1 to {MAX_AUDIT_RETENTION_DAYS} days, not {days}: the audit log \
             cannot be switched off"
        ))
    }
}

/// `--audit-retention-days`: a whole number of days, checked as in the config.
pub fn parse_retention_days(text: &str) -> Result<u32, String> {
    check_retention_days(text.parse().map_err(|_| format!("`{text}` is not a whole number of days"))?)
}

/// Checks a cap on connections per address: at least one, at most all
/// connections.
pub fn check_connections_per_source(n: usize) -> Result<usize, String> {
    let most = ferry_daemon::web::server::MAX_CONNECTIONS;
    if (1..=most).contains(&n) {
        Ok(n)
    } else {
        Err(format!("the connections per client address must be 1 to {most}, not {n}"))
    }
}

/// Checks a budget of body bytes per address: at least one body of the
/// largest size, at most the budget of all clients.
pub fn check_body_bytes_per_source(n: usize) -> Result<usize, String> {
    let (least, most) = (crate::http::BODY_LIMIT, crate::http::extract::BODY_BUDGET);
    if (least..=most).contains(&n) {
        Ok(n)
    } else {
        Err(format!("the body bytes per client address must be {least} to {most}, not {n}"))
    }
}

/// `--max-body-bytes-per-source`: checked as in the config.
pub fn parse_body_bytes_per_source(text: &str) -> Result<usize, String> {
    check_body_bytes_per_source(text.parse().map_err(|_| format!("`{text}` is not a whole number"))?)
}

/// `--max-connections-per-source`: checked as in the config.
pub fn parse_connections_per_source(text: &str) -> Result<usize, String> {
    check_connections_per_source(text.parse().map_err(|_| format!("`{text}` is not a whole number"))?)
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("cloud");
    let config = ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the cloud configuration")?
        .config;
    if let Some(days) = config.audit_retention_days {
        check_retention_days(days).map_err(|e| anyhow!("audit_retention_days in the configuration: {e}"))?;
    }
    if let Some(n) = config.max_connections_per_source {
        check_connections_per_source(n)
            .map_err(|e| anyhow!("max_connections_per_source in the configuration: {e}"))?;
    }
    if let Some(n) = config.max_body_bytes_per_source {
        check_body_bytes_per_source(n)
            .map_err(|e| anyhow!("max_body_bytes_per_source in the configuration: {e}"))?;
    }
    Ok(config)
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

    #[test]
    fn storage_is_sled_by_default_a_url_or_a_table_with_a_password_file() {
        let config: Config = ferry_daemon::config::parse("").unwrap();
        assert!(config.storage.is_none());
        let config: Config =
            ferry_daemon::config::parse("storage = \"postgresql://ferry:pw@db.example/ferry\"\n").unwrap();
        let storage = config.storage.unwrap();
        let options = storage.options().unwrap();
        assert_eq!(options.config.get_dbname(), Some("ferry"));
        assert!(!format!("{storage:?}").contains("pw"), "{storage:?}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "[storage]\nurl = \"postgres://ferry@db.example/ferry\"\npassword_file = \"{}\"\npool_size = 4\n",
            file.display()
        );
        let config: Config = ferry_daemon::config::parse(&text).unwrap();
        let options = config.storage.unwrap().options().unwrap();
        assert_eq!(options.config.get_password(), Some(&b"from-file"[..]));
        assert_eq!(options.pool_size, 4);

        let err = StorageConfig::from_url("/var/lib/ferry".into()).options().unwrap_err();
        assert!(err.contains("postgres://"), "{err}");
        assert!(
            ferry_daemon::config::parse::<Config>("[storage]\nurl = \"postgres://x/y\"\nuser = \"z\"\n")
                .is_err()
        );
    }

    #[test]
    fn the_connections_per_source_default_to_none_and_are_bounded() {
        let config: Config = ferry_daemon::config::parse("max_connections_per_source = 1000\n").unwrap();
        assert_eq!(config.max_connections_per_source, Some(1000));
        assert_eq!(ferry_daemon::config::parse::<Config>("").unwrap().max_connections_per_source, None);
        assert_eq!(parse_connections_per_source("1"), Ok(1));
        let config: Config = ferry_daemon::config::parse("max_body_bytes_per_source = 4194304\n").unwrap();
        assert_eq!(config.max_body_bytes_per_source, Some(4 << 20));
        assert_eq!(parse_body_bytes_per_source("65536"), Ok(65536));
        assert!(parse_body_bytes_per_source("65535").is_err());
        assert!(parse_body_bytes_per_source("16777217").is_err());
        assert!(parse_body_bytes_per_source("lots").is_err());
        assert_eq!(parse_connections_per_source("4096"), Ok(4096));
        for bad in ["0", "4097", "-1", "many"] {
            let err = parse_connections_per_source(bad).unwrap_err();
            assert!(err.contains("4096") || err.contains("whole number"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_audit_retention_defaults_to_none_and_is_bounded() {
        let config: Config = ferry_daemon::config::parse("audit_retention_days = 30\n").unwrap();
        assert_eq!(config.audit_retention_days, Some(30));
        assert_eq!(ferry_daemon::config::parse::<Config>("").unwrap().audit_retention_days, None);
        assert_eq!(parse_retention_days("550"), Ok(550));
        assert_eq!(parse_retention_days("36500"), Ok(36_500));
        for bad in ["0", "36501", "-1", "ten"] {
            let err = parse_retention_days(bad).unwrap_err();
            assert!(err.contains("36500") || err.contains("whole number"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_configured_retention_out_of_range_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cloud.toml");
        std::fs::write(&file, "audit_retention_days = 0\n").unwrap();
        let err = format!("{:#}", load(Some(&file)).unwrap_err());
        assert!(err.contains("audit_retention_days") && err.contains("1 to 36500"), "{err}");
        std::fs::write(&file, "audit_retention_days = 90\n").unwrap();
        assert_eq!(load(Some(&file)).unwrap().audit_retention_days, Some(90));
    }
}
