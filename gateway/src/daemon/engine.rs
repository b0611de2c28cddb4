//! The WireGuard side: Ferry's engine on a TUN device, with one peer per
//! technician configuration of every live session, each reached through its
//! session's relay allocation, over UDP or, where the site lets only TCP 443
//! out, over the relay's WebSocket.
//!
//! Removing a peer drops its keys at once; nothing it sent afterwards can be
//! decrypted. The shell around it asks [`Engine::poll`] every tick for peers
//! that connected or left, and, in `auto` transport, moves a peer that got no
//! handshake over UDP to the WebSocket relay (and back, if that fails too).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ferry_connect::ws::bridge::{Bridge, BridgeOptions};
use ferry_control::{
    SessionId,
    gateway::{Peer, RelayBinding},
};
use ferry_tunnel::{
    PrivateKey, PublicKey,
    config::InterfaceAddress,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig, PeerStatus},
    proto::{IpNet, PeerConfig},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::{info, warn};

use crate::config::Transport;

/// Keeps the NAT mapping in front of the gateway and the relay's binding of
/// the gateway side alive (the relay forgets idle bindings after 200 s).
const KEEPALIVE: Duration = Duration::from_secs(25);
/// A handshake older than this means the peer has gone (WireGuard's
/// REJECT_AFTER_TIME: no session key is valid longer).
const CONNECTED_WITHIN: Duration = Duration::from_secs(180);
/// In `auto`, how long a transport may go without a handshake before the
/// peer moves to the other one. WireGuard retries a handshake every 5 s, so
/// this leaves room for two tries.
const TRANSPORT_GRACE: Duration = Duration::from_secs(12);

/// One peer the plan wants.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub session: SessionId,
    pub peer: Peer,
}

/// Something the audit wants to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Connected { session: SessionId, public_key: PublicKey, endpoint: Option<SocketAddr> },
    Disconnected { session: SessionId, public_key: PublicKey },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// No relay in the configuration: the peer reaches the gateway directly.
    Direct,
    UdpRelay,
    WebSocketRelay,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::UdpRelay => "udp-relay",
            Path::WebSocketRelay => "websocket-relay",
        }
    }
}

struct Bridged {
    local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Bridged {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

struct Live {
    wanted: Wanted,
    path: Path,
    bridge: Option<Bridged>,
    /// When the current path was chosen: the grace period runs from here.
    since: Instant,
    connected: bool,
}

pub struct Engine {
    endpoint: Arc<Endpoint>,
    transport: Transport,
    peers: BTreeMap<PublicKey, Live>,
}

impl Engine {
    /// Creates the TUN device with `address` (whose prefix covers every
    /// session subnet, so the kernel routes replies for all technicians into
    /// it) and binds the WireGuard UDP port.
    pub async fn start(
        name: &str,
        private_key: PrivateKey,
        port: u16,
        address: InterfaceAddress,
        transport: Transport,
    ) -> Result<Engine> {
        let config = EndpointConfig {
            name: name.to_string(),
            private_key,
            listen_port: port,
            addresses: vec![address],
            mtu: DEFAULT_MTU,
            peers: Vec::new(),
        };
        let endpoint = Endpoint::start(config)
            .await
            .with_context(|| format!("starting the WireGuard engine on TUN {name}, UDP port {port}"))?;
        Ok(Engine { endpoint: Arc::new(endpoint), transport, peers: BTreeMap::new() })
    }

    pub fn public_key(&self) -> PublicKey {
        self.endpoint.public_key()
    }

    pub fn local_port(&self) -> u16 {
        self.endpoint.local_port()
    }

    /// Hands the engine's local receiver indices to `sink`, now and on every
    /// change (see [`ferry_tunnel::endpoint::IndexSink`]).
    pub fn watch_indices(&self, sink: impl ferry_tunnel::endpoint::IndexSink) -> Result<()> {
        Ok(self.endpoint.watch_indices(sink)?)
    }

    /// Makes the engine's peers exactly `wanted`: peers not in it lose their
    /// keys now; new ones are added and start a handshake toward the relay,
    /// which is what registers the gateway's side of the allocation there.
    pub async fn apply(&mut self, wanted: Vec<Wanted>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut keep: BTreeMap<PublicKey, Wanted> = BTreeMap::new();
        for w in wanted {
            keep.insert(PublicKey(w.peer.public_key.0), w);
        }
        let gone: Vec<PublicKey> = self.peers.keys().filter(|k| !keep.contains_key(k)).copied().collect();
        for key in gone {
            self.endpoint.remove_peer(&key);
            if let Some(live) = self.peers.remove(&key) {
                info!(session = live.wanted.session.0, peer = %key, "peer removed");
                if live.connected {
                    changes.push(Change::Disconnected { session: live.wanted.session, public_key: key });
                }
            }
        }
        for (key, w) in keep {
            let unchanged = self.peers.get(&key).is_some_and(|live| {
                live.wanted.session == w.session
                    && live.wanted.peer.tunnel_address == w.peer.tunnel_address
                    && live.wanted.peer.relay == w.peer.relay
            });
            if unchanged {
                continue;
            }
            if let Some(old) = self.peers.remove(&key) {
                self.endpoint.remove_peer(&key);
                if old.connected {
                    changes.push(Change::Disconnected { session: old.wanted.session, public_key: key });
                }
            }
            let path = match (&w.peer.relay, self.transport) {
                (None, _) => Path::Direct,
                (Some(_), Transport::Websocket) => Path::WebSocketRelay,
                (Some(_), _) => Path::UdpRelay,
            };
            let mut live = Live { wanted: w, path, bridge: None, since: Instant::now(), connected: false };
            if let Err(e) = self.route(&mut live).await {
                warn!(peer = %key, error = %format!("{e:#}"), "setting up the peer's path failed");
            }
            self.peers.insert(key, live);
        }
        changes
    }

    /// (Re)configures the peer in the engine for its current path and starts
    /// a handshake.
    async fn route(&self, live: &mut Live) -> Result<()> {
        live.bridge = None;
        let endpoint = match (live.path, &live.wanted.peer.relay) {
            (Path::Direct, _) | (_, None) => None,
            (Path::UdpRelay, Some(relay)) => Some(relay.udp),
            (Path::WebSocketRelay, Some(relay)) => {
                let bridged = bridge(relay).await?;
                let local = bridged.local;
                live.bridge = Some(bridged);
                Some(local)
            }
        };
        let key = PublicKey(live.wanted.peer.public_key.0);
        let allowed =
            IpNet::new(live.wanted.peer.tunnel_address, host_prefix(live.wanted.peer.tunnel_address))
                .context("the peer's tunnel address")?;
        let config = PeerConfig {
            endpoint,
            allowed_ips: vec![allowed],
            persistent_keepalive: Some(KEEPALIVE),
            ..PeerConfig::new(key)
        };
        self.endpoint.add_peer(config).context("adding the peer to the engine")?;
        live.since = Instant::now();
        if endpoint.is_some() {
            self.endpoint.rekey(&key);
        }
        info!(
            session = live.wanted.session.0,
            peer = %key,
            user = live.wanted.peer.user,
            path = live.path.label(),
            "peer configured"
        );
        Ok(())
    }

    /// Notices peers that connected or left, and moves stuck peers to the
    /// other transport in `auto`.
    pub async fn poll(&mut self) -> Vec<Change> {
        let status: BTreeMap<PublicKey, PeerStatus> =
            self.endpoint.status().into_iter().map(|s| (s.public_key, s)).collect();
        let now = Instant::now();
        let mut changes = Vec::new();
        let mut stuck = Vec::new();
        for (key, live) in &mut self.peers {
            let handshake = status.get(key).and_then(|s| s.last_handshake);
            let connected = handshake.is_some_and(|at| now.duration_since(at) < CONNECTED_WITHIN);
            if connected != live.connected {
                live.connected = connected;
                let session = live.wanted.session;
                changes.push(if connected {
                    let endpoint = live.bridge.as_ref().map_or_else(
                        || status.get(key).and_then(|s| s.endpoint),
                        |_| live.wanted.peer.relay.as_ref().map(|r| r.udp),
                    );
                    Change::Connected { session, public_key: *key, endpoint }
                } else {
                    Change::Disconnected { session, public_key: *key }
                });
            }
            let fresh_since_switch = handshake.is_some_and(|at| at >= live.since);
            if self.transport == Transport::Auto
                && live.wanted.peer.relay.is_some()
                && !fresh_since_switch
                && !connected
                && now.duration_since(live.since) >= TRANSPORT_GRACE
            {
                stuck.push(*key);
            }
        }
        for key in stuck {
            let Some(mut live) = self.peers.remove(&key) else { continue };
            live.path = match live.path {
                Path::UdpRelay => Path::WebSocketRelay,
                _ => Path::UdpRelay,
            };
            info!(peer = %key, path = live.path.label(), "no handshake yet; trying the other relay transport");
            if let Err(e) = self.route(&mut live).await {
                warn!(peer = %key, error = %format!("{e:#}"), "switching the peer's transport failed");
                live.since = Instant::now();
            }
            self.peers.insert(key, live);
        }
        changes
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        self.endpoint.status()
    }

    pub fn connected(&self) -> usize {
        self.peers.values().filter(|l| l.connected).count()
    }

    pub fn path_of(&self, key: &PublicKey) -> Option<Path> {
        self.peers.get(key).map(|l| l.path)
    }
}

fn host_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The certificate pin for the relay's WebSocket URL: the one the relay
/// reported through the cloud for `wss://`, none for `ws://`. The gateway has
/// no CA roots, so a `wss://` relay without a pin cannot be verified and is
/// refused rather than trusted blindly.
fn relay_pin(relay: &RelayBinding) -> Result<Option<[u8; 32]>> {
    if !relay.websocket_url.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("wss://")) {
        return Ok(None);
    }
    let Some(text) = &relay.websocket_pin else {
        anyhow::bail!(
            "relay {} offers {} without a certificate pin; the gateway trusts no CA roots, so it does not use it",
            relay.relay_id,
            relay.websocket_url
        );
    };
    // The control channel validated it already; this cannot fail for a
    // binding that came from the cloud.
    let pin = ferry_control::pin::parse_fingerprint(text).with_context(|| {
        format!("relay {}: the pin {text:?} is not a SHA-256 fingerprint", relay.relay_id)
    })?;
    Ok(Some(pin))
}

/// A WebSocket bridge for one allocation, on a fresh loopback port.
async fn bridge(relay: &RelayBinding) -> Result<Bridged> {
    let pin = relay_pin(relay)?;
    let mut options = BridgeOptions::new(&relay.websocket_url, relay.websocket_token.expose(), pin);
    options.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    options.check().context("the relay's WebSocket settings")?;
    let bridge = Bridge::bind(options).await.context("binding the WebSocket bridge's local socket")?;
    let local = bridge.local_addr().context("the bridge's local address")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = bridge
            .run(async move {
                let _ = stopped.await;
            })
            .await
        {
            warn!(error = %format!("{e:#}"), "the WebSocket bridge stopped");
        }
    });
    Ok(Bridged { local, stop: Some(stop), task })
}

#[cfg(test)]
mod tests {
    use ferry_control::{AllocationId, RelayId, Token};

    use super::*;

    fn binding(url: &str, pin: Option<String>) -> RelayBinding {
        RelayBinding {
            relay_id: RelayId(7),
            allocation_id: AllocationId(1),
            udp: "203.0.113.1:40000".parse().unwrap(),
            websocket_url: url.into(),
            websocket_token: Token::new("alloc-s3cret"),
            websocket_pin: pin,
        }
    }

    #[test]
    fn wss_uses_the_relays_pin_and_is_refused_without_one() {
        let pin = [0x5a; 32];
        let text = ferry_control::pin::format_fingerprint(&pin);
        assert_eq!(relay_pin(&binding("wss://203.0.113.1/", Some(text.clone()))).unwrap(), Some(pin));
        let refused = relay_pin(&binding("wss://203.0.113.1/", None)).unwrap_err().to_string();
        assert!(refused.contains("without a certificate pin"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
        // Plain ws:// has no certificate; a pin for it is left unused.
        assert_eq!(relay_pin(&binding("ws://203.0.113.1/", None)).unwrap(), None);
        assert_eq!(relay_pin(&binding("ws://203.0.113.1/", Some(text))).unwrap(), None);
    }
}
