//! The PostgreSQL backend: the documents in one table
//! `ferry_kv (collection, key, value)` with the primary key
//! `(collection, key)`, so a collection's keys are ordered bytewise as in
//! sled, and ids from the sequence `ferry_ids`, unique across every replica
//! and restart.
//!
//! A commit is one SERIALIZABLE transaction: it reads each expectation and
//! applies the changes inside it, so a precondition that held when read
//! still holds when the transaction commits. When PostgreSQL aborts it for
//! a serialization failure or a deadlock, the whole transaction is run again
//! (its expectations are checked afresh, so a changed value then comes back
//! as [`BackendError::Conflict`]). A commit returns once the server
//! acknowledged it with `synchronous_commit` on (checked at connect): it is
//! durable on the server and its synchronous standbys.
//!
//! The statements of one call are pipelined on one connection, so a commit
//! of many changes costs few round trips.

mod bridge;
mod migrations;

use std::{fmt, path::Path, str::FromStr, time::Duration};

pub use bridge::Bridge;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::{IsolationLevel, NoTls, error::SqlState, types::ToSql};

use super::backend::{Backend, BackendError, Batch, Collection, Entry, Op};

pub use migrations::LATEST as SQL_SCHEMA_VERSION;

/// How long a call waits for a free connection, or for a new one to open.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// The longest any one call may take before it fails as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of a transaction that PostgreSQL keeps aborting for
/// serialization failures.
const MAX_ATTEMPTS: u32 = 100;

/// Where and how to connect.
#[derive(Clone)]
pub struct PgOptions {
    pub config: tokio_postgres::Config,
    pub pool_size: usize,
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("PgOptions").field("target", &describe(&self.config)).finish()
    }
}

/// Whether `storage` names a PostgreSQL database rather than a folder.
pub fn is_url(storage: &str) -> bool {
    storage.starts_with("postgres://") || storage.starts_with("postgresql://")
}

impl PgOptions {
    pub const DEFAULT_POOL_SIZE: usize = 16;

    /// From a `postgres://` URL (or `key=value` connection string), with the
    /// password from `password_file` if one is given (its first line).
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<PgOptions, String> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("the PostgreSQL connection string is not valid: {e}"))?;
        if let Some(file) = password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("reading the password file {}: {e}", file.display()))?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(format!("the password file {} is empty", file.display()));
            }
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_WAIT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ferry-cloud");
        }
        Ok(PgOptions { config, pool_size: Self::DEFAULT_POOL_SIZE })
    }

    /// The database, host and user, for messages (never the password).
    pub fn describe(&self) -> String {
        describe(&self.config)
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgres database `{}` on {} as `{}`",
        config.get_dbname().unwrap_or("(default)"),
        if hosts.is_empty() { "localhost".to_string() } else { hosts.join(",") },
        config.get_user().unwrap_or("(default)")
    )
}

pub struct PostgresBackend {
    pool: Pool,
    bridge: Bridge,
    target: String,
    config: tokio_postgres::Config,
}

/// Why a database call failed, before it becomes a [`BackendError`].
pub(crate) enum Failure {
    /// Aborted by the server to keep transactions serializable: run again.
    Retry(String),
    /// The server cannot be reached or is shutting down.
    Unavailable(String),
    /// The database's schema is newer than this build.
    TooNew(i32),
    Other(String),
}

impl From<Failure> for BackendError {
    fn from(f: Failure) -> BackendError {
        match f {
            Failure::Unavailable(m) => BackendError::Unavailable(m),
            // Retries ran out under contention: nothing was changed, and
            // trying again later is the answer (503, not 500).
            Failure::Retry(m) => BackendError::Unavailable(format!("contended, retries exhausted: {m}")),
            Failure::Other(m) => BackendError::Io(m),
            Failure::TooNew(v) => BackendError::Io(format!("the database schema version {v} is too new")),
        }
    }
}

/// Sorts a client error into what a caller can do about it.
pub(crate) fn failure(e: tokio_postgres::Error) -> Failure {
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    match e.code() {
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Failure::Retry(message)
        }
        // Shutting down, starting up, or out of connections: the server
        // will be back.
        Some(code)
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                // A standby after a failover (or a multi-host URL without
                // target_session_attrs=read-write), a cancelled statement,
                // a commit whose outcome is unknown, out of resources.
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::QUERY_CANCELED
                || *code == SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN
                || code.code().starts_with("53")
                || code.code().starts_with("08") =>
        {
            Failure::Unavailable(message)
        }
        Some(_) => Failure::Other(message),
        // No SQL state: the connection broke or never opened.
        None => Failure::Unavailable(message),
    }
}

fn pool_failure(e: deadpool_postgres::PoolError) -> Failure {
    match e {
        deadpool_postgres::PoolError::Backend(e) => failure(e),
        other => Failure::Unavailable(format!("no database connection: {other}")),
    }
}

fn io(e: tokio_postgres::Error) -> BackendError {
    failure(e).into()
}

impl PostgresBackend {
    /// Connects, checks the server's durability setting and brings the
    /// schema up to date.
    pub fn connect(options: &PgOptions) -> Result<PostgresBackend, BackendError> {
        let bridge = Bridge::new(2)?;
        let manager = Manager::from_config(
            options.config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = {
            // The pool's timers live on the bridge's runtime.
            let _entered = bridge.handle().map(tokio::runtime::Handle::enter);
            Pool::builder(manager)
                .max_size(options.pool_size.max(2))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(POOL_WAIT))
                .recycle_timeout(Some(POOL_WAIT))
                .build()
                .map_err(|e| BackendError::Io(format!("the connection pool: {e}")))?
        };
        let backend =
            PostgresBackend { pool, bridge, target: options.describe(), config: options.config.clone() };
        let pool = backend.pool.clone();
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        backend.bridge.run(async move {
            let client = pool.get().await.map_err(pool_failure)?;
            check_durability(&client).await?;
            migrations::run(&client, now).await.map(drop)
        })?;
        tracing::info!(target = %backend.target, "connected to PostgreSQL");
        Ok(backend)
    }

    /// The pool, for the cluster's own tables.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    /// The connection settings, for a connection of its own (LISTEN).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The database, host and user, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `work` with a pooled connection on the database runtime, within
    /// the call timeout.
    pub fn call<T: Send + 'static, F>(
        &self,
        work: impl FnOnce(Object) -> F + Send + 'static,
    ) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, BackendError>> + Send,
    {
        let pool = self.pool.clone();
        self.bridge.run(async move {
            let within = async {
                let client = pool.get().await.map_err(pool_failure)?;
                work(client).await
            };
            tokio::time::timeout(CALL_TIMEOUT, within).await.unwrap_or_else(|_| {
                Err(BackendError::Unavailable("the database did not answer in time".into()))
            })
        })
    }

    /// Whether the database holds no documents (a target for `migrate`).
    pub fn is_empty(&self) -> Result<bool, BackendError> {
        self.call(|client| async move {
            let row = client.query_opt("SELECT 1 FROM ferry_kv LIMIT 1", &[]).await.map_err(io)?;
            Ok(row.is_none())
        })
    }

    /// Moves the id sequence so that it never hands out an id at or below
    /// `floor` (after copying documents whose ids came from elsewhere).
    pub fn raise_ids_above(&self, floor: u64) -> Result<(), BackendError> {
        let floor = i64::try_from(floor).map_err(|_| BackendError::Io(format!("id {floor} is too large")))?;
        self.call(move |client| async move {
            let current: i64 = client.query_one("SELECT nextval('ferry_ids')", &[]).await.map_err(io)?.get(0);
            if current <= floor {
                client.execute("SELECT setval('ferry_ids', $1)", &[&floor]).await.map_err(io)?;
            }
            Ok(())
        })
    }
}

/// A commit must be durable when it returns: refuse a server (or a role or
/// database setting) that acknowledges commits before they are on disk.
async fn check_durability(client: &Object) -> Result<(), BackendError> {
    match client.query_one("SELECT current_setting('synchronous_commit')", &[]).await {
        Ok(row) => {
            let setting: String = row.get(0);
            if setting == "off" {
                return Err(BackendError::Io(
                    "the database has synchronous_commit off, so a commit it acknowledges can be lost in a \
                     crash; set it to on (or local, remote_write, remote_apply) for ferry-cloud's role"
                        .into(),
                ));
            }
            Ok(())
        }
        // An engine without the setting (CockroachDB commits durably).
        Err(e) if e.code().is_some() => Ok(()),
        Err(e) => Err(io(e)),
    }
}

const SELECT_ONE: &str = "SELECT value FROM ferry_kv WHERE collection = $1 AND key = $2";
const UPSERT: &str = "INSERT INTO ferry_kv (collection, key, value) VALUES ($1, $2, $3) \
                      ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value";
const DELETE: &str = "DELETE FROM ferry_kv WHERE collection = $1 AND key = $2";
const LAST: &str = "SELECT key, value FROM ferry_kv WHERE collection = $1 ORDER BY key DESC LIMIT 1";

/// The smallest key above every key that starts with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One attempt at a commit: Ok(Err(Conflict)) when an expectation failed.
async fn try_commit(
    client: &mut Object,
    batch: &Batch,
) -> Result<Result<(), BackendError>, tokio_postgres::Error> {
    let tx = client.build_transaction().isolation_level(IsolationLevel::Serializable).start().await?;
    if !batch.expect.is_empty() {
        let select = tx.prepare_cached(SELECT_ONE).await?;
        let reads = futures_util::future::try_join_all(batch.expect.iter().map(|e| {
            let (tx, select) = (&tx, &select);
            async move { tx.query_opt(select, &[name_of(&e.collection), &e.key]).await }
        }))
        .await?;
        for (expect, row) in batch.expect.iter().zip(reads) {
            let current: Option<Vec<u8>> = row.map(|r| r.get(0));
            if current != expect.value {
                tx.rollback().await?;
                return Ok(Err(BackendError::Conflict { collection: expect.collection }));
            }
        }
    }
    if !batch.ops.is_empty() {
        let upsert = tx.prepare_cached(UPSERT).await?;
        let delete = tx.prepare_cached(DELETE).await?;
        // Pipelined, and executed by the server in this order.
        futures_util::future::try_join_all(batch.ops.iter().map(|op| {
            let (statement, params): (_, Vec<&(dyn ToSql + Sync)>) = match op {
                Op::Put { collection, key, value } => (&upsert, vec![name_of(collection), key, value]),
                Op::Delete { collection, key } => (&delete, vec![name_of(collection), key]),
            };
            let tx = &tx;
            async move { tx.execute(statement, &params).await }
        }))
        .await?;
    }
    tx.commit().await?;
    Ok(Ok(()))
}

fn name_of(collection: &Collection) -> &'static (dyn ToSql + Sync) {
    const NAMES: [&str; Collection::ALL.len()] = {
        let mut names = [""; Collection::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Collection::ALL[i].name();
            i += 1;
        }
        names
    };
    &NAMES[collection.index()]
}

impl Backend for PostgresBackend {
    fn appends_take_turns(&self) -> bool {
        true
    }

    fn get(&self, collection: Collection, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let key = key.to_vec();
        self.call(move |client| async move {
            let select = client.prepare_cached(SELECT_ONE).await.map_err(io)?;
            let row = client.query_opt(&select, &[&collection.name(), &key]).await.map_err(io)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn scan(
        &self,
        collection: Collection,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = prefix.to_vec();
        let end = prefix_end(&prefix);
        let after = after.map(<[u8]>::to_vec);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |client| async move {
            let mut sql = String::from("SELECT key, value FROM ferry_kv WHERE collection = $1");
            let name = collection.name();
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&name];
            if !prefix.is_empty() {
                params.push(&prefix);
                sql.push_str(&format!(" AND key >= ${}", params.len()));
            }
            if let Some(end) = &end {
                params.push(end);
                sql.push_str(&format!(" AND key < ${}", params.len()));
            }
            if let Some(after) = &after {
                params.push(after);
                sql.push_str(&format!(" AND key > ${}", params.len()));
            }
            sql.push_str(" ORDER BY key");
            if limit < i64::MAX {
                params.push(&limit);
                sql.push_str(&format!(" LIMIT ${}", params.len()));
            }
            let statement = client.prepare_cached(&sql).await.map_err(io)?;
            let rows = client.query(&statement, &params).await.map_err(io)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn last(&self, collection: Collection) -> Result<Option<Entry>, BackendError> {
        self.call(move |client| async move {
            let last = client.prepare_cached(LAST).await.map_err(io)?;
            let row = client.query_opt(&last, &[&collection.name()]).await.map_err(io)?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        self.call(move |mut client| async move {
            let mut attempt = 0;
            loop {
                match try_commit(&mut client, &batch).await {
                    Ok(outcome) => return outcome,
                    Err(e) => match failure(e) {
                        Failure::Retry(message) if attempt < MAX_ATTEMPTS => {
                            attempt += 1;
                            tracing::trace!(attempt, %message, "retrying a serialization failure");
                            // Spread out the contenders a little.
                            let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 4);
                            let pause = (u64::from(attempt.min(10)) + jitter).min(20);
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        other => return Err(other.into()),
                    },
                }
            }
        })
    }

    fn generate_id(&self) -> Result<u64, BackendError> {
        self.call(|client| async move {
            let next = client.prepare_cached("SELECT nextval('ferry_ids')").await.map_err(io)?;
            let id: i64 = client.query_one(&next, &[]).await.map_err(io)?.get(0);
            u64::try_from(id).map_err(|_| BackendError::Io(format!("the id sequence gave {id}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_key_past_the_prefix() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn options_take_the_password_from_its_file_and_never_show_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let options = PgOptions::parse("postgres://ferry@db.example/ferry", Some(&file)).unwrap();
        assert_eq!(options.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{options:?}").contains("s3cret"));
        assert_eq!(options.describe(), "postgres database `ferry` on db.example as `ferry`");
        std::fs::write(&file, "\n").unwrap();
        assert!(PgOptions::parse("postgres://ferry@db.example/ferry", Some(&file)).is_err());
        assert!(PgOptions::parse("postgres://[bad", None).is_err());
        assert!(is_url("postgresql://x/y") && !is_url("/var/lib/ferry"));
    }
}
