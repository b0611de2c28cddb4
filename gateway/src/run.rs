//! `ferry-gateway run`: resolves the configuration and flags into
//! [`daemon::Settings`] and runs the daemon until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ferry_tunnel::config::InterfaceAddress;

use crate::{
    config::{Config, DEFAULT_WIREGUARD_PORT},
    daemon::{self, Settings},
};

/// The gateway's address in the tunnel network the cloud allocates session
/// subnets from (100.96.0.0/12). The prefix routes every session's
/// technicians into the TUN device.
pub const DEFAULT_TUNNEL_ADDRESS: &str = "100.96.0.1/12";

/// Run the gateway daemon (what the systemd unit starts).
///
/// It keeps the control channel to the cloud, runs the WireGuard engine on a
/// TUN device, attaches the forwarding programs to the TUN and LAN
/// interfaces and the uplink guard to the uplink, and listens on the local
/// control socket. Nothing is forwarded unless the local switch is on
/// (`ferry-gateway remote on`) and, where a session requires it, the customer
/// approved it. Needs root (or the unit's capabilities) and an enrolment.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The LAN interface toward the machines (default: lan.interface).
    #[arg(long, value_name = "IF")]
    lan: Option<String>,
    /// The uplink interface, where the uplink guard goes (default:
    /// uplink.interface; without one the guard is not attached).
    #[arg(long, value_name = "IF")]
    uplink: Option<String>,
    /// The TUN device's name (default: tunnel.interface, else ferry0).
    #[arg(long, value_name = "NAME")]
    tun: Option<String>,
}

pub fn run(args: RunArgs, config: &Config, data_dir: PathBuf, socket: PathBuf) -> Result<()> {
    let lan_interface = args
        .lan
        .or_else(|| config.lan.interface.clone())
        .context("no LAN interface: set lan.interface in the configuration or pass --lan")?;
    let tunnel_address: InterfaceAddress = config
        .tunnel
        .address
        .as_deref()
        .unwrap_or(DEFAULT_TUNNEL_ADDRESS)
        .parse()
        .context("tunnel.address must be an IPv4 address with a prefix, such as 100.96.0.1/12")?;
    let settings = Settings {
        data_dir,
        socket,
        tunnel_interface: args.tun.unwrap_or_else(|| config.tunnel.interface.clone()),
        tunnel_address,
        wireguard_port: config.uplink.wireguard_port.map_or(DEFAULT_WIREGUARD_PORT, u16::from),
        uplink_interface: args.uplink.or_else(|| config.uplink.interface.clone()),
        follow_indices: config.uplink.follow_indices.unwrap_or(true),
        xdp_mode: config.uplink.xdp_mode.unwrap_or_default(),
        lan_interface,
        lan_address: config.lan.address,
        transport: config.tunnel.transport,
        metrics: config.metrics.listen,
        panel: config.panel.listen,
        flow_timeouts: config.forwarding.timeouts()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let shutdown = ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?;
        daemon::run(settings, async move {
            let signal = shutdown.wait().await;
            tracing::info!(signal, "shutting down");
        })
        .await
    })
}
