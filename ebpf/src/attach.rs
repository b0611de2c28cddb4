use std::{ffi::CString, fmt, str::FromStr};

use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};

use crate::Error;

/// How an XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    /// Native mode only: runs in the driver before an skb exists.
    Native,
    /// Generic mode: runs after the skb is built. Works on every interface,
    /// slower.
    Generic,
}

impl AttachMode {
    /// The aya modes to try, in order.
    pub(crate) fn candidates(self) -> &'static [(XdpMode, &'static str)] {
        const NATIVE: (XdpMode, &str) = (XdpMode::Driver, "native");
        const GENERIC: (XdpMode, &str) = (XdpMode::Skb, "generic");
        match self {
            AttachMode::Auto => &[NATIVE, GENERIC],
            AttachMode::Native => &[NATIVE],
            AttachMode::Generic => &[GENERIC],
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

impl FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "native" | "driver" => Ok(AttachMode::Native),
            "generic" | "skb" => Ok(AttachMode::Generic),
            other => Err(format!("unknown XDP mode `{other}`: expected auto, native or generic")),
        }
    }
}

/// One XDP link of a loaded program.
pub(crate) struct Attachment {
    pub link: XdpLinkId,
    pub iface: String,
    pub mode: &'static str,
}

/// Attaches `program` to `iface` (in the caller's network namespace), trying
/// the modes `mode` allows in order, and returns the link. `what` names the
/// program in logs.
#[allow(clippy::expect_used, reason = "AttachMode::candidates names at least one mode for every mode")]
pub(crate) fn attach(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
    what: &str,
) -> Result<Attachment, Error> {
    let ifindex = if_index(iface)?;
    // Ferry's programs parse an Ethernet header first. On raw-IP links (ppp,
    // wwan in raw-IP mode, tun) XDP data starts at the IP header, so they would
    // misread every frame.
    let link_type = link_type(iface)?;
    if link_type != ARPHRD_ETHER {
        return Err(Error::NotEthernet { iface: iface.to_string(), link_type });
    }
    let mut last_error = None;
    for &(xdp_mode, mode_name) in mode.candidates() {
        match program.attach_to_if_index(ifindex, xdp_mode) {
            Ok(link) => {
                tracing::info!(iface, mode = mode_name, "{what} attached");
                return Ok(Attachment { link, iface: iface.to_string(), mode: mode_name });
            }
            Err(source) => {
                tracing::debug!(iface, mode = mode_name, error = %source, "XDP attach failed");
                last_error = Some(Error::Attach { iface: iface.to_string(), mode: mode_name, source });
            }
        }
    }
    Err(last_error.expect("every mode has at least one candidate"))
}

/// Removes one link made by [`attach`].
pub(crate) fn detach(
    program: &mut Xdp,
    attachment: Attachment,
    name: &'static str,
    what: &str,
) -> Result<(), Error> {
    program.detach(attachment.link).map_err(|source| Error::Program { name, source })?;
    tracing::info!(iface = attachment.iface, mode = attachment.mode, "{what} detached");
    Ok(())
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

/// The interface's index in the caller's network namespace.
pub fn if_index(iface: &str) -> Result<u32, Error> {
    let name = CString::new(iface).map_err(|_| Error::UnknownInterface(iface.to_string()))?;
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface(iface.to_string()));
    }
    Ok(index)
}
