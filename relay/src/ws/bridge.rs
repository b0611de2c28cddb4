//! The WebSocket bridge: lets a stock WireGuard use the WebSocket relay.
//!
//! It listens on a local UDP socket (127.0.0.1:51821 by default) that the
//! local WireGuard's peer `Endpoint` points at. Every datagram received there
//! goes as one binary frame over a WebSocket connection to the relay, with
//! the allocation's token in `Authorization: Bearer`; every frame from the
//! relay goes back as a datagram to the last local sender. It never sees
//! plaintext: it only moves WireGuard's encrypted datagrams.
//!
//! The connection is kept up: pings every [`BridgeOptions::keepalive`] (well
//! within the relay's idle timeout), a connection that has said nothing for
//! [`BridgeOptions::dead_after`] is replaced, and reconnects back off
//! exponentially with full jitter (`ferry_control::Backoff`). While there is
//! no connection, local datagrams are dropped: WireGuard retransmits its
//! handshakes, and stale ones are no use later.
//!
//! `wss://` needs the relay certificate's SHA-256 pin (there are no CA roots,
//! as for the cloud, see `ferry_control::pin`).
//!
//! # The `ferry-relay ws-bridge` subcommand
//!
//! [`BridgeArgs`] is its clap arguments; the daemon wires it as
//!
//! ```text
//! Command::WsBridge(args) => {
//!     let options = args.into_options()?;
//!     let shutdown = ferry_daemon::signals::Shutdown::install()?;
//!     runtime.block_on(ferry_relay::ws::bridge::run(options, async move { shutdown.wait().await; }))
//! }
//! ```

use std::{fmt, future::Future, net::SocketAddr, path::PathBuf, pin::pin, time::Duration};

use anyhow::{Context as _, bail};
use ferry_control::{
    Backoff,
    client::{ClientError, WsStream, connect_with},
};
use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink};
use tokio::{net::UdpSocket, time::Instant};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use super::server::{MAX_DATAGRAM, websocket_config};

/// Where the local WireGuard's `Endpoint` points.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:51821";
/// Ping interval; the relay closes connections idle for 60 s.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// A connection silent for this long (not even a pong) is replaced.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(45);
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Datagrams read from the local socket in one go before a flush.
const BATCH: usize = 64;

/// What the bridge needs. `Debug` leaves the token out.
#[derive(Clone)]
pub struct BridgeOptions {
    /// The relay's WebSocket URL, `ws://` or `wss://`.
    pub url: String,
    /// The allocation's token, sent as `Authorization: Bearer`.
    pub token: String,
    /// SHA-256 of the relay's DER certificate; required for `wss://`.
    pub pin: Option<[u8; 32]>,
    /// The local UDP address the WireGuard endpoint points at.
    pub listen: SocketAddr,
    pub keepalive: Duration,
    pub dead_after: Duration,
}

impl BridgeOptions {
    #[allow(clippy::expect_used, reason = "DEFAULT_LISTEN is a constant socket address")]
    pub fn new(url: impl Into<String>, token: impl Into<String>, pin: Option<[u8; 32]>) -> BridgeOptions {
        BridgeOptions {
            url: url.into(),
            token: token.into(),
            pin,
            listen: DEFAULT_LISTEN.parse().expect("a socket address"),
            keepalive: DEFAULT_KEEPALIVE,
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }

    /// The mistakes no retry fixes: a scheme other than ws/wss, wss without
    /// a pin, a pin for plain ws, a token that cannot be a header.
    pub fn check(&self) -> anyhow::Result<()> {
        let tls = if self.url.starts_with("wss://") {
            true
        } else if self.url.starts_with("ws://") {
            false
        } else {
            bail!("the relay URL {:?} must start with ws:// or wss://", self.url);
        };
        match (tls, self.pin.is_some()) {
            (true, false) => bail!("{} needs the relay certificate's SHA-256 pin (--pin)", self.url),
            (false, true) => bail!("a pin was given for {}, which has no certificate", self.url),
            _ => {}
        }
        if self.token.is_empty() || !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the token must be non-empty printable ASCII without spaces");
        }
        if self.keepalive.is_zero() || self.dead_after <= self.keepalive {
            bail!("dead_after must be longer than a non-zero keepalive interval");
        }
        Ok(())
    }
}

impl fmt::Debug for BridgeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("pin", &self.pin.map(|p| ferry_control::pin::format_fingerprint(&p)))
            .field("listen", &self.listen)
            .field("keepalive", &self.keepalive)
            .field("dead_after", &self.dead_after)
            .finish()
    }
}

/// The `ferry-relay ws-bridge` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BridgeArgs {
    /// The relay's WebSocket URL (ws:// or wss://), as the session's
    /// configuration gives it.
    #[arg(long)]
    pub url: String,
    /// The allocation's token. A command line is visible to every local
    /// user: prefer the environment or --token-file.
    #[arg(long, env = "FERRY_WS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (surrounding whitespace is ignored).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the relay's certificate (AB:CD:... or hex),
    /// required for wss://.
    #[arg(long)]
    pub pin: Option<String>,
    /// The local UDP address; point the WireGuard peer's Endpoint here.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

impl BridgeArgs {
    pub fn into_options(self) -> anyhow::Result<BridgeOptions> {
        let token = match (self.token, &self.token_file) {
            (Some(token), None) => token,
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token from {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => bail!("give the allocation's token with --token-file or FERRY_WS_TOKEN"),
            (Some(_), Some(_)) => bail!("give the token once: --token or --token-file"),
        };
        let pin = match &self.pin {
            None => None,
            Some(text) => Some(ferry_control::pin::parse_fingerprint(text).with_context(|| {
                format!("{text:?} is not a SHA-256 fingerprint (32 hex byte pairs like AB:CD:...)")
            })?),
        };
        let mut options = BridgeOptions::new(self.url, token, pin);
        options.listen = self.listen;
        options.check()?;
        Ok(options)
    }
}

/// A bound bridge; [`Bridge::run`] moves datagrams until shutdown.
pub struct Bridge {
    socket: UdpSocket,
    options: BridgeOptions,
}

impl Bridge {
    /// Checks the options and binds the local socket.
    pub async fn bind(options: BridgeOptions) -> anyhow::Result<Bridge> {
        options.check()?;
        let socket = UdpSocket::bind(options.listen)
            .await
            .with_context(|| format!("binding the local UDP socket {}", options.listen))?;
        Ok(Bridge { socket, options })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Bridges until `shutdown` completes. Connection failures are retried
    /// forever; only a local socket error ends it early.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut shutdown = pin!(shutdown);
        let mut backoff = Backoff::new();
        let mut local_peer: Option<SocketAddr> = None;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        tracing::info!(listen = %self.local_addr()?, url = %self.options.url, "WebSocket bridge started");
        loop {
            let connecting = connect_with(
                &self.options.url,
                self.options.pin,
                Some(&self.options.token),
                websocket_config(),
            );
            let connected = tokio::select! {
                () = &mut shutdown => return Ok(()),
                connected = connecting => connected,
                // The local side talks meanwhile; remember who, drop what.
                failed = self.drain(&mut buf, &mut local_peer) => return Err(failed),
            };
            let failure = match connected {
                Ok(ws) => {
                    tracing::info!(url = %self.options.url, "connected to the relay");
                    let started = Instant::now();
                    match self.session(ws, &mut buf, &mut local_peer, &mut shutdown).await? {
                        Session::ShutDown => return Ok(()),
                        Session::Lost(why) => {
                            if started.elapsed() >= STABLE_AFTER {
                                backoff.reset();
                            }
                            why
                        }
                    }
                }
                Err(e @ ClientError::PinMismatch { .. }) => format!("{e}"),
                Err(e) if e.http_status() == Some(401) => {
                    "the relay refused the token (401): the allocation may have ended".to_owned()
                }
                Err(e) => format!("connecting: {e}"),
            };
            let delay = backoff.next_delay(&mut rand_core::OsRng);
            tracing::warn!(
                attempt = backoff.attempt(),
                retry_in_ms = delay.as_millis() as u64,
                "relay connection lost or failed: {failure}"
            );
            let sleep = tokio::time::sleep(delay);
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = sleep => {}
                failed = self.drain(&mut buf, &mut local_peer) => return Err(failed),
            }
        }
    }

    /// Reads and drops local datagrams (there is no connection to send them
    /// on), noting the sender. Returns only on a socket error.
    async fn drain(&self, buf: &mut [u8], local_peer: &mut Option<SocketAddr>) -> anyhow::Error {
        loop {
            match self.socket.recv_from(buf).await {
                Ok((_, from)) => *local_peer = Some(from),
                Err(e) if transient(&e) => {}
                Err(e) => return anyhow::Error::new(e).context("receiving on the local UDP socket"),
            }
        }
    }

    async fn session(
        &self,
        ws: WsStream,
        buf: &mut [u8],
        local_peer: &mut Option<SocketAddr>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Session> {
        let (mut sink, mut stream) = ws.split();
        let mut keepalive = tokio::time::interval(self.options.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        let mut heard = Instant::now();
        let dead_after = self.options.dead_after;
        loop {
            tokio::select! {
                () = &mut *shutdown => {
                    let bye = CloseFrame { code: CloseCode::Away, reason: "bridge stopping".into() };
                    let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(Some(bye)))).await;
                    return Ok(Session::ShutDown);
                }
                received = self.socket.recv_from(buf) => {
                    let (len, from) = match received {
                        Ok(received) => received,
                        Err(e) if transient(&e) => continue,
                        Err(e) => return Err(anyhow::Error::new(e).context("receiving on the local UDP socket")),
                    };
                    *local_peer = Some(from);
                    // This datagram and whatever else is waiting, one flush.
                    let forward = async {
                        sink.feed(Message::binary(buf[..len].to_vec())).await?;
                        for _ in 1..BATCH {
                            match self.socket.try_recv_from(buf) {
                                Ok((len, from)) => {
                                    *local_peer = Some(from);
                                    sink.feed(Message::binary(buf[..len].to_vec())).await?;
                                }
                                Err(_) => break,
                            }
                        }
                        sink.flush().await
                    };
                    match tokio::time::timeout(dead_after, forward).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ok(Session::Lost(format!("sending: {e}"))),
                        Err(_) => return Ok(Session::Lost("the relay stopped taking data".to_owned())),
                    }
                }
                frame = stream.next() => {
                    heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Binary(datagram))) => {
                            let Some(peer) = *local_peer else {
                                tracing::debug!("a datagram from the relay before any local sender: dropped");
                                continue;
                            };
                            if let Err(e) = self.socket.send_to(&datagram, peer).await {
                                tracing::debug!(%peer, error = %e, "delivering to the local WireGuard failed");
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map_or_else(
                                || "the relay closed the connection".to_owned(),
                                |f| format!("the relay closed the connection ({}: {})", u16::from(f.code), f.reason),
                            );
                            // Let tungstenite answer the close.
                            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
                            return Ok(Session::Lost(why));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Ok(Session::Lost(format!("receiving: {e}"))),
                        None => return Ok(Session::Lost("the connection ended".to_owned())),
                    }
                }
                _ = keepalive.tick() => {
                    if heard.elapsed() >= dead_after {
                        return Ok(Session::Lost(format!("nothing from the relay for {dead_after:?}")));
                    }
                    if let Err(e) = ping(&mut sink, dead_after).await {
                        return Ok(Session::Lost(e));
                    }
                }
            }
        }
    }
}

enum Session {
    ShutDown,
    Lost(String),
}

async fn ping(sink: &mut SplitSink<WsStream, Message>, within: Duration) -> Result<(), String> {
    match tokio::time::timeout(within, sink.send(Message::Ping(Default::default()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("sending a ping: {e}")),
        Err(_) => Err("the relay stopped taking data".to_owned()),
    }
}

/// Errors a UDP socket reports for an earlier datagram (an ICMP error from
/// a peer that went away), not about itself.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable | WouldBlock
    )
}

/// Binds `options.listen` and bridges until `shutdown` completes.
pub async fn run(options: BridgeOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Bridge::bind(options).await?.run(shutdown).await
}
