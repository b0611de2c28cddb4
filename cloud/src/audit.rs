//! The audit log: every action, allowed or refused, appended as a hash chain.
//!
//! Each entry carries the hash of the one before it and its own hash over all
//! its fields, so changing, removing or reordering a stored entry breaks the
//! chain at that entry, and [`verify`] names it.
//!
//! Retention removes the oldest entries ([`prune`]). The last removed entry's
//! seq and hash stay behind as the anchor the remaining chain starts from,
//! and every pruning appends an `audit.prune` entry naming that anchor in the
//! same commit, so an anchor moved forward by hand (hiding entries) shows as
//! a break too.

use blake2::{Blake2s256, Digest};
use serde::{Deserialize, Serialize};

use crate::store::{BackendError, Batch, Collection, Store};

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// The most entries one [`query`] call reads, matching or not.
pub const SCAN_BUDGET: usize = 10_000;

/// The most entries one commit of [`prune`] removes.
const PRUNE_BATCH: usize = 1_000;

/// Where the pruning anchor lives in [`Collection::Meta`].
const ANCHOR_KEY: &[u8] = b"audit_anchor";

/// Where the newest entry's link lives in [`Collection::Meta`], written with
/// every append, so that removing the newest entries shows too.
const HEAD_KEY: &[u8] = b"audit_head";

/// What the caller records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

impl Entry {
    /// Whether `hash` is this entry's hash over its other fields, for
    /// checking an exported entry away from the store.
    pub fn hash_matches(&self) -> bool {
        content_hash(self.seq, self.time_ms, &self.event, &self.prev_hash) == self.hash
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] BackendError),
    #[error("the audit log is being appended to concurrently too often; gave up")]
    Contended,
    #[error("audit entry {seq} is unreadable: {reason}")]
    Unreadable { seq: u64, reason: String },
    #[error("refusing to prune: the audit log is broken at entry {}: {}", .0.seq, .0.reason)]
    Broken(Broken),
}

/// Where the chain breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The first entry that fails (by position: a deleted entry shows as the
    /// one after the gap).
    pub seq: u64,
    pub reason: String,
}

/// A chain that checked out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Intact {
    /// How many entries remain (after the anchor, if pruned).
    pub entries: u64,
    /// The last entry removed by retention, if any was.
    pub anchor_seq: Option<u64>,
}

/// A point of the chain: an entry's seq and hash. The anchor (the last
/// entry removed by [`prune`], which the remaining chain continues from) and
/// the head (the newest entry) are kept as links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub seq: u64,
    pub hash: String,
}

impl Link {
    fn of(entry: &Entry) -> Link {
        Link { seq: entry.seq, hash: entry.hash.clone() }
    }

    fn encode(&self) -> Vec<u8> {
        crate::store::to_json(self)
    }
}

/// Which entries a [`query`] returns; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Query {
    /// Entries at or after this time (milliseconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// Entries before this time (exclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// Exactly this actor: a user name, `gateway:<id>`, `relay:<id>` or `system`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 256)]
    pub actor: Option<String>,
    /// Exactly this session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 256)]
    pub session: Option<String>,
    /// Exactly this gateway id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 256)]
    pub gateway: Option<String>,
    /// Exactly this action, such as `session.start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 256)]
    pub action: Option<String>,
    /// Only allowed (`true`) or only refused (`false`) actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
}

impl Query {
    pub fn matches(&self, entry: &Entry) -> bool {
        let same = |wanted: &Option<String>, have: &str| wanted.as_deref().is_none_or(|w| w == have);
        let same_opt = |wanted: &Option<String>, have: &Option<String>| wanted.is_none() || wanted == have;
        self.from_ms.is_none_or(|from| entry.time_ms >= from)
            && self.to_ms.is_none_or(|to| entry.time_ms < to)
            && same(&self.actor, &entry.event.actor)
            && same(&self.action, &entry.event.action)
            && same_opt(&self.session, &entry.event.session)
            && same_opt(&self.gateway, &entry.event.gateway)
            && self.allowed.is_none_or(|a| entry.event.allowed == a)
    }
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(stored_key: &[u8]) -> Result<u64, AuditError> {
    let bytes: [u8; 8] = stored_key.try_into().map_err(|_| {
        AuditError::Store(BackendError::Io(format!("audit key of {} bytes instead of 8", stored_key.len())))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn parse(stored_key: &[u8], value: &[u8]) -> Result<Entry, AuditError> {
    serde_json::from_slice(value)
        .map_err(|e| AuditError::Unreadable { seq: seq_of(stored_key).unwrap_or(0), reason: e.to_string() })
}

/// The hash of an entry's content: every field but the hash itself, in a
/// fixed order and encoding.
fn content_hash(seq: u64, time_ms: u64, event: &Event, prev_hash: &str) -> String {
    let content = crate::store::to_json(&(seq, time_ms, event, prev_hash));
    hex::encode(Blake2s256::digest(&content))
}

fn chain_entry(seq: u64, time_ms: u64, event: Event, prev_hash: String) -> Entry {
    let hash = content_hash(seq, time_ms, &event, &prev_hash);
    Entry { seq, time_ms, event, prev_hash, hash }
}

/// The next seq and the hash to link to, from the chain's head.
fn next_link(store: &Store) -> Result<(u64, String), AuditError> {
    Ok(match store.backend().last(Collection::Audit)? {
        None => (1, hex::encode(GENESIS)),
        Some((stored_key, value)) => {
            let last = parse(&stored_key, &value)?;
            (last.seq + 1, last.hash)
        }
    })
}

/// Appends an event at `time_ms`; the append is durable when this returns.
pub fn append(store: &Store, time_ms: u64, event: Event) -> Result<Entry, AuditError> {
    commit_with(store, time_ms, event, Batch::default())
}

/// Commits `batch` and the audit entry of `event` in one atomic commit:
/// a crash keeps both or neither, so no change is ever stored without its
/// entry. A conflict on the batch's own expectations is returned as
/// `AuditError::Store(BackendError::Conflict)` for the caller to re-read and
/// retry; a conflict on the chain head (another append won) is retried here.
pub fn commit_with(store: &Store, time_ms: u64, event: Event, batch: Batch) -> Result<Entry, AuditError> {
    let mut entries = commit_entries(store, time_ms, std::slice::from_ref(&event), batch)?;
    entries.pop().ok_or_else(|| BackendError::Io("the audit entry went missing".into()).into())
}

/// [`commit_with`] for any number of events: their entries follow each
/// other in the chain, in the order given, and land in the same commit as
/// `batch`. With no events, `batch` is committed alone.
///
/// Audited commits of one process take turns (see [`Appender`]): the one
/// whose turn it is commits every commit waiting by then as one group, in
/// one transaction and one flush, each with its own outcome.
pub fn commit_entries(
    store: &Store,
    time_ms: u64,
    events: &[Event],
    batch: Batch,
) -> Result<Vec<Entry>, AuditError> {
    if events.is_empty() {
        store.backend().commit(batch)?;
        return Ok(Vec::new());
    }
    store.appender().submit(store, Submission { time_ms, events: events.to_vec(), batch })
}

/// How long an audited commit waits for its turn before it gives up with
/// nothing changed ([`BackendError::Unavailable`], a 503): a stalled
/// database must not pile up requests without end.
pub const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most audited commits one group takes.
const MAX_GROUP: usize = 256;

/// One audited commit: a change and the events its entries record.
pub struct Submission {
    pub time_ms: u64,
    pub events: Vec<Event>,
    pub batch: Batch,
}

/// What became of one submission: its entries, or why it was not stored.
pub type Outcome = Result<Vec<Entry>, AuditError>;

/// A submission waiting for its group, and then its outcome.
struct Waiting {
    submission: Submission,
    outcome: std::sync::Mutex<Option<Outcome>>,
    /// Wakes this submission's thread alone (always with the appender's
    /// `turns` held): when its outcome is in, or when it is first in the
    /// queue and a turn is free. One condition for all would wake every
    /// waiting thread at every turn, to find all but one or two with
    /// nothing to do.
    wake: std::sync::Condvar,
    /// The same for a submission awaited by a task ([`commit_audited_async`]),
    /// which keeps a wake-up that comes before it waits.
    signal: tokio::sync::Notify,
}

impl Waiting {
    fn new(submission: Submission) -> std::sync::Arc<Waiting> {
        std::sync::Arc::new(Waiting {
            submission,
            outcome: std::sync::Mutex::new(None),
            wake: std::sync::Condvar::new(),
            signal: tokio::sync::Notify::new(),
        })
    }

    fn wake(&self) {
        self.wake.notify_one();
        self.signal.notify_one();
    }
}

struct Turns {
    /// How many groups are being committed.
    committing: usize,
    /// How many groups may be (see [`Backend::concurrent_groups`](crate::store::Backend::concurrent_groups)).
    leaders: usize,
    queue: std::collections::VecDeque<std::sync::Arc<Waiting>>,
    /// Callers of [`commit_together`] waiting for a free turn.
    together: usize,
}

impl Turns {
    /// Wakes the first of the queue if a turn is free for it.
    fn wake_next(&self) {
        if self.committing < self.leaders
            && let Some(first) = self.queue.front()
        {
            first.wake();
        }
    }

    /// Takes the turn for `me` if it is queued and a turn is free: the
    /// group is everybody waiting then, `me` among them.
    fn take_turn(&mut self, me: &std::sync::Arc<Waiting>) -> Option<Vec<std::sync::Arc<Waiting>>> {
        let queued = self.queue.iter().any(|w| std::sync::Arc::ptr_eq(w, me));
        if !queued || self.committing >= self.leaders {
            return None;
        }
        self.committing += 1;
        let take = self.queue.len().min(MAX_GROUP);
        let mut group: Vec<_> = self.queue.drain(..take).collect();
        // Past the largest group, `me` may still be queued: it goes
        // first in the group instead of someone behind it.
        if !group.iter().any(|w| std::sync::Arc::ptr_eq(w, me))
            && let Some(at) = self.queue.iter().position(|w| std::sync::Arc::ptr_eq(w, me))
            && let Some(mine) = self.queue.remove(at)
        {
            if let Some(last) = group.pop() {
                self.queue.push_front(last);
            }
            group.insert(0, mine);
        }
        // What the group left behind may take the other turn.
        self.wake_next();
        Some(group)
    }

    /// Leaves the queue if `me` is still in it once out of time (nothing
    /// of it changed): true if it left.
    fn give_up(&mut self, me: &std::sync::Arc<Waiting>) -> bool {
        let Some(at) = self.queue.iter().position(|w| std::sync::Arc::ptr_eq(w, me)) else { return false };
        self.queue.remove(at);
        // It may have been woken as the first, for a free turn.
        self.wake_next();
        true
    }
}

fn too_late() -> Outcome {
    Err(AuditError::Store(BackendError::Unavailable("the audit log's turn did not come in time".into())))
}

/// The audited commits of one process, taking turns and committed in
/// groups. Each entry links to the chain's head, so appends at once would
/// conflict and start over; taking turns avoids that within a process
/// (at most two groups at once, ordered by the head's lock), and
/// grouping makes a turn cost one commit for everybody who waited for it.
/// The one whose turn it is takes every waiting submission and commits
/// them with
/// [`Backend::commit_group`](crate::store::Backend::commit_group): a
/// submission whose expectations fail is left out (it alone gets the
/// conflict) and the entries of the others are linked in order, to the head
/// the head record names once the group holds its lock (see
/// `commit_group`), so groups of other processes (replicas) wait there
/// instead of conflicting.
pub struct Appender {
    turns: std::sync::Mutex<Turns>,
    /// Whether the chain's head record is known to exist (it is never
    /// removed): a group then links to it alone and reads no last entry
    /// beforehand, a database round trip less.
    head_recorded: std::sync::atomic::AtomicBool,
    /// For callers of [`commit_together`], which are not in the queue.
    free: std::sync::Condvar,
}

impl Appender {
    /// Takes turns for a backend that commits up to `leaders` groups at
    /// once (at least one).
    pub fn new(leaders: usize) -> Appender {
        let turns = Turns { committing: 0, leaders: leaders.max(1), queue: Default::default(), together: 0 };
        Appender {
            turns: std::sync::Mutex::new(turns),
            head_recorded: std::sync::atomic::AtomicBool::new(false),
            free: std::sync::Condvar::new(),
        }
    }

    fn submit(&self, store: &Store, submission: Submission) -> Outcome {
        let me = Waiting::new(submission);
        let group = match blocking(|| self.wait_for_turn(&me)) {
            Turn::Done(outcome) => return outcome,
            Turn::Mine(group) => group,
        };
        let pass = Pass { appender: self, group: &group };
        commit_group(store, &group);
        drop(pass);
        take_outcome(&me)
            .unwrap_or_else(|| Err(BackendError::Io("an audited commit got no outcome".into()).into()))
    }

    /// Queues `me` and waits until its outcome is in, or it is its turn to
    /// commit the group waiting by then (which holds `me`).
    fn wait_for_turn(&self, me: &std::sync::Arc<Waiting>) -> Turn {
        let deadline = std::time::Instant::now() + TURN_WAIT;
        let mut turns = lock_ignoring_poison(&self.turns);
        turns.queue.push_back(me.clone());
        loop {
            if let Some(outcome) = take_outcome(me) {
                return Turn::Done(outcome);
            }
            if let Some(group) = turns.take_turn(me) {
                return Turn::Mine(group);
            }
            let now = std::time::Instant::now();
            if now >= deadline && turns.give_up(me) {
                return Turn::Done(too_late());
            }
            let queued = turns.queue.iter().any(|w| std::sync::Arc::ptr_eq(w, me));
            turns = if queued {
                me.wake
                    .wait_timeout(turns, deadline.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            } else {
                // In a group being committed: its outcome comes when that
                // commit ends, which is bounded by the storage's own timeouts.
                me.wake.wait(turns).unwrap_or_else(|e| e.into_inner())
            };
        }
    }

    /// [`Self::submit`] for a task: it waits for its turn or its outcome
    /// without holding a thread, and only the one whose turn it is leaves
    /// the runtime's workers (for the commit and its flush).
    async fn submit_async(&self, store: &Store, submission: Submission) -> Outcome {
        let me = Waiting::new(submission);
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        lock_ignoring_poison(&self.turns).queue.push_back(me.clone());
        // A task can be dropped while it waits (its client went away): it
        // leaves the queue then, rather than hold a turn it was woken for.
        let queued = Queued { appender: self, me: &me };
        let group = loop {
            let queued = {
                let mut turns = lock_ignoring_poison(&self.turns);
                if let Some(outcome) = take_outcome(&me) {
                    return outcome;
                }
                if let Some(group) = turns.take_turn(&me) {
                    break group;
                }
                if tokio::time::Instant::now() >= deadline && turns.give_up(&me) {
                    return too_late();
                }
                turns.queue.iter().any(|w| std::sync::Arc::ptr_eq(w, &me))
            };
            // A wake-up between the check above and here is kept by the
            // signal, so none is lost.
            if queued {
                let _ = tokio::time::timeout_at(deadline, me.signal.notified()).await;
            } else {
                me.signal.notified().await;
            }
        };
        std::mem::forget(queued);
        // The pass first: if the blocking section itself failed, the turn is
        // still given back.
        let pass = Pass { appender: self, group: &group };
        blocking(|| commit_group(store, &group));
        drop(pass);
        take_outcome(&me)
            .unwrap_or_else(|| Err(BackendError::Io("an audited commit got no outcome".into()).into()))
    }
}

/// Commits `submissions` as one group, in this order, when it is this
/// process's turn: what [`commit_entries`] does with the submissions that
/// wait together. Each gets its own outcome.
pub fn commit_together(store: &Store, submissions: Vec<Submission>) -> Vec<Outcome> {
    let appender = store.appender();
    let group: Vec<_> = submissions.into_iter().map(Waiting::new).collect();
    blocking(|| {
        let mut turns = lock_ignoring_poison(&appender.turns);
        turns.together += 1;
        while turns.committing >= turns.leaders {
            turns = appender.free.wait(turns).unwrap_or_else(|e| e.into_inner());
        }
        turns.together -= 1;
        turns.committing += 1;
    });
    let pass = Pass { appender, group: &group };
    commit_group(store, &group);
    drop(pass);
    group
        .iter()
        .map(|w| take_outcome(w).unwrap_or_else(|| Err(BackendError::Io("no outcome".into()).into())))
        .collect()
}

/// A task's submission in the queue, which leaves it if the task is
/// dropped before it gets its turn or its outcome.
struct Queued<'a> {
    appender: &'a Appender,
    me: &'a std::sync::Arc<Waiting>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        lock_ignoring_poison(&self.appender.turns).give_up(self.me);
    }
}

/// Passes the turn on when dropped, whatever happened in it: wakes the
/// group's submissions (their outcomes are in) and the next to take a turn.
struct Pass<'a> {
    appender: &'a Appender,
    group: &'a [std::sync::Arc<Waiting>],
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The group's commit panicked: its members would otherwise wait
            // for an outcome for ever. Whatever it stored, none is answered Ok.
            for waiting in self.group {
                let mut outcome = lock_ignoring_poison(&waiting.outcome);
                if outcome.is_none() {
                    *outcome = Some(Err(AuditError::Store(BackendError::Io(
                        "the audited commit failed unexpectedly".into(),
                    ))));
                }
            }
        }
        let mut turns = lock_ignoring_poison(&self.appender.turns);
        turns.committing -= 1;
        for waiting in self.group {
            waiting.wake();
        }
        if turns.together > 0 {
            self.appender.free.notify_all();
        }
        turns.wake_next();
    }
}

enum Turn {
    Done(Outcome),
    Mine(Vec<std::sync::Arc<Waiting>>),
}

fn lock_ignoring_poison<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn take_outcome(waiting: &Waiting) -> Option<Outcome> {
    lock_ignoring_poison(&waiting.outcome).take()
}

/// Runs `wait` where blocking is allowed: a worker of the server's
/// multi-threaded runtime says so, and its other tasks move to another
/// thread meanwhile.
fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// The entries of the submissions that held (per submission, none for the
/// others), linked in order from the head `(first, prev_hash)`, and the
/// batch that appends them and moves the head record.
fn link(
    first: u64,
    mut prev_hash: String,
    group: &[std::sync::Arc<Waiting>],
    held: &[bool],
) -> (Batch, Vec<Vec<Entry>>) {
    let mut batch = Batch::default();
    let mut seq = first;
    let mut all = Vec::with_capacity(group.len());
    for (waiting, held) in group.iter().zip(held) {
        let mut entries = Vec::new();
        if *held {
            let Submission { time_ms, events, .. } = &waiting.submission;
            for event in events {
                let entry = chain_entry(seq, *time_ms, event.clone(), prev_hash);
                prev_hash = entry.hash.clone();
                batch = batch.expect(Collection::Audit, key(seq), None).put(
                    Collection::Audit,
                    key(seq),
                    crate::store::to_json(&entry),
                );
                entries.push(entry);
                seq += 1;
            }
        }
        all.push(entries);
    }
    if seq > first {
        batch = batch.put(Collection::Meta, HEAD_KEY, Link { seq: seq - 1, hash: prev_hash }.encode());
    }
    (batch, all)
}

/// Commits `group` as one, and gives each submission its outcome.
///
/// The group locks the head record and links its entries to the head it
/// names then, so groups of several processes (replicas) wait for each
/// other there instead of conflicting. The head read beforehand is only
/// for a chain without a head record (new, or written before it existed),
/// and each entry still expects its seq to be free: a group that finds its
/// seq taken anyway (a chain without a head record, appended to by another
/// process meanwhile) is linked again and committed again, whole.
fn commit_group(store: &Store, group: &[std::sync::Arc<Waiting>]) {
    let batches: Vec<Batch> = group.iter().map(|w| w.submission.batch.clone()).collect();
    let lock = Some((Collection::Meta, HEAD_KEY.to_vec()));
    let recorded = &store.appender().head_recorded;
    let outcomes: Vec<Outcome> = 'attempts: {
        for _ in 0..64 {
            // Without the head record, the last entry: read only while the
            // record is not known to exist (a group that finds it missing
            // anyway fails on `unknown` and comes back here to read it).
            let fallback = if recorded.load(std::sync::atomic::Ordering::Relaxed) {
                None
            } else {
                match next_link(store) {
                    Ok(head) => Some(head),
                    Err(e) => break 'attempts group.iter().map(|_| Err(copy(&e))).collect(),
                }
            };
            let read_last = fallback.is_some();
            // The entries of the last call, which is the one committed.
            let linked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let finish = {
                let (group, linked) = (group.to_vec(), linked.clone());
                std::sync::Arc::new(move |held: &[bool], head: Option<&[u8]>| {
                    let head = head.and_then(|bytes| serde_json::from_slice::<Link>(bytes).ok());
                    let (first, prev_hash) = match (head, &fallback) {
                        (Some(head), _) => (head.seq + 1, head.hash),
                        (None, Some((first, prev_hash))) => (*first, prev_hash.clone()),
                        // Not there (or unreadable) after all: a batch
                        // that cannot hold, whatever the record's bytes,
                        // so the group fails whole, and the next attempt
                        // reads the last entry.
                        (None, None) => return Batch::impossible(Collection::Meta, HEAD_KEY),
                    };
                    let (batch, entries) = link(first, prev_hash, &group, held);
                    *lock_ignoring_poison(&linked) = entries;
                    batch
                })
            };
            match store.backend().commit_group(batches.clone(), lock.clone(), finish) {
                Ok(results) => {
                    let entries = std::mem::take(&mut *lock_ignoring_poison(&linked));
                    // Linked to the record, or wrote one.
                    if !read_last || entries.iter().any(|e| !e.is_empty()) {
                        recorded.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    let mut entries = entries.into_iter();
                    break 'attempts results
                        .into_iter()
                        .map(|result| {
                            let mine = entries.next().unwrap_or_default();
                            result.map(|()| mine).map_err(AuditError::Store)
                        })
                        .collect();
                }
                // A seq was taken: another process appended. Link again,
                // from the last entry if the head record was missing.
                Err(BackendError::Conflict { .. }) => {
                    recorded.store(false, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Err(e) => break 'attempts group.iter().map(|_| Err(AuditError::Store(e.clone()))).collect(),
            }
        }
        group.iter().map(|_| Err(AuditError::Contended)).collect()
    };
    for (waiting, outcome) in group.iter().zip(outcomes) {
        *lock_ignoring_poison(&waiting.outcome) = Some(outcome);
    }
}

/// Another copy of an error every submission of a group shares.
fn copy(e: &AuditError) -> AuditError {
    match e {
        AuditError::Store(e) => AuditError::Store(e.clone()),
        AuditError::Contended => AuditError::Contended,
        AuditError::Unreadable { seq, reason } => {
            AuditError::Unreadable { seq: *seq, reason: reason.clone() }
        }
        AuditError::Broken(b) => AuditError::Broken(b.clone()),
    }
}

/// Commits `batch`, with `event`'s audit entry in the same commit if there
/// is one. For the typed collections, whose errors are storage errors.
pub fn commit_audited(
    store: &Store,
    time_ms: u64,
    event: Option<Event>,
    batch: Batch,
) -> Result<(), BackendError> {
    match event {
        Some(event) => commit_with(store, time_ms, event, batch).map(drop).map_err(|e| match e {
            AuditError::Store(e) => e,
            // Contention that outlasted the retries: worth trying again later.
            AuditError::Contended => BackendError::Unavailable(AuditError::Contended.to_string()),
            other => BackendError::Io(other.to_string()),
        }),
        None => store.backend().commit(batch),
    }
}

/// [`commit_audited`] for a task: it waits for its turn without holding
/// one of the runtime's threads (see [`Appender`]). Durable when it returns
/// Ok, as the other.
pub async fn commit_audited_async(
    store: &Store,
    time_ms: u64,
    event: Option<Event>,
    batch: Batch,
) -> Result<(), BackendError> {
    let Some(event) = event else { return blocking(|| store.backend().commit(batch)) };
    let submission = Submission { time_ms, events: vec![event], batch };
    match store.appender().submit_async(store, submission).await {
        Ok(_) => Ok(()),
        Err(AuditError::Store(e)) => Err(e),
        Err(AuditError::Contended) => Err(BackendError::Unavailable(AuditError::Contended.to_string())),
        Err(other) => Err(BackendError::Io(other.to_string())),
    }
}

/// Up to `limit` entries after sequence number `after_seq`, oldest first.
pub fn entries(store: &Store, after_seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
    let after = key(after_seq);
    let page = store.backend().scan(Collection::Audit, &[], (after_seq > 0).then_some(&after[..]), limit)?;
    page.iter().map(|(k, v)| parse(k, v)).collect()
}

/// Up to `limit` entries matching `query` after sequence number `after_seq`,
/// oldest first, and the cursor to continue from (None: nothing is left).
///
/// Every entry is tested against the filters (times are not assumed to be
/// ordered). One call reads at most [`SCAN_BUDGET`] entries, so a page can
/// come back short, even empty, with a cursor: keep following it.
pub fn query(
    store: &Store,
    query: &Query,
    after_seq: Option<u64>,
    limit: usize,
) -> Result<(Vec<Entry>, Option<u64>), AuditError> {
    let limit = limit.max(1);
    let mut found = Vec::new();
    let mut cursor = after_seq;
    let mut scanned = 0;
    while scanned < SCAN_BUDGET {
        let chunk = (SCAN_BUDGET - scanned).min(PRUNE_BATCH);
        let after = cursor.map(key);
        let page = store.backend().scan(Collection::Audit, &[], after.as_ref().map(|k| &k[..]), chunk)?;
        for (stored_key, value) in &page {
            // The cursor follows the stored keys, not the entries' own seq
            // fields, so a tampered entry cannot send it backwards.
            cursor = Some(seq_of(stored_key)?);
            scanned += 1;
            let entry = parse(stored_key, value)?;
            if query.matches(&entry) {
                found.push(entry);
                if found.len() == limit {
                    return Ok((found, cursor));
                }
            }
        }
        if page.len() < chunk {
            return Ok((found, None));
        }
    }
    Ok((found, cursor))
}

/// The seq of the newest entry, if any.
pub fn head_seq(store: &Store) -> Result<Option<u64>, AuditError> {
    store.backend().last(Collection::Audit)?.map(|(k, _)| seq_of(&k)).transpose()
}

fn decode_link(what: &str, bytes: Option<Vec<u8>>) -> Result<Option<Link>, String> {
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| format!("the audit {what} is unreadable: {e}")))
        .transpose()
}

/// The pruning anchor, if entries were ever pruned.
pub fn anchor(store: &Store) -> Result<Option<Link>, AuditError> {
    decode_link("anchor", store.backend().get(Collection::Meta, ANCHOR_KEY)?)
        .map_err(|e| AuditError::Store(BackendError::Io(e)))
}

/// Where the chain starts: after the anchor, or at the beginning.
fn start(anchor: Option<&Link>) -> (u64, String) {
    anchor.map_or_else(|| (1, hex::encode(GENESIS)), |a| (a.seq + 1, a.hash.clone()))
}

/// Checks one stored entry against the link the chain expects next.
fn check(stored_key: &[u8], value: &[u8], expected_seq: u64, expected_prev: &str) -> Result<Entry, String> {
    let entry: Entry = serde_json::from_slice(value).map_err(|e| format!("unreadable: {e}"))?;
    if stored_key != key(entry.seq) || entry.seq != expected_seq {
        return Err(format!("sequence {} where {expected_seq} was expected", entry.seq));
    }
    if entry.prev_hash != expected_prev {
        return Err("does not follow the previous entry".to_string());
    }
    if !entry.hash_matches() {
        return Err("content does not match its hash".to_string());
    }
    Ok(entry)
}

/// How an `audit.prune` entry names the anchor it left; [`verify`] looks
/// for it.
fn anchor_note(anchor: &Link) -> String {
    format!("up to seq {} (hash {})", anchor.seq, anchor.hash)
}

/// Checks the chain from the anchor to the head; returns what it found, or
/// the first break. Entries appended while it runs are left for next time.
pub fn verify(store: &Store) -> Result<Result<Intact, Broken>, AuditError> {
    // A prune that commits while the chain is walked removes entries the
    // walk expects; such a break is checked again before it is reported.
    for _ in 0..3 {
        let anchor_before = store.backend().get(Collection::Meta, ANCHOR_KEY)?;
        let outcome = verify_once(store, anchor_before.clone())?;
        if outcome.is_ok() || store.backend().get(Collection::Meta, ANCHOR_KEY)? == anchor_before {
            return Ok(outcome);
        }
    }
    Err(AuditError::Contended)
}

fn verify_once(store: &Store, anchor_bytes: Option<Vec<u8>>) -> Result<Result<Intact, Broken>, AuditError> {
    let backend = store.backend();
    let first_seq = || -> Result<u64, AuditError> {
        backend.scan(Collection::Audit, &[], None, 1)?.first().map_or(Ok(1), |(k, _)| seq_of(k))
    };
    // The anchor is read before the head: the prune entry naming an anchor
    // is committed with it, so it is at or before the head read after.
    let anchor = match decode_link("anchor", anchor_bytes) {
        Ok(anchor) => anchor,
        Err(reason) => return Ok(Err(Broken { seq: first_seq()?, reason })),
    };
    let head = match decode_link("head record", backend.get(Collection::Meta, HEAD_KEY)?) {
        Ok(head) => head,
        Err(reason) => return Ok(Err(Broken { seq: first_seq()?, reason })),
    };
    let (mut expected_seq, mut expected_prev) = start(anchor.as_ref());
    let anchor_seq = anchor.as_ref().map(|a| a.seq);
    let Some(head) = head else {
        return Ok(match backend.scan(Collection::Audit, &[], None, 1)?.first() {
            None if anchor.is_none() => Ok(Intact { entries: 0, anchor_seq }),
            None => Err(Broken {
                seq: expected_seq,
                reason: "the log is empty and its head record is gone".into(),
            }),
            Some((k, _)) => {
                Err(Broken { seq: seq_of(k)?, reason: "the log's head record is missing".into() })
            }
        });
    };
    let note = anchor.as_ref().map(anchor_note);
    let mut anchor_recorded = anchor.is_none();
    let mut after = anchor.as_ref().map(|a| key(a.seq).to_vec());
    while expected_seq <= head.seq {
        let page = backend.scan(Collection::Audit, &[], after.as_deref(), PRUNE_BATCH)?;
        for (stored_key, value) in &page {
            if expected_seq > head.seq {
                break;
            }
            let entry = match check(stored_key, value, expected_seq, &expected_prev) {
                Ok(entry) => entry,
                Err(reason) => return Ok(Err(Broken { seq: expected_seq, reason })),
            };
            anchor_recorded |= entry.event.action == "audit.prune"
                && entry.event.actor == "system"
                && entry.event.detail.as_deref().zip(note.as_deref()).is_some_and(|(d, n)| d.ends_with(n));
            expected_prev = entry.hash;
            expected_seq += 1;
        }
        if page.len() < PRUNE_BATCH && expected_seq <= head.seq {
            let reason = format!(
                "missing: the log ends at {} but its head record names {}",
                expected_seq - 1,
                head.seq
            );
            return Ok(Err(Broken { seq: expected_seq, reason }));
        }
        after = page.last().map(|(k, _)| k.clone());
    }
    if expected_prev != head.hash {
        let reason = "the newest entry does not match the head record".to_string();
        return Ok(Err(Broken { seq: head.seq, reason }));
    }
    if !anchor_recorded {
        let seq = anchor_seq.map_or(1, |s| s + 1);
        let reason =
            format!("entries up to {} are gone but no audit.prune entry records removing them", seq - 1);
        return Ok(Err(Broken { seq, reason }));
    }
    Ok(Ok(Intact { entries: head.seq - anchor_seq.unwrap_or(0), anchor_seq }))
}

/// Removes the oldest entries stamped before `older_than_ms` (of those there
/// when it starts), a batch per commit, and returns how many went. Each
/// commit moves the anchor to the last removed entry and appends an
/// `audit.prune` entry (stamped `now_ms`) that names it. Stops at the first
/// entry not old enough, so only a prefix of the chain is ever removed;
/// refuses to remove entries that do not verify, since they are the evidence
/// of tampering.
pub fn prune(store: &Store, older_than_ms: u64, now_ms: u64) -> Result<u64, AuditError> {
    let backend = store.backend();
    let mut removed = 0u64;
    let mut conflicts = 0;
    // The records this call appends are newer than what it may remove,
    // whatever `older_than_ms` says.
    let Some(last_seq) = head_seq(store)? else { return Ok(0) };
    loop {
        let anchor_bytes = backend.get(Collection::Meta, ANCHOR_KEY)?;
        let old_anchor = decode_link("anchor", anchor_bytes.clone())
            .map_err(|e| AuditError::Store(BackendError::Io(e)))?;
        let (mut expected_seq, mut expected_prev) = start(old_anchor.as_ref());
        let after = old_anchor.as_ref().map(|a| key(a.seq));
        let page = backend.scan(Collection::Audit, &[], after.as_ref().map(|k| &k[..]), PRUNE_BATCH)?;
        let mut doomed = Vec::new();
        for (stored_key, value) in &page {
            let entry = check(stored_key, value, expected_seq, &expected_prev)
                .map_err(|reason| AuditError::Broken(Broken { seq: expected_seq, reason }))?;
            if entry.time_ms >= older_than_ms || entry.seq > last_seq {
                break;
            }
            expected_seq += 1;
            expected_prev = entry.hash;
            doomed.push(stored_key.clone());
        }
        if doomed.is_empty() {
            return Ok(removed);
        }
        let new_anchor = Link { seq: expected_seq - 1, hash: expected_prev };
        let (seq, prev_hash) = next_link(store)?;
        let detail = format!(
            "removed {} entries older than {older_than_ms} ms, {}",
            doomed.len(),
            anchor_note(&new_anchor)
        );
        let record = chain_entry(
            seq,
            now_ms,
            Event {
                actor: "system".into(),
                action: "audit.prune".into(),
                allowed: true,
                source: None,
                session: None,
                gateway: None,
                detail: Some(detail),
            },
            prev_hash,
        );
        let count = doomed.len() as u64;
        // The anchor's old value and the free head slot are the
        // preconditions: a concurrent prune or append makes this retry.
        let mut batch = Batch::default()
            .expect(Collection::Meta, ANCHOR_KEY, anchor_bytes)
            .expect(Collection::Audit, key(seq), None)
            .put(Collection::Audit, key(seq), crate::store::to_json(&record))
            .put(Collection::Meta, HEAD_KEY, Link::of(&record).encode())
            .put(Collection::Meta, ANCHOR_KEY, new_anchor.encode());
        for stored_key in doomed {
            batch = batch.delete(Collection::Audit, stored_key);
        }
        match backend.commit(batch) {
            Ok(()) => removed += count,
            Err(BackendError::Conflict { .. }) if conflicts < 64 => conflicts += 1,
            Err(BackendError::Conflict { .. }) => return Err(AuditError::Contended),
            Err(e) => return Err(e.into()),
        }
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
    fn a_change_and_its_entry_commit_together_or_not_at_all() {
        let (_dir, store, backend) = store();
        let write = || {
            Batch::default().expect(Collection::Users, b"k".to_vec(), None).put(
                Collection::Users,
                b"k".to_vec(),
                b"v".to_vec(),
            )
        };
        let entry = commit_with(&store, 1, event(1), write()).unwrap();
        assert_eq!(entry.seq, 1);
        assert_eq!(backend.get(Collection::Users, b"k").unwrap(), Some(b"v".to_vec()));
        // The change's own expectation fails now: neither it nor its entry lands.
        let refused = commit_with(&store, 2, event(2), write());
        assert!(matches!(
            refused,
            Err(AuditError::Store(BackendError::Conflict { collection: Collection::Users }))
        ));
        assert_eq!(entries(&store, 0, 10).unwrap().len(), 1);
        // Racing on the chain head is retried, not reported.
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let store = store.clone();
                scope.spawn(move || {
                    for i in 0..20u64 {
                        let key = format!("{t}-{i}").into_bytes();
                        let batch = Batch::default().put(Collection::Users, key, b"v".to_vec());
                        commit_with(&store, 3, event(i), batch).unwrap();
                    }
                });
            }
        });
        assert_eq!(verify(&store).unwrap().unwrap().entries, 81);
    }

    #[test]
    fn several_entries_commit_with_a_change_in_order_or_not_at_all() {
        let (_dir, store, backend) = store();
        append(&store, 1, event(1)).unwrap();
        let write = || {
            Batch::default().expect(Collection::Users, b"k".to_vec(), None).put(
                Collection::Users,
                b"k".to_vec(),
                b"v".to_vec(),
            )
        };
        let three = [event(2), event(3), event(4)];
        let entries = commit_entries(&store, 5, &three, write()).unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(entries.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), three);
        assert_eq!(backend.get(Collection::Users, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(verified(&store).entries, 4);
        // The change's expectation fails now: none of its entries lands.
        let refused = commit_entries(&store, 6, &three, write());
        assert!(matches!(refused, Err(AuditError::Store(BackendError::Conflict { .. }))));
        assert_eq!(head_seq(&store).unwrap(), Some(4));
        // Without events the batch commits alone.
        assert!(
            commit_entries(&store, 7, &[], Batch::default().put(Collection::Users, "j", "w"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(verified(&store).entries, 4);
    }

    #[test]
    fn a_chain_verifies_and_links() {
        let (_dir, store, _) = store();
        assert_eq!(verify(&store).unwrap(), Ok(Intact { entries: 0, anchor_seq: None }));
        let mut previous = hex::encode(GENESIS);
        for i in 1..=2500 {
            let entry = append(&store, 1_700_000_000_000 + i, event(i)).unwrap();
            assert_eq!(entry.seq, i);
            assert_eq!(entry.prev_hash, previous);
            previous = entry.hash;
        }
        assert_eq!(verify(&store).unwrap(), Ok(Intact { entries: 2500, anchor_seq: None }));
    }

    #[test]
    fn a_flipped_byte_a_deletion_and_a_rewrite_are_each_found() {
        for attack in ["flip", "delete", "rewrite", "truncate"] {
            let (_dir, store, backend) = store();
            for i in 1..=20 {
                append(&store, i, event(i)).unwrap();
            }
            let target = if attack == "truncate" { 20 } else { 7u64 };
            let stored = backend.get(Collection::Audit, &key(target)).unwrap().unwrap();
            let batch = match attack {
                "flip" => {
                    let mut tampered = stored.clone();
                    let at = tampered.iter().position(|&b| b == b'u').unwrap();
                    tampered[at] = b'v'; // "user7" becomes "vser7"
                    Batch::default().put(Collection::Audit, key(target).to_vec(), tampered)
                }
                "delete" | "truncate" => Batch::default().delete(Collection::Audit, key(target).to_vec()),
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
        assert_eq!(verify(&store).unwrap(), Ok(Intact { entries: 200, anchor_seq: None }));
    }

    /// Tasks (which wait without a thread) and threads append at once, on
    /// a runtime with fewer workers than tasks, and some tasks are dropped
    /// while they wait: every answered change is stored with its entry,
    /// every change stored has its entry and no entry is without its
    /// change, the chain holds, and no dropped task keeps the others from
    /// their turn for good (they all finish).
    #[test]
    fn tasks_and_threads_append_together_even_with_dropped_tasks() {
        let (_dir, store, _) = store();
        let tagged = |tag: String| Event { detail: Some(tag), ..event(1) };
        let write =
            |tag: &str| Batch::default().put(Collection::Users, tag.as_bytes().to_vec(), b"v".to_vec());
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut tags = Vec::new();
        std::thread::scope(|scope| {
            for t in 0..2 {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..30 {
                        let tag = format!("thread {t} {i}");
                        commit_audited(store, i, Some(tagged(tag.clone())), write(&tag)).unwrap();
                        assert!(store.backend().get(Collection::Users, tag.as_bytes()).unwrap().is_some());
                    }
                });
            }
            runtime.block_on(async {
                let tasks: Vec<_> = (0..16)
                    .map(|t| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for i in 0..20 {
                                let tag = format!("task {t} {i}");
                                let commit =
                                    commit_audited_async(&store, i, Some(tagged(tag.clone())), write(&tag));
                                if i % 5 == 4 {
                                    // Polled once, then dropped: queued, or
                                    // even woken for a turn, at that moment.
                                    let _ = tokio::time::timeout(std::time::Duration::ZERO, commit).await;
                                    continue;
                                }
                                commit.await.unwrap();
                                assert!(
                                    store.backend().get(Collection::Users, tag.as_bytes()).unwrap().is_some()
                                );
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            });
        });
        for t in 0..2 {
            tags.extend((0..30).map(|i| format!("thread {t} {i}")));
        }
        for t in 0..16 {
            tags.extend((0..20).map(|i| format!("task {t} {i}")));
        }
        let intact = verified(&store);
        let logged: std::collections::BTreeSet<String> =
            entries(&store, 0, 10_000).unwrap().into_iter().filter_map(|e| e.event.detail).collect();
        assert_eq!(logged.len() as u64, intact.entries, "an entry was logged twice");
        for tag in &tags {
            let stored = store.backend().get(Collection::Users, tag.as_bytes()).unwrap().is_some();
            assert_eq!(stored, logged.contains(tag), "{tag}: stored {stored}, its entry not the same");
        }
        assert!(intact.entries >= 2 * 30 + 16 * 16, "{intact:?}");
    }

    fn verified(store: &Store) -> Intact {
        verify(store).unwrap().unwrap_or_else(|b| panic!("broken: {b:?}"))
    }

    fn broken(store: &Store) -> Broken {
        verify(store).unwrap().unwrap_err()
    }

    /// Entries 1..=n at times 1000, 2000, ... n*1000.
    fn filled(n: u64) -> (tempfile::TempDir, Store, Arc<SledBackend>) {
        let (dir, store, backend) = store();
        for i in 1..=n {
            append(&store, i * 1000, event(i)).unwrap();
        }
        (dir, store, backend)
    }

    #[test]
    fn a_pruned_log_verifies_from_its_anchor() {
        let (_dir, store, _) = filled(2500);
        // 1..=2299 are older than 2_300_000: three commits of at most 1000.
        assert_eq!(prune(&store, 2_300_000, 9_000_000).unwrap(), 2299);
        let intact = verified(&store);
        assert_eq!(intact.anchor_seq, Some(2299));
        // 2300..=2500 and one audit.prune record per commit.
        assert_eq!(intact.entries, 201 + 3);
        let left = entries(&store, 0, usize::MAX).unwrap();
        assert_eq!(left.first().unwrap().seq, 2300);
        let records: Vec<_> = left.iter().filter(|e| e.event.action == "audit.prune").collect();
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|e| e.event.actor == "system" && e.time_ms == 9_000_000));
        assert!(
            records[2].event.detail.as_deref().unwrap().starts_with("removed 299 entries"),
            "{records:?}"
        );
        assert!(records[2].event.detail.as_deref().unwrap().contains("up to seq 2299 "), "{records:?}");
        // Nothing more to remove; pruning again changes nothing.
        assert_eq!(prune(&store, 2_300_000, 9_000_001).unwrap(), 0);
        assert_eq!(verified(&store), intact);
        // Appending goes on from the head.
        append(&store, 9_000_002, event(1)).unwrap();
        assert_eq!(verified(&store).entries, 205);
    }

    #[test]
    fn pruning_everything_leaves_the_record_and_a_verifiable_chain() {
        let (_dir, store, _) = filled(10);
        assert_eq!(prune(&store, u64::MAX, 50_000).unwrap(), 10);
        assert_eq!(verified(&store), Intact { entries: 1, anchor_seq: Some(10) });
        assert_eq!(entries(&store, 0, 10).unwrap()[0].seq, 11);
    }

    #[test]
    fn after_pruning_tampering_and_removals_still_show() {
        for attack in ["flip", "delete-first", "delete-middle", "truncate", "move-anchor", "drop-anchor"] {
            let (_dir, store, backend) = filled(30);
            assert_eq!(prune(&store, 10_500, 100_000).unwrap(), 10);
            let first = 11u64;
            let batch = match attack {
                "flip" => {
                    let mut value = backend.get(Collection::Audit, &key(15)).unwrap().unwrap();
                    let at = value.iter().position(|&b| b == b'u').unwrap();
                    value[at] = b'v';
                    Batch::default().put(Collection::Audit, key(15).to_vec(), value)
                }
                // The first remaining entry, with the anchor left where it was.
                "delete-first" => Batch::default().delete(Collection::Audit, key(first).to_vec()),
                "delete-middle" => Batch::default().delete(Collection::Audit, key(20).to_vec()),
                // The newest entry: the audit.prune record at 31.
                "truncate" => Batch::default().delete(Collection::Audit, key(31).to_vec()),
                // Hiding entries 11 and 12 by removing them and moving the
                // anchor past them, as a prune would but without its record.
                "move-anchor" => {
                    let twelve: Entry =
                        serde_json::from_slice(&backend.get(Collection::Audit, &key(12)).unwrap().unwrap())
                            .unwrap();
                    Batch::default()
                        .delete(Collection::Audit, key(11).to_vec())
                        .delete(Collection::Audit, key(12).to_vec())
                        .put(Collection::Meta, ANCHOR_KEY, Link::of(&twelve).encode())
                }
                _ => Batch::default().delete(Collection::Meta, ANCHOR_KEY),
            };
            backend.commit(batch).unwrap();
            let found = broken(&store);
            let expected = match attack {
                "flip" => 15,
                "delete-middle" => 20,
                "truncate" => 31,
                "move-anchor" => 13,
                "drop-anchor" => 1,
                _ => first,
            };
            assert_eq!(found.seq, expected, "{attack}: {found:?}");
        }
    }

    #[test]
    fn pruning_refuses_to_remove_a_broken_part() {
        let (_dir, store, backend) = filled(20);
        let mut value = backend.get(Collection::Audit, &key(5)).unwrap().unwrap();
        let at = value.iter().position(|&b| b == b'u').unwrap();
        value[at] = b'v';
        backend.commit(Batch::default().put(Collection::Audit, key(5).to_vec(), value)).unwrap();
        let err = prune(&store, 15_000, 100_000).unwrap_err();
        assert!(matches!(&err, AuditError::Broken(b) if b.seq == 5), "{err}");
        // Nothing went: the evidence is still there.
        assert_eq!(entries(&store, 0, 100).unwrap().len(), 20);
        assert_eq!(broken(&store).seq, 5);
    }

    #[test]
    fn queries_filter_every_field_and_page_with_a_cursor() {
        let (_dir, store, _) = filled(30);
        let all = |q: &Query| {
            let mut found = Vec::new();
            let mut after = None;
            loop {
                let (page, next) = query(&store, q, after, 4).unwrap();
                assert!(page.len() <= 4);
                found.extend(page.into_iter().map(|e| e.seq));
                match next {
                    Some(n) => after = Some(n),
                    None => return found,
                }
            }
        };
        assert_eq!(all(&Query::default()), (1..=30).collect::<Vec<_>>());
        let q = Query { from_ms: Some(5_000), to_ms: Some(9_000), ..Query::default() };
        assert_eq!(all(&q), vec![5, 6, 7, 8]);
        assert_eq!(all(&Query { actor: Some("user7".into()), ..Query::default() }), vec![7]);
        assert_eq!(all(&Query { session: Some("s12".into()), ..Query::default() }), vec![12]);
        assert_eq!(all(&Query { gateway: Some("g2".into()), ..Query::default() }), Vec::<u64>::new());
        assert_eq!(all(&Query { gateway: Some("g1".into()), ..Query::default() }).len(), 30);
        let refused = Query { allowed: Some(false), to_ms: Some(10_000), ..Query::default() };
        assert_eq!(all(&refused), vec![3, 6, 9]);
        assert_eq!(all(&Query { action: Some("session.end".into()), ..Query::default() }), Vec::<u64>::new());
    }

    #[test]
    fn one_query_reads_at_most_its_budget() {
        let (_dir, store, _) = filled(SCAN_BUDGET as u64 + 500);
        let none = Query { actor: Some("nobody".into()), ..Query::default() };
        let (page, next) = query(&store, &none, None, 100).unwrap();
        assert!(page.is_empty());
        assert_eq!(next, Some(SCAN_BUDGET as u64), "a short page still says where to go on");
        let (page, next) = query(&store, &none, next, 100).unwrap();
        assert!(page.is_empty());
        assert_eq!(next, None);
    }
}
