//! One Binding transaction over a UDP socket, with retransmissions.

use std::{io, net::SocketAddr, time::Duration};

use rand_core::RngCore as _;
use tokio::{net::UdpSocket, time::Instant};

use super::{ResponseError, TRANSACTION_LEN, binding_request, parse_binding_response};

/// The first retransmission timeout; it doubles after every retry
/// (RFC 8489 section 6.2.1).
pub const INITIAL_RTO: Duration = Duration::from_millis(500);

/// Larger than any Binding response worth reading; a longer datagram
/// arrives cut and fails the framing check.
const RECV_BUFFER: usize = 2048;

/// Why [`query`] found no address.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("sending to {server}: {source}")]
    Send { server: SocketAddr, source: io::Error },
    #[error("receiving: {0}")]
    Receive(io::Error),
    /// An ICMP port unreachable came back (seen on a connected socket).
    #[error("{server} refused (nothing answers STUN there)")]
    Unreachable { server: SocketAddr },
    #[error("no answer from {server} within {after:?}")]
    Timeout { server: SocketAddr, after: Duration },
    /// The server answered, but not with an address.
    #[error("{server}: {error}")]
    Answer { server: SocketAddr, error: ResponseError },
}

/// Asks `server` for our server-reflexive address as seen from `socket`:
/// sends a Binding request with a fresh random transaction id, resends it
/// after [`INITIAL_RTO`], doubling, and waits for the matching success
/// response until `timeout` has passed.
///
/// It reads from `socket` meanwhile and ignores everything that is not the
/// answer (other senders, other transactions, junk), so the socket must be
/// one nothing else needs to read: an endpoint whose WireGuard socket is
/// shared uses [`binding_request`] and [`parse_binding_response`] instead.
pub async fn query(
    socket: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, QueryError> {
    let mut transaction = [0u8; TRANSACTION_LEN];
    rand_core::OsRng.fill_bytes(&mut transaction);
    let request = binding_request(&transaction);
    let deadline = Instant::now() + timeout;
    let mut rto = INITIAL_RTO;
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        if let Err(source) = socket.send_to(&request, server).await {
            return Err(if refused(&source) {
                QueryError::Unreachable { server }
            } else {
                QueryError::Send { server, source }
            });
        }
        let resend_at = (Instant::now() + rto).min(deadline);
        loop {
            let received = match tokio::time::timeout_at(resend_at, socket.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(received) => received,
            };
            let (len, from) = match received {
                Ok(received) => received,
                Err(e) if refused(&e) => return Err(QueryError::Unreachable { server }),
                // An ICMP error about some earlier datagram to someone else.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::WouldBlock) => {
                    continue;
                }
                Err(e) => return Err(QueryError::Receive(e)),
            };
            if !same_address(from, server) {
                continue;
            }
            match parse_binding_response(&buf[..len], &transaction) {
                Ok(mapped) => return Ok(mapped),
                Err(
                    ResponseError::Malformed(_)
                    | ResponseError::OtherTransaction
                    | ResponseError::NotBindingResponse,
                ) => {}
                Err(error @ (ResponseError::ErrorResponse { .. } | ResponseError::NoMappedAddress)) => {
                    return Err(QueryError::Answer { server, error });
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(QueryError::Timeout { server, after: timeout });
        }
        rto = rto.saturating_mul(2);
    }
}

fn refused(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionRefused
}

/// A dual-stack socket shows IPv4 senders as `::ffff:a.b.c.d`.
fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}
