//! The workload: each technician's session life cycle, one seeded step at
//! a time, and the checks that traffic stops when a session ends.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ferry_lab::Netns;
use ferry_world::{
    ECHO_PORT, EchoLoop, FerryClient, HTTP_PORT, OTHER_ECHO_PORT, OTHER_HTTP_PORT, PLC_PAGE, User,
    client_proxies, http_get, parse_targets, said, tcp_exchange,
    wg::{Keys, WireguardGo},
};
use serde_json::{Value, json};

use crate::{
    clients::CLIENT_LEARNS,
    ping,
    recovery::RELAY_RECOVERY,
    soak::{Outcome, Soak},
    udp::{self, UDP_ECHO_PORT, UDP_OTHER_PORT},
};

/// The bound docs/gateway.md promises for the switch and what the tests
/// check: no traffic of an ended session later than 1 s after its end.
const STOP_BOUND: Duration = Duration::from_secs(1);
/// How long an end at the cloud may take to reach the gateway: past the
/// gateway's keepalive (10 s) and silence limit (35 s) after a NAT lost the
/// control channel's mapping, with room to reconnect.
const GATEWAY_LEARNS: Duration = Duration::from_secs(60);
/// How late past the switch off a session's end time may be for its expiry
/// to count as its end (the cloud's expiry timer fires at its own pace).
const EXPIRY_SLACK_MS: u64 = 1000;
/// The gateway's entries every session whitelists.
const TARGETS: [&str; 4] = ["plc-web", "echo", "udp-echo", "plc-ping"];
/// A short session's maximum duration, for expiry.
pub const SHORT_SESSION_S: u64 = 60;

pub struct Tech {
    pub user: User,
    pub ns: Netns,
    /// Where the laptop sits ("public", "behind a symmetric NAT" ...).
    pub place: &'static str,
    /// The `ferry` client on this technician's laptop: its service runs
    /// the whole time (but for its kills), logged in as the user.
    pub client: FerryClient,
    pub live: Option<Live>,
}

/// Which client a session's tunnel uses, chosen per session from the
/// seed's client stream (see [`crate::soak::CLIENT_STREAM`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Ferry's own client: `ferry connect`, its service owns the tunnel.
    Ferry,
    /// The cloud's wg-quick export with a stock wireguard-go.
    Stock,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ferry => "the ferry client",
            Kind::Stock => "wireguard-go (wg-quick file)",
        }
    }
}

/// The share of sessions that use the `ferry` client, in percent.
const FERRY_SHARE: u64 = 60;

/// A session of a technician's that has not ended (as far as the workload
/// knows).
pub struct Live {
    pub id: u64,
    /// Its gateway (by index; see crate::gateways).
    pub gateway: usize,
    pub short: bool,
    pub approval: bool,
    pub approved: bool,
    pub kind: Kind,
    pub tunnel: Option<Tunnel>,
    /// When its duration began: its start, or its approval.
    pub started: Instant,
}

pub struct Tunnel {
    pub proxies: BTreeMap<String, String>,
    pub client: TunnelClient,
    /// The relay of its configuration (by index; see crate::relays), if
    /// the cloud gave it one.
    pub relay: Option<usize>,
    /// The path its traffic took at its first use that worked: "direct" or
    /// "relayed" (see [`Soak::record_path`]).
    pub path: Option<&'static str>,
}

/// What carries a tunnel.
pub enum TunnelClient {
    /// A stock wireguard-go from the exported file.
    Stock {
        /// Dropping it takes the tunnel down.
        go: WireguardGo,
        /// The exported file and the key, to start the client again.
        wg_quick: String,
        private_key: String,
    },
    /// The `ferry` client's tunnel, configuration `config_id`: the service
    /// takes it down when the session ends at the cloud or expires.
    Ferry { config_id: u64 },
}

impl Tech {
    pub fn new(user: User, ns: Netns, place: &'static str, client: FerryClient) -> Tech {
        Tech { user, ns, place, client, live: None }
    }
}

/// How a session ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Admin,
    Technician,
    /// `ferry-gateway end ID` at the site.
    Customer,
    /// `ferry-gateway remote off` (and on again).
    Switch,
    Expiry,
    /// The admin disables the technician's user (`PATCH /api/v1/users/ID`),
    /// which ends the sessions they started; enabled again afterwards.
    Disabled,
}

impl Soak {
    /// One step for technician `t`: the next move of their session's life
    /// cycle, chosen by the seed.
    pub fn step(&mut self, t: usize) -> Outcome {
        let Some(live) = &self.techs[t].live else {
            return self.prepare_and_start(t);
        };
        // Before the expiry: a session waiting for its approval has no
        // duration running yet (the cloud's expiry is then the approval's
        // 15 minutes).
        if live.approval && !live.approved {
            return self.approve(t);
        }
        // A short session near its end: wait for the expiry rather than
        // race it.
        if live.short
            && live.started.elapsed() + Duration::from_secs(8) > Duration::from_secs(SHORT_SESSION_S)
        {
            return self.end_session(t, End::Expiry);
        }
        if live.tunnel.is_none() {
            return self.bring_up_tunnel(t);
        }
        let short = live.short;
        match self.rng.below(10) {
            0..=4 if self.extra.chance(15) => self.restart_client(t),
            0..=4 => self.use_session(t),
            5 if self.extra.chance(50) => self.end_session(t, End::Disabled),
            5 => self.end_session(t, End::Admin),
            6 => self.end_session(t, End::Technician),
            7 => self.end_session(t, End::Customer),
            8 => self.end_session(t, End::Switch),
            _ if short => self.end_session(t, End::Expiry),
            _ => self.use_session(t),
        }
    }

    fn tech_call(&mut self, t: usize, method: &str, path: &str, body: Value) -> Outcome<(u16, Value)> {
        let ns = self.techs[t].ns.clone();
        let user = &mut self.techs[t].user;
        let world = &self.world;
        let call = |token: &str| world.try_api_from(&ns, method, path, Some(token), body.clone());
        let (status, answer) = call(&user.token)?;
        if status != 401 {
            return Ok((status, answer));
        }
        user.token = world.login(&ns, &user.name, &user.password).1;
        call(&user.token)
    }

    fn prepare_and_start(&mut self, t: usize) -> Outcome {
        let short = self.rng.chance(30);
        let approval = self.rng.chance(30);
        let kind = if self.kinds.chance(FERRY_SHARE) { Kind::Ferry } else { Kind::Stock };
        let g = self.pick_gateway();
        let max = if short { SHORT_SESSION_S } else { 3600 };
        let name = format!("soak {} {}", self.techs[t].user.name, self.stats.sessions + 1);
        let user_id = self.techs[t].user.id;
        let asked = Instant::now();
        let gateway_id = self.gateways[g].id;
        let id = self.world.create_named_session(&name, gateway_id, &TARGETS, &[user_id], max, approval);
        self.transition(id, "session.create", false);
        self.stats.sessions += 1;
        *self.stats.sessions_by_gateway.entry(g).or_default() += 1;
        *self.stats.sessions_by_kind.entry(kind.name()).or_default() += 1;
        let (status, session) =
            self.tech_call(t, "POST", &format!("/api/v1/sessions/{id}/start"), Value::Null)?;
        let who = self.techs[t].user.name.clone();
        if status != 200 {
            // Refused (the gateway still reconnecting after a fault, say):
            // the session stays prepared and is ended by the admin.
            self.event(format!("{who}: session {id} prepared, start refused: {status} {}", session["type"]));
            self.stats.starts_refused += 1;
            let (status, body) = self.world.admin("POST", &format!("/api/v1/sessions/{id}/end"), Value::Null);
            if status == 200 {
                self.transition(id, "session.end", false);
            } else {
                return Err(format!("ending prepared session {id}: {status} {body}"));
            }
            return Ok(());
        }
        self.transition(id, "session.start", false);
        if !approval {
            self.gateways[g].machine_net.history.live(id, &TARGETS, asked);
        }
        if let Some(rank) = session["state"].as_str().and_then(crate::acked::rank) {
            self.acked.session(id, crate::acked::Want::AtLeast(rank));
        }
        self.event(format!(
            "{who}: session {id} on {} prepared (max {max}s, approval {approval}, {}) and started: {}",
            Self::gateway_label(g),
            kind.name(),
            session["state"]
        ));
        self.techs[t].live = Some(Live {
            id,
            gateway: g,
            short,
            approval,
            approved: !approval,
            kind,
            tunnel: None,
            started: Instant::now(),
        });
        Ok(())
    }

    fn approve(&mut self, t: usize) -> Outcome {
        let (id, g) = (self.live(t).id, self.live(t).gateway);
        let id_text = id.to_string();
        let mut last = String::new();
        // From the first try on, the gateway may let its traffic through.
        self.gateways[g].machine_net.history.live(id, &TARGETS, Instant::now());
        let world = &self.world;
        let done = ferry_world::poll(Duration::from_secs(20), || {
            let out = world.gateway_cmd_at(g, &["approve", &id_text]);
            last =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            out.status.success()
        });
        if !done {
            // The gateway may have lost it (a kill before it stored it):
            // not an invariant, the session ends by the admin.
            self.event(format!("session {id}: approve failed: {}", last.trim()));
            return self.end_session(t, End::Admin);
        }
        self.transition(id, "session.approve", false);
        self.live_mut(t).approved = true;
        // The session's duration starts at its approval.
        self.live_mut(t).started = Instant::now();
        // The approval reaches the cloud through the gateway's event queue,
        // which survives kills: the session becomes active there.
        let world = &self.world;
        let mut state = Value::Null;
        let active = ferry_world::poll(GATEWAY_LEARNS, || {
            state = world.session(id)["state"].clone();
            state == "active"
        });
        self.stats.checks += 1;
        if !active {
            return Err(format!(
                "session {id} approved at the gateway, still {state} at the cloud {GATEWAY_LEARNS:?} later"
            ));
        }
        self.event(format!("session {id} approved at the gateway, active at the cloud"));
        Ok(())
    }

    fn bring_up_tunnel(&mut self, t: usize) -> Outcome {
        if self.live(t).kind == Kind::Ferry {
            return self.connect_client(t);
        }
        let id = self.live(t).id;
        let ns = self.techs[t].ns.clone();
        let keys = Keys::generate(&ns);
        let path = format!("/api/v1/sessions/{id}/config/wg-quick");
        let api = self.world.api();
        let token = {
            // A call first so that an expired token is renewed.
            self.tech_call(t, "GET", &format!("/api/v1/sessions/{id}"), Value::Null)?;
            self.techs[t].user.token.clone()
        };
        let body = json!({"public_key": keys.public});
        let (status, text) = ns
            .run_in(move || api.raw("POST", &path, Some(&token), &body).map_err(|e| e.to_string()))
            .map_err(|e| e.to_string())??;
        if status != 200 {
            self.event(format!("session {id}: no wg-quick file: {status} {text}"));
            return self.end_session(t, End::Admin);
        }
        let go = WireguardGo::from_wg_quick(&self.world.lab, &ns, &text, &keys.private);
        let proxies = parse_targets(&text);
        let relay = self.relay_of_wg_quick(&text);
        self.count_relay(relay);
        self.live_mut(t).tunnel = Some(Tunnel {
            proxies,
            client: TunnelClient::Stock { go, wg_quick: text, private_key: keys.private },
            relay,
            path: None,
        });
        self.event(format!(
            "session {id}: wireguard-go up from the wg-quick file (endpoint on {})",
            Self::relay_label(relay)
        ));
        self.use_session(t)
    }

    /// `ferry connect` for technician `t`'s session: the service makes the
    /// key pair and the TUN device, the cloud the configuration. Faults run
    /// between steps and the system settled after the last one, so a
    /// connect that fails is a breach, but for a session whose time ran out
    /// meanwhile (a short one near its end): that one ends as expired.
    fn connect_client(&mut self, t: usize) -> Outcome {
        let id = self.live(t).id;
        let tunnel = match self.techs[t].client.connect(id, 20) {
            Ok(tunnel) => tunnel,
            Err(e) => {
                self.stats.connects_failed += 1;
                self.event(format!("session {id}: ferry connect failed: {e}"));
                return self.expired_or(t, format!("session {id}: `ferry connect` failed: {e}"));
            }
        };
        if tunnel["last_handshake_ms"].is_null() {
            // `--wait` gives up without an error: the soak carries on, and
            // the use that follows says whether the tunnel works.
            self.stats.connects_without_handshake += 1;
        }
        let (config_id, proxies) = ferry_tunnel(id, &tunnel)?;
        let relay = self.relay_of_config(id, config_id);
        self.count_relay(relay);
        self.event(format!(
            "session {id}: ferry connect: {} (configured with {})",
            client_line(&tunnel),
            Self::relay_label(relay)
        ));
        self.live_mut(t).tunnel =
            Some(Tunnel { proxies, client: TunnelClient::Ferry { config_id }, relay, path: None });
        self.use_session(t)
    }

    /// After a step on technician `t`'s session failed with `breach`: a
    /// session whose time ran out at the cloud ends as expired (its traffic
    /// checked to stop); otherwise the breach, with the cloud's state.
    fn expired_or(&mut self, t: usize, breach: String) -> Outcome {
        let id = self.live(t).id;
        let session = self.world.session(id);
        let ran_out = session["expires_ms"].as_u64().is_some_and(|at| at <= unix_ms());
        if session["state"] == "expired" && ran_out {
            self.event(format!("session {id}: its time ran out meanwhile"));
            return self.end_session(t, End::Expiry);
        }
        Err(format!("{breach} (the session at the cloud: {} {})", session["state"], session["end_reason"]))
    }

    /// Traffic to both whitelisted targets, and attempts at the ports of
    /// the same targets that no session whitelists (which must not answer).
    fn use_session(&mut self, t: usize) -> Outcome {
        let live = self.live(t);
        let (id, live_kind, g) = (live.id, live.kind, live.gateway);
        let tunnel = live.tunnel.as_ref().ok_or_else(|| format!("session {id}: used without a tunnel"))?;
        let web = proxy(id, &tunnel.proxies, "plc-web")?;
        let echo = proxy(id, &tunnel.proxies, "echo")?;
        let udp_echo = proxy(id, &tunnel.proxies, "udp-echo")?;
        let plc_ping = proxy(id, &tunnel.proxies, "plc-ping")?;
        let ns = self.techs[t].ns.clone();
        let size = self.rng.between(1, 256) as usize * 1024;
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let timeout = Duration::from_secs(10);
        let web_ok =
            ferry_world::eventually(timeout, || http_get(&ns, &web, HTTP_PORT, Duration::from_secs(5)))
                .is_ok_and(|page| page == PLC_PAGE);
        let echo_result = tcp_exchange(&ns, &echo, ECHO_PORT, &payload, Some(size), timeout);
        let echo_ok = echo_result.as_ref().is_ok_and(|answer| *answer == payload);
        let datagrams: Vec<Vec<u8>> = (0..self.extra.between(4, 32))
            .map(|i| {
                let len = self.extra.between(1, 1200) as usize;
                (0..len).map(|j| ((i as usize + j) % 251) as u8).collect()
            })
            .collect();
        let udp_echoed = udp::exchange(&ns, &udp_echo, UDP_ECHO_PORT, &datagrams, Duration::from_secs(1))?;
        let udp_ok = udp_echoed == datagrams.len();
        let ping_ok = ping::answered(&ns, &plc_ping, Duration::from_secs(5));
        self.stats.pings += u64::from(ping_ok);
        // ICMP through the proxy addresses of entries that allow only TCP
        // (target-a's web, target-b's echo): no answer, and target-b's
        // counter stays at 0 (checked after every step).
        for ip in [&web, &echo] {
            self.stats.checks += 1;
            self.stats.forbidden_attempts += 1;
            if ping::answered(&ns, ip, Duration::from_secs(1)) {
                return Err(format!("session {id}: ping {ip}, whose entry allows only TCP, answered"));
            }
        }
        self.stats.udp_echoed += udp_echoed as u64;
        self.stats.bytes += 2 * datagrams.iter().filter(|_| udp_ok).map(|d| d.len() as u64).sum::<u64>();
        // UDP at the port no session whitelists, through both proxy
        // addresses of target-b: no answer, and the counter stays at 0
        // (checked after every step).
        for ip in [&udp_echo, &echo] {
            self.stats.checks += 1;
            self.stats.forbidden_attempts += 1;
            if udp::attempt(&ns, ip, UDP_OTHER_PORT, 3, Duration::from_millis(500))? {
                return Err(format!("session {id}: udp {ip}:{UDP_OTHER_PORT}, not whitelisted, answered"));
            }
        }
        if web_ok {
            self.stats.bytes += PLC_PAGE.len() as u64;
        }
        if echo_ok {
            self.stats.bytes += 2 * size as u64;
        }
        for (ip, port) in [(&web, OTHER_HTTP_PORT), (&echo, OTHER_ECHO_PORT)] {
            self.stats.checks += 1;
            self.stats.forbidden_attempts += 1;
            if let Ok(answer) =
                tcp_exchange(&ns, ip, port, b"GET / HTTP/1.0\r\n\r\n", Some(1), Duration::from_secs(2))
            {
                return Err(format!(
                    "session {id}: {ip}:{port}, not whitelisted, answered: {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        if web_ok && echo_ok && udp_ok && ping_ok {
            self.stats.uses_ok += 1;
            *self.stats.uses_ok_by_kind.entry(live_kind.name()).or_default() += 1;
            self.record_path(t)?;
        } else {
            self.stats.uses_failed += 1;
            let show = self.tunnel_state(t);
            let at_gateway = self
                .world
                .gateway_sessions_at(g)
                .as_array()
                .and_then(|all| all.iter().find(|s| s["id"] == id).map(|s| s["peers"].to_string()))
                .unwrap_or_else(|| "unknown to the gateway".into());
            self.event(format!("session {id}: the technician's {show}; the gateway's peers: {at_gateway}"));
        }
        self.event(format!(
            "session {id}: used: plc-web {}, ping {}, udp echo {udp_echoed}/{}, echo {} KiB {}, forbidden ports silent",
            if web_ok { "ok" } else { "FAILED" },
            if ping_ok { "ok" } else { "FAILED" },
            datagrams.len(),
            size / 1024,
            match &echo_result {
                Ok(_) if echo_ok => "ok".to_string(),
                Ok(_) => "garbled".to_string(),
                Err(e) => format!("failed ({e})"),
            }
        ));
        Ok(())
    }

    /// Ends technician `t`'s session (or, for `Admin`, any session stage)
    /// and checks that an echo loop through it stops within the bound.
    fn end_session(&mut self, t: usize, how: End) -> Outcome {
        let live = self.live(t);
        let (id, g) = (live.id, live.gateway);
        let live_kind = live.kind;
        let config_id = match live.tunnel.as_ref().map(|tunnel| &tunnel.client) {
            Some(TunnelClient::Ferry { config_id }) => Some(*config_id),
            _ => None,
        };
        let echo_proxy = live.tunnel.as_ref().and_then(|tunnel| tunnel.proxies.get("echo").cloned());
        let ns = self.techs[t].ns.clone();
        let echo_loop =
            echo_proxy.and_then(|proxy| EchoLoop::start(&ns, &proxy, ECHO_PORT, Duration::from_secs(5)).ok());
        // Sessions of the other technician's with the `ferry` client that
        // the switch ended: (technician, session, configuration).
        let mut others_ferry = Vec::new();
        let ended_at = match how {
            End::Admin => {
                let (status, body) =
                    self.world.admin("POST", &format!("/api/v1/sessions/{id}/end"), Value::Null);
                let at = Instant::now();
                if status == 200 {
                    self.transition(id, "session.end", false);
                } else if self.world.session(id)["state"] == "expired" {
                    // Its time ran out first.
                    self.transition(id, "session.expire", false);
                } else {
                    return Err(format!("the admin ending session {id}: {status} {body}"));
                }
                at
            }
            End::Technician => {
                let (status, body) =
                    self.tech_call(t, "POST", &format!("/api/v1/sessions/{id}/end"), Value::Null)?;
                let at = Instant::now();
                if status == 200 {
                    self.transition(id, "session.end", false);
                } else if self.world.session(id)["state"] == "expired" {
                    // Its time ran out first.
                    self.transition(id, "session.expire", false);
                } else {
                    return Err(format!("the technician ending session {id}: {status} {body}"));
                }
                at
            }
            End::Disabled => {
                let user_id = self.techs[t].user.id;
                let (status, body) =
                    self.world.admin("PATCH", &format!("/api/v1/users/{user_id}"), json!({"disabled": true}));
                let at = Instant::now();
                if status != 200 {
                    return Err(format!("disabling user {user_id}: {status} {body}"));
                }
                self.acked.user(user_id, true);
                // Disabling ends the sessions the user started, at once.
                let session = self.world.session(id);
                self.stats.checks += 1;
                match session["state"].as_str() {
                    Some("ended") => self.transition(id, "session.end", false),
                    Some("expired") => self.transition(id, "session.expire", false),
                    _ => return Err(format!("user {user_id} disabled, yet session {id} is live: {session}")),
                }
                at
            }
            End::Customer => {
                let out = self.world.gateway_cmd_at(g, &["end", &id.to_string()]);
                let at = Instant::now();
                if !out.status.success() {
                    // Not known at the gateway (lost across a kill): the
                    // admin ends it at the cloud instead.
                    self.event(format!(
                        "session {id}: `ferry-gateway end` failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                    return self.end_session(t, End::Admin);
                }
                self.transition(id, "session.end", true);
                at
            }
            End::Switch => {
                // Before the flip: a session the cloud shows expired must
                // have had its end time by then, not later.
                let off_ms = unix_ms();
                // Sessions on the other gateways, which the switch must
                // leave alone: those carrying traffic now answer after it.
                let elsewhere: Vec<_> = self.carrying().into_iter().filter(|c| c.gateway != g).collect();
                self.remote(g, "off")?;
                let at = Instant::now();
                *self.stats.switch_offs.entry(g).or_default() += 1;
                self.gateways[g].machine_net.history.switch_off(at);
                self.gateways[g].switch_on = false;
                // The switch ends every session of the gateway, but for
                // one whose time ran out first (another technician's short
                // session, which no step of theirs waited for): the cloud's
                // final state says which transition it made.
                for other in 0..self.techs.len() {
                    if self.techs[other].live.as_ref().is_some_and(|live| live.gateway != g) {
                        continue;
                    }
                    if let Some(live) = self.techs[other].live.take() {
                        self.gateways[g].machine_net.history.ended(live.id, at);
                        if let (true, Some(TunnelClient::Ferry { config_id })) =
                            (other != t, live.tunnel.as_ref().map(|tunnel| &tunnel.client))
                        {
                            others_ferry.push((other, live.id, *config_id));
                        }
                        let action = self.final_transition(live.id, off_ms)?;
                        self.transition(live.id, action, false);
                    }
                }
                self.check_other_sites(&elsewhere, &format!("after gateway {}'s switch went off", g + 1))?;
                self.techs[t].live = Some(Live {
                    id,
                    gateway: g,
                    short: false,
                    approval: false,
                    approved: true,
                    kind: live_kind,
                    tunnel: None,
                    started: Instant::now(),
                });
                at
            }
            End::Expiry => {
                let session = self.world.session(id);
                let expires_ms = session["expires_ms"].as_u64().unwrap_or(0);
                let now_ms = unix_ms();
                let wait = Duration::from_millis(expires_ms.saturating_sub(now_ms));
                self.event(format!("session {id}: waiting {:.1}s for its expiry", wait.as_secs_f64()));
                std::thread::sleep(wait);
                let ended = ferry_world::poll(Duration::from_secs(10), || {
                    self.world.session(id)["state"] == "expired"
                });
                if !ended {
                    return Err(format!(
                        "session {id} is not expired 10 s after its end time: {}",
                        self.world.session(id)
                    ));
                }
                self.transition(id, "session.expire", false);
                Instant::now() - Duration::from_millis(unix_ms().saturating_sub(expires_ms))
            }
        };
        // An end at the cloud reaches the gateway over its control channel,
        // for which the docs promise no bound; the bound then counts from
        // when the gateway dropped the session, and the lag is logged.
        let ended_at = if matches!(how, End::Admin | End::Technician | End::Disabled) {
            let world = &self.world;
            let gone = ferry_world::poll(GATEWAY_LEARNS, || {
                !world.gateway_sessions_at(g).as_array().is_some_and(|all| all.iter().any(|s| s["id"] == id))
            });
            self.stats.checks += 1;
            if !gone {
                return Err(format!(
                    "session {id} ended at the cloud ({}), still listed at the gateway {GATEWAY_LEARNS:?} later",
                    how_name(how)
                ));
            }
            let now = Instant::now();
            self.event(format!(
                "session {id}: the gateway dropped it {:.1}s after the end at the cloud",
                (now - ended_at).as_secs_f64()
            ));
            now
        } else {
            ended_at
        };
        self.gateways[g].machine_net.history.ended(id, ended_at);
        std::thread::sleep(STOP_BOUND + Duration::from_millis(1500));
        self.stats.checks += 1;
        let late = echo_loop.as_ref().map_or(0, |e| e.answers_after(ended_at + STOP_BOUND));
        let checked = if echo_loop.is_some() { "echo loop checked" } else { "no echo loop running" };
        drop(echo_loop);
        self.techs[t].live = None;
        self.stats.ends.entry(how_name(how)).and_modify(|n| *n += 1).or_insert(1);
        if late > 0 {
            return Err(format!(
                "session {id} ended ({}), yet {late} echo answers arrived more than {STOP_BOUND:?} later",
                how_name(how)
            ));
        }
        self.event(format!("session {id}: ended ({}), traffic stopped ({checked})", how_name(how)));
        if let Some(config_id) = config_id {
            self.check_client_tunnel_down(t, id, config_id)?;
        }
        // The switch ended the other technician's session too.
        for (other, other_id, other_config) in others_ferry {
            self.check_client_tunnel_down(other, other_id, other_config)?;
        }
        if matches!(how, End::Disabled) {
            let user_id = self.techs[t].user.id;
            let (status, body) =
                self.world.admin("PATCH", &format!("/api/v1/users/{user_id}"), json!({"disabled": false}));
            if status != 200 {
                return Err(format!("enabling user {user_id} again: {status} {body}"));
            }
            self.acked.user(user_id, false);
            // Their tokens died with the disabling: log in again.
            let ns = self.techs[t].ns.clone();
            let user = &self.techs[t].user;
            let token = self.world.login(&ns, &user.name, &user.password).1;
            self.techs[t].user.token = token;
            // The client's login went too (its refresh token revoked).
            let url = self.world.technician_cloud_url();
            let tech = &self.techs[t];
            tech.client
                .login(&url, self.world.cloud_pin.as_deref(), &tech.user.name, &tech.user.password)
                .map_err(|e| format!("ferry login after user {user_id} was enabled again: {e}"))?;
            self.event(format!("user {user_id} enabled again, logged in again (API and ferry login)"));
        }
        if matches!(how, End::Switch) {
            self.gateways[g].machine_net.history.switch_on(Instant::now());
            self.remote(g, "on")?;
            self.gateways[g].switch_on = true;
            self.event(format!("the customer's switch at {} on again", Self::gateway_label(g)));
            self.settle("the switch flip")?;
        }
        Ok(())
    }

    /// The `ferry` client of technician `t` takes the tunnel of ended
    /// session `id` down by itself (its watch on the configuration, or its
    /// own expiry timer) within [`CLIENT_LEARNS`]: a tunnel left up would
    /// keep routing the proxy addresses that the next session's tunnel
    /// takes.
    fn check_client_tunnel_down(&mut self, t: usize, id: u64, config_id: u64) -> Outcome {
        let client = &self.techs[t].client;
        let mut last = Ok(None);
        let down = ferry_world::poll(CLIENT_LEARNS, || {
            last = client.tunnel_up(id);
            matches!(last, Ok(None))
        });
        self.stats.checks += 1;
        if !down {
            let said = match last {
                Ok(up) => up.as_ref().map_or_else(|| "not listed".to_string(), client_line),
                Err(e) => e,
            };
            return Err(format!(
                "session {id} ended, {}'s ferry client still has its tunnel up {CLIENT_LEARNS:?} later: {said}",
                self.techs[t].user.name
            ));
        }
        let said = match client.tunnel(config_id) {
            Ok(tunnel) => tunnel.as_ref().map_or_else(|| "not listed".to_string(), client_line),
            Err(e) => e,
        };
        self.event(format!("session {id}: the ferry client's tunnel is down: {said}"));
        Ok(())
    }

    /// A fault on the technician's side: their client SIGKILLed and started
    /// again. A stock wireguard-go (its interface goes with it) is started
    /// again from the same file and key, on a new UDP port; its first
    /// handshake rebinds it at the relay. The `ferry` client's service (its
    /// TUN devices go with it) is started again and the technician runs
    /// `ferry connect` again (the service keeps no tunnel across a restart;
    /// the cloud revokes the old configuration). Either way the session must
    /// carry traffic again within [`RELAY_RECOVERY`] of the client running
    /// again.
    fn restart_client(&mut self, t: usize) -> Outcome {
        let id = self.live(t).id;
        let ns = self.techs[t].ns.clone();
        let tunnel = self
            .live_mut(t)
            .tunnel
            .take()
            .ok_or_else(|| format!("session {id}: a client restart without a tunnel"))?;
        let kind = self.live(t).kind;
        *self.stats.client_kills.entry(kind.name()).or_default() += 1;
        let started = match tunnel.client {
            TunnelClient::Stock { go, wg_quick, private_key } => {
                let pid = nix::unistd::Pid::from_raw(go.pid() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(|e| e.to_string())?;
                drop(go);
                self.event(format!("fault: session {id}: the technician's wireguard-go SIGKILLed"));
                std::thread::sleep(Duration::from_millis(self.extra.between(100, 3000)));
                let go = WireguardGo::from_wg_quick(&self.world.lab, &ns, &wg_quick, &private_key);
                let started = Instant::now();
                let proxies = parse_targets(&wg_quick);
                // The same file: the same relay.
                let relay = tunnel.relay;
                self.live_mut(t).tunnel = Some(Tunnel {
                    proxies,
                    client: TunnelClient::Stock { go, wg_quick, private_key },
                    relay,
                    path: None,
                });
                self.event(format!("session {id}: wireguard-go started again"));
                started
            }
            TunnelClient::Ferry { config_id } => {
                let pid = self.techs[t].client.kill_service();
                self.event(format!(
                    "fault: session {id}: the technician's ferry service (pid {}) SIGKILLed, with tunnel \
                     (configuration {config_id})",
                    pid.unwrap_or_default()
                ));
                std::thread::sleep(Duration::from_millis(self.extra.between(100, 3000)));
                self.techs[t].client.start_service().map_err(|e| format!("ferry service again: {e}"))?;
                let started = Instant::now();
                let tunnel = match self.techs[t].client.connect(id, 20) {
                    Ok(tunnel) => tunnel,
                    Err(e) => {
                        self.stats.connects_failed += 1;
                        return self.expired_or(
                            t,
                            format!(
                                "session {id}: the ferry service started again, `ferry connect` failed: {e}"
                            ),
                        );
                    }
                };
                if tunnel["last_handshake_ms"].is_null() {
                    self.stats.connects_without_handshake += 1;
                }
                let (config_id, proxies) = ferry_tunnel(id, &tunnel)?;
                // A new configuration: the cloud picks a relay again.
                let relay = self.relay_of_config(id, config_id);
                self.count_relay(relay);
                self.event(format!(
                    "session {id}: ferry service started again, ferry connect: {} (configured with {})",
                    client_line(&tunnel),
                    Self::relay_label(relay)
                ));
                self.live_mut(t).tunnel =
                    Some(Tunnel { proxies, client: TunnelClient::Ferry { config_id }, relay, path: None });
                started
            }
        };
        let tunnel = self.live(t).tunnel.as_ref().ok_or_else(|| format!("session {id}: no tunnel again"))?;
        let echo = proxy(id, &tunnel.proxies, "echo")?;
        let left = RELAY_RECOVERY.saturating_sub(started.elapsed());
        let back = ferry_world::eventually(left, || {
            ferry_world::echo_round_trip(&ns, &echo, ECHO_PORT, Duration::from_secs(2))
        });
        self.stats.checks += 1;
        if let Err(e) = back {
            // A short session may have run out of time during the restart.
            let breach = format!(
                "session {id}: the technician's client ({}) started again, no echo within {RELAY_RECOVERY:?} ({e}); {}",
                kind.name(),
                self.tunnel_state(t)
            );
            return self.expired_or(t, breach);
        }
        self.event(format!(
            "session {id}: traffic back after {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            kind.name()
        ));
        self.use_session(t)
    }

    /// The audit action that ended session `id`, once the cloud shows it
    /// over after the switch went off at `off_ms`: `session.end`, or
    /// `session.expire` for a session whose end time had come by then. One
    /// that expired later outlived the switch: a breach.
    fn final_transition(&mut self, id: u64, off_ms: u64) -> Outcome<&'static str> {
        let world = &self.world;
        let mut session = Value::Null;
        let over = ferry_world::poll(GATEWAY_LEARNS, || {
            session = world.session(id);
            session["state"] == "ended" || session["state"] == "expired"
        });
        self.stats.checks += 1;
        if !over {
            return Err(format!(
                "session {id}: still {} at the cloud {GATEWAY_LEARNS:?} after the switch off",
                session["state"]
            ));
        }
        if session["state"] == "ended" {
            return Ok("session.end");
        }
        // The cloud's expiry runs on a timer: a second of slack for one
        // that was due just as the switch went off.
        match session["expires_ms"].as_u64() {
            Some(expires_ms) if expires_ms <= off_ms + EXPIRY_SLACK_MS => Ok("session.expire"),
            Some(expires_ms) => Err(format!(
                "the switch off did not end session {id}: it expired later, {:.1}s after the switch went off",
                expires_ms.saturating_sub(off_ms) as f64 / 1000.0
            )),
            None => Err(format!("session {id}: expired at the cloud without an expires_ms: {session}")),
        }
    }

    /// `ferry-gateway remote on|off`; a failure is a breach with what it
    /// said (the gateway's log is saved with the failure).
    fn remote(&mut self, g: usize, what: &str) -> Outcome {
        let out = self.world.gateway_cmd_at(g, &["remote", what]);
        if !out.status.success() {
            return Err(format!(
                "`ferry-gateway remote {what}` at gateway {} failed ({}): {}",
                g + 1,
                out.status,
                said(&out)
            ));
        }
        Ok(())
    }

    /// After a use of technician `t`'s session that worked: the path its
    /// tunnel took, once per tunnel, counted by gateway. For wireguard-go
    /// the wg-quick file's endpoint (a relay's address, or the gateway's
    /// public mapping); for the `ferry` client the path its status shows.
    /// A technician behind a symmetric NAT reaches a gateway behind one
    /// only through a relay: a direct path there is a breach (the status
    /// would be lying about where the traffic went).
    pub fn record_path(&mut self, t: usize) -> Outcome {
        let live = self.live(t);
        let (id, g) = (live.id, live.gateway);
        let Some(tunnel) = live.tunnel.as_ref() else { return Ok(()) };
        if tunnel.path.is_some() {
            return Ok(());
        }
        let path = match &tunnel.client {
            TunnelClient::Stock { .. } => Some(if tunnel.relay.is_some() { "relayed" } else { "direct" }),
            TunnelClient::Ferry { config_id } => match self.techs[t].client.tunnel(*config_id) {
                Ok(Some(status)) => match status["path"].as_str() {
                    Some(p) if p.starts_with("direct") => Some("direct"),
                    Some(p) if p.starts_with("relay") => Some("relayed"),
                    _ => None,
                },
                _ => None,
            },
        };
        let Some(path) = path else { return Ok(()) };
        if let Some(tunnel) = self.live_mut(t).tunnel.as_mut() {
            tunnel.path = Some(path);
        }
        *self.stats.paths.entry((g, path)).or_default() += 1;
        let symmetric_site =
            crate::gateways::SITE_KINDS[g] == ferry_world::Site::BehindNat(ferry_lab::Nat::Symmetric);
        if symmetric_site && self.techs[t].place == crate::soak::SYMMETRIC_PLACE {
            self.stats.checks += 1;
            self.stats.symmetric_both_checked += 1;
            self.stats.symmetric_both_relayed += u64::from(path == "relayed");
            if path != "relayed" {
                return Err(format!(
                    "session {id}: {} (behind a symmetric NAT) reached gateway {} (behind a symmetric NAT) by a \
                     {path} path, which no NAT pair of that kind allows; {}",
                    self.techs[t].user.name,
                    g + 1,
                    self.tunnel_state(t)
                ));
            }
        }
        Ok(())
    }

    /// Ends technician `t`'s session if it is live (the end of the run).
    pub fn end_if_live(&mut self, t: usize) -> Outcome {
        if self.techs[t].live.is_some() { self.end_session(t, End::Admin) } else { Ok(()) }
    }

    /// The client's view of technician `t`'s tunnel, for the log: the
    /// endpoint and last handshake of wireguard-go's peer, or what `ferry
    /// status` says.
    fn tunnel_state(&self, t: usize) -> String {
        match self.techs[t].live.as_ref().and_then(|live| live.tunnel.as_ref()).map(|tunnel| &tunnel.client) {
            Some(TunnelClient::Stock { go, .. }) => {
                let endpoints = go.show("endpoints");
                let handshakes = go.show("latest-handshakes");
                let last = ferry_world::wg::latest_handshake(&handshakes);
                let ago =
                    if last == 0 { "never".to_string() } else { format!("{}s ago", unix_ms() / 1000 - last) };
                format!(
                    "wireguard-go: endpoint {}, last handshake {ago}",
                    endpoints.split_whitespace().nth(1).unwrap_or("none")
                )
            }
            Some(TunnelClient::Ferry { config_id }) => {
                let said = match self.techs[t].client.tunnel(*config_id) {
                    Ok(tunnel) => tunnel
                        .as_ref()
                        .map_or_else(|| format!("configuration {config_id} not listed"), client_line),
                    Err(e) => e,
                };
                format!("ferry client: {said}")
            }
            None => "client: no tunnel".to_string(),
        }
    }

    fn live(&self, t: usize) -> &Live {
        self.techs[t].live.as_ref().expect("a live session")
    }

    fn live_mut(&mut self, t: usize) -> &mut Live {
        self.techs[t].live.as_mut().expect("a live session")
    }
}

/// The configuration and the proxy addresses of a tunnel as `ferry connect
/// --json` shows it; a missing field is a failure that names it.
fn ferry_tunnel(id: u64, tunnel: &Value) -> Outcome<(u64, BTreeMap<String, String>)> {
    let config_id = tunnel
        .get("config_id")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("session {id}: `ferry connect --json` has no config_id: {tunnel}"))?;
    let proxies = client_proxies(tunnel);
    for name in TARGETS {
        proxy(id, &proxies, name).map_err(|e| format!("{e}: {tunnel}"))?;
    }
    Ok((config_id, proxies))
}

/// The proxy address of target `name` of session `id`'s tunnel.
fn proxy(id: u64, proxies: &BTreeMap<String, String>, name: &str) -> Outcome<String> {
    proxies.get(name).cloned().ok_or_else(|| format!("session {id}: the tunnel has no target {name:?}"))
}

/// What `ferry status --json` says of a tunnel, for the log.
fn client_line(tunnel: &serde_json::Value) -> String {
    let path = tunnel["path"].as_str().unwrap_or("none yet");
    let endpoint = tunnel["peer_endpoint"].as_str().unwrap_or("none");
    let handshake = match tunnel["last_handshake_ms"].as_u64() {
        Some(ms) => format!("{:.1}s ago", unix_ms().saturating_sub(ms) as f64 / 1000.0),
        None => "none yet".to_string(),
    };
    let state = match tunnel["ended"]["reason"].as_str() {
        Some(reason) => format!("down: {reason}"),
        None => "up".to_string(),
    };
    format!(
        "configuration {}, {state}, path {path}, endpoint {endpoint}, last handshake {handshake}",
        tunnel["config_id"]
    )
}

fn how_name(how: End) -> &'static str {
    match how {
        End::Admin => "by the admin",
        End::Technician => "by the technician",
        End::Customer => "by the customer (end)",
        End::Switch => "by the customer (switch off)",
        End::Expiry => "expired",
        End::Disabled => "by disabling the user",
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}
