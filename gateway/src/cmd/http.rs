//! The HTTP client of `enroll` and `diagnose`: ferry-connect's
//! (`ferry_connect::http`, hyper over plain TCP or TLS pinned to one
//! certificate), on a runtime of the command's own.

use std::future::Future;

use anyhow::{Context as _, Result};
pub use ferry_connect::http::{
    Client, CloudUrl, HttpError, Method, Request, connect, exchange, resolve, tls,
};

/// The gateway's `User-Agent`.
pub const USER_AGENT: &str = concat!("ferry-gateway/", env!("CARGO_PKG_VERSION"));

/// Runs `future` to completion on a runtime of its own: the commands are
/// blocking, and a few requests do not need more than one thread.
pub fn block_on<T>(future: impl Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?
        .block_on(future))
}

/// A request with the gateway's `User-Agent`.
pub fn request(method: Method, path: &str) -> Request<'_> {
    Request::new(method, path).user_agent(USER_AGENT)
}
