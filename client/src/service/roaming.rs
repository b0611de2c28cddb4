//! Roaming: the technician's machine changes networks (another Wi-Fi, a new
//! DHCP lease, a NAT that maps anew) and the tunnels find a path again by
//! themselves, without a new `ferry connect`.
//!
//! - [`monitor`] listens to the kernel's address and route changes; each
//!   burst of them tells every traversal that the network changed, so it
//!   reads the interfaces again, asks the STUN servers again and probes the
//!   gateway's candidates fast again (the traversal also notices new
//!   addresses by itself, within `ferry_traversal::HOST_INTERVAL`).
//! - [`report`] sends the tunnel's new candidates to the cloud
//!   (`PUT /api/v1/configs/{id}/candidates`, with the configuration's watch
//!   token), which puts them in the gateway's desired state, so that the
//!   gateway probes them too. Meanwhile the tunnel goes on over the relay.

use std::{net::SocketAddr, time::Duration};

use ferry_api::CandidatesUpdate;
use ferry_connect::{
    backoff::Backoff,
    http::{Method, Request},
};
use futures_util::StreamExt as _;
use rand_core::OsRng;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
    },
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{Event, plan::never_candidates};
use crate::{cloud, protocol::CloudLink};

/// Changes that come within this of each other are one change (a new
/// network brings an address, its prefix route and a default route).
const SETTLE: Duration = Duration::from_millis(300);
/// How long one candidates update may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens to address and route changes until the service stops; each
/// settled burst becomes one [`Event::NetworkChanged`].
pub fn monitor(events: mpsc::Sender<Event>) -> std::io::Result<JoinHandle<()>> {
    let groups = [
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ];
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    Ok(tokio::spawn(async move {
        let driver = tokio::spawn(connection);
        'listen: while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(inner) = message.payload else { continue };
            if !is_network_change(&inner) {
                continue;
            }
            // The rest of the burst.
            loop {
                match tokio::time::timeout(SETTLE, messages.next()).await {
                    Err(_) => break,
                    Ok(None) => break 'listen,
                    Ok(Some(_)) => {}
                }
            }
            tracing::info!("the network changed: the tunnels look for their paths again");
            if events.send(Event::NetworkChanged).await.is_err() {
                break;
            }
        }
        driver.abort();
    }))
}

/// Whether a netlink notification can change what reaches the gateway:
/// an address of this machine, or a route of the main table. The service's
/// own doings do not count: tunnel addresses and their routes (in the
/// shared address space, in the service's own tables), link-local ones.
fn is_network_change(message: &RouteNetlinkMessage) -> bool {
    let ours = |ip: std::net::IpAddr| {
        let ip = ip.to_canonical();
        let link_local = match ip {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        ip.is_loopback()
            || ip.is_multicast()
            || link_local
            || never_candidates().iter().any(|n| n.contains(ip))
    };
    match message {
        RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address) => {
            address_of(address).is_some_and(|ip| !ours(ip))
        }
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            main_table(route) && destination_of(route).is_none_or(|ip| !ours(ip))
        }
        _ => false,
    }
}

fn address_of(message: &AddressMessage) -> Option<std::net::IpAddr> {
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

fn main_table(route: &RouteMessage) -> bool {
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// The destination of a route; none for a default route.
fn destination_of(route: &RouteMessage) -> Option<std::net::IpAddr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some((*v4).into()),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some((*v6).into()),
        _ => None,
    })
}

/// Sends the tunnel's candidates to the cloud whenever they differ from the
/// ones it has (`sent`, those of the configuration request), until the
/// task is aborted or the cloud no longer knows the configuration. A cloud
/// that cannot be reached is asked again, slower and slower; what goes is
/// always the newest list.
pub fn report(
    link: &CloudLink,
    config_id: u64,
    token: String,
    mut candidates: watch::Receiver<Vec<SocketAddr>>,
    mut sent: Vec<SocketAddr>,
) -> Result<JoinHandle<()>, String> {
    let client = cloud::transport(&link.url, link.pin.as_deref()).map_err(|e| e.to_string())?;
    let path = format!("/api/v1/configs/{config_id}/candidates");
    Ok(tokio::spawn(async move {
        let mut backoff = Backoff::new();
        loop {
            let now = candidates.borrow_and_update().clone();
            if now.is_empty() || now == sent {
                if candidates.changed().await.is_err() {
                    return;
                }
                // The rest of the change (STUN answers come after the host addresses).
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            let body = CandidatesUpdate { candidates: now.iter().map(|c| c.to_string()).collect() };
            let Ok(json) = serde_json::to_vec(&body) else { return };
            let request = Request::new(Method::PUT, &path).bearer(Some(&token)).json(Some(json));
            match tokio::time::timeout(REPORT_TIMEOUT, client.send(request)).await {
                Ok(Ok(answer)) if (200..300).contains(&answer.status) => {
                    tracing::info!(config = config_id, candidates = ?now, "new candidates sent to the cloud");
                    sent = now;
                    backoff.reset();
                }
                Ok(Ok(answer)) if matches!(answer.status, 401 | 404 | 409 | 410) => {
                    // The configuration ended there; its watch takes the tunnel down.
                    tracing::info!(
                        config = config_id,
                        detail = cloud::problem(&answer).detail,
                        "the cloud takes no more candidates for this configuration"
                    );
                    return;
                }
                failed => {
                    let why = match failed {
                        Ok(Ok(answer)) => {
                            format!("HTTP {}: {}", answer.status, cloud::problem(&answer).detail)
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {} s", REPORT_TIMEOUT.as_secs()),
                    };
                    tracing::info!(
                        config = config_id,
                        why,
                        "the new candidates did not reach the cloud; trying again"
                    );
                    tokio::time::sleep(backoff.next_delay(&mut OsRng)).await;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use rtnetlink::packet_route::{AddressFamily, route::RouteHeader};

    use super::*;

    fn address(ip: &str) -> RouteNetlinkMessage {
        let mut message = AddressMessage::default();
        message.attributes.push(AddressAttribute::Address(ip.parse().unwrap()));
        RouteNetlinkMessage::NewAddress(message)
    }

    fn route(table: u8, destination: Option<&str>) -> RouteNetlinkMessage {
        let mut message = RouteMessage::default();
        message.header = RouteHeader { table, address_family: AddressFamily::Inet, ..RouteHeader::default() };
        if let Some(d) = destination {
            let ip: IpAddr = d.parse().unwrap();
            message.attributes.push(RouteAttribute::Destination(ip.into()));
        }
        RouteNetlinkMessage::NewRoute(message)
    }

    #[test]
    fn only_changes_of_the_network_count() {
        assert!(is_network_change(&address("192.168.1.20")));
        assert!(is_network_change(&address("2001:db8::20")));
        assert!(is_network_change(&route(RouteHeader::RT_TABLE_MAIN, None)), "a new default route");
        assert!(is_network_change(&route(RouteHeader::RT_TABLE_MAIN, Some("192.168.1.0"))));
        // What the service itself does, and what means nothing outside.
        assert!(!is_network_change(&address("100.96.0.2")), "a tunnel address");
        assert!(!is_network_change(&address("fe80::1")));
        assert!(!is_network_change(&address("127.0.0.1")));
        assert!(!is_network_change(&route(RouteHeader::RT_TABLE_MAIN, Some("100.96.0.100"))));
        let mut in_a_users_table = route(252, Some("100.96.0.100"));
        if let RouteNetlinkMessage::NewRoute(r) = &mut in_a_users_table {
            r.attributes.push(RouteAttribute::Table(super::super::routing::TABLES.start));
        }
        assert!(!is_network_change(&in_a_users_table), "a user's table");
        assert!(!is_network_change(&route(255, Some("192.168.1.20"))), "the local table");
        assert!(!is_network_change(&route(RouteHeader::RT_TABLE_MAIN, Some("fe80::"))));
    }
}
