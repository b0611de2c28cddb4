//! The gateway's uplink guard, from userspace: load, configure, attach, count.

use std::{ffi::CString, fmt};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{Xdp, xdp::XdpLinkId},
};
use ferry_ebpf_common::guard::{self as shared, GuardConfig, Outcome};

use crate::{AttachMode, Error, load_object, load_xdp};

/// The loaded guard program and its maps. Dropping it detaches the program.
pub struct UplinkGuard {
    ebpf: Ebpf,
    attached: Option<Attached>,
}

struct Attached {
    link: XdpLinkId,
    iface: String,
    mode: &'static str,
}

impl UplinkGuard {
    /// Loads the guard into the kernel (through the verifier) for WireGuard port
    /// `port`. It does nothing until attached.
    pub fn load(port: u16) -> Result<Self, Error> {
        let mut ebpf = load_object()?;
        load_xdp(&mut ebpf, shared::PROGRAM)?;
        let mut guard = UplinkGuard { ebpf, attached: None };
        guard.set_port(port)?;
        Ok(guard)
    }

    /// Changes the protected port; takes effect with the next packet.
    pub fn set_port(&mut self, port: u16) -> Result<(), Error> {
        let name = shared::CONFIG_MAP;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut config: Array<_, GuardConfig> =
            Array::try_from(map).map_err(|source| Error::Map { name, source })?;
        config.set(0, GuardConfig::new(port), 0).map_err(|source| Error::Map { name, source })
    }

    /// Attaches to `iface` (in the caller's network namespace) and returns the
    /// mode that took effect: `"native"` or `"generic"`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<&'static str, Error> {
        self.detach()?;
        let ifindex = if_index(iface)?;
        // The program parses an Ethernet header first. On raw-IP links (ppp,
        // wwan in raw-IP mode, tun) XDP data starts at the IP header, so the
        // guard would misread every frame and filter nothing.
        let link_type = link_type(iface)?;
        if link_type != ARPHRD_ETHER {
            return Err(Error::NotEthernet { iface: iface.to_string(), link_type });
        }
        let program = self.program_mut()?;
        let mut last_error = None;
        for &(xdp_mode, mode_name) in mode.candidates() {
            match program.attach_to_if_index(ifindex, xdp_mode) {
                Ok(link) => {
                    tracing::info!(iface, mode = mode_name, "uplink guard attached");
                    self.attached = Some(Attached { link, iface: iface.to_string(), mode: mode_name });
                    return Ok(mode_name);
                }
                Err(source) => {
                    tracing::debug!(iface, mode = mode_name, error = %source, "XDP attach failed");
                    last_error = Some(Error::Attach { iface: iface.to_string(), mode: mode_name, source });
                }
            }
        }
        Err(last_error.expect("every mode has at least one candidate"))
    }

    /// Detaches from the interface, if attached.
    pub fn detach(&mut self) -> Result<(), Error> {
        if let Some(attached) = self.attached.take() {
            self.program_mut()?
                .detach(attached.link)
                .map_err(|source| Error::Program { name: shared::PROGRAM, source })?;
            tracing::info!(iface = attached.iface, mode = attached.mode, "uplink guard detached");
        }
        Ok(())
    }

    /// The interface and mode the guard is attached with, if any.
    pub fn attachment(&self) -> Option<(&str, &'static str)> {
        self.attached.as_ref().map(|a| (a.iface.as_str(), a.mode))
    }

    /// The counters, summed over all CPUs.
    pub fn counters(&self) -> Result<GuardCounters, Error> {
        let name = shared::COUNTERS_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut totals = [0u64; Outcome::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let per_cpu = counters.get(&(index as u32), 0).map_err(|source| Error::Map { name, source })?;
            *total = per_cpu.iter().sum();
        }
        Ok(GuardCounters(totals))
    }

    /// The loaded program, for BPF_PROG_RUN.
    pub fn program(&self) -> Result<&Xdp, Error> {
        let name = shared::PROGRAM;
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, Error> {
        let name = shared::PROGRAM;
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }
}

impl Drop for UplinkGuard {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(error = %err, "detaching the uplink guard failed");
        }
    }
}

/// The guard's packet counters by outcome, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounters([u64; Outcome::COUNT as usize]);

impl GuardCounters {
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize]
    }

    /// Every outcome with its count, in counter order.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.iter().map(|&o| (o, self.get(o)))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn dropped(&self) -> u64 {
        self.iter().filter(|(o, _)| o.drops()).map(|(_, n)| n).sum()
    }

    /// The counts that grew since `earlier`.
    pub fn since(&self, earlier: &GuardCounters) -> GuardCounters {
        let mut delta = [0u64; Outcome::COUNT as usize];
        for (i, d) in delta.iter_mut().enumerate() {
            *d = self.0[i].saturating_sub(earlier.0[i]);
        }
        GuardCounters(delta)
    }
}

impl fmt::Display for GuardCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (outcome, count) in self.iter() {
            let verdict = if outcome.drops() { "drop" } else { "pass" };
            writeln!(f, "{:<20} {:>4} {count:>14}", outcome.name(), verdict)?;
        }
        write!(f, "{:<20} {:>4} {:>14}", "total", "", self.total())
    }
}

const ARPHRD_ETHER: u16 = 1;

/// The interface's ARPHRD link type, asked of the kernel in the caller's
/// network namespace (sysfs may show another one).
pub(crate) fn link_type(iface: &str) -> Result<u16, Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let bytes = iface.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(Error::UnknownInterface(iface.to_string()));
    }
    // SAFETY: socket() has no memory preconditions; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of a valid ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } < 0 {
        return Err(Error::UnknownInterface(iface.to_string()));
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
}

pub(crate) fn if_index(iface: &str) -> Result<u32, Error> {
    let name = CString::new(iface).map_err(|_| Error::UnknownInterface(iface.to_string()))?;
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface(iface.to_string()));
    }
    Ok(index)
}
