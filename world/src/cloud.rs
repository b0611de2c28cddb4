//! The cloud and the relay in the world, and the admin's and technician's
//! API calls.

use std::{net::SocketAddr, time::Duration};

use ferry_connect::pin;
use ferry_lab::Netns;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::{Technician, World, addresses::*, api::Api, bin_path, services::poll, unix_ms};

/// A gateway the admin created, with its one-time enrolment token.
#[derive(Clone, Debug)]
pub struct GatewayRecord {
    pub id: u64,
    pub enrolment_token: String,
}

/// A user who logged in.
#[derive(Clone, Debug)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub password: String,
    pub token: String,
}

impl World {
    /// The cloud's URL as the gateway is told it: port 443 when the site
    /// lets only TCP 443 out.
    pub fn cloud_url(&self) -> String {
        let scheme = if self.options.cloud_tls { "https" } else { "http" };
        if self.options.tcp443_only {
            format!("{scheme}://{CLOUD_IP}:443")
        } else {
            format!("{scheme}://{CLOUD_IP}:{CLOUD_PORT}")
        }
    }

    /// The cloud's URL as the technician is told it: port 443 when their
    /// network lets only TCP 443 out.
    pub fn technician_cloud_url(&self) -> String {
        let scheme = if self.options.cloud_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.technician_cloud_addr())
    }

    /// Every URL of the cloud as gateways are told them: the first
    /// replica's ([`World::cloud_url`]), then the others'.
    pub fn cloud_urls(&self) -> Vec<String> {
        let others = self.cloud_replicas.iter().map(|(port, _)| format!("http://{CLOUD_IP}:{port}"));
        std::iter::once(self.cloud_url()).chain(others).collect()
    }

    /// Where API calls go: the listener of the replica in use (the first,
    /// unless [`World::use_cloud_replica`] chose another).
    pub fn cloud_addr(&self) -> SocketAddr {
        SocketAddr::new(CLOUD_IP.parse().unwrap(), self.api_port)
    }

    pub(crate) fn technician_cloud_addr(&self) -> SocketAddr {
        match self.options.technician {
            Technician::BehindNat(ferry_lab::Nat::TcpOnly443) => {
                SocketAddr::new(CLOUD_IP.parse().unwrap(), 443)
            }
            _ => self.cloud_addr(),
        }
    }

    /// How calls reach the cloud's API (plain, or HTTPS trusting its
    /// certificate); panics before the cloud started.
    pub fn api(&self) -> Api {
        self.api.clone().expect("the cloud has not started yet")
    }

    // ---------------------------------------------------------------- cloud

    /// Starts `ferry-cloud serve` in the cloud namespace on 203.0.113.10:7600
    /// (HTTPS with `cloud_tls`, else plain HTTP) over the world's data folder,
    /// and waits until it listens. Returns the one-time admin password on the
    /// first start.
    pub fn start_cloud(&mut self) -> Option<String> {
        assert!(self.cloud.is_none(), "the cloud runs already");
        let listen = format!("{CLOUD_IP}:{CLOUD_PORT}");
        let data = self.cloud_data.to_str().unwrap().to_string();
        let mut cmd = self.cloud_ns.command(bin_path("ferry-cloud"));
        if self.options.cloud_tls {
            // The self-signed certificate names the cloud's public address,
            // so that clients which check names (the API calls here, a
            // browser) accept it as well as those which pin it.
            let config = self.lab.dir().join("cloud.toml");
            std::fs::write(&config, format!("tls_names = [\"{CLOUD_IP}\"]\n")).unwrap();
            cmd.arg("--config").arg(config);
            cmd.args(["serve", "--listen", &listen, "--data-dir", &data]);
        } else {
            cmd.args(["serve", "--listen", &listen, "--data-dir", &data, "--no-tls", "--allow-plain-http"]);
        }
        if let Some(storage) = &self.options.cloud_storage {
            cmd.args(["--storage", storage]);
        }
        let mut cloud = self.cloud_ns.spawn(cmd).unwrap();
        cloud.wait_for_output("ferry-cloud listening", Duration::from_secs(30)).unwrap();
        let stdout = cloud.stdout();
        let password = stdout
            .lines()
            .find(|l| l.contains("one-time password"))
            .and_then(|l| l.rsplit(' ').next())
            .map(|p| p.trim().to_string());
        if self.options.cloud_tls {
            let listening =
                stdout.lines().find(|l| l.starts_with("ferry-cloud listening")).unwrap_or_default();
            let fingerprint = listening
                .split("certificate sha256 ")
                .nth(1)
                .map(|rest| rest.trim_end().trim_end_matches(')').to_string())
                .unwrap_or_else(|| panic!("no certificate fingerprint in {listening:?}"));
            let cert_path = self.cloud_data.join("tls").join("cert.pem");
            let cert = std::fs::read(&cert_path).unwrap_or_else(|e| panic!("{}: {e}", cert_path.display()));
            let der = ureq::tls::Certificate::from_pem(&cert).unwrap();
            assert_eq!(
                pin::format_fingerprint(&pin::fingerprint(der.der())),
                fingerprint,
                "the certificate in the data folder is the one the cloud printed"
            );
            self.api = Some(Api::https(self.cloud_addr(), &cert).unwrap());
            self.cloud_pin = Some(fingerprint);
        } else {
            self.api = Some(Api::plain(self.cloud_addr()));
        }
        self.cloud = Some(cloud);
        password
    }

    /// Starts another `ferry-cloud serve` (plain HTTP) on the world's
    /// PostgreSQL storage, on [`CLOUD_IP`]`:port`, and waits until it
    /// listens. Gateways enrolled and relays started afterwards are given
    /// every replica's address. A replica killed with
    /// [`World::kill_cloud_replica`] starts again on the same port.
    pub fn start_cloud_replica(&mut self, port: u16) {
        let storage = self.options.cloud_storage.clone().expect("replicas share a PostgreSQL storage");
        assert!(!self.options.cloud_tls, "each replica would make a certificate of its own");
        assert!(
            port != CLOUD_PORT
                && self.cloud_replicas.iter().all(|(p, running)| *p != port || running.is_none()),
            "port {port} is taken"
        );
        let listen = format!("{CLOUD_IP}:{port}");
        let data = self.lab.dir().join(format!("cloud-data-{port}"));
        let mut cmd = self.cloud_ns.command(bin_path("ferry-cloud"));
        cmd.args(["serve", "--listen", &listen, "--no-tls", "--allow-plain-http", "--storage", &storage]);
        cmd.arg("--data-dir").arg(data);
        let mut replica = self.cloud_ns.spawn(cmd).unwrap();
        replica.wait_for_output("ferry-cloud listening", Duration::from_secs(30)).unwrap();
        match self.cloud_replicas.iter_mut().find(|(p, _)| *p == port) {
            Some((_, slot)) => *slot = Some(replica),
            None => self.cloud_replicas.push((port, Some(replica))),
        }
    }

    /// The API's address at every replica: the first's, then the others'.
    pub fn cloud_replica_addrs(&self) -> Vec<SocketAddr> {
        let ip = CLOUD_IP.parse().unwrap();
        std::iter::once(CLOUD_PORT)
            .chain(self.cloud_replicas.iter().map(|(port, _)| *port))
            .map(|port| SocketAddr::new(ip, port))
            .collect()
    }

    /// API calls go to the replica on `port` from now on (the first
    /// replica's is [`CLOUD_PORT`]).
    pub fn use_cloud_replica(&mut self, port: u16) {
        self.api_port = port;
        self.api = Some(self.api().at(self.cloud_addr()));
    }

    /// SIGKILL to the replica on `port` (not the first: see
    /// [`World::kill_cloud`]).
    pub fn kill_cloud_replica(&mut self, port: u16) {
        let (_, slot) = self.cloud_replicas.iter_mut().find(|(p, _)| *p == port).expect("no such replica");
        let mut replica = slot.take().expect("the replica is not running");
        replica.signal(Signal::SIGKILL).unwrap();
        replica.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// SIGKILL, as a crash or power cut ends it.
    pub fn kill_cloud(&mut self) {
        let mut cloud = self.cloud.take().expect("the cloud is not running");
        cloud.signal(Signal::SIGKILL).unwrap();
        cloud.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// One API call from `ns` (the caller's address is that namespace's);
    /// transport failures as errors.
    pub fn try_api_from(
        &self,
        ns: &Netns,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<(u16, Value), String> {
        let mut api = self.api();
        if ns.name() == self.tech_ns.name() {
            api = api.at(self.technician_cloud_addr());
        }
        // With replicas, a call that finds its replica down (the connection
        // refused: nothing was sent) goes to the others in turn, as the
        // gateway, the relay and the client move on.
        let mut addrs = vec![api.addr];
        if !self.cloud_replicas.is_empty() {
            addrs.extend(self.cloud_replica_addrs().into_iter().filter(|a| *a != api.addr));
        }
        let (method2, path2, token) = (method.to_string(), path.to_string(), token.map(str::to_string));
        ns.run_in(move || {
            let mut last = None;
            for addr in addrs {
                match api.at(addr).call(&method2, &path2, token.as_deref(), body.clone()) {
                    Err(e) if refused(&e) => last = Some(e),
                    other => return other,
                }
            }
            Err(last.expect("at least one address"))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{method} {path}: {e}"))
    }

    /// One API call from `ns`; a transport failure panics.
    pub fn api_from(
        &self,
        ns: &Netns,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.try_api_from(ns, method, path, token, body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Logs the admin in again (an access token lasts minutes) and keeps
    /// the new token for every later call.
    pub fn renew_admin_token(&self) -> String {
        let token = self.login(&self.office_ns, "admin", ADMIN_PASSWORD).1;
        *self.admin_token.lock().unwrap() = Some(token.clone());
        token
    }

    /// An admin call from the office; logs in again once if the token was
    /// refused (for example after a cloud restart).
    pub fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let token = self.admin_token.lock().unwrap().clone().expect("admin_login first");
        let (status, answer) = self.api_from(&self.office_ns, method, path, Some(&token), body.clone());
        if status != 401 {
            return (status, answer);
        }
        let token = self.renew_admin_token();
        self.api_from(&self.office_ns, method, path, Some(&token), body)
    }

    /// Logs in; returns the user id and the access token.
    pub fn login(&self, ns: &Netns, name: &str, password: &str) -> (u64, String) {
        let (status, body) = self.api_from(
            ns,
            "POST",
            "/api/v1/auth/login",
            None,
            json!({"name": name, "password": password}),
        );
        assert_eq!(status, 200, "login of {name}: {body}");
        (body["user"]["id"].as_u64().unwrap_or_default(), body["access_token"].as_str().unwrap().to_string())
    }

    /// The first admin login: the one-time password the cloud printed,
    /// changed to [`ADMIN_PASSWORD`], then a login with that.
    pub fn admin_login(&self, one_time: &str) -> String {
        let first = self.login(&self.office_ns, "admin", one_time).1;
        let change = json!({"current_password": one_time, "new_password": ADMIN_PASSWORD});
        let (status, body) =
            self.api_from(&self.office_ns, "POST", "/api/v1/me/password", Some(&first), change);
        assert_eq!(status, 204, "{body}");
        let token = self.login(&self.office_ns, "admin", ADMIN_PASSWORD).1;
        *self.admin_token.lock().unwrap() = Some(token.clone());
        token
    }

    /// Starts the cloud for the first time and logs the admin in.
    pub fn start_cloud_and_login(&mut self) -> String {
        let one_time = self.start_cloud().expect("the first start prints a one-time password");
        self.admin_login(&one_time)
    }

    /// Registers a relay at the cloud, starts `ferry-relay run` with its
    /// token and waits until the cloud shows it online. Returns its id.
    pub fn start_relay(&mut self) -> u64 {
        self.start_relay_at(0)
    }

    /// The same for relay `index` ([`crate::RELAYS`]; 1 with
    /// [`crate::Options::second_relay`]): a registration, token, state file
    /// and certificate of its own.
    pub fn start_relay_at(&mut self, index: usize) -> u64 {
        let addrs = RELAYS[index];
        // The first relay's names as they were before there was a second.
        let suffix = if index == 0 { String::new() } else { format!("-{}", index + 1) };
        let (status, created) =
            self.admin("POST", "/api/v1/relays", json!({"name": format!("relay-lab{suffix}")}));
        assert_eq!(status, 201, "{created}");
        let id = created["relay"]["id"].as_u64().unwrap();
        let dir = self.lab.dir().to_path_buf();
        let token_file = dir.join(format!("relay{suffix}.token"));
        std::fs::write(&token_file, created["token"].as_str().unwrap()).unwrap();
        let cloud_scheme = if self.options.cloud_tls { "wss" } else { "ws" };
        let cloud_url = format!("{cloud_scheme}://{CLOUD_IP}:{CLOUD_PORT}/api/v1/control/relay");
        let replica_urls: Vec<String> = self
            .cloud_replicas
            .iter()
            .map(|(port, _)| format!("ws://{CLOUD_IP}:{port}/api/v1/control/relay"))
            .collect();
        let scheme = if self.options.relay_tls { "wss" } else { "ws" };
        let websocket_url = format!("{scheme}://{}/", addrs.websocket);
        let id_text = id.to_string();
        let (cert_file, key_file) =
            (dir.join(format!("relay{suffix}.crt")), dir.join(format!("relay{suffix}.key")));
        // A restarted relay carries on with the sessions it had (see
        // relay/src/state_file.rs).
        let state_file = dir.join(format!("relay{suffix}-state.json"));
        let interface = self.relay_if_at(index).to_string();
        let mut args = vec![
            "run",
            "--xdp",
            self.options.relay_xdp,
            "--public-ipv4",
            addrs.ip,
            "--ports",
            addrs.ports,
            "--stun",
            addrs.stun,
            "--websocket",
            addrs.websocket,
            "--websocket-url",
            &websocket_url,
            "--metrics",
            addrs.metrics,
            "--state-file",
            state_file.to_str().unwrap(),
            "--cloud-url",
            &cloud_url,
            "--cloud-relay-id",
            &id_text,
            "--cloud-token-file",
            token_file.to_str().unwrap(),
            "--log",
            "debug",
        ];
        for url in &replica_urls {
            args.extend(["--cloud-url", url]);
        }
        if let Some(cloud_pin) = &self.cloud_pin {
            args.extend(["--cloud-pin", cloud_pin]);
        }
        if self.options.relay_xdp != "off" {
            args.extend(["--interface", &interface]);
        }
        let mut relay_pin = None;
        if self.options.relay_tls {
            let certified = rcgen::generate_simple_self_signed(vec![addrs.ip.to_string()]).unwrap();
            std::fs::write(&cert_file, certified.cert.pem()).unwrap();
            std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
            relay_pin = Some(pin::format_fingerprint(&pin::fingerprint(certified.cert.der())));
            args.extend(["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap()]);
        }
        let args = args.iter().map(|a| a.to_string()).collect();
        self.set_relay_identity(index, id, args, relay_pin);
        self.run_relay_at(index);
        id
    }

    /// SIGKILL of the relay, as a crash or power cut ends it.
    pub fn kill_relay(&mut self) {
        self.kill_relay_at(0);
    }

    /// Starts the relay again after [`World::kill_relay`], with the same
    /// registration, and waits until the cloud shows it online.
    pub fn restart_relay(&mut self) {
        self.restart_relay_at(0);
    }

    /// The relay's health as the cloud shows it.
    pub fn relay_health(&self, id: u64) -> Value {
        let (status, relays) = self.admin("GET", "/api/v1/relays", Value::Null);
        assert_eq!(status, 200, "{relays}");
        relays
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["health"].clone())
            .unwrap_or_default()
    }

    /// Creates the site's gateway with the targets `plc-web` (target-a, tcp
    /// 8080) and `echo` (target-b, tcp 7000).
    pub fn create_gateway(&self, name: &str) -> GatewayRecord {
        let targets = json!([
            {"name": "plc-web", "address": TARGET_A_IP, "protocol": "tcp",
             "ports": [{"first": HTTP_PORT, "last": HTTP_PORT}]},
            {"name": "echo", "address": TARGET_B_IP, "protocol": "tcp",
             "ports": [{"first": ECHO_PORT, "last": ECHO_PORT}]},
        ]);
        self.create_gateway_with(name, "customer plant 1", targets)
    }

    /// Creates a gateway with `targets` (the API's JSON list of targets).
    pub fn create_gateway_with(&self, name: &str, site: &str, targets: Value) -> GatewayRecord {
        let body = json!({"name": name, "site": site, "targets": targets});
        let (status, created) = self.admin("POST", "/api/v1/gateways", body);
        assert_eq!(status, 201, "{created}");
        GatewayRecord {
            id: created["gateway"]["id"].as_u64().unwrap(),
            enrolment_token: created["enrolment"]["token"].as_str().unwrap().to_string(),
        }
    }

    /// The gateway as the cloud shows it (with `last_seen.online` and
    /// `last_seen.switch_on`).
    pub fn gateway_view(&self, id: u64) -> Value {
        let (status, gateway) = self.admin("GET", &format!("/api/v1/gateways/{id}"), Value::Null);
        assert_eq!(status, 200, "{gateway}");
        gateway
    }

    /// Creates a remoteConnect User with a password and logs them in from
    /// the technician's namespace.
    pub fn create_technician(&self, name: &str) -> User {
        let body = json!({"name": name, "role": "remote_connect_user", "password": TECH_PASSWORD});
        let (status, created) = self.admin("POST", "/api/v1/users", body);
        assert_eq!(status, 201, "{created}");
        let id = created["user"]["id"].as_u64().unwrap();
        let (_, token) = self.login(&self.tech_ns, name, TECH_PASSWORD);
        User { id, name: name.to_string(), password: TECH_PASSWORD.to_string(), token }
    }

    /// A technician call from the technician's namespace, logging in again
    /// once if the token was refused.
    pub fn tech_call(&self, user: &mut User, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (status, answer) = self.api_from(&self.tech_ns, method, path, Some(&user.token), body.clone());
        if status != 401 {
            return (status, answer);
        }
        user.token = self.login(&self.tech_ns, &user.name, &user.password).1;
        self.api_from(&self.tech_ns, method, path, Some(&user.token), body)
    }

    /// The admin prepares a session released to `users`.
    pub fn create_session(
        &self,
        gateway_id: u64,
        targets: &[&str],
        users: &[u64],
        max_duration_s: u64,
        approval_required: bool,
    ) -> u64 {
        let name = format!("maintenance {}", unix_ms() % 100_000);
        self.create_named_session(&name, gateway_id, targets, users, max_duration_s, approval_required)
    }

    /// The same with a name.
    pub fn create_named_session(
        &self,
        name: &str,
        gateway_id: u64,
        targets: &[&str],
        users: &[u64],
        max_duration_s: u64,
        approval_required: bool,
    ) -> u64 {
        let body = json!({
            "name": name,
            "gateway_id": gateway_id,
            "targets": targets,
            "released_to": users,
            "max_duration_s": max_duration_s,
            "approval_required": approval_required,
        });
        let (status, session) = self.admin("POST", "/api/v1/sessions", body);
        assert_eq!(status, 201, "{session}");
        session["id"].as_u64().unwrap()
    }

    /// The technician starts a session; the answer as it came (200 with the
    /// session, or a problem document).
    pub fn start_session(&self, user: &mut User, session_id: u64) -> (u16, Value) {
        self.tech_call(user, "POST", &format!("/api/v1/sessions/{session_id}/start"), Value::Null)
    }

    /// The session as the cloud shows it.
    pub fn session(&self, id: u64) -> Value {
        let (status, session) = self.admin("GET", &format!("/api/v1/sessions/{id}"), Value::Null);
        assert_eq!(status, 200, "{session}");
        session
    }

    /// The session's state (`prepared`, `waiting_for_approval`, `active`,
    /// `ended`, `expired`) and end reason (`{"by": "customer"}` ...).
    pub fn session_state(&self, id: u64) -> (String, Value) {
        let s = self.session(id);
        (s["state"].as_str().unwrap_or_default().to_string(), s["end_reason"].clone())
    }

    /// Waits until the session is in `state`; returns it.
    pub fn wait_session_state(&self, id: u64, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let reached = poll(timeout, || {
            last = self.session(id);
            last["state"] == state
        });
        assert!(reached, "session {id} did not become {state} within {timeout:?}: {last}");
        last
    }

    /// The whole audit log (every page), oldest first, filtered by the query
    /// string `filter` (for example `action=gateway.switch`; "" for all).
    pub fn audit(&self, filter: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let mut path =
                format!("/api/v1/audit?limit=1000{}{filter}", if filter.is_empty() { "" } else { "&" });
            if let Some(after) = after {
                path += &format!("&after={after}");
            }
            let (status, page) = self.admin("GET", &path, Value::Null);
            assert_eq!(status, 200, "{page}");
            entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
            match page["next"].as_u64() {
                Some(next) if Some(next) != after => after = Some(next),
                _ => break,
            }
        }
        entries
    }

    /// Waits until the cloud shows the gateway online with the switch as given.
    pub fn wait_gateway_at_cloud(&self, gateway_id: u64, switch_on: bool) {
        let mut last = Value::Null;
        let reached = poll(Duration::from_secs(30), || {
            last = self.gateway_view(gateway_id);
            last["last_seen"]["online"] == true && last["last_seen"]["switch_on"] == switch_on
        });
        // Which site's gateway this is, the cloud's id does not say: every
        // gateway's log (one, unless the world has further sites).
        let logs: Vec<String> = (0..self.gateway_count()).map(|i| self.gateway_log_at(i)).collect();
        assert!(
            reached,
            "the cloud does not show the gateway online with switch {switch_on}: {last}\n{}",
            logs.join("\n")
        );
    }
}

/// Whether a call failed before anything was sent: its replica is down.
fn refused(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// The problem type slug of an error answer (`gateway-offline` for
/// `urn:ferry:problem:gateway-offline`).
pub fn problem_type(body: &Value) -> &str {
    body["type"].as_str().and_then(|t| t.strip_prefix("urn:ferry:problem:")).unwrap_or("")
}
