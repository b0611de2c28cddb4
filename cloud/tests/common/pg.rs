//! PostgreSQL for the cloud's tests: one server per test binary, started on
//! first use in a temporary folder (see `ferry_lab::postgres`), and a fresh
//! database for every caller. The server goes when the test binary exits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

use ferry_lab::postgres::{Durability, Postgres};

static SERVER: OnceLock<Postgres> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// Whether the cloud's API tests should run over PostgreSQL instead of
/// sled (`FERRY_TEST_STORAGE=postgres`, which `cargo xtask test` sets for
/// its second run of them).
pub fn selected() -> bool {
    std::env::var("FERRY_TEST_STORAGE").is_ok_and(|s| s == "postgres")
}

pub fn server() -> &'static Postgres {
    SERVER.get_or_init(|| Postgres::start(Durability::Relaxed).expect("a PostgreSQL server for the tests"))
}

/// The URL of a new, empty database.
pub fn fresh_database() -> String {
    let server = server();
    let name = format!("t{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    server.create_database(&name).unwrap();
    server.url(&name)
}
