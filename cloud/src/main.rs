//! `ferry-cloud`: the control plane, an HTTP API over an embedded database.

use ferry_cloud::{
    audit, config, http, metrics::ReasonLabels, password, rights::Role, server, store, tls, users,
};

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
    /// Manage Administrators from the command line (with sled, with the
    /// server stopped: the database allows one process at a time).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Copy a sled data folder into an empty PostgreSQL database, then
    /// check that everything arrived and that the audit chain verifies
    /// there. Stop the ferry-cloud using the folder first.
    Migrate {
        /// The data folder of the sled database to copy (it holds `db/`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database to copy into: postgres://user@host/db
        /// (it must hold no ferry data yet).
        #[arg(long, value_name = "URL")]
        to: String,
        /// A file whose first line is the database password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

/// Where the documents are, for every command: a PostgreSQL URL, or else
/// `storage` from the config, or else sled in the data folder.
#[derive(Args, Debug, Default, Clone)]
struct StorageArgs {
    /// The PostgreSQL database to use (postgres://user@host/db) instead of
    /// sled in the data folder (default: `storage` from the config).
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
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
        #[command(flatten)]
        storage: StorageArgs,
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
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,

    /// Address to listen on (default: `listen` from the config, else
    /// 127.0.0.1:7600). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// Folder for the database and the self-signed certificate (default:
    /// `data_dir` from the config, else /var/lib/ferry-cloud for root or
    /// ~/.local/share/ferry/cloud).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// PEM file with the certificate chain to serve, leaf first (default:
    /// `tls_cert` from the config). Give it with --tls-key, or give neither
    /// to have a self-signed certificate made in DIR/tls on first start and
    /// reused after; its SHA-256 fingerprint is printed at start for clients
    /// to pin.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, SEC1 or PKCS#1;
    /// default: `tls_key` from the config).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// Serve plain HTTP instead of HTTPS: only on a loopback address, unless
    /// --allow-plain-http is given too. For a TLS-terminating proxy on the
    /// same host, or for tests.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    no_tls: bool,

    /// With --no-tls, serve plain HTTP on a non-loopback address too.
    /// Without TLS, tokens and passwords cross the network in clear; only for
    /// a trusted network or a TLS-terminating proxy. No effect without
    /// --no-tls.
    #[arg(long)]
    allow_plain_http: bool,

    /// Days to keep audit entries; older ones are removed at start and then
    /// hourly (default: `audit_retention_days` from the config, else 550;
    /// 1 to 36500).
    #[arg(long, value_name = "DAYS", value_parser = config::parse_retention_days)]
    audit_retention_days: Option<u32>,

    /// Connections open at once from one client address (an IPv4 address,
    /// an IPv6 /64); more are closed at once (default:
    /// `max_connections_per_source` from the config, else 256; 1 to 4096).
    #[arg(long, value_name = "N", value_parser = config::parse_connections_per_source)]
    max_connections_per_source: Option<usize>,

    /// Bytes of request bodies held at once from one client address, of
    /// 16 MiB in all; beyond it a request with a body gets 503 (default:
    /// `max_body_bytes_per_source` from the config, else 1048576; 65536 to
    /// 16777216). Raise it with --max-connections-per-source behind a proxy.
    #[arg(long, value_name = "BYTES", value_parser = config::parse_body_bytes_per_source)]
    max_body_bytes_per_source: Option<usize>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.common.log.as_deref(), "info", cli.common.log_format);
    let config = config::load(cli.common.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args, config),
        Command::Admin(AdminCommand::Create { name, data_dir, storage }) => {
            let store = open_store(data_dir.or(config.data_dir), storage.or(config.storage))?;
            let secret = password::one_time();
            let user = users::create_with(
                &store,
                &name,
                Role::Administrator,
                &secret,
                now_ms(),
                true,
                Some(admin_created(&name, "admin create")),
            )
            .with_context(|| format!("creating the Administrator `{name}`"))?;
            println!("created Administrator `{}` with the one-time password: {secret}", user.name);
            println!("it must be changed at first login (POST /api/v1/me/password)");
            Ok(())
        }
        Command::Migrate { from, to, password_file } => migrate(&from, &to, password_file.as_deref()),
        Command::Audit(AuditCommand::Verify { data_dir, storage }) => {
            let store = open_store(data_dir.or(config.data_dir), storage.or(config.storage))?;
            match audit::verify(&store)? {
                Ok(intact) => {
                    match intact.anchor_seq {
                        Some(seq) => println!(
                            "audit log intact: {} entries (after {seq}, removed by retention)",
                            intact.entries
                        ),
                        None => println!("audit log intact: {} entries", intact.entries),
                    }
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

impl StorageArgs {
    /// The command line's choice, else the config's.
    fn or(self, configured: Option<config::StorageConfig>) -> Option<config::StorageConfig> {
        self.storage.map(config::StorageConfig::from_url).or(configured)
    }
}

fn open_store(data_dir: Option<PathBuf>, storage: Option<config::StorageConfig>) -> Result<store::Store> {
    open_storage(data_dir, storage).map(|(store, _)| store)
}

/// The store, and the PostgreSQL backend under it if that is the storage.
fn open_storage(
    data_dir: Option<PathBuf>,
    storage: Option<config::StorageConfig>,
) -> Result<(store::Store, Option<std::sync::Arc<store::PostgresBackend>>)> {
    if let Some(storage) = storage {
        let options = storage.options().map_err(anyhow::Error::msg)?;
        let backend = std::sync::Arc::new(
            store::PostgresBackend::connect(&options)
                .with_context(|| format!("connecting to the {}", options.describe()))?,
        );
        let store = store::Store::with_backend(backend.clone())
            .with_context(|| format!("opening the {}", options.describe()))?;
        return Ok((store, Some(backend)));
    }
    let data_dir = data_dir.unwrap_or_else(|| ferry_daemon::paths::default_data_dir("cloud"));
    let store = store::Store::open(&data_dir).with_context(|| {
        format!(
            "opening the database in {} (a running ferry-cloud holds it; stop it first, or use the API)",
            data_dir.display()
        )
    })?;
    Ok((store, None))
}

/// The audit entry of a new Administrator, stored with the user.
fn admin_created(name: &str, how: &str) -> audit::Event {
    audit::Event {
        actor: "system".into(),
        action: "user.create".into(),
        allowed: true,
        source: None,
        session: None,
        gateway: None,
        detail: Some(format!("{name} as Administrator ({how})")),
    }
}

/// On first start there is nobody to log in: make an Administrator and
/// print its one-time password, once.
fn first_start(store: &store::Store) -> Result<()> {
    if !users::none_exist(store)? {
        return Ok(());
    }
    let secret = password::one_time();
    let created = users::create_with(
        store,
        "admin",
        Role::Administrator,
        &secret,
        now_ms(),
        true,
        Some(admin_created("admin", "first start")),
    );
    match created {
        Ok(_) => {
            println!("first start: created Administrator `admin` with the one-time password: {secret}");
            Ok(())
        }
        // Another replica, starting on the same new database, made it (and
        // printed its password).
        Err(users::UserError::Exists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `ferry-cloud migrate`: sled folder -> empty PostgreSQL database, then
/// every document compared and the audit chain verified on the target.
fn migrate(from: &std::path::Path, to: &str, password_file: Option<&std::path::Path>) -> Result<()> {
    use store::Backend as _;
    let mut storage = config::StorageConfig::from_url(to.to_string());
    if let Some(file) = password_file {
        storage = config::StorageConfig::Table(config::StorageTable {
            url: to.to_string(),
            password_file: Some(file.to_path_buf()),
            pool_size: None,
        });
    }
    let options = storage.options().map_err(anyhow::Error::msg)?;
    let source_db = from.join("db");
    if !source_db.exists() {
        bail!("{} holds no sled database (no {} folder)", from.display(), source_db.display());
    }
    let source = std::sync::Arc::new(store::SledBackend::open(&source_db).with_context(|| {
        format!("opening {} (stop the ferry-cloud that uses it first)", source_db.display())
    })?);
    // Checks the source's schema version: a newer one is refused.
    let source_store = store::Store::with_backend(source.clone()).context("reading the source")?;
    let source_chain = match audit::verify(&source_store)? {
        Ok(intact) => intact,
        Err(broken) => bail!(
            "the source's audit log is broken at entry {}: {}; refusing to copy it",
            broken.seq,
            broken.reason
        ),
    };
    let target = std::sync::Arc::new(
        store::PostgresBackend::connect(&options)
            .with_context(|| format!("connecting to the {}", options.describe()))?,
    );
    if !target.is_empty()? {
        bail!("the {} already holds ferry data; migrate only into an empty database", options.describe());
    }
    let copied = store::copy::copy_all(source.as_ref(), target.as_ref())?;
    // Ids the target hands out from now on must be new to the copied data.
    target.raise_ids_above(source.generate_id()?)?;
    let compared = store::copy::compare_all(source.as_ref(), target.as_ref())?;
    let target_store = store::Store::with_backend(target).context("opening the target")?;
    match audit::verify(&target_store)? {
        Ok(intact) if intact == source_chain => {}
        Ok(intact) => bail!(
            "the audit log differs on the target: {} entries where the source has {}",
            intact.entries,
            source_chain.entries
        ),
        Err(broken) => {
            bail!("the audit log does not verify on the target: entry {}: {}", broken.seq, broken.reason)
        }
    }
    for (collection, count) in &copied.per_collection {
        println!("{:<18} {count}", collection.name());
    }
    println!(
        "migrated {} documents ({compared} compared) from {} to the {}; the audit log verifies there ({} entries)",
        copied.total(),
        from.display(),
        options.describe(),
        source_chain.entries
    );
    Ok(())
}

fn serve(args: ServeArgs, config: config::Config) -> Result<()> {
    let listen = args.listen.or(config.listen).unwrap_or(config::DEFAULT_LISTEN);
    let allow_plain = args.allow_plain_http || config.allow_plain_http;
    if args.no_tls && !listen.ip().is_loopback() && !allow_plain {
        bail!(
            "refusing to serve plain HTTP on {listen}: only loopback addresses are allowed without TLS \
             (pass --allow-plain-http to override)"
        );
    }
    let tls_files = match (args.tls_cert.or(config.tls_cert), args.tls_key.or(config.tls_key)) {
        _ if args.no_tls => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => bail!(
            "--tls-cert (or tls_cert in the config) is set but --tls-key (or tls_key) is not: \
             give both, or neither for a self-signed certificate"
        ),
        (None, Some(_)) => bail!(
            "--tls-key (or tls_key in the config) is set but --tls-cert (or tls_cert) is not: \
             give both, or neither for a self-signed certificate"
        ),
    };
    let retention_days = args
        .audit_retention_days
        .or(config.audit_retention_days)
        .unwrap_or(config::DEFAULT_AUDIT_RETENTION_DAYS);
    let max_connections_per_source = args
        .max_connections_per_source
        .or(config.max_connections_per_source)
        .unwrap_or(server::MAX_CONNECTIONS_PER_SOURCE);
    let max_body_bytes_per_source = args
        .max_body_bytes_per_source
        .or(config.max_body_bytes_per_source)
        .unwrap_or(http::extract::BODY_BUDGET_PER_SOURCE);
    let data_dir =
        args.data_dir.or(config.data_dir).unwrap_or_else(|| ferry_daemon::paths::default_data_dir("cloud"));
    let storage = args.storage.or(config.storage);
    let where_data = match &storage {
        Some(s) => s.options().map_err(anyhow::Error::msg)?.describe(),
        None => data_dir.display().to_string(),
    };
    let (store, postgres) = open_storage(Some(data_dir.clone()), storage)?;
    first_start(&store)?;
    let tls = if args.no_tls {
        None
    } else {
        let (cert, key) = match tls_files {
            Some(files) => files,
            None => tls::ensure_self_signed(&data_dir, &config.tls_names)
                .context("preparing the self-signed certificate")?,
        };
        let server_config = tls::server_config(&cert, &key).context("loading the TLS certificate")?;
        Some((server_config, tls::fingerprint_file(&cert)?))
    };

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr()?;
        let shutdown = ferry_daemon::signals::Shutdown::install().context("installing signal handlers")?;
        match &tls {
            Some((_, fingerprint)) => println!(
                "ferry-cloud listening on https://{bound} (data in {where_data}; certificate sha256 {fingerprint})"
            ),
            None => println!("ferry-cloud listening on http://{bound} (data in {where_data})"),
        }
        tracing::info!(
            %bound,
            tls = tls.is_some(),
            data = %where_data,
            schema = store::SCHEMA_VERSION,
            "serving"
        );
        let state = http::AppState::new(store.clone())?;
        if let Some((_, fingerprint)) = &tls {
            state.set_tls_pin(fingerprint.clone());
        }
        // Over PostgreSQL, other replicas may share the database.
        let cluster = match &postgres {
            Some(backend) => {
                let (cluster, incoming) = ferry_cloud::hub::postgres::PgCluster::join(
                    backend.clone(),
                    &format!("{} on {bound}", env!("CARGO_PKG_VERSION")),
                )
                .context("joining the other replicas")?;
                let follower = ferry_cloud::hub::cluster::follow(&state, cluster.clone(), incoming);
                Some((cluster, follower))
            }
            None => None,
        };
        let ticker = spawn_ticker(state.clone());
        let retention = spawn_retention(state.clone(), retention_days);
        let refused = |reason| state.metrics.connections_refused.get_or_create(&reason).clone();
        let options = server::ServeOptions {
            tls_handshake_failures: state.metrics.tls_handshake_failures.clone(),
            connections_refused: refused(ReasonLabels::GLOBAL),
            max_connections_per_source,
            connections_refused_per_source: refused(ReasonLabels::PER_SOURCE),
            ..server::ServeOptions::default()
        };
        let streams = state.clone();
        let shutdown = async move {
            let signal = shutdown.wait().await;
            tracing::info!(signal, "shutting down");
            // Event streams never end by themselves; the graceful shutdown
            // waits for every response in flight.
            streams.hub.close_streams();
        };
        let budget =
            http::extract::BodyBudget::new(http::extract::BODY_BUDGET, max_body_bytes_per_source, &state.metrics);
        server::serve_with(
            listener,
            http::router_with(state, budget),
            tls.map(|(config, _)| config),
            shutdown,
            options,
        )
            .await
            .context("serving HTTP")?;
        ticker.abort();
        retention.abort();
        if let Some((cluster, follower)) = cluster {
            follower.abort();
            let leaving = cluster.clone();
            tokio::task::spawn_blocking(move || ferry_cloud::hub::cluster::Cluster::leave(leaving.as_ref())).await?;
        }
        // Every commit is already durable; nothing is left to flush.
        drop(store);
        Ok(())
    })
}

/// Expires sessions on time, every second.
fn spawn_ticker(state: http::AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let state = state.clone();
            match tokio::task::spawn_blocking(move || state.tick()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::error!(%error, "expiring sessions failed"),
                Err(error) => tracing::error!(%error, "the expiry task failed"),
            }
        }
    })
}

/// Removes audit entries older than the retention, at start and then hourly.
fn spawn_retention(state: http::AppState, days: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_secs(3600));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let state = state.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                let now = state.now_ms();
                audit::prune(&state.store, now.saturating_sub(u64::from(days) * 86_400_000), now)
            });
            match pruned.await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(removed, days, "removed audit entries beyond the retention")
                }
                Ok(Err(error)) => tracing::error!(%error, "removing old audit entries failed"),
                Err(error) => tracing::error!(%error, "the audit retention task failed"),
            }
        }
    })
}
