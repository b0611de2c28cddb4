//! A CPU quota for one process: a cgroup of its own whose CFS quota is a
//! fraction of one core, on cgroup v2 where its cpu controller is enabled,
//! else on v1's cpu hierarchy. The bench caps each cloud process this way so
//! that figures compare storages and replica counts rather than how many
//! cores the machine happens to have.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const PERIOD_US: u64 = 100_000;

pub struct CpuQuota {
    dir: PathBuf,
    /// Where a process goes back to before the cgroup is removed.
    parent_procs: PathBuf,
}

impl CpuQuota {
    /// A new cgroup `name` whose processes together get `cores` of CPU time.
    pub fn new(name: &str, cores: f64) -> Result<CpuQuota> {
        let quota_us = (cores * PERIOD_US as f64).round() as u64;
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
        let (root, v2) = if v2_controllers.split_whitespace().any(|c| c == "cpu") {
            (v2.to_path_buf(), true)
        } else if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            (PathBuf::from("/sys/fs/cgroup/cpu"), false)
        } else {
            bail!("no cgroup CPU controller to cap the cloud with (neither cgroup v2's cpu nor v1's cpu)");
        };
        let dir = root.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
        let quota = CpuQuota { dir, parent_procs: root.join("cgroup.procs") };
        if v2 {
            quota.write("cpu.max", &format!("{quota_us} {PERIOD_US}"))?;
        } else {
            quota.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            quota.write("cpu.cfs_quota_us", &quota_us.to_string())?;
        }
        Ok(quota)
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: hand back any still there.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(&self.parent_procs, pid);
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cloud bench: cannot remove the cgroup {}: {e}", self.dir.display());
        }
    }
}
