//! One allocation at run time: its sockets, its WebSocket peers and its
//! binding state machine, in one task. The task reads datagrams in batches,
//! asks the state machine where each goes, sends in batches, and mirrors the
//! bindings into the XDP map whenever they change.

use std::{cell::RefCell, collections::HashMap, io, net::SocketAddr, sync::Arc, time::Duration};

use ferry_ebpf::common::relay::{BindingKey, Traffic};
use parking_lot::Mutex;
use tokio::{
    io::Interest,
    net::UdpSocket,
    sync::{Notify, mpsc},
};
use tracing::{debug, warn};

use super::{
    Totals,
    table::{self, BindingTable},
};
use crate::{
    core::{Allocation, Decision, Instant, PeerAddr},
    metrics::{self, Metrics},
    udp::batch::{RecvBatch, SendBatch},
    ws::{ConnId, WsEvent},
};

thread_local! {
    // Datagrams are handled to the end of a batch without an await, so one
    // set of buffers per worker thread serves every allocation.
    static RECV: RefCell<RecvBatch> = RefCell::new(RecvBatch::default());
    static SEND: RefCell<(SendBatch, SendBatch)> = RefCell::new(Default::default());
}

/// Batches taken per wakeup before other tasks get a turn.
const BATCHES_PER_WAKEUP: usize = 8;
/// How often idle bindings and XDP counters are looked at.
const TICK: Duration = Duration::from_secs(1);

pub(super) struct Task {
    pub id: u64,
    pub port: u16,
    pub slot: u32,
    pub alloc: Allocation,
    pub sock4: Option<Arc<UdpSocket>>,
    pub sock6: Option<Arc<UdpSocket>>,
    pub ws_rx: mpsc::Receiver<WsEvent>,
    pub ws_peers: HashMap<ConnId, mpsc::Sender<Vec<u8>>>,
    pub table: Option<Arc<dyn BindingTable>>,
    /// Shared with the registry, which removes the entries itself when the
    /// allocation ends, before this task is even cancelled.
    pub installed: Arc<Mutex<Vec<BindingKey>>>,
    /// The bound UDP addresses, for the state file; `changes` tells its
    /// writer.
    pub published: Arc<Mutex<super::Sides>>,
    pub changes: Arc<Notify>,
    pub metrics: Metrics,
    pub totals: Arc<Totals>,
    pub bound: i64,
    pub xdp_seen: Traffic,
    /// Forwarded by this batch so far: (userspace, websocket).
    pub tally: (Traffic, Traffic),
}

enum Readable {
    V4,
    V6,
}

impl Task {
    pub async fn run(mut self) {
        // Restored bindings forward at once, through XDP too.
        self.sync_bindings();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let readable = tokio::select! {
                r = readable(self.sock4.as_ref()) => r.map(|()| Readable::V4),
                r = readable(self.sock6.as_ref()) => r.map(|()| Readable::V6),
                event = self.ws_rx.recv() => match event {
                    Some(event) => { self.websocket(event); continue; }
                    // The registry dropped its sender: the allocation ended.
                    None => return,
                },
                _ = tick.tick() => { self.tick(); continue; }
            };
            match readable {
                Ok(Readable::V4) => self.drain(false),
                Ok(Readable::V6) => self.drain(true),
                Err(e) => {
                    warn!(allocation = self.id, error = %e, "socket error; the allocation stops");
                    return;
                }
            }
        }
    }

    fn drain(&mut self, v6: bool) {
        // A handle of its own, as handling the batch sends on self's sockets.
        let Some(socket) = (if v6 { self.sock6.clone() } else { self.sock4.clone() }) else { return };
        for _ in 0..BATCHES_PER_WAKEUP {
            let more = RECV.with_borrow_mut(|batch| {
                match socket.try_io(Interest::READABLE, || batch.recv(&socket)) {
                    Ok(n) => {
                        self.handle_batch(batch);
                        n == crate::udp::batch::BATCH
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => {
                        debug!(allocation = self.id, error = %e, "recvmmsg");
                        false
                    }
                }
            });
            if !more {
                break;
            }
        }
        self.sync_bindings();
    }

    fn handle_batch(&mut self, batch: &RecvBatch) {
        let now = Instant::now();
        SEND.with_borrow_mut(|(out4, out6)| {
            for i in 0..batch.len() {
                let Some((from, datagram)) = batch.get(i) else {
                    self.dropped("oversized");
                    continue;
                };
                let decision = self.alloc.handle(PeerAddr::Udp(from), datagram, now);
                self.route(decision, false, datagram, out4, out6);
            }
            self.flush(out4, out6);
        });
    }

    fn websocket(&mut self, event: WsEvent) {
        match event {
            WsEvent::Open { conn, outbound } => {
                debug!(allocation = self.id, conn, "websocket peer connected");
                self.ws_peers.insert(conn, outbound);
            }
            WsEvent::Frame { conn, datagram } => {
                let decision = self.alloc.handle(PeerAddr::Ws(conn), &datagram, Instant::now());
                SEND.with_borrow_mut(|(out4, out6)| {
                    self.route(decision, true, &datagram, out4, out6);
                    self.flush(out4, out6);
                });
            }
            WsEvent::Closed { conn } => {
                debug!(allocation = self.id, conn, "websocket peer left");
                self.ws_peers.remove(&conn);
                self.alloc.forget(PeerAddr::Ws(conn));
            }
        }
        self.sync_bindings();
    }

    fn route(
        &mut self,
        decision: Decision,
        from_ws: bool,
        datagram: &[u8],
        out4: &mut SendBatch,
        out6: &mut SendBatch,
    ) {
        let to = match decision {
            Decision::Forward(to) => to,
            Decision::Drop(reason) => return self.dropped(reason.name()),
        };
        let path = match to {
            PeerAddr::Udp(to) => {
                match (to, &self.sock4, &self.sock6) {
                    (SocketAddr::V4(_), Some(_), _) => out4.push(to, datagram),
                    (SocketAddr::V6(_), _, Some(_)) => out6.push(to, datagram),
                    _ => return self.dropped("no_socket_for_family"),
                }
                if from_ws { metrics::PATH_WEBSOCKET } else { metrics::PATH_USERSPACE }
            }
            PeerAddr::Ws(conn) => {
                let Some(peer) = self.ws_peers.get(&conn) else { return self.dropped("websocket_gone") };
                // A full queue means a slow peer: drop rather than buffer.
                if peer.try_send(datagram.to_vec()).is_err() {
                    return self.dropped("websocket_backpressure");
                }
                metrics::PATH_WEBSOCKET
            }
        };
        let tally = if path == metrics::PATH_WEBSOCKET { &mut self.tally.1 } else { &mut self.tally.0 };
        tally.packets += 1;
        tally.bytes += datagram.len() as u64;
    }

    /// Publishes what the batch forwarded: one metrics update per batch, not
    /// per datagram.
    fn publish(&mut self) {
        let (userspace, websocket) = std::mem::take(&mut self.tally);
        for (path, t) in [(metrics::PATH_USERSPACE, userspace), (metrics::PATH_WEBSOCKET, websocket)] {
            if t.packets > 0 {
                self.metrics.forwarded(path, t.packets, t.bytes);
                self.totals.forwarded(t.packets, t.bytes);
            }
        }
    }

    fn flush(&mut self, out4: &mut SendBatch, out6: &mut SendBatch) {
        self.publish();
        for (out, socket) in [(&mut *out4, &self.sock4), (&mut *out6, &self.sock6)] {
            if out.is_empty() {
                continue;
            }
            if let Some(socket) = socket {
                let (sent, error) = out.send(socket);
                for _ in sent..out.len() {
                    self.metrics.drop("send_failed");
                    self.totals.dropped();
                }
                if let Some(e) = error.filter(|e| e.kind() != io::ErrorKind::WouldBlock) {
                    debug!(allocation = self.id, error = %e, "sendmmsg");
                }
            }
            out.clear();
        }
    }

    fn dropped(&self, reason: &'static str) {
        self.metrics.drop(reason);
        self.totals.dropped();
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(table) = &self.table {
            let traffic = table.traffic(self.slot);
            let packets = traffic.packets.saturating_sub(self.xdp_seen.packets);
            if packets > 0 {
                let bytes = traffic.bytes.saturating_sub(self.xdp_seen.bytes);
                self.metrics.forwarded(metrics::PATH_XDP, packets, bytes);
                self.totals.forwarded(packets, bytes);
                self.alloc.touch(now);
            }
            self.xdp_seen = traffic;
        }
        self.alloc.poll(now);
        self.sync_bindings();
    }

    /// The UDP addresses of both sides, for the state file's writer.
    fn publish_sides(&mut self) {
        let udp = |addr| match addr {
            Some(PeerAddr::Udp(addr)) => Some(addr),
            _ => None,
        };
        let [gateway, client] = crate::core::Side::BOTH;
        *self.published.lock() = super::Sides {
            bound: [udp(self.alloc.bound(gateway)), udp(self.alloc.bound(client))],
            candidate: [udp(self.alloc.candidate(gateway)), udp(self.alloc.candidate(client))],
        };
        self.changes.notify_one();
    }

    /// Brings the XDP map, the bindings gauge and what the state file keeps
    /// in line with the state machine after a change.
    fn sync_bindings(&mut self) {
        let bindings = self.alloc.take_changed();
        // Bindings moving moves candidates too; either is saved.
        if bindings | self.alloc.take_candidates_changed() {
            self.publish_sides();
        }
        if !bindings {
            return;
        }
        let bound = [crate::core::Side::Gateway, crate::core::Side::Client]
            .iter()
            .filter(|s| self.alloc.bound(**s).is_some())
            .count() as i64;
        self.metrics.bindings.inc_by(bound - self.bound);
        self.totals.bindings(bound - self.bound);
        self.bound = bound;
        if let Some(routes) = self.alloc.routes() {
            tracing::info!(allocation = self.id, gateway = %routes[0].0, client = %routes[0].1, "peers bound");
        }
        let Some(table) = &self.table else { return };
        let wanted =
            self.alloc.routes().map(|r| table::entries(&r, self.port, self.slot)).unwrap_or_default();
        let mut installed = self.installed.lock();
        for key in installed.iter().filter(|k| !wanted.iter().any(|(w, _)| w == *k)) {
            table.remove(key);
        }
        installed.clear();
        for (key, binding) in &wanted {
            match table.insert(key, binding) {
                Ok(()) => installed.push(*key),
                Err(e) => {
                    // Admission keeps two entries per allocation free, so this
                    // is the kernel refusing; userspace still forwards.
                    warn!(allocation = self.id, error = %e, "XDP binding not installed");
                    self.metrics.drop("map_insert_failed");
                }
            }
        }
    }
}

async fn readable(socket: Option<&Arc<UdpSocket>>) -> io::Result<()> {
    match socket {
        Some(socket) => socket.readable().await,
        None => std::future::pending().await,
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(table) = &self.table {
            let mut installed = self.installed.lock();
            for key in installed.drain(..) {
                table.remove(&key);
            }
        }
        self.metrics.bindings.dec_by(self.bound);
        self.totals.bindings(-self.bound);
    }
}
