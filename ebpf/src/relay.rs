//! The relay's XDP forwarder, from userspace: load, configure, attach, bind
//! peers, read traffic and counters.
//!
//! The daemon decides everything (which peer address is bound to which
//! allocation, which datagrams are worth forwarding); the program applies the
//! bindings at line rate. [`RelayForwarder`] never pins anything: when it is
//! dropped, or the process dies, the program and its maps go away.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::Xdp,
    sys::SyscallError,
};
use ferry_ebpf_common::relay::{
    self as shared, Binding, BindingKey, BindingKey4, CachedHop, DEFAULT_NEXT_HOP_LIFETIME_MS, FAMILY_V4,
    FAMILY_V6, FLAG_FIB, RelayConfig, Traffic,
};

pub use crate::counters::RelayCounters;
use crate::{
    AttachMode, Error,
    attach::{self, Attachment},
    load_object_sized, load_xdp, xdp, xdp_mut,
};

const WHAT: &str = "relay forwarder";
/// bpf_map_update_elem flags (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// The loaded forwarder and its maps. Dropping it detaches the program from
/// every interface.
pub struct RelayForwarder {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// Entries in the bindings map; the map has no cheap count of its own.
    len: u32,
    capacity: u32,
    slots: u32,
}

impl RelayForwarder {
    /// Loads the forwarder into the kernel (through the verifier) with room for
    /// `max_bindings` bindings of each family (IPv4 and IPv6 senders have a
    /// map each) and `max_slots` allocation slots. Until
    /// [`configure`](Self::configure) gives it an address and a port range it
    /// passes everything. Each binding carries its own next-hop cache.
    pub fn load(max_bindings: u32, max_slots: u32) -> Result<Self, Error> {
        let mut ebpf = load_object_sized(&[
            (shared::BINDINGS_MAP, max_bindings.max(1)),
            (shared::BINDINGS6_MAP, max_bindings.max(1)),
            (shared::TRAFFIC_MAP, max_slots.max(1)),
        ])?;
        load_xdp(&mut ebpf, shared::PROGRAM)?;
        Ok(RelayForwarder {
            ebpf,
            attachments: Vec::new(),
            len: 0,
            capacity: max_bindings.max(1),
            slots: max_slots.max(1),
        })
    }

    /// Sets the relay's addresses, port range and flags; takes effect with the
    /// next packet.
    pub fn configure(&mut self, config: RelayConfig) -> Result<(), Error> {
        let name = shared::CONFIG_MAP;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut array: Array<_, RelayConfig> =
            Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        array.set(0, config, 0).map_err(|source| Error::Map { name, source })
    }

    /// Attaches to `iface` (in the caller's network namespace) as well as to
    /// the interfaces it is already on, and returns the mode that took effect:
    /// `"native"` or `"generic"`. Attaching to the same interface again
    /// replaces that attachment.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&'static str, Error> {
        self.detach(iface)?;
        let attachment = attach::attach(self.program_mut()?, iface, mode, WHAT)?;
        let mode = attachment.mode;
        self.attachments.push(attachment);
        Ok(mode)
    }

    /// Detaches from `iface`; false if the forwarder was not attached there.
    pub fn detach(&mut self, iface: &str) -> Result<bool, Error> {
        let Some(index) = self.attachments.iter().position(|a| a.iface == iface) else {
            return Ok(false);
        };
        let attachment = self.attachments.swap_remove(index);
        attach::detach(self.program_mut()?, attachment, shared::PROGRAM, WHAT)?;
        Ok(true)
    }

    /// Detaches from every interface. Tries them all and returns the first
    /// error.
    pub fn detach_all(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        while let Some(attachment) = self.attachments.pop() {
            let detached = self
                .program_mut()
                .and_then(|program| attach::detach(program, attachment, shared::PROGRAM, WHAT));
            if result.is_ok() {
                result = detached;
            }
        }
        result
    }

    /// The interfaces and modes the forwarder is attached with.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, &'static str)> + '_ {
        self.attachments.iter().map(|a| (a.iface.as_str(), a.mode))
    }

    /// Adds or replaces the binding for `key`. A new key in a full map is
    /// [`Error::MapFull`]; replacing an existing one always works.
    pub fn insert(&mut self, key: &BindingKey, binding: &Binding) -> Result<(), Error> {
        let capacity = self.capacity;
        let new = if key.family == FAMILY_V4 {
            insert_in(&mut self.ebpf, shared::BINDINGS_MAP, capacity, &BindingKey4::of(key), binding)?
        } else {
            insert_in(&mut self.ebpf, shared::BINDINGS6_MAP, capacity, key, binding)?
        };
        if new {
            self.len += 1;
        }
        Ok(())
    }

    /// Removes the binding for `key`; false if there was none.
    pub fn remove(&mut self, key: &BindingKey) -> Result<bool, Error> {
        let removed = if key.family == FAMILY_V4 {
            remove_in(&mut self.ebpf, shared::BINDINGS_MAP, &BindingKey4::of(key))?
        } else {
            remove_in(&mut self.ebpf, shared::BINDINGS6_MAP, key)?
        };
        if removed {
            self.len -= 1;
        }
        Ok(removed)
    }

    /// The binding for `key`, if any.
    pub fn get(&self, key: &BindingKey) -> Result<Option<Binding>, Error> {
        if key.family == FAMILY_V4 {
            get_in(&self.ebpf, shared::BINDINGS_MAP, &BindingKey4::of(key))
        } else {
            get_in(&self.ebpf, shared::BINDINGS6_MAP, key)
        }
    }

    /// Bindings in the maps, both families.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bindings each family's map can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Allocation slots in the traffic map (valid slots are `0..slots()`).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// What the program forwarded for allocation `slot`, summed over CPUs.
    pub fn traffic(&self, slot: u32) -> Result<Traffic, Error> {
        let name = shared::TRAFFIC_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let traffic: PerCpuArray<_, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        let per_cpu = traffic.get(&slot, 0).map_err(|source| Error::Map { name, source })?;
        Ok(per_cpu.iter().fold(Traffic::default(), |total, cpu| Traffic {
            packets: total.packets + cpu.packets,
            bytes: total.bytes + cpu.bytes,
        }))
    }

    /// Zeroes allocation `slot` on every CPU, before the slot is reused.
    pub fn reset_slot(&mut self, slot: u32) -> Result<(), Error> {
        let name = shared::TRAFFIC_MAP;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Io(source))?;
        let zeroes = PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(Error::Io)?;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut traffic: PerCpuArray<_, Traffic> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        traffic.set(slot, zeroes, 0).map_err(|source| Error::Map { name, source })
    }

    /// Makes every cached next hop unusable with one map write: the program
    /// asks the FIB again for the next datagram to each destination. Returns
    /// the new generation.
    pub fn invalidate_next_hops(&mut self) -> Result<u32, Error> {
        let name = shared::NEXT_HOP_GENERATION_MAP;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut array: Array<_, u32> = Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        let next = array.get(&0, 0).map_err(|source| Error::Map { name, source })?.wrapping_add(1);
        array.set(0, next, 0).map_err(|source| Error::Map { name, source })?;
        Ok(next)
    }

    /// The current next-hop generation (see [`invalidate_next_hops`](Self::invalidate_next_hops)).
    pub fn next_hop_generation(&self) -> Result<u32, Error> {
        let name = shared::NEXT_HOP_GENERATION_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let array: Array<_, u32> = Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        array.get(&0, 0).map_err(|source| Error::Map { name, source })
    }

    /// The `bpf_fib_lookup` calls the program made (next-hop cache misses),
    /// summed over CPUs.
    pub fn fib_lookups(&self) -> Result<u64, Error> {
        let name = shared::FIB_LOOKUPS_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        let per_cpu = array.get(&0, 0).map_err(|source| Error::Map { name, source })?;
        Ok(per_cpu.iter().sum())
    }

    /// The per-outcome packet counters, summed over CPUs.
    pub fn counters(&self) -> Result<RelayCounters, Error> {
        RelayCounters::read(&self.ebpf, shared::COUNTERS_MAP)
    }

    /// The loaded program, for BPF_PROG_RUN.
    pub fn program(&self) -> Result<&Xdp, Error> {
        xdp(&self.ebpf, shared::PROGRAM)
    }

    /// Loads the benchmark's step variants ([`shared::BENCH_STEP_PROGRAMS`]),
    /// which share this forwarder's maps. Benchmarks only.
    #[doc(hidden)]
    pub fn load_bench_steps(&mut self) -> Result<(), Error> {
        for &(name, _) in shared::BENCH_STEP_PROGRAMS {
            load_xdp(&mut self.ebpf, name)?;
        }
        Ok(())
    }

    /// A step variant, once [`load_bench_steps`](Self::load_bench_steps)
    /// loaded it.
    #[doc(hidden)]
    pub fn bench_step(&self, name: &'static str) -> Result<&Xdp, Error> {
        xdp(&self.ebpf, name)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, Error> {
        xdp_mut(&mut self.ebpf, shared::PROGRAM)
    }
}

/// Adds or replaces `key`'s binding in the bindings map `name`; true if the
/// key was new.
fn insert_in<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    capacity: u32,
    key: &K,
    binding: &Binding,
) -> Result<bool, Error> {
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
    let mut map: HashMap<&mut MapData, K, Binding> =
        HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
    // One syscall for the common case (a new key); replacing takes two.
    match map.insert(key, binding, BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(err) if errno(&err) == Some(libc::EEXIST) => {
            map.insert(key, binding, BPF_EXIST).map_err(|source| Error::Map { name, source })?;
            Ok(false)
        }
        Err(err) if errno(&err) == Some(libc::E2BIG) => Err(Error::MapFull { name, capacity }),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// Removes `key` from the bindings map `name`; false if it was not there.
fn remove_in<K: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, key: &K) -> Result<bool, Error> {
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
    let mut map: HashMap<&mut MapData, K, Binding> =
        HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(err) if errno(&err) == Some(libc::ENOENT) => Ok(false),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// `key`'s binding in the bindings map `name`, if any.
fn get_in<K: aya::Pod>(ebpf: &Ebpf, name: &'static str, key: &K) -> Result<Option<Binding>, Error> {
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let map: HashMap<_, K, Binding> = HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
    match map.get(key, 0) {
        Ok(binding) => Ok(Some(binding)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(err) if errno(&err) == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(Error::Map { name, source }),
    }
}

impl Drop for RelayForwarder {
    fn drop(&mut self) {
        if let Err(err) = self.detach_all() {
            tracing::warn!(error = %err, "detaching the relay forwarder failed");
        }
    }
}

/// The errno behind a failed map syscall.
fn errno(err: &MapError) -> Option<i32> {
    match err {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// The forwarder's configuration: the relay's public addresses (None: that
/// family is not forwarded), the allocation port range, and whether to route
/// with the kernel's FIB (see [`FLAG_FIB`]), caching next hops for
/// [`DEFAULT_NEXT_HOP_LIFETIME_MS`] (set `next_hop_lifetime_ms` for another
/// lifetime, 0 for none).
pub fn config(
    addr4: Option<Ipv4Addr>,
    addr6: Option<Ipv6Addr>,
    ports: RangeInclusive<u16>,
    fib: bool,
) -> RelayConfig {
    RelayConfig {
        addr4: addr4.map_or([0; 4], |a| a.octets()),
        addr6: addr6.map_or([0; 16], |a| a.octets()),
        port_min: ports.start().to_be_bytes(),
        port_max: ports.end().to_be_bytes(),
        flags: if fib { FLAG_FIB } else { 0 },
        next_hop_lifetime_ms: DEFAULT_NEXT_HOP_LIFETIME_MS,
        tick_ns: tick_ns(),
    }
}

/// The kernel's tick (1/HZ) in ns: the resolution of the coarse clocks,
/// which advance once per tick. 0 if the kernel does not say (the program
/// then assumes the longest tick).
fn tick_ns() -> u32 {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres writes a timespec to a valid pointer.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 || res.tv_sec != 0 {
        return 0;
    }
    u32::try_from(res.tv_nsec).unwrap_or(0)
}

/// The key for datagrams from `from` to allocation port `relay_port`.
/// IPv4-mapped IPv6 addresses (what a dual-stack socket reports) are IPv4.
pub fn key(from: SocketAddr, relay_port: u16) -> BindingKey {
    let (addr, family) = addr_bytes(from.ip());
    BindingKey {
        addr,
        port: from.port().to_be_bytes(),
        relay_port: relay_port.to_be_bytes(),
        family,
        _pad: [0; 3],
    }
}

/// A binding that sends to `to` (IPv4-mapped IPv6 is IPv4), with `action`
/// ([`shared::ACTION_FORWARD`] or [`shared::ACTION_USERSPACE`]) and the
/// allocation's traffic `slot`, and an empty next-hop cache.
pub fn binding(to: SocketAddr, action: u8, slot: u32) -> Binding {
    let (addr, family) = addr_bytes(to.ip());
    Binding { addr, port: to.port().to_be_bytes(), family, action, slot, next_hop: CachedHop::default() }
}

/// The sender and allocation port a key stands for; None for a family the
/// program does not know.
pub fn key_addr(key: &BindingKey) -> Option<(SocketAddr, u16)> {
    let ip = ip_from(&key.addr, key.family)?;
    Some((SocketAddr::new(ip, u16::from_be_bytes(key.port)), u16::from_be_bytes(key.relay_port)))
}

/// The peer a binding sends to; None for a family the program does not know.
pub fn binding_addr(binding: &Binding) -> Option<SocketAddr> {
    let ip = ip_from(&binding.addr, binding.family)?;
    Some(SocketAddr::new(ip, u16::from_be_bytes(binding.port)))
}

fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (addr, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn ip_from(addr: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        FAMILY_V6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn keys_and_bindings_round_trip() {
        let v4: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:41000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:40000".parse().unwrap();

        let k = key(v4, 50000);
        assert_eq!(k.addr, [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((k.port, k.relay_port, k.family, k._pad), ([0x9c, 0x40], [0xc3, 0x50], FAMILY_V4, [0; 3]));
        assert_eq!(key_addr(&k), Some((v4, 50000)));
        assert_eq!(key(mapped, 50000), k);
        assert_eq!(key_addr(&key(v6, 1)), Some((v6, 1)));

        let b = binding(mapped, shared::ACTION_FORWARD, 9);
        assert_eq!(b, binding(v4, shared::ACTION_FORWARD, 9));
        assert_eq!((b.family, b.slot), (FAMILY_V4, 9));
        assert_eq!(binding_addr(&b), Some(v4));
        assert_eq!(binding_addr(&binding(v6, shared::ACTION_USERSPACE, 0)), Some(v6));
        assert_eq!(binding_addr(&Binding::default()), None);
    }

    #[test]
    fn config_encodes_network_order() {
        let c = config(Some(Ipv4Addr::new(203, 0, 113, 1)), None, 50000..=50999, true);
        assert_eq!(c.port_range(), (50000, 50999));
        assert_eq!(c.addr4, [203, 0, 113, 1]);
        assert_eq!(c.addr6, [0; 16]);
        assert_eq!(c.flags, FLAG_FIB);
        // HZ is 100 to 1000 on the kernels Ferry runs on.
        assert!((1_000_000..=10_000_000).contains(&c.tick_ns), "tick of {} ns", c.tick_ns);
    }

    #[test]
    fn errno_reads_syscall_errors_only() {
        let err = MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(libc::E2BIG),
        });
        assert_eq!(errno(&err), Some(libc::E2BIG));
        assert_eq!(errno(&MapError::KeyNotFound), None);
    }
}
