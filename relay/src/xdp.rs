//! The XDP forwarder from the daemon's side: load, configure and attach the
//! program, give the allocations its binding map, keep its next-hop cache
//! true ([`crate::next_hops`]), and fold its per-CPU drop counters into
//! /metrics under the same reasons the userspace path uses. Stopping (or
//! dropping) it detaches the program; nothing is ever pinned.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use ferry_ebpf::{
    AttachMode,
    common::relay::{Binding, BindingKey, DEFAULT_MAX_SLOTS, Outcome, Traffic},
    relay::{RelayCounters, RelayForwarder},
};
use parking_lot::{Mutex, MutexGuard};
use tracing::{info, warn};

use crate::{
    config::{Config, XdpMode},
    metrics::Metrics,
    runtime::BindingTable,
};

/// The binding map, shared by every allocation task. Its lock does not
/// poison: the map is the kernel's, so a panic in one task's map call leaves
/// nothing half-written here for the others.
struct Table {
    forwarder: Mutex<RelayForwarder>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, RelayForwarder> {
        self.forwarder.lock()
    }
}

impl BindingTable for Table {
    fn insert(&self, key: &BindingKey, binding: &Binding) -> Result<(), String> {
        self.lock().insert(key, binding).map_err(|e| e.to_string())
    }

    fn remove(&self, key: &BindingKey) {
        if let Err(e) = self.lock().remove(key) {
            warn!(error = %e, "removing an XDP binding failed");
        }
    }

    fn traffic(&self, slot: u32) -> Traffic {
        self.lock().traffic(slot).unwrap_or_default()
    }

    fn reset_slot(&self, slot: u32) {
        if let Err(e) = self.lock().reset_slot(slot) {
            warn!(slot, error = %e, "resetting an XDP traffic slot failed");
        }
    }

    fn entries(&self) -> u32 {
        self.lock().len()
    }
}

/// The loaded and attached forwarder.
pub struct Forwarder {
    table: Arc<Table>,
    poller: tokio::task::JoinHandle<()>,
    /// The netlink watcher that invalidates cached next hops; None without
    /// FIB (or if netlink could not be opened: the lifetime still holds).
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    pub fn table(&self) -> Arc<dyn BindingTable> {
        self.table.clone()
    }

    /// Detaches from every interface.
    pub fn stop(self) {
        self.poller.abort();
        if let Some(watcher) = self.watcher {
            watcher.abort();
        }
        let mut forwarder = self.table.lock();
        if let Err(e) = forwarder.detach_all() {
            warn!(error = %e, "detaching the XDP forwarder failed");
        }
    }
}

/// Loads the program with room for `max_bindings`, configures it from
/// `config` and attaches it to every configured interface.
pub fn start(config: &Config, mode: XdpMode, max_bindings: u32, metrics: &Metrics) -> Result<Forwarder> {
    let mut forwarder = RelayForwarder::load(max_bindings, DEFAULT_MAX_SLOTS)
        .context("loading the XDP forwarder (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
    let ports = config.ports.unwrap_or_default();
    let fib = config.fib.unwrap_or(true);
    let mut program_config =
        ferry_ebpf::relay::config(config.public_ipv4, config.public_ipv6, ports.first..=ports.last, fib);
    if let Some(lifetime) = config.next_hop_lifetime_ms {
        program_config.next_hop_lifetime_ms = lifetime;
    }
    forwarder.configure(program_config).context("configuring the XDP forwarder")?;
    let attach_mode = match mode {
        XdpMode::Generic => AttachMode::Generic,
        _ => AttachMode::Native,
    };
    for iface in &config.interfaces {
        if fib {
            warn_if_forwarding_off(iface, config);
        }
        let took = forwarder
            .attach(iface, attach_mode)
            .with_context(|| format!("attaching the XDP forwarder to {iface} in {attach_mode} mode"))?;
        info!(iface, mode = took, fib, "XDP forwarder attached");
    }
    let table = Arc::new(Table { forwarder: Mutex::new(forwarder) });
    let watcher = if fib && program_config.next_hop_lifetime_ms != 0 {
        watch_next_hops(
            table.clone(),
            program_config.next_hop_lifetime_ms,
            metrics.xdp_next_hop_watcher_up.clone(),
        )
    } else {
        None
    };
    let poller = tokio::spawn(poll_counters(table.clone(), metrics.clone()));
    Ok(Forwarder { table, poller, watcher })
}

/// Starts the netlink watcher that invalidates the forwarder's cached next
/// hops; without it they still expire after `lifetime_ms`.
fn watch_next_hops(
    table: Arc<Table>,
    lifetime_ms: u32,
    up: prometheus_client::metrics::gauge::Gauge,
) -> Option<tokio::task::JoinHandle<()>> {
    let invalidate = move || {
        if let Err(e) = table.lock().invalidate_next_hops() {
            warn!(error = %e, "invalidating the XDP next hops failed; they expire by their lifetime");
        }
    };
    let report = move |subscribed: bool| {
        up.set(i64::from(subscribed));
    };
    match crate::next_hops::watch(invalidate, report) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            warn!(
                error = %e,
                lifetime_ms,
                "no netlink notifications: route and neighbour changes reach XDP only when cached next hops expire"
            );
            None
        }
    }
}

/// The kernel answers FIB lookups only for interfaces that forward
/// (`BPF_FIB_LKUP_RET_FWD_DISABLED` otherwise), so without forwarding every
/// datagram would go up to userspace as `pass_no_route`.
fn warn_if_forwarding_off(iface: &str, config: &Config) {
    let families = [("ipv4", config.public_ipv4.is_some()), ("ipv6", config.public_ipv6.is_some())];
    for (family, used) in families {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
        if used && std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            warn!(
                iface,
                "{path} is 0: the kernel refuses FIB lookups there, so XDP cannot forward and userspace \
                 will; set it to 1 (and drop transit traffic in your firewall) or run with --no-fib"
            );
        }
    }
}

/// The userspace path's name for an XDP outcome that drops.
fn drop_reason(outcome: Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::DropUnbound => Some("unbound"),
        Outcome::DropTruncated | Outcome::DropBadType => Some("malformed"),
        _ => None,
    }
}

async fn poll_counters(table: Arc<Table>, metrics: Metrics) {
    let mut seen = RelayCounters::default();
    let mut seen_lookups = 0;
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let now = match table.lock().counters() {
            Ok(now) => now,
            Err(e) => {
                warn!(error = %e, "reading the XDP counters failed");
                continue;
            }
        };
        for (outcome, count) in now.since(&seen).iter().filter(|(_, count)| *count > 0) {
            metrics
                .xdp_outcomes
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: outcome.name() })
                .inc_by(count);
            if let Some(reason) = drop_reason(outcome) {
                metrics.drops.get_or_create(&crate::metrics::ReasonLabels { reason }).inc_by(count);
            }
        }
        seen = now;
        match table.lock().fib_lookups() {
            Ok(lookups) => {
                metrics.xdp_fib_lookups.inc_by(lookups.saturating_sub(seen_lookups));
                seen_lookups = lookups;
            }
            Err(e) => warn!(error = %e, "reading the XDP FIB lookups failed"),
        }
    }
}
