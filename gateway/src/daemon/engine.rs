//! The WireGuard side: Ferry's engine on a TUN device, with one peer per
//! technician configuration of every live session, and the traversal
//! (`ferry_traversal`) that finds each peer's path: its session's relay
//! allocation at once, over UDP or, where the site lets only TCP 443 out,
//! over the relay's WebSocket, and a direct path once one is verified both
//! ways.
//!
//! The engine's peers are exactly the plan's live peers, and so are the
//! traversal's: the gateway probes for no one else, and a peer that leaves
//! the plan stops being probed and loses its keys at once; nothing it sent
//! afterwards can be decrypted. The shell around it asks [`Engine::poll`]
//! every tick for peers that connected or left.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ferry_control::{
    SessionId,
    gateway::{PathKind as WirePath, Peer, RelayBinding},
};
use ferry_traversal::{
    PathKind, PeerPath, PeerPlan, RelayPlan, TransportMode, Traversal, TraversalOptions, WebSocketRelay,
};
use ferry_tunnel::{
    PrivateKey, PublicKey,
    config::InterfaceAddress,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig, PeerStatus},
    proto::{IpNet, PeerConfig},
};
use tracing::{info, warn};

use crate::config::Transport;

/// Keeps the NAT mapping in front of the gateway and the relay's binding of
/// the gateway side alive (the relay forgets idle bindings after 200 s).
const KEEPALIVE: Duration = Duration::from_secs(25);
/// A handshake older than this means the peer has gone (WireGuard's
/// REJECT_AFTER_TIME: no session key is valid longer).
const CONNECTED_WITHIN: Duration = Duration::from_secs(180);

/// One peer the plan wants.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub session: SessionId,
    pub peer: Peer,
}

/// Something the audit wants to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Connected {
        session: SessionId,
        public_key: PublicKey,
        endpoint: Option<SocketAddr>,
        path: Option<WirePath>,
    },
    /// A connected peer's path changed.
    PathChanged {
        session: SessionId,
        public_key: PublicKey,
        path: WirePath,
        endpoint: Option<SocketAddr>,
    },
    Disconnected {
        session: SessionId,
        public_key: PublicKey,
    },
}

struct Live {
    wanted: Wanted,
    connected: bool,
    /// The path last reported for it while connected.
    path: Option<WirePath>,
}

pub struct Engine {
    endpoint: Arc<Endpoint>,
    traversal: Traversal,
    transport: Transport,
    peers: BTreeMap<PublicKey, Live>,
}

impl Engine {
    /// Creates the TUN device with `address` (whose prefix covers every
    /// session subnet, so the kernel routes replies for all technicians into
    /// it), binds the WireGuard UDP port and starts the traversal on it.
    pub async fn start(
        name: &str,
        private_key: PrivateKey,
        port: u16,
        address: InterfaceAddress,
        transport: Transport,
        traversal: TraversalOptions,
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
        let endpoint = Arc::new(endpoint);
        let traversal = Traversal::start(endpoint.clone(), traversal);
        Ok(Engine { endpoint, traversal, transport, peers: BTreeMap::new() })
    }

    pub fn public_key(&self) -> PublicKey {
        self.endpoint.public_key()
    }

    pub fn local_port(&self) -> u16 {
        self.endpoint.local_port()
    }

    /// The WireGuard device's counters: handshakes, cookie replies, drops
    /// by reason.
    pub fn device_stats(&self) -> ferry_tunnel::proto::device::DeviceStats {
        self.endpoint.with_device(|device| device.stats.clone())
    }

    /// The endpoint's own drops (TUN reads, the side channel, virtual
    /// transports).
    pub fn endpoint_stats(&self) -> ferry_tunnel::endpoint::EndpointStats {
        self.endpoint.stats()
    }

    /// Candidates, probe tags, STUN servers and path counters.
    pub fn traversal(&self) -> &Traversal {
        &self.traversal
    }

    /// Hands the engine's local receiver indices to `sink`, now and on every
    /// change (see [`ferry_tunnel::endpoint::IndexSink`]).
    pub fn watch_indices(&self, sink: impl ferry_tunnel::endpoint::IndexSink) -> Result<()> {
        Ok(self.endpoint.watch_indices(sink)?)
    }

    /// Makes the engine's peers exactly `wanted`: peers not in it stop being
    /// probed and lose their keys now; new ones are added and start on their
    /// relay with a handshake, which is what registers the gateway's side of
    /// the allocation there. A peer whose relay or candidates changed keeps
    /// its keys and gets the new plan.
    pub fn apply(&mut self, wanted: Vec<Wanted>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut keep: BTreeMap<PublicKey, Wanted> = BTreeMap::new();
        for w in wanted {
            keep.insert(PublicKey(w.peer.public_key.0), w);
        }
        let gone: Vec<PublicKey> = self.peers.keys().filter(|k| !keep.contains_key(k)).copied().collect();
        for key in gone {
            if let Some(live) = self.remove(&key) {
                info!(session = live.wanted.session.0, peer = %key, "peer removed");
                if live.connected {
                    changes.push(Change::Disconnected { session: live.wanted.session, public_key: key });
                }
            }
        }
        for (key, w) in keep {
            let same_peer = self.peers.get(&key).map(|live| {
                let old = &live.wanted;
                let keys_kept = old.session == w.session && old.peer.tunnel_address == w.peer.tunnel_address;
                let plan_kept = old.peer.relay == w.peer.relay && old.peer.candidates == w.peer.candidates;
                (keys_kept, plan_kept)
            });
            match same_peer {
                Some((true, true)) => continue,
                Some((true, false)) => {
                    self.plan(&key, &w);
                    if let Some(live) = self.peers.get_mut(&key) {
                        live.wanted = w;
                    }
                    continue;
                }
                Some((false, _)) => {
                    if let Some(old) = self.remove(&key)
                        && old.connected
                    {
                        changes.push(Change::Disconnected { session: old.wanted.session, public_key: key });
                    }
                }
                None => {}
            }
            if let Err(e) = self.add(&key, &w) {
                warn!(peer = %key, error = %format!("{e:#}"), "adding the peer failed");
                continue;
            }
            self.peers.insert(key, Live { wanted: w, connected: false, path: None });
        }
        changes
    }

    /// Adds the WireGuard peer and hands it to the traversal, which points
    /// it at the relay and starts a handshake.
    fn add(&self, key: &PublicKey, w: &Wanted) -> Result<()> {
        let allowed = IpNet::new(w.peer.tunnel_address, host_prefix(w.peer.tunnel_address))
            .context("the peer's tunnel address")?;
        let config = PeerConfig {
            allowed_ips: vec![allowed],
            persistent_keepalive: Some(KEEPALIVE),
            ..PeerConfig::new(*key)
        };
        self.endpoint.add_peer(config).context("adding the peer to the engine")?;
        self.plan(key, w);
        info!(
            session = w.session.0,
            peer = %key,
            user = w.peer.user,
            transport = ?self.transport,
            relay = ?w.peer.relay.as_ref().map(|r| r.udp),
            candidates = w.peer.candidates.len(),
            "peer configured"
        );
        Ok(())
    }

    /// Gives the traversal the peer's relay, candidates and transport mode.
    fn plan(&self, key: &PublicKey, w: &Wanted) {
        let relay = w.peer.relay.as_ref().map(|relay| RelayPlan {
            udp: relay.udp,
            websocket: match relay_pin(relay) {
                Ok(pin) => Some(WebSocketRelay {
                    url: relay.websocket_url.clone(),
                    token: relay.websocket_token.expose().to_string(),
                    pin,
                }),
                Err(e) => {
                    warn!(peer = %key, error = %format!("{e:#}"), "the relay's WebSocket is not used");
                    None
                }
            },
        });
        let plan = PeerPlan { relay, candidates: w.peer.candidates.clone(), mode: mode(self.transport) };
        if let Err(e) = self.traversal.upsert_peer(*key, plan) {
            warn!(peer = %key, error = %e, "the peer has no path");
        }
    }

    /// Stops probing for the peer, then drops its keys.
    fn remove(&mut self, key: &PublicKey) -> Option<Live> {
        self.traversal.remove_peer(key);
        self.endpoint.remove_peer(key);
        self.peers.remove(key)
    }

    /// Notices peers that connected or left.
    pub fn poll(&mut self) -> Vec<Change> {
        let status: BTreeMap<PublicKey, PeerStatus> =
            self.endpoint.status().into_iter().map(|s| (s.public_key, s)).collect();
        let now = Instant::now();
        let mut changes = Vec::new();
        for (key, live) in &mut self.peers {
            let handshake = status.get(key).and_then(|s| s.last_handshake);
            let connected = handshake.is_some_and(|at| now.duration_since(at) < CONNECTED_WITHIN);
            let session = live.wanted.session;
            if !connected {
                if live.connected {
                    live.connected = false;
                    live.path = None;
                    changes.push(Change::Disconnected { session, public_key: *key });
                }
                continue;
            }
            let path = self.traversal.status(key);
            let kind = path.as_ref().and_then(|p| wire_path(p.path));
            let endpoint = match path.as_ref().map(|p| p.path) {
                // The virtual address means nothing outside this process:
                // the relay's allocation is where the peer is reached.
                Some(PathKind::WebSocketRelay) => live.wanted.peer.relay.as_ref().map(|r| r.udp),
                _ => path.and_then(|p| p.endpoint).or_else(|| status.get(key).and_then(|s| s.endpoint)),
            };
            if !live.connected {
                live.connected = true;
                live.path = kind;
                changes.push(Change::Connected { session, public_key: *key, endpoint, path: kind });
            } else if let Some(kind) = kind.filter(|k| live.path != Some(*k)) {
                live.path = Some(kind);
                changes.push(Change::PathChanged { session, public_key: *key, path: kind, endpoint });
            }
        }
        changes
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        self.endpoint.status()
    }

    pub fn connected(&self) -> usize {
        self.peers.values().filter(|l| l.connected).count()
    }

    /// The peer's path now, if the plan has it.
    pub fn path_of(&self, key: &PublicKey) -> Option<PeerPath> {
        self.traversal.status(key)
    }
}

/// The path as the control protocol names it; `None` for no path yet.
fn wire_path(path: PathKind) -> Option<WirePath> {
    match path {
        PathKind::Direct => Some(WirePath::Direct),
        PathKind::UdpRelay => Some(WirePath::UdpRelay),
        PathKind::WebSocketRelay => Some(WirePath::WebsocketRelay),
        PathKind::None => None,
    }
}

/// The traversal's transport mode for the configured `tunnel.transport`.
fn mode(transport: Transport) -> TransportMode {
    match transport {
        Transport::Auto => TransportMode::Auto,
        Transport::Udp => TransportMode::Udp,
        Transport::Websocket => TransportMode::Websocket,
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
