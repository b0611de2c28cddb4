//! The listener over loopback TCP with a fake directory. The client side
//! (ferry-connect's `WsRelay` and bridge) is tested in ferry-connect against
//! this same listener.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_control::client::{ClientError, WsStream, connect_with};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::timeout,
};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use super::{
    server::{MAX_DATAGRAM, MAX_WRITE_BUFFER, websocket_config},
    *,
};
use crate::metrics::{Metrics, ReasonLabels};

const WAIT: Duration = Duration::from_secs(10);

/// Tokens to allocation channels.
#[derive(Default)]
pub(crate) struct FakeDirectory {
    allocations: Mutex<HashMap<String, mpsc::Sender<WsEvent>>>,
}

impl FakeDirectory {
    /// Registers `token` and returns the allocation's end of its channel.
    pub(crate) fn allocation(&self, token: &str, capacity: usize) -> mpsc::Receiver<WsEvent> {
        let (tx, rx) = mpsc::channel(capacity);
        self.allocations.lock().unwrap().insert(token.to_owned(), tx);
        rx
    }
}

impl Directory for FakeDirectory {
    fn lookup(&self, token: &str) -> Option<mpsc::Sender<WsEvent>> {
        self.allocations.lock().unwrap().get(token).cloned()
    }
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: Metrics,
    pub(crate) directory: Arc<FakeDirectory>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start(limits: WsLimits, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let directory = Arc::new(FakeDirectory::default());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, tls, directory.clone(), limits, metrics.clone(), async {
            let _ = stopped.await;
        }));
        Server { addr, metrics, directory, stop: Some(stop), task }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/relay", self.addr)
    }

    /// Stops the listener and waits for `serve` to return.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(WAIT, &mut self.task).await.expect("serve did not return after shutdown").unwrap();
    }

    fn refused(&self, reason: &'static str) -> u64 {
        self.metrics.websocket_refused.get_or_create(&ReasonLabels { reason }).get()
    }

    fn dropped(&self, reason: &'static str) -> u64 {
        self.metrics.drops.get_or_create(&ReasonLabels { reason }).get()
    }
}

fn quick() -> WsLimits {
    WsLimits {
        handshake_timeout: Duration::from_millis(500),
        idle: Duration::from_secs(30),
        outbound_frames: 16,
        max_connections: 100,
        close_timeout: Duration::from_millis(300),
    }
}

async fn connect(url: &str, token: &str) -> Result<WsStream, ClientError> {
    connect_with(url, None, Some(token), websocket_config()).await
}

async fn next_event(rx: &mut mpsc::Receiver<WsEvent>) -> WsEvent {
    timeout(WAIT, rx.recv()).await.expect("no event from the listener").expect("listener dropped the channel")
}

async fn opened(rx: &mut mpsc::Receiver<WsEvent>) -> (ConnId, mpsc::Sender<Vec<u8>>) {
    match next_event(rx).await {
        WsEvent::Open { conn, outbound } => (conn, outbound),
        other => panic!("expected Open, got {other:?}"),
    }
}

async fn closed(rx: &mut mpsc::Receiver<WsEvent>, conn: ConnId) {
    loop {
        match next_event(rx).await {
            WsEvent::Closed { conn: c } if c == conn => return,
            WsEvent::Frame { .. } => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }
}

/// The next close frame from the server, skipping data.
async fn close_code(ws: &mut WsStream) -> CloseCode {
    loop {
        match timeout(WAIT, ws.next()).await.expect("server did not close") {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) => panic!("close without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn unknown_or_missing_tokens_are_refused_with_401() {
    let server = Server::start(quick(), None).await;
    let _allocation = server.directory.allocation("good-token", 8);

    let err = connect(&server.url(), "bad-token").await.unwrap_err();
    assert_eq!(err.http_status(), Some(401), "{err}");
    let err = connect_with(&server.url(), None, None, websocket_config()).await.unwrap_err();
    assert_eq!(err.http_status(), Some(401), "{err}");
    assert_eq!(server.refused("token"), 2);
    assert_eq!(server.metrics.websocket_connections.get(), 0);

    // The right token works, with the scheme in any case.
    connect(&server.url(), "good-token").await.unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.url()).unwrap();
    request.headers_mut().insert("authorization", "bEaReR   good-token ".parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(server.refused("token"), 2);
    server.stop().await;
}

#[tokio::test]
async fn frames_flow_both_ways_and_the_allocation_hears_open_and_closed() {
    let server = Server::start(quick(), None).await;
    let mut allocation = server.directory.allocation("t1", 64);
    let mut ws = connect(&server.url(), "t1").await.unwrap();
    let (conn, outbound) = opened(&mut allocation).await;
    assert_eq!(server.metrics.websocket_connections.get(), 1);

    for size in [1usize, 32, 148, 1452, 65_535] {
        let datagram: Vec<u8> = (0..size).map(|i| i as u8).collect();
        ws.send(Message::binary(datagram.clone())).await.unwrap();
        match next_event(&mut allocation).await {
            WsEvent::Frame { conn: c, datagram: got } => {
                assert_eq!(c, conn);
                assert_eq!(got, datagram);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        outbound.try_send(datagram.clone()).unwrap();
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(got) => assert_eq!(got, datagram),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    // Pings are answered.
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }

    ws.close(None).await.unwrap();
    closed(&mut allocation, conn).await;
    assert_eq!(server.metrics.websocket_connections.get(), 0);

    // A second connection gets another id.
    let _ws = connect(&server.url(), "t1").await.unwrap();
    let (second, _) = opened(&mut allocation).await;
    assert_ne!(second, conn);
    server.stop().await;
    closed(&mut allocation, second).await;
}

#[tokio::test]
async fn text_frames_are_refused_and_counted() {
    let server = Server::start(quick(), None).await;
    let mut allocation = server.directory.allocation("t", 8);
    let mut ws = connect(&server.url(), "t").await.unwrap();
    let (conn, _outbound) = opened(&mut allocation).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Unsupported);
    closed(&mut allocation, conn).await;
    assert_eq!(server.dropped("ws_bad_frame"), 1);
    server.stop().await;
}

#[tokio::test]
async fn oversized_frames_are_refused_before_they_are_buffered() {
    let server = Server::start(quick(), None).await;
    let mut allocation = server.directory.allocation("t", 8);
    let mut ws = connect(&server.url(), "t").await.unwrap();
    let (conn, _outbound) = opened(&mut allocation).await;
    ws.send(Message::binary(vec![0u8; MAX_DATAGRAM + 1])).await.unwrap();
    assert_eq!(close_code(&mut ws).await, CloseCode::Size);
    closed(&mut allocation, conn).await;
    assert_eq!(server.dropped("ws_bad_frame"), 1);
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let limits = WsLimits { idle: Duration::from_millis(300), ..quick() };
    let server = Server::start(limits, None).await;
    let mut allocation = server.directory.allocation("t", 8);
    let mut ws = connect(&server.url(), "t").await.unwrap();
    let (conn, outbound) = opened(&mut allocation).await;

    // Traffic keeps it open past the idle time...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        outbound.try_send(vec![4; 32]).unwrap();
        assert!(matches!(timeout(WAIT, ws.next()).await.unwrap(), Some(Ok(Message::Binary(_)))));
    }
    // ...silence does not.
    let started = tokio::time::Instant::now();
    assert_eq!(close_code(&mut ws).await, CloseCode::Away);
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    closed(&mut allocation, conn).await;
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_reads_cannot_make_the_relay_buffer() {
    let limits = WsLimits { idle: Duration::from_secs(2), ..quick() };
    let server = Server::start(limits.clone(), None).await;
    let mut allocation = server.directory.allocation("t", 8);

    // A client with a small receive buffer that never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp: TcpStream = socket.connect(server.addr).await.unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.url()).unwrap();
    request.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
    let (_ws, _) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(websocket_config())).await.unwrap();
    let (conn, outbound) = opened(&mut allocation).await;

    const DATAGRAM: usize = 32 * 1024;
    const ATTEMPTS: usize = 2000; // 64 MiB offered
    let mut accepted = 0usize;
    for i in 0..ATTEMPTS {
        if outbound.try_send(vec![i as u8; DATAGRAM]).is_ok() {
            accepted += 1;
        }
        if i % 16 == 0 {
            // Let the writer drain what the socket takes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // The queue is at its bound, and all but what the kernel's socket
    // buffers and the queue hold was refused.
    assert_eq!(outbound.capacity(), 0, "the outbound queue should be full");
    assert_eq!(outbound.max_capacity(), limits.outbound_frames);
    let buffered = accepted * DATAGRAM;
    eprintln!("accepted {accepted} of {ATTEMPTS} datagrams ({} KiB)", buffered / 1024);
    // The bound: the queue, the WebSocket write buffer, the kernel's largest
    // TCP send buffer and the client's small receive buffer (with slack).
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20);
    let bound = limits.outbound_frames + (MAX_WRITE_BUFFER + wmem_max + 64 * 1024) / DATAGRAM + 2;
    assert!(accepted <= bound, "accepted {accepted} of {ATTEMPTS}, bound {bound}");
    assert!(accepted < ATTEMPTS / 10, "accepted {accepted} of {ATTEMPTS}");

    // The stalled connection sends nothing, so it goes idle and is closed,
    // even though the closing handshake cannot get through.
    closed(&mut allocation, conn).await;
    assert_eq!(server.metrics.websocket_connections.get(), 0);
    server.stop().await;
}

#[tokio::test]
async fn slow_handshakes_time_out_and_capacity_is_bounded() {
    let limits = WsLimits { max_connections: 2, ..quick() };
    let server = Server::start(limits, None).await;
    let _allocation = server.directory.allocation("t", 8);

    // Two silent TCP connections take both slots...
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a third is dropped at once.
    let err = connect(&server.url(), "t").await.unwrap_err();
    assert!(err.http_status().is_none(), "{err}");
    assert_eq!(server.refused("capacity"), 1);

    // The handshake timeout frees them.
    let mut buf = [0u8; 64];
    use tokio::io::AsyncReadExt as _;
    assert_eq!(timeout(WAIT, a.read(&mut buf)).await.unwrap().unwrap_or(0), 0);
    assert_eq!(timeout(WAIT, b.read(&mut buf)).await.unwrap().unwrap_or(0), 0);
    assert_eq!(server.refused("handshake"), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    connect(&server.url(), "t").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connections_going_away() {
    let server = Server::start(quick(), None).await;
    let mut allocation = server.directory.allocation("t", 8);
    let mut ws = connect(&server.url(), "t").await.unwrap();
    let (conn, _outbound) = opened(&mut allocation).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(close_code(&mut ws).await, CloseCode::Away);
    closed(&mut allocation, conn).await;
    timeout(WAIT, stopping).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn an_ended_allocation_closes_its_connections() {
    let server = Server::start(quick(), None).await;
    let mut allocation = server.directory.allocation("t", 8);
    let mut ws = connect(&server.url(), "t").await.unwrap();
    let (conn, outbound) = opened(&mut allocation).await;
    // The allocation drops its sender: the connection has no one to carry
    // datagrams for any more.
    drop(outbound);
    assert_eq!(close_code(&mut ws).await, CloseCode::Normal);
    closed(&mut allocation, conn).await;
    server.stop().await;
}

pub(crate) mod tls {
    use std::path::PathBuf;

    use super::*;

    /// A self-signed certificate in a temporary folder: (folder, cert, key,
    /// SHA-256 of the DER certificate).
    pub(crate) fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf, [u8; 32]) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["relay.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let pin = ferry_control::pin::fingerprint(cert.der());
        (dir, cert_path, key_path, pin)
    }

    #[test]
    fn the_pin_is_the_leaf_certificates_fingerprint() {
        let (dir, cert, _key, pin) = self_signed();
        assert_eq!(certificate_pin(&cert).unwrap(), ferry_control::pin::format_fingerprint(&pin));
        // A chain: the leaf comes first, the issuer after it.
        let issuer = rcgen::CertificateParams::new(vec!["ca.example".to_owned()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let chain = dir.path().join("chain.pem");
        std::fs::write(&chain, format!("{}{}", std::fs::read_to_string(&cert).unwrap(), issuer.pem()))
            .unwrap();
        assert_eq!(certificate_pin(&chain).unwrap(), ferry_control::pin::format_fingerprint(&pin));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(certificate_pin(&empty).is_err());
    }

    #[tokio::test]
    async fn tls_with_a_pinned_self_signed_certificate() {
        let (_dir, cert, key, pin) = self_signed();
        let server = Server::start(quick(), Some(tls_acceptor(&cert, &key).unwrap())).await;
        let mut allocation = server.directory.allocation("t", 8);
        let url = format!("wss://{}/relay", server.addr);

        let mut ws = connect_with(&url, Some(pin), Some("t"), websocket_config()).await.unwrap();
        let (conn, outbound) = opened(&mut allocation).await;
        ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert!(
            matches!(next_event(&mut allocation).await, WsEvent::Frame { datagram, .. } if datagram == [1, 2, 3])
        );
        outbound.try_send(vec![4, 5, 6]).unwrap();
        assert!(
            matches!(timeout(WAIT, ws.next()).await.unwrap(), Some(Ok(Message::Binary(d))) if d == vec![4, 5, 6])
        );
        ws.close(None).await.unwrap();
        closed(&mut allocation, conn).await;

        // Another pin, or plain WebSocket, gets nowhere.
        let err = connect_with(&url, Some([7; 32]), Some("t"), websocket_config()).await.unwrap_err();
        assert!(matches!(err, ClientError::PinMismatch { .. }), "{err}");
        let err = connect(&server.url(), "t").await.unwrap_err();
        assert!(err.http_status().is_none(), "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(server.refused("tls") >= 2, "{}", server.metrics.encode());
        server.stop().await;
    }

    #[test]
    fn bad_certificate_files_name_the_file() {
        let (dir, cert, _key, _) = self_signed();
        let missing = dir.path().join("nope.pem");
        let err = tls_acceptor(&cert, &missing).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let err = tls_acceptor(&cert, &cert).map(|_| ()).unwrap_err();
        assert!(matches!(err, ferry_daemon::tls::LoadError::NoKey { .. }), "{err}");
    }
}

/// The `ws-bridge` command line. The bridge itself is ferry-connect's,
/// tested there against this listener.
mod bridge_args {
    use crate::ws::bridge::BridgeArgs;

    #[test]
    fn arguments_read_the_token_file_and_the_pin() {
        use clap::Parser as _;

        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bridge: BridgeArgs,
        }

        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "s3cret\n").unwrap();
        let pin = ferry_control::pin::format_fingerprint(&[0xab; 32]);
        let cli = Cli::try_parse_from([
            "ws-bridge",
            "--url",
            "wss://relay.example/relay",
            "--token-file",
            token_file.to_str().unwrap(),
            "--pin",
            &pin,
        ])
        .unwrap();
        let options = cli.bridge.into_options().unwrap();
        assert_eq!(options.relay.token, "s3cret");
        assert_eq!(options.relay.pin, Some([0xab; 32]));
        assert_eq!(options.listen, "127.0.0.1:51821".parse().unwrap());

        let cli = Cli::try_parse_from([
            "ws-bridge",
            "--url",
            "wss://relay.example/r",
            "--token",
            "t",
            "--pin",
            "AB:CD",
        ])
        .unwrap();
        let err = cli.bridge.into_options().unwrap_err().to_string();
        assert!(err.contains("not a SHA-256 fingerprint"), "{err}");

        // Settings no retry fixes are refused before anything starts.
        let cli =
            Cli::try_parse_from(["ws-bridge", "--url", "wss://relay.example/r", "--token", "t"]).unwrap();
        let err = format!("{:#}", cli.bridge.into_options().unwrap_err());
        assert!(err.contains("needs the relay certificate's SHA-256 pin"), "{err}");
    }
}

/// What the `ws_frames` fuzz target does, with inputs whose outcome is known:
/// an upgrade request and a client's frames written at once into an
/// in-memory stream, and time paused so that timeouts pass instantly.
mod in_memory {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const UPGRADE: &[u8] = b"GET /relay HTTP/1.1\r\nHost: relay.example\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Authorization: Bearer t\r\n\r\n";

    /// A masked client frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Runs one connection on `input` and returns how it ended, the events
    /// and what the server wrote.
    async fn run(input: &[u8]) -> (End, Vec<WsEvent>, Vec<u8>) {
        run_with(input, true).await
    }

    /// `hang_up`: the client shuts its sending side after the input.
    async fn run_with(input: &[u8], hang_up: bool) -> (End, Vec<WsEvent>, Vec<u8>) {
        let directory = Arc::new(FakeDirectory::default());
        let mut allocation = directory.allocation("t", 64);
        let connections = Connections::new(directory, WsLimits::default(), Metrics::new());
        let (client, server) = tokio::io::duplex(16 * 1024);
        let input = input.to_vec();
        // A client sends its frames once the upgrade is answered (the server
        // refuses bytes pipelined behind the request), then reads to the end.
        let client = tokio::spawn(async move {
            let (mut from_server, mut to_server) = tokio::io::split(client);
            to_server.write_all(UPGRADE).await.unwrap();
            let mut written = Vec::new();
            let mut buf = [0u8; 1024];
            while !contains(&written, b"\r\n\r\n") {
                match from_server.read(&mut buf).await {
                    Ok(n) if n > 0 => written.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let send = async {
                let _ = to_server.write_all(&input).await;
                if hang_up {
                    let _ = to_server.shutdown().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let _ = tokio::join!(send, from_server.read_to_end(&mut written));
            written
        });
        let started = tokio::time::Instant::now();
        let end = connections.handle(server).await;
        assert!(started.elapsed() <= Duration::from_secs(120), "{:?}", started.elapsed());
        if !hang_up {
            client.abort();
        }
        drop(connections);
        let written = client.await.unwrap_or_default();
        let mut events = Vec::new();
        while let Ok(event) = allocation.try_recv() {
            events.push(event);
        }
        (end, events, written)
    }

    #[tokio::test(start_paused = true)]
    async fn frames_after_the_upgrade_reach_the_allocation() {
        let mut input = frame(0x2, b"one");
        input.extend(frame(0x9, b"ping"));
        input.extend(frame(0x2, b"two"));
        input.extend(frame(0x8, &1000u16.to_be_bytes()));
        let (end, events, written) = run(&input).await;
        assert_eq!(end, End::PeerClosed);
        let frames: Vec<&[u8]> = events
            .iter()
            .filter_map(|e| match e {
                WsEvent::Frame { datagram, .. } => Some(datagram.as_slice()),
                _ => None,
            })
            .collect();
        assert_eq!(frames, [b"one".as_slice(), b"two".as_slice()]);
        assert!(matches!(events.first(), Some(WsEvent::Open { .. })));
        assert!(matches!(events.last(), Some(WsEvent::Closed { .. })));
        let text = String::from_utf8_lossy(&written);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        // The pong, then the close echoed.
        assert!(contains(&written, &[0x8a, 4, b'p', b'i', b'n', b'g']), "{written:02x?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_early_goes_silent_or_breaks_the_protocol_ends_in_bounded_time() {
        let (end, events, _) = run(&frame(0x2, b"x")[..3]).await;
        assert_eq!(end, End::PeerClosed, "{events:?}");
        let (end, _, _) = run(&[]).await;
        assert_eq!(end, End::PeerClosed);
        // Half a frame, then nothing: the idle timeout (60 s of paused time).
        let started = tokio::time::Instant::now();
        let (end, _, _) = run_with(&frame(0x2, b"x")[..3], false).await;
        assert_eq!(end, End::Idle);
        assert!(started.elapsed() >= WsLimits::default().idle);
        let (end, _, _) = run(&frame(0x1, b"text")).await;
        assert_eq!(end, End::BadFrame(BadFrame::Text));
        // Unmasked client frames break RFC 6455.
        let (end, _, _) = run(&[0x82, 3, 1, 2, 3]).await;
        assert_eq!(end, End::BadFrame(BadFrame::Protocol));
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
