//! Web console sessions. The browser holds a random cookie value and
//! nothing else; the store keeps a record under the value's hash (so a copy
//! of the database opens no session) with the user, the session's CSRF
//! token, and the times that end it: 30 minutes without a request, or 12
//! hours after login, whichever comes first. Logging out deletes the record;
//! disabling a user or changing their password deletes all of theirs, and a
//! record also stops working once the user's token epoch moves past it.

use blake2::{Blake2s256, Digest};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{
    store::{BackendError, Batch, Collection, Store},
    users::User,
};

/// The cookie's name.
pub const COOKIE: &str = "ferry_console";
/// The header a state-changing request sends the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The header the console's script sends on the reads it makes by itself
/// (after a change event): they do not count as use of the session.
pub const BACKGROUND_HEADER: &str = "x-ferry-background";
/// A session ends after this long without use (a request a person made)...
pub const IDLE_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// ...and this long after login in any case.
pub const ABSOLUTE_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;
/// `last_seen_ms` is written back at most this often: a write per request
/// would put a disk flush behind every click, and a minute is nothing
/// against the idle timeout.
const TOUCH_AFTER_MS: u64 = 60 * 1000;
/// Random bytes in a cookie value and in a CSRF token.
const SECRET_BYTES: usize = 32;

/// A console session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub user_id: u64,
    /// The synchronizer token every state-changing request must echo.
    pub csrf_token: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    /// The user's token epoch at login; a password change or disabling
    /// moves the user's, and the session is void from then on.
    pub epoch: u32,
}

impl ConsoleSession {
    /// When it ends if nothing happens meanwhile.
    pub fn expires_ms(&self) -> u64 {
        (self.last_seen_ms + IDLE_TIMEOUT_MS).min(self.created_ms + ABSOLUTE_TIMEOUT_MS)
    }

    pub fn csrf_matches(&self, presented: &str) -> bool {
        presented.len() == self.csrf_token.len()
            && bool::from(presented.as_bytes().ct_eq(self.csrf_token.as_bytes()))
    }
}

/// A live session found by its cookie: the store key and the record.
#[derive(Clone, Debug)]
pub struct Found {
    pub key: Vec<u8>,
    pub session: ConsoleSession,
}

/// Why a cookie opens no session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the console session is not valid; log in again")]
    Unknown,
    #[error("the console session ended after 30 minutes without use; log in again")]
    Idle,
    #[error("the console session ended 12 hours after login; log in again")]
    TooOld,
}

fn secret_hex() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The store key of a cookie value; None for anything that is not one.
fn key_of(cookie: &str) -> Option<Vec<u8>> {
    let well_formed =
        cookie.len() == SECRET_BYTES * 2 && cookie.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then(|| Blake2s256::digest(cookie.as_bytes()).to_vec())
}

/// Opens a session for `user`; returns the cookie value (shown to the
/// browser once, never stored) and the record.
pub fn create(store: &Store, user: &User, now_ms: u64) -> Result<(String, ConsoleSession), BackendError> {
    prune_expired(store, now_ms)?;
    let cookie = secret_hex();
    let session = ConsoleSession {
        user_id: user.id,
        csrf_token: secret_hex(),
        created_ms: now_ms,
        last_seen_ms: now_ms,
        epoch: user.token_epoch,
    };
    let Some(key) = key_of(&cookie) else {
        return Err(BackendError::Io("a fresh cookie value is malformed".into()));
    };
    store.backend().commit(Batch::default().expect(Collection::ConsoleSessions, key.clone(), None).put(
        Collection::ConsoleSessions,
        key,
        crate::store::to_json(&session),
    ))?;
    Ok((cookie, session))
}

/// The live session of a cookie value. An expired one is deleted.
pub fn find(store: &Store, cookie: &str, now_ms: u64) -> Result<Result<Found, Refused>, BackendError> {
    let Some(key) = key_of(cookie) else { return Ok(Err(Refused::Unknown)) };
    let Some(bytes) = store.backend().get(Collection::ConsoleSessions, &key)? else {
        return Ok(Err(Refused::Unknown));
    };
    // An unreadable record opens nothing; it goes like an expired one.
    let session = serde_json::from_slice::<ConsoleSession>(&bytes).ok();
    let refused = match &session {
        None => Some(Refused::Unknown),
        Some(s) if now_ms >= s.created_ms + ABSOLUTE_TIMEOUT_MS => Some(Refused::TooOld),
        Some(s) if now_ms >= s.last_seen_ms + IDLE_TIMEOUT_MS => Some(Refused::Idle),
        Some(_) => None,
    };
    match (refused, session) {
        (None, Some(session)) => Ok(Ok(Found { key, session })),
        (refused, _) => {
            store.backend().commit(Batch::default().delete(Collection::ConsoleSessions, key))?;
            Ok(Err(refused.unwrap_or(Refused::Unknown)))
        }
    }
}

/// Records that the session was used now (at most once a minute). A
/// concurrent change (another request's touch, a logout) wins: the touch is
/// dropped, never resurrecting a deleted session.
pub fn touch(store: &Store, found: &Found, now_ms: u64) -> Result<(), BackendError> {
    if now_ms < found.session.last_seen_ms + TOUCH_AFTER_MS {
        return Ok(());
    }
    let before = crate::store::to_json(&found.session);
    let after = ConsoleSession { last_seen_ms: now_ms, ..found.session.clone() };
    let batch = Batch::default().expect(Collection::ConsoleSessions, found.key.clone(), Some(before)).put(
        Collection::ConsoleSessions,
        found.key.clone(),
        crate::store::to_json(&after),
    );
    match store.backend().commit(batch) {
        Ok(()) | Err(BackendError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Ends the session of a cookie value (logout); returns it if there was one.
pub fn end(store: &Store, cookie: &str) -> Result<Option<ConsoleSession>, BackendError> {
    let Some(key) = key_of(cookie) else { return Ok(None) };
    let Some(bytes) = store.backend().get(Collection::ConsoleSessions, &key)? else { return Ok(None) };
    store.backend().commit(Batch::default().delete(Collection::ConsoleSessions, key))?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// Ends every console session of a user; returns how many.
pub fn end_user(store: &Store, user_id: u64) -> Result<usize, BackendError> {
    delete_where(store, |s| s.is_none_or(|s| s.user_id == user_id))
}

/// Deletes the sessions that ended by time.
pub fn prune_expired(store: &Store, now_ms: u64) -> Result<usize, BackendError> {
    delete_where(store, |s| s.is_none_or(|s| now_ms >= s.expires_ms()))
}

/// Sessions are few (one per browser login), so a full scan is cheap.
fn delete_where(
    store: &Store,
    pick: impl Fn(Option<&ConsoleSession>) -> bool,
) -> Result<usize, BackendError> {
    let mut batch = Batch::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.backend().scan(Collection::ConsoleSessions, &[], after.as_deref(), 500)?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        for (key, value) in page {
            if pick(serde_json::from_slice::<ConsoleSession>(&value).ok().as_ref()) {
                batch = batch.delete(Collection::ConsoleSessions, key);
            }
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
    use crate::rights::Role;

    fn user(id: u64) -> User {
        User::new(id, format!("u{id}"), Role::RemoteConnectUser, "$argon2id$x".into(), 0)
    }

    #[test]
    fn a_cookie_finds_its_session_until_idle_or_too_old() {
        let (_dir, store) = Store::temporary();
        let (cookie, session) = create(&store, &user(5), 1_000).unwrap();
        assert_eq!(cookie.len(), 64);
        assert_ne!(cookie, session.csrf_token);
        let found = find(&store, &cookie, 1_000 + IDLE_TIMEOUT_MS - 1).unwrap().unwrap();
        assert_eq!(found.session, session);
        // The stored key is the hash, not the value.
        assert!(store.backend().get(Collection::ConsoleSessions, cookie.as_bytes()).unwrap().is_none());
        assert_eq!(find(&store, &cookie, 1_000 + IDLE_TIMEOUT_MS).unwrap().unwrap_err(), Refused::Idle);
        assert_eq!(
            find(&store, &cookie, 1_000 + IDLE_TIMEOUT_MS).unwrap().unwrap_err(),
            Refused::Unknown,
            "an expired session is deleted"
        );

        // Used every 20 minutes, it lives until the absolute limit.
        let (cookie, _) = create(&store, &user(5), 0).unwrap();
        let mut now = 0;
        while now + 20 * 60_000 < ABSOLUTE_TIMEOUT_MS {
            now += 20 * 60_000;
            let found = find(&store, &cookie, now).unwrap().unwrap();
            touch(&store, &found, now).unwrap();
        }
        assert_eq!(find(&store, &cookie, ABSOLUTE_TIMEOUT_MS).unwrap().unwrap_err(), Refused::TooOld);
    }

    #[test]
    fn touches_are_rate_limited_and_never_resurrect() {
        let (_dir, store) = Store::temporary();
        let (cookie, _) = create(&store, &user(5), 0).unwrap();
        let found = find(&store, &cookie, 10).unwrap().unwrap();
        touch(&store, &found, 10).unwrap();
        assert_eq!(find(&store, &cookie, 20).unwrap().unwrap().session.last_seen_ms, 0, "too soon to write");
        touch(&store, &found, TOUCH_AFTER_MS).unwrap();
        let found = find(&store, &cookie, TOUCH_AFTER_MS).unwrap().unwrap();
        assert_eq!(found.session.last_seen_ms, TOUCH_AFTER_MS);
        assert!(end(&store, &cookie).unwrap().is_some());
        touch(&store, &found, 3 * TOUCH_AFTER_MS).unwrap();
        assert_eq!(find(&store, &cookie, 3 * TOUCH_AFTER_MS).unwrap().unwrap_err(), Refused::Unknown);
        assert!(end(&store, &cookie).unwrap().is_none());
    }

    #[test]
    fn ending_a_users_sessions_and_malformed_cookies() {
        let (_dir, store) = Store::temporary();
        let (a, _) = create(&store, &user(5), 0).unwrap();
        let (b, _) = create(&store, &user(5), 0).unwrap();
        let (c, _) = create(&store, &user(6), 0).unwrap();
        assert_eq!(end_user(&store, 5).unwrap(), 2);
        assert!(find(&store, &a, 1).unwrap().is_err() && find(&store, &b, 1).unwrap().is_err());
        assert!(find(&store, &c, 1).unwrap().is_ok());
        for bad in ["", "x", &c.to_uppercase(), &format!("{c}0"), &"g".repeat(64)] {
            assert_eq!(find(&store, bad, 1).unwrap().unwrap_err(), Refused::Unknown, "{bad:?}");
        }
        // Creating prunes what expired.
        create(&store, &user(7), ABSOLUTE_TIMEOUT_MS).unwrap();
        assert_eq!(store.backend().scan(Collection::ConsoleSessions, &[], None, 10).unwrap().len(), 1);
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        let (_dir, store) = Store::temporary();
        let (_, session) = create(&store, &user(5), 0).unwrap();
        assert!(session.csrf_matches(&session.csrf_token.clone()));
        assert!(!session.csrf_matches(&session.csrf_token[..63]));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&secret_hex()));
    }
}
