//! The cloud's side of the control channels: gateways and relays connect
//! out to `/api/v1/control/gateway` and `/api/v1/control/relay` over
//! WebSocket and speak the `ferry-control` protocol.

pub mod desired;
mod gateway;
mod gateway_events;
mod relay;

use std::time::Duration;

use axum::{
    Extension,
    extract::{
        ConnectInfo, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code},
    },
    response::Response,
};
use ferry_control::{Challenge, ErrorCode, ErrorMessage, Message as ControlMessage, ServerHello, codec};
use ferry_daemon::web::server::ConnectionSlot;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{app::AppState, metrics::ChannelLabels};

/// WebSocket buffer sizes. Thousands of gateways sit idle on the channel;
/// tungstenite's default 128 KiB read buffer each would be most of the
/// cloud's memory. Larger messages still arrive: the buffer grows as needed.
const IDLE_BUFFER: usize = 4 * 1024;

/// How long a peer has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the cloud waits for the peer's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel from which nothing arrived for this long (gateways and relays
/// ping every 10 s) is closed, and its peer shown offline. Without it a
/// gateway whose site lost power stays online at the cloud for as long as
/// the cloud sends it nothing (TCP alone never notices a silent peer), and
/// technicians could start sessions towards it. Longer than the peers' own
/// limit (`ferry_control::client::SILENCE_LIMIT`), so that the side that
/// can reconnect notices first.
pub const PEER_SILENCE_LIMIT: Duration = Duration::from_secs(60);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(gateway_channel)).routes(routes!(relay_channel))
}

/// The gateways' control channel (WebSocket, `ferry-control` protocol
/// version 1): the cloud challenges, the gateway signs with its enrolled
/// Ed25519 key, then receives its full desired state on every change and
/// sends its events.
#[utoipa::path(get, path = "/api/v1/control/gateway", tag = "control",
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade")))]
async fn gateway_channel(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    slot: Option<Extension<ConnectionSlot>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let slot = Unproven(slot);
    limits(upgrade).on_upgrade(move |socket| gateway::run(state, socket, peer.ip().to_string(), slot))
}

/// The relays' control channel: the relay presents its token, then
/// receives its allocations and reports their endpoints and its health.
#[utoipa::path(get, path = "/api/v1/control/relay", tag = "control",
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade")))]
async fn relay_channel(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    slot: Option<Extension<ConnectionSlot>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let slot = Unproven(slot);
    limits(upgrade).on_upgrade(move |socket| relay::run(state, socket, peer.ip().to_string(), slot))
}

/// A channel's place under the listener's connection caps while its peer
/// has not proven who it is: an upgraded connection otherwise leaves the
/// caps at the upgrade, and one address could hold any number of sockets
/// that never say hello (each for up to [`HELLO_TIMEOUT`]). Dropped once
/// the peer is authenticated, so thousands of gateways do not count
/// against the caps, which bound what unauthenticated clients hold.
pub(crate) struct Unproven(
    #[allow(dead_code, reason = "held for its Drop")] Option<Extension<ConnectionSlot>>,
);

fn limits(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_message_size(ferry_control::MAX_MESSAGE_BYTES)
        .read_buffer_size(IDLE_BUFFER)
        .write_buffer_size(IDLE_BUFFER)
}

/// One side of a connection with the framing rules both channels share.
struct Conn {
    socket: WebSocket,
    channel: &'static str,
    /// When the peer's last frame (a ping included) arrived.
    last_read: tokio::time::Instant,
}

enum Incoming<T> {
    Message(T),
    /// Dropped and counted; the connection goes on.
    Malformed(String),
    Closed,
}

/// The opening of both channels: the server's hello with a fresh challenge,
/// then the peer's hello within [`HELLO_TIMEOUT`]. Anything else is refused.
struct Greeting<To, From, H> {
    hello: fn(ServerHello) -> To,
    error: fn(ErrorMessage) -> To,
    expect: fn(From) -> Option<H>,
    name: &'static str,
}

impl<To: ControlMessage, From: ControlMessage, H> Greeting<To, From, H> {
    async fn run(self, state: &AppState, mut conn: Conn) -> Option<(Conn, Challenge, H)> {
        let challenge = Challenge::random(&mut rand_core::OsRng);
        if !conn.send(&(self.hello)(ServerHello { challenge, server_time_ms: state.now_ms() })).await {
            return None;
        }
        let (code, why) = match tokio::time::timeout(HELLO_TIMEOUT, conn.recv::<From>()).await {
            Ok(Incoming::Message(message)) => match (self.expect)(message) {
                Some(hello) => return Some((conn, challenge, hello)),
                None => (ErrorCode::Malformed, format!("the first message must be {}", self.name)),
            },
            Ok(Incoming::Malformed(why)) => {
                (if why.contains("version") { ErrorCode::Version } else { ErrorCode::Malformed }, why)
            }
            Ok(Incoming::Closed) | Err(_) => return None,
        };
        conn.refuse(state, (self.error)(error(code, why.clone())), code, &why).await;
        None
    }
}

impl Conn {
    fn new(socket: WebSocket, channel: &'static str) -> Conn {
        Conn { socket, channel, last_read: tokio::time::Instant::now() }
    }

    /// When the channel has been silent for [`PEER_SILENCE_LIMIT`].
    fn silent_at(&self) -> tokio::time::Instant {
        self.last_read + PEER_SILENCE_LIMIT
    }

    /// Counts and logs a channel closed for its silence.
    fn count_silent(&self, state: &AppState) {
        state.metrics.control_silent.get_or_create(&ChannelLabels { channel: self.channel }).inc();
        tracing::warn!(
            channel = self.channel,
            silent_s = PEER_SILENCE_LIMIT.as_secs(),
            "nothing arrived on the control channel, not even a ping; closing it"
        );
    }

    /// False when the frame did not go, or could not leave within
    /// [`PEER_SILENCE_LIMIT`]: a peer gone without closing fills the
    /// socket's buffer, and a send waiting on it would hold the loop (and
    /// its silence check) until TCP gives up, a quarter of an hour later.
    async fn send<T: ControlMessage>(&mut self, message: &T) -> bool {
        let frame = Message::Text(codec::encode(message).into());
        matches!(tokio::time::timeout(PEER_SILENCE_LIMIT, self.socket.send(frame)).await, Ok(Ok(())))
    }

    async fn recv<T: ControlMessage>(&mut self) -> Incoming<T> {
        loop {
            let frame = self.socket.recv().await;
            if matches!(frame, Some(Ok(_))) {
                self.last_read = tokio::time::Instant::now();
            }
            return match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Incoming::Closed,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    Incoming::Malformed("binary frames are not part of the protocol".into())
                }
                Some(Ok(Message::Text(text))) => match codec::decode_valid::<T>(text.as_str()) {
                    Ok(message) => Incoming::Message(message),
                    Err(e) => Incoming::Malformed(e.to_string()),
                },
            };
        }
    }

    fn count_malformed(&self, state: &AppState, why: &str) {
        state.metrics.control_refused.get_or_create(&ChannelLabels { channel: self.channel }).inc();
        tracing::warn!(channel = self.channel, why, "dropped a malformed control message");
    }

    /// Sends an error of the cloud's own (not the peer's) and closes, so
    /// that the peer connects again. Whatever the peer still sends is read
    /// and dropped until it answers the close (or [`CLOSE_TIMEOUT`]): a
    /// socket closed with unread data resets the connection, and the reset
    /// would take the frames sent last (acknowledgements, the error) with it.
    async fn fail<T: ControlMessage>(mut self, error: T) {
        let _ = self.send(&error).await;
        let close = CloseFrame { code: close_code::ERROR, reason: ErrorCode::Internal.to_string().into() };
        if self.socket.send(Message::Close(Some(close))).await.is_err() {
            return;
        }
        let drain = async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
    }

    /// Sends a protocol error and closes.
    async fn refuse<T: ControlMessage>(mut self, state: &AppState, error: T, code: ErrorCode, reason: &str) {
        state.metrics.control_refused.get_or_create(&ChannelLabels { channel: self.channel }).inc();
        tracing::info!(channel = self.channel, %code, reason, "control connection refused");
        let _ = self.send(&error).await;
        let close = CloseFrame { code: close_code::POLICY, reason: code.to_string().into() };
        let _ = self.socket.send(Message::Close(Some(close))).await;
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
    ErrorMessage { code, message: message.into() }
}
