//! The technician's side of the demo: the `ferry` client when this build
//! has it and it can take the path asked for, otherwise a stock WireGuard
//! (Debian's wireguard-go) from the cloud's wg-quick export, as the tests'
//! technician does.
//!
//! The technician's laptop is a namespace, and they are root in it: the
//! client's service routes the proxy addresses for the uid that connected,
//! here 0, so that the demo's own reads (and a person's `ip netns exec`)
//! go through the tunnel. On a real laptop `sudo ferry install` is the one
//! step with root.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::Output, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use ferry_world::{FerryClient, TechTunnel, User, World, client_proxies, problem_type, said};
use serde_json::Value;

use crate::{Path, plant, walk::Step};

/// How the technician reaches the machines.
pub enum Way {
    /// The `ferry` client: its service (as `ferry install` would run it)
    /// and its commands.
    Client(Client),
    /// wg-quick file and wireguard-go (with `ferry-relay ws-bridge` for the
    /// WebSocket relay).
    Stock,
}

impl Way {
    /// The `ferry` client when it is built and can take `path`, else the
    /// stock fallback; with why.
    pub fn choose() -> (Way, String) {
        match ferry_lab::workspace_bin("ferry") {
            Ok(bin) => {
                (Way::Client(Client::new(bin)), "the ferry client (its service and its commands)".to_string())
            }
            Err(_) => (
                Way::Stock,
                "this build has no ferry client: a stock WireGuard (wireguard-go) from the cloud's wg-quick \
                 export stands in"
                    .to_string(),
            ),
        }
    }
}

/// The `ferry` client on the technician's laptop: the binary, and the
/// client (service, socket, home) once the technician logged in.
pub struct Client {
    bin: PathBuf,
    ferry: Option<Box<FerryClient>>,
}

impl Client {
    fn new(bin: PathBuf) -> Client {
        Client { bin, ferry: None }
    }

    /// Starts `ferry service` in the technician's namespace.
    fn start_service(&mut self, world: &World) -> Result<()> {
        let mut ferry =
            FerryClient::new(self.bin.clone(), &world.tech_ns, &world.lab.dir().join("ferry-client"));
        ferry.start_service().map_err(anyhow::Error::msg)?;
        self.ferry = Some(Box::new(ferry));
        Ok(())
    }

    fn ferry(&self) -> Result<&FerryClient> {
        self.ferry.as_deref().ok_or_else(|| anyhow!("the ferry service is not started"))
    }

    /// `ferry ARGS` as the technician, in their namespace.
    fn run(&self, args: &[&str], stdin: &str) -> Result<Output> {
        self.ferry()?.run(args, stdin).map_err(anyhow::Error::msg)
    }

    /// The same, failing with what it said unless it succeeded; returns stdout.
    fn ok(&self, args: &[&str], stdin: &str) -> Result<String> {
        self.ferry()?.ok(args, stdin).map_err(anyhow::Error::msg)
    }

    /// `ferry status --json`.
    fn status(&self) -> Result<Vec<Value>> {
        self.ferry()?.status().map_err(anyhow::Error::msg)
    }

    /// The command a person types to run `ferry` as the technician here.
    fn command_line(&self, args: &str) -> String {
        self.ferry.as_ref().map_or_else(|| format!("ferry {args}"), |ferry| ferry.command_line(args))
    }
}

/// The technician at their laptop.
pub struct Technician {
    pub way: Way,
    pub user: User,
    pub path: Path,
    tunnel: Option<Tunnel>,
}

/// A tunnel that is up.
pub struct Tunnel {
    /// Target name -> proxy address.
    pub proxies: BTreeMap<String, String>,
    stock: Option<TechTunnel>,
}

impl Tunnel {
    pub fn proxy(&self, target: &str) -> Result<&str> {
        self.proxies.get(target).map(String::as_str).with_context(|| format!("no proxy address for {target}"))
    }
}

/// What came of a start.
pub enum Started {
    /// Refused because the customer's switch is off, with what was said.
    SwitchOff(String),
    /// Refused for another reason.
    Refused(String),
    /// The session's state after the start (`active`, `waiting_for_approval`).
    State(String),
}

impl Technician {
    pub fn new(way: Way, user: User, path: Path) -> Technician {
        Technician { way, user, path, tunnel: None }
    }

    /// The technician logs in (with the client: its service is installed,
    /// then `ferry login`).
    pub fn log_in(&mut self, world: &World, step: &Step) -> Result<()> {
        match &mut self.way {
            Way::Client(client) => {
                step.command(
                    "ferry service   (what `sudo ferry install` runs under systemd, once per laptop)",
                );
                client.start_service(world)?;
                let url = world.technician_cloud_url();
                let pin = world.cloud_pin.as_deref();
                let pin_arg = pin.map(|pin| format!(" --pin {}", short(pin))).unwrap_or_default();
                step.command(format!("ferry login --cloud {url}{pin_arg} --user {}", self.user.name));
                let said = client
                    .ferry()?
                    .login(&url, pin, &self.user.name, &self.user.password)
                    .map_err(anyhow::Error::msg)?;
                step.say(said.trim_end());
                step.command("ferry sessions");
                step.say(client.ok(&["sessions"], "")?.trim_end());
            }
            Way::Stock => {
                step.command(format!(
                    r#"POST /api/v1/auth/login {{"name": "{}", "password": …}}"#,
                    self.user.name
                ));
                world.login(&world.tech_ns, &self.user.name, &self.user.password);
            }
        }
        Ok(())
    }

    /// The technician starts the session.
    pub fn start(&mut self, world: &World, session: u64, step: &Step) -> Result<Started> {
        match &self.way {
            Way::Client(client) => {
                step.command(format!("ferry start {session}"));
                let out = client.run(&["start", &session.to_string()], "")?;
                let text = said(&out);
                step.say(&text);
                if out.status.success() {
                    return Ok(Started::State(world.session_state(session).0));
                }
                // Exit status 4: the cloud refused; why is in the problem
                // it named, which the session's state backs up.
                if out.status.code() == Some(4) && text.contains("switched off") {
                    Ok(Started::SwitchOff(text))
                } else {
                    Ok(Started::Refused(text))
                }
            }
            Way::Stock => {
                step.command(format!("POST /api/v1/sessions/{session}/start   (as {})", self.user.name));
                let (status, answer) = world.start_session(&mut self.user, session);
                let title = answer["title"].as_str().unwrap_or_default();
                match (status, problem_type(&answer)) {
                    (200, _) => Ok(Started::State(answer["state"].as_str().unwrap_or_default().to_string())),
                    (409, "switch-off") => {
                        Ok(Started::SwitchOff(format!("{status} {title} (urn:ferry:problem:switch-off)")))
                    }
                    (_, kind) => Ok(Started::Refused(format!("{status} {title} ({kind})"))),
                }
            }
        }
    }

    /// Brings the tunnel up and says how.
    pub fn connect(&mut self, world: &World, session: u64, step: &Step) -> Result<&Tunnel> {
        self.tunnel = None;
        let tunnel = match &self.way {
            Way::Client(client) => {
                step.command(format!("ferry connect {session}"));
                let said = client.ok(&["connect", &session.to_string()], "")?;
                step.say(said.trim_end());
                let mine = client
                    .ferry()?
                    .tunnel_up(session)
                    .map_err(anyhow::Error::msg)?
                    .ok_or_else(|| anyhow!("`ferry status` shows no tunnel up to session {session}"))?;
                let proxies = client_proxies(&mine);
                Tunnel { proxies, stock: None }
            }
            Way::Stock => {
                let stock = match self.path {
                    Path::Websocket => {
                        step.command(format!(
                            "POST /api/v1/sessions/{session}/config   (JSON: the relay's wss:// URL, token, pin)"
                        ));
                        let tunnel = world.technician_tunnel_websocket(&mut self.user, session);
                        step.command(format!(
                            "ferry-relay ws-bridge --url wss://{}/ --pin … --listen 127.0.0.1:51821",
                            ferry_world::RELAY_WS
                        ));
                        tunnel
                    }
                    Path::Relay | Path::Direct => {
                        step.command(format!("POST /api/v1/sessions/{session}/config/wg-quick > ferry.conf"));
                        world.technician_tunnel(&mut self.user, session)
                    }
                };
                step.command(format!("wireguard-go {0} && wg setconf {0} ferry.conf", stock.go.ifname));
                Tunnel { proxies: stock.proxies.clone(), stock: Some(stock) }
            }
        };
        Ok(self.tunnel.insert(tunnel))
    }

    pub fn tunnel(&self) -> Result<&Tunnel> {
        self.tunnel.as_ref().ok_or_else(|| anyhow!("the technician has no tunnel up"))
    }

    /// The path the datagrams take now, as a person would say it.
    pub fn path_in_use(&self) -> Result<String> {
        let tunnel = self.tunnel()?;
        match (&self.way, &tunnel.stock) {
            (Way::Client(client), _) => {
                let status = client.status()?;
                let mine = status
                    .iter()
                    .find(|t| t["ended"].is_null())
                    .ok_or_else(|| anyhow!("`ferry status` shows no tunnel up"))?;
                let path = match mine["path"].as_str() {
                    Some("direct") => "direct",
                    Some("relay_udp") => "relay (UDP)",
                    Some("relay_websocket") => "relay (WebSocket)",
                    other => other.unwrap_or("?"),
                };
                let endpoint = mine["peer_endpoint"].as_str().unwrap_or("?");
                let handshake =
                    if mine["last_handshake_ms"].is_u64() { "handshake done" } else { "no handshake yet" };
                Ok(format!("{path}: {endpoint}; {handshake} (`ferry status`)"))
            }
            (Way::Stock, Some(stock)) => {
                let endpoints = stock.go.show("endpoints");
                let endpoint = endpoints.split_whitespace().nth(1).unwrap_or("(none)").to_string();
                let handshake = ferry_world::wg::latest_handshake(&stock.go.show("latest-handshakes"));
                let shook = if handshake > 0 { "handshake done" } else { "no handshake yet" };
                Ok(match stock.bridge {
                    Some(_) => format!(
                        "relay (WebSocket): wss://{} through the bridge on {endpoint}; {shook}",
                        ferry_world::RELAY_WS
                    ),
                    None if endpoint.starts_with(ferry_world::RELAY_IP) => {
                        format!("relay (UDP): the relay's allocation {endpoint}; {shook}")
                    }
                    None => format!("direct: {endpoint}; {shook}"),
                })
            }
            (Way::Stock, None) => bail!("no tunnel to describe"),
        }
    }

    /// After the customer switched off: what the client says about the
    /// tunnel (it goes down with the reason), if it is the client.
    pub fn tunnel_ended(&self, session: u64) -> Result<Option<String>> {
        let Way::Client(client) = &self.way else { return Ok(None) };
        let mut reason = None;
        ferry_world::poll(Duration::from_secs(10), || {
            reason = client.ferry().ok().and_then(|ferry| ferry.tunnel_ended(session).ok().flatten());
            reason.is_some()
        });
        reason.map(Some).ok_or_else(|| anyhow!("`ferry status` still shows the tunnel up"))
    }

    /// The command a person runs to see the tunnel.
    pub fn status_command(&self, world: &World) -> String {
        match (&self.way, self.tunnel.as_ref().and_then(|t| t.stock.as_ref())) {
            (Way::Client(client), _) => client.command_line("status"),
            (Way::Stock, Some(stock)) => {
                format!("sudo ip netns exec {} wg show {}", world.tech_ns.name(), stock.go.ifname)
            }
            (Way::Stock, None) => format!("sudo ip netns exec {} ip route", world.tech_ns.name()),
        }
    }

    /// Forgets the tunnel (the customer ended it).
    pub fn disconnect(&mut self) {
        self.tunnel = None;
    }
}

/// `AB:CD:…:EF` for a long fingerprint.
pub fn short(pin: &str) -> String {
    match (pin.get(..5), pin.get(pin.len().saturating_sub(2)..)) {
        (Some(head), Some(tail)) if pin.len() > 12 => format!("{head}…{tail}"),
        _ => pin.to_string(),
    }
}

/// Reads every register of the PLC from the technician's namespace.
pub fn read_plc(world: &World, plc: SocketAddr, timeout: Duration) -> Result<Vec<u16>> {
    in_namespace(world, move || plant::read_registers(plc, timeout))
}

/// Writes one register (function 6) and reads all back, over one connection.
pub fn write_plc(world: &World, plc: SocketAddr, address: u16, value: u16) -> Result<Vec<u16>> {
    in_namespace(world, move || async move {
        use tokio_modbus::client::Writer as _;
        let mut client =
            tokio::time::timeout(Duration::from_secs(5), tokio_modbus::client::tcp::connect(plc))
                .await
                .context("no connection within 5 s")?
                .context("connecting")?;
        client
            .write_single_register(address, value)
            .await
            .context("function 6")?
            .map_err(|code| anyhow!("the PLC answered with exception {code:?}"))?;
        plant::read_with(&mut client).await
    })
}

/// Runs `f` on a runtime whose sockets live in the technician's namespace.
fn in_namespace<F, Fut, T>(world: &World, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send + 'static,
{
    world
        .tech_ns
        .run_in(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(f())
        })
        .map_err(|e| anyhow!("{e}"))?
}
