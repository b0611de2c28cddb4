//! What the run counted, and the table at the end.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    faults::KINDS,
    soak::{CLIENT_SERVICES, DAEMONS, POSTMASTER},
    usage::Usage,
    workload::Kind,
};

#[derive(Default)]
pub struct Stats {
    /// How many gateways the run has.
    pub gateways: usize,
    pub sessions: u64,
    /// Sessions by gateway (index).
    pub sessions_by_gateway: BTreeMap<usize, u64>,
    /// Tunnels by gateway and the path their traffic took ("direct",
    /// "relayed"), once per tunnel at its first use that worked.
    pub paths: BTreeMap<(usize, &'static str), u64>,
    /// Tunnels from a technician behind a symmetric NAT to the gateway
    /// behind one whose path was checked (each an invariant check; 0: the
    /// run never had one, so the check never ran).
    pub symmetric_both_checked: u64,
    /// Of those, found relayed (a direct one is a breach).
    pub symmetric_both_relayed: u64,
    /// The live-path check across sites (crate::gateways).
    pub cross_site: CrossSite,
    /// "kill gateway" faults by gateway.
    pub gateway_kills: BTreeMap<usize, u64>,
    /// Steps of a gateway's clock by gateway.
    pub clock_steps: BTreeMap<usize, u64>,
    /// Faults on a site's link or NAT (link down/up, conntrack flush, loss
    /// and delay) by gateway.
    pub site_faults: BTreeMap<usize, u64>,
    /// The customer's switch turned off, by gateway.
    pub switch_offs: BTreeMap<usize, u64>,
    /// Machine-network packets checked, by gateway.
    pub machine_packets_by_gateway: BTreeMap<usize, u64>,
    /// Sessions by the client their tunnel used ([`Kind::name`]).
    pub sessions_by_kind: BTreeMap<&'static str, u64>,
    pub starts_refused: u64,
    pub ends: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    /// Bytes the workload moved through sessions (both directions).
    pub bytes: u64,
    pub uses_ok: u64,
    /// Uses ok by the client their tunnel used ([`Kind::name`]).
    pub uses_ok_by_kind: BTreeMap<&'static str, u64>,
    /// `ferry connect` that failed (each a breach but for a session that
    /// expired meanwhile).
    pub connects_failed: u64,
    /// `ferry connect --wait 20` that returned without a first handshake.
    pub connects_without_handshake: u64,
    pub uses_failed: u64,
    pub forbidden_attempts: u64,
    /// Sessions whose traffic came back after a relay restart, by client
    /// ([`Kind::name`]; only wireguard-go's go through the relay here).
    pub relay_recoveries: BTreeMap<&'static str, u64>,
    /// Sessions back after their site's NAT forgot its mappings (a
    /// conntrack flush, the site's link down and up) or their gateway was
    /// killed, by client kind.
    pub site_recoveries: BTreeMap<&'static str, u64>,
    /// Sessions whose recovery after a flush or link fault was not checked:
    /// their gateway restarted during them and its clock was stepped.
    pub site_recoveries_not_checked: u64,
    /// Tunnels' configurations by relay (index; `None`: without a relay
    /// allocation).
    pub configs_by_relay: BTreeMap<Option<usize>, u64>,
    /// "kill relay" faults by relay (index).
    pub relay_kills: BTreeMap<usize, u64>,
    /// Sessions on the other relay that answered an echo while one was
    /// down.
    pub relay_untouched: u64,
    pub udp_echoed: u64,
    /// Pings answered through the `plc-ping` entry.
    pub pings: u64,
    /// Technicians' clients killed and started again, by kind.
    pub client_kills: BTreeMap<&'static str, u64>,
    /// Echoes answered through live sessions while the cloud was unreachable.
    pub outage_echoes: u64,
    /// Sessions that carried traffic through a whole outage of the cloud.
    pub outage_sessions: u64,
    /// Echoes answered through live sessions during and after a fault that
    /// touches no session's path (the cloud killed, a fault on another
    /// gateway's site) or only slows it (loss and delay).
    pub untouched_echoes: u64,
    /// Sessions that carried traffic on after a step of the gateway's clock
    /// (once per step: the step and its setting right count apart).
    pub clock_step_sessions: u64,
    pub checks: u64,
    /// Machine-network packets checked against the sessions' history, and
    /// how many in each class.
    pub machine_packets: (u64, BTreeMap<&'static str, u64>),
    /// Which storage the cloud ran on ([`crate::cloud::Storage::describe`]).
    pub storage: String,
    /// On PostgreSQL, the "kill cloud" steps by what they took: a replica
    /// (by name) or the database ("database restarted").
    pub cloud_kills: BTreeMap<&'static str, u64>,
    /// Requests answered 503 while the database was stopped.
    pub database_503s: u64,
    /// Reads that found an acknowledged write (every write, through every
    /// replica, after every kill of the cloud and at the end).
    pub acked_checks: u64,
    /// The acknowledged writes at the last check (per session its furthest,
    /// per user the last disabled flag, and the switch position).
    pub acked_writes: u64,
}

/// The live-path check across sites: a fault on one site (its gateway
/// killed, its link down, its NAT's conntrack flushed) or its switch off
/// leaves the sessions on the other gateways carrying traffic. Apart from
/// [`Stats::untouched_echoes`], so that the table shows whether this check
/// itself ran.
#[derive(Default)]
pub struct CrossSite {
    /// Such faults while sessions on other gateways carried traffic.
    pub faults_with_sessions: u64,
    /// Such faults with no session elsewhere carrying traffic (nothing to
    /// check).
    pub faults_nothing_elsewhere: u64,
    /// Echoes answered through those sessions during those faults.
    pub echoes: u64,
}

impl Stats {
    pub fn table(&self, usage: &BTreeMap<&'static str, (Usage, Usage, Usage, u32)>) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "\n{:<44} {:>12}", "ferry-soak", "");
        let _ = writeln!(t, "{:-<57}", "");
        let _ = writeln!(t, "storage: {}", self.storage);
        let mut row = |name: &str, value: String| {
            let _ = writeln!(t, "{name:<44} {value:>12}");
        };
        row("sessions run", self.sessions.to_string());
        for kind in [Kind::Ferry, Kind::Stock] {
            let n = self.sessions_by_kind.get(kind.name()).copied().unwrap_or(0);
            row(&format!("  with {}", kind.name()), n.to_string());
        }
        row("  starts refused", self.starts_refused.to_string());
        for (how, n) in &self.ends {
            row(&format!("  ended {how}"), n.to_string());
        }
        row("gateways", self.gateways.to_string());
        for g in 0..self.gateways {
            let of = |map: &BTreeMap<usize, u64>| map.get(&g).copied().unwrap_or(0).to_string();
            // Each row names its gateway, so that a test finds each one's.
            let n = g + 1;
            row(
                &format!("  gateway {n} ({}): sessions", crate::gateways::site_short(g)),
                of(&self.sessions_by_gateway),
            );
            for path in ["direct", "relayed"] {
                let used = self.paths.get(&(g, path)).copied().unwrap_or(0);
                row(&format!("    gateway {n}: tunnels used, {path}"), used.to_string());
            }
            row(&format!("    gateway {n}: switched off"), of(&self.switch_offs));
            row(&format!("    gateway {n}: killed"), of(&self.gateway_kills));
            row(&format!("    gateway {n}: clock stepped"), of(&self.clock_steps));
            row(&format!("    gateway {n}: link, NAT or loss faults"), of(&self.site_faults));
            row(
                &format!("    gateway {n}: machine-network packets checked"),
                of(&self.machine_packets_by_gateway),
            );
        }
        // 0 checked: no technician behind a symmetric NAT used a tunnel to
        // the gateway behind one (seed 2's run has no such technician), so
        // the check did not run.
        row("  symmetric NAT to symmetric NAT, checked", self.symmetric_both_checked.to_string());
        row("    found relayed", self.symmetric_both_relayed.to_string());
        // With one gateway there is no other site: all 0.
        row(
            "  site faults (or switch-offs), sessions elsewhere",
            self.cross_site.faults_with_sessions.to_string(),
        );
        row(
            "  site faults (or switch-offs), none elsewhere",
            self.cross_site.faults_nothing_elsewhere.to_string(),
        );
        row("  live-path echoes on other gateways during a site fault", self.cross_site.echoes.to_string());
        row("tunnels' configurations", self.configs_by_relay.values().sum::<u64>().to_string());
        for relay in [Some(0), Some(1), None] {
            let label =
                relay.map_or_else(|| "without a relay".to_string(), |i| format!("with relay {}", i + 1));
            row(&format!("  {label}"), self.configs_by_relay.get(&relay).copied().unwrap_or(0).to_string());
        }
        row("uses (whitelisted traffic) ok", self.uses_ok.to_string());
        for kind in [Kind::Ferry, Kind::Stock] {
            let n = self.uses_ok_by_kind.get(kind.name()).copied().unwrap_or(0);
            row(&format!("  ok through {}", kind.name()), n.to_string());
        }
        row("uses that failed (no invariant)", self.uses_failed.to_string());
        row("ferry connects that failed", self.connects_failed.to_string());
        row("ferry connects without a handshake in 20 s", self.connects_without_handshake.to_string());
        row("attempts at non-whitelisted ports", self.forbidden_attempts.to_string());
        row(
            "sessions recovered after a relay restart",
            self.relay_recoveries.values().sum::<u64>().to_string(),
        );
        for (kind, label) in [
            (Kind::Stock, "  wireguard-go, through the relay"),
            (Kind::Ferry, "  the ferry client, its path"),
        ] {
            row(label, self.relay_recoveries.get(kind.name()).copied().unwrap_or(0).to_string());
        }
        row(
            "sessions back after a site fault (flush, link, kill)",
            self.site_recoveries.values().sum::<u64>().to_string(),
        );
        for (kind, label) in [(Kind::Stock, "  wireguard-go"), (Kind::Ferry, "  the ferry client")] {
            row(label, self.site_recoveries.get(kind.name()).copied().unwrap_or(0).to_string());
        }
        row("  not checked (gateway restarted, clock stepped)", self.site_recoveries_not_checked.to_string());
        row("sessions on the other relay, untouched", self.relay_untouched.to_string());
        row("sessions carrying through a cloud outage", self.outage_sessions.to_string());
        row("  echoes while the cloud was unreachable", self.outage_echoes.to_string());
        row("live-path echoes (faults off their path)", self.untouched_echoes.to_string());
        row("sessions carrying on after a clock step", self.clock_step_sessions.to_string());
        row("UDP datagrams echoed", self.udp_echoed.to_string());
        row("pings answered (ICMP echo)", self.pings.to_string());
        row("bytes moved", self.bytes.to_string());
        let kills: u64 = self.client_kills.values().sum();
        let total: u64 = self.faults.values().sum::<u64>() + kills;
        row("faults injected", total.to_string());
        for kind in KINDS {
            row(&format!("  {kind}"), self.faults.get(kind).copied().unwrap_or(0).to_string());
            if kind == "kill cloud" {
                for (what, n) in &self.cloud_kills {
                    row(&format!("    {what}"), n.to_string());
                    if *what == "database restarted" {
                        row("      503s meanwhile (both replicas)", self.database_503s.to_string());
                    }
                }
            }
            if kind == "kill relay" {
                for relay in 0..2 {
                    let n = self.relay_kills.get(&relay).copied().unwrap_or(0);
                    row(&format!("    relay {}", relay + 1), n.to_string());
                }
            }
        }
        row("  kill technician's client", kills.to_string());
        for kind in [Kind::Ferry, Kind::Stock] {
            let n = self.client_kills.get(kind.name()).copied().unwrap_or(0);
            row(&format!("    {}", kind.name()), n.to_string());
        }
        row(
            "  cloud unreachable (20 to 60 s)",
            self.faults.get("cloud unreachable").copied().unwrap_or(0).to_string(),
        );
        row(
            &format!("  {} (1 min to 2 h)", crate::clock::KIND),
            self.faults.get(crate::clock::KIND).copied().unwrap_or(0).to_string(),
        );
        row("machine-network packets checked", self.machine_packets.0.to_string());
        for class in crate::machine_net::CLASSES {
            row(&format!("  {class}"), self.machine_packets.1.get(class).copied().unwrap_or(0).to_string());
        }
        row("acknowledged writes (at the end)", self.acked_writes.to_string());
        row("acknowledged writes checked", self.acked_checks.to_string());
        row("invariant checks made", self.checks.to_string());
        let _ = writeln!(t, "{:-<57}", "");
        let _ = writeln!(t, "{:<24} {:>17} {:>17}", "daemon", "start RSS KiB/fds", "end RSS KiB/fds");
        for name in DAEMONS.iter().chain(&CLIENT_SERVICES).chain(&[POSTMASTER]) {
            if let Some((first, _, last, _)) = usage.get(name) {
                let _ = writeln!(
                    t,
                    "{name:<24} {:>17} {:>17}",
                    format!("{}/{}", first.rss_kib, first.fds),
                    format!("{}/{}", last.rss_kib, last.fds)
                );
            }
        }
        t
    }
}
