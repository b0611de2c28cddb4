//! Keeping the XDP forwarder's next-hop cache true.
//!
//! `bpf_fib_lookup` is most of what a forwarded datagram costs, so the
//! program caches its answer per destination (the peer's address, the
//! ingress interface and the TOS): the next hop's MAC, the egress
//! interface's MAC and index. The kernel's routes and neighbours change
//! underneath: a route moves to another gateway or interface, a router's MAC
//! changes (a replaced box, a VRRP failover), a link goes down or changes its
//! MTU. Two mechanisms keep the cache from sending to a wrong MAC:
//!
//! - **Invalidation.** [`watch`] listens to the kernel's route, rule,
//!   nexthop, link and neighbour notifications (rtnetlink multicast groups)
//!   and on each one that can change an answer bumps the forwarder's
//!   next-hop generation: one array write, after which no cached entry is
//!   used (each carries the generation it was made under, read before its
//!   lookup, so an answer from before a change never carries the generation
//!   from after it). The next datagram to each destination asks the FIB
//!   again. Neighbour notifications count only when the MAC changes or the
//!   entry stops being usable (deleted, failed, incomplete): the periodic
//!   reachable/stale churn of a stable neighbour does not empty the cache.
//!   A netlink buffer overrun (notifications lost) invalidates too.
//! - **Lifetime.** Every entry expires `next_hop_lifetime_ms` (default
//!   [`DEFAULT_NEXT_HOP_LIFETIME_MS`]) after its lookup, by the kernel's
//!   coarse monotonic clock, whatever happens to notifications (the daemon
//!   stuck, the watcher failed to start, a change that sends none).
//!
//! The bound this gives (docs/relay-xdp.md): after a change, datagrams
//! follow it as soon as the relay has read the notification (normally well
//! under a millisecond; it is one map write), and in any case no later than
//! the lifetime plus one tick of the coarse clock after the change.

use std::{collections::HashMap, net::IpAddr};

use futures_util::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    },
};
use tokio::task::JoinHandle;

pub use ferry_ebpf::common::relay::DEFAULT_NEXT_HOP_LIFETIME_MS;

/// Subscribes to the notifications that can change a next hop and calls
/// `invalidate` for each that does, until the task is aborted. `invalidate`
/// is called once right after subscribing, for changes between the program's
/// attachment and the subscription. Runs in the caller's network namespace.
pub fn watch(mut invalidate: impl FnMut() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    let groups = [
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
        MulticastGroup::Nexthop,
        MulticastGroup::Link,
        MulticastGroup::Neigh,
    ];
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    Ok(tokio::spawn(async move {
        let driver = tokio::spawn(connection);
        invalidate();
        let mut neighbours = Neighbours::default();
        while let Some((message, _)) = messages.next().await {
            let changes = match message.payload {
                NetlinkPayload::InnerMessage(inner) => neighbours.changes(&inner),
                // Notifications were lost: anything may have changed.
                NetlinkPayload::Overrun(_) => true,
                _ => false,
            };
            if changes {
                invalidate();
            }
        }
        tracing::warn!("the netlink notifications ended: next hops are only refreshed by their lifetime");
        driver.abort();
    }))
}

/// The neighbours' MACs as last notified, to tell a changed neighbour from
/// its periodic state churn.
#[derive(Debug, Default)]
pub struct Neighbours {
    macs: HashMap<(u32, IpAddr), Vec<u8>>,
}

impl Neighbours {
    /// Whether `message` can change what `bpf_fib_lookup` answers (and so
    /// whether cached next hops must go). Route, rule, nexthop and link
    /// messages always can; neighbour messages when the MAC is new or
    /// changed, or the entry is deleted or unusable.
    pub fn changes(&mut self, message: &RouteNetlinkMessage) -> bool {
        match message {
            RouteNetlinkMessage::NewNeighbour(neighbour) => self.updated(neighbour),
            RouteNetlinkMessage::DelNeighbour(neighbour) => {
                if let Some(key) = key(neighbour) {
                    self.macs.remove(&key);
                }
                is_inet(neighbour)
            }
            RouteNetlinkMessage::GetNeighbour(_) | RouteNetlinkMessage::GetNeighbourTable(_) => false,
            RouteNetlinkMessage::NewNeighbourTable(_) | RouteNetlinkMessage::SetNeighbourTable(_) => false,
            _ => true,
        }
    }

    fn updated(&mut self, neighbour: &NeighbourMessage) -> bool {
        let Some(key) = key(neighbour) else {
            // Bridge FDB entries and other families: not the FIB's.
            return false;
        };
        let usable = matches!(
            neighbour.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        let mac = neighbour.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
            _ => None,
        });
        match (usable, mac) {
            (true, Some(mac)) => self.macs.insert(key, mac.clone()).is_none_or(|old| old != mac),
            _ => {
                self.macs.remove(&key);
                true
            }
        }
    }
}

fn is_inet(neighbour: &NeighbourMessage) -> bool {
    key(neighbour).is_some()
}

/// The interface and IP address of an IPv4 or IPv6 neighbour entry (not of
/// a bridge FDB entry, whose destination is a VXLAN remote).
fn key(neighbour: &NeighbourMessage) -> Option<(u32, IpAddr)> {
    if !matches!(neighbour.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let ip = neighbour.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::from(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::from(*v6)),
        _ => None,
    })?;
    Some((neighbour.header.ifindex, ip))
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::{
        neighbour::NeighbourHeader,
        route::{RouteHeader, RouteMessage},
    };

    use super::*;

    fn neighbour(ip: &str, mac: Option<[u8; 6]>, state: NeighbourState) -> NeighbourMessage {
        let ip: IpAddr = ip.parse().unwrap();
        let mut message = NeighbourMessage::default();
        message.header = NeighbourHeader {
            family: if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 },
            ifindex: 7,
            state,
            ..Default::default()
        };
        message.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
        if let Some(mac) = mac {
            message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        message
    }

    #[test]
    fn neighbour_churn_keeps_the_cache_and_a_new_mac_empties_it() {
        const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
        const B: [u8; 6] = [2, 0, 0, 0, 0, 2];
        let mut n = Neighbours::default();
        let new = |ip, mac, state| RouteNetlinkMessage::NewNeighbour(neighbour(ip, mac, state));
        // Unknown before: it may be a change.
        assert!(n.changes(&new("198.51.100.1", Some(A), NeighbourState::Reachable)));
        // The same MAC going stale, probed, reachable again: no change.
        for state in
            [NeighbourState::Stale, NeighbourState::Delay, NeighbourState::Probe, NeighbourState::Reachable]
        {
            assert!(!n.changes(&new("198.51.100.1", Some(A), state)), "{state:?}");
        }
        // Another neighbour is its own entry.
        assert!(n.changes(&new("2001:db8::1", Some(A), NeighbourState::Reachable)));
        assert!(!n.changes(&new("2001:db8::1", Some(A), NeighbourState::Stale)));
        // A new MAC, an unusable entry, a deletion: changes.
        assert!(n.changes(&new("198.51.100.1", Some(B), NeighbourState::Reachable)));
        assert!(!n.changes(&new("198.51.100.1", Some(B), NeighbourState::Stale)));
        assert!(n.changes(&new("198.51.100.1", None, NeighbourState::Failed)));
        assert!(n.changes(&new("198.51.100.1", Some(B), NeighbourState::Reachable)));
        assert!(n.changes(&RouteNetlinkMessage::DelNeighbour(neighbour(
            "198.51.100.1",
            None,
            NeighbourState::None
        ))));
        assert!(n.changes(&new("198.51.100.1", Some(B), NeighbourState::Reachable)));
    }

    #[test]
    fn routes_and_links_always_change_and_bridge_entries_never() {
        let mut n = Neighbours::default();
        let mut route = RouteMessage::default();
        route.header = RouteHeader { address_family: AddressFamily::Inet, ..Default::default() };
        assert!(n.changes(&RouteNetlinkMessage::NewRoute(route.clone())));
        assert!(n.changes(&RouteNetlinkMessage::DelRoute(route)));
        assert!(n.changes(&RouteNetlinkMessage::NewLink(Default::default())));
        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]));
        assert!(!n.changes(&RouteNetlinkMessage::NewNeighbour(fdb.clone())));
        assert!(!n.changes(&RouteNetlinkMessage::DelNeighbour(fdb)));
    }
}
