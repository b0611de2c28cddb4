//! Serving the router over TCP, with TLS or without: the accept loop that
//! the gateway's local panel shares (`ferry_daemon::web::server`).

pub use ferry_daemon::web::server::*;
