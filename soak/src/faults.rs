//! The faults, seeded: daemons killed with SIGKILL and restarted, a site's
//! uplink down and up, a site NAT's conntrack table flushed, and loss and
//! delay on a site's uplink (netem, or the lab's delay line). Which site
//! (and gateway) comes from the gateways' stream (crate::gateways); on a
//! public site the link is the internet router's end of the site's.

use std::time::Duration;

use ferry_lab::delay::{DelayLine, Impairment};

use crate::soak::{Outcome, Soak};

/// The kinds, as the table names them.
pub const KINDS: [&str; 6] =
    ["kill cloud", "kill relay", "kill gateway", "link down/up", "conntrack flush", "loss (+delay)"];

impl Soak {
    /// One fault of a seeded kind; then waits until the system is back
    /// (gateway and both relays online at the cloud).
    pub fn fault(&mut self) -> Outcome {
        let kind = KINDS[self.rng.below(KINDS.len() as u64) as usize];
        // The site a fault on a site takes (the gateways' stream; with one
        // gateway, always the first).
        let site = match kind {
            "kill cloud" | "kill relay" => None,
            "conntrack flush" => match self.pick_gateway_behind_nat() {
                Some(g) => Some(g),
                None => {
                    // No site behind a NAT router (only a public one; the
                    // first site, always there, has one today): nothing to
                    // flush, so no fault.
                    self.event("fault: conntrack flush skipped, no site is behind a NAT".into());
                    return Ok(());
                }
            },
            _ => Some(self.pick_gateway()),
        };
        *self.stats.faults.entry(kind).or_default() += 1;
        if let Some(g) = site
            && kind != "kill gateway"
        {
            *self.stats.site_faults.entry(g).or_default() += 1;
        }
        let (link_ns, wan, default_via) = match site {
            Some(g) => {
                let site = self.world.site(g);
                let (ns, wan, via) = site.wan_link();
                (ns.clone(), wan.to_string(), via)
            }
            None => (self.world.inet.clone(), String::new(), None),
        };
        let g = site.unwrap_or(0);
        let label = Self::gateway_label(g);
        // The sessions on the other gateways carrying traffic: a fault that
        // cuts one site's path leaves theirs alone (the live-path
        // invariant), checked while it lasts (check_other_sites; the fault
        // lasts until those checks end, longer than drawn if they take
        // longer).
        let elsewhere = match (kind, site) {
            ("kill gateway" | "link down/up" | "conntrack flush", Some(g)) if self.gateways.len() > 1 => {
                self.carrying().into_iter().filter(|c| c.gateway != g).collect()
            }
            _ => Vec::new(),
        };
        let off_its_path = match kind {
            "kill gateway" => format!("while {label} was down"),
            "link down/up" => format!("while the link of {label}'s site was down"),
            _ => format!("after the conntrack flush at {label}'s site"),
        };
        match kind {
            // On PostgreSQL one of two replicas, or the database (cloud.rs).
            // The data plane needs no cloud: live sessions carry on while
            // it is down and after it restarted.
            "kill cloud" => {
                let carrying = self.carrying();
                self.kill_cloud(&carrying)?;
                self.check_untouched(&carrying, "after the cloud restarted")?;
            }
            // One of the two (see crate::relays).
            "kill relay" => self.kill_one_relay()?,
            "kill gateway" => self.kill_gateway(g, &elsewhere, &off_its_path)?,
            "link down/up" => {
                let down = self.rng.between(1, 5);
                let here = self.carrying_at(g);
                self.event(format!(
                    "fault: the WAN link of {label}'s site down for {down}s; {} of its sessions carrying traffic",
                    here.len()
                ));
                link_ns.ip(&["link", "set", &wan, "down"]).map_err(|e| e.to_string())?;
                let cut = std::time::Instant::now();
                self.check_other_sites(&elsewhere, &off_its_path)?;
                std::thread::sleep(Duration::from_secs(down).saturating_sub(cut.elapsed()));
                link_ns.ip(&["link", "set", &wan, "up"]).map_err(|e| e.to_string())?;
                let was_down = cut.elapsed();
                // Setting the link down took the NAT router's routes with it.
                if let Some(via) = default_via {
                    link_ns.ip(&["route", "replace", "default", "via", via]).map_err(|e| e.to_string())?;
                }
                let up = std::time::Instant::now();
                self.event(format!("fault: the link is up again after {:.1}s", was_down.as_secs_f64()));
                self.check_site_recovery(
                    &here,
                    up,
                    &format!("the link of {label}'s site came up again"),
                    true,
                )?;
            }
            "conntrack flush" => {
                // Its own sessions must come back (every mapping changed).
                let here = self.carrying_at(g);
                let out = link_ns.output("conntrack", &["-F"]).map_err(|e| e.to_string())?;
                let flushed = std::time::Instant::now();
                if !out.status.success() {
                    return Err(format!("conntrack -F: {}", String::from_utf8_lossy(&out.stderr)));
                }
                self.event(format!(
                    "fault: the NAT's conntrack table flushed at {label}'s site; {} of its sessions carrying traffic",
                    here.len()
                ));
                self.check_other_sites(&elsewhere, &off_its_path)?;
                self.check_site_recovery(
                    &here,
                    flushed,
                    &format!("the conntrack flush at {label}'s site"),
                    true,
                )?;
            }
            _ => {
                let (loss, delay, hold) =
                    (self.rng.between(1, 10), self.rng.between(10, 200), self.rng.between(2, 8));
                // Loss and delay slow a session's path but must not stop it:
                // an echo through each still gets through (TCP retransmits).
                let carrying = self.carrying();
                let netem = link_ns.output(
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
                let mut line = None;
                if with_netem {
                    self.event(format!(
                        "fault: netem on the WAN link of {label}'s site: {loss}% loss, {delay}ms delay, {hold}s"
                    ));
                } else {
                    // A kernel without sch_netem: the lab's delay line
                    // (NFQUEUE), both ways through the router's WAN link.
                    let impairment =
                        Impairment { loss_percent: loss as u32, delay: Duration::from_millis(delay) };
                    line = Some(
                        DelayLine::start(&link_ns, &wan, impairment, self.seed).map_err(|e| e.to_string())?,
                    );
                    self.event(format!(
                        "fault: {loss}% loss, {delay}ms delay on the WAN link of {label}'s site for {hold}s (the lab's \
                         NFQUEUE delay line; no netem in this kernel)"
                    ));
                }
                let impaired = std::time::Instant::now();
                self.check_untouched(&carrying, &format!("through {loss}% loss and {delay}ms delay"))?;
                std::thread::sleep(Duration::from_secs(hold).saturating_sub(impaired.elapsed()));
                if with_netem {
                    link_ns.exec("tc", &["qdisc", "del", "dev", &wan, "root"]).map_err(|e| e.to_string())?;
                } else if let Some(line) = line {
                    let stats = line.stop().map_err(|e| e.to_string())?;
                    self.event(format!(
                        "fault: the delay line passed {} packets and dropped {}",
                        stats.passed, stats.dropped
                    ));
                }
                self.event("fault: the loss removed".into());
            }
        }
        self.settle(kind)?;
        self.event(format!("after {kind}: every gateway and both relays online at the cloud again"));
        if kind == "kill cloud" {
            self.check_acked(kind)?;
        }
        Ok(())
    }
}
