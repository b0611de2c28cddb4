//! Limits per client address: how much of something (open connections,
//! bytes of request bodies held) one source may hold, and all of them
//! together. A cap on the total alone lets one client take all of it and
//! lock everyone else out; a cap per source makes that take many
//! addresses.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, PoisonError},
};

/// The address a limit counts a client under: its IPv4 address, or the
/// /64 network of its IPv6 address (one host usually has a whole /64 to
/// pick addresses from, so counting single IPv6 addresses would cap
/// nothing). An IPv4 address mapped into IPv6 counts as the IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(network)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Which cap a request to take more went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    #[error("the limit for all clients together is reached")]
    Total,
    #[error("the limit for one client address is reached")]
    PerSource,
}

impl Over {
    /// A short name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Over::Total => "global",
            Over::PerSource => "per_source",
        }
    }
}

/// Amounts held by sources, under a cap per source and a cap in total.
/// What it tracks is bounded by the total: a source is only remembered
/// while it holds something.
#[derive(Debug)]
pub struct Tally {
    total_cap: usize,
    per_source_cap: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_source: HashMap<Source, usize>,
}

impl Tally {
    pub fn new(total_cap: usize, per_source_cap: usize) -> Arc<Tally> {
        Arc::new(Tally { total_cap, per_source_cap, held: Mutex::new(Held::default()) })
    }

    /// A share for `source` that holds nothing yet.
    pub fn share(self: &Arc<Tally>, source: Source) -> Share {
        Share { tally: self.clone(), source, amount: 0 }
    }

    /// A share of `amount` for `source`, if both caps allow it.
    pub fn take(self: &Arc<Tally>, source: Source, amount: usize) -> Result<Share, Over> {
        let mut share = self.share(source);
        share.grow(amount)?;
        Ok(share)
    }

    /// What all sources hold together now.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// What `source` holds now.
    pub fn of(&self, source: Source) -> usize {
        self.lock().by_source.get(&source).copied().unwrap_or(0)
    }

    pub fn total_cap(&self) -> usize {
        self.total_cap
    }

    pub fn per_source_cap(&self) -> usize {
        self.per_source_cap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Nothing panics while holding the lock; a poisoned one still
        // holds consistent counts.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one holder (a connection, a request body) holds of a [`Tally`];
/// given back when dropped.
#[derive(Debug)]
pub struct Share {
    tally: Arc<Tally>,
    source: Source,
    amount: usize,
}

impl Share {
    /// Takes `more`, if both caps allow it; otherwise nothing changes.
    pub fn grow(&mut self, more: usize) -> Result<(), Over> {
        if more == 0 {
            return Ok(());
        }
        let mut held = self.tally.lock();
        let of_source = held.by_source.get(&self.source).copied().unwrap_or(0);
        if of_source.saturating_add(more) > self.tally.per_source_cap {
            return Err(Over::PerSource);
        }
        if held.total.saturating_add(more) > self.tally.total_cap {
            return Err(Over::Total);
        }
        held.total += more;
        *held.by_source.entry(self.source).or_insert(0) += more;
        self.amount += more;
        Ok(())
    }

    pub fn amount(&self) -> usize {
        self.amount
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.amount == 0 {
            return;
        }
        let mut held = self.tally.lock();
        held.total = held.total.saturating_sub(self.amount);
        if let Some(of_source) = held.by_source.get_mut(&self.source) {
            *of_source = of_source.saturating_sub(self.amount);
            if *of_source == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.7"), source("192.0.2.7"));
        assert_ne!(source("192.0.2.7"), source("192.0.2.8"));
        assert_eq!(source("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn each_cap_holds_and_what_is_given_back_can_be_taken_again() {
        let tally = Tally::new(5, 3);
        let (a, b, c) = (source("192.0.2.1"), source("192.0.2.2"), source("192.0.2.3"));
        let a1 = tally.take(a, 2).unwrap();
        let mut a2 = tally.take(a, 1).unwrap();
        assert_eq!(tally.take(a, 1).unwrap_err(), Over::PerSource);
        assert_eq!(a2.grow(1).unwrap_err(), Over::PerSource);
        let b1 = tally.take(b, 2).unwrap();
        assert_eq!(tally.take(c, 1).unwrap_err(), Over::Total);
        assert_eq!((tally.total(), tally.of(a), tally.of(b), tally.of(c)), (5, 3, 2, 0));
        drop(a1);
        assert_eq!((tally.total(), tally.of(a)), (3, 1));
        let c1 = tally.take(c, 2).unwrap();
        drop((a2, b1, c1));
        assert_eq!(tally.total(), 0);
        // A source that holds nothing is forgotten.
        assert!(tally.lock().by_source.is_empty());
    }
}
