//! The run: the world, the loop of seeded steps, the checks after each step
//! and at the end.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use ferry_lab::{Nat, Netns, Router};
use ferry_world::{
    ADMIN_PASSWORD, CLOUD_IP, CLOUD_PORT, FerryClient, OTHER_ECHO_PORT, OTHER_HTTP_PORT, Options, User,
    World, http_get_path, metric_value, poll,
};
use serde_json::{Value, json};

pub use crate::outage::DEFAULT_OUTAGE_PERCENT;
use crate::{
    acked::{self, Acked, Want},
    clock::{self, CLOCK_STREAM},
    cloud::{self, REPLICA_B, REPLICA_STREAM, Storage},
    gateways::{GATEWAY_DAEMONS, GATEWAY_STREAM, Gateway},
    maps,
    outage::OUTAGE_STREAM,
    relays::{RELAY_DAEMONS, RELAY_STREAM},
    report::Stats,
    rng::Rng,
    udp::UDP_OTHER_PORT,
    usage::{self, Usage},
    workload::Tech,
};

/// Where the choices added after the first version of the workload come
/// from (UDP sizes, a user disabled, a client killed): a second stream of
/// the same seed, so that the first keeps its schedule (seed 2's among
/// them) and the additions replay with the seed too.
const EXTRA_STREAM: u64 = 0x5eed_0fe8_a7a7;

/// Where each session's client kind comes from (the `ferry` client or a
/// stock wireguard-go): a stream of its own, so that the other streams,
/// and so every seed's schedule of steps and faults, stay as they were.
pub const CLIENT_STREAM: u64 = 0xc11e_47c1_1e47;

/// The technicians, and the names of their `ferry` services as the table
/// and the watch on memory and descriptors call them; a run has the first
/// [`MIN_TECHNICIANS`] to [`MAX_TECHNICIANS`] of them.
const TECHNICIANS: [&str; MAX_TECHNICIANS] =
    ["tech-ada", "tech-bo", "tech-cy", "tech-di", "tech-ed", "tech-flo"];
pub const CLIENT_SERVICES: [&str; MAX_TECHNICIANS] = [
    "ferry service (tech-ada)",
    "ferry service (tech-bo)",
    "ferry service (tech-cy)",
    "ferry service (tech-di)",
    "ferry service (tech-ed)",
    "ferry service (tech-flo)",
];
pub const MIN_TECHNICIANS: usize = 2;
pub const MAX_TECHNICIANS: usize = 6;

/// The daemons whose memory and descriptors are watched (on PostgreSQL
/// the cloud's two replicas by port, see [`cloud::replica_name`]).
pub const DAEMONS: [&str; 8] = [
    "ferry-cloud",
    "ferry-cloud :7600",
    "ferry-cloud :7601",
    RELAY_DAEMONS[0],
    RELAY_DAEMONS[1],
    GATEWAY_DAEMONS[0],
    GATEWAY_DAEMONS[1],
    GATEWAY_DAEMONS[2],
];
/// PostgreSQL's main process: shown in the table, not bounded (not a
/// daemon of ours).
pub const POSTMASTER: &str = "postgres (postmaster)";

/// A breach of an invariant, or the harness failing to drive the world.
pub type Outcome<T = ()> = Result<T, String>;

pub struct Soak {
    pub world: World,
    pub rng: Rng,
    /// The second stream (see [`EXTRA_STREAM`]).
    pub extra: Rng,
    /// The third: the cloud's outages (see [`OUTAGE_STREAM`]).
    pub outage_rng: Rng,
    /// The fourth: each session's client kind (see [`CLIENT_STREAM`]).
    pub kinds: Rng,
    /// Which relay a "kill relay" kills (see [`RELAY_STREAM`]).
    pub relay_pick: Rng,
    /// The fifth: which replica a kill of the cloud takes, and whether the
    /// database restarts instead (see [`REPLICA_STREAM`]).
    pub replica_rng: Rng,
    /// The soak's own PostgreSQL server, on that storage (dropped after the
    /// world: stopped and its folder removed).
    pub database: Option<ferry_lab::postgres::Postgres>,
    /// Every write the workload got a success answer for.
    pub acked: Acked,
    /// The chance of that fault at a fault step, in percent (0: never).
    pub outage_percent: u64,
    /// The clock's stream: steps of the gateway's clock (see [`CLOCK_STREAM`]).
    pub clock_rng: Rng,
    /// Whether that fault is injected (the gateway runs under libfaketime).
    pub clock_steps: bool,
    /// The step of the gateway's clock in effect.
    pub clock_held: Option<clock::Held>,
    /// Time spent waiting for sessions to come back after site faults: it
    /// does not count toward the run's duration, so that a seed's later
    /// steps stay closer to those it had before the checks existed (not
    /// the same: a step whose choice depends on time, such as a short
    /// session near its end, may now come out otherwise).
    pub site_recovery_time: Duration,
    pub seed: u64,
    /// The gateways, one per site (see crate::gateways), with their
    /// switches, captures and services.
    pub gateways: Vec<Gateway>,
    /// Which gateway a session goes to and a site's fault picks (see
    /// [`GATEWAY_STREAM`]).
    pub gateway_pick: Rng,
    pub techs: Vec<Tech>,
    pub stats: Stats,
    /// Every session transition the workload made: (session id, audit action).
    pub transitions: Vec<(u64, &'static str)>,
    pub started: Instant,
    log: Vec<String>,
    /// Per daemon: the first sample, and the first and last of the running
    /// process (a restart starts a new one).
    pub usage: BTreeMap<&'static str, (Usage, Usage, Usage, u32)>,
    /// The technicians' laptops, by technician (their home routers live
    /// as long as the run).
    laptops: Vec<Laptop>,
}

/// How a laptop behind a symmetric NAT is described.
pub const SYMMETRIC_PLACE: &str = "behind a symmetric NAT";

/// Where a technician's laptop sits on the simulated internet.
struct Laptop {
    ns: Netns,
    place: &'static str,
    _router: Option<Router>,
}

/// The laptops: the world's technician and a second one on public
/// addresses of their own, then, alternately, one behind a home router
/// with a symmetric NAT (hole punching towards the site fails: the
/// `ferry` client takes the relay) and one behind a cone NAT.
fn laptops(world: &World, count: usize) -> Vec<Laptop> {
    let mut laptops = vec![Laptop { ns: world.tech_ns.clone(), place: "public", _router: None }];
    // A second technician on their own public address.
    let tech2_ns = world.lab.netns("tech2").unwrap();
    let veth = world.lab.wire(&world.inet, &["198.18.0.1/30"], &tech2_ns, &["198.18.0.2/30"]).unwrap();
    tech2_ns.ip(&["route", "add", "default", "via", "198.18.0.1"]).unwrap();
    world.inet.exec("ethtool", &["-K", &veth.a, "tx", "off"]).unwrap();
    tech2_ns.exec("ethtool", &["-K", &veth.b, "tx", "off"]).unwrap();
    laptops.push(Laptop { ns: tech2_ns, place: "public", _router: None });
    for k in 2..count {
        let (nat, place) =
            if k % 2 == 0 { (Nat::Symmetric, SYMMETRIC_PLACE) } else { (Nat::Cone, "behind a cone NAT") };
        // 198.18.0.4k/30 on the simulated internet (benchmarking range),
        // 10.77.k.0/24 at home.
        let base = 4 * k;
        let router = world
            .lab
            .nat_router(
                &format!("home{k}"),
                nat,
                &world.inet,
                &format!("198.18.0.{}/30", base + 1),
                &format!("198.18.0.{}/30", base + 2),
                &format!("10.77.{k}.1/24"),
            )
            .unwrap();
        router.ns.exec("ethtool", &["-K", &router.wan_if, "tx", "off"]).unwrap();
        let ns = world.lab.netns(&format!("tech{}", k + 1)).unwrap();
        let laptop_if = router.attach(&ns, &format!("10.77.{k}.2/24")).unwrap();
        ns.exec("ethtool", &["-K", &laptop_if, "tx", "off"]).unwrap();
        laptops.push(Laptop { ns, place, _router: Some(router) });
    }
    laptops
}

/// Builds the world, runs the workload for `duration`, checks the end
/// state; the table, or what went wrong with the event log.
/// `outage_percent`: the chance of the cloud-outage fault at a fault step
/// (0: never; drawn from its own stream, so leaving it out or changing
/// the chance changes no other choice).
/// `technicians`: how many ([`MIN_TECHNICIANS`] to [`MAX_TECHNICIANS`]);
/// which one acts at a step comes from the first stream, so another count
/// is another schedule.
pub fn run(
    seed: u64,
    duration: Duration,
    outage_percent: u64,
    technicians: usize,
    gateways: usize,
    storage: Storage,
) -> Result<String, String> {
    // The world's helpers are test tooling and panic on what they cannot
    // do; that is a failure of the run like a breach (the event log is
    // above, printed as it happened).
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut soak = Soak::new(seed, technicians, gateways, storage)?;
        soak.outage_percent = outage_percent;
        let outcome = match soak.drive(duration).and_then(|()| soak.finish()) {
            Ok(()) => Ok(soak.stats.table(&soak.usage)),
            Err(breach) => Err(soak.failure(&breach)),
        };
        // The daemons go before their database.
        let database = soak.database.take();
        drop(soak);
        drop(database);
        outcome
    }));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("ferry-soak: the harness failed (event log above): {what}"))
        }
    }
}

impl Soak {
    fn new(seed: u64, technicians: usize, gateways: usize, storage: Storage) -> Result<Soak, String> {
        let (database, cloud_storage) = match storage {
            Storage::Sled => (None, None),
            Storage::Postgres => {
                let (server, url) = cloud::start_database()?;
                (Some(server), Some(url))
            }
        };
        // Under libfaketime where it is installed, for the steps of its
        // clock; a machine without it runs the soak without that fault.
        let faketime = ferry_world::faketime_library().exists();
        if !faketime {
            println!(
                "ferry-soak: no libfaketime ({}): the gateway clock step is left out (cargo xtask setup installs it)",
                ferry_world::faketime_library().display()
            );
        }
        let mut world = World::new(Options {
            cloud_storage,
            gateway_faketime: faketime,
            second_relay: true,
            extra_sites: crate::gateways::SITE_KINDS[1..gateways].to_vec(),
            ..Options::default()
        });
        world.start_cloud_and_login();
        if database.is_some() {
            // Before the relay and the gateway, which are given every
            // replica's address.
            world.start_cloud_replica(REPLICA_B);
        }
        world.start_relay();
        world.start_relay_at(1);
        let gateways: Vec<Gateway> = (0..gateways).map(|g| Gateway::start(&mut world, g)).collect();

        let laptops = laptops(&world, technicians);
        let mut techs = Vec::new();
        let ferry = ferry_world::bin_path("ferry");
        for (name, (ns, place)) in
            TECHNICIANS.into_iter().zip(laptops.iter().map(|l| (l.ns.clone(), l.place)))
        {
            let user = world.create_technician(name);
            let user = User { token: world.login(&ns, name, &user.password).1, ..user };
            // Each laptop has the client installed and logged in, whichever
            // client a session then uses.
            let mut client =
                FerryClient::new(ferry.clone(), &ns, &world.lab.dir().join(format!("ferry-{name}")));
            client.start_service().expect("ferry service");
            let urls =
                if database.is_some() { world.cloud_urls() } else { vec![world.technician_cloud_url()] };
            client
                .login_replicas(&urls, world.cloud_pin.as_deref(), name, &user.password)
                .expect("ferry login");
            techs.push(Tech::new(user, ns, place, client));
        }
        let gateway_count = gateways.len();
        let mut soak = Soak {
            world,
            rng: Rng::new(seed),
            extra: Rng::new(seed ^ EXTRA_STREAM),
            outage_rng: Rng::new(seed ^ OUTAGE_STREAM),
            kinds: Rng::new(seed ^ CLIENT_STREAM),
            relay_pick: Rng::new(seed ^ RELAY_STREAM),
            replica_rng: Rng::new(seed ^ REPLICA_STREAM),
            database,
            acked: Acked::default(),
            outage_percent: DEFAULT_OUTAGE_PERCENT,
            clock_rng: Rng::new(seed ^ CLOCK_STREAM),
            clock_steps: faketime,
            clock_held: None,
            site_recovery_time: Duration::ZERO,
            seed,
            gateways,
            gateway_pick: Rng::new(seed ^ GATEWAY_STREAM),
            techs,
            stats: Stats { storage: storage.describe(), gateways: gateway_count, ..Stats::default() },
            transitions: Vec::new(),
            started: Instant::now(),
            log: Vec::new(),
            usage: BTreeMap::new(),
            laptops: Vec::new(),
        };
        for gateway in &mut soak.gateways {
            gateway.machine_net.set_origin(soak.started);
        }
        soak.sample_usage();
        let places: Vec<String> =
            TECHNICIANS.iter().zip(&laptops).map(|(name, l)| format!("{name} {}", l.place)).collect();
        let gateways: Vec<String> =
            soak.gateways.iter().map(|g| format!("{} id {}", Self::gateway_label(g.index), g.id)).collect();
        soak.event(format!(
            "world up: {}, 2 relays, {} gateways ({}; switches on), {technicians} technicians ({}), each with the \
             ferry client's service and wireguard-go",
            storage.describe(),
            gateways.len(),
            gateways.join(", "),
            places.join(", ")
        ));
        soak.laptops = laptops;
        Ok(soak)
    }

    /// Records a session transition the workload made (for the audit
    /// check) and the write it acknowledged (for the acknowledged-writes
    /// check): one the cloud answered, or, `via_gateway`, one the gateway
    /// did (`ferry-gateway end`), which reaches the cloud afterwards.
    pub fn transition(&mut self, id: u64, action: &'static str, via_gateway: bool) {
        self.transitions.push((id, action));
        let want = match action {
            "session.create" => Want::Exists,
            "session.start" => Want::AtLeast(acked::rank("waiting_for_approval").unwrap_or(1)),
            "session.approve" => Want::AtLeast(acked::rank("active").unwrap_or(2)),
            "session.expire" => Want::Over { state: "expired", via_gateway },
            _ => Want::Over { state: "ended", via_gateway },
        };
        self.acked.session(id, want);
    }

    /// One line of the event log, printed as it happens.
    pub fn event(&mut self, what: String) {
        let line = format!("[{:7.1}s] {what}", self.started.elapsed().as_secs_f64());
        println!("{line}");
        self.log.push(line);
    }

    fn failure(&self, breach: &str) -> String {
        let mut text = String::from("ferry-soak: event log\n");
        for line in &self.log {
            let _ = writeln!(text, "  {line}");
        }
        // The daemons' own lines, without the store's chatter.
        let replicas =
            self.world.cloud_replicas.iter().map(|(port, p)| (cloud::replica_name(*port), p.as_ref()));
        let relays =
            (0..self.world.relay_count()).map(|i| (RELAY_DAEMONS[i], self.world.relay_process_at(i)));
        let gateways =
            (0..self.gateways.len()).map(|g| (GATEWAY_DAEMONS[g], self.world.gateway_process_at(g)));
        for (name, process) in
            gateways.chain(relays).chain([("ferry-cloud", self.world.cloud.as_ref())]).chain(replicas)
        {
            if let Some(process) = process {
                let all = process.stderr();
                let saved = std::env::temp_dir().join(format!(
                    "ferry-soak-{}-{}.log",
                    self.seed,
                    name.replace(" :", "-")
                ));
                let _ = std::fs::write(&saved, format!("{}{all}", process.stdout()));
                let lines: Vec<&str> = all.lines().filter(|l| !l.contains("DEBUG")).collect();
                let _ =
                    writeln!(text, "--- {name} (last 60 lines above debug; all in {}) ---", saved.display());
                for line in &lines[lines.len().saturating_sub(60)..] {
                    let _ = writeln!(text, "{line}");
                }
            }
        }
        for (name, tech) in CLIENT_SERVICES.iter().zip(&self.techs) {
            let all = tech.client.service_log();
            let saved =
                std::env::temp_dir().join(format!("ferry-soak-{}-ferry-{}.log", self.seed, tech.user.name));
            let _ = std::fs::write(&saved, &all);
            let lines: Vec<&str> = all.lines().filter(|l| !l.contains("DEBUG")).collect();
            let _ = writeln!(text, "--- {name} (last 30 lines above debug; all in {}) ---", saved.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                let _ = writeln!(text, "{line}");
            }
        }
        if let Some(database) = &self.database {
            let all = database.log();
            let saved = std::env::temp_dir().join(format!("ferry-soak-{}-postgres.log", self.seed));
            let _ = std::fs::write(&saved, &all);
            let lines: Vec<&str> = all.lines().collect();
            let _ = writeln!(text, "--- PostgreSQL (last 30 lines; all in {}) ---", saved.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                let _ = writeln!(text, "{line}");
            }
        }
        let _ = write!(text, "ferry-soak: BREACH: {breach}");
        text
    }

    fn drive(&mut self, duration: Duration) -> Outcome {
        let mut deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if self.rng.chance(25) {
                // The workload waits through an outage of the cloud: its
                // time does not count, so that a short run still drives
                // sessions. A step of the gateway's clock comes first, so
                // that it may hold through the outage.
                self.maybe_clock_step()?;
                deadline += self.maybe_outage()?;
                let waited = self.site_recovery_time;
                self.fault()?;
                deadline += self.site_recovery_time.saturating_sub(waited);
            } else {
                let tech = self.rng.below(self.techs.len() as u64) as usize;
                self.step(tech)?;
            }
            self.clock_tick()?;
            self.check_always()?;
        }
        self.set_clock_right()
    }

    /// What holds after every step: no lab service that no session
    /// whitelists has seen a connection, and every daemon runs.
    pub fn check_always(&mut self) -> Outcome {
        for g in 0..self.gateways.len() {
            let addrs = self.world.site(g).addrs;
            for (ip, port) in [(addrs.target_a_ip, OTHER_HTTP_PORT), (addrs.target_b_ip, OTHER_ECHO_PORT)] {
                self.stats.checks += 1;
                let seen = self.world.service_connections(ip, port).unwrap_or(0);
                if seen != 0 {
                    return Err(format!(
                        "{ip}:{port} (gateway {}), which no session whitelists, accepted {seen} connections",
                        g + 1
                    ));
                }
            }
            self.stats.checks += 1;
            let arrived = self.gateways[g].udp.forbidden_arrivals();
            if arrived != 0 {
                return Err(format!(
                    "udp {}:{UDP_OTHER_PORT} (gateway {}), which no session whitelists, received {arrived} datagrams",
                    addrs.target_b_ip,
                    g + 1
                ));
            }
            self.stats.checks += 1;
            let pinged = self.gateways[g].icmp.arrivals()?;
            if pinged != 0 {
                return Err(format!(
                    "{} (gateway {}), which no session allows ICMP, received {pinged} echo requests",
                    addrs.target_b_ip,
                    g + 1
                ));
            }
        }
        let mut exited = None;
        for (name, process) in self.relay_processes() {
            if let Some(status) = process.as_mut().and_then(|p| p.try_status()) {
                exited = Some(format!("{name} exited by itself: {status}"));
            }
        }
        self.stats.checks += self.world.relay_count() as u64;
        if let Some(exited) = exited {
            return Err(exited);
        }
        let replicas = self.world.cloud_replicas.iter_mut().map(|(port, p)| (cloud::replica_name(*port), p));
        let gateways = self.gateways.len();
        let (first_gateway, extra_gateways) = (&mut self.world.gateway, &mut self.world.extra_sites);
        let gateways = std::iter::once(first_gateway)
            .chain(extra_gateways.iter_mut().map(|node| &mut node.gateway))
            .take(gateways)
            .enumerate()
            .map(|(g, process)| (GATEWAY_DAEMONS[g], process));
        for (name, process) in
            [("ferry-cloud", &mut self.world.cloud)].into_iter().chain(gateways).chain(replicas)
        {
            self.stats.checks += 1;
            if let Some(status) = process.as_mut().and_then(|p| p.try_status()) {
                return Err(format!("{name} exited by itself: {status}"));
            }
        }
        for (name, tech) in CLIENT_SERVICES.into_iter().zip(&mut self.techs) {
            self.stats.checks += 1;
            if let Some(status) = tech.client.service().and_then(|p| p.try_status()) {
                return Err(format!("{name} exited by itself: {status}"));
            }
        }
        self.check_machine_net()?;
        self.sample_usage();
        Ok(())
    }

    pub fn sample_usage(&mut self) {
        let first = if self.database.is_some() { cloud::replica_name(CLOUD_PORT) } else { "ferry-cloud" };
        let replicas = self.world.cloud_replicas.iter().map(|(port, p)| (cloud::replica_name(*port), p));
        let gateways = (0..self.gateways.len())
            .map(|g| (GATEWAY_DAEMONS[g], self.world.gateway_process_at(g)))
            .collect::<Vec<_>>();
        let mut pids: Vec<(&'static str, u32)> = [(first, self.world.cloud.as_ref())]
            .into_iter()
            .chain(gateways)
            .chain(replicas.map(|(name, process)| (name, process.as_ref())))
            .filter_map(|(name, process)| Some((name, process?.pid())))
            .collect();
        for (name, process) in self.relay_processes() {
            if let Some(process) = process {
                pids.push((name, process.pid()));
            }
        }
        if let Some(pid) = self.database.as_ref().and_then(|d| d.pid().ok()) {
            pids.push((POSTMASTER, pid));
        }
        for (name, tech) in CLIENT_SERVICES.into_iter().zip(&mut self.techs) {
            if let Some(service) = tech.client.service() {
                pids.push((name, service.pid()));
            }
        }
        for (name, pid) in pids {
            let Some(now) = usage::of(pid) else { continue };
            let entry = self.usage.entry(name).or_insert((now, now, now, pid));
            if entry.3 != pid {
                *entry = (entry.0, now, now, pid);
            }
            entry.2 = now;
        }
    }

    /// Waits until the cloud shows the gateway online with the switch where
    /// the workload left it, and both relays online: what every fault must
    /// come back to.
    pub fn settle(&mut self, after: &str) -> Outcome {
        self.settle_within(after, Duration::from_secs(60))
    }

    /// [`settle`](Self::settle) within `bound`.
    pub fn settle_within(&mut self, after: &str, bound: Duration) -> Outcome {
        let wanted: Vec<(u64, bool)> = self.gateways.iter().map(|g| (g.id, g.switch_on)).collect();
        let world = &self.world;
        let mut seen = String::new();
        let back = poll(bound, || {
            let mut all = true;
            let mut views = Vec::new();
            for (g, (gateway_id, switch_on)) in wanted.iter().enumerate() {
                let gateway = world.try_api_from(
                    &world.office_ns,
                    "GET",
                    &format!("/api/v1/gateways/{gateway_id}"),
                    world.admin_token.lock().unwrap().as_deref(),
                    Value::Null,
                );
                all &= matches!(&gateway, Ok((200, view))
                    if view["last_seen"]["online"] == true && view["last_seen"]["switch_on"] == *switch_on);
                views.push(format!(
                    "gateway {}'s last_seen (switch {switch_on} wanted): {}",
                    g + 1,
                    gateway.as_ref().map_or_else(
                        |e| e.to_string(),
                        |(status, view)| format!("{status} {}", view["last_seen"])
                    )
                ));
            }
            let (relays_ok, relays) = self.relays_online();
            seen = format!("{}; {relays}", views.join("; "));
            all && relays_ok
        });
        self.stats.checks += 1;
        if !back {
            return Err(format!(
                "{bound:?} after {after}, the cloud does not show every gateway online with its switch where the \
                 workload left it and both relays online ({seen})"
            ));
        }
        Ok(())
    }

    /// The end: every session ended, then no leaks, an intact audit chain
    /// with every transition, and flat daemons.
    fn finish(&mut self) -> Outcome {
        self.event("the end: ending every live session".into());
        for tech in 0..self.techs.len() {
            self.end_if_live(tech)?;
        }
        self.check_always()?;
        self.check_no_leaks()?;
        self.check_clients_clean()?;
        self.check_audit()?;
        self.check_acked("the end")?;
        self.check_usage()?;
        self.check_machine_net_all()?;
        Ok(())
    }

    /// Nothing of an ended session is left anywhere: the gateway's peers,
    /// guard indices, sessions and eBPF maps (whitelist, peers, flows), the
    /// relay's allocations and bindings, and the cloud's live sessions and
    /// tunnel subnets. A breach names what is left.
    fn check_no_leaks(&mut self) -> Outcome {
        let world = &self.world;
        let gateways = self.gateways.len();
        let gateway_pids: Vec<Option<u32>> =
            (0..gateways).map(|g| world.gateway_process_at(g).map(|p| p.pid())).collect();
        let mut last = String::new();
        let clean = poll(Duration::from_secs(30), || {
            let cloud =
                http_get_path(&world.office_ns, CLOUD_IP, CLOUD_PORT, "/metrics", Duration::from_secs(5))
                    .unwrap_or_default();
            let mut values = vec![
                ("cloud sessions_live".to_string(), metric_value(&cloud, "ferry_cloud_sessions_live")),
                ("cloud subnets_held".to_string(), metric_value(&cloud, "ferry_cloud_subnets_held")),
            ];
            let mut listed = String::new();
            for (g, gateway_pid) in gateway_pids.iter().enumerate() {
                let name = format!("gateway {}", g + 1);
                let gateway = world.try_gateway_metrics_at(g).unwrap_or_default();
                let sessions = world.gateway_sessions_at(g);
                values.extend([
                    (
                        format!("{name} peers_connected"),
                        metric_value(&gateway, "ferry_gateway_peers_connected"),
                    ),
                    (format!("{name} guard_indices"), metric_value(&gateway, "ferry_gateway_guard_indices")),
                    (format!("{name} sessions --json"), sessions_count(&sessions) as f64),
                ]);
                if !gateway.contains("ferry_gateway_guard_indices") {
                    values.push((format!("{name} /metrics without guard_indices"), 1.0));
                }
                if sessions_count(&sessions) > 0 {
                    listed += &format!(" ({name}: {sessions})");
                }
                match gateway_pid.map(|pid| maps::entries(pid, &maps::GATEWAY_EMPTY_AT_END)) {
                    Some(Ok(counts)) => {
                        for map in maps::GATEWAY_EMPTY_AT_END {
                            match counts.get(map) {
                                Some(&n) => values.push((format!("{name} map {map}"), n as f64)),
                                None => values.push((format!("{name} map {map} not found"), 1.0)),
                            }
                        }
                    }
                    Some(Err(e)) => values.push((format!("{name} maps unreadable ({e})"), 1.0)),
                    None => values.push((format!("no {name} process"), 1.0)),
                }
            }
            values.extend(self.relay_leak_values());
            // A metric the cloud does not export reads 0: its absence must
            // not pass for a clean store.
            if !cloud.contains("ferry_cloud_subnets_held") {
                values.push(("cloud /metrics without subnets_held".to_string(), 1.0));
            }
            last = values.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ") + &listed;
            values.iter().all(|(_, v)| *v == 0.0)
        });
        // Per gateway: its three metrics and its maps.
        let per_gateway = 3 + maps::GATEWAY_EMPTY_AT_END.len() as u64;
        self.stats.checks += 2 + per_gateway * gateways as u64 + 2 * self.world.relay_count() as u64;
        self.event(format!("after every session ended: {last}"));
        if !clean {
            return Err(format!("30 s after every session ended, something is left: {last}"));
        }
        Ok(())
    }

    fn check_audit(&mut self) -> Outcome {
        let (status, report) = self.world.admin("GET", "/api/v1/audit/verify", Value::Null);
        self.stats.checks += 1;
        if status != 200 || report["intact"] != true {
            return Err(format!("GET /api/v1/audit/verify: {status} {report}"));
        }
        self.event(format!("audit chain intact: {} entries", report["entries"]));
        let entries = self.world.audit("");
        let mut missing = Vec::new();
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for e in &entries {
            if e["allowed"] == true
                && let (Some(s), Some(a)) = (e["session"].as_str(), e["action"].as_str())
            {
                *seen.entry((s.to_string(), a.to_string())).or_default() += 1;
            }
        }
        let mut wanted: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (session, action) in &self.transitions {
            *wanted.entry((session.to_string(), action.to_string())).or_default() += 1;
        }
        for (key, n) in &wanted {
            self.stats.checks += 1;
            let have = seen.get(key).copied().unwrap_or(0);
            if have < *n {
                let of_session: Vec<String> = entries
                    .iter()
                    .filter(|e| e["session"].as_str() == Some(key.0.as_str()))
                    .map(|e| {
                        format!("{} {} allowed={} {}", e["actor"], e["action"], e["allowed"], e["detail"])
                    })
                    .collect();
                missing.push(format!(
                    "session {} {}: {have} of {n} (its entries: {})",
                    key.0,
                    key.1,
                    of_session.join(", ")
                ));
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "audit entries missing for transitions the workload made: {}",
                missing.join("; ")
            ));
        }
        self.event(format!(
            "the audit holds all {} session transitions the workload made",
            self.transitions.len()
        ));
        Ok(())
    }

    fn check_usage(&mut self) -> Outcome {
        self.sample_usage();
        for name in DAEMONS.into_iter().chain(CLIENT_SERVICES) {
            let Some((first, _, last, _)) = self.usage.get(name).copied() else { continue };
            self.stats.checks += 1;
            if !usage::within_bound(first, last) {
                return Err(format!(
                    "{name} grew from {} KiB RSS, {} fds to {} KiB, {} fds",
                    first.rss_kib, first.fds, last.rss_kib, last.fds
                ));
            }
        }
        Ok(())
    }
}

/// The relay's health as the cloud shows it (through either replica), or
/// what the answer was; never a panic (the database may be restarting).
pub fn relay_health(world: &World, id: u64) -> Value {
    let token = world.admin_token.lock().unwrap().clone();
    let mut answer =
        world.try_api_from(&world.office_ns, "GET", "/api/v1/relays", token.as_deref(), Value::Null);
    if matches!(answer, Ok((401, _))) {
        // The admin's token expired: log in again, if the cloud lets us now.
        let login = json!({"name": "admin", "password": ADMIN_PASSWORD});
        if let Ok((200, session)) =
            world.try_api_from(&world.office_ns, "POST", "/api/v1/auth/login", None, login)
            && let Some(token) = session["access_token"].as_str()
        {
            *world.admin_token.lock().unwrap() = Some(token.to_string());
            answer = world.try_api_from(&world.office_ns, "GET", "/api/v1/relays", Some(token), Value::Null);
        }
    }
    match answer {
        Ok((200, relays)) => relays
            .as_array()
            .and_then(|all| all.iter().find(|r| r["id"] == id))
            .map(|r| r["health"].clone())
            .unwrap_or_default(),
        Ok((status, body)) => json!({"answer": format!("{status} {body}")}),
        Err(e) => json!({"answer": e}),
    }
}

/// Sessions in `sessions --json` (a list, or an object with one).
fn sessions_count(sessions: &Value) -> usize {
    match sessions {
        Value::Array(list) => list.len(),
        Value::Object(map) => map.get("sessions").and_then(Value::as_array).map_or(0, Vec::len),
        _ => 0,
    }
}
