//! Two `ferry-cloud serve` replicas on one PostgreSQL database, in the
//! gateway lab (see `gateway_lab.rs`): the real `ferry-gateway` behind the
//! site's NAT and the real `ferry-relay`, both given both replicas'
//! addresses, and a technician with wireguard-go and with the `ferry`
//! client (logged in with both addresses). Replica A, which all use, is
//! killed with SIGKILL under a load of writes through both replicas: the
//! gateway and the relay move to B; the running session keeps forwarding;
//! B then serves them (a session made there reaches the gateway and gets
//! the relay's allocation; its end there stops the traffic); the `ferry`
//! client starts and connects a session through B, and its end there takes
//! the tunnel down; no write either replica acknowledged is lost, and the
//! audit chain verifies.
//!
//! Run as root after `cargo build --bins`:
//! `cargo test -p ferry-tests --test cloud_replicas`.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_lab::{
    Netns,
    postgres::{Durability, Postgres},
};
use ferry_tests::{
    bin,
    client_lab::{FerryUser, Service, TECH, get_as, text},
    gateway_lab::*,
};
use ferry_world::api::{Api, raw_call};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
/// A first handshake through the relay.
const SETTLE: Duration = Duration::from_secs(30);
/// Replica B's port at the cloud's address (A's is `CLOUD_PORT`).
const REPLICA_B: u16 = 7601;
const WRITERS: usize = 4;

/// `ferry_cloud_control_connections{channel}` of the replica at `addr`:
/// how many gateways or relays that process itself holds.
/// The proxy address of `target` in a tunnel as `ferry` shows it.
fn proxy_of(tunnel: &Value, target: &str) -> String {
    let targets = tunnel["targets"].as_array().unwrap_or_else(|| panic!("no targets: {tunnel}"));
    let found = targets.iter().find(|t| t["name"] == target).unwrap_or_else(|| panic!("{target}: {tunnel}"));
    found["proxy_address"].as_str().unwrap().to_string()
}

fn connections(office: &Netns, addr: SocketAddr, channel: &str) -> f64 {
    let metrics = office.run_in(move || raw_call(addr, "GET", "/metrics", None, &Value::Null)).unwrap();
    let (status, text) = metrics.unwrap_or_else(|e| panic!("GET {addr}/metrics: {e}"));
    assert_eq!(status, 200, "{text}");
    let sample = format!("ferry_cloud_control_connections{{channel=\"{channel}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&sample))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Creates API tokens through `replicas` in turn, from the office, until
/// `stop`; returns the names a replica acknowledged (201). A request to a
/// killed replica has no answer and does not count.
fn write(
    office: &Netns,
    replicas: [SocketAddr; 2],
    token: String,
    writer: usize,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    office
        .run_in(move || {
            let mut acked = Vec::new();
            // Bounded even if the stop never came.
            let deadline = Instant::now() + Duration::from_secs(60);
            for n in 0.. {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let name = format!("w{writer}-{n}");
                let body = json!({"name": name, "scopes": ["sessions:read"]});
                match Api::plain(replicas[n % 2]).call("POST", "/api/v1/tokens", Some(&token), body) {
                    Ok((201, _)) => acked.push(name),
                    Ok((status, body)) => panic!("POST /api/v1/tokens {name}: {status} {body}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            acked
        })
        .unwrap()
}

/// Waits until plc-web answers through `tunnel`.
fn reachable(lab: &GatewayLab, tunnel: &TechTunnel, within: Duration, what: &str) {
    let page = eventually(within, || http_get(&lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, T));
    assert_eq!(
        page.unwrap_or_else(|e| panic!("{what}: {e}\n{}", tunnel.go.show("dump"))),
        PLC_PAGE,
        "{what}"
    );
}

#[test]
fn a_replica_killed_under_load_hands_the_gateway_and_the_relay_to_the_other() {
    let server = Postgres::start(Durability::Relaxed).unwrap();
    server.create_database("ferry").unwrap();
    let storage = server.url("ferry");
    let mut lab = GatewayLab::new(Options { cloud_storage: Some(storage.clone()), ..Options::default() });
    lab.start_cloud_and_login();
    lab.start_cloud_replica(REPLICA_B);
    let a = lab.cloud_addr();
    let b = SocketAddr::new(a.ip(), REPLICA_B);

    // The relay and the gateway, told A first and then B, use A.
    lab.start_relay();
    let gateway = lab.create_gateway("press line 3");
    lab.enroll(&gateway.enrolment_token);
    lab.start_gateway();
    lab.remote("on");
    lab.wait_gateway_at_cloud(gateway.id, true);
    let office = lab.office_ns.clone();
    for channel in ["gateway", "relay"] {
        assert_eq!(connections(&office, a, channel), 1.0, "the {channel} is not on A");
        assert_eq!(connections(&office, b, channel), 0.0, "the {channel} is on B");
    }

    // A session started through A, its tunnel up.
    let mut tech = lab.create_technician("tech1");
    // The technician's own client too, told both addresses, A first.
    let service = Service::start(&lab.tech_ns);
    let ferry = FerryUser::new(&lab.tech_ns, TECH, &service);
    ferry.login_replicas(&lab.cloud_urls(), &tech.name, &tech.password);
    let first = lab.create_session(gateway.id, &["plc-web"], &[tech.id], 600, false);
    let (status, started) = lab.start_session(&mut tech, first);
    assert_eq!(status, 200, "{started}");
    let tunnel = lab.technician_tunnel(&mut tech, first);
    reachable(&lab, &tunnel, SETTLE, "the first session before the kill");

    // Writes through both replicas; A is killed in the middle of them.
    let admin = lab.admin_token.lock().unwrap().clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (office, admin, stop) = (office.clone(), admin.clone(), stop.clone());
            std::thread::spawn(move || write(&office, [a, b], admin, w, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    lab.kill_cloud();
    lab.use_cloud_replica(REPLICA_B);
    // The running session does not need the cloud.
    reachable(&lab, &tunnel, T, "the first session right after the kill");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() > 2 * WRITERS, "too few writes went through: {}", acked.len());

    // Both moved to B.
    for channel in ["gateway", "relay"] {
        let moved = poll(SETTLE, || connections(&office, b, channel) == 1.0);
        assert!(moved, "the {channel} did not move to B\n{}", lab.log_tails(40));
    }
    lab.wait_gateway_at_cloud(gateway.id, true);
    reachable(&lab, &tunnel, T, "the first session after the move");

    // B serves them: a session made and started there reaches the gateway,
    // and its configuration has the relay's allocation (asked of the relay
    // on its channel to B, since A is gone).
    let second = lab.create_session(gateway.id, &["plc-web"], &[tech.id], 600, false);
    let (status, started) = lab.start_session(&mut tech, second);
    assert_eq!(status, 200, "{started}");
    let tunnel2 = lab.technician_tunnel(&mut tech, second);
    reachable(&lab, &tunnel2, SETTLE, "the session made on B");

    // Its end, on B, stops its traffic: the gateway hears it from B.
    let (status, ended) = lab.admin("POST", &format!("/api/v1/sessions/{second}/end"), json!({}));
    assert_eq!(status, 200, "{ended}");
    let stopped = poll(T, || {
        http_get(&lab.tech_ns, tunnel2.proxy("plc-web"), HTTP_PORT, Duration::from_secs(1)).is_err()
    });
    assert!(stopped, "the session ended on B still forwards\n{}", lab.gateway_log());
    reachable(&lab, &tunnel, T, "the first session after the second ended");
    // Its wireguard-go goes, and with it the tunnel address that the next
    // session on this gateway gets again.
    drop(tunnel2);

    // The `ferry` client, whose first address is gone, starts and connects
    // a session through B; its end there reaches the client's watch.
    let third = lab.create_session(gateway.id, &["plc-web"], &[tech.id], 600, false);
    let out = ferry.ferry(&["start", &third.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let connected =
        ferry.connect(third, 40).unwrap_or_else(|out| panic!("{}\n{}", text(&out), service.log()));
    let proxy = proxy_of(&connected, "plc-web");
    let page = eventually(SETTLE, || get_as(&lab.tech_ns, TECH, &proxy, HTTP_PORT));
    assert_eq!(page.unwrap_or_else(|e| panic!("{e}\n{}", service.log())), PLC_PAGE);
    let (status, ended) = lab.admin("POST", &format!("/api/v1/sessions/{third}/end"), json!({}));
    assert_eq!(status, 200, "{ended}");
    let mut now = Value::Null;
    let ended = poll(SETTLE, || {
        now = ferry.tunnel(&connected["config_id"]);
        now["ended"]["cause"] == "ended"
    });
    assert!(ended, "the client did not hear of the end on B: {now:#}\n{}", service.log());
    assert!(get_as(&lab.tech_ns, TECH, &proxy, HTTP_PORT).is_err(), "the ended tunnel still forwards");

    // Every acknowledged write is there, and the chain verifies.
    let (status, tokens) = lab.admin("GET", "/api/v1/tokens", Value::Null);
    assert_eq!(status, 200, "{tokens}");
    let names: HashSet<&str> = tokens.as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !names.contains(n.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let verify = bin("ferry-cloud").args(["audit", "verify", "--storage", &storage]).output().unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("audit log intact"),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
