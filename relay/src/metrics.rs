//! The relay's Prometheus metrics, served at `/metrics`.
//!
//! Every module counts into the families here; the XDP program's per-CPU
//! counters are folded in by the forwarder's poller (`xdp.rs`) as deltas, so
//! one scrape shows every path side by side.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// How a datagram crossed the relay.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `xdp`, `userspace` or `websocket`.
    pub path: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub const PATH_XDP: PathLabels = PathLabels { path: "xdp" };
pub const PATH_USERSPACE: PathLabels = PathLabels { path: "userspace" };
pub const PATH_WEBSOCKET: PathLabels = PathLabels { path: "websocket" };

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub forwarded_packets: Family<PathLabels, Counter>,
    pub forwarded_bytes: Family<PathLabels, Counter>,
    /// Datagrams and frames dropped, by reason (`unbound`, `bad_mac1`, ...).
    pub drops: Family<ReasonLabels, Counter>,
    pub allocations: Gauge,
    /// Committed peer bindings (UDP and WebSocket).
    pub bindings: Gauge,
    /// Entries in the XDP binding map and its capacity.
    pub map_entries: Gauge,
    pub map_capacity: Gauge,
    /// Allocations refused to the cloud, by reason (`map_full`, `ports`...).
    pub allocations_refused: Family<ReasonLabels, Counter>,
    /// STUN requests by outcome (`answered`, `error_response`, `malformed`,
    /// `not_binding`).
    pub stun_requests: Family<OutcomeLabels, Counter>,
    pub websocket_connections: Gauge,
    /// WebSocket connections refused, by reason (`token`, `handshake`, `tls`,
    /// `capacity`).
    pub websocket_refused: Family<ReasonLabels, Counter>,
    /// 1 while the cloud control channel is up.
    pub control_connected: Gauge,
    /// What the XDP program did with each packet it saw, by outcome.
    pub xdp_outcomes: Family<OutcomeLabels, Counter>,
    /// `bpf_fib_lookup` calls of the XDP program: next-hop cache misses.
    pub xdp_fib_lookups: Counter,
    /// 1 while the netlink watcher that invalidates the XDP next-hop cache
    /// is subscribed; 0 otherwise (its notifications ended, or it never
    /// started, or the cache is off).
    pub xdp_next_hop_watcher_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry_relay");
        let forwarded_packets = Family::<PathLabels, Counter>::default();
        registry.register(
            "forwarded_packets",
            "WireGuard datagrams forwarded, by path (xdp, userspace, websocket)",
            forwarded_packets.clone(),
        );
        let forwarded_bytes = Family::<PathLabels, Counter>::default();
        registry.register(
            "forwarded_bytes",
            "Bytes of WireGuard datagrams forwarded, by path",
            forwarded_bytes.clone(),
        );
        let drops = Family::<ReasonLabels, Counter>::default();
        registry.register("drops", "Datagrams and frames dropped, by reason", drops.clone());
        let allocations = Gauge::default();
        registry.register("allocations", "Live allocations", allocations.clone());
        let bindings = Gauge::default();
        registry.register("bindings", "Committed peer bindings", bindings.clone());
        let map_entries = Gauge::default();
        registry.register("xdp_map_entries", "Entries in the XDP binding map", map_entries.clone());
        let map_capacity = Gauge::default();
        registry.register("xdp_map_capacity", "Capacity of the XDP binding map", map_capacity.clone());
        let allocations_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "allocations_refused",
            "Allocations refused to the cloud, by reason",
            allocations_refused.clone(),
        );
        let stun_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register("stun_requests", "STUN requests by outcome", stun_requests.clone());
        let websocket_connections = Gauge::default();
        registry.register(
            "websocket_connections",
            "Open WebSocket relay connections",
            websocket_connections.clone(),
        );
        let websocket_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "websocket_refused",
            "WebSocket connections refused, by reason",
            websocket_refused.clone(),
        );
        let control_connected = Gauge::default();
        registry.register(
            "control_connected",
            "1 while the cloud control channel is up",
            control_connected.clone(),
        );
        let xdp_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "xdp_packets",
            "Packets the XDP forwarder saw, by outcome (forward_tx, pass_handshake, drop_unbound...)",
            xdp_outcomes.clone(),
        );
        let xdp_fib_lookups = Counter::default();
        registry.register(
            "xdp_fib_lookups",
            "FIB lookups of the XDP forwarder: next-hop cache misses (first datagram to a destination, after a \
             route or neighbour change, after the lifetime)",
            xdp_fib_lookups.clone(),
        );
        let xdp_next_hop_watcher_up = Gauge::default();
        registry.register(
            "xdp_next_hop_watcher_up",
            "1 while the netlink watcher keeps the XDP next-hop cache true; at 0 cached next hops follow route \
             and neighbour changes only by their lifetime",
            xdp_next_hop_watcher_up.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            xdp_outcomes,
            xdp_fib_lookups,
            xdp_next_hop_watcher_up,
            forwarded_packets,
            forwarded_bytes,
            drops,
            allocations,
            bindings,
            map_entries,
            map_capacity,
            allocations_refused,
            stun_requests,
            websocket_connections,
            websocket_refused,
            control_connected,
        }
    }

    pub fn drop(&self, reason: &'static str) {
        self.drops.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn forwarded(&self, path: PathLabels, packets: u64, bytes: u64) {
        self.forwarded_packets.get_or_create(&path).inc_by(packets);
        self.forwarded_bytes.get_or_create(&path).inc_by(bytes);
    }

    /// The text exposition format.
    #[allow(clippy::expect_used, reason = "the encoder fails only if its writer does; a String never does")]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
