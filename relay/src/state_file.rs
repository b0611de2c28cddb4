//! The relay's live allocations on disk, so that a restart (a crash, a
//! SIGKILL, an upgrade) does not break the sessions that go through it.
//!
//! Peers cannot be told that the relay restarted: a technician's stock
//! WireGuard with an exported configuration keeps sending to the same relay
//! address and port, and an idle gateway sends nothing that would bind it
//! again. So the relay keeps, per allocation, what it needs to carry on at
//! once: the allocation itself (keys, expiry, WebSocket token), its port, and
//! the UDP addresses bound by completed handshakes. At start it restores them
//! before anything else, XDP entries included, and the cloud's (or the
//! allocation file's) next snapshot ends the ones that ended meanwhile. A
//! restored allocation no snapshot names within
//! [`RESTORE_GRACE`](crate::runtime::RESTORE_GRACE) ends then; a file
//! written by another relay id or for another cloud is discarded.
//!
//! A binding restored from here is one the relay itself committed after a
//! handshake proved it; the idle timeout applies to it as to any other.
//! WebSocket bindings die with their connections and are not kept.
//!
//! The file holds WebSocket tokens: it is written with mode 0600, and
//! replaced atomically (write, rename), so a kill at any moment leaves the
//! old or the new version, never a torn one. The fsync comes after the
//! rename: a process crash leaves the page cache, and a sync before it
//! could hold the new version back for seconds on a busy disk (the first
//! test here lost the state that way). After a power cut the file may be
//! torn; the relay then starts without it, as before there was one.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use ferry_tunnel::PublicKey;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::runtime::{AllocationSpec, Relay, Sides};

/// Changes closer together than this are written once.
const COALESCE: Duration = Duration::from_millis(50);

/// One allocation as kept on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub id: u64,
    pub session_id: u64,
    pub gateway_key: String,
    pub client_key: String,
    pub expires_ms: u64,
    pub websocket_token: String,
    pub port: u16,
    /// The UDP addresses bound on the gateway's and the client's side.
    pub gateway: Option<SocketAddr>,
    pub client: Option<SocketAddr>,
    /// Where a side was last seen while not bound (idle, or never bound):
    /// the other side's initiations go there.
    #[serde(default)]
    pub gateway_candidate: Option<SocketAddr>,
    #[serde(default)]
    pub client_candidate: Option<SocketAddr>,
}

/// Whose allocations these are: the relay id and cloud they came from.
/// A file written for another identity (the relay registered again under a
/// new id, or pointed at another cloud) is discarded: that cloud would
/// never confirm nor end its allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// None for a relay without a cloud (an allocation file, or nothing).
    pub relay_id: Option<u64>,
    /// The cloud's addresses (replicas of one cloud).
    pub cloud: Vec<String>,
}

impl Owner {
    /// The same relay of the same cloud: one address in common is enough,
    /// as replicas come and go from the list.
    fn same(&self, other: &Owner) -> bool {
        self.relay_id == other.relay_id
            && (self.cloud.is_empty() && other.cloud.is_empty()
                || self.cloud.iter().any(|url| other.cloud.contains(url)))
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.relay_id {
            Some(id) => write!(f, "relay {id} of {}", self.cloud.join(", ")),
            None => f.write_str("a relay without a cloud"),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    /// Missing in files written before it was kept: such a file is
    /// discarded, as one of another owner.
    #[serde(default)]
    owner: Option<Owner>,
    allocations: Vec<Saved>,
}

const VERSION: u32 = 1;

impl Saved {
    pub fn new(spec: &AllocationSpec, port: u16, sides: Sides) -> Saved {
        Saved {
            id: spec.id,
            session_id: spec.session_id,
            gateway_key: spec.gateway_key.to_base64(),
            client_key: spec.client_key.to_base64(),
            expires_ms: spec.expires_ms,
            websocket_token: spec.websocket_token.clone(),
            port,
            gateway: sides.bound[0],
            client: sides.bound[1],
            gateway_candidate: sides.candidate[0],
            client_candidate: sides.candidate[1],
        }
    }

    /// The allocation to start again, on its old port, with its bindings.
    pub fn spec(&self) -> Result<(AllocationSpec, Sides)> {
        let key = |k: &str, what: &str| {
            PublicKey::from_base64(k).with_context(|| format!("allocation {}: {what}", self.id))
        };
        let spec = AllocationSpec {
            id: self.id,
            session_id: self.session_id,
            gateway_key: key(&self.gateway_key, "gateway_key")?,
            client_key: key(&self.client_key, "client_key")?,
            expires_ms: self.expires_ms,
            websocket_token: self.websocket_token.clone(),
            port: Some(self.port),
        };
        let sides = Sides {
            bound: [self.gateway, self.client],
            candidate: [self.gateway_candidate, self.client_candidate],
        };
        Ok((spec, sides))
    }
}

/// The saved allocations; none when the file does not exist yet. A file
/// that group or others may write is refused: anyone who could write it
/// could make the relay forward to addresses of their choosing at its next
/// start. So is one written for another `owner`.
pub fn load(path: &Path, owner: &Owner) -> Result<Vec<Saved>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            file.metadata().with_context(|| format!("reading {}", path.display()))?.permissions().mode();
        if mode & 0o022 != 0 {
            anyhow::bail!(
                "{} is writable by group or others (mode {:o}); not trusted",
                path.display(),
                mode & 0o777
            );
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let file: File = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if file.version != VERSION {
        anyhow::bail!("{}: version {} is not {VERSION}", path.display(), file.version);
    }
    match &file.owner {
        Some(written) if written.same(owner) => Ok(file.allocations),
        Some(written) => anyhow::bail!("{} was written by {written}, not by {owner}", path.display()),
        None => anyhow::bail!("{} does not say which relay wrote it", path.display()),
    }
}

/// Replaces the file with `allocations`, atomically and durably.
pub fn write(path: &Path, owner: &Owner, allocations: Vec<Saved>) -> Result<()> {
    let file = File { version: VERSION, owner: Some(owner.clone()), allocations };
    let text = serde_json::to_vec(&file).context("encoding the state")?;
    let tmp = temporary(path);
    // A leftover (a kill between create and rename, or someone else's file)
    // would keep its own permissions: the mode below applies only to a file
    // this call creates, so it creates one.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the leftover {}", tmp.display())),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    // For a power cut only; a process crash is covered already.
    let _ = file.sync_all();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Starts the saved allocations again. Returns how many came back; one that
/// cannot (expired, its port taken by another program) is left to the
/// cloud's next snapshot, which starts it on a new port. An unreadable file
/// restores nothing, rather than keep the relay down.
pub fn restore(relay: &Relay, path: &Path, owner: &Owner) -> usize {
    let saved = match load(path, owner) {
        Ok(saved) => saved,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the saved allocations are unreadable; starting without them");
            return 0;
        }
    };
    let mut restored = 0;
    for entry in saved {
        let (spec, sides) = match entry.spec() {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "a saved allocation is unreadable; skipped");
                continue;
            }
        };
        let id = spec.id;
        match relay.restore(spec, sides) {
            crate::runtime::Admission::Ready { port } => {
                info!(allocation = id, port, ?sides, "allocation restored");
                restored += 1;
            }
            crate::runtime::Admission::Refused { reason } => {
                warn!(allocation = id, reason, "a saved allocation was not restored")
            }
        }
    }
    restored
}

/// Writes the state after every change until dropped; [`Saver::stop`]
/// writes it a last time.
pub struct Saver {
    task: tokio::task::JoinHandle<()>,
    relay: Relay,
    path: PathBuf,
    owner: Arc<Owner>,
    /// One write at a time: a write outlives an abort of the task.
    writing: Arc<Writing>,
}

/// Held while the file is written. `stopped`, set under the lock by
/// [`Saver::stop`] before its last write, turns away a write the task had
/// started before it was aborted: run after the stop, it would save the
/// allocations as the shutdown is ending them, and lose them.
#[derive(Default)]
struct Writing {
    lock: Mutex<()>,
    stopped: AtomicBool,
}

impl Saver {
    pub fn start(relay: Relay, path: PathBuf, owner: Owner) -> Saver {
        let owner = Arc::new(owner);
        let changes: Arc<tokio::sync::Notify> = relay.changes();
        let writing = Arc::new(Writing::default());
        let task = {
            let (relay, path, owner, writing) = (relay.clone(), path.clone(), owner.clone(), writing.clone());
            tokio::spawn(async move {
                loop {
                    changes.notified().await;
                    tokio::time::sleep(COALESCE).await;
                    let (relay, path, owner, writing) =
                        (relay.clone(), path.clone(), owner.clone(), writing.clone());
                    // Off the workers: a slow disk must not stall forwarding.
                    let _ = tokio::task::spawn_blocking(move || save(&writing, &path, &owner, &relay)).await;
                }
            })
        };
        Saver { task, relay, path, owner, writing }
    }

    /// Stops saving, after a last write: a clean stop keeps the allocations
    /// for the next start (the ones that end meanwhile, the cloud ends).
    pub fn stop(self) {
        self.task.abort();
        let _one = self.writing.lock.lock();
        self.writing.stopped.store(true, Ordering::SeqCst);
        write_logged(&self.path, &self.owner, &self.relay);
    }
}

fn save(writing: &Writing, path: &Path, owner: &Owner, relay: &Relay) {
    let _one = writing.lock.lock();
    if writing.stopped.load(Ordering::SeqCst) {
        return;
    }
    write_logged(path, owner, relay);
}

fn write_logged(path: &Path, owner: &Owner, relay: &Relay) {
    if let Err(e) = write(path, owner, relay.saved()) {
        warn!(error = %format!("{e:#}"), "the relay's state was not saved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn saved_allocations_come_back_as_they_were_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load(&path, &owner()).unwrap().is_empty(), "no file yet: nothing to restore");
        let spec = AllocationSpec {
            id: 7,
            session_id: 3,
            gateway_key: PublicKey::from_base64(KEY_A).unwrap(),
            client_key: PublicKey::from_base64(KEY_B).unwrap(),
            expires_ms: 1_893_456_000_000,
            websocket_token: "0123456789abcdef".into(),
            port: None,
        };
        let bound = Sides {
            bound: [Some("198.51.100.2:51820".parse().unwrap()), None],
            candidate: [None, Some("192.0.2.2:40123".parse().unwrap())],
        };
        write(&path, &owner(), vec![Saved::new(&spec, 40003, bound)]).unwrap();
        let saved = load(&path, &owner()).unwrap();
        let (back, back_bound) = saved[0].spec().unwrap();
        assert_eq!(back, AllocationSpec { port: Some(40003), ..spec });
        assert_eq!(back_bound, bound);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temporary(&path).exists());
        std::fs::write(&path, "{\"version\": 9, \"allocations\": []}").unwrap();
        assert!(load(&path, &owner()).is_err(), "an unknown version is refused, not misread");
    }

    fn spec(id: u64) -> AllocationSpec {
        AllocationSpec {
            id,
            session_id: id,
            gateway_key: PublicKey::from_base64(KEY_A).unwrap(),
            client_key: PublicKey::from_base64(KEY_B).unwrap(),
            expires_ms: crate::runtime::wall_ms() + 600_000,
            websocket_token: format!("token-{id}-0123456789"),
            port: None,
        }
    }

    fn owner() -> Owner {
        Owner { relay_id: Some(1), cloud: vec!["wss://a.example.net/api/v1/control/relay".into()] }
    }

    /// Allocations saved for one relay of one cloud are not restored by
    /// another: nothing would ever confirm or end them.
    #[test]
    fn a_state_file_of_another_relay_or_cloud_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, &owner(), vec![Saved::new(&spec(1), 40001, Sides::default())]).unwrap();
        let replicas = Owner {
            cloud: vec!["wss://b.example.net/api/v1/control/relay".into(), owner().cloud[0].clone()],
            ..owner()
        };
        assert_eq!(load(&path, &replicas).unwrap().len(), 1, "a replica was added to the list");
        for other in [
            Owner { relay_id: Some(2), ..owner() },
            Owner { cloud: vec!["wss://b.example.net/api/v1/control/relay".into()], ..owner() },
            Owner::default(),
        ] {
            let refused = load(&path, &other).unwrap_err();
            assert!(format!("{refused:#}").contains("was written by relay 1"), "{refused:#}");
        }
        std::fs::write(&path, "{\"version\": 1, \"allocations\": []}").unwrap();
        assert!(load(&path, &owner()).is_err(), "a file that does not say whose it is");
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A temporary file left with wide permissions (by a kill mid-write, or
    /// by someone else) does not lend them to the state file.
    #[test]
    fn a_leftover_temporary_file_does_not_widen_the_state_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(temporary(&path), "leftover").unwrap();
        std::fs::set_permissions(temporary(&path), std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, &owner(), vec![Saved::new(&spec(1), 40001, Sides::default())]).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load(&path, &owner()).unwrap().len(), 1);
    }

    /// A state file others may write is not trusted: it would tell the
    /// relay where to forward.
    #[test]
    fn a_state_file_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, &owner(), vec![Saved::new(&spec(1), 40001, Sides::default())]).unwrap();
        for wide in [0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wide)).unwrap();
            let refused = load(&path, &owner()).unwrap_err();
            assert!(format!("{refused:#}").contains("writable by group or others"), "{refused:#}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            load(&path, &owner()).unwrap().len(),
            1,
            "readable by others is only a warning matter, not refused"
        );
    }

    /// A save the writer task started before [`Saver::stop`] aborted it,
    /// and that runs only after the stop (and after the shutdown ended the
    /// allocations), leaves the stop's file alone.
    #[tokio::test]
    async fn a_save_after_the_stop_does_not_overwrite_the_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let options = crate::runtime::Options {
            ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
            ipv6: None,
            ports: crate::config::PortRange { first: 47200, last: 47209 },
            max_allocations: 4,
            timeouts: Default::default(),
            websocket_queue: 4,
        };
        let relay = Relay::new(options, None, crate::metrics::Metrics::new());
        assert!(matches!(relay.add(spec(1)), crate::runtime::Admission::Ready { .. }));
        let saver = Saver::start(relay.clone(), path.clone(), owner());
        let writing = saver.writing.clone();
        saver.stop();
        relay.clear();
        assert_eq!(load(&path, &owner()).unwrap().len(), 1, "the stop saved the allocation");
        // The late write of the aborted task.
        save(&writing, &path, &owner(), &relay);
        assert_eq!(load(&path, &owner()).unwrap().len(), 1, "the late write lost the allocation");
    }
}
