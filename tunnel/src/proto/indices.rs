//! The device's local receiver indices, with an optional journal of changes.
//!
//! A packet filter in front of the socket (the gateway's uplink guard) can drop
//! responses, cookie replies and transport messages whose receiver index no live
//! handshake or session holds, if it learns every index before the peer can use
//! it. The journal gives the shell exactly that: changes are recorded as they
//! happen, and the shell drains them before it sends the datagrams the same call
//! produced (an initiation or response is what lets the peer use a new index).

use std::collections::HashMap;

use super::device::PeerId;

/// One change to the set of local indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexChange {
    Added(u32),
    Removed(u32),
}

/// Local index → peer, recording changes once [`IndexTable::watch`] is called.
#[derive(Debug, Default)]
pub struct IndexTable {
    owners: HashMap<u32, PeerId>,
    journal: Vec<IndexChange>,
    /// Off until watched, so an unwatched device keeps no history.
    watched: bool,
}

impl IndexTable {
    pub fn get(&self, index: &u32) -> Option<&PeerId> {
        self.owners.get(index)
    }

    pub fn contains(&self, index: u32) -> bool {
        self.owners.contains_key(&index)
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.owners.keys().copied()
    }

    pub fn insert(&mut self, index: u32, owner: PeerId) {
        if self.owners.insert(index, owner).is_none() {
            self.record(IndexChange::Added(index));
        }
    }

    pub fn remove(&mut self, index: &u32) {
        if self.owners.remove(index).is_some() {
            self.record(IndexChange::Removed(*index));
        }
    }

    /// Removes every index `owner` holds.
    pub fn remove_owner(&mut self, owner: PeerId) {
        let gone: Vec<u32> = self.owners.iter().filter(|(_, o)| **o == owner).map(|(i, _)| *i).collect();
        for index in gone {
            self.remove(&index);
        }
    }

    /// Starts (or restarts) the journal and returns the indices live now, which
    /// the watcher must treat as added.
    pub fn watch(&mut self) -> Vec<u32> {
        self.watched = true;
        self.journal.clear();
        self.keys().collect()
    }

    /// The changes since the last drain, oldest first.
    pub fn drain_changes(&mut self) -> std::vec::Drain<'_, IndexChange> {
        self.journal.drain(..)
    }

    fn record(&mut self, change: IndexChange) {
        if self.watched {
            self.journal.push(change);
        }
    }
}
