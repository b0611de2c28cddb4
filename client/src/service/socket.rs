//! The service's Unix socket: mode 0660 with the `ferry` group, so that only
//! root and the group's members can connect at all; every connection is then
//! the uid the kernel names for it (`SO_PEERCRED`), which the requests act as.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::Path,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::Event;
use crate::protocol::{Answer, Envelope, ErrorCode, MAX_LINE, Request, VERSION};

pub const SOCKET_MODE: u32 = 0o660;
/// How long a caller may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the service may take to answer (bringing a tunnel up).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds `path` for group `gid`: makes the folder if missing (0755, so that
/// members can reach the socket), replaces a socket that nobody answers on
/// (a killed service's), and refuses to take over a live one.
pub fn bind(path: &Path, gid: u32) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    clear_stale(path)?;
    let listener = UnixListener::bind(path)?;
    // Under systemd the service runs with Group=ferry, so the socket is the
    // group's already and no CAP_CHOWN is needed; otherwise root gives it.
    if std::fs::metadata(path)?.gid() != gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(listener)
}

/// Removes the socket a killed service left; a live service's socket, or
/// anything that is not a socket, stays and is an error.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    let refuse = |kind, why: &str| Err(io::Error::new(kind, format!("{}: {why}", path.display())));
    if !meta.file_type().is_socket() {
        return refuse(io::ErrorKind::AlreadyExists, "exists and is not a socket");
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return refuse(io::ErrorKind::AddrInUse, "another ferry service answers there");
    }
    std::fs::remove_file(path)
}

/// Accepts connections for as long as the task runs (the service aborts it
/// when it stops).
pub async fn serve(listener: UnixListener, events: mpsc::Sender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await.inspect_err(|e| {
            tracing::warn!(error = %e, "accepting on the client socket failed");
        }) else {
            // Out of file descriptors and the like: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(connection(stream, events.clone()));
    }
}

async fn connection(stream: UnixStream, events: mpsc::Sender<Event>) {
    if let Err(e) = exchange(stream, events).await {
        tracing::debug!(error = %e, "client socket connection");
    }
}

async fn exchange(mut stream: UnixStream, events: mpsc::Sender<Event>) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64 + 1);
    let limited = reader.read_until(b'\n', &mut line);
    let answer = match tokio::time::timeout(READ_TIMEOUT, limited).await {
        Err(_) => Answer::error(ErrorCode::Protocol, "no request within 10 s"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_LINE => {
            Answer::error(ErrorCode::Protocol, format!("request longer than {MAX_LINE} bytes"))
        }
        Ok(Ok(_)) => match parse(&line) {
            Ok(request) => {
                tracing::debug!(uid, ?request, "request");
                ask(uid, request, &events).await
            }
            Err(why) => Answer::error(ErrorCode::Protocol, why),
        },
    };
    let mut bytes = serde_json::to_vec(&Envelope { v: VERSION, body: answer }).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// The version first, so that a newer client gets told why rather than a
/// parse error about a field it sent.
fn parse(line: &[u8]) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON request: {e}"))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        other => {
            return Err(format!(
                "this ferry service speaks protocol version {VERSION}, the request has {}: \
                 run the same version of ferry as the service (restart it after an upgrade)",
                other.map_or_else(|| "none".to_string(), |v| v.to_string())
            ));
        }
    }
    serde_json::from_value::<Envelope<Request>>(value)
        .map(|envelope| envelope.body)
        .map_err(|e| format!("not a request this service knows: {e}"))
}

async fn ask(uid: u32, request: Request, events: &mpsc::Sender<Event>) -> Answer {
    let (reply, answer) = oneshot::channel();
    if events.send(Event::Call { uid, request, reply }).await.is_err() {
        return Answer::error(ErrorCode::Failed, "the service is stopping");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Answer::error(ErrorCode::Failed, "the service dropped the request"),
        Err(_) => Answer::error(ErrorCode::Failed, "the service did not answer within 60 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked_before_the_shape() {
        let refused = |line: &str| parse(line.as_bytes()).err().unwrap_or_else(|| panic!("{line} parsed"));
        assert!(refused(r#"{"v":2,"op":"teleport"}"#).contains("version 1, the request has 2"));
        assert!(refused(r#"{"op":"status"}"#).contains("has none"));
        assert!(refused(r#"{"v":1,"op":"teleport"}"#).contains("not a request"));
        assert!(refused("{no json").contains("not a JSON request"));
        assert!(matches!(parse(br#"{"v":1,"op":"status"}"#), Ok(Request::Status)));
    }
}
