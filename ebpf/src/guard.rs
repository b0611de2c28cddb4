//! The gateway's uplink guard, from userspace: load, configure, attach, count.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::Xdp,
};
use ferry_ebpf_common::guard::{self as shared, GuardConfig, IndexKey};

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
        let mut ebpf = load_object_sized(&[(shared::INDICES_MAP, shared::MAX_INDICES)])?;
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
        let name = shared::INDICES_MAP;
        self.indices_mut()?.insert(IndexKey::new(index), 1, 0).map_err(|source| Error::Map { name, source })
    }

    /// Forgets a local receiver index. Returns whether it was there; a
    /// missing one is no error.
    pub fn remove_index(&mut self, index: u32) -> Result<bool, Error> {
        let name = shared::INDICES_MAP;
        match self.indices_mut()?.remove(&IndexKey::new(index)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(Error::Map { name, source }),
        }
    }

    /// The live indices in the map, sorted.
    pub fn indices(&self) -> Result<Vec<u32>, Error> {
        let name = shared::INDICES_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let indices: HashMap<_, IndexKey, u8> =
            HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut out = indices
            .keys()
            .map(|key| key.map(|k| k.index()))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|source| Error::Map { name, source })?;
        out.sort_unstable();
        Ok(out)
    }

    fn indices_mut(&mut self) -> Result<HashMap<&mut MapData, IndexKey, u8>, Error> {
        let name = shared::INDICES_MAP;
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

impl Drop for UplinkGuard {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(error = %err, "detaching the uplink guard failed");
        }
    }
}
