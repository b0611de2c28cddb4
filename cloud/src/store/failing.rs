//! A backend that fails chosen commits on demand, around a real one: for
//! tests of what the cloud does when storing fails, and of what a crash
//! between two commits leaves behind.

use std::sync::{
    Arc, Condvar, Mutex, PoisonError,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use super::backend::{Backend, BackendError, Batch, Collection, Entry, Finish, Lock, Op};

type Matcher = Box<dyn Fn(&Batch) -> bool + Send + Sync>;

/// How an armed failure behaves once a commit matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// That one commit fails; later ones go through.
    Once,
    /// That commit and every later one fail, as if the process had died
    /// right before it: what is stored is what a crash there leaves.
    Crash,
}

pub struct FailingBackend {
    inner: Arc<dyn Backend>,
    armed: Mutex<Option<(Matcher, Failure)>>,
    crashed: AtomicBool,
    failed: AtomicUsize,
    /// A commit to stop at until [`release`](FailingBackend::release), and
    /// whether one is stopped there now.
    held: Mutex<Option<Matcher>>,
    gate: (Mutex<Gate>, Condvar),
}

#[derive(Default)]
struct Gate {
    closed: bool,
    waiting: bool,
}

impl FailingBackend {
    pub fn new(inner: Arc<dyn Backend>) -> FailingBackend {
        FailingBackend {
            inner,
            armed: Mutex::new(None),
            crashed: AtomicBool::new(false),
            failed: AtomicUsize::new(0),
            held: Mutex::new(None),
            gate: (Mutex::new(Gate::default()), Condvar::new()),
        }
    }

    /// Stops the first group commit from now on for which `matches` holds
    /// (before anything of it is stored) until [`release`](Self::release):
    /// a commit that takes long, for tests of what waits behind it.
    pub fn hold_commit(&self, matches: impl Fn(&Batch) -> bool + Send + Sync + 'static) {
        self.gate.0.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(matches));
    }

    /// Whether a held commit is stopped at the gate now.
    pub fn holding(&self) -> bool {
        self.gate.0.lock().unwrap_or_else(PoisonError::into_inner).waiting
    }

    /// Lets a held commit go on (and any later one through).
    pub fn release(&self) {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.gate.0.lock().unwrap_or_else(PoisonError::into_inner).closed = false;
        self.gate.1.notify_all();
    }

    fn stop_if_held(&self, batch: &Batch) {
        let matched = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let matched = held.as_ref().is_some_and(|m| m(batch));
            if matched {
                held.take();
            }
            matched
        };
        if !matched {
            return;
        }
        let mut gate = self.gate.0.lock().unwrap_or_else(PoisonError::into_inner);
        gate.waiting = true;
        while gate.closed {
            gate = self.gate.1.wait(gate).unwrap_or_else(PoisonError::into_inner);
        }
        gate.waiting = false;
    }

    /// Fails the first commit from now on for which `matches` holds, in the
    /// way `failure` says. Replaces an armed failure that has not fired.
    pub fn fail_commit(&self, failure: Failure, matches: impl Fn(&Batch) -> bool + Send + Sync + 'static) {
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some((Box::new(matches), failure));
    }

    /// How many commits were failed so far.
    pub fn failures(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Whether the armed failure is still waiting for its commit.
    pub fn armed(&self) -> bool {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Refuses `batch` if the process crashed or the armed failure matches it.
    fn check(&self, batch: &Batch) -> Result<(), BackendError> {
        if self.crashed.load(Ordering::SeqCst) {
            return self.refuse();
        }
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((matches, failure)) = armed.take() {
            if matches(batch) {
                if failure == Failure::Crash {
                    self.crashed.store(true, Ordering::SeqCst);
                }
                return self.refuse();
            }
            *armed = Some((matches, failure));
        }
        Ok(())
    }

    fn refuse(&self) -> Result<(), BackendError> {
        self.failed.fetch_add(1, Ordering::SeqCst);
        Err(BackendError::Io("injected failure".into()))
    }
}

impl Backend for FailingBackend {
    fn get(&self, collection: Collection, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(collection, key)
    }

    fn get_many(
        &self,
        collection: Collection,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.inner.get_many(collection, keys)
    }

    fn get_each(&self, keys: &[(Collection, Vec<u8>)]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.inner.get_each(keys)
    }

    fn scan(
        &self,
        collection: Collection,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, BackendError> {
        self.inner.scan(collection, prefix, after, limit)
    }

    fn last(&self, collection: Collection) -> Result<Option<Entry>, BackendError> {
        self.inner.last(collection)
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        self.check(&batch)?;
        self.inner.commit(batch)
    }

    fn commit_group(
        &self,
        batches: Vec<Batch>,
        lock: Option<Lock>,
        finish: Arc<Finish>,
    ) -> Result<Vec<Result<(), BackendError>>, BackendError> {
        // Matched against everything the group would commit if every batch
        // held: a group fails as a whole, as one commit would.
        let all = batches.iter().cloned().fold(Batch::default(), Batch::append);
        let locked = match &lock {
            Some((collection, key)) => self.inner.get(*collection, key)?,
            None => None,
        };
        let all = all.append(finish(&vec![true; batches.len()], locked.as_deref()));
        self.stop_if_held(&all);
        self.check(&all)?;
        self.inner.commit_group(batches, lock, finish)
    }

    fn concurrent_groups(&self) -> usize {
        self.inner.concurrent_groups()
    }

    fn generate_id(&self) -> Result<u64, BackendError> {
        self.inner.generate_id()
    }
}

/// Whether `batch` appends an audit entry of `action` whose detail contains
/// `detail`, about `session` if one is given: a way to pick the commit of
/// one event.
pub fn appends_audit(batch: &Batch, action: &str, session: Option<u64>, detail: &str) -> bool {
    batch.ops.iter().any(|op| match op {
        Op::Put { collection: Collection::Audit, value, .. } => {
            serde_json::from_slice::<crate::audit::Entry>(value).is_ok_and(|e| {
                e.event.action == action
                    && session.is_none_or(|s| e.event.session == Some(s.to_string()))
                    && e.event.detail.as_deref().unwrap_or("").contains(detail)
            })
        }
        _ => false,
    })
}

/// Whether `batch` stores `seq` as a gateway's newest event.
pub fn stores_event_seq(batch: &Batch, seq: u64) -> bool {
    batch.ops.iter().any(|op| match op {
        Op::Put { collection: Collection::Gateways, value, .. } => {
            serde_json::from_slice::<crate::gateways::Gateway>(value).is_ok_and(|g| g.last_event_seq == seq)
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledBackend;

    #[test]
    fn fails_the_matching_commit_once_or_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FailingBackend::new(Arc::new(SledBackend::open(&dir.path().join("db")).unwrap()));
        let put = |k: &str| Batch::default().put(Collection::Users, k, "v");
        let wrote_b = |b: &Batch| {
            b.ops.iter().any(|op| matches!(op, super::super::backend::Op::Put { key, .. } if key == b"b"))
        };
        backend.fail_commit(Failure::Once, wrote_b);
        backend.commit(put("a")).unwrap();
        assert!(backend.commit(put("b")).is_err());
        backend.commit(put("b")).unwrap();
        assert_eq!(backend.failures(), 1);
        assert!(!backend.armed());

        backend.fail_commit(Failure::Crash, move |b| wrote_b(b));
        backend.commit(put("c")).unwrap();
        assert!(backend.commit(put("b")).is_err());
        assert!(backend.commit(put("d")).is_err(), "nothing is stored after a crash");
        assert_eq!(backend.get(Collection::Users, b"d").unwrap(), None);
        assert_eq!(backend.failures(), 3);
    }
}
