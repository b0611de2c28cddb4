//! Ferry's control plane: the library behind `ferry-cloud`.
//!
//! The binary is a thin shell; everything it serves lives here so that tests
//! can build the same router over a temporary store.

pub mod audit;
pub mod config;
pub mod http;
pub mod metrics;
pub mod password;
pub mod rights;
pub mod server;
pub mod store;
pub mod tls;
pub mod users;
