//! The live side of the control channels: which gateways and relays are
//! connected now, what they last reported, and a "desired state changed"
//! signal per connection. A connection task that sees the signal rebuilds
//! the full desired state from the store and sends it; there are no deltas
//! to lose, and a reconnect is just the first signal.
//!
//! Beside the per-connection signals, the hub announces every change to a
//! session or to what is known of a gateway or relay ([`Change`]) to whoever
//! subscribed: clients watching their configuration (server-sent events)
//! and, later, the web console. A change says only *what* changed; a
//! subscriber reads the current state itself, so a subscriber that falls
//! behind (and is told it lagged) just reads again.
//!
//! With several replicas on one PostgreSQL database ([`cluster`]), the hub
//! is also where they meet: every signal it raises here (a touch, a change,
//! a relay's answer) goes to the other replicas too, and theirs come in
//! through [`Hub::apply`]; which gateways and relays are connected anywhere
//! is read from the database, with a lease, when they are not connected
//! here.
//!
//! Every connection task and API request goes through these maps, so one
//! panic must not break them for the others: the locks do not poison
//! (parking_lot), nothing the hub itself runs under them can panic, and a
//! caller's change runs on a copy that replaces the entry only if it returns,
//! so a panicking change leaves the entry as it was.

pub mod cluster;
pub mod postgres;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot, watch};

use self::cluster::{Cluster, PeerKind, Signal};
use crate::{sessions::GatewayView, store::BackendError};

/// What a connected gateway reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayLive {
    pub switch_on: bool,
    pub software_version: String,
    pub wg_public_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLive {
    pub udp: SocketAddr,
    /// The public address of its STUN server, if it runs one.
    pub stun: Option<SocketAddr>,
    pub websocket_url: String,
    /// The fingerprint of the relay's WebSocket certificate, when it
    /// serves TLS itself.
    pub websocket_pin: Option<String>,
    pub capacity: u32,
    pub bindings: u64,
}

struct Link<L> {
    conn: u64,
    live: L,
    dirty: watch::Sender<u64>,
}

/// The answer of a relay to an allocation: the endpoints for the gateway
/// and the client side, or a refusal.
pub type AllocationAnswer = Result<(SocketAddr, SocketAddr), String>;

/// What changed, for subscribers ([`Hub::subscribe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A session's document changed (state, configurations, targets, ...).
    Session(u64),
    /// What is known of a gateway changed: it connected or left, its switch,
    /// its candidates, or it reported an event.
    Gateway(u64),
    /// A relay connected or left, or reported its health.
    Relay(u64),
}

/// Changes a subscriber may fall behind by before it is told it lagged.
const CHANGE_BACKLOG: usize = 1024;

pub struct Hub {
    gateways: Mutex<HashMap<u64, Link<GatewayLive>>>,
    relays: Mutex<HashMap<u64, Link<RelayLive>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<AllocationAnswer>>>,
    revision: AtomicU64,
    next_conn: AtomicU64,
    changes: broadcast::Sender<Change>,
    closing: watch::Sender<bool>,
    /// The other replicas, when there are any.
    cluster: OnceLock<Arc<dyn Cluster>>,
    /// The relays connected to other replicas, as last read.
    remote_relays: Mutex<Vec<(u64, RelayLive)>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            gateways: Mutex::default(),
            relays: Mutex::default(),
            pending: Mutex::default(),
            revision: AtomicU64::default(),
            next_conn: AtomicU64::default(),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            closing: watch::channel(false).0,
            cluster: OnceLock::new(),
            remote_relays: Mutex::default(),
        }
    }
}

/// A report as the presence table keeps it.
fn encode<L: Serialize>(live: &L) -> String {
    String::from_utf8_lossy(&crate::store::to_json(live)).into_owned()
}

/// A registered connection: its id and the signal to watch. The signal's
/// sender is dropped when another connection of the same peer replaces
/// this one.
pub struct Registration {
    pub conn: u64,
    pub dirty: watch::Receiver<u64>,
}

impl Hub {
    /// Revisions only grow, also across restarts and from one replica to
    /// another (a gateway ignores a desired state older than the one it
    /// has, and may move to another replica): they follow the wall clock,
    /// 1024 to the millisecond, and at least count up.
    fn next_revision(&self) -> u64 {
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock).saturating_mul(1024);
        let mut current = self.revision.load(Ordering::SeqCst);
        loop {
            let next = current.max(now).saturating_add(1);
            match self.revision.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }

    /// Revisions only grow, also across restarts: they start at the clock.
    pub fn start_revisions_at(&self, floor: u64) {
        self.revision.fetch_max(floor, Ordering::SeqCst);
    }

    /// Joins the other replicas (once).
    pub fn join(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.get()
    }

    fn publish(&self, signal: Signal) {
        if let Some(cluster) = self.cluster.get() {
            cluster.publish(signal);
        }
    }

    /// Registers a new connection of peer `id`; with a cluster, claims it in
    /// the presence table first (and refuses the connection if that fails:
    /// the other replicas would not see it).
    fn register<L: Serialize>(
        &self,
        map: &Mutex<HashMap<u64, Link<L>>>,
        kind: PeerKind,
        id: u64,
        live: L,
    ) -> Result<Registration, BackendError> {
        let conn = self.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(cluster) = self.cluster.get() {
            cluster.claim(kind, id, conn, &encode(&live))?;
            cluster.publish(Signal::Claimed { kind, id, replica: cluster.replica(), conn });
        }
        let (dirty, receiver) = watch::channel(self.next_revision());
        // Replacing drops the previous sender: the old task sees it and closes.
        map.lock().insert(id, Link { conn, live, dirty });
        Ok(Registration { conn, dirty: receiver })
    }

    fn unregister<L>(&self, map: &Mutex<HashMap<u64, Link<L>>>, kind: PeerKind, id: u64, conn: u64) -> bool {
        let mine = {
            let mut map = map.lock();
            let mine = map.get(&id).is_some_and(|l| l.conn == conn);
            if mine {
                map.remove(&id);
            }
            mine
        };
        if mine
            && let Some(cluster) = self.cluster.get()
            && let Err(error) = cluster.release(kind, id, conn)
        {
            // Its lease ends with this replica's, or another connection
            // claims it first.
            tracing::warn!(%error, kind = kind.name(), id, "forgetting a connection in the database failed");
        }
        mine
    }

    fn touch_local<L>(&self, map: &Mutex<HashMap<u64, Link<L>>>, id: u64) {
        if let Some(link) = map.lock().get(&id) {
            link.dirty.send_replace(self.next_revision());
        }
    }

    /// Applies a caller's change to a connected peer's report, all or
    /// nothing: it works on a copy, so if it panics the entry stays as it was
    /// (and the lock, which does not poison, is free for everyone else).
    /// Returns the new report and the connection, if the peer is here.
    fn update<L: Clone>(
        map: &Mutex<HashMap<u64, Link<L>>>,
        id: u64,
        change: impl FnOnce(&mut L),
    ) -> Option<(L, u64)> {
        let mut map = map.lock();
        let link = map.get_mut(&id)?;
        let mut live = link.live.clone();
        change(&mut live);
        link.live = live.clone();
        Some((live, link.conn))
    }

    /// Tells subscribers, here and on the other replicas, that something
    /// changed. Nobody listening is fine.
    pub fn notify(&self, change: Change) {
        let _ = self.changes.send(change);
        self.publish(Signal::Change(change));
    }

    /// A signal from another replica.
    pub fn apply(&self, signal: Signal) {
        match signal {
            Signal::Change(change) => {
                let _ = self.changes.send(change);
            }
            Signal::TouchGateway(id) => self.touch_local(&self.gateways, id),
            Signal::TouchRelay(id) => self.touch_local(&self.relays, id),
            Signal::Allocation { id, answer } => {
                if let Some(sender) = self.pending.lock().remove(&id) {
                    let _ = sender.send(answer);
                }
            }
            Signal::Claimed { kind, id, replica, conn } => {
                let here = self.cluster.get().map(|c| c.replica());
                if here == Some(replica) {
                    return;
                }
                // Dropping the link drops its sender: the connection here
                // is told another one took over, and closes.
                let replaced = match kind {
                    PeerKind::Gateway => self.gateways.lock().remove(&id).is_some(),
                    PeerKind::Relay => self.relays.lock().remove(&id).is_some(),
                };
                if replaced {
                    tracing::info!(kind = kind.name(), id, replica, conn, "connected to another replica now");
                }
            }
        }
    }

    /// Every connection here gets its desired state again.
    pub fn resync_all(&self) {
        self.touch_all_gateways();
        let revision = self.next_revision();
        for link in self.relays.lock().values() {
            link.dirty.send_replace(revision);
        }
    }

    /// Every change from now on. A receiver that falls more than
    /// [`CHANGE_BACKLOG`] changes behind gets `Lagged` and should read the
    /// state it watches again.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Becomes true when the server shuts down: long-lived responses (event
    /// streams) end then, so that the graceful shutdown does not wait for
    /// them.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    pub fn connect_gateway(&self, id: u64, live: GatewayLive) -> Result<Registration, BackendError> {
        let registration = self.register(&self.gateways, PeerKind::Gateway, id, live)?;
        self.notify(Change::Gateway(id));
        Ok(registration)
    }

    /// Returns whether `conn` was still the gateway's connection.
    pub fn disconnect_gateway(&self, id: u64, conn: u64) -> bool {
        let mine = self.unregister(&self.gateways, PeerKind::Gateway, id, conn);
        if mine {
            self.notify(Change::Gateway(id));
        }
        mine
    }

    /// What the gateway reported, if it is connected here or (with a
    /// cluster) to another live replica.
    pub fn gateway(&self, id: u64) -> Option<GatewayLive> {
        if let Some(live) = self.gateways.lock().get(&id).map(|l| l.live.clone()) {
            return Some(live);
        }
        let cluster = self.cluster.get()?;
        match cluster.present(PeerKind::Gateway, id) {
            Ok(found) => found.and_then(|json| serde_json::from_str(&json).ok()),
            Err(error) => {
                tracing::warn!(%error, gateway = id, "reading where a gateway is connected failed");
                None
            }
        }
    }

    /// Every connected gateway's report: here, and (with a cluster) at the
    /// other live replicas.
    pub fn gateways_live(&self) -> HashMap<u64, GatewayLive> {
        let mut all = HashMap::new();
        if let Some(cluster) = self.cluster.get() {
            match cluster.present_all(PeerKind::Gateway) {
                Ok(found) => all.extend(
                    found.into_iter().filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?))),
                ),
                Err(error) => tracing::warn!(%error, "reading where gateways are connected failed"),
            }
        }
        all.extend(self.gateways.lock().iter().map(|(id, l)| (*id, l.live.clone())));
        all
    }

    /// Whether the gateway is connected to this replica.
    pub fn gateway_here(&self, id: u64) -> bool {
        self.gateways.lock().contains_key(&id)
    }

    pub fn gateway_view(&self, id: u64) -> GatewayView {
        match self.gateway(id) {
            Some(live) => GatewayView { online: true, switch_on: live.switch_on },
            None => GatewayView { online: false, switch_on: false },
        }
    }

    pub fn update_gateway(&self, id: u64, change: impl FnOnce(&mut GatewayLive)) {
        let updated = Self::update(&self.gateways, id, change);
        self.report(PeerKind::Gateway, id, updated);
        self.notify(Change::Gateway(id));
    }

    fn report<L: Serialize>(&self, kind: PeerKind, id: u64, updated: Option<(L, u64)>) {
        if let (Some(cluster), Some((live, conn))) = (self.cluster.get(), updated)
            && let Err(error) = cluster.report(kind, id, conn, &encode(&live))
        {
            tracing::warn!(%error, kind = kind.name(), id, "recording a report in the database failed");
        }
    }

    /// The gateway's desired state changed: its connection resends it,
    /// wherever it is connected.
    pub fn touch_gateway(&self, id: u64) {
        self.touch_local(&self.gateways, id);
        self.publish(Signal::TouchGateway(id));
    }

    /// Every gateway's desired state changed (it lists the STUN servers).
    fn touch_all_gateways(&self) {
        let revision = self.next_revision();
        for link in self.gateways.lock().values() {
            link.dirty.send_replace(revision);
        }
    }

    /// Every connected relay (here, and at other replicas as last read),
    /// by id; a relay connected here counts with its report here.
    fn all_relays(&self) -> Vec<(u64, RelayLive)> {
        let mut all: Vec<(u64, RelayLive)> =
            self.relays.lock().iter().map(|(id, l)| (*id, l.live.clone())).collect();
        for (id, live) in self.remote_relays.lock().iter() {
            if all.iter().all(|(here, _)| here != id) {
                all.push((*id, live.clone()));
            }
        }
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// Reads the relays connected to other live replicas again; gateways
    /// here hear of it if that changed the STUN servers.
    pub fn refresh_remote_relays(&self) -> Result<(), BackendError> {
        let Some(cluster) = self.cluster.get() else { return Ok(()) };
        let found = cluster.present_all(PeerKind::Relay)?;
        let remote: Vec<(u64, RelayLive)> = found
            .into_iter()
            .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
            .collect();
        let before = self.stun_servers();
        *self.remote_relays.lock() = remote;
        if self.stun_servers() != before {
            self.touch_all_gateways();
        }
        Ok(())
    }

    /// The STUN servers of the connected relays, by relay id, at most
    /// [`ferry_control::gateway::MAX_STUN_SERVERS`].
    pub fn stun_servers(&self) -> Vec<SocketAddr> {
        let by_id: Vec<(u64, SocketAddr)> =
            self.all_relays().into_iter().filter_map(|(id, l)| Some((id, l.stun?))).collect();
        let mut servers: Vec<SocketAddr> = Vec::new();
        for (_, server) in by_id {
            if !servers.contains(&server) && servers.len() < ferry_control::gateway::MAX_STUN_SERVERS {
                servers.push(server);
            }
        }
        servers
    }

    /// A relay came or went: if that changed the STUN servers, every gateway
    /// gets them.
    fn relays_changed(&self, id: u64, stun_before: Vec<SocketAddr>) {
        if self.stun_servers() != stun_before {
            self.touch_all_gateways();
        }
        self.notify(Change::Relay(id));
    }

    pub fn connect_relay(&self, id: u64, live: RelayLive) -> Result<Registration, BackendError> {
        let before = self.stun_servers();
        let registration = self.register(&self.relays, PeerKind::Relay, id, live)?;
        self.relays_changed(id, before);
        Ok(registration)
    }

    pub fn disconnect_relay(&self, id: u64, conn: u64) -> bool {
        let before = self.stun_servers();
        let mine = self.unregister(&self.relays, PeerKind::Relay, id, conn);
        if mine {
            self.remote_relays.lock().retain(|(other, _)| *other != id);
            self.relays_changed(id, before);
        }
        mine
    }

    /// A connected relay's report (here, or at another replica as last read).
    pub fn relay(&self, id: u64) -> Option<RelayLive> {
        self.all_relays().into_iter().find(|(other, _)| *other == id).map(|(_, live)| live)
    }

    pub fn update_relay(&self, id: u64, change: impl FnOnce(&mut RelayLive)) {
        let updated = Self::update(&self.relays, id, change);
        self.report(PeerKind::Relay, id, updated);
        self.notify(Change::Relay(id));
    }

    /// The relay's allocations changed: its connection resends them,
    /// wherever it is connected.
    pub fn touch_relay(&self, id: u64) {
        self.touch_local(&self.relays, id);
        self.publish(Signal::TouchRelay(id));
    }

    /// The connected relay with the most free room, if any.
    pub fn pick_relay(&self) -> Option<(u64, RelayLive)> {
        self.all_relays()
            .into_iter()
            .filter(|(_, l)| u64::from(l.capacity) > l.bindings)
            .max_by_key(|(id, l)| (u64::from(l.capacity) - l.bindings, std::cmp::Reverse(*id)))
    }

    /// Waits for a relay's answer to allocation `id`.
    pub fn expect_allocation(&self, id: u64) -> oneshot::Receiver<AllocationAnswer> {
        let (sender, receiver) = oneshot::channel();
        self.pending.lock().insert(id, sender);
        receiver
    }

    /// A relay answered allocation `id`: to the request waiting here, or
    /// to the replica that issued it.
    pub fn answer_allocation(&self, id: u64, answer: AllocationAnswer) {
        let waiting = self.pending.lock().remove(&id);
        match waiting {
            Some(sender) => {
                let _ = sender.send(answer);
            }
            None => self.publish(Signal::Allocation { id, answer }),
        }
    }

    pub fn forget_allocation(&self, id: u64) {
        self.pending.lock().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(on: bool) -> GatewayLive {
        GatewayLive { switch_on: on, software_version: "1".into(), wg_public_key: "k".into() }
    }

    #[tokio::test]
    async fn a_new_connection_replaces_the_old_one() {
        let hub = Hub::default();
        let mut first = hub.connect_gateway(1, live(false)).unwrap();
        assert_eq!(hub.gateway_view(1), GatewayView { online: true, switch_on: false });
        let mut second = hub.connect_gateway(1, live(true)).unwrap();
        assert!(first.dirty.changed().await.is_err(), "the old connection is told to go");
        assert!(!hub.disconnect_gateway(1, first.conn), "the old one cannot unregister the new");
        assert!(hub.gateway_view(1).switch_on);
        let before = *second.dirty.borrow_and_update();
        hub.touch_gateway(1);
        second.dirty.changed().await.unwrap();
        assert!(*second.dirty.borrow() > before);
        assert!(hub.disconnect_gateway(1, second.conn));
        assert_eq!(hub.gateway_view(1), GatewayView { online: false, switch_on: false });
    }

    /// A connection task whose change panics under the hub's lock takes down
    /// only itself: the entry keeps its last whole value, and every other
    /// caller (the same gateway's next report, other gateways, relays, the
    /// API) goes on. With a poisoning lock each of these calls panicked.
    #[test]
    fn a_change_that_panics_leaves_the_hub_working_for_everyone() {
        let hub = Hub::default();
        let first = hub.connect_gateway(1, live(false)).unwrap();
        hub.connect_gateway(2, live(false)).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hub.update_gateway(1, |l| {
                l.switch_on = true;
                l.software_version.push_str("-half-written");
                panic!("a bug in one connection task");
            });
        }));
        assert!(panicked.is_err());
        assert_eq!(hub.gateway(1), Some(live(false)), "the half-made change is not kept");
        hub.update_gateway(1, |l| l.switch_on = true);
        assert_eq!(hub.gateway_view(1), GatewayView { online: true, switch_on: true });
        hub.update_gateway(2, |l| l.switch_on = true);
        assert!(hub.gateway_view(2).switch_on);
        assert!(hub.disconnect_gateway(1, first.conn));
        assert_eq!(hub.gateway(1), None);

        let relay = RelayLive {
            udp: "192.0.2.1:3478".parse().unwrap(),
            stun: None,
            websocket_url: "wss://relay.example/ws".into(),
            websocket_pin: None,
            capacity: 10,
            bindings: 0,
        };
        hub.connect_relay(7, relay.clone()).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hub.update_relay(7, |l| {
                l.bindings = 10;
                panic!("a bug in the relay's connection task");
            });
        }));
        assert!(panicked.is_err());
        assert_eq!(hub.relay(7), Some(relay), "the relay's report is whole");
        assert_eq!(hub.pick_relay().map(|(id, _)| id), Some(7), "a full-looking relay was not half-recorded");
        hub.update_relay(7, |l| l.bindings = 10);
        assert!(hub.pick_relay().is_none());
    }

    #[tokio::test]
    async fn subscribers_hear_of_changes_and_gateways_of_new_stun_servers() {
        let hub = Hub::default();
        let mut changes = hub.subscribe();
        let mut gateway = hub.connect_gateway(1, live(true)).unwrap();
        assert_eq!(changes.recv().await.unwrap(), Change::Gateway(1));
        hub.update_gateway(1, |l| l.switch_on = false);
        assert_eq!(changes.recv().await.unwrap(), Change::Gateway(1));
        hub.notify(Change::Session(5));
        assert_eq!(changes.recv().await.unwrap(), Change::Session(5));

        let relay = |stun: Option<&str>| RelayLive {
            udp: "192.0.2.1:40000".parse().unwrap(),
            stun: stun.map(|s| s.parse().unwrap()),
            websocket_url: "wss://relay.example/ws".into(),
            websocket_pin: None,
            capacity: 10,
            bindings: 0,
        };
        gateway.dirty.borrow_and_update();
        let b = hub.connect_relay(8, relay(Some("192.0.2.8:3478"))).unwrap();
        hub.connect_relay(3, relay(Some("192.0.2.3:3478"))).unwrap();
        assert_eq!(changes.recv().await.unwrap(), Change::Relay(8));
        assert_eq!(changes.recv().await.unwrap(), Change::Relay(3));
        assert!(gateway.dirty.has_changed().unwrap(), "the gateway resends its desired state");
        assert_eq!(
            hub.stun_servers(),
            ["192.0.2.3:3478".parse().unwrap(), "192.0.2.8:3478".parse().unwrap()],
            "by relay id"
        );
        // A relay without STUN changes no gateway's state.
        gateway.dirty.borrow_and_update();
        hub.connect_relay(9, relay(None)).unwrap();
        assert!(!gateway.dirty.has_changed().unwrap());
        assert!(hub.disconnect_relay(8, b.conn));
        assert!(gateway.dirty.has_changed().unwrap());
        assert_eq!(hub.stun_servers(), ["192.0.2.3:3478".parse::<SocketAddr>().unwrap()]);

        let mut closing = hub.closing();
        assert!(!*closing.borrow());
        hub.close_streams();
        assert!(*closing.wait_for(|c| *c).await.unwrap());
    }

    #[test]
    fn relays_are_picked_by_free_room() {
        let hub = Hub::default();
        let relay = |capacity, bindings| RelayLive {
            udp: "192.0.2.1:3478".parse().unwrap(),
            stun: None,
            websocket_url: "wss://relay.example/ws".into(),
            websocket_pin: None,
            capacity,
            bindings,
        };
        assert!(hub.pick_relay().is_none());
        hub.connect_relay(1, relay(100, 90)).unwrap();
        hub.connect_relay(2, relay(100, 10)).unwrap();
        hub.connect_relay(3, relay(5, 5)).unwrap();
        assert_eq!(hub.pick_relay().map(|(id, _)| id), Some(2));
    }
}
