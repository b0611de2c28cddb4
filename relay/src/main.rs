//! `ferry-relay`: what relay operators run on public addresses.

mod config;

// The library's modules are used through `ferry_relay::...`.
use ferry_relay as _;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferry_daemon::CommonArgs;

/// Ferry's relay.
///
/// It carries end-to-end encrypted WireGuard datagrams between the two peers of
/// a session when they cannot reach each other directly: over UDP, forwarded
/// in XDP at line rate, or over WebSocket for sites that only allow TCP 443.
/// It never holds keys and never sees plaintext. This build provides the host
/// check; STUN and forwarding follow.
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
    /// Check that this host can run the relay's XDP forwarding: every eBPF
    /// program is loaded through the kernel's verifier, and the configured
    /// interface exists. Exits non-zero if a check fails.
    Preflight,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.common.log.as_deref(), "info", cli.common.log_format);
    let config = config::load(cli.common.config.as_deref())?;
    match cli.command {
        Command::Preflight => {
            let mut report = ferry_ebpf::preflight::run();
            if let Some(iface) = &config.interface {
                report.checks.push(interface_check(iface));
            }
            print!("{report}");
            if !report.ok() {
                anyhow::bail!("preflight failed");
            }
            Ok(())
        }
    }
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
