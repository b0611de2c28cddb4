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
    pub control_connections: Family<ChannelLabels, Gauge>,
    pub control_messages: Family<ChannelLabels, Counter>,
    pub control_refused: Family<ChannelLabels, Counter>,
    /// Shared with the server's accept loop (`ServeOptions`).
    pub tls_handshake_failures: Counter,
    /// Connections closed at accept because too many were open (also
    /// shared with the accept loop).
    pub connections_refused: Counter,
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
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because too many were open",
            connections_refused.clone(),
        );
        Metrics {
            tls_handshake_failures,
            connections_refused,
            registry: Arc::new(registry),
            requests,
            logins,
            audit_failures,
            sessions_live,
            control_connections,
            control_messages,
            control_refused,
        }
    }

    #[allow(clippy::expect_used, reason = "the encoder fails only if its writer does; a String never does")]
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
