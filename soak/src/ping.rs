//! ICMP echo (ping) through sessions: target-a's `plc-ping` entry allows it,
//! no entry of target-b does. An nftables counter in target-b's namespace
//! counts the echo requests that reach it: it must stay at 0.

use std::time::Duration;

use ferry_lab::Netns;

/// The nftables table of the counter in target-b.
const TABLE: &str = "soak_icmp";

/// The counter of ICMP echo requests arriving at target-b.
pub struct Watch {
    target_b: Netns,
}

impl Watch {
    pub fn start(target_b: &Netns) -> Result<Watch, String> {
        let rules = format!(
            "add table ip {TABLE}; add chain ip {TABLE} in {{ type filter hook input priority -10; }}; \
             add rule ip {TABLE} in icmp type echo-request counter"
        );
        target_b.exec("nft", &[&rules]).map_err(|e| e.to_string())?;
        Ok(Watch { target_b: target_b.clone() })
    }

    /// Echo requests that reached target-b, ever.
    pub fn arrivals(&self) -> Result<u64, String> {
        let listed = self.target_b.exec("nft", &["list", "table", "ip", TABLE]).map_err(|e| e.to_string())?;
        listed
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no counter in `nft list table ip {TABLE}`: {listed}"))
    }
}

/// One echo answered from `ip` within `wait` (ping retries each second: a
/// first handshake can eat the first packets).
pub fn answered(ns: &Netns, ip: &str, wait: Duration) -> bool {
    let seconds = wait.as_secs().max(1).to_string();
    ns.output("ping", &["-n", "-q", "-c", "1", "-W", "1", "-w", &seconds, ip])
        .is_ok_and(|out| out.status.success())
}
