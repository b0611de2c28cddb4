//! `ferry-gateway guard`: the uplink guard on its own, in the foreground.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_ebpf::{AttachMode, guard::UplinkGuard};

use crate::config::{Config, DEFAULT_WIREGUARD_PORT};

/// Attach the uplink guard to an interface until SIGINT or SIGTERM, then print
/// its counters and detach.
///
/// The guard is an XDP program that drops UDP datagrams to the WireGuard port
/// whose shape no WireGuard message has (wrong type, wrong length, truncated),
/// so junk aimed at the gateway's one open port costs almost nothing. All other
/// traffic passes untouched.
///
/// Ferry path probes pass only to a receiver tag given with --probe-tag, and
/// STUN Binding success responses only from a server given with
/// --stun-server; without them, both are dropped (the daemon fills these sets
/// from its live path agents and STUN servers).
#[derive(Args, Debug)]
pub struct GuardArgs {
    /// The uplink interface (default: `uplink.interface` from the config).
    #[arg(long, short = 'i', value_name = "IF")]
    iface: Option<String>,

    /// The WireGuard UDP port to protect (default: `uplink.wireguard_port`,
    /// else 51820).
    #[arg(long, short = 'p', value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,

    /// XDP attach mode: auto (native, else generic), native or generic.
    #[arg(long, value_name = "MODE")]
    mode: Option<AttachMode>,

    /// Let Ferry path probes to this receiver tag (16 hex digits) through;
    /// repeatable.
    #[arg(long, value_name = "HEX", value_parser = parse_probe_tag)]
    probe_tag: Vec<[u8; 8]>,

    /// Let STUN Binding success responses from this server (IP:PORT) through;
    /// repeatable.
    #[arg(long, value_name = "ADDR")]
    stun_server: Vec<SocketAddr>,

    /// Also print the counters every SECONDS while running.
    #[arg(long, value_name = "SECONDS")]
    interval: Option<u64>,

    /// Print the counters as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GuardArgs, config: &Config) -> Result<()> {
    let Some(iface) = args.iface.or_else(|| config.uplink.interface.clone()) else {
        bail!("no uplink interface: pass --iface or set uplink.interface in the configuration");
    };
    let port = args.port.or(config.uplink.wireguard_port.map(u16::from)).unwrap_or(DEFAULT_WIREGUARD_PORT);
    let mode = args.mode.or(config.uplink.xdp_mode).unwrap_or_default();

    let mut guard = UplinkGuard::load(port)
        .context("loading the uplink guard (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
    for tag in &args.probe_tag {
        guard.add_probe_tag(*tag).with_context(|| format!("adding probe tag {}", hex::encode(tag)))?;
    }
    for server in &args.stun_server {
        guard.add_stun_server(*server).with_context(|| format!("adding STUN server {server}"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shutdown = {
        let _entered = runtime.enter();
        ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?
    };
    let attached =
        guard.attach(&iface, mode).with_context(|| format!("attaching the uplink guard to {iface}"))?;
    println!(
        "uplink guard attached to {iface} ({attached} XDP), protecting UDP port {port}; SIGINT detaches"
    );

    let signal = runtime.block_on(async {
        let mut ticker = args.interval.map(|s| tokio::time::interval(Duration::from_secs(s.max(1))));
        let shutdown = shutdown.wait();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                signal = &mut shutdown => return signal,
                Some(_) = async { Some(ticker.as_mut()?.tick().await) }, if ticker.is_some() => {
                    match guard.counters() {
                        Ok(counters) => print_counters(&counters, args.json),
                        Err(err) => tracing::warn!(error = %err, "reading counters failed"),
                    }
                }
            }
        }
    });

    let counters = guard.counters().context("reading the guard's counters")?;
    guard.detach().context("detaching the uplink guard")?;
    tracing::info!(signal, "stopped");
    print_counters(&counters, args.json);
    Ok(())
}

fn parse_probe_tag(text: &str) -> Result<[u8; 8], String> {
    let mut tag = [0u8; 8];
    hex::decode_to_slice(text, &mut tag).map_err(|e| format!("a probe tag is 16 hex digits: {e}"))?;
    Ok(tag)
}

fn print_counters(counters: &ferry_ebpf::guard::GuardCounters, json: bool) {
    if json {
        let map: serde_json::Map<String, serde_json::Value> =
            counters.iter().map(|(outcome, n)| (outcome.name().to_string(), n.into())).collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        println!("{counters}");
    }
}
