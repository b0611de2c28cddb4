//! The control channel to the cloud: the gateway connects out, proves who it
//! is with its enrolled identity key, receives the desired state on connect
//! and on every change, and sends its audit events from the durable queue
//! until the cloud acknowledges them.
//!
//! Nothing here decides anything: desired states go to the daemon, which
//! applies them only within what the customer allows. A lost connection
//! changes nothing locally; active sessions keep forwarding, and events
//! wait in the queue (and are sent again after a reconnect: the cloud drops
//! sequence numbers it already has). The cloud acknowledges an event only
//! once it is stored, and closes the channel at the first one it cannot
//! store; the reconnect then sends it again.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use ferry_connect::replicas::Rotation;
use ferry_control::{
    Applied, Backoff, GatewayId, SigningKey, WgKey,
    client::{self, Channel, ClientError},
    gateway::{DesiredState, FromGateway, ToGateway},
};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use crate::state::Store;

/// Events sent in one go before waiting for acknowledgements.
const SEND_WINDOW: usize = 256;

/// Where and who: everything the channel needs besides the live state.
#[derive(Clone)]
pub struct CloudLink {
    /// `ws(s)://host:port/api/v1/control/gateway`, one for each replica of
    /// the cloud: the channel uses one and moves to the next when it fails.
    pub urls: Vec<String>,
    pub pin: Option<[u8; 32]>,
    pub gateway_id: u64,
    pub identity: SigningKey,
    pub wg_public_key: WgKey,
}

/// What the channel tells the daemon.
#[derive(Debug)]
pub enum FromCloud {
    Desired(DesiredState),
    Connected(bool),
    /// The cloud's clock (its hello's `server_time_ms`) at the gateway's
    /// monotonic `boot_ms`: sent before each connection's first desired
    /// state, whose end times are on that clock.
    Time {
        cloud_ms: u64,
        boot_ms: u64,
    },
}

/// The live inputs the channel reads when it (re)connects.
pub struct Inputs {
    pub store: Store,
    pub switch_on: watch::Receiver<bool>,
    /// The revision the daemon applied last, for the hello and `applied`.
    pub applied: watch::Receiver<Option<u64>>,
    /// Signalled when the daemon enqueued an event.
    pub events: Arc<Notify>,
}

/// How often the gateway pings the cloud over an otherwise idle control
/// channel: it keeps the site NAT's mapping alive and remakes it after the
/// NAT lost it (a conntrack flush, a router reboot), so that the cloud's
/// messages reach the gateway again.
/// A channel silent for `client::SILENCE_LIMIT` is given up; one whose
/// ping is overdue while the kernel holds the gateway's bytes
/// unacknowledged (`Channel::check_outbound`) is stuck behind segments lost
/// in an outage: its events (an approval, an end) would reach the cloud
/// only at TCP's next backed-off retransmission, so the gateway reconnects
/// to the same cloud address.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Runs the channel forever, reconnecting with exponential backoff and full
/// jitter. With several cloud addresses, a failure moves to the next one at
/// once; the backoff applies when a whole round failed.
pub async fn run(link: CloudLink, mut inputs: Inputs, to_daemon: mpsc::Sender<FromCloud>) {
    let mut backoff = Backoff::default();
    let mut rotation = Rotation::new(link.urls.len());
    // After a stall, the backoff is reset only once a connection proved
    // that it carries what the gateway sends, so stalls in a row back off.
    let mut on_probation = false;
    loop {
        let url = link.urls.get(rotation.current()).cloned().unwrap_or_default();
        let mut connected = false;
        let started = std::time::Instant::now();
        let mut stalled = false;
        match session(&link, &url, &mut inputs, &to_daemon, &mut backoff, &mut connected, &mut on_probation)
            .await
        {
            Ok(()) => info!(cloud = %url, "the cloud closed the control channel"),
            Err(e) => {
                stalled = is_stall(&e);
                warn!(cloud = %url, error = %format!("{e:#}"), "control channel to the cloud failed")
            }
        }
        if to_daemon.send(FromCloud::Connected(false)).await.is_err() {
            return;
        }
        let wait = if stalled {
            on_probation = true;
            rotation.retry_same(&mut backoff, &mut rand_core::OsRng)
        } else {
            rotation.ended(connected.then(|| started.elapsed()), &mut backoff, &mut rand_core::OsRng)
        };
        info!(retry_in_ms = wait.as_millis() as u64, next = %link.urls.get(rotation.current()).map_or("", |u| u.as_str()), "reconnecting to the cloud");
        tokio::time::sleep(wait).await;
    }
}

async fn session(
    link: &CloudLink,
    url: &str,
    inputs: &mut Inputs,
    to_daemon: &mpsc::Sender<FromCloud>,
    backoff: &mut Backoff,
    connected: &mut bool,
    on_probation: &mut bool,
) -> Result<()> {
    let ws = client::connect(url, link.pin).await.with_context(|| format!("connecting to {url}"))?;
    let mut channel = Channel::new(ws);
    let switch_on = *inputs.switch_on.borrow();
    let applied = *inputs.applied.borrow();
    let handshake = client::gateway_handshake_timed(
        &mut channel,
        &link.identity,
        GatewayId(link.gateway_id),
        env!("CARGO_PKG_VERSION"),
        switch_on,
        link.wg_public_key,
        applied,
    )
    .await
    .context("gateway handshake")?;
    let (welcome, desired) = (handshake.welcome, handshake.desired);
    // The monotonic clock when the hello was read: the instant the cloud's
    // time stands for.
    let hello_boot_ms = super::cloud_clock::boot_ms()
        .saturating_sub(u64::try_from(handshake.hello_read.elapsed().as_millis()).unwrap_or(u64::MAX));
    let cloud_time =
        FromCloud::Time { cloud_ms: handshake.server_hello.server_time_ms, boot_ms: hello_boot_ms };
    info!(connection = welcome.peer_id, revision = desired.revision, "connected to the cloud");
    *connected = true;
    // A connection counts as working once the cloud takes events: one the
    // cloud closes at the first event (it could not store it) must not
    // start every retry from the shortest delay again.
    if inputs.store.pending_len() == 0 && !*on_probation {
        backoff.reset();
    }
    if to_daemon.send(FromCloud::Connected(true)).await.is_err()
        || to_daemon.send(cloud_time).await.is_err()
        || to_daemon.send(FromCloud::Desired(desired)).await.is_err()
    {
        return Ok(());
    }
    // The oldest unacknowledged events go first, again after every reconnect.
    let mut sent_up_to = 0u64;
    let mut applied_rx = inputs.applied.clone();
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE_INTERVAL, KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *on_probation && channel.answered_within(client::STALL_GRACE) {
            backoff.reset();
            *on_probation = false;
        }
        sent_up_to = send_pending(&mut channel, &inputs.store, sent_up_to).await?;
        tokio::select! {
            message = channel.recv::<ToGateway>() => match message.context("reading from the cloud")? {
                None => return Ok(()),
                Some(ToGateway::Error(e)) => bail!("the cloud reported an error ({}): {}", e.code, e.message),
                Some(ToGateway::EventAck(ack)) => {
                    let dropped = inputs.store.ack(ack.seq).context("dropping acknowledged events")?;
                    tracing::debug!(seq = ack.seq, dropped, "events acknowledged");
                    // An acknowledgement of events not acknowledged before
                    // proves that what the gateway sends arrives (its ping
                    // may just wait behind a window of events): no stall,
                    // and a connection that works.
                    if dropped == 0 {
                        channel.check_outbound()?;
                    } else {
                        backoff.reset();
                        *on_probation = false;
                    }
                }
                Some(message) => {
                    channel.check_outbound()?;
                    match message {
                        ToGateway::DesiredState(state) => {
                            if to_daemon.send(FromCloud::Desired(state)).await.is_err() {
                                return Ok(());
                            }
                        }
                        other => warn!(kind = ferry_control::Message::type_name(&other), "unexpected message from the cloud"),
                    }
                }
            },
            _ = inputs.events.notified() => {}
            _ = keepalive.tick() => {
                channel.keepalive().await.context("keeping the channel to the cloud alive")?;
            }
            changed = applied_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let revision = *applied_rx.borrow_and_update();
                if let Some(revision) = revision {
                    channel.send(&FromGateway::Applied(Applied { revision })).await?;
                }
            }
        }
    }
}

/// Whether the session ended because the gateway's side of the connection
/// was stuck (see `Channel::check_outbound`).
fn is_stall(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Stalled { .. }))
}

/// Sends queued events newer than `sent_up_to` (within the window) and
/// returns the newest sequence number sent.
async fn send_pending<S>(channel: &mut Channel<S>, store: &Store, sent_up_to: u64) -> Result<u64>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut newest = sent_up_to;
    let pending = store.pending(SEND_WINDOW).context("reading the event queue")?;
    for event in pending.into_iter().filter(|e| e.seq > sent_up_to) {
        newest = event.seq;
        channel.send(&FromGateway::Event(event)).await?;
    }
    Ok(newest)
}

#[cfg(test)]
mod tests;
