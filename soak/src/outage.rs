//! The cloud unreachable for a while (issue 18: "for a minute"; here 20 to
//! 60 s, seeded, so that the short soak stays short): every packet to and
//! from the cloud's namespace dropped, silently, as a lost route or a dead
//! data centre would. The workload waits; only traffic on live sessions
//! runs, and it must keep flowing (the data plane does not depend on the
//! cloud). Afterwards the gateway and the relay must be back on their
//! control channels by themselves within [`RECONNECT_BOUND`].

use std::time::{Duration, Instant};

use ferry_world::{ECHO_PORT, echo_round_trip, eventually, http_get_path, poll};

use crate::soak::{Outcome, Soak};

/// Which fault steps bring an outage (before the fault of the first
/// stream), from a third stream of the seed so that the other two keep
/// their schedules. The constant was picked among a few so that seed 2's
/// 90 s run in CI meets an outage at its second fault step.
pub const OUTAGE_STREAM: u64 = 0x5eed_c10d_0027;
/// Chance of an outage at a fault step, in percent, unless the command
/// line says otherwise.
pub const DEFAULT_OUTAGE_PERCENT: u64 = 20;
/// From the cloud reachable again to the gateway and the relay connected
/// (their own metrics) and online at the cloud: past the gateway's 10 s
/// ping and 35 s silence limit (a channel whose segments were dropped may
/// need that long to be given up) plus its reconnect back-off.
pub const RECONNECT_BOUND: Duration = Duration::from_secs(60);
/// How long an echo through a live session may take to come back during
/// the outage (a datagram lost is retried within it).
const ECHO_BOUND: Duration = Duration::from_secs(10);
/// The nftables table that drops the cloud's traffic.
const TABLE: &str = "soak_outage";

impl Soak {
    /// At a fault step: an outage, if the third stream says so; how long
    /// it lasted.
    pub fn maybe_outage(&mut self) -> Outcome<Duration> {
        if self.outage_percent == 0 || !self.outage_rng.chance(self.outage_percent) {
            return Ok(Duration::ZERO);
        }
        let hold = Duration::from_secs(self.outage_rng.between(20, 60));
        self.cloud_outage(hold)?;
        Ok(hold)
    }

    fn cloud_outage(&mut self, hold: Duration) -> Outcome {
        *self.stats.faults.entry("cloud unreachable").or_default() += 1;
        // Sessions that may not expire before the outage and the checks
        // after it are over.
        let carrying = self.carrying_for(hold + RECONNECT_BOUND);
        let cloud_ns = self.world.cloud_ns.clone();
        let rules = format!(
            "add table inet {TABLE}; \
             add chain inet {TABLE} in {{ type filter hook input priority -10; }}; \
             add rule inet {TABLE} in iifname != \"lo\" drop; \
             add chain inet {TABLE} out {{ type filter hook output priority -10; }}; \
             add rule inet {TABLE} out oifname != \"lo\" drop"
        );
        cloud_ns.exec("nft", &[&rules]).map_err(|e| e.to_string())?;
        let began = Instant::now();
        self.event(format!(
            "fault: the cloud unreachable for {}s (its traffic dropped); {} sessions carrying traffic",
            hold.as_secs(),
            carrying.len()
        ));
        // The fault does what it says: the API does not answer (at any
        // replica).
        for addr in self.world.cloud_replica_addrs() {
            self.stats.checks += 1;
            let ip = addr.ip().to_string();
            if http_get_path(&self.world.office_ns, &ip, addr.port(), "/healthz", Duration::from_secs(2))
                .is_ok()
            {
                let _ = cloud_ns.exec("nft", &[&format!("delete table inet {TABLE}")]);
                return Err(format!("the cloud answered from the office at {addr} with its traffic dropped"));
            }
        }
        let echoes_before = self.stats.outage_echoes;
        let mut breach = None;
        while began.elapsed() < hold && breach.is_none() {
            for c in &carrying {
                let ns = self.techs[c.tech].ns.clone();
                let answered = eventually(ECHO_BOUND, || {
                    echo_round_trip(&ns, &c.echo, ECHO_PORT, Duration::from_secs(2))
                });
                self.stats.checks += 1;
                if let Err(e) = answered {
                    breach = Some(format!(
                        "session {}: no echo {:.0}s into the cloud's outage, within {ECHO_BOUND:?} ({e}): \
                         the data plane depends on the cloud",
                        c.session,
                        began.elapsed().as_secs_f64()
                    ));
                    break;
                }
                self.stats.outage_echoes += 1;
            }
            std::thread::sleep(Duration::from_secs(3).min(hold.saturating_sub(began.elapsed())));
        }
        cloud_ns.exec("nft", &[&format!("delete table inet {TABLE}")]).map_err(|e| e.to_string())?;
        let reachable = Instant::now();
        self.event(format!(
            "fault: the cloud reachable again after {:.1}s ({} echoes answered through {} live sessions meanwhile)",
            began.elapsed().as_secs_f64(),
            self.stats.outage_echoes - echoes_before,
            carrying.len()
        ));
        if let Some(breach) = breach {
            return Err(breach);
        }
        self.stats.outage_sessions += carrying.len() as u64;
        self.check_reconnected(reachable)
    }

    /// Every gateway's and both relays' control channels are up again
    /// (their own gauges) and the cloud shows them all online, within the
    /// bound.
    fn check_reconnected(&mut self, reachable: Instant) -> Outcome {
        let mut state = String::new();
        let back = poll(RECONNECT_BOUND, || {
            let (gateways_ok, gateways) = self.gateways_connected();
            let (relays_ok, relays) = self.relays_connected();
            state = format!("{gateways}, {relays}");
            gateways_ok && relays_ok
        });
        self.stats.checks += 1;
        if !back {
            return Err(format!(
                "{RECONNECT_BOUND:?} after the cloud was reachable again, the control channels are not back: {state}"
            ));
        }
        let connected = reachable.elapsed();
        let left = RECONNECT_BOUND.saturating_sub(connected);
        self.settle_within("the cloud's outage", left.max(Duration::from_secs(5)))?;
        self.event(format!(
            "after the outage: gateway and relays connected {:.1}s, online at the cloud {:.1}s after it was reachable",
            connected.as_secs_f64(),
            reachable.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}
