//! The service's state: the preparations and tunnels of every user, owned by
//! one task that takes the requests, the expiry timers and the stop in turn,
//! so that no two changes to the routing tables interleave.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_api::{ClientConfig, ConfigState, ConfigStatus};
use ferry_traversal::Traversal;
use ferry_tunnel::{
    PrivateKey,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig},
    proto::PeerConfig,
};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    Event, paths,
    plan::{Plan, gateway_candidates, plan},
    roaming,
    routing::{Route, Routing, RoutingError, Rule, TABLES},
    watch::{self, News},
};
use crate::{
    cloud::now_ms,
    protocol::{Answer, CloudLink, EndCause, Ended, ErrorCode, Request, TunnelView},
};

/// Preparations and tunnels one user may hold at once: each is a TUN device
/// and a socket of the service's.
pub const MAX_PER_USER: usize = 8;
/// A preparation whose configuration does not come within this is dropped.
pub const PREPARATION_TTL: Duration = Duration::from_secs(120);
/// A cloud's sessions last at most 7 days; a day more for clocks that differ.
const LONGEST_CONFIGURATION: Duration = Duration::from_secs(8 * 24 * 3600);
/// STUN servers asked for one tunnel's candidates.
const MAX_STUN_SERVERS: usize = 4;
/// Ended tunnels `ferry status` still shows, per user.
const ENDED_KEPT: usize = 8;
/// The TUN devices are `ferryc0`, `ferryc1`...
pub const TUN_PREFIX: &str = "ferryc";

struct Preparation {
    uid: u32,
    session_id: u64,
    endpoint: Arc<Endpoint>,
    traversal: Traversal,
    /// The candidates the configuration request carries.
    candidates: Vec<SocketAddr>,
    made: Instant,
}

struct Tunnel {
    uid: u32,
    plan: Plan,
    endpoint: Arc<Endpoint>,
    /// The tunnel's paths. Its tasks hold the endpoint too: the engine and
    /// the TUN device go when they have stopped.
    traversal: Traversal,
    installed: Installed,
    expiry: JoinHandle<()>,
    connected_ms: u64,
    watch: Option<Watching>,
}

/// The watch on a tunnel's configuration at the cloud.
struct Watching {
    link: CloudLink,
    /// Works for this one configuration only, and only until it expires.
    token: String,
    task: JoinHandle<()>,
    /// Sends new candidates of this machine to the cloud (roaming).
    report: Option<JoinHandle<()>>,
    /// How it is doing, for `ferry status`.
    note: String,
}

/// What a tunnel added to the routing, so that exactly that is removed.
#[derive(Default)]
struct Installed {
    /// The TUN device's index and the tunnel address on it.
    address: Option<(u32, std::net::IpAddr)>,
    /// The user's table counts this tunnel.
    table: bool,
    routes: Vec<Route>,
    rules: Vec<Rule>,
}

/// A user's routing table and the rule that selects it.
struct UserTable {
    table: u32,
    rule: Rule,
    tunnels: usize,
}

pub struct Manager {
    routing: Routing,
    events: mpsc::Sender<Event>,
    next_id: u64,
    preparations: BTreeMap<u64, Preparation>,
    tunnels: BTreeMap<u64, Tunnel>,
    ended: VecDeque<(u32, TunnelView)>,
    tables: BTreeMap<u32, UserTable>,
}

impl Manager {
    pub fn new(routing: Routing, events: mpsc::Sender<Event>) -> Manager {
        Manager {
            routing,
            events,
            next_id: 1,
            preparations: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            ended: VecDeque::new(),
            tables: BTreeMap::new(),
        }
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Call { uid, request, reply } => {
                    let answer = self.call(uid, request).await;
                    let _ = reply.send(answer);
                }
                Event::Expire { tunnel } => {
                    self.end(tunnel, EndCause::Expired, "expired: the configuration's time ran out".into())
                        .await;
                }
                Event::Watch { tunnel, news } => self.watched(tunnel, news).await,
                Event::NetworkChanged => {
                    for tunnel in self.tunnels.values() {
                        tunnel.traversal.network_changed();
                    }
                    for preparation in self.preparations.values() {
                        preparation.traversal.network_changed();
                    }
                }
                Event::Tick => self.drop_stale_preparations(),
                Event::Stop(done) => {
                    self.stop().await;
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    async fn call(&mut self, uid: u32, request: Request) -> Answer {
        match request {
            Request::Prepare { session_id, stun_servers } => {
                self.prepare(uid, session_id, &stun_servers).await
            }
            Request::Up { prepare_id, config, cloud } => self.up(uid, prepare_id, &config, cloud).await,
            Request::Cancel { prepare_id } => match self.preparations.get(&prepare_id) {
                Some(p) if p.uid == uid => {
                    self.preparations.remove(&prepare_id);
                    Answer::Done
                }
                _ => not_yours_preparation(prepare_id),
            },
            Request::Down { session } => self.down(uid, session.as_deref()).await,
            Request::Status => Answer::Tunnels { tunnels: self.status(uid) },
        }
    }

    fn held_by(&self, uid: u32) -> usize {
        self.preparations.values().filter(|p| p.uid == uid).count()
            + self.tunnels.values().filter(|t| t.uid == uid).count()
    }

    async fn prepare(&mut self, uid: u32, session_id: u64, stun_servers: &[String]) -> Answer {
        if self.held_by(uid) >= MAX_PER_USER {
            return Answer::error(
                ErrorCode::Limit,
                format!(
                    "you hold {MAX_PER_USER} tunnels and preparations already; `ferry disconnect` one first"
                ),
            );
        }
        let name = match self.free_tun_name().await {
            Ok(name) => name,
            Err(e) => return Answer::error(ErrorCode::Failed, e.to_string()),
        };
        // The key is made here and stays in the engine: nothing but the
        // public key ever leaves the service.
        let config = EndpointConfig {
            name,
            private_key: PrivateKey::generate(),
            listen_port: 0,
            addresses: Vec::new(),
            mtu: DEFAULT_MTU,
            peers: Vec::new(),
        };
        let endpoint = match Endpoint::start(config).await {
            Ok(endpoint) => Arc::new(endpoint),
            Err(e) => return Answer::error(ErrorCode::Failed, format!("cannot start the tunnel: {e}")),
        };
        let public_key = endpoint.public_key().to_base64();
        // The candidates come from the tunnel's own socket, so that they name
        // the NAT mapping WireGuard uses.
        let traversal = paths::start(endpoint.clone());
        let servers: Vec<SocketAddr> =
            stun_servers.iter().filter_map(|s| s.trim().parse().ok()).take(MAX_STUN_SERVERS).collect();
        let asked = servers.len();
        traversal.set_stun_servers(servers);
        let (mut candidates, reflexive) = paths::gather(&traversal, asked).await;
        candidates.truncate(ferry_api::MAX_CANDIDATES);
        let prepare_id = self.next_id;
        self.next_id += 1;
        tracing::info!(uid, session_id, prepare_id, interface = endpoint.name(), ?candidates, "prepared");
        let answer = Answer::Prepared {
            prepare_id,
            public_key,
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            reflexive: reflexive.iter().map(|c| c.to_string()).collect(),
        };
        let preparation =
            Preparation { uid, session_id, endpoint, traversal, candidates, made: Instant::now() };
        self.preparations.insert(prepare_id, preparation);
        answer
    }

    async fn free_tun_name(&self) -> Result<String, RoutingError> {
        let taken = self.routing.link_names().await?;
        Ok((0u32..)
            .map(|n| format!("{TUN_PREFIX}{n}"))
            .find(|name| !taken.contains(name))
            .unwrap_or_else(|| format!("{TUN_PREFIX}x")))
    }

    async fn up(
        &mut self,
        uid: u32,
        prepare_id: u64,
        config: &ClientConfig,
        cloud: Option<CloudLink>,
    ) -> Answer {
        let preparation = match self.preparations.remove(&prepare_id) {
            Some(p) if p.uid == uid => p,
            Some(other) => {
                // Someone else's: it stays theirs, and this caller learns nothing.
                self.preparations.insert(prepare_id, other);
                return not_yours_preparation(prepare_id);
            }
            None => return not_yours_preparation(prepare_id),
        };
        let plan = match plan(config) {
            Ok(plan) => plan,
            Err(why) => return Answer::error(ErrorCode::Invalid, why),
        };
        if plan.session_id != preparation.session_id {
            return Answer::error(
                ErrorCode::Invalid,
                format!(
                    "the configuration is for session {}, the preparation for {}",
                    plan.session_id, preparation.session_id
                ),
            );
        }
        if plan.expires_ms <= now_ms() {
            return Answer::error(ErrorCode::Invalid, "the configuration has expired already");
        }
        if plan.expires_ms > now_ms().saturating_add(LONGEST_CONFIGURATION.as_millis() as u64) {
            return Answer::error(
                ErrorCode::Invalid,
                "the configuration lasts longer than a Ferry session can (7 days)",
            );
        }
        // What is listed of the session's earlier tunnels goes; a tunnel
        // still up is replaced (the cloud revoked its configuration when it
        // issued this one) and listed as such.
        self.ended.retain(|(owner, view)| !(*owner == uid && view.session_id == plan.session_id));
        let older: Vec<u64> = self
            .tunnels
            .iter()
            .filter(|(_, t)| t.uid == uid && t.plan.session_id == plan.session_id)
            .map(|(id, _)| *id)
            .collect();
        for id in older {
            self.end(id, EndCause::Replaced, "replaced by a new ferry connect".into()).await;
        }
        if let Err(why) = self.check_conflicts(uid, &plan).await {
            return Answer::error(ErrorCode::Invalid, why);
        }
        let sent = preparation.candidates.clone();
        match self.install(uid, preparation, plan).await {
            Ok(id) => {
                self.watch(id, cloud, &config.watch_token, sent);
                match self.tunnels.get(&id) {
                    Some(tunnel) => Answer::Tunnel { tunnel: Box::new(view(tunnel)) },
                    None => Answer::error(ErrorCode::Failed, "the tunnel vanished"),
                }
            }
            Err(e) => Answer::error(ErrorCode::Failed, format!("cannot bring the tunnel up: {e}")),
        }
    }

    /// Starts the watch on the tunnel's configuration and the reports of
    /// new candidates, when the caller said where the cloud is and the
    /// cloud gave a watch token. `sent`: the candidates the cloud has.
    fn watch(&mut self, id: u64, cloud: Option<CloudLink>, token: &str, sent: Vec<SocketAddr>) {
        let Some(tunnel) = self.tunnels.get_mut(&id) else { return };
        let Some(link) = cloud.filter(|_| !token.is_empty()) else { return };
        let config_id = tunnel.plan.config_id;
        match watch::spawn(&link, config_id, token.to_string(), id, self.events.clone()) {
            Ok(task) => {
                let candidates = tunnel.traversal.local_candidates();
                let report = roaming::report(&link, config_id, token.to_string(), candidates, sent)
                    .inspect_err(|why| tracing::warn!(why, "cannot report new candidates to the cloud"))
                    .ok();
                tunnel.watch = Some(Watching {
                    link,
                    token: token.to_string(),
                    task,
                    report,
                    note: "connecting".into(),
                });
            }
            Err(why) => tracing::warn!(why, "cannot watch the configuration at the cloud"),
        }
    }

    /// News from a tunnel's watch: a final status takes the tunnel down.
    async fn watched(&mut self, id: u64, news: News) {
        let Some(watching) = self.tunnels.get_mut(&id).and_then(|t| t.watch.as_mut()) else { return };
        let ending = match news {
            News::Connected => {
                watching.note = "watching".into();
                None
            }
            News::Lost(why) => {
                watching.note = format!("cloud unreachable, retrying ({why})");
                None
            }
            News::Status(status) => {
                watching.note = "watching".into();
                if status.state == ConfigState::Live {
                    self.gateway_moved(id, &status.gateway_endpoints);
                }
                ending_of(&status)
            }
            News::Refused(detail) => {
                Some((EndCause::Revoked, format!("the cloud no longer accepts this configuration: {detail}")))
            }
        };
        if let Some((cause, reason)) = ending {
            self.end(id, cause, reason).await;
        }
    }

    /// The gateway's candidates as the cloud has them now: the traversal
    /// probes the new ones.
    fn gateway_moved(&mut self, id: u64, endpoints: &[String]) {
        let Some(tunnel) = self.tunnels.get_mut(&id) else { return };
        let (candidates, refused) = gateway_candidates(endpoints);
        if !refused.is_empty() {
            tracing::info!(?refused, "gateway candidates left out");
        }
        if candidates == tunnel.plan.route.candidates {
            return;
        }
        tracing::info!(session = tunnel.plan.session_id, ?candidates, "the gateway's candidates changed");
        tunnel.plan.route.candidates = candidates;
        if let Err(e) = tunnel.traversal.upsert_peer(tunnel.plan.peer, tunnel.plan.route.clone()) {
            tracing::warn!(error = %e, "the traversal refused the gateway's new candidates");
        }
    }

    /// The tunnel address must be free on this machine, and the user's
    /// tunnels must not claim the same proxy address twice.
    async fn check_conflicts(&self, uid: u32, plan: &Plan) -> Result<(), String> {
        let local = self.routing.local_addresses().await.map_err(|e| e.to_string())?;
        if local.contains(&plan.address) {
            return Err(format!("the tunnel address {} is in use on this machine already", plan.address));
        }
        for tunnel in self.tunnels.values().filter(|t| t.uid == uid) {
            if let Some(net) = plan.allowed.iter().find(|n| tunnel.plan.allowed.contains(n)) {
                return Err(format!(
                    "{} is a proxy address of your tunnel to session {} too; disconnect that first",
                    net.addr(),
                    tunnel.plan.session_id
                ));
            }
        }
        Ok(())
    }

    /// Address, routes, rules, peer and its paths; on any failure what was
    /// added goes again and the endpoint is dropped (which removes its TUN
    /// device).
    async fn install(&mut self, uid: u32, preparation: Preparation, plan: Plan) -> Result<u64, String> {
        let Preparation { endpoint, traversal, .. } = preparation;
        let index = self.routing.link_index(endpoint.name()).await.map_err(|e| e.to_string())?;
        let mut installed = Installed::default();
        let peer = PeerConfig {
            public_key: plan.peer,
            preshared_key: None,
            endpoint: plan.first_endpoint,
            allowed_ips: plan.allowed.clone(),
            persistent_keepalive: plan.keepalive,
        };
        let result = self.add_routing(uid, index, &plan, &mut installed).await;
        let result = result.and_then(|()| endpoint.add_peer(peer).map_err(|e| e.to_string()));
        // With a relay the traversal points the peer at it and starts the
        // handshake; it probes the gateway's candidates either way.
        let result = result.and_then(|()| {
            traversal
                .upsert_peer(plan.peer, plan.route.clone())
                .map_err(|e| format!("the tunnel's paths: {e}"))
        });
        if let Err(why) = result {
            traversal.remove_peer(&plan.peer);
            self.uninstall(uid, &installed).await;
            return Err(why);
        }
        if plan.first_endpoint.is_some() {
            // The handshake starts now rather than with the first packet.
            endpoint.rekey(&plan.peer);
        }
        for note in &plan.notes {
            tracing::warn!(session = plan.session_id, note, "part of the configuration is not used");
        }
        let id = self.next_id;
        self.next_id += 1;
        let wait = Duration::from_millis(plan.expires_ms.saturating_sub(now_ms()));
        let events = self.events.clone();
        let expiry = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = events.send(Event::Expire { tunnel: id }).await;
        });
        tracing::info!(
            uid,
            session = plan.session_id,
            config = plan.config_id,
            interface = endpoint.name(),
            address = %plan.address,
            relay = ?plan.route.relay.as_ref().map(|r| r.udp),
            websocket = ?plan.websocket_url,
            gateway = ?plan.route.candidates,
            "tunnel up"
        );
        let tunnel =
            Tunnel { uid, plan, endpoint, traversal, installed, expiry, connected_ms: now_ms(), watch: None };
        self.tunnels.insert(id, tunnel);
        Ok(id)
    }

    /// The tunnel address, the user's table and rule, the routes to the
    /// proxy addresses and the reverse-path rule, each noted in `installed`
    /// once it is in place.
    async fn add_routing(
        &mut self,
        uid: u32,
        index: u32,
        plan: &Plan,
        installed: &mut Installed,
    ) -> Result<(), String> {
        self.routing.add_address(index, plan.address, 32).await.map_err(|e| e.to_string())?;
        installed.address = Some((index, plan.address));
        let table = self.acquire_table(uid).await.map_err(|e| e.to_string())?;
        installed.table = true;
        for net in &plan.allowed {
            let route = Route { table, index, to: *net, source: plan.address };
            self.routing.add_route(&route).await.map_err(|e| e.to_string())?;
            installed.routes.push(route);
        }
        let reverse_path = Rule { v6: false, table, uids: (0, 0), source: Some((plan.address, 32)) };
        self.routing.add_rule(&reverse_path).await.map_err(|e| e.to_string())?;
        installed.rules.push(reverse_path);
        Ok(())
    }

    async fn uninstall(&mut self, uid: u32, installed: &Installed) {
        // Gone already if the TUN device went first.
        let gone = |e: &RoutingError| {
            [nix::errno::Errno::ESRCH, nix::errno::Errno::ENODEV, nix::errno::Errno::EADDRNOTAVAIL]
                .iter()
                .any(|errno| e.errno() == Some(*errno as i32))
        };
        for rule in &installed.rules {
            if let Err(e) = self.routing.remove_rule(rule).await {
                tracing::warn!(error = %e, "removing a rule");
            }
        }
        for route in &installed.routes {
            if let Err(e) = self.routing.remove_route(route).await
                && !gone(&e)
            {
                tracing::warn!(error = %e, "removing a route");
            }
        }
        if let Some((index, address)) = installed.address
            && let Err(e) = self.routing.remove_address(index, address, 32).await
            && !gone(&e)
        {
            tracing::warn!(error = %e, "removing the tunnel address");
        }
        if installed.table {
            self.release_table(uid).await;
        }
    }

    async fn acquire_table(&mut self, uid: u32) -> Result<u32, RoutingError> {
        if let Some(user) = self.tables.get_mut(&uid) {
            user.tunnels += 1;
            return Ok(user.table);
        }
        let used: Vec<u32> = self.tables.values().map(|t| t.table).collect();
        let table = TABLES.clone().find(|t| !used.contains(t)).unwrap_or(TABLES.start);
        let rule = Rule { v6: false, table, uids: (uid, uid), source: None };
        self.routing.add_rule(&rule).await?;
        self.tables.insert(uid, UserTable { table, rule, tunnels: 1 });
        Ok(table)
    }

    async fn release_table(&mut self, uid: u32) {
        let Some(user) = self.tables.get_mut(&uid) else { return };
        user.tunnels = user.tunnels.saturating_sub(1);
        if user.tunnels > 0 {
            return;
        }
        let rule = user.rule.clone();
        self.tables.remove(&uid);
        if let Err(e) = self.routing.remove_rule(&rule).await {
            tracing::warn!(error = %e, "removing a user's rule");
        }
    }

    /// Takes a tunnel down and keeps why for `ferry status`.
    async fn end(&mut self, id: u64, cause: EndCause, reason: String) -> Option<TunnelView> {
        let tunnel = self.tunnels.remove(&id)?;
        tunnel.expiry.abort();
        if let Some(watching) = &tunnel.watch {
            watching.task.abort();
            if let Some(report) = &watching.report {
                report.abort();
            }
        }
        let mut shown = view(&tunnel);
        shown.ended = Some(Ended { cause, reason: reason.clone(), at_ms: now_ms() });
        // No probe for the gateway after this.
        tunnel.traversal.remove_peer(&tunnel.plan.peer);
        self.uninstall(tunnel.uid, &tunnel.installed).await;
        tracing::info!(uid = tunnel.uid, session = tunnel.plan.session_id, reason, "tunnel down");
        let uid = tunnel.uid;
        // Dropping the traversal stops its tasks; the endpoint goes with the
        // last of them, which stops the engine and removes the TUN device.
        drop(tunnel);
        self.remember(uid, shown.clone());
        Some(shown)
    }

    async fn down(&mut self, uid: u32, session: Option<&str>) -> Answer {
        let chosen: Vec<u64> = self
            .tunnels
            .iter()
            .filter(|(_, t)| t.uid == uid)
            .filter(|(_, t)| {
                session.is_none_or(|s| s == t.plan.session_id.to_string() || s == t.plan.session_name)
            })
            .map(|(id, _)| *id)
            .collect();
        if let (Some(session), true) = (session, chosen.is_empty()) {
            return Answer::error(ErrorCode::NotFound, format!("you have no tunnel to session {session}"));
        }
        let mut down = Vec::new();
        for id in chosen {
            let mut reason = "disconnected (ferry disconnect)".to_string();
            // The cloud first, so that the gateway drops the peer at once.
            let watched = self.tunnels.get(&id).and_then(|t| Some((t.plan.config_id, t.watch.as_ref()?)));
            if let Some((config_id, watching)) = watched {
                match watch::revoke(&watching.link, config_id, &watching.token).await {
                    Ok(()) => reason += ", revoked at the cloud",
                    Err(why) => {
                        reason += &format!(
                            "; the cloud could not be told ({why}): the configuration ends when it expires"
                        )
                    }
                }
            }
            if let Some(view) = self.end(id, EndCause::Disconnected, reason).await {
                down.push(view);
            }
        }
        Answer::Tunnels { tunnels: down }
    }

    fn status(&self, uid: u32) -> Vec<TunnelView> {
        let live = self.tunnels.values().filter(|t| t.uid == uid).map(view);
        let ended = self.ended.iter().filter(|(owner, _)| *owner == uid).map(|(_, v)| v.clone());
        live.chain(ended).collect()
    }

    fn remember(&mut self, uid: u32, view: TunnelView) {
        self.ended.push_back((uid, view));
        while self.ended.iter().filter(|(owner, _)| *owner == uid).count() > ENDED_KEPT {
            if let Some(oldest) = self.ended.iter().position(|(owner, _)| *owner == uid) {
                self.ended.remove(oldest);
            }
        }
    }

    fn drop_stale_preparations(&mut self) {
        self.preparations.retain(|id, p| {
            let keep = p.made.elapsed() < PREPARATION_TTL;
            if !keep {
                tracing::info!(
                    uid = p.uid,
                    prepare_id = id,
                    "dropped a preparation whose configuration never came"
                );
            }
            keep
        });
    }

    async fn stop(&mut self) {
        self.preparations.clear();
        let ids: Vec<u64> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.end(id, EndCause::Disconnected, "the service stopped".into()).await;
        }
    }
}

/// What a final status means for the tunnel.
fn ending_of(status: &ConfigStatus) -> Option<(EndCause, String)> {
    let detail = status.detail.clone();
    match status.state {
        ConfigState::Live => None,
        ConfigState::Ended => {
            let why = status.end_reason.as_ref().map(|r| r.describe()).or(detail);
            Some((EndCause::Ended, why.unwrap_or_else(|| "the session ended".into())))
        }
        ConfigState::Revoked => Some((
            EndCause::Revoked,
            detail.unwrap_or_else(|| "the configuration was revoked at the cloud".into()),
        )),
        ConfigState::Expired => Some((EndCause::Expired, "expired: the configuration's time ran out".into())),
    }
}

fn not_yours_preparation(prepare_id: u64) -> Answer {
    Answer::error(
        ErrorCode::NotFound,
        format!("no preparation {prepare_id} of yours (it is dropped after {} s)", PREPARATION_TTL.as_secs()),
    )
}

fn view(tunnel: &Tunnel) -> TunnelView {
    let peer = tunnel.endpoint.status().into_iter().find(|p| p.public_key == tunnel.plan.peer);
    let path = paths::view(tunnel.traversal.status(&tunnel.plan.peer), &tunnel.plan, peer.as_ref());
    let now = now_ms();
    let at_ms = |at: Instant| now.saturating_sub(at.elapsed().as_millis() as u64);
    TunnelView {
        session_id: tunnel.plan.session_id,
        session_name: tunnel.plan.session_name.clone(),
        config_id: tunnel.plan.config_id,
        interface: tunnel.endpoint.name().to_string(),
        public_key: tunnel.endpoint.public_key().to_base64(),
        address: tunnel.plan.address.to_string(),
        targets: tunnel.plan.targets.clone(),
        ended: None,
        path: path.kind,
        path_why: path.why,
        path_since_ms: path.since.map(at_ms),
        peer_endpoint: path.endpoint,
        last_handshake_ms: peer.as_ref().and_then(|p| p.last_handshake).map(at_ms),
        rtt_ms: path.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
        rx_bytes: peer.as_ref().map_or(0, |p| p.rx_bytes),
        tx_bytes: peer.as_ref().map_or(0, |p| p.tx_bytes),
        expires_ms: tunnel.plan.expires_ms,
        connected_ms: tunnel.connected_ms,
        cloud: tunnel.watch.as_ref().map(|w| w.note.clone()),
        local_candidates: tunnel
            .traversal
            .local_candidates()
            .borrow()
            .iter()
            .map(|c| c.to_string())
            .collect(),
    }
}
