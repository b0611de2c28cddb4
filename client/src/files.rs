//! Files only their owner may read: the login's tokens and exported keys.
//! The folder is made 0700 and each file 0600 whatever the umask says, and a
//! file is replaced whole (written beside, synced, renamed), so that a crash
//! leaves the old contents or the new, never half of a token.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// `$XDG_CONFIG_HOME/ferry`, else `~/.config/ferry`.
pub fn config_dir() -> io::Result<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("ferry")).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "cannot tell where your configuration folder is: set HOME or XDG_CONFIG_HOME",
        )
    })
}

/// Makes `dir` (and its parents) if missing; the last folder ends up 0700
/// and must belong to us.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a folder", dir.display())));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} belongs to another user (uid {})", dir.display(), meta.uid()),
        ));
    }
    // Exactly 0700: the mkdir above obeys the umask, and an older folder may
    // have been made wider.
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Replaces `path` whole with `contents`, mode 0600, in a private folder.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    private_dir(dir)?;
    write_replacing(dir, path, contents)
}

/// Replaces `path` whole with `contents`, mode 0600, leaving its folder as
/// it is (for files the user names, such as `--output`).
pub fn write_replacing(dir: &Path, path: &Path, contents: &[u8]) -> io::Result<()> {
    // tempfile makes its file 0600 with O_EXCL, so nobody can open it between
    // creation and the rename.
    let mut file = tempfile::Builder::new().prefix(".ferry-").tempfile_in(dir)?;
    file.as_file().set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    // The rename itself reaches the disk with the folder.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn private_files_are_0600_in_a_0700_folder_whatever_was_there() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("config").join("ferry");
        let file = dir.join("credentials.json");
        write_private(&file, b"one").unwrap();
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));

        // A folder made wider by someone, and a file with a wide mode: both
        // come back to private on the next write, which replaces the file.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"two").unwrap();
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["credentials.json"], "no temporary file left");
    }

    #[test]
    fn a_file_where_the_folder_should_be_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ferry");
        fs::write(&dir, b"x").unwrap();
        assert!(write_private(&dir.join("credentials.json"), b"x").is_err());
    }
}
