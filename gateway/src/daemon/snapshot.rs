//! The last desired state from the cloud, kept on disk so that a restarted
//! gateway resumes its active sessions without the cloud (their expiry is
//! still enforced locally). The file holds relay tokens: mode 0600, written
//! atomically.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ferry_control::gateway::DesiredState;

const FILE: &str = "desired.json";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

pub fn load(data_dir: &Path) -> Result<Option<DesiredState>> {
    crate::state::file::load_json(&path(data_dir))
}

pub fn save(data_dir: &Path, state: &DesiredState) -> Result<()> {
    crate::state::file::save_json(&path(data_dir), state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let state = DesiredState { revision: 7, sessions: vec![], stun_servers: vec![] };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state));
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
