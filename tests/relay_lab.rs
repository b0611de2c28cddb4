//! A lab for the relay: a simulated internet (a router namespace) with the
//! relay on 203.0.113.1, a gateway on 198.51.100.2, a technician's client on
//! 192.0.2.2 and an attacker on 192.0.2.130, each in its own namespace. The
//! relay runs `ferry-relay run` with an allocation file; the peers are
//! Debian's wireguard-go (or Ferry's engine) whose only endpoint is the
//! relay's allocation address.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use ferry_ebpf::pass::PassProgram;
use ferry_lab::{Lab, Netns, Process};
use nix::sys::signal::Signal;

use crate::{
    bin_path,
    wg::{FerryWg, Keys, PeerSpec, WireguardGo},
};

pub const RELAY_IP: &str = "203.0.113.1";
pub const RELAY_IP6: &str = "2001:db8:1::1";
pub const GW_IP: &str = "198.51.100.2";
pub const GW_IP6: &str = "2001:db8:2::2";
pub const CLIENT_IP: &str = "192.0.2.2";
pub const CLIENT_IP6: &str = "2001:db8:3::2";
pub const ATTACKER_IP: &str = "192.0.2.130";
/// The allocation's port.
pub const PORT: u16 = 40000;
pub const METRICS: &str = "127.0.0.1:9478";
/// Tunnel addresses.
pub const GW_TUN: &str = "10.99.0.1";
pub const CLIENT_TUN: &str = "10.99.0.2";
pub const WS_TOKEN: &str = "relay-lab-websocket-token-0123456789";

pub struct RelayLab {
    pub lab: Lab,
    pub internet: Netns,
    pub relay_ns: Netns,
    pub gw_ns: Netns,
    pub client_ns: Netns,
    pub attacker_ns: Netns,
    /// The relay's interface toward the internet.
    pub relay_if: String,
    /// The client's interface toward the internet.
    pub client_if: String,
    /// The gateway's interface toward the internet.
    pub gw_if: String,
    pub gw_keys: Keys,
    pub client_keys: Keys,
    pub allocations: PathBuf,
    pub relay: Option<Process>,
    _router_xdp: Vec<PassProgram>,
}

impl Default for RelayLab {
    fn default() -> Self {
        RelayLab::new()
    }
}

impl RelayLab {
    pub fn new() -> RelayLab {
        let lab = Lab::new().unwrap();
        let internet = lab.netns("inet").unwrap();
        internet.enable_forwarding().unwrap();
        let relay_ns = lab.netns("relay").unwrap();
        let gw_ns = lab.netns("gw").unwrap();
        let client_ns = lab.netns("client").unwrap();
        let attacker_ns = lab.netns("evil").unwrap();
        let wire = |ns: &Netns, router: [&str; 2], host: [&str; 2]| {
            let veth = lab.wire(&internet, &router, ns, &host).unwrap();
            let gw4 = router[0].split('/').next().unwrap();
            let gw6 = router[1].split('/').next().unwrap();
            ns.ip(&["route", "add", "default", "via", gw4]).unwrap();
            ns.ip(&["-6", "route", "add", "default", "via", gw6]).unwrap();
            // Tests read checksums on the wire: no partial checksums.
            ns.exec("ethtool", &["-K", &veth.b, "tx", "off"]).unwrap();
            internet.exec("ethtool", &["-K", &veth.a, "tx", "off"]).unwrap();
            // XDP_TX toward the router only delivers with XDP there.
            let router_if = veth.a.clone();
            let pass = internet.run_in(move || PassProgram::attach(&router_if)).unwrap().unwrap();
            (veth.b, pass)
        };
        let (relay_if, pass_relay) = wire(
            &relay_ns,
            ["203.0.113.254/24", "2001:db8:1::fe/64"],
            ["203.0.113.1/24", "2001:db8:1::1/64"],
        );
        let (gw_if, pass_gw) =
            wire(&gw_ns, ["198.51.100.254/24", "2001:db8:2::fe/64"], ["198.51.100.2/24", "2001:db8:2::2/64"]);
        let (client_if, pass_client) =
            wire(&client_ns, ["192.0.2.1/25", "2001:db8:3::fe/64"], ["192.0.2.2/25", "2001:db8:3::2/64"]);
        let (_, pass_attacker) = wire(
            &attacker_ns,
            ["192.0.2.129/25", "2001:db8:4::fe/64"],
            ["192.0.2.130/25", "2001:db8:4::2/64"],
        );
        // XDP's FIB lookups need forwarding on the relay's interface.
        relay_ns.sysctl(&format!("net.ipv4.conf.{relay_if}.forwarding=1")).unwrap();
        relay_ns.sysctl(&format!("net.ipv6.conf.{relay_if}.forwarding=1")).unwrap();
        // IPv6 duplicate address detection would hold the addresses back.
        for ns in [&relay_ns, &gw_ns, &client_ns, &attacker_ns, &internet] {
            wait_for_dad(ns);
        }
        let gw_keys = Keys::generate(&gw_ns);
        let client_keys = Keys::generate(&client_ns);
        let allocations = lab.dir().join("allocations.toml");
        let me = RelayLab {
            lab,
            internet,
            relay_ns,
            gw_ns,
            client_ns,
            attacker_ns,
            relay_if,
            client_if,
            gw_if,
            gw_keys,
            client_keys,
            allocations,
            relay: None,
            _router_xdp: vec![pass_relay, pass_gw, pass_client, pass_attacker],
        };
        me.write_allocations(true);
        me
    }

    /// Writes the allocation file with (or without) the one allocation.
    pub fn write_allocations(&self, present: bool) {
        let mut text = String::new();
        if present {
            writeln!(
                text,
                "[[allocation]]\nid = 1\nsession_id = 7\ngateway_key = \"{}\"\nclient_key = \"{}\"\nport = {PORT}\n\
                 websocket_token = \"{WS_TOKEN}\"",
                self.gw_keys.public, self.client_keys.public
            )
            .unwrap();
        }
        std::fs::write(&self.allocations, text).unwrap();
    }

    /// Starts `ferry-relay run` in the relay namespace with `--xdp <mode>` and
    /// any extra flags.
    pub fn start_relay(&mut self, xdp: &str, extra: &[&str]) {
        let mut args = vec![
            "run",
            "--xdp",
            xdp,
            "--interface",
            &self.relay_if,
            "--public-ipv4",
            RELAY_IP,
            "--public-ipv6",
            RELAY_IP6,
            "--ports",
            "40000-40099",
            "--allocations",
            self.allocations.to_str().unwrap(),
            "--metrics",
            METRICS,
            "--stun",
            "off",
            "--websocket",
            "off",
            "--log",
            "debug",
        ];
        // A flag in `extra` replaces the default one.
        for flag in extra.iter().filter(|f| f.starts_with("--")) {
            if let Some(at) = args.iter().position(|a| a == flag) {
                args.drain(at..at + 2);
            }
        }
        args.extend_from_slice(extra);
        let mut relay = self.relay_ns.spawn_program(bin_path("ferry-relay"), &args).unwrap();
        relay.wait_for_output("ferry-relay ready", Duration::from_secs(20)).unwrap();
        self.relay = Some(relay);
    }

    /// Re-reads the allocation file (SIGHUP) and waits until it is applied.
    pub fn reload(&self) {
        let relay = self.relay.as_ref().unwrap();
        let before = relay.stderr().matches("allocation file applied").count();
        relay.signal(Signal::SIGHUP).unwrap();
        crate::wg::wait_for(
            || relay.stderr().matches("allocation file applied").count() > before,
            "the relay to apply the allocation file",
        );
    }

    /// The endpoint peers are given: the relay's allocation address.
    pub fn endpoint(&self, v6: bool) -> String {
        if v6 { format!("[{RELAY_IP6}]:{PORT}") } else { format!("{RELAY_IP}:{PORT}") }
    }

    /// wireguard-go on the gateway side, with a persistent keepalive as
    /// Ferry's gateway keeps: it binds the gateway before a client comes.
    pub fn gateway_go(&self, v6: bool) -> WireguardGo {
        let go = WireguardGo::start(
            &self.lab,
            &self.gw_ns,
            &self.gw_keys,
            51820,
            &format!("{GW_TUN}/24"),
            &PeerSpec {
                public: &self.client_keys.public,
                allowed_ips: &format!("{CLIENT_TUN}/32"),
                endpoint: Some(self.endpoint(v6)),
                psk: None,
            },
        );
        self.gw_ns
            .exec("wg", &["set", &go.ifname, "peer", &self.client_keys.public, "persistent-keepalive", "2"])
            .unwrap();
        go
    }

    /// wireguard-go on the technician's side, sending to the relay.
    pub fn client_go(&self, v6: bool) -> WireguardGo {
        self.client_go_to(&self.endpoint(v6))
    }

    /// wireguard-go on the technician's side with `endpoint` (the relay, or
    /// a local WebSocket bridge).
    pub fn client_go_to(&self, endpoint: &str) -> WireguardGo {
        let (address, allowed) = (format!("{CLIENT_TUN}/24"), format!("{GW_TUN}/32"));
        let peer = self.client_peer(&allowed, endpoint);
        WireguardGo::start(&self.lab, &self.client_ns, &self.client_keys, 51820, &address, &peer)
    }

    /// Ferry's engine on the technician's side, sending to the relay.
    pub fn client_ferry(&self) -> FerryWg {
        let (address, allowed) = (format!("{CLIENT_TUN}/24"), format!("{GW_TUN}/32"));
        let peer = self.client_peer(&allowed, &self.endpoint(false));
        FerryWg::start(&self.lab, &self.client_ns, &self.client_keys, 51820, &address, &peer)
    }

    fn client_peer<'a>(&'a self, allowed_ips: &'a str, endpoint: &str) -> PeerSpec<'a> {
        PeerSpec {
            public: &self.gw_keys.public,
            allowed_ips,
            endpoint: Some(endpoint.to_string()),
            psk: None,
        }
    }

    /// The relay's /metrics text.
    pub fn metrics(&self) -> String {
        self.relay_ns
            .run_in(|| {
                let mut stream = TcpStream::connect(METRICS)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")?;
                let mut body = String::new();
                stream.read_to_string(&mut body)?;
                Ok::<_, std::io::Error>(body)
            })
            .unwrap()
            .unwrap()
    }

    /// A counter or gauge from /metrics (the sum over matching label sets).
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }
}

impl Drop for RelayLab {
    fn drop(&mut self) {
        if let Some(relay) = &mut self.relay {
            if std::thread::panicking() {
                eprintln!("--- ferry-relay stderr ---\n{}", relay.stderr());
            }
            relay.kill();
        }
    }
}

/// Sums the samples of `name` whose labels contain `labels`.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn wait_for_dad(ns: &Netns) {
    crate::wg::wait_for(
        || ns.exec("ip", &["-6", "addr", "show", "tentative"]).is_ok_and(|out| out.trim().is_empty()),
        "IPv6 duplicate address detection",
    );
}

/// Bytes received from the only peer, per `wg show <if> transfer`.
pub fn received(go: &WireguardGo) -> u64 {
    go.show("transfer").split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A handshake message with a valid mac1 for `to` (base64 public key), as
/// anyone who knows the public keys can make: the rest is noise.
pub fn forged_handshake(kind: u8, sender: u32, receiver: u32, to: &str) -> Vec<u8> {
    use ferry_tunnel::proto::{
        cookie::mac1_key,
        crypto,
        messages::{Initiation, Response},
    };
    let to = ferry_tunnel::PublicKey::from_base64(to).unwrap();
    let (len, mac1_offset) =
        if kind == 1 { (148, Initiation::MAC1_OFFSET) } else { (92, Response::MAC1_OFFSET) };
    let mut m: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(37)).collect();
    m[..4].copy_from_slice(&[kind, 0, 0, 0]);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    if kind == 2 {
        m[8..12].copy_from_slice(&receiver.to_le_bytes());
    }
    let mac = crypto::mac(&mac1_key(&to), &[&m[..mac1_offset]]);
    m[mac1_offset..mac1_offset + 16].copy_from_slice(&mac);
    m[mac1_offset + 16..].fill(0);
    m
}
