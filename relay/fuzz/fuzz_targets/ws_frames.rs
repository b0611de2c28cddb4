//! The WebSocket listener's per-connection handling fed, after a valid
//! upgrade request, arbitrary bytes as the client's frame stream, over an
//! in-memory duplex stream with a fake directory whose allocation echoes
//! every datagram back. Time is paused (tokio test-util), so every timeout
//! elapses at once when nothing else can run: each input ends within a
//! bounded virtual time, and a connection that outlives it is a hang.
#![no_main]

use std::{sync::Arc, sync::OnceLock, time::Duration};

use ferry_relay::{
    metrics::Metrics,
    ws::{Connections, Directory, WsEvent, WsLimits},
};
use libfuzzer_sys::fuzz_target;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
};

const UPGRADE: &[u8] = b"GET /relay HTTP/1.1\r\n\
Host: relay.example\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Authorization: Bearer fuzz-token\r\n\r\n";

struct OneAllocation(mpsc::Sender<WsEvent>);

impl Directory for OneAllocation {
    fn lookup(&self, token: &str) -> Option<mpsc::Sender<WsEvent>> {
        (token == "fuzz-token").then(|| self.0.clone())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (events, mut allocation) = mpsc::channel(8);
        let limits = WsLimits { outbound_frames: 4, ..WsLimits::default() };
        let connections = Connections::new(Arc::new(OneAllocation(events)), limits, Metrics::new());

        // The allocation: echo every frame back, as a relay peer would.
        let echo = tokio::spawn(async move {
            let mut outbound = None;
            while let Some(event) = allocation.recv().await {
                match event {
                    WsEvent::Open { outbound: tx, .. } => outbound = Some(tx),
                    WsEvent::Frame { datagram, .. } => {
                        if let Some(tx) = &outbound {
                            let _ = tx.try_send(datagram);
                        }
                    }
                    WsEvent::Closed { .. } => outbound = None,
                }
            }
        });

        let (client, server) = tokio::io::duplex(16 * 1024);
        let input = data.to_vec();
        // The client sends the input once the upgrade is answered (the
        // server refuses bytes pipelined behind the request), reads
        // everything the server says, and hangs up at the end.
        let client = tokio::spawn(async move {
            let (mut from_server, mut to_server) = tokio::io::split(client);
            if to_server.write_all(UPGRADE).await.is_err() {
                return;
            }
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match from_server.read(&mut buf).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            assert!(head.starts_with(b"HTTP/1.1 101"), "the upgrade was refused");
            let send = async {
                let _ = to_server.write_all(&input).await;
                let _ = to_server.shutdown().await;
            };
            let drain = async { while matches!(from_server.read(&mut buf).await, Ok(n) if n > 0) {} };
            tokio::join!(send, drain);
        });

        // Handshake 10 s, idle 60 s, close 2 s: far inside this.
        let handled = tokio::time::timeout(Duration::from_secs(600), connections.handle(server)).await;
        assert!(handled.is_ok(), "the connection outlived every timeout");
        drop(connections);
        client.await.expect("the client side panicked");
        let _ = echo.await;
    });
});
