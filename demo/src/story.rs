//! The life cycle of the brief, step by step, in a world of namespaces.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use ferry_lab::{Forwarder, Nat, Process};
use ferry_world::{
    CLOUD_IP, CLOUD_PORT, HOME_DEVICE_IP, Options, PANEL_PORT, PROBE_IP, RELAY_IP, RELAY_METRICS, Server,
    Site, TARGET_A_IP, TARGET_B_IP, Technician as Net, World, eventually, http_get, panel_addr, poll,
    tcp_exchange,
};
use serde_json::{Value, json};

use crate::{
    Path,
    plant::{self, HMI_PORT, MODBUS_PORT, PLC_WEB_PORT, SETPOINT},
    technician::{Started, Technician, Way, read_plc, write_plc},
    walk::{Step, StepFailed, Style, Walk},
};

/// A first handshake through the relay, or a reconnect.
const SETTLE: Duration = Duration::from_secs(30);
const T: Duration = Duration::from_secs(5);
const HOME_PAGE: &str = "home NAS of the technician: holiday photos\n";
const GATEWAY_NAME: &str = "press line 3";
const SESSION_NAME: &str = "PLC maintenance";
/// The customer's local panel password the demo sets (12 characters at least).
const PANEL_PASSWORD: &str = "plant operator demo";
/// The setpoint the technician writes.
const NEW_SETPOINT: u16 = 1200;

/// The demo's machines, kept running for as long as the world.
struct Plant {
    _plc: Process,
    _hmi: Process,
    _home: Server,
}

pub struct Demo {
    pub path: Path,
    pub once: bool,
    pub style: Style,
}

/// Everything the walk made, for looking around afterwards.
struct Walked {
    world: World,
    _plant: Plant,
    technician: Technician,
    session: u64,
}

impl Demo {
    /// Walks the life cycle; with `once`, cleans up and returns, else stays
    /// up until the process is stopped.
    pub fn run(&self) -> Result<(), StepFailed> {
        let mut walk = Walk::new(self.style);
        let (way, why) = Way::choose();
        println!(
            "{}",
            self.style.bold(&format!("Ferry demo: the {} path ({})", self.path.name(), self.path.what()))
        );
        println!("technician: {why}");
        let walked = self.walk(&mut walk, way)?;
        println!(
            "\n{} {} steps in {:.0} s",
            self.style.green("all steps passed:"),
            walk.steps(),
            walk.elapsed_s()
        );
        if !self.once {
            self.stay_up(&mut walk, walked)?;
        }
        Ok(())
    }

    fn options(&self) -> Options {
        let nat = match self.path {
            Path::Direct => Nat::Cone,
            Path::Relay => Nat::Symmetric,
            Path::Websocket => Nat::TcpOnly443,
        };
        Options {
            tcp443_only: false,
            relay_xdp: "native",
            relay_tls: true,
            cloud_tls: true,
            technician: Net::BehindNat(nat),
            // The plant behind its cone NAT router, as the picture shows.
            site: Site::BehindNat(Nat::Cone),
            lab_services: false,
            cloud_storage: None,
            gateway_faketime: false,
            second_relay: false,
            extra_sites: Vec::new(),
        }
    }

    fn walk(&self, walk: &mut Walk, way: Way) -> Result<Walked, StepFailed> {
        let (mut world, plant) = walk.step("The world: an internet, a cloud, a relay, a plant and a home", |s| {
            let world = World::new(self.options());
            let plant = start_plant(&world)?;
            s.say(topology(&world, self.path));
            let values = in_machine_network(&world)?;
            s.check(format!("the PLC answers Modbus/TCP on the machine network: {}", plant::show_all(&values)));
            s.check("the HMI page answers on the machine network; the home NAS answers on the technician's LAN");
            s.check(format!("{} namespaces joined by veth pairs; the routers NAT with nftables", world.namespaces().len()));
            Ok((world, plant))
        })?;
        match self.lifecycle(walk, &mut world, way) {
            Ok((technician, session)) => Ok(Walked { world, _plant: plant, technician, session }),
            Err(failed) => {
                // What the daemons said last (above debug), before the
                // world goes.
                let tails = world.log_tails(400);
                let said: Vec<&str> = tails.lines().filter(|l| !l.contains("DEBUG")).collect();
                eprintln!("{}", said.join("\n"));
                Err(failed)
            }
        }
    }

    fn lifecycle(
        &self,
        walk: &mut Walk,
        world: &mut World,
        way: Way,
    ) -> Result<(Technician, u64), StepFailed> {
        walk.step("The cloud starts (HTTPS, sled) and the admin logs in", |s| {
            s.command(format!(
                "ferry-cloud serve --listen {CLOUD_IP}:{CLOUD_PORT} --data-dir {}",
                world.cloud_data.display()
            ));
            let one_time = world.start_cloud().context("the first start prints no one-time password")?;
            let pin = world.cloud_pin.clone().unwrap_or_default();
            s.check(format!(
                "listening on https://{CLOUD_IP}:{CLOUD_PORT}, self-signed certificate sha256 {pin}"
            ));
            s.check(format!(
                "first start: Administrator `admin` with a one-time password ({}…)",
                one_time.chars().take(4).collect::<String>()
            ));
            world.admin_login(&one_time);
            s.check("the admin logged in and replaced it with their own (the cloud insists)");
            Ok(())
        })?;

        walk.step("A relay registers with the cloud (XDP forwarding)", |s| {
            s.command(format!(
                "ferry-relay run --xdp native --interface {} --public-ipv4 {RELAY_IP} --cloud-url wss://{CLOUD_IP}:{CLOUD_PORT}/api/v1/control/relay --cloud-pin …",
                world.relay_if
            ));
            let id = world.start_relay();
            let health = world.relay_health(id);
            ensure!(health["online"] == true, "the cloud shows the relay offline: {health}");
            s.check(format!("the cloud lists relay {id} online"));
            let link = world.relay_ns.ip(&["link", "show", &world.relay_if]).unwrap_or_default();
            ensure!(link.contains("xdp"), "no XDP program on {}: {link}", world.relay_if);
            s.check(format!("an XDP program forwards on the relay's interface {}", world.relay_if));
            Ok(())
        })?;

        let user = walk.step("The admin creates the technician `tech` (a remoteConnect User)", |s| {
            s.command(r#"POST /api/v1/users {"name": "tech", "role": "remote_connect_user", "password": …}"#);
            let user = world.create_technician("tech");
            s.check(format!(
                "user {} created; only sessions released to them are theirs to see and start",
                user.id
            ));
            Ok(user)
        })?;
        let mut technician = Technician::new(way, user, self.path);

        let gateway = walk.step("The admin adds the gateway `press line 3` with two targets", |s| {
            let targets = json!([
                {"name": "plc", "address": TARGET_A_IP, "protocol": "tcp",
                 "ports": [{"first": MODBUS_PORT, "last": MODBUS_PORT}]},
                {"name": "hmi", "address": TARGET_B_IP, "protocol": "tcp",
                 "ports": [{"first": HMI_PORT, "last": HMI_PORT}]},
            ]);
            s.command(format!(
                r#"POST /api/v1/gateways {{"name": "{GATEWAY_NAME}", "targets": [plc {TARGET_A_IP} tcp/{MODBUS_PORT}, hmi {TARGET_B_IP} tcp/{HMI_PORT}]}}"#
            ));
            let gateway = world.create_gateway_with(GATEWAY_NAME, "Plant 1", targets);
            s.check(format!(
                "gateway {} created with a one-time enrolment token ({}…)",
                gateway.id,
                gateway.enrolment_token.chars().take(6).collect::<String>()
            ));
            Ok(gateway)
        })?;

        walk.step("The gateway enrols and runs, behind the site's NAT", |s| {
            s.command(format!(
                "ferry-gateway enroll --cloud https://{CLOUD_IP}:{CLOUD_PORT} --pin … --token {}…",
                gateway.enrolment_token.chars().take(6).collect::<String>()
            ));
            let said = world.enroll(&gateway.enrolment_token);
            s.say(said.trim_end());
            s.command("ferry-gateway run");
            world.start_gateway();
            world.wait_gateway_at_cloud(gateway.id, false);
            s.check("the cloud shows the gateway online; it made only outgoing connections");
            ensure!(!world.switch_status(), "remote maintenance is on before the customer switched it on");
            s.check("`ferry-gateway remote status`: off (off by default)");
            Ok(())
        })?;

        let session = walk.step("The admin prepares the session `PLC maintenance`", |s| {
            s.command(format!(
                r#"POST /api/v1/sessions {{"name": "{SESSION_NAME}", "targets": ["plc", "hmi"], "released_to": [tech], "max_duration_s": 1800, "approval_required": true}}"#
            ));
            let id = world.create_named_session(
                SESSION_NAME,
                gateway.id,
                &["plc", "hmi"],
                &[technician.user.id],
                1800,
                true,
            );
            let (state, _) = world.session_state(id);
            s.check(format!("session {id} is {state}: released to tech, 30 minutes at most, the customer approves"));
            Ok(id)
        })?;

        walk.step("The technician logs in and tries to start it: the customer's switch is off", |s| {
            technician.log_in(world, s)?;
            match technician.start(world, session, s)? {
                Started::SwitchOff(_) => {
                    s.check("refused: the customer's switch is off (409, urn:ferry:problem:switch-off)");
                    let (state, _) = world.session_state(session);
                    ensure!(state == "prepared", "the session is {state} after a refused start");
                    Ok(())
                }
                Started::Refused(why) => bail!("refused for another reason: {why}"),
                Started::State(state) => bail!("the session started ({state}) with the switch off"),
            }
        })?;

        walk.step("The customer switches remote maintenance on, at the gateway", |s| {
            s.command("ferry-gateway remote on");
            s.say(world.remote("on").trim_end());
            ensure!(world.switch_status(), "`remote status` does not say on");
            world.wait_gateway_at_cloud(gateway.id, true);
            s.check("`remote status`: on; the cloud shows the switch on");
            Ok(())
        })?;

        walk.step("The technician starts the session; the customer approves it", |s| {
            self.start_and_approve(world, &mut technician, session, s)
        })?;

        walk.step("The technician connects", |s| {
            self.connect(world, &mut technician, session, s)?;
            Ok(())
        })?;

        walk.step("The technician reads and writes the PLC's registers over Modbus/TCP", |s| {
            let plc = proxy_addr(&technician, "plc", MODBUS_PORT)?;
            s.command(format!(
                "modbus read holding registers 0..{} from {plc} (function 3)",
                plant::REGISTERS.len()
            ));
            let values = read_plc(world, plc, T)?;
            s.check(plant::show_all(&values));
            s.command(format!("modbus write register {SETPOINT} = {NEW_SETPOINT} to {plc} (function 6)"));
            let after = write_plc(world, plc, SETPOINT, NEW_SETPOINT)?;
            ensure!(
                after[SETPOINT as usize] == NEW_SETPOINT,
                "the setpoint reads {} after the write",
                after[SETPOINT as usize]
            );
            s.check(format!("setpoint now {NEW_SETPOINT} rpm; the machine follows it"));
            Ok(())
        })?;

        walk.step("The technician opens the HMI's page", |s| {
            let hmi = proxy_addr(&technician, "hmi", HMI_PORT)?;
            s.command(format!("curl http://{hmi}/"));
            let page =
                http_get(&world.tech_ns, &hmi.ip().to_string(), hmi.port(), T).map_err(anyhow::Error::msg)?;
            let rows = table_rows(&page);
            ensure!(page.contains("Press line 3") && !rows.is_empty(), "not the HMI's page: {page}");
            s.check(format!("HMI: {}", rows.join(", ")));
            ensure!(
                rows.iter().any(|r| r == &format!("setpoint {NEW_SETPOINT} rpm")),
                "the HMI does not show the new setpoint: {rows:?}"
            );
            s.check("it shows the new setpoint: the HMI reads the PLC on the machine network");
            Ok(())
        })?;

        walk.step("Only whitelisted ports: the PLC's web configuration stays out of reach", |s| {
            let plc = proxy_addr(&technician, "plc", MODBUS_PORT)?;
            let ip = plc.ip().to_string();
            s.command(format!("curl --max-time 3 http://{ip}:{PLC_WEB_PORT}/"));
            let answer = tcp_exchange(
                &world.tech_ns,
                &ip,
                PLC_WEB_PORT,
                b"GET / HTTP/1.0\r\n\r\n",
                Some(1),
                Duration::from_secs(3),
            );
            if let Ok(answer) = answer {
                bail!(
                    "port {PLC_WEB_PORT} answered through the tunnel: {:?}",
                    String::from_utf8_lossy(&answer)
                );
            }
            s.check(format!(
                "no answer: the gateway drops what the session does not whitelist (tcp/{MODBUS_PORT} only)"
            ));
            http_get(&world.probe_ns, TARGET_A_IP, PLC_WEB_PORT, T).map_err(|e| {
                anyhow::anyhow!("the PLC's web page does not answer on the machine network: {e}")
            })?;
            s.check(format!("(on the machine network, {PROBE_IP} does get the PLC's page: it is there)"));
            s.command(format!("curl http://{HOME_DEVICE_IP}/   (the technician's own LAN)"));
            let home = http_get(&world.tech_ns, HOME_DEVICE_IP, 80, T).map_err(anyhow::Error::msg)?;
            ensure!(home == HOME_PAGE, "{HOME_DEVICE_IP} is not the home NAS: {home:?}");
            s.check(format!(
                "{HOME_DEVICE_IP} is still the technician's home NAS, though the PLC has that address too: \
                 only the proxy addresses go into the tunnel"
            ));
            Ok(())
        })?;

        walk.step("The customer switches off: the tunnel stops at once", |s| {
            let plc = proxy_addr(&technician, "plc", MODBUS_PORT)?;
            s.command("ferry-gateway remote off");
            s.say(world.remote("off").trim_end());
            s.command(format!("modbus read holding registers from {plc}"));
            let read = read_plc(world, plc, Duration::from_secs(2));
            let Err(error) = read else { bail!("the PLC still answers through the tunnel: {read:?}") };
            s.check(format!("the read fails: {error:#}"));
            s.command("ferry-gateway sessions --json");
            let sessions = world.gateway_sessions();
            let mine = sessions.as_array().into_iter().flatten().find(|x| x["id"].as_u64() == Some(session));
            let state = mine.and_then(|x| x["state"].as_str()).unwrap_or("gone");
            let transports: Vec<&str> = mine
                .and_then(|x| x["peers"].as_array())
                .into_iter()
                .flatten()
                .map(|p| p["transport"].as_str().unwrap_or("?"))
                .collect();
            ensure!(
                state != "active" && transports.iter().all(|t| *t == "none"),
                "the gateway still has the session live: {sessions}"
            );
            s.check(match mine {
                None => format!("the gateway has let session {session} go"),
                Some(_) => format!("the gateway: session {session} {state}, its peer's transport none"),
            });
            let ended = world.wait_session_state(session, "ended", Duration::from_secs(15));
            ensure!(ended["end_reason"]["by"] == "customer", "ended, but not by the customer: {ended}");
            s.check(format!("the cloud shows session {session} ended by the customer"));
            if let Some(reason) = technician.tunnel_ended(session)? {
                s.check(format!("`ferry status`: down: {reason}"));
            }
            technician.disconnect();
            Ok(())
        })?;

        walk.step("The audit log, and its hash chain verified", |s| {
            let entries = world.audit("");
            for entry in &entries {
                s.say(audit_line(entry));
            }
            let (status, report) = world.admin("GET", "/api/v1/audit/verify", Value::Null);
            ensure!(status == 200 && report["intact"] == true, "verify answered {status}: {report}");
            s.check(format!(
                "GET /api/v1/audit/verify: intact, {} entries chained by SHA-256",
                report["entries"].as_u64().unwrap_or(entries.len() as u64)
            ));
            Ok(())
        })?;
        Ok((technician, session))
    }

    fn start_and_approve(
        &self,
        world: &World,
        technician: &mut Technician,
        session: u64,
        s: &Step,
    ) -> Result<()> {
        match technician.start(world, session, s)? {
            Started::State(state) if state == "waiting_for_approval" => {
                s.check("waiting for the customer's approval")
            }
            Started::State(state) => bail!("the session is {state}, not waiting for the customer's approval"),
            Started::SwitchOff(why) | Started::Refused(why) => bail!("refused: {why}"),
        }
        let listed = poll(Duration::from_secs(15), || {
            world
                .gateway_sessions()
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["id"].as_u64() == Some(session)))
        });
        ensure!(listed, "`ferry-gateway sessions` does not list session {session}");
        s.command(format!("ferry-gateway approve {session}"));
        s.say(world.gateway_ok(&["approve", &session.to_string()]).trim_end());
        world.wait_session_state(session, "active", Duration::from_secs(15));
        s.check(format!("session {session} is active"));
        Ok(())
    }

    fn connect(&self, world: &World, technician: &mut Technician, session: u64, s: &Step) -> Result<()> {
        let tunnel = technician.connect(world, session, s)?;
        let proxies: Vec<String> =
            tunnel.proxies.iter().map(|(name, ip)| format!("{name} at {ip}")).collect();
        s.check(format!("proxy addresses: {}", proxies.join(", ")));
        let plc = proxy_addr(technician, "plc", MODBUS_PORT)?;
        eventually(SETTLE, || read_plc(world, plc, T).map(drop).map_err(|e| format!("{e:#}")))
            .map_err(|e| anyhow::anyhow!("the PLC does not answer through the tunnel: {e}"))?;
        if self.path == Path::Direct {
            // Traffic starts on the relay and moves once the direct path is
            // verified both ways.
            let mut path = String::new();
            let direct = poll(Duration::from_secs(10), || {
                path = technician.path_in_use().unwrap_or_default();
                path.starts_with("direct")
            });
            ensure!(direct, "no direct path through two cone NATs within 10 s: {path}");
        }
        let path = technician.path_in_use()?;
        s.check(format!("path: {path}"));
        if self.path == Path::Direct && !path.starts_with("direct") {
            s.say(
                "(a direct path needs the ferry client's hole punching, which this build does not have yet)",
            );
        }
        Ok(())
    }

    /// After the walk: a live session again for looking around, then the
    /// addresses, until Ctrl-C.
    fn stay_up(&self, walk: &mut Walk, mut walked: Walked) -> Result<(), StepFailed> {
        let world = &walked.world;
        walk.part("For looking around: a live session again");
        walk.step("The customer switches on again; the technician starts, is approved, connects", |s| {
            s.command("ferry-gateway remote on");
            world.remote("on");
            self.start_and_approve(world, &mut walked.technician, walked.session, s)?;
            self.connect(world, &mut walked.technician, walked.session, s)
        })?;
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        let console = Forwarder::start(
            loopback,
            CLOUD_PORT,
            &world.cloud_ns,
            SocketAddr::new(CLOUD_IP.parse().unwrap_or(loopback), CLOUD_PORT),
        );
        // The customer's panel answers only on the machine network's side of
        // the gateway; the forwarder's connections come from a device there.
        world.set_panel_password(PANEL_PASSWORD);
        let panel = Forwarder::start(loopback, PANEL_PORT, &world.probe_ns, panel_addr());
        self.look_around(&walked, console.as_ref().ok().map(|f| f.addr), panel.as_ref().ok().map(|f| f.addr));
        loop {
            // Ctrl-C ends the process from the signal thread, which removes
            // everything first.
            std::thread::park();
        }
    }

    fn look_around(&self, walked: &Walked, console: Option<SocketAddr>, panel: Option<SocketAddr>) {
        let world = &walked.world;
        let st = self.style;
        let ns = |n: &ferry_lab::Netns| n.name().to_string();
        let exe = |name: &str| {
            ferry_lab::workspace_bin(name).map(|p| p.display().to_string()).unwrap_or(name.into())
        };
        println!(
            "\n{}",
            st.bold("The world stays up until Ctrl-C, which removes everything. To look around:")
        );
        match console {
            Some(addr) => {
                let (status, page) = world
                    .try_api_from(&world.office_ns, "GET", "/", None, Value::Null)
                    .unwrap_or((0, Value::Null));
                let _ = page;
                let there = status == 200;
                println!(
                    "  {}  https://{addr}/{}",
                    st.bold("console "),
                    if there { "" } else { "  (the web console is coming; the API is there now)" }
                );
                println!("            https://{addr}/api/v1/openapi.json, https://{addr}/metrics");
                println!(
                    "            self-signed certificate sha256 {} (your browser warns: compare)",
                    world.cloud_pin.clone().unwrap_or_default()
                );
                println!(
                    "            logins: admin / \"{}\", tech / \"{}\"",
                    ferry_world::ADMIN_PASSWORD,
                    ferry_world::TECH_PASSWORD
                );
            }
            None => println!("  {}  (no free loopback port for it)", st.bold("console ")),
        }
        match panel {
            Some(addr) => {
                println!(
                    "  {}  https://{addr}/  (the gateway's local panel, forwarded from a device on the machine \
                     network: it answers nowhere else)",
                    st.bold("panel   ")
                );
                println!(
                    "            password \"{PANEL_PASSWORD}\"; self-signed certificate sha256 {}",
                    world.panel_pin()
                );
            }
            None => println!("  {}  (no free loopback port for it)", st.bold("panel   ")),
        }
        println!("  {}  {}", st.bold("tunnel  "), walked.technician.status_command(world));
        if let (Ok(hmi), Ok(plc)) = (
            proxy_addr(&walked.technician, "hmi", HMI_PORT),
            proxy_addr(&walked.technician, "plc", MODBUS_PORT),
        ) {
            println!(
                "  {}  sudo ip netns exec {} curl -s http://{}/",
                st.bold("HMI     "),
                ns(&world.tech_ns),
                hmi.ip()
            );
            println!("  {}  Modbus/TCP at {plc} from the technician's namespace", st.bold("PLC     "));
        }
        println!(
            "  {}  sudo ip netns exec {} {} --config {} remote off|on|status|sessions",
            st.bold("switch  "),
            ns(&world.gw_ns),
            exe("ferry-gateway"),
            world.gateway_config.display()
        );
        println!(
            "  {}  sudo ip netns exec {} curl -s http://{RELAY_METRICS}/metrics   (relay)",
            st.bold("metrics "),
            ns(&world.relay_ns)
        );
        println!(
            "            sudo ip netns exec {} curl -s http://127.0.0.1:{}/metrics   (gateway)",
            ns(&world.gw_ns),
            ferry_world::GATEWAY_METRICS_PORT
        );
        println!("  {}", st.bold("namespaces"));
        for (role, n) in world.namespaces() {
            println!("            {:<24} {}", role, n.name());
        }
        println!("  logs and data: {}", world.lab.dir().display());
    }
}

/// Starts the PLC and the HMI on the machine network and a NAS on the
/// technician's home LAN.
fn start_plant(world: &World) -> Result<Plant> {
    let exe = std::env::current_exe().context("finding ferry-demo itself")?;
    let plc_modbus = format!("{TARGET_A_IP}:{MODBUS_PORT}");
    let plc_web = format!("{TARGET_A_IP}:{PLC_WEB_PORT}");
    let mut plc = world.target_a.spawn_program(&exe, &["plc", "--modbus", &plc_modbus, "--web", &plc_web])?;
    plc.wait_for_output("plc ready", T)?;
    let hmi_listen = format!("{TARGET_B_IP}:{HMI_PORT}");
    let mut hmi =
        world.target_b.spawn_program(&exe, &["hmi", "--listen", &hmi_listen, "--plc", &plc_modbus])?;
    hmi.wait_for_output("hmi ready", T)?;
    let home = Server::http(&world.home_ns, HOME_DEVICE_IP, 80, HOME_PAGE);
    Ok(Plant { _plc: plc, _hmi: hmi, _home: home })
}

/// Reads the PLC from the probe device on the machine network, and checks
/// the HMI and the home NAS answer where they are.
fn in_machine_network(world: &World) -> Result<Vec<u16>> {
    let plc: SocketAddr = format!("{TARGET_A_IP}:{MODBUS_PORT}").parse()?;
    let values = world
        .probe_ns
        .run_in(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(plant::read_registers(plc, T))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))??;
    http_get(&world.probe_ns, TARGET_B_IP, HMI_PORT, T).map_err(anyhow::Error::msg)?;
    http_get(&world.home_ns, HOME_DEVICE_IP, 80, T).map_err(anyhow::Error::msg)?;
    Ok(values)
}

fn topology(world: &World, path: Path) -> String {
    let nat = match path {
        Path::Direct => "cone NAT",
        Path::Relay => "symmetric NAT (a new port per destination)",
        Path::Websocket => "firewall: only TCP 443 out",
    };
    format!(
        "internet   documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24\n\
         cloud      {CLOUD_IP}:{CLOUD_PORT} (HTTPS)      relay {RELAY_IP} (UDP 40000-40099, STUN 3478, wss 443)\n\
         plant      NAT 198.51.100.2 (cone) -> gateway uplink 10.20.0.2 -> machine network 192.168.50.0/24\n\
         machines   PLC {TARGET_A_IP} (Modbus/TCP {MODBUS_PORT}, web {PLC_WEB_PORT})   HMI {TARGET_B_IP} (web {HMI_PORT})\n\
         home       {nat} 192.0.2.2 -> laptop {} and NAS {HOME_DEVICE_IP} on 192.168.50.0/24 (the same as the machines')",
        ferry_world::TECH_LAN_IP
    ) + &format!("\n(the technician's namespace: {})", world.tech_ns.name())
}

/// `IP:port` of a target's proxy address.
fn proxy_addr(technician: &Technician, target: &str, port: u16) -> Result<SocketAddr> {
    let ip = technician.tunnel()?.proxy(target)?;
    Ok(SocketAddr::new(ip.parse().with_context(|| format!("proxy address {ip:?}"))?, port))
}

/// The HMI table's rows as `name value`.
fn table_rows(page: &str) -> Vec<String> {
    page.split("<tr>")
        .skip(1)
        .filter_map(|row| {
            let name = row.split("<th>").nth(1)?.split("</th>").next()?;
            let value = row.split("<td>").nth(1)?.split("</td>").next()?;
            Some(format!("{name} {value}"))
        })
        .collect()
}

/// One audit entry on one line: sequence, time (UTC), who, from where,
/// what, refused or not, and what it concerned.
fn audit_line(entry: &Value) -> String {
    let text = |key: &str| entry[key].as_str().unwrap_or_default();
    let time_ms = entry["time_ms"].as_u64().unwrap_or_default();
    let seconds = (time_ms / 1000) % 86_400;
    let time = format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut about = Vec::new();
    if !text("session").is_empty() {
        about.push(format!("session {}", text("session")));
    }
    if !text("detail").is_empty() {
        about.push(text("detail").to_string());
    }
    let about = about.join(": ");
    let about: String = if about.chars().count() > 56 {
        about.chars().take(55).chain(std::iter::once('…')).collect()
    } else {
        about
    };
    let source = text("source").rsplit_once(':').map_or(text("source"), |(ip, _)| ip);
    format!(
        "{:>3} {time} {:<10} {:<15} {:<26}{}{about}",
        entry["seq"].as_u64().unwrap_or_default(),
        text("actor"),
        source,
        text("action"),
        if entry["allowed"] == false { "REFUSED " } else { "" },
    )
    .trim_end()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmi_rows_are_read_from_its_table() {
        let page =
            "<table><tr><th>speed</th><td>1450 rpm</td></tr><tr><th>state</th><td>running</td></tr></table>";
        assert_eq!(table_rows(page), vec!["speed 1450 rpm", "state running"]);
        assert!(table_rows("no table").is_empty());
    }

    #[test]
    fn audit_entries_fit_one_line() {
        let entry = json!({"seq": 7, "time_ms": 3_723_000u64, "actor": "tech", "action": "session.start",
                           "allowed": false, "source": "192.0.2.2:41000", "session": "1", "detail": "switch off"});
        assert_eq!(
            audit_line(&entry),
            "  7 01:02:03 tech       192.0.2.2       session.start             REFUSED session 1: switch off"
        );
        let long = json!({"seq": 8, "time_ms": 0, "actor": "admin", "action": "auth.login", "detail": "x".repeat(80)});
        assert!(audit_line(&long).ends_with(&format!("{}…", "x".repeat(55))), "{}", audit_line(&long));
    }
}
