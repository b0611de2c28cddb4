//! Per-outcome packet counters: a per-CPU array of `u64` indexed by a
//! program's outcome enum, read and summed over CPUs.

use std::{fmt, marker::PhantomData};

use aya::{Ebpf, maps::PerCpuArray};
use ferry_ebpf_common::{gateway, guard, relay};

use crate::Error;

/// An outcome enum whose discriminant indexes a counter array.
pub trait CounterOutcome: Copy + Eq + fmt::Debug + 'static {
    /// Every outcome, in counter order.
    const ALL: &'static [Self];
    /// A stable snake_case name for metrics and output.
    fn name(self) -> &'static str;
    /// Whether the program drops packets with this outcome.
    fn drops(self) -> bool;
    /// The XDP verdict this outcome has, as printed in tables.
    fn verdict(self) -> &'static str {
        if self.drops() { "drop" } else { "pass" }
    }
}

impl CounterOutcome for guard::Outcome {
    const ALL: &'static [Self] = &guard::Outcome::ALL;

    fn name(self) -> &'static str {
        guard::Outcome::name(self)
    }

    fn drops(self) -> bool {
        guard::Outcome::drops(self)
    }
}

impl CounterOutcome for relay::Outcome {
    const ALL: &'static [Self] = &relay::Outcome::ALL;

    fn name(self) -> &'static str {
        relay::Outcome::name(self)
    }

    fn drops(self) -> bool {
        relay::Outcome::drops(self)
    }

    fn verdict(self) -> &'static str {
        match self {
            relay::Outcome::ForwardTx => "tx",
            relay::Outcome::ForwardRedirect => "redirect",
            other if other.drops() => "drop",
            _ => "pass",
        }
    }
}

impl CounterOutcome for gateway::Outcome {
    const ALL: &'static [Self] = &gateway::Outcome::ALL;

    fn name(self) -> &'static str {
        gateway::Outcome::name(self)
    }

    fn drops(self) -> bool {
        gateway::Outcome::drops(self)
    }

    fn verdict(self) -> &'static str {
        match self {
            gateway::Outcome::ForwardedToTarget => "redirect",
            other if other.drops() => "drop",
            _ => "pass",
        }
    }
}

/// A program's packet counters by outcome, summed over CPUs. `N` is the
/// number of outcomes.
pub struct Counters<O, const N: usize> {
    counts: [u64; N],
    _outcome: PhantomData<O>,
}

/// The uplink guard's counters.
pub type GuardCounters = Counters<guard::Outcome, { guard::Outcome::COUNT as usize }>;
/// The gateway programs' counters (both programs share one array).
pub type GatewayCounters = Counters<gateway::Outcome, { gateway::Outcome::COUNT as usize }>;
/// The relay forwarder's counters.
pub type RelayCounters = Counters<relay::Outcome, { relay::Outcome::COUNT as usize }>;

impl<O: CounterOutcome, const N: usize> Counters<O, N> {
    fn from_counts(counts: [u64; N]) -> Self {
        debug_assert_eq!(O::ALL.len(), N);
        Counters { counts, _outcome: PhantomData }
    }

    /// Reads the per-CPU counter map `name` of `ebpf`.
    pub(crate) fn read(ebpf: &Ebpf, name: &'static str) -> Result<Self, Error> {
        let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut totals = [0u64; N];
        for (index, total) in totals.iter_mut().enumerate() {
            let per_cpu = counters.get(&(index as u32), 0).map_err(|source| Error::Map { name, source })?;
            *total = per_cpu.iter().sum();
        }
        Ok(Self::from_counts(totals))
    }

    pub fn get(&self, outcome: O) -> u64 {
        O::ALL.iter().position(|&o| o == outcome).map_or(0, |i| self.counts[i])
    }

    /// Every outcome with its count, in counter order.
    pub fn iter(&self) -> impl Iterator<Item = (O, u64)> + '_ {
        O::ALL.iter().zip(self.counts).map(|(&o, n)| (o, n))
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn dropped(&self) -> u64 {
        self.iter().filter(|(o, _)| o.drops()).map(|(_, n)| n).sum()
    }

    /// The counts that grew since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut delta = [0u64; N];
        for (i, d) in delta.iter_mut().enumerate() {
            *d = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        Self::from_counts(delta)
    }
}

impl RelayCounters {
    /// Packets sent on by the program (XDP_TX and XDP_REDIRECT).
    pub fn forwarded(&self) -> u64 {
        self.iter().filter(|(o, _)| o.forwards()).map(|(_, n)| n).sum()
    }
}

// Written by hand: derives would require O itself to be Clone, Default, ...
impl<O, const N: usize> Clone for Counters<O, N> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<O, const N: usize> Copy for Counters<O, N> {}

impl<O, const N: usize> PartialEq for Counters<O, N> {
    fn eq(&self, other: &Self) -> bool {
        self.counts == other.counts
    }
}

impl<O, const N: usize> Eq for Counters<O, N> {}

impl<O: CounterOutcome, const N: usize> Default for Counters<O, N> {
    fn default() -> Self {
        Self::from_counts([0; N])
    }
}

impl<O: CounterOutcome, const N: usize> fmt::Debug for Counters<O, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().map(|(o, n)| (o.name(), n))).finish()
    }
}

impl<O: CounterOutcome, const N: usize> fmt::Display for Counters<O, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = O::ALL.iter().map(|o| o.verdict().len()).max().unwrap_or(0);
        for (outcome, count) in self.iter() {
            writeln!(f, "{:<20} {:>width$} {count:>14}", outcome.name(), outcome.verdict())?;
        }
        write!(f, "{:<20} {:>width$} {:>14}", "total", "", self.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_by_outcome_and_subtracted() {
        let mut counts = [0u64; relay::Outcome::COUNT as usize];
        counts[relay::Outcome::ForwardTx as usize] = 7;
        counts[relay::Outcome::ForwardRedirect as usize] = 2;
        counts[relay::Outcome::DropUnbound as usize] = 3;
        let later = RelayCounters::from_counts(counts);
        counts[relay::Outcome::ForwardTx as usize] = 5;
        let earlier = RelayCounters::from_counts(counts);

        assert_eq!(later.get(relay::Outcome::ForwardTx), 7);
        assert_eq!((later.total(), later.forwarded(), later.dropped()), (12, 9, 3));
        let delta = later.since(&earlier);
        assert_eq!(
            delta.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>(),
            [(relay::Outcome::ForwardTx, 2)]
        );
        assert!(later.to_string().contains("forward_redirect     redirect              2"));

        let guard = GuardCounters::default();
        assert_eq!(guard.to_string().lines().next(), Some("pass_not_ip          pass              0"));
    }
}
