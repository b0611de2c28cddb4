use std::{fmt, str::FromStr};

use aya::programs::XdpMode;

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
