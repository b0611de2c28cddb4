//! `ferry-relay`: what relay operators run on public addresses.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ferry_daemon::CommonArgs;
use ferry_relay::{
    allocations_file,
    config::{self, Config, Listen, PortRange, XdpMode},
    control::{self, CloudLink},
    core::Timeouts,
    http,
    listeners::Listeners,
    metrics::Metrics,
    runtime::{Admission, BindingTable, Options, Relay},
    state_file, ws,
};
use tracing::{error, info, warn};

/// Ferry's relay.
///
/// It carries end-to-end encrypted WireGuard datagrams between the two peers
/// of a session when they cannot reach each other directly: over UDP, where
/// an XDP program forwards at line rate between the peers' bound addresses,
/// or over WebSocket for sites that only allow TCP 443. It never holds keys
/// and never sees plaintext: it only checks mac1 of handshake messages
/// against the peers' public keys, and binds a peer's address once a
/// handshake completes through it.
///
/// It also answers STUN Binding requests, so peers learn their public
/// address. Allocations come from the cloud over the relay control channel,
/// or, standalone, from an allocation file (re-read on SIGHUP).
#[derive(Parser, Debug)]
#[command(name = "ferry-relay", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay until SIGINT or SIGTERM. A clean stop detaches XDP and
    /// leaves nothing pinned.
    Run(Box<RunArgs>),
    /// Check that this host can run the relay's XDP forwarding: every eBPF
    /// program is loaded through the kernel's verifier, and the configured
    /// interfaces exist. Exits non-zero if a check fails.
    Preflight,
    /// Carry a local WireGuard's UDP over the relay's WebSocket listener, for
    /// sites that only let TCP 443 out: point the WireGuard peer's Endpoint
    /// at --listen, and the bridge sends each datagram as one binary frame to
    /// --url with the allocation's token, and back.
    WsBridge(ws::bridge::BridgeArgs),
}

/// Flags override the configuration file's keys of the same name.
#[derive(Args, Debug, Default)]
struct RunArgs {
    /// Interface(s) the XDP forwarder attaches to (repeatable).
    #[arg(long = "interface", short = 'i', value_name = "IFACE")]
    interfaces: Vec<String>,
    /// XDP mode: native (driver), generic (skb), or off (userspace forwarding
    /// with recvmmsg/sendmmsg; same rules, lower rate).
    #[arg(long, value_enum)]
    xdp: Option<XdpMode>,
    /// Do not ask the kernel's FIB for the next hop: swap MAC addresses and
    /// send back out of the ingress interface (one router reaches all peers).
    #[arg(long)]
    no_fib: bool,
    /// How long XDP reuses a next hop the FIB found, in ms (0: look up every
    /// datagram). Route and neighbour changes reach it at once over netlink;
    /// this bounds how long one could go unnoticed otherwise [default: 1000].
    #[arg(long, value_name = "MS")]
    next_hop_lifetime_ms: Option<u32>,
    /// The relay's public IPv4 address: allocation sockets bind to it and
    /// XDP forwards only datagrams sent to it.
    #[arg(long, value_name = "IP")]
    public_ipv4: Option<Ipv4Addr>,
    /// The relay's public IPv6 address.
    #[arg(long, value_name = "IP")]
    public_ipv6: Option<Ipv6Addr>,
    /// UDP port range for allocations, one port per allocation [default: 40000-49999].
    #[arg(long, value_name = "FIRST-LAST")]
    ports: Option<PortRange>,
    /// Capacity of the XDP binding map (two per allocation) [default: 131072].
    #[arg(long, value_name = "N")]
    max_bindings: Option<u32>,
    /// STUN listener [default: 0.0.0.0:3478]; "off" disables it.
    #[arg(long, value_name = "ADDR|off")]
    stun: Option<Listen>,
    /// Where peers reach the STUN listener, told to the cloud [default: the
    /// public address with the listener's port].
    #[arg(long, value_name = "ADDR")]
    stun_public: Option<SocketAddr>,
    /// WebSocket relay listener [default: 0.0.0.0:443]; "off" disables it.
    #[arg(long, value_name = "ADDR|off")]
    websocket: Option<Listen>,
    /// The URL peers use for the WebSocket relay (told to the cloud).
    #[arg(long, value_name = "URL")]
    websocket_url: Option<String>,
    /// TLS certificate chain (PEM) for the WebSocket listener.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the WebSocket listener.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Prometheus /metrics listener [default: 127.0.0.1:9478]; "off" disables it.
    #[arg(long, value_name = "ADDR|off")]
    metrics: Option<Listen>,
    /// Seconds without traffic after which a binding must be re-proved by a
    /// handshake [default: 200].
    #[arg(long, value_name = "SECONDS")]
    idle_timeout_secs: Option<u64>,
    /// Where the relay keeps its live allocations and bindings, to restore
    /// them at the next start (after a crash or an upgrade) so that the
    /// sessions through it carry on, on the same ports. Without it a restart
    /// breaks them.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Static allocations (TOML), re-read on SIGHUP, instead of a cloud.
    #[arg(long, value_name = "FILE")]
    allocations: Option<PathBuf>,
    /// The cloud's relay control URL (wss://.../api/v1/control/relay).
    /// Repeat it for each replica of a cloud that runs several: the relay
    /// moves to the next when the one in use fails.
    #[arg(long, value_name = "URL", requires_all = ["cloud_relay_id", "cloud_token_file"])]
    cloud_url: Vec<String>,
    /// SHA-256 fingerprint of the cloud's TLS certificate.
    #[arg(long, value_name = "FINGERPRINT")]
    cloud_pin: Option<String>,
    /// This relay's id at the cloud.
    #[arg(long, value_name = "ID")]
    cloud_relay_id: Option<u64>,
    /// File holding the relay token the cloud issued.
    #[arg(long, value_name = "FILE")]
    cloud_token_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.common.log.as_deref(), "info", cli.common.log_format);
    let mut config = config::load(cli.common.config.as_deref())?;
    match cli.command {
        Command::Preflight => preflight(&config),
        Command::WsBridge(args) => {
            let options = args.into_options()?;
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(async {
                let shutdown =
                    ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?;
                ws::bridge::run(options, async move {
                    let signal = shutdown.wait().await;
                    info!(signal, "stopping");
                })
                .await
                .context("the WebSocket bridge")
            })
        }
        Command::Run(args) => {
            (*args).merge_into(&mut config);
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(run(config))
        }
    }
}

impl RunArgs {
    fn merge_into(self, c: &mut Config) {
        if !self.interfaces.is_empty() {
            c.interfaces = self.interfaces;
        }
        c.xdp = self.xdp.or(c.xdp);
        if self.no_fib {
            c.fib = Some(false);
        }
        c.next_hop_lifetime_ms = self.next_hop_lifetime_ms.or(c.next_hop_lifetime_ms);
        c.public_ipv4 = self.public_ipv4.or(c.public_ipv4);
        c.public_ipv6 = self.public_ipv6.or(c.public_ipv6);
        c.ports = self.ports.or(c.ports);
        c.max_bindings = self.max_bindings.or(c.max_bindings);
        c.websocket_url = self.websocket_url.or(c.websocket_url.take());
        c.tls_cert = self.tls_cert.or(c.tls_cert.take());
        c.tls_key = self.tls_key.or(c.tls_key.take());
        c.idle_timeout_secs = self.idle_timeout_secs.or(c.idle_timeout_secs);
        c.allocations = self.allocations.or(c.allocations.take());
        c.state_file = self.state_file.or(c.state_file.take());
        c.stun = self.stun.or(c.stun);
        c.stun_public = self.stun_public.or(c.stun_public);
        c.websocket = self.websocket.or(c.websocket);
        c.metrics = self.metrics.or(c.metrics);
        if !self.cloud_url.is_empty() {
            c.cloud = Some(config::CloudConfig {
                url: config::CloudUrls::Many(self.cloud_url),
                pin: self.cloud_pin,
                relay_id: self.cloud_relay_id.unwrap_or_default(),
                token_file: self.cloud_token_file.unwrap_or_default(),
            });
        }
    }
}

async fn run(config: Config) -> Result<()> {
    let metrics = Metrics::new();
    let mode = config.xdp.unwrap_or_default();
    let ports = config.ports.unwrap_or_default();
    let max_bindings = config.max_bindings.unwrap_or(ferry_ebpf::common::relay::DEFAULT_MAX_BINDINGS);
    if mode != XdpMode::Off && config.public_ipv4.is_none() && config.public_ipv6.is_none() {
        bail!("XDP forwarding needs --public-ipv4 and/or --public-ipv6 (or run with --xdp off)");
    }
    if mode != XdpMode::Off && config.interfaces.is_empty() {
        bail!("XDP forwarding needs at least one --interface (or run with --xdp off)");
    }
    let max_allocations =
        (max_bindings / 2).min(ports.len()).min(ferry_ebpf::common::relay::DEFAULT_MAX_SLOTS);
    let forwarder = match mode {
        XdpMode::Off => None,
        mode => Some(ferry_relay::xdp::start(&config, mode, max_bindings, &metrics)?),
    };
    let table = forwarder.as_ref().map(|f| f.table());
    metrics.map_capacity.set(i64::from(if table.is_some() { max_bindings } else { 0 }));
    let options = Options {
        ipv4: config.public_ipv4,
        ipv6: config.public_ipv6,
        ports,
        max_allocations,
        timeouts: Timeouts {
            idle: Duration::from_secs(config.idle_timeout_secs.unwrap_or(200)),
            ..Timeouts::default()
        },
        websocket_queue: 256,
    };
    let relay = Relay::new(options, table.map(|t| t as Arc<dyn BindingTable>), metrics.clone());

    if let Some(addr) = Listen::resolve(config.metrics, http::DEFAULT_ADDR) {
        let listener = http::bind(addr).await?;
        info!(%addr, "metrics on /metrics");
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, metrics).await {
                error!(error = %format!("{e:#}"), "metrics listener failed");
            }
        });
    }
    let (stop_listeners, stopped) = tokio::sync::watch::channel(false);
    let listeners = Listeners {
        stun: Listen::resolve(config.stun, SocketAddr::from(([0, 0, 0, 0], ferry_relay::stun::DEFAULT_PORT))),
        websocket: Listen::resolve(
            config.websocket,
            SocketAddr::from(([0, 0, 0, 0], ferry_relay::ws::server::DEFAULT_PORT)),
        ),
        tls: config.tls_cert.clone().zip(config.tls_key.clone()),
    };
    let stun_bound = ferry_relay::listeners::start(listeners, &relay, &metrics, stopped).await?;

    // Before the cloud's snapshot or the allocation file: those keep the
    // restored allocations that are still wanted, on their ports.
    let saver = match &config.state_file {
        Some(path) => {
            let owner = state_file::Owner {
                relay_id: config.cloud.as_ref().map(|c| c.relay_id),
                cloud: config.cloud.as_ref().map(|c| c.url.list()).unwrap_or_default(),
            };
            let restored = state_file::restore(&relay, path, &owner);
            info!(restored, file = %path.display(), "saved allocations restored");
            Some(state_file::Saver::start(relay.clone(), path.clone(), owner))
        }
        None => None,
    };
    if let Some(path) = &config.allocations {
        load_allocations(&relay, path)?;
    }
    if let Some(cloud) = &config.cloud {
        let link = cloud_link(cloud, &config, ports, stun_bound)?;
        tokio::spawn(control::run(link, relay.clone(), metrics.clone()));
    }
    {
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                relay.sweep();
            }
        });
    }

    let shutdown = ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    info!(xdp = %mode, ports = %ports, max_allocations, "ferry-relay ready");
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => {
                info!(signal, "stopping");
                break;
            }
            _ = hangup.recv() => match &config.allocations {
                Some(path) => if let Err(e) = load_allocations(&relay, path) {
                    warn!(error = %format!("{e:#}"), "allocation file not reloaded; the old allocations stay");
                },
                None => info!("SIGHUP: no allocation file to reload"),
            },
        }
    }
    let _ = stop_listeners.send(true);
    // Saved first: the allocations outlive a clean stop as they outlive a
    // crash, for the next start.
    if let Some(saver) = saver {
        saver.stop();
    }
    relay.clear();
    if let Some(forwarder) = forwarder {
        forwarder.stop();
    }
    info!("ferry-relay stopped");
    Ok(())
}

fn load_allocations(relay: &Relay, path: &std::path::Path) -> Result<()> {
    let specs = allocations_file::load(path)?;
    for (id, admission) in relay.apply(&specs) {
        match admission {
            Admission::Ready { port } => info!(allocation = id, port, "static allocation ready"),
            Admission::Refused { reason } => warn!(allocation = id, reason, "static allocation refused"),
        }
    }
    info!(allocations = specs.len(), file = %path.display(), "allocation file applied");
    Ok(())
}

fn cloud_link(
    cloud: &config::CloudConfig,
    config: &Config,
    ports: PortRange,
    stun_bound: Option<SocketAddr>,
) -> Result<CloudLink> {
    let token = std::fs::read_to_string(&cloud.token_file)
        .with_context(|| format!("reading the relay token from {}", cloud.token_file.display()))?;
    let pin = match &cloud.pin {
        Some(pin) => Some(
            ferry_control::pin::parse_fingerprint(pin)
                .with_context(|| format!("the cloud pin `{pin}` is not a SHA-256 fingerprint"))?,
        ),
        None => None,
    };
    let ip = match (config.public_ipv4, config.public_ipv6) {
        (Some(v4), _) => std::net::IpAddr::V4(v4),
        (None, Some(v6)) => std::net::IpAddr::V6(v6),
        (None, None) => {
            bail!("the cloud needs the relay's public address: set --public-ipv4 or --public-ipv6")
        }
    };
    let websocket_url = config.websocket_url.clone().unwrap_or_else(|| format!("wss://{ip}/"));
    // Peers pin the WebSocket listener's certificate (they have no CA
    // roots); the cloud passes this on to them.
    let websocket_pin = match &config.tls_cert {
        Some(cert) => Some(
            ferry_relay::ws::certificate_pin(cert)
                .with_context(|| format!("the pin of the WebSocket certificate {}", cert.display()))?,
        ),
        None => None,
    };
    let urls = cloud.url.list();
    if urls.is_empty() {
        bail!("the cloud's url list is empty");
    }
    Ok(CloudLink {
        urls,
        pin,
        relay_id: cloud.relay_id,
        token: ferry_control::ids::Token::new(token.trim()),
        public_udp: SocketAddr::new(ip, ports.first),
        websocket_url,
        websocket_pin,
        stun: config.stun_public_address(ip, stun_bound),
    })
}

fn preflight(config: &Config) -> Result<()> {
    let mut report = ferry_ebpf::preflight::run();
    for iface in &config.interfaces {
        report.checks.push(interface_check(iface));
    }
    print!("{report}");
    if !report.ok() {
        bail!("preflight failed");
    }
    Ok(())
}

fn interface_check(iface: &str) -> ferry_ebpf::preflight::Check {
    let path = std::path::Path::new("/sys/class/net").join(iface);
    let (ok, detail) = if path.exists() {
        (true, "present".to_string())
    } else {
        (false, "not found in this network namespace".to_string())
    };
    ferry_ebpf::preflight::Check { name: format!("interface {iface}"), ok, detail }
}
