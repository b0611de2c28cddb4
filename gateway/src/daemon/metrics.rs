//! The gateway's Prometheus metrics at `/metrics` (127.0.0.1:9479 by
//! default, `metrics.listen = "off"` to disable), plus `/healthz`.
//!
//! The daemon task refreshes them every 2 s from what it owns (the plan,
//! the engine, the eBPF counters, the event queue); a scrape never waits for
//! it.

use std::sync::Arc;

use ferry_tunnel::{endpoint::EndpointStats, proto::device::Drop};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub switch_on: Gauge,
    pub cloud_connected: Gauge,
    pub sessions: Family<StatusLabels, Gauge>,
    pub peers_connected: Gauge,
    /// Audit events waiting for the cloud's acknowledgement.
    pub audit_pending: Gauge,
    /// What the forwarding programs did with each packet, by outcome.
    pub packets: Family<OutcomeLabels, Counter>,
    pub local_refused: Counter,
    pub local_malformed: Counter,
    /// What the uplink guard did with each packet, by outcome.
    pub guard_packets: Family<OutcomeLabels, Counter>,
    pub guard_indices: Gauge,
    pub guard_follows_indices: Gauge,
    pub guard_map_errors: Counter,
    pub guard_probe_tags: Gauge,
    pub guard_stun_servers: Gauge,
    pub guard_rule_map_errors: Counter,
    /// Live peers by the path their packets take.
    pub paths: Family<PathLabels, Gauge>,
    pub probes_sent: Counter,
    pub probes_received: Counter,
    /// Path probes dropped, by reason.
    pub probe_drops: Family<ReasonLabels, Counter>,
    pub stun_requests: Counter,
    pub stun_answers: Counter,
    /// STUN datagrams dropped: `unmatched` (no request of ours) or `failed`.
    pub stun_drops: Family<ReasonLabels, Counter>,
    pub side_other: Counter,
    pub transport_switches: Counter,
    pub relay_rebinds: Counter,
    pub candidates: Gauge,
    /// WireGuard handshake messages with a valid mac1, cookie replies sent
    /// while under load, and initiations refused by the per-source rate
    /// limit: a handshake flood shows here.
    pub wg_handshakes: Counter,
    pub wg_cookie_replies: Counter,
    pub wg_rate_limited: Counter,
    /// Datagrams the WireGuard device dropped, by reason.
    pub wg_drops: Family<ReasonLabels, Counter>,
    /// Packets the tunnel endpoint dropped before or after the device (TUN
    /// reads it could not split, the side channel full, virtual transports).
    pub tunnel_drops: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry_gateway");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            switch_on: Gauge::default(),
            cloud_connected: Gauge::default(),
            sessions: Family::default(),
            peers_connected: Gauge::default(),
            audit_pending: Gauge::default(),
            packets: Family::default(),
            local_refused: Counter::default(),
            local_malformed: Counter::default(),
            guard_packets: Family::default(),
            guard_indices: Gauge::default(),
            guard_follows_indices: Gauge::default(),
            guard_map_errors: Counter::default(),
            guard_probe_tags: Gauge::default(),
            guard_stun_servers: Gauge::default(),
            guard_rule_map_errors: Counter::default(),
            paths: Family::default(),
            probes_sent: Counter::default(),
            probes_received: Counter::default(),
            probe_drops: Family::default(),
            stun_requests: Counter::default(),
            stun_answers: Counter::default(),
            stun_drops: Family::default(),
            side_other: Counter::default(),
            transport_switches: Counter::default(),
            relay_rebinds: Counter::default(),
            candidates: Gauge::default(),
            wg_handshakes: Counter::default(),
            wg_cookie_replies: Counter::default(),
            wg_rate_limited: Counter::default(),
            wg_drops: Family::default(),
            tunnel_drops: Family::default(),
        };
        registry.register(
            "switch_on",
            "1 while the customer's switch allows remote maintenance",
            m.switch_on.clone(),
        );
        registry.register(
            "cloud_connected",
            "1 while the control channel to the cloud is up",
            m.cloud_connected.clone(),
        );
        registry.register("sessions", "Sessions in the desired state, by local status", m.sessions.clone());
        registry.register(
            "peers_connected",
            "Technician peers with a live WireGuard session",
            m.peers_connected.clone(),
        );
        registry.register(
            "audit_pending",
            "Audit events queued until the cloud acknowledges them",
            m.audit_pending.clone(),
        );
        registry.register(
            "packets",
            "Packets the forwarding programs handled, by outcome (forwarded or the drop reason)",
            m.packets.clone(),
        );
        registry.register(
            "local_refused",
            "Connections to the local control socket refused (not root)",
            m.local_refused.clone(),
        );
        registry.register(
            "local_malformed",
            "Malformed requests on the local control socket",
            m.local_malformed.clone(),
        );
        registry.register(
            "guard_packets",
            "Packets the uplink guard handled, by outcome (pass, allow or the drop reason)",
            m.guard_packets.clone(),
        );
        registry.register(
            "guard_indices",
            "Local WireGuard receiver indices the uplink guard knows as live",
            m.guard_indices.clone(),
        );
        registry.register(
            "guard_follows_indices",
            "1 while the uplink guard drops messages to receiver indices the engine does not hold",
            m.guard_follows_indices.clone(),
        );
        registry.register(
            "guard_map_errors",
            "Index updates the uplink guard's map refused (each turns the index rule off)",
            m.guard_map_errors.clone(),
        );
        registry.register(
            "guard_probe_tags",
            "Receiver tags of live path agents whose probes the uplink guard lets through",
            m.guard_probe_tags.clone(),
        );
        registry.register(
            "guard_stun_servers",
            "STUN servers whose Binding answers the uplink guard lets through",
            m.guard_stun_servers.clone(),
        );
        registry.register(
            "guard_rule_map_errors",
            "Probe tag and STUN server updates the uplink guard's maps refused (each leaves that entry out)",
            m.guard_rule_map_errors.clone(),
        );
        registry.register(
            "paths",
            "Live technician peers by the path their packets take (direct, udp-relay, websocket-relay, none)",
            m.paths.clone(),
        );
        registry.register("probe_drops", "Direct-path probes dropped, by reason", m.probe_drops.clone());
        registry.register(
            "stun_drops",
            "STUN datagrams dropped: unmatched (no request of ours) or failed (an error answer)",
            m.stun_drops.clone(),
        );
        let traversal_counters = [
            ("probes_sent", "Direct-path probes sent (pings and pongs)", &m.probes_sent),
            (
                "probes_received",
                "Valid direct-path probes received (fresh pings, and pongs that answered our pings)",
                &m.probes_received,
            ),
            ("stun_requests", "STUN Binding requests sent from the WireGuard socket", &m.stun_requests),
            (
                "stun_answers",
                "STUN answers taken (from the server asked, with our transaction id)",
                &m.stun_answers,
            ),
            (
                "side_other",
                "Datagrams on the WireGuard socket that were neither WireGuard, a probe nor STUN (dropped)",
                &m.side_other,
            ),
            (
                "transport_switches",
                "Moves between the UDP and the WebSocket relay in auto transport",
                &m.transport_switches,
            ),
            (
                "relay_rebinds",
                "Handshakes started through the relay because the gateway's address changed (its NAT mapped it anew, as STUN showed): a relay moves a binding only with a handshake",
                &m.relay_rebinds,
            ),
        ];
        let wireguard_counters = [
            (
                "wireguard_handshakes",
                "WireGuard handshake messages received with a valid mac1",
                &m.wg_handshakes,
            ),
            (
                "wireguard_cookie_replies",
                "WireGuard cookie replies sent: under a handshake flood, initiations without a valid mac2",
                &m.wg_cookie_replies,
            ),
            (
                "wireguard_handshakes_rate_limited",
                "WireGuard initiations with a valid cookie refused by the per-source rate limit",
                &m.wg_rate_limited,
            ),
        ];
        for (name, help, counter) in traversal_counters.into_iter().chain(wireguard_counters) {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "wireguard_dropped",
            "Datagrams the WireGuard device dropped, by reason (handshake and session errors one label each)",
            m.wg_drops.clone(),
        );
        registry.register(
            "tunnel_dropped",
            "Packets the tunnel endpoint dropped: tun_malformed and tun_no_room (TUN reads that could not be \
             split into packets), side_channel_full, virtual_unroutable, virtual_spoofed",
            m.tunnel_drops.clone(),
        );
        registry.register(
            "candidates",
            "Direct-path candidates of this gateway (host and server-reflexive)",
            m.candidates.clone(),
        );
        Metrics { registry: Arc::new(registry), ..m }
    }

    /// Moves a counter to `total` (the eBPF counters are totals since load).
    pub fn count_to(counter: &Counter, total: u64) {
        let now = counter.get();
        if total > now {
            counter.inc_by(total - now);
        }
    }

    /// The device's drops by label. Several reasons share a label (every
    /// handshake error is `handshake`), so they are summed first.
    pub fn count_wireguard_drops(&self, drops: &std::collections::HashMap<Drop, u64>) {
        // Every label from the start, so that the first drops show as an
        // increase from zero.
        let mut by_label: std::collections::BTreeMap<&'static str, u64> =
            Drop::LABELS.iter().map(|&label| (label, 0)).collect();
        for (reason, n) in drops {
            *by_label.entry(reason.label()).or_default() += n;
        }
        for (reason, total) in by_label {
            Metrics::count_to(&self.wg_drops.get_or_create(&ReasonLabels { reason }), total);
        }
    }

    /// The endpoint's drops; every reason is exported, zero or not, so that
    /// an alert can be written before the first drop.
    pub fn count_endpoint_drops(&self, stats: &EndpointStats) {
        for (reason, total) in [
            ("tun_malformed", stats.tun_malformed),
            ("tun_no_room", stats.tun_no_room),
            ("side_channel_full", stats.side_dropped),
            ("virtual_unroutable", stats.virtual_unroutable),
            ("virtual_spoofed", stats.virtual_spoofed),
        ] {
            Metrics::count_to(&self.tunnel_drops.get_or_create(&ReasonLabels { reason }), total);
        }
    }

    #[allow(clippy::expect_used, reason = "the encoder fails only if its writer does; a String never does")]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_totals_and_encode() {
        let m = Metrics::new();
        let c = m.packets.get_or_create(&OutcomeLabels { outcome: "not_whitelisted" }).clone();
        Metrics::count_to(&c, 5);
        Metrics::count_to(&c, 3);
        Metrics::count_to(&c, 9);
        m.switch_on.set(1);
        Metrics::count_to(&m.wg_cookie_replies, 4001);
        let text = m.encode();
        assert!(text.contains("ferry_gateway_wireguard_cookie_replies_total 4001"), "{text}");
        assert!(text.contains("ferry_gateway_wireguard_handshakes_total 0"), "{text}");
        assert!(text.contains("ferry_gateway_packets_total{outcome=\"not_whitelisted\"} 9"), "{text}");
        assert!(text.contains("ferry_gateway_switch_on 1"), "{text}");
    }

    #[test]
    fn drops_are_exported_by_reason_with_shared_labels_summed() {
        use ferry_tunnel::proto::{handshake::HandshakeError, session::SessionError};
        let m = Metrics::new();
        let drops = [
            (Drop::Handshake(HandshakeError::Decrypt), 2),
            (Drop::Handshake(HandshakeError::UnknownPeer), 3),
            (Drop::Session(SessionError::Expired), 1),
            (Drop::Malformed, 7),
        ]
        .into_iter()
        .collect();
        m.count_wireguard_drops(&drops);
        m.count_endpoint_drops(&EndpointStats { tun_malformed: 4, ..EndpointStats::default() });
        let text = m.encode();
        for line in [
            "ferry_gateway_wireguard_dropped_total{reason=\"handshake\"} 5",
            "ferry_gateway_wireguard_dropped_total{reason=\"session\"} 1",
            "ferry_gateway_wireguard_dropped_total{reason=\"malformed\"} 7",
            "ferry_gateway_tunnel_dropped_total{reason=\"tun_malformed\"} 4",
            "ferry_gateway_tunnel_dropped_total{reason=\"tun_no_room\"} 0",
            "ferry_gateway_wireguard_dropped_total{reason=\"bad_mac1\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
