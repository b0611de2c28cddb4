//! The state the handle and the task share: path selection, STUN, host
//! addresses and each peer's relay transport. Every method runs under one
//! lock and never waits; what must go out on the socket is queued for the
//! task ([`Core::drain_transmits`]).
//!
//! Lock order: this lock, then the endpoint's device lock (setting a peer's
//! endpoint, rekeying, reading peer status). The endpoint never calls back
//! into the traversal while it holds its lock.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_connect::{stun::is_stun, ws::WsStats};
use ferry_paths::{Event, PathStatus, Paths, PeerKey, PeerSetup, Selected, is_probe};
use ferry_tunnel::{
    PublicKey,
    endpoint::{Endpoint, PeerStatus, SideDatagram, is_virtual},
    proto::IpNet,
};
use rand_core::OsRng;
use tokio::{runtime::Handle, sync::watch};
use tracing::{debug, info, warn};

use crate::{
    MAX_LOCAL_CANDIDATES,
    host::{self, HostFilter, InterfaceAddress},
    plan::{PeerPlan, PlanError, TransportMode, remote_candidates},
    status::{PathCounts, PathKind, PeerPath, TraversalStats, why},
    stun::{Mapped, Stun, StunDrop},
    transport::{Active, RelayTransport, WsAttached},
};

/// A handshake older than this means the peer has gone (WireGuard's
/// REJECT_AFTER_TIME: no session key is valid longer).
const CONNECTED_WITHIN: Duration = Duration::from_secs(180);

/// A peer's handshakes for a rebind at its relay are this far apart at
/// least (WireGuard's REKEY_TIMEOUT: a second initiation sooner would
/// replace the first while it is in flight).
const REBIND_SPACING: Duration = Duration::from_secs(5);

struct Peer {
    plan: PeerPlan,
    active: Active,
    /// When the relay transport was chosen: `Auto`'s grace runs from here.
    transport_since: Instant,
    /// Why, when `Auto` chose it.
    transport_why: Option<&'static str>,
    /// The last authenticated receive the endpoint reported, to notice new ones.
    last_rx: Option<Instant>,
    /// When [`Core::rebind_at_relays`] last started a handshake for it.
    rebound_at: Option<Instant>,
}

pub(crate) struct Core {
    endpoint: Arc<Endpoint>,
    runtime: Handle,
    grace: Duration,
    deny: Vec<IpNet>,
    host_filter: HostFilter,
    paths: Paths,
    peers: BTreeMap<PeerKey, Peer>,
    stun: Stun,
    /// The host addresses admitted, once read.
    host: Option<Vec<IpAddr>>,
    /// Read the host addresses again at the next chance.
    regather: bool,
    candidates: watch::Sender<Vec<SocketAddr>>,
    tags: watch::Sender<Vec<[u8; 8]>>,
    stats: TraversalStats,
}

pub(crate) struct CoreSettings {
    pub(crate) grace: Duration,
    pub(crate) deny: Vec<IpNet>,
    pub(crate) host_filter: HostFilter,
}

impl Core {
    pub(crate) fn new(endpoint: Arc<Endpoint>, runtime: Handle, settings: CoreSettings) -> Core {
        Core {
            endpoint,
            runtime,
            grace: settings.grace,
            deny: settings.deny,
            host_filter: settings.host_filter,
            paths: Paths::new(OsRng),
            peers: BTreeMap::new(),
            stun: Stun::default(),
            host: None,
            regather: true,
            candidates: watch::channel(Vec::new()).0,
            tags: watch::channel(Vec::new()).0,
            stats: TraversalStats::default(),
        }
    }

    pub(crate) fn watch_candidates(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.candidates.subscribe()
    }

    pub(crate) fn watch_tags(&self) -> watch::Receiver<Vec<[u8; 8]>> {
        self.tags.subscribe()
    }

    pub(crate) fn upsert(&mut self, key: PublicKey, plan: PeerPlan, now: Instant) -> Result<(), PlanError> {
        let peer = PeerKey(key.0);
        plan.check()?;
        let (candidates, refused) = remote_candidates(&plan.candidates, &self.deny);
        self.stats.candidates_refused += refused as u64;
        if let Some(state) = self.peers.get_mut(&peer) {
            if !state.plan.same_relay(&plan) {
                state.active = open(&self.runtime, &self.endpoint, &plan)?;
                state.transport_since = now;
                state.transport_why = None;
                self.paths.set_relay(&peer, state.active.addr(), now);
            }
            if state.plan.candidates != plan.candidates {
                self.paths.set_remote_candidates(&peer, candidates, now);
            }
            state.plan = plan;
        } else {
            let secrets = self.endpoint.probe_secrets(&key).ok_or(PlanError::UnknownPeer)?;
            let active = open(&self.runtime, &self.endpoint, &plan)?;
            let setup = PeerSetup { secrets, relay: active.addr(), remote_candidates: candidates };
            self.paths.add_peer(peer, setup, now).map_err(|_| PlanError::TagInUse)?;
            info!(
                peer = %key,
                relay = ?active.addr(),
                mode = plan.mode.label(),
                candidates = plan.candidates.len(),
                "traversal of the peer starts"
            );
            let state = Peer {
                plan,
                active,
                transport_since: now,
                transport_why: None,
                last_rx: None,
                rebound_at: None,
            };
            self.peers.insert(peer, state);
            self.publish_tags();
        }
        self.apply_events();
        Ok(())
    }

    pub(crate) fn remove(&mut self, key: &PublicKey) -> bool {
        let peer = PeerKey(key.0);
        self.paths.remove_peer(&peer);
        let known = self.peers.remove(&peer).is_some();
        if known {
            info!(peer = %key, "traversal of the peer stops");
            self.publish_tags();
        }
        known
    }

    /// Forgets every peer (the traversal is going away).
    pub(crate) fn clear(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for peer in keys {
            self.remove(&PublicKey(peer.0));
        }
    }

    pub(crate) fn set_stun_servers(&mut self, servers: Vec<SocketAddr>, now: Instant) {
        if self.stun.set_servers(servers, now) {
            self.publish_candidates();
        }
    }

    pub(crate) fn reflexive(&self) -> Vec<SocketAddr> {
        self.stun.reflexive()
    }

    pub(crate) fn network_changed(&mut self, now: Instant) {
        self.paths.network_changed(now);
        if self.stun.restart(now) {
            self.publish_candidates();
        }
        self.regather = true;
        self.rebind_at_relays("the network changed", now);
    }

    pub(crate) fn take_regather(&mut self) -> bool {
        std::mem::take(&mut self.regather)
    }

    /// The interfaces' addresses as read now; a change after the first
    /// reading is a network change.
    pub(crate) fn set_host(&mut self, addresses: &[InterfaceAddress], now: Instant) {
        let admitted = host::select(addresses, &self.host_filter);
        if self.host.as_ref() == Some(&admitted) {
            return;
        }
        if let Some(old) = self.host.replace(admitted.clone()) {
            info!(?old, new = ?admitted, "host addresses changed");
            self.paths.network_changed(now);
            self.stun.restart(now);
            self.rebind_at_relays("the host addresses changed", now);
        }
        self.publish_candidates();
    }

    /// A datagram on the WireGuard socket that is not WireGuard.
    pub(crate) fn on_side(&mut self, datagram: SideDatagram, now: Instant) {
        let SideDatagram { from, payload } = datagram;
        if is_probe(&payload) {
            if let Err(reason) = self.paths.handle_probe(from, &payload, now) {
                debug!(%from, %reason, "probe dropped");
            }
            self.apply_events();
        } else if is_stun(&payload) {
            match self.stun.handle_answer(from, &payload, now) {
                Ok(mapped) => {
                    self.stats.stun_answers += 1;
                    match mapped {
                        Mapped::Same => {}
                        Mapped::Learned => {
                            info!(reflexive = ?self.stun.reflexive(), "server-reflexive address learned");
                            self.publish_candidates();
                        }
                        Mapped::Moved => {
                            info!(reflexive = ?self.stun.reflexive(), "server-reflexive address moved: the NAT mapped the socket anew");
                            self.publish_candidates();
                            self.rebind_at_relays("the server-reflexive address moved", now);
                        }
                    }
                }
                Err(StunDrop::Unmatched) => self.stats.stun_unmatched += 1,
                Err(StunDrop::Failed) => self.stats.stun_failed += 1,
            }
        } else {
            self.stats.side_other += 1;
        }
    }

    /// What the endpoint says about its peers: new authenticated receives
    /// keep direct paths alive (and reveal a roamed peer), and `Auto` moves
    /// a peer with no handshake to the other relay transport.
    pub(crate) fn on_status(&mut self, statuses: Vec<PeerStatus>, now: Instant) {
        let mut stuck = Vec::new();
        for status in statuses {
            let key = PeerKey(status.public_key.0);
            let Some(peer) = self.peers.get_mut(&key) else { continue };
            if status.last_rx.is_some() && status.last_rx != peer.last_rx {
                peer.last_rx = status.last_rx;
                // The endpoint moves to the source of each authenticated
                // datagram (roaming), so it is where the last one came from.
                if let Some(from) = status.endpoint
                    && Some(from) != peer.active.addr()
                    && !is_virtual(from)
                {
                    self.paths.note_rx(&key, from, now);
                }
            }
            let selected = self.paths.status(&key).map(|s| s.selected);
            if let Some(Selected::Direct(direct)) = selected
                && status.endpoint.is_some()
                && status.endpoint == peer.active.addr()
            {
                // WireGuard's roaming followed a datagram that came through
                // the relay (the peer had not moved yet): the verified direct
                // path stays ours to send on, and the peer's roaming follows.
                self.endpoint.set_peer_endpoint(&status.public_key, direct);
            }
            if let Active::WebSocket(ws) = &mut peer.active
                && ws.newly_up()
                && selected == Some(Selected::Relay)
            {
                // What WireGuard sent before the connection was up is lost;
                // a handshake now, rather than at its next retry.
                self.endpoint.rekey(&status.public_key);
            }
            let can_switch = peer.plan.mode == TransportMode::Auto
                && peer.plan.relay.as_ref().is_some_and(|r| r.websocket.is_some());
            let handshake = status.last_handshake;
            let fresh = handshake.is_some_and(|at| at >= peer.transport_since);
            let connected = handshake.is_some_and(|at| now.saturating_duration_since(at) < CONNECTED_WITHIN);
            if can_switch
                && !fresh
                && !connected
                && now.saturating_duration_since(peer.transport_since) >= self.grace
            {
                stuck.push(key);
            }
        }
        for key in stuck {
            self.switch_transport(key, now);
        }
        self.apply_events();
    }

    /// This end now reaches the internet from another address or port (its
    /// NAT mapped the socket anew, or its own addresses changed), so each
    /// UDP relay that carries one of its peers still sends that peer's
    /// traffic to the old one, and drops ours from the new one: a relay
    /// moves a binding only with a handshake completed through it. Neither
    /// our keepalives nor the peer's retried handshakes (which go to the old
    /// address) mend that, and WireGuard would start one from this side only
    /// when the session's keys run out (up to 3 minutes). So a handshake
    /// through the relay now, for every peer on a UDP relay (a WebSocket
    /// relay's connection is ours: a new one is made and rekeys by itself).
    /// STUN is a proxy for the relay's own mapping: behind a symmetric NAT
    /// the two are different flows, which a NAT that forgets its mappings
    /// forgets together, but a NAT that remapped the relay's flow alone
    /// would go unseen here. One change can come from several servers at
    /// once: a peer rebound within REKEY_TIMEOUT is left alone, so that a
    /// second initiation does not replace the first in flight.
    fn rebind_at_relays(&mut self, why: &'static str, now: Instant) {
        for (key, peer) in &mut self.peers {
            let on_relay = self.paths.status(key).is_some_and(|s| s.selected == Selected::Relay);
            let Active::Udp(addr) = &peer.active else { continue };
            let addr = *addr;
            if !on_relay
                || peer.rebound_at.is_some_and(|at| now.saturating_duration_since(at) < REBIND_SPACING)
            {
                continue;
            }
            let public = PublicKey(key.0);
            handshake_through_relay(&self.endpoint, peer, &public, addr, now);
            self.stats.relay_rebinds += 1;
            info!(peer = %public, relay = %addr, why, "a handshake through the relay, so that it binds this end where it is now");
        }
    }

    /// `Auto`: UDP relay to WebSocket relay, or back.
    fn switch_transport(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else { return };
        let Some(relay) = &peer.plan.relay else { return };
        let public = PublicKey(key.0);
        let (next, reason) = match (&peer.active, &relay.websocket) {
            (Active::WebSocket(_), _) => (Active::Udp(relay.udp), why::NO_HANDSHAKE_OVER_WEBSOCKET),
            (_, Some(ws)) => match WsAttached::start(&self.runtime, &self.endpoint, ws) {
                Ok(attached) => (Active::WebSocket(attached), why::NO_HANDSHAKE_OVER_UDP),
                Err(e) => {
                    // `upsert` checked the options; this cannot happen.
                    warn!(peer = %public, error = %e, "the WebSocket relay could not start");
                    peer.transport_since = now;
                    return;
                }
            },
            (_, None) => return,
        };
        peer.active = next;
        peer.transport_since = now;
        peer.transport_why = Some(reason);
        self.stats.transport_switches += 1;
        let transport = peer.active.kind().map_or("none", RelayTransport::label);
        info!(peer = %public, transport, why = reason, "trying the other relay transport");
        self.paths.set_relay(&key, peer.active.addr(), now);
    }

    /// Carries out the selections: the peer's endpoint goes to the direct
    /// address, or back to the relay with a handshake through it (so that
    /// the relay binds this side again).
    fn apply_events(&mut self) {
        while let Some(Event::Selected { peer, selected, why }) = self.paths.poll_event() {
            let Some(state) = self.peers.get_mut(&peer) else { continue };
            let key = PublicKey(peer.0);
            let kind = path_kind(selected, &state.active);
            match selected {
                Selected::Direct(addr) => {
                    self.endpoint.set_peer_endpoint(&key, addr);
                    info!(peer = %key, path = kind.label(), endpoint = %addr, why, "path selected");
                }
                Selected::Relay => {
                    if let Some(addr) = state.active.addr() {
                        handshake_through_relay(&self.endpoint, state, &key, addr, Instant::now());
                    }
                    info!(peer = %key, path = kind.label(), endpoint = ?state.active.addr(), why, "path selected");
                }
                Selected::None => info!(peer = %key, path = kind.label(), why, "path selected"),
            }
        }
    }

    /// Probes and STUN requests whose time has come.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.paths.poll_timeout().is_some_and(|at| at <= now) {
            self.paths.handle_timeout(now);
            self.apply_events();
        }
        if self.stun.poll_timeout().is_some_and(|at| at <= now) && self.stun.handle_timeout(now, &mut OsRng) {
            self.publish_candidates();
        }
    }

    /// When [`Core::handle_timeout`] has something to do next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.paths.poll_timeout(), self.stun.poll_timeout()].into_iter().flatten().min()
    }

    /// Moves every datagram waiting to go out of the WireGuard socket to `out`.
    pub(crate) fn drain_transmits(&mut self, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        while let Some(transmit) = self.paths.poll_transmit() {
            out.push((transmit.to, transmit.payload));
        }
        let before = out.len();
        out.extend(self.stun.drain_transmits());
        self.stats.stun_requests += (out.len() - before) as u64;
    }

    pub(crate) fn note_send_failures(&mut self, failures: u64) {
        self.stats.send_failures += failures;
    }

    pub(crate) fn status(&self, key: &PublicKey) -> Option<PeerPath> {
        let peer = PeerKey(key.0);
        let state = self.peers.get(&peer)?;
        let paths = self.paths.status(&peer)?;
        let endpoint_status = self.endpoint.status().into_iter().find(|s| s.public_key == *key);
        let path = path_kind(paths.selected, &state.active);
        let rtt = match path {
            PathKind::Direct => paths.rtt,
            _ => endpoint_status.as_ref().and_then(|s| s.handshake_rtt),
        };
        let (since, why) = match state.transport_why {
            Some(reason) if path != PathKind::Direct && state.transport_since >= paths.selected_since => {
                (state.transport_since, reason)
            }
            _ => (paths.selected_since, paths.why),
        };
        Some(PeerPath {
            path,
            endpoint: endpoint_status.and_then(|s| s.endpoint),
            rtt,
            since,
            why,
            relay: state.active.kind(),
            websocket: match &state.active {
                Active::WebSocket(ws) => Some(ws.state()),
                _ => None,
            },
            observed: paths.observed,
            candidates: paths.candidates.len(),
        })
    }

    pub(crate) fn stats(&self) -> TraversalStats {
        let mut paths = PathCounts::default();
        let mut websocket_dropped = 0;
        for (key, state) in &self.peers {
            let selected = self.paths.status(key).map_or(Selected::None, |s: PathStatus| s.selected);
            paths.count(path_kind(selected, &state.active));
            if let Active::WebSocket(ws) = &state.active {
                let WsStats { dropped_down, dropped_full, dropped_oversized, .. } = ws.stats();
                websocket_dropped += dropped_down + dropped_full + dropped_oversized;
            }
        }
        TraversalStats {
            probes: *self.paths.stats(),
            paths,
            websocket_dropped,
            stun_servers: self.stun.servers(),
            local_candidates: self.candidates.borrow().len(),
            ..self.stats
        }
    }

    /// This end's candidates: server-reflexive first (they work across
    /// NATs), then host addresses with the WireGuard port; each once, at
    /// most [`MAX_LOCAL_CANDIDATES`].
    fn publish_candidates(&self) {
        let port = self.endpoint.local_port();
        let mut list = self.stun.reflexive();
        for ip in self.host.iter().flatten() {
            let addr = SocketAddr::new(*ip, port);
            if !list.contains(&addr) {
                list.push(addr);
            }
        }
        list.truncate(MAX_LOCAL_CANDIDATES);
        publish(&self.candidates, list);
    }

    fn publish_tags(&self) {
        publish(&self.tags, self.paths.tags_in().collect());
    }
}

/// Tells the watchers only of real changes.
fn publish<T: PartialEq>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|current| {
        let changed = *current != value;
        if changed {
            *current = value;
        }
        changed
    });
}

/// The relay transport a plan starts with.
fn open(runtime: &Handle, endpoint: &Endpoint, plan: &PeerPlan) -> Result<Active, PlanError> {
    let Some(relay) = &plan.relay else { return Ok(Active::Nothing) };
    match plan.mode {
        TransportMode::Websocket => {
            let ws = relay.websocket.as_ref().ok_or(PlanError::NoWebSocket)?;
            Ok(Active::WebSocket(WsAttached::start(runtime, endpoint, ws)?))
        }
        TransportMode::Auto | TransportMode::Udp => Ok(Active::Udp(relay.udp)),
    }
}

/// Points the peer at its relay and starts a handshake through it, which
/// binds this end there; a rebind within [`REBIND_SPACING`] after it would
/// replace it in flight, so it counts as one.
fn handshake_through_relay(
    endpoint: &Endpoint,
    peer: &mut Peer,
    key: &PublicKey,
    relay: SocketAddr,
    now: Instant,
) {
    endpoint.set_peer_endpoint(key, relay);
    endpoint.rekey(key);
    peer.rebound_at = Some(now);
}

fn path_kind(selected: Selected, active: &Active) -> PathKind {
    match (selected, active.kind()) {
        (Selected::Direct(_), _) => PathKind::Direct,
        (Selected::Relay, Some(RelayTransport::Udp)) => PathKind::UdpRelay,
        (Selected::Relay, Some(RelayTransport::WebSocket)) => PathKind::WebSocketRelay,
        (Selected::Relay, None) | (Selected::None, _) => PathKind::None,
    }
}
