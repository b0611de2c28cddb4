//! Driving WireGuard peers in lab namespaces: Ferry's `ferry-wg` and Debian's
//! `wireguard-go` configured with `wg`.

use std::{fs, path::PathBuf, time::Duration};

use ferry_lab::{Lab, Netns, Process};

use crate::bin_path;

/// A key pair as `wg genkey` / `wg pubkey` make them.
pub struct Keys {
    pub private: String,
    pub public: String,
}

impl Keys {
    pub fn generate(ns: &Netns) -> Keys {
        let private = ns.exec("wg", &["genkey"]).unwrap().trim().to_string();
        let public =
            ns.exec("sh", &["-c", &format!("echo {private} | wg pubkey")]).unwrap().trim().to_string();
        Keys { private, public }
    }
}

/// The peer one side is told about.
pub struct PeerSpec<'a> {
    pub public: &'a str,
    pub allowed_ips: &'a str,
    pub endpoint: Option<String>,
    pub psk: Option<&'a str>,
}

/// A running `wireguard-go` interface.
pub struct WireguardGo {
    pub ifname: String,
    pub ns: Netns,
    process: Process,
}

impl WireguardGo {
    /// The wireguard-go process's id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Starts wireguard-go in `ns` with `address` (CIDR) and one peer.
    pub fn start(
        lab: &Lab,
        ns: &Netns,
        keys: &Keys,
        port: u16,
        address: &str,
        peer: &PeerSpec<'_>,
    ) -> WireguardGo {
        let (ifname, process) = spawn_wireguard_go(lab, ns);
        let key_file = lab.dir().join(format!("{ifname}.key"));
        fs::write(&key_file, &keys.private).unwrap();
        ns.exec(
            "wg",
            &["set", &ifname, "private-key", key_file.to_str().unwrap(), "listen-port", &port.to_string()],
        )
        .unwrap();
        let go = WireguardGo { ifname, ns: ns.clone(), process };
        go.set_peer(lab, peer);
        ns.ip(&["addr", "add", address, "dev", &go.ifname]).unwrap();
        ns.ip(&["link", "set", &go.ifname, "up"]).unwrap();
        go
    }

    /// Brings up wireguard-go in `ns` from a `wg-quick` file as the cloud
    /// issues it: the private key goes in place of the placeholder line, the
    /// wg-quick-only keys (Address, DNS, MTU, Table, Pre/PostUp/Down, SaveConfig)
    /// are stripped for `wg setconf`, and then the tunnel address is added and
    /// a route to each AllowedIPs entry points into the tunnel, as wg-quick
    /// would do. Only the AllowedIPs go into the tunnel (split tunnelling):
    /// the namespace's own routes stay as they are.
    pub fn from_wg_quick(lab: &Lab, ns: &Netns, wg_quick: &str, private_key: &str) -> WireguardGo {
        let parsed = WgQuick::parse(wg_quick);
        let (ifname, process) = spawn_wireguard_go(lab, ns);
        let conf = lab.dir().join(format!("{ifname}.conf"));
        fs::write(&conf, parsed.setconf(private_key)).unwrap();
        ns.exec("wg", &["setconf", &ifname, conf.to_str().unwrap()]).unwrap();
        for address in &parsed.addresses {
            ns.ip(&["addr", "add", address, "dev", &ifname]).unwrap();
        }
        ns.ip(&["link", "set", &ifname, "up"]).unwrap();
        for allowed in &parsed.allowed_ips {
            ns.ip(&["route", "replace", allowed, "dev", &ifname]).unwrap();
        }
        WireguardGo { ifname, ns: ns.clone(), process }
    }

    pub fn set_peer(&self, lab: &Lab, peer: &PeerSpec<'_>) {
        let mut args = vec!["set".to_string(), self.ifname.clone(), "peer".into(), peer.public.into()];
        args.extend(["allowed-ips".into(), peer.allowed_ips.into()]);
        if let Some(endpoint) = &peer.endpoint {
            args.extend(["endpoint".into(), endpoint.clone()]);
        }
        if let Some(psk) = peer.psk {
            let file = lab.dir().join(format!("{}.psk", self.ifname));
            fs::write(&file, psk).unwrap();
            args.extend(["preshared-key".into(), file.to_str().unwrap().into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns.exec("wg", &args).unwrap();
    }

    pub fn remove_peer(&self, public: &str) {
        self.ns.exec("wg", &["set", &self.ifname, "peer", public, "remove"]).unwrap();
    }

    /// `wg show <if> <what>` lines.
    pub fn show(&self, what: &str) -> String {
        self.ns.exec("wg", &["show", &self.ifname, what]).unwrap()
    }
}

/// The parts of a `wg-quick` file that `wg setconf` does not take.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WgQuick {
    /// The file without the wg-quick-only keys.
    pub lines: Vec<String>,
    /// `Address` entries (CIDR).
    pub addresses: Vec<String>,
    /// Every peer's `AllowedIPs` entries (CIDR).
    pub allowed_ips: Vec<String>,
    pub endpoint: Option<String>,
}

impl WgQuick {
    const WG_QUICK_ONLY: [&'static str; 9] =
        ["address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown", "saveconfig"];

    pub fn parse(text: &str) -> WgQuick {
        let mut out = WgQuick::default();
        let list = |value: &str| -> Vec<String> {
            value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_string).collect()
        };
        for line in text.lines() {
            let key_value = line.split_once('=').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()));
            match key_value {
                Some((key, value)) if !line.trim_start().starts_with('#') => {
                    if key == "address" {
                        out.addresses.extend(list(value));
                    }
                    if key == "allowedips" {
                        out.allowed_ips.extend(list(value));
                    }
                    if key == "endpoint" {
                        out.endpoint = Some(value.to_string());
                    }
                    if !Self::WG_QUICK_ONLY.contains(&key.as_str()) {
                        out.lines.push(line.to_string());
                    }
                }
                _ => out.lines.push(line.to_string()),
            }
        }
        out
    }

    /// The `wg setconf` file with `private_key` in place of whatever the
    /// `PrivateKey` line held (the cloud's placeholder).
    pub fn setconf(&self, private_key: &str) -> String {
        let mut text = String::new();
        for line in &self.lines {
            let is_key =
                line.split_once('=').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("privatekey"))
                    && !line.trim_start().starts_with('#');
            if is_key {
                text += &format!("PrivateKey = {private_key}\n");
            } else {
                text += line;
                text.push('\n');
            }
        }
        text
    }
}

/// A running `ferry-wg up` from a generated wg-quick file.
pub struct FerryWg {
    pub ifname: String,
    pub ns: Netns,
    pub process: Process,
}

impl FerryWg {
    pub fn start(
        lab: &Lab,
        ns: &Netns,
        keys: &Keys,
        port: u16,
        address: &str,
        peer: &PeerSpec<'_>,
    ) -> FerryWg {
        Self::start_binary(&bin_path("ferry-wg"), lab, ns, keys, port, address, peer)
    }

    /// Like [`FerryWg::start`], with a `ferry-wg` binary from elsewhere (a
    /// CPU-specific build, for the benchmark).
    pub fn start_binary(
        binary: &std::path::Path,
        lab: &Lab,
        ns: &Netns,
        keys: &Keys,
        port: u16,
        address: &str,
        peer: &PeerSpec<'_>,
    ) -> FerryWg {
        let ifname = lab.ifname("fw");
        let mut conf = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = {port}\nAddress = {address}\n\n",
            keys.private
        );
        conf += &format!("[Peer]\nPublicKey = {}\nAllowedIPs = {}\n", peer.public, peer.allowed_ips);
        if let Some(endpoint) = &peer.endpoint {
            conf += &format!("Endpoint = {endpoint}\n");
        }
        if let Some(psk) = peer.psk {
            conf += &format!("PresharedKey = {psk}\n");
        }
        let path = lab.dir().join(format!("{ifname}.conf"));
        fs::write(&path, conf).unwrap();
        let mut process = ns.spawn_program(binary, &["up", path.to_str().unwrap(), "--log", "info"]).unwrap();
        process.wait_for_output(&format!("{ifname} up"), Duration::from_secs(10)).unwrap();
        FerryWg { ifname, ns: ns.clone(), process }
    }

    /// `wg show` on Ferry's own UAPI socket.
    pub fn show(&self, what: &str) -> String {
        self.ns.exec("wg", &["show", &self.ifname, what]).unwrap()
    }
}

/// Latest-handshake time (Unix seconds) of the only peer in `wg show <if>
/// latest-handshakes` output; 0 before the first.
pub fn latest_handshake(show_output: &str) -> u64 {
    show_output.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pings until one reply arrives (a first handshake can eat the first
/// packets), within `seconds`.
pub fn ping(ns: &Netns, target: &str, seconds: u32) -> bool {
    ns.output("ping", &["-c", "1", "-W", "1", "-w", &seconds.to_string(), target]).unwrap().status.success()
}

/// Starts a one-shot iperf3 server on `ip` and waits until it listens
/// (iperf3 buffers its banner when stdout is not a terminal, so ask `ss`).
pub fn iperf3_server(ns: &Netns, ip: &str) -> Process {
    let server = ns.spawn_program("iperf3", &["-s", "-1", "-B", ip]).unwrap();
    wait_for(
        || ns.exec("ss", &["-Hltn", "sport = :5201"]).is_ok_and(|out| !out.trim().is_empty()),
        "iperf3 to listen",
    );
    server
}

/// An iperf3 TCP transfer from `client` to a server on `server_ip` in
/// `server`, for `seconds`; returns the received bits per second.
pub fn iperf3(server: &Netns, server_ip: &str, client: &Netns, seconds: u32) -> f64 {
    let _srv = iperf3_server(server, server_ip);
    let out = client
        .exec("timeout", &["60", "iperf3", "-c", server_ip, "-t", &seconds.to_string(), "-J"])
        .unwrap_or_else(|e| panic!("iperf3 failed: {e}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
}

/// Starts wireguard-go in the foreground in `ns` on a fresh interface name
/// and waits for its control socket.
fn spawn_wireguard_go(lab: &Lab, ns: &Netns) -> (String, Process) {
    let ifname = lab.ifname("wg");
    let mut cmd = ns.command("wireguard-go");
    cmd.args(["-f", &ifname]).env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
    let process = ns.spawn(cmd).unwrap();
    let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    wait_for(|| socket.exists(), "the wireguard-go control socket");
    (ifname, process)
}
