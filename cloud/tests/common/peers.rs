//! A test gateway and a test relay that speak the control protocol over a
//! real WebSocket to the in-process cloud.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ed25519_dalek::SigningKey;
use ferry_control::{
    GatewayId, RelayId, Token, WgKey,
    client::{self, Channel, ClientError},
    gateway::{DesiredState, Event, FromGateway, GatewayEvent, ToGateway},
    relay::{AllocationReady, DesiredAllocations, FromRelay, RelayHello, ToRelay},
};
use serde_json::json;

use super::Api;

pub struct TestGateway {
    pub id: u64,
    pub key: SigningKey,
    pub wg: WgKey,
    channel: Channel,
    seq: u64,
    /// The newest desired state received.
    pub state: DesiredState,
}

pub fn new_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

impl TestGateway {
    /// Adds a gateway through the API and enrols it with a fresh key.
    pub fn create_and_enrol(api: &Api, admin: &str, name: &str, seed: u8) -> (u64, SigningKey) {
        let created = api.post(
            "/api/v1/gateways",
            admin,
            json!({"name": name, "site": "plant 1", "targets": [
                {"name": "plc", "address": "192.168.0.10", "protocol": "tcp", "ports": [{"first": 502, "last": 502}]},
                {"name": "hmi", "address": "192.168.0.11", "protocol": "tcp", "ports": [{"first": 80, "last": 80}, {"first": 443, "last": 443}]}
            ]}),
        );
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.body["gateway"]["id"].as_u64().unwrap();
        let token = created.body["enrolment"]["token"].as_str().unwrap();
        let key = new_key(seed);
        let enrolled = api.call(
            "POST",
            "/api/v1/enrol",
            None,
            Some(json!({"token": token, "identity_key": hex::encode(key.verifying_key().to_bytes())})),
        );
        assert_eq!(enrolled.status, 200, "{enrolled:?}");
        (id, key)
    }

    pub async fn connect(
        api_addr: SocketAddr,
        id: u64,
        key: &SigningKey,
        switch_on: bool,
    ) -> Result<TestGateway, ClientError> {
        let ws = client::connect(&format!("ws://{api_addr}/api/v1/control/gateway"), None).await?;
        let mut channel = Channel::new(ws);
        let wg = WgKey([id as u8; 32]);
        let (_, state) =
            client::gateway_handshake(&mut channel, key, GatewayId(id), "test-gw 1.0", switch_on, wg, None)
                .await?;
        Ok(TestGateway { id, key: key.clone(), wg, channel, seq: 0, state })
    }

    async fn recv(&mut self) -> Option<ToGateway> {
        tokio::time::timeout(Duration::from_secs(10), self.channel.recv::<ToGateway>())
            .await
            .expect("the cloud answers within 10 s")
            .expect("a valid frame")
    }

    /// Sends an event and waits for its acknowledgement, keeping any
    /// desired state that arrives meanwhile.
    pub async fn event(&mut self, event: GatewayEvent) {
        self.seq += 1;
        let seq = self.seq;
        self.send_event(seq, event).await;
    }

    pub async fn send_event(&mut self, seq: u64, event: GatewayEvent) {
        self.channel.send(&FromGateway::Event(Event { seq, time_ms: 0, event })).await.unwrap();
        loop {
            match self.recv().await.expect("connection open") {
                ToGateway::DesiredState(state) => self.state = state,
                ToGateway::EventAck(ack) if ack.seq == seq => return,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends an event and goes on at once, as a gateway with a queue does;
    /// false when the connection is gone (the cloud may close it at an
    /// event it cannot store while later ones are still on their way: a
    /// gateway sends them again after reconnecting).
    pub async fn send_only(&mut self, seq: u64, event: GatewayEvent) -> bool {
        self.channel.send(&FromGateway::Event(Event { seq, time_ms: 0, event })).await.is_ok()
    }

    /// Every frame until the connection ends (closed or broken) or one
    /// satisfies `last` (that one included).
    pub async fn frames_until(&mut self, last: impl Fn(&ToGateway) -> bool) -> Vec<ToGateway> {
        let mut frames = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.channel.recv::<ToGateway>())
                .await
                .expect("the cloud answers or closes within 10 s");
            match next {
                Ok(Some(frame)) => {
                    let done = last(&frame);
                    frames.push(frame);
                    if done {
                        return frames;
                    }
                }
                Ok(None) | Err(_) => return frames,
            }
        }
    }

    /// Reads desired states until one satisfies `done`.
    pub async fn until(&mut self, done: impl Fn(&DesiredState) -> bool) -> DesiredState {
        while !done(&self.state) {
            match self.recv().await.expect("connection open") {
                ToGateway::DesiredState(state) => {
                    assert!(state.revision > self.state.revision, "revisions grow");
                    self.state = state;
                }
                ToGateway::EventAck(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        self.state.clone()
    }

    /// The next frame, whatever it is (or None when closed).
    pub async fn next(&mut self) -> Option<ToGateway> {
        self.recv().await
    }

    /// A WebSocket ping, as the real gateway sends every 10 s (the pong is
    /// read, and skipped, by a later read).
    pub async fn ping(&mut self) {
        self.channel.ping().await.unwrap();
    }
}

/// A relay that answers every allocation with endpoints in 203.0.113.0/24
/// and records every snapshot it receives. It pings every
/// [`RELAY_PING_EVERY`], as the real relay does with its health reports;
/// [`TestRelay::start_silent`] makes one that never does.
pub struct TestRelay {
    pub snapshots: Arc<Mutex<Vec<DesiredAllocations>>>,
    pub task: tokio::task::JoinHandle<()>,
}

pub const RELAY_PING_EVERY: Duration = Duration::from_secs(10);

pub const RELAY_UDP: &str = "203.0.113.7:3478";
/// The test relay's public STUN address.
pub const RELAY_STUN: &str = "203.0.113.7:3479";
/// The fingerprint the test relay reports for its WebSocket certificate.
pub const RELAY_PIN: &str =
    "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB";

impl TestRelay {
    pub async fn start(api_addr: SocketAddr, id: u64, token: &str) -> Result<TestRelay, ClientError> {
        TestRelay::start_with(api_addr, id, token, Some(RELAY_PING_EVERY)).await
    }

    /// A relay that sends nothing after its answers: one whose machine
    /// vanished without closing its connection.
    pub async fn start_silent(api_addr: SocketAddr, id: u64, token: &str) -> Result<TestRelay, ClientError> {
        TestRelay::start_with(api_addr, id, token, None).await
    }

    async fn start_with(
        api_addr: SocketAddr,
        id: u64,
        token: &str,
        ping_every: Option<Duration>,
    ) -> Result<TestRelay, ClientError> {
        let ws = client::connect(&format!("ws://{api_addr}/api/v1/control/relay"), None).await?;
        let mut channel = Channel::new(ws);
        let udp = RELAY_UDP.parse().unwrap();
        let hello = RelayHello {
            relay_id: RelayId(id),
            token: Token::new(token),
            software_version: "test-relay 1.0".into(),
            udp,
            websocket_url: "wss://relay.example.net/ws".into(),
            websocket_pin: Some(RELAY_PIN.into()),
            capacity: 1000,
            stun: Some(RELAY_STUN.parse().unwrap()),
        };
        let (_, first) = client::relay_handshake(&mut channel, hello).await?;
        let snapshots = Arc::new(Mutex::new(Vec::new()));
        let recorded = snapshots.clone();
        let task = tokio::spawn(async move {
            let mut snapshot = Some(first);
            let mut ping = tokio::time::interval(ping_every.unwrap_or(Duration::from_secs(3600)));
            ping.tick().await;
            loop {
                if let Some(allocations) = snapshot.take() {
                    for a in &allocations.allocations {
                        let port = 40_000 + 2 * (a.id.0 % 1000) as u16;
                        let ready = AllocationReady {
                            id: a.id,
                            gateway_endpoint: SocketAddr::new(udp.ip(), port),
                            client_endpoint: SocketAddr::new(udp.ip(), port + 1),
                        };
                        if channel.send(&FromRelay::AllocationReady(ready)).await.is_err() {
                            return;
                        }
                    }
                    recorded.lock().unwrap().push(allocations);
                }
                tokio::select! {
                    message = channel.recv::<ToRelay>() => match message {
                        Ok(Some(ToRelay::DesiredAllocations(next))) => snapshot = Some(next),
                        Ok(Some(_)) => {}
                        _ => return,
                    },
                    _ = ping.tick(), if ping_every.is_some() => {
                        if channel.ping().await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(TestRelay { snapshots, task })
    }

    pub fn latest(&self) -> Option<DesiredAllocations> {
        self.snapshots.lock().unwrap().last().cloned()
    }
}
