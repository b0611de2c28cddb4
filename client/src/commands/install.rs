//! `ferry install`: what root does once so that technicians never need root
//! again: the binary, the systemd unit of the service, and the group whose
//! members may use the service. Running it again changes only what differs.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::files;

pub const UNIT: &str = include_str!("../../ferry-client.service");
pub const UNIT_NAME: &str = "ferry-client.service";
pub const GROUP: &str = "ferry";

/// Install the ferry service for this machine (root, once).
///
/// Puts this program at /usr/local/bin/ferry, the systemd unit
/// ferry-client.service beside the system's units, creates the group
/// `ferry` if it is missing, and enables and starts the service. Idempotent:
/// a second run changes nothing that is already right.
///
/// Afterwards an administrator adds each technician to the group:
/// `sudo usermod -aG ferry NAME` (it takes effect at their next login).
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Do not run systemctl (daemon-reload, enable --now).
    #[arg(long)]
    pub no_systemctl: bool,
    /// Install below this folder instead of `/` (for images and packages);
    /// systemctl is not run then.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// What one step found or did.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Made,
    AlreadyRight,
}

impl Change {
    fn word(&self) -> &'static str {
        match self {
            Change::Made => "installed",
            Change::AlreadyRight => "up to date",
        }
    }
}

fn at(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// `path` with exactly `contents` and `mode`.
fn place(path: &Path, contents: &[u8], mode: u32) -> Result<Change> {
    let same = std::fs::metadata(path).is_ok_and(|m| m.mode() & 0o7777 == mode)
        && std::fs::read(path).is_ok_and(|now| now == contents);
    if same {
        return Ok(Change::AlreadyRight);
    }
    let dir = path.parent().context("a file without a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    files::write_replacing(dir, path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(Change::Made)
}

/// Whether `name` is in the group database of `root`.
fn group_exists(root: &Path, name: &str) -> Result<bool> {
    if root == Path::new("/") {
        return Ok(nix::unistd::Group::from_name(name)?.is_some());
    }
    let text = std::fs::read_to_string(at(root, "/etc/group")).unwrap_or_default();
    Ok(text.lines().any(|line| line.split(':').next() == Some(name)))
}

fn ensure_group(root: &Path) -> Result<Change> {
    if group_exists(root, GROUP)? {
        return Ok(Change::AlreadyRight);
    }
    let mut groupadd = Command::new("groupadd");
    groupadd.arg("--system");
    if root != Path::new("/") {
        groupadd.arg("--prefix").arg(root);
    }
    let status = groupadd.arg(GROUP).status().context("running groupadd")?;
    if !status.success() {
        bail!("`groupadd --system {GROUP}` failed ({status})");
    }
    Ok(Change::Made)
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = Command::new("systemctl").args(args).status().context("running systemctl")?;
    if !status.success() {
        bail!("`systemctl {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn run(args: InstallArgs) -> Result<()> {
    let root = args.root.as_path();
    let into_this_system = root == Path::new("/");
    if !nix::unistd::geteuid().is_root() {
        bail!("`ferry install` needs root: sudo ferry install");
    }
    let program = std::env::current_exe().context("finding this program")?;
    let binary = at(root, "/usr/local/bin/ferry");
    let bytes = std::fs::read(&program).with_context(|| format!("reading {}", program.display()))?;
    let binary_change = place(&binary, &bytes, 0o755)?;
    println!("{:>12}  {}", binary_change.word(), binary.display());

    let unit = at(root, &format!("/etc/systemd/system/{UNIT_NAME}"));
    let unit_change = place(&unit, UNIT.as_bytes(), 0o644)?;
    println!("{:>12}  {}", unit_change.word(), unit.display());

    let group_change = ensure_group(root)?;
    let group_word = if group_change == Change::Made { "created" } else { "exists" };
    println!("{group_word:>12}  group {GROUP}");

    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    if args.no_systemctl || !into_this_system || !systemd_runs {
        println!("\nsystemctl not run; start the service with: systemctl enable --now {UNIT_NAME}");
    } else {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", UNIT_NAME])?;
        if binary_change == Change::Made || unit_change == Change::Made {
            systemctl(&["try-restart", UNIT_NAME])?;
        }
        println!("     running  {UNIT_NAME}");
    }
    println!(
        "\nEach technician who may use ferry on this machine joins the group {GROUP}:\n  \
         sudo usermod -aG {GROUP} NAME\n(it takes effect at their next login). Then, as themselves:\n  \
         ferry login --cloud https://CLOUD --pin FINGERPRINT\n  ferry connect SESSION"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placing_a_file_twice_changes_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/systemd/system").join(UNIT_NAME);
        assert_eq!(place(&path, UNIT.as_bytes(), 0o644).unwrap(), Change::Made);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(place(&path, UNIT.as_bytes(), 0o644).unwrap(), Change::AlreadyRight);
        assert_eq!(place(&path, b"other", 0o644).unwrap(), Change::Made);
    }

    #[test]
    fn groups_are_read_from_the_root_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nferryx:x:5:\n").unwrap();
        assert!(!group_exists(dir.path(), "ferry").unwrap());
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nferry:x:998:tech\n").unwrap();
        assert!(group_exists(dir.path(), "ferry").unwrap());
    }
}
