//! The WebSocket relay client (`WsRelay` and the bridge on it) against the
//! relay's real WebSocket listener, in-process on loopback TCP, with a
//! directory of allocations the test controls, and real UDP sockets for the
//! bridge's local side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use ferry_connect::ws::{
    Dropped, Incoming, LinkError, MAX_DATAGRAM, WsRelay, WsRelayOptions, WsState,
    bridge::{Bridge, BridgeOptions},
};
use ferry_relay::{
    metrics::{Metrics, ReasonLabels},
    ws::{ConnId, Directory, WsEvent, WsLimits, serve, tls_acceptor},
};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::timeout,
};

const WAIT: Duration = Duration::from_secs(10);

/// Tokens to allocation channels.
#[derive(Default)]
struct FakeDirectory {
    allocations: Mutex<HashMap<String, mpsc::Sender<WsEvent>>>,
}

impl FakeDirectory {
    /// Registers `token` and returns the allocation's end of its channel.
    fn allocation(&self, token: &str, capacity: usize) -> mpsc::Receiver<WsEvent> {
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

/// The relay's WebSocket listener.
struct Server {
    addr: SocketAddr,
    metrics: Metrics,
    directory: Arc<FakeDirectory>,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// With `tls`, the certificate and key files to serve.
    async fn start(limits: WsLimits, tls: Option<(&Path, &Path)>) -> Server {
        let tls = tls.map(|(cert, key)| tls_acceptor(cert, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let directory = Arc::new(FakeDirectory::default());
        let (stop, stopped) = oneshot::channel();
        let is_tls = tls.is_some();
        let task = tokio::spawn(serve(listener, tls, directory.clone(), limits, metrics.clone(), async {
            let _ = stopped.await;
        }));
        Server { addr, metrics, directory, tls: is_tls, stop: Some(stop), task }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/relay", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(WAIT, &mut self.task).await.expect("serve did not return after shutdown").unwrap();
    }

    fn refused(&self, reason: &'static str) -> u64 {
        self.metrics.websocket_refused.get_or_create(&ReasonLabels { reason }).get()
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

/// Short keepalives, so that idle and dead-connection handling show in
/// test time.
fn options(url: String, token: &str, pin: Option<[u8; 32]>) -> WsRelayOptions {
    WsRelayOptions {
        keepalive: Duration::from_millis(100),
        dead_after: Duration::from_secs(1),
        ..WsRelayOptions::new(url, token, pin)
    }
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

async fn frame(allocation: &mut mpsc::Receiver<WsEvent>) -> (ConnId, Vec<u8>) {
    match next_event(allocation).await {
        WsEvent::Frame { conn, datagram } => (conn, datagram),
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn until(
    state: &mut watch::Receiver<WsState>,
    what: &str,
    done: impl FnMut(&WsState) -> bool,
) -> WsState {
    let found = match timeout(WAIT, state.wait_for(done)).await {
        Ok(Ok(state)) => Some(state.clone()),
        Ok(Err(_)) => panic!("the relay client went away waiting for {what}"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| panic!("waited in vain for {what}: {:?}", *state.borrow()))
}

/// Counters are bumped around the I/O they count: poll for them.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn up(relay: &WsRelay) {
    until(&mut relay.watch_state(), "a connection", WsState::is_up).await;
}

async fn received(incoming: &mut Incoming) -> Vec<u8> {
    timeout(WAIT, incoming.recv()).await.expect("nothing from the relay").expect("the relay client ended")
}

/// A self-signed certificate in a temporary folder: (folder, cert, key,
/// SHA-256 of the DER certificate).
fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf, [u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["relay.example".to_owned()]).unwrap().self_signed(&key).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let pin = ferry_connect::pin::fingerprint(cert.der());
    (dir, cert_path, key_path, pin)
}

mod transport {
    use super::*;

    #[tokio::test]
    async fn datagrams_flow_both_ways_and_are_counted() {
        let server = Server::start(quick(), None).await;
        let mut allocation = server.directory.allocation("tok", 64);
        let (relay, mut incoming) = WsRelay::start(options(server.url(), "tok", None)).unwrap();
        let (conn, outbound) = opened(&mut allocation).await;
        up(&relay).await;

        // A handshake initiation's size, a full-size packet, the largest.
        let sizes = [148usize, 1452, MAX_DATAGRAM];
        for size in sizes {
            let datagram: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            relay.send(&datagram).unwrap();
            assert_eq!(frame(&mut allocation).await, (conn, datagram.clone()));
            outbound.try_send(datagram.clone()).unwrap();
            assert_eq!(received(&mut incoming).await, datagram);
        }
        // A burst keeps its order.
        for i in 0..100u8 {
            relay.send(&[i; 64]).unwrap();
        }
        for i in 0..100u8 {
            assert_eq!(frame(&mut allocation).await, (conn, vec![i; 64]));
        }
        // Larger than a frame may be: refused here rather than by the relay
        // closing the connection.
        assert_eq!(relay.send(&vec![0; MAX_DATAGRAM + 1]), Err(Dropped::Oversized));

        let expected = sizes.len() as u64;
        eventually("the counters", || {
            let stats = relay.stats();
            stats.sent == expected + 100 && stats.received == expected
        })
        .await;
        let stats = relay.stats();
        assert_eq!(stats.dropped_oversized, 1);
        assert_eq!((stats.connects, stats.failures), (1, 0));

        // Keepalives hold the connection across several idle periods.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(allocation.try_recv().is_err(), "the connection should still be open");

        let mut state = relay.watch_state();
        relay.stop().await;
        assert_eq!(*state.borrow_and_update(), WsState::Stopped);
        closed(&mut allocation, conn).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn keepalives_beat_the_relays_idle_timeout() {
        let limits = WsLimits { idle: Duration::from_millis(400), ..quick() };
        let server = Server::start(limits, None).await;
        let mut allocation = server.directory.allocation("tok", 16);
        let (relay, _incoming) = WsRelay::start(options(server.url(), "tok", None)).unwrap();
        let (conn, _outbound) = opened(&mut allocation).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(allocation.try_recv().is_err(), "the idle timeout closed a connection with keepalives");
        assert!(relay.state().is_up());
        // Dropping the handle ends the connection too.
        drop(relay);
        closed(&mut allocation, conn).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn reconnects_after_the_relay_drops_the_connection() {
        let server = Server::start(quick(), None).await;
        let mut allocation = server.directory.allocation("tok", 64);
        let (relay, mut incoming) = WsRelay::start(options(server.url(), "tok", None)).unwrap();
        let (first, outbound) = opened(&mut allocation).await;
        up(&relay).await;
        relay.send(b"hello").unwrap();
        assert_eq!(frame(&mut allocation).await, (first, b"hello".to_vec()));

        // The allocation side drops the connection: the relay closes it
        // (1000) and the client comes back by itself.
        drop(outbound);
        closed(&mut allocation, first).await;
        let (second, outbound) = opened(&mut allocation).await;
        assert_ne!(first, second);
        up(&relay).await;
        let stats = relay.stats();
        assert_eq!((stats.connects, stats.failures), (2, 1), "{stats:?}");
        relay.send(b"again").unwrap();
        assert_eq!(frame(&mut allocation).await, (second, b"again".to_vec()));
        outbound.try_send(b"back".to_vec()).unwrap();
        assert_eq!(received(&mut incoming).await, b"back");

        // The relay going away entirely: the client says why and waits.
        server.stop().await;
        closed(&mut allocation, second).await;
        let mut state = relay.watch_state();
        let down = until(&mut state, "the loss to show", |s| s.last_error().is_some()).await;
        assert!(
            matches!(
                down.last_error(),
                Some(LinkError::Closed { code: Some(1001), .. } | LinkError::Connect(_))
            ),
            "{down:?}"
        );
        assert_eq!(relay.send(b"into the void"), Err(Dropped::Down));
        assert!(relay.stats().dropped_down >= 1);
        relay.stop().await;
    }

    #[tokio::test]
    async fn a_refused_token_is_a_typed_state_and_is_retried_until_known() {
        let server = Server::start(quick(), None).await;
        let (relay, _incoming) = WsRelay::start(options(server.url(), "later", None)).unwrap();
        let mut state = relay.watch_state();
        let refused = until(&mut state, "the token refusal", |s| s.last_error().is_some()).await;
        assert_eq!(refused.last_error(), Some(&LinkError::TokenRefused), "{refused:?}");
        assert!(!refused.is_up());
        // Nothing is queued while there is no connection.
        assert_eq!(relay.send(b"early"), Err(Dropped::Down));
        assert_eq!(relay.stats().dropped_down, 1);

        // Retried with backoff until the allocation is known.
        let deadline = tokio::time::Instant::now() + WAIT;
        while server.refused("token") < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the client did not retry");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut allocation = server.directory.allocation("later", 8);
        let (conn, _outbound) = opened(&mut allocation).await;
        up(&relay).await;
        relay.send(b"now").unwrap();
        assert_eq!(frame(&mut allocation).await, (conn, b"now".to_vec()));
        relay.stop().await;
        closed(&mut allocation, conn).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn over_tls_only_with_the_pinned_certificate() {
        let (_dir, cert, key, pin) = self_signed();
        let server = Server::start(quick(), Some((&cert, &key))).await;
        let mut allocation = server.directory.allocation("tok", 8);

        // Another pin: refused, typed, and the allocation never hears of it.
        let (wrong, _incoming) = WsRelay::start(options(server.url(), "tok", Some([7; 32]))).unwrap();
        let mut state = wrong.watch_state();
        let refused = until(&mut state, "the pin mismatch", |s| s.last_error().is_some()).await;
        match refused.last_error() {
            Some(LinkError::PinMismatch { expected, got }) => {
                assert_eq!(expected, &"07".repeat(32));
                assert_eq!(
                    got,
                    &ferry_connect::pin::format_fingerprint(&pin).replace(':', "").to_lowercase()
                );
            }
            other => panic!("expected a pin mismatch, got {other:?}"),
        }
        wrong.stop().await;
        assert!(allocation.try_recv().is_err(), "a connection with the wrong pin reached the allocation");

        // The right pin connects.
        let (relay, mut incoming) = WsRelay::start(options(server.url(), "tok", Some(pin))).unwrap();
        let (conn, outbound) = opened(&mut allocation).await;
        up(&relay).await;
        relay.send(b"sealed").unwrap();
        assert_eq!(frame(&mut allocation).await, (conn, b"sealed".to_vec()));
        outbound.try_send(b"reply".to_vec()).unwrap();
        assert_eq!(received(&mut incoming).await, b"reply");
        relay.stop().await;
        server.stop().await;
    }

    /// A server that completes the upgrade and then never reads: no pong
    /// ever comes back. The listener itself is not the relay's, since the
    /// relay's always answers.
    #[tokio::test]
    async fn a_silent_connection_is_given_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/relay", listener.local_addr().unwrap());
        let (held_tx, mut held) = mpsc::channel(4);
        // One upgrade; the listener stays open but accepts no more, so the
        // next attempt hangs in its handshake and the state keeps the error.
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            held_tx.send(ws).await.unwrap();
            // `listener` lives as long as this task.
            std::future::pending::<()>().await;
        });
        let (relay, _incoming) = WsRelay::start(options(url, "tok", None)).unwrap();
        let _ws = timeout(WAIT, held.recv()).await.unwrap().unwrap();
        let mut state = relay.watch_state();
        let dead = until(&mut state, "the silence to be noticed", |s| s.last_error().is_some()).await;
        assert_eq!(dead.last_error(), Some(&LinkError::Silent(Duration::from_secs(1))), "{dead:?}");
        relay.stop().await;
        server.abort();
    }
}

/// The `ws-bridge` program: a local UDP socket for a stock WireGuard.
mod bridging {
    use super::*;

    struct Running {
        addr: SocketAddr,
        state: watch::Receiver<WsState>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), ferry_connect::ws::bridge::BridgeError>>,
    }

    impl Running {
        async fn start(mut options: BridgeOptions) -> Running {
            options.listen = "127.0.0.1:0".parse().unwrap();
            options.relay.keepalive = Duration::from_millis(100);
            options.relay.dead_after = Duration::from_secs(1);
            let bridge = Bridge::bind(options).await.unwrap();
            let addr = bridge.local_addr().unwrap();
            let state = bridge.watch_state();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(bridge.run(async {
                let _ = stopped.await;
            }));
            Running { addr, state, stop: Some(stop), task }
        }

        async fn up(&mut self) {
            until(&mut self.state, "the bridge's connection", WsState::is_up).await;
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            timeout(WAIT, &mut self.task).await.expect("the bridge did not stop").unwrap().unwrap();
        }
    }

    /// The local WireGuard's socket.
    async fn wireguard() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = timeout(WAIT, socket.recv_from(&mut buf)).await.expect("no datagram").unwrap();
        buf.truncate(n);
        (buf, from)
    }

    #[tokio::test]
    async fn datagrams_cross_the_bridge_both_ways() {
        let server = Server::start(quick(), None).await;
        let mut allocation = server.directory.allocation("tok", 256);
        let mut bridge = Running::start(BridgeOptions::new(server.url(), "tok", None)).await;
        let (conn, outbound) = opened(&mut allocation).await;
        bridge.up().await;
        let wg = wireguard().await;

        for size in [148usize, 1452, 65_000] {
            let datagram: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            wg.send_to(&datagram, bridge.addr).await.unwrap();
            assert_eq!(frame(&mut allocation).await, (conn, datagram.clone()));
            outbound.try_send(datagram.clone()).unwrap();
            let (got, from) = recv(&wg).await;
            assert_eq!(got, datagram);
            assert_eq!(from, bridge.addr);
        }
        for i in 0..100u8 {
            wg.send_to(&[i; 64], bridge.addr).await.unwrap();
        }
        for i in 0..100u8 {
            assert_eq!(frame(&mut allocation).await, (conn, vec![i; 64]));
        }

        bridge.stop().await;
        closed(&mut allocation, conn).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn the_bridge_reconnects_and_returns_to_the_last_sender() {
        let server = Server::start(quick(), None).await;
        let mut allocation = server.directory.allocation("tok", 64);
        let mut bridge = Running::start(BridgeOptions::new(server.url(), "tok", None)).await;
        let (first, outbound) = opened(&mut allocation).await;
        bridge.up().await;
        let wg = wireguard().await;
        wg.send_to(b"hello", bridge.addr).await.unwrap();
        assert_eq!(frame(&mut allocation).await, (first, b"hello".to_vec()));

        drop(outbound);
        closed(&mut allocation, first).await;
        let (second, outbound) = opened(&mut allocation).await;
        assert_ne!(first, second);
        bridge.up().await;
        // The way back still leads to the local WireGuard.
        outbound.try_send(b"back".to_vec()).unwrap();
        assert_eq!(recv(&wg).await.0, b"back");
        // A new local port (WireGuard rebound) becomes the way back.
        let wg2 = wireguard().await;
        wg2.send_to(b"moved", bridge.addr).await.unwrap();
        assert_eq!(frame(&mut allocation).await, (second, b"moved".to_vec()));
        outbound.try_send(b"to the new port".to_vec()).unwrap();
        assert_eq!(recv(&wg2).await.0, b"to the new port");

        bridge.stop().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn bridging_over_tls_with_a_pin() {
        let (_dir, cert, key, pin) = self_signed();
        let server = Server::start(quick(), Some((&cert, &key))).await;
        let mut allocation = server.directory.allocation("tok", 8);
        let mut bridge = Running::start(BridgeOptions::new(server.url(), "tok", Some(pin))).await;
        let (conn, outbound) = opened(&mut allocation).await;
        bridge.up().await;
        let wg = wireguard().await;
        wg.send_to(b"sealed", bridge.addr).await.unwrap();
        assert_eq!(frame(&mut allocation).await, (conn, b"sealed".to_vec()));
        outbound.try_send(b"reply".to_vec()).unwrap();
        assert_eq!(recv(&wg).await.0, b"reply");
        bridge.stop().await;
        server.stop().await;
    }

    #[tokio::test]
    async fn options_that_cannot_work_are_refused_before_binding() {
        let mut options = BridgeOptions::new("wss://relay.example/relay", "tok", None);
        options.listen = "127.0.0.1:0".parse().unwrap();
        let err = Bridge::bind(options).await.map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("pin"), "{err}");
        assert!(!format!("{:?}", BridgeOptions::new("ws://r/", "s3cret", None)).contains("s3cret"));
    }
}
