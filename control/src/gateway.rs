//! The gateway channel, `GET /api/v1/control/gateway`.
//!
//! Cloud: [`ServerHello`]. Gateway: [`GatewayHello`], signed over the
//! challenge. Cloud: [`Welcome`] (or [`ErrorMessage`] and close), then a
//! [`DesiredState`] at once and again on every change. Gateway: [`Applied`]
//! after each snapshot it applied, and [`Event`]s, which the cloud
//! acknowledges with [`EventAck`].

use std::net::{IpAddr, SocketAddr};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::codec::Message;
pub use crate::common::{Applied, ErrorCode, ErrorMessage, ServerHello, Welcome};
use crate::ids::{
    AllocationId, Challenge, ConfigId, GatewayId, IdentityKey, RelayId, SessionId, SignatureBytes, Subnet,
    Token, WgKey,
};
use crate::validate::{
    self, InvalidMessage, MAX_ITEMS, MAX_NAME_CHARS, MAX_VERSION_CHARS, Path, Problem, Validate,
};

/// Where gateways connect.
pub const PATH: &str = "/api/v1/control/gateway";

/// What the cloud sends a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToGateway {
    ServerHello(ServerHello),
    Welcome(Welcome),
    Error(ErrorMessage),
    DesiredState(DesiredState),
    EventAck(EventAck),
}

/// What a gateway sends the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromGateway {
    GatewayHello(GatewayHello),
    Applied(Applied),
    Event(Event),
}

/// The gateway's answer to [`ServerHello`]: who it is, proof of it, and
/// enough of its state that the cloud can show it before the first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayHello {
    pub gateway_id: GatewayId,
    /// The Ed25519 verifying key; the cloud compares it with the enrolled one
    /// before it checks the signature.
    pub identity_key: IdentityKey,
    /// Over [`gateway_auth_message`] for this connection's challenge.
    pub signature: SignatureBytes,
    pub software_version: String,
    /// The customer's local switch: off ends every session at the gateway,
    /// whatever the cloud wants.
    pub switch_on: bool,
    pub wg_public_key: WgKey,
    /// The newest snapshot the gateway has applied, if it kept one across the
    /// reconnect; the cloud sends a full snapshot regardless.
    pub applied_revision: Option<u64>,
}

/// The whole desired state of one gateway. Each one replaces the previous:
/// a gateway applies the one with the highest revision and drops everything
/// that is not in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// Grows with every change on the cloud, across reconnects.
    pub revision: u64,
    pub sessions: Vec<SessionState>,
    /// The STUN servers of the relays that are connected now (at most
    /// [`MAX_STUN_SERVERS`]): where the gateway learns its server-reflexive
    /// candidates. Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stun_servers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionState {
    pub session_id: SessionId,
    pub name: String,
    pub expires_ms: u64,
    /// Whether the customer must approve at the gateway before traffic flows.
    pub approval_required: bool,
    /// The cloud's view of that approval (the gateway's own record wins).
    pub approved: bool,
    /// The session's tunnel subnet.
    pub subnet: Subnet,
    /// The gateway's own address inside the subnet.
    pub gateway_address: IpAddr,
    pub targets: Vec<Target>,
    pub peers: Vec<Peer>,
    /// Who started it, for the customer who approves it. Left out when
    /// unknown (added within version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// How long it may run once active, in seconds, for the customer who
    /// approves it. Left out when unknown (added within version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
}

/// A whitelisted device, reachable from the tunnel at `proxy_address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub name: String,
    /// Its real address in the machine network.
    pub address: IpAddr,
    /// Where technicians reach it inside the tunnel.
    pub proxy_address: IpAddr,
    pub protocol: Protocol,
    /// Empty means every port; only tcp and udp have ports.
    pub ports: Vec<PortRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// One technician's WireGuard peer in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub config_id: ConfigId,
    pub user: String,
    pub public_key: WgKey,
    pub tunnel_address: IpAddr,
    pub expires_ms: u64,
    /// Set when the peer cannot reach the gateway directly and a relay
    /// forwards its traffic.
    pub relay: Option<RelayBinding>,
    /// The client's direct-path candidates as it reported them (host and
    /// server-reflexive addresses), at most [`MAX_CANDIDATES`]; the gateway
    /// probes them. Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<SocketAddr>,
}

/// Where a gateway sends a relayed peer's traffic.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayBinding {
    pub relay_id: RelayId,
    pub allocation_id: AllocationId,
    /// The relay's allocation endpoint for the gateway side.
    pub udp: SocketAddr,
    /// The relay's WebSocket fallback, for uplinks that block UDP.
    pub websocket_url: String,
    pub websocket_token: Token,
    /// SHA-256 fingerprint (`AB:CD:...`) of the relay's TLS certificate, as
    /// the relay reported it: the only way a gateway can trust a `wss://`
    /// relay, since it has no CA roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_pin: Option<String>,
}

// By hand so that the token can never reach a log through `{:?}`, even if
// someone swaps `Token` for a plain string.
impl std::fmt::Debug for RelayBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBinding")
            .field("relay_id", &self.relay_id)
            .field("allocation_id", &self.allocation_id)
            .field("udp", &self.udp)
            .field("websocket_url", &self.websocket_url)
            .field("websocket_token", &"<redacted>")
            .field("websocket_pin", &self.websocket_pin)
            .finish()
    }
}

/// A gateway-local event, kept in the gateway's durable queue until acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Strictly increasing per gateway, across restarts, so that the cloud can
    /// drop an event it already has after a resend.
    pub seq: u64,
    pub time_ms: u64,
    pub event: GatewayEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GatewayEvent {
    SwitchChanged {
        on: bool,
    },
    Approved {
        session_id: SessionId,
    },
    Denied {
        session_id: SessionId,
    },
    PeerConnected {
        session_id: SessionId,
        public_key: WgKey,
        endpoint: Option<SocketAddr>,
        /// The path the peer's datagrams take. Left out when the gateway
        /// does not know it (added within version 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathKind>,
    },
    PeerDisconnected {
        session_id: SessionId,
        public_key: WgKey,
    },
    /// A connected peer's path changed (a direct path verified, or lost and
    /// back to the relay; the UDP relay given up for its WebSocket), with
    /// where its datagrams come from now.
    PeerPath {
        session_id: SessionId,
        public_key: WgKey,
        path: PathKind,
        endpoint: Option<SocketAddr>,
    },
    /// The customer ended this one session at the gateway (its local panel
    /// or `ferry-gateway end`); the gateway stopped forwarding it. The
    /// switch stays as it is, and the other sessions go on.
    Ended {
        session_id: SessionId,
    },
    /// A login attempt on the gateway's local panel, from that browser
    /// address.
    PanelLogin {
        outcome: PanelLoginOutcome,
        from: IpAddr,
    },
    /// A logout from the gateway's local panel.
    PanelLogout {
        from: IpAddr,
    },
    /// Traffic counters since the previous `Bytes` event for the same
    /// session and target (`None`: the whole session).
    Bytes {
        session_id: SessionId,
        target: Option<String>,
        rx: u64,
        tx: u64,
    },
    Status {
        software_version: String,
        switch_on: bool,
    },
    /// The gateway's public UDP endpoints as it learned them (STUN), for
    /// direct paths; each report replaces the previous one.
    Candidates {
        endpoints: Vec<SocketAddr>,
    },
}

/// How a peer's datagrams reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Straight from the technician's client, on a path verified both ways.
    Direct,
    /// Through a relay's UDP allocation.
    UdpRelay,
    /// Through a relay's WebSocket (TCP), where UDP does not get through.
    WebsocketRelay,
}

impl PathKind {
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::UdpRelay => "udp_relay",
            PathKind::WebsocketRelay => "websocket_relay",
        }
    }
}

/// What became of a login attempt on the gateway's local panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PanelLoginOutcome {
    Success,
    /// The password was wrong (or none is set).
    BadPassword,
    /// Too soon after the last failures; the password was not checked.
    Throttled,
    /// The panel is locked after repeated failures; not checked.
    Locked,
    /// This failure locked the panel.
    LockedNow,
}

impl PanelLoginOutcome {
    pub fn label(self) -> &'static str {
        match self {
            PanelLoginOutcome::Success => "success",
            PanelLoginOutcome::BadPassword => "bad password",
            PanelLoginOutcome::Throttled => "throttled",
            PanelLoginOutcome::Locked => "locked",
            PanelLoginOutcome::LockedNow => "locked now",
        }
    }
}

/// At most this many endpoint candidates per report, and per peer.
pub const MAX_CANDIDATES: usize = 16;

/// At most this many STUN servers in a desired state.
pub const MAX_STUN_SERVERS: usize = 16;

/// The cloud has stored every event up to and including `seq`; the gateway
/// may drop them from its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventAck {
    pub seq: u64,
}

/// Domain separation: this signature can never be mistaken for one over
/// another Ferry message or another protocol version.
pub const GATEWAY_AUTH_CONTEXT: &[u8] = b"ferry-control/1 gateway-auth\0";

/// The bytes a gateway signs: context, challenge, then its id big-endian.
pub fn gateway_auth_message(challenge: &Challenge, gateway_id: GatewayId) -> Vec<u8> {
    let mut message = Vec::with_capacity(GATEWAY_AUTH_CONTEXT.len() + 32 + 8);
    message.extend_from_slice(GATEWAY_AUTH_CONTEXT);
    message.extend_from_slice(&challenge.0);
    message.extend_from_slice(&gateway_id.0.to_be_bytes());
    message
}

/// The gateway's hello for this connection's `challenge`.
pub fn sign_gateway_hello(
    signing_key: &SigningKey,
    challenge: &Challenge,
    gateway_id: GatewayId,
    software_version: impl Into<String>,
    switch_on: bool,
    wg_public_key: WgKey,
    applied_revision: Option<u64>,
) -> GatewayHello {
    let signature = signing_key.sign(&gateway_auth_message(challenge, gateway_id));
    GatewayHello {
        gateway_id,
        identity_key: IdentityKey(signing_key.verifying_key().to_bytes()),
        signature: SignatureBytes(signature.to_bytes()),
        software_version: software_version.into(),
        switch_on,
        wg_public_key,
        applied_revision,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the hello's identity key is not the one enrolled for this gateway")]
    IdentityMismatch,
    #[error("the enrolled identity key is not a valid Ed25519 public key")]
    InvalidIdentityKey,
    #[error("the hello's signature does not verify")]
    BadSignature,
}

/// Checks that `hello` was signed for `challenge` by the key enrolled for its
/// gateway id. `verify_strict` refuses weak keys and malleable signatures, so
/// one challenge has one valid signature per key.
pub fn verify_gateway_hello(
    hello: &GatewayHello,
    challenge: &Challenge,
    expected_identity_key: &[u8; 32],
) -> Result<(), AuthError> {
    if &hello.identity_key.0 != expected_identity_key {
        return Err(AuthError::IdentityMismatch);
    }
    let key = VerifyingKey::from_bytes(expected_identity_key).map_err(|_| AuthError::InvalidIdentityKey)?;
    let signature = ed25519_dalek::Signature::from_bytes(&hello.signature.0);
    key.verify_strict(&gateway_auth_message(challenge, hello.gateway_id), &signature)
        .map_err(|_| AuthError::BadSignature)
}

impl Message for ToGateway {
    const TYPES: &'static [&'static str] =
        &["server_hello", "welcome", "error", "desired_state", "event_ack"];

    fn type_name(&self) -> &'static str {
        match self {
            ToGateway::ServerHello(_) => "server_hello",
            ToGateway::Welcome(_) => "welcome",
            ToGateway::Error(_) => "error",
            ToGateway::DesiredState(_) => "desired_state",
            ToGateway::EventAck(_) => "event_ack",
        }
    }
}

impl Message for FromGateway {
    const TYPES: &'static [&'static str] = &["gateway_hello", "applied", "event"];

    fn type_name(&self) -> &'static str {
        match self {
            FromGateway::GatewayHello(_) => "gateway_hello",
            FromGateway::Applied(_) => "applied",
            FromGateway::Event(_) => "event",
        }
    }
}

impl Validate for ToGateway {
    fn validate(&self) -> Result<(), InvalidMessage> {
        match self {
            ToGateway::ServerHello(m) => m.validate(),
            ToGateway::Welcome(m) => m.validate(),
            ToGateway::Error(m) => m.validate(),
            ToGateway::DesiredState(m) => m.validate(),
            ToGateway::EventAck(_) => Ok(()),
        }
    }
}

impl Validate for FromGateway {
    fn validate(&self) -> Result<(), InvalidMessage> {
        match self {
            FromGateway::GatewayHello(m) => m.validate(),
            FromGateway::Applied(m) => m.validate(),
            FromGateway::Event(m) => m.validate(),
        }
    }
}

impl Validate for GatewayHello {
    fn validate(&self) -> Result<(), InvalidMessage> {
        validate::text(Path::Root.field("software_version"), &self.software_version, MAX_VERSION_CHARS)
    }
}

impl Validate for DesiredState {
    fn validate(&self) -> Result<(), InvalidMessage> {
        let root = Path::Root;
        let sessions = root.field("sessions");
        validate::count(sessions, self.sessions.len(), MAX_ITEMS)?;
        let peers = self.sessions.iter().map(|s| s.peers.len()).sum();
        validate::count(root.field("sessions[*].peers"), peers, MAX_ITEMS)?;
        validate::unique(sessions, self.sessions.iter().map(|s| s.session_id))?;
        for (i, session) in self.sessions.iter().enumerate() {
            session.validate_at(sessions.index(i))?;
        }
        let stun = root.field("stun_servers");
        validate::count(stun, self.stun_servers.len(), MAX_STUN_SERVERS)?;
        for (i, server) in self.stun_servers.iter().enumerate() {
            validate::unicast_endpoint(stun.index(i), server)?;
        }
        Ok(())
    }
}

impl SessionState {
    fn validate_at(&self, at: Path<'_>) -> Result<(), InvalidMessage> {
        validate::text(at.field("name"), &self.name, MAX_NAME_CHARS)?;
        if let Some(by) = &self.started_by {
            validate::text(at.field("started_by"), by, MAX_NAME_CHARS)?;
        }
        let targets = at.field("targets");
        validate::count(targets, self.targets.len(), MAX_ITEMS)?;
        validate::unique(targets, self.targets.iter().map(|t| t.name.as_str()))?;
        for (i, target) in self.targets.iter().enumerate() {
            target.validate_at(targets.index(i))?;
        }
        let peers = at.field("peers");
        validate::count(peers, self.peers.len(), MAX_ITEMS)?;
        validate::unique(peers, self.peers.iter().map(|p| p.public_key))?;
        for (i, peer) in self.peers.iter().enumerate() {
            peer.validate_at(peers.index(i))?;
        }
        Ok(())
    }
}

impl Validate for SessionState {
    fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_at(Path::Root)
    }
}

impl Target {
    fn validate_at(&self, at: Path<'_>) -> Result<(), InvalidMessage> {
        validate::text(at.field("name"), &self.name, MAX_NAME_CHARS)?;
        let ports = at.field("ports");
        validate::count(ports, self.ports.len(), MAX_ITEMS)?;
        if !self.ports.is_empty() && !matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(ports.fail(Problem::PortsNotApplicable));
        }
        for (i, range) in self.ports.iter().enumerate() {
            range.validate_at(ports.index(i))?;
        }
        Ok(())
    }
}

impl Validate for Target {
    fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_at(Path::Root)
    }
}

impl PortRange {
    fn validate_at(&self, at: Path<'_>) -> Result<(), InvalidMessage> {
        if self.first == 0 || self.first > self.last {
            return Err(at.fail(Problem::PortRange { first: self.first, last: self.last }));
        }
        Ok(())
    }
}

impl Validate for PortRange {
    fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_at(Path::Root)
    }
}

impl Peer {
    fn validate_at(&self, at: Path<'_>) -> Result<(), InvalidMessage> {
        validate::text(at.field("user"), &self.user, MAX_NAME_CHARS)?;
        if let Some(relay) = &self.relay {
            relay.validate_at(at.field("relay"))?;
        }
        let candidates = at.field("candidates");
        validate::count(candidates, self.candidates.len(), MAX_CANDIDATES)?;
        for (i, candidate) in self.candidates.iter().enumerate() {
            validate::unicast_endpoint(candidates.index(i), candidate)?;
        }
        Ok(())
    }
}

impl Validate for Peer {
    fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_at(Path::Root)
    }
}

impl RelayBinding {
    fn validate_at(&self, at: Path<'_>) -> Result<(), InvalidMessage> {
        validate::endpoint(at.field("udp"), &self.udp)?;
        validate::websocket_url(at.field("websocket_url"), &self.websocket_url)?;
        validate::token(at.field("websocket_token"), self.websocket_token.expose())?;
        if let Some(pin) = &self.websocket_pin {
            validate::fingerprint(at.field("websocket_pin"), pin)?;
        }
        Ok(())
    }
}

impl Validate for RelayBinding {
    fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_at(Path::Root)
    }
}

impl Validate for Event {
    fn validate(&self) -> Result<(), InvalidMessage> {
        let at = Path::Root.field("event");
        match &self.event {
            GatewayEvent::Bytes { target: Some(target), .. } => {
                validate::text(at.field("target"), target, MAX_NAME_CHARS)
            }
            GatewayEvent::Status { software_version, .. } => {
                validate::text(at.field("software_version"), software_version, MAX_VERSION_CHARS)
            }
            GatewayEvent::Candidates { endpoints } => {
                validate::count(at.field("endpoints"), endpoints.len(), MAX_CANDIDATES)?;
                for (i, endpoint) in endpoints.iter().enumerate() {
                    validate::endpoint(at.field("endpoints").index(i), endpoint)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeError, decode, decode_valid, encode};

    fn key(n: u8) -> WgKey {
        WgKey([n; 32])
    }

    fn session() -> SessionState {
        SessionState {
            session_id: SessionId(1),
            name: "Line 3 PLC update".into(),
            expires_ms: 1_800_000_000_000,
            approval_required: true,
            approved: false,
            subnet: "10.77.0.0/24".parse().unwrap(),
            gateway_address: "10.77.0.1".parse().unwrap(),
            targets: vec![Target {
                name: "plc".into(),
                address: "192.168.10.5".parse().unwrap(),
                proxy_address: "10.77.0.100".parse().unwrap(),
                protocol: Protocol::Tcp,
                ports: vec![PortRange { first: 102, last: 102 }, PortRange { first: 502, last: 503 }],
            }],
            peers: vec![Peer {
                config_id: ConfigId(9),
                user: "tech@builder.example".into(),
                public_key: key(1),
                tunnel_address: "10.77.0.2".parse().unwrap(),
                expires_ms: 1_800_000_000_000,
                relay: Some(RelayBinding {
                    relay_id: RelayId(3),
                    allocation_id: AllocationId(4),
                    udp: "198.51.100.7:40000".parse().unwrap(),
                    websocket_url: "wss://relay.example/ws".into(),
                    websocket_token: Token::new("s3cret-token"),
                    websocket_pin: Some(crate::pin::format_fingerprint(&[0xcd; 32])),
                }),
                candidates: vec![
                    "192.0.2.50:51820".parse().unwrap(),
                    "[2001:db8::50]:51820".parse().unwrap(),
                ],
            }],
            started_by: Some("tech@builder.example".into()),
            max_duration_s: Some(3600),
        }
    }

    fn state(sessions: Vec<SessionState>) -> ToGateway {
        ToGateway::DesiredState(DesiredState {
            revision: 5,
            sessions,
            stun_servers: vec!["198.51.100.7:3478".parse().unwrap()],
        })
    }

    #[test]
    fn desired_state_round_trips_and_reads_naturally() {
        let msg = state(vec![session()]);
        let frame = encode(&msg);
        assert!(frame.starts_with(r#"{"v":1,"type":"desired_state","revision":5,"sessions":[{"#), "{frame}");
        assert!(frame.contains(r#""subnet":"10.77.0.0/24""#), "{frame}");
        assert!(frame.contains(r#""protocol":"tcp""#), "{frame}");
        assert!(frame.contains(r#""udp":"198.51.100.7:40000""#), "{frame}");
        assert_eq!(decode_valid::<ToGateway>(&frame).unwrap(), msg);
    }

    #[test]
    fn a_relay_binding_without_a_pin_still_parses() {
        // What a cloud that predates the pin sends.
        let mut s = session();
        s.peers[0].relay.as_mut().unwrap().websocket_pin = None;
        let frame = encode(&state(vec![s.clone()]));
        assert!(!frame.contains("websocket_pin"), "{frame}");
        assert_eq!(decode_valid::<ToGateway>(&frame).unwrap(), state(vec![s]));
        let pinned = encode(&state(vec![session()]));
        assert!(pinned.contains(r#""websocket_pin":"CD:CD:"#), "{pinned}");
    }

    #[test]
    fn candidates_and_stun_servers_are_optional_and_checked() {
        let frame = encode(&state(vec![session()]));
        assert!(frame.contains(r#""candidates":["192.0.2.50:51820","[2001:db8::50]:51820"]"#), "{frame}");
        assert!(frame.contains(r#""stun_servers":["198.51.100.7:3478"]"#), "{frame}");

        // Empty lists are left out, and a cloud that predates them sends none.
        let mut s = session();
        s.peers[0].candidates.clear();
        let bare =
            ToGateway::DesiredState(DesiredState { revision: 5, sessions: vec![s], stun_servers: vec![] });
        let frame = encode(&bare);
        assert!(!frame.contains("candidates") && !frame.contains("stun_servers"), "{frame}");
        assert_eq!(decode_valid::<ToGateway>(&frame).unwrap(), bare);

        let mut s = session();
        s.peers[0].candidates = (1..=17).map(|i| SocketAddr::from(([192, 0, 2, i], 51820))).collect();
        let err = state(vec![s]).validate().unwrap_err();
        assert_eq!(err.field, "sessions[0].peers[0].candidates");
        assert_eq!(err.problem, Problem::TooMany { count: 17, max: MAX_CANDIDATES });

        let mut s = session();
        s.peers[0].candidates[1] = "[ff02::1]:51820".parse().unwrap();
        let err = state(vec![s]).validate().unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.problem),
            ("sessions[0].peers[0].candidates[1]", Problem::NotUnicast)
        );

        let mut s = session();
        s.peers[0].candidates[0] = "192.0.2.50:0".parse().unwrap();
        assert_eq!(state(vec![s]).validate().unwrap_err().problem, Problem::PortZero);

        let too_many = DesiredState {
            revision: 1,
            sessions: vec![],
            stun_servers: (1..=17).map(|i| SocketAddr::from(([198, 51, 100, i], 3478))).collect(),
        };
        assert_eq!(too_many.validate().unwrap_err().field, "stun_servers");
        let unspecified = DesiredState {
            revision: 1,
            sessions: vec![],
            stun_servers: vec!["0.0.0.0:3478".parse().unwrap()],
        };
        let err = unspecified.validate().unwrap_err();
        assert_eq!((err.field.as_str(), err.problem), ("stun_servers[0]", Problem::NotUnicast));
    }

    #[test]
    fn debug_never_shows_the_websocket_token() {
        let text = format!("{:?}", state(vec![session()]));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn events_are_tagged_by_kind() {
        let msg = FromGateway::Event(Event {
            seq: 12,
            time_ms: 1_700_000_000_000,
            event: GatewayEvent::PeerConnected {
                session_id: SessionId(1),
                public_key: key(2),
                endpoint: Some("203.0.113.9:51820".parse().unwrap()),
                path: Some(PathKind::UdpRelay),
            },
        });
        let frame = encode(&msg);
        assert!(frame.contains(r#""event":{"kind":"peer_connected","session_id":1,"#), "{frame}");
        assert!(frame.contains(r#""path":"udp_relay""#), "{frame}");
        assert_eq!(decode_valid::<FromGateway>(&frame).unwrap(), msg);
        let unknown = frame.replace("\"endpoint\"", "\"endpoint\":null,\"extra\"");
        assert!(decode::<FromGateway>(&unknown).is_err(), "{unknown}");
    }

    #[test]
    fn a_peer_without_a_known_path_is_sent_as_before() {
        let event = |path| GatewayEvent::PeerConnected {
            session_id: SessionId(1),
            public_key: key(2),
            endpoint: None,
            path,
        };
        let msg = FromGateway::Event(Event { seq: 1, time_ms: 2, event: event(None) });
        let frame = encode(&msg);
        assert!(!frame.contains("path"), "an older cloud must get what it knows: {frame}");
        assert_eq!(decode_valid::<FromGateway>(&frame).unwrap(), msg);
    }

    #[test]
    fn the_customers_end_and_panel_logins_are_events() {
        let cases = [
            (GatewayEvent::Ended { session_id: SessionId(9) }, r#"{"kind":"ended","session_id":9}"#),
            (
                GatewayEvent::PeerPath {
                    session_id: SessionId(9),
                    public_key: key(2),
                    path: PathKind::WebsocketRelay,
                    endpoint: None,
                },
                r#"{"kind":"peer_path","session_id":9,"public_key":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","path":"websocket_relay","endpoint":null}"#,
            ),
            (
                GatewayEvent::PanelLogin {
                    outcome: PanelLoginOutcome::LockedNow,
                    from: "192.168.0.20".parse().unwrap(),
                },
                r#"{"kind":"panel_login","outcome":"locked_now","from":"192.168.0.20"}"#,
            ),
            (
                GatewayEvent::PanelLogout { from: "192.168.0.20".parse().unwrap() },
                r#"{"kind":"panel_logout","from":"192.168.0.20"}"#,
            ),
        ];
        for (event, json) in cases {
            let msg = FromGateway::Event(Event { seq: 3, time_ms: 4, event });
            let frame = encode(&msg);
            assert!(frame.ends_with(&format!(r#""event":{json}}}"#)), "{frame}");
            assert_eq!(decode_valid::<FromGateway>(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn unknown_fields_are_refused_in_nested_structs() {
        let frame = encode(&state(vec![session()])).replace(r#""first":102,"#, r#""first":102,"step":1,"#);
        let err = decode::<ToGateway>(&frame).unwrap_err();
        assert!(matches!(&err, DecodeError::UnknownField { detail, .. } if detail.contains("step")), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = session();
        s.targets[0].ports[1] = PortRange { first: 600, last: 500 };
        let err = decode_valid::<ToGateway>(&encode(&state(vec![s]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`desired_state` message breaks a protocol limit: invalid `sessions[0].targets[0].ports[1]`: \
             port range 600-500 must satisfy 1 <= first <= last"
        );

        let mut s = session();
        s.targets[0].ports[0].first = 0;
        assert!(state(vec![s]).validate().is_err());

        let mut s = session();
        s.targets[0].protocol = Protocol::Icmp;
        assert_eq!(state(vec![s]).validate().unwrap_err().problem, Problem::PortsNotApplicable);

        let mut s = session();
        s.targets[0].protocol = Protocol::Any;
        s.targets[0].ports.clear();
        assert!(state(vec![s]).validate().is_ok());

        let mut s = session();
        s.name = "x".repeat(129);
        assert_eq!(state(vec![s]).validate().unwrap_err().field, "sessions[0].name");

        let mut s = session();
        s.peers[0].relay.as_mut().unwrap().websocket_url = "https://relay.example".into();
        assert_eq!(state(vec![s]).validate().unwrap_err().field, "sessions[0].peers[0].relay.websocket_url");

        let mut s = session();
        s.peers[0].relay.as_mut().unwrap().websocket_token = Token::new("t".repeat(257));
        assert!(state(vec![s]).validate().is_err());

        let mut s = session();
        s.peers[0].relay.as_mut().unwrap().websocket_token = Token::new("");
        assert!(state(vec![s]).validate().is_err());

        let mut s = session();
        s.peers[0].relay.as_mut().unwrap().websocket_pin = Some("AB:CD".into());
        let err = decode_valid::<ToGateway>(&encode(&state(vec![s]))).unwrap_err();
        assert!(err.to_string().contains("`sessions[0].peers[0].relay.websocket_pin`"), "{err}");

        let mut s = session();
        s.peers.push(s.peers[0].clone());
        assert!(matches!(state(vec![s]).validate().unwrap_err().problem, Problem::Duplicate(_)));

        assert!(matches!(
            state(vec![session(), session()]).validate().unwrap_err().problem,
            Problem::Duplicate(_)
        ));
    }

    #[test]
    fn counts_are_capped_over_the_whole_message() {
        let mut sessions = Vec::new();
        for i in 0..3 {
            let mut s = session();
            s.session_id = SessionId(i);
            s.peers = (0..1500u32)
                .map(|n| {
                    let mut peer = s.peers[0].clone();
                    peer.public_key = WgKey([n as u8; 32]);
                    peer.public_key.0[1] = (n >> 8) as u8;
                    peer
                })
                .collect();
            sessions.push(s);
        }
        let err = state(sessions).validate().unwrap_err();
        assert_eq!(err.problem, Problem::TooMany { count: 4500, max: MAX_ITEMS });

        let many = (0..=MAX_ITEMS as u64)
            .map(|i| SessionState { session_id: SessionId(i), peers: vec![], ..session() })
            .collect();
        assert!(matches!(state(many).validate().unwrap_err().problem, Problem::TooMany { .. }));
    }

    #[test]
    fn hello_signature_verifies_for_its_challenge_only() {
        let signing_key = SigningKey::from_bytes(&[7; 32]);
        let enrolled = signing_key.verifying_key().to_bytes();
        let challenge = Challenge([3; 32]);
        let hello = sign_gateway_hello(&signing_key, &challenge, GatewayId(11), "0.1.0", true, key(5), None);
        assert_eq!(verify_gateway_hello(&hello, &challenge, &enrolled), Ok(()));
        assert_eq!(
            verify_gateway_hello(&hello, &Challenge([4; 32]), &enrolled),
            Err(AuthError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        assert_eq!(verify_gateway_hello(&hello, &challenge, &other), Err(AuthError::IdentityMismatch));
        let moved = GatewayHello { gateway_id: GatewayId(12), ..hello.clone() };
        assert_eq!(verify_gateway_hello(&moved, &challenge, &enrolled), Err(AuthError::BadSignature));

        let frame = encode(&FromGateway::GatewayHello(hello.clone()));
        assert!(frame.contains(&format!(r#""identity_key":"{}""#, hex::encode(enrolled))), "{frame}");
        assert_eq!(decode_valid::<FromGateway>(&frame).unwrap(), FromGateway::GatewayHello(hello));
    }

    #[test]
    fn auth_message_layout() {
        let message = gateway_auth_message(&Challenge([0xaa; 32]), GatewayId(0x0102030405060708));
        assert_eq!(&message[..29], b"ferry-control/1 gateway-auth\0");
        assert_eq!(&message[29..61], &[0xaa; 32]);
        assert_eq!(&message[61..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn every_type_name_is_listed_and_matches_serde() {
        let msgs = [
            ToGateway::ServerHello(ServerHello { challenge: Challenge([0; 32]), server_time_ms: 1 }),
            ToGateway::Welcome(Welcome { peer_id: 1 }),
            ToGateway::Error(ErrorMessage { code: ErrorCode::Replaced, message: String::new() }),
            state(vec![]),
            ToGateway::EventAck(EventAck { seq: 3 }),
        ];
        for msg in msgs {
            let frame = encode(&msg);
            assert!(frame.contains(&format!(r#""type":"{}""#, msg.type_name())), "{frame}");
            assert!(ToGateway::TYPES.contains(&msg.type_name()));
        }
        assert!(
            encode(&ToGateway::Error(ErrorMessage { code: ErrorCode::Replaced, message: "x".into() }))
                .contains(r#""code":"replaced""#)
        );
    }
}
