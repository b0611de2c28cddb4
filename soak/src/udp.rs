//! UDP through sessions: an echo service on target-b's whitelisted UDP port
//! and a counter on one no session whitelists, in the machine network, and
//! the technician's side of a transfer. Datagrams to the counter must never
//! arrive.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_lab::Netns;

/// The whitelisted UDP port of target-b (the `udp-echo` target).
pub const UDP_ECHO_PORT: u16 = 7000;
/// A UDP port of target-b that no session whitelists.
pub const UDP_OTHER_PORT: u16 = 7001;

/// The two services; they stop when dropped.
pub struct Services {
    stop: Arc<AtomicBool>,
    /// Datagrams that reached [`UDP_OTHER_PORT`].
    forbidden: Arc<AtomicU64>,
}

impl Services {
    pub fn start(target_b: &Netns, target_b_ip: &'static str) -> Result<Services, String> {
        let bind = |port| {
            target_b
                .run_in(move || UdpSocket::bind((target_b_ip, port)))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("binding udp {target_b_ip}:{port}: {e}"))
        };
        let (echo, other) = (bind(UDP_ECHO_PORT)?, bind(UDP_OTHER_PORT)?);
        let stop = Arc::new(AtomicBool::new(false));
        let forbidden = Arc::new(AtomicU64::new(0));
        for (socket, count) in [(echo, None), (other, Some(forbidden.clone()))] {
            let stop = stop.clone();
            socket.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    match &count {
                        Some(count) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            let _ = socket.send_to(&buf[..n], from);
                        }
                    }
                }
            });
        }
        Ok(Services { stop, forbidden })
    }

    pub fn forbidden_arrivals(&self) -> u64 {
        self.forbidden.load(Ordering::Relaxed)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `datagrams` to `ip:port` from `ns`, one at a time, and counts the
/// ones echoed back intact within `wait` each (one retry, as UDP may lose
/// one).
pub fn exchange(
    ns: &Netns,
    ip: &str,
    port: u16,
    datagrams: &[Vec<u8>],
    wait: Duration,
) -> Result<usize, String> {
    let to: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{ip}:{port}: {e}"))?;
    let socket =
        ns.run_in(|| UdpSocket::bind("0.0.0.0:0")).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
    let mut echoed = 0;
    let mut buf = vec![0u8; 65536];
    for datagram in datagrams {
        'tries: for _ in 0..2 {
            socket.send_to(datagram, to).map_err(|e| format!("sending to {to}: {e}"))?;
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf)
                    && from == to
                    && buf[..n] == datagram[..]
                {
                    echoed += 1;
                    break 'tries;
                }
            }
        }
    }
    Ok(echoed)
}

/// Sends `count` datagrams to `ip:port` from `ns` and reports whether any
/// answer came back within `wait`.
pub fn attempt(ns: &Netns, ip: &str, port: u16, count: usize, wait: Duration) -> Result<bool, String> {
    let to: SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{ip}:{port}: {e}"))?;
    let socket =
        ns.run_in(|| UdpSocket::bind("0.0.0.0:0")).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    for i in 0..count {
        socket
            .send_to(format!("soak probe {i}").as_bytes(), to)
            .map_err(|e| format!("sending to {to}: {e}"))?;
    }
    let mut buf = [0u8; 2048];
    Ok(socket.recv_from(&mut buf).is_ok())
}
