//! The cluster over PostgreSQL: three tables beside the documents.
//!
//! - `ferry_replicas`: every running replica and when it last said so (a
//!   heartbeat every [`HEARTBEAT`]). A replica not heard of for [`LEASE`] is
//!   dead: the gateways and relays it held count as disconnected.
//! - `ferry_presence`: which replica holds each connected gateway and relay,
//!   and its last report. A new connection anywhere replaces the row.
//! - `ferry_signals`: what replicas tell each other, in sequence order.
//!   A replica publishes right after the commit the signal is about, and
//!   every replica reads what is new every [`POLL`] — sooner when
//!   PostgreSQL's NOTIFY says there is something (only a hint: engines
//!   without LISTEN/NOTIFY just poll). A sequence number can become visible
//!   after a higher one (transactions commit in any order), so a gap is
//!   looked for again for [`GAP_WAIT`] before it is given up as a number
//!   that was never used.
//!
//! Times are the database's (`now()`), so replicas' clocks need not agree.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use futures_util::future::poll_fn;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::cluster::{Cluster, PeerKind, Signal};
use crate::store::{BackendError, PostgresBackend};

/// How often a replica renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a replica that stopped renewing still counts as alive.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a replica reads new signals without being told of them.
pub const POLL: Duration = Duration::from_millis(250);
/// How long a missing sequence number is waited for.
const GAP_WAIT: Duration = Duration::from_secs(5);
/// Signals are kept this long, then removed.
const SIGNALS_KEPT: &str = "INTERVAL '10 minutes'";
/// Signals sent in one statement at most.
const PUBLISH_BATCH: usize = 256;
const CHANNEL: &str = "ferry_signals";
/// How often a lost LISTEN connection is opened again.
const LISTEN_RETRY: Duration = Duration::from_secs(2);

/// A replica's membership.
pub struct PgCluster {
    backend: Arc<PostgresBackend>,
    replica: u64,
    outgoing: mpsc::UnboundedSender<Signal>,
    stop: watch::Sender<bool>,
}

/// The condition of a live replica's row (prepared once per connection,
/// as every statement here: a statement sent as text is parsed and planned
/// again each time, and costs a round trip more).
macro_rules! live_replica {
    () => {
        "replica IN (SELECT id FROM ferry_replicas WHERE seen > now() - INTERVAL '10 seconds')"
    };
}
const CLAIM: &str = "INSERT INTO ferry_presence (kind, id, replica, conn, live) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (kind, id) DO UPDATE SET replica = excluded.replica, conn = excluded.conn, \
                     live = excluded.live";
const REPORT: &str =
    "UPDATE ferry_presence SET live = $5 WHERE kind = $1 AND id = $2 AND replica = $3 AND conn = $4";
const RELEASE: &str = "DELETE FROM ferry_presence WHERE kind = $1 AND id = $2 AND replica = $3 AND conn = $4";
const PRESENT: &str =
    concat!("SELECT live FROM ferry_presence WHERE kind = $1 AND id = $2 AND ", live_replica!());
const PRESENT_ALL: &str =
    concat!("SELECT id, live FROM ferry_presence WHERE kind = $1 AND ", live_replica!(), " ORDER BY id");
/// Signals in the order given: the sequence numbers follow it.
const PUBLISH: &str = "INSERT INTO ferry_signals (origin, body) \
                       SELECT $1, body FROM unnest($2::TEXT[]) WITH ORDINALITY AS t (body, n) ORDER BY n";
const READ_GAPS: &str = "SELECT seq, origin, body FROM ferry_signals WHERE seq = ANY($1) ORDER BY seq";
const READ_NEW: &str = "SELECT seq, origin, body FROM ferry_signals WHERE seq > $1 ORDER BY seq LIMIT 1000";

impl PgCluster {
    /// Registers this replica and starts its heartbeat, publisher and
    /// follower on the database's runtime. Signals of other replicas arrive
    /// on the returned receiver.
    pub fn join(
        backend: Arc<PostgresBackend>,
        info: &str,
    ) -> Result<(Arc<PgCluster>, mpsc::UnboundedReceiver<Signal>), BackendError> {
        use crate::store::Backend as _;
        let replica = backend.generate_id()?;
        let info = info.to_string();
        let id = replica as i64;
        // Start reading after what is there now: older signals are about
        // states every peer here reads afresh when it connects.
        let start = backend.call(move |client| async move {
            client
                .execute("INSERT INTO ferry_replicas (id, info) VALUES ($1, $2)", &[&id, &info])
                .await
                .map_err(io)?;
            let row =
                client.query_one("SELECT COALESCE(MAX(seq), 0) FROM ferry_signals", &[]).await.map_err(io)?;
            Ok(row.get::<_, i64>(0))
        })?;
        let (outgoing, to_publish) = mpsc::unbounded_channel();
        let (incoming, received) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let handle = backend
            .bridge()
            .handle()
            .cloned()
            .ok_or_else(|| BackendError::Unavailable("the database connection is closed".into()))?;
        let pool = backend.pool().clone();
        handle.spawn(heartbeat(pool.clone(), id, stopped.clone()));
        handle.spawn(publisher(pool.clone(), id, to_publish));
        handle.spawn(follower(pool, backend.config().clone(), id, start, incoming, stopped));
        tracing::info!(replica, "joined the replicas on the database");
        Ok((Arc::new(PgCluster { backend, replica, outgoing, stop }), received))
    }
}

fn io(e: tokio_postgres::Error) -> BackendError {
    crate::store::postgres::failure(e).into()
}

impl Cluster for PgCluster {
    fn replica(&self) -> u64 {
        self.replica
    }

    fn publish(&self, signal: Signal) {
        let _ = self.outgoing.send(signal);
    }

    fn claim(&self, kind: PeerKind, id: u64, conn: u64, live: &str) -> Result<(), BackendError> {
        let (replica, id, conn, live) = (self.replica as i64, id as i64, conn as i64, live.to_string());
        self.backend.call(move |client| async move {
            let claim = client.prepare_cached(CLAIM).await.map_err(io)?;
            client.execute(&claim, &[&kind.name(), &id, &replica, &conn, &live]).await.map_err(io).map(drop)
        })
    }

    fn report(&self, kind: PeerKind, id: u64, conn: u64, live: &str) -> Result<(), BackendError> {
        let (replica, id, conn, live) = (self.replica as i64, id as i64, conn as i64, live.to_string());
        self.backend.call(move |client| async move {
            let report = client.prepare_cached(REPORT).await.map_err(io)?;
            client.execute(&report, &[&kind.name(), &id, &replica, &conn, &live]).await.map_err(io).map(drop)
        })
    }

    fn release(&self, kind: PeerKind, id: u64, conn: u64) -> Result<(), BackendError> {
        let (replica, id, conn) = (self.replica as i64, id as i64, conn as i64);
        self.backend.call(move |client| async move {
            let release = client.prepare_cached(RELEASE).await.map_err(io)?;
            client.execute(&release, &[&kind.name(), &id, &replica, &conn]).await.map_err(io).map(drop)
        })
    }

    fn present(&self, kind: PeerKind, id: u64) -> Result<Option<String>, BackendError> {
        let id = id as i64;
        self.backend.call(move |client| async move {
            let present = client.prepare_cached(PRESENT).await.map_err(io)?;
            let row = client.query_opt(&present, &[&kind.name(), &id]).await.map_err(io)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn present_all(&self, kind: PeerKind) -> Result<Vec<(u64, String)>, BackendError> {
        self.backend.call(move |client| async move {
            let present = client.prepare_cached(PRESENT_ALL).await.map_err(io)?;
            let rows = client.query(&present, &[&kind.name()]).await.map_err(io)?;
            Ok(rows.into_iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect())
        })
    }

    fn leave(&self) {
        self.stop.send_replace(true);
        let replica = self.replica as i64;
        let left = self.backend.call(move |client| async move {
            client.execute("DELETE FROM ferry_presence WHERE replica = $1", &[&replica]).await.map_err(io)?;
            client.execute("DELETE FROM ferry_replicas WHERE id = $1", &[&replica]).await.map_err(io)?;
            Ok(())
        });
        if let Err(error) = left {
            tracing::warn!(%error, "leaving the replicas failed; the lease runs out instead");
        }
    }
}

/// Renews the lease; now and then removes what dead replicas left.
async fn heartbeat(pool: Pool, replica: i64, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats = 0u64;
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        beats += 1;
        let tidy = beats.is_multiple_of(30);
        let beat = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            // A replica that was away long enough to be removed comes back.
            client
                .execute(
                    "INSERT INTO ferry_replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET seen = now()",
                    &[&replica],
                )
                .await
                .map_err(|e| e.to_string())?;
            if tidy {
                let statements = [
                    "DELETE FROM ferry_replicas WHERE seen < now() - INTERVAL '1 hour'".to_string(),
                    "DELETE FROM ferry_presence WHERE replica NOT IN (SELECT id FROM ferry_replicas)"
                        .to_string(),
                    format!("DELETE FROM ferry_signals WHERE at < now() - {SIGNALS_KEPT}"),
                ];
                for sql in statements {
                    client.batch_execute(&sql).await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(())
        };
        if let Err(error) =
            tokio::time::timeout(HEARTBEAT * 2, beat).await.unwrap_or_else(|_| Err("timed out".into()))
        {
            tracing::warn!(%error, "renewing this replica's lease failed");
        }
    }
}

/// Sends queued signals, many to a statement, keeping them through a
/// database outage.
async fn publisher(pool: Pool, replica: i64, mut queue: mpsc::UnboundedReceiver<Signal>) {
    let mut pending: Vec<String> = Vec::new();
    loop {
        if pending.is_empty() {
            match queue.recv().await {
                Some(signal) => pending.push(encode(&signal)),
                None => return,
            }
        }
        while pending.len() < PUBLISH_BATCH {
            match queue.try_recv() {
                Ok(signal) => pending.push(encode(&signal)),
                Err(_) => break,
            }
        }
        match insert(&pool, replica, &pending).await {
            Ok(()) => pending.clear(),
            Err(error) => {
                tracing::warn!(%error, queued = pending.len(), "sending signals to the other replicas failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn encode(signal: &Signal) -> String {
    String::from_utf8_lossy(&crate::store::to_json(signal)).into_owned()
}

async fn insert(pool: &Pool, replica: i64, bodies: &[String]) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let publish = client.prepare_cached(PUBLISH).await.map_err(|e| e.to_string())?;
    // The NOTIFY goes in the same round trip, after the insert committed,
    // and names the sender, whose own follower need not look. Only a hint;
    // an engine without NOTIFY refuses it and the others poll.
    let notify = format!("NOTIFY {CHANNEL}, '{replica}'");
    let (inserted, _) = futures_util::future::join(
        client.execute(&publish, &[&replica, &bodies]),
        client.batch_execute(&notify),
    )
    .await;
    inserted.map(drop).map_err(|e| e.to_string())
}

/// What the follower has read.
struct Cursor {
    /// The highest sequence number read.
    high: i64,
    /// Numbers below `high` not seen yet, and since when they are missed.
    missing: BTreeMap<i64, Instant>,
}

impl Cursor {
    /// Takes in rows (in sequence order); returns the ones to deliver.
    fn take(&mut self, rows: Vec<(i64, i64, String)>, now: Instant) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        for (seq, origin, body) in rows {
            if seq > self.high {
                for gap in (self.high + 1)..seq {
                    // A flood of gaps is not waited for one by one.
                    if self.missing.len() < 10_000 {
                        self.missing.insert(gap, now);
                    }
                }
                self.high = seq;
            } else if self.missing.remove(&seq).is_none() {
                continue;
            }
            out.push((origin, body));
        }
        out
    }

    fn give_up_old_gaps(&mut self, now: Instant) {
        self.missing.retain(|_, since| now.duration_since(*since) < GAP_WAIT);
    }
}

/// Reads new signals every [`POLL`] (or when notified) and passes on those
/// of other replicas.
async fn follower(
    pool: Pool,
    config: tokio_postgres::Config,
    replica: i64,
    start: i64,
    incoming: mpsc::UnboundedSender<Signal>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut cursor = Cursor { high: start, missing: BTreeMap::new() };
    let (hint_tx, mut hints) = mpsc::unbounded_channel::<()>();
    let mut listener: Option<Listener> = None;
    let mut last_try: Option<Instant> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
            Some(()) = hints.recv() => {
                // Many notifications at once are one look.
                while hints.try_recv().is_ok() {}
            }
        }
        // The listening connection ends with the server: open another, at
        // most every few seconds.
        let deaf = listener.as_ref().is_none_or(|l| !l.alive.load(Ordering::SeqCst));
        if deaf && last_try.is_none_or(|at| at.elapsed() >= LISTEN_RETRY) {
            last_try = Some(Instant::now());
            listener = listen(&config, replica, hint_tx.clone()).await;
        }
        match read(&pool, &mut cursor).await {
            Ok(signals) => {
                for (origin, body) in signals {
                    if origin == replica {
                        continue;
                    }
                    match serde_json::from_str::<Signal>(&body) {
                        Ok(signal) => {
                            if incoming.send(signal).is_err() {
                                return;
                            }
                        }
                        // From a newer replica during an upgrade: skip it.
                        Err(error) => tracing::debug!(%error, "an unknown signal was skipped"),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "reading the other replicas' signals failed"),
        }
    }
}

async fn read(pool: &Pool, cursor: &mut Cursor) -> Result<Vec<(i64, String)>, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let now = Instant::now();
    let mut out = Vec::new();
    if !cursor.missing.is_empty() {
        let gaps: Vec<i64> = cursor.missing.keys().copied().collect();
        let read_gaps = client.prepare_cached(READ_GAPS).await.map_err(|e| e.to_string())?;
        let rows = client.query(&read_gaps, &[&gaps]).await.map_err(|e| e.to_string())?;
        out.extend(cursor.take(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(), now));
    }
    let read_new = client.prepare_cached(READ_NEW).await.map_err(|e| e.to_string())?;
    loop {
        let rows = client.query(&read_new, &[&cursor.high]).await.map_err(|e| e.to_string())?;
        let full = rows.len() == 1000;
        out.extend(cursor.take(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(), now));
        if !full {
            break;
        }
    }
    cursor.give_up_old_gaps(now);
    Ok(out)
}

/// Opens a connection that LISTENs for the publishers' NOTIFY and turns
/// each notification into a hint; the flag says whether it still runs.
/// None if that is not possible now (or ever, on an engine without it).
/// Notifications of `replica`'s own signals are no hint: it has nothing
/// to read there.
async fn listen(
    config: &tokio_postgres::Config,
    replica: i64,
    hints: mpsc::UnboundedSender<()>,
) -> Option<Listener> {
    let own = replica.to_string();
    let Ok(Ok((client, mut connection))) = tokio::time::timeout(LISTEN_RETRY, config.connect(NoTls)).await
    else {
        return None;
    };
    let alive = Arc::new(AtomicBool::new(true));
    let flag = alive.clone();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) if note.payload() == own => {}
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if hints.send(()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        flag.store(false, Ordering::SeqCst);
    });
    let listening = client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok();
    listening.then_some(Listener { _client: client, alive })
}

/// A LISTENing connection: it stays open while its client is kept.
struct Listener {
    _client: tokio_postgres::Client,
    alive: Arc<AtomicBool>,
}

/// Which signals a follower delivered, for tests of the gap logic.
#[cfg(test)]
fn delivered(cursor: &mut Cursor, rows: &[(i64, i64)], now: Instant) -> std::collections::HashSet<i64> {
    cursor
        .take(rows.iter().map(|(s, o)| (*s, *o, s.to_string())).collect(), now)
        .into_iter()
        .map(|(_, body)| body.parse().unwrap_or(-1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_delivered_late_and_given_up_after_a_while() {
        let start = Instant::now();
        let mut cursor = Cursor { high: 10, missing: BTreeMap::new() };
        use std::collections::HashSet;
        assert_eq!(delivered(&mut cursor, &[(11, 1), (14, 1)], start), HashSet::from([11, 14]));
        assert_eq!(cursor.missing.keys().copied().collect::<Vec<_>>(), [12, 13]);
        // 13 commits late: delivered once; 14 again is not delivered twice.
        assert_eq!(delivered(&mut cursor, &[(13, 2), (14, 1)], start), HashSet::from([13]));
        assert_eq!(delivered(&mut cursor, &[(13, 2)], start), HashSet::new());
        cursor.give_up_old_gaps(start + GAP_WAIT);
        assert!(cursor.missing.is_empty(), "12 was never used");
    }
}
