//! Keeping the XDP forwarder's next-hop cache true.
//!
//! `bpf_fib_lookup` is most of what a forwarded datagram costs, so the
//! program caches its answer in each binding (for the binding's peer, the
//! ingress interface and the TOS it was asked for): the next hop's MAC, the
//! egress interface's MAC and index. The kernel's routes and neighbours change
//! underneath: a route moves to another gateway or interface, a router's MAC
//! changes (a replaced box, a VRRP failover), a link goes down or changes its
//! MTU. Two mechanisms keep the cache from sending to a wrong MAC:
//!
//! - **Invalidation.** [`watch`] listens to the kernel's route, rule, link
//!   and neighbour notifications (rtnetlink multicast groups), and reads the
//!   nexthop-object group (`ip nexthop`) raw, as the rtnetlink crate cannot
//!   parse it: any message there counts. On each notification that can
//!   change an answer it bumps the forwarder's next-hop generation: one
//!   array write, after which no cached entry is used (each carries the
//!   generation it was made under, read before its lookup, so an answer from
//!   before a change never carries the generation from after it). The next
//!   datagram of each binding asks the FIB again. Neighbour
//!   notifications count only when the MAC changes or the entry stops being
//!   usable (deleted, failed, incomplete): the periodic reachable/stale
//!   churn of a stable neighbour does not empty the cache. A netlink buffer
//!   overrun (notifications lost) invalidates too. Should the notifications
//!   end, the watcher warns, resubscribes with a backoff (invalidating once
//!   subscribed again) and reports it in
//!   `ferry_relay_xdp_next_hop_watcher_up`; meanwhile the lifetime alone
//!   bounds the cache.
//! - **Lifetime.** Every entry expires `next_hop_lifetime_ms` (default
//!   [`DEFAULT_NEXT_HOP_LIFETIME_MS`]) after its lookup, by the kernel's
//!   tick counter (jiffies), whatever happens to notifications (the daemon
//!   stuck, the watcher failed to start, a change that sends none).
//!
//! The bound this gives (docs/relay-xdp.md): after a change, datagrams
//! follow it as soon as the relay has read the notification (normally well
//! under a millisecond; it is one map write), and in any case no later than
//! the lifetime plus one kernel tick after the change.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use futures_util::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    },
    sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_ROUTE},
};
use tokio::task::JoinHandle;

pub use ferry_ebpf::common::relay::DEFAULT_NEXT_HOP_LIFETIME_MS;

/// The rtnetlink group of nexthop objects (`RTNLGRP_NEXTHOP`). The
/// rtnetlink crate cannot parse its messages (each would be logged as an
/// error and dropped), so a socket of its own reads them raw: any message
/// there invalidates.
const RTNLGRP_NEXTHOP: u32 = 32;
/// After the notifications end, resubscribing waits this long, doubling up
/// to [`RESUBSCRIBE_MAX`].
const RESUBSCRIBE_MIN: Duration = Duration::from_secs(1);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(30);

/// Subscribes to the notifications that can change a next hop and calls
/// `invalidate` for each that does, until the task is aborted. `invalidate`
/// is called right after each subscription, for changes between the
/// program's attachment (or the last subscription) and it. Should the
/// notifications end, the watcher warns, resubscribes with a backoff, and
/// meanwhile the lifetime alone bounds the cache; `up` says whether it is
/// subscribed. The first subscription is made in the caller's network
/// namespace, later ones in that of the runtime's thread that runs the task
/// (the same in the relay, which stays in one namespace).
pub fn watch(
    mut invalidate: impl FnMut() + Send + 'static,
    up: impl Fn(bool) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let first = Subscription::open()?;
    Ok(tokio::spawn(async move {
        let mut subscription = first;
        let mut backoff = RESUBSCRIBE_MIN;
        loop {
            up(true);
            invalidate();
            let since = tokio::time::Instant::now();
            let end = subscription.follow(&mut invalidate).await;
            up(false);
            tracing::warn!(
                why = %end,
                "the netlink notifications ended: next hops are only refreshed by their lifetime until the relay \
                 subscribes again"
            );
            if since.elapsed() > RESUBSCRIBE_MAX {
                backoff = RESUBSCRIBE_MIN;
            }
            subscription = loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                match Subscription::open() {
                    Ok(subscription) => break subscription,
                    Err(e) => tracing::warn!(error = %e, "subscribing to netlink notifications again failed"),
                }
            };
            tracing::info!("subscribed to netlink notifications again");
        }
    }))
}

/// The rtnetlink multicast connection and the raw nexthop socket.
struct Subscription {
    driver: JoinHandle<()>,
    messages: futures_util::stream::BoxStream<
        'static,
        (rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr),
    >,
    /// None on a kernel without nexthop objects (before 5.3).
    nexthops: Option<TokioSocket>,
}

impl Subscription {
    fn open() -> std::io::Result<Subscription> {
        let groups = [
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Ipv4Rule,
            MulticastGroup::Ipv6Rule,
            MulticastGroup::Link,
            MulticastGroup::Neigh,
        ];
        let (connection, _handle, messages) = rtnetlink::new_multicast_connection(&groups)?;
        let nexthops = match nexthop_socket() {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no nexthop-object notifications (kernel before 5.3?): such changes reach XDP through the \
                     route notifications they cause, or the lifetime"
                );
                None
            }
        };
        Ok(Subscription { driver: tokio::spawn(connection), messages: messages.boxed(), nexthops })
    }

    /// Invalidates on every change until the notifications end; returns why.
    async fn follow(&mut self, invalidate: &mut impl FnMut()) -> String {
        let mut neighbours = Neighbours::default();
        let mut raw = Vec::with_capacity(8192);
        let end = loop {
            let changes = tokio::select! {
                message = self.messages.next() => match message {
                    Some((message, _)) => match message.payload {
                        NetlinkPayload::InnerMessage(inner) => neighbours.changes(&inner),
                        // Notifications were lost: anything may have changed.
                        NetlinkPayload::Overrun(_) => true,
                        _ => false,
                    },
                    None => break "the route notifications' stream ended".to_string(),
                },
                received = recv(self.nexthops.as_ref(), &mut raw) => match received {
                    // Any nexthop object's change, whatever it says.
                    Ok(()) => true,
                    // Lost notifications: anything may have changed.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => true,
                    Err(e) => break format!("reading nexthop notifications: {e}"),
                },
            };
            raw.clear();
            if changes {
                invalidate();
            }
        };
        self.driver.abort();
        end
    }
}

fn nexthop_socket() -> std::io::Result<TokioSocket> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
    socket.socket_mut().bind_auto()?;
    socket.socket_ref().add_membership(RTNLGRP_NEXTHOP)?;
    Ok(socket)
}

async fn recv(socket: Option<&TokioSocket>, buf: &mut Vec<u8>) -> std::io::Result<()> {
    match socket {
        Some(socket) => socket.recv(buf).await,
        None => std::future::pending().await,
    }
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
