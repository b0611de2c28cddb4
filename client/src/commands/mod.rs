//! The commands. Each runs as the user who typed it: the cloud calls with
//! the user's own login, the tunnel commands through the service's socket.

pub mod account;
pub mod export;
pub mod install;
pub mod sessions;
pub mod tunnel;

use std::{future::Future, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::cloud::{Cloud, credentials::Store};

/// Runs the async part of a command on a small runtime of its own.
pub fn block_on<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(work)
}

/// The stored login's cloud.
pub fn cloud() -> Result<Cloud> {
    let store = Store::default_location()?;
    Ok(Cloud::open(store)?)
}

pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `2 h 05 min`, `4 min 10 s`, `12 s`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// `812 B`, `1.4 KiB`, `3.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(duration(Duration::from_secs(12)), "12 s");
        assert_eq!(duration(Duration::from_secs(250)), "4 min 10 s");
        assert_eq!(duration(Duration::from_secs(7500)), "2 h 05 min");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1434), "1.4 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
