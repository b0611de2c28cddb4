//! `ferry-gateway`: the edge daemon between a customer's network and a machine
//! network.

mod config;
mod guard;
// The `run` daemon uses most of these; the commands use the rest.
#[allow(dead_code)]
mod local;
#[allow(dead_code)]
mod state;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferry_daemon::CommonArgs;

/// Ferry's edge gateway.
///
/// It runs on an industrial PC between the customer's network (uplink) and the
/// machine network, and lets a technician reach whitelisted machines only while
/// the customer allows it. This build provides the uplink guard and a host
/// check; the daemon itself follows.
#[derive(Parser, Debug)]
#[command(name = "ferry-gateway", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Guard(guard::GuardArgs),
    /// Check that this host can run the gateway's eBPF programs: every program
    /// is loaded through the kernel's verifier. Exits non-zero if one fails.
    Preflight,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.common.log.as_deref(), "info", cli.common.log_format);
    let config = config::load(cli.common.config.as_deref())?;
    match cli.command {
        Command::Guard(args) => guard::run(args, &config),
        Command::Preflight => {
            let report = ferry_ebpf::preflight::run();
            print!("{report}");
            if !report.ok() {
                anyhow::bail!("preflight failed");
            }
            Ok(())
        }
    }
}
