//! The gateway's uplink guard, from userspace: load, configure, attach, count.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData},
    programs::Xdp,
};
use ferry_ebpf_common::guard::{self as shared, GuardConfig, IndexKey, ProbeTagKey, StunServerKey};

pub use crate::counters::GuardCounters;
use crate::{
    AttachMode, Error,
    attach::{self, Attachment},
    load_object_sized, load_xdp, xdp, xdp_mut,
};

/// The loaded guard program and its maps. Dropping it detaches the program.
pub struct UplinkGuard {
    ebpf: Ebpf,
    attached: Option<Attachment>,
}

impl UplinkGuard {
    /// Loads the guard into the kernel (through the verifier) for WireGuard port
    /// `port`. It does nothing until attached.
    pub fn load(port: u16) -> Result<Self, Error> {
        let mut ebpf = load_object_sized(&[
            (shared::INDICES_MAP, shared::MAX_INDICES),
            (shared::PROBE_TAGS_MAP, shared::MAX_PROBE_TAGS),
            (shared::STUN_SERVERS_MAP, shared::MAX_STUN_SERVERS),
        ])?;
        load_xdp(&mut ebpf, shared::PROGRAM)?;
        let mut guard = UplinkGuard { ebpf, attached: None };
        guard.set_port(port)?;
        Ok(guard)
    }

    /// Changes the protected port; takes effect with the next packet.
    pub fn set_port(&mut self, port: u16) -> Result<(), Error> {
        let current = self.config()?;
        self.write_config(GuardConfig::new(port).following_indices(current.follows_indices()))
    }

    /// Turns the receiver-index rule on or off. Only turn it on when every
    /// live local index is in the map (see [`UplinkGuard::add_index`]), or
    /// the engine's own peers are cut off.
    pub fn follow_indices(&mut self, on: bool) -> Result<(), Error> {
        let current = self.config()?;
        self.write_config(current.following_indices(on))
    }

    /// Whether the receiver-index rule is on.
    pub fn follows_indices(&self) -> Result<bool, Error> {
        Ok(self.config()?.follows_indices())
    }

    /// Marks a local receiver index live.
    pub fn add_index(&mut self, index: u32) -> Result<(), Error> {
        self.insert(shared::INDICES_MAP, IndexKey::new(index))
    }

    /// Forgets a local receiver index. Returns whether it was there; a
    /// missing one is no error.
    pub fn remove_index(&mut self, index: u32) -> Result<bool, Error> {
        self.remove(shared::INDICES_MAP, IndexKey::new(index))
    }

    /// The live indices in the map, sorted.
    pub fn indices(&self) -> Result<Vec<u32>, Error> {
        let mut out: Vec<u32> =
            self.keys::<IndexKey>(shared::INDICES_MAP)?.iter().map(IndexKey::index).collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Lets probes with receiver tag `tag` through (a live path agent's
    /// `tag_in`). The probe rule is always on: a probe passes only with a tag
    /// added here, so with none added no probe passes.
    pub fn add_probe_tag(&mut self, tag: [u8; shared::PROBE_TAG_LEN]) -> Result<(), Error> {
        self.insert(shared::PROBE_TAGS_MAP, ProbeTagKey { tag })
    }

    /// Stops letting probes with receiver tag `tag` through. Returns whether
    /// it was there; a missing one is no error.
    pub fn remove_probe_tag(&mut self, tag: [u8; shared::PROBE_TAG_LEN]) -> Result<bool, Error> {
        self.remove(shared::PROBE_TAGS_MAP, ProbeTagKey { tag })
    }

    /// The probe tags in the map, sorted.
    pub fn probe_tags(&self) -> Result<Vec<[u8; shared::PROBE_TAG_LEN]>, Error> {
        let mut out: Vec<_> =
            self.keys::<ProbeTagKey>(shared::PROBE_TAGS_MAP)?.iter().map(|k| k.tag).collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Lets STUN Binding success responses from `server` through. Always on,
    /// like the probe rule: add a server before querying it. An IPv4 server
    /// and its IPv4-mapped IPv6 form are the same entry; an IPv6 scope or
    /// flow label is not part of it.
    pub fn add_stun_server(&mut self, server: SocketAddr) -> Result<(), Error> {
        self.insert(shared::STUN_SERVERS_MAP, stun_key(server))
    }

    /// Stops letting STUN answers from `server` through. Returns whether it
    /// was there; a missing one is no error.
    pub fn remove_stun_server(&mut self, server: SocketAddr) -> Result<bool, Error> {
        self.remove(shared::STUN_SERVERS_MAP, stun_key(server))
    }

    /// The STUN servers in the map, sorted (IPv4 servers as IPv4 addresses).
    pub fn stun_servers(&self) -> Result<Vec<SocketAddr>, Error> {
        let mut out: Vec<SocketAddr> =
            self.keys::<StunServerKey>(shared::STUN_SERVERS_MAP)?.iter().map(stun_server).collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Adds `key` to the presence map `name`.
    fn insert<K: Pod>(&mut self, name: &'static str, key: K) -> Result<(), Error> {
        self.set_mut::<K>(name)?.insert(key, 1, 0).map_err(|source| Error::Map { name, source })
    }

    /// Removes `key` from the presence map `name`; whether it was there.
    fn remove<K: Pod>(&mut self, name: &'static str, key: K) -> Result<bool, Error> {
        match self.set_mut::<K>(name)?.remove(&key) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(Error::Map { name, source }),
        }
    }

    /// The keys of the presence map `name`.
    fn keys<K: Pod>(&self, name: &'static str) -> Result<Vec<K>, Error> {
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let set: HashMap<_, K, u8> = HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        set.keys().collect::<Result<Vec<K>, _>>().map_err(|source| Error::Map { name, source })
    }

    fn set_mut<K: Pod>(&mut self, name: &'static str) -> Result<HashMap<&mut MapData, K, u8>, Error> {
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        HashMap::try_from(map).map_err(|source| Error::Map { name, source })
    }

    fn config(&self) -> Result<GuardConfig, Error> {
        let name = shared::CONFIG_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let config: Array<_, GuardConfig> =
            Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        config.get(&0, 0).map_err(|source| Error::Map { name, source })
    }

    fn write_config(&mut self, value: GuardConfig) -> Result<(), Error> {
        let name = shared::CONFIG_MAP;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut config: Array<_, GuardConfig> =
            Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        config.set(0, value, 0).map_err(|source| Error::Map { name, source })
    }

    /// Attaches to `iface` (in the caller's network namespace) and returns the
    /// mode that took effect: `"native"` or `"generic"`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&'static str, Error> {
        self.detach()?;
        let attachment = attach::attach(self.program_mut()?, iface, mode, "uplink guard")?;
        let mode = attachment.mode;
        self.attached = Some(attachment);
        Ok(mode)
    }

    /// Detaches from the interface, if attached.
    pub fn detach(&mut self) -> Result<(), Error> {
        if let Some(attachment) = self.attached.take() {
            attach::detach(self.program_mut()?, attachment, shared::PROGRAM, "uplink guard")?;
        }
        Ok(())
    }

    /// The interface and mode the guard is attached with, if any.
    pub fn attachment(&self) -> Option<(&str, &'static str)> {
        self.attached.as_ref().map(|a| (a.iface.as_str(), a.mode))
    }

    /// The counters, summed over all CPUs.
    pub fn counters(&self) -> Result<GuardCounters, Error> {
        GuardCounters::read(&self.ebpf, shared::COUNTERS_MAP)
    }

    /// The loaded program, for BPF_PROG_RUN.
    pub fn program(&self) -> Result<&Xdp, Error> {
        xdp(&self.ebpf, shared::PROGRAM)
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, Error> {
        xdp_mut(&mut self.ebpf, shared::PROGRAM)
    }
}

/// The guard's key for `server`: IPv4 in its IPv4-mapped IPv6 form, as the
/// program builds it from an IPv4 header.
fn stun_key(server: SocketAddr) -> StunServerKey {
    match server {
        SocketAddr::V4(v4) => StunServerKey::v4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => StunServerKey::v6(v6.ip().octets(), v6.port()),
    }
}

fn stun_server(key: &StunServerKey) -> SocketAddr {
    let ip = Ipv6Addr::from(key.addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), key.port()),
        None => SocketAddrV6::new(ip, key.port(), 0, 0).into(),
    }
}

impl Drop for UplinkGuard {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(error = %err, "detaching the uplink guard failed");
        }
    }
}
