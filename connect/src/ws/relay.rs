//! [`WsRelay`]: a datagram transport over the relay's WebSocket, kept up.
//!
//! One task owns the connection: it pings every
//! [`WsRelayOptions::keepalive`] (well within the relay's 60 s idle timeout),
//! replaces a connection that said nothing for
//! [`WsRelayOptions::dead_after`], and reconnects forever with exponential
//! backoff and full jitter ([`Backoff`]). An allocation can be announced to
//! the relay after its peers learn of it, so even a refused token is
//! retried; the refusal shows in [`WsRelay::state`].
//!
//! Sending never waits: while there is no connection, or the queue is full,
//! a datagram is dropped and counted. WireGuard retransmits its handshakes,
//! and a stale datagram is no use later. Received datagrams come out of
//! [`Incoming`]; a reader that falls behind holds the connection's reader
//! (TCP flow control then holds the relay) rather than losing them.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use super::{ConnectError, MAX_DATAGRAM, WsStream, dial, websocket_config};
use crate::{backoff::Backoff, pin::format_fingerprint};

/// Ping interval; the relay closes connections idle for 60 s.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
/// A connection silent for this long (not even a pong) is replaced.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(45);
/// Datagrams queued each way.
pub const DEFAULT_QUEUE: usize = 256;
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Outbound datagrams written in one go before a flush.
const BATCH: u64 = 64;
/// How long the closing handshake may take when stopping.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to connect. `Debug` leaves the token out.
#[derive(Clone)]
pub struct WsRelayOptions {
    /// The relay's WebSocket URL, `ws://` or `wss://`.
    pub url: String,
    /// The allocation's token, sent as `Authorization: Bearer`.
    pub token: String,
    /// SHA-256 of the relay's DER certificate; required for `wss://`.
    pub pin: Option<[u8; 32]>,
    pub keepalive: Duration,
    pub dead_after: Duration,
    /// Datagrams queued each way (at least one).
    pub queue: usize,
}

impl WsRelayOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>, pin: Option<[u8; 32]>) -> WsRelayOptions {
        WsRelayOptions {
            url: url.into(),
            token: token.into(),
            pin,
            keepalive: DEFAULT_KEEPALIVE,
            dead_after: DEFAULT_DEAD_AFTER,
            queue: DEFAULT_QUEUE,
        }
    }

    /// The mistakes no retry fixes: a scheme other than ws/wss, wss without
    /// a pin, a pin for plain ws, a token that cannot be a header, timings
    /// that would replace every connection.
    pub fn check(&self) -> Result<(), OptionsError> {
        let tls = if self.url.starts_with("wss://") {
            true
        } else if self.url.starts_with("ws://") {
            false
        } else {
            return Err(OptionsError::Scheme(self.url.clone()));
        };
        match (tls, self.pin.is_some()) {
            (true, false) => return Err(OptionsError::PinRequired(self.url.clone())),
            (false, true) => return Err(OptionsError::PinWithoutTls(self.url.clone())),
            _ => {}
        }
        if self.token.is_empty() || !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(OptionsError::BadToken);
        }
        if self.keepalive.is_zero() || self.dead_after <= self.keepalive {
            return Err(OptionsError::Timing);
        }
        if self.queue == 0 {
            return Err(OptionsError::Queue);
        }
        Ok(())
    }
}

impl fmt::Debug for WsRelayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsRelayOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("pin", &self.pin.map(|p| format_fingerprint(&p)))
            .field("keepalive", &self.keepalive)
            .field("dead_after", &self.dead_after)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Options that cannot work, found before anything is started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("the relay URL {0:?} must start with ws:// or wss://")]
    Scheme(String),
    #[error("{0} needs the relay certificate's SHA-256 pin")]
    PinRequired(String),
    #[error("a pin was given for {0}, which has no certificate")]
    PinWithoutTls(String),
    #[error("the token must be non-empty printable ASCII without spaces")]
    BadToken,
    #[error("dead_after must be longer than a non-zero keepalive interval")]
    Timing,
    #[error("the queue must hold at least one datagram")]
    Queue,
}

/// Why a connection attempt failed or a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// 401 on the upgrade: the relay knows no allocation with this token
    /// (not yet, or not any more).
    #[error("the relay refused the token (401): the allocation may have ended")]
    TokenRefused,
    /// Another HTTP status on the upgrade.
    #[error("the relay refused the connection with HTTP {0}")]
    Refused(u16),
    /// The relay's certificate is not the pinned one (fingerprints in hex).
    #[error("the relay's certificate has SHA-256 {got}, but the pin is {expected}")]
    PinMismatch { expected: String, got: String },
    /// TCP, TLS or the upgrade failed otherwise.
    #[error("connecting: {0}")]
    Connect(String),
    /// The relay closed the connection (with this close code, if any).
    #[error("the relay closed the connection{}", closed_because(*code, reason))]
    Closed { code: Option<u16>, reason: String },
    /// Nothing, not even a pong, came for [`WsRelayOptions::dead_after`].
    #[error("nothing from the relay for {0:?}")]
    Silent(Duration),
    /// A write did not complete within [`WsRelayOptions::dead_after`].
    #[error("the relay stopped taking data")]
    Stalled,
    /// The connection broke (an I/O or protocol error, or it just ended).
    #[error("the connection broke: {0}")]
    Broken(String),
}

fn closed_because(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(code) => format!(" ({code}: {reason})"),
        None => String::new(),
    }
}

impl LinkError {
    fn from_connect(e: ConnectError) -> LinkError {
        match e {
            ConnectError::PinMismatch { expected, got } => LinkError::PinMismatch { expected, got },
            e => match e.http_status() {
                Some(401) => LinkError::TokenRefused,
                Some(status) => LinkError::Refused(status),
                None => LinkError::Connect(e.to_string()),
            },
        }
    }
}

/// Where the connection stands, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsState {
    /// Dialling, attempt `attempt` since the last stable connection;
    /// `last_error` says why the previous attempt or connection failed.
    Connecting { attempt: u32, last_error: Option<LinkError> },
    /// Connected: datagrams flow.
    Up { since: std::time::Instant },
    /// Waiting `retry_in` before the next attempt, after `error`.
    Waiting { attempt: u32, error: LinkError, retry_in: Duration },
    /// [`WsRelay::stop`] was called or the [`WsRelay`] dropped.
    Stopped,
}

impl WsState {
    pub fn is_up(&self) -> bool {
        matches!(self, WsState::Up { .. })
    }

    /// Why the last attempt or connection failed, while not up.
    pub fn last_error(&self) -> Option<&LinkError> {
        match self {
            WsState::Connecting { last_error, .. } => last_error.as_ref(),
            WsState::Waiting { error, .. } => Some(error),
            WsState::Up { .. } | WsState::Stopped => None,
        }
    }
}

/// Counters since [`WsRelay::start`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsStats {
    /// Datagrams written to a connection.
    pub sent: u64,
    /// Datagrams handed to [`Incoming`].
    pub received: u64,
    /// Sends dropped because there was no connection.
    pub dropped_down: u64,
    /// Sends dropped because the queue was full.
    pub dropped_full: u64,
    /// Sends dropped for being larger than [`MAX_DATAGRAM`].
    pub dropped_oversized: u64,
    /// Datagrams received after [`Incoming`] was dropped.
    pub dropped_incoming: u64,
    /// Connections made.
    pub connects: u64,
    /// Failed attempts and lost connections.
    pub failures: u64,
}

/// Why [`WsRelay::send`] dropped a datagram (each is counted in [`WsStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("no connection to the relay")]
    Down,
    #[error("the queue to the relay is full")]
    Full,
    #[error("larger than a WebSocket relay frame may be")]
    Oversized,
}

/// Datagrams from the relay, in order.
pub type Incoming = mpsc::Receiver<Vec<u8>>;

#[derive(Default)]
struct Counters {
    up: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    dropped_down: AtomicU64,
    dropped_full: AtomicU64,
    dropped_oversized: AtomicU64,
    dropped_incoming: AtomicU64,
    connects: AtomicU64,
    failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One reconnecting WebSocket connection to the relay, carrying datagrams.
/// Dropping it stops the connection (closing it politely in the
/// background); [`WsRelay::stop`] does the same and waits.
pub struct WsRelay {
    outbound: mpsc::Sender<Vec<u8>>,
    counters: Arc<Counters>,
    state: watch::Receiver<WsState>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl fmt::Debug for WsRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsRelay").field("state", &*self.state.borrow()).finish_non_exhaustive()
    }
}

impl WsRelay {
    /// Checks the options and starts connecting on the current tokio
    /// runtime (panics outside one, as `tokio::spawn` does). Returns the
    /// transport and the stream of datagrams the relay sends.
    pub fn start(options: WsRelayOptions) -> Result<(WsRelay, Incoming), OptionsError> {
        options.check()?;
        let (outbound, outbound_rx) = mpsc::channel(options.queue);
        let (incoming, incoming_rx) = mpsc::channel(options.queue);
        let (state_tx, state) = watch::channel(WsState::Connecting { attempt: 0, last_error: None });
        let (stop, stopped) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let link =
            Link { options, counters: counters.clone(), state: state_tx, outbound: outbound_rx, incoming };
        let task = tokio::spawn(link.run(stopped));
        Ok((WsRelay { outbound, counters, state, stop, task }, incoming_rx))
    }

    /// Queues one datagram for the relay without waiting; drops it (and
    /// counts why) while there is no connection or the queue is full.
    pub fn send(&self, datagram: &[u8]) -> Result<(), Dropped> {
        let counters = &self.counters;
        if datagram.len() > MAX_DATAGRAM {
            bump(&counters.dropped_oversized);
            return Err(Dropped::Oversized);
        }
        if !counters.up.load(Ordering::Acquire) {
            bump(&counters.dropped_down);
            return Err(Dropped::Down);
        }
        match self.outbound.try_send(datagram.to_vec()) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&counters.dropped_full);
                Err(Dropped::Full)
            }
            // The task only ends when this handle goes.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                bump(&counters.dropped_down);
                Err(Dropped::Down)
            }
        }
    }

    /// Where the connection stands now.
    pub fn state(&self) -> WsState {
        self.state.borrow().clone()
    }

    /// Every change of [`state`](Self::state).
    pub fn watch_state(&self) -> watch::Receiver<WsState> {
        self.state.clone()
    }

    pub fn stats(&self) -> WsStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WsStats {
            sent: get(&c.sent),
            received: get(&c.received),
            dropped_down: get(&c.dropped_down),
            dropped_full: get(&c.dropped_full),
            dropped_oversized: get(&c.dropped_oversized),
            dropped_incoming: get(&c.dropped_incoming),
            connects: get(&c.connects),
            failures: get(&c.failures),
        }
    }

    /// Closes the connection (1001, going away) and waits until it is done.
    pub async fn stop(self) {
        let WsRelay { stop, task, .. } = self;
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// The task's side.
struct Link {
    options: WsRelayOptions,
    counters: Arc<Counters>,
    state: watch::Sender<WsState>,
    outbound: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<Vec<u8>>,
}

/// How a connection ended.
enum Session {
    Stopped,
    Lost(LinkError),
}

impl Link {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new();
        let mut last_error = None;
        loop {
            self.state.send_replace(WsState::Connecting { attempt: backoff.attempt(), last_error });
            let connecting =
                dial(&self.options.url, self.options.pin, Some(&self.options.token), websocket_config());
            // A dropped handle counts as a stop, as does `stop()`.
            let connected = tokio::select! {
                _ = &mut stop => break,
                connected = connecting => connected,
            };
            let error = match connected {
                Ok(ws) => {
                    tracing::info!(url = %self.options.url, "connected to the relay");
                    let started = Instant::now();
                    bump(&self.counters.connects);
                    self.counters.up.store(true, Ordering::Release);
                    self.state.send_replace(WsState::Up { since: std::time::Instant::now() });
                    let ended = self.session(ws, &mut stop).await;
                    self.counters.up.store(false, Ordering::Release);
                    // What was queued for this connection is stale now.
                    while self.outbound.try_recv().is_ok() {
                        bump(&self.counters.dropped_down);
                    }
                    match ended {
                        Session::Stopped => break,
                        Session::Lost(error) => {
                            if started.elapsed() >= STABLE_AFTER {
                                backoff.reset();
                            }
                            error
                        }
                    }
                }
                Err(e) => LinkError::from_connect(e),
            };
            bump(&self.counters.failures);
            let delay = backoff.next_delay(&mut rand_core::OsRng);
            tracing::warn!(
                attempt = backoff.attempt(),
                retry_in_ms = delay.as_millis() as u64,
                "relay connection lost or failed: {error}"
            );
            self.state.send_replace(WsState::Waiting {
                attempt: backoff.attempt(),
                error: error.clone(),
                retry_in: delay,
            });
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(delay) => {}
            }
            last_error = Some(error);
        }
        self.state.send_replace(WsState::Stopped);
    }

    async fn session(&mut self, ws: WsStream, stop: &mut oneshot::Receiver<()>) -> Session {
        let (mut sink, mut stream) = ws.split();
        let keepalive_every = self.options.keepalive;
        let dead_after = self.options.dead_after;
        let mut keepalive = tokio::time::interval(keepalive_every);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        let mut heard = Instant::now();
        // A received datagram that Incoming had no room for: reading waits
        // until it is delivered.
        let mut pending: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                _ = &mut *stop => return going_away(&mut sink).await,
                datagram = self.outbound.recv() => {
                    // The handle holds the sender; without it, stop.
                    let Some(datagram) = datagram else { return going_away(&mut sink).await };
                    // This datagram and whatever else is waiting, one flush.
                    let forward = async {
                        let mut written: u64 = 1;
                        sink.feed(Message::binary(datagram)).await?;
                        while written < BATCH {
                            let Ok(datagram) = self.outbound.try_recv() else { break };
                            sink.feed(Message::binary(datagram)).await?;
                            written += 1;
                        }
                        sink.flush().await?;
                        Ok::<_, tokio_tungstenite::tungstenite::Error>(written)
                    };
                    match tokio::time::timeout(dead_after, forward).await {
                        Ok(Ok(written)) => {
                            self.counters.sent.fetch_add(written, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => return Session::Lost(LinkError::Broken(format!("sending: {e}"))),
                        Err(_) => return Session::Lost(LinkError::Stalled),
                    }
                }
                permit = self.incoming.reserve(), if pending.is_some() => {
                    match (permit, pending.take()) {
                        (Ok(permit), Some(datagram)) => {
                            permit.send(datagram);
                            bump(&self.counters.received);
                        }
                        (Err(_), Some(_)) => bump(&self.counters.dropped_incoming),
                        (_, None) => {}
                    }
                }
                frame = stream.next(), if pending.is_none() => {
                    heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Binary(datagram))) => {
                            match self.incoming.try_send(Vec::from(datagram)) {
                                Ok(()) => bump(&self.counters.received),
                                Err(mpsc::error::TrySendError::Full(datagram)) => pending = Some(datagram),
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    bump(&self.counters.dropped_incoming)
                                }
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map_or((None, String::new()), |f| (Some(u16::from(f.code)), f.reason.to_string()));
                            // Let tungstenite answer the close.
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                            return Session::Lost(LinkError::Closed { code, reason });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Session::Lost(LinkError::Broken(format!("receiving: {e}"))),
                        None => return Session::Lost(LinkError::Broken("the connection ended".to_owned())),
                    }
                }
                _ = keepalive.tick() => {
                    // Not reading (Incoming is full) is our silence, not the relay's.
                    if pending.is_some() {
                        heard = Instant::now();
                    }
                    if heard.elapsed() >= dead_after {
                        return Session::Lost(LinkError::Silent(dead_after));
                    }
                    if let Err(e) = ping(&mut sink, dead_after).await {
                        return Session::Lost(e);
                    }
                }
            }
        }
    }
}

/// Says goodbye (1001) to the relay, within a bounded time.
async fn going_away(sink: &mut SplitSink<WsStream, Message>) -> Session {
    let bye = CloseFrame { code: CloseCode::Away, reason: "stopping".into() };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(bye)))).await;
    Session::Stopped
}

async fn ping(sink: &mut SplitSink<WsStream, Message>, within: Duration) -> Result<(), LinkError> {
    match tokio::time::timeout(within, sink.send(Message::Ping(Default::default()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LinkError::Broken(format!("sending a ping: {e}"))),
        Err(_) => Err(LinkError::Stalled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_cannot_work_are_refused_up_front() {
        let ok = WsRelayOptions::new("ws://127.0.0.1:443/relay", "tok", None);
        ok.check().unwrap();
        assert!(!format!("{ok:?}").contains("tok\""), "{ok:?}");
        for (url, token, pin, problem) in [
            ("wss://relay.example/relay", "tok", None, "pin"),
            ("ws://relay.example/relay", "tok", Some([1u8; 32]), "no certificate"),
            ("https://relay.example/relay", "tok", None, "ws://"),
            ("ws://relay.example/relay", "two words", None, "token"),
            ("ws://relay.example/relay", "", None, "token"),
        ] {
            let err = WsRelayOptions::new(url, token, pin).check().unwrap_err().to_string();
            assert!(err.contains(problem), "{url} {token:?}: {err}");
        }
        let slow = WsRelayOptions { dead_after: DEFAULT_KEEPALIVE, ..ok.clone() };
        assert_eq!(slow.check(), Err(OptionsError::Timing));
        assert_eq!(WsRelayOptions { queue: 0, ..ok }.check(), Err(OptionsError::Queue));
    }

    #[test]
    fn refusals_become_typed_link_errors() {
        let pin = ConnectError::PinMismatch { expected: "aa".into(), got: "bb".into() };
        assert_eq!(
            LinkError::from_connect(pin),
            LinkError::PinMismatch { expected: "aa".into(), got: "bb".into() }
        );
        assert_eq!(
            LinkError::from_connect(ConnectError::Timeout),
            LinkError::Connect("timed out connecting".into())
        );
        let closed = LinkError::Closed { code: Some(1000), reason: "allocation ended".into() };
        assert_eq!(closed.to_string(), "the relay closed the connection (1000: allocation ended)");
        let bare = LinkError::Closed { code: None, reason: String::new() };
        assert_eq!(bare.to_string(), "the relay closed the connection");
    }
}
