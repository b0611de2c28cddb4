//! The login kept between commands: `credentials.json` in the user's
//! configuration folder (0600 in a 0700 folder), and `credentials.lock`
//! beside it, which serialises the refresh of the single-use refresh token
//! between commands that run at the same time.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::files;

/// How this machine authenticates to the cloud.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Secret {
    /// A login with name and password: a short access token and a
    /// single-use refresh token that is rotated on every refresh.
    Login { access_token: String, access_expires_ms: u64, refresh_token: String, refresh_expires_ms: u64 },
    /// An API token an administrator made, for scripts.
    ApiToken { api_token: String },
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The canonical cloud URL (`https://host:port`).
    pub cloud: String,
    /// The addresses of the cloud's other replicas, if it runs several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_clouds: Vec<String>,
    /// The SHA-256 fingerprint of the cloud's certificate, for https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    pub user: String,
    pub user_id: u64,
    #[serde(flatten)]
    pub secret: Secret,
}

impl Credentials {
    /// Every address of the cloud, the first one first.
    pub fn urls(&self) -> Vec<String> {
        std::iter::once(self.cloud.clone()).chain(self.other_clouds.iter().cloned()).collect()
    }
}

// By hand: the tokens must never reach a log or an error message.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cloud", &self.cloud)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Where the credentials live; `config_dir` is normally [`files::config_dir`].
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(config_dir: PathBuf) -> Store {
        Store { dir: config_dir }
    }

    pub fn default_location() -> io::Result<Store> {
        files::config_dir().map(Store::new)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    /// The stored login, or None when there is none.
    pub fn load(&self) -> io::Result<Option<Credentials>> {
        match fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    format!("{} is damaged ({e}): run `ferry login` again", self.path().display()),
                )
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, credentials: &Credentials) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(credentials).map_err(io::Error::other)?;
        files::write_private(&self.path(), &json)
    }

    /// Removes the stored login; true if there was one.
    pub fn remove(&self) -> io::Result<bool> {
        match fs::remove_file(self.path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Holds the refresh lock until the guard drops. Another command that
    /// refreshes meanwhile waits here and then finds the rotated token.
    pub fn lock(&self) -> io::Result<Flock<fs::File>> {
        files::private_dir(&self.dir)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(files::FILE_MODE)
            .open(self.lock_path())?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("credentials.lock")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn example() -> Credentials {
        Credentials {
            cloud: "https://cloud.example:443".into(),
            other_clouds: vec!["https://cloud-2.example:443".into()],
            pin: Some("AB:CD".into()),
            user: "tech1".into(),
            user_id: 3,
            secret: Secret::Login {
                access_token: "access-secret".into(),
                access_expires_ms: 10,
                refresh_token: "refresh-secret".into(),
                refresh_expires_ms: 20,
            },
        }
    }

    #[test]
    fn saved_private_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path().join("ferry"));
        assert!(store.load().unwrap().is_none());
        store.save(&example()).unwrap();
        assert_eq!(fs::metadata(store.path()).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(store.path().parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        assert!(store.load().unwrap() == Some(example()));
        let json: serde_json::Value = serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(json["kind"], "login");
        assert_eq!(json["refresh_token"], "refresh-secret");

        let lock = store.lock().unwrap();
        assert_eq!(fs::metadata(store.lock_path()).unwrap().mode() & 0o777, 0o600);
        drop(lock);
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
    }

    #[test]
    fn debug_shows_no_token() {
        let shown = format!("{:?}", example());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn a_damaged_file_says_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path().join("ferry"));
        files::write_private(&store.path(), b"{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("ferry login"), "{err}");
    }
}
