//! The daemons' end of the control channel: connect (plain `ws://` or `wss://`
//! with a pinned certificate), exchange frames, and run the hello.
//!
//! The cloud's certificate is self-signed and pinned by its SHA-256
//! fingerprint: there are no CA roots here, so `wss://` without a pin is
//! refused rather than silently trusting nothing or everything.

use std::fmt;
use std::time::Duration;

use ferry_connect::ws::ConnectError;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use crate::backoff::{BACKOFF_BASE, BACKOFF_CAP, Backoff, backoff_delay};
use crate::codec::{DecodeError, Message, decode_valid, encode};
use crate::common::{ErrorCode, ServerHello, Welcome};
use crate::gateway::{DesiredState, FromGateway, ToGateway, sign_gateway_hello};
use crate::ids::{GatewayId, WgKey};
use crate::relay::{DesiredAllocations, FromRelay, RelayHello, ToRelay};
use crate::send_state::SendState;
use crate::{MAX_MESSAGE_BYTES, SigningKey};

/// A connected control channel as [`connect`] returns it; TCP, TLS and the
/// WebSocket upgrade take at most [`CONNECT_TIMEOUT`] together.
pub use ferry_connect::ws::{CONNECT_TIMEOUT, WsStream};
/// From the connection to the first desired state.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Without any frame from the cloud for this long (pongs included), a
/// daemon takes the channel for dead and reconnects (see
/// [`Channel::keepalive`]).
pub const SILENCE_LIMIT: Duration = Duration::from_secs(35);
/// How long a ping (or the relay's health report) may wait for room in the
/// send buffer.
pub const PING_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other message may wait for room in the send buffer before
/// the channel is given up (see [`Channel::send`]).
pub const MESSAGE_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A message from the cloud that arrives this long after a ping still
/// unanswered, while the kernel holds what this side sent unacknowledged,
/// shows that this side of the connection is stuck behind segments lost in
/// an outage (see [`Channel::outbound_stalled`]).
pub const STALL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control URL must start with ws:// or wss://")]
    Scheme,
    #[error("wss:// needs the cloud certificate's SHA-256 pin (there are no CA roots)")]
    PinRequired,
    #[error("a certificate pin was given for a plain ws:// URL, which has no certificate")]
    PinWithoutTls,
    #[error("the server's certificate has SHA-256 {got}, but the pin is {expected}")]
    PinMismatch { expected: String, got: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the bearer token cannot be sent in an HTTP header (it must be printable ASCII)")]
    BadToken,
    #[error("WebSocket: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("refused a frame from the peer: {0}")]
    Decode(#[from] DecodeError),
    #[error("received a binary frame; the control channel is text only")]
    Binary,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the cloud refused ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the connection closed during the handshake")]
    Closed,
    #[error("expected a `{expected}` frame, got `{got}`")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("nothing from the cloud for {secs}s, not even a pong")]
    Silent { secs: u64 },
    #[error(
        "the cloud gets nothing of what this side sends (a ping unanswered for more than {grace_secs}s while the cloud's messages arrive, and the kernel holds our bytes unacknowledged)"
    )]
    Stalled { grace_secs: u64 },
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

/// The frame limits both ends use, so that an oversized frame is cut off by
/// the WebSocket layer before it is buffered whole.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Opens `url` (`ws://` or `wss://`). For `wss://`, `pin_sha256` is the
/// SHA-256 of the cloud's DER certificate and the only thing trusted: the name
/// and validity period are not checked, because the pin already names exactly
/// one certificate and the cloud's is self-signed.
pub async fn connect(url: &str, pin_sha256: Option<[u8; 32]>) -> Result<WsStream, ClientError> {
    connect_with(url, pin_sha256, None, websocket_config()).await
}

/// [`connect`] with an `Authorization: Bearer <token>` header on the upgrade
/// request (when `bearer` is given) and the caller's frame limits
/// (`ferry_connect::ws::dial`, which the WebSocket relay's clients use).
pub async fn connect_with(
    url: &str,
    pin_sha256: Option<[u8; 32]>,
    bearer: Option<&str>,
    config: WebSocketConfig,
) -> Result<WsStream, ClientError> {
    Ok(ferry_connect::ws::dial(url, pin_sha256, bearer, config).await?)
}

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Scheme => ClientError::Scheme,
            ConnectError::PinRequired => ClientError::PinRequired,
            ConnectError::PinWithoutTls => ClientError::PinWithoutTls,
            ConnectError::PinMismatch { expected, got } => ClientError::PinMismatch { expected, got },
            ConnectError::Tls(e) => ClientError::Tls(e),
            ConnectError::BadToken => ClientError::BadToken,
            ConnectError::WebSocket(e) => ClientError::WebSocket(e),
            ConnectError::Timeout => ClientError::Timeout("connecting"),
        }
    }
}

impl ClientError {
    /// The HTTP status with which the server refused the upgrade, if it did
    /// (401 for an unknown token, for example).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ClientError::WebSocket(e) => match e.as_ref() {
                tungstenite::Error::Http(response) => Some(response.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Typed frames over a WebSocket: text only, one message per frame, every
/// incoming frame decoded and validated. Generic over the transport so the
/// same code serves a server-side stream in tests.
pub struct Channel<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
    peer_close: Option<CloseFrame>,
    /// When the last frame of any kind (pongs too) arrived.
    last_heard: tokio::time::Instant,
    /// When the oldest ping still waiting for its pong left.
    unanswered_ping: Option<tokio::time::Instant>,
    /// From the oldest unanswered ping to the pong that answered it, for
    /// the last one answered.
    last_round_trip: Option<Duration>,
}

impl<S> fmt::Debug for Channel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel").field("peer_close", &self.peer_close).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    pub fn new(ws: WebSocketStream<S>) -> Channel<S> {
        Channel {
            ws,
            peer_close: None,
            last_heard: tokio::time::Instant::now(),
            unanswered_ping: None,
            last_round_trip: None,
        }
    }

    /// Sends one message. A frame the peer would refuse for its size is
    /// refused here, so the sender learns why.
    pub async fn send<T: Message>(&mut self, msg: &T) -> Result<(), ClientError> {
        let frame = encode(msg);
        if frame.len() > MAX_MESSAGE_BYTES {
            return Err(ClientError::TooLarge { len: frame.len(), max: MAX_MESSAGE_BYTES });
        }
        // A send waits for room in the socket's buffer. On a path that died
        // without a reset it would wait for TCP's retransmissions to give up
        // (minutes), and the daemon's loop with it: its keepalive, which
        // would have noticed, never runs. A channel that cannot take a
        // message for this long is given up and made again.
        tokio::time::timeout(MESSAGE_SEND_TIMEOUT, self.ws.send(WsMessage::text(frame)))
            .await
            .map_err(|_| ClientError::Timeout("sending a message"))??;
        Ok(())
    }

    /// The next message, or `None` once the peer closed (see
    /// [`peer_close`](Self::peer_close) for its reason). Pings are answered
    /// and skipped. A frame that does not decode and validate, or a binary
    /// frame, closes the connection with a reason naming the problem: a
    /// version mismatch in particular must be visible on the other end.
    pub async fn recv<T: Message>(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            let Some(frame) = self.ws.next().await else {
                return Ok(None);
            };
            let frame = frame?;
            self.last_heard = tokio::time::Instant::now();
            match frame {
                WsMessage::Text(text) => {
                    return match decode_valid::<T>(text.as_str()) {
                        Ok(msg) => Ok(Some(msg)),
                        Err(e) => {
                            let code = match e {
                                DecodeError::Version { .. } => CloseCode::Protocol,
                                DecodeError::TooLarge { .. } => CloseCode::Size,
                                _ => CloseCode::Invalid,
                            };
                            self.close_quietly(code, &e.to_string()).await;
                            Err(e.into())
                        }
                    };
                }
                WsMessage::Binary(_) => {
                    self.close_quietly(CloseCode::Unsupported, "binary frames are not part of the protocol")
                        .await;
                    return Err(ClientError::Binary);
                }
                WsMessage::Close(close) => {
                    self.peer_close = close;
                    return Ok(None);
                }
                // Pongs come in order: one answers every ping before it.
                WsMessage::Pong(_) => {
                    if let Some(sent) = self.unanswered_ping.take() {
                        self.last_round_trip = Some(self.last_heard.saturating_duration_since(sent));
                    }
                }
                WsMessage::Ping(_) | WsMessage::Frame(_) => {}
            }
        }
    }

    /// Sends a WebSocket ping. Behind a NAT, an idle connection whose
    /// mapping was lost (a conntrack flush, a router reboot, a link that
    /// went down) stays dead until this side sends: the ping remakes the
    /// mapping, and its pong (or its absence, see
    /// [`last_heard`](Self::last_heard)) tells whether the path works.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let sent = tokio::time::Instant::now();
        self.ws.send(WsMessage::Ping(Default::default())).await?;
        self.unanswered_ping.get_or_insert(sent);
        Ok(())
    }

    /// Whether the peer's last frame arrived more than `grace` after a ping
    /// of ours that is still unanswered (the peer answers a ping as it reads
    /// it). On its own this does not tell a stuck connection from a peer
    /// slow to read (or from this side slow to read: the time is when a
    /// frame was read); [`outbound_stalled`](Self::outbound_stalled) asks the
    /// kernel too.
    pub fn ping_overdue(&self, grace: Duration) -> bool {
        self.unanswered_ping.is_some_and(|sent| self.last_heard.saturating_duration_since(sent) > grace)
    }

    /// Whether the last ping was answered within `grace` of leaving: the
    /// connection carries what this side sends.
    pub fn answered_within(&self, grace: Duration) -> bool {
        self.last_round_trip.is_some_and(|rtt| rtt <= grace)
    }

    /// Sends a ping unless the peer has been silent for more than
    /// [`SILENCE_LIMIT`]; a ping that finds no room in the send buffer for
    /// [`PING_SEND_TIMEOUT`] fails too.
    pub async fn keepalive(&mut self) -> Result<(), ClientError> {
        let silent = self.last_heard.elapsed();
        if silent > SILENCE_LIMIT {
            return Err(ClientError::Silent { secs: silent.as_secs() });
        }
        tokio::time::timeout(PING_SEND_TIMEOUT, self.ping())
            .await
            .map_err(|_| ClientError::Timeout("sending a ping"))?
    }

    /// When the last frame of any kind arrived (a pong answers a
    /// [`ping`](Self::ping) only once [`recv`](Self::recv) reads it).
    pub fn last_heard(&self) -> tokio::time::Instant {
        self.last_heard
    }

    /// Closes with `code` and `reason` (cut to the 123 bytes a close frame
    /// holds).
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), ClientError> {
        let frame = CloseFrame { code, reason: close_reason(reason).into() };
        self.ws.close(Some(frame)).await?;
        Ok(())
    }

    async fn close_quietly(&mut self, code: CloseCode, reason: &str) {
        // Best effort: the caller is already reporting the real error.
        let _ = self.close(code, reason).await;
    }

    /// The close frame the peer sent, if it closed with one.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_ref()
    }

    pub fn get_ref(&self) -> &WebSocketStream<S> {
        &self.ws
    }

    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

impl<S: SendState + AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Whether what this side sends is stuck while the peer's frames get
    /// through: a ping of ours is [overdue](Self::ping_overdue) and the
    /// kernel agrees, holding our bytes unacknowledged or retransmitting them
    /// with a backoff. That is a TCP connection after an outage in which this
    /// side sent: its unacknowledged segments are retransmitted with an
    /// exponential backoff, tens of seconds apart after a minute, and all it
    /// sends meanwhile waits behind them, while the peer, which sent nothing
    /// during the outage, gets through at once. A new connection does not
    /// wait. A peer that is merely slow to read (a backlog, a slow snapshot)
    /// still has its kernel acknowledge our segments, so it is not stalled;
    /// nor is a transport the kernel cannot tell about.
    pub fn outbound_stalled(&self, grace: Duration) -> bool {
        self.ping_overdue(grace) && self.ws.get_ref().unacknowledged() == Some(true)
    }

    /// [`ClientError::Stalled`] when the channel is
    /// [stalled](Self::outbound_stalled) for [`STALL_GRACE`].
    pub fn check_outbound(&self) -> Result<(), ClientError> {
        if self.outbound_stalled(STALL_GRACE) {
            return Err(ClientError::Stalled { grace_secs: STALL_GRACE.as_secs() });
        }
        Ok(())
    }
}

fn close_reason(reason: &str) -> String {
    const MAX: usize = 123;
    let mut end = reason.len().min(MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Runs a gateway's side of the hello: waits for the challenge, answers with
/// a signed [`GatewayHello`](crate::gateway::GatewayHello), and returns the
/// welcome and the first desired state, which the cloud sends right after it.
pub async fn gateway_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    channel: &mut Channel<S>,
    signing_key: &SigningKey,
    gateway_id: GatewayId,
    software_version: &str,
    switch_on: bool,
    wg_public_key: WgKey,
    applied_revision: Option<u64>,
) -> Result<(Welcome, DesiredState), ClientError> {
    let done = gateway_handshake_timed(
        channel,
        signing_key,
        gateway_id,
        software_version,
        switch_on,
        wg_public_key,
        applied_revision,
    )
    .await?;
    Ok((done.welcome, done.desired))
}

/// A gateway's hello as [`gateway_handshake`] runs it, with the cloud's own
/// hello and when it arrived.
#[derive(Debug)]
pub struct GatewayHandshake {
    /// The cloud's first frame; its `server_time_ms` is the cloud's clock.
    pub server_hello: ServerHello,
    /// When the cloud's hello was read, on the monotonic clock: the moment
    /// its `server_time_ms` stands for here (late by its one-way delay).
    pub hello_read: std::time::Instant,
    pub welcome: Welcome,
    pub desired: DesiredState,
}

/// [`gateway_handshake`], returning the cloud's hello and the moment it was
/// read too: a gateway keeps the cloud's time from it (session end times are
/// the cloud's).
pub async fn gateway_handshake_timed<S: AsyncRead + AsyncWrite + Unpin>(
    channel: &mut Channel<S>,
    signing_key: &SigningKey,
    gateway_id: GatewayId,
    software_version: &str,
    switch_on: bool,
    wg_public_key: WgKey,
    applied_revision: Option<u64>,
) -> Result<GatewayHandshake, ClientError> {
    let handshake = async {
        let server_hello = match next_from_cloud(channel).await? {
            ToGateway::ServerHello(hello) => hello,
            other => return unexpected(channel, "server_hello", other).await,
        };
        let hello_read = std::time::Instant::now();
        let hello = sign_gateway_hello(
            signing_key,
            &server_hello.challenge,
            gateway_id,
            software_version,
            switch_on,
            wg_public_key,
            applied_revision,
        );
        channel.send(&FromGateway::GatewayHello(hello)).await?;
        let welcome = match next_from_cloud(channel).await? {
            ToGateway::Welcome(welcome) => welcome,
            other => return unexpected(channel, "welcome", other).await,
        };
        let desired = match next_from_cloud(channel).await? {
            ToGateway::DesiredState(state) => state,
            other => return unexpected(channel, "desired_state", other).await,
        };
        Ok(GatewayHandshake { server_hello, hello_read, welcome, desired })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ClientError::Timeout("in the hello"))?
}

/// Runs a relay's side of the hello, sending `hello` when the cloud asks,
/// and returns the welcome and the first desired allocations.
pub async fn relay_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    channel: &mut Channel<S>,
    hello: RelayHello,
) -> Result<(Welcome, DesiredAllocations), ClientError> {
    let done = relay_handshake_timed(channel, hello).await?;
    Ok((done.welcome, done.desired))
}

/// A relay's hello as [`relay_handshake`] runs it, with the cloud's own
/// hello and when it arrived.
#[derive(Debug)]
pub struct RelayHandshake {
    /// The cloud's first frame; its `server_time_ms` is the cloud's clock.
    pub server_hello: ServerHello,
    /// When the cloud's hello was read, on the monotonic clock.
    pub hello_read: std::time::Instant,
    pub welcome: Welcome,
    pub desired: DesiredAllocations,
}

/// [`relay_handshake`], returning the cloud's hello and the moment it was
/// read too: a relay keeps the cloud's time from it (allocations end at
/// instants of the cloud's clock).
pub async fn relay_handshake_timed<S: AsyncRead + AsyncWrite + Unpin>(
    channel: &mut Channel<S>,
    hello: RelayHello,
) -> Result<RelayHandshake, ClientError> {
    let handshake = async {
        let server_hello = match next_from_cloud(channel).await? {
            // Relays authenticate by token; the challenge is for gateways.
            ToRelay::ServerHello(server_hello) => server_hello,
            other => return unexpected(channel, "server_hello", other).await,
        };
        let hello_read = std::time::Instant::now();
        channel.send(&FromRelay::RelayHello(hello)).await?;
        let welcome = match next_from_cloud(channel).await? {
            ToRelay::Welcome(welcome) => welcome,
            other => return unexpected(channel, "welcome", other).await,
        };
        let desired = match next_from_cloud(channel).await? {
            ToRelay::DesiredAllocations(allocations) => allocations,
            other => return unexpected(channel, "desired_allocations", other).await,
        };
        Ok(RelayHandshake { server_hello, hello_read, welcome, desired })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ClientError::Timeout("in the hello"))?
}

/// The cloud's messages that can end a handshake early.
trait CloudMessage: Message {
    fn refusal(&self) -> Option<(ErrorCode, &str)>;
}

impl CloudMessage for ToGateway {
    fn refusal(&self) -> Option<(ErrorCode, &str)> {
        match self {
            ToGateway::Error(e) => Some((e.code, &e.message)),
            _ => None,
        }
    }
}

impl CloudMessage for ToRelay {
    fn refusal(&self) -> Option<(ErrorCode, &str)> {
        match self {
            ToRelay::Error(e) => Some((e.code, &e.message)),
            _ => None,
        }
    }
}

/// The next frame, with a closed connection and an `error` frame turned into
/// errors.
async fn next_from_cloud<S: AsyncRead + AsyncWrite + Unpin, T: CloudMessage>(
    channel: &mut Channel<S>,
) -> Result<T, ClientError> {
    let msg = channel.recv::<T>().await?.ok_or(ClientError::Closed)?;
    if let Some((code, message)) = msg.refusal() {
        return Err(ClientError::Refused { code, message: message.to_owned() });
    }
    Ok(msg)
}

async fn unexpected<S: AsyncRead + AsyncWrite + Unpin, T: Message, R>(
    channel: &mut Channel<S>,
    expected: &'static str,
    got: T,
) -> Result<R, ClientError> {
    let got = got.type_name();
    channel.close_quietly(CloseCode::Protocol, &format!("expected `{expected}`, got `{got}`")).await;
    Err(ClientError::Unexpected { expected, got })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame_on_a_char_boundary() {
        assert_eq!(close_reason("short"), "short");
        let long = "ä".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123);
        assert!(cut.chars().all(|c| c == 'ä'));
    }

    fn snapshot(revision: u64) -> WsMessage {
        let m = crate::relay::ToRelay::DesiredAllocations(crate::relay::DesiredAllocations {
            revision,
            allocations: Vec::new(),
        });
        WsMessage::text(crate::codec::encode(&m))
    }

    /// A ping stuck on its way (the peer does not read it) while the peer's
    /// frames arrive is overdue; once the peer reads it and its pong comes
    /// back, it no longer is. An in-memory pipe has no kernel to confirm a
    /// stall, so it is never called stalled.
    #[tokio::test]
    async fn a_peer_heard_long_after_an_unanswered_ping_makes_the_ping_overdue() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (near, far) = tokio::io::duplex(64 * 1024);
        let mut channel = Channel::new(WebSocketStream::from_raw_socket(near, Role::Client, None).await);
        let mut peer = WebSocketStream::from_raw_socket(far, Role::Server, None).await;
        let (short, long) = (Duration::from_millis(10), Duration::from_secs(3600));
        assert!(!channel.ping_overdue(Duration::ZERO), "no ping, nothing overdue");

        channel.ping().await.unwrap();
        tokio::time::sleep(short * 5).await;
        // The peer sends without reading: the ping stays unanswered.
        peer.send(snapshot(1)).await.unwrap();
        channel.recv::<crate::relay::ToRelay>().await.unwrap().unwrap();
        assert!(channel.ping_overdue(short), "heard long after an unanswered ping");
        assert!(!channel.ping_overdue(long), "heard within the grace");
        assert!(!channel.ping_overdue(Duration::MAX), "a huge grace does not overflow");
        assert!(!channel.outbound_stalled(short), "no kernel confirms it");
        assert!(!channel.answered_within(long), "nothing answered yet");

        // The peer reads the ping and answers it: the pong clears it.
        assert!(matches!(peer.next().await, Some(Ok(WsMessage::Ping(_)))));
        peer.flush().await.unwrap();
        peer.send(snapshot(2)).await.unwrap();
        channel.recv::<crate::relay::ToRelay>().await.unwrap().unwrap();
        assert!(!channel.ping_overdue(Duration::ZERO), "the pong answered the ping");
        assert!(channel.answered_within(long), "the pong came back");
    }

    /// A peer that stops reading: once the pipe is full, a send gives up
    /// after MESSAGE_SEND_TIMEOUT with an error, instead of holding the
    /// daemon's loop until the connection dies.
    #[tokio::test(start_paused = true)]
    async fn a_send_to_a_peer_that_never_reads_times_out() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (near, far) = tokio::io::duplex(4 * 1024);
        let mut channel = Channel::new(WebSocketStream::from_raw_socket(near, Role::Client, None).await);
        let _peer = WebSocketStream::from_raw_socket(far, Role::Server, None).await;
        let started = tokio::time::Instant::now();
        let mut sent = 0;
        let sending = async {
            loop {
                match channel.send(&snapshot_message(sent)).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                assert!(sent < 10_000, "the pipe never filled");
            }
        };
        // Without the send's own timeout this one fires instead.
        let error =
            tokio::time::timeout(MESSAGE_SEND_TIMEOUT * 6, sending).await.expect("the send never gave up");
        assert!(sent > 0, "the first messages fit in the pipe");
        assert!(matches!(error, ClientError::Timeout("sending a message")), "{error}");
        assert!(started.elapsed() >= MESSAGE_SEND_TIMEOUT, "gave up after {:?}", started.elapsed());
    }

    fn snapshot_message(revision: u64) -> crate::relay::FromRelay {
        crate::relay::FromRelay::Applied(crate::common::Applied { revision })
    }

    /// A channel over loopback TCP, the peer's end of it, and the peer's
    /// port.
    async fn tcp_pair() -> (Channel, WebSocketStream<TcpStream>, u16) {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let near = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (far, _) = listener.accept().await.unwrap();
        let channel = Channel::new(
            WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(near), Role::Client, None).await,
        );
        (channel, WebSocketStream::from_raw_socket(far, Role::Server, None).await, port)
    }

    /// A cloud slow to read (a backlog, a slow snapshot build) is not a
    /// stuck connection: its kernel acknowledges our ping at once, even
    /// though the cloud reads it only long after it sent us messages.
    #[tokio::test]
    async fn a_peer_slow_to_read_whose_kernel_acknowledges_is_not_stalled() {
        let (mut channel, mut peer, _) = tcp_pair().await;
        let grace = Duration::from_secs(1);

        channel.ping().await.unwrap();
        // Longer than the grace, and than the time new data may be in flight.
        tokio::time::sleep(grace + Duration::from_millis(200)).await;
        peer.send(snapshot(1)).await.unwrap();
        channel.recv::<crate::relay::ToRelay>().await.unwrap().unwrap();
        assert!(channel.ping_overdue(grace), "the peer has not read the ping");
        let info = crate::send_state::tcp_info(channel.get_ref().get_ref().get_ref()).unwrap();
        assert_eq!((info.tcpi_unacked, info.tcpi_backoff), (0, 0), "the peer's kernel acknowledged the ping");
        assert!(!channel.outbound_stalled(grace), "a slow reader is not a stall");
        assert!(channel.check_outbound().is_ok());

        // It reads the ping eventually, and answers.
        assert!(matches!(peer.next().await, Some(Ok(WsMessage::Ping(_)))));
        peer.flush().await.unwrap();
        peer.send(snapshot(2)).await.unwrap();
        channel.recv::<crate::relay::ToRelay>().await.unwrap().unwrap();
        assert!(!channel.ping_overdue(Duration::ZERO));
    }

    /// A connection whose segments are lost (an outage) while the peer's
    /// get through is stalled: the kernel retransmits with a backoff. In a
    /// network namespace of this test's own thread, an nftables rule drops
    /// what arrives for the peer's port, then goes, and the peer sends.
    #[test]
    fn a_connection_whose_segments_are_lost_is_stalled() {
        let run = || {
            // SAFETY: moves only this thread into a new network namespace,
            // which ends with it.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: needs root");
            let sh = |script: &str| {
                let status = std::process::Command::new("sh").args(["-c", script]).status().unwrap();
                assert!(status.success(), "{script}");
            };
            sh("ip link set lo up");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let (mut channel, mut peer, port) = tcp_pair().await;
                let grace = Duration::from_secs(1);

                sh(&format!(
                    "nft 'add table inet outage; add chain inet outage input {{ type filter hook input priority 0; }}; add rule inet outage input tcp dport {port} drop'"
                ));
                channel.ping().await.unwrap();
                // The rule drops only what goes to the peer: wait until the
                // kernel has retransmitted the ping three times (0.2, 0.6
                // and 1.4 s after it, so past the grace), with the rule
                // still in place, so nothing can acknowledge it meanwhile.
                let info = || crate::send_state::tcp_info(channel.get_ref().get_ref().get_ref()).unwrap();
                for _ in 0..600 {
                    if info().tcpi_backoff >= 3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peer.send(snapshot(1)).await.unwrap();
                channel.recv::<crate::relay::ToRelay>().await.unwrap().unwrap();
                let seen = crate::send_state::tcp_info(channel.get_ref().get_ref().get_ref()).unwrap();
                assert!(seen.tcpi_backoff >= 3 && seen.tcpi_unacked > 0, "backoff {}, unacked {}", seen.tcpi_backoff, seen.tcpi_unacked);
                assert!(channel.outbound_stalled(grace), "the ping was lost, the peer's message was not");
                sh("nft delete table inet outage");
            });
        };
        std::thread::spawn(run).join().unwrap();
    }

    #[tokio::test]
    async fn connect_refuses_unpinned_wss_and_pinned_ws() {
        assert!(matches!(connect("wss://127.0.0.1:1/x", None).await, Err(ClientError::PinRequired)));
        assert!(matches!(
            connect("ws://127.0.0.1:1/x", Some([0; 32])).await,
            Err(ClientError::PinWithoutTls)
        ));
        assert!(matches!(connect("https://127.0.0.1:1/x", None).await, Err(ClientError::Scheme)));
        assert!(matches!(
            connect_with("ws://127.0.0.1:1/x", None, Some("bad\ntoken"), websocket_config()).await,
            Err(ClientError::BadToken)
        ));
    }
}
