//! The WebSocket bridge: lets a stock WireGuard use the WebSocket relay.
//!
//! It listens on a local UDP socket (127.0.0.1:51821 by default) that the
//! local WireGuard's peer `Endpoint` points at. Every datagram received there
//! goes out over a [`WsRelay`]; every datagram from the relay goes back to
//! the last local sender. It never sees plaintext: it only moves WireGuard's
//! encrypted datagrams. The relay's `ferry-relay ws-bridge` subcommand is
//! this with command-line arguments.

use std::{
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    pin::pin,
};

use tokio::{net::UdpSocket, sync::watch};

use super::{Incoming, MAX_DATAGRAM, OptionsError, WsRelay, WsRelayOptions, WsState};

/// Where the local WireGuard's `Endpoint` points, as text for command lines.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:51821";
/// [`DEFAULT_LISTEN`] as an address.
pub const DEFAULT_LISTEN_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 51821));

/// What the bridge needs. `Debug` leaves the token out.
#[derive(Clone, Debug)]
pub struct BridgeOptions {
    pub relay: WsRelayOptions,
    /// The local UDP address the WireGuard endpoint points at.
    pub listen: SocketAddr,
}

impl BridgeOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>, pin: Option<[u8; 32]>) -> BridgeOptions {
        BridgeOptions { relay: WsRelayOptions::new(url, token, pin), listen: DEFAULT_LISTEN_ADDR }
    }

    /// See [`WsRelayOptions::check`].
    pub fn check(&self) -> Result<(), OptionsError> {
        self.relay.check()
    }
}

/// Why the bridge could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("binding the local UDP socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the local UDP socket: {0}")]
    Socket(io::Error),
}

/// A bound bridge, already connecting to the relay; [`Bridge::run`] moves
/// datagrams until shutdown.
pub struct Bridge {
    socket: UdpSocket,
    url: String,
    relay: WsRelay,
    incoming: Incoming,
}

impl Bridge {
    /// Checks the options, binds the local socket and starts connecting.
    pub async fn bind(options: BridgeOptions) -> Result<Bridge, BridgeError> {
        options.check()?;
        let socket = UdpSocket::bind(options.listen)
            .await
            .map_err(|source| BridgeError::Bind { addr: options.listen, source })?;
        let url = options.relay.url.clone();
        let (relay, incoming) = WsRelay::start(options.relay)?;
        Ok(Bridge { socket, url, relay, incoming })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The relay connection's state, as it changes.
    pub fn watch_state(&self) -> watch::Receiver<WsState> {
        self.relay.watch_state()
    }

    /// Bridges until `shutdown` completes. Connection failures are retried
    /// forever (see [`WsRelay`]); only a local socket error ends it early.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BridgeError> {
        let Bridge { socket, url, relay, mut incoming } = self;
        let mut shutdown = pin!(shutdown);
        let listen = socket.local_addr().map_err(BridgeError::Socket)?;
        tracing::info!(%listen, %url, "WebSocket bridge started");
        let mut local_peer: Option<SocketAddr> = None;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let ended = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                received = socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        local_peer = Some(from);
                        // Dropped and counted while the relay is unreachable.
                        let _ = relay.send(&buf[..len]);
                    }
                    Err(e) if transient(&e) => {}
                    Err(e) => break Err(BridgeError::Socket(e)),
                },
                Some(datagram) = incoming.recv() => {
                    let Some(peer) = local_peer else {
                        tracing::debug!("a datagram from the relay before any local sender: dropped");
                        continue;
                    };
                    if let Err(e) = socket.send_to(&datagram, peer).await {
                        tracing::debug!(%peer, error = %e, "delivering to the local WireGuard failed");
                    }
                }
            }
        };
        relay.stop().await;
        ended
    }
}

/// Errors a UDP socket reports for an earlier datagram (an ICMP error from
/// a peer that went away), not about itself.
fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable | WouldBlock
    )
}

/// Binds `options.listen` and bridges until `shutdown` completes.
pub async fn run(options: BridgeOptions, shutdown: impl Future<Output = ()>) -> Result<(), BridgeError> {
    Bridge::bind(options).await?.run(shutdown).await
}
