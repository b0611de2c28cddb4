//! The relay channel, `GET /api/v1/control/relay`.
//!
//! Cloud: [`ServerHello`]. Relay: [`RelayHello`] with its token. Cloud:
//! [`Welcome`] (or [`ErrorMessage`] and close), then [`DesiredAllocations`]
//! at once and again on every change. Relay: [`Applied`] after each snapshot,
//! [`AllocationReady`] or [`AllocationRefused`] per new allocation, and
//! [`Health`] now and then.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::Message;
pub use crate::common::{Applied, ErrorCode, ErrorMessage, ServerHello, Welcome};
use crate::ids::{AllocationId, RelayId, SessionId, Token, WgKey};
use crate::validate::{self, InvalidMessage, MAX_ITEMS, MAX_TEXT_CHARS, MAX_VERSION_CHARS, Path, Validate};

/// Where relays connect.
pub const PATH: &str = "/api/v1/control/relay";

/// What the cloud sends a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToRelay {
    ServerHello(ServerHello),
    Welcome(Welcome),
    Error(ErrorMessage),
    DesiredAllocations(DesiredAllocations),
}

/// What a relay sends the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromRelay {
    RelayHello(RelayHello),
    Applied(Applied),
    AllocationReady(AllocationReady),
    AllocationRefused(AllocationRefused),
    Health(Health),
}

/// A relay's answer to [`ServerHello`]. Relays are cloud-operated and
/// authenticate with a bearer token over the pinned TLS connection.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayHello {
    pub relay_id: RelayId,
    pub token: Token,
    pub software_version: String,
    /// The relay's public UDP address.
    pub udp: SocketAddr,
    /// The relay's WebSocket fallback for peers whose uplinks block UDP.
    pub websocket_url: String,
    /// SHA-256 fingerprint (`AB:CD:...`) of the WebSocket listener's TLS
    /// certificate, when the relay serves TLS itself: peers have no CA roots
    /// and can only use a `wss://` relay whose certificate they can pin.
    /// Absent from relays that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_pin: Option<String>,
    /// How many allocations it can hold.
    pub capacity: u32,
    /// The public address of the relay's STUN server (RFC 8489 Binding),
    /// where peers learn their server-reflexive candidates. Absent when the
    /// relay runs none, and from relays that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stun: Option<SocketAddr>,
}

// By hand so that the token can never reach a log through `{:?}`.
impl fmt::Debug for RelayHello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHello")
            .field("relay_id", &self.relay_id)
            .field("token", &"<redacted>")
            .field("software_version", &self.software_version)
            .field("udp", &self.udp)
            .field("websocket_url", &self.websocket_url)
            .field("websocket_pin", &self.websocket_pin)
            .field("capacity", &self.capacity)
            .field("stun", &self.stun)
            .finish()
    }
}

/// Every allocation the relay should hold; allocations not listed are torn
/// down. The relay applies the one with the highest revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredAllocations {
    pub revision: u64,
    pub allocations: Vec<Allocation>,
}

/// A forwarding pair between one gateway and one client key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    pub id: AllocationId,
    pub session_id: SessionId,
    pub gateway_key: WgKey,
    pub client_key: WgKey,
    pub expires_ms: u64,
    /// What a client presents on the relay's WebSocket fallback.
    pub websocket_token: Token,
}

// By hand so that the token can never reach a log through `{:?}`.
impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocation")
            .field("id", &self.id)
            .field("session_id", &self.session_id)
            .field("gateway_key", &self.gateway_key)
            .field("client_key", &self.client_key)
            .field("expires_ms", &self.expires_ms)
            .field("websocket_token", &"<redacted>")
            .finish()
    }
}

/// The allocation forwards: the gateway sends to `gateway_endpoint`, the
/// client to `client_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationReady {
    pub id: AllocationId,
    pub gateway_endpoint: SocketAddr,
    pub client_endpoint: SocketAddr,
}

/// The relay cannot hold the allocation (for example its binding map is full).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationRefused {
    pub id: AllocationId,
    pub reason: String,
}

/// Counters since the relay started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub bindings: u64,
    pub capacity: u32,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub drops: u64,
}

impl Message for ToRelay {
    const TYPES: &'static [&'static str] = &["server_hello", "welcome", "error", "desired_allocations"];

    fn type_name(&self) -> &'static str {
        match self {
            ToRelay::ServerHello(_) => "server_hello",
            ToRelay::Welcome(_) => "welcome",
            ToRelay::Error(_) => "error",
            ToRelay::DesiredAllocations(_) => "desired_allocations",
        }
    }
}

impl Message for FromRelay {
    const TYPES: &'static [&'static str] =
        &["relay_hello", "applied", "allocation_ready", "allocation_refused", "health"];

    fn type_name(&self) -> &'static str {
        match self {
            FromRelay::RelayHello(_) => "relay_hello",
            FromRelay::Applied(_) => "applied",
            FromRelay::AllocationReady(_) => "allocation_ready",
            FromRelay::AllocationRefused(_) => "allocation_refused",
            FromRelay::Health(_) => "health",
        }
    }
}

impl Validate for ToRelay {
    fn validate(&self) -> Result<(), InvalidMessage> {
        match self {
            ToRelay::ServerHello(m) => m.validate(),
            ToRelay::Welcome(m) => m.validate(),
            ToRelay::Error(m) => m.validate(),
            ToRelay::DesiredAllocations(m) => m.validate(),
        }
    }
}

impl Validate for FromRelay {
    fn validate(&self) -> Result<(), InvalidMessage> {
        match self {
            FromRelay::RelayHello(m) => m.validate(),
            FromRelay::Applied(m) => m.validate(),
            FromRelay::AllocationReady(m) => m.validate(),
            FromRelay::AllocationRefused(m) => m.validate(),
            FromRelay::Health(_) => Ok(()),
        }
    }
}

impl Validate for RelayHello {
    fn validate(&self) -> Result<(), InvalidMessage> {
        let root = Path::Root;
        validate::token(root.field("token"), self.token.expose())?;
        validate::text(root.field("software_version"), &self.software_version, MAX_VERSION_CHARS)?;
        validate::endpoint(root.field("udp"), &self.udp)?;
        validate::websocket_url(root.field("websocket_url"), &self.websocket_url)?;
        // A wss:// URL without a pin is allowed (the certificate may be
        // CA-signed), though gateways will not use such a relay over TLS.
        if let Some(pin) = &self.websocket_pin {
            validate::fingerprint(root.field("websocket_pin"), pin)?;
        }
        if let Some(stun) = &self.stun {
            validate::unicast_endpoint(root.field("stun"), stun)?;
        }
        Ok(())
    }
}

impl Validate for DesiredAllocations {
    fn validate(&self) -> Result<(), InvalidMessage> {
        let allocations = Path::Root.field("allocations");
        validate::count(allocations, self.allocations.len(), MAX_ITEMS)?;
        validate::unique(allocations, self.allocations.iter().map(|a| a.id))?;
        for (i, allocation) in self.allocations.iter().enumerate() {
            allocation.validate_at(allocations.index(i))?;
        }
        Ok(())
    }
}

impl Allocation {
    fn validate_at(&self, at: Path<'_>) -> Result<(), InvalidMessage> {
        validate::token(at.field("websocket_token"), self.websocket_token.expose())
    }
}

impl Validate for Allocation {
    fn validate(&self) -> Result<(), InvalidMessage> {
        self.validate_at(Path::Root)
    }
}

impl Validate for AllocationReady {
    fn validate(&self) -> Result<(), InvalidMessage> {
        validate::endpoint(Path::Root.field("gateway_endpoint"), &self.gateway_endpoint)?;
        validate::endpoint(Path::Root.field("client_endpoint"), &self.client_endpoint)
    }
}

impl Validate for AllocationRefused {
    fn validate(&self) -> Result<(), InvalidMessage> {
        validate::text(Path::Root.field("reason"), &self.reason, MAX_TEXT_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_valid, encode};
    use crate::validate::Problem;

    fn allocation(id: u64) -> Allocation {
        Allocation {
            id: AllocationId(id),
            session_id: SessionId(1),
            gateway_key: WgKey([1; 32]),
            client_key: WgKey([2; 32]),
            expires_ms: 1_800_000_000_000,
            websocket_token: Token::new("alloc-s3cret"),
        }
    }

    fn hello() -> RelayHello {
        RelayHello {
            relay_id: RelayId(2),
            token: Token::new("relay-s3cret"),
            software_version: "0.1.0".into(),
            udp: "198.51.100.7:3478".parse().unwrap(),
            websocket_url: "wss://relay.example/ws".into(),
            websocket_pin: Some(crate::pin::format_fingerprint(&[0xab; 32])),
            capacity: 10_000,
            stun: Some("198.51.100.7:3478".parse().unwrap()),
        }
    }

    #[test]
    fn allocations_round_trip() {
        let msg = ToRelay::DesiredAllocations(DesiredAllocations {
            revision: 9,
            allocations: vec![allocation(1), allocation(2)],
        });
        let frame = encode(&msg);
        assert!(frame.starts_with(r#"{"v":1,"type":"desired_allocations","revision":9,"#), "{frame}");
        assert_eq!(decode_valid::<ToRelay>(&frame).unwrap(), msg);
    }

    #[test]
    fn debug_never_shows_tokens() {
        let text = format!("{:?} {:?}", hello(), allocation(1));
        assert!(!text.contains("s3cret"), "{text}");
        let msg = FromRelay::RelayHello(hello());
        assert!(!format!("{msg:?}").contains("s3cret"));
        assert!(encode(&msg).contains(r#""token":"relay-s3cret""#));
    }

    #[test]
    fn hello_validation() {
        assert!(hello().validate().is_ok());
        let bad_url = RelayHello { websocket_url: "http://relay.example".into(), ..hello() };
        assert_eq!(bad_url.validate().unwrap_err().field, "websocket_url");
        let no_port = RelayHello { udp: "198.51.100.7:0".parse().unwrap(), ..hello() };
        assert_eq!(no_port.validate().unwrap_err().problem, Problem::PortZero);
        let long_version = RelayHello { software_version: "1".repeat(65), ..hello() };
        assert!(long_version.validate().is_err());
        let no_token = RelayHello { token: Token::new(""), ..hello() };
        assert_eq!(no_token.validate().unwrap_err().problem, Problem::Empty);
    }

    #[test]
    fn the_websocket_pin_is_optional_and_must_be_a_fingerprint() {
        let pinned = FromRelay::RelayHello(hello());
        let frame = encode(&pinned);
        assert!(frame.contains(r#""websocket_pin":"AB:AB:"#), "{frame}");
        assert_eq!(decode_valid::<FromRelay>(&frame).unwrap(), pinned);

        // A relay that predates the field, or serves no TLS, sends none.
        let unpinned = RelayHello { websocket_pin: None, ..hello() };
        let frame = encode(&FromRelay::RelayHello(unpinned.clone()));
        assert!(!frame.contains("websocket_pin"), "{frame}");
        let old = r#"{"v":1,"type":"relay_hello","relay_id":2,"token":"t","software_version":"0.1.0","udp":"198.51.100.7:3478","websocket_url":"wss://relay.example/ws","capacity":10000}"#;
        let FromRelay::RelayHello(decoded) = decode_valid::<FromRelay>(old).unwrap() else { panic!() };
        assert_eq!(decoded.websocket_pin, None);

        for bad in ["AB:CD", "not a pin", ""] {
            let hello = RelayHello { websocket_pin: Some(bad.into()), ..hello() };
            assert_eq!(hello.validate().unwrap_err().field, "websocket_pin", "{bad:?}");
        }
        let frame =
            encode(&FromRelay::RelayHello(RelayHello { websocket_pin: Some("AB:CD".into()), ..hello() }));
        let err = decode_valid::<FromRelay>(&frame).unwrap_err().to_string();
        assert!(err.contains("websocket_pin"), "{err}");
    }

    #[test]
    fn the_stun_address_is_optional_and_must_be_usable() {
        let frame = encode(&FromRelay::RelayHello(hello()));
        assert!(frame.contains(r#""stun":"198.51.100.7:3478""#), "{frame}");
        assert_eq!(decode_valid::<FromRelay>(&frame).unwrap(), FromRelay::RelayHello(hello()));

        // A relay without a STUN server, or one that predates the field.
        let none = RelayHello { stun: None, ..hello() };
        let frame = encode(&FromRelay::RelayHello(none.clone()));
        assert!(!frame.contains("stun"), "{frame}");
        assert_eq!(decode_valid::<FromRelay>(&frame).unwrap(), FromRelay::RelayHello(none));

        for (bad, problem) in [
            ("198.51.100.7:0", Problem::PortZero),
            ("0.0.0.0:3478", Problem::NotUnicast),
            ("[::]:3478", Problem::NotUnicast),
            ("224.0.0.1:3478", Problem::NotUnicast),
            ("255.255.255.255:3478", Problem::NotUnicast),
        ] {
            let hello = RelayHello { stun: Some(bad.parse().unwrap()), ..hello() };
            let err = hello.validate().unwrap_err();
            assert_eq!((err.field.as_str(), err.problem), ("stun", problem), "{bad}");
        }
    }

    #[test]
    fn duplicate_allocation_ids_are_refused() {
        let msg = DesiredAllocations { revision: 1, allocations: vec![allocation(1), allocation(1)] };
        assert_eq!(msg.validate().unwrap_err().problem, Problem::Duplicate("1".into()));
    }

    #[test]
    fn refusals_and_health_round_trip() {
        for msg in [
            FromRelay::AllocationRefused(AllocationRefused {
                id: AllocationId(3),
                reason: "binding map full".into(),
            }),
            FromRelay::Health(Health {
                bindings: 2,
                capacity: 10,
                forwarded_packets: 100,
                forwarded_bytes: 10_000,
                drops: 1,
            }),
            FromRelay::AllocationReady(AllocationReady {
                id: AllocationId(3),
                gateway_endpoint: "198.51.100.7:40000".parse().unwrap(),
                client_endpoint: "[2001:db8::7]:40001".parse().unwrap(),
            }),
            FromRelay::Applied(Applied { revision: 4 }),
        ] {
            let frame = encode(&msg);
            assert!(frame.contains(&format!(r#""type":"{}""#, msg.type_name())), "{frame}");
            assert_eq!(decode_valid::<FromRelay>(&frame).unwrap(), msg);
        }
    }
}
