//! Who may use the panel: one local password, set by root on the gateway
//! (`ferry-gateway panel password`), stored as an argon2id hash; the
//! cloud's slowdown and lockout after failed attempts, with the counters in
//! a file so that a restart does not lift a lock; and browser sessions held
//! in memory by the daemon, each with its CSRF token.
//!
//! Files, in `<data dir>/panel/` (mode 0700):
//! - `password`: the PHC string (0600);
//! - `lockout.json`: the failed attempts (0600);
//! - `tls/`: the panel's self-signed certificate and key.
//!
//! A session ends after 30 minutes without a request a person made, 12
//! hours after login, at logout, when the password changes, and when the
//! daemon restarts. The browser holds a random cookie value; the daemon
//! keeps only its SHA-256.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use ferry_daemon::login::{
    lockout::{Failures, Lockout, Refused},
    password,
};
use parking_lot::Mutex;
use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The panel's folder inside the data directory.
pub const DIR: &str = "panel";
const PASSWORD_FILE: &str = "password";
const LOCKOUT_FILE: &str = "lockout.json";

/// The session cookie's name.
pub const COOKIE: &str = "ferry_panel";
/// A session ends after this long without a request a person made...
pub const IDLE_TIMEOUT_MS: u64 = 30 * 60 * 1000;
/// ...and this long after login in any case.
pub const ABSOLUTE_TIMEOUT_MS: u64 = 12 * 60 * 60 * 1000;
/// Random bytes in a cookie value and in a CSRF token.
const SECRET_BYTES: usize = 32;

pub fn panel_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

fn password_path(data_dir: &Path) -> PathBuf {
    panel_dir(data_dir).join(PASSWORD_FILE)
}

fn lockout_path(data_dir: &Path) -> PathBuf {
    panel_dir(data_dir).join(LOCKOUT_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Password(#[from] password::PasswordError),
}

fn file_error(path: PathBuf) -> impl FnOnce(io::Error) -> AuthError {
    move |source| AuthError::File { path, source }
}

/// The stored hash, if a password was set.
pub fn password_hash(data_dir: &Path) -> Result<Option<String>, AuthError> {
    let path = password_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(path)(e)),
    }
}

/// Hashes and stores a new password (12 to 1024 characters) and clears
/// the failed attempts: whoever sets it is root on the gateway. Sessions
/// logged in with the old one end at their next request.
pub fn set_password(data_dir: &Path, new: &str) -> Result<(), AuthError> {
    let hash = password::hash(new)?;
    let dir = panel_dir(data_dir);
    crate::state::create_private_dir(&dir).map_err(file_error(dir.clone()))?;
    let path = password_path(data_dir);
    crate::state::file::replace(&path, hash.as_bytes(), 0o600).map_err(file_error(path))?;
    write_failures(data_dir, &Failures::default())
}

/// The failed attempts as stored; none when there is no file. A file that
/// cannot be read counts as a lock rather than as no failures, so that
/// breaking it does not lift a lock.
pub fn read_failures(data_dir: &Path, lockout: &Lockout, now_ms: u64) -> Failures {
    let path = lockout_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(file = %path.display(), error = %e, "unreadable panel lockout record: locking");
            Failures { count: 0, last_failed_ms: None, locked_until_ms: Some(now_ms + lockout.lock_ms) }
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Failures::default(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "reading the panel lockout record: locking");
            Failures { count: 0, last_failed_ms: None, locked_until_ms: Some(now_ms + lockout.lock_ms) }
        }
    }
}

#[allow(clippy::expect_used, reason = "the counters are plain derived data, which always serializes")]
fn write_failures(data_dir: &Path, failures: &Failures) -> Result<(), AuthError> {
    let dir = panel_dir(data_dir);
    crate::state::create_private_dir(&dir).map_err(file_error(dir))?;
    let path = lockout_path(data_dir);
    let bytes = serde_json::to_vec(failures).expect("counters serialize");
    crate::state::file::replace(&path, &bytes, 0o600).map_err(file_error(path))
}

/// What became of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A new session: the cookie value (shown to the browser once) and its
    /// CSRF token.
    Success {
        cookie: String,
        csrf: String,
    },
    /// Wrong password.
    BadPassword,
    /// No password was ever set: nobody can log in.
    NoPassword,
    Throttled {
        retry_after_ms: u64,
    },
    Locked {
        until_ms: u64,
    },
    /// This failure locked the panel.
    LockedNow {
        until_ms: u64,
    },
}

/// One browser's session.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created_ms: u64,
    last_seen_ms: u64,
    /// The password hash it logged in with: a new password ends it.
    stamp: String,
}

/// A live session found by its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub csrf: String,
}

impl Found {
    pub fn csrf_matches(&self, presented: &str) -> bool {
        presented.len() == self.csrf.len() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

pub struct Auth {
    data_dir: PathBuf,
    lockout: Lockout,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// One login at a time, so that the counters' read-modify-write of the
    /// lockout file is never interleaved.
    attempts: tokio::sync::Mutex<()>,
}

fn secret_hex() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The map key of a cookie value; `None` for anything that is not one.
fn key_of(cookie: &str) -> Option<[u8; 32]> {
    let well_formed =
        cookie.len() == SECRET_BYTES * 2 && cookie.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then(|| Sha256::digest(cookie.as_bytes()).into())
}

impl Auth {
    pub fn new(data_dir: &Path, lockout: Lockout) -> Auth {
        Auth {
            data_dir: data_dir.to_path_buf(),
            lockout,
            sessions: Mutex::new(HashMap::new()),
            attempts: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks `given` against the stored password under the lockout rules.
    /// Attempts during a wait or a lock are refused without checking.
    #[cfg(test)]
    pub async fn login(&self, given: String, now_ms: u64) -> Result<Login, AuthError> {
        self.login_at(given, now_ms, now_ms).await
    }

    /// [`login`](Self::login) with two clocks: `now_ms`, the wall clock, for
    /// the lockout (its counters are kept on disk across restarts), and
    /// `session_ms`, a monotonic clock, for the session it opens, so that a
    /// step of the wall clock neither stretches nor cuts a browser's session
    /// (pass the same clock to [`session`](Self::session)).
    pub async fn login_at(&self, given: String, now_ms: u64, session_ms: u64) -> Result<Login, AuthError> {
        let _one_at_a_time = self.attempts.lock().await;
        let mut failures = read_failures(&self.data_dir, &self.lockout, now_ms);
        match self.lockout.check(&failures, now_ms) {
            Err(Refused::Locked { until_ms }) => return Ok(Login::Locked { until_ms }),
            Err(Refused::Throttled { retry_after_ms }) => return Ok(Login::Throttled { retry_after_ms }),
            Ok(()) => {}
        }
        let stored = password_hash(&self.data_dir)?;
        let hash = stored.clone().unwrap_or_default();
        // The same work whether or not a password is set.
        let matches = tokio::task::spawn_blocking(move || match decoy_hash() {
            Some(decoy) if hash.is_empty() => {
                let _ = password::verify(&given, decoy);
                false
            }
            _ => password::verify(&given, &hash),
        })
        .await
        .unwrap_or(false);
        let Some(stamp) = stored.filter(|_| matches) else {
            let locked = self.lockout.failed(&mut failures, now_ms);
            write_failures(&self.data_dir, &failures)?;
            return Ok(match locked {
                Some(until_ms) => Login::LockedNow { until_ms },
                None if password_hash(&self.data_dir)?.is_none() => Login::NoPassword,
                None => Login::BadPassword,
            });
        };
        if failures != Failures::default() {
            failures.succeeded();
            write_failures(&self.data_dir, &failures)?;
        }
        let cookie = secret_hex();
        let csrf = secret_hex();
        let Some(key) = key_of(&cookie) else {
            return Err(AuthError::File {
                path: self.data_dir.clone(),
                source: io::Error::other("a fresh cookie value is malformed"),
            });
        };
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| !expired(s, session_ms));
        sessions.insert(
            key,
            Session { csrf: csrf.clone(), created_ms: session_ms, last_seen_ms: session_ms, stamp },
        );
        Ok(Login::Success { cookie, csrf })
    }

    /// The live session of a cookie value. `used`: a request a person made
    /// (not the live updates), which keeps the session from idling out.
    /// `now_ms` is on the sessions' monotonic clock (see
    /// [`login_at`](Self::login_at)).
    pub fn session(&self, cookie: &str, now_ms: u64, used: bool) -> Option<Found> {
        let key = key_of(cookie)?;
        let current = password_hash(&self.data_dir).ok().flatten();
        let mut sessions = self.sessions.lock();
        let session = sessions.get_mut(&key)?;
        if expired(session, now_ms) || current.as_deref() != Some(session.stamp.as_str()) {
            sessions.remove(&key);
            return None;
        }
        if used {
            session.last_seen_ms = now_ms;
        }
        Some(Found { csrf: session.csrf.clone() })
    }

    /// Ends the session of a cookie value; whether there was one.
    pub fn logout(&self, cookie: &str) -> bool {
        key_of(cookie).is_some_and(|key| self.sessions.lock().remove(&key).is_some())
    }

    /// Whether a password is set.
    pub fn has_password(&self) -> bool {
        password_hash(&self.data_dir).ok().flatten().is_some()
    }
}

/// A hash of a random password, checked when none is set.
fn decoy_hash() -> Option<&'static str> {
    static DECOY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| password::hash(&password::one_time()).ok()).as_deref()
}

fn expired(session: &Session, now_ms: u64) -> bool {
    now_ms >= session.last_seen_ms + IDLE_TIMEOUT_MS || now_ms >= session.created_ms + ABSOLUTE_TIMEOUT_MS
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const PASSWORD: &str = "plant operator passphrase";

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_password_is_hashed_and_private() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(password_hash(dir.path()).unwrap(), None);
        assert!(set_password(dir.path(), "short").is_err(), "at least 12 characters");
        set_password(dir.path(), PASSWORD).unwrap();
        let stored = std::fs::read_to_string(password_path(dir.path())).unwrap();
        assert!(stored.starts_with("$argon2id$") && !stored.contains(PASSWORD), "{stored}");
        assert_eq!(mode(&password_path(dir.path())), 0o600);
        assert_eq!(mode(&panel_dir(dir.path())), 0o700);
        assert_eq!(mode(&lockout_path(dir.path())), 0o600);
    }

    #[tokio::test]
    async fn without_a_password_nobody_logs_in() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::new(dir.path(), Lockout::default());
        assert_eq!(auth.login(String::new(), 1_000).await.unwrap(), Login::NoPassword);
        assert_eq!(auth.login(PASSWORD.into(), 1_001).await.unwrap(), Login::NoPassword);
        assert!(!auth.has_password());
    }

    #[tokio::test]
    async fn lockout_is_persisted_across_restarts_and_cleared_by_a_new_password() {
        let dir = tempfile::tempdir().unwrap();
        set_password(dir.path(), PASSWORD).unwrap();
        let lockout = Lockout::default();
        let mut now = 1_000_000;
        {
            let auth = Auth::new(dir.path(), lockout);
            for _ in 0..3 {
                assert_eq!(auth.login("wrong password!!".into(), now).await.unwrap(), Login::BadPassword);
            }
            // Slowed down after three: the right password is not even checked.
            assert_eq!(
                auth.login(PASSWORD.into(), now + 10).await.unwrap(),
                Login::Throttled { retry_after_ms: 990 }
            );
            for failures in 3..9 {
                now += lockout.delay_ms(failures);
                assert_eq!(auth.login("wrong password!!".into(), now).await.unwrap(), Login::BadPassword);
            }
            now += lockout.delay_ms(9);
            let until_ms = now + lockout.lock_ms;
            assert_eq!(
                auth.login("wrong password!!".into(), now).await.unwrap(),
                Login::LockedNow { until_ms }
            );
        }
        // A restarted daemon still refuses, without checking the password.
        let auth = Auth::new(dir.path(), lockout);
        let until_ms = now + lockout.lock_ms;
        assert_eq!(auth.login(PASSWORD.into(), now + 1).await.unwrap(), Login::Locked { until_ms });
        // Breaking the record does not lift the lock.
        std::fs::write(lockout_path(dir.path()), b"{not json").unwrap();
        assert!(matches!(auth.login(PASSWORD.into(), now + 2).await.unwrap(), Login::Locked { .. }));
        // After the lock (or a new password set by root), the right password works.
        set_password(dir.path(), PASSWORD).unwrap();
        assert!(matches!(auth.login(PASSWORD.into(), now + 3).await.unwrap(), Login::Success { .. }));
    }

    #[tokio::test]
    async fn the_lock_ends_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        set_password(dir.path(), PASSWORD).unwrap();
        let lockout = Lockout { slow_after: 100, lock_after: 2, lock_ms: 60_000, ..Lockout::default() };
        let auth = Auth::new(dir.path(), lockout);
        assert_eq!(auth.login("wrong password!!".into(), 0).await.unwrap(), Login::BadPassword);
        assert_eq!(
            auth.login("wrong password!!".into(), 1).await.unwrap(),
            Login::LockedNow { until_ms: 60_001 }
        );
        assert_eq!(auth.login(PASSWORD.into(), 60_000).await.unwrap(), Login::Locked { until_ms: 60_001 });
        assert!(matches!(auth.login(PASSWORD.into(), 60_001).await.unwrap(), Login::Success { .. }));
        assert_eq!(read_failures(dir.path(), &lockout, 60_002), Failures::default(), "a success clears");
    }

    #[tokio::test]
    async fn sessions_idle_out_age_out_end_at_logout_and_with_a_new_password() {
        let dir = tempfile::tempdir().unwrap();
        set_password(dir.path(), PASSWORD).unwrap();
        let auth = Auth::new(dir.path(), Lockout::default());
        let login = |now| {
            let auth = &auth;
            async move {
                match auth.login(PASSWORD.into(), now).await.unwrap() {
                    Login::Success { cookie, csrf } => (cookie, csrf),
                    other => panic!("{other:?}"),
                }
            }
        };
        let (cookie, csrf) = login(0).await;
        assert_ne!(cookie, csrf);
        let found = auth.session(&cookie, 1, true).unwrap();
        assert!(found.csrf_matches(&csrf) && !found.csrf_matches(&csrf[..63]) && !found.csrf_matches(""));
        // Live updates do not count as use.
        assert!(auth.session(&cookie, IDLE_TIMEOUT_MS - 1, false).is_some());
        assert!(auth.session(&cookie, IDLE_TIMEOUT_MS + 1, false).is_none(), "idled out");
        assert!(auth.session(&cookie, 2, true).is_none(), "and gone for good");

        let (cookie, _) = login(0).await;
        let mut now = 0;
        while now + 20 * 60_000 < ABSOLUTE_TIMEOUT_MS {
            now += 20 * 60_000;
            assert!(auth.session(&cookie, now, true).is_some());
        }
        assert!(auth.session(&cookie, ABSOLUTE_TIMEOUT_MS, true).is_none(), "12 hours after login");

        let (cookie, _) = login(0).await;
        assert!(auth.logout(&cookie));
        assert!(!auth.logout(&cookie));
        assert!(auth.session(&cookie, 1, true).is_none());

        let (cookie, _) = login(0).await;
        set_password(dir.path(), "a brand new passphrase").unwrap();
        assert!(auth.session(&cookie, 1, true).is_none(), "a new password ends old sessions");

        for bad in ["", "x", &cookie.to_uppercase(), &"g".repeat(64)] {
            assert!(auth.session(bad, 1, true).is_none(), "{bad:?}");
        }
    }
}
