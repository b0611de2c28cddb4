//! The forwarding table the daemon hands to the gateway programs: which
//! technicians' tunnel addresses belong to which session, and which targets
//! each session may reach through which proxy addresses.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use ferry_ebpf_common::gateway::{
    MAX_RANGES, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PortRange, RuleGeneration, TargetKey, TargetRule,
};

/// The protocols a whitelist entry may allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP, UDP and ICMP echo.
    #[default]
    Any,
    /// ICMP echo (ping) only.
    Icmp,
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Any => PROTO_ANY,
            Protocol::Icmp => PROTO_ICMP,
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    pub const fn from_number(number: u8) -> Option<Protocol> {
        match number {
            PROTO_ANY => Some(Protocol::Any),
            PROTO_ICMP => Some(Protocol::Icmp),
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Any => "any",
            Protocol::Icmp => "icmp",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One whitelisted target behind a proxy address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// The target's address on the machine network.
    pub real: Ipv4Addr,
    /// The gateway's LAN address that translated packets come from.
    pub snat: Ipv4Addr,
    pub protocol: Protocol,
    /// Allowed destination port ranges, inclusive; empty allows every port.
    /// They apply to TCP and UDP; ICMP echo has no ports.
    pub ports: Vec<(u16, u16)>,
}

impl TargetSpec {
    /// Whether every packet `old` allowed, this allows too (same addresses,
    /// and a protocol and ports that only widen). Only then may flows of
    /// `old` keep their replies until their next packet toward the target
    /// is checked again; a narrowing must cut them at once.
    pub fn admits_all_of(&self, old: &TargetSpec) -> bool {
        if self.real != old.real || self.snat != old.snat {
            return false;
        }
        if self.protocol != Protocol::Any && self.protocol != old.protocol {
            return false;
        }
        // ICMP echo has no ports: whatever ports allow, it is allowed.
        if old.protocol == Protocol::Icmp || self.ports.is_empty() {
            return true;
        }
        if old.ports.is_empty() {
            return false;
        }
        let mut ranges = self.ports.clone();
        ranges.sort_unstable();
        old.ports.iter().all(|&(low, high)| covered(&ranges, low, high))
    }
}

/// Whether the sorted `ranges` together hold every port of `low..=high`.
fn covered(ranges: &[(u16, u16)], low: u16, high: u16) -> bool {
    let mut next = u32::from(low);
    for &(a, b) in ranges {
        if u32::from(a) > next {
            break;
        }
        next = next.max(u32::from(b) + 1);
        if next > u32::from(high) {
            return true;
        }
    }
    low > high
}

/// Everything the gateway programs forward. [`GatewayForwarder::apply`]
/// makes the kernel's maps equal to it.
///
/// [`GatewayForwarder::apply`]: super::GatewayForwarder::apply
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardingTable {
    /// A technician's tunnel address -> its session.
    pub peers: BTreeMap<Ipv4Addr, u64>,
    /// (session, proxy address) -> the target it stands for.
    pub targets: BTreeMap<(u64, Ipv4Addr), TargetSpec>,
}

impl ForwardingTable {
    /// Every session the table mentions.
    pub fn sessions(&self) -> std::collections::BTreeSet<u64> {
        self.peers.values().copied().chain(self.targets.keys().map(|(session, _)| *session)).collect()
    }
}

/// Why a forwarding table was refused. Nothing was applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("target {proxy} of session {session}: {count} port ranges, at most {MAX_RANGES} fit")]
    TooManyRanges { session: u64, proxy: Ipv4Addr, count: usize },
    #[error("target {proxy} of session {session}: port range {first}-{last} is empty or reversed")]
    BadRange { session: u64, proxy: Ipv4Addr, first: u16, last: u16 },
    #[error("target {proxy} of session {session}: port ranges on an ICMP-only entry (ICMP has no ports)")]
    PortsOnIcmp { session: u64, proxy: Ipv4Addr },
    #[error("proxy address {proxy} of session {session} is outside the tunnel network {net}/{prefix}")]
    ProxyOutsideTunnel { session: u64, proxy: Ipv4Addr, net: Ipv4Addr, prefix: u8 },
    #[error("peer {peer} of session {session} is outside the tunnel network {net}/{prefix}")]
    PeerOutsideTunnel { session: u64, peer: Ipv4Addr, net: Ipv4Addr, prefix: u8 },
    #[error("target {proxy} of session {session}: its real address {real} lies inside the tunnel network")]
    RealInsideTunnel { session: u64, proxy: Ipv4Addr, real: Ipv4Addr },
    #[error("tunnel network {net}/{prefix}: the prefix must be 1 to 32 bits")]
    BadTunnelNet { net: Ipv4Addr, prefix: u8 },
    #[error("{what}: {count} entries, the map holds {capacity}")]
    TooLarge { what: &'static str, count: usize, capacity: u32 },
}

/// The tunnel network as address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TunnelNet {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl TunnelNet {
    pub fn mask(self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix.min(32)) }
    }

    pub fn contains(self, addr: Ipv4Addr) -> bool {
        self.prefix != 0 && u32::from(addr) & self.mask() == u32::from(self.net) & self.mask()
    }
}

/// Checks everything the programs rely on, before any map changes.
pub(crate) fn validate(table: &ForwardingTable, net: TunnelNet) -> Result<(), TableError> {
    for (&peer, &session) in &table.peers {
        if !net.contains(peer) {
            return Err(TableError::PeerOutsideTunnel { session, peer, net: net.net, prefix: net.prefix });
        }
    }
    for (&(session, proxy), spec) in &table.targets {
        if !net.contains(proxy) {
            return Err(TableError::ProxyOutsideTunnel { session, proxy, net: net.net, prefix: net.prefix });
        }
        // Replies from such a target would look like traffic toward the
        // tunnel, and a technician could reach another session through it.
        if net.contains(spec.real) {
            return Err(TableError::RealInsideTunnel { session, proxy, real: spec.real });
        }
        if spec.ports.len() > MAX_RANGES {
            return Err(TableError::TooManyRanges { session, proxy, count: spec.ports.len() });
        }
        if spec.protocol == Protocol::Icmp && !spec.ports.is_empty() {
            return Err(TableError::PortsOnIcmp { session, proxy });
        }
        if let Some(&(first, last)) = spec.ports.iter().find(|(first, last)| first > last || *first == 0) {
            // Port 0 is no port a packet can be addressed to; a range from 0
            // would only hide a mistake.
            return Err(TableError::BadRange { session, proxy, first, last });
        }
    }
    Ok(())
}

pub(crate) fn target_key(session: u64, proxy: Ipv4Addr) -> TargetKey {
    TargetKey { session, proxy: proxy.octets(), _pad: [0; 4] }
}

/// The map value for a validated spec.
pub(crate) fn target_rule(spec: &TargetSpec, counter: u32, generation: RuleGeneration) -> TargetRule {
    let mut ranges = [PortRange::default(); MAX_RANGES];
    for (slot, &(first, last)) in ranges.iter_mut().zip(&spec.ports) {
        *slot = PortRange { first: first.to_be_bytes(), last: last.to_be_bytes() };
    }
    TargetRule {
        real: spec.real.octets(),
        snat: spec.snat.octets(),
        protocol: spec.protocol.number(),
        range_count: spec.ports.len().min(MAX_RANGES) as u8,
        _pad: [0; 2],
        counter,
        generation,
        ranges,
    }
}

/// The spec a map value stands for (tests compare maps with tables).
pub fn spec_of(rule: &TargetRule) -> TargetSpec {
    TargetSpec {
        real: rule.real.into(),
        snat: rule.snat.into(),
        protocol: Protocol::from_number(rule.protocol).unwrap_or(Protocol::Any),
        ports: rule.ranges[..(rule.range_count as usize).min(MAX_RANGES)]
            .iter()
            .map(|r| (u16::from_be_bytes(r.first), u16::from_be_bytes(r.last)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: TunnelNet = TunnelNet { net: Ipv4Addr::new(100, 96, 0, 0), prefix: 12 };

    fn spec(ports: Vec<(u16, u16)>, protocol: Protocol) -> TargetSpec {
        TargetSpec { real: [10, 0, 0, 5].into(), snat: [10, 0, 0, 1].into(), protocol, ports }
    }

    fn table(spec: TargetSpec) -> ForwardingTable {
        let mut table = ForwardingTable::default();
        table.peers.insert([100, 96, 0, 2].into(), 1);
        table.targets.insert((1, [100, 96, 0, 10].into()), spec);
        table
    }

    #[test]
    fn only_a_widening_keeps_what_an_entry_admitted() {
        let old = spec(vec![(22, 22), (500, 510)], Protocol::Tcp);
        // Wider or equal: every old port is still allowed.
        assert!(old.admits_all_of(&old));
        assert!(spec(vec![(500, 505), (20, 30), (506, 600)], Protocol::Tcp).admits_all_of(&old));
        assert!(spec(vec![], Protocol::Any).admits_all_of(&old));
        assert!(spec(vec![(1, 65535)], Protocol::Any).admits_all_of(&old));
        // A port taken off, a hole in a range, the protocol changed.
        assert!(!spec(vec![(500, 510)], Protocol::Tcp).admits_all_of(&old));
        assert!(!spec(vec![(22, 22), (500, 504), (506, 510)], Protocol::Tcp).admits_all_of(&old));
        assert!(!spec(vec![(22, 22), (500, 510)], Protocol::Udp).admits_all_of(&old));
        // Every port to some ports; any protocol to one.
        assert!(!old.admits_all_of(&spec(vec![], Protocol::Tcp)));
        assert!(!old.admits_all_of(&spec(vec![(22, 22), (500, 510)], Protocol::Any)));
        // ICMP echo stays allowed under Any with ports (they are not its).
        assert!(spec(vec![(22, 22)], Protocol::Any).admits_all_of(&spec(vec![], Protocol::Icmp)));
        // Another device or SNAT address is never the same path.
        let mut moved = old.clone();
        moved.real = [10, 0, 0, 6].into();
        assert!(!moved.admits_all_of(&old));
    }

    #[test]
    fn validation_refuses_what_the_programs_cannot_apply() {
        assert_eq!(validate(&table(spec(vec![(1, 2); 16], Protocol::Tcp)), NET), Ok(()));
        assert!(matches!(
            validate(&table(spec(vec![(1, 2); 17], Protocol::Tcp)), NET),
            Err(TableError::TooManyRanges { count: 17, .. })
        ));
        assert!(matches!(
            validate(&table(spec(vec![(5, 4)], Protocol::Udp)), NET),
            Err(TableError::BadRange { first: 5, last: 4, .. })
        ));
        assert!(matches!(
            validate(&table(spec(vec![(0, 4)], Protocol::Udp)), NET),
            Err(TableError::BadRange { .. })
        ));
        assert!(matches!(
            validate(&table(spec(vec![(1, 4)], Protocol::Icmp)), NET),
            Err(TableError::PortsOnIcmp { .. })
        ));
        let mut outside = table(spec(vec![], Protocol::Any));
        outside.peers.insert([10, 1, 1, 1].into(), 2);
        assert!(matches!(validate(&outside, NET), Err(TableError::PeerOutsideTunnel { .. })));
        let mut inside = spec(vec![], Protocol::Any);
        inside.real = [100, 97, 0, 1].into();
        assert!(matches!(validate(&table(inside), NET), Err(TableError::RealInsideTunnel { .. })));
    }

    #[test]
    fn rules_round_trip() {
        let s = spec(vec![(22, 22), (8000, 8999)], Protocol::Tcp);
        let rule = target_rule(&s, 7, RuleGeneration::default());
        assert_eq!((rule.counter, rule.range_count, rule.protocol), (7, 2, PROTO_TCP));
        assert_eq!(rule.ranges[1].first, 8000u16.to_be_bytes());
        assert_eq!(spec_of(&rule), s);
    }
}
