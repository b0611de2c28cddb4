//! The conntrack maps from userspace: list flows, delete a session's or the
//! expired ones. The programs create and refresh entries; userspace only
//! reads and sweeps them.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::Ebpf;
use ferry_ebpf_common::gateway::{
    self as shared, FlowForward, FlowKey, FlowReverse, FlowTimeouts, PROTO_ICMP, ReplyKey,
};

use super::{errno, hash_map, insert as insert_entry};
use crate::Error;

/// One translated flow, as both conntrack maps describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// TCP, UDP or ICMP (IANA numbers).
    pub protocol: u8,
    pub session: u64,
    /// The technician's tunnel address and source port (ICMP: echo id).
    pub peer: SocketAddrV4,
    pub proxy: Ipv4Addr,
    /// The destination port on the target (ICMP: 0).
    pub target_port: u16,
    pub real: Ipv4Addr,
    pub snat: Ipv4Addr,
    pub nat_port: u16,
    pub counter: u32,
    /// CLOCK_MONOTONIC ns of the last packet either way.
    pub last_seen_ns: u64,
}

/// The reverse entry a forward entry names, if it still belongs to that
/// flow (the programs give its NAT port to another flow once it expired).
fn reverse_of<'a>(
    key: &FlowKey,
    value: &FlowForward,
    reverse: &'a HashMap<ReplyKey, FlowReverse>,
) -> Option<&'a FlowReverse> {
    let reply = ReplyKey {
        protocol: key.protocol,
        _pad: [0; 3],
        real: value.real,
        snat: value.snat,
        target_port: key.dport,
        nat_port: value.nat_port,
    };
    reverse.get(&reply).filter(|r| {
        r.peer == key.peer
            && r.peer_port == key.peer_port
            && r.proxy == key.proxy
            && r.session == value.session
    })
}

/// Every entry of the reverse map.
fn reverse_entries(ebpf: &Ebpf) -> Result<HashMap<ReplyKey, FlowReverse>, Error> {
    let name = shared::CT_REVERSE_MAP;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let map: aya::maps::HashMap<_, ReplyKey, FlowReverse> =
        aya::maps::HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
    let mut entries = HashMap::new();
    for entry in map.iter() {
        match entry {
            Ok((key, value)) => {
                entries.insert(key, value);
            }
            // Deleted by the LRU between the key walk and the lookup.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    Ok(entries)
}

impl Flow {
    /// `reverse`: the flow's reverse entry, whose stamp replies refresh too.
    fn from_forward(key: &FlowKey, value: &FlowForward, reverse: Option<&FlowReverse>) -> Flow {
        Flow {
            protocol: key.protocol,
            session: value.session,
            peer: SocketAddrV4::new(key.peer.into(), u16::from_be_bytes(key.peer_port)),
            proxy: key.proxy.into(),
            target_port: u16::from_be_bytes(key.dport),
            real: value.real.into(),
            snat: value.snat.into(),
            nat_port: u16::from_be_bytes(value.nat_port),
            counter: value.counter,
            last_seen_ns: value.last_seen_ns.max(reverse.map_or(0, |r| r.last_seen_ns)),
        }
    }

    fn forward_key(&self) -> FlowKey {
        FlowKey {
            protocol: self.protocol,
            _pad: [0; 3],
            peer: self.peer.ip().octets(),
            proxy: self.proxy.octets(),
            peer_port: self.peer.port().to_be_bytes(),
            dport: self.target_port().to_be_bytes(),
        }
    }

    fn reply_key(&self) -> ReplyKey {
        ReplyKey {
            protocol: self.protocol,
            _pad: [0; 3],
            real: self.real.octets(),
            snat: self.snat.octets(),
            target_port: self.target_port().to_be_bytes(),
            nat_port: self.nat_port.to_be_bytes(),
        }
    }

    /// ICMP echo has no destination port; the programs key it with 0.
    fn target_port(&self) -> u16 {
        if self.protocol == PROTO_ICMP { 0 } else { self.target_port }
    }
}

pub(super) fn list(ebpf: &Ebpf) -> Result<Vec<Flow>, Error> {
    let reverse = reverse_entries(ebpf)?;
    let name = shared::CT_FORWARD_MAP;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let map: aya::maps::HashMap<_, FlowKey, FlowForward> =
        aya::maps::HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
    let mut flows = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok((key, value)) => {
                flows.push(Flow::from_forward(&key, &value, reverse_of(&key, &value, &reverse)))
            }
            // Deleted by the LRU between the key walk and the lookup.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    Ok(flows)
}

/// Inserts both halves of `flow`, as of the whitelist entry that now holds
/// its counter slot (its generations: a flow of a slot no entry holds is
/// dead).
pub(super) fn insert(ebpf: &mut Ebpf, flow: &Flow, capacity: u32) -> Result<(), Error> {
    let generation = super::generation(ebpf, flow.counter)?;
    let reverse = FlowReverse {
        peer: flow.peer.ip().octets(),
        proxy: flow.proxy.octets(),
        peer_port: flow.peer.port().to_be_bytes(),
        _pad: [0; 2],
        counter: flow.counter,
        session: flow.session,
        last_seen_ns: flow.last_seen_ns,
        // Never a tick: the programs judge the stamp by the clock.
        last_tick: 0,
        generation,
    };
    let forward = FlowForward {
        nat_port: flow.nat_port.to_be_bytes(),
        _pad: [0; 2],
        real: flow.real.octets(),
        snat: flow.snat.octets(),
        counter: flow.counter,
        session: flow.session,
        last_seen_ns: flow.last_seen_ns,
        // Never a tick: the programs judge the stamp by the clock.
        last_tick: 0,
        generation,
    };
    insert_entry(ebpf, shared::CT_REVERSE_MAP, &flow.reply_key(), &reverse, capacity)?;
    insert_entry(ebpf, shared::CT_FORWARD_MAP, &flow.forward_key(), &forward, capacity)
}

/// Deletes both directions' entries of `sessions`; returns how many.
pub(super) fn remove_sessions(ebpf: &mut Ebpf, sessions: &BTreeSet<u64>) -> Result<usize, Error> {
    let forward = remove_where::<FlowKey, FlowForward>(ebpf, shared::CT_FORWARD_MAP, |v| {
        sessions.contains(&v.session)
    })?;
    let reverse = remove_where::<ReplyKey, FlowReverse>(ebpf, shared::CT_REVERSE_MAP, |v| {
        sessions.contains(&v.session)
    })?;
    Ok(forward + reverse)
}

/// Deletes entries idle past their protocol's timeout; returns how many.
/// The same judgement as the programs', so that the sweep never deletes a
/// flow they would still forward: they judge a flow by its reverse entry's
/// stamp, which replies refresh too, and so does the sweep a forward entry
/// whose reverse entry is still its own. Only packets toward the target
/// refresh the forward entry's stamp: a flow only the target talks on
/// would otherwise lose its forward half, and its next packet from the
/// technician would start a new flow, perhaps on another NAT port than the
/// one its replies arrive at.
pub(super) fn expire(ebpf: &mut Ebpf, timeouts: &FlowTimeouts) -> Result<usize, Error> {
    let now = monotonic_ns();
    let dead = |protocol: u8, last_seen: u64| timeouts.expired(protocol, last_seen, now);
    let reverse = reverse_entries(ebpf)?;
    let forward = remove_where_kv::<FlowKey, FlowForward>(ebpf, shared::CT_FORWARD_MAP, |k, v| {
        let replied = reverse_of(k, v, &reverse).map_or(0, |r| r.last_seen_ns);
        dead(k.protocol, v.last_seen_ns.max(replied))
    })?;
    let reverse = remove_where_kv::<ReplyKey, FlowReverse>(ebpf, shared::CT_REVERSE_MAP, |k, v| {
        dead(k.protocol, v.last_seen_ns)
    })?;
    Ok(forward + reverse)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns, which
/// stamps flows ([`Flow::last_seen_ns`]). It counts from boot, so a small
/// value is a recent time on a freshly booted machine, not a long-ago one.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn remove_where<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    doomed: impl Fn(&V) -> bool,
) -> Result<usize, Error> {
    remove_where_kv::<K, V>(ebpf, name, |_, v| doomed(v))
}

fn remove_where_kv<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    doomed: impl Fn(&K, &V) -> bool,
) -> Result<usize, Error> {
    let mut map = hash_map::<K, V>(ebpf, name)?;
    // Collect first: deleting while walking the keys restarts the walk.
    let mut keys = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok((key, value)) if doomed(&key, &value) => keys.push(key),
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    let mut removed = 0;
    for key in &keys {
        match map.remove(key) {
            Ok(()) => removed += 1,
            Err(err) if errno(&err) == Some(libc::ENOENT) => {}
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    Ok(removed)
}
