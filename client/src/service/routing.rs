//! Split tunnelling by policy routing, over netlink.
//!
//! Each user with a tunnel gets a routing table of its own that holds only
//! the routes to that user's proxy addresses, through the tunnel's TUN
//! device. A rule `uidrange UID-UID lookup TABLE` sends only that user's
//! packets to the table; what it has no route for falls through to the main
//! table. So other local users never enter the tunnel, and the technician's
//! own LAN stays reachable even when it uses the machine network's addresses.
//!
//! A second rule per tunnel, `from ADDRESS uidrange 0-0 lookup TABLE`, serves
//! the kernel's reverse-path check (`rp_filter=1`): it looks up the route
//! back to the source of every packet arriving on the TUN device as uid 0,
//! from the tunnel address; without the rule it would find the default route
//! on another interface and drop the gateway's answers. Only root (which can
//! do anything on this machine anyway) matches it, and only from the tunnel
//! address.
//!
//! The rules carry [`RULE_PRIORITY`] and a table in [`TABLES`], so that a
//! service that was killed leaves nothing that the next one cannot find and
//! remove ([`Routing::sweep`]); the routes go with the TUN devices.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    AddressMessageBuilder, Handle, IpVersion, RouteMessageBuilder,
    packet_core::ErrorMessage,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::LinkAttribute,
        route::RouteHeader,
        rule::{RuleAction, RuleAttribute, RuleMessage, RuleUidRange},
    },
};
use tokio::task::JoinHandle;

use ferry_tunnel::proto::IpNet;

/// Before the main table's rule (32766), after the local table's (0).
pub const RULE_PRIORITY: u32 = 5210;
/// The tables the service uses, one per user with a tunnel.
pub const TABLES: Range<u32> = 0x6672_0000..0x6673_0000;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("no network interface {0}")]
    NoLink(String),
    #[error("{prefix} is not a prefix of {address}'s family")]
    Family { prefix: String, address: IpAddr },
}

impl RoutingError {
    /// The kernel's errno, for "exists" and "no such entry" answers.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RoutingError::Netlink { source, .. } => errno_of(source),
            _ => None,
        }
    }
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RoutingError {
    let what = what.into();
    move |source| RoutingError::Netlink { what, source }
}

/// A policy rule of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub v6: bool,
    pub table: u32,
    pub uids: (u32, u32),
    /// `from ADDRESS/len`.
    pub source: Option<(IpAddr, u8)>,
}

impl Rule {
    fn message(&self) -> RuleMessage {
        let mut message = RuleMessage::default();
        message.header.family = if self.v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        message.header.action = RuleAction::ToTable;
        // Tables above 255 only fit the attribute.
        message.header.table = RouteHeader::RT_TABLE_UNSPEC;
        message.attributes.push(RuleAttribute::Table(self.table));
        message.attributes.push(RuleAttribute::Priority(RULE_PRIORITY));
        message
            .attributes
            .push(RuleAttribute::UidRange(RuleUidRange { start: self.uids.0, end: self.uids.1 }));
        if let Some((address, len)) = self.source {
            message.header.src_len = len;
            message.attributes.push(RuleAttribute::Source(address));
        }
        message
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((address, len)) = self.source {
            write!(f, "from {address}/{len} ")?;
        }
        write!(f, "uidrange {}-{} lookup {} priority {RULE_PRIORITY}", self.uids.0, self.uids.1, self.table)
    }
}

/// One netlink connection of the service.
pub struct Routing {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Drop for Routing {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Routing {
    /// Needs a tokio runtime.
    pub fn open() -> Result<Routing, RoutingError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RoutingError::Socket)?;
        Ok(Routing { handle, connection: tokio::spawn(connection) })
    }

    /// Removes the rules a service before this one left (it was killed, or
    /// the machine lost power with it running). Returns what it removed.
    pub async fn sweep(&self) -> Result<Vec<String>, RoutingError> {
        let mut removed = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules = dump(self.handle.rule().get(version).execute(), "listing the policy rules").await?;
            for rule in rules.into_iter().filter(is_ours) {
                let shown = format!("{:?}", rule.attributes);
                self.handle.rule().del(rule).execute().await.map_err(netlink("removing a stale rule"))?;
                removed.push(shown);
            }
        }
        Ok(removed)
    }

    pub async fn add_rule(&self, rule: &Rule) -> Result<(), RoutingError> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = rule.message();
        request.execute().await.map_err(netlink(format!("adding the rule {rule}")))
    }

    pub async fn remove_rule(&self, rule: &Rule) -> Result<(), RoutingError> {
        self.handle
            .rule()
            .del(rule.message())
            .execute()
            .await
            .map_err(netlink(format!("removing the rule {rule}")))
    }

    pub async fn link_index(&self, name: &str) -> Result<u32, RoutingError> {
        match self.handle.link().get().match_name(name.to_string()).execute().try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(RoutingError::NoLink(name.to_string())),
            Err(e) if errno_of(&e) == Some(nix::errno::Errno::ENODEV as i32) => {
                Err(RoutingError::NoLink(name.to_string()))
            }
            Err(e) => Err(netlink(format!("looking up {name}"))(e)),
        }
    }

    /// The names of every network interface.
    pub async fn link_names(&self) -> Result<Vec<String>, RoutingError> {
        let links = dump(self.handle.link().get().execute(), "listing the interfaces").await?;
        Ok(links
            .into_iter()
            .filter_map(|link| {
                link.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name),
                    _ => None,
                })
            })
            .collect())
    }

    /// Every address configured on this machine (in this namespace).
    pub async fn local_addresses(&self) -> Result<Vec<IpAddr>, RoutingError> {
        let messages = dump(self.handle.address().get().execute(), "listing the addresses").await?;
        Ok(messages
            .into_iter()
            .flat_map(|m| m.attributes)
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(ip),
                _ => None,
            })
            .collect())
    }

    pub async fn add_address(&self, index: u32, address: IpAddr, prefix: u8) -> Result<(), RoutingError> {
        self.handle
            .address()
            .add(index, address, prefix)
            .execute()
            .await
            .map_err(netlink(format!("adding {address}/{prefix}")))
    }

    /// Removes an address at once: a TUN device goes only when its engine's
    /// tasks have let go of it, and a new tunnel may want the address now.
    pub async fn remove_address(&self, index: u32, address: IpAddr, prefix: u8) -> Result<(), RoutingError> {
        let message = match address {
            IpAddr::V4(v4) => {
                AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(v4, prefix).build()
            }
            IpAddr::V6(v6) => {
                AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(v6, prefix).build()
            }
        };
        self.handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(netlink(format!("removing {address}/{prefix}")))
    }

    /// Adds `route`.
    pub async fn add_route(&self, route: &Route) -> Result<(), RoutingError> {
        let what = format!("adding the route to {}", route.to);
        self.handle.route().add(route.message()?).execute().await.map_err(netlink(what))
    }

    pub async fn remove_route(&self, route: &Route) -> Result<(), RoutingError> {
        let what = format!("removing the route to {}", route.to);
        self.handle.route().del(route.message()?).execute().await.map_err(netlink(what))
    }
}

/// `TO dev INDEX src SOURCE table TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub index: u32,
    pub to: IpNet,
    pub source: IpAddr,
}

impl Route {
    fn message(&self) -> Result<rtnetlink::packet_route::route::RouteMessage, RoutingError> {
        let family = |_| RoutingError::Family { prefix: self.to.to_string(), address: self.source };
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.to.addr(), self.to.prefix())
            .map_err(family)?
            .pref_source(self.source)
            .map_err(family)?
            .output_interface(self.index)
            .table_id(self.table)
            .build())
    }
}

/// Everything a netlink dump answers.
async fn dump<T>(
    answers: impl futures_util::Stream<Item = Result<T, rtnetlink::Error>>,
    what: &str,
) -> Result<Vec<T>, RoutingError> {
    answers.try_collect().await.map_err(netlink(what))
}

fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(ErrorMessage { code, .. }) => code.map(|c| -c.get()),
        _ => None,
    }
}

/// A rule with our priority that looks up one of our tables.
fn is_ours(rule: &RuleMessage) -> bool {
    let priority = rule.attributes.contains(&RuleAttribute::Priority(RULE_PRIORITY));
    let table = rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Table(t) => Some(*t),
        _ => None,
    });
    priority && table.is_some_and(|t| TABLES.contains(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_rules_are_swept() {
        let rule = Rule { v6: false, table: TABLES.start + 3, uids: (1000, 1000), source: None };
        assert!(is_ours(&rule.message()));
        let other_table = Rule { table: 100, ..rule.clone() };
        assert!(!is_ours(&other_table.message()));
        let mut other_priority = rule.message();
        other_priority.attributes.retain(|a| !matches!(a, RuleAttribute::Priority(_)));
        other_priority.attributes.push(RuleAttribute::Priority(RULE_PRIORITY + 1));
        assert!(!is_ours(&other_priority));
        let shown =
            Rule { source: Some(("100.96.0.2".parse().unwrap(), 32)), uids: (0, 0), ..rule }.to_string();
        assert_eq!(
            shown,
            format!("from 100.96.0.2/32 uidrange 0-0 lookup {} priority 5210", TABLES.start + 3)
        );
    }
}
