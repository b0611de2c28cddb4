//! `ferry-gateway`: the edge daemon between a customer's network and a machine
//! network.

mod cmd;
mod config;
mod daemon;
mod guard;
mod local;
mod panel;
mod run;
mod state;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_daemon::CommonArgs;

/// Ferry's edge gateway.
///
/// It runs on an industrial PC between the customer's network (uplink) and the
/// machine network, and lets a technician reach whitelisted machines only while
/// the customer allows it.
///
/// The customer's switch: remote maintenance is OFF after installation.
/// `ferry-gateway remote on` allows technicians to start sessions;
/// `ferry-gateway remote off` forbids them and ends every running session at
/// once. Sessions that require approval also wait for
/// `ferry-gateway approve <SESSION>`. These commands work only on this machine
/// (a local socket, never the network) and only for root.
#[derive(Parser, Debug)]
#[command(name = "ferry-gateway", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// The state directory (switch, approvals, event queue, keys); default
    /// from the configuration, else /var/lib/ferry-gateway for root.
    #[arg(long, global = true, value_name = "DIR", env = "FERRY_GATEWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// The daemon's local control socket; default from the configuration,
    /// else /run/ferry-gateway/control.sock for root.
    #[arg(long, global = true, value_name = "PATH", env = "FERRY_GATEWAY_SOCKET")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(run::RunArgs),
    Guard(guard::GuardArgs),
    /// Check that this host can run the gateway's eBPF programs: every program
    /// is loaded through the kernel's verifier. Exits non-zero if one fails.
    Preflight,
    /// The customer's switch for remote maintenance (OFF after installation).
    ///
    /// `on` lets technicians start sessions to the machine network; `off`
    /// forbids it and ends every session at once. When the daemon is stopped
    /// the setting is stored and applies when it starts.
    Remote {
        #[command(subcommand)]
        action: cmd::RemoteAction,
    },
    /// Approve a session that waits for the customer's approval.
    Approve {
        /// The session's number, as `ferry-gateway sessions` shows it.
        #[arg(value_name = "SESSION")]
        session: u64,
    },
    /// Deny a session that waits for the customer's approval.
    Deny {
        #[arg(value_name = "SESSION")]
        session: u64,
    },
    /// End one active session now; the others go on and the switch stays
    /// on (`remote off` ends them all). Its technician needs a new start,
    /// and your approval again where the session requires it.
    End {
        #[arg(value_name = "SESSION")]
        session: u64,
    },
    /// The sessions the daemon knows: state, technicians' peers, targets, traffic.
    Sessions {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A network report to hand to IT: clock, cloud reachability (DNS, TCP,
    /// TLS pin, health, clock skew) and relays (STUN over UDP, WebSocket TCP).
    /// Exits non-zero if the cloud is unreachable.
    Diagnose {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register this gateway with the cloud, once, with an enrolment token.
    Enroll(cmd::enroll::EnrollArgs),
    /// Install the systemd unit, this binary (/usr/local/bin) and a
    /// configuration template (/etc/ferry/gateway.toml, if missing); offers
    /// to set the local panel's password.
    Install(cmd::install::InstallArgs),
    /// Stop the machine network from being routed through this host: the
    /// LAN interface's IPv4 forwarding off (`run` turns it on for the
    /// tunnel's replies and filters the LAN itself). The daemon does this
    /// when it stops; the systemd unit runs it after every stop, a crash or
    /// a kill included, when the daemon could not.
    CloseLan {
        /// The LAN interface (default: lan.interface in the configuration).
        #[arg(long, value_name = "IF")]
        lan: Option<String>,
    },
    /// The local web panel for the plant operators (on the LAN address,
    /// port 8443 by default; never on the uplink): its password and status.
    Panel {
        #[command(subcommand)]
        action: cmd::panel::PanelAction,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.common.log.as_deref(), "info", cli.common.log_format);
    if let Command::Install(args) = cli.command {
        // Before any configuration exists.
        return cmd::install::run(args);
    }
    let config = config::load(cli.common.config.as_deref())?;
    let paths = cmd::Paths {
        data_dir: cli.data_dir.clone().unwrap_or_else(|| config.data_dir()),
        socket: cli.socket.clone().unwrap_or_else(|| config.control_socket()),
    };
    match cli.command {
        Command::Run(args) => run::run(args, &config, paths.data_dir, paths.socket),
        Command::Guard(args) => guard::run(args, &config),
        Command::Preflight => {
            let report = ferry_ebpf::preflight::run();
            print!("{report}");
            if !report.ok() {
                anyhow::bail!("preflight failed");
            }
            Ok(())
        }
        Command::CloseLan { lan } => {
            let lan = lan
                .or_else(|| config.lan.interface.clone())
                .context("no LAN interface: set lan.interface in the configuration or pass --lan")?;
            daemon::host::close_lan(&lan)
        }
        Command::Remote { action } => cmd::remote(&paths, action),
        Command::Approve { session } => cmd::decide(&paths, session, cmd::Decide::Approve),
        Command::Deny { session } => cmd::decide(&paths, session, cmd::Decide::Deny),
        Command::End { session } => cmd::decide(&paths, session, cmd::Decide::End),
        Command::Sessions { json } => cmd::sessions(&paths, json),
        Command::Diagnose { json } => cmd::diagnose::run(&paths, json),
        Command::Enroll(args) => cmd::enroll::run(&paths, args),
        Command::Panel { action } => cmd::panel::run(&paths, &config, action),
        Command::Install(_) => unreachable!("handled above"),
    }
}
