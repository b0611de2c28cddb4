//! A network lab for Ferry's tests.
//!
//! Every test builds its own little internet out of network namespaces joined
//! by veth pairs, with real netfilter NAT routers in between, and runs real
//! processes inside. Everything a [`Lab`] creates has a unique name with our
//! prefix and is removed when the lab is dropped, so tests run in parallel; a
//! killed test run leaves objects behind that the next run sweeps
//! ([`sweep_stale`]).
//!
//! Addressing convention: the simulated internet uses the documentation
//! ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32);
//! customer, machine and home networks use RFC 1918 ranges. Nothing here ever
//! sends to an address outside the lab's namespaces.
//!
//! ```no_run
//! use ferry_lab::{Lab, Nat};
//! let lab = Lab::new()?;
//! let internet = lab.netns("internet")?;
//! let server = lab.netns("server")?;
//! lab.wire(&internet, &["203.0.113.1/24"], &server, &["203.0.113.10/24"])?;
//! server.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
//! let router = lab.nat_router("home", Nat::Cone, &internet, "198.51.100.1/24", "198.51.100.2/24", "10.0.0.1/24")?;
//! let laptop = lab.netns("laptop")?;
//! router.attach(&laptop, "10.0.0.2/24")?;
//! laptop.exec("ping", &["-c1", "-W2", "203.0.113.10"])?;
//! # Ok::<(), ferry_lab::Error>(())
//! ```

pub mod delay;
mod error;
pub mod forward;
mod names;
mod nat;
mod netns;
pub mod packet;
pub mod postgres;
mod process;
pub mod rng;
mod signals;

pub use error::Error;
pub use forward::Forwarder;
pub use names::{PREFIX, sweep_pid, sweep_stale};
pub use nat::{Nat, Router};
pub use netns::{Lab, Netns, Veth};
pub use process::Process;
pub use signals::sweep_on_signals;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps Ferry's daemons started by `cmd` from reading a configuration the
/// machine happens to have: without `--config` they read
/// `/etc/ferry/<daemon>.toml` if it exists (an installed gateway or relay
/// leaves one), or the file `FERRY_CONFIG` names in the caller's
/// environment. An empty file gives them their defaults; an explicit
/// `--config` still wins. Other programs ignore the variable.
pub fn without_host_config(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env("FERRY_CONFIG", "/dev/null")
}

/// The path of a binary built from this workspace (for example
/// `ferry-gateway`), found in the same target profile as the running test or
/// benchmark executable.
pub fn workspace_bin(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::Setup(format!("current_exe: {e}")))?;
    // Test executables live in target/<profile>/deps/, binaries (ferry-bench)
    // in target/<profile>/.
    let mut profile_dir =
        exe.parent().ok_or_else(|| Error::Setup(format!("unexpected executable path {}", exe.display())))?;
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().unwrap_or(profile_dir);
    }
    let path = profile_dir.join(name);
    if !path.exists() {
        return Err(Error::Setup(format!(
            "{} is missing; build the workspace binaries first (cargo build --bins; cargo xtask test does)",
            path.display()
        )));
    }
    Ok(path)
}
