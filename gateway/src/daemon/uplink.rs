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
//!
//! The daemon also keeps two small sets in the guard that let non-WireGuard
//! datagrams through to the WireGuard socket: the receiver tags of its live
//! path agents (`ferry_paths::Paths::tags_in`: probes to any other tag are
//! dropped) and the STUN servers it queries from that socket (answers from
//! anyone else are dropped). Both rules are always on, so the sets must be
//! current *before* they matter: tags as soon as a path agent is added (its
//! peer's first probe may already be on the way), servers before the first
//! query goes out. A refused update leaves that one tag or server out
//! (counted, and retried by the next call): the peer stays on the relay, or
//! the gateway learns no server-reflexive address from that server, and
//! nothing else is let through.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
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
    /// Taken before `guard` when both are (never the other way round).
    rules: Arc<Mutex<RuleSets>>,
}

/// What the guard's probe-tag and STUN-server maps hold, so that a
/// reconciliation touches only what changed without walking the kernel maps.
#[derive(Default)]
struct RuleSets {
    probe_tags: BTreeSet<[u8; 8]>,
    /// In the guard's identity: IPv4 as IPv4, no IPv6 scope or flow label.
    stun_servers: BTreeSet<SocketAddr>,
    map_errors: u64,
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
        let uplink =
            Uplink { guard: Arc::new(Mutex::new(guard)), state: Arc::default(), rules: Arc::default() };
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

    /// Makes the guard pass probes to exactly these receiver tags (the live
    /// path agents' `tags_in`). Call it whenever a path agent is added or
    /// removed. Returns how many updates the guard refused this time.
    pub fn set_probe_tags(&self, tags: impl IntoIterator<Item = [u8; 8]>) -> usize {
        let mut rules = self.lock_rules();
        let rules = &mut *rules;
        let refused = reconcile(
            &mut self.lock(),
            &mut rules.probe_tags,
            tags.into_iter().collect(),
            UplinkGuard::add_probe_tag,
            UplinkGuard::remove_probe_tag,
            "probe tag",
        );
        rules.map_errors += refused as u64;
        refused
    }

    /// Makes the guard pass STUN Binding success responses from exactly these
    /// servers. Call it with the servers before querying them. Returns how many
    /// updates the guard refused this time.
    pub fn set_stun_servers(&self, servers: impl IntoIterator<Item = SocketAddr>) -> usize {
        let mut rules = self.lock_rules();
        let rules = &mut *rules;
        let refused = reconcile(
            &mut self.lock(),
            &mut rules.stun_servers,
            servers.into_iter().map(guard_identity).collect(),
            UplinkGuard::add_stun_server,
            UplinkGuard::remove_stun_server,
            "STUN server",
        );
        rules.map_errors += refused as u64;
        refused
    }

    /// Probe tags in the guard's map now.
    pub fn probe_tags(&self) -> usize {
        self.lock_rules().probe_tags.len()
    }

    /// STUN servers in the guard's map now.
    pub fn stun_servers(&self) -> usize {
        self.lock_rules().stun_servers.len()
    }

    /// Probe-tag and STUN-server updates the guard's maps refused.
    pub fn rule_map_errors(&self) -> u64 {
        self.lock_rules().map_errors
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, RuleSets> {
        // Only set operations run under this lock; a panic there leaves at
        // worst an entry the next reconciliation re-adds or removes.
        self.rules.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UplinkGuard> {
        // A panic under this lock would be in aya's map code; the guard's state
        // is the kernel's, so carrying on is safe.
        self.guard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Brings the guard's map, whose contents `have` mirrors, to `wanted`, and
/// returns the number of refused updates. A refused removal stays in `have`
/// and a refused addition stays out, so the next call retries both.
fn reconcile<T: Ord + Copy + std::fmt::Debug>(
    guard: &mut UplinkGuard,
    have: &mut BTreeSet<T>,
    wanted: BTreeSet<T>,
    add: fn(&mut UplinkGuard, T) -> Result<(), ferry_ebpf::Error>,
    remove: fn(&mut UplinkGuard, T) -> Result<bool, ferry_ebpf::Error>,
    what: &'static str,
) -> usize {
    let stale: Vec<T> = have.difference(&wanted).copied().collect();
    let missing: Vec<T> = wanted.difference(have).copied().collect();
    let mut refused = 0;
    for item in stale {
        match remove(guard, item) {
            Ok(_) => {
                have.remove(&item);
            }
            Err(e) => {
                refused += 1;
                error!(error = %e, ?item, "the uplink guard refused to forget a {what}");
            }
        }
    }
    for item in missing {
        match add(guard, item) {
            Ok(()) => {
                have.insert(item);
            }
            Err(e) => {
                refused += 1;
                error!(error = %e, ?item, "the uplink guard refused a {what}; what it lets through is dropped");
            }
        }
    }
    refused
}

/// `server` as the guard keys it: the packet's source is an IPv4 address for
/// an IPv4 server, whichever form the daemon was handed.
fn guard_identity(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => SocketAddr::new((*v6.ip()).into(), v6.port()),
        },
        v4 => v4,
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

#[cfg(test)]
mod tests {
    use ferry_ebpf::common::guard::MAX_PROBE_TAGS;

    use super::*;

    /// A loaded, unattached guard behind an `Uplink` (loading needs root).
    fn uplink() -> Uplink {
        let guard = UplinkGuard::load(51820).expect("loading the guard (run as root)");
        Uplink { guard: Arc::new(Mutex::new(guard)), state: Arc::default(), rules: Arc::default() }
    }

    #[test]
    fn probe_tags_are_reconciled_to_exactly_the_set_given() {
        let u = uplink();
        assert_eq!(u.set_probe_tags([[1; 8], [2; 8], [2; 8]]), 0);
        assert_eq!(u.lock().probe_tags().unwrap(), vec![[1; 8], [2; 8]]);
        assert_eq!(u.set_probe_tags([[2; 8], [3; 8]]), 0);
        assert_eq!(u.lock().probe_tags().unwrap(), vec![[2; 8], [3; 8]]);
        assert_eq!(u.probe_tags(), 2);
        assert_eq!(u.set_probe_tags(std::iter::empty()), 0);
        assert!(u.lock().probe_tags().unwrap().is_empty());
        assert_eq!((u.probe_tags(), u.rule_map_errors()), (0, 0));
    }

    #[test]
    fn stun_servers_are_reconciled_in_the_guards_identity() {
        let u = uplink();
        let v4: SocketAddr = "203.0.113.9:3478".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:203.0.113.9]:3478".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::9]:3478".parse().unwrap();
        assert_eq!(u.set_stun_servers([mapped, v6]), 0);
        assert_eq!(u.lock().stun_servers().unwrap(), vec![v4, v6]);
        // The same server in its other form changes nothing.
        assert_eq!(u.set_stun_servers([v4, v6]), 0);
        assert_eq!(u.stun_servers(), 2);
        assert_eq!(u.set_stun_servers([v6]), 0);
        assert_eq!(u.lock().stun_servers().unwrap(), vec![v6]);
        assert_eq!(u.stun_servers(), 1);
    }

    #[test]
    fn a_refused_tag_is_counted_left_out_and_retried() {
        let u = uplink();
        // Fill the map behind the reconciler's back.
        {
            let mut guard = u.lock();
            for i in 0..MAX_PROBE_TAGS {
                guard.add_probe_tag(u64::from(i).to_be_bytes()).unwrap();
            }
        }
        let tag = [0xee; 8];
        assert_eq!(u.set_probe_tags([tag]), 1);
        assert_eq!((u.probe_tags(), u.rule_map_errors()), (0, 1));
        assert!(!u.lock().probe_tags().unwrap().contains(&tag));
        // Room again: the next reconciliation adds it.
        assert!(u.lock().remove_probe_tag(0u64.to_be_bytes()).unwrap());
        assert_eq!(u.set_probe_tags([tag]), 0);
        assert_eq!((u.probe_tags(), u.rule_map_errors()), (1, 1));
        assert!(u.lock().probe_tags().unwrap().contains(&tag));
    }
}
