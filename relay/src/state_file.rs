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
//! allocation file's) next snapshot ends the ones that ended meanwhile.
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
    sync::Arc,
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
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

/// The saved allocations; none when the file does not exist yet.
pub fn load(path: &Path) -> Result<Vec<Saved>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: File = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if file.version != VERSION {
        anyhow::bail!("{}: version {} is not {VERSION}", path.display(), file.version);
    }
    Ok(file.allocations)
}

/// Replaces the file with `allocations`, atomically and durably.
pub fn write(path: &Path, allocations: Vec<Saved>) -> Result<()> {
    let text = serde_json::to_vec(&File { version: VERSION, allocations }).context("encoding the state")?;
    let tmp = temporary(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
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
pub fn restore(relay: &Relay, path: &Path) -> usize {
    let saved = match load(path) {
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
    /// One write at a time: a write outlives an abort of the task.
    writing: Arc<Mutex<()>>,
}

impl Saver {
    pub fn start(relay: Relay, path: PathBuf) -> Saver {
        let changes: Arc<tokio::sync::Notify> = relay.changes();
        let writing = Arc::new(Mutex::new(()));
        let task = {
            let (relay, path, writing) = (relay.clone(), path.clone(), writing.clone());
            tokio::spawn(async move {
                loop {
                    changes.notified().await;
                    tokio::time::sleep(COALESCE).await;
                    let (relay, path, writing) = (relay.clone(), path.clone(), writing.clone());
                    // Off the workers: a slow disk must not stall forwarding.
                    let _ = tokio::task::spawn_blocking(move || save(&writing, &path, &relay)).await;
                }
            })
        };
        Saver { task, relay, path, writing }
    }

    /// Stops saving, after a last write: a clean stop keeps the allocations
    /// for the next start (the ones that end meanwhile, the cloud ends).
    pub fn stop(self) {
        self.task.abort();
        save(&self.writing, &self.path, &self.relay);
    }
}

fn save(writing: &Mutex<()>, path: &Path, relay: &Relay) {
    let _one = writing.lock();
    if let Err(e) = write(path, relay.saved()) {
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
        assert!(load(&path).unwrap().is_empty(), "no file yet: nothing to restore");
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
        write(&path, vec![Saved::new(&spec, 40003, bound)]).unwrap();
        let saved = load(&path).unwrap();
        let (back, back_bound) = saved[0].spec().unwrap();
        assert_eq!(back, AllocationSpec { port: Some(40003), ..spec });
        assert_eq!(back_bound, bound);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temporary(&path).exists());
        std::fs::write(&path, "{\"version\": 9, \"allocations\": []}").unwrap();
        assert!(load(&path).is_err(), "an unknown version is refused, not misread");
    }
}
