//! The embedded default backend: sled, one tree per collection.

use std::{ops::Bound, path::Path};

use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use super::backend::{Backend, BackendError, Batch, Collection, Entry, Finish, Lock, Op};

type Trees = [sled::transaction::TransactionalTree];

/// Applies `batch` inside a transaction if its expectations hold; else the
/// collection whose expectation failed (nothing of it applied).
fn apply(
    trees: &Trees,
    batch: &Batch,
) -> Result<Option<Collection>, ConflictableTransactionError<Collection>> {
    let index = Collection::index;
    for expect in &batch.expect {
        let current = trees[index(expect.collection)].get(&expect.key)?;
        if current.as_deref() != expect.value.as_deref() {
            return Ok(Some(expect.collection));
        }
    }
    for op in &batch.ops {
        match op {
            Op::Put { collection, key, value } => {
                trees[index(*collection)].insert(key.as_slice(), value.as_slice())?;
            }
            Op::Delete { collection, key } => {
                trees[index(*collection)].remove(key.as_slice())?;
            }
        }
    }
    Ok(None)
}

pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// sled reports another holder of its file lock as a plain I/O error.
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn io(e: sled::Error) -> BackendError {
    BackendError::Io(e.to_string())
}

impl SledBackend {
    pub fn open(path: &Path) -> Result<SledBackend, BackendError> {
        let db = ferry_daemon::reopen::retrying_while_locked(|| sled::open(path), is_locked).map_err(io)?;
        let trees =
            Collection::ALL.iter().map(|c| db.open_tree(c.name())).collect::<Result<_, _>>().map_err(io)?;
        Ok(SledBackend { db, trees })
    }

    fn tree(&self, collection: Collection) -> &sled::Tree {
        // One tree per entry of Collection::ALL, in its order.
        &self.trees[collection.index()]
    }

    /// Writes everything to disk (also done by every commit).
    pub fn flush(&self) -> Result<(), BackendError> {
        // An fsync blocks. On a multi-threaded tokio runtime the worker says
        // so, and its other requests move to another thread meanwhile,
        // instead of every request queueing behind the disk.
        let flush = || self.db.flush().map(drop).map_err(io);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        }
    }
}

impl Backend for SledBackend {
    fn get(&self, collection: Collection, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree(collection).get(key).map_err(io)?.map(|v| v.to_vec()))
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
        let tree = self.tree(collection);
        // Seek to `after` rather than skipping from the prefix's start: paging
        // through a large collection (the audit log) would otherwise cost
        // more with every page.
        let items = match after {
            Some(a) if a >= prefix => tree.range::<&[u8], _>((Bound::Excluded(a), Bound::Unbounded)),
            _ => tree.scan_prefix(prefix),
        };
        let mut out = Vec::new();
        for item in items {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn last(&self, collection: Collection) -> Result<Option<Entry>, BackendError> {
        Ok(self.tree(collection).last().map_err(io)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        // A transaction over every tree keeps the code simple; sled only
        // locks what the closure touches.
        let result = self.trees.as_slice().transaction(|trees| match apply(trees, &batch)? {
            None => Ok(()),
            Some(collection) => Err(ConflictableTransactionError::Abort(collection)),
        });
        match result {
            Ok(()) => self.flush(),
            Err(TransactionError::Abort(collection)) => Err(BackendError::Conflict { collection }),
            Err(TransactionError::Storage(e)) => Err(io(e)),
        }
    }

    fn commit_group(
        &self,
        batches: Vec<Batch>,
        lock: Option<Lock>,
        finish: std::sync::Arc<Finish>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        // One transaction (which isolates what it reads, the lock's key too): a crash keeps all of it or none, and one flush.
        // A batch whose expectations fail applies nothing (they are checked
        // before its first change) and the others go on.
        let result = self.trees.as_slice().transaction(|trees| {
            let mut failed = Vec::with_capacity(batches.len());
            for batch in &batches {
                failed.push(apply(trees, batch)?);
            }
            let held: Vec<bool> = failed.iter().map(Option::is_none).collect();
            let locked = match &lock {
                Some((collection, key)) => trees[collection.index()].get(key)?,
                None => None,
            };
            match apply(trees, &finish(&held, locked.as_deref()))? {
                None => Ok(failed),
                Some(collection) => Err(ConflictableTransactionError::Abort(collection)),
            }
        });
        match result {
            Ok(failed) => {
                self.flush()?;
                Ok(failed
                    .into_iter()
                    .map(|f| f.map_or(Ok(()), |collection| Err(BackendError::Conflict { collection })))
                    .collect())
            }
            Err(TransactionError::Abort(collection)) => Err(BackendError::Conflict { collection }),
            Err(TransactionError::Storage(e)) => Err(io(e)),
        }
    }

    /// One: sled runs one transaction at a time anyway (its transactions
    /// hold a global lock), so a second group only splits the waiting
    /// commits in two, and makes two flushes of what one group, waiting for
    /// the turn meanwhile, would flush once. Under the bench's 64 writers,
    /// about 12% less CPU per audited write (docs/cloud-performance.md).
    fn concurrent_groups(&self) -> usize {
        1
    }

    fn generate_id(&self) -> Result<u64, BackendError> {
        // sled's generate_id is monotonic across restarts (it persists a
        // high-water mark ahead of use).
        self.db.generate_id().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> SledBackend {
        SledBackend::open(&dir.path().join("db")).unwrap()
    }

    #[test]
    fn commits_apply_together_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = open(&dir);
            backend
                .commit(Batch::default().put(Collection::Users, "u1", "alice").put(
                    Collection::UserNames,
                    "alice",
                    "u1",
                ))
                .unwrap();
            backend
                .commit(Batch::default().put(Collection::Users, "u2", "bob").delete(Collection::Users, "u1"))
                .unwrap();
        }
        let backend = open(&dir);
        assert_eq!(backend.get(Collection::Users, b"u1").unwrap(), None);
        assert_eq!(backend.get(Collection::Users, b"u2").unwrap().as_deref(), Some(&b"bob"[..]));
        assert_eq!(backend.get(Collection::UserNames, b"alice").unwrap().as_deref(), Some(&b"u1"[..]));
    }

    #[test]
    fn a_failed_expectation_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(&dir);
        backend.commit(Batch::default().put(Collection::UserNames, "alice", "u1")).unwrap();
        // Creating a second "alice" requires the name to be free: it is not.
        let err = backend
            .commit(
                Batch::default()
                    .expect(Collection::UserNames, "alice", None)
                    .put(Collection::Users, "u9", "impostor")
                    .put(Collection::UserNames, "alice", "u9"),
            )
            .unwrap_err();
        assert!(matches!(err, BackendError::Conflict { collection: Collection::UserNames }), "{err}");
        assert_eq!(backend.get(Collection::Users, b"u9").unwrap(), None);
        assert_eq!(backend.get(Collection::UserNames, b"alice").unwrap().as_deref(), Some(&b"u1"[..]));
        // With the right expectation it goes through.
        backend
            .commit(Batch::default().expect(Collection::UserNames, "alice", Some(b"u1".to_vec())).put(
                Collection::UserNames,
                "alice",
                "u2",
            ))
            .unwrap();
    }

    #[test]
    fn scans_are_ordered_paged_and_prefixed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(&dir);
        let mut batch = Batch::default();
        for i in 0..10u64 {
            batch = batch.put(Collection::Audit, i.to_be_bytes().to_vec(), format!("e{i}"));
        }
        backend
            .commit(batch.put(Collection::Sessions, "s:a", "1").put(Collection::Sessions, "t:b", "2"))
            .unwrap();
        let page = backend.scan(Collection::Audit, &[], None, 4).unwrap();
        assert_eq!(
            page.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            vec![b"e0".to_vec(), b"e1".to_vec(), b"e2".to_vec(), b"e3".to_vec()]
        );
        let next = backend.scan(Collection::Audit, &[], Some(&page[3].0), 100).unwrap();
        assert_eq!(next.len(), 6);
        assert_eq!(backend.last(Collection::Audit).unwrap().unwrap().1, b"e9".to_vec());
        assert_eq!(backend.scan(Collection::Sessions, b"s:", None, 10).unwrap().len(), 1);
        // `after` before, inside and beyond the prefix's keys.
        let values = |prefix: &[u8], after: &[u8]| {
            backend
                .scan(Collection::Sessions, prefix, Some(after), 10)
                .unwrap()
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        assert_eq!(values(b"s:", b"a"), vec![b"1".to_vec()]);
        assert_eq!(values(b"s:", b"s:"), vec![b"1".to_vec()]);
        assert_eq!(values(b"s:", b"s:a"), Vec::<Vec<u8>>::new());
        assert_eq!(values(b"s:", b"t"), Vec::<Vec<u8>>::new());
        assert_eq!(values(b"", b"s:a"), vec![b"2".to_vec()]);
    }

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let first: Vec<u64> = {
            let backend = open(&dir);
            (0..100).map(|_| backend.generate_id().unwrap()).collect()
        };
        let backend = open(&dir);
        let later = backend.generate_id().unwrap();
        assert!(first.iter().all(|&id| id < later), "an id was handed out twice");
    }
}
