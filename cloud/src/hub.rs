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
//! Every connection task and API request goes through these maps, so one
//! panic must not break them for the others: the locks do not poison
//! (parking_lot), nothing the hub itself runs under them can panic, and a
//! caller's change runs on a copy that replaces the entry only if it returns,
//! so a panicking change leaves the entry as it was.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot, watch};

use crate::sessions::GatewayView;

/// What a connected gateway reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLive {
    pub switch_on: bool,
    pub software_version: String,
    pub wg_public_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
        }
    }
}

/// A registered connection: its id and the signal to watch. The signal's
/// sender is dropped when another connection of the same peer replaces
/// this one.
pub struct Registration {
    pub conn: u64,
    pub dirty: watch::Receiver<u64>,
}

impl Hub {
    fn next_revision(&self) -> u64 {
        self.revision.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Revisions only grow, also across restarts: they start at the clock.
    pub fn start_revisions_at(&self, floor: u64) {
        self.revision.fetch_max(floor, Ordering::SeqCst);
    }

    fn register<L>(&self, map: &Mutex<HashMap<u64, Link<L>>>, id: u64, live: L) -> Registration {
        let conn = self.next_conn.fetch_add(1, Ordering::SeqCst) + 1;
        let (dirty, receiver) = watch::channel(self.next_revision());
        // Replacing drops the previous sender: the old task sees it and closes.
        map.lock().insert(id, Link { conn, live, dirty });
        Registration { conn, dirty: receiver }
    }

    fn unregister<L>(map: &Mutex<HashMap<u64, Link<L>>>, id: u64, conn: u64) -> bool {
        let mut map = map.lock();
        let mine = map.get(&id).is_some_and(|l| l.conn == conn);
        if mine {
            map.remove(&id);
        }
        mine
    }

    fn touch<L>(&self, map: &Mutex<HashMap<u64, Link<L>>>, id: u64) {
        if let Some(link) = map.lock().get(&id) {
            link.dirty.send_replace(self.next_revision());
        }
    }

    /// Applies a caller's change to a connected peer's report, all or
    /// nothing: it works on a copy, so if it panics the entry stays as it was
    /// (and the lock, which does not poison, is free for everyone else).
    fn update<L: Clone>(map: &Mutex<HashMap<u64, Link<L>>>, id: u64, change: impl FnOnce(&mut L)) {
        if let Some(link) = map.lock().get_mut(&id) {
            let mut live = link.live.clone();
            change(&mut live);
            link.live = live;
        }
    }

    /// Tells subscribers that something changed. Nobody listening is fine.
    pub fn notify(&self, change: Change) {
        let _ = self.changes.send(change);
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

    pub fn connect_gateway(&self, id: u64, live: GatewayLive) -> Registration {
        let registration = self.register(&self.gateways, id, live);
        self.notify(Change::Gateway(id));
        registration
    }

    /// Returns whether `conn` was still the gateway's connection.
    pub fn disconnect_gateway(&self, id: u64, conn: u64) -> bool {
        let mine = Self::unregister(&self.gateways, id, conn);
        if mine {
            self.notify(Change::Gateway(id));
        }
        mine
    }

    pub fn gateway(&self, id: u64) -> Option<GatewayLive> {
        self.gateways.lock().get(&id).map(|l| l.live.clone())
    }

    pub fn gateway_view(&self, id: u64) -> GatewayView {
        match self.gateway(id) {
            Some(live) => GatewayView { online: true, switch_on: live.switch_on },
            None => GatewayView { online: false, switch_on: false },
        }
    }

    pub fn update_gateway(&self, id: u64, change: impl FnOnce(&mut GatewayLive)) {
        Self::update(&self.gateways, id, change);
        self.notify(Change::Gateway(id));
    }

    /// The gateway's desired state changed: its connection resends it.
    pub fn touch_gateway(&self, id: u64) {
        self.touch(&self.gateways, id);
    }

    /// Every gateway's desired state changed (it lists the STUN servers).
    fn touch_all_gateways(&self) {
        let revision = self.next_revision();
        for link in self.gateways.lock().values() {
            link.dirty.send_replace(revision);
        }
    }

    /// The STUN servers of the connected relays, by relay id, at most
    /// [`ferry_control::gateway::MAX_STUN_SERVERS`].
    pub fn stun_servers(&self) -> Vec<SocketAddr> {
        let relays = self.relays.lock();
        let mut by_id: Vec<(u64, SocketAddr)> =
            relays.iter().filter_map(|(id, l)| Some((*id, l.live.stun?))).collect();
        drop(relays);
        by_id.sort_unstable();
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

    pub fn connect_relay(&self, id: u64, live: RelayLive) -> Registration {
        let before = self.stun_servers();
        let registration = self.register(&self.relays, id, live);
        self.relays_changed(id, before);
        registration
    }

    pub fn disconnect_relay(&self, id: u64, conn: u64) -> bool {
        let before = self.stun_servers();
        let mine = Self::unregister(&self.relays, id, conn);
        if mine {
            self.relays_changed(id, before);
        }
        mine
    }

    pub fn relay(&self, id: u64) -> Option<RelayLive> {
        self.relays.lock().get(&id).map(|l| l.live.clone())
    }

    pub fn update_relay(&self, id: u64, change: impl FnOnce(&mut RelayLive)) {
        Self::update(&self.relays, id, change);
        self.notify(Change::Relay(id));
    }

    pub fn touch_relay(&self, id: u64) {
        self.touch(&self.relays, id);
    }

    /// The connected relay with the most free room, if any.
    pub fn pick_relay(&self) -> Option<(u64, RelayLive)> {
        self.relays
            .lock()
            .iter()
            .filter(|(_, l)| u64::from(l.live.capacity) > l.live.bindings)
            .max_by_key(|(id, l)| (u64::from(l.live.capacity) - l.live.bindings, std::cmp::Reverse(**id)))
            .map(|(id, l)| (*id, l.live.clone()))
    }

    /// Waits for a relay's answer to allocation `id`.
    pub fn expect_allocation(&self, id: u64) -> oneshot::Receiver<AllocationAnswer> {
        let (sender, receiver) = oneshot::channel();
        self.pending.lock().insert(id, sender);
        receiver
    }

    pub fn answer_allocation(&self, id: u64, answer: AllocationAnswer) {
        if let Some(sender) = self.pending.lock().remove(&id) {
            let _ = sender.send(answer);
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
        let mut first = hub.connect_gateway(1, live(false));
        assert_eq!(hub.gateway_view(1), GatewayView { online: true, switch_on: false });
        let mut second = hub.connect_gateway(1, live(true));
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
        let first = hub.connect_gateway(1, live(false));
        hub.connect_gateway(2, live(false));
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
        hub.connect_relay(7, relay.clone());
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
        let mut gateway = hub.connect_gateway(1, live(true));
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
        let b = hub.connect_relay(8, relay(Some("192.0.2.8:3478")));
        hub.connect_relay(3, relay(Some("192.0.2.3:3478")));
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
        hub.connect_relay(9, relay(None));
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
        hub.connect_relay(1, relay(100, 90));
        hub.connect_relay(2, relay(100, 10));
        hub.connect_relay(3, relay(5, 5));
        assert_eq!(hub.pick_relay().map(|(id, _)| id), Some(2));
    }
}
