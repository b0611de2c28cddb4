//! Serving the router over TCP, with TLS or without.
//!
//! One accept loop of our own for both, rather than `axum::serve` (plain)
//! beside `axum-server` (TLS): `axum::serve` runs its listener's `accept`
//! one at a time, so a TLS handshake done there would let one slow client
//! stall every other; `axum-server` hides failed handshakes, which we want
//! to count; and with one loop both modes get the same HTTP settings (a
//! header read timeout, upgrades, graceful shutdown) and the same tests.
//! Each connection's handshake runs in its own task under a deadline.

use std::{future::Future, io, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo, http::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::sources::{Over, Share, Source, Tally};

/// A connection's place under the connection caps, in every request's
/// extensions. A connection leaves the caps when its HTTP exchange ends,
/// which for an upgraded one (a WebSocket) is at the upgrade; a handler
/// that upgrades before the client has proven who it is keeps this clone
/// until it has, so unauthenticated sockets stay counted. Released when the
/// last clone is dropped.
#[derive(Clone, Debug)]
pub struct ConnectionSlot(#[allow(dead_code, reason = "held for its Drop")] Arc<Share>);

/// How long a client may take to complete its TLS handshake. Bounds what
/// connections that never finish one (slowloris, port scanners) can hold.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once, handshakes included. What a connection holds
/// is bounded in time (the handshake and header timeouts) but not in
/// number without this: a flood of connections opened faster than they
/// time out would grow memory and file descriptors without end. Beyond it,
/// a new connection is closed at once and counted.
pub const MAX_CONNECTIONS: usize = 4096;

/// Connections open at once from one client address (an IPv4 address, an
/// IPv6 /64: see [`Source`]). Without it one client could take all of
/// [`MAX_CONNECTIONS`] and lock everyone else out; with it, that takes
/// `MAX_CONNECTIONS / MAX_CONNECTIONS_PER_SOURCE` = 16 addresses. Clients
/// behind one NAT share it: 256 is far more than a browser (6 per origin)
/// or a gateway (1) opens.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 256;

/// The most a connection's HTTP layer buffers of what the client sent (a
/// request head must fit in it: beyond it hyper answers 431). hyper's
/// default (about 400 KiB) would let each of [`MAX_CONNECTIONS`]
/// connections hold that much: with this, a connection holds at most
/// twice this in hyper's read buffer, besides what TLS buffers (a record,
/// about 17 KiB, and its plaintext, 16 KiB, at most).
pub const MAX_BUFFER: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub tls_handshake_timeout: Duration,
    /// Counts handshakes that failed or timed out; clones share the count,
    /// so the metrics registry can hold one.
    pub tls_handshake_failures: Counter,
    pub max_connections: usize,
    /// Counts connections closed at accept because `max_connections` were
    /// open.
    pub connections_refused: Counter,
    pub max_connections_per_source: usize,
    /// Counts connections closed at accept because their source already had
    /// `max_connections_per_source` open.
    pub connections_refused_per_source: Counter,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            tls_handshake_failures: Counter::default(),
            max_connections: MAX_CONNECTIONS,
            connections_refused: Counter::default(),
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
            connections_refused_per_source: Counter::default(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish and returns. Handlers can take
/// `ConnectInfo<SocketAddr>` and upgrade to WebSocket, with TLS or without.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, app, tls, shutdown, ServeOptions::default()).await
}

pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    // Connections hold a receiver each; `closed` on the sender then waits
    // for the last of them.
    let (stop, stopped) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let open = Tally::new(options.max_connections, options.max_connections_per_source);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // Most likely out of file descriptors: wait for some to be
                    // closed rather than spin on the error.
                    tracing::error!(error = %err, "accepting a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let source = Source::of(remote.ip());
        let permit = match open.take(source, 1) {
            Ok(permit) => permit,
            Err(over) => {
                match over {
                    Over::Total => options.connections_refused.inc(),
                    Over::PerSource => options.connections_refused_per_source.inc(),
                };
                tracing::debug!(%remote, %source, reason = over.label(), "too many connections; closing a new one");
                drop(tcp);
                continue;
            }
        };
        let slot = ConnectionSlot(Arc::new(permit));
        let task =
            connection(tcp, remote, acceptor.clone(), app.clone(), stopped.clone(), options.clone(), slot);
        tokio::spawn(task);
    }
    drop(listener);
    drop(stopped);
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    mut stop: watch::Receiver<()>,
    options: ServeOptions,
    slot: ConnectionSlot,
) {
    let Some(acceptor) = acceptor else {
        return http(TokioIo::new(tcp), remote, app, stop, slot).await;
    };
    let handshake = tokio::time::timeout(options.tls_handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        // Nothing was asked yet, so nothing is lost by dropping it.
        _ = stop.changed() => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                options.tls_handshake_failures.inc();
                tracing::debug!(%remote, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                options.tls_handshake_failures.inc();
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        },
    };
    http(TokioIo::new(tls), remote, app, stop, slot).await
}

async fn http<I>(io: I, remote: SocketAddr, app: Router, mut stop: watch::Receiver<()>, slot: ConnectionSlot)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        // What `into_make_service_with_connect_info` would add.
        request.extensions_mut().insert(ConnectInfo(remote));
        request.extensions_mut().insert(slot.clone());
        let mut app = app.clone();
        app.call(request)
    });
    let mut builder = http1::Builder::new();
    // A timer makes hyper enforce its header read timeout (30 s), so a
    // client that trickles a request head cannot hold a connection forever.
    builder.timer(TokioTimer::new());
    builder.max_buf_size(MAX_BUFFER);
    let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%remote, error = %err, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::{
        extract::ws::{Message, WebSocket, WebSocketUpgrade},
        response::Response,
        routing::get,
    };
    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        sync::oneshot,
    };

    use super::*;
    use crate::tls;

    /// A client configuration trusting only the certificate with this
    /// fingerprint.
    fn pinned_client_config(fingerprint: &str) -> Arc<rustls::ClientConfig> {
        let pin = ferry_connect::pin::parse_fingerprint(fingerprint).unwrap();
        let verifier = Arc::new(ferry_connect::pin::PinnedVerifier::new(pin));
        Arc::new(ferry_connect::pin::client_config(verifier, &[tls::ALPN_HTTP11]).unwrap())
    }

    async fn whoami(ConnectInfo(addr): ConnectInfo<SocketAddr>) -> String {
        addr.to_string()
    }

    async fn echo(upgrade: WebSocketUpgrade) -> Response {
        upgrade.on_upgrade(|mut socket: WebSocket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                if let Message::Text(_) = message
                    && socket.send(message).await.is_err()
                {
                    break;
                }
            }
        })
    }

    /// Echoes like [`echo`], but keeps its connection under the caps until
    /// the first message, as a channel does until its peer is
    /// authenticated.
    async fn held(
        axum::Extension(slot): axum::Extension<ConnectionSlot>,
        upgrade: WebSocketUpgrade,
    ) -> Response {
        upgrade.on_upgrade(|mut socket: WebSocket| async move {
            let mut slot = Some(slot);
            while let Some(Ok(message)) = socket.recv().await {
                drop(slot.take());
                if let Message::Text(_) = message
                    && socket.send(message).await.is_err()
                {
                    break;
                }
            }
        })
    }

    struct Running {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        done: tokio::task::JoinHandle<io::Result<()>>,
        failures: Counter,
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>, handshake_timeout: Duration) -> Running {
        start_with(tls, ServeOptions { tls_handshake_timeout: handshake_timeout, ..ServeOptions::default() })
            .await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>, options: ServeOptions) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        };
        let app = Router::new()
            .route("/whoami", get(whoami))
            .route("/ws", get(echo))
            .route("/held", get(held))
            .route("/slow", get(slow));
        let (stop, stopped) = oneshot::channel::<()>();
        let failures = options.tls_handshake_failures.clone();
        let done = tokio::spawn(serve_with(
            listener,
            app,
            tls,
            async {
                let _ = stopped.await;
            },
            options,
        ));
        Running { addr, stop, done, failures }
    }

    fn self_signed(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, String) {
        let (cert, key) = tls::ensure_self_signed(dir, "test", &[]).unwrap();
        (tls::server_config(&cert, &key, &[tls::ALPN_HTTP11]).unwrap(), tls::fingerprint_file(&cert).unwrap())
    }

    async fn tls_connect(
        addr: SocketAddr,
        fingerprint: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(pinned_client_config(fingerprint));
        let tcp = TcpStream::connect(addr).await?;
        connector.connect("localhost".try_into().unwrap(), tcp).await
    }

    async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed after {head:?}");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// GET with `Connection: close`; returns the whole response.
    async fn get_text<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        // A TLS peer may close without close_notify after the response.
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Upgrades to WebSocket and checks that a text message comes back.
    async fn websocket_echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
        upgrade(&mut stream, "/ws").await;
        say_hi(&mut stream).await;
    }

    async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, path: &str) {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    }

    async fn say_hi<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
        // A masked text frame "hi" (clients must mask).
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 2];
        frame.extend_from_slice(&mask);
        frame.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        stream.write_all(&frame).await.unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0x81, 2, b'h', b'i']);
    }

    #[tokio::test]
    async fn plain_http_gives_connect_info_and_upgrades() {
        let server = start(None, TLS_HANDSHAKE_TIMEOUT).await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let response = get_text(tcp, "/whoami").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with(&local.to_string()), "{response}");

        websocket_echo(TcpStream::connect(server.addr).await.unwrap()).await;
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tls_gives_connect_info_and_upgrades() {
        let dir = tempfile::tempdir().unwrap();
        let (config, fingerprint) = self_signed(dir.path());
        let server = start(Some(config), TLS_HANDSHAKE_TIMEOUT).await;

        let stream = tls_connect(server.addr, &fingerprint).await.unwrap();
        let local = stream.get_ref().0.local_addr().unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let response = get_text(stream, "/whoami").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with(&local.to_string()), "{response}");

        websocket_echo(tls_connect(server.addr, &fingerprint).await.unwrap()).await;
        assert_eq!(server.failures.get(), 0);
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn failed_and_stalled_handshakes_are_counted_and_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (config, fingerprint) = self_signed(dir.path());
        let server = start(Some(config), Duration::from_millis(200)).await;

        // Plain HTTP to the TLS port.
        let response = get_text(TcpStream::connect(server.addr).await.unwrap(), "/whoami").await;
        assert!(!response.contains("200"), "{response}");
        // A client pinning another certificate.
        let wrong = tls::fingerprint_sha256(b"another certificate");
        let err = tls_connect(server.addr, &wrong).await.unwrap_err();
        assert!(err.to_string().contains("pinned"), "{err}");
        // A client that never starts its handshake is cut off.
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

        // The server is still serving.
        let response = get_text(tls_connect(server.addr, &fingerprint).await.unwrap(), "/whoami").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        // The server may count the rejected pin's alert just after the client gave up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while server.failures.get() < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.failures.get(), 3);
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once_and_counted() {
        let (refused, per_source) = (Counter::default(), Counter::default());
        let options = ServeOptions {
            max_connections: 2,
            connections_refused: refused.clone(),
            connections_refused_per_source: per_source.clone(),
            ..ServeOptions::default()
        };
        let server = start_with(None, options).await;
        // Two connections that say nothing hold the two places.
        let held =
            [TcpStream::connect(server.addr).await.unwrap(), TcpStream::connect(server.addr).await.unwrap()];
        let mut third = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the third connection was not closed: {read:?}");
        assert_eq!(refused.get(), 1);
        assert_eq!(per_source.get(), 0);
        // A place freed is a place for the next client.
        drop(held);
        served_again(server.addr).await;
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    /// A connection to `addr` from the loopback address `from` (any of
    /// 127.0.0.0/8 is this host's).
    async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn one_source_at_its_cap_is_refused_while_another_is_served() {
        let (refused, per_source) = (Counter::default(), Counter::default());
        let options = ServeOptions {
            max_connections: 10,
            connections_refused: refused.clone(),
            max_connections_per_source: 2,
            connections_refused_per_source: per_source.clone(),
            ..ServeOptions::default()
        };
        let server = start_with(None, options).await;
        let held =
            [connect_from("127.0.0.1", server.addr).await, connect_from("127.0.0.1", server.addr).await];
        let mut third = connect_from("127.0.0.1", server.addr).await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the third connection was not closed: {read:?}");
        assert_eq!((per_source.get(), refused.get()), (1, 0));

        // Another address of the same host is another source: served, twice.
        for _ in 0..2 {
            let other = connect_from("127.0.0.2", server.addr).await;
            let local = other.local_addr().unwrap();
            let response = get_text(other, "/whoami").await;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(response.ends_with(&local.to_string()), "{response}");
        }
        assert_eq!((per_source.get(), refused.get()), (1, 0));

        // A place freed is a place for the same source again.
        drop(held);
        served_again(server.addr).await;
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    /// Answers of fresh connections from 127.0.0.1 to `/whoami` until one is
    /// served (a closed connection frees its place a moment later).
    async fn served_again(addr: SocketAddr) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let response = get_text(connect_from("127.0.0.1", addr).await, "/whoami").await;
            if response.starts_with("HTTP/1.1 200") {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no place freed: {response:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_upgraded_connection_counts_until_its_handler_lets_go() {
        let per_source = Counter::default();
        let options = ServeOptions {
            max_connections_per_source: 1,
            connections_refused_per_source: per_source.clone(),
            ..ServeOptions::default()
        };
        let server = start_with(None, options).await;
        // Upgraded, not yet authenticated: still the source's one place.
        let mut pending = connect_from("127.0.0.1", server.addr).await;
        upgrade(&mut pending, "/held").await;
        let mut refused = connect_from("127.0.0.1", server.addr).await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a second connection was served: {read:?}");
        assert_eq!(per_source.get(), 1);
        // Its first message is what the handler waits for: the place is
        // given back while the socket stays open.
        say_hi(&mut pending).await;
        served_again(server.addr).await;
        // A handler that does not keep the place lets go at the upgrade.
        let mut echoing = connect_from("127.0.0.1", server.addr).await;
        upgrade(&mut echoing, "/ws").await;
        served_again(server.addr).await;
        say_hi(&mut echoing).await;
        say_hi(&mut pending).await;
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_request_head_beyond_the_buffer_is_refused_with_431() {
        let server = start(None, TLS_HANDSHAKE_TIMEOUT).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let big = "a".repeat(MAX_BUFFER + 1);
        let request = format!("GET /whoami HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
        // The server may stop reading before the whole head is written.
        let _ = stream.write_all(request.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
        // A head that fits is served.
        let response = get_text(TcpStream::connect(server.addr).await.unwrap(), "/whoami").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        server.stop.send(()).unwrap();
        server.done.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_request_in_flight_and_closes_idle_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (config, fingerprint) = self_signed(dir.path());
        let server = start(Some(config), TLS_HANDSHAKE_TIMEOUT).await;
        // An idle keep-alive connection must not hold up shutdown.
        let mut idle = tls_connect(server.addr, &fingerprint).await.unwrap();
        idle.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let head = read_head(&mut idle).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");

        let mut busy = tls_connect(server.addr, &fingerprint).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        // Let the request reach its handler before shutting down.
        tokio::time::sleep(Duration::from_millis(100)).await;

        server.stop.send(()).unwrap();
        let head = read_head(&mut busy).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::timeout(Duration::from_secs(5), server.done).await.unwrap().unwrap().unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting after shutdown");
        // The idle connection was closed after its one answer.
        let local = idle.get_ref().0.local_addr().unwrap();
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest).await;
        assert_eq!(String::from_utf8_lossy(&rest), local.to_string());
    }
}
