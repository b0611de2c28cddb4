//! A technician running Ferry's own engine and traversal inside the test
//! process, as the `ferry` client's service does: candidates sent with the
//! configuration request, the gateway's candidates and the relay taken from
//! the answer. Used where a test needs a Ferry technician but not the
//! client's CLI, uids and policy routing (those are `tests/client.rs`'s).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ferry_lab::Netns;
use ferry_traversal::{
    PeerPath, PeerPlan, RelayPlan, TransportMode, Traversal, TraversalOptions, TraversalStats,
};
use ferry_tunnel::{
    PrivateKey, PublicKey,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig},
    proto::PeerConfig,
};
use serde_json::Value;

use crate::gateway_lab::{GatewayLab, User, wait_until};

/// The gateway's candidates reach the cloud after its first STUN answer;
/// the technician's server-reflexive one after its own.
const SETTLE: Duration = Duration::from_secs(30);

pub struct EngineTechnician {
    pub traversal: Traversal,
    pub endpoint: Arc<Endpoint>,
    /// The gateway's WireGuard key.
    pub gateway: PublicKey,
    /// The configuration the cloud issued (`ClientConfig` as JSON).
    pub config: Value,
    /// The tunnel's interface in the technician's namespace.
    pub interface: String,
    /// The technician's namespace.
    pub ns: Netns,
    // Last: the endpoint's and the traversal's tasks run on it.
    _rt: tokio::runtime::Runtime,
}

impl EngineTechnician {
    /// Brings up a tunnel to `session` in the lab's technician namespace:
    /// the engine's UDP socket, candidates (host, and server-reflexive from
    /// the cloud's STUN servers: it waits until one shows the technician's
    /// public address), the configuration request with them, the tunnel's
    /// address and routes for the proxy addresses, and the traversal with the
    /// relay and the gateway's candidates.
    pub fn connect(lab: &GatewayLab, user: &mut User, session: u64) -> EngineTechnician {
        let ns = &lab.tech_ns;
        // Every thread of the technician's runtime lives in its namespace.
        let rt = ns
            .run_in(|| {
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
            })
            .unwrap();
        let key = PrivateKey::generate();
        let interface = lab.lab.ifname("ft");
        let config = EndpointConfig {
            name: interface.clone(),
            private_key: key.clone(),
            listen_port: 0,
            addresses: vec![],
            mtu: DEFAULT_MTU,
            peers: vec![],
        };
        let handle = rt.handle().clone();
        let (endpoint, traversal) = ns
            .run_in(move || {
                let endpoint = Arc::new(handle.block_on(Endpoint::start(config)).unwrap());
                let _entered = handle.enter();
                (endpoint.clone(), Traversal::start(endpoint, TraversalOptions::default()))
            })
            .unwrap();
        let (status, stun) = lab.tech_call(user, "GET", "/api/v1/stun", Value::Null);
        assert_eq!(status, 200, "{stun}");
        let servers: Vec<SocketAddr> = stun["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().parse().unwrap())
            .collect();
        assert!(!servers.is_empty(), "the cloud lists no STUN server: {stun}");
        traversal.set_stun_servers(servers);
        let public = lab.tech_public_ip();
        let mut candidates = traversal.local_candidates();
        wait_until(SETTLE, "the technician's candidate with its public address", || {
            candidates.borrow_and_update().iter().any(|c| c.ip().to_string() == public)
        });
        let candidates: Vec<String> = candidates.borrow().iter().map(|c| c.to_string()).collect();

        // The gateway reports its candidates to the cloud on its own; the
        // configuration carries them once the cloud has them.
        let path = format!("/api/v1/sessions/{session}/config");
        let body = serde_json::json!({"public_key": key.public_key().to_base64(), "candidates": candidates});
        let mut config = Value::Null;
        wait_until(SETTLE, "the gateway's candidates in the configuration", || {
            let (status, answer) = lab.tech_call(user, "POST", &path, body.clone());
            assert_eq!(status, 200, "{answer}");
            config = answer;
            config["endpoints"].as_array().is_some_and(|e| !e.is_empty())
        });

        let address = config["address"].as_str().unwrap();
        ns.add_addr(&interface, address).unwrap();
        let gateway = PublicKey::from_base64(config["peer_public_key"].as_str().unwrap()).unwrap();
        let allowed: Vec<String> = config["allowed_ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        for net in &allowed {
            ns.ip(&["route", "add", net, "dev", &interface]).unwrap();
        }
        let mut peer = PeerConfig::new(gateway);
        peer.allowed_ips = allowed.iter().map(|a| a.parse().unwrap()).collect();
        peer.persistent_keepalive = Some(Duration::from_secs(25));
        endpoint.add_peer(peer).unwrap();
        let relay = &config["relay"];
        let plan = PeerPlan {
            relay: Some(RelayPlan { udp: relay["udp"].as_str().unwrap().parse().unwrap(), websocket: None }),
            candidates: config["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().parse().unwrap())
                .collect(),
            mode: TransportMode::Udp,
        };
        traversal.upsert_peer(gateway, plan).unwrap();
        EngineTechnician { traversal, endpoint, gateway, config, interface, ns: ns.clone(), _rt: rt }
    }

    /// A target's proxy address, from the configuration.
    pub fn proxy(&self, target: &str) -> String {
        let targets = self.config["targets"].as_array().unwrap();
        let found =
            targets.iter().find(|t| t["name"] == target).unwrap_or_else(|| panic!("{target}: {targets:?}"));
        found["proxy_address"].as_str().unwrap().to_string()
    }

    /// The gateway's path as the traversal sees it.
    pub fn path(&self) -> Option<PeerPath> {
        self.traversal.status(&self.gateway)
    }

    pub fn stats(&self) -> TraversalStats {
        self.traversal.stats()
    }

    /// The WireGuard socket's port.
    pub fn local_port(&self) -> u16 {
        self.endpoint.local_port()
    }
}
