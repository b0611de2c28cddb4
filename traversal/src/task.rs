//! The task that drives a [`Core`]: the side channel, the timers, the
//! endpoint's peer status, the host addresses, and the datagrams that go out
//! of the WireGuard socket.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ferry_tunnel::endpoint::{Endpoint, SideDatagram};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tracing::{trace, warn};

use crate::{core::Core, host};

/// How often the endpoint's peer status is read: new authenticated receives
/// (for [`ferry_paths::Paths::note_rx`]) and handshakes (for `Auto`). Well
/// inside [`ferry_paths::DIRECT_DEAD_AFTER`], which heartbeats keep anyway.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the interfaces' addresses are read (a DHCP renewal, a new
/// network); a change counts as a network change.
pub const HOST_INTERVAL: Duration = Duration::from_secs(10);
/// Side datagrams handled under one lock.
const SIDE_BATCH: usize = 64;

pub(crate) struct Driver {
    pub(crate) core: Arc<Mutex<Core>>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) side: mpsc::Receiver<SideDatagram>,
    pub(crate) netlink: Option<rtnetlink::Handle>,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        let mut out = Vec::new();
        let mut status_at = Instant::now();
        let mut host_at = Instant::now();
        let mut side_open = true;
        loop {
            let regather = self.core.lock().take_regather();
            if let Some(netlink) = &self.netlink
                && (regather || Instant::now() >= host_at)
            {
                host_at = Instant::now() + HOST_INTERVAL;
                match host::addresses(netlink).await {
                    Ok(addresses) => self.core.lock().set_host(&addresses, Instant::now()),
                    Err(e) => warn!(error = %e, "reading the interfaces' addresses failed"),
                }
            }
            if Instant::now() >= status_at {
                status_at = Instant::now() + STATUS_INTERVAL;
                let statuses = self.endpoint.status();
                self.core.lock().on_status(statuses, Instant::now());
            }
            let deadline = {
                let mut core = self.core.lock();
                core.handle_timeout(Instant::now());
                core.drain_transmits(&mut out);
                core.poll_timeout()
            };
            let mut failures = 0;
            for (to, payload) in out.drain(..) {
                // A failed send is a lost datagram; probes and STUN retry.
                if let Err(e) = self.endpoint.send_raw(to, &payload).await {
                    trace!(%to, error = %e, "sending from the WireGuard socket failed");
                    failures += 1;
                }
            }
            if failures > 0 {
                self.core.lock().note_send_failures(failures);
            }
            let mut wake_at = status_at;
            if self.netlink.is_some() {
                wake_at = wake_at.min(host_at);
            }
            if let Some(deadline) = deadline {
                wake_at = wake_at.min(deadline);
            }
            tokio::select! {
                received = self.side.recv(), if side_open => match received {
                    Some(datagram) => {
                        let mut core = self.core.lock();
                        let now = Instant::now();
                        core.on_side(datagram, now);
                        for _ in 1..SIDE_BATCH {
                            match self.side.try_recv() {
                                Ok(datagram) => core.on_side(datagram, now),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        warn!("the endpoint's side channel was taken over; no more probes or STUN answers");
                        side_open = false;
                    }
                },
                () = tokio::time::sleep_until(wake_at.into()) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}
