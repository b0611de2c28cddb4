//! Properties of the wire format: every message survives a round trip, no
//! input makes the decoder panic, and the gateway signature binds exactly the
//! challenge, the gateway id and the key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use ferry_control::gateway::{
    self, AuthError, DesiredState, Event, EventAck, FromGateway, GatewayEvent, GatewayHello,
    PanelLoginOutcome, PathKind, Peer, PortRange, Protocol, RelayBinding, SessionState, Target, ToGateway,
};
use ferry_control::relay::{
    Allocation, AllocationReady, AllocationRefused, DesiredAllocations, FromRelay, Health, RelayHello,
    ToRelay,
};
use ferry_control::{
    AllocationId, Applied, Challenge, ConfigId, DecodeError, ErrorCode, ErrorMessage, GatewayId, IdentityKey,
    MAX_MESSAGE_BYTES, Message, RelayId, ServerHello, SessionId, SignatureBytes, SigningKey, Subnet, Token,
    Welcome, WgKey, decode, decode_valid, encode,
};
use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------- strategies

/// Printable text of 1..=40 characters: what validation accepts for names.
fn name() -> impl Strategy<Value = String> {
    "[\\PC]{1,40}"
}

fn version() -> impl Strategy<Value = String> {
    "[0-9a-z.+-]{1,20}"
}

fn token() -> impl Strategy<Value = Token> {
    "[A-Za-z0-9_-]{1,64}".prop_map(Token::new)
}

fn ws_url() -> impl Strategy<Value = String> {
    ("wss?", "[a-z0-9.-]{1,30}", "(/[a-z0-9]{0,10})?")
        .prop_map(|(s, host, path)| format!("{s}://{host}{path}"))
}

/// A certificate fingerprint as relays report it.
fn pin() -> impl Strategy<Value = String> {
    any::<[u8; 32]>().prop_map(|bytes| ferry_control::pin::format_fingerprint(&bytes))
}

fn wg_key() -> impl Strategy<Value = WgKey> {
    any::<[u8; 32]>().prop_map(WgKey)
}

/// Socket addresses as they survive text: an IPv6 flow label and scope id
/// are not part of the protocol.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<std::net::Ipv4Addr>(), 1..=u16::MAX).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
        (any::<Ipv6Addr>(), 1..=u16::MAX).prop_map(|(ip, port)| SocketAddrV6::new(ip, port, 0, 0).into()),
    ]
}

/// Addresses one host can send to, as candidates and STUN servers must be:
/// not unspecified, multicast or broadcast.
fn unicast_addr() -> impl Strategy<Value = SocketAddr> {
    socket_addr().prop_filter("unicast", |a| {
        let ip = a.ip().to_canonical();
        !(ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()))
    })
}

fn subnet() -> impl Strategy<Value = Subnet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(bits, prefix)| {
            let masked = if prefix == 0 { 0 } else { bits & (u32::MAX << (32 - prefix)) };
            Subnet::new(IpAddr::V4(masked.into()), prefix).unwrap()
        }),
        (any::<u128>(), 0u8..=128).prop_map(|(bits, prefix)| {
            let masked = if prefix == 0 { 0 } else { bits & (u128::MAX << (128 - prefix)) };
            Subnet::new(IpAddr::V6(masked.into()), prefix).unwrap()
        }),
    ]
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (1..=u16::MAX)
        .prop_flat_map(|first| (Just(first), first..=u16::MAX))
        .prop_map(|(first, last)| PortRange { first, last })
}

fn target() -> impl Strategy<Value = Target> {
    let with_ports =
        (prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)], prop::collection::vec(port_range(), 0..4));
    let without_ports = (prop_oneof![Just(Protocol::Icmp), Just(Protocol::Any)], Just(Vec::new()));
    (name(), any::<IpAddr>(), any::<IpAddr>(), prop_oneof![with_ports, without_ports]).prop_map(
        |(name, address, proxy_address, (protocol, ports))| Target {
            name,
            address,
            proxy_address,
            protocol,
            ports,
        },
    )
}

fn relay_binding() -> impl Strategy<Value = RelayBinding> {
    (any::<u64>(), any::<u64>(), socket_addr(), ws_url(), token(), prop::option::of(pin())).prop_map(
        |(relay_id, allocation_id, udp, websocket_url, websocket_token, websocket_pin)| RelayBinding {
            relay_id: RelayId(relay_id),
            allocation_id: AllocationId(allocation_id),
            udp,
            websocket_url,
            websocket_token,
            websocket_pin,
        },
    )
}

fn peer() -> impl Strategy<Value = Peer> {
    (
        (any::<u64>(), name(), wg_key(), any::<IpAddr>(), any::<u64>()),
        prop::option::of(relay_binding()),
        prop::collection::vec(unicast_addr(), 0..=gateway::MAX_CANDIDATES),
    )
        .prop_map(|((config_id, user, public_key, tunnel_address, expires_ms), relay, candidates)| {
            Peer {
                config_id: ConfigId(config_id),
                user,
                public_key,
                tunnel_address,
                expires_ms,
                relay,
                candidates,
            }
        })
}

/// Keeps the first of each key, as validation wants.
fn dedup_by<T, K: std::hash::Hash + Eq>(mut items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen = HashSet::new();
    items.retain(|item| seen.insert(key(item)));
    items
}

fn session() -> impl Strategy<Value = SessionState> {
    (
        (any::<u64>(), name(), any::<u64>(), any::<bool>(), any::<bool>()),
        (subnet(), any::<IpAddr>()),
        prop::collection::vec(target(), 0..4),
        prop::collection::vec(peer(), 0..4),
        (prop::option::of(name()), prop::option::of(any::<u64>())),
    )
        .prop_map(
            |(
                (id, name, expires_ms, approval_required, approved),
                (subnet, gateway_address),
                targets,
                peers,
                (started_by, max_duration_s),
            )| {
                SessionState {
                    session_id: SessionId(id),
                    name,
                    expires_ms,
                    approval_required,
                    approved,
                    subnet,
                    gateway_address,
                    targets: dedup_by(targets, |t| t.name.clone()),
                    peers: dedup_by(peers, |p| p.public_key),
                    started_by,
                    max_duration_s,
                }
            },
        )
}

fn path_kind() -> impl Strategy<Value = PathKind> {
    prop_oneof![Just(PathKind::Direct), Just(PathKind::UdpRelay), Just(PathKind::WebsocketRelay)]
}

fn login_outcome() -> impl Strategy<Value = PanelLoginOutcome> {
    prop_oneof![
        Just(PanelLoginOutcome::Success),
        Just(PanelLoginOutcome::BadPassword),
        Just(PanelLoginOutcome::Throttled),
        Just(PanelLoginOutcome::Locked),
        Just(PanelLoginOutcome::LockedNow),
    ]
}

fn gateway_event() -> impl Strategy<Value = GatewayEvent> {
    let session = || any::<u64>().prop_map(SessionId);
    prop_oneof![
        any::<bool>().prop_map(|on| GatewayEvent::SwitchChanged { on }),
        session().prop_map(|session_id| GatewayEvent::Approved { session_id }),
        session().prop_map(|session_id| GatewayEvent::Denied { session_id }),
        (session(), wg_key(), prop::option::of(socket_addr()), prop::option::of(path_kind())).prop_map(
            |(session_id, public_key, endpoint, path)| {
                GatewayEvent::PeerConnected { session_id, public_key, endpoint, path }
            }
        ),
        (session(), wg_key(), path_kind(), prop::option::of(socket_addr())).prop_map(
            |(session_id, public_key, path, endpoint)| {
                GatewayEvent::PeerPath { session_id, public_key, path, endpoint }
            }
        ),
        session().prop_map(|session_id| GatewayEvent::Ended { session_id }),
        (login_outcome(), any::<IpAddr>())
            .prop_map(|(outcome, from)| GatewayEvent::PanelLogin { outcome, from }),
        any::<IpAddr>().prop_map(|from| GatewayEvent::PanelLogout { from }),
        (session(), wg_key())
            .prop_map(|(session_id, public_key)| GatewayEvent::PeerDisconnected { session_id, public_key }),
        (session(), prop::option::of(name()), any::<u64>(), any::<u64>())
            .prop_map(|(session_id, target, rx, tx)| GatewayEvent::Bytes { session_id, target, rx, tx }),
        (version(), any::<bool>())
            .prop_map(|(software_version, switch_on)| GatewayEvent::Status { software_version, switch_on }),
        prop::collection::vec(socket_addr(), 0..4)
            .prop_map(|endpoints| GatewayEvent::Candidates { endpoints }),
    ]
}

fn error_message() -> impl Strategy<Value = ErrorMessage> {
    let code = prop_oneof![
        Just(ErrorCode::Version),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::Replaced),
        Just(ErrorCode::Internal),
    ];
    (code, "[\\PC]{0,60}").prop_map(|(code, message)| ErrorMessage { code, message })
}

fn server_hello() -> impl Strategy<Value = ServerHello> {
    (any::<[u8; 32]>(), any::<u64>())
        .prop_map(|(c, server_time_ms)| ServerHello { challenge: Challenge(c), server_time_ms })
}

fn to_gateway() -> impl Strategy<Value = ToGateway> {
    prop_oneof![
        server_hello().prop_map(ToGateway::ServerHello),
        any::<u64>().prop_map(|peer_id| ToGateway::Welcome(Welcome { peer_id })),
        error_message().prop_map(ToGateway::Error),
        (
            any::<u64>(),
            prop::collection::vec(session(), 0..4),
            prop::collection::vec(unicast_addr(), 0..=gateway::MAX_STUN_SERVERS),
        )
            .prop_map(|(revision, sessions, stun_servers)| {
                ToGateway::DesiredState(DesiredState {
                    revision,
                    sessions: dedup_by(sessions, |s| s.session_id),
                    stun_servers,
                })
            }),
        any::<u64>().prop_map(|seq| ToGateway::EventAck(EventAck { seq })),
    ]
}

fn gateway_hello() -> impl Strategy<Value = GatewayHello> {
    (
        any::<u64>(),
        any::<[u8; 32]>(),
        prop::collection::vec(any::<u8>(), 64),
        version(),
        any::<bool>(),
        wg_key(),
        any::<Option<u64>>(),
    )
        .prop_map(|(id, key, sig, software_version, switch_on, wg_public_key, applied_revision)| {
            GatewayHello {
                gateway_id: GatewayId(id),
                identity_key: IdentityKey(key),
                signature: SignatureBytes(sig.try_into().unwrap()),
                software_version,
                switch_on,
                wg_public_key,
                applied_revision,
            }
        })
}

fn from_gateway() -> impl Strategy<Value = FromGateway> {
    prop_oneof![
        gateway_hello().prop_map(FromGateway::GatewayHello),
        any::<u64>().prop_map(|revision| FromGateway::Applied(Applied { revision })),
        (any::<u64>(), any::<u64>(), gateway_event())
            .prop_map(|(seq, time_ms, event)| FromGateway::Event(Event { seq, time_ms, event })),
    ]
}

fn allocation() -> impl Strategy<Value = Allocation> {
    (any::<u64>(), any::<u64>(), wg_key(), wg_key(), any::<u64>(), token()).prop_map(
        |(id, session, gateway_key, client_key, expires_ms, websocket_token)| Allocation {
            id: AllocationId(id),
            session_id: SessionId(session),
            gateway_key,
            client_key,
            expires_ms,
            websocket_token,
        },
    )
}

fn to_relay() -> impl Strategy<Value = ToRelay> {
    prop_oneof![
        server_hello().prop_map(ToRelay::ServerHello),
        any::<u64>().prop_map(|peer_id| ToRelay::Welcome(Welcome { peer_id })),
        error_message().prop_map(ToRelay::Error),
        (any::<u64>(), prop::collection::vec(allocation(), 0..6)).prop_map(|(revision, allocations)| {
            ToRelay::DesiredAllocations(DesiredAllocations {
                revision,
                allocations: dedup_by(allocations, |a| a.id),
            })
        }),
    ]
}

fn from_relay() -> impl Strategy<Value = FromRelay> {
    prop_oneof![
        (
            (any::<u64>(), token(), version(), socket_addr(), ws_url()),
            (prop::option::of(pin()), any::<u32>(), prop::option::of(unicast_addr())),
        )
            .prop_map(
                |((id, token, software_version, udp, websocket_url), (websocket_pin, capacity, stun))| {
                    FromRelay::RelayHello(RelayHello {
                        relay_id: RelayId(id),
                        token,
                        software_version,
                        udp,
                        websocket_url,
                        websocket_pin,
                        capacity,
                        stun,
                    })
                }
            ),
        any::<u64>().prop_map(|revision| FromRelay::Applied(Applied { revision })),
        (any::<u64>(), socket_addr(), socket_addr()).prop_map(|(id, gateway_endpoint, client_endpoint)| {
            FromRelay::AllocationReady(AllocationReady {
                id: AllocationId(id),
                gateway_endpoint,
                client_endpoint,
            })
        }),
        (any::<u64>(), name()).prop_map(|(id, reason)| FromRelay::AllocationRefused(AllocationRefused {
            id: AllocationId(id),
            reason
        })),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(bindings, capacity, forwarded_packets, forwarded_bytes, drops)| FromRelay::Health(Health {
                bindings,
                capacity,
                forwarded_packets,
                forwarded_bytes,
                drops,
            })
        ),
    ]
}

// ---------------------------------------------------------------- helpers

fn round_trips<T: Message + PartialEq + std::fmt::Debug>(msg: &T) -> Result<(), TestCaseError> {
    let frame = encode(msg);
    prop_assert!(frame.starts_with("{\"v\":1,\"type\":\""), "{}", frame);
    prop_assert!(T::TYPES.contains(&msg.type_name()));
    prop_assert_eq!(&decode::<T>(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?, msg);
    prop_assert_eq!(&decode_valid::<T>(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?, msg);
    Ok(())
}

/// Whatever the input, the decoder answers; a message it accepts is stable
/// under another round trip, and its errors stay short enough to log.
fn never_panics<T: Message + PartialEq + std::fmt::Debug>(frame: &str) -> Result<(), TestCaseError> {
    match decode_valid::<T>(frame) {
        Ok(msg) => {
            prop_assert!(msg.validate().is_ok());
            prop_assert_eq!(decode_valid::<T>(&encode(&msg)).ok(), Some(msg));
        }
        Err(e) => prop_assert!(e.to_string().len() < 1024, "{}", e),
    }
    if let Err(e) = decode::<T>(frame) {
        prop_assert!(e.to_string().len() < 1024, "{}", e);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at the n-th node of the JSON tree.
    Replace(usize, Value),
    /// Remove a key from the n-th object.
    Remove(usize, usize),
    /// Add an unknown key to the n-th object.
    Add(usize),
    /// Edit the text itself.
    Insert(usize, char),
    Delete(usize, usize),
    Truncate(usize),
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        Just(Value::String("10.0.0.0/8".into())),
        Just(Value::String(WgKey([9; 32]).to_string())),
        Just(Value::String("a".repeat(64))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), json_value()).prop_map(|(n, v)| Mutation::Replace(n, v)),
        (any::<usize>(), any::<usize>()).prop_map(|(n, k)| Mutation::Remove(n, k)),
        any::<usize>().prop_map(Mutation::Add),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Mutation::Insert(at, c)),
        (any::<usize>(), 0usize..8).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(frame: &str, mutation: &Mutation) -> String {
    let chars: Vec<char> = frame.chars().collect();
    match mutation {
        Mutation::Insert(at, c) => {
            let mut chars = chars;
            chars.insert(at % (chars.len() + 1), *c);
            chars.into_iter().collect()
        }
        Mutation::Delete(at, n) => {
            let start = at % (chars.len() + 1);
            let end = (start + n).min(chars.len());
            chars[..start].iter().chain(&chars[end..]).collect()
        }
        Mutation::Truncate(at) => chars[..at % (chars.len() + 1)].iter().collect(),
        Mutation::Replace(n, replacement) => {
            let mut value: Value = serde_json::from_str(frame).unwrap();
            let count = count_nodes(&value);
            *nth_node(&mut value, n % count) = replacement.clone();
            value.to_string()
        }
        Mutation::Remove(n, k) => {
            let mut value: Value = serde_json::from_str(frame).unwrap();
            let objects = count_objects(&value);
            if objects == 0 {
                return value.to_string();
            }
            if let Value::Object(map) = nth_object(&mut value, n % objects)
                && !map.is_empty()
            {
                let key = map.keys().nth(k % map.len()).unwrap().clone();
                map.remove(&key);
            }
            value.to_string()
        }
        Mutation::Add(n) => {
            let mut value: Value = serde_json::from_str(frame).unwrap();
            let objects = count_objects(&value);
            if objects == 0 {
                return value.to_string();
            }
            if let Value::Object(map) = nth_object(&mut value, n % objects) {
                map.insert("zz_unknown".into(), Value::Null);
            }
            value.to_string()
        }
    }
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn nth_node(value: &mut Value, mut n: usize) -> &mut Value {
    fn walk<'a>(value: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(value);
        }
        *n -= 1;
        match value {
            Value::Array(items) => items.iter_mut().find_map(|v| walk(v, n)),
            Value::Object(map) => map.values_mut().find_map(|v| walk(v, n)),
            _ => None,
        }
    }
    walk(value, &mut n).expect("n < count_nodes")
}

fn count_objects(value: &Value) -> usize {
    let own = usize::from(value.is_object());
    own + match value {
        Value::Array(items) => items.iter().map(count_objects).sum(),
        Value::Object(map) => map.values().map(count_objects).sum(),
        _ => 0,
    }
}

fn nth_object(value: &mut Value, mut n: usize) -> &mut Value {
    fn walk<'a>(value: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if value.is_object() {
            if *n == 0 {
                return Some(value);
            }
            *n -= 1;
        }
        match value {
            Value::Array(items) => items.iter_mut().find_map(|v| walk(v, n)),
            Value::Object(map) => map.values_mut().find_map(|v| walk(v, n)),
            _ => None,
        }
    }
    walk(value, &mut n).expect("n < count_objects")
}

// ---------------------------------------------------------------- properties

proptest! {
    // Failures print their input; there is no regressions file to keep.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(256) })]

    #[test]
    fn to_gateway_round_trips(msg in to_gateway()) {
        round_trips(&msg)?;
    }

    #[test]
    fn from_gateway_round_trips(msg in from_gateway()) {
        round_trips(&msg)?;
    }

    #[test]
    fn to_relay_round_trips(msg in to_relay()) {
        round_trips(&msg)?;
    }

    #[test]
    fn from_relay_round_trips(msg in from_relay()) {
        round_trips(&msg)?;
    }

    #[test]
    fn arbitrary_strings_never_panic(frame in ".{0,200}") {
        never_panics::<ToGateway>(&frame)?;
        never_panics::<FromGateway>(&frame)?;
        never_panics::<ToRelay>(&frame)?;
        never_panics::<FromRelay>(&frame)?;
    }

    #[test]
    fn json_looking_strings_never_panic(frame in r#"\{("v":1,)?("type":"[a-z_]{0,20}",)?[ -~]{0,120}\}?"#) {
        never_panics::<ToGateway>(&frame)?;
        never_panics::<FromGateway>(&frame)?;
        never_panics::<ToRelay>(&frame)?;
        never_panics::<FromRelay>(&frame)?;
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value(), kind in "[a-z_]{1,20}") {
        let mut object = serde_json::Map::new();
        object.insert("v".into(), Value::from(1));
        object.insert("type".into(), Value::String(kind));
        if let Value::Object(fields) = value {
            object.extend(fields);
        }
        let frame = Value::Object(object).to_string();
        never_panics::<ToGateway>(&frame)?;
        never_panics::<FromRelay>(&frame)?;
    }

    #[test]
    fn mutated_cloud_frames_never_panic(msg in to_gateway(), mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut frame = encode(&msg);
        for m in &mutations {
            if serde_json::from_str::<Value>(&frame).is_err()
                && matches!(m, Mutation::Replace(..) | Mutation::Remove(..) | Mutation::Add(_))
            {
                continue;
            }
            frame = apply(&frame, m);
        }
        never_panics::<ToGateway>(&frame)?;
    }

    #[test]
    fn mutated_peer_frames_never_panic(
        gateway in from_gateway(),
        relay in from_relay(),
        allocations in to_relay(),
        mutation in mutation(),
    ) {
        never_panics::<FromGateway>(&apply(&encode(&gateway), &mutation))?;
        never_panics::<FromRelay>(&apply(&encode(&relay), &mutation))?;
        never_panics::<ToRelay>(&apply(&encode(&allocations), &mutation))?;
    }

    #[test]
    fn an_unknown_field_anywhere_is_refused(msg in to_gateway(), n in any::<usize>()) {
        let frame = apply(&encode(&msg), &Mutation::Add(n));
        prop_assert!(decode::<ToGateway>(&frame).is_err(), "{}", frame);
    }

    #[test]
    fn only_optional_fields_may_be_left_out(msg in to_gateway(), n in any::<usize>(), k in any::<usize>()) {
        let frame = apply(&encode(&msg), &Mutation::Remove(n, k));
        // serde reads a missing `Option` field as `None`; every other field
        // must be there. So whatever still decodes comes back with exactly
        // one more null than the frame had, or, for an optional field that
        // is left out when `None` or empty (`websocket_pin`, `candidates`,
        // `stun_servers`), exactly as the frame was.
        if let Ok(decoded) = decode::<ToGateway>(&frame) {
            let again = encode(&decoded);
            let nulls = |s: &str| s.matches(":null").count();
            let fields = |s: &str| s.matches("\":").count();
            let one_more_null = nulls(&again) == nulls(&frame) + 1;
            let omitted_optional = nulls(&again) == nulls(&frame) && fields(&again) == fields(&frame);
            prop_assert!(one_more_null || omitted_optional, "{} decoded from {}", again, frame);
        }
    }

    #[test]
    fn other_versions_are_always_reported_as_such(msg in from_gateway(), v in 2u64..) {
        let frame = encode(&msg).replacen("\"v\":1", &format!("\"v\":{v}"), 1);
        prop_assert_eq!(decode::<FromGateway>(&frame), Err(DecodeError::Version { got: v, supported: 1 }));
    }

    #[test]
    fn signatures_bind_challenge_id_and_key(
        seed in any::<[u8; 32]>(),
        other_seed in any::<[u8; 32]>(),
        challenge in any::<[u8; 32]>(),
        other_challenge in any::<[u8; 32]>(),
        id in any::<u64>(),
        other_id in any::<u64>(),
        bit in 0usize..512,
        challenge_bit in 0usize..256,
    ) {
        prop_assume!(seed != other_seed && challenge != other_challenge && id != other_id);
        let key = SigningKey::from_bytes(&seed);
        let enrolled = key.verifying_key().to_bytes();
        let challenge = Challenge(challenge);
        let hello = gateway::sign_gateway_hello(&key, &challenge, GatewayId(id), "1.0", true, WgKey([1; 32]), None);
        prop_assert_eq!(gateway::verify_gateway_hello(&hello, &challenge, &enrolled), Ok(()));

        // Wrong challenge.
        prop_assert_eq!(
            gateway::verify_gateway_hello(&hello, &Challenge(other_challenge), &enrolled),
            Err(AuthError::BadSignature)
        );
        let mut flipped_challenge = challenge;
        flipped_challenge.0[challenge_bit / 8] ^= 1 << (challenge_bit % 8);
        prop_assert!(gateway::verify_gateway_hello(&hello, &flipped_challenge, &enrolled).is_err());

        // Wrong gateway id.
        let moved = GatewayHello { gateway_id: GatewayId(other_id), ..hello.clone() };
        prop_assert_eq!(gateway::verify_gateway_hello(&moved, &challenge, &enrolled), Err(AuthError::BadSignature));

        // Wrong key: enrolled is someone else, whether or not the hello claims that key.
        let other = SigningKey::from_bytes(&other_seed).verifying_key().to_bytes();
        prop_assert_eq!(gateway::verify_gateway_hello(&hello, &challenge, &other), Err(AuthError::IdentityMismatch));
        let claimed = GatewayHello { identity_key: IdentityKey(other), ..hello.clone() };
        prop_assert_eq!(gateway::verify_gateway_hello(&claimed, &challenge, &other), Err(AuthError::BadSignature));

        // Any flipped bit of the signature.
        let mut flipped = hello.clone();
        flipped.signature.0[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(gateway::verify_gateway_hello(&flipped, &challenge, &enrolled).is_err());
    }
}

#[test]
fn the_size_limit_is_checked_before_parsing() {
    // Not even JSON: refused for its size alone.
    let frame = "x".repeat(MAX_MESSAGE_BYTES + 1);
    assert_eq!(
        decode::<ToGateway>(&frame),
        Err(DecodeError::TooLarge { len: MAX_MESSAGE_BYTES + 1, max: MAX_MESSAGE_BYTES })
    );
}

#[test]
fn a_frame_of_exactly_the_limit_is_parsed() {
    let msg = encode(&FromGateway::Applied(Applied { revision: 1 }));
    let frame = format!("{msg}{}", " ".repeat(MAX_MESSAGE_BYTES - msg.len()));
    assert_eq!(frame.len(), MAX_MESSAGE_BYTES);
    assert_eq!(decode::<FromGateway>(&frame), Ok(FromGateway::Applied(Applied { revision: 1 })));
}
