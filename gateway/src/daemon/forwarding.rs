//! The plan as eBPF maps: which tunnel address belongs to which live session,
//! and which proxy addresses of that session lead to which device, protocol
//! and ports. The programs do the rest; this side only writes maps and reads
//! counters.

use std::{collections::BTreeMap, net::IpAddr, net::Ipv4Addr};

use ferry_control::{
    SessionId,
    gateway::{GatewayEvent, Protocol as WireProtocol},
};
use ferry_ebpf::gateway::{ForwardingTable, Protocol, TargetSpec};

use super::policy::{Plan, PlannedSession};

/// The maps' contents for `plan`. Targets or peers that are not IPv4 are
/// skipped with a warning: the eBPF path handles IPv4 only, and the cloud
/// hands out IPv4 tunnel subnets.
pub fn table(plan: &Plan, snat: Ipv4Addr) -> ForwardingTable {
    let mut table = ForwardingTable::default();
    for session in plan.active() {
        let id = session.state.session_id.0;
        for peer in &session.live_peers {
            match peer.tunnel_address {
                IpAddr::V4(v4) => {
                    table.peers.insert(v4, id);
                }
                IpAddr::V6(v6) => tracing::warn!(session = id, %v6, "IPv6 tunnel address not forwarded"),
            }
        }
        if session.live_peers.is_empty() {
            continue;
        }
        for target in &session.state.targets {
            let (IpAddr::V4(proxy), IpAddr::V4(real)) = (target.proxy_address, target.address) else {
                tracing::warn!(session = id, target = target.name, "IPv6 target not forwarded");
                continue;
            };
            let protocol = match target.protocol {
                WireProtocol::Tcp => Protocol::Tcp,
                WireProtocol::Udp => Protocol::Udp,
                WireProtocol::Icmp => Protocol::Icmp,
                WireProtocol::Any => Protocol::Any,
            };
            let ports = target.ports.iter().map(|r| (r.first, r.last)).collect();
            table.targets.insert((id, proxy), TargetSpec { real, snat, protocol, ports });
        }
    }
    table
}

/// Per-target byte counters already reported, so that each `Bytes` event
/// carries what moved since the previous one.
#[derive(Default)]
pub struct Reported {
    /// (session, proxy) -> (to the target, from the target)
    totals: BTreeMap<(u64, Ipv4Addr), (u64, u64)>,
}

impl Reported {
    /// `Bytes` events for every target of `session` whose counters moved,
    /// read through `traffic(session, proxy) -> (to_target, from_target)`.
    pub fn deltas(
        &mut self,
        session: &PlannedSession,
        traffic: impl Fn(u64, Ipv4Addr) -> Option<(u64, u64)>,
    ) -> Vec<GatewayEvent> {
        let id = session.state.session_id.0;
        let mut events = Vec::new();
        for target in &session.state.targets {
            let IpAddr::V4(proxy) = target.proxy_address else { continue };
            let Some((to, from)) = traffic(id, proxy) else { continue };
            let last = self.totals.entry((id, proxy)).or_default();
            // Counters restart from zero when a target's map slot is
            // recreated; count from there rather than report a negative.
            let tx = to.checked_sub(last.0).unwrap_or(to);
            let rx = from.checked_sub(last.1).unwrap_or(from);
            *last = (to, from);
            if tx > 0 || rx > 0 {
                events.push(GatewayEvent::Bytes {
                    session_id: SessionId(id),
                    target: Some(target.name.clone()),
                    rx,
                    tx,
                });
            }
        }
        events
    }

    pub fn forget(&mut self, session: u64) {
        self.totals.retain(|(s, _), _| *s != session);
    }
}
