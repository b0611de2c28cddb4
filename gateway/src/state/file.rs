//! Replacing a file whole: a reader sees the old contents or the new ones,
//! never a torn write, also after a power cut.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

/// Writes `contents` to a temporary file beside `path` with `mode`, syncs it,
/// renames it over `path` and syncs the folder, so that the rename itself
/// survives a power cut. Each call has a temporary of its own: two writers
/// of one file (two failed logins at once) each replace it whole, the last
/// one winning, instead of one removing the other's temporary.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let temporary = std::path::PathBuf::from(temporary);
    // The name is this process's alone, but one left by a crash before a
    // reboot may carry the same pid and count.
    let _ = std::fs::remove_file(&temporary);
    let written = write_new(&temporary, contents, mode).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    // The new contents are in place from here: a failure to make the rename
    // durable is logged, not returned, so that no caller takes the write
    // for undone.
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if let Err(error) = std::fs::File::open(folder).and_then(|f| f.sync_all()) {
        tracing::warn!(path = %path.display(), %error, "the folder could not be synced after a replace");
    }
    Ok(())
}

fn write_new(temporary: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(temporary)?;
    // Exactly `mode`, whatever the umask took away at creation.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Removes the temporaries of writers that died before their rename (a
/// crash, a power cut) from `dir`. One younger than a minute may be a live
/// writer's, so it stays for the next sweep.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().ends_with(".tmp")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > STALE_AFTER));
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A private JSON file (mode 0600) replaced whole with `value`.
pub fn save_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = serde_json::to_vec(value).with_context(|| format!("encoding {}", path.display()))?;
    replace(path, &text, 0o600).with_context(|| format!("writing {}", path.display()))
}

/// The JSON file at `path`, or None if there is none.
pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    use anyhow::Context as _;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).map(Some).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        replace(&path, b"one", 0o600).unwrap();
        replace(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
    }

    /// Writers of one file at once (the panel's lockout record on failed
    /// logins arriving together) all succeed, and the file is one of them
    /// whole. With one shared temporary name, one writer removed or renamed
    /// the other's temporary and failed with "No such file or directory".
    #[test]
    fn concurrent_writers_each_replace_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lockout.json");
        let writers: Vec<_> = (0..8u8)
            .map(|n| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        replace(&path, &[b'a' + n; 4096], 0o600).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(contents.len(), 4096);
        assert!(contents.iter().all(|&b| b == contents[0]), "a torn file");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
    }

    #[test]
    fn only_old_temporaries_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("switch.json.77.0.tmp");
        let young = dir.path().join("switch.json.78.0.tmp");
        let kept = dir.path().join("switch.json");
        for path in [&old, &young, &kept] {
            std::fs::write(path, b"x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        std::fs::File::options().write(true).open(&kept).unwrap().set_modified(long_ago).unwrap();
        remove_stale_temporaries(dir.path());
        assert!(!old.exists() && young.exists() && kept.exists());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: the rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir_all(path.join("inside")).unwrap();
        assert!(replace(&path, b"x", 0o600).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["taken"], "only the folder is left");
    }
}
