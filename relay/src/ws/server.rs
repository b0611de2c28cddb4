//! The WebSocket listener: TLS (optional), the upgrade with its bearer token,
//! and one task per connection that turns binary frames into [`WsEvent`]s
//! and the allocation's outbound datagrams into binary frames.
//!
//! Everything a peer can make the relay hold is bounded:
//! - connections, by [`WsLimits::max_connections`] (a connection counts from
//!   its TCP accept, so slow handshakes count too);
//! - the handshake (TLS and upgrade), by [`WsLimits::handshake_timeout`] and
//!   tungstenite's 64 KiB limit on the upgrade request;
//! - an inbound frame or message, by [`MAX_DATAGRAM`]: tungstenite refuses a
//!   larger one before buffering it, and the connection is closed (1009);
//! - inbound frames in flight: each is handed to the allocation with an
//!   awaited send, so a busy allocation stops the TCP reader (backpressure
//!   onto the peer) rather than queueing;
//! - outbound datagrams, by [`WsLimits::outbound_frames`] in the channel the
//!   allocation fills with `try_send` (it drops when full), plus one write
//!   buffer of at most [`MAX_WRITE_BUFFER`] bytes;
//! - a silent connection, by [`WsLimits::idle`], and a closing handshake by
//!   [`WsLimits::close_timeout`].

use std::{
    future::Future,
    path::Path,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink, stream::SplitStream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::{StatusCode, header},
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

use super::{ConnId, Directory, WsEvent};
use crate::metrics::{Metrics, ReasonLabels};

/// The HTTPS port, which the sites that need this relay let out.
pub const DEFAULT_PORT: u16 = 443;

// The framing limits are the client's too: they live with it, in
// ferry-connect, so that the two ends cannot drift apart.
pub use ferry_connect::ws::{MAX_DATAGRAM, MAX_WRITE_BUFFER, READ_BUFFER, WRITE_BUFFER, websocket_config};

/// Per-connection limits of the listener.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// TLS plus the HTTP upgrade, from the TCP accept.
    pub handshake_timeout: Duration,
    /// A connection with no frame in either direction for this long is
    /// closed. Clients send keepalives well within it.
    pub idle: Duration,
    /// Outbound datagrams queued per connection; beyond that the allocation
    /// drops them.
    pub outbound_frames: usize,
    /// Open connections, handshakes included; more are closed at once.
    pub max_connections: usize,
    /// How long a closing handshake may take before the TCP connection is
    /// dropped anyway.
    pub close_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            handshake_timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            outbound_frames: 256,
            max_connections: 10_000,
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// A TLS acceptor serving the PEM chain in `cert` with the key in `key`
/// (HTTP/1.1 by ALPN).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ferry_daemon::tls::LoadError> {
    let config = ferry_daemon::tls::server_config(cert, key, &[ferry_daemon::tls::ALPN_HTTP11])?;
    Ok(TlsAcceptor::from(config))
}

/// The pin of the certificate [`tls_acceptor`] serves from `cert`: the
/// SHA-256 of the chain's first (leaf) certificate, as
/// `ferry_control::pin::format_fingerprint` writes it. The relay tells the
/// cloud, which hands it to the peers: they trust no CA roots.
pub fn certificate_pin(cert: &Path) -> Result<String, ferry_daemon::tls::LoadError> {
    let chain = ferry_daemon::tls::load_certs(cert)?;
    // load_certs refuses a file without certificates, so there is a first.
    let leaf = chain
        .first()
        .ok_or_else(|| ferry_daemon::tls::LoadError::NoCertificate { path: cert.to_path_buf() })?;
    Ok(ferry_control::pin::format_fingerprint(&ferry_control::pin::fingerprint(leaf)))
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The upgrade was refused (`token`) or failed (`handshake`, `tls`).
    Refused(&'static str),
    /// The peer closed, or the TCP connection ended.
    PeerClosed,
    /// No frame either way for [`WsLimits::idle`].
    Idle,
    /// A frame the relay does not carry.
    BadFrame(BadFrame),
    /// The allocation dropped its channels: it ended.
    AllocationGone,
    /// The relay is shutting down.
    Shutdown,
    /// An I/O error on the connection.
    Error(String),
}

/// The frames that close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// Text: the relay carries binary datagrams only.
    Text,
    /// Larger than [`MAX_DATAGRAM`].
    Oversized,
    /// Not valid WebSocket (bad opcode, unmasked, bad close frame, ...).
    Protocol,
}

/// What all connections of one listener share. [`serve`] makes one; tests
/// and the fuzz target drive [`Connections::handle`] on in-memory streams.
pub struct Connections {
    directory: Arc<dyn Directory>,
    limits: WsLimits,
    metrics: Metrics,
    next_conn: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Connections {
    pub fn new(directory: Arc<dyn Directory>, limits: WsLimits, metrics: Metrics) -> Connections {
        Connections {
            directory,
            limits,
            metrics,
            next_conn: AtomicU64::new(1),
            closing: watch::Sender::new(false),
        }
    }

    pub fn limits(&self) -> &WsLimits {
        &self.limits
    }

    /// Tells every connection to close (1001, going away).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Serves one connection, already through TLS if any: the upgrade within
    /// the handshake timeout, then the session until either side ends it.
    pub async fn handle<S>(&self, stream: S) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.handle_until(stream, Instant::now() + self.limits.handshake_timeout).await
    }

    async fn handle_until<S>(&self, stream: S, deadline: Instant) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (ws, events) = match tokio::time::timeout_at(deadline, self.upgrade(stream)).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(reason)) => return self.refused(reason),
            Err(_) => return self.refused("handshake"),
        };
        self.session(ws, events).await
    }

    fn refused(&self, reason: &'static str) -> End {
        self.metrics.websocket_refused.get_or_create(&ReasonLabels { reason }).inc();
        End::Refused(reason)
    }

    /// The HTTP upgrade. The token is looked up while the request is read, so
    /// an unknown one is answered with 401 and never upgraded.
    async fn upgrade<S>(&self, stream: S) -> Result<(WebSocketStream<S>, mpsc::Sender<WsEvent>), &'static str>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut found = None;
        let mut token_refused = false;
        // The signature is tungstenite's `Callback`.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            let lookup = bearer_token(request).and_then(|token| self.directory.lookup(token));
            match lookup {
                Some(events) => {
                    found = Some(events);
                    Ok(response)
                }
                None => {
                    token_refused = true;
                    Err(unauthorized())
                }
            }
        };
        let accepted =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config())).await;
        match (accepted, found) {
            (Ok(ws), Some(events)) => Ok((ws, events)),
            _ if token_refused => Err("token"),
            _ => Err("handshake"),
        }
    }

    async fn session<S>(&self, ws: WebSocketStream<S>, events: mpsc::Sender<WsEvent>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbound, outbound_rx) = mpsc::channel(self.limits.outbound_frames.max(1));
        let (mut sink, mut stream) = ws.split();
        if events.send(WsEvent::Open { conn, outbound }).await.is_err() {
            // The allocation ended between the lookup and now.
            close(&mut sink, &mut stream, &End::AllocationGone, self.limits.close_timeout).await;
            return End::AllocationGone;
        }
        let open = OpenGuard::new(conn, events.clone(), &self.metrics);
        tracing::debug!(conn, "WebSocket connection open");

        let activity = Activity::new();
        let end = {
            let mut closing = self.closing.subscribe();
            let read = read_frames(&mut stream, conn, &events, &activity, &self.metrics);
            let write = write_frames(&mut sink, outbound_rx, &activity);
            let idle = idle_watch(&activity, self.limits.idle);
            tokio::select! {
                end = read => end,
                end = write => end,
                end = idle => end,
                _ = closing.wait_for(|closing| *closing) => End::Shutdown,
            }
        };
        if let End::BadFrame(_) = end {
            self.metrics.drop("ws_bad_frame");
        }
        tracing::debug!(conn, ?end, "WebSocket connection ends");
        // The allocation hears of it first; the closing handshake is only
        // politeness towards the peer.
        drop(open);
        close(&mut sink, &mut stream, &end, self.limits.close_timeout).await;
        end
    }
}

/// Counts the connection in the gauge while it is open and tells the
/// allocation when it ends, also when the task is cancelled.
struct OpenGuard {
    conn: ConnId,
    events: mpsc::Sender<WsEvent>,
    metrics: Metrics,
}

impl OpenGuard {
    fn new(conn: ConnId, events: mpsc::Sender<WsEvent>, metrics: &Metrics) -> OpenGuard {
        metrics.websocket_connections.inc();
        OpenGuard { conn, events, metrics: metrics.clone() }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metrics.websocket_connections.dec();
        let closed = WsEvent::Closed { conn: self.conn };
        match self.events.try_send(closed) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(closed)) => {
                // The allocation is busy: deliver it later rather than lose it.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let events = self.events.clone();
                    runtime.spawn(async move {
                        let _ = events.send(closed).await;
                    });
                }
            }
        }
    }
}

/// When the last frame went either way, as milliseconds since the start.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

async fn read_frames<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    conn: ConnId,
    events: &mpsc::Sender<WsEvent>,
    activity: &Activity,
    metrics: &Metrics,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(frame) = stream.next().await {
        activity.touch();
        match frame {
            Ok(Message::Binary(datagram)) => {
                if datagram.is_empty() {
                    metrics.drop("ws_empty_frame");
                    continue;
                }
                let frame = WsEvent::Frame { conn, datagram: Vec::from(datagram) };
                // Awaited: a busy allocation holds this reader, and TCP
                // flow control holds the peer.
                if events.send(frame).await.is_err() {
                    return End::AllocationGone;
                }
            }
            Ok(Message::Text(_)) => return End::BadFrame(BadFrame::Text),
            // tungstenite queues the pong itself and sends it with the next
            // read or write.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(_)) => return End::PeerClosed,
            Err(tungstenite::Error::Capacity(_)) => return End::BadFrame(BadFrame::Oversized),
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                return End::PeerClosed;
            }
            Err(
                tungstenite::Error::Protocol(_)
                | tungstenite::Error::Utf8(_)
                | tungstenite::Error::AttackAttempt,
            ) => {
                return End::BadFrame(BadFrame::Protocol);
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return End::PeerClosed;
            }
            Err(e) => return End::Error(e.to_string()),
        }
    }
    End::PeerClosed
}

async fn write_frames<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    activity: &Activity,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(datagram) = outbound.recv().await {
        if let Err(e) = sink.feed(Message::binary(datagram)).await {
            return End::Error(e.to_string());
        }
        // What else is queued goes in the same write.
        while let Ok(datagram) = outbound.try_recv() {
            if let Err(e) = sink.feed(Message::binary(datagram)).await {
                return End::Error(e.to_string());
            }
        }
        if let Err(e) = sink.flush().await {
            return End::Error(e.to_string());
        }
        activity.touch();
    }
    End::AllocationGone
}

async fn idle_watch(activity: &Activity, idle: Duration) -> End {
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() >= deadline {
            return End::Idle;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Sends the close frame that says why, and waits (a bounded time) for the
/// peer's; a peer that closed first gets its close echoed.
async fn close<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    stream: &mut SplitStream<WebSocketStream<S>>,
    end: &End,
    timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = |code, reason: &str| Some(CloseFrame { code, reason: reason.into() });
    let close = match end {
        End::Refused(_) | End::Error(_) => return,
        End::PeerClosed => None,
        End::Idle => frame(CloseCode::Away, "idle"),
        End::BadFrame(BadFrame::Oversized) => {
            frame(CloseCode::Size, "a frame carries one WireGuard datagram of at most 65535 bytes")
        }
        End::BadFrame(BadFrame::Text) => frame(CloseCode::Unsupported, "binary frames only"),
        End::BadFrame(BadFrame::Protocol) => frame(CloseCode::Protocol, "protocol violation"),
        End::AllocationGone => frame(CloseCode::Normal, "allocation ended"),
        End::Shutdown => frame(CloseCode::Away, "relay shutting down"),
    };
    let closing = async {
        match close {
            // The peer's close is answered by tungstenite; this sends it.
            None => {
                let _ = sink.close().await;
            }
            Some(frame) => {
                if sink.send(Message::Close(Some(frame))).await.is_err() {
                    return;
                }
                // Until the peer's close (or anything that ends the stream).
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(timeout, closing).await;
}

/// The token of `Authorization: Bearer <token>`, if there is one.
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some("unknown or missing bearer token\n".to_owned()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// Accepts WebSocket relay connections on `listener` until `shutdown`
/// completes, then closes every connection (1001) and returns once they
/// have ended (after at most [`WsLimits::close_timeout`] and a second).
///
/// With `tls`, every connection is TLS first (see [`tls_acceptor`]). Each
/// connection authenticates with `Authorization: Bearer <token>`, which
/// `directory` maps to its allocation's event channel.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    directory: Arc<dyn Directory>,
    limits: WsLimits,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let close_timeout = limits.close_timeout;
    let connections = Arc::new(Connections::new(directory, limits, metrics.clone()));
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "WebSocket relay listening");
    }
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to
                    // be freed rather than spin.
                    tracing::warn!(error = %e, "WebSocket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.websocket_refused.get_or_create(&ReasonLabels { reason: "capacity" }).inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let connections = connections.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let deadline = Instant::now() + connections.limits.handshake_timeout;
            let end = match tls {
                None => connections.handle_until(tcp, deadline).await,
                Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => connections.handle_until(stream, deadline).await,
                    Ok(Err(_)) | Err(_) => connections.refused("tls"),
                },
            };
            tracing::trace!(%peer, ?end, "WebSocket connection done");
        });
    }
    drop(listener);
    connections.close_all();
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(close_timeout + Duration::from_secs(1), drained).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}
