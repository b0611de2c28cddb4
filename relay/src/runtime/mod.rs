//! The relay at run time: the registry of live allocations, each one a task
//! ([`task`]) owning its UDP port, plus the WebSocket directory and the
//! counters the cloud's health reports carry.

pub mod table;
mod task;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use ferry_ebpf::common::relay::{BindingKey, Traffic};
use ferry_tunnel::PublicKey;
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    net::UdpSocket,
    sync::{Notify, mpsc},
    task::JoinHandle,
};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::PortRange,
    core::{Allocation, Instant, PeerAddr, Side, Timeouts, Validator},
    metrics::{Metrics, ReasonLabels},
    ws::{self, WsEvent},
};
pub use table::BindingTable;

/// How long an allocation restored from the state file forwards before the
/// cloud (or the allocation file) confirms it by naming it in a snapshot;
/// unconfirmed by then (the cloud down, or no longer wanting this relay), it
/// ends. Documented in the README's "Restarts".
pub const RESTORE_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// What the cloud (or the allocation file) asks the relay to carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationSpec {
    pub id: u64,
    pub session_id: u64,
    pub gateway_key: PublicKey,
    pub client_key: PublicKey,
    /// Unix milliseconds.
    pub expires_ms: u64,
    pub websocket_token: String,
    /// A fixed port (allocation files); the cloud's allocations take any
    /// free port of the range.
    pub port: Option<u16>,
}

/// Where an allocation's peers are, by side (gateway, client): bound, or
/// only candidates (never bound, or idle). UDP only; this is what survives a
/// restart (see [`crate::state_file`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sides {
    pub bound: [Option<SocketAddr>; 2],
    pub candidate: [Option<SocketAddr>; 2],
}

/// The answer to one new allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Both peers send to this port of the relay's public address.
    Ready {
        port: u16,
    },
    Refused {
        reason: String,
    },
}

/// How the registry runs allocations.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sockets bind here; XDP forwards only datagrams to these addresses.
    /// With neither, sockets bind to 0.0.0.0 (userspace only).
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ports: PortRange,
    /// Live allocations at most: the XDP map holds two bindings each.
    pub max_allocations: u32,
    pub timeouts: Timeouts,
    /// Datagrams a WebSocket peer's queue holds before the relay drops.
    pub websocket_queue: usize,
}

/// Relay-wide counters for the cloud's health reports.
#[derive(Default)]
pub struct Totals {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: AtomicU64,
    bindings: AtomicI64,
}

impl Totals {
    pub(crate) fn forwarded(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bindings(&self, delta: i64) {
        self.bindings.fetch_add(delta, Ordering::Relaxed);
    }
}

/// A snapshot of the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub allocations: u32,
    pub bindings: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub drops: u64,
}

struct Handle {
    spec: AllocationSpec,
    port: u16,
    slot: u32,
    task: JoinHandle<()>,
    ws_tx: mpsc::Sender<WsEvent>,
    installed: Arc<Mutex<Vec<BindingKey>>>,
    /// The UDP addresses bound on each side, published by the task for the
    /// state file.
    bound: Arc<Mutex<Sides>>,
    /// Restored from the state file and not named by a snapshot since: it
    /// ends at this instant (see [`RESTORE_GRACE`]).
    unconfirmed_until: Option<std::time::Instant>,
}

#[derive(Default)]
struct State {
    allocations: HashMap<u64, Handle>,
    tokens: HashMap<String, u64>,
    ports: HashSet<u16>,
    next_port: u16,
    free_slots: Vec<u32>,
    next_slot: u32,
}

/// The live allocations. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    options: Options,
    table: Option<Arc<dyn BindingTable>>,
    metrics: Metrics,
    totals: Arc<Totals>,
    state: Mutex<State>,
    /// Woken when an allocation starts or ends or its bindings change.
    changes: Arc<Notify>,
    /// The cloud's time, pinned at each control connection's hello to
    /// [`Inner::epoch`]'s monotonic clock: allocations end at instants of
    /// the cloud's clock, not of this host's wall clock (a relay whose clock
    /// is an hour ahead would refuse every allocation as expired).
    clock: Mutex<ferry_control::cloud_clock::CloudClock>,
    epoch: std::time::Instant,
}

impl Relay {
    pub fn new(options: Options, table: Option<Arc<dyn BindingTable>>, metrics: Metrics) -> Relay {
        let state = State { next_port: options.ports.first, ..State::default() };
        Relay {
            inner: Arc::new(Inner {
                options,
                table,
                metrics,
                totals: Arc::default(),
                state: Mutex::new(state),
                changes: Arc::default(),
                clock: Mutex::default(),
                epoch: std::time::Instant::now(),
            }),
        }
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The registry, locked. The lock does not poison: every request and
    /// every allocation's end goes through it, so a panic under it (in a
    /// binding table's code, say) must not refuse them all from then on. The
    /// state stays whole: [`Relay::add`] records an allocation in all its maps
    /// at once, after the last call that could fail, and [`Relay::end`]
    /// removes it from all of them before it calls anything.
    /// The cloud's time was `cloud_ms` when its hello was read at `read`.
    pub fn pin_cloud_time(&self, cloud_ms: u64, read: std::time::Instant) {
        let at = self.monotonic_ms(read);
        let previous = self.now_ms();
        self.inner.clock.lock().pin("", at, cloud_ms);
        let skew = cloud_ms.abs_diff(wall_ms());
        if skew > 5_000 {
            warn!(
                skew_ms = skew,
                "this host's wall clock is off the cloud's; allocations follow the cloud's"
            );
        }
        tracing::debug!(previous, cloud_ms, "the cloud's time pinned");
    }

    /// The cloud's time now: pinned at the last hello, else (before the
    /// cloud was first heard, a restart restoring its allocations) this
    /// host's wall clock.
    pub fn now_ms(&self) -> u64 {
        let at = self.monotonic_ms(std::time::Instant::now());
        self.inner.clock.lock().now(at).unwrap_or_else(wall_ms)
    }

    fn monotonic_ms(&self, at: std::time::Instant) -> u64 {
        at.saturating_duration_since(self.inner.epoch).as_millis() as u64
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock()
    }

    /// Makes the live allocations exactly `desired`: new ones start, missing
    /// ones end at once, and known ones take the new expiry. Returns the
    /// answers to the new ones.
    pub fn apply(&self, desired: &[AllocationSpec]) -> Vec<(u64, Admission)> {
        let wanted: HashMap<u64, &AllocationSpec> = desired.iter().map(|a| (a.id, a)).collect();
        // Gone, or known under this id with other peers or token (a state
        // file restored at start from before an allocation file was edited):
        // such an allocation starts again as it is wanted now.
        let gone: Vec<u64> = self
            .state()
            .allocations
            .iter()
            .filter(|(id, handle)| wanted.get(id).is_none_or(|spec| !same_peers(&handle.spec, spec)))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.end(id, "ended");
        }
        let mut answers = Vec::new();
        for spec in desired {
            let known = {
                let mut state = self.state();
                match state.allocations.get_mut(&spec.id) {
                    Some(handle) => {
                        handle.unconfirmed_until = None;
                        if handle.spec.expires_ms != spec.expires_ms {
                            handle.spec.expires_ms = spec.expires_ms;
                            // The state file keeps the expiry: a restart
                            // must not end a prolonged allocation early.
                            self.inner.changes.notify_one();
                        }
                        true
                    }
                    None => false,
                }
            };
            if !known {
                answers.push((spec.id, self.add(spec.clone())));
            }
        }
        answers
    }

    /// Starts one allocation. Needs a tokio runtime.
    pub fn add(&self, spec: AllocationSpec) -> Admission {
        self.start(spec, Sides::default(), None)
    }

    /// Starts an allocation saved before a restart, on its port and with its
    /// peers bound where they were (see [`crate::state_file`]). Unless a
    /// snapshot names it within [`RESTORE_GRACE`], [`Relay::sweep`] ends it.
    pub fn restore(&self, spec: AllocationSpec, sides: Sides) -> Admission {
        self.restore_until(spec, sides, std::time::Instant::now() + RESTORE_GRACE)
    }

    /// [`Relay::restore`], with the end of the grace given.
    pub(crate) fn restore_until(
        &self,
        spec: AllocationSpec,
        sides: Sides,
        unconfirmed_until: std::time::Instant,
    ) -> Admission {
        self.start(spec, sides, Some(unconfirmed_until))
    }

    /// Woken whenever what [`Relay::saved`] returns may have changed.
    pub fn changes(&self) -> Arc<Notify> {
        self.inner.changes.clone()
    }

    /// The live allocations as the state file keeps them.
    pub fn saved(&self) -> Vec<crate::state_file::Saved> {
        let state = self.state();
        let mut saved: Vec<_> = state
            .allocations
            .values()
            .map(|h| crate::state_file::Saved::new(&h.spec, h.port, *h.bound.lock()))
            .collect();
        saved.sort_by_key(|s| s.id);
        saved
    }

    fn start(
        &self,
        spec: AllocationSpec,
        restored: Sides,
        unconfirmed_until: Option<std::time::Instant>,
    ) -> Admission {
        let refuse = |reason: &'static str, detail: String| {
            warn!(allocation = spec.id, session = spec.session_id, reason, "{detail}");
            self.inner.metrics.allocations_refused.get_or_create(&ReasonLabels { reason }).inc();
            Admission::Refused { reason: format!("{reason}: {detail}") }
        };
        if spec.gateway_key == spec.client_key {
            return refuse("invalid", "the two peers have the same public key".into());
        }
        if spec.expires_ms <= self.now_ms() {
            return refuse("expired", "the allocation has already expired".into());
        }
        let mut state = self.state();
        if state.allocations.len() as u32 >= self.inner.options.max_allocations {
            let max = self.inner.options.max_allocations;
            drop(state);
            return refuse("full", format!("the relay carries its maximum of {max} allocations"));
        }
        if state.tokens.contains_key(&spec.websocket_token) {
            drop(state);
            return refuse("invalid", "the WebSocket token is already in use".into());
        }
        let (port, sock4, sock6) = match self.bind_port(&mut state, spec.port) {
            Ok(bound) => bound,
            Err(e) => {
                drop(state);
                return refuse("ports", e);
            }
        };
        let slot = state.free_slots.pop().unwrap_or_else(|| {
            state.next_slot += 1;
            state.next_slot - 1
        });
        if let Some(table) = &self.inner.table {
            table.reset_slot(slot);
        }
        let (ws_tx, ws_rx) = mpsc::channel(self.inner.options.websocket_queue.max(1));
        let installed = Arc::new(Mutex::new(Vec::new()));
        let validator = Validator::new(&spec.gateway_key, &spec.client_key);
        let mut alloc = Allocation::new(validator, self.inner.options.timeouts, Instant::now());
        for side in Side::BOTH {
            if let Some(addr) = restored.bound[side.index()] {
                alloc.restore(side, PeerAddr::Udp(addr));
            }
            if let Some(addr) = restored.candidate[side.index()] {
                alloc.restore_candidate(side, PeerAddr::Udp(addr));
            }
        }
        let bound = Arc::new(Mutex::new(restored));
        let task = task::Task {
            id: spec.id,
            port,
            slot,
            alloc,
            sock4: sock4.map(Arc::new),
            sock6: sock6.map(Arc::new),
            ws_rx,
            ws_peers: HashMap::new(),
            table: self.inner.table.clone(),
            installed: installed.clone(),
            published: bound.clone(),
            changes: self.inner.changes.clone(),
            metrics: self.inner.metrics.clone(),
            totals: self.inner.totals.clone(),
            bound: 0,
            xdp_seen: Traffic::default(),
            tally: Default::default(),
        };
        let span = info_span!("allocation", id = spec.id, session = spec.session_id, port);
        let task = tokio::spawn(task.run().instrument(span));
        info!(allocation = spec.id, session = spec.session_id, port, "allocation ready");
        state.ports.insert(port);
        state.tokens.insert(spec.websocket_token.clone(), spec.id);
        state
            .allocations
            .insert(spec.id, Handle { spec, port, slot, task, ws_tx, installed, bound, unconfirmed_until });
        self.inner.metrics.allocations.set(state.allocations.len() as i64);
        drop(state);
        self.inner.changes.notify_one();
        Admission::Ready { port }
    }

    /// Ends an allocation now: its XDP entries go before this returns, so no
    /// further datagram is forwarded, then its task and sockets.
    pub fn end(&self, id: u64, why: &'static str) -> bool {
        let mut state = self.state();
        let Some(handle) = state.allocations.remove(&id) else { return false };
        state.tokens.remove(&handle.spec.websocket_token);
        state.ports.remove(&handle.port);
        state.free_slots.push(handle.slot);
        self.inner.metrics.allocations.set(state.allocations.len() as i64);
        drop(state);
        if let Some(table) = &self.inner.table {
            for key in handle.installed.lock().drain(..) {
                table.remove(&key);
            }
        }
        handle.task.abort();
        self.inner.changes.notify_one();
        info!(allocation = id, session = handle.spec.session_id, why, "allocation ended");
        true
    }

    /// Ends the allocations whose expiry has passed, and the restored ones
    /// no snapshot confirmed in time; refreshes the map gauge.
    pub fn sweep(&self) {
        let (now, instant) = (self.now_ms(), std::time::Instant::now());
        let ended: Vec<(u64, &'static str)> = self
            .state()
            .allocations
            .values()
            .filter_map(|h| {
                if h.spec.expires_ms <= now || h.task.is_finished() {
                    Some((h.spec.id, "expired"))
                } else if h.unconfirmed_until.is_some_and(|until| until <= instant) {
                    Some((h.spec.id, "restored and never confirmed"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in ended {
            self.end(id, why);
        }
        if let Some(table) = &self.inner.table {
            self.inner.metrics.map_entries.set(i64::from(table.entries()));
        }
    }

    /// The port of a live allocation.
    pub fn port_of(&self, id: u64) -> Option<u16> {
        self.state().allocations.get(&id).map(|h| h.port)
    }

    pub fn snapshot(&self) -> Snapshot {
        let totals = &self.inner.totals;
        Snapshot {
            allocations: self.state().allocations.len() as u32,
            bindings: totals.bindings.load(Ordering::Relaxed).max(0) as u64,
            forwarded_packets: totals.packets.load(Ordering::Relaxed),
            forwarded_bytes: totals.bytes.load(Ordering::Relaxed),
            drops: totals.drops.load(Ordering::Relaxed),
        }
    }

    /// Ends every allocation (shutdown).
    pub fn clear(&self) {
        let ids: Vec<u64> = self.state().allocations.keys().copied().collect();
        for id in ids {
            self.end(id, "shutdown");
        }
    }

    fn bind_port(
        &self,
        state: &mut State,
        fixed: Option<u16>,
    ) -> Result<(u16, Option<UdpSocket>, Option<UdpSocket>), String> {
        let range = self.inner.options.ports;
        if let Some(port) = fixed {
            if !range.contains(port) {
                return Err(format!("port {port} is outside the range {range}"));
            }
            if state.ports.contains(&port) {
                return Err(format!("port {port} is taken by another allocation"));
            }
            return self.open(port).map(|(a, b)| (port, a, b)).map_err(|e| format!("port {port}: {e}"));
        }
        let mut last_error = String::from("every port of the range is in use");
        for _ in 0..range.len() {
            let port = state.next_port;
            state.next_port = if port >= range.last { range.first } else { port + 1 };
            if state.ports.contains(&port) {
                continue;
            }
            match self.open(port) {
                Ok((a, b)) => return Ok((port, a, b)),
                // Another program holds it; try the next one.
                Err(e) => last_error = format!("port {port}: {e}"),
            }
        }
        Err(last_error)
    }

    fn open(&self, port: u16) -> std::io::Result<(Option<UdpSocket>, Option<UdpSocket>)> {
        let options = &self.inner.options;
        let v4 = match (options.ipv4, options.ipv6) {
            (Some(ip), _) => Some(udp_socket(SocketAddr::new(IpAddr::V4(ip), port))?),
            (None, None) => Some(udp_socket(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?),
            (None, Some(_)) => None,
        };
        let v6 = match options.ipv6 {
            Some(ip) => Some(udp_socket(SocketAddr::new(IpAddr::V6(ip), port))?),
            None => None,
        };
        Ok((v4, v6))
    }
}

/// Whether two specs of one id describe the same allocation (the expiry
/// may move; the port of a restored allocation is its own).
fn same_peers(a: &AllocationSpec, b: &AllocationSpec) -> bool {
    a.session_id == b.session_id
        && a.gateway_key == b.gateway_key
        && a.client_key == b.client_key
        && a.websocket_token == b.websocket_token
}

/// A non-blocking UDP socket with room for bursts.
fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Bursts of a fast peer queue here rather than drop; the kernel caps the
    // value at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// This host's wall clock, in ms since the epoch: what the relay goes by
/// until the cloud's time is known ([`Relay::now_ms`]).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ws::Directory for Relay {
    fn lookup(&self, token: &str) -> Option<mpsc::Sender<WsEvent>> {
        let state = self.state();
        let id = state.tokens.get(token)?;
        state.allocations.get(id).map(|h| h.ws_tx.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ferry_ebpf::common::relay::Binding;
    use ferry_tunnel::PrivateKey;

    use super::*;
    use crate::{core::handshake::tests::handshake, metrics::ReasonLabels};

    /// A binding map in memory, to watch what the registry writes.
    #[derive(Default)]
    struct MemoryTable(Mutex<HashMap<BindingKey, Binding>>);

    impl BindingTable for MemoryTable {
        fn insert(&self, key: &BindingKey, binding: &Binding) -> Result<(), String> {
            self.0.lock().insert(*key, *binding);
            Ok(())
        }
        fn remove(&self, key: &BindingKey) {
            self.0.lock().remove(key);
        }
        fn traffic(&self, _slot: u32) -> Traffic {
            Traffic::default()
        }
        fn reset_slot(&self, _slot: u32) {}
        fn entries(&self) -> u32 {
            self.0.lock().len() as u32
        }
    }

    /// A binding table whose code panics on its first slot reset, as a bug
    /// in the XDP map code would, under the registry's lock.
    #[derive(Default)]
    struct PanicsOnce(std::sync::atomic::AtomicBool);

    impl BindingTable for PanicsOnce {
        fn insert(&self, _key: &BindingKey, _binding: &Binding) -> Result<(), String> {
            Ok(())
        }
        fn remove(&self, _key: &BindingKey) {}
        fn traffic(&self, _slot: u32) -> Traffic {
            Traffic::default()
        }
        fn reset_slot(&self, slot: u32) {
            if !self.0.swap(true, Ordering::SeqCst) {
                panic!("a bug while resetting slot {slot}");
            }
        }
        fn entries(&self) -> u32 {
            0
        }
    }

    /// One panic under the registry's lock fails that one request; the relay
    /// still admits, ends, sweeps and reports for everyone else, and the
    /// failed allocation left nothing behind (its token and id are free).
    /// With a poisoning lock every later call panicked.
    #[tokio::test]
    async fn a_panic_under_the_state_lock_fails_one_request_not_the_relay() {
        let relay = Relay::new(options(10), Some(Arc::new(PanicsOnce::default())), Metrics::new());
        let first = spec(1);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| relay.add(first.clone())));
        assert!(panicked.is_err());
        assert_eq!(relay.snapshot().allocations, 0);
        assert_eq!(relay.port_of(1), None);
        assert!(matches!(relay.add(first.clone()), Admission::Ready { .. }), "the same allocation again");
        assert!(matches!(relay.add(spec(2)), Admission::Ready { .. }));
        assert!(ws::Directory::lookup(&relay, &first.websocket_token).is_some());
        assert_eq!(relay.apply(&[first]).len(), 0);
        assert_eq!(relay.snapshot().allocations, 1, "apply ended the other one");
        relay.clear();
        assert_eq!(relay.snapshot().allocations, 0);
    }

    fn options(max_allocations: u32) -> Options {
        Options {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
            ports: PortRange { first: 47100, last: 47199 },
            max_allocations,
            timeouts: Timeouts::default(),
            websocket_queue: 4,
        }
    }

    fn spec(id: u64) -> AllocationSpec {
        AllocationSpec {
            id,
            session_id: id,
            gateway_key: PrivateKey::generate().public_key(),
            client_key: PrivateKey::generate().public_key(),
            expires_ms: wall_ms() + 60_000,
            websocket_token: format!("token-{id}-0123456789"),
            port: None,
        }
    }

    /// What a restart restores: the port, and both bindings in the map at
    /// once, before any peer sends; and what the state file gets back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_allocation_forwards_on_its_port_at_once() {
        let table = Arc::new(MemoryTable::default());
        let relay = Relay::new(options(10), Some(table.clone()), Metrics::new());
        let gateway: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let client: SocketAddr = "192.0.2.2:40123".parse().unwrap();
        let spec = AllocationSpec { port: Some(47150), ..spec(1) };
        let changes = relay.changes();
        assert_eq!(
            relay.restore(
                spec.clone(),
                Sides { bound: [Some(gateway), Some(client)], candidate: [None, None] }
            ),
            Admission::Ready { port: 47150 }
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while table.entries() != 2 || relay.saved()[0].client.is_none() {
            assert!(std::time::Instant::now() < deadline, "the restored bindings never reached the map");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), changes.notified()).await.unwrap();
        let saved = relay.saved();
        assert_eq!((saved[0].port, saved[0].gateway, saved[0].client), (47150, Some(gateway), Some(client)));
        assert_eq!(saved[0].spec().unwrap().0, spec);
        // The cloud's snapshot names it without a port: it stays where it is.
        assert!(relay.apply(&[AllocationSpec { port: None, ..spec.clone() }]).is_empty());
        assert_eq!(relay.port_of(1), Some(47150));
        // The same id with another peer (an allocation file edited while
        // the relay was down) starts again as wanted, without the bindings.
        let other_client =
            AllocationSpec { client_key: PrivateKey::generate().public_key(), port: None, ..spec };
        assert_eq!(relay.apply(std::slice::from_ref(&other_client)).len(), 1, "answered as new");
        assert_eq!(relay.saved()[0].spec().unwrap().0.client_key, other_client.client_key);
        assert_eq!(relay.saved()[0].client, None);
        relay.clear();
        assert_eq!(table.entries(), 0);
    }

    /// An allocation saved while idle (its bindings back to candidates)
    /// delivers the next initiation to the restored candidate, so the
    /// handshake that binds both sides again can complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_candidate_receives_the_next_initiation() {
        let relay = Relay::new(options(10), None, Metrics::new());
        let gw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        gw.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let spec = AllocationSpec { port: Some(47160), ..spec(1) };
        let sides = Sides { bound: [None, None], candidate: [Some(gw.local_addr().unwrap()), None] };
        assert_eq!(relay.restore(spec.clone(), sides), Admission::Ready { port: 47160 });
        client.send_to(&handshake(1, 2, 0, &spec.gateway_key), "127.0.0.1:47160").unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::task::block_in_place(|| gw.recv(&mut buf)).unwrap();
        assert_eq!(n, 148, "the initiation reached the restored candidate");
        relay.clear();
    }

    /// A client's initiation to a fresh allocation (no gateway yet) makes
    /// it the client's candidate, and the state file gets it: after a
    /// restart the gateway's first initiation goes there instead of being
    /// dropped for want of a peer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_candidate_reaches_the_saved_state() {
        let relay = Relay::new(options(10), None, Metrics::new());
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let spec = AllocationSpec { port: Some(47170), ..spec(1) };
        assert_eq!(relay.add(spec.clone()), Admission::Ready { port: 47170 });
        client.send_to(&handshake(1, 2, 0, &spec.gateway_key), "127.0.0.1:47170").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while relay.saved()[0].client_candidate.is_none() {
            assert!(std::time::Instant::now() < deadline, "the client's candidate was never saved");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(relay.saved()[0].client_candidate, Some(client.local_addr().unwrap()));
        assert_eq!((relay.saved()[0].gateway, relay.saved()[0].client), (None, None));
        relay.clear();
    }

    /// A restored allocation that no snapshot names by the end of its grace
    /// ends; one a snapshot named stays until its expiry.
    #[tokio::test]
    async fn a_restored_allocation_ends_unless_a_snapshot_confirms_it_in_time() {
        let relay = Relay::new(options(10), None, Metrics::new());
        let past = std::time::Instant::now();
        let confirmed = spec(1);
        assert!(matches!(
            relay.restore_until(confirmed.clone(), Sides::default(), past),
            Admission::Ready { .. }
        ));
        assert!(relay.apply(std::slice::from_ref(&confirmed)).is_empty(), "known, not answered again");
        // Restored after that snapshot, and named by none since.
        assert!(matches!(relay.restore_until(spec(2), Sides::default(), past), Admission::Ready { .. }));
        let later = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        assert!(matches!(relay.restore_until(spec(3), Sides::default(), later), Admission::Ready { .. }));
        relay.sweep();
        assert!(relay.port_of(1).is_some(), "confirmed: it stays until its expiry");
        assert_eq!(relay.port_of(2), None, "never confirmed in its grace: ended");
        assert!(relay.port_of(3).is_some(), "within its grace it forwards");
        relay.clear();
    }

    /// A snapshot that moves an allocation's expiry wakes the state file's
    /// writer: a restart must not bring the allocation back with its old
    /// expiry (and end it early).
    #[tokio::test]
    async fn a_new_expiry_wakes_the_state_file_writer() {
        let relay = Relay::new(options(10), None, Metrics::new());
        let changes = relay.changes();
        let first = spec(1);
        assert!(matches!(relay.add(first.clone()), Admission::Ready { .. }));
        let wait = std::time::Duration::from_secs(5);
        tokio::time::timeout(wait, changes.notified()).await.expect("the start was announced");
        let later = AllocationSpec { expires_ms: first.expires_ms + 60_000, ..first };
        assert!(relay.apply(std::slice::from_ref(&later)).is_empty());
        tokio::time::timeout(wait, changes.notified()).await.expect("the new expiry was never announced");
        assert_eq!(relay.saved()[0].expires_ms, later.expires_ms);
        relay.clear();
    }

    #[tokio::test]
    async fn a_full_relay_refuses_visibly_and_ending_frees_room() {
        let metrics = Metrics::new();
        let relay = Relay::new(options(2), None, metrics.clone());
        assert!(matches!(relay.add(spec(1)), Admission::Ready { .. }));
        assert!(matches!(relay.add(spec(2)), Admission::Ready { .. }));
        let refused = relay.add(spec(3));
        assert!(
            matches!(&refused, Admission::Refused { reason } if reason.starts_with("full")),
            "{refused:?}"
        );
        assert_eq!(metrics.allocations_refused.get_or_create(&ReasonLabels { reason: "full" }).get(), 1);
        assert!(relay.end(1, "test"));
        assert!(matches!(relay.add(spec(3)), Admission::Ready { .. }));
        // Bad specs are refused with their reason.
        let mut same = spec(4);
        same.client_key = same.gateway_key;
        assert!(matches!(relay.add(same), Admission::Refused { reason } if reason.starts_with("invalid")));
        let mut old = spec(5);
        old.expires_ms = 1;
        assert!(matches!(relay.add(old), Admission::Refused { reason } if reason.starts_with("expired")));
    }

    /// Allocations end by the cloud's clock, pinned at the hello, not by
    /// this host's wall clock: a relay two hours ahead admits what the
    /// cloud issued, one two hours behind ends what the cloud's time ended.
    #[tokio::test]
    async fn allocations_end_by_the_cloud_s_clock_not_the_wall_clock() {
        const HOURS_2: u64 = 2 * 3600 * 1000;
        let relay = Relay::new(options(10), None, Metrics::new());
        // The wall clock two hours ahead of the cloud's.
        relay.pin_cloud_time(wall_ms() - HOURS_2, std::time::Instant::now());
        let cloud_now = relay.now_ms();
        assert!(cloud_now.abs_diff(wall_ms() - HOURS_2) < 60_000, "{cloud_now}");
        // Ends a minute from the cloud's now: in the wall clock's past.
        let live = AllocationSpec { expires_ms: cloud_now + 60_000, ..spec(1) };
        assert!(matches!(relay.add(live), Admission::Ready { .. }), "refused as expired by the wall clock");
        relay.sweep();
        assert_eq!(relay.snapshot().allocations, 1, "ended by the wall clock");

        // The wall clock two hours behind the cloud's (a new hello).
        relay.pin_cloud_time(wall_ms() + HOURS_2, std::time::Instant::now());
        relay.sweep();
        assert_eq!(relay.snapshot().allocations, 0, "its end passed on the cloud's clock");
        let late = AllocationSpec { expires_ms: wall_ms() + 60_000, ..spec(2) };
        assert!(matches!(relay.add(late), Admission::Refused { reason } if reason.starts_with("expired")));
    }

    #[tokio::test]
    async fn apply_starts_new_ends_missing_and_sweep_ends_expired() {
        let relay = Relay::new(options(10), None, Metrics::new());
        let (a, b) = (spec(1), spec(2));
        let answers = relay.apply(&[a.clone(), b.clone()]);
        assert_eq!(answers.len(), 2);
        assert!(relay.apply(&[a.clone(), b.clone()]).is_empty(), "known allocations are not answered again");
        relay.apply(std::slice::from_ref(&b));
        assert_eq!(relay.port_of(1), None);
        let mut shorter = b.clone();
        shorter.expires_ms = wall_ms();
        relay.apply(&[shorter]);
        relay.sweep();
        assert_eq!(relay.snapshot().allocations, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bindings_reach_the_map_and_leave_it_when_the_allocation_ends() {
        let table = Arc::new(MemoryTable::default());
        let relay = Relay::new(options(10), Some(table.clone()), Metrics::new());
        let spec = spec(1);
        let Admission::Ready { port } = relay.add(spec.clone()) else { panic!("refused") };
        let relay_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let gw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        gw.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        // The gateway initiates first (no client yet), then the client does,
        // which reaches the gateway, and the gateway answers.
        gw.send_to(&handshake(1, 1, 0, &spec.client_key), relay_addr).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        client.send_to(&handshake(1, 2, 0, &spec.gateway_key), relay_addr).unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::task::block_in_place(|| gw.recv(&mut buf)).unwrap();
        assert_eq!(n, 148);
        gw.send_to(&handshake(2, 3, 2, &spec.client_key), relay_addr).unwrap();
        let n = tokio::task::block_in_place(|| client.recv(&mut buf)).unwrap();
        assert_eq!(n, 92);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while table.entries() != 2 {
            assert!(std::time::Instant::now() < deadline, "the bindings never reached the map");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(relay.snapshot().bindings, 2);
        relay.end(1, "test");
        assert_eq!(table.entries(), 0, "ending leaves nothing in the map, at once");
    }
}
