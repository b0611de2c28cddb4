//! `ferry-soak`: the whole of Ferry in network namespaces for a while, under
//! a seeded workload of sessions and seeded faults, with invariants checked
//! after every step. `cargo xtask soak` builds it and runs it; the test
//! `ferry-tests --test soak` runs a short one. See docs/soak.md.

mod acked;
mod capture;
mod clients;
mod clock;
mod cloud;
mod faults;
mod gateways;
mod machine_net;
mod maps;
mod outage;
mod ping;
mod recovery;
mod relays;
mod report;
mod rng;
mod soak;
mod udp;
mod usage;
mod workload;

use std::{process::ExitCode, time::Duration};

use clap::Parser;

/// Ferry under churn and faults: a cloud, two relays, one to three gateways
/// behind different NATs, each with its machine network, and two to six
/// technicians, in network namespaces;
/// sessions prepared, started, approved, used and ended while daemons are
/// killed, links drop and NAT mappings change. Fails at the first breach of
/// an invariant, with the seed and the event log. Needs root.
#[derive(Parser, Debug)]
#[command(name = "ferry-soak", version, long_about)]
struct Cli {
    /// How long the workload runs, in minutes.
    #[arg(long, default_value_t = 10, conflicts_with = "seconds")]
    minutes: u64,
    /// How long the workload runs, in seconds (for short runs in tests).
    #[arg(long)]
    seconds: Option<u64>,
    /// The seed of the schedule of steps and faults; random if not given.
    /// The same seed replays the same schedule.
    #[arg(long)]
    seed: Option<u64>,
    /// Leave out the fault that makes the cloud unreachable (20 to 60 s);
    /// the same as `--cloud-outage-percent 0`.
    #[arg(long, conflicts_with = "cloud_outage_percent")]
    no_cloud_outage: bool,
    /// The chance, in percent, that a fault step brings the cloud's outage
    /// first. Drawn from a stream of its own, so another chance changes
    /// which steps bring one and nothing else of the schedule (until the
    /// timing differs). Raise it to soak the reconnections after outages:
    /// at 100 every fault step brings one.
    #[arg(long, default_value_t = soak::DEFAULT_OUTAGE_PERCENT, value_parser = clap::value_parser!(u64).range(0..=100))]
    cloud_outage_percent: u64,
    /// How many technicians (2 to 6): two on public addresses of their
    /// own, then alternately one behind a symmetric NAT (the `ferry`
    /// client takes the relay) and one behind a cone NAT. Which technician
    /// acts at a step is a seeded choice among them, so the same seed with
    /// another count is another schedule.
    #[arg(long, default_value_t = DEFAULT_TECHNICIANS, value_parser = clap::value_parser!(u64).range(soak::MIN_TECHNICIANS as u64..=soak::MAX_TECHNICIANS as u64))]
    technicians: u64,
    /// How many gateways (1 to 3), each at a customer site of its own with
    /// its own machine network: the first behind a cone NAT, the second
    /// behind a symmetric NAT (a technician behind a symmetric NAT reaches
    /// it only through a relay), the third on a public address. Each
    /// session goes to one of them, and a fault on a site (its gateway
    /// killed, its clock stepped, its link cut or impaired, its NAT's
    /// conntrack flushed) takes one, both drawn from a stream of their own.
    /// A switch-off or a fault then touches that gateway's sessions only,
    /// so the later steps differ from the same seed's with another count: a
    /// replay with the same `--gateways` is the same schedule (apart from
    /// drift when the timing differs).
    #[arg(long, default_value_t = DEFAULT_GATEWAYS, value_parser = clap::value_parser!(u64).range(gateways::MIN_GATEWAYS as u64..=gateways::MAX_GATEWAYS as u64))]
    gateways: u64,
    /// Where the cloud keeps its data: sled (one `ferry-cloud`), or
    /// PostgreSQL: the soak starts its own server (Debian's PostgreSQL 15,
    /// `cargo xtask setup` installs it) in a temporary folder, removed at
    /// the end, and runs two `ferry-cloud` replicas on it, whose addresses
    /// the gateway, the relays and the technicians' clients all get; "kill
    /// cloud" then kills one replica (or restarts the database).
    #[arg(long, value_enum, default_value_t = cloud::Storage::Sled)]
    storage: cloud::Storage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !is_root() {
        eprintln!(
            "ferry-soak needs root (it builds network namespaces): run `sudo -E env PATH=$PATH cargo xtask soak`"
        );
        return ExitCode::from(2);
    }
    if let Err(error) = ferry_lab::sweep_on_signals("ferry-soak") {
        eprintln!("ferry-soak: {error:#}");
        return ExitCode::FAILURE;
    }
    let seed = cli.seed.unwrap_or_else(rng::fresh_seed);
    let duration = Duration::from_secs(cli.seconds.unwrap_or(cli.minutes * 60));
    // Every option that changes the schedule or the world.
    let mut replay = format!("--seed {seed}");
    if cli.storage == cloud::Storage::Postgres {
        replay.push_str(" --storage postgres");
    }
    if cli.technicians != DEFAULT_TECHNICIANS {
        replay.push_str(&format!(" --technicians {}", cli.technicians));
    }
    if cli.gateways != DEFAULT_GATEWAYS {
        replay.push_str(&format!(" --gateways {}", cli.gateways));
    }
    let outage_percent = if cli.no_cloud_outage { 0 } else { cli.cloud_outage_percent };
    if outage_percent == 0 {
        replay.push_str(" --no-cloud-outage");
    } else if outage_percent != soak::DEFAULT_OUTAGE_PERCENT {
        replay.push_str(&format!(" --cloud-outage-percent {outage_percent}"));
    }
    println!("ferry-soak: seed {seed}, workload for {}s (replay with {replay})", duration.as_secs());
    match soak::run(
        seed,
        duration,
        outage_percent,
        cli.technicians as usize,
        cli.gateways as usize,
        cli.storage,
    ) {
        Ok(table) => {
            println!("{table}");
            println!("ferry-soak: passed, seed {seed}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{failure}");
            eprintln!("ferry-soak: FAILED, seed {seed} (replay with {replay})");
            ExitCode::FAILURE
        }
    }
}

const DEFAULT_TECHNICIANS: u64 = 4;
const DEFAULT_GATEWAYS: u64 = 3;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
