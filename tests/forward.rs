//! A TCP forwarder from a loopback port of the test's own namespace into a
//! lab namespace: what lets a browser that runs here (headless Chromium in
//! the root namespace) open a page served inside the lab, as a browser on
//! that network would. Each connection is made from inside the namespace,
//! so the server sees it come from that namespace's address.

use std::{
    fs::File,
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ferry_lab::Netns;
use nix::sched::{CloneFlags, setns};

pub struct Forwarder {
    /// Where to connect: `127.x.y.z:port` in this namespace.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Listens on `listen_ip` (a loopback address, any free port) and
    /// forwards every connection to `target` from inside `ns`.
    pub fn start(listen_ip: &str, ns: &Netns, target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind((listen_ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let netns = ns.path();
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let netns = netns.clone();
                std::thread::spawn(move || {
                    if let Ok(server) = connect_in(&netns, target) {
                        pipe(client, server);
                    }
                });
            }
        });
        Forwarder { addr, stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A connection to `target` made from inside the namespace at `netns`.
fn connect_in(netns: &Path, target: SocketAddr) -> io::Result<TcpStream> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = File::open(&netns)?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        TcpStream::connect_timeout(&target, Duration::from_secs(10))
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the connecting thread panicked")))
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
