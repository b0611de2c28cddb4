//! What the replicas of one deployment share beyond documents: their
//! signals to each other (a change made on one replica reaches gateways,
//! relays and event streams connected to another), and which gateways and
//! relays are connected where (with a lease, so a killed replica's peers
//! stop counting as connected).
//!
//! One `ferry-cloud` over sled has no cluster: the hub's own maps and
//! channels are all there is. Over PostgreSQL, [`super::postgres`] keeps
//! both in tables. The hub stays the one place that knows about either.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{AllocationAnswer, Change};
use crate::{app::AppState, store::BackendError};

/// How often a replica looks again at which relays are connected anywhere
/// (a relay whose replica died drops out when that replica's lease ends).
const RELAYS_EVERY: Duration = Duration::from_secs(2);

/// How often every connection of this replica gets its desired state again,
/// whatever it heard: a replica killed between a commit and its signal
/// leaves peers elsewhere stale at most this long.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Gateways and relays, as they appear in the presence table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    Gateway,
    Relay,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Gateway => "gateway",
            PeerKind::Relay => "relay",
        }
    }
}

/// What one replica tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// For subscribers (event streams, the console).
    Change(Change),
    /// This gateway's desired state changed: its connection resends it.
    TouchGateway(u64),
    TouchRelay(u64),
    /// A relay connected here answered an allocation that another replica
    /// is waiting for.
    Allocation {
        id: u64,
        answer: AllocationAnswer,
    },
    /// A peer connected to `replica`: any older connection of it elsewhere
    /// is replaced.
    Claimed {
        kind: PeerKind,
        id: u64,
        replica: u64,
        conn: u64,
    },
}

/// The shared side, implemented over PostgreSQL.
pub trait Cluster: Send + Sync + 'static {
    /// This replica's id, unique among every replica that ever ran.
    fn replica(&self) -> u64;

    /// Sends `signal` to the other replicas (queued; never blocks).
    fn publish(&self, signal: Signal);

    /// Records that peer `id` is connected here as connection `conn`, with
    /// its report `live` (JSON); replaces any record of it elsewhere.
    fn claim(&self, kind: PeerKind, id: u64, conn: u64, live: &str) -> Result<(), BackendError>;

    /// Updates the report of a peer still connected here as `conn`.
    fn report(&self, kind: PeerKind, id: u64, conn: u64, live: &str) -> Result<(), BackendError>;

    /// Forgets the peer, if it is still connected here as `conn`.
    fn release(&self, kind: PeerKind, id: u64, conn: u64) -> Result<(), BackendError>;

    /// The report of peer `id` if it is connected to a live replica.
    fn present(&self, kind: PeerKind, id: u64) -> Result<Option<String>, BackendError>;

    /// Every peer of a kind connected to a live replica, with its report.
    fn present_all(&self, kind: PeerKind) -> Result<Vec<(u64, String)>, BackendError>;

    /// Leaves the cluster (at shutdown): this replica's peers are released.
    fn leave(&self);
}

/// Joins `cluster`: signals from other replicas arrive on `incoming` and are
/// applied to this replica's hub; the relays connected elsewhere are looked
/// at every [`RELAYS_EVERY`], and every connection here resynchronises every
/// [`RESYNC_EVERY`]. Must be called inside the server's runtime.
pub fn follow(
    state: &AppState,
    cluster: Arc<dyn Cluster>,
    mut incoming: mpsc::UnboundedReceiver<Signal>,
) -> tokio::task::JoinHandle<()> {
    state.hub.join(cluster);
    let state = state.clone();
    tokio::spawn(async move {
        let mut relays = tokio::time::interval(RELAYS_EVERY);
        relays.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            tokio::select! {
                signal = incoming.recv() => {
                    let Some(signal) = signal else { return };
                    // A relay came, went or reported elsewhere: its room and
                    // STUN server count here too.
                    if matches!(signal, Signal::Change(Change::Relay(_))) {
                        refresh_relays(&state).await;
                    }
                    state.hub.apply(signal);
                }
                _ = relays.tick() => refresh_relays(&state).await,
                _ = resync.tick() => state.hub.resync_all(),
            }
        }
    })
}

async fn refresh_relays(state: &AppState) {
    let hub_state = state.clone();
    match tokio::task::spawn_blocking(move || hub_state.hub.refresh_remote_relays()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "reading the relays of other replicas failed"),
        Err(error) => tracing::warn!(%error, "reading the relays of other replicas failed"),
    }
}
