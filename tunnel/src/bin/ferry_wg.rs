//! `ferry-wg`: Ferry's WireGuard engine on its own, from a wg-quick file.

use std::{num::NonZeroUsize, path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ferry_daemon::logging::LogFormat;
use ferry_tunnel::{
    PrivateKey,
    config::WgQuickConfig,
    endpoint::{DEFAULT_MTU, Endpoint, EndpointConfig},
    keys,
    parallel::CryptoPool,
    uapi,
};
use tokio::signal::unix::{SignalKind, signal};

/// Run Ferry's WireGuard engine standalone.
///
/// `ferry-wg up wg0.conf` reads a wg-quick file, creates the TUN device with
/// its addresses and MTU, and runs in the foreground until SIGINT or SIGTERM.
/// While it runs, stock `wg show <name>` and `wg set <name> ...` work on it
/// through /var/run/wireguard/<name>.sock, and SIGUSR1 starts a new handshake
/// with every peer. Routes beyond the interface's own subnets, DNS and hooks
/// are left to the caller (wg-quick's other jobs).
#[derive(Parser, Debug)]
#[command(name = "ferry-wg", version, about, long_about)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, env = "FERRY_LOG")]
    log: Option<String>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring up a tunnel from a wg-quick file and run it until interrupted.
    Up {
        /// The wg-quick file ([Interface] and [Peer] sections).
        config: PathBuf,
        /// The interface name (default: the file's name without .conf).
        #[arg(long)]
        name: Option<String>,
        /// Private key file, used when the config has no PrivateKey; created
        /// with a fresh key and mode 0600 if missing.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Runtime threads for the packet loops. One avoids cross-core
        /// wakeups; the encryption and decryption of each batch are spread
        /// over the cores (up to four) by the crypto threads whatever this
        /// is, and more runtime threads let the two directions' loops run
        /// apart as well.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Threads that share one batch's encryption or decryption, the
        /// packet thread included (default: the cores, at most four). On a
        /// machine whose cores are busy with other work, one avoids handing
        /// batches across cores.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        crypto_threads: Option<u16>,
    },
    /// Print a new private key (or write it to --out with mode 0600).
    Genkey {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read a private key on stdin and print its public key.
    Pubkey,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ferry_daemon::logging::init(cli.log.as_deref(), "info", cli.log_format);
    match cli.command {
        Command::Genkey { out: None } => {
            println!("{}", PrivateKey::generate().to_base64());
            Ok(())
        }
        Command::Genkey { out: Some(path) } => {
            if path.exists() {
                bail!("{} exists; refusing to overwrite a key", path.display());
            }
            keys::load_or_generate(&path).with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        }
        Command::Pubkey => {
            let mut text = String::new();
            std::io::stdin().read_line(&mut text)?;
            println!("{}", PrivateKey::from_base64(&text)?.public_key());
            Ok(())
        }
        Command::Up { config, name, key_file, threads, crypto_threads } => {
            if let Some(n) = crypto_threads.and_then(|n| NonZeroUsize::new(usize::from(n))) {
                CryptoPool::set_shared_threads(n);
            }
            up(config, name, key_file, threads)
        }
    }
}

fn up(path: PathBuf, name: Option<String>, key_file: Option<PathBuf>, threads: u16) -> Result<()> {
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: WgQuickConfig = text.parse().with_context(|| format!("parsing {}", path.display()))?;
    for (line, key) in &config.interface.ignored {
        tracing::warn!(line, key, "not applied by ferry-wg (wg-quick handles it outside WireGuard)");
    }
    let name = match name {
        Some(n) => n,
        None => {
            path.file_stem().and_then(|s| s.to_str()).context("cannot derive an interface name")?.to_string()
        }
    };
    if name.is_empty() || name.len() > 15 {
        bail!("interface name `{name}` must be 1 to 15 bytes");
    }
    let private_key = match (config.interface.private_key.clone(), key_file) {
        (Some(key), _) => key,
        (None, Some(file)) => {
            keys::load_or_generate(&file).with_context(|| format!("key file {}", file.display()))?
        }
        (None, None) => bail!("{} has no PrivateKey; add one or pass --key-file", path.display()),
    };
    let endpoint_config = EndpointConfig {
        name: name.clone(),
        private_key,
        listen_port: config.interface.listen_port.unwrap_or(0),
        addresses: config.interface.addresses.clone(),
        mtu: config.interface.mtu.unwrap_or(DEFAULT_MTU),
        peers: config.peers.clone(),
    };

    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads))
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut user1 = signal(SignalKind::user_defined1())?;
        let endpoint = Arc::new(Endpoint::start(endpoint_config).await?);
        let (socket, uapi_task) = uapi::serve(Arc::clone(&endpoint)).context("starting the UAPI socket")?;
        println!(
            "ferry-wg: {name} up, UDP port {}, public key {}; `wg show {name}` works, SIGUSR1 rekeys",
            endpoint.local_port(),
            endpoint.public_key()
        );
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = user1.recv() => {
                    for peer in endpoint.status() {
                        endpoint.rekey(&peer.public_key);
                    }
                    tracing::info!("rekeying every peer");
                }
            }
        }
        uapi_task.abort();
        let _ = std::fs::remove_file(&socket);
        for peer in endpoint.status() {
            println!(
                "peer {}: endpoint {}, {} handshakes, rx {} B, tx {} B",
                peer.public_key,
                peer.endpoint.map_or("(none)".to_string(), |e| e.to_string()),
                peer.handshakes,
                peer.rx_bytes,
                peer.tx_bytes
            );
        }
        Ok(())
    })
}
