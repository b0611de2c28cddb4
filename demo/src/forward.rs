//! A TCP forwarder from the host's loopback into a namespace, so that the
//! host's browser reaches the cloud. It is threads of this process and a
//! listening socket in the root namespace, nothing else: when the demo
//! ends, however it ends, nothing of it is left to sweep.

use std::{
    io,
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use ferry_lab::Netns;

/// Listens on 127.0.0.1:`preferred`, or a free port when that is taken, and
/// forwards every connection to `target` as made from inside `ns`. Returns
/// the address it listens on.
pub fn start(preferred: u16, ns: &Netns, target: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, preferred))
        .or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
    let local = listener.local_addr()?;
    let ns = ns.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let ns = ns.clone();
            std::thread::spawn(move || {
                // The outgoing socket is made inside the namespace.
                let upstream = ns.run_in(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)));
                if let Ok(Ok(upstream)) = upstream {
                    pipe(client, upstream);
                }
            });
        }
    });
    Ok(local)
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let up = one_way(a, b2);
    let down = one_way(b, a2);
    let _ = up.join();
    let _ = down.join();
}
