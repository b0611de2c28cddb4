//! `ferry-gateway run`: the daemon.
//!
//! One task owns the state and decides; everything else feeds it messages:
//! the local control socket (the customer), the cloud channel (desired
//! states and acknowledgements) and a ticker (expiry, peers coming and going,
//! byte counters, the systemd watchdog). After every change it computes a
//! [`policy::Plan`] and applies it: eBPF maps first when narrowing, so that
//! traffic stops before keys go, then the WireGuard engine.

mod cloud;
mod cloud_clock;
mod engine;
mod forwarding;
pub mod host;
mod metrics;
pub mod policy;
mod report;
mod snapshot;
mod uplink;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ferry_control::{
    SessionId, WgKey,
    gateway::{DesiredState, GatewayEvent, MAX_CANDIDATES},
};
use ferry_ebpf::{
    AttachMode,
    gateway::{FlowTimeouts, ForwarderConfig, GatewayForwarder},
};
use ferry_tunnel::config::InterfaceAddress;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{error, info, warn};

use self::{
    cloud::{CloudLink, FromCloud},
    cloud_clock::CloudClock,
    engine::{Change, Engine, Wanted},
    forwarding::Reported,
    policy::{Decision, Inputs, Plan, Status},
};
use crate::{
    config::Transport,
    local::protocol::{Request, Response},
    state::{RelayInfo, Store},
};

/// How often the daemon looks at the clock and the engine.
const TICK: Duration = Duration::from_millis(250);
/// How often the metrics are refreshed (counting the queue walks it).
const METRICS_EVERY: Duration = Duration::from_secs(2);
/// How often per-target byte counters go to the audit.
const BYTES_EVERY: Duration = Duration::from_secs(30);

/// Everything `run` needs, resolved from the configuration and flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub tunnel_interface: String,
    /// The gateway's address in the tunnel network; its prefix covers every
    /// session subnet the cloud hands out.
    pub tunnel_address: InterfaceAddress,
    pub wireguard_port: u16,
    pub uplink_interface: Option<String>,
    /// Whether the uplink guard drops messages to receiver indices the engine
    /// does not hold.
    pub follow_indices: bool,
    pub xdp_mode: AttachMode,
    pub lan_interface: String,
    pub lan_address: Option<Ipv4Addr>,
    pub transport: Transport,
    /// Where `/metrics` listens; `None`: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the customer's local panel listens.
    pub panel: crate::config::PanelListen,
    /// How long idle connections to the machines are kept.
    pub flow_timeouts: FlowTimeouts,
}

pub async fn run(settings: Settings, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let store = Store::open(&settings.data_dir)
        .with_context(|| format!("opening the state in {}", settings.data_dir.display()))?;
    let enrollment = store
        .enrollment()
        .context("reading the enrolment")?
        .context("this gateway is not enrolled yet: run `ferry-gateway enroll --cloud URL --token TOKEN`")?;
    let identity = crate::state::keys::identity(&settings.data_dir).context("loading the identity key")?;
    let wg_key = crate::state::keys::wireguard(&settings.data_dir).context("loading the WireGuard key")?;

    host::prepare_lan(&settings.lan_interface).context("preparing the LAN interface")?;
    let snat = match settings.lan_address {
        Some(a) => a,
        None => host::lan_address(&settings.lan_interface)?,
    };
    let std::net::IpAddr::V4(tunnel_v4) = settings.tunnel_address.addr else {
        anyhow::bail!("tunnel.address must be IPv4");
    };
    let engine = Engine::start(
        &settings.tunnel_interface,
        wg_key,
        settings.wireguard_port,
        settings.tunnel_address,
        settings.transport,
        traversal_options(&settings, snat)?,
    )
    .await?;
    let forwarder = GatewayForwarder::attach(&ForwarderConfig {
        tunnel_if: settings.tunnel_interface.clone(),
        lan_if: settings.lan_interface.clone(),
        tunnel_net: (tunnel_v4, settings.tunnel_address.prefix),
        xdp_mode: settings.xdp_mode,
        timeouts: settings.flow_timeouts,
    })
    .context("attaching the forwarding programs (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
    let uplink = match &settings.uplink_interface {
        Some(iface) => {
            Some(uplink::Uplink::attach(iface, settings.xdp_mode, &engine, settings.follow_indices)?)
        }
        None => {
            warn!("no uplink interface configured: the uplink guard is not attached");
            None
        }
    };

    let switch_on = store.switch_on();
    let (switch_tx, switch_rx) = watch::channel(switch_on);
    let (applied_tx, applied_rx) = watch::channel(None);
    let events = Arc::new(Notify::new());
    let (cloud_tx, mut cloud_rx) = mpsc::channel(16);
    let link = CloudLink {
        urls: enrollment
            .cloud_urls()
            .iter()
            .map(|u| {
                crate::cmd::http::CloudUrl::parse(u)
                    .map(|url| url.websocket(&enrollment.control_path))
                    .with_context(|| format!("the enrolled cloud URL {u}"))
            })
            .collect::<Result<Vec<_>>>()?,
        pin: match enrollment.pin.as_deref() {
            None => None,
            Some(text) => Some(ferry_control::pin::parse_fingerprint(text).with_context(|| {
                format!("the enrolled certificate pin {text:?} is not a SHA-256 fingerprint")
            })?),
        },
        gateway_id: enrollment.gateway_id,
        identity,
        wg_public_key: WgKey(engine.public_key().0),
    };
    let cloud_inputs = cloud::Inputs {
        store: store.clone(),
        switch_on: switch_rx,
        applied: applied_rx,
        events: events.clone(),
    };
    let cloud_task = tokio::spawn(cloud::run(link, cloud_inputs, cloud_tx));

    let listener = crate::local::server::bind(&settings.socket)
        .with_context(|| format!("binding the control socket {}", settings.socket.display()))?;
    let (request_tx, mut requests) = crate::local::server::channel();
    let panel_task =
        start_panel(&settings, snat, &enrollment.name, request_tx.clone(), &store, &events).await?;
    let local_task = tokio::spawn(crate::local::server::serve(listener, request_tx));

    let metrics = metrics::Metrics::new();
    let metrics_task = match settings.metrics {
        Some(addr) => {
            let listener = ferry_daemon::metrics_http::bind(addr).await?;
            let metrics = metrics.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = ferry_daemon::metrics_http::serve(listener, move || metrics.encode()).await {
                    error!(error = %e, "the metrics endpoint stopped");
                }
            }))
        }
        None => None,
    };

    let boot_id = cloud_clock::boot_id();
    let saved = cloud_clock::load(&settings.data_dir).unwrap_or_else(|e| {
        warn!(error = %format!("{e:#}"), "the cloud's time kept on disk is unreadable");
        None
    });
    let clock = CloudClock::restored(saved, &boot_id, cloud_clock::boot_ms());
    if !clock.is_known() {
        // After a reboot, or on a first start: the sessions kept on disk
        // wait for the cloud's time rather than trust the wall clock.
        info!("the cloud's time is not known yet: kept sessions forward nothing until the cloud is reached");
    }
    let mut daemon = Daemon {
        metrics,
        store,
        data_dir: settings.data_dir.clone(),
        snat,
        desired: snapshot::load(&settings.data_dir).context("loading the last desired state")?,
        plan: Plan::default(),
        engine,
        forwarder,
        uplink,
        reported: Reported::default(),
        switch_tx,
        applied_tx,
        events,
        cloud_connected: false,
        first_of_connection: true,
        candidates_sent: None,
        clock,
        boot_id,
    };
    daemon.reconcile().await;
    info!(
        gateway = enrollment.gateway_id,
        switch = if switch_on { "on" } else { "off" },
        port = daemon.engine.local_port(),
        public_key = %daemon.engine.public_key(),
        %snat,
        "ferry-gateway ready"
    );
    ferry_daemon::notify::ready();
    let watchdog = ferry_daemon::notify::watchdog_interval();

    let mut candidates = daemon.engine.traversal().local_candidates();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bytes = tokio::time::interval(BYTES_EVERY);
    let mut refresh = tokio::time::interval(METRICS_EVERY);
    let mut pet = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some((request, pending)) = requests.recv() => {
                let response = daemon.handle(request).await;
                pending.answer(response);
            }
            Some(message) = cloud_rx.recv() => daemon.on_cloud(message).await,
            Ok(()) = candidates.changed() => {
                let list = candidates.borrow_and_update().clone();
                daemon.report_candidates(list);
            }
            _ = tick.tick() => daemon.tick().await,
            _ = bytes.tick() => daemon.every_bytes_period(),
            _ = refresh.tick() => daemon.refresh_metrics(),
            _ = pet.tick(), if watchdog.is_some() => ferry_daemon::notify::watchdog(),
        }
    }
    // Requests from now on, and those queued, are told the daemon stops.
    drop(requests);
    ferry_daemon::notify::stopping();
    info!("stopping");
    // Before the programs go: the machine network is never routed by a
    // gateway that does not filter it.
    if let Err(error) = host::close_lan(&settings.lan_interface) {
        warn!(error = %format!("{error:#}"), "turning the LAN's forwarding off failed");
    }
    daemon.report_bytes(|_| true);
    cloud_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    local_task.abort();
    if let Some(task) = panel_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&settings.socket);
    Ok(())
}

/// Starts the customer's local panel where the configuration says, after
/// checking that the address is the LAN's or loopback (never the uplink's).
async fn start_panel(
    settings: &Settings,
    lan_address: Ipv4Addr,
    gateway_name: &str,
    requests: mpsc::Sender<crate::local::server::Call>,
    store: &Store,
    events: &Arc<Notify>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use crate::{config::PanelListen, panel};
    let listen = match settings.panel {
        PanelListen::Off => {
            info!("the local panel is off (panel.listen = \"off\")");
            return Ok(None);
        }
        PanelListen::Lan => std::net::SocketAddr::new(lan_address.into(), crate::config::DEFAULT_PANEL_PORT),
        PanelListen::At(addr) => addr,
    };
    let addresses = panel::listen::interface_addresses().context("listing the interfaces' addresses")?;
    let device = panel::listen::device_for(
        listen,
        &settings.lan_interface,
        settings.uplink_interface.as_deref(),
        &addresses,
    )?;
    let running = panel::start(panel::Setup {
        listen,
        device: device.clone(),
        data_dir: settings.data_dir.clone(),
        socket: settings.socket.clone(),
        gateway_name: gateway_name.to_string(),
        requests,
        store: store.clone(),
        events: events.clone(),
        lockout: panel::Lockout::default(),
    })
    .await?;
    info!(
        url = %format!("https://{}", running.addr),
        interface = device,
        fingerprint = %running.fingerprint,
        "local panel listening"
    );
    Ok(Some(running.task))
}

/// Where the gateway finds its direct-path candidates and what it never
/// probes: host candidates come from the uplink only (or, without one
/// configured, from any interface but the LAN), and neither the machine
/// network nor the tunnel network is ever probed or offered.
fn traversal_options(settings: &Settings, snat: Ipv4Addr) -> Result<ferry_traversal::TraversalOptions> {
    let mut deny = host::lan_prefixes(&settings.lan_interface)?;
    deny.push(ferry_tunnel::proto::IpNet::new(snat.into(), 32).context("the LAN address")?);
    deny.push(
        ferry_tunnel::proto::IpNet::new(settings.tunnel_address.addr, settings.tunnel_address.prefix)
            .context("the tunnel network")?,
    );
    Ok(ferry_traversal::TraversalOptions {
        interfaces: settings.uplink_interface.iter().cloned().collect(),
        exclude_interfaces: vec![settings.lan_interface.clone()],
        deny,
        ..ferry_traversal::TraversalOptions::default()
    })
}

/// The gateway's wall clock: for audit times while the cloud's time is
/// unknown, and to tell how far off it is; never for a session's end.
fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Beyond this, the gateway's wall clock is said to be off from the cloud's.
const CLOCK_OFF_WARN_MS: u64 = 5_000;

struct Daemon {
    metrics: metrics::Metrics,
    store: Store,
    data_dir: PathBuf,
    snat: Ipv4Addr,
    desired: Option<DesiredState>,
    plan: Plan,
    engine: Engine,
    forwarder: GatewayForwarder,
    /// The uplink guard, when an uplink interface is configured.
    uplink: Option<uplink::Uplink>,
    reported: Reported,
    switch_tx: watch::Sender<bool>,
    applied_tx: watch::Sender<Option<u64>>,
    events: Arc<Notify>,
    cloud_connected: bool,
    /// The next desired state is the first of a new connection to the cloud:
    /// it is applied whatever its revision, because another replica's
    /// revisions follow another clock (and a cloud's clock may have been
    /// stepped back); on one connection they only grow.
    first_of_connection: bool,
    /// The candidates last reported to the cloud in this run.
    candidates_sent: Option<Vec<std::net::SocketAddr>>,
    /// The cloud's time, which end times are measured against.
    clock: CloudClock,
    /// This boot's id, stored with the cloud's time.
    boot_id: String,
}

impl Daemon {
    /// The cloud's time now, if known.
    fn cloud_now(&self) -> Option<u64> {
        self.clock.now(cloud_clock::boot_ms())
    }

    /// The time an audit event carries: the cloud's, else the wall clock's.
    fn event_ms(&self) -> u64 {
        self.cloud_now().unwrap_or_else(wall_ms)
    }

    fn record(&self, event: GatewayEvent) {
        match self.store.enqueue(event, self.event_ms()) {
            Ok(_) => self.events.notify_one(),
            // The queue is the audit's only copy: losing it must be loud.
            Err(e) => error!(error = %e, "could not queue an audit event"),
        }
    }

    fn decisions(&self) -> BTreeMap<SessionId, Decision> {
        let Some(desired) = &self.desired else { return BTreeMap::new() };
        desired
            .sessions
            .iter()
            .filter_map(|s| self.store.decision(s.session_id).map(|d| (s.session_id, d)))
            .collect()
    }

    /// Computes the plan for now and applies it.
    async fn reconcile(&mut self) {
        let decisions = self.decisions();
        let plan = policy::plan(&Inputs {
            desired: self.desired.as_ref(),
            switch_on: self.store.switch_on(),
            decisions: &decisions,
            now_ms: self.cloud_now(),
        });
        // Sessions that stop forwarding: their last bytes go to the audit
        // before their counters disappear with the map entries.
        let leaving: Vec<u64> = self
            .plan
            .active()
            .filter(|old| plan.session(old.state.session_id).is_none_or(|new| new.status != Status::Active))
            .map(|s| s.state.session_id.0)
            .collect();
        self.report_bytes(|id| leaving.contains(&id));
        for (id, old) in leaving.iter().filter_map(|id| self.plan.session(SessionId(*id)).map(|s| (*id, s))) {
            let status = plan.session(SessionId(id)).map_or("ended", |s| s.status.label());
            info!(session = id, name = old.state.name, status, "session stops forwarding");
        }
        for id in &leaving {
            self.reported.forget(*id);
        }
        let table = forwarding::table(&plan, self.snat);
        if let Err(e) = self.forwarder.apply(&table) {
            error!(error = %e, "updating the forwarding maps failed");
        }
        let wanted =
            plan.live_peers().map(|(s, p)| Wanted { session: s.state.session_id, peer: p.clone() }).collect();
        let changes = self.engine.apply(wanted);
        self.record_changes(changes);
        let stun_servers = self.desired.as_ref().map(|d| d.stun_servers.clone()).unwrap_or_default();
        if let Some(uplink) = &self.uplink {
            // The live peers' tags, as soon as they are probed (their probes
            // may be on the way), and the STUN servers before they are asked.
            uplink.set_probe_tags(self.engine.traversal().probe_tags().borrow().iter().copied());
            uplink.set_stun_servers(stun_servers.iter().copied());
        }
        self.engine.traversal().set_stun_servers(stun_servers);
        for s in plan.active() {
            if self.plan.session(s.state.session_id).is_none_or(|old| old.status != Status::Active) {
                info!(
                    session = s.state.session_id.0,
                    name = s.state.name,
                    peers = s.live_peers.len(),
                    "session forwarding"
                );
            }
        }
        self.plan = plan;
    }

    fn record_changes(&self, changes: Vec<Change>) {
        for change in changes {
            let event = match change {
                Change::Connected { session, public_key, endpoint, path } => {
                    info!(session = session.0, peer = %public_key, ?endpoint, ?path, "peer connected");
                    GatewayEvent::PeerConnected {
                        session_id: session,
                        public_key: WgKey(public_key.0),
                        endpoint,
                        path,
                    }
                }
                Change::PathChanged { session, public_key, path, endpoint } => {
                    info!(session = session.0, peer = %public_key, ?endpoint, ?path, "peer's path changed");
                    GatewayEvent::PeerPath {
                        session_id: session,
                        public_key: WgKey(public_key.0),
                        path,
                        endpoint,
                    }
                }
                Change::Disconnected { session, public_key } => {
                    info!(session = session.0, peer = %public_key, "peer left");
                    GatewayEvent::PeerDisconnected { session_id: session, public_key: WgKey(public_key.0) }
                }
            };
            self.record(event);
        }
    }

    fn report_bytes(&mut self, which: impl Fn(u64) -> bool) {
        let mut events = Vec::new();
        for session in self.plan.active().filter(|s| which(s.state.session_id.0)) {
            events.extend(self.reported.deltas(session, |id, proxy| {
                self.forwarder
                    .traffic(id, proxy)
                    .ok()
                    .flatten()
                    .map(|t| (t.to_target_bytes, t.from_target_bytes))
            }));
        }
        for event in events {
            self.record(event);
        }
    }

    async fn tick(&mut self) {
        if self.plan.next_deadline_ms.is_some_and(|d| self.cloud_now().is_some_and(|now| d <= now)) {
            self.reconcile().await;
        }
        let changes = self.engine.poll();
        self.record_changes(changes);
    }

    /// Tells the cloud this gateway's direct-path candidates when they
    /// changed (at most [`MAX_CANDIDATES`], as the protocol allows).
    fn report_candidates(&mut self, mut endpoints: Vec<std::net::SocketAddr>) {
        endpoints.truncate(MAX_CANDIDATES);
        if self.candidates_sent.as_ref() == Some(&endpoints) {
            return;
        }
        info!(?endpoints, "direct-path candidates");
        self.candidates_sent = Some(endpoints.clone());
        self.record(GatewayEvent::Candidates { endpoints });
    }

    fn every_bytes_period(&mut self) {
        self.report_bytes(|_| true);
        match self.forwarder.expire_flows() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(flows = n, "idle connections swept"),
            Err(e) => warn!(error = %e, "sweeping idle connections failed"),
        }
    }

    fn refresh_metrics(&self) {
        let m = &self.metrics;
        m.switch_on.set(i64::from(self.store.switch_on()));
        m.cloud_connected.set(i64::from(self.cloud_connected));
        m.audit_pending.set(self.store.pending_len() as i64);
        for status in [
            Status::Active,
            Status::WaitingForApproval,
            Status::Denied,
            Status::Ended,
            Status::Expired,
            Status::SwitchedOff,
            Status::ClockUnknown,
        ] {
            let n = self.plan.sessions.iter().filter(|s| s.status == status).count();
            m.sessions.get_or_create(&metrics::StatusLabels { status: status.label() }).set(n as i64);
        }
        m.peers_connected.set(self.engine.connected() as i64);
        if let Ok(outcomes) = self.forwarder.outcomes() {
            for (outcome, total) in outcomes {
                metrics::Metrics::count_to(
                    &m.packets.get_or_create(&metrics::OutcomeLabels { outcome }),
                    total,
                );
            }
        }
        if let Some(uplink) = &self.uplink {
            for (outcome, total) in uplink.outcomes() {
                metrics::Metrics::count_to(
                    &m.guard_packets.get_or_create(&metrics::OutcomeLabels { outcome }),
                    total,
                );
            }
            m.guard_indices.set(uplink.live_indices() as i64);
            m.guard_follows_indices.set(i64::from(uplink.follows_indices()));
            metrics::Metrics::count_to(&m.guard_map_errors, uplink.map_errors());
            m.guard_probe_tags.set(uplink.probe_tags() as i64);
            m.guard_stun_servers.set(uplink.stun_servers() as i64);
            metrics::Metrics::count_to(&m.guard_rule_map_errors, uplink.rule_map_errors());
        }
        let device = self.engine.device_stats();
        metrics::Metrics::count_to(&m.wg_handshakes, device.handshakes_received);
        metrics::Metrics::count_to(&m.wg_cookie_replies, device.cookie_replies_sent);
        let rate_limited = device.drops.get(&ferry_tunnel::proto::device::Drop::RateLimited);
        metrics::Metrics::count_to(&m.wg_rate_limited, rate_limited.copied().unwrap_or(0));
        m.count_wireguard_drops(&device.drops);
        m.count_endpoint_drops(&self.engine.endpoint_stats());
        let traversal = self.engine.traversal().stats();
        for kind in ferry_traversal::PathKind::ALL {
            let n = traversal.paths.get(kind);
            m.paths.get_or_create(&metrics::PathLabels { path: kind.label() }).set(n as i64);
        }
        let probes = traversal.probes;
        metrics::Metrics::count_to(&m.probes_sent, probes.pings_sent + probes.pongs_sent);
        metrics::Metrics::count_to(&m.probes_received, probes.pings_received + probes.pongs_received);
        for reason in ferry_paths::ProbeDrop::ALL {
            let counter = m.probe_drops.get_or_create(&metrics::ReasonLabels { reason: reason.name() });
            metrics::Metrics::count_to(&counter, probes.dropped(reason));
        }
        metrics::Metrics::count_to(&m.stun_requests, traversal.stun_requests);
        metrics::Metrics::count_to(&m.stun_answers, traversal.stun_answers);
        for (reason, total) in [("unmatched", traversal.stun_unmatched), ("failed", traversal.stun_failed)] {
            metrics::Metrics::count_to(&m.stun_drops.get_or_create(&metrics::ReasonLabels { reason }), total);
        }
        metrics::Metrics::count_to(&m.side_other, traversal.side_other);
        metrics::Metrics::count_to(&m.transport_switches, traversal.transport_switches);
        metrics::Metrics::count_to(&m.relay_rebinds, traversal.relay_rebinds);
        m.candidates.set(traversal.local_candidates as i64);
        metrics::Metrics::count_to(&m.local_refused, crate::local::server::refused_connections());
        metrics::Metrics::count_to(&m.local_malformed, crate::local::server::malformed_requests());
    }

    async fn on_cloud(&mut self, message: FromCloud) {
        match message {
            FromCloud::Connected(up) => {
                self.cloud_connected = up;
                self.first_of_connection = true;
            }
            FromCloud::Time { cloud_ms, boot_ms } => self.set_cloud_time(cloud_ms, boot_ms),
            FromCloud::Desired(state) => {
                let first = std::mem::replace(&mut self.first_of_connection, false);
                if !accepts_desired(self.desired.as_ref().map(|d| d.revision), state.revision, first) {
                    warn!(
                        have = self.desired.as_ref().map(|d| d.revision),
                        got = state.revision,
                        "older desired state ignored"
                    );
                    return;
                }
                if let Err(e) = snapshot::save(&self.data_dir, &state) {
                    error!(error = %format!("{e:#}"), "saving the desired state failed");
                }
                let live: Vec<SessionId> = state.sessions.iter().map(|s| s.session_id).collect();
                if let Err(e) = self.store.forget_decisions_except(&live) {
                    warn!(error = %e, "forgetting old decisions failed");
                }
                let relays: Vec<RelayInfo> = state
                    .sessions
                    .iter()
                    .flat_map(|s| &s.peers)
                    .filter_map(|p| p.relay.as_ref())
                    .map(|r| RelayInfo { udp: r.udp, websocket_url: r.websocket_url.clone() })
                    .collect();
                if !relays.is_empty()
                    && let Err(e) = self.store.set_relays(&relays)
                {
                    warn!(error = %e, "remembering the relays failed");
                }
                let revision = state.revision;
                info!(revision, sessions = state.sessions.len(), "desired state received");
                self.desired = Some(state);
                self.reconcile().await;
                self.applied_tx.send_replace(Some(revision));
            }
        }
    }

    /// A connection's hello told the cloud's time: end times are measured
    /// against it from now on, also after a restart during this boot.
    fn set_cloud_time(&mut self, cloud_ms: u64, boot_ms: u64) {
        let pin = self.clock.pin(&self.boot_id, boot_ms, cloud_ms).clone();
        if let Err(e) = cloud_clock::save(&self.data_dir, &pin) {
            error!(error = %format!("{e:#}"), "saving the cloud's time failed");
        }
        let (wall, cloud) = (wall_ms(), self.cloud_now().unwrap_or(cloud_ms));
        if wall.abs_diff(cloud) > CLOCK_OFF_WARN_MS {
            warn!(
                ahead_ms = i128::from(wall) - i128::from(cloud),
                "this gateway's clock is off from the cloud's; sessions end by the cloud's"
            );
        }
    }

    async fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::Switch { on: self.store.switch_on(), changed: false },
            Request::Remote { on } => match self.store.set_switch(on, self.event_ms()) {
                Ok(changed) => {
                    if changed {
                        info!(
                            on,
                            "the customer switched remote maintenance {}",
                            if on { "on" } else { "off" }
                        );
                        self.events.notify_one();
                        self.switch_tx.send_replace(on);
                        self.reconcile().await;
                    }
                    Response::Switch { on, changed }
                }
                Err(e) => Response::Error { message: format!("could not store the switch: {e}") },
            },
            Request::Approve { session } => self.decide(SessionId(session), Decision::Approved).await,
            Request::Deny { session } => self.decide(SessionId(session), Decision::Denied).await,
            Request::End { session } => self.end(SessionId(session)).await,
            Request::Sessions => Response::Sessions {
                sessions: report::sessions(&self.plan, &self.engine, &self.forwarder, self.cloud_now()),
            },
        }
    }

    async fn decide(&mut self, session: SessionId, decision: Decision) -> Response {
        let Some(planned) = self.plan.session(session) else {
            return Response::Error { message: format!("no session {} at this gateway", session.0) };
        };
        if planned.status != Status::WaitingForApproval {
            return Response::Error {
                message: format!(
                    "session {} is {}, not waiting for approval",
                    session.0,
                    planned.status.label()
                ),
            };
        }
        let name = planned.state.name.clone();
        if let Err(e) = self.store.decide(session, decision, self.event_ms()) {
            return Response::Error { message: format!("could not store the decision: {e}") };
        }
        self.events.notify_one();
        info!(session = session.0, name, ?decision, "the customer decided");
        self.reconcile().await;
        Response::Done { message: format!("session {} ({name}) {decision}", session.0) }
    }

    /// The customer ends one running session here: it stops forwarding at
    /// once, and the cloud hears of it (`Ended`), which ends it there.
    async fn end(&mut self, session: SessionId) -> Response {
        let Some(planned) = self.plan.session(session) else {
            return Response::Error { message: format!("no session {} at this gateway", session.0) };
        };
        if planned.status != Status::Active {
            let hint = if planned.status == Status::WaitingForApproval { " (deny it instead)" } else { "" };
            return Response::Error {
                message: format!("session {} is {}, not active{hint}", session.0, planned.status.label()),
            };
        }
        let name = planned.state.name.clone();
        if let Err(e) = self.store.end_session(session, self.event_ms()) {
            return Response::Error { message: format!("could not store the end: {e}") };
        }
        self.events.notify_one();
        info!(session = session.0, name, "the customer ended the session");
        self.reconcile().await;
        Response::Done { message: format!("session {} ({name}) ended", session.0) }
    }
}

/// Whether a desired state with revision `got` replaces the one applied
/// (`have`). On one connection the cloud's revisions only grow, so an older
/// one is a straggler; the first of a new connection always counts, since it
/// may come from another replica whose clock (and so revisions) lags.
fn accepts_desired(have: Option<u64>, got: u64, first_of_connection: bool) -> bool {
    first_of_connection || have.is_none_or(|have| got >= have)
}

#[cfg(test)]
mod desired_order_tests {
    use super::accepts_desired;

    #[test]
    fn a_new_connections_first_state_counts_even_if_its_revision_is_lower() {
        // Replica B's clock lags A's: its end of a session must not wait.
        assert!(accepts_desired(Some(5_000), 4_000, true));
        assert!(!accepts_desired(Some(5_000), 4_000, false));
        assert!(accepts_desired(Some(5_000), 5_000, false));
        assert!(accepts_desired(None, 1, false));
    }
}
