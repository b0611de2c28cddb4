//! Refresh tokens: opaque, single use, rotating. Each use returns a new
//! token of the same family and marks the old one used. Presenting a used
//! token again means it was copied: the whole family is revoked, so the
//! thief's and the owner's copies stop working together.

use serde::{Deserialize, Serialize};

use super::secret::{Opaque, owner_prefix, record_key};
use crate::store::{BackendError, Batch, Collection, Store};

pub const REFRESH_TTL_MS: u64 = 12 * 60 * 60 * 1000;
const PREFIX: &str = "fyr";
const KIND: u8 = b'r';

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    family: u64,
    secret_hash: String,
    created_ms: u64,
    expires_ms: u64,
    used: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the refresh token is not valid")]
    Invalid,
    #[error("the refresh token expired; log in again")]
    Expired,
    /// A used token came back: its family is now revoked.
    #[error("the refresh token was already used; every token of this login is revoked, log in again")]
    Reused { user_id: u64 },
    #[error(transparent)]
    Store(#[from] BackendError),
}

/// Starts a new family (a login) and returns its first token.
pub fn issue(store: &Store, user_id: u64, now_ms: u64) -> Result<String, BackendError> {
    let family = store.backend().generate_id()?;
    issue_in(store, user_id, family, now_ms, Batch::default())
}

fn issue_in(
    store: &Store,
    user_id: u64,
    family: u64,
    now_ms: u64,
    batch: Batch,
) -> Result<String, BackendError> {
    let id = store.backend().generate_id()?;
    let token = Opaque::generate(user_id, id);
    let record = Record {
        family,
        secret_hash: token.hash(),
        created_ms: now_ms,
        expires_ms: now_ms + REFRESH_TTL_MS,
        used: false,
    };
    store.backend().commit(batch.put(
        Collection::Tokens,
        record_key(KIND, user_id, id),
        crate::store::to_json(&record),
    ))?;
    Ok(token.encode(PREFIX))
}

/// Exchanges a refresh token for a new one; returns the user id and the new
/// token.
pub fn rotate(store: &Store, token: &str, now_ms: u64) -> Result<(u64, String), RefreshError> {
    let parsed = Opaque::parse(PREFIX, token).ok_or(RefreshError::Invalid)?;
    let key = record_key(KIND, parsed.owner, parsed.id);
    let stored = store.backend().get(Collection::Tokens, &key)?.ok_or(RefreshError::Invalid)?;
    let record: Record = serde_json::from_slice(&stored).map_err(|_| RefreshError::Invalid)?;
    if !parsed.matches(&record.secret_hash) {
        return Err(RefreshError::Invalid);
    }
    if record.used {
        revoke_family(store, parsed.owner, record.family)?;
        return Err(RefreshError::Reused { user_id: parsed.owner });
    }
    if now_ms >= record.expires_ms {
        return Err(RefreshError::Expired);
    }
    let used = Record { used: true, ..record.clone() };
    // The expectation makes two concurrent uses of one token a reuse: only
    // one of them can flip `used`.
    let batch = Batch::default().expect(Collection::Tokens, key.clone(), Some(stored)).put(
        Collection::Tokens,
        key,
        crate::store::to_json(&used),
    );
    prune_expired(store, parsed.owner, now_ms)?;
    match issue_in(store, parsed.owner, record.family, now_ms, batch) {
        Ok(new) => Ok((parsed.owner, new)),
        Err(BackendError::Conflict { .. }) => {
            revoke_family(store, parsed.owner, record.family)?;
            Err(RefreshError::Reused { user_id: parsed.owner })
        }
        Err(e) => Err(e.into()),
    }
}

/// Logs out: revokes the family of `token`. Unknown tokens are ignored.
pub fn revoke(store: &Store, token: &str) -> Result<Option<u64>, BackendError> {
    let Some(parsed) = Opaque::parse(PREFIX, token) else { return Ok(None) };
    let Some(stored) = store.backend().get(Collection::Tokens, &record_key(KIND, parsed.owner, parsed.id))?
    else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_slice::<Record>(&stored) else { return Ok(None) };
    if !parsed.matches(&record.secret_hash) {
        return Ok(None);
    }
    revoke_family(store, parsed.owner, record.family)?;
    Ok(Some(parsed.owner))
}

/// Revokes every refresh token of a user (disabling, password change).
pub fn revoke_user(store: &Store, user_id: u64) -> Result<usize, BackendError> {
    delete_where(store, user_id, |_| true)
}

fn revoke_family(store: &Store, user_id: u64, family: u64) -> Result<usize, BackendError> {
    delete_where(store, user_id, |r| r.family == family)
}

fn prune_expired(store: &Store, user_id: u64, now_ms: u64) -> Result<usize, BackendError> {
    delete_where(store, user_id, |r| r.expires_ms <= now_ms)
}

fn delete_where(store: &Store, user_id: u64, pick: impl Fn(&Record) -> bool) -> Result<usize, BackendError> {
    let prefix = owner_prefix(KIND, user_id);
    let mut batch = Batch::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.backend().scan(Collection::Tokens, &prefix, after.as_deref(), 500)?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        for (key, value) in page {
            // An unreadable record is garbage either way.
            if serde_json::from_slice::<Record>(&value).is_ok_and(|r| !pick(&r)) {
                continue;
            }
            batch = batch.delete(Collection::Tokens, key);
        }
    }
    let count = batch.ops.len();
    if count > 0 {
        store.backend().commit(batch)?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    #[test]
    fn rotation_and_reuse_revokes_the_family() {
        let (_dir, store) = store();
        let first = issue(&store, 5, 0).unwrap();
        let other_login = issue(&store, 5, 0).unwrap();
        let (user, second) = rotate(&store, &first, 10).unwrap();
        assert_eq!(user, 5);
        // The old token again: reuse. Its family is gone, the new token too.
        assert!(matches!(rotate(&store, &first, 20), Err(RefreshError::Reused { user_id: 5 })));
        assert!(matches!(rotate(&store, &second, 30), Err(RefreshError::Invalid)));
        // Another login of the same user is not affected.
        assert!(rotate(&store, &other_login, 40).is_ok());
    }

    #[test]
    fn expiry_logout_and_forgery() {
        let (_dir, store) = store();
        let token = issue(&store, 5, 0).unwrap();
        assert!(matches!(rotate(&store, &token, REFRESH_TTL_MS), Err(RefreshError::Expired)));
        let token = issue(&store, 5, 0).unwrap();
        // Same record, another secret.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(rotate(&store, &forged, 1), Err(RefreshError::Invalid)));
        // Someone else's owner id in front of a real id and secret.
        let moved = token.replacen("fyr.5.", "fyr.6.", 1);
        assert!(matches!(rotate(&store, &moved, 1), Err(RefreshError::Invalid)));
        assert_eq!(revoke(&store, &token).unwrap(), Some(5));
        assert!(matches!(rotate(&store, &token, 1), Err(RefreshError::Invalid)));
    }

    #[test]
    fn revoking_a_user_and_pruning() {
        let (_dir, store) = store();
        let a = issue(&store, 5, 0).unwrap();
        let b = issue(&store, 5, 0).unwrap();
        let c = issue(&store, 6, 0).unwrap();
        assert_eq!(revoke_user(&store, 5).unwrap(), 2);
        assert!(rotate(&store, &a, 1).is_err() && rotate(&store, &b, 1).is_err());
        let (_, c2) = rotate(&store, &c, 1).unwrap();
        // Rotating long after prunes the expired used record.
        let (_, _) = rotate(&store, &c2, REFRESH_TTL_MS).unwrap();
        let left = store.backend().scan(Collection::Tokens, &owner_prefix(KIND, 6), None, 10).unwrap();
        assert_eq!(left.len(), 2, "the first, expired record was pruned");
    }
}
