//! The cloud's storage: typed documents over one [`Backend`] interface, with
//! a versioned schema. sled is the embedded default ([`SledBackend`]).

pub mod backend;
pub mod copy;
#[cfg(any(test, feature = "test-support"))]
pub mod failing;
pub mod postgres;
pub mod sled_backend;

use std::{path::Path, sync::Arc};

pub use backend::{Backend, BackendError, Batch, Collection};
pub use postgres::{PgOptions, PostgresBackend};
pub use sled_backend::SledBackend;

/// A document as stored: JSON. Documents are plain derived data (strings,
/// numbers, enums, maps keyed by strings or numbers), which serde_json always
/// encodes; it fails only on other map keys or a failing hand-written
/// `Serialize`, and no stored type has either.
#[allow(clippy::expect_used, reason = "plain derived data always encodes as JSON (see above)")]
pub fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data serializes")
}

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "the data folder holds schema version {found}, newer than this ferry-cloud understands ({supported}); \
         run the newer ferry-cloud that wrote it, or restore a backup"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("the stored schema version is corrupt ({0} bytes instead of 4)")]
    CorruptVersion(usize),
}

#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Audited commits of this process, taking turns in groups.
    appender: Arc<crate::audit::Appender>,
    /// Session changes under way in this process, which may claim a
    /// tunnel subnet: while others are, a start picks among the free
    /// subnets at random instead of racing them for the lowest.
    session_changes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Store {
    /// Opens (or creates) the sled database in `dir` and checks its schema.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::with_backend(Arc::new(SledBackend::open(&dir.join("db"))?))
    }

    /// Where this process's audited commits take turns.
    pub(crate) fn appender(&self) -> &crate::audit::Appender {
        &self.appender
    }

    /// Uses any backend; a new one gets the current schema version.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Store, StoreError> {
        let appender = Arc::new(crate::audit::Appender::new(backend.concurrent_groups()));
        let store = Store { backend, appender, session_changes: Arc::default() };
        match store.backend.get(Collection::Meta, SCHEMA_KEY)? {
            None => {
                let created =
                    store.backend.commit(Batch::default().expect(Collection::Meta, SCHEMA_KEY, None).put(
                        Collection::Meta,
                        SCHEMA_KEY,
                        SCHEMA_VERSION.to_be_bytes(),
                    ));
                match created {
                    Ok(()) => tracing::info!(version = SCHEMA_VERSION, "new database"),
                    // Another replica starting on the same new database
                    // wrote it first: check what it wrote.
                    Err(BackendError::Conflict { .. }) => return Store::with_backend(store.backend),
                    Err(e) => return Err(e.into()),
                }
            }
            Some(bytes) => {
                let found = decode_version(&bytes)?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION });
                }
                // Version 1 is the first schema: nothing older to migrate yet.
            }
        }
        Ok(store)
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let bytes = self.backend.get(Collection::Meta, SCHEMA_KEY)?.ok_or(StoreError::CorruptVersion(0))?;
        decode_version(&bytes)
    }

    /// Reads a JSON document, lets `change` edit it, and writes it back
    /// only if nobody changed it meanwhile (else reads again and retries),
    /// with the audit entry `event` makes in the same commit. Nothing is
    /// written when `change` fails or changes nothing. None: no such key.
    pub fn modify_json<T, R, E>(
        &self,
        collection: Collection,
        key: &[u8],
        time_ms: u64,
        mut change: impl FnMut(&mut T) -> Result<R, E>,
        event: impl Fn(&T, &R) -> Option<crate::audit::Event>,
    ) -> Result<Option<(T, R)>, E>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: From<BackendError>,
    {
        for _ in 0..64 {
            let Some(before) = self.backend.get(collection, key)? else { return Ok(None) };
            let mut doc: T = serde_json::from_slice(&before).map_err(|e| {
                BackendError::Io(format!("a stored {} record is unreadable: {e}", collection.name()))
            })?;
            let result = change(&mut doc)?;
            let after = to_json(&doc);
            if after == before {
                return Ok(Some((doc, result)));
            }
            let batch = Batch::default().expect(collection, key, Some(before)).put(collection, key, after);
            match crate::audit::commit_audited(self, time_ms, event(&doc, &result), batch) {
                Ok(()) => return Ok(Some((doc, result))),
                Err(BackendError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BackendError::Unavailable(format!(
            "a {} record is changed too often; gave up",
            collection.name()
        ))
        .into())
    }

    /// A store in a fresh temporary folder, for tests; the folder lives as
    /// long as the returned guard.
    #[cfg(test)]
    pub fn temporary() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let store = Store::open(dir.path()).expect("a new store opens");
        (dir, store)
    }

    /// Counts a session change under way until the guard goes; returns
    /// with it whether others were under way when it began.
    pub(crate) fn session_change(&self) -> (SessionChange, bool) {
        let others = self.session_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0;
        (SessionChange(self.session_changes.clone()), others)
    }

    /// The backend, for the typed collections built on it.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
}

/// A session change under way (see [`Store::session_change`]).
pub(crate) struct SessionChange(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for SessionChange {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn decode_version(bytes: &[u8]) -> Result<u32, StoreError> {
    Ok(u32::from_be_bytes(bytes.try_into().map_err(|_| StoreError::CorruptVersion(bytes.len()))?))
}
