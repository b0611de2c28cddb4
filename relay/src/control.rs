//! The control channel to the cloud: the relay connects out with its relay
//! token, receives the full set of allocations on connect and on every
//! change, answers each new one (ready with its port, or refused with a
//! reason), and reports its health every [`HEALTH_EVERY`], with a ping.
//! A channel silent for [`client::SILENCE_LIMIT`], or whose pings go
//! unanswered while the cloud's messages arrive and the kernel holds the
//! relay's bytes unacknowledged (its own segments stuck in TCP's backoff
//! after an outage), is replaced by a new connection: to the same cloud
//! address after a stall, rather than answer allocations that would arrive
//! only after the cloud gave up waiting for them.
//!
//! Allocations outlive a lost connection: the relay keeps forwarding until
//! the next snapshot says otherwise or they expire, so a cloud outage does
//! not cut running sessions. With a state file they outlive a restart of
//! the relay too (see `state_file`): the first snapshot then finds them
//! running on their ports and only ends the ones that ended meanwhile.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use ferry_connect::replicas::Rotation;
use ferry_control::{
    Backoff,
    client::{self, Channel, ClientError},
    ids::{RelayId, Token},
    relay::{
        AllocationReady, AllocationRefused, Applied, DesiredAllocations, FromRelay, Health, RelayHello,
        ToRelay,
    },
};
use ferry_tunnel::PublicKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    runtime::{Admission, AllocationSpec, Relay},
};

pub const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// Where and how the relay reaches the cloud, and what it tells it.
#[derive(Clone, Debug)]
pub struct CloudLink {
    /// One address per replica of the cloud: one is used, the next when it
    /// fails.
    pub urls: Vec<String>,
    pub pin: Option<[u8; 32]>,
    pub relay_id: u64,
    pub token: Token,
    /// The UDP address peers send to (ports vary per allocation).
    pub public_udp: SocketAddr,
    pub websocket_url: String,
    /// The fingerprint of the WebSocket listener's certificate, when the
    /// relay serves TLS itself.
    pub websocket_pin: Option<String>,
    /// Where peers reach the relay's STUN server; None without one.
    pub stun: Option<SocketAddr>,
}

/// Runs the channel forever, reconnecting with backoff and jitter. With
/// several cloud addresses, a failure moves to the next one at once; the
/// backoff applies when a whole round failed.
pub async fn run(link: CloudLink, relay: Relay, metrics: Metrics) {
    let mut backoff = Backoff::default();
    let mut rotation = Rotation::new(link.urls.len());
    // After a stall, the backoff is reset only once a connection proved
    // that it carries what the relay sends, so stalls in a row back off.
    let mut on_probation = false;
    loop {
        let url = link.urls.get(rotation.current()).cloned().unwrap_or_default();
        let mut connected = false;
        let started = std::time::Instant::now();
        let mut stalled = false;
        match session(&link, &url, &relay, &metrics, &mut backoff, &mut connected, &mut on_probation).await {
            Ok(()) => info!(cloud = %url, "the cloud closed the control channel"),
            Err(e) => {
                stalled = matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Stalled { .. }));
                warn!(cloud = %url, error = %format!("{e:#}"), "control channel to the cloud failed")
            }
        }
        metrics.control_connected.set(0);
        let wait = if stalled {
            on_probation = true;
            rotation.retry_same(&mut backoff, &mut rand_core::OsRng)
        } else {
            rotation.ended(connected.then(|| started.elapsed()), &mut backoff, &mut rand_core::OsRng)
        };
        info!(retry_in_ms = wait.as_millis() as u64, "reconnecting to the cloud");
        tokio::time::sleep(wait).await;
    }
}

async fn session(
    link: &CloudLink,
    url: &str,
    relay: &Relay,
    metrics: &Metrics,
    backoff: &mut Backoff,
    connected: &mut bool,
    on_probation: &mut bool,
) -> Result<()> {
    let ws = client::connect(url, link.pin).await.with_context(|| format!("connecting to {url}"))?;
    let mut channel = Channel::new(ws);
    let capacity = relay.options().max_allocations;
    let hello = RelayHello {
        relay_id: RelayId(link.relay_id),
        token: link.token.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_owned(),
        udp: link.public_udp,
        websocket_url: link.websocket_url.clone(),
        websocket_pin: link.websocket_pin.clone(),
        capacity,
        stun: link.stun,
    };
    let client::RelayHandshake { server_hello, hello_read, welcome, desired } =
        client::relay_handshake_timed(&mut channel, hello).await.context("relay handshake")?;
    // Before the first snapshot is applied: its end times are the cloud's.
    relay.pin_cloud_time(server_hello.server_time_ms, hello_read);
    info!(peer_id = %welcome.peer_id, allocations = desired.allocations.len(), "connected to the cloud");
    metrics.control_connected.set(1);
    if !*on_probation {
        backoff.reset();
    }
    *connected = true;
    // The first snapshot of a connection answers for every allocation, the
    // ones running already included: the answer to one started on a
    // connection that was then lost may never have reached the cloud.
    apply(&mut channel, link, relay, desired, true).await?;
    let mut health = tokio::time::interval(HEALTH_EVERY);
    loop {
        if *on_probation && channel.answered_within(client::STALL_GRACE) {
            backoff.reset();
            *on_probation = false;
        }
        tokio::select! {
            message = channel.recv::<ToRelay>() => match message {
                Ok(Some(ToRelay::Error(error))) => anyhow::bail!("the cloud says {}: {}", error.code, error.message),
                Ok(Some(message)) => {
                    channel.check_outbound()?;
                    match message {
                        ToRelay::DesiredAllocations(desired) => apply(&mut channel, link, relay, desired, false).await?,
                        other => warn!(?other, "unexpected message from the cloud; ignored"),
                    }
                }
                Ok(None) => return Ok(()),
                Err(ClientError::Decode(e)) => warn!(error = %e, "malformed message from the cloud; dropped"),
                Err(e) => return Err(e.into()),
            },
            _ = health.tick() => {
                channel.keepalive().await.context("keeping the channel to the cloud alive")?;
                let s = relay.snapshot();
                let report = Health {
                    bindings: s.bindings,
                    capacity,
                    forwarded_packets: s.forwarded_packets,
                    forwarded_bytes: s.forwarded_bytes,
                    drops: s.drops,
                };
                tokio::time::timeout(client::PING_SEND_TIMEOUT, channel.send(&FromRelay::Health(report)))
                    .await
                    .context("the health report to the cloud did not leave")??;
            }
        }
    }
}

async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    channel: &mut Channel<S>,
    link: &CloudLink,
    relay: &Relay,
    desired: DesiredAllocations,
    answer_all: bool,
) -> Result<()> {
    let specs: Vec<AllocationSpec> = desired
        .allocations
        .iter()
        .map(|a| AllocationSpec {
            id: a.id.0,
            session_id: a.session_id.0,
            gateway_key: PublicKey(a.gateway_key.0),
            client_key: PublicKey(a.client_key.0),
            expires_ms: a.expires_ms,
            websocket_token: a.websocket_token.expose().to_owned(),
            port: None,
        })
        .collect();
    let mut answers = relay.apply(&specs);
    if answer_all {
        let running = specs
            .iter()
            .filter(|spec| answers.iter().all(|(id, _)| *id != spec.id))
            .filter_map(|spec| Some((spec.id, Admission::Ready { port: relay.port_of(spec.id)? })))
            .collect::<Vec<_>>();
        answers.extend(running);
    }
    for (id, admission) in answers {
        let message = match admission {
            Admission::Ready { port } => {
                let endpoint = SocketAddr::new(link.public_udp.ip(), port);
                FromRelay::AllocationReady(AllocationReady {
                    id: id.into(),
                    gateway_endpoint: endpoint,
                    client_endpoint: endpoint,
                })
            }
            Admission::Refused { reason } => {
                FromRelay::AllocationRefused(AllocationRefused { id: id.into(), reason })
            }
        };
        channel.send(&message).await?;
    }
    channel.send(&FromRelay::Applied(Applied { revision: desired.revision })).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ferry_control::{
        ids::{AllocationId, SessionId, WgKey},
        relay::Allocation,
    };
    use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

    use super::*;
    use crate::{config::PortRange, core::Timeouts, runtime::Options};

    fn link() -> CloudLink {
        CloudLink {
            urls: Vec::new(),
            pin: None,
            relay_id: 1,
            token: Token::new("relay-token"),
            public_udp: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            websocket_url: String::new(),
            websocket_pin: None,
            stun: None,
        }
    }

    fn allocation(id: u64) -> Allocation {
        Allocation {
            id: AllocationId(id),
            session_id: SessionId(id),
            gateway_key: WgKey([1; 32]),
            client_key: WgKey([2; 32]),
            expires_ms: u64::MAX / 2,
            websocket_token: Token::new(format!("token-{id}-0123456789")),
        }
    }

    /// A control channel to an in-memory cloud: the relay's end, and the
    /// cloud's, which reads what the relay sends.
    async fn connection() -> (Channel<tokio::io::DuplexStream>, Channel<tokio::io::DuplexStream>) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let relay_end = Channel::new(WebSocketStream::from_raw_socket(near, Role::Client, None).await);
        let cloud_end = Channel::new(WebSocketStream::from_raw_socket(far, Role::Server, None).await);
        (relay_end, cloud_end)
    }

    /// What the relay sent in answer to one snapshot, up to its `applied`.
    async fn answers(cloud: &mut Channel<tokio::io::DuplexStream>) -> Vec<FromRelay> {
        let mut got = Vec::new();
        loop {
            let message = cloud.recv::<FromRelay>().await.unwrap().unwrap();
            let last = matches!(message, FromRelay::Applied(_));
            got.push(message);
            if last {
                return got;
            }
        }
    }

    fn ready(answers: &[FromRelay]) -> Vec<(u64, u16)> {
        answers
            .iter()
            .filter_map(|m| match m {
                FromRelay::AllocationReady(r) => Some((r.id.0, r.gateway_endpoint.port())),
                _ => None,
            })
            .collect()
    }

    /// The answer to an allocation started on a connection that was then
    /// lost may never have reached the cloud: the first snapshot of the next
    /// connection answers for it again, although it is running already;
    /// later snapshots answer only for new ones.
    #[tokio::test]
    async fn the_first_snapshot_of_a_new_connection_answers_for_running_allocations() {
        let options = Options {
            ipv4: Some(Ipv4Addr::LOCALHOST),
            ipv6: None,
            ports: PortRange { first: 47300, last: 47309 },
            max_allocations: 10,
            timeouts: Timeouts::default(),
            websocket_queue: 4,
        };
        let relay = Relay::new(options, None, Metrics::new());
        let link = link();
        let snapshot = |revision, allocations| DesiredAllocations { revision, allocations };

        let (mut relay_end, mut cloud) = connection().await;
        apply(&mut relay_end, &link, &relay, snapshot(1, vec![allocation(7)]), true).await.unwrap();
        let first = ready(&answers(&mut cloud).await);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, 7);
        drop((relay_end, cloud));

        let (mut relay_end, mut cloud) = connection().await;
        apply(&mut relay_end, &link, &relay, snapshot(2, vec![allocation(7)]), true).await.unwrap();
        assert_eq!(ready(&answers(&mut cloud).await), first, "answered again, on the same port");

        apply(&mut relay_end, &link, &relay, snapshot(3, vec![allocation(7)]), false).await.unwrap();
        assert_eq!(ready(&answers(&mut cloud).await), [], "a later snapshot answers only new ones");
        relay.clear();
    }
}
