//! Small services on the machines and the traffic that checks them: TCP
//! servers on threads whose sockets live in a namespace, HTTP GETs, echo
//! round trips, and bounded waits.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_lab::Netns;

use crate::unix_ms;

// ------------------------------------------------------------------ waiting

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn poll(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`poll`], panicking with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(poll(timeout, condition), "timed out after {timeout:?} waiting for {what}");
}

// ----------------------------------------------------------------- services

/// A TCP service on a thread of the test whose listening socket lives in a
/// lab namespace; stopped on [`Server::stop`] or when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    pub addr: SocketAddr,
}

impl Server {
    /// Serves `body` to every HTTP request (HTTP/1.0 style, then closes).
    pub fn http(ns: &Netns, ip: &str, port: u16, body: &'static str) -> Server {
        Server::start(ns, ip, port, move |mut stream| {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.shutdown(Shutdown::Write);
        })
    }

    /// Echoes every byte back until the peer closes.
    pub fn echo(ns: &Netns, ip: &str, port: u16) -> Server {
        Server::start(ns, ip, port, |mut stream| {
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }

    /// Counts connections and closes them at once (a port that must never
    /// see a connection).
    pub fn counter(ns: &Netns, ip: &str, port: u16) -> Server {
        Server::start(ns, ip, port, drop)
    }

    pub fn start(
        ns: &Netns,
        ip: &str,
        port: u16,
        handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
    ) -> Server {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let listener = ns
            .run_in(move || TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let handle = handle.clone();
                        std::thread::spawn(move || handle(stream));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { stop, accepted, addr }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ traffic

/// Connects from `ns` to `ip:port`, sends `payload`, half-closes when
/// `close_write`, and collects the answer until the peer closes, `expect`
/// bytes arrived, or `timeout` passes. Any failure is an `Err` with what
/// happened.
pub fn tcp_exchange(
    ns: &Netns,
    ip: &str,
    port: u16,
    payload: &[u8],
    expect: Option<usize>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let addr = SocketAddr::new(ip.parse::<IpAddr>().map_err(|e| e.to_string())?, port);
    let payload = payload.to_vec();
    ns.run_in(move || {
        let deadline = Instant::now() + timeout;
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.write_all(&payload).map_err(|e| format!("send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if expect.is_some_and(|n| answer.len() >= n) {
                return Ok(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no complete answer from {addr} within {timeout:?} (got {} bytes)",
                    answer.len()
                ));
            }
            stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            match stream.read(&mut buffer) {
                Ok(0) if expect.is_none() && !answer.is_empty() => return Ok(answer),
                Ok(0) => return Err(format!("{addr} closed after {} bytes", answer.len())),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e) => return Err(format!("reading from {addr}: {e} (got {} bytes)", answer.len())),
            }
        }
    })
    .map_err(|e| e.to_string())?
}

fn curl_available() -> bool {
    static CURL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CURL.get_or_init(|| {
        std::process::Command::new("sh")
            .args(["-c", "command -v curl"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// An HTTP GET from `ns` to `http://ip:port/` within `timeout`: curl when
/// installed, else a plain HTTP/1.0 request. Returns the body.
pub fn http_get(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<String, String> {
    http_get_path(ns, ip, port, "/", timeout)
}

/// [`http_get`] for another path.
pub fn http_get_path(
    ns: &Netns,
    ip: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    if curl_available() {
        let max = format!("{:.1}", timeout.as_secs_f64());
        let url = format!("http://{ip}:{port}{path}");
        let out = ns
            .output("curl", &["-sS", "--noproxy", "*", "--max-time", &max, "--connect-timeout", &max, &url])
            .map_err(|e| e.to_string())?;
        return if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        };
    }
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n");
    let answer = tcp_exchange(ns, ip, port, request.as_bytes(), None, timeout)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!("not an HTTP 200 answer: {text:?}")),
    }
}

/// Sends a message to an echo service and checks that the same bytes come back.
pub fn echo_round_trip(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let message = format!("ferry echo {} {}\n", ip, unix_ms());
    let answer = tcp_exchange(ns, ip, port, message.as_bytes(), Some(message.len()), timeout)?;
    if answer == message.as_bytes() {
        Ok(())
    } else {
        Err(format!("echo answered {:?} to {message:?}", String::from_utf8_lossy(&answer)))
    }
}

/// Retries `attempt` until it succeeds or `timeout` passes (a first
/// handshake or a reconnect can take a moment); returns the last result.
pub fn eventually<T>(timeout: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let result = attempt();
        if result.is_ok() || Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running echo loop over one TCP connection: a message every 50 ms, each
/// answer's arrival time recorded. For "traffic stops within N": look at
/// [`EchoLoop::answers_after`].
pub struct EchoLoop {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoLoop {
    /// Connects from `ns` and starts the loop; fails if the connection or a
    /// first round trip does not work within `timeout`.
    pub fn start(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<EchoLoop, String> {
        let addr = SocketAddr::new(ip.parse::<IpAddr>().map_err(|e| e.to_string())?, port);
        let stream = ns
            .run_in(move || TcpStream::connect_timeout(&addr, timeout))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        EchoLoop::over(stream, timeout)
    }

    /// The loop over a connection made elsewhere (for example by a socket
    /// of another user's); fails if no first round trip works within
    /// `timeout`.
    pub fn over(stream: TcpStream, timeout: Duration) -> Result<EchoLoop, String> {
        let addr = stream.peer_addr().map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (stop2, answers2) = (stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            let mut stream = stream;
            let mut buffer = [0u8; 1024];
            let mut next_send = Instant::now();
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                if Instant::now() >= next_send {
                    n += 1;
                    if stream.write_all(format!("{n:016}\n").as_bytes()).is_err() {
                        return;
                    }
                    next_send += Duration::from_millis(50);
                }
                match stream.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(_) => answers2.lock().unwrap().push(Instant::now()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        let echo = EchoLoop { stop, answers, thread: Some(thread) };
        let started = Instant::now();
        if !poll(timeout, || echo.answers_after(started) > 0) {
            return Err(format!("no echo answer from {addr} within {timeout:?}"));
        }
        Ok(echo)
    }

    /// How many answers (reads with data) arrived after `t`.
    pub fn answers_after(&self, t: Instant) -> usize {
        self.answers.lock().unwrap().iter().filter(|a| **a > t).count()
    }

    pub fn last_answer(&self) -> Option<Instant> {
        self.answers.lock().unwrap().last().copied()
    }
}

impl Drop for EchoLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
