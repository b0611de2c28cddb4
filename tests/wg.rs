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
    _process: Process,
}

impl WireguardGo {
    /// Starts wireguard-go in `ns` with `address` (CIDR) and one peer.
    pub fn start(
        lab: &Lab,
        ns: &Netns,
        keys: &Keys,
        port: u16,
        address: &str,
        peer: &PeerSpec<'_>,
    ) -> WireguardGo {
        let ifname = lab.ifname("wg");
        let mut cmd = ns.command("wireguard-go");
        cmd.args(["-f", &ifname]).env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        let process = ns.spawn(cmd).unwrap();
        let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        wait_for(|| socket.exists(), "the wireguard-go control socket");
        let key_file = lab.dir().join(format!("{ifname}.key"));
        fs::write(&key_file, &keys.private).unwrap();
        ns.exec(
            "wg",
            &["set", &ifname, "private-key", key_file.to_str().unwrap(), "listen-port", &port.to_string()],
        )
        .unwrap();
        let go = WireguardGo { ifname, ns: ns.clone(), _process: process };
        go.set_peer(lab, peer);
        ns.ip(&["addr", "add", address, "dev", &go.ifname]).unwrap();
        ns.ip(&["link", "set", &go.ifname, "up"]).unwrap();
        go
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
