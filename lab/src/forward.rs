//! A TCP forwarder from a loopback port of the caller's namespace into a lab
//! namespace: what lets a browser on the host (or headless Chromium in a
//! test) open a page served inside the lab, as a browser on that network
//! would. Each upstream connection is made from inside the namespace, so the
//! server sees it come from that namespace's address. It is threads of this
//! process and one listening socket, nothing else: when the process ends,
//! however it ends, nothing of it is left to sweep.

use std::{
    io,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::Netns;

/// A running forwarder; dropping it stops accepting (connections already
/// made run to their end).
pub struct Forwarder {
    /// Where to connect, in the caller's namespace.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Listens on `listen_ip`:`preferred_port`, or on a free port when that
    /// one is taken (or is 0), and forwards every connection to `target` as
    /// made from inside `ns`.
    pub fn start(
        listen_ip: IpAddr,
        preferred_port: u16,
        ns: &Netns,
        target: SocketAddr,
    ) -> io::Result<Forwarder> {
        let listener =
            TcpListener::bind((listen_ip, preferred_port)).or_else(|_| TcpListener::bind((listen_ip, 0)))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let ns = ns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let ns = ns.clone();
                std::thread::spawn(move || {
                    let upstream =
                        ns.run_in(move || TcpStream::connect_timeout(&target, Duration::from_secs(10)));
                    if let Ok(Ok(upstream)) = upstream {
                        pipe(client, upstream);
                    }
                });
            }
        });
        Ok(Forwarder { addr, stop })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies both ways until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let (mut from, mut to) = (client, server);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (server2, client2);
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = up.join();
}
