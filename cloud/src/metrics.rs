//! Prometheus metrics of the HTTP API.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route pattern, not the raw path, to bound cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    /// Login attempts by outcome (success, bad_credentials, throttled...).
    pub logins: Family<OutcomeLabels, Counter>,
    pub audit_failures: Counter,
    pub sessions_live: Gauge,
    /// Tunnel subnets held by sessions (the Subnets collection): zero when
    /// no session is live, else a subnet leaked.
    pub subnets_held: Gauge,
    pub control_connections: Family<ChannelLabels, Gauge>,
    pub control_messages: Family<ChannelLabels, Counter>,
    pub control_refused: Family<ChannelLabels, Counter>,
    pub control_silent: Family<ChannelLabels, Counter>,
    /// Shared with the server's accept loop (`ServeOptions`).
    pub tls_handshake_failures: Counter,
    /// Connections closed at accept because too many were open, in all
    /// (`global`) or from one address (`per_source`); the accept loop
    /// holds the counters of both labels (`ServeOptions`).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Bytes of request bodies read and held now (under the body budget,
    /// `http::extract::BodyBudget`).
    pub body_bytes_held: Gauge,
    /// Requests refused (503) because the body budget was spent, in all
    /// (`global`) or by their address (`per_source`).
    pub bodies_refused: Family<ReasonLabels, Counter>,
}

/// Which limit refused something: `global` or `per_source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl ReasonLabels {
    pub const GLOBAL: ReasonLabels = ReasonLabels { reason: "global" };
    pub const PER_SOURCE: ReasonLabels = ReasonLabels { reason: "per_source" };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// `gateway` or `relay`.
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry_cloud");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register("logins", "Login attempts by outcome", logins.clone());
        let audit_failures = Counter::default();
        registry.register(
            "audit_append_failures",
            "Audit entries that could not be written",
            audit_failures.clone(),
        );
        let sessions_live = Gauge::default();
        registry.register("sessions_live", "Sessions waiting for approval or active", sessions_live.clone());
        let subnets_held = Gauge::default();
        registry.register("subnets_held", "Tunnel subnets held by live sessions", subnets_held.clone());
        let control_connections = Family::<ChannelLabels, Gauge>::default();
        registry.register("control_connections", "Connected control channels", control_connections.clone());
        let control_messages = Family::<ChannelLabels, Counter>::default();
        registry.register("control_messages", "Control messages received", control_messages.clone());
        let control_refused = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "control_refused",
            "Control connections refused or messages dropped as malformed",
            control_refused.clone(),
        );
        let control_silent = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "control_silent",
            "Control channels closed because nothing (not even a ping) arrived for a minute",
            control_silent.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because too many were open, in all or from one address",
            connections_refused.clone(),
        );
        let body_bytes_held = Gauge::default();
        registry.register(
            "request_body_bytes_held",
            "Bytes of request bodies read and held, under the body budget",
            body_bytes_held.clone(),
        );
        let bodies_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "request_bodies_refused",
            "Requests refused (503) because the body budget was spent, in all or by their address",
            bodies_refused.clone(),
        );
        // Both reasons show from the start, at zero.
        for reason in [ReasonLabels::GLOBAL, ReasonLabels::PER_SOURCE] {
            drop(connections_refused.get_or_create(&reason));
            drop(bodies_refused.get_or_create(&reason));
        }
        Metrics {
            tls_handshake_failures,
            connections_refused,
            body_bytes_held,
            bodies_refused,
            registry: Arc::new(registry),
            requests,
            logins,
            audit_failures,
            sessions_live,
            subnets_held,
            control_connections,
            control_messages,
            control_refused,
            control_silent,
        }
    }

    #[allow(clippy::expect_used, reason = "the encoder fails only if its writer does; a String never does")]
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
