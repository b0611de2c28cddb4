//! The technicians' laptops at the end: every tunnel of the `ferry` client
//! went down by itself (its watch on the configuration at the cloud, or its
//! own expiry timer), and nothing of any client is left in the namespace:
//! no TUN device (the client's or a wireguard-go's) and no policy rule of
//! the client's.

use std::time::Duration;

use ferry_world::poll;

use crate::soak::{Outcome, Soak};

/// How long the client may take to learn that its sessions ended: the
/// docs promise "the moment it ends there" with the cloud reachable; a
/// watch whose stream died silently (the cloud's outage) notices after 45 s
/// of quiet and retries with a back-off of at most 30 s.
pub const CLIENT_LEARNS: Duration = Duration::from_secs(90);

/// The priority of the client's policy rules (docs: `ip rule` shows them).
const RULE_PRIORITY: &str = "5210:";

impl Soak {
    pub fn check_clients_clean(&mut self) -> Outcome {
        let mut last = String::new();
        let techs = &self.techs;
        let clean = poll(CLIENT_LEARNS, || {
            let mut left = Vec::new();
            for tech in techs {
                let name = &tech.user.name;
                match tech.client.status() {
                    Ok(all) => {
                        for up in all.iter().filter(|t| t["ended"].is_null()) {
                            left.push(format!(
                                "{name}: ferry tunnel to session {} (configuration {}) still up",
                                up["session_id"], up["config_id"]
                            ));
                        }
                    }
                    Err(e) => left.push(format!("{name}: ferry status: {e}")),
                }
                match tech.ns.ip(&["-o", "link", "show", "type", "tun"]) {
                    Ok(links) => {
                        for link in links.lines().filter(|l| !l.trim().is_empty()) {
                            let device = link.split(':').nth(1).unwrap_or(link).trim();
                            left.push(format!("{name}: TUN device {device}"));
                        }
                    }
                    Err(e) => left.push(format!("{name}: ip link: {e}")),
                }
                match tech.ns.ip(&["rule", "show"]) {
                    Ok(rules) => {
                        for rule in rules.lines().filter(|l| l.starts_with(RULE_PRIORITY)) {
                            left.push(format!("{name}: policy rule {rule}"));
                        }
                    }
                    Err(e) => left.push(format!("{name}: ip rule: {e}")),
                }
            }
            last = left.join("; ");
            left.is_empty()
        });
        self.stats.checks += 3 * self.techs.len() as u64;
        if !clean {
            return Err(format!(
                "{CLIENT_LEARNS:?} after every session ended, a technician's laptop holds: {last}"
            ));
        }
        let mut ended = Vec::new();
        for tech in &self.techs {
            let listed = tech.client.status().unwrap_or_default();
            ended.extend(listed.iter().filter_map(|t| t["ended"]["reason"].as_str().map(str::to_string)));
        }
        self.event(format!(
            "the technicians' laptops: no ferry tunnel up, no TUN device, no client rule (the client's last tunnels went down: {})",
            if ended.is_empty() { "none listed".to_string() } else { ended.join(", ") }
        ));
        Ok(())
    }
}
