//! Cryptokey routing: which peer owns which addresses (paper §2).
//!
//! A longest-prefix match over the peers' allowed IPs, used both ways: a
//! packet's destination picks the peer to encrypt for, and a decrypted
//! packet's source must belong to the peer it came from.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    str::FromStr,
};

/// An address prefix, for example `10.0.0.0/24` or `fd00::/64`. The address
/// is stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("`{0}` is not an IP address or prefix")]
    Address(String),
    #[error("prefix length {len} is too long for {addr}")]
    PrefixTooLong { addr: IpAddr, len: u8 },
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpNet, IpNetError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(IpNetError::PrefixTooLong { addr, len: prefix });
        }
        Ok(IpNet { addr: mask(addr, prefix), prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// `a.b.c.d/len`, `x::y/len`, or a bare address (a host prefix).
    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| IpNetError::Address(s.to_string()))?;
        let prefix = match prefix {
            Some(len) => len.parse().map_err(|_| IpNetError::Address(s.to_string()))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix)
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// A longest-prefix-match table from prefixes to values (peer ids).
///
/// One hash map per prefix length in use; a lookup masks the address once per
/// length, longest first. Peers rarely use more than a few lengths, so that
/// is a handful of hash probes.
#[derive(Clone, Debug)]
pub struct AllowedIps<T> {
    by_prefix: HashMap<IpNet, T>,
    v4_lengths: BTreeSet<u8>,
    v6_lengths: BTreeSet<u8>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps { by_prefix: HashMap::new(), v4_lengths: BTreeSet::new(), v6_lengths: BTreeSet::new() }
    }
}

impl<T: Copy + PartialEq> AllowedIps<T> {
    /// Maps `net` to `value`, taking it from whichever value had it (as `wg set
    /// ... allowed-ips` moves a prefix between peers).
    pub fn insert(&mut self, net: IpNet, value: T) {
        self.lengths_mut(net.addr).insert(net.prefix);
        self.by_prefix.insert(net, value);
    }

    /// Removes every prefix that maps to `value`.
    pub fn remove_value(&mut self, value: T) {
        self.by_prefix.retain(|_, v| *v != value);
        self.rebuild_lengths();
    }

    pub fn remove(&mut self, net: &IpNet) {
        self.by_prefix.remove(net);
        self.rebuild_lengths();
    }

    /// The value of the longest prefix that contains `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        let lengths = if ip.is_ipv4() { &self.v4_lengths } else { &self.v6_lengths };
        lengths
            .iter()
            .rev()
            .find_map(|&len| self.by_prefix.get(&IpNet { addr: mask(ip, len), prefix: len }).copied())
    }

    /// The prefixes mapped to `value`, sorted.
    pub fn prefixes_of(&self, value: T) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> =
            self.by_prefix.iter().filter(|(_, v)| **v == value).map(|(n, _)| *n).collect();
        nets.sort();
        nets
    }

    fn lengths_mut(&mut self, addr: IpAddr) -> &mut BTreeSet<u8> {
        if addr.is_ipv4() { &mut self.v4_lengths } else { &mut self.v6_lengths }
    }

    fn rebuild_lengths(&mut self) {
        self.v4_lengths = self.by_prefix.keys().filter(|n| n.addr.is_ipv4()).map(|n| n.prefix).collect();
        self.v6_lengths = self.by_prefix.keys().filter(|n| n.addr.is_ipv6()).map(|n| n.prefix).collect();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parsing_masks_host_bits_and_names_errors() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(net("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(matches!("10.0.0.0/33".parse::<IpNet>(), Err(IpNetError::PrefixTooLong { .. })));
        assert!(matches!("10.0.0/8".parse::<IpNet>(), Err(IpNetError::Address(_))));
        assert!(matches!("10.0.0.0/x".parse::<IpNet>(), Err(IpNetError::Address(_))));
    }

    #[test]
    fn longest_prefix_wins_and_families_do_not_mix() {
        let mut table = AllowedIps::default();
        table.insert(net("0.0.0.0/0"), 1);
        table.insert(net("10.0.0.0/8"), 2);
        table.insert(net("10.1.0.0/16"), 3);
        table.insert(net("10.1.2.3/32"), 4);
        table.insert(net("::/0"), 5);
        assert_eq!(table.lookup(ip("192.0.2.1")), Some(1));
        assert_eq!(table.lookup(ip("10.200.0.1")), Some(2));
        assert_eq!(table.lookup(ip("10.1.9.9")), Some(3));
        assert_eq!(table.lookup(ip("10.1.2.3")), Some(4));
        assert_eq!(table.lookup(ip("2001:db8::1")), Some(5));
        table.remove_value(1);
        assert_eq!(table.lookup(ip("192.0.2.1")), None);
        table.remove(&net("10.1.0.0/16"));
        assert_eq!(table.lookup(ip("10.1.9.9")), Some(2));
        // Re-inserting a prefix moves it to the new owner.
        table.insert(net("10.0.0.0/8"), 7);
        assert_eq!(table.lookup(ip("10.9.9.9")), Some(7));
        assert_eq!(table.prefixes_of(2), vec![]);
    }

    proptest! {
        /// Against a linear scan for the longest containing prefix.
        #[test]
        fn matches_a_linear_model(
            entries in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u8..8), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let mut table = AllowedIps::default();
            let mut model: Vec<(IpNet, u8)> = Vec::new();
            for (addr, len, value) in entries {
                let n = IpNet::new(IpAddr::V4(addr.into()), len).unwrap();
                table.insert(n, value);
                model.retain(|(m, _)| *m != n);
                model.push((n, value));
            }
            for probe in probes {
                let probe = IpAddr::V4(probe.into());
                let expected = model.iter().filter(|(n, _)| n.contains(probe)).max_by_key(|(n, _)| n.prefix()).map(|(_, v)| *v);
                prop_assert_eq!(table.lookup(probe), expected);
            }
        }
    }
}
