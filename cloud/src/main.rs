//! `ferry-cloud`: the control plane, an HTTP API over an embedded database.

use ferry_cloud::{audit, config, http, password, rights::Role, store, users};

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use ferry_daemon::CommonArgs;

/// Ferry's control plane.
///
/// The one place where remote maintenance is prepared, released, started,
/// ended and recorded. It serves an HTTP API under /api/v1 and keeps its state
/// in an embedded sled database in the data folder. On first start it creates
/// an Administrator `admin` and prints its one-time password.
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
    /// Manage Administrators from the command line (with the server
    /// stopped: the database allows one process at a time).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Create an Administrator with a one-time password, printed once; it
    /// must be changed at first login.
    Create {
        /// The new Administrator's name.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Folder of the database (default as for `serve`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
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
        Command::Admin(AdminCommand::Create { name, data_dir }) => {
            let store = open_store(data_dir.or(config.data_dir))?;
            let secret = password::one_time();
            let user = users::create_with(&store, &name, Role::Administrator, &secret, now_ms(), true)
                .with_context(|| format!("creating the Administrator `{name}`"))?;
            record_admin_creation(&store, &user.name, "admin create")?;
            println!("created Administrator `{}` with the one-time password: {secret}", user.name);
            println!("it must be changed at first login (POST /api/v1/me/password)");
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { data_dir }) => {
            let store = open_store(data_dir.or(config.data_dir))?;
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

fn now_ms() -> u64 {
    use ferry_cloud::clock::Clock;
    ferry_cloud::clock::SystemClock.now_ms()
}

fn open_store(data_dir: Option<PathBuf>) -> Result<store::Store> {
    let data_dir = data_dir.unwrap_or_else(|| ferry_daemon::paths::default_data_dir("cloud"));
    store::Store::open(&data_dir).with_context(|| {
        format!(
            "opening the database in {} (a running ferry-cloud holds it; stop it first, or use the API)",
            data_dir.display()
        )
    })
}

fn record_admin_creation(store: &store::Store, name: &str, how: &str) -> Result<()> {
    audit::append(
        store,
        now_ms(),
        audit::Event {
            actor: "system".into(),
            action: "user.create".into(),
            allowed: true,
            source: None,
            session: None,
            gateway: None,
            detail: Some(format!("{name} as Administrator ({how})")),
        },
    )?;
    Ok(())
}

/// On first start there is nobody to log in: make an Administrator and
/// print its one-time password, once.
fn first_start(store: &store::Store) -> Result<()> {
    if !users::none_exist(store)? {
        return Ok(());
    }
    let secret = password::one_time();
    let user = users::create_with(store, "admin", Role::Administrator, &secret, now_ms(), true)?;
    record_admin_creation(store, &user.name, "first start")?;
    println!("first start: created Administrator `admin` with the one-time password: {secret}");
    Ok(())
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
    let store = open_store(Some(data_dir.clone()))?;
    first_start(&store)?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr()?;
        let shutdown = ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?;
        println!("ferry-cloud listening on http://{bound} (data in {})", data_dir.display());
        tracing::info!(%bound, data_dir = %data_dir.display(), schema = store::SCHEMA_VERSION, "serving");
        let app = http::router(http::AppState::new(store.clone())?);
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
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
