//! `ferry-cloud`: the control plane, an HTTP API over an embedded database.

use ferry_cloud::{audit, config, http, store};

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ferry_daemon::CommonArgs;

/// Ferry's control plane.
///
/// The one place where remote maintenance is prepared, released, started,
/// ended and recorded. It serves an HTTP API under /api/v1 and keeps its state
/// in an embedded sled database in the data folder. This build serves health,
/// version and metrics over the versioned store; users, gateways and sessions
/// follow.
#[derive(Parser, Debug)]
#[command(name = "ferry-cloud", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API (the default when no command is given).
    Serve(ServeArgs),
    /// Work with the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the audit log's hash chain; exits non-zero and names the first
    /// broken entry if any entry was changed, removed or reordered.
    Verify {
        /// Folder of the database (default as for `serve`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    /// Address to listen on (default: `listen` from the config, else
    /// 127.0.0.1:7600). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// Folder for the database (default: `data_dir` from the config, else
    /// /var/lib/ferry-cloud for root or ~/.local/share/ferry/cloud).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Serve plain HTTP on a non-loopback address. Without TLS, tokens and
    /// passwords cross the network in clear; only for a trusted network or a
    /// TLS-terminating proxy on the same host.
    #[arg(long)]
    allow_plain_http: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.common.log.as_deref(), "info", cli.common.log_format);
    let config = config::load(cli.common.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args, config),
        Command::Audit(AuditCommand::Verify { data_dir }) => {
            let data_dir = data_dir
                .or(config.data_dir)
                .unwrap_or_else(|| ferry_daemon::paths::default_data_dir("cloud"));
            let store = store::Store::open(&data_dir)
                .with_context(|| format!("opening the database in {}", data_dir.display()))?;
            match audit::verify(&store)? {
                Ok(count) => {
                    println!("audit log intact: {count} entries");
                    Ok(())
                }
                Err(broken) => bail!("audit log broken at entry {}: {}", broken.seq, broken.reason),
            }
        }
    }
}

fn serve(args: ServeArgs, config: config::Config) -> Result<()> {
    let listen = args.listen.or(config.listen).unwrap_or(config::DEFAULT_LISTEN);
    let allow_plain = args.allow_plain_http || config.allow_plain_http;
    if !listen.ip().is_loopback() && !allow_plain {
        bail!(
            "refusing to serve plain HTTP on {listen}: only loopback addresses are allowed without TLS \
             (pass --allow-plain-http to override)"
        );
    }
    let data_dir =
        args.data_dir.or(config.data_dir).unwrap_or_else(|| ferry_daemon::paths::default_data_dir("cloud"));
    let store = store::Store::open(&data_dir)
        .with_context(|| format!("opening the database in {}", data_dir.display()))?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr()?;
        let shutdown = ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?;
        println!("ferry-cloud listening on http://{bound} (data in {})", data_dir.display());
        tracing::info!(%bound, data_dir = %data_dir.display(), schema = store::SCHEMA_VERSION, "serving");
        let app = http::router(http::AppState::new(store.clone()));
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let signal = shutdown.wait().await;
                tracing::info!(signal, "shutting down");
            })
            .await
            .context("serving HTTP")?;
        // Every commit is already durable; nothing is left to flush.
        drop(store);
        Ok(())
    })
}
