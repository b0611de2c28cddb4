//! `ferry`: the technician's client of Ferry.

mod cloud;
mod commands;
mod files;
mod protocol;
mod service;
mod service_client;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use ferry_connect::http::HttpError;

use crate::{
    cloud::CloudError,
    commands::{
        account, export, install,
        sessions::{self, SessionRefused},
        tunnel,
    },
    service_client::ServiceError,
};

const EXIT_STATUS: &str = "\
Exit status:
  0  done
  1  failed (the message says why)
  2  wrong use of the command line
  3  not logged in, or the login no longer works: run `ferry login`
  4  refused: by the cloud (rights, session state) or by the service
  5  unreachable: the cloud, or the ferry service on this machine";

/// Ferry's technician client: reach a machine through a Ferry session.
///
/// Install once with root (`sudo ferry install`: a small service that owns the
/// tunnels, and the group `ferry` whose members may use it). Then, as
/// yourself: `ferry login --cloud URL`, `ferry sessions`, `ferry start
/// SESSION`, `ferry connect SESSION`, `ferry status`, `ferry disconnect`.
///
/// Only the session's proxy addresses go through the tunnel, and only for
/// your own user; everything else, your own LAN included, stays as it was.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, long_about, after_help = EXIT_STATUS)]
struct Cli {
    /// The ferry service's socket.
    #[arg(long, global = true, env = "FERRY_SOCKET", value_name = "PATH", default_value = protocol::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Log filter for messages on stderr: a level (error, warn, info, debug)
    /// or a tracing directive.
    #[arg(long, global = true, env = "FERRY_LOG", value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Login(account::LoginArgs),
    /// Log out: revoke this machine's login at the cloud and delete it here.
    Logout,
    Sessions(sessions::ListArgs),
    /// Start a session (it must be released to you). The gateway's switch
    /// must be on; if the session needs the customer's approval, it waits
    /// for that.
    Start(sessions::SessionArgs),
    /// End a session at once, for everyone connected to it.
    End(sessions::SessionArgs),
    /// Write a configuration for another program.
    #[command(subcommand)]
    Export(export::ExportCommand),
    Connect(tunnel::ConnectArgs),
    /// Take your tunnel to SESSION down (all your tunnels without SESSION).
    Disconnect(tunnel::DisconnectArgs),
    /// Your tunnels: path, peer endpoint, last handshake, round trip,
    /// traffic, time left, and why a tunnel ended if it did.
    ///
    /// path: how the datagrams travel, since when and why. "relay (UDP)":
    /// through the relay's UDP allocation, where every tunnel starts and
    /// where it goes back whenever no direct path works. "direct": straight
    /// to the gateway, on a path that both ends verified with authenticated
    /// probes (the fastest; when it stops answering the tunnel goes back to
    /// the relay within seconds). "relay (WebSocket)": through the relay
    /// over TCP 443, when no handshake got through over UDP (a network that
    /// lets only web traffic out). peer endpoint: where the datagrams go
    /// now (the gateway's or the relay's address, or the relay's WebSocket
    /// URL). last handshake: WireGuard renews its keys every two minutes
    /// while traffic flows; none means the gateway has not answered yet.
    /// round trip: of the path probes on a direct path, of the last
    /// handshake through the relay. traffic: bytes received and sent
    /// through the tunnel. time left: until the configuration expires and
    /// the tunnel goes down by itself. cloud: the service watches the
    /// session at the cloud and takes the tunnel down the moment it ends
    /// there; while the cloud cannot be reached the tunnel stays up.
    /// candidates: this machine's addresses the gateway may reach it at; when
    /// they change (another network) the service tells the cloud, which
    /// tells the gateway, and the tunnel finds its path again by itself.
    /// state: up, or down with why (expired, disconnected, replaced by a new
    /// connect, ended by whom, revoked); a tunnel that went down stays
    /// listed for a while.
    Status(tunnel::StatusArgs),
    Install(install::InstallArgs),
    /// Run the privileged service (root; systemd starts it, see `ferry install`).
    ///
    /// It listens on --socket for the members of --group, makes each
    /// tunnel's key pair and TUN device, and routes only the proxy addresses
    /// of a user's tunnels, only for that user (a policy rule per user).
    Service(service::ServiceArgs),
}

/// The exit status that tells a script what kind of failure it was.
fn exit_status(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<CloudError>() {
            return match e {
                CloudError::NotLoggedIn | CloudError::LoginExpired { .. } => 3,
                CloudError::Refused(problem) if problem.status == 401 => 3,
                CloudError::Refused(_) => 4,
                CloudError::Http(e) if e.is_unreachable() => 5,
                _ => 1,
            };
        }
        if cause.downcast_ref::<SessionRefused>().is_some() {
            return 4;
        }
        if let Some(e) = cause.downcast_ref::<ServiceError>() {
            return match e {
                ServiceError::NotRunning { .. } | ServiceError::PermissionDenied { .. } => 5,
                ServiceError::Refused { .. } => 4,
                _ => 1,
            };
        }
        if cause.downcast_ref::<HttpError>().is_some_and(HttpError::is_unreachable) {
            return 5;
        }
    }
    1
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (default_level, format) = match &cli.command {
        Command::Service(args) => ("info", args.log_format),
        _ => ("warn", ferry_daemon::logging::LogFormat::Text),
    };
    ferry_daemon::logging::init(cli.log.as_deref(), default_level, format);
    let socket = cli.socket;
    let result = match cli.command {
        Command::Service(args) => service::run(socket, args),
        Command::Login(args) => account::login(args),
        Command::Logout => account::logout(),
        Command::Sessions(args) => sessions::list(args),
        Command::Start(args) => sessions::start(args),
        Command::End(args) => sessions::end(args),
        Command::Export(command) => export::run(command),
        Command::Connect(args) => tunnel::connect(&socket, args),
        Command::Disconnect(args) => tunnel::disconnect(&socket, args),
        Command::Status(args) => tunnel::status(&socket, args),
        Command::Install(args) => install::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::from(exit_status(&error))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn failures_map_to_their_exit_status() {
        let status = |e: anyhow::Error| exit_status(&e.context("while doing something"));
        assert_eq!(status(CloudError::NotLoggedIn.into()), 3);
        let problem = ferry_api::Problem {
            kind: "urn:ferry:problem:switch-off".into(),
            title: "Remote maintenance switched off".into(),
            status: 409,
            detail: "x".into(),
            retry_after: None,
        };
        assert_eq!(status(CloudError::Refused(problem).into()), 4);
        assert_eq!(status(ServiceError::NotRunning { path: "/x".into() }.into()), 5);
        assert_eq!(status(SessionRefused::NotVisible("7".into()).into()), 4);
        assert_eq!(status(anyhow::anyhow!("anything else")), 1);
    }
}
