//! Direct paths on a running WireGuard endpoint: the async shell around
//! [`ferry_paths::Paths`], shared by Ferry's gateway and the technician's
//! client.
//!
//! One [`Traversal`] per [`Endpoint`]. It owns the endpoint's side channel
//! (everything on the WireGuard socket that is not WireGuard) and a task
//! that:
//!
//! - hands path probes to the path selection and sends its probes from the
//!   WireGuard socket, so the NAT mapping a probe opens is WireGuard's;
//! - carries out selections: a verified direct path becomes the peer's
//!   endpoint; back on the relay, the relay's address does, with a handshake
//!   through it so that the relay binds this side again. WireGuard's own
//!   roaming stays on;
//! - gathers this end's candidates: the interfaces' addresses with the
//!   WireGuard port (host) and what STUN servers, asked from the WireGuard
//!   socket, see (server-reflexive), published on
//!   [`Traversal::local_candidates`];
//! - runs each peer's relay transport: the UDP relay, or the relay's
//!   WebSocket attached to the endpoint as a virtual port (no loopback hop),
//!   and in [`TransportMode::Auto`] moves a peer that gets no handshake over
//!   one to the other;
//! - when this end's address changes (STUN sees its NAT map the socket
//!   anew, or its interfaces' addresses change), starts a handshake through
//!   the relay for every peer on one: a relay moves a binding only with a
//!   handshake completed through it.
//!
//! # Use
//!
//! ```text
//! let endpoint = Arc::new(Endpoint::start(config).await?);
//! let traversal = Traversal::start(endpoint.clone(), TraversalOptions::default());
//! traversal.set_stun_servers(servers);             // from the cloud
//! endpoint.add_peer(peer_config)?;                 // the WireGuard peer first (no endpoint needed)
//! traversal.upsert_peer(key, plan)?;               // relay, the peer's candidates, transport mode
//! guard.set_probe_tags(traversal.probe_tags().borrow().iter().copied()); // a gateway's uplink guard
//! // ... publish traversal.local_candidates() to the cloud whenever it changes
//! traversal.remove_peer(&key);                     // session over: no probe for it after this
//! endpoint.remove_peer(&key);
//! ```
//!
//! Call [`Traversal::start`] inside a tokio runtime. Everything must be in
//! the network namespace of the endpoint's socket, as it is in a daemon that
//! runs in one: the interfaces are read through a netlink socket that
//! `start` opens on the calling thread, and the WebSocket relay's TCP
//! connections are dialled from the runtime's threads (a test that puts
//! endpoints in several namespaces gives each a runtime built inside its
//! namespace). Every other method is synchronous and takes effect before it
//! returns (the task only sends what they queued).
//!
//! # What it never does
//!
//! It probes only the peers it is given, only at their candidates that pass
//! the filter ([`TraversalOptions::deny`], no loopback, unspecified,
//! multicast, broadcast, IPv6 link-local or virtual addresses), and forgets a
//! peer at once on [`Traversal::remove_peer`]. STUN answers count only from
//! the server asked, with the transaction id we chose; everything else on
//! the side channel is dropped and counted ([`TraversalStats`]).
//!
//! # Liveness from WireGuard traffic
//!
//! [`ferry_paths::Paths::note_rx`] is fed from the endpoint's peer status,
//! read every [`STATUS_INTERVAL`]: when the last authenticated receive
//! moved, the peer's current endpoint (WireGuard's roaming sets it to the
//! source of each authenticated datagram) is noted. That needs no hook on the
//! engine's receive path; its imprecision (at most one status interval, and
//! a datagram from the relay between two from the direct path is not seen)
//! costs nothing, since a live direct path is also kept by its 2 s
//! heartbeat probes.

mod core;
mod host;
mod plan;
mod status;
mod stun;
mod task;
mod transport;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ferry_tunnel::{PublicKey, endpoint::Endpoint, proto::IpNet};
use parking_lot::Mutex;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::warn;

use crate::{
    core::{Core, CoreSettings},
    host::HostFilter,
    task::Driver,
};
pub use crate::{
    plan::{PeerPlan, PlanError, RelayPlan, TransportMode, WebSocketRelay},
    status::{PathCounts, PathKind, PeerPath, TraversalStats, why},
    stun::{STUN_ATTEMPTS, STUN_INTERVAL, STUN_STALE_AFTER},
    task::{HOST_INTERVAL, STATUS_INTERVAL},
    transport::RelayTransport,
};

/// In [`TransportMode::Auto`], how long a relay transport may go without a
/// handshake before the peer moves to the other one. WireGuard retries a
/// handshake every 5 s, so this leaves room for two tries.
pub const TRANSPORT_GRACE: Duration = Duration::from_secs(12);
/// At most this many local candidates are published (the control
/// protocol's limit per report).
pub const MAX_LOCAL_CANDIDATES: usize = 16;
/// Side datagrams waiting for the task; beyond it the endpoint drops them
/// (counted in its `side_dropped`).
pub const SIDE_QUEUE: usize = 1024;

/// How a [`Traversal`] gathers candidates and which it refuses.
#[derive(Clone, Debug)]
pub struct TraversalOptions {
    /// Interfaces whose addresses are host candidates; empty: every
    /// interface (but see `exclude_interfaces`).
    pub interfaces: Vec<String>,
    /// Interfaces never used for host candidates. The endpoint's own TUN
    /// device is always left out.
    pub exclude_interfaces: Vec<String>,
    /// Prefixes never probed and never offered as host candidates (a
    /// gateway's machine network and tunnel network).
    pub deny: Vec<IpNet>,
    /// See [`TRANSPORT_GRACE`].
    pub transport_grace: Duration,
}

impl Default for TraversalOptions {
    fn default() -> TraversalOptions {
        TraversalOptions {
            interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            deny: Vec::new(),
            transport_grace: TRANSPORT_GRACE,
        }
    }
}

/// Direct-path selection, candidate gathering and relay transports for one
/// endpoint. Dropping it stops its task, its WebSocket connections and its
/// probes (the endpoint keeps running, with the peers' endpoints as they
/// were).
pub struct Traversal {
    core: Arc<Mutex<Core>>,
    wake: Arc<Notify>,
    candidates: watch::Receiver<Vec<SocketAddr>>,
    tags: watch::Receiver<Vec<[u8; 8]>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Traversal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traversal").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Traversal {
    /// Takes over the endpoint's side channel and starts the task. Must be
    /// called inside a tokio runtime (it spawns), in the endpoint's network
    /// namespace (see the crate documentation).
    pub fn start(endpoint: Arc<Endpoint>, options: TraversalOptions) -> Traversal {
        let (side_tx, side) = mpsc::channel(SIDE_QUEUE);
        endpoint.set_side_channel(side_tx);
        let mut tasks = Vec::new();
        let netlink = match rtnetlink::new_connection() {
            Ok((connection, handle, _)) => {
                tasks.push(tokio::spawn(connection));
                Some(handle)
            }
            Err(e) => {
                warn!(error = %e, "no netlink socket: no host candidates");
                None
            }
        };
        let mut exclude = options.exclude_interfaces;
        exclude.push(endpoint.name().to_string());
        let settings = CoreSettings {
            grace: options.transport_grace,
            deny: options.deny.clone(),
            host_filter: HostFilter { interfaces: options.interfaces, exclude, deny: options.deny },
        };
        let core = Core::new(endpoint.clone(), tokio::runtime::Handle::current(), settings);
        let (candidates, tags) = (core.watch_candidates(), core.watch_tags());
        let core = Arc::new(Mutex::new(core));
        let wake = Arc::new(Notify::new());
        let driver = Driver { core: core.clone(), endpoint, wake: wake.clone(), side, netlink };
        tasks.push(tokio::spawn(driver.run()));
        Traversal { core, wake, candidates, tags, tasks }
    }

    /// Asks exactly these STUN servers (the relays') for this end's
    /// server-reflexive address: new ones at once, then every
    /// [`STUN_INTERVAL`]. A server left out takes its candidate with it.
    /// A gateway lets their answers through its uplink guard first.
    pub fn set_stun_servers(&self, servers: Vec<SocketAddr>) {
        self.core.lock().set_stun_servers(servers, std::time::Instant::now());
        self.wake.notify_one();
    }

    /// Starts managing the peer, or updates it: the relay (a changed relay or
    /// mode starts its transport anew), the peer's candidates (new ones are
    /// probed at once), the transport mode. The peer must be on the endpoint
    /// already. A new peer starts on the relay at once (its endpoint set
    /// there, a handshake started) and moves to a direct path when one is
    /// verified both ways. Its probe tag is in [`Traversal::probe_tags`] when
    /// this returns.
    pub fn upsert_peer(&self, key: PublicKey, plan: PeerPlan) -> Result<(), PlanError> {
        let result = self.core.lock().upsert(key, plan, std::time::Instant::now());
        self.wake.notify_one();
        result
    }

    /// Stops probing the peer and forgets it at once: candidates, path,
    /// relay transport (a WebSocket connection closes). Returns whether it
    /// was managed. The WireGuard peer stays on the endpoint until the caller
    /// removes it.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        self.core.lock().remove(key)
    }

    /// This end's network changed (a new network, a new NAT mapping): reads
    /// the interfaces again, asks the STUN servers again and probes every
    /// candidate of every peer fast again. A change of the interfaces'
    /// addresses is noticed without it, within [`HOST_INTERVAL`].
    pub fn network_changed(&self) {
        self.core.lock().network_changed(std::time::Instant::now());
        self.wake.notify_one();
    }

    /// This end's candidates (server-reflexive first, then host addresses
    /// with the WireGuard port; at most [`MAX_LOCAL_CANDIDATES`]), changed
    /// only when they do.
    pub fn local_candidates(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.candidates.clone()
    }

    /// The server-reflexive ones among [`Traversal::local_candidates`]
    /// alone: what the STUN servers see of the WireGuard socket now.
    pub fn reflexive_candidates(&self) -> Vec<SocketAddr> {
        self.core.lock().reflexive()
    }

    /// The receiver tags that valid probes for this end carry, one per
    /// managed peer, changed only when they do (for a gateway's uplink
    /// guard).
    pub fn probe_tags(&self) -> watch::Receiver<Vec<[u8; 8]>> {
        self.tags.clone()
    }

    /// The peer's path now, if it is managed.
    pub fn status(&self, key: &PublicKey) -> Option<PeerPath> {
        self.core.lock().status(key)
    }

    /// Counters since start, and peers by path now.
    pub fn stats(&self) -> TraversalStats {
        self.core.lock().stats()
    }
}

impl Drop for Traversal {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.core.lock().clear();
    }
}
