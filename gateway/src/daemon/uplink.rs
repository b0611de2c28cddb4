//! The uplink guard on the gateway's WAN side, following the engine's live
//! receiver indices.
//!
//! The engine tells the guard about every index it creates before the
//! initiation or response that lets a peer use it goes out, and about every
//! index it drops (expiry, peer removal, switch off). With the set complete,
//! the guard drops responses, cookie replies and transport messages to any
//! other index in XDP: stale sessions, replays after expiry and forgeries never
//! reach the socket.
//!
//! If the guard's map refuses an index (full), the rule is switched off rather
//! than cut a live peer off: the guard is a filter in front of WireGuard's own
//! checks, not the security boundary.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use ferry_ebpf::{AttachMode, guard::UplinkGuard};
use ferry_tunnel::{endpoint::IndexSink, proto::IndexChange};
use tracing::{error, info};

use super::engine::Engine;

/// The attached guard, shared by the engine's index changes and the metrics.
#[derive(Clone)]
pub struct Uplink {
    guard: Arc<Mutex<UplinkGuard>>,
    state: Arc<IndexState>,
}

#[derive(Default)]
struct IndexState {
    /// Indices in the guard's map: each journal entry adds a new index or
    /// removes a present one, so successful updates count them exactly
    /// (reading the kernel map back would walk it under the lock that the
    /// datapath takes on handshakes).
    live: AtomicU64,
    map_errors: AtomicU64,
    /// Set by the first refused update, for good: the map is incomplete from
    /// then on, and the rule must stay off.
    broken: AtomicBool,
}

impl Uplink {
    /// Loads and attaches the guard for the engine's port and, with
    /// `follow_indices`, hands it the engine's indices before turning the rule
    /// on.
    pub fn attach(iface: &str, mode: AttachMode, engine: &Engine, follow_indices: bool) -> Result<Uplink> {
        let port = engine.local_port();
        let mut guard = UplinkGuard::load(port).context("loading the uplink guard")?;
        let attached =
            guard.attach(iface, mode).with_context(|| format!("attaching the uplink guard to {iface}"))?;
        let uplink = Uplink { guard: Arc::new(Mutex::new(guard)), state: Arc::default() };
        if follow_indices {
            engine.watch_indices(uplink.clone()).context("handing the engine's indices to the guard")?;
            // Under the lock that updates take, so no refusal slips in between.
            let mut guard = uplink.lock();
            if uplink.state.broken.load(Ordering::SeqCst) {
                error!("the guard's index map refused the engine's indices; the index rule stays off");
            } else {
                guard.follow_indices(true).context("turning on the guard's index rule")?;
            }
        }
        info!(iface, port, mode = attached, follow_indices, "uplink guard attached");
        Ok(uplink)
    }

    /// What the guard did with each packet, by outcome name, since load.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        match self.lock().counters() {
            Ok(counters) => counters.iter().map(|(outcome, n)| (outcome.name(), n)).collect(),
            Err(e) => {
                error!(error = %e, "reading the uplink guard's counters failed");
                Vec::new()
            }
        }
    }

    /// Indices in the guard's map now.
    pub fn live_indices(&self) -> u64 {
        self.state.live.load(Ordering::Relaxed)
    }

    /// Whether the index rule is on (it goes off after a map error).
    pub fn follows_indices(&self) -> bool {
        self.lock().follows_indices().unwrap_or(false)
    }

    /// Index updates the guard's map refused.
    pub fn map_errors(&self) -> u64 {
        self.state.map_errors.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UplinkGuard> {
        // A panic under this lock would be in aya's map code; the guard's state
        // is the kernel's, so carrying on is safe.
        self.guard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl IndexSink for Uplink {
    fn apply(&self, change: IndexChange) {
        let mut guard = self.lock();
        let result = match change {
            IndexChange::Added(index) => guard.add_index(index).map(|()| {
                self.state.live.fetch_add(1, Ordering::Relaxed);
            }),
            IndexChange::Removed(index) => guard.remove_index(index).map(|was_there| {
                if was_there {
                    self.state.live.fetch_sub(1, Ordering::Relaxed);
                }
            }),
        };
        if let Err(e) = result {
            self.state.map_errors.fetch_add(1, Ordering::Relaxed);
            self.state.broken.store(true, Ordering::SeqCst);
            error!(error = %e, ?change, "the uplink guard refused an index update; its index rule goes off");
            if let Err(e) = guard.follow_indices(false) {
                error!(error = %e, "turning off the guard's index rule failed too");
            }
        }
    }
}
