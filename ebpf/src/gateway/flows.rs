//! The conntrack maps from userspace: list flows, delete a session's or the
//! expired ones. The programs create and refresh entries; userspace only
//! reads and sweeps them.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::{Ebpf, maps::Array};
use ferry_ebpf_common::gateway::{
    self as shared, FlowForward, FlowKey, FlowReverse, FlowTimeouts, NAT_BUCKETS, NAT_PORT_MIN, NAT_PORTS,
    NAT_SLOTS, PROTO_ICMP, PROTO_TCP, PROTO_UDP, nat_slot,
};

use super::{errno, hash_map, insert as insert_entry};
use crate::Error;

/// bpf_map_update_elem's BPF_NOEXIST (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

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

/// The NAT slots in use, by index.
type Slots = HashMap<u32, FlowReverse>;

/// Whether NAT slot `reverse` belongs to the flow of forward entry
/// `key`/`value` (the programs give its NAT port to another flow once it
/// expired, or once the slot was freed).
fn owned_by(reverse: &FlowReverse, key: &FlowKey, value: &FlowForward) -> bool {
    reverse.in_use()
        && reverse.peer == key.peer
        && reverse.peer_port == key.peer_port
        && reverse.proxy == key.proxy
        && reverse.session == value.session
        && reverse.is_reply(value.real, value.snat, key.dport)
}

/// The NAT slot a forward entry names, if it still belongs to that flow.
fn reverse_of<'a>(key: &FlowKey, value: &FlowForward, slots: &'a Slots) -> Option<&'a FlowReverse> {
    let index = nat_slot(key.protocol, value.real, value.snat, key.dport, value.nat_port)?;
    slots.get(&index).filter(|r| owned_by(r, key, value))
}

fn slots_map(ebpf: &Ebpf) -> Result<Array<&aya::maps::MapData, FlowReverse>, Error> {
    let name = shared::NAT_SLOTS_MAP;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    Array::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Every NAT slot in use. One lookup per slot: a sweep reads
/// [`NAT_SLOTS`] of them.
fn slots(ebpf: &Ebpf) -> Result<Slots, Error> {
    let name = shared::NAT_SLOTS_MAP;
    let map = slots_map(ebpf)?;
    let mut in_use = HashMap::new();
    for index in 0..NAT_SLOTS.min(map.len()) {
        let slot = map.get(&index, 0).map_err(|source| Error::Map { name, source })?;
        if slot.in_use() {
            in_use.insert(index, slot);
        }
    }
    Ok(in_use)
}

/// The protocol and NAT port of slot `index` (see [`nat_slot`]).
fn slot_protocol_and_port(index: u32) -> (u8, u16) {
    let protocol = match index / (NAT_BUCKETS * NAT_PORTS) {
        0 => PROTO_TCP,
        1 => PROTO_UDP,
        _ => PROTO_ICMP,
    };
    (protocol, NAT_PORT_MIN + (index % NAT_PORTS) as u16)
}

/// Runs `write` on NAT slot `index` as its only writer, as the programs do
/// (the claim in [`shared::NAT_CLAIMS_MAP`]): it gets the slot as it is now
/// and returns what to write, or None to leave it. Returns whether it
/// wrote.
///
/// The kernel copies a value from userspace as a whole (a memcpy, in no
/// particular order), so the write is three: the slot as it is with an odd
/// `seq`, the new contents with the same odd `seq`, and the new contents
/// with the next even one. A program that read the old even `seq` sees it
/// changed; one that reads the new even `seq` reads fields the last copy
/// rewrote with the values they had already. (Stamps written by a program
/// in between may go back to the copy's; a stamp is only a recent time.)
fn with_claim(
    ebpf: &mut Ebpf,
    index: u32,
    write: impl FnOnce(&FlowReverse) -> Option<FlowReverse>,
) -> Result<bool, Error> {
    let claims_name = shared::NAT_CLAIMS_MAP;
    let mut attempts = 0;
    loop {
        let mut claims = hash_map::<u32, u8>(ebpf, claims_name)?;
        match claims.insert(index, 0, BPF_NOEXIST) {
            Ok(()) => break,
            // A program holds it for the time of a few map operations; a
            // full claims map is as brief.
            Err(err) if matches!(errno(&err), Some(libc::EEXIST | libc::E2BIG)) && attempts < 1000 => {
                attempts += 1;
                std::thread::yield_now();
            }
            Err(source) => return Err(Error::Map { name: claims_name, source }),
        }
    }
    let result = (|| {
        let name = shared::NAT_SLOTS_MAP;
        let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut map: Array<_, FlowReverse> =
            Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        let current = map.get(&index, 0).map_err(|source| Error::Map { name, source })?;
        let Some(value) = write(&current) else {
            return Ok(false);
        };
        let odd = current.seq | 1;
        for (contents, seq) in [(current, odd), (value, odd), (value, odd.wrapping_add(1))] {
            let written = FlowReverse { seq, ..contents };
            map.set(index, written, 0).map_err(|source| Error::Map { name, source })?;
        }
        Ok(true)
    })();
    let mut claims = hash_map::<u32, u8>(ebpf, claims_name)?;
    if let Err(source) = claims.remove(&index)
        && errno(&source) != Some(libc::ENOENT)
    {
        return Err(Error::Map { name: claims_name, source });
    }
    result
}

/// Frees the slots `doomed` picks, each judged again under its claim;
/// returns how many.
fn free_slots(ebpf: &mut Ebpf, doomed: impl Fn(u32, &FlowReverse) -> bool) -> Result<usize, Error> {
    let candidates: Vec<u32> =
        slots(ebpf)?.into_iter().filter(|(i, s)| doomed(*i, s)).map(|(i, _)| i).collect();
    let mut freed = 0;
    for index in candidates {
        let wrote = with_claim(ebpf, index, |current| {
            (current.in_use() && doomed(index, current)).then(FlowReverse::default)
        })?;
        freed += wrote as usize;
    }
    Ok(freed)
}

impl Flow {
    /// `reverse`: the flow's NAT slot, whose stamp replies refresh too.
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

    /// The flow's NAT slot.
    fn slot(&self) -> Option<u32> {
        nat_slot(
            self.protocol,
            self.real.octets(),
            self.snat.octets(),
            self.target_port().to_be_bytes(),
            self.nat_port.to_be_bytes(),
        )
    }

    /// ICMP echo has no destination port; the programs key it with 0.
    fn target_port(&self) -> u16 {
        if self.protocol == PROTO_ICMP { 0 } else { self.target_port }
    }
}

pub(super) fn list(ebpf: &Ebpf) -> Result<Vec<Flow>, Error> {
    let slots = slots(ebpf)?;
    let name = shared::CT_FORWARD_MAP;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let map: aya::maps::HashMap<_, FlowKey, FlowForward> =
        aya::maps::HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
    let mut flows = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok((key, value)) => {
                flows.push(Flow::from_forward(&key, &value, reverse_of(&key, &value, &slots)))
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
/// dead). The flow's NAT slot is overwritten, whoever held it.
pub(super) fn insert(ebpf: &mut Ebpf, flow: &Flow, capacity: u32) -> Result<(), Error> {
    let name = shared::NAT_SLOTS_MAP;
    let index = flow.slot().ok_or(Error::MapFull { name, capacity: NAT_SLOTS })?;
    let generation = super::generation(ebpf, flow.counter)?;
    let reverse = FlowReverse {
        peer: flow.peer.ip().octets(),
        proxy: flow.proxy.octets(),
        peer_port: flow.peer.port().to_be_bytes(),
        target_port: flow.target_port().to_be_bytes(),
        real: flow.real.octets(),
        snat: flow.snat.octets(),
        counter: flow.counter,
        seq: 0,
        protocol: flow.protocol,
        replied: 0,
        nat_port: flow.nat_port.to_be_bytes(),
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
    with_claim(ebpf, index, |_| Some(reverse))?;
    insert_entry(ebpf, shared::CT_FORWARD_MAP, &flow.forward_key(), &forward, capacity)
}

/// Deletes both directions' entries of `sessions`; returns how many.
pub(super) fn remove_sessions(ebpf: &mut Ebpf, sessions: &BTreeSet<u64>) -> Result<usize, Error> {
    let forward = remove_where::<FlowKey, FlowForward>(ebpf, shared::CT_FORWARD_MAP, |v| {
        sessions.contains(&v.session)
    })?;
    let reverse = free_slots(ebpf, |_, slot| sessions.contains(&slot.session))?;
    Ok(forward + reverse)
}

/// Deletes entries idle past their protocol's timeout, and frees their NAT
/// slots; returns how many. The same judgement as the programs', so that
/// the sweep never deletes a flow they would still forward: they judge a
/// flow by its NAT slot's stamp, which replies refresh too, and so does the
/// sweep a forward entry whose slot is still its own. Only packets toward
/// the target refresh the forward entry's stamp: a flow only the target
/// talks on would otherwise lose its forward half, and its next packet from
/// the technician would start a new flow, perhaps on another NAT port than
/// the one its replies arrive at.
///
/// A freed slot's port is free for any new flow at once (the programs also
/// take over expired slots themselves); a forward entry left naming it is
/// judged against the slot on its next packet and takes a new port.
pub(super) fn expire(ebpf: &mut Ebpf, timeouts: &FlowTimeouts) -> Result<usize, Error> {
    let now = monotonic_ns();
    let dead = |protocol: u8, last_seen: u64| timeouts.expired(protocol, last_seen, now);
    let slots = slots(ebpf)?;
    let forward = remove_where_kv::<FlowKey, FlowForward>(ebpf, shared::CT_FORWARD_MAP, |k, v| {
        let replied = reverse_of(k, v, &slots).map_or(0, |r| r.last_seen_ns);
        dead(k.protocol, v.last_seen_ns.max(replied))
    })?;
    let reverse = free_slots(ebpf, |index, slot| dead(slot_protocol_and_port(index).0, slot.last_seen_ns))?;
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
