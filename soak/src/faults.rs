//! The faults, seeded: daemons killed with SIGKILL and restarted, the
//! site's uplink down and up, the site NAT's conntrack table flushed, and
//! loss and delay with netem on the site's uplink.

use std::time::Duration;

use crate::soak::{Outcome, Soak};

/// The kinds, as the table names them.
pub const KINDS: [&str; 6] =
    ["kill cloud", "kill relay", "kill gateway", "link down/up", "conntrack flush", "loss (+delay)"];

impl Soak {
    /// One fault of a seeded kind; then waits until the system is back
    /// (gateway and relay online at the cloud).
    pub fn fault(&mut self) -> Outcome {
        let kind = KINDS[self.rng.below(KINDS.len() as u64) as usize];
        *self.stats.faults.entry(kind).or_default() += 1;
        let router_ns = self.world.site_router().ns.clone();
        let wan = self.world.site_router().wan_if.clone();
        match kind {
            // On PostgreSQL one of two replicas, or the database (cloud.rs).
            "kill cloud" => self.kill_cloud()?,
            "kill relay" => {
                let carrying = self.carrying();
                if !carrying.is_empty() {
                    // Idle peers, as the soak found them: a gateway with
                    // data just sent would re-initiate a handshake on its
                    // own and hide a relay that forgot its bindings.
                    std::thread::sleep(Duration::from_secs(3));
                }
                self.event(format!(
                    "fault: SIGKILL the relay ({} sessions carrying traffic)",
                    carrying.len()
                ));
                self.world.kill_relay();
                std::thread::sleep(Duration::from_millis(self.rng.between(100, 3000)));
                self.world.restart_relay();
                let running_again = std::time::Instant::now();
                self.event("fault: the relay restarted".into());
                self.check_relay_recovery(&carrying, running_again)?;
            }
            "kill gateway" => {
                self.event("fault: SIGKILL the gateway".into());
                self.world.kill_gateway();
                std::thread::sleep(Duration::from_millis(self.rng.between(100, 3000)));
                self.world.start_gateway();
                self.event("fault: the gateway restarted".into());
            }
            "link down/up" => {
                let down = self.rng.between(1, 5);
                self.event(format!("fault: the site router's WAN link down for {down}s"));
                router_ns.ip(&["link", "set", &wan, "down"]).map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_secs(down));
                router_ns.ip(&["link", "set", &wan, "up"]).map_err(|e| e.to_string())?;
                // Setting the link down took its routes with it.
                router_ns
                    .ip(&["route", "replace", "default", "via", "198.51.100.1"])
                    .map_err(|e| e.to_string())?;
                self.event("fault: the link is up again".into());
            }
            "conntrack flush" => {
                let out = router_ns.output("conntrack", &["-F"]).map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!("conntrack -F: {}", String::from_utf8_lossy(&out.stderr)));
                }
                self.event("fault: the site NAT's conntrack table flushed".into());
            }
            _ => {
                let (loss, delay, hold) =
                    (self.rng.between(1, 10), self.rng.between(10, 200), self.rng.between(2, 8));
                let netem = router_ns.output(
                    "tc",
                    &[
                        "qdisc",
                        "replace",
                        "dev",
                        &wan,
                        "root",
                        "netem",
                        "loss",
                        &format!("{loss}%"),
                        "delay",
                        &format!("{delay}ms"),
                    ],
                );
                let with_netem = netem.is_ok_and(|out| out.status.success());
                if with_netem {
                    self.event(format!(
                        "fault: netem on the site's WAN link: {loss}% loss, {delay}ms delay, {hold}s"
                    ));
                } else {
                    // A kernel without sch_netem: the loss alone, from
                    // nftables' random numbers, both ways through the router.
                    let rules = format!(
                        "add table ip soak_loss; add chain ip soak_loss lossy {{ type filter hook forward priority -10; }}; \
                         add rule ip soak_loss lossy numgen random mod 100 < {loss} drop"
                    );
                    router_ns.exec("nft", &[&rules]).map_err(|e| e.to_string())?;
                    self.event(format!("fault: {loss}% loss through the site router for {hold}s (nftables; no netem in this kernel)"));
                }
                std::thread::sleep(Duration::from_secs(hold));
                if with_netem {
                    router_ns
                        .exec("tc", &["qdisc", "del", "dev", &wan, "root"])
                        .map_err(|e| e.to_string())?;
                } else {
                    router_ns.exec("nft", &["delete table ip soak_loss"]).map_err(|e| e.to_string())?;
                }
                self.event("fault: the loss removed".into());
            }
        }
        self.settle(kind)?;
        self.event(format!("after {kind}: gateway and relay online at the cloud again"));
        if kind == "kill cloud" {
            self.check_acked(kind)?;
        }
        Ok(())
    }
}
