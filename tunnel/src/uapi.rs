//! The cross-platform WireGuard configuration protocol (UAPI) on a Unix
//! socket at `/var/run/wireguard/<name>.sock`, as wireguard-go serves it, so
//! stock `wg show` and `wg set` work with a Ferry endpoint.
//!
//! Keys are hex on this protocol; a request is `get=1` or `set=1` followed by
//! `key=value` lines and a blank line; the reply ends with `errno=N`.

use std::{
    fmt::Write as _,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use zeroize::Zeroizing;

use crate::{
    PresharedKey, PublicKey,
    endpoint::Endpoint,
    proto::{Device, IpNet, PeerConfig},
};

pub const SOCKET_DIR: &str = "/var/run/wireguard";
/// Requests larger than this are refused (a set of thousands of peers fits).
const MAX_REQUEST_LINES: usize = 100_000;
/// The longest line of the protocol is an allowed_ip or a key; 1 KiB is ample.
const MAX_LINE: u64 = 1024;

pub fn socket_path(name: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{name}.sock"))
}

/// Serves UAPI for `endpoint` until the returned task is aborted. The socket
/// is created with mode 0600 (only root may configure the tunnel).
pub fn serve(endpoint: Arc<Endpoint>) -> io::Result<(PathBuf, tokio::task::JoinHandle<()>)> {
    std::fs::create_dir_all(SOCKET_DIR)?;
    let path = socket_path(endpoint.name());
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let endpoint = Arc::clone(&endpoint);
                    tokio::spawn(async move {
                        if let Err(err) = handle(stream, &endpoint).await {
                            tracing::debug!(error = %err, "UAPI connection ended");
                        }
                    });
                }
                Err(err) => tracing::warn!(error = %err, "UAPI accept failed"),
            }
        }
    });
    Ok((path, task))
}

async fn handle(stream: UnixStream, endpoint: &Endpoint) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    while let Some(first) = next_line(&mut reader).await? {
        let reply = match first.as_str() {
            "get=1" => {
                // The request ends with a blank line.
                while let Some(line) = next_line(&mut reader).await? {
                    if line.is_empty() {
                        break;
                    }
                }
                let mut text =
                    Zeroizing::new(endpoint.with_device(|device| get(device, endpoint.local_port())));
                text.push_str("errno=0\n\n");
                write.write_all(text.as_bytes()).await?;
                continue;
            }
            "set=1" => {
                let mut body = Zeroizing::new(Vec::new());
                while let Some(line) = next_line(&mut reader).await? {
                    if line.is_empty() {
                        break;
                    }
                    if body.len() == MAX_REQUEST_LINES {
                        return Err(io::Error::other("UAPI request too long"));
                    }
                    body.push(line);
                }
                let errno = endpoint.with_device(|device| match set(device, endpoint.local_port(), &body) {
                    Ok(()) => 0,
                    Err(err) => {
                        tracing::warn!(error = %err, "UAPI set refused");
                        err.errno()
                    }
                });
                format!("errno={errno}\n\n")
            }
            "" => continue,
            _ => {
                // Not echoed: a confused client may have sent a key.
                tracing::debug!("unknown UAPI operation");
                format!("errno={EINVAL}\n\n")
            }
        };
        write.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// One line without its newline; None at the end of the stream. Lines longer
/// than MAX_LINE or not UTF-8 end the connection.
async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Option<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    let n = (&mut *reader).take(MAX_LINE).read_until(b'\n', &mut bytes).await?;
    if n == 0 {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    } else if n as u64 == MAX_LINE {
        return Err(io::Error::other("UAPI line too long"));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| io::Error::other("UAPI line is not UTF-8"))?;
    Ok(Some(text.to_string()))
}

const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A 32-byte key from 64 hex digits. Errors never repeat the text: it may be
/// a secret with one typo.
fn unhex32(text: &str) -> Result<[u8; 32], SetError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| SetError::Invalid("a key must be exactly 64 hex digits".to_string()))?;
    Ok(out)
}

/// The `get` reply, without the final errno line.
pub fn get(device: &Device, listen_port: u16) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "private_key={}", hex(device.private_key_bytes()));
    let _ = writeln!(out, "listen_port={listen_port}");
    let mut peers: Vec<_> = device.peers().collect();
    peers.sort_by_key(|(_, p)| p.public_key);
    let wall_now = SystemTime::now();
    let mono_now = std::time::Instant::now();
    for (id, peer) in peers {
        let _ = writeln!(out, "public_key={}", hex(peer.public_key.as_bytes()));
        let _ = writeln!(out, "preshared_key={}", hex(&peer.psk));
        let _ = writeln!(out, "protocol_version=1");
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let (sec, nsec) = peer
            .stats
            .last_handshake
            .and_then(|t| wall_now.checked_sub(mono_now.saturating_duration_since(t)))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", peer.stats.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", peer.stats.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive.map_or(0, |d| d.as_secs())
        );
        for net in device.allowed_ips_of(id) {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} cannot be changed on a running endpoint")]
    Unsupported(&'static str),
}

impl SetError {
    fn errno(&self) -> i32 {
        match self {
            SetError::Invalid(_) => EINVAL,
            SetError::Unsupported(_) => EOPNOTSUPP,
        }
    }
}

/// A peer being configured by a `set` request.
struct PeerEdit {
    config: PeerConfig,
    remove: bool,
    update_only: bool,
    replace_allowed_ips: bool,
    new_allowed_ips: Vec<IpNet>,
}

/// Applies a `set` request. Every line and every peer key is checked before
/// anything changes, so a bad request changes nothing.
pub fn set(device: &mut Device, listen_port: u16, lines: &[String]) -> Result<(), SetError> {
    let mut replace_peers = false;
    let mut edits: Vec<PeerEdit> = Vec::new();
    for line in lines {
        let (key, value) =
            line.split_once('=').ok_or_else(|| SetError::Invalid(format!("`{line}` is not key=value")))?;
        match (key, edits.last_mut()) {
            ("private_key", None) => {
                if unhex32(value)? != *device.private_key_bytes() {
                    return Err(SetError::Unsupported("the private key"));
                }
            }
            ("listen_port", None) => {
                let port: u16 =
                    value.parse().map_err(|_| SetError::Invalid(format!("bad port `{value}`")))?;
                if port != listen_port {
                    return Err(SetError::Unsupported("the listen port"));
                }
            }
            ("fwmark", None) => {
                if value != "0" {
                    return Err(SetError::Unsupported("fwmark"));
                }
            }
            ("replace_peers", None) => replace_peers = value == "true",
            ("public_key", _) => {
                let key = PublicKey(unhex32(value)?);
                let mut config = PeerConfig::new(key);
                // After replace_peers the peer starts fresh, as in wireguard-go.
                let known = device.peer_id(&key).filter(|_| !replace_peers);
                if let Some((id, peer)) = known.and_then(|id| Some((id, device.peer(id)?))) {
                    config.endpoint = peer.endpoint;
                    config.persistent_keepalive = peer.persistent_keepalive;
                    config.preshared_key = (peer.psk != [0; 32]).then(|| PresharedKey::from_bytes(peer.psk));
                    config.allowed_ips = device.allowed_ips_of(id);
                }
                edits.push(PeerEdit {
                    config,
                    remove: false,
                    update_only: false,
                    replace_allowed_ips: false,
                    new_allowed_ips: Vec::new(),
                });
            }
            ("remove", Some(edit)) => edit.remove = value == "true",
            ("update_only", Some(edit)) => edit.update_only = value == "true",
            ("preshared_key", Some(edit)) => {
                let bytes = unhex32(value)?;
                edit.config.preshared_key = (bytes != [0; 32]).then(|| PresharedKey::from_bytes(bytes));
            }
            ("endpoint", Some(edit)) => {
                let addr: SocketAddr =
                    value.parse().map_err(|_| SetError::Invalid(format!("bad endpoint `{value}`")))?;
                edit.config.endpoint = Some(addr);
            }
            ("persistent_keepalive_interval", Some(edit)) => {
                let secs: u16 =
                    value.parse().map_err(|_| SetError::Invalid(format!("bad interval `{value}`")))?;
                edit.config.persistent_keepalive = (secs > 0).then(|| Duration::from_secs(secs.into()));
            }
            ("replace_allowed_ips", Some(edit)) => edit.replace_allowed_ips = value == "true",
            ("allowed_ip", Some(edit)) => {
                edit.new_allowed_ips.push(
                    value.parse().map_err(|e| SetError::Invalid(format!("bad allowed_ip `{value}`: {e}")))?,
                );
            }
            ("protocol_version", Some(_)) => {
                if value != "1" {
                    return Err(SetError::Invalid(format!("protocol_version {value} is not 1")));
                }
            }
            (key, _) => return Err(SetError::Invalid(format!("unexpected key `{key}` here"))),
        }
    }
    for edit in edits.iter().filter(|e| !e.remove) {
        device
            .check_peer_key(&edit.config.public_key)
            .map_err(|e| SetError::Invalid(format!("peer {}: {e}", edit.config.public_key)))?;
    }
    if replace_peers {
        let keys: Vec<PublicKey> = device.peers().map(|(_, p)| p.public_key).collect();
        for key in keys {
            device.remove_peer(&key);
        }
    }
    for mut edit in edits {
        let key = edit.config.public_key;
        if edit.remove {
            device.remove_peer(&key);
            continue;
        }
        if edit.update_only && device.peer_id(&key).is_none() {
            continue;
        }
        if edit.replace_allowed_ips || replace_peers {
            edit.config.allowed_ips = edit.new_allowed_ips;
        } else {
            edit.config.allowed_ips.extend(edit.new_allowed_ips);
        }
        // Cannot fail: check_peer_key vetted every key before the first change.
        device.add_peer(edit.config).map_err(|e| SetError::Invalid(format!("peer {key}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;
    use crate::{PrivateKey, proto::DeviceConfig};

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn set_then_get_round_trips_a_peer() {
        let mut device = Device::new(DeviceConfig::new(PrivateKey::generate()), Box::new(OsRng));
        let peer = PrivateKey::generate().public_key();
        let request = format!(
            "public_key={}\npreshared_key={}\nendpoint=192.0.2.9:51820\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128",
            hex(peer.as_bytes()),
            hex(&[7; 32])
        );
        set(&mut device, 51820, &lines(&request)).unwrap();
        let got = get(&device, 51820);
        assert!(got.contains(&format!("public_key={}", hex(peer.as_bytes()))), "{got}");
        assert!(got.contains(&format!("preshared_key={}", hex(&[7; 32]))));
        assert!(got.contains("endpoint=192.0.2.9:51820"));
        assert!(got.contains("persistent_keepalive_interval=25"));
        assert!(got.contains("allowed_ip=10.0.0.2/32") && got.contains("allowed_ip=fd00::2/128"));
        assert!(got.contains("listen_port=51820"));

        // Appending an allowed IP keeps the PSK and the others; replace_allowed_ips replaces.
        set(
            &mut device,
            51820,
            &lines(&format!("public_key={}\nallowed_ip=10.0.1.0/24", hex(peer.as_bytes()))),
        )
        .unwrap();
        let got = get(&device, 51820);
        assert!(got.contains("allowed_ip=10.0.0.2/32") && got.contains("allowed_ip=10.0.1.0/24"), "{got}");
        assert!(got.contains(&format!("preshared_key={}", hex(&[7; 32]))), "psk kept: {got}");
        set(
            &mut device,
            51820,
            &lines(&format!(
                "public_key={}\nreplace_allowed_ips=true\nallowed_ip=10.9.0.0/16",
                hex(peer.as_bytes())
            )),
        )
        .unwrap();
        let got = get(&device, 51820);
        assert!(got.contains("allowed_ip=10.9.0.0/16") && !got.contains("10.0.0.2/32"), "{got}");

        set(&mut device, 51820, &lines(&format!("public_key={}\nremove=true", hex(peer.as_bytes()))))
            .unwrap();
        assert!(!get(&device, 51820).contains("public_key="));
    }

    #[test]
    fn bad_requests_change_nothing_and_say_why() {
        let mut device = Device::new(DeviceConfig::new(PrivateKey::generate()), Box::new(OsRng));
        let peer = PrivateKey::generate().public_key();
        for bad in [
            format!("public_key={}\nallowed_ip=10.0.0.0/33", hex(peer.as_bytes())),
            "public_key=abc".to_string(),
            "listen_port=1".to_string(),
            "allowed_ip=10.0.0.0/8".to_string(),
            "nonsense".to_string(),
            format!("public_key={}\nendpoint=nowhere", hex(peer.as_bytes())),
        ] {
            assert!(set(&mut device, 51820, &lines(&bad)).is_err(), "{bad}");
            assert_eq!(device.peers().count(), 0, "{bad} changed something");
        }
    }

    #[test]
    fn hostile_values_neither_panic_nor_leak() {
        let mut device = Device::new(DeviceConfig::new(PrivateKey::generate()), Box::new(OsRng));
        // Multi-byte UTF-8 at an odd offset, and a signed digit.
        let tricky = format!("a\u{e9}{}", "a".repeat(61));
        assert_eq!(tricky.len(), 64);
        for value in [tricky, format!("+f{}", "0".repeat(62))] {
            let err = set(&mut device, 1, &lines(&format!("public_key={value}"))).unwrap_err().to_string();
            assert!(!err.contains(&value), "the value was echoed: {err}");
        }
        let secret = format!("{}g", "1".repeat(63));
        let err = set(&mut device, 1, &lines(&format!("private_key={secret}"))).unwrap_err().to_string();
        assert!(!err.contains("1111"), "{err}");
    }

    #[test]
    fn a_low_order_key_refuses_the_whole_request() {
        let mut device = Device::new(DeviceConfig::new(PrivateKey::generate()), Box::new(OsRng));
        let good = PrivateKey::generate().public_key();
        set(&mut device, 1, &lines(&format!("public_key={}", hex(good.as_bytes())))).unwrap();
        let other = PrivateKey::generate().public_key();
        let request = format!(
            "replace_peers=true\npublic_key={}\npublic_key={}",
            hex(other.as_bytes()),
            "0".repeat(64)
        );
        assert!(set(&mut device, 1, &lines(&request)).is_err());
        let keys: Vec<PublicKey> = device.peers().map(|(_, p)| p.public_key).collect();
        assert_eq!(keys, vec![good], "a refused request changed the peers");
    }

    #[test]
    fn replace_peers_starts_peers_fresh() {
        let mut device = Device::new(DeviceConfig::new(PrivateKey::generate()), Box::new(OsRng));
        let peer = PrivateKey::generate().public_key();
        set(
            &mut device,
            1,
            &lines(&format!("public_key={}\npreshared_key={}", hex(peer.as_bytes()), hex(&[5; 32]))),
        )
        .unwrap();
        set(&mut device, 1, &lines(&format!("replace_peers=true\npublic_key={}", hex(peer.as_bytes()))))
            .unwrap();
        assert!(
            get(&device, 1).contains(&format!("preshared_key={}", hex(&[0; 32]))),
            "the old PSK survived"
        );
    }

    #[test]
    fn update_only_and_replace_peers() {
        let mut device = Device::new(DeviceConfig::new(PrivateKey::generate()), Box::new(OsRng));
        let a = PrivateKey::generate().public_key();
        let b = PrivateKey::generate().public_key();
        set(&mut device, 1, &lines(&format!("public_key={}\nupdate_only=true", hex(a.as_bytes())))).unwrap();
        assert_eq!(device.peers().count(), 0, "update_only does not create");
        set(&mut device, 1, &lines(&format!("public_key={}", hex(a.as_bytes())))).unwrap();
        set(&mut device, 1, &lines(&format!("replace_peers=true\npublic_key={}", hex(b.as_bytes()))))
            .unwrap();
        let keys: Vec<PublicKey> = device.peers().map(|(_, p)| p.public_key).collect();
        assert_eq!(keys, vec![b]);
    }
}
