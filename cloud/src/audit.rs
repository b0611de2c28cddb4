//! The audit log: every action, allowed or refused, appended as a hash chain.
//!
//! Each entry carries the hash of the one before it and its own hash over all
//! its fields, so changing, removing or reordering a stored entry breaks the
//! chain at that entry, and [`verify`] names it.

use blake2::{Blake2s256, Digest};
use serde::{Deserialize, Serialize};

use crate::store::{BackendError, Batch, Collection, Store};

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// What the caller records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who: a user name, `gateway:<id>`, `relay:<id>` or `system`.
    pub actor: String,
    /// What: a dotted verb such as `session.start` or `user.login`.
    pub action: String,
    /// Whether the rights table (or a check) let it happen.
    pub allowed: bool,
    /// From where: the client's address, if known.
    pub source: Option<String>,
    pub session: Option<String>,
    pub gateway: Option<String>,
    /// Anything else worth keeping (a reason for a refusal, bytes moved).
    pub detail: Option<String>,
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: Event,
    /// Hex of the previous entry's hash (zeros for the first).
    pub prev_hash: String,
    /// Hex of this entry's hash over every field above.
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] BackendError),
    #[error("the audit log is being appended to concurrently too often; gave up")]
    Contended,
}

/// Where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The first entry that fails (by position: a deleted entry shows as the
    /// one after the gap).
    pub seq: u64,
    pub reason: String,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The hash of an entry's content: every field but the hash itself, in a
/// fixed order and encoding.
fn content_hash(seq: u64, time_ms: u64, event: &Event, prev_hash: &str) -> String {
    let content = serde_json::to_vec(&(seq, time_ms, event, prev_hash)).expect("plain data serializes");
    hex::encode(Blake2s256::digest(&content))
}

/// Appends an event at `time_ms`; the append is durable when this returns.
pub fn append(store: &Store, time_ms: u64, event: Event) -> Result<Entry, AuditError> {
    let backend = store.backend();
    // Appends race on the chain head; the loser retries on the new head.
    for _ in 0..64 {
        let (seq, prev_hash) = match backend.last(Collection::Audit)? {
            None => (1, hex::encode(GENESIS)),
            Some((_, value)) => {
                let last: Entry = serde_json::from_slice(&value)
                    .map_err(|e| BackendError::Io(format!("audit head is unreadable: {e}")))?;
                (last.seq + 1, last.hash)
            }
        };
        let hash = content_hash(seq, time_ms, &event, &prev_hash);
        let entry = Entry { seq, time_ms, event: event.clone(), prev_hash, hash };
        let value = serde_json::to_vec(&entry).expect("plain data serializes");
        match backend.commit(Batch::default().expect(Collection::Audit, key(seq), None).put(
            Collection::Audit,
            key(seq),
            value,
        )) {
            Ok(()) => return Ok(entry),
            Err(BackendError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AuditError::Contended)
}

/// Up to `limit` entries after sequence number `after_seq`, oldest first.
pub fn entries(store: &Store, after_seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
    let after = key(after_seq);
    let page = store.backend().scan(Collection::Audit, &[], (after_seq > 0).then_some(&after[..]), limit)?;
    page.iter()
        .map(|(_, v)| {
            serde_json::from_slice(v)
                .map_err(|e| AuditError::Store(BackendError::Io(format!("unreadable audit entry: {e}"))))
        })
        .collect()
}

/// Checks the whole chain; returns the number of entries, or the first break.
pub fn verify(store: &Store) -> Result<Result<u64, Broken>, AuditError> {
    let backend = store.backend();
    let mut expected_prev = hex::encode(GENESIS);
    let mut expected_seq = 1u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = backend.scan(Collection::Audit, &[], after.as_deref(), 1000)?;
        if page.is_empty() {
            return Ok(Ok(expected_seq - 1));
        }
        for (stored_key, value) in &page {
            let broken = |reason: String| Ok(Err(Broken { seq: expected_seq, reason }));
            let entry: Entry = match serde_json::from_slice(value) {
                Ok(e) => e,
                Err(e) => return broken(format!("unreadable: {e}")),
            };
            if stored_key.as_slice() != key(entry.seq) || entry.seq != expected_seq {
                return broken(format!("sequence {} where {expected_seq} was expected", entry.seq));
            }
            if entry.prev_hash != expected_prev {
                return broken("does not follow the previous entry".to_string());
            }
            if content_hash(entry.seq, entry.time_ms, &entry.event, &entry.prev_hash) != entry.hash {
                return broken("content does not match its hash".to_string());
            }
            expected_prev = entry.hash;
            expected_seq += 1;
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Backend, SledBackend};

    fn event(i: u64) -> Event {
        Event {
            actor: format!("user{i}"),
            action: "session.start".into(),
            allowed: !i.is_multiple_of(3),
            source: Some("192.0.2.7".into()),
            session: Some(format!("s{i}")),
            gateway: Some("g1".into()),
            detail: None,
        }
    }

    fn store() -> (tempfile::TempDir, Store, Arc<SledBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(SledBackend::open(&dir.path().join("db")).unwrap());
        let store = Store::with_backend(backend.clone()).unwrap();
        (dir, store, backend)
    }

    #[test]
    fn a_chain_verifies_and_links() {
        let (_dir, store, _) = store();
        assert_eq!(verify(&store).unwrap(), Ok(0));
        let mut previous = hex::encode(GENESIS);
        for i in 1..=2500 {
            let entry = append(&store, 1_700_000_000_000 + i, event(i)).unwrap();
            assert_eq!(entry.seq, i);
            assert_eq!(entry.prev_hash, previous);
            previous = entry.hash;
        }
        assert_eq!(verify(&store).unwrap(), Ok(2500));
    }

    #[test]
    fn a_flipped_byte_a_deletion_and_a_rewrite_are_each_found() {
        for attack in ["flip", "delete", "rewrite"] {
            let (_dir, store, backend) = store();
            for i in 1..=20 {
                append(&store, i, event(i)).unwrap();
            }
            let target = 7u64;
            let stored = backend.get(Collection::Audit, &key(target)).unwrap().unwrap();
            let batch = match attack {
                "flip" => {
                    let mut tampered = stored.clone();
                    let at = tampered.iter().position(|&b| b == b'u').unwrap();
                    tampered[at] = b'v'; // "user7" becomes "vser7"
                    Batch::default().put(Collection::Audit, key(target).to_vec(), tampered)
                }
                "delete" => Batch::default().delete(Collection::Audit, key(target).to_vec()),
                _ => {
                    // A consistent rewrite of entry 7 (new content, new own
                    // hash) still breaks the link from entry 8.
                    let mut entry: Entry = serde_json::from_slice(&stored).unwrap();
                    entry.event.allowed = !entry.event.allowed;
                    entry.hash = content_hash(entry.seq, entry.time_ms, &entry.event, &entry.prev_hash);
                    Batch::default().put(
                        Collection::Audit,
                        key(target).to_vec(),
                        serde_json::to_vec(&entry).unwrap(),
                    )
                }
            };
            backend.commit(batch).unwrap();
            let broken = verify(&store).unwrap().unwrap_err();
            let expected = if attack == "rewrite" { target + 1 } else { target };
            assert_eq!(broken.seq, expected, "{attack}: {broken:?}");
        }
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let (_dir, store, _) = store();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let store = store.clone();
                scope.spawn(move || {
                    for i in 0..50 {
                        append(&store, t * 1000 + i, event(i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(verify(&store).unwrap(), Ok(200));
    }
}
