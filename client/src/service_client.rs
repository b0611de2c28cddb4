//! The commands' side of the service's socket.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::protocol::{Answer, Envelope, ErrorCode, MAX_LINE, Request, VERSION};

/// Bringing a tunnel up may take the service a while (netlink, a TUN device).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(70);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "the ferry service is not running ({path}): start it with `sudo systemctl start ferry-client`, \
         or install it once with `sudo ferry install`"
    )]
    NotRunning { path: PathBuf },
    #[error(
        "you may not use the ferry service ({path}): ask an administrator to add you to the group `ferry` \
         (`sudo usermod -aG ferry $USER`, then log in again)"
    )]
    PermissionDenied { path: PathBuf },
    #[error("talking to the ferry service: {0}")]
    Io(#[from] io::Error),
    #[error("the ferry service's answer makes no sense: {0}")]
    Garbled(String),
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

/// One request, one answer; an error answer becomes [`ServiceError::Refused`].
pub fn call(socket: &Path, request: &Request) -> Result<Answer, ServiceError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ServiceError::NotRunning { path: socket.to_path_buf() }
        }
        io::ErrorKind::PermissionDenied => ServiceError::PermissionDenied { path: socket.to_path_buf() },
        _ => ServiceError::Io(e),
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(&Envelope { v: VERSION, body: request })
        .map_err(|e| ServiceError::Garbled(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = Vec::new();
    BufReader::new(stream).take(MAX_LINE as u64).read_until(b'\n', &mut answer)?;
    if answer.is_empty() {
        return Err(ServiceError::Garbled("the service closed the connection without an answer".into()));
    }
    let envelope: Envelope<Answer> =
        serde_json::from_slice(&answer).map_err(|e| ServiceError::Garbled(e.to_string()))?;
    match envelope.body {
        Answer::Error { code, message } => Err(ServiceError::Refused { code, message }),
        answer => Ok(answer),
    }
}
