//! Host candidates: the addresses of this machine's interfaces, read over a
//! netlink socket that is opened once, at start. A socket stays in the
//! network namespace it was made in, so the addresses are those of the
//! namespace [`Traversal::start`](crate::Traversal::start) ran in, whichever
//! thread reads them later (the endpoint's own socket behaves the same way).

use std::{collections::BTreeMap, net::IpAddr};

use ferry_tunnel::proto::IpNet;
use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressMessage},
        link::LinkAttribute,
    },
};

use crate::plan::usable_ip;

/// Which interfaces' addresses are host candidates.
#[derive(Debug, Clone)]
pub(crate) struct HostFilter {
    /// Only these interfaces, when any are named.
    pub(crate) interfaces: Vec<String>,
    /// Never these (the tunnel's own device is always among them).
    pub(crate) exclude: Vec<String>,
    /// Never an address in these prefixes.
    pub(crate) deny: Vec<IpNet>,
}

impl HostFilter {
    fn admits(&self, interface: &str, ip: IpAddr) -> bool {
        let named = self.interfaces.is_empty() || self.interfaces.iter().any(|i| i == interface);
        named && !self.exclude.iter().any(|i| i == interface) && usable_ip(ip, &self.deny)
    }
}

/// One interface address as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterfaceAddress {
    pub(crate) interface: String,
    pub(crate) ip: IpAddr,
    /// Tentative, failed duplicate detection, or deprecated (IPv6): not to be offered.
    pub(crate) unusable: bool,
}

/// The addresses the filter admits, each once, sorted.
pub(crate) fn select(addresses: &[InterfaceAddress], filter: &HostFilter) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| !a.unusable && filter.admits(&a.interface, a.ip))
        .map(|a| a.ip.to_canonical())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every address of every interface, with the interface's name.
pub(crate) async fn addresses(handle: &Handle) -> Result<Vec<InterfaceAddress>, rtnetlink::Error> {
    let links: Vec<_> = handle.link().get().execute().try_collect().await?;
    let names: BTreeMap<u32, String> = links
        .into_iter()
        .filter_map(|link| {
            let name = link.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })?;
            Some((link.header.index, name))
        })
        .collect();
    let messages: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    Ok(messages
        .into_iter()
        .filter_map(|message| {
            let interface = names.get(&message.header.index)?.clone();
            let mut local = None;
            let mut address = None;
            let mut flags = AddressFlags::empty();
            for attribute in message.attributes {
                match attribute {
                    // On a point-to-point link IFA_ADDRESS is the far end.
                    AddressAttribute::Local(ip) => local = Some(ip),
                    AddressAttribute::Address(ip) => address = Some(ip),
                    AddressAttribute::Flags(f) => flags = f,
                    _ => {}
                }
            }
            let unusable = flags
                .intersects(AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated);
            Some(InterfaceAddress { interface, ip: local.or(address)?, unusable })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(interface: &str, ip: &str) -> InterfaceAddress {
        InterfaceAddress { interface: interface.into(), ip: ip.parse().unwrap(), unusable: false }
    }

    #[test]
    fn the_filter_keeps_named_usable_addresses_only() {
        let all = vec![
            address("lo", "127.0.0.1"),
            address("lo", "::1"),
            address("eth0", "10.20.0.2"),
            address("eth0", "fe80::1"),
            address("eth0", "2001:db8::2"),
            address("eth1", "192.168.50.1"),
            address("ferry0", "100.96.0.1"),
            address("wlan0", "169.254.3.3"),
            address("wlan0", "198.51.100.9"),
            InterfaceAddress { unusable: true, ..address("eth0", "2001:db8::3") },
            address("eth0", "10.20.0.2"),
        ];
        let open = HostFilter { interfaces: vec![], exclude: vec!["ferry0".into()], deny: vec![] };
        let ips = |list: &[&str]| list.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect::<Vec<_>>();
        assert_eq!(select(&all, &open), ips(&["10.20.0.2", "192.168.50.1", "198.51.100.9", "2001:db8::2"]));
        let uplink_only = HostFilter { interfaces: vec!["eth0".into()], ..open.clone() };
        assert_eq!(select(&all, &uplink_only), ips(&["10.20.0.2", "2001:db8::2"]));
        let denied = HostFilter { deny: vec!["192.168.50.0/24".parse().unwrap()], ..open };
        assert_eq!(select(&all, &denied), ips(&["10.20.0.2", "198.51.100.9", "2001:db8::2"]));
    }
}
