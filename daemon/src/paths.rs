//! Where daemons keep state and look for configuration.

use std::path::PathBuf;

/// The default data folder of `component` (for example "gateway"):
/// `/var/lib/ferry-<component>` for root (what systemd's StateDirectory gives),
/// else `<user data dir>/ferry/<component>`.
pub fn default_data_dir(component: &str) -> PathBuf {
    if is_root() {
        return PathBuf::from(format!("/var/lib/ferry-{component}"));
    }
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("ferry").join(component)
}

/// The default configuration file of `component`: `/etc/ferry/<component>.toml`.
pub fn default_config_file(component: &str) -> PathBuf {
    PathBuf::from(format!("/etc/ferry/{component}.toml"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
