//! `ferry-demo`: the whole of Ferry on one machine, in network namespaces,
//! walked through the life cycle of a remote maintenance session. `cargo
//! xtask demo` builds it in release and runs it; the tests run it with
//! `--once` from the debug build.

mod plant;
mod story;
mod technician;
mod walk;

use std::{net::SocketAddr, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// Ferry's demo: a cloud, a relay, a customer's plant with a gateway, a PLC
/// and an HMI, and a technician at home, each in network namespaces on this
/// machine; then the life cycle of a remote maintenance session, step by
/// step. Needs root. Ctrl-C removes everything it made.
#[derive(Parser, Debug)]
#[command(name = "ferry-demo", version, long_about)]
struct Cli {
    /// How the technician's home network reaches the plant: `direct` (both
    /// behind cone NATs: hole punching works), `relay` (the technician
    /// behind a symmetric NAT: the relay's UDP path), `websocket` (the
    /// technician's network lets only TCP 443 out: the relay's WebSocket
    /// path).
    #[arg(long, value_enum, default_value = "direct")]
    path: Path,

    /// Walk the steps, check each, clean up and exit: non-zero, naming the
    /// step, if one failed. Without it the world stays up for looking
    /// around until Ctrl-C.
    #[arg(long)]
    once: bool,

    #[command(subcommand)]
    machine: Option<Machine>,
}

/// The machines, run by the demo inside their namespaces.
#[derive(Subcommand, Debug)]
enum Machine {
    /// The PLC simulator: Modbus/TCP and a web configuration page.
    #[command(hide = true)]
    Plc {
        #[arg(long)]
        modbus: SocketAddr,
        #[arg(long)]
        web: SocketAddr,
    },
    /// The HMI: a web page with the PLC's registers.
    #[command(hide = true)]
    Hmi {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        plc: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Path {
    Direct,
    Relay,
    Websocket,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "relay",
            Path::Websocket => "websocket",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Path::Direct => "the technician and the plant each behind a cone NAT",
            Path::Relay => "the technician behind a symmetric NAT",
            Path::Websocket => "the technician's network lets only TCP 443 out",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.machine {
        Some(machine) => match run_machine(machine) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ferry-demo: {error:#}");
                ExitCode::FAILURE
            }
        },
        None => demo(cli.path, cli.once),
    }
}

fn run_machine(machine: Machine) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match machine {
        Machine::Plc { modbus, web } => runtime.block_on(plant::run_plc(modbus, web)),
        Machine::Hmi { listen, plc } => runtime.block_on(plant::run_hmi(listen, plc)),
    }
}

fn demo(path: Path, once: bool) -> ExitCode {
    if !nix_is_root() {
        eprintln!(
            "ferry-demo needs root (it builds network namespaces): run `sudo -E env PATH=$PATH cargo xtask demo`"
        );
        return ExitCode::from(2);
    }
    if let Err(error) = ferry_lab::sweep_on_signals("ferry-demo") {
        eprintln!("ferry-demo: {error:#}");
        return ExitCode::FAILURE;
    }
    walk::install_panic_hook();
    let style = walk::Style::detect();
    let demo = story::Demo { path, once, style };
    match demo.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("\n{} {failed}", style.red("ferry-demo:"));
            ExitCode::FAILURE
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
