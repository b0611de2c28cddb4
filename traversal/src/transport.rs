//! The relay transport a peer uses: the UDP relay (the WireGuard socket
//! itself) or the relay's WebSocket, attached to the endpoint as a virtual
//! port so that WireGuard's datagrams go over it with no loopback socket.

use std::{net::SocketAddr, sync::Arc};

use ferry_connect::ws::{Incoming, OptionsError, WsRelay, WsState, WsStats};
use ferry_tunnel::endpoint::{DatagramSink, Endpoint};
use tokio::{runtime::Handle, task::JoinHandle};

use crate::plan::WebSocketRelay;

/// Which relay transport carries a peer's relayed datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    Udp,
    WebSocket,
}

impl RelayTransport {
    pub fn label(self) -> &'static str {
        match self {
            RelayTransport::Udp => "udp",
            RelayTransport::WebSocket => "websocket",
        }
    }
}

/// The endpoint's side of a [`WsRelay`]: the engine's send path calls it, so
/// it only queues (and drops, counted in the relay's stats, when it cannot).
struct WsSink(WsRelay);

impl DatagramSink for WsSink {
    fn send(&self, datagram: &[u8]) {
        let _ = self.0.send(datagram);
    }
}

/// A WebSocket relay attached to the endpoint. Dropping it stops the pump,
/// which detaches the virtual port, and closes the connection.
pub(crate) struct WsAttached {
    sink: Arc<WsSink>,
    addr: SocketAddr,
    pump: JoinHandle<()>,
    /// The connection [`WsAttached::newly_up`] last reported.
    up_seen: Option<std::time::Instant>,
}

impl WsAttached {
    /// Dials the relay's WebSocket (in the background, reconnecting) and
    /// attaches it to `endpoint`; a task feeds what the relay sends into the
    /// endpoint.
    pub(crate) fn start(
        runtime: &Handle,
        endpoint: &Endpoint,
        relay: &WebSocketRelay,
    ) -> Result<WsAttached, OptionsError> {
        let _entered = runtime.enter();
        let (ws, incoming) = WsRelay::start(relay.options())?;
        let sink = Arc::new(WsSink(ws));
        let port = endpoint.attach_transport(sink.clone());
        let addr = port.addr();
        let pump = runtime.spawn(pump(port, incoming));
        Ok(WsAttached { sink, addr, pump, up_seen: None })
    }

    /// The virtual address the peer's endpoint is set to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn state(&self) -> WsState {
        self.sink.0.state()
    }

    /// Whether a connection came up since the last call: datagrams sent
    /// while it was down were dropped, so a handshake is worth starting.
    pub(crate) fn newly_up(&mut self) -> bool {
        match self.state() {
            WsState::Up { since } if self.up_seen != Some(since) => {
                self.up_seen = Some(since);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn stats(&self) -> WsStats {
        self.sink.0.stats()
    }
}

impl Drop for WsAttached {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Hands every datagram the relay sends to the endpoint, in order, until the
/// relay stops or the task is aborted (which drops the port: detached).
async fn pump(port: ferry_tunnel::endpoint::VirtualPort, mut incoming: Incoming) {
    while let Some(datagram) = incoming.recv().await {
        port.deliver(datagram).await;
    }
}

/// The transport a peer's relayed datagrams take now.
pub(crate) enum Active {
    /// No relay: direct paths only.
    Nothing,
    Udp(SocketAddr),
    WebSocket(WsAttached),
}

impl Active {
    /// The address the peer's endpoint is set to while on the relay.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        match self {
            Active::Nothing => None,
            Active::Udp(addr) => Some(*addr),
            Active::WebSocket(ws) => Some(ws.addr()),
        }
    }

    pub(crate) fn kind(&self) -> Option<RelayTransport> {
        match self {
            Active::Nothing => None,
            Active::Udp(_) => Some(RelayTransport::Udp),
            Active::WebSocket(_) => Some(RelayTransport::WebSocket),
        }
    }
}
