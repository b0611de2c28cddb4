//! Where the panel listens, and the socket that keeps it off the uplink.
//!
//! The address must be one of the LAN interface's or a loopback address.
//! The listening socket is also bound to that interface (`SO_BINDTODEVICE`):
//! Linux accepts a packet for any of the host's addresses on any interface
//! (the weak host model), so without it a host on the customer's network
//! that routes the machine network via the gateway's uplink could still
//! reach the LAN address. Bound to the device, the kernel answers only
//! connections that arrive on the LAN interface (or on loopback).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error(
        "panel.listen = {0}: the unspecified address would include the uplink; give the LAN address \
         (or a loopback address)"
    )]
    Unspecified(SocketAddr),
    #[error(
        "panel.listen = {addr}: {ip} belongs to the uplink interface {uplink}; the panel must never be \
         reachable from the uplink. Give the LAN address (or a loopback address), or \"off\""
    )]
    OnUplink { addr: SocketAddr, ip: IpAddr, uplink: String },
    #[error(
        "panel.listen = {addr}: {ip} is not an address of the LAN interface {lan} nor a loopback address"
    )]
    NotLan { addr: SocketAddr, ip: IpAddr, lan: String },
}

/// The interface the panel's socket is bound to for `addr`: the LAN
/// interface or `lo`. `addresses` lists every interface's addresses.
pub fn device_for(
    addr: SocketAddr,
    lan: &str,
    uplink: Option<&str>,
    addresses: &[(String, IpAddr)],
) -> Result<String, ListenError> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Err(ListenError::Unspecified(addr));
    }
    let on = |interface: &str| addresses.iter().any(|(name, a)| name == interface && *a == ip);
    if let Some(uplink) = uplink.filter(|u| on(u)) {
        return Err(ListenError::OnUplink { addr, ip, uplink: uplink.to_string() });
    }
    if ip.is_loopback() {
        return Ok("lo".to_string());
    }
    if on(lan) {
        return Ok(lan.to_string());
    }
    Err(ListenError::NotLan { addr, ip, lan: lan.to_string() })
}

/// Every interface's addresses.
pub fn interface_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|ifaddr| {
            let address = ifaddr.address.as_ref()?;
            let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            Some((ifaddr.interface_name, ip))
        })
        .collect())
}

/// A TCP listener on `addr` that only takes connections arriving on
/// `device`. Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr, device: &str) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(device.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> Vec<(String, IpAddr)> {
        [
            ("lo", "127.0.0.1"),
            ("wan0", "10.20.0.2"),
            ("lan0", "192.168.0.2"),
            ("lan0", "fd00::2"),
            ("mgmt", "172.16.0.9"),
        ]
        .iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect()
    }

    fn device(addr: &str) -> Result<String, ListenError> {
        device_for(addr.parse().unwrap(), "lan0", Some("wan0"), &addresses())
    }

    #[test]
    fn only_the_lan_or_loopback() {
        assert_eq!(device("192.168.0.2:8443").unwrap(), "lan0");
        assert_eq!(device("[fd00::2]:8443").unwrap(), "lan0");
        assert_eq!(device("127.0.0.1:8443").unwrap(), "lo");
        assert!(matches!(device("10.20.0.2:8443"), Err(ListenError::OnUplink { .. })));
        assert!(matches!(device("0.0.0.0:8443"), Err(ListenError::Unspecified(_))));
        assert!(matches!(device("[::]:8443"), Err(ListenError::Unspecified(_))));
        assert!(matches!(device("172.16.0.9:8443"), Err(ListenError::NotLan { .. })));
        assert!(matches!(device("192.168.0.99:8443"), Err(ListenError::NotLan { .. })));
        let message = device("10.20.0.2:8443").unwrap_err().to_string();
        assert!(message.contains("uplink interface wan0"), "{message}");
    }

    #[test]
    fn a_lan_address_also_on_the_uplink_is_refused() {
        // A misconfigured host with one address on both sides: the uplink wins.
        let mut both = addresses();
        both.push(("wan0".into(), "192.168.0.2".parse().unwrap()));
        let refused = device_for("192.168.0.2:8443".parse().unwrap(), "lan0", Some("wan0"), &both);
        assert!(matches!(refused, Err(ListenError::OnUplink { .. })), "{refused:?}");
    }

    #[tokio::test]
    async fn a_bound_listener_accepts_on_its_device() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: binding to a device needs root on older kernels");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap(), "lo").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        tokio::net::TcpStream::connect(addr).await.unwrap();
        accepted.await.unwrap().unwrap();
    }
}
