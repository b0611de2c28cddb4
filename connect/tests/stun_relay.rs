//! The STUN client against the relay's STUN server: its sans-IO `answer`
//! for any address, and its UDP task on loopback for the query helper.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use ferry_connect::stun::{self, QueryError, ResponseError, binding_request, parse_binding_response, query};
use ferry_relay::{
    metrics::{Metrics, OutcomeLabels},
    stun::{answer, serve},
};
use proptest::prelude::*;
use tokio::{net::UdpSocket, task::JoinHandle};

const WAIT: Duration = Duration::from_secs(5);

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

proptest! {
    /// Whatever address the relay sees, the client reads back exactly it
    /// (IPv4-mapped IPv6 as the IPv4 address it is), and only for its own
    /// transaction.
    #[test]
    fn the_relays_answer_round_trips(transaction in any::<[u8; 12]>(), from in address(), other in any::<[u8; 12]>()) {
        let response = answer(&binding_request(&transaction), from).unwrap().unwrap();
        let canonical = SocketAddr::new(from.ip().to_canonical(), from.port());
        prop_assert_eq!(parse_binding_response(&response, &transaction), Ok(canonical));
        if other != transaction {
            prop_assert_eq!(parse_binding_response(&response, &other), Err(ResponseError::OtherTransaction));
        }
    }
}

/// The relay's STUN task on a loopback port.
struct Relay {
    addr: SocketAddr,
    metrics: Metrics,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start() -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let metrics = Metrics::new();
        let task = tokio::spawn(serve(socket, metrics.clone()));
        Relay { addr, metrics, task }
    }

    fn answered(&self) -> u64 {
        self.metrics.stun_requests.get_or_create(&OutcomeLabels { outcome: "answered" }).get()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn query_learns_our_address_from_the_relays_server() {
    let relay = Relay::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mapped = query(&socket, relay.addr, WAIT).await.unwrap();
    assert_eq!(mapped, socket.local_addr().unwrap());
    assert_eq!(relay.answered(), 1);

    // A connected socket works the same.
    let connected = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    connected.connect(relay.addr).await.unwrap();
    assert_eq!(query(&connected, relay.addr, WAIT).await.unwrap(), connected.local_addr().unwrap());
}

/// A stand-in server that first sends what is not the answer (from another
/// address, for another transaction, junk), then the relay's real answer:
/// the query skips the rest and takes that.
#[tokio::test]
async fn query_ignores_what_is_not_its_answer() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        let real = answer(&buf[..n], from).unwrap().unwrap();
        // The right answer from the wrong address.
        stranger.send_to(&real, from).await.unwrap();
        // Another transaction's answer from the server.
        let mut other = buf[..n].to_vec();
        other[8] ^= 0xff;
        server
            .send_to(&answer(&other, "192.0.2.9:9".parse().unwrap()).unwrap().unwrap(), from)
            .await
            .unwrap();
        // Junk, and a request, from the server.
        server.send_to(b"not stun at all", from).await.unwrap();
        server.send_to(&buf[..n], from).await.unwrap();
        server.send_to(&real, from).await.unwrap();
    });
    assert_eq!(query(&client, server_addr, WAIT).await.unwrap(), client_addr);
    fake.await.unwrap();
}

#[tokio::test]
async fn an_error_response_is_a_typed_failure() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        // The relay answers a request with an attribute it does not know
        // (PRIORITY, comprehension-required) with a 420.
        let mut request = buf[..n].to_vec();
        request[3] = 8;
        request.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        let error = answer(&request, from).unwrap().unwrap();
        server.send_to(&error, from).await.unwrap();
    });
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    match query(&client, server_addr, WAIT).await {
        Err(QueryError::Answer { error: ResponseError::ErrorResponse { code: 420, .. }, server }) => {
            assert_eq!(server, server_addr)
        }
        other => panic!("expected the 420 error response, got {other:?}"),
    }
    fake.await.unwrap();
}

#[tokio::test]
async fn silence_times_out_after_retransmitting() {
    // Bound, never answers.
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let timeout = stun::INITIAL_RTO * 2;
    match query(&client, server_addr, timeout).await {
        Err(QueryError::Timeout { server, after }) => assert_eq!((server, after), (server_addr, timeout)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The request went out again after the first timeout: two copies.
    let mut buf = [0u8; 64];
    let first = server.recv(&mut buf).await.unwrap();
    let mut second = [0u8; 64];
    let again = server.recv(&mut second).await.unwrap();
    assert_eq!((first, again), (stun::HEADER_LEN, stun::HEADER_LEN));
    assert_eq!(buf[..first], second[..again], "a retransmission keeps its transaction id");
}

#[tokio::test]
async fn a_closed_port_fails_at_once_on_a_connected_socket() {
    let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(closed).await.unwrap();
    match query(&client, closed, WAIT).await {
        Err(QueryError::Unreachable { server }) => assert_eq!(server, closed),
        other => panic!("expected unreachable, got {other:?}"),
    }
}
