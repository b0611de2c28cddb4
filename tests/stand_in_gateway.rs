//! A stand-in for the gateway daemon, for testing the lab before the daemon
//! exists: it enrols over the real API, holds a real control channel to the
//! cloud (ferry-control's client), reports its switch, and hands every
//! desired state to the test, which builds the data path from stock parts:
//! wireguard-go toward the relay's allocation, and nftables DNAT from each
//! proxy address to its target with a forward policy of drop. It is not the
//! gateway (no XDP, no durable queue, no local switch socket); it proves that
//! the lab, the cloud, the relay and the technician's side fit together.

use std::{
    fs::File,
    io::Read,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use ferry_control::{
    Applied, GatewayId, SigningKey, WgKey,
    client::{self, Channel},
    gateway::{DesiredState, Event, FromGateway, GatewayEvent, Protocol, SessionState, ToGateway},
};
use serde_json::json;

use crate::{
    gateway_lab::{CLOUD_IP, CLOUD_PORT, GATEWAY_WG_PORT, GatewayLab, unix_ms},
    wg::{Keys, PeerSpec, WireguardGo},
};

enum Command {
    Switch(bool),
}

pub struct StandInGateway {
    pub gateway_id: u64,
    /// Its WireGuard keys; the public one is what the cloud hands out.
    pub keys: Keys,
    states: mpsc::Receiver<DesiredState>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub latest: Option<DesiredState>,
}

impl StandInGateway {
    /// Enrols with `token` from the gateway namespace and connects the
    /// control channel with the switch as given.
    pub fn enrol_and_connect(lab: &GatewayLab, token: &str, switch_on: bool) -> StandInGateway {
        let keys = Keys::generate(&lab.gw_ns);
        let mut secret = [0u8; 32];
        File::open("/dev/urandom").unwrap().read_exact(&mut secret).unwrap();
        let signing = SigningKey::from_bytes(&secret);
        let identity: String =
            signing.verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let (status, enrolled) = lab.api_from(
            &lab.gw_ns,
            "POST",
            "/api/v1/enrol",
            None,
            json!({"token": token, "identity_key": identity}),
        );
        assert_eq!(status, 200, "{enrolled}");
        let gateway_id = enrolled["gateway_id"].as_u64().unwrap();
        let url = format!("ws://{CLOUD_IP}:{CLOUD_PORT}{}", enrolled["control_path"].as_str().unwrap());
        let wg_key: WgKey = keys.public.parse().unwrap();
        let (state_tx, states) = mpsc::channel();
        let (commands, mut command_rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let netns = lab.gw_ns.path();
        let thread = std::thread::spawn(move || {
            // Sockets of this thread live in the gateway namespace.
            let file = File::open(&netns).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let ws = client::connect(&url, None).await.unwrap();
                let mut channel = Channel::new(ws);
                let (_, first) = client::gateway_handshake(
                    &mut channel,
                    &signing,
                    GatewayId(gateway_id),
                    "stand-in",
                    switch_on,
                    wg_key,
                    None,
                )
                .await
                .unwrap();
                let _ = state_tx.send(first);
                // As the real gateway: the cloud closes a channel silent
                // for a minute.
                let mut keepalive = tokio::time::interval(Duration::from_secs(10));
                while !stop2.load(Ordering::Relaxed) {
                    tokio::select! {
                        _ = keepalive.tick() => {
                            let _ = channel.ping().await;
                        }
                        message = channel.recv::<ToGateway>() => match message {
                            Ok(Some(ToGateway::DesiredState(state))) => {
                                let applied = FromGateway::Applied(Applied { revision: state.revision });
                                let _ = channel.send(&applied).await;
                                let _ = state_tx.send(state);
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return,
                        },
                        command = command_rx.recv() => match command {
                            Some(Command::Switch(on)) => {
                                // Milliseconds grow across restarts, as seq must.
                                let event = FromGateway::Event(Event {
                                    seq: unix_ms(),
                                    time_ms: unix_ms(),
                                    event: GatewayEvent::SwitchChanged { on },
                                });
                                channel.send(&event).await.unwrap();
                            }
                            None => return,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            });
        });
        StandInGateway { gateway_id, keys, states, commands, stop, thread: Some(thread), latest: None }
    }

    /// Sends a switch event, as the customer's switch would.
    pub fn switch(&mut self, on: bool) {
        self.commands.send(Command::Switch(on)).unwrap();
    }

    /// Waits for a desired state with a session that has a peer with
    /// `public_key` bound to a relay; returns that session.
    pub fn wait_for_peer(&mut self, public_key: &str, timeout: Duration) -> SessionState {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.latest.as_ref().and_then(|state| {
                state
                    .sessions
                    .iter()
                    .find(|s| {
                        s.peers.iter().any(|p| p.public_key.to_string() == public_key && p.relay.is_some())
                    })
                    .cloned()
            });
            if let Some(session) = found {
                return session;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.states.recv_timeout(left) {
                Ok(state) => self.latest = Some(state),
                Err(_) => {
                    panic!("no desired state with peer {public_key} within {timeout:?}: {:?}", self.latest)
                }
            }
        }
    }

    /// Waits for a desired state in which no session has a peer with
    /// `public_key` (the cloud took it back).
    pub fn wait_without_peer(&mut self, public_key: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let present = self.latest.as_ref().is_none_or(|state| {
                state.sessions.iter().any(|s| s.peers.iter().any(|p| p.public_key.to_string() == public_key))
            });
            if !present {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.states.recv_timeout(left) {
                Ok(state) => self.latest = Some(state),
                Err(_) => panic!(
                    "peer {public_key} still in the desired state after {timeout:?}: {:?}",
                    self.latest
                ),
            }
        }
    }

    /// Builds the data path for one session: wireguard-go with the peer's
    /// relay endpoint, forwarding on, and nftables doing what the daemon's
    /// eBPF whitelist and NAT do (the baseline of `cargo xtask bench
    /// gateway`):
    /// - DNAT from each proxy address to its target, only from the peer's
    ///   tunnel address and only for the target's protocol and ports;
    /// - SNAT (masquerade) of those flows to the gateway's LAN address, so
    ///   machines see the gateway as the source, as with the daemon;
    /// - a forward policy of drop: only those flows and their replies pass
    ///   (the machine network cannot open anything toward the tunnel);
    /// - nothing from the tunnel reaches the gateway itself.
    pub fn data_path(&self, lab: &GatewayLab, session: &SessionState) -> WireguardGo {
        let peer = &session.peers[0];
        let relay = peer.relay.as_ref().unwrap();
        let address = format!("{}/{}", session.gateway_address, session.subnet.prefix());
        let allowed = format!("{}/32", peer.tunnel_address);
        let public = peer.public_key.to_string();
        let spec = PeerSpec {
            public: &public,
            allowed_ips: &allowed,
            endpoint: Some(relay.udp.to_string()),
            psk: None,
        };
        let go = WireguardGo::start(&lab.lab, &lab.gw_ns, &self.keys, GATEWAY_WG_PORT, &address, &spec);
        lab.gw_ns.exec("wg", &["set", &go.ifname, "peer", &public, "persistent-keepalive", "1"]).unwrap();
        lab.gw_ns.sysctl("net.ipv4.ip_forward=1").unwrap();
        let file = lab.lab.dir().join("standin.nft");
        std::fs::write(&file, ruleset(&go.ifname, &lab.gw_lan_if, &peer.tunnel_address.to_string(), session))
            .unwrap();
        lab.gw_ns.exec("nft", &["-f", file.to_str().unwrap()]).unwrap();
        go
    }
}

/// The stand-in's nftables ruleset for one session with one peer (see
/// [`StandInGateway::data_path`]).
pub fn ruleset(tun: &str, lan: &str, peer: &str, session: &SessionState) -> String {
    let mut rules = String::from(
        "table ip standin {\n chain pre { type nat hook prerouting priority dstnat; policy accept;\n",
    );
    for t in &session.targets {
        // What the daemon's whitelist matches: the protocol, and the ports
        // for tcp and udp (empty: every port; `any` with ports: tcp or udp).
        let l4 = match t.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp | Protocol::Any => "meta l4proto { tcp, udp } th",
        };
        let matches: Vec<String> = match (t.protocol, t.ports.is_empty()) {
            (Protocol::Icmp, _) => vec!["ip protocol icmp".into()],
            (Protocol::Any, true) => vec![String::new()],
            (Protocol::Tcp, true) => vec!["meta l4proto tcp".into()],
            (Protocol::Udp, true) => vec!["meta l4proto udp".into()],
            _ => t.ports.iter().map(|p| format!("{l4} dport {}-{}", p.first, p.last)).collect(),
        };
        for m in matches {
            rules += &format!(
                "  iifname \"{tun}\" ip saddr {peer} ip daddr {} {m} dnat to {}\n",
                t.proxy_address, t.address
            );
        }
    }
    rules += &format!(
        " }}\n chain post {{ type nat hook postrouting priority srcnat; policy accept;\n  \
         iifname \"{tun}\" oifname \"{lan}\" ct status dnat masquerade\n }}\n \
         chain filter_forward {{ type filter hook forward priority filter; policy drop;\n  \
         ct state established,related accept\n  iifname \"{tun}\" oifname \"{lan}\" ct status dnat accept\n }}\n \
         chain filter_input {{ type filter hook input priority filter; policy accept;\n  iifname \"{tun}\" drop\n }}\n}}\n"
    );
    rules
}

impl Drop for StandInGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
