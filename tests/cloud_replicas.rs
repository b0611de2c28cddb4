//! Two `ferry-cloud serve` processes on one PostgreSQL database, with a
//! real `ferry-relay` and a gateway on the control protocol, both given
//! both replicas' addresses. One replica is killed with SIGKILL under a
//! load of writes through both: the relay and the gateway move to the
//! other, which then serves them (a session made there reaches the
//! gateway; a configuration issued there gets the relay's allocation), no
//! write that either replica acknowledged is lost, and the audit chain
//! verifies (`ferry-cloud audit verify --storage`).

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_control::{
    GatewayId, SigningKey, WgKey,
    client::{self, Channel},
    gateway::{DesiredState, ToGateway},
};
use ferry_lab::{
    Process,
    postgres::{Durability, Postgres},
};
use ferry_tests::{
    bin,
    cloud::{Cloud, admin_token, call, spawn, try_call},
    wg::wait_for,
};
use serde_json::{Value, json};

const PASSWORD: &str = "replica failover test password";

fn replica(dir: &Path, url: &str) -> Cloud {
    spawn(dir, &["--no-tls", "--storage", url])
}

/// A gateway on the control protocol that keeps every desired state it
/// gets, and moves to the next address when its connection fails.
fn gateway(
    urls: Vec<String>,
    id: u64,
    key: SigningKey,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<(String, DesiredState)>>> {
    let states = Arc::new(Mutex::new(Vec::new()));
    let seen = states.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut index = 0;
            while !stop.load(Ordering::SeqCst) {
                let url = urls[index % urls.len()].clone();
                index += 1;
                let Ok(ws) = client::connect(&url, None).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut channel = Channel::new(ws);
                let handshake = client::gateway_handshake(
                    &mut channel,
                    &key,
                    GatewayId(id),
                    "test-gw",
                    true,
                    WgKey([7; 32]),
                    None,
                )
                .await;
                let Ok((_, first)) = handshake else { continue };
                seen.lock().unwrap().push((url.clone(), first));
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(500), channel.recv::<ToGateway>()).await
                    {
                        Err(_) => continue,
                        Ok(Ok(Some(ToGateway::DesiredState(state)))) => {
                            seen.lock().unwrap().push((url.clone(), state))
                        }
                        Ok(Ok(Some(_))) => {}
                        Ok(Ok(None) | Err(_)) => break,
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    });
    states
}

fn relay(dir: &Path, clouds: &[SocketAddr], id: u64, token: &str) -> Process {
    let token_file = dir.join("relay.token");
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = bin("ferry-relay");
    cmd.args([
        "run",
        "--xdp",
        "off",
        "--public-ipv4",
        "127.0.0.1",
        "--ports",
        "43000-43099",
        "--metrics",
        "off",
    ]);
    cmd.args(["--stun", "off", "--websocket", "off", "--cloud-relay-id", &id.to_string()]);
    cmd.args(["--cloud-token-file", token_file.to_str().unwrap()]);
    for cloud in clouds {
        cmd.args(["--cloud-url", &format!("ws://{cloud}/api/v1/control/relay")]);
    }
    let mut process = Process::spawn(&mut cmd, dir).unwrap();
    process.wait_for_output("ferry-relay ready", Duration::from_secs(20)).unwrap();
    process
}

/// Creates API tokens through `clouds` in turn until `stop`; returns the
/// names a replica acknowledged (201). A request to a killed replica has no
/// answer and does not count.
fn write(clouds: &[SocketAddr], token: &str, writer: usize, stop: &AtomicBool) -> Vec<String> {
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let cloud = clouds[n % clouds.len()];
        let name = format!("w{writer}-{n}");
        match try_call(
            cloud,
            "POST",
            "/api/v1/tokens",
            Some(token),
            json!({"name": name, "scopes": ["sessions:read"]}),
        ) {
            Ok((201, _)) => acked.push(name),
            Ok((status, body)) => panic!("POST /api/v1/tokens {name}: {status} {body}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    acked
}

#[test]
fn a_replica_killed_under_load_hands_its_gateway_and_relay_to_the_other_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Postgres::start(Durability::Relaxed).unwrap();
    server.create_database("ferry").unwrap();
    let url = server.url("ferry");
    let a = replica(&dir.path().join("a"), &url);
    let b = replica(&dir.path().join("b"), &url);
    assert!(b.one_time_password().is_none(), "the first replica made the Administrator");
    let admin = admin_token(a.addr, &a.one_time_password().unwrap(), PASSWORD);
    let (a_addr, b_addr) = (a.addr, b.addr);

    // A gateway, connected to A first.
    let key = SigningKey::from_bytes(&[5; 32]);
    let (status, created) = call(
        b_addr,
        "POST",
        "/api/v1/gateways",
        Some(&admin),
        json!({"name": "press-1", "site": "plant", "targets": [{"name": "plc", "address": "192.168.0.10", "protocol": "any"}]}),
    );
    assert_eq!(status, 201, "{created}");
    let gateway_id = created["gateway"]["id"].as_u64().unwrap();
    let enrol = json!({"token": created["enrolment"]["token"], "identity_key": hex_key(&key)});
    assert_eq!(call(a_addr, "POST", "/api/v1/enrol", None, enrol).0, 200);
    let stop_gateway = Arc::new(AtomicBool::new(false));
    let control = |addr: SocketAddr| format!("ws://{addr}/api/v1/control/gateway");
    let states = gateway(vec![control(a_addr), control(b_addr)], gateway_id, key, stop_gateway.clone());

    // A relay, connected to A first.
    let (status, registered) =
        call(a_addr, "POST", "/api/v1/relays", Some(&admin), json!({"name": "relay-1"}));
    assert_eq!(status, 201, "{registered}");
    let relay_id = registered["relay"]["id"].as_u64().unwrap();
    let mut relay = relay(dir.path(), &[a_addr, b_addr], relay_id, registered["token"].as_str().unwrap());
    let online = |kind: &str, id: u64| {
        let (_, list) = call(b_addr, "GET", &format!("/api/v1/{kind}"), Some(&admin), Value::Null);
        list.as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id && (x["last_seen"]["online"] == true || x["health"]["online"] == true))
    };
    wait_for(
        || online("gateways", gateway_id) && online("relays", relay_id),
        "B to see the gateway and relay online",
    );
    assert!(states.lock().unwrap().iter().all(|(u, _)| *u == control(a_addr)));

    // Writes through both replicas; A is killed in the middle of them.
    let stop = AtomicBool::new(false);
    let acked: Vec<String> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (admin, stop) = (admin.as_str(), &stop);
                scope.spawn(move || write(&[a_addr, b_addr], admin, w, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(600));
        a.kill_9();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::SeqCst);
        writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert!(acked.len() > 20, "too few writes went through: {}", acked.len());

    // The gateway is on B now, and B serves it: a session made and started
    // there reaches it.
    wait_for(
        || states.lock().unwrap().iter().any(|(u, _)| *u == control(b_addr)),
        "the gateway to move to B",
    );
    let (status, session) = call(
        b_addr,
        "POST",
        "/api/v1/sessions",
        Some(&admin),
        json!({"name": "after the kill", "gateway_id": gateway_id, "targets": ["plc"], "max_duration_s": 600}),
    );
    assert_eq!(status, 201, "{session}");
    let session_id = session["id"].as_u64().unwrap();
    let (status, started) =
        call(b_addr, "POST", &format!("/api/v1/sessions/{session_id}/start"), Some(&admin), json!({}));
    assert_eq!(status, 200, "{started}");
    wait_for(
        || {
            states.lock().unwrap().iter().any(|(u, s)| {
                *u == control(b_addr) && s.sessions.iter().any(|s| s.session_id.0 == session_id)
            })
        },
        "the session to reach the gateway through B",
    );

    // The relay is on B too: a configuration issued there gets its allocation.
    relay.wait_for_output("reconnecting to the cloud", Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, config) = call(
            b_addr,
            "POST",
            &format!("/api/v1/sessions/{session_id}/config"),
            Some(&admin),
            json!({"public_key": "kLpQrD2UYdT0f2kM2g0tVt3bqR3XbUsbJpCMvKgXz3E="}),
        );
        assert_eq!(status, 200, "{config}");
        if config["relay"]["udp"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "no relay allocation through B: {config}\n{}", relay.stderr());
        std::thread::sleep(Duration::from_millis(500));
    }
    stop_gateway.store(true, Ordering::SeqCst);

    // Every acknowledged write is there, and the chain verifies.
    let (status, tokens) = call(b_addr, "GET", "/api/v1/tokens", Some(&admin), Value::Null);
    assert_eq!(status, 200, "{tokens}");
    let names: HashSet<&str> = tokens.as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !names.contains(n.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let verify = bin("ferry-cloud")
        .args(["audit", "verify", "--storage", &url])
        .env("FERRY_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("audit log intact"),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    b.terminate();
}

fn hex_key(key: &SigningKey) -> String {
    key.verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
