//! The daemon's side of the local control socket.
//!
//! The socket is a Unix stream socket (mode 0600, in a 0700 directory), so it
//! is never reachable from the network. On top of the file mode, each
//! connection's peer credentials (`SO_PEERCRED`) are checked: only root and
//! the daemon's own user may switch remote maintenance or approve sessions.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::protocol::{MAX_REQUEST_BYTES, Request, Response};

/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to answer (switching off tears sessions down).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the daemon's handler receives: a request and where to send the answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// How many requests may wait for the daemon.
const QUEUE: usize = 16;

/// The request channel: the sender for the socket's connections and the
/// local panel, the [`Inbox`] for the daemon's loop.
pub fn channel() -> (mpsc::Sender<Call>, Inbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, Inbox(rx))
}

/// The daemon's end of the request channel. Every request it took or still
/// queues gets an answer, also when the daemon's loop goes without giving
/// one: a plain dropped request would tell the client nothing of why (see
/// [`gone`]).
pub struct Inbox(mpsc::Receiver<Call>);

impl Inbox {
    /// The next request, with the [`Pending`] answer it is owed. Cancel-safe
    /// like [`mpsc::Receiver::recv`] (no request is taken unless returned).
    pub async fn recv(&mut self) -> Option<(Request, Pending)> {
        let (request, answer) = self.0.recv().await?;
        Some((request, Pending(Some(answer))))
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.close();
        while let Ok((_, answer)) = self.0.try_recv() {
            drop(Pending(Some(answer)));
        }
    }
}

/// An answer the daemon owes. Dropped unanswered, it answers with [`gone`].
pub struct Pending(Option<oneshot::Sender<Response>>);

impl Pending {
    pub fn answer(mut self, response: Response) {
        if let Some(answer) = self.0.take() {
            // The client may have hung up; nothing to tell then.
            let _: Result<(), Response> = answer.send(response);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            let _: Result<(), Response> = answer.send(gone());
        }
    }
}

/// Why a request the daemon held went unanswered. A panic in the daemon's
/// loop drops the loop while it unwinds (its log has the panic's message and
/// place); otherwise the loop ended at a shutdown.
fn gone() -> Response {
    if std::thread::panicking() {
        Response::error("the daemon failed while it held the request (it panicked: see its log)")
    } else {
        Response::error("the daemon is shutting down")
    }
}

static REFUSED: AtomicU64 = AtomicU64::new(0);
static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// Connections refused because the peer was neither root nor the daemon's user.
pub fn refused_connections() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Requests that were too long, too slow or not valid JSON.
pub fn malformed_requests() -> u64 {
    MALFORMED.load(Ordering::Relaxed)
}

/// Binds the control socket at `path`: creates the parent directory (0700) if
/// it is missing, removes a stale socket left by a daemon that died, and
/// makes the socket 0600. Fails with `AddrInUse` if a daemon answers on it.
/// Must be called inside a tokio runtime.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::state::create_private_dir(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another ferry-gateway daemon is listening", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers connections until `requests`' receiver is dropped. Each connection
/// carries one request line; the answer comes from whoever holds the
/// receiver of `requests` (the daemon).
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Call>) {
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = requests.closed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let requests = requests.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, own_uid, requests).await {
                        tracing::debug!(error = %e, "control socket connection");
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(mut stream: UnixStream, own_uid: u32, requests: mpsc::Sender<Call>) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    if uid != 0 && uid != own_uid {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(uid, pid = ?cred.pid(), "control socket: refused a user that is neither root nor the daemon's");
        let message = format!(
            "permission denied: uid {uid} may not control the gateway; run this command as root (or as uid {own_uid})"
        );
        return reply(&mut stream, &Response::error(message)).await;
    }

    let (read, mut write) = stream.split();
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line),
    )
    .await;
    let response = match read {
        Err(_) => malformed("no request line within 5 s"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            malformed(&format!("request longer than {MAX_REQUEST_BYTES} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => malformed(&format!("malformed request: {e}")),
            Ok(request) => {
                tracing::debug!(uid, ?request, "control socket request");
                ask(request, &requests).await
            }
        },
    };
    write.write_all(&as_line(&response)).await?;
    write.shutdown().await
}

fn malformed(message: &str) -> Response {
    MALFORMED.fetch_add(1, Ordering::Relaxed);
    Response::error(message)
}

/// Hands `request` to the daemon and waits for its answer: the one path
/// into the daemon, for the socket's clients and the local panel alike.
pub async fn ask(request: Request, requests: &mpsc::Sender<Call>) -> Response {
    let (answer, answered) = oneshot::channel();
    if requests.send((request, answer)).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answered).await {
        Ok(Ok(response)) => response,
        // The inbox answers what it holds when it goes; a request sent
        // while it was closing may still be dropped unanswered.
        Ok(Err(_)) if requests.is_closed() => Response::error("the daemon is shutting down"),
        Ok(Err(_)) => Response::error("the daemon dropped the request"),
        Err(_) => Response::error("the daemon did not answer within 30 s"),
    }
}

/// A response as one line of JSON.
#[allow(clippy::expect_used, reason = "responses are plain derived data, which always serializes")]
fn as_line(response: &Response) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(response).expect("responses serialize");
    bytes.push(b'\n');
    bytes
}

async fn reply(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    stream.write_all(&as_line(response)).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, Write as _};

    use super::*;
    use crate::local::client;

    /// A stand-in for the daemon: answers Status from a flag, Remote by
    /// flipping it, everything else with an error.
    fn fake_daemon() -> mpsc::Sender<Call> {
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(async move {
            let mut on = false;
            while let Some((request, answer)) = rx.recv().await {
                let response = match request {
                    Request::Status => Response::Switch { on, changed: false },
                    Request::Remote { on: wanted } => {
                        let changed = wanted != on;
                        on = wanted;
                        Response::Switch { on, changed }
                    }
                    _ => Response::error("not in this test"),
                };
                let _ = answer.send(response);
            }
        });
        tx
    }

    fn raw(path: &Path, bytes: &[u8]) -> Response {
        let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(bytes).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_requests_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("control.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        // A second daemon must not steal a live socket.
        assert_eq!(bind(&path).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let server = tokio::spawn(serve(listener, fake_daemon()));

        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            assert_eq!(
                client::call(&p, &Request::Status).unwrap(),
                Response::Switch { on: false, changed: false }
            );
            assert_eq!(
                client::call(&p, &Request::Remote { on: true }).unwrap(),
                Response::Switch { on: true, changed: true }
            );
            assert_eq!(
                client::call(&p, &Request::Status).unwrap(),
                Response::Switch { on: true, changed: false }
            );

            let before = malformed_requests();
            assert!(matches!(raw(&p, b"{not json\n"), Response::Error { .. }));
            assert!(matches!(raw(&p, b"{\"type\":\"launch\"}\n"), Response::Error { .. }));
            let mut long = vec![b' '; MAX_REQUEST_BYTES + 10];
            long.push(b'\n');
            match raw(&p, &long) {
                Response::Error { message } => assert!(message.contains("longer"), "{message}"),
                other => panic!("{other:?}"),
            }
            assert!(malformed_requests() >= before + 3);
            // The server is still there after all that.
            assert_eq!(
                client::call(&p, &Request::Status).unwrap(),
                Response::Switch { on: true, changed: false }
            );
        })
        .await
        .unwrap();
        server.abort();
        let _ = server.await;

        // A stale socket (no one listening) is replaced. The aborted server's
        // listener may still be closing on another worker thread for a
        // moment, so a refusal as "in use" is tried again a few times.
        let mut tries = 0;
        let listener = loop {
            match bind(&path) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other.unwrap(),
            }
        };
        drop(listener);
    }

    /// Run as another user by `other_users_are_refused`: connects to
    /// `$FERRY_TEST_SOCKET` and checks what `$FERRY_TEST_EXPECT` says. In a
    /// plain test run (no such variables) it has nothing to check; it is not
    /// `#[ignore]`d because the test summary counts ignored tests as skipped.
    #[test]
    fn helper_connect_as_another_user() {
        let (Some(path), Ok(expect)) =
            (std::env::var_os("FERRY_TEST_SOCKET"), std::env::var("FERRY_TEST_EXPECT"))
        else {
            return;
        };
        let result = client::call(Path::new(&path), &Request::Remote { on: true });
        match (expect.as_str(), result) {
            ("filesystem", Err(client::ClientError::PermissionDenied { .. })) => {}
            ("peercred", Ok(Response::Error { message })) if message.contains("permission denied") => {}
            (expect, other) => panic!("expected {expect}, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_users_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a client as nobody");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("run").join("control.sock");
        let listener = bind(&path).unwrap();
        let server = tokio::spawn(serve(listener, fake_daemon()));
        // Let nobody reach the socket file, so that the 0600 mode and then
        // the SO_PEERCRED check are what refuse it.
        std::fs::set_permissions(path.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();

        let as_nobody = |expect: &'static str, path: std::path::PathBuf| {
            use std::os::unix::process::CommandExt as _;
            let mut command = std::process::Command::new(std::env::current_exe().unwrap());
            command
                .args(["--exact", "local::server::tests::helper_connect_as_another_user", "--nocapture"])
                .env("FERRY_TEST_SOCKET", &path)
                .env("FERRY_TEST_EXPECT", expect);
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    let nobody = nix::unistd::Uid::from_raw(65534);
                    nix::unistd::setgroups(&[])?;
                    nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
                    nix::unistd::setuid(nobody)?;
                    Ok(())
                });
            }
            let output = command.output().unwrap();
            assert!(
                output.status.success(),
                "{expect}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(String::from_utf8_lossy(&output.stdout).contains("1 passed"), "the helper did not run");
        };

        let p = path.clone();
        tokio::task::spawn_blocking(move || as_nobody("filesystem", p)).await.unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let before = refused_connections();
        let p = path.clone();
        tokio::task::spawn_blocking(move || as_nobody("peercred", p)).await.unwrap();
        assert!(refused_connections() > before);

        // Root still gets through, and nobody changed the switch.
        let p = path.clone();
        let status = tokio::task::spawn_blocking(move || client::call(&p, &Request::Status)).await.unwrap();
        assert_eq!(status.unwrap(), Response::Switch { on: false, changed: false });
        server.abort();
    }

    /// A stand-in for the daemon's loop that panics while it holds one
    /// request, with another queued behind it, as a panic in `Daemon::handle`
    /// would; it runs in `block_on` on a thread of its own, as the daemon's
    /// loop does on the main thread, and the clients on the runtime's workers.
    #[test]
    fn requests_held_by_a_loop_that_panics_are_answered_with_the_failure() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (requests, mut inbox) = channel();
        let first = runtime.spawn({
            let requests = requests.clone();
            async move { ask(Request::Remote { on: false }, &requests).await }
        });
        let second = runtime.spawn(async move { ask(Request::Status, &requests).await });
        let handle = runtime.handle().clone();
        let looped = std::thread::spawn(move || {
            handle.block_on(async move {
                let (_request, _pending) = inbox.recv().await.unwrap();
                // The other request is queued behind the one in hand.
                while inbox.0.is_empty() {
                    tokio::task::yield_now().await;
                }
                panic!("a bug in the daemon's loop");
            })
        });
        assert!(looped.join().is_err(), "the stand-in loop panicked");
        for asked in [first, second] {
            match runtime.block_on(asked).unwrap() {
                Response::Error { message } => assert!(message.contains("panicked"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn requests_left_at_a_shutdown_are_told_so() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (requests, inbox) = channel();
        let asked = runtime.spawn(async move { ask(Request::Status, &requests).await });
        runtime.block_on(async {
            while inbox.0.is_empty() {
                tokio::task::yield_now().await;
            }
        });
        drop(inbox);
        assert_eq!(runtime.block_on(asked).unwrap(), Response::error("the daemon is shutting down"));
    }

    #[test]
    fn a_missing_socket_means_the_daemon_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = client::call(&dir.path().join("control.sock"), &Request::Status).unwrap_err();
        assert!(matches!(err, client::ClientError::NotRunning { .. }), "{err}");
    }
}
