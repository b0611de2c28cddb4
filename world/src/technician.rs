//! The technician's side with stock parts: the cloud's wg-quick file brought
//! up with Debian's wireguard-go, through the relay's UDP allocation or, for
//! a network that lets only TCP 443 out, through its WebSocket relay with
//! `ferry-relay ws-bridge`.

use std::{collections::BTreeMap, time::Duration};

use ferry_api::ClientConfig;
use ferry_lab::Process;
use serde_json::{Value, json};

use crate::{
    User, World,
    addresses::GATEWAY_WG_PORT,
    bin_path, strip_len,
    wg::{Keys, PeerSpec, WgQuick, WireguardGo},
};

/// Where the bridge listens for wireguard-go in the technician's namespace.
const BRIDGE_LISTEN: &str = "127.0.0.1:51821";

/// The technician's tunnel, brought up from the cloud's wg-quick file.
pub struct TechTunnel {
    pub go: WireguardGo,
    pub keys: Keys,
    pub wg_quick: String,
    /// The technician's tunnel address (no prefix length).
    pub address: String,
    /// Target name -> proxy address, from the file's `# target` lines.
    pub proxies: BTreeMap<String, String>,
    /// `ferry-relay ws-bridge`, when the tunnel goes over the WebSocket relay.
    pub bridge: Option<Process>,
}

impl TechTunnel {
    pub fn proxy(&self, target: &str) -> &str {
        self.proxies
            .get(target)
            .unwrap_or_else(|| panic!("no proxy address for {target} in\n{}", self.wg_quick))
    }
}

impl World {
    /// The technician asks for a configuration for a fresh key pair, gets the
    /// wg-quick file, and brings the tunnel up with wireguard-go.
    pub fn technician_tunnel(&self, user: &mut User, session_id: u64) -> TechTunnel {
        let keys = Keys::generate(&self.tech_ns);
        let (status, body) = self.request_wg_quick(user, session_id, &keys.public);
        assert_eq!(status, 200, "wg-quick for session {session_id}: {body}");
        let wg_quick = body.as_str().unwrap().to_string();
        self.tunnel_from_wg_quick(keys, wg_quick)
    }

    /// The same over the relay's WebSocket listener: the configuration as
    /// JSON (for the relay's URL, token and pin), its wg-quick form with the
    /// Endpoint on `ferry-relay ws-bridge` in the technician's namespace.
    pub fn technician_tunnel_websocket(&self, user: &mut User, session_id: u64) -> TechTunnel {
        let keys = Keys::generate(&self.tech_ns);
        let path = format!("/api/v1/sessions/{session_id}/config");
        let (status, body) = self.tech_call(user, "POST", &path, json!({"public_key": keys.public}));
        assert_eq!(status, 200, "configuration for session {session_id}: {body}");
        let mut config: ClientConfig = serde_json::from_value(body).unwrap();
        let relay = config.relay.clone().expect("the configuration names no relay");
        let token_file = self.lab.dir().join(format!("ws-{}.token", config.config_id));
        std::fs::write(&token_file, &relay.websocket_token).unwrap();
        let mut args = vec![
            "ws-bridge",
            "--url",
            &relay.websocket_url,
            "--token-file",
            token_file.to_str().unwrap(),
            "--listen",
            BRIDGE_LISTEN,
        ];
        if let Some(pin) = &relay.websocket_pin {
            args.extend(["--pin", pin]);
        }
        let mut bridge = self.tech_ns.spawn_program(bin_path("ferry-relay"), &args).unwrap();
        bridge.wait_for_output(BRIDGE_LISTEN, Duration::from_secs(10)).unwrap();
        // wireguard-go sends to the bridge, which carries the datagrams as
        // WebSocket frames.
        config.relay = None;
        config.endpoints = vec![BRIDGE_LISTEN.to_string()];
        let wg_quick = ferry_api::wg_quick(&config, &keys.public);
        let mut tunnel = self.tunnel_from_wg_quick(keys, wg_quick);
        tunnel.bridge = Some(bridge);
        tunnel
    }

    /// Brings up a tunnel from a wg-quick file issued for `keys`.
    pub fn tunnel_from_wg_quick(&self, keys: Keys, wg_quick: String) -> TechTunnel {
        let parsed = WgQuick::parse(&wg_quick);
        let address =
            strip_len(parsed.addresses.first().expect("no Address in the wg-quick file")).to_string();
        let proxies = parse_targets(&wg_quick);
        let go = WireguardGo::from_wg_quick(&self.lab, &self.tech_ns, &wg_quick, &keys.private);
        TechTunnel { go, keys, wg_quick, address, proxies, bridge: None }
    }

    /// A stock wireguard-go in the office standing in for a gateway, for the
    /// technician's side without one: tunnel address 100.96.0.1/24, the
    /// technician as its one peer at 100.96.0.2, and the proxy address
    /// 100.96.0.100 on its interface.
    pub fn office_wireguard(&self, keys: &Keys, technician_public: &str) -> WireguardGo {
        let go = WireguardGo::start(
            &self.lab,
            &self.office_ns,
            keys,
            GATEWAY_WG_PORT,
            "100.96.0.1/24",
            &PeerSpec { public: technician_public, allowed_ips: "100.96.0.2/32", endpoint: None, psk: None },
        );
        self.office_ns.add_addr(&go.ifname, "100.96.0.100/32").unwrap();
        go
    }

    /// `POST /api/v1/sessions/{id}/config/wg-quick`; the body is the file as
    /// a JSON string on success, else the problem document.
    pub fn request_wg_quick(&self, user: &mut User, session_id: u64, public_key: &str) -> (u16, Value) {
        let path = format!("/api/v1/sessions/{session_id}/config/wg-quick");
        let body = json!({"public_key": public_key});
        let api = self.api().at(self.technician_cloud_addr());
        let fetch = move |token: String| {
            let (api, path, body) = (api.clone(), path.clone(), body.clone());
            move || api.raw("POST", &path, Some(&token), &body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
        };
        let (mut status, mut text) = self.tech_ns.run_in(fetch(user.token.clone())).unwrap();
        if status == 401 {
            user.token = self.login(&self.tech_ns, &user.name, &user.password).1;
            (status, text) = self.tech_ns.run_in(fetch(user.token.clone())).unwrap();
        }
        match status {
            200 => (200, Value::String(text)),
            _ => (status, serde_json::from_str(&text).unwrap_or(Value::String(text))),
        }
    }
}

/// Target name -> proxy address from the wg-quick file's `# target NAME:
/// ADDR PROTO PORTS` comments.
pub fn parse_targets(wg_quick: &str) -> BTreeMap<String, String> {
    wg_quick
        .lines()
        .filter_map(|l| l.strip_prefix("# target "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(": ")?;
            Some((name.to_string(), rest.split_whitespace().next()?.to_string()))
        })
        .collect()
}
