//! The client against a tiny cloud in the test: plain `ws://` and pinned
//! `wss://` on 127.0.0.1, the hellos of both channels, and every way the
//! exchange can be refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]
#![cfg(feature = "client")]

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_control::client::{
    self, Channel, ClientError, gateway_handshake, relay_handshake, websocket_config,
};
use ferry_control::gateway::{
    self, DesiredState, Event, EventAck, FromGateway, GatewayEvent, SessionState, ToGateway,
};
use ferry_control::relay::{Allocation, DesiredAllocations, FromRelay, RelayHello, ToRelay};
use ferry_control::{
    AllocationId, Applied, Challenge, DecodeError, ErrorCode, ErrorMessage, GatewayId, MAX_MESSAGE_BYTES,
    RelayId, ServerHello, SessionId, SigningKey, Token, Welcome, WgKey,
};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{WebSocketStream, accept_async_with_config};

const GATEWAY: GatewayId = GatewayId(17);

fn gateway_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn challenge() -> Challenge {
    Challenge([0xc5; 32])
}

fn desired_state() -> DesiredState {
    DesiredState {
        revision: 3,
        sessions: vec![SessionState {
            session_id: SessionId(1),
            name: "PLC firmware".into(),
            expires_ms: 1_900_000_000_000,
            approval_required: true,
            approved: false,
            subnet: "10.77.0.0/24".parse().unwrap(),
            gateway_address: "10.77.0.1".parse().unwrap(),
            targets: vec![],
            peers: vec![],
            started_by: None,
            max_duration_s: None,
        }],
        stun_servers: vec![],
    }
}

/// What the test cloud does with one accepted WebSocket.
type Script<S> =
    Box<dyn FnOnce(Channel<S>) -> std::pin::Pin<Box<dyn Future<Output = Channel<S>> + Send>> + Send>;

/// Serves one plain WebSocket connection on 127.0.0.1 with `script`.
async fn plain_server(script: Script<tokio::net::TcpStream>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = accept_async_with_config(tcp, Some(websocket_config())).await.unwrap();
        drain(script(Channel::new(ws)).await).await;
    });
    (format!("ws://{addr}{}", gateway::PATH), task)
}

/// Lets the client read everything the script sent before the socket goes.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut channel: Channel<S>) {
    while let Ok(Some(_)) = channel.recv::<FromGateway>().await {}
}

/// The cloud's side of a good gateway hello.
async fn cloud_gateway_hello<S: AsyncRead + AsyncWrite + Unpin>(channel: &mut Channel<S>) {
    let hello = ToGateway::ServerHello(ServerHello { challenge: challenge(), server_time_ms: 1 });
    channel.send(&hello).await.unwrap();
    let Some(FromGateway::GatewayHello(hello)) = channel.recv().await.unwrap() else {
        panic!("expected a gateway hello");
    };
    assert_eq!(hello.gateway_id, GATEWAY);
    let enrolled = gateway_key().verifying_key().to_bytes();
    gateway::verify_gateway_hello(&hello, &challenge(), &enrolled).unwrap();
    channel.send(&ToGateway::Welcome(Welcome { peer_id: 99 })).await.unwrap();
    channel.send(&ToGateway::DesiredState(desired_state())).await.unwrap();
}

async fn client_gateway_hello<S: AsyncRead + AsyncWrite + Unpin>(
    channel: &mut Channel<S>,
) -> Result<(Welcome, DesiredState), ClientError> {
    gateway_handshake(channel, &gateway_key(), GATEWAY, "0.1.0", true, WgKey([5; 32]), Some(2)).await
}

#[tokio::test]
async fn gateway_session_over_plain_websocket() {
    let (url, server) = plain_server(Box::new(|mut channel| {
        Box::pin(async move {
            cloud_gateway_hello(&mut channel).await;
            let Some(FromGateway::Applied(Applied { revision: 3 })) = channel.recv().await.unwrap() else {
                panic!("expected applied 3");
            };
            let Some(FromGateway::Event(event)) = channel.recv().await.unwrap() else {
                panic!("expected an event");
            };
            assert_eq!(event.event, GatewayEvent::SwitchChanged { on: false });
            channel.send(&ToGateway::EventAck(EventAck { seq: event.seq })).await.unwrap();
            channel
        })
    }))
    .await;

    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let (welcome, state) = client_gateway_hello(&mut channel).await.unwrap();
    assert_eq!(welcome.peer_id, 99);
    assert_eq!(state, desired_state());
    channel.send(&FromGateway::Applied(Applied { revision: state.revision })).await.unwrap();
    let event = Event { seq: 1, time_ms: 5, event: GatewayEvent::SwitchChanged { on: false } };
    channel.send(&FromGateway::Event(event)).await.unwrap();
    assert_eq!(channel.recv::<ToGateway>().await.unwrap(), Some(ToGateway::EventAck(EventAck { seq: 1 })));
    channel.close(CloseCode::Normal, "done").await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn relay_session_over_plain_websocket() {
    let allocation = Allocation {
        id: AllocationId(8),
        session_id: SessionId(1),
        gateway_key: WgKey([1; 32]),
        client_key: WgKey([2; 32]),
        expires_ms: 1_900_000_000_000,
        websocket_token: Token::new("alloc-token"),
    };
    let desired = DesiredAllocations { revision: 4, allocations: vec![allocation] };
    let sent = desired.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}{}", listener.local_addr().unwrap(), ferry_control::relay::PATH);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut channel =
            Channel::new(accept_async_with_config(tcp, Some(websocket_config())).await.unwrap());
        let hello = ToRelay::ServerHello(ServerHello { challenge: challenge(), server_time_ms: 1 });
        channel.send(&hello).await.unwrap();
        let Some(FromRelay::RelayHello(hello)) = channel.recv().await.unwrap() else {
            panic!("expected a relay hello");
        };
        assert_eq!(hello.relay_id, RelayId(6));
        assert_eq!(hello.token, Token::new("relay-token"));
        assert_eq!(hello.capacity, 1000);
        channel.send(&ToRelay::Welcome(Welcome { peer_id: 7 })).await.unwrap();
        channel.send(&ToRelay::DesiredAllocations(sent)).await.unwrap();
        assert_eq!(
            channel.recv::<FromRelay>().await.unwrap(),
            Some(FromRelay::Applied(Applied { revision: 4 }))
        );
    });

    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let udp: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let hello = RelayHello {
        relay_id: RelayId(6),
        token: Token::new("relay-token"),
        software_version: "0.1.0".into(),
        udp,
        websocket_url: "wss://relay.example/ws".into(),
        websocket_pin: None,
        capacity: 1000,
        stun: Some("127.0.0.1:3479".parse().unwrap()),
    };
    let (welcome, allocations) = relay_handshake(&mut channel, hello).await.unwrap();
    assert_eq!(welcome.peer_id, 7);
    assert_eq!(allocations, desired);
    channel.send(&FromRelay::Applied(Applied { revision: 4 })).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn an_error_frame_becomes_refused() {
    let (url, server) = plain_server(Box::new(|mut channel| {
        Box::pin(async move {
            let hello = ToGateway::ServerHello(ServerHello { challenge: challenge(), server_time_ms: 1 });
            channel.send(&hello).await.unwrap();
            let _hello: Option<FromGateway> = channel.recv().await.unwrap();
            let refusal = ErrorMessage { code: ErrorCode::Unauthorized, message: "unknown gateway".into() };
            channel.send(&ToGateway::Error(refusal)).await.unwrap();
            channel
        })
    }))
    .await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let err = client_gateway_hello(&mut channel).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { code: ErrorCode::Unauthorized, message } if message == "unknown gateway"),
        "{err}"
    );
    assert_eq!(err.to_string(), "the cloud refused (unauthorized): unknown gateway");
    drop(channel);
    server.await.unwrap();
}

/// What the raw server saw from the client.
#[derive(Debug, Default)]
struct Seen {
    close: Option<(CloseCode, String)>,
    pongs: Vec<Vec<u8>>,
}

/// Sends raw frames, then reports the pongs and the close frame the client
/// answered with.
async fn raw_server(frames: Vec<WsMessage>) -> (String, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // The raw side must be able to send what the client refuses.
        let config = websocket_config().max_message_size(None).max_frame_size(None);
        let mut ws = accept_async_with_config(tcp, Some(config)).await.unwrap();
        for frame in frames {
            ws.send(frame).await.unwrap();
        }
        let mut seen = Seen::default();
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(Some(close)))) => {
                    seen.close = Some((close.code, close.reason.to_string()));
                    return seen;
                }
                Some(Ok(WsMessage::Pong(payload))) => seen.pongs.push(payload.to_vec()),
                Some(Ok(_)) => continue,
                _ => return seen,
            }
        }
    });
    (format!("ws://{addr}{}", gateway::PATH), task)
}

#[tokio::test]
async fn another_version_is_refused_and_the_client_closes_saying_why() {
    let (url, server) =
        raw_server(vec![WsMessage::text(r#"{"v":2,"type":"server_hello","challenge":"00","x":1}"#)]).await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let err = client_gateway_hello(&mut channel).await.unwrap_err();
    assert!(matches!(err, ClientError::Decode(DecodeError::Version { got: 2, supported: 1 })), "{err}");
    let (code, reason) = server.await.unwrap().close.expect("a close frame");
    assert_eq!(code, CloseCode::Protocol);
    assert!(reason.contains("protocol version 2 is not supported"), "{reason}");
}

#[tokio::test]
async fn binary_frames_are_refused() {
    let (url, server) = raw_server(vec![WsMessage::binary(vec![1, 2, 3])]).await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    assert!(matches!(channel.recv::<ToGateway>().await, Err(ClientError::Binary)));
    assert_eq!(server.await.unwrap().close.map(|(code, _)| code), Some(CloseCode::Unsupported));
}

#[tokio::test]
async fn oversized_frames_are_cut_off_by_the_websocket_layer() {
    let huge = format!(r#"{{"v":1,"type":"welcome","peer_id":1,"pad":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES));
    let (url, server) = raw_server(vec![WsMessage::text(huge)]).await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let err = channel.recv::<ToGateway>().await.unwrap_err();
    assert!(matches!(&err, ClientError::WebSocket(_)), "{err}");
    assert!(err.to_string().contains("Space limit exceeded"), "{err}");
    drop(channel);
    let _ = server.await;
}

#[tokio::test]
async fn pings_are_answered_and_skipped() {
    let ack = WsMessage::text(ferry_control::encode(&ToGateway::EventAck(EventAck { seq: 9 })));
    let (url, server) = raw_server(vec![WsMessage::Ping(vec![7].into()), ack]).await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    assert_eq!(channel.recv::<ToGateway>().await.unwrap(), Some(ToGateway::EventAck(EventAck { seq: 9 })));
    channel.close(CloseCode::Normal, "bye").await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.pongs, vec![vec![7]]);
    assert_eq!(seen.close, Some((CloseCode::Normal, "bye".to_string())));
}

#[tokio::test]
async fn an_out_of_order_frame_is_unexpected() {
    let welcome = WsMessage::text(ferry_control::encode(&ToGateway::Welcome(Welcome { peer_id: 1 })));
    let (url, server) = raw_server(vec![welcome]).await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let err = client_gateway_hello(&mut channel).await.unwrap_err();
    assert!(matches!(err, ClientError::Unexpected { expected: "server_hello", got: "welcome" }), "{err}");
    assert_eq!(server.await.unwrap().close.map(|(code, _)| code), Some(CloseCode::Protocol));
}

#[tokio::test]
async fn the_connection_closing_mid_hello_is_an_error() {
    let (url, server) = plain_server(Box::new(|mut channel| {
        Box::pin(async move {
            channel.close(CloseCode::Away, "cloud shutting down").await.unwrap();
            channel
        })
    }))
    .await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let err = client_gateway_hello(&mut channel).await.unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err}");
    let close = channel.peer_close().expect("the cloud's close frame");
    assert_eq!((close.code, close.reason.as_str()), (CloseCode::Away, "cloud shutting down"));
    drop(channel);
    server.await.unwrap();
}

#[tokio::test]
async fn oversized_messages_are_refused_before_sending() {
    let (url, server) = plain_server(Box::new(|channel| Box::pin(async move { channel }))).await;
    let mut channel = Channel::new(client::connect(&url, None).await.unwrap());
    let status = GatewayEvent::Status { software_version: "x".repeat(MAX_MESSAGE_BYTES), switch_on: true };
    let big = FromGateway::Event(Event { seq: 1, time_ms: 1, event: status });
    assert!(matches!(channel.send(&big).await, Err(ClientError::TooLarge { .. })));
    drop(channel);
    server.await.unwrap();
}

// ------------------------------------------------------------------- TLS

struct TlsCloud {
    url: String,
    pin: [u8; 32],
    server: JoinHandle<()>,
}

/// A `wss://` cloud with a fresh self-signed certificate, speaking only
/// `version`, that runs the good gateway hello if the client gets through.
async fn tls_cloud(version: &'static rustls::SupportedProtocolVersion) -> TlsCloud {
    let certified = rcgen::generate_simple_self_signed(vec!["ferry-cloud.invalid".to_string()]).unwrap();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let pin: [u8; 32] = Sha256::digest(cert.as_ref()).into();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}{}", listener.local_addr().unwrap(), gateway::PATH);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // A client that refuses the certificate ends the TLS handshake here.
        let Ok(tls) = acceptor.accept(tcp).await else { return };
        let ws: WebSocketStream<_> = accept_async_with_config(tls, Some(websocket_config())).await.unwrap();
        let mut channel = Channel::new(ws);
        cloud_gateway_hello(&mut channel).await;
        drain(channel).await;
    });
    TlsCloud { url, pin, server }
}

#[tokio::test]
async fn wss_with_the_right_pin_works_over_tls13_and_tls12() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cloud = tls_cloud(version).await;
        let mut channel = Channel::new(client::connect(&cloud.url, Some(cloud.pin)).await.unwrap());
        let (welcome, state) = client_gateway_hello(&mut channel).await.unwrap();
        assert_eq!((welcome.peer_id, state), (99, desired_state()));
        channel.close(CloseCode::Normal, "done").await.unwrap();
        cloud.server.await.unwrap();
    }
}

#[tokio::test]
async fn wss_with_a_wrong_pin_fails_naming_both_fingerprints() {
    let cloud = tls_cloud(&rustls::version::TLS13).await;
    let mut wrong = cloud.pin;
    wrong[0] ^= 1;
    let err = client::connect(&cloud.url, Some(wrong)).await.unwrap_err();
    match &err {
        ClientError::PinMismatch { expected, got } => {
            assert_eq!(expected, &hex_of(&wrong));
            assert_eq!(got, &hex_of(&cloud.pin));
        }
        other => panic!("expected a pin mismatch, got {other}"),
    }
    cloud.server.await.unwrap();
}

#[tokio::test]
async fn wss_without_a_pin_is_refused_before_connecting() {
    let cloud = tls_cloud(&rustls::version::TLS13).await;
    assert!(matches!(client::connect(&cloud.url, None).await, Err(ClientError::PinRequired)));
    cloud.server.abort();
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
