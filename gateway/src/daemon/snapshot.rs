//! The last desired state from the cloud, kept on disk so that a restarted
//! gateway resumes its active sessions without the cloud (their expiry is
//! still enforced locally). The file holds relay tokens: mode 0600, written
//! atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_control::gateway::DesiredState;

const FILE: &str = "desired.json";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

pub fn load(data_dir: &Path) -> Result<Option<DesiredState>> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(state))
}

pub fn save(data_dir: &Path, state: &DesiredState) -> Result<()> {
    let path = path(data_dir);
    let text = serde_json::to_vec(state).context("encoding the desired state")?;
    crate::state::file::replace(&path, &text, 0o600).with_context(|| format!("writing {}", path.display()))
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
