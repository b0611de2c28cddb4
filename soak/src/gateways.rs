//! The gateways (issue 18: several, behind different NATs): one per
//! customer site of the world, each with its own machine network, capture,
//! switch and services on its machines. Sessions are spread over them, and
//! the faults that touch a site (its gateway killed, its clock stepped, its
//! link cut or impaired, its NAT's conntrack flushed) pick one; every
//! check that concerns "the gateway" runs for each.

use std::time::Instant;

use ferry_lab::Nat;
use ferry_world::{ECHO_PORT, HTTP_PORT, SITES, Site, World};
use serde_json::{Value, json};

use crate::{
    machine_net::{self, MachineNet},
    ping,
    recovery::Carrying,
    soak::{Outcome, Soak},
    udp::{self, UDP_ECHO_PORT},
};

/// Which gateway each session goes to and which one a fault on a site
/// picks: a stream of its own, so that the others draw as they did with
/// one gateway. The schedule still differs from one gateway's after a
/// switch-off or a fault that touches one gateway's sessions only (who
/// has a session then decides the later draws): a replay takes the same
/// `--gateways`.
pub const GATEWAY_STREAM: u64 = 0x9a7e_3a95_0003;

/// The sites in the order `--gateways` takes them: the first behind a
/// cone NAT (the one the world always has), the second behind a symmetric
/// NAT (hole punching towards it fails, as from a technician behind one:
/// those sessions take a relay), the third on a public address.
pub const SITE_KINDS: [Site; 3] = [Site::BehindNat(Nat::Cone), Site::BehindNat(Nat::Symmetric), Site::Public];
pub const MIN_GATEWAYS: usize = 1;
pub const MAX_GATEWAYS: usize = SITE_KINDS.len();

/// The gateways as the table and the watch on memory and descriptors call
/// them, by index (the first as before there were others).
pub const GATEWAY_DAEMONS: [&str; MAX_GATEWAYS] = ["ferry-gateway", "ferry-gateway-2", "ferry-gateway-3"];

/// How the table names a site's NAT.
pub fn site_short(index: usize) -> &'static str {
    match SITE_KINDS[index] {
        Site::BehindNat(Nat::Cone) => "cone NAT",
        Site::BehindNat(Nat::Symmetric) => "symmetric NAT",
        Site::BehindNat(Nat::TcpOnly443) => "TCP 443 only",
        Site::Public => "public",
    }
}

/// How a site is described in the log.
pub fn site_label(index: usize) -> &'static str {
    match SITE_KINDS[index] {
        Site::BehindNat(Nat::Cone) => "behind a cone NAT",
        Site::BehindNat(Nat::Symmetric) => "behind a symmetric NAT",
        Site::BehindNat(Nat::TcpOnly443) => "behind a TCP-443-only firewall",
        Site::Public => "on a public address",
    }
}

/// The targets each session whitelists, at site `index`'s machines: HTTP
/// on target-a, TCP and UDP echo on target-b, ICMP echo to target-a.
pub fn targets(index: usize) -> Value {
    let addrs = SITES[index];
    json!([
        {"name": "plc-web", "address": addrs.target_a_ip, "protocol": "tcp",
         "ports": [{"first": HTTP_PORT, "last": HTTP_PORT}]},
        {"name": "echo", "address": addrs.target_b_ip, "protocol": "tcp",
         "ports": [{"first": ECHO_PORT, "last": ECHO_PORT}]},
        {"name": "udp-echo", "address": addrs.target_b_ip, "protocol": "udp",
         "ports": [{"first": UDP_ECHO_PORT, "last": UDP_ECHO_PORT}]},
        {"name": "plc-ping", "address": addrs.target_a_ip, "protocol": "icmp"},
    ])
}

/// One gateway of the run.
pub struct Gateway {
    /// Its site in the world (0 is the first).
    pub index: usize,
    /// Its id at the cloud.
    pub id: u64,
    /// Where the workload left its customer's switch.
    pub switch_on: bool,
    /// The capture on its machine network and the sessions' history it is
    /// checked against.
    pub machine_net: MachineNet,
    /// UDP echo and the counter on a port no session whitelists, on its
    /// target-b.
    pub udp: udp::Services,
    /// ICMP echo requests arriving at its target-b, which no entry allows.
    pub icmp: ping::Watch,
    /// When it last started again after a kill.
    pub restarted_at: Option<Instant>,
    /// When its wall clock was last stepped (or set right).
    pub clock_stepped_at: Option<Instant>,
}

impl Gateway {
    /// Sets site `index` up: the capture on its machine network, the
    /// gateway at the cloud, the services on its target-b, then the
    /// gateway enrolled, started and its switch on, online at the cloud.
    pub fn start(world: &mut World, index: usize) -> Gateway {
        let targets = targets(index);
        let machine_net = machine_net::start(world, index, &targets).expect("the machine network's capture");
        let name = if index == 0 { "soak-press".to_string() } else { format!("soak-press-{}", index + 1) };
        let record = world.create_gateway_with(&name, &format!("customer plant {}", index + 1), targets);
        let site = world.site(index);
        let (target_b, target_b_ip) = (site.target_b.clone(), site.addrs.target_b_ip);
        let udp = udp::Services::start(&target_b, target_b_ip).expect("the UDP services on target-b");
        let icmp = ping::Watch::start(&target_b).expect("the ICMP counter on target-b");
        world.enroll_at(index, &record.enrolment_token);
        world.start_gateway_at(index);
        world.remote_at(index, "on");
        world.wait_gateway_at_cloud(record.id, true);
        Gateway {
            index,
            id: record.id,
            switch_on: true,
            machine_net,
            udp,
            icmp,
            restarted_at: None,
            clock_stepped_at: None,
        }
    }
}

impl Soak {
    /// A gateway for the next session, or a fault on a site, from the
    /// gateways' stream.
    pub fn pick_gateway(&mut self) -> usize {
        self.gateway_pick.below(self.gateways.len() as u64) as usize
    }

    /// A gateway behind a NAT router (for the conntrack flush), from the
    /// gateways' stream; none (and no draw) if no site has a NAT router.
    pub fn pick_gateway_behind_nat(&mut self) -> Option<usize> {
        let behind: Vec<usize> =
            (0..self.gateways.len()).filter(|&g| self.world.site(g).router.is_some()).collect();
        if behind.is_empty() {
            return None;
        }
        Some(behind[self.gateway_pick.below(behind.len() as u64) as usize])
    }

    /// "gateway 2 (behind a symmetric NAT)", for the log.
    pub fn gateway_label(g: usize) -> String {
        format!("gateway {} ({})", g + 1, site_label(g))
    }

    /// SIGKILL of gateway `g` and its restart after 0.1 to 3 s, the capture
    /// told when its daemon was down. Meanwhile the sessions of `elsewhere`
    /// (on other gateways) must answer an echo: the gateway stays down for
    /// the drawn time or until those checks end, whichever is later (each
    /// echo may take up to [`crate::recovery::UNTOUCHED_BOUND`]).
    pub fn kill_gateway(&mut self, g: usize, elsewhere: &[Carrying], when: &str) -> Outcome {
        // Its own sessions must come back once it runs again (it restores
        // them from its data folder; their keys are new handshakes).
        let here = self.carrying_at(g);
        self.event(format!(
            "fault: SIGKILL {}; {} of its sessions carrying traffic",
            Self::gateway_label(g),
            here.len()
        ));
        *self.stats.gateway_kills.entry(g).or_default() += 1;
        self.gateways[g].machine_net.history.gateway_killed(Instant::now());
        self.world.kill_gateway_at(g);
        let killed = Instant::now();
        let down = std::time::Duration::from_millis(self.rng.between(100, 3000));
        self.check_other_sites(elsewhere, when)?;
        std::thread::sleep(down.saturating_sub(killed.elapsed()));
        let was_down = killed.elapsed();
        self.world.start_gateway_at(g);
        self.gateways[g].machine_net.history.gateway_ready(Instant::now());
        self.gateways[g].restarted_at = Some(Instant::now());
        self.event(format!(
            "fault: gateway {} restarted, started {:.1}s after the kill ({} ms drawn)",
            g + 1,
            was_down.as_secs_f64(),
            down.as_millis()
        ));
        let running = Instant::now();
        self.check_site_recovery(&here, running, &format!("gateway {} ran again", g + 1), false)
    }

    /// The live-path check across sites: while a fault (or the switch)
    /// cuts one site's sessions, every session of `elsewhere` (on the
    /// other gateways, carrying traffic just before) answers an echo. Its
    /// own counters, so that the table shows whether it ran: a fault with
    /// nothing carrying elsewhere checks nothing and counts as such.
    pub fn check_other_sites(&mut self, elsewhere: &[Carrying], when: &str) -> Outcome {
        if self.gateways.len() < 2 {
            return Ok(());
        }
        if elsewhere.is_empty() {
            self.stats.cross_site.faults_nothing_elsewhere += 1;
            self.event(format!("no session on another gateway carrying traffic to check {when}"));
            return Ok(());
        }
        self.stats.cross_site.faults_with_sessions += 1;
        self.check_untouched(elsewhere, when)?;
        self.stats.cross_site.echoes += elsewhere.len() as u64;
        Ok(())
    }

    /// Each gateway's `ferry_gateway_cloud_connected`: whether all are 1,
    /// and the values.
    pub fn gateways_connected(&self) -> (bool, String) {
        let mut all = true;
        let mut seen = Vec::new();
        for g in 0..self.gateways.len() {
            let metrics = self.world.try_gateway_metrics_at(g).unwrap_or_default();
            let connected = ferry_world::metric_value(&metrics, "ferry_gateway_cloud_connected");
            all &= connected == 1.0;
            seen.push(format!("gateway {} cloud_connected {connected}", g + 1));
        }
        (all, seen.join(", "))
    }
}
