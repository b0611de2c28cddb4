//! What Ferry's daemons share.
//!
//! Each daemon (`ferry-cloud`, `ferry-relay`, `ferry-gateway`) is one clap
//! binary that reads a TOML file and lets flags override it. This crate holds
//! the parts that are the same for all of them, so they behave alike.

pub mod cli;
pub mod config;
pub mod logging;
#[cfg(feature = "login")]
pub mod login;
#[cfg(feature = "metrics")]
pub mod metrics_http;
pub mod notify;
pub mod paths;
pub mod reopen;
pub mod signals;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "web")]
pub mod web;

pub use cli::CommonArgs;
pub use config::ConfigError;
