//! Ferry's control plane: the library behind `ferry-cloud`.
//!
//! The binary is a thin shell; everything it serves lives here so that tests
//! can build the same router over a temporary store.

pub mod app;
pub mod audit;
pub mod auth;
pub mod channels;
pub mod clock;
pub mod config;
pub mod configs;
pub mod console;
pub mod gateways;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod password;
pub mod qr;
pub mod relays;
pub mod rights;
pub mod server;
pub mod sessions;
pub mod store;
pub mod tls;
pub mod users;
