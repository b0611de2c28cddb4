//! The technician's side of the demo: the `ferry` client when this build
//! has it and it can take the path asked for, otherwise a stock WireGuard
//! (Debian's wireguard-go) from the cloud's wg-quick export, as the tests'
//! technician does.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use ferry_world::{TechTunnel, User, World, problem_type};

use crate::{Path, plant, walk::Step};

/// How the technician reaches the machines.
pub enum Way {
    /// wg-quick file and wireguard-go (with `ferry-relay ws-bridge` for the
    /// WebSocket relay).
    Stock,
}

impl Way {
    /// The `ferry` client when it is built and can take `path`, else the
    /// stock fallback; with why.
    pub fn choose(path: Path) -> (Way, String) {
        match ferry_lab::workspace_bin("ferry") {
            Ok(_) => (
                Way::Stock,
                format!(
                    "the ferry client is built but cannot take the {} path yet: a stock WireGuard from the \
                     cloud's wg-quick export stands in",
                    path.name()
                ),
            ),
            Err(_) => (
                Way::Stock,
                "this build has no ferry client yet: a stock WireGuard (wireguard-go) from the cloud's \
                 wg-quick export stands in"
                    .to_string(),
            ),
        }
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
    /// Refused, with the problem's type and title.
    Refused { status: u16, kind: String, title: String },
    /// The session's state after the start (`active`, `waiting_for_approval`).
    State(String),
}

impl Technician {
    pub fn new(way: Way, user: User, path: Path) -> Technician {
        Technician { way, user, path, tunnel: None }
    }

    /// The technician starts the session.
    pub fn start(&mut self, world: &World, session: u64, step: &Step) -> Result<Started> {
        match self.way {
            Way::Stock => {
                step.command(format!("POST /api/v1/sessions/{session}/start   (as {})", self.user.name));
                let (status, answer) = world.start_session(&mut self.user, session);
                if status == 200 {
                    Ok(Started::State(answer["state"].as_str().unwrap_or_default().to_string()))
                } else {
                    Ok(Started::Refused {
                        status,
                        kind: problem_type(&answer).to_string(),
                        title: answer["title"].as_str().unwrap_or_default().to_string(),
                    })
                }
            }
        }
    }

    /// Brings the tunnel up and says how.
    pub fn connect(&mut self, world: &World, session: u64, step: &Step) -> Result<&Tunnel> {
        self.tunnel = None;
        let tunnel = match self.way {
            Way::Stock => {
                let stock = match self.path {
                    Path::Websocket => {
                        step.command(format!(
                            "POST /api/v1/sessions/{session}/config   (JSON: the relay's wss:// URL, token, pin)"
                        ));
                        let tunnel = world.technician_tunnel_websocket(&mut self.user, session);
                        step.command("ferry-relay ws-bridge --url wss://203.0.113.1:443/ --pin … --listen 127.0.0.1:51821");
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
    pub fn path_in_use(&self, world: &World) -> Result<String> {
        let tunnel = self.tunnel()?;
        match (&self.way, &tunnel.stock) {
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
            _ => {
                let _ = world;
                bail!("no tunnel to describe")
            }
        }
    }

    /// The command a person runs to see the tunnel.
    pub fn status_command(&self, world: &World) -> String {
        match (&self.way, self.tunnel.as_ref().and_then(|t| t.stock.as_ref())) {
            (Way::Stock, Some(stock)) => {
                format!("sudo ip netns exec {} wg show {}", world.tech_ns.name(), stock.go.ifname)
            }
            _ => format!("sudo ip netns exec {} ip route", world.tech_ns.name()),
        }
    }

    /// Takes the tunnel down.
    pub fn disconnect(&mut self) {
        self.tunnel = None;
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
        let mut client = tokio::time::timeout(Duration::from_secs(5), tokio_modbus::client::tcp::connect(plc))
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
