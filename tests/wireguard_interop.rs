//! Ferry's WireGuard engine (`ferry-wg`) against Debian's `wireguard-go`, in
//! two namespaces joined by a veth: each direction of initiation, a PSK, a
//! rekey started by our side, roaming mid-transfer, and a wireguard-go peer
//! removed and re-added. Every case carries ping and an iperf3 TCP transfer.

use std::time::Duration;

use ferry_lab::{Lab, Netns};
use ferry_tests::wg::{
    FerryWg, Keys, PeerSpec, WireguardGo, iperf3, iperf3_server, latest_handshake, ping, wait_for,
};
use nix::sys::signal::Signal;

const FERRY_IP: &str = "10.77.0.1";
const GO_IP: &str = "10.77.0.2";
const FERRY_IP6: &str = "fd77::1";
const GO_IP6: &str = "fd77::2";
const PORT: u16 = 51820;

struct Pair {
    lab: Lab,
    ferry_ns: Netns,
    go_ns: Netns,
    ferry_keys: Keys,
    go_keys: Keys,
    veth_ferry: String,
}

fn pair() -> Pair {
    let lab = Lab::new().unwrap();
    let ferry_ns = lab.netns("ferry").unwrap();
    let go_ns = lab.netns("wggo").unwrap();
    let veth = lab.wire(&ferry_ns, &["192.0.2.1/24"], &go_ns, &["192.0.2.2/24"]).unwrap();
    let ferry_keys = Keys::generate(&ferry_ns);
    let go_keys = Keys::generate(&go_ns);
    Pair { lab, ferry_ns, go_ns, ferry_keys, go_keys, veth_ferry: veth.a }
}

impl Pair {
    /// Starts both ends; `ferry_dials`/`go_dials` give that side the other's
    /// endpoint, so only it can start the handshake.
    fn start(
        &self,
        ferry_dials: bool,
        go_dials: bool,
        psks: (Option<&str>, Option<&str>),
    ) -> (FerryWg, WireguardGo) {
        let ferry = FerryWg::start(
            &self.lab,
            &self.ferry_ns,
            &self.ferry_keys,
            PORT,
            &format!("{FERRY_IP}/24"),
            &PeerSpec {
                public: &self.go_keys.public,
                allowed_ips: &format!("{GO_IP}/32"),
                endpoint: ferry_dials.then(|| format!("192.0.2.2:{PORT}")),
                psk: psks.0,
            },
        );
        let go = WireguardGo::start(
            &self.lab,
            &self.go_ns,
            &self.go_keys,
            PORT,
            &format!("{GO_IP}/24"),
            &PeerSpec {
                public: &self.ferry_keys.public,
                allowed_ips: &format!("{FERRY_IP}/32"),
                endpoint: go_dials.then(|| format!("192.0.2.1:{PORT}")),
                psk: psks.1,
            },
        );
        (ferry, go)
    }

    fn both_ways(&self) {
        let up = iperf3(&self.go_ns, GO_IP, &self.ferry_ns, 2);
        let down = iperf3(&self.ferry_ns, FERRY_IP, &self.go_ns, 2);
        assert!(up > 0.0 && down > 0.0, "iperf3: {up} bit/s to wireguard-go, {down} bit/s to Ferry");
    }
}

#[test]
fn ferry_initiates() {
    let p = pair();
    let (ferry, go) = p.start(true, false, (None, None));
    assert!(ping(&p.ferry_ns, GO_IP, 10), "Ferry could not reach wireguard-go");
    // IPv6 inside the tunnel: both sides route a v6 prefix to each other.
    p.ferry_ns.add_addr(&ferry.ifname, &format!("{FERRY_IP6}/64")).unwrap();
    p.go_ns.add_addr(&go.ifname, &format!("{GO_IP6}/64")).unwrap();
    p.ferry_ns
        .exec(
            "wg",
            &[
                "set",
                &ferry.ifname,
                "peer",
                &p.go_keys.public,
                "allowed-ips",
                &format!("{GO_IP}/32,{GO_IP6}/128"),
            ],
        )
        .unwrap();
    go.set_peer(
        &p.lab,
        &PeerSpec {
            public: &p.ferry_keys.public,
            allowed_ips: &format!("{FERRY_IP}/32,{FERRY_IP6}/128"),
            endpoint: None,
            psk: None,
        },
    );
    assert!(ping(&p.ferry_ns, GO_IP6, 10), "no IPv6 through the tunnel");
    assert!(latest_handshake(&go.show("latest-handshakes")) > 0);
    // Our own UAPI answers stock `wg show` too.
    assert!(latest_handshake(&ferry.show("latest-handshakes")) > 0);
    assert!(ferry.show("endpoints").contains("192.0.2.2:51820"));
    p.both_ways();
}

#[test]
fn wireguard_go_initiates() {
    let p = pair();
    let (ferry, go) = p.start(false, true, (None, None));
    assert!(ping(&p.go_ns, FERRY_IP, 10), "wireguard-go could not reach Ferry");
    // Ferry learned wireguard-go's endpoint from the handshake.
    assert!(ferry.show("endpoints").contains("192.0.2.2:51820"), "{}", ferry.show("endpoints"));
    assert!(go.show("transfer").split_whitespace().nth(1).is_some_and(|rx| rx != "0"));
    p.both_ways();
}

#[test]
fn preshared_key_both_directions_and_a_mismatch_fails() {
    let psk = "/UwcSPg38hW/D9Y3tcS1FOV0K1wuURMbS0sesJEP5ak=";
    let p = pair();
    let (_ferry, go) = p.start(true, true, (Some(psk), Some(psk)));
    assert!(ping(&p.ferry_ns, GO_IP, 10));
    assert!(go.show("preshared-keys").contains(psk));
    p.both_ways();

    let q = pair();
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (_ferry, go) = q.start(true, false, (Some(psk), Some(other)));
    assert!(!ping(&q.ferry_ns, GO_IP, 3), "a PSK mismatch must not give a tunnel");
    assert_eq!(latest_handshake(&go.show("latest-handshakes")), 0);
}

#[test]
fn a_rekey_started_by_ferry_mid_transfer() {
    let p = pair();
    let (ferry, go) = p.start(true, false, (None, None));
    assert!(ping(&p.ferry_ns, GO_IP, 10));
    let first = latest_handshake(&go.show("latest-handshakes"));
    let _server = iperf3_server(&p.go_ns, GO_IP);
    let mut client = p.ferry_ns.spawn_program("iperf3", &["-c", GO_IP, "-t", "4", "-J"]).unwrap();
    // The handshake time has one-second resolution.
    std::thread::sleep(Duration::from_millis(1500));
    ferry.process.signal(Signal::SIGUSR1).unwrap();
    wait_for(|| latest_handshake(&go.show("latest-handshakes")) > first, "the new handshake");
    assert!(client.wait_timeout(Duration::from_secs(30)).unwrap().success(), "{}", client.stderr());
    let json: serde_json::Value = serde_json::from_str(&client.stdout()).unwrap();
    let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap();
    assert!(bytes > 0.0, "the transfer stalled across the rekey");
    // Intervals after the rekey still moved data.
    let intervals = json["intervals"].as_array().unwrap();
    assert!(intervals.last().unwrap()["sum"]["bytes"].as_f64().unwrap() > 0.0);
}

#[test]
fn ferry_roams_to_a_new_address_mid_transfer() {
    let p = pair();
    let (_ferry, go) = p.start(true, false, (None, None));
    assert!(ping(&p.ferry_ns, GO_IP, 10));
    assert!(go.show("endpoints").contains("192.0.2.1:"));
    let _server = iperf3_server(&p.go_ns, GO_IP);
    let mut client = p.ferry_ns.spawn_program("iperf3", &["-c", GO_IP, "-t", "4", "-J"]).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // Our address changes: the old one disappears, a new one takes over.
    // (Without promote_secondaries, deleting the primary address would take
    // the new, secondary one with it.)
    p.ferry_ns.sysctl(&format!("net.ipv4.conf.{}.promote_secondaries=1", p.veth_ferry)).unwrap();
    p.ferry_ns.add_addr(&p.veth_ferry, "192.0.2.11/24").unwrap();
    p.ferry_ns.ip(&["addr", "del", "192.0.2.1/24", "dev", &p.veth_ferry]).unwrap();
    wait_for(|| go.show("endpoints").contains("192.0.2.11:"), "wireguard-go to follow Ferry's new address");
    assert!(client.wait_timeout(Duration::from_secs(30)).unwrap().success(), "{}", client.stderr());
    let json: serde_json::Value = serde_json::from_str(&client.stdout()).unwrap();
    let last = json["intervals"].as_array().unwrap().last().unwrap()["sum"]["bytes"].as_f64().unwrap();
    assert!(last > 0.0, "no data moved after the address change");
    assert!(ping(&p.ferry_ns, GO_IP, 5));
}

#[test]
fn a_wireguard_go_peer_removed_and_re_added() {
    let p = pair();
    let (_ferry, go) = p.start(true, false, (None, None));
    assert!(ping(&p.ferry_ns, GO_IP, 10));
    go.remove_peer(&p.ferry_keys.public);
    assert!(!ping(&p.go_ns, FERRY_IP, 2), "a removed peer must not be reachable");
    go.set_peer(
        &p.lab,
        &PeerSpec {
            public: &p.ferry_keys.public,
            allowed_ips: &format!("{FERRY_IP}/32"),
            endpoint: Some(format!("192.0.2.1:{PORT}")),
            psk: None,
        },
    );
    // wireguard-go forgot the session; its first packet starts a handshake
    // that Ferry answers as responder.
    assert!(ping(&p.go_ns, FERRY_IP, 10), "no tunnel after re-adding the peer");
    p.both_ways();
}
