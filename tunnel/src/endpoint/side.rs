//! Datagrams on the WireGuard socket that are not WireGuard (path probes,
//! STUN answers): they share the socket so that the NAT mapping a probe or a
//! STUN query opens is the one WireGuard uses, and the endpoint hands them to
//! whoever asked for them.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use parking_lot::Mutex;
use tokio::sync::mpsc;

/// A datagram received on the WireGuard socket whose first four bytes are
/// not a WireGuard type word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideDatagram {
    pub from: SocketAddr,
    pub payload: Vec<u8>,
}

/// The receiver of side datagrams, if any, and what became of them.
#[derive(Default)]
pub(super) struct SideChannel {
    tx: Mutex<Option<mpsc::Sender<SideDatagram>>>,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl SideChannel {
    pub(super) fn set(&self, tx: mpsc::Sender<SideDatagram>) {
        *self.tx.lock() = Some(tx);
    }

    /// Hands the datagrams over without waiting: the receive path must not
    /// stall behind a slow consumer, so what does not fit (or has nobody to
    /// go to) is dropped and counted.
    pub(super) fn hand_over(&self, datagrams: &mut Vec<SideDatagram>) {
        if datagrams.is_empty() {
            return;
        }
        let tx = self.tx.lock();
        for datagram in datagrams.drain(..) {
            let sent = tx.as_ref().is_some_and(|tx| tx.try_send(datagram).is_ok());
            let counter = if sent { &self.delivered } else { &self.dropped };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(byte: u8) -> SideDatagram {
        SideDatagram { from: SocketAddr::from(([192, 0, 2, 1], 3478)), payload: vec![byte; 20] }
    }

    #[test]
    fn unset_full_and_closed_channels_drop_and_count() {
        let side = SideChannel::default();
        side.hand_over(&mut vec![datagram(1)]);
        assert_eq!((side.delivered(), side.dropped()), (0, 1));

        let (tx, mut rx) = mpsc::channel(2);
        side.set(tx);
        let mut batch = vec![datagram(2), datagram(3), datagram(4)];
        side.hand_over(&mut batch);
        assert!(batch.is_empty());
        assert_eq!((side.delivered(), side.dropped()), (2, 2));
        assert_eq!(rx.try_recv().ok(), Some(datagram(2)));
        assert_eq!(rx.try_recv().ok(), Some(datagram(3)));
        assert!(rx.try_recv().is_err());

        drop(rx);
        side.hand_over(&mut vec![datagram(5)]);
        assert_eq!((side.delivered(), side.dropped()), (2, 3));
    }
}
