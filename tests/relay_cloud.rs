//! `ferry-relay` on the cloud's relay control channel: it connects out with
//! its relay token, stays connected, and its health reaches the cloud; a
//! wrong token is refused and the relay keeps retrying with backoff.

use std::{path::Path, time::Duration};

use ferry_lab::Process;
use ferry_tests::{
    bin_path,
    cloud::{admin_token, call, start},
    wg::wait_for,
};
use serde_json::json;

const PASSWORD: &str = "relay channel test password";

fn relay(dir: &Path, cloud: std::net::SocketAddr, id: u64, token: &str) -> Process {
    let token_file = dir.join(format!("relay-{id}.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = std::process::Command::new(bin_path("ferry-relay"));
    cmd.args([
        "run",
        "--xdp",
        "off",
        "--public-ipv4",
        "127.0.0.1",
        "--ports",
        &format!("{}-{}", 41000 + id * 100, 41099 + id * 100),
        "--stun",
        "off",
        "--websocket",
        "off",
        "--metrics",
        "off",
        "--cloud-url",
        &format!("ws://{cloud}/api/v1/control/relay"),
        "--cloud-relay-id",
        &id.to_string(),
        "--cloud-token-file",
        token_file.to_str().unwrap(),
    ]);
    let mut process = Process::spawn(&mut cmd, dir).unwrap();
    process.wait_for_output("ferry-relay ready", Duration::from_secs(20)).unwrap();
    process
}

#[test]
fn a_relay_connects_with_its_token_and_reports_health() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&dir.path().join("cloud"));
    let admin = admin_token(cloud.addr, &cloud.one_time_password().unwrap(), PASSWORD);
    let (status, created) =
        call(cloud.addr, "POST", "/api/v1/relays", Some(&admin), json!({"name": "relay-a"}));
    assert_eq!(status, 201, "{created}");
    let id = created["relay"]["id"].as_u64().unwrap();
    let token = created["token"].as_str().unwrap();

    let mut good = relay(dir.path(), cloud.addr, id, token);
    let health = || {
        let (_, relays) = call(cloud.addr, "GET", "/api/v1/relays", Some(&admin), json!(null));
        relays.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()["health"].clone()
    };
    wait_for(|| health()["online"] == true, "the relay to come online at the cloud");
    let seen = health();
    assert_eq!(seen["udp"], format!("127.0.0.1:{}", 41000 + id * 100));
    assert_eq!(seen["software_version"], env!("CARGO_PKG_VERSION"));
    assert!(seen["capacity"].as_u64().unwrap() > 0);
    good.wait_for_output("connected to the cloud", Duration::from_secs(10)).unwrap();

    // A relay with a made-up token is refused and keeps retrying.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let mut bad = relay(dir.path(), cloud.addr, id + 1, &forged);
    bad.wait_for_output("reconnecting to the cloud", Duration::from_secs(20)).unwrap();
    assert!(!bad.stderr().contains("connected to the cloud"), "{}", bad.stderr());

    good.kill();
    wait_for(|| health()["online"] == false, "the cloud to see the relay leave");
}
