//! The gateway's durable state, in a sled database under the data directory
//! (`/var/lib/ferry-gateway`, systemd's StateDirectory, for root).
//!
//! It holds what must survive a restart or a power cut:
//! - the customer's switch (off when never set, so a fresh install is off);
//! - the customer's per-session decisions (approve or deny);
//! - the queue of [`Event`]s for the cloud, until the cloud acknowledges them;
//! - the enrolment (which cloud, which gateway id);
//! - the relays the daemon last used, for `diagnose`.
//!
//! Every mutating call is flushed to disk before it returns: the customer's
//! switch and the audit events must never be lost across a restart. A state
//! change and the event that reports it are written in one sled transaction,
//! so there is never one without the other.
//!
//! sled holds an exclusive lock on the database, so only one process (the
//! daemon, or the CLI while the daemon is stopped) can open it at a time;
//! [`StoreError::Locked`] says so.

pub mod file;
pub mod keys;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ferry_control::{
    gateway::{Event, GatewayEvent},
    ids::SessionId,
};
use serde::{Deserialize, Serialize};
use sled::{
    Transactional as _,
    transaction::{ConflictableTransactionError, TransactionError, TransactionalTree},
};

/// The sled database's folder inside the data directory.
const DB_DIR: &str = "store";

const META: &str = "meta";
const EVENTS: &str = "events";
const DECISIONS: &str = "decisions";

const KEY_SWITCH: &[u8] = b"switch";
const KEY_SEQ: &[u8] = b"event_seq";
const KEY_ENROLLMENT: &[u8] = b"enrollment";
const KEY_RELAYS: &[u8] = b"relays";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// Another process (normally the running daemon) has the database open.
    #[error(
        "the gateway state in {path} is in use by another process (is the ferry-gateway daemon running?)"
    )]
    Locked { path: PathBuf },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("gateway state database: {0}")]
    Db(#[from] sled::Error),
    #[error("corrupt gateway state ({what}): {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("session {session} was already {decision}; a decision cannot be changed")]
    AlreadyDecided { session: SessionId, decision: Decision },
}

/// The customer's decision on one session: the approval or denial of one
/// that requires approval, or the end of one that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Denied,
    /// Ended by the customer at the gateway: it forwards nothing more until
    /// the cloud drops it (and a new start brings it back as a new entry).
    Ended,
}

impl Decision {
    fn to_byte(self) -> u8 {
        match self {
            Decision::Approved => 1,
            Decision::Denied => 2,
            Decision::Ended => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Decision> {
        match byte {
            1 => Some(Decision::Approved),
            2 => Some(Decision::Denied),
            3 => Some(Decision::Ended),
            _ => None,
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Approved => "approved",
            Decision::Denied => "denied",
            Decision::Ended => "ended",
        })
    }
}

/// Which cloud this gateway belongs to, as `enroll` recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// `http(s)://host:port`, without a path.
    pub cloud_url: String,
    pub gateway_id: u64,
    pub name: String,
    /// The cloud certificate's SHA-256 fingerprint (text, as given to
    /// `enroll --pin`); required for https.
    pub pin: Option<String>,
    /// Where the control channel lives on the cloud, e.g. `/api/v1/control/gateway`.
    pub control_path: String,
    /// Other replicas of the same cloud (`http(s)://host:port`), tried in
    /// turn when the one in use fails. They serve the same certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_cloud_urls: Vec<String>,
}

impl Enrollment {
    /// Every address of the cloud, the enrolled one first.
    pub fn cloud_urls(&self) -> Vec<String> {
        std::iter::once(self.cloud_url.clone()).chain(self.other_cloud_urls.iter().cloned()).collect()
    }
}

/// A relay endpoint the daemon used, kept for `diagnose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub udp: SocketAddr,
    pub websocket_url: String,
}

/// A copy of the enrolment and relays that other processes may read while
/// the daemon holds the database's lock (`diagnose` does).
pub const PUBLIC_FILE: &str = "public.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicState {
    pub enrollment: Option<Enrollment>,
    pub relays: Vec<RelayInfo>,
}

/// Reads [`PUBLIC_FILE`] without opening the database; empty when missing.
pub fn read_public(data_dir: &Path) -> Result<PublicState, StoreError> {
    match std::fs::read(data_dir.join(PUBLIC_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { what: "public.json", detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PublicState::default()),
        Err(e) => Err(StoreError::File { path: data_dir.join(PUBLIC_FILE), source: e }),
    }
}

/// The gateway's durable state. Cheap to clone: every clone shares one database.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    events: sled::Tree,
    decisions: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pending", &self.pending_len()).finish_non_exhaustive()
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Store {
    /// Opens (or creates) the state under `data_dir`, creating the directory
    /// with mode 0700 if it is missing.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir)
            .map_err(|source| StoreError::CreateDir { path: data_dir.to_path_buf(), source })?;
        let path = data_dir.join(DB_DIR);
        // sled reports another holder of its file lock as a plain I/O error.
        let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"));
        let db =
            ferry_daemon::reopen::retrying_while_locked(|| sled::Config::new().path(&path).open(), locked)
                .map_err(|e| match e {
                    e if locked(&e) => StoreError::Locked { path: path.clone() },
                    other => StoreError::Db(other),
                })?;
        // The daemon, or a command while it is stopped: temporaries a dead
        // writer left go (young ones stay, see the function).
        file::remove_stale_temporaries(data_dir);
        file::remove_stale_temporaries(&crate::panel::auth::panel_dir(data_dir));
        let meta = db.open_tree(META)?;
        let events = db.open_tree(EVENTS)?;
        let decisions = db.open_tree(DECISIONS)?;
        Ok(Store { dir: data_dir.to_path_buf(), db, meta, events, decisions })
    }

    /// The customer's switch: `false` when it was never set, so remote
    /// maintenance is off after an install.
    pub fn switch_on(&self) -> bool {
        matches!(self.meta.get(KEY_SWITCH), Ok(Some(v)) if v.as_ref() == [1])
    }

    /// Sets the switch and, in the same transaction, enqueues
    /// [`GatewayEvent::SwitchChanged`]. Returns `false` (and enqueues nothing)
    /// if the switch already was `on`.
    pub fn set_switch(&self, on: bool, time_ms: u64) -> Result<bool, StoreError> {
        let changed = (&self.meta, &self.events).transaction(|(meta, events)| {
            let current = matches!(meta.get(KEY_SWITCH)?, Some(v) if v.as_ref() == [1]);
            if current == on {
                return Ok(false);
            }
            meta.insert(KEY_SWITCH, &[u8::from(on)][..])?;
            tx_enqueue(meta, events, GatewayEvent::SwitchChanged { on }, time_ms)?;
            Ok(true)
        });
        let changed = unwrap_tx(changed)?;
        if changed {
            self.flush()?;
        }
        Ok(changed)
    }

    /// The customer's decision on `session`, if there is one.
    pub fn decision(&self, session: SessionId) -> Option<Decision> {
        let value = self.decisions.get(session.0.to_be_bytes()).ok()??;
        value.first().copied().and_then(Decision::from_byte)
    }

    /// Records the customer's decision and enqueues `Approved` or `Denied` in
    /// the same transaction. An existing decision is never changed
    /// ([`StoreError::AlreadyDecided`]), even to the same value.
    pub fn decide(&self, session: SessionId, decision: Decision, time_ms: u64) -> Result<(), StoreError> {
        let result = (&self.meta, &self.events, &self.decisions).transaction(|(meta, events, decisions)| {
            let key = session.0.to_be_bytes();
            if let Some(existing) = decisions.get(key)? {
                let existing = existing.first().copied().and_then(Decision::from_byte).ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::Corrupt {
                        what: "decision",
                        detail: format!("session {session}: unknown value {existing:?}"),
                    })
                })?;
                return Err(ConflictableTransactionError::Abort(StoreError::AlreadyDecided {
                    session,
                    decision: existing,
                }));
            }
            decisions.insert(&key, &[decision.to_byte()][..])?;
            let event = match decision {
                Decision::Approved => GatewayEvent::Approved { session_id: session },
                Decision::Denied => GatewayEvent::Denied { session_id: session },
                Decision::Ended => GatewayEvent::Ended { session_id: session },
            };
            tx_enqueue(meta, events, event, time_ms)?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.flush()
    }

    /// Records that the customer ended `session` (over its approval, if it
    /// had one) and enqueues `Ended` in the same transaction. A session
    /// that was denied or ended already is refused
    /// ([`StoreError::AlreadyDecided`]).
    pub fn end_session(&self, session: SessionId, time_ms: u64) -> Result<(), StoreError> {
        let result = (&self.meta, &self.events, &self.decisions).transaction(|(meta, events, decisions)| {
            let key = session.0.to_be_bytes();
            let existing = decisions.get(key)?.map(|v| v.first().copied().and_then(Decision::from_byte));
            match existing {
                None | Some(Some(Decision::Approved)) => {}
                Some(Some(decision)) => {
                    return Err(ConflictableTransactionError::Abort(StoreError::AlreadyDecided {
                        session,
                        decision,
                    }));
                }
                Some(None) => {
                    return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                        what: "decision",
                        detail: format!("session {session}: unknown value"),
                    }));
                }
            }
            decisions.insert(&key, &[Decision::Ended.to_byte()][..])?;
            tx_enqueue(meta, events, GatewayEvent::Ended { session_id: session }, time_ms)?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.flush()
    }

    /// Drops the decisions on every session not in `live` (the sessions the
    /// cloud still wants), so that the table does not grow forever.
    pub fn forget_decisions_except(&self, live: &[SessionId]) -> Result<(), StoreError> {
        let mut removed = false;
        for entry in self.decisions.iter().keys() {
            let key = entry?;
            let id = be_u64(&key, "decision key")?;
            if !live.contains(&SessionId(id)) {
                self.decisions.remove(key)?;
                removed = true;
            }
        }
        if removed {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends `event` to the queue for the cloud; returns its sequence
    /// number, which grows strictly across restarts.
    pub fn enqueue(&self, event: GatewayEvent, time_ms: u64) -> Result<u64, StoreError> {
        let seq = (&self.meta, &self.events)
            .transaction(|(meta, events)| tx_enqueue(meta, events, event.clone(), time_ms));
        let seq = unwrap_tx(seq)?;
        self.flush()?;
        Ok(seq)
    }

    /// Up to `limit` queued events, oldest first.
    pub fn pending(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.events
            .iter()
            .values()
            .take(limit)
            .map(|value| {
                let value = value?;
                serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Corrupt { what: "queued event", detail: e.to_string() })
            })
            .collect()
    }

    /// The cloud has every event up to and including `seq`: drops them.
    /// Returns how many were dropped.
    pub fn ack(&self, seq: u64) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for key in self.events.range(..=seq.to_be_bytes()).keys() {
            self.events.remove(key?)?;
            dropped += 1;
        }
        if dropped > 0 {
            self.flush()?;
        }
        Ok(dropped)
    }

    /// How many events wait for the cloud's acknowledgement.
    pub fn pending_len(&self) -> usize {
        self.events.len()
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>, StoreError> {
        self.get_json(KEY_ENROLLMENT, "enrollment")
    }

    pub fn set_enrollment(&self, e: &Enrollment) -> Result<(), StoreError> {
        self.set_json(KEY_ENROLLMENT, e)?;
        self.write_public()
    }

    /// The relay endpoints the daemon used last (for `diagnose`); replaces
    /// the previous list.
    pub fn set_relays(&self, relays: &[RelayInfo]) -> Result<(), StoreError> {
        if self.relays()? == relays {
            return Ok(());
        }
        self.set_json(KEY_RELAYS, &relays)?;
        self.write_public()
    }

    pub fn relays(&self) -> Result<Vec<RelayInfo>, StoreError> {
        Ok(self.get_json(KEY_RELAYS, "relays")?.unwrap_or_default())
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Mirrors the enrolment and relays (nothing secret) to
    /// [`PUBLIC_FILE`], for `diagnose` while the daemon holds the database.
    #[allow(clippy::expect_used, reason = "state values are plain derived data, which always serializes")]
    fn write_public(&self) -> Result<(), StoreError> {
        let public = PublicState { enrollment: self.enrollment()?, relays: self.relays()? };
        let bytes = serde_json::to_vec_pretty(&public).expect("state values serialize");
        let path = self.dir.join(PUBLIC_FILE);
        file::replace(&path, &bytes, 0o644).map_err(|source| StoreError::File { path, source })
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.meta.get(key)? {
            None => Ok(None),
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { what, detail: e.to_string() }),
        }
    }

    #[allow(clippy::expect_used, reason = "state values are plain derived data, which always serializes")]
    fn set_json<T: Serialize + ?Sized>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("state values serialize");
        self.meta.insert(key, bytes)?;
        self.flush()
    }
}

/// Inside a transaction: takes the next sequence number from the counter in
/// `meta` and writes the event under it, big-endian so that keys sort by seq.
#[allow(clippy::expect_used, reason = "events are plain derived data, which always serializes")]
fn tx_enqueue(
    meta: &TransactionalTree,
    events: &TransactionalTree,
    event: GatewayEvent,
    time_ms: u64,
) -> TxResult<u64> {
    let last = match meta.get(KEY_SEQ)? {
        None => 0,
        Some(bytes) => be_u64(&bytes, "event counter").map_err(ConflictableTransactionError::Abort)?,
    };
    let seq = last + 1;
    meta.insert(KEY_SEQ, &seq.to_be_bytes()[..])?;
    let record = Event { seq, time_ms, event };
    let bytes = serde_json::to_vec(&record).expect("events serialize");
    events.insert(&seq.to_be_bytes(), bytes)?;
    Ok(seq)
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    })
}

fn be_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt { what, detail: format!("{} bytes, expected 8", bytes.len()) })?;
    Ok(u64::from_be_bytes(array))
}

/// Creates `dir` (and its parents) with mode 0700 if missing. An existing
/// directory keeps its mode: systemd's StateDirectory sets it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(store: &Store) -> Vec<(u64, GatewayEvent)> {
        store.pending(100).unwrap().into_iter().map(|e| (e.seq, e.event)).collect()
    }

    #[test]
    fn switch_defaults_off_and_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let store = Store::open(&data).unwrap();
            assert!(!store.switch_on());
            assert!(store.set_switch(true, 10).unwrap());
            assert!(!store.set_switch(true, 11).unwrap(), "unchanged");
            assert!(store.switch_on());
            assert_eq!(events(&store), vec![(1, GatewayEvent::SwitchChanged { on: true })]);
        }
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        let store = Store::open(&data).unwrap();
        assert!(store.switch_on());
        assert!(store.set_switch(false, 12).unwrap());
        assert!(!store.switch_on());
    }

    #[test]
    fn seq_grows_across_reopen_and_ack_removes() {
        let dir = tempfile::tempdir().unwrap();
        let status = |on| GatewayEvent::Status { software_version: "t".into(), switch_on: on };
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.enqueue(status(false), 1).unwrap(), 1);
            assert_eq!(store.enqueue(status(true), 2).unwrap(), 2);
            assert_eq!(store.ack(2).unwrap(), 2);
            assert_eq!(store.pending_len(), 0);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.enqueue(status(false), 3).unwrap(), 3);
        assert_eq!(store.enqueue(status(true), 4).unwrap(), 4);
        assert_eq!(store.enqueue(status(true), 5).unwrap(), 5);
        let pending = store.pending(2).unwrap();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(pending[0].time_ms, 3);
        assert_eq!(store.ack(3).unwrap(), 1);
        assert_eq!(store.ack(3).unwrap(), 0);
        assert_eq!(store.pending_len(), 2);
        assert_eq!(store.ack(100).unwrap(), 2);
        assert!(store.pending(10).unwrap().is_empty());
    }

    #[test]
    fn unacked_events_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.set_switch(true, 1).unwrap();
            store.decide(SessionId(7), Decision::Approved, 2).unwrap();
            // Dropped without ack or an explicit flush: what a crash leaves.
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            events(&store),
            vec![
                (1, GatewayEvent::SwitchChanged { on: true }),
                (2, GatewayEvent::Approved { session_id: SessionId(7) }),
            ]
        );
        assert_eq!(store.decision(SessionId(7)), Some(Decision::Approved));
    }

    #[test]
    fn decide_is_atomic_and_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.decision(SessionId(1)), None);
        store.decide(SessionId(1), Decision::Denied, 5).unwrap();
        assert_eq!(store.decision(SessionId(1)), Some(Decision::Denied));
        let err = store.decide(SessionId(1), Decision::Approved, 6).unwrap_err();
        assert!(
            matches!(err, StoreError::AlreadyDecided { session: SessionId(1), decision: Decision::Denied }),
            "{err}"
        );
        assert_eq!(store.decision(SessionId(1)), Some(Decision::Denied));
        // The refused change enqueued nothing.
        assert_eq!(events(&store), vec![(1, GatewayEvent::Denied { session_id: SessionId(1) })]);

        store.decide(SessionId(2), Decision::Approved, 7).unwrap();
        store.decide(SessionId(3), Decision::Approved, 8).unwrap();
        store.forget_decisions_except(&[SessionId(2)]).unwrap();
        assert_eq!(store.decision(SessionId(1)), None);
        assert_eq!(store.decision(SessionId(2)), Some(Decision::Approved));
        assert_eq!(store.decision(SessionId(3)), None);
    }

    #[test]
    fn ending_a_session_is_recorded_with_its_event_and_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Approved first, then ended; or ended without an approval (none needed).
        store.decide(SessionId(1), Decision::Approved, 5).unwrap();
        store.end_session(SessionId(1), 6).unwrap();
        store.end_session(SessionId(2), 7).unwrap();
        assert_eq!(store.decision(SessionId(1)), Some(Decision::Ended));
        assert_eq!(store.decision(SessionId(2)), Some(Decision::Ended));
        let again = store.end_session(SessionId(1), 8).unwrap_err();
        assert!(matches!(again, StoreError::AlreadyDecided { decision: Decision::Ended, .. }), "{again}");
        let approve = store.decide(SessionId(2), Decision::Approved, 9).unwrap_err();
        assert!(matches!(approve, StoreError::AlreadyDecided { decision: Decision::Ended, .. }), "{approve}");
        store.decide(SessionId(3), Decision::Denied, 10).unwrap();
        assert!(store.end_session(SessionId(3), 11).is_err(), "a denied session is not running");
        assert_eq!(
            events(&store),
            vec![
                (1, GatewayEvent::Approved { session_id: SessionId(1) }),
                (2, GatewayEvent::Ended { session_id: SessionId(1) }),
                (3, GatewayEvent::Ended { session_id: SessionId(2) }),
                (4, GatewayEvent::Denied { session_id: SessionId(3) }),
            ]
        );
    }

    #[test]
    fn enrollment_and_relays_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let enrollment = Enrollment {
            cloud_url: "https://cloud.example:8443".into(),
            gateway_id: 4,
            name: "press-7".into(),
            pin: Some("AB:CD".into()),
            control_path: "/api/v1/control/gateway".into(),
            other_cloud_urls: vec!["https://cloud-2.example:8443".into()],
        };
        assert_eq!(enrollment.cloud_urls(), ["https://cloud.example:8443", "https://cloud-2.example:8443"]);
        let relays = vec![RelayInfo {
            udp: "192.0.2.1:40000".parse().unwrap(),
            websocket_url: "wss://relay.example/ws".into(),
        }];
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.enrollment().unwrap(), None);
            assert!(store.relays().unwrap().is_empty());
            store.set_enrollment(&enrollment).unwrap();
            store.set_relays(&relays).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.enrollment().unwrap(), Some(enrollment.clone()));
        assert_eq!(store.relays().unwrap(), relays);
        assert_eq!(read_public(dir.path()).unwrap(), PublicState { enrollment: Some(enrollment), relays });
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
