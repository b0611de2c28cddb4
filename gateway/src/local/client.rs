//! The command-line side of the local control socket: one request, one answer.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{Request, Response};

/// Longer than the daemon's own answer timeout, so that its error arrives first.
pub const TIMEOUT: Duration = Duration::from_secs(35);

/// The longest answer read (a session list with many peers fits easily).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or no one listening on it.
    #[error("the ferry-gateway daemon is not running (no control socket at {path})")]
    NotRunning { path: PathBuf },
    #[error("permission denied on {path}: run this command as root")]
    PermissionDenied { path: PathBuf },
    #[error("the daemon did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

/// Sends `request` to the daemon at `path` and waits for its answer.
#[allow(clippy::expect_used, reason = "requests are plain derived data, which always serializes")]
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io { path: path.to_path_buf(), source },
    };
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path: path.to_path_buf() }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: path.to_path_buf() },
        _ => ClientError::Io { path: path.to_path_buf(), source: e },
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    match stream.write_all(&line) {
        Ok(()) => {}
        // The daemon may answer (a refusal) and close before reading our
        // request; its answer is still there to read.
        Err(e) if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_RESPONSE_BYTES)).read_line(&mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol("the daemon closed the connection without answering".into()));
    }
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))
}
