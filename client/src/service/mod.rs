//! `ferry service`: the small privileged part of the client. It owns the TUN
//! devices, the WireGuard engines (whose private keys it makes and never
//! lets out) and the routes, and does for each user only what that user
//! asks over its socket, for that user's tunnels.

mod manager;
mod paths;
mod plan;
mod roaming;
mod routing;
mod socket;
mod watch;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ferry_daemon::{logging::LogFormat, notify, signals::Shutdown};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{Answer, Request};

/// What the manager task is told.
pub enum Event {
    /// A request of uid `uid` (as the kernel names the caller).
    Call { uid: u32, request: Request, reply: oneshot::Sender<Answer> },
    /// A tunnel's configuration expired.
    Expire { tunnel: u64 },
    /// What the watch on a tunnel's configuration at the cloud learned.
    Watch { tunnel: u64, news: watch::News },
    /// This machine's addresses or routes changed (roaming).
    NetworkChanged,
    /// Housekeeping: stale preparations go.
    Tick,
    /// Take everything down, then say so.
    Stop(oneshot::Sender<()>),
}

#[derive(Args, Debug)]
pub struct ServiceArgs {
    /// The group whose members may use the service: the socket is made
    /// 0660 root:GROUP. `ferry install` creates it.
    #[arg(long, value_name = "NAME", default_value = "ferry")]
    pub group: String,
    /// The group by number instead of by name.
    #[arg(long, value_name = "GID", conflicts_with = "group")]
    pub group_id: Option<u32>,
    /// Log format on stderr (json for a log collector).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn group_id(args: &ServiceArgs) -> Result<u32> {
    if let Some(gid) = args.group_id {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(&args.group).context("reading the group database")? {
        Some(group) => Ok(group.gid.as_raw()),
        None => bail!(
            "there is no group {:?}: run `ferry install` (it creates the group `ferry`), or pass --group-id",
            args.group
        ),
    }
}

pub fn run(socket: PathBuf, args: ServiceArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`ferry service` runs as root (it makes TUN devices and routes); `ferry install` sets it up under systemd"
        );
    }
    let gid = group_id(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(socket, gid))
}

async fn serve(socket: PathBuf, gid: u32) -> Result<()> {
    let routing = routing::Routing::open().context("opening netlink")?;
    let swept = routing.sweep().await.context("removing what a previous service left")?;
    if !swept.is_empty() {
        tracing::info!(rules = swept.len(), "removed the rules a previous service left behind");
    }
    let shutdown = Shutdown::install().context("installing signal handlers")?;
    let listener =
        socket::bind(&socket, gid).with_context(|| format!("listening on {}", socket.display()))?;
    let (events, receiver) = mpsc::channel(64);
    let manager = tokio::spawn(manager::Manager::new(routing, events.clone()).run(receiver));
    let server = tokio::spawn(socket::serve(listener, events.clone()));
    let monitor = roaming::monitor(events.clone())
        .inspect_err(|e| {
            tracing::warn!(error = %e, "no netlink notifications: network changes are noticed within 10 s only")
        })
        .ok();
    let ticks = events.clone();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            if ticks.send(Event::Tick).await.is_err() {
                return;
            }
        }
    });
    tracing::info!(socket = %socket.display(), gid, "ferry service ready");
    notify::ready();

    let signal = shutdown.wait().await;
    tracing::info!(signal, "stopping: taking every tunnel down");
    notify::stopping();
    server.abort();
    ticker.abort();
    if let Some(monitor) = monitor {
        monitor.abort();
    }
    let (done, stopped) = oneshot::channel();
    if events.send(Event::Stop(done)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(10), stopped).await;
    }
    let _ = manager.await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
