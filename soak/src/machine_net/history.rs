//! The sessions' history as the workload records it: when each session
//! could carry traffic and what it whitelists, the switch's off intervals,
//! the gateway's daemon's down intervals.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::packet::{ICMP, L4, TCP, UDP};

/// A whitelist entry: address, protocol, ports (none for ICMP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub addr: Ipv4Addr,
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
}

impl Entry {
    /// Whether the entry admits a packet to `dst` with this protocol and
    /// destination port (ICMP: an echo request only, as the gateway does).
    pub(super) fn admits(&self, dst: Ipv4Addr, l4: &L4) -> bool {
        if self.addr != dst {
            return false;
        }
        let in_ports = |port: u16| self.ports.is_some_and(|(first, last)| (first..=last).contains(&port));
        match *l4 {
            L4::Tcp { dport, .. } => self.protocol == TCP && in_ports(dport),
            L4::Udp { dport, .. } => self.protocol == UDP && in_ports(dport),
            L4::Echo { request: true, .. } => self.protocol == ICMP,
            _ => false,
        }
    }
}

/// A session's life as the workload saw it: from the moment it could first
/// carry traffic (just before its start, or its approval when it needs
/// one) to its end (the switch's or the customer's command returning, its
/// end time, or the gateway dropping it after an end at the cloud).
#[derive(Clone, Debug)]
pub struct Life {
    pub id: u64,
    pub from: Instant,
    pub until: Option<Instant>,
    pub entries: Vec<Entry>,
}

/// The sessions' history and the switch's, as the workload records it.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The gateway's targets by name.
    targets: BTreeMap<String, Entry>,
    pub sessions: Vec<Life>,
    /// The switch's off intervals: (off, on again).
    pub switch_off: Vec<(Instant, Option<Instant>)>,
    /// When the gateway's daemon was down (killed, until its restart
    /// returned, ready): its programs went with it, and its host's kernel
    /// answers what reaches it as any host's does.
    pub gateway_down: Vec<(Instant, Option<Instant>)>,
}

impl History {
    /// A history for a gateway with these targets (as the cloud's API takes
    /// them: name, address, protocol, port ranges).
    pub fn new(targets: &Value) -> Result<History, String> {
        let mut by_name = BTreeMap::new();
        for target in targets.as_array().ok_or("targets: not a list")? {
            let field =
                |name: &str| target[name].as_str().ok_or_else(|| format!("target without {name}: {target}"));
            let name = field("name")?.to_string();
            let addr = field("address")?.parse().map_err(|e| format!("target {name}: {e}"))?;
            let protocol = match field("protocol")? {
                "tcp" => TCP,
                "udp" => UDP,
                "icmp" => ICMP,
                other => return Err(format!("target {name}: protocol {other}")),
            };
            let ports = target["ports"].as_array().and_then(|ports| {
                let first = ports.iter().filter_map(|p| p["first"].as_u64()).min()?;
                let last = ports.iter().filter_map(|p| p["last"].as_u64()).max()?;
                // One range per entry in this world; more would need a list.
                (ports.len() == 1).then_some((first as u16, last as u16))
            });
            if protocol != ICMP && ports.is_none() {
                return Err(format!("target {name}: one port range expected: {target}"));
            }
            by_name.insert(name.clone(), Entry { name, addr, protocol, ports });
        }
        Ok(History { targets: by_name, ..History::default() })
    }

    /// Session `id`, whitelisting the targets `names`, may carry traffic from
    /// `at`. A second call for the same session changes nothing.
    pub fn live(&mut self, id: u64, names: &[&str], at: Instant) {
        if self.sessions.iter().any(|s| s.id == id) {
            return;
        }
        let entries = names.iter().filter_map(|n| self.targets.get(*n).cloned()).collect();
        self.sessions.push(Life { id, from: at, until: None, entries });
    }

    /// Session `id` ended at `at` (the first end recorded counts). A
    /// session that never became live (a start refused, an approval never
    /// given) has nothing to end.
    pub fn ended(&mut self, id: u64, at: Instant) {
        if let Some(life) = self.sessions.iter_mut().find(|s| s.id == id)
            && life.until.is_none()
        {
            life.until = Some(at);
        }
    }

    pub fn switch_off(&mut self, at: Instant) {
        self.switch_off.push((at, None));
    }

    pub fn switch_on(&mut self, at: Instant) {
        if let Some((_, on)) = self.switch_off.last_mut()
            && on.is_none()
        {
            *on = Some(at);
        }
    }

    /// Just before the gateway's daemon is killed.
    pub fn gateway_killed(&mut self, at: Instant) {
        self.gateway_down.push((at, None));
    }

    /// When its restart returned (the daemon ready again).
    pub fn gateway_ready(&mut self, at: Instant) {
        if let Some((_, up)) = self.gateway_down.last_mut()
            && up.is_none()
        {
            *up = Some(at);
        }
    }

    pub(super) fn gateway_down_at(&self, at: Instant) -> bool {
        self.gateway_down.iter().any(|(down, up)| *down <= at && up.is_none_or(|up| at <= up))
    }

    /// The sessions live at `at`, the slack after an end included.
    pub(super) fn live_at(&self, at: Instant, slack: Duration) -> impl Iterator<Item = &Life> {
        self.sessions.iter().filter(move |s| s.from <= at && s.until.is_none_or(|until| at <= until + slack))
    }

    /// The switch's off interval that covers `at`, past the slack.
    pub(super) fn switched_off_at(&self, at: Instant, slack: Duration) -> Option<(Instant, Option<Instant>)> {
        self.switch_off.iter().copied().find(|(off, on)| *off + slack < at && on.is_none_or(|on| at < on))
    }
}
