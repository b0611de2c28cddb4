//! `ferry connect`, `ferry disconnect` and `ferry status`: the tunnel
//! commands, which the service carries out for the calling user.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ferry_api::{ClientConfig, ConfigRequest, StunServers};

use super::{
    block_on, bytes, cloud, duration, print_json,
    sessions::{self, SessionRefused},
};
use crate::{
    cloud::{Cloud, now_ms},
    protocol::{Answer, Request, TunnelView},
    service_client::{self, ServiceError},
};

/// Bring up a tunnel to SESSION and print the proxy address of each target.
///
/// The ferry service makes a fresh key pair on this machine (the private key
/// never leaves the service), the cloud issues a configuration for its
/// public key, and the service brings the tunnel up: for your user only,
/// and only to the session's proxy addresses. The session must be active
/// (`ferry start SESSION`). Connecting again replaces your tunnel to the
/// session. The tunnel goes down by itself when the configuration expires.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The session: its number or its name.
    #[arg(value_name = "SESSION")]
    pub session: String,
    /// How long to wait for the first handshake with the gateway before
    /// returning anyway (0: do not wait). Through the relay it usually
    /// comes within a second; a network that lets only TCP 443 out takes
    /// the relay's WebSocket after some seconds without one over UDP.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub wait: u64,
    /// The tunnel as JSON instead of sentences.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DisconnectArgs {
    /// The session: its number or its name. Without it, all your tunnels.
    #[arg(value_name = "SESSION")]
    pub session: Option<String>,
    /// The tunnels taken down as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// JSON instead of text: the same fields, times in milliseconds since
    /// the epoch.
    #[arg(long)]
    pub json: bool,
}

fn tunnels(answer: Answer) -> Result<Vec<TunnelView>> {
    match answer {
        Answer::Tunnels { tunnels } => Ok(tunnels),
        other => bail!("the service answered {other:?} instead of tunnels"),
    }
}

pub fn connect(socket: &Path, args: ConnectArgs) -> Result<()> {
    let mut cloud = cloud()?;
    let session = block_on(sessions::find(&mut cloud, &args.session))?;
    SessionRefused::unless_active(&session)?;
    // The relays' STUN servers, for the server-reflexive candidates; a cloud
    // that has none (or predates them) leaves the host candidates.
    let stun_servers = match block_on(async { Ok(cloud.get::<StunServers>("/api/v1/stun").await?) }) {
        Ok(stun) => stun.servers,
        Err(e) => {
            tracing::info!(error = %e, "no STUN servers from the cloud");
            Vec::new()
        }
    };
    let (prepare_id, public_key, candidates) =
        match service_client::call(socket, &Request::Prepare { session_id: session.id, stun_servers })? {
            Answer::Prepared { prepare_id, public_key, candidates, .. } => {
                (prepare_id, public_key, candidates)
            }
            other => bail!("the service answered {other:?} to prepare"),
        };
    let config = match block_on(request_config(&mut cloud, session.id, public_key, candidates)) {
        Ok(config) => config,
        Err(e) => {
            // The preparation would go after two minutes anyway.
            let _ = service_client::call(socket, &Request::Cancel { prepare_id });
            return Err(e);
        }
    };
    let mut tunnel = match service_client::call(
        socket,
        &Request::Up { prepare_id, config: Box::new(config), cloud: Some(cloud.link()) },
    )? {
        Answer::Tunnel { tunnel } => *tunnel,
        other => bail!("the service answered {other:?} to up"),
    };
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    while tunnel.last_handshake_ms.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let current = tunnels(service_client::call(socket, &Request::Status)?)?;
        match current.into_iter().find(|t| t.config_id == tunnel.config_id) {
            Some(fresh) if fresh.ended.is_none() => tunnel = fresh,
            Some(fresh) => {
                bail!("the tunnel went down again: {}", fresh.ended.map(|e| e.reason).unwrap_or_default())
            }
            None => bail!("the tunnel went down again"),
        }
    }
    if args.json {
        return print_json(&tunnel);
    }
    let path = tunnel.path.map_or("?", |p| p.label());
    let endpoint = tunnel.peer_endpoint.as_deref().unwrap_or("?");
    println!("Connected to session {} {:?}: {path}, {endpoint}.", tunnel.session_id, tunnel.session_name);
    if tunnel.last_handshake_ms.is_none() && args.wait > 0 {
        println!("No handshake with the gateway yet; `ferry status` shows when it comes.");
    }
    print_targets(&tunnel);
    let left = Duration::from_millis(tunnel.expires_ms.saturating_sub(now_ms()));
    println!(
        "It goes down by itself in {}; `ferry disconnect {}` ends it now.",
        duration(left),
        tunnel.session_id
    );
    Ok(())
}

/// `POST /api/v1/sessions/{id}/config` with the service's public key and
/// this machine's candidates, which the gateway probes.
async fn request_config(
    cloud: &mut Cloud,
    session_id: u64,
    public_key: String,
    mut candidates: Vec<String>,
) -> Result<ClientConfig> {
    candidates.truncate(ferry_api::MAX_CANDIDATES);
    let path = format!("/api/v1/sessions/{session_id}/config");
    Ok(cloud.post(&path, Some(&ConfigRequest { public_key, candidates })).await?)
}

fn print_targets(tunnel: &TunnelView) {
    let width = tunnel.targets.iter().map(|t| t.name.chars().count()).max().unwrap_or(0);
    for target in &tunnel.targets {
        println!("  {:<width$}  {:<15}  {}", target.name, target.proxy_address, target.service);
    }
}

pub fn disconnect(socket: &Path, args: DisconnectArgs) -> Result<()> {
    let down = tunnels(service_client::call(socket, &Request::Down { session: args.session.clone() })?)?;
    if args.json {
        return print_json(&down);
    }
    if down.is_empty() {
        println!("You have no tunnel up.");
    }
    for tunnel in &down {
        println!("Disconnected from session {} {:?}.", tunnel.session_id, tunnel.session_name);
    }
    Ok(())
}

pub fn status(socket: &Path, args: StatusArgs) -> Result<()> {
    let all = match service_client::call(socket, &Request::Status) {
        Ok(answer) => tunnels(answer)?,
        Err(e @ ServiceError::NotRunning { .. }) => return Err(e).context("no tunnel can be up"),
        Err(e) => return Err(e.into()),
    };
    if args.json {
        return print_json(&all);
    }
    if all.is_empty() {
        println!("No tunnels. `ferry connect SESSION` brings one up.");
    }
    for (i, tunnel) in all.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", describe(tunnel, now_ms()));
    }
    Ok(())
}

/// The text of one tunnel in `ferry status`.
pub fn describe(t: &TunnelView, now: u64) -> String {
    let ago = |at: u64| format!("{} ago", duration(Duration::from_millis(now.saturating_sub(at))));
    let mut lines =
        vec![format!("session {} {:?} (configuration {})", t.session_id, t.session_name, t.config_id)];
    let mut field = |name: &str, value: String| lines.push(format!("  {name:<16}{value}"));
    match &t.ended {
        None => field("state:", "up".into()),
        Some(ended) => field("state:", format!("down: {} ({})", ended.reason, ago(ended.at_ms))),
    }
    let path = match (t.path, &t.path_why, t.path_since_ms) {
        (None, _, _) => "none yet".to_string(),
        (Some(kind), Some(why), Some(since)) => {
            format!(
                "{}, for {} ({why})",
                kind.label(),
                duration(Duration::from_millis(now.saturating_sub(since)))
            )
        }
        (Some(kind), _, _) => kind.label().to_string(),
    };
    field("path:", path);
    field("peer endpoint:", t.peer_endpoint.clone().unwrap_or_else(|| "-".into()));
    field("last handshake:", t.last_handshake_ms.map_or_else(|| "none yet".into(), ago));
    field("round trip:", t.rtt_ms.map_or_else(|| "not measured".into(), |ms| format!("{ms:.1} ms")));
    field("traffic:", format!("{} received, {} sent", bytes(t.rx_bytes), bytes(t.tx_bytes)));
    if t.ended.is_none() {
        field("time left:", duration(Duration::from_millis(t.expires_ms.saturating_sub(now))));
    }
    if let Some(note) = &t.cloud {
        field("cloud:", note.clone());
    }
    field("address:", format!("{} on {}", t.address, t.interface));
    if !t.local_candidates.is_empty() {
        field("candidates:", t.local_candidates.join(", "));
    }
    field("public key:", t.public_key.clone());
    let width = t.targets.iter().map(|x| x.name.chars().count()).max().unwrap_or(0);
    for (i, target) in t.targets.iter().enumerate() {
        let label = if i == 0 { "targets:" } else { "" };
        field(label, format!("{:<width$}  {:<15}  {}", target.name, target.proxy_address, target.service));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EndCause, Ended, PathKind, TargetView};

    fn tunnel() -> TunnelView {
        TunnelView {
            session_id: 8,
            session_name: "press line 3".into(),
            config_id: 41,
            interface: "ferryc0".into(),
            public_key: "PUB".into(),
            address: "100.96.0.2".into(),
            targets: vec![
                TargetView {
                    name: "plc-web".into(),
                    proxy_address: "100.96.0.100".into(),
                    service: "tcp 8080".into(),
                },
                TargetView {
                    name: "echo".into(),
                    proxy_address: "100.96.0.101".into(),
                    service: "tcp 7000".into(),
                },
            ],
            ended: None,
            path: Some(PathKind::RelayUdp),
            path_why: Some("relay first".into()),
            path_since_ms: Some(1_000_000 - 3_000),
            peer_endpoint: Some("203.0.113.1:40007".into()),
            last_handshake_ms: Some(1_000_000 - 12_000),
            rtt_ms: None,
            rx_bytes: 1434,
            tx_bytes: 812,
            expires_ms: 1_000_000 + 250_000,
            connected_ms: 1_000_000 - 60_000,
            cloud: Some("watching".into()),
            local_candidates: vec!["198.51.100.7:40123".into(), "192.168.1.20:40123".into()],
        }
    }

    #[test]
    fn status_names_every_field() {
        let text = describe(&tunnel(), 1_000_000);
        for line in [
            "session 8 \"press line 3\" (configuration 41)",
            "  state:          up",
            "  path:           relay (UDP), for 3 s (relay first)",
            "  peer endpoint:  203.0.113.1:40007",
            "  last handshake: 12 s ago",
            "  round trip:     not measured",
            "  traffic:        1.4 KiB received, 812 B sent",
            "  time left:      4 min 10 s",
            "  cloud:          watching",
            "  address:        100.96.0.2 on ferryc0",
            "  candidates:     198.51.100.7:40123, 192.168.1.20:40123",
            "  targets:        plc-web  100.96.0.100     tcp 8080",
            "                  echo     100.96.0.101     tcp 7000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
        }
        let mut websocket = tunnel();
        websocket.path = Some(PathKind::RelayWebsocket);
        websocket.path_why = Some("no handshake over the UDP relay".into());
        websocket.peer_endpoint = Some("wss://203.0.113.1:443/".into());
        let text = describe(&websocket, 1_000_000);
        for line in [
            "  path:           relay (WebSocket), for 3 s (no handshake over the UDP relay)\n",
            "  peer endpoint:  wss://203.0.113.1:443/\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let mut waiting = tunnel();
        (waiting.path, waiting.local_candidates) = (None, vec![]);
        let text = describe(&waiting, 1_000_000);
        assert!(text.contains("  path:           none yet\n") && !text.contains("candidates:"), "{text}");
        let mut ended = tunnel();
        ended.ended =
            Some(Ended { cause: EndCause::Expired, reason: "expired".into(), at_ms: 1_000_000 - 5_000 });
        let text = describe(&ended, 1_000_000);
        assert!(text.contains("  state:          down: expired (5 s ago)\n"), "{text}");
        assert!(!text.contains("time left"), "{text}");
    }
}
