//! The PostgreSQL backend: the documents in one table
//! `ferry_kv (collection, key, value)` with the primary key
//! `(collection, key)`, so a collection's keys are ordered bytewise as in
//! sled, and ids from the sequence `ferry_ids`, unique across every replica
//! and restart.
//!
//! A commit is one READ COMMITTED transaction that locks what it checks, so
//! a precondition that held when checked still holds when the transaction
//! commits:
//!
//! - a key expected to hold a value is locked with the statement that checks
//!   it (`UPDATE`/`DELETE ... WHERE value = $expected`, or `SELECT ... FOR
//!   UPDATE` when the batch does not write it). Under READ COMMITTED such a
//!   statement waits for a concurrent writer of the row and then checks the
//!   newest committed version, so a value that changed meanwhile is a
//!   [`BackendError::Conflict`], never a lost update;
//! - a key expected to be absent is claimed with `INSERT ... ON CONFLICT DO
//!   NOTHING`: no row inserted (the key exists, or a concurrent claimer
//!   committed it first) is a conflict. The inserted row holds the key's
//!   slot in the primary key until the transaction ends: every other writer
//!   of the key waits for it. When the batch does not put the key, the row is
//!   a placeholder (an empty value) deleted again before the commit; it is
//!   never visible to anybody else, and its slot stays held (its inserting
//!   transaction is in progress) until the commit, so the absence holds at
//!   the commit too;
//! - other changes are plain upserts and deletes, which lock their rows.
//!
//! Only a key's last change in a batch is applied (the earlier ones are
//! invisible to everybody else anyway), and every key is locked in one
//! order, (collection, key), so two commits never wait for each other in a
//! cycle. A deadlock the server still finds (a [group](Backend::commit_group)
//! locks batch after batch), or a serialization failure of an engine that
//! runs READ COMMITTED as SERIALIZABLE, runs the whole transaction again
//! (its expectations are checked afresh). Unlike SERIALIZABLE, nothing
//! conflicts because it merely read near another transaction's keys: only
//! the keys a commit checks or writes are locked. A commit returns once the
//! server acknowledged it with `synchronous_commit` on (checked at connect):
//! it is durable on the server and its synchronous standbys.
//!
//! A [group commit](Backend::commit_group) is one such transaction holding
//! many batches. It first sends `BEGIN`, every batch and the `SELECT ...
//! FOR UPDATE` of the group's lock key in one pipeline, which is enough
//! when every batch holds (the usual case). When one does not, its
//! statements before the failed check may have applied, and the batches
//! after it saw them: the transaction is rolled back and the group runs
//! again with each batch behind a savepoint, where a batch whose
//! expectation fails is rolled back to its savepoint (its locks go with it)
//! and the others stay, and the lock key is read after them. Either way the
//! group's last batch is then made from the outcomes and the locked value
//! and applied; one `COMMIT`, so one flush, makes all of it durable. When
//! every check of the last batch can fail as an error (a claim of a key it
//! writes: a plain `INSERT`, whose duplicate key aborts the transaction),
//! the `COMMIT` goes in the same pipeline as the batch (the server answers
//! it with a rollback after an error), and the claims of one collection in
//! a row (an audit group's entries) are one statement: the lock key is
//! then held for one round trip and the flush.
//!
//! The statements of one call are pipelined on one connection, so a commit
//! of many changes costs few round trips: `BEGIN`, the statements, `COMMIT`;
//! a group two (`BEGIN`, its batches and the lock; its last batch and
//! `COMMIT`). A group that falls back pays for the pipeline it undoes, a
//! `ROLLBACK` and a `BEGIN`, then one round trip per batch and one for the
//! lock; a run again after a deadlock goes batch by batch at once. Reads of
//! many keys are point reads joined by `UNION ALL`, up to 32 to a
//! statement.

mod bridge;
mod migrations;

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr, sync::Arc, time::Duration};

pub use bridge::Bridge;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::{IsolationLevel, NoTls, error::SqlState, types::ToSql};

use super::backend::{Backend, BackendError, Batch, Collection, Entry, Finish, Lock, Op};

pub use migrations::LATEST as SQL_SCHEMA_VERSION;

/// How long a call waits for a free connection, or for a new one to open.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// The longest any one call may take before it fails as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of a transaction that PostgreSQL keeps aborting for deadlocks
/// (or, on engines that run it as SERIALIZABLE, serialization failures).
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
    /// Ids taken from the sequence and not handed out yet (see
    /// [`Backend::generate_id`]).
    ids: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// Why a database call failed, before it becomes a [`BackendError`].
pub(crate) enum Failure {
    /// Aborted by the server for a deadlock or a serialization failure: run
    /// again.
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
        // One thread: a call's future and the connection it writes to then run
        // on the same thread, so handing a request to the connection wakes no
        // other thread (with two, most calls woke the other one).
        let bridge = Bridge::new(1)?;
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
        let backend = PostgresBackend {
            pool,
            bridge,
            target: options.describe(),
            config: options.config.clone(),
            ids: Default::default(),
        };
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
        // Ids taken from the sequence before would be below the floor.
        lock_ids(&self.ids).clear();
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
/// A key expected absent, claimed: one row inserted, or none if it exists.
const CLAIM: &str = "INSERT INTO ferry_kv (collection, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (collection, key) DO NOTHING";
/// A key expected absent, claimed: a unique violation if it exists.
const INSERT_NEW: &str = "INSERT INTO ferry_kv (collection, key, value) VALUES ($1, $2, $3)";
/// Keys $2 expected absent, claimed with their values $3 (in order): a
/// unique violation if one exists.
const INSERT_MANY: &str = "INSERT INTO ferry_kv (collection, key, value) \
                           SELECT $1, k, v FROM unnest($2::BYTEA[], $3::BYTEA[]) AS t (k, v)";
/// A key expected to hold $3, locked: one row, or none if it does not.
const LOCK_IF: &str = "SELECT 1 FROM ferry_kv WHERE collection = $1 AND key = $2 AND value = $3 FOR UPDATE";
const UPDATE_IF: &str = "UPDATE ferry_kv SET value = $4 WHERE collection = $1 AND key = $2 AND value = $3";
const DELETE_IF: &str = "DELETE FROM ferry_kv WHERE collection = $1 AND key = $2 AND value = $3";
const LOCK: &str = "SELECT value FROM ferry_kv WHERE collection = $1 AND key = $2 FOR UPDATE";
/// Ids taken from the sequence by one call of [`Backend::generate_id`].
const IDS_AT_ONCE: i64 = 32;
/// IDS_AT_ONCE values of the sequence, in one statement.
const NEXT_IDS: &str = "SELECT nextval('ferry_ids') FROM generate_series(1, $1::INT8)";
const BEGIN: &str = "START TRANSACTION ISOLATION LEVEL READ COMMITTED";
const SAVEPOINT: &str = "SAVEPOINT ferry_batch";
const RELEASE: &str = "RELEASE SAVEPOINT ferry_batch";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT ferry_batch";
const EMPTY: &[u8] = &[];

/// Keys read by one statement of [`Backend::get_many`] at most.
const MANY_AT_ONCE: usize = 32;

/// The statement reading `n` keys ($2 to $n+1) of collection $1: one point
/// read by the primary key per key, joined with `UNION ALL`, so that every
/// plan of it (a prepared statement's generic one too) looks each key up in
/// the index. (`key = ANY($2)` left the generic plan free to walk a whole
/// collection: 0.39 ms a call against 0.006 for a point read.) Made once per
/// size: sizes are powers of two, padded with a repeated key.
fn select_many(n: usize) -> &'static str {
    static MADE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        unions(|i| format!("SELECT key, value FROM ferry_kv WHERE collection = $1 AND key = ${}", i + 2))
    });
    &made[n.trailing_zeros() as usize]
}

/// [`select_many`] for keys of their own collections: `n` pairs of
/// (collection, key) from $1.
fn select_each(n: usize) -> &'static str {
    static MADE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        unions(|i| {
            format!(
                "SELECT collection, key, value FROM ferry_kv WHERE collection = ${} AND key = ${}",
                2 * i + 1,
                2 * i + 2
            )
        })
    });
    &made[n.trailing_zeros() as usize]
}

/// For each size 1, 2, 4 ... MANY_AT_ONCE, `read(i)` for every i below it
/// joined with `UNION ALL`: the statements of one kind of chunked read,
/// by the size's power of two.
fn unions(read: impl Fn(usize) -> String) -> Vec<String> {
    (0..=MANY_AT_ONCE.trailing_zeros())
        .map(|power| (0..1usize << power).map(&read).collect::<Vec<_>>().join(" UNION ALL "))
        .collect()
}

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

/// One statement of a commit, and what its row count must be.
struct Step<'a> {
    sql: &'static str,
    params: Vec<&'a (dyn ToSql + Sync)>,
    /// The collection whose expectation fails unless exactly one row is
    /// touched; None: any count will do.
    must_touch_one: Option<Collection>,
    /// The same step as a statement that fails with an error instead of
    /// touching no row (the transaction is then aborted, and a `COMMIT`
    /// sent behind it rolls back), if there is one.
    raising: Option<&'static str>,
    /// The key and value of a claim that writes its key.
    claim: Option<(&'a Vec<u8>, &'a Vec<u8>)>,
}

/// A batch's statements, in lock order; Err: two of its expectations
/// contradict each other, so it can never hold.
fn plan(batch: &Batch) -> Result<Vec<Step<'_>>, Collection> {
    // Per key: what it is expected to hold, and its last change.
    type Wanted<'a> = (Option<&'a Option<Vec<u8>>>, Option<Option<&'a Vec<u8>>>);
    // Vec<u8> orders bytewise, as the table's primary key does.
    let mut keys: BTreeMap<(Collection, &Vec<u8>), Wanted<'_>> = BTreeMap::new();
    for e in &batch.expect {
        let slot = &mut keys.entry((e.collection, &e.key)).or_default().0;
        match slot {
            Some(before) if **before != e.value => return Err(e.collection),
            _ => *slot = Some(&e.value),
        }
    }
    for op in &batch.ops {
        let (collection, key, value) = match op {
            Op::Put { collection, key, value } => (*collection, key, Some(value)),
            Op::Delete { collection, key } => (*collection, key, None),
        };
        keys.entry((collection, key)).or_default().1 = Some(value);
    }
    let mut steps = Vec::with_capacity(keys.len() + 1);
    for ((collection, key), (expected, change)) in keys {
        let name = name_of(&collection);
        let step = |sql, params, check: bool| Step {
            sql,
            params,
            must_touch_one: check.then_some(collection),
            raising: None,
            claim: None,
        };
        match (expected, change) {
            (None, Some(Some(value))) => steps.push(step(UPSERT, vec![name, key, value], false)),
            (None, Some(None)) => steps.push(step(DELETE, vec![name, key], false)),
            (Some(Some(old)), Some(Some(value))) => {
                steps.push(step(UPDATE_IF, vec![name, key, old, value], true))
            }
            (Some(Some(old)), Some(None)) => steps.push(step(DELETE_IF, vec![name, key, old], true)),
            (Some(Some(old)), None) => steps.push(step(LOCK_IF, vec![name, key, old], true)),
            (Some(None), Some(Some(value))) => steps.push(Step {
                raising: Some(INSERT_NEW),
                claim: Some((key, value)),
                ..step(CLAIM, vec![name, key, value], true)
            }),
            // Absent now and after: a placeholder holds the key's slot until
            // the commit (see the module's docs).
            (Some(None), _) => {
                steps.push(step(CLAIM, vec![name, key, &EMPTY], true));
                steps.push(step(DELETE, vec![name, key], false));
            }
            (None, None) => {}
        }
    }
    Ok(steps)
}

/// Sends `prefix` (statements whose counts do not matter) and `steps` in one
/// pipeline; Ok(Err(collection)) when an expectation failed. After an
/// error (a prepare the server refused too) the caller returns, and `tx`,
/// dropped unfinished, sends its `ROLLBACK`: the connection goes back to
/// the pool out of the transaction.
async fn run_steps(
    tx: &deadpool_postgres::Transaction<'_>,
    prefix: &[&'static str],
    steps: &[Step<'_>],
) -> Result<Result<(), Collection>, tokio_postgres::Error> {
    let statements = futures_util::future::try_join_all(
        prefix.iter().copied().chain(steps.iter().map(|s| s.sql)).map(|sql| tx.prepare_cached(sql)),
    )
    .await?;
    let (before, own) = statements.split_at(prefix.len());
    // Pipelined, and executed by the server in this order.
    let counts = futures_util::future::try_join_all(
        before
            .iter()
            .map(|statement| (statement, Vec::new()))
            .chain(own.iter().zip(steps).map(|(statement, step)| (statement, step.params.clone())))
            .map(|(statement, params): (_, Vec<&(dyn ToSql + Sync)>)| async move {
                tx.execute(statement, &params).await
            }),
    )
    .await?;
    for (step, count) in steps.iter().zip(&counts[prefix.len()..]) {
        if let Some(collection) = step.must_touch_one
            && *count != 1
        {
            return Ok(Err(collection));
        }
    }
    Ok(Ok(()))
}

/// `BEGIN`, every batch's statements, then the lock's `SELECT ... FOR
/// UPDATE` if any, in one pipeline and without savepoints: per batch
/// whether its expectations held (a batch whose plan contradicts itself is
/// not sent), and the locked value. Meaningful only when every batch held:
/// a batch after one that failed ran against that one's partial changes.
async fn run_optimistic(
    client: &deadpool_postgres::ClientWrapper,
    plans: &[Result<Vec<Step<'_>>, Collection>],
    lock: Option<&Lock>,
) -> Result<(Vec<Result<(), Collection>>, Option<Vec<u8>>), tokio_postgres::Error> {
    let steps: Vec<&Step<'_>> = plans.iter().filter_map(|p| p.as_ref().ok()).flatten().collect();
    let statements =
        futures_util::future::try_join_all(steps.iter().map(|s| client.prepare_cached(s.sql))).await?;
    let lock_statement = match lock {
        Some(_) => Some(client.prepare_cached(LOCK).await?),
        None => None,
    };
    // Pipelined, and executed by the server in this order (each future
    // sends its request when first polled, and a join polls in order).
    let begun = client.batch_execute(BEGIN);
    let counts = futures_util::future::join_all(
        statements.iter().zip(&steps).map(|(statement, step)| client.execute(statement, &step.params)),
    );
    let locked = async {
        match (lock, &lock_statement) {
            (Some((collection, key)), Some(select)) => {
                client.query_opt(select, &[name_of(collection), key]).await.map(|row| row.map(|r| r.get(0)))
            }
            _ => Ok(None),
        }
    };
    let (begun, counts, locked) = futures_util::future::join3(begun, counts, locked).await;
    // After a failed statement the server refuses the rest of the
    // transaction: the first error is the one that matters.
    begun?;
    let counts = counts.into_iter().collect::<Result<Vec<u64>, _>>()?;
    let locked = locked?;
    let mut counts = counts.into_iter();
    let outcomes = plans
        .iter()
        .map(|plan| match plan {
            Err(collection) => Err(*collection),
            Ok(steps) => {
                let mut held = Ok(());
                for (step, count) in steps.iter().zip(counts.by_ref()) {
                    if let Some(collection) = step.must_touch_one
                        && count != 1
                        && held.is_ok()
                    {
                        held = Err(collection);
                    }
                }
                held
            }
        })
        .collect();
    Ok((outcomes, locked))
}

/// A transaction begun by a pipelined `BEGIN` (the client's transaction
/// type waits for its `BEGIN` alone, a round trip of its own). Dropped
/// while open, when its call is cancelled (timed out) midway, it closes the
/// connection rather than return it to the pool inside the transaction:
/// the server then rolls the transaction back.
struct Open {
    /// Some until `into_client` or `drop` takes it.
    client: Option<Object>,
    open: bool,
}

impl Open {
    fn new(client: Object) -> Open {
        Open { client: Some(client), open: true }
    }

    /// The connection (only `into_client` and `drop`, which consume self,
    /// take it).
    fn client(&self) -> Result<&deadpool_postgres::ClientWrapper, BackendError> {
        self.client.as_deref().ok_or_else(closed)
    }

    /// The connection, once the transaction is over.
    fn into_client(mut self) -> Option<Object> {
        self.open = false;
        self.client.take()
    }

    /// Rolls back; the connection if that worked (else it is closed).
    async fn rollback(self) -> Option<Object> {
        match self.client.as_deref()?.batch_execute("ROLLBACK").await {
            Ok(()) => self.into_client(),
            Err(_) => None,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.open
            && let Some(client) = self.client.take()
        {
            drop(Object::take(client));
        }
    }
}

/// The group's last `steps` and its `COMMIT`, in one round trip when
/// every step that needs a row count checked has a form that fails with an
/// error instead (then a failed step aborts the transaction and the
/// `COMMIT` behind it rolls back); else the steps, then `COMMIT` or
/// `ROLLBACK` by their counts. The transaction is over either way, errors
/// included: the connection goes back to the pool after, and must not take
/// an open (or aborted) transaction with it to its next user.
async fn finish_and_commit(
    client: &deadpool_postgres::ClientWrapper,
    steps: &[Step<'_>],
) -> Result<Result<(), Collection>, tokio_postgres::Error> {
    let finished = if steps.iter().all(|s| s.must_touch_one.is_none() || s.raising.is_some()) {
        raise_and_commit(client, steps).await
    } else {
        check_and_commit(client, steps).await
    };
    if finished.is_err() {
        // Whatever failed (a statement the server would not prepare, one
        // whose parameters did not encode, a statement or the `COMMIT`
        // itself), end the transaction if it is still open. The server
        // takes a `ROLLBACK` in any state, outside a transaction too (a
        // warning), so this fails only when the connection is gone: closed
        // then, which ends the transaction, and the pool drops it. The
        // error to return is the first one.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    finished
}

/// [`finish_and_commit`] when some step's row count must be checked: the
/// steps, then `COMMIT` or `ROLLBACK` by their counts.
async fn check_and_commit(
    client: &deadpool_postgres::ClientWrapper,
    steps: &[Step<'_>],
) -> Result<Result<(), Collection>, tokio_postgres::Error> {
    let statements =
        futures_util::future::try_join_all(steps.iter().map(|s| client.prepare_cached(s.sql))).await?;
    let executed = futures_util::future::join_all(
        statements.iter().zip(steps).map(|(statement, step)| client.execute(statement, &step.params)),
    );
    let mut held = Ok(());
    for (step, count) in steps.iter().zip(executed.await) {
        let count = count?;
        if let Some(collection) = step.must_touch_one
            && count != 1
            && held.is_ok()
        {
            held = Err(collection);
        }
    }
    client.batch_execute(if held.is_ok() { "COMMIT" } else { "ROLLBACK" }).await?;
    Ok(held)
}

async fn begin(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await
}

/// One attempt at a commit: Ok(Err(Conflict)) when an expectation failed.
async fn try_commit(
    client: &mut Object,
    batch: &Batch,
) -> Result<Result<(), BackendError>, tokio_postgres::Error> {
    let steps = match plan(batch) {
        Ok(steps) => steps,
        Err(collection) => return Ok(Err(BackendError::Conflict { collection })),
    };
    if steps.is_empty() {
        return Ok(Ok(()));
    }
    let tx = begin(client).await?;
    if let Err(collection) = run_steps(&tx, &[], &steps).await? {
        tx.rollback().await?;
        return Ok(Err(BackendError::Conflict { collection }));
    }
    tx.commit().await?;
    Ok(Ok(()))
}

/// One attempt at a group commit (see [`Backend::commit_group`]): every
/// batch and the lock in one pipeline when `optimistic` (see the module's
/// docs), else, or when one of them fails, each batch behind a savepoint it
/// is rolled back to if its expectations fail; then what `finish` adds, in
/// one transaction. `slot` holds the connection (None once it was closed).
async fn try_group(
    slot: &mut Option<Object>,
    batches: &[Batch],
    lock: Option<&Lock>,
    finish: &Arc<Finish>,
    optimistic: &mut bool,
) -> Result<Result<Vec<Result<(), BackendError>>, BackendError>, tokio_postgres::Error> {
    let Some(client) = slot.take() else {
        return Ok(Err(closed()));
    };
    // Usually every batch holds: then `BEGIN`, all of them and the lock
    // take one round trip together, and what `finish` adds and the
    // `COMMIT` one more. When one does not, the transaction is undone and
    // the group runs again batch by batch behind savepoints, so that no
    // batch sees another's half-applied changes; so does a run again after
    // a deadlock.
    if !*optimistic || batches.is_empty() {
        return in_turn(slot, client, batches, lock, finish).await;
    }
    let plans: Vec<Result<Vec<Step<'_>>, Collection>> = batches.iter().map(plan).collect();
    let open = Open::new(client);
    let connection = match open.client() {
        Ok(connection) => connection,
        Err(e) => return Ok(Err(e)),
    };
    let (outcomes, locked) = match run_optimistic(connection, &plans, lock).await {
        Ok(ran) => ran,
        Err(e) => {
            *slot = open.rollback().await;
            *optimistic = false;
            return Err(e);
        }
    };
    let sent = plans.iter().zip(&outcomes).filter(|(plan, _)| plan.is_ok());
    if !sent.clone().all(|(_, outcome)| outcome.is_ok()) {
        *optimistic = false;
        return match open.rollback().await {
            Some(client) => in_turn(slot, client, batches, lock, finish).await,
            None => Ok(Err(closed())),
        };
    }
    let held: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    let last = finish(&held, locked.as_deref());
    let steps = match plan(&last) {
        Ok(steps) => steps,
        Err(collection) => {
            *slot = open.rollback().await;
            return Ok(Err(BackendError::Conflict { collection }));
        }
    };
    let finished = finish_and_commit(connection, &steps).await;
    // The transaction is over, whatever the outcome, unless the connection
    // broke (then it is closed, which ends it too).
    *slot = open.into_client();
    match finished? {
        Err(collection) => Ok(Err(BackendError::Conflict { collection })),
        Ok(()) => Ok(Ok(outcomes
            .into_iter()
            .map(|o| o.map_err(|collection| BackendError::Conflict { collection }))
            .collect())),
    }
}

/// [`finish_and_commit`] when every check fails as an error: the steps in
/// their raising form, claims in a row of one collection (an audit group's
/// entries) as one statement, and `COMMIT`, in one pipeline.
async fn raise_and_commit(
    client: &deadpool_postgres::ClientWrapper,
    steps: &[Step<'_>],
) -> Result<Result<(), Collection>, tokio_postgres::Error> {
    enum Unit<'s, 'a> {
        One(&'s Step<'a>),
        Claims(Collection, Vec<&'a Vec<u8>>, Vec<&'a Vec<u8>>),
    }
    let mut units: Vec<Unit<'_, '_>> = Vec::with_capacity(steps.len());
    for step in steps {
        if let (Some((key, value)), Some(collection)) = (step.claim, step.must_touch_one) {
            if let Some(Unit::Claims(of, keys, values)) = units.last_mut()
                && *of == collection
            {
                keys.push(key);
                values.push(value);
                continue;
            }
            units.push(Unit::Claims(collection, vec![key], vec![value]));
        } else {
            units.push(Unit::One(step));
        }
    }
    let sent: Vec<(&'static str, Vec<&(dyn ToSql + Sync)>, Option<Collection>)> = units
        .iter()
        .map(|unit| match unit {
            Unit::One(step) => (step.raising.unwrap_or(step.sql), step.params.clone(), step.must_touch_one),
            Unit::Claims(collection, keys, values) if keys.len() == 1 => {
                (INSERT_NEW, vec![name_of(collection), keys[0] as _, values[0] as _], Some(*collection))
            }
            Unit::Claims(collection, keys, values) => {
                (INSERT_MANY, vec![name_of(collection), keys as _, values as _], Some(*collection))
            }
        })
        .collect();
    let statements =
        futures_util::future::try_join_all(sent.iter().map(|(sql, _, _)| client.prepare_cached(sql))).await?;
    // Pipelined: after a failed statement the server refuses the rest, and
    // its answer to the `COMMIT` is a rollback. But a statement is sent
    // only when its future is first polled, and not at all if it fails
    // before (its parameters do not encode): the server would then commit
    // the others without it. So each is polled once, in order, before the
    // end is chosen, and one that failed already makes it a `ROLLBACK`.
    let mut executed: Vec<_> = statements
        .iter()
        .zip(&sent)
        .map(|(statement, (_, params, _))| {
            futures_util::future::maybe_done(Box::pin(client.execute(statement, params)))
        })
        .collect();
    std::future::poll_fn(|cx| {
        for statement in &mut executed {
            let _ = std::pin::Pin::new(statement).poll(cx);
        }
        std::task::Poll::Ready(())
    })
    .await;
    let all_sent = executed
        .iter_mut()
        .all(|statement| !matches!(std::pin::Pin::new(statement).output_mut(), Some(Err(_))));
    let end = if all_sent { "COMMIT" } else { "ROLLBACK" };
    let (_, ended) = futures_util::future::join(
        futures_util::future::join_all(executed.iter_mut()),
        client.batch_execute(end),
    )
    .await;
    // Every one is done now; one that failed to be sent is among the
    // errors, so a `ROLLBACK` is never taken for a commit.
    for ((_, _, checked), mut statement) in sent.iter().zip(executed) {
        match (std::pin::Pin::new(&mut statement).take_output(), checked) {
            (Some(Err(e)), Some(collection)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Ok(Err(*collection));
            }
            (Some(Err(e)), _) => return Err(e),
            (Some(Ok(_)) | None, _) => {}
        }
    }
    ended.map(Ok)
}

fn closed() -> BackendError {
    BackendError::Unavailable("the database connection was closed".into())
}

/// [`try_group_in_turn`] with `client`, which goes back to `slot` after.
async fn in_turn(
    slot: &mut Option<Object>,
    mut client: Object,
    batches: &[Batch],
    lock: Option<&Lock>,
    finish: &Arc<Finish>,
) -> Result<Result<Vec<Result<(), BackendError>>, BackendError>, tokio_postgres::Error> {
    let outcome = try_group_in_turn(&mut client, batches, lock, finish).await;
    *slot = Some(client);
    outcome
}

/// [`try_group`] one batch at a time, each behind a savepoint it is rolled
/// back to if its expectations fail.
async fn try_group_in_turn(
    client: &mut Object,
    batches: &[Batch],
    lock: Option<&Lock>,
    finish: &Arc<Finish>,
) -> Result<Result<Vec<Result<(), BackendError>>, BackendError>, tokio_postgres::Error> {
    let tx = begin(client).await?;
    let mut outcomes = Vec::with_capacity(batches.len());
    // What ends the previous batch's savepoint, sent with the next statements.
    let mut pending: &[&'static str] = &[];
    for batch in batches {
        let steps = match plan(batch) {
            Ok(steps) => steps,
            Err(collection) => {
                outcomes.push(Err(BackendError::Conflict { collection }));
                continue;
            }
        };
        let prefix: Vec<&'static str> = pending.iter().copied().chain([SAVEPOINT]).collect();
        match run_steps(&tx, &prefix, &steps).await? {
            Ok(()) => {
                outcomes.push(Ok(()));
                pending = &[RELEASE];
            }
            Err(collection) => {
                outcomes.push(Err(BackendError::Conflict { collection }));
                pending = &[ROLLBACK_TO, RELEASE];
            }
        }
    }
    let held: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    let locked: Option<Vec<u8>> = match lock {
        Some((collection, key)) => {
            // Sent with what ends the last savepoint; under READ COMMITTED
            // it reads the newest committed value once the lock is ours.
            let statements = futures_util::future::try_join_all(
                pending.iter().copied().chain([LOCK]).map(|sql| tx.prepare_cached(sql)),
            )
            .await?;
            let Some((select, ending)) = statements.split_last() else {
                return Ok(Err(BackendError::Io("the lock statement went missing".into())));
            };
            let ended = futures_util::future::try_join_all(ending.iter().map(|s| tx.execute(s, &[])));
            let (_, row) =
                futures_util::future::try_join(ended, tx.query_opt(select, &[name_of(collection), key]))
                    .await?;
            pending = &[];
            row.map(|r| r.get(0))
        }
        None => None,
    };
    let last = finish(&held, locked.as_deref());
    let steps = match plan(&last) {
        Ok(steps) => steps,
        Err(collection) => return Ok(Err(BackendError::Conflict { collection })),
    };
    if let Err(collection) = run_steps(&tx, pending, &steps).await? {
        tx.rollback().await?;
        return Ok(Err(BackendError::Conflict { collection }));
    }
    tx.commit().await?;
    Ok(Ok(outcomes))
}

/// Whether to run a transaction again after `e`: Ok after a pause when the
/// server aborted it for a deadlock or a serialization failure and tries
/// are left; else the error to return.
async fn again(e: tokio_postgres::Error, tries: &mut u32) -> Result<(), BackendError> {
    match failure(e) {
        Failure::Retry(message) if *tries < MAX_ATTEMPTS => {
            *tries += 1;
            tracing::debug!(tries = *tries, %message, "retrying a transaction the server aborted");
            // Spread out the contenders a little.
            let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 4);
            let pause = (u64::from((*tries).min(10)) + jitter).min(20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            Ok(())
        }
        other => Err(other.into()),
    }
}

/// Point reads of `keys` a chunk of MANY_AT_ONCE to a statement (`sql(n)`
/// reads n keys), each chunk padded to a power of two with its last key so
/// that few statements are prepared, all chunks in one pipeline: one round
/// trip. `params` gives a padded chunk's parameters. Every row of every
/// chunk is returned.
async fn read_in_chunks<'a, K>(
    client: &Object,
    keys: &'a [K],
    sql: fn(usize) -> &'static str,
    params: impl Fn(Vec<&'a K>) -> Vec<&'a (dyn ToSql + Sync)>,
) -> Result<Vec<tokio_postgres::Row>, BackendError> {
    let chunks: Vec<&[K]> = keys.chunks(MANY_AT_ONCE).collect();
    let statements = futures_util::future::try_join_all(
        chunks.iter().map(|chunk| client.prepare_cached(sql(chunk.len().next_power_of_two()))),
    )
    .await
    .map_err(io)?;
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = chunks
        .iter()
        .map(|chunk| {
            let padding = chunk.len().next_power_of_two() - chunk.len();
            let last = chunk.last().into_iter().cycle().take(padding);
            params(chunk.iter().chain(last).collect())
        })
        .collect();
    let rows = futures_util::future::try_join_all(
        statements.iter().zip(&params).map(|(statement, params)| client.query(statement, params)),
    )
    .await
    .map_err(io)?;
    Ok(rows.into_iter().flatten().collect())
}

fn lock_ids(
    ids: &std::sync::Mutex<std::collections::VecDeque<u64>>,
) -> std::sync::MutexGuard<'_, std::collections::VecDeque<u64>> {
    ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    fn get(&self, collection: Collection, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        let key = key.to_vec();
        self.call(move |client| async move {
            let select = client.prepare_cached(SELECT_ONE).await.map_err(io)?;
            let row = client.query_opt(&select, &[&collection.name(), &key]).await.map_err(io)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn get_many(
        &self,
        collection: Collection,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        self.call(move |client| async move {
            // A few keys to a statement, each its own point read by the
            // primary key (see `select_many`): the server sets up one
            // statement and one snapshot for them rather than one each, and
            // the chunks go in one pipeline, so one round trip.
            let name = name_of(&collection);
            let rows = read_in_chunks(&client, &keys, select_many, |chunk| {
                std::iter::once(name).chain(chunk.into_iter().map(|key| key as &(dyn ToSql + Sync))).collect()
            })
            .await?;
            let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
                rows.into_iter().map(|row| (row.get(0), row.get(1))).collect();
            Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
        })
    }

    fn get_each(&self, keys: &[(Collection, Vec<u8>)]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        self.call(move |client| async move {
            let rows = read_in_chunks(&client, &keys, select_each, |chunk| {
                chunk
                    .into_iter()
                    .flat_map(|(collection, key)| [name_of(collection), key as &(dyn ToSql + Sync)])
                    .collect()
            })
            .await?;
            let found: std::collections::HashMap<(String, Vec<u8>), Vec<u8>> =
                rows.into_iter().map(|row| ((row.get(0), row.get(1)), row.get(2))).collect();
            Ok(keys
                .iter()
                .map(|(collection, key)| found.get(&(collection.name().to_string(), key.clone())).cloned())
                .collect())
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
            let mut tries = 0;
            loop {
                match try_commit(&mut client, &batch).await {
                    Ok(outcome) => return outcome,
                    Err(e) => again(e, &mut tries).await?,
                }
            }
        })
    }

    fn commit_group(
        &self,
        batches: Vec<Batch>,
        lock: Option<Lock>,
        finish: Arc<Finish>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        self.call(move |client| async move {
            let (mut tries, mut optimistic, mut slot) = (0, true, Some(client));
            loop {
                match try_group(&mut slot, &batches, lock.as_ref(), &finish, &mut optimistic).await {
                    Ok(outcome) => return outcome,
                    Err(e) => again(e, &mut tries).await?,
                }
            }
        })
    }

    /// Ids come from the sequence a few at a time: most calls take one
    /// taken earlier and need no round trip (a session's creation took one
    /// of its own). Every id still comes from the sequence once, so ids
    /// stay unique across replicas and restarts; the ones a process took
    /// and did not hand out are skipped, as sled skips ids after a restart.
    fn generate_id(&self) -> Result<u64, BackendError> {
        if let Some(id) = lock_ids(&self.ids).pop_front() {
            return Ok(id);
        }
        let taken = self.call(|client| async move {
            let next = client.prepare_cached(NEXT_IDS).await.map_err(io)?;
            let rows = client.query(&next, &[&IDS_AT_ONCE]).await.map_err(io)?;
            rows.iter()
                .map(|row| {
                    let id: i64 = row.get(0);
                    u64::try_from(id).map_err(|_| BackendError::Io(format!("the id sequence gave {id}")))
                })
                .collect::<Result<Vec<u64>, _>>()
        })?;
        let mut ids = lock_ids(&self.ids);
        ids.extend(taken);
        // Another caller's ids may have arrived meanwhile: hand out the
        // lowest first.
        ids.make_contiguous().sort_unstable();
        ids.pop_front().ok_or_else(|| BackendError::Io("the id sequence gave no id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend on a database of its own, on a server of the test's own.
    fn database() -> (ferry_lab::postgres::Postgres, PostgresBackend) {
        let server = ferry_lab::postgres::Postgres::start(ferry_lab::postgres::Durability::Relaxed).unwrap();
        server.create_database("unit").unwrap();
        let backend =
            PostgresBackend::connect(&PgOptions::parse(&server.url("unit"), None).unwrap()).unwrap();
        (server, backend)
    }

    /// The server process of the connection a call gets: calls one after
    /// the other get the same pooled connection.
    fn connection_of(backend: &PostgresBackend) -> i32 {
        backend
            .call(|client| async move {
                Ok(client.query_one("SELECT pg_backend_pid()", &[]).await.map_err(io)?.get(0))
            })
            .unwrap()
    }

    /// `BEGIN` and a put of `key` (the group's batches before its last),
    /// then `steps` (its last batch) through `finish_and_commit`: whether
    /// that failed, and whether the connection is usable and out of any
    /// transaction after (the put's key was not committed, and a statement
    /// is not refused as inside an aborted transaction).
    fn finish_after_a_put(
        backend: &PostgresBackend,
        key: &'static str,
        steps: impl for<'a> FnOnce(&'a Vec<u8>, &'a i32) -> Vec<Step<'a>> + Send + 'static,
    ) -> (bool, Result<Option<Vec<u8>>, BackendError>) {
        backend
            .call(move |client| async move {
                client.batch_execute(BEGIN).await.map_err(io)?;
                let (name, key, value) = (Collection::Users.name(), key.as_bytes().to_vec(), b"v".to_vec());
                client.execute(UPSERT, &[&name, &key, &value]).await.map_err(io)?;
                let (other, wrong) = (b"other".to_vec(), 7i32);
                let failed = finish_and_commit(&client, &steps(&other, &wrong)).await.is_err();
                let after = client.query_opt(SELECT_ONE, &[&name, &key]).await.map(|r| r.map(|r| r.get(0)));
                Ok((failed, after.map_err(io)))
            })
            .unwrap()
    }

    /// A last batch whose statement the server will not prepare (it names
    /// no table there is, as a prepare that fails for any reason would)
    /// leaves no transaction behind on the connection: it goes back to the
    /// pool, and its next user, a commit, works.
    #[test]
    fn a_failed_prepare_in_the_last_batch_ends_the_transaction() {
        let (_server, backend) = database();
        const REFUSED: &str = "INSERT INTO ferry_no_such_table VALUES ($1)";
        let connection = connection_of(&backend);
        // Checked by its row count, then as a statement that raises.
        for (key, raising) in [("counted", None), ("raised", Some(REFUSED))] {
            let (failed, after) = finish_after_a_put(&backend, key, move |other, _| {
                let params: Vec<&(dyn ToSql + Sync)> = vec![other];
                vec![Step {
                    sql: REFUSED,
                    params,
                    must_touch_one: Some(Collection::Users),
                    raising,
                    claim: None,
                }]
            });
            assert!(failed, "{key}");
            assert_eq!(after.unwrap(), None, "{key}: rolled back, and the connection still works");
            assert_eq!(connection_of(&backend), connection, "the same connection, back from the pool");
            backend.commit(Batch::default().put(Collection::Users, key, "later")).unwrap();
            assert_eq!(
                backend.get(Collection::Users, key.as_bytes()).unwrap().as_deref(),
                Some(&b"later"[..])
            );
        }
    }

    /// A statement of the last batch whose parameter does not encode (a
    /// number for a BYTEA) is never sent: the transaction must not commit
    /// without it. The statement before it, sent in the same pipeline, is
    /// rolled back with the rest.
    #[test]
    fn a_statement_that_is_never_sent_keeps_its_transaction_from_committing() {
        let (_server, backend) = database();
        let (failed, after) = finish_after_a_put(&backend, "first", move |other, wrong| {
            let name = name_of(&Collection::Users);
            let sent: Vec<&(dyn ToSql + Sync)> = vec![name, other, other];
            let unsent: Vec<&(dyn ToSql + Sync)> = vec![name, other, wrong];
            let step =
                |params| Step { sql: UPSERT, params, must_touch_one: None, raising: None, claim: None };
            vec![step(sent), step(unsent)]
        });
        assert!(failed);
        assert_eq!(after.unwrap(), None, "not committed, and the connection still works");
        assert_eq!(backend.get(Collection::Users, b"other").unwrap(), None, "nothing of it committed");
        backend.commit(Batch::default().put(Collection::Users, "other", "later")).unwrap();
    }

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
