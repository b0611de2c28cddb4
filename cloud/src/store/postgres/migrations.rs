//! The SQL schema, versioned: each migration runs once, in order, when a
//! `ferry-cloud` connects, and a database whose schema is newer than this
//! build knows is refused. Statements are idempotent (`IF NOT EXISTS`), so
//! replicas that start together on an empty database may all run them;
//! the version row is written after them. Only plain SQL that PostgreSQL,
//! CockroachDB and YugabyteDB share is used (see docs/operators-postgres.md
//! for what was checked).

use tokio_postgres::Client;

use super::{Failure, failure};
use crate::store::BackendError;

struct Migration {
    version: i32,
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    // The documents: one ordered key-value table, partitioned by the
    // collection's name, and the id sequence.
    Migration {
        version: 1,
        statements: &[
            "CREATE TABLE IF NOT EXISTS ferry_kv (
                collection TEXT NOT NULL,
                key BYTEA NOT NULL,
                value BYTEA NOT NULL,
                PRIMARY KEY (collection, key)
            )",
            "CREATE SEQUENCE IF NOT EXISTS ferry_ids",
        ],
    },
    // Several replicas: who runs (with a heartbeat: a lease), which
    // gateways and relays are connected to whom, and the signals replicas
    // send each other, in order.
    Migration {
        version: 2,
        statements: &[
            "CREATE TABLE IF NOT EXISTS ferry_replicas (
                id BIGINT PRIMARY KEY,
                started TIMESTAMPTZ NOT NULL DEFAULT now(),
                seen TIMESTAMPTZ NOT NULL DEFAULT now(),
                info TEXT NOT NULL DEFAULT ''
            )",
            "CREATE TABLE IF NOT EXISTS ferry_presence (
                kind TEXT NOT NULL,
                id BIGINT NOT NULL,
                replica BIGINT NOT NULL,
                conn BIGINT NOT NULL,
                live TEXT NOT NULL,
                PRIMARY KEY (kind, id)
            )",
            "CREATE SEQUENCE IF NOT EXISTS ferry_signal_seq",
            "CREATE TABLE IF NOT EXISTS ferry_signals (
                seq BIGINT PRIMARY KEY DEFAULT nextval('ferry_signal_seq'),
                origin BIGINT NOT NULL,
                body TEXT NOT NULL,
                at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        ],
    },
];

/// The newest schema version this build knows.
pub const LATEST: i32 = 2;

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS ferry_schema (
    version INT PRIMARY KEY,
    applied_ms BIGINT NOT NULL
)";

/// The schema version the database holds (0: none yet).
pub async fn version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let row = client.query_one("SELECT COALESCE(MAX(version), 0) FROM ferry_schema", &[]).await?;
    row.try_get(0)
}

/// Brings the schema up to [`LATEST`], or refuses a newer one.
pub async fn run(client: &Client, now_ms: u64) -> Result<i32, BackendError> {
    // Replicas starting together may race on creating the same objects;
    // PostgreSQL can then fail one `IF NOT EXISTS` with a duplicate. The
    // next attempt finds them made.
    let mut attempts = 0;
    loop {
        match migrate_once(client, now_ms).await {
            Ok(version) => return Ok(version),
            Err(Failure::Other(message)) | Err(Failure::Retry(message)) if attempts < 5 => {
                attempts += 1;
                tracing::debug!(%message, "retrying the schema migration");
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempts)).await;
            }
            Err(Failure::TooNew(found)) => {
                return Err(BackendError::Io(format!(
                    "the database holds ferry-cloud schema version {found}, newer than this ferry-cloud \
                     understands ({LATEST}); run the newer ferry-cloud that wrote it, or restore a backup"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn migrate_once(client: &Client, now_ms: u64) -> Result<i32, Failure> {
    client.batch_execute(SCHEMA_TABLE).await.map_err(failure)?;
    let found = version(client).await.map_err(failure)?;
    if found > LATEST {
        return Err(Failure::TooNew(found));
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        for statement in migration.statements {
            client.batch_execute(statement).await.map_err(failure)?;
        }
        client
            .execute(
                "INSERT INTO ferry_schema (version, applied_ms) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
                &[&migration.version, &(now_ms as i64)],
            )
            .await
            .map_err(failure)?;
        tracing::info!(version = migration.version, "database schema migrated");
    }
    Ok(LATEST.max(found))
}
