//! `cargo xtask`: the project's own commands.

mod bench;
mod cargo;
mod demo;
mod setup;
mod soak;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Ferry's development commands.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install what building and testing need (idempotent): nightly rust-src,
    /// bpf-linker, the Debian packages the tests use, cargo-machete, and the
    /// browser tests' npm packages.
    Setup,
    /// Build the eBPF object from gateway-ebpf and print its path.
    BuildEbpf,
    /// The one test command: setup, build everything, run every suite
    /// (including the root/network-namespace ones) and print a summary.
    /// Arguments after `--` go to each `cargo test` (for example a name filter).
    Test {
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run named benchmarks; each prints a table and writes
    /// target/bench/<name>.json. Without a name, lists them.
    Bench { names: Vec<String> },
    /// The whole product on one machine: a cloud, a relay, a customer's
    /// plant with a gateway, a PLC and an HMI, and a technician at home, in
    /// network namespaces; then a remote maintenance session from the
    /// admin's first login to the audit log, step by step. As root. Builds
    /// what it needs in release first. Ctrl-C removes everything it made.
    Demo {
        /// How the technician's network reaches the plant: `direct` (cone
        /// NATs on both sides), `relay` (a symmetric NAT at the technician's)
        /// or `websocket` (only TCP 443 out of the technician's network).
        /// Default: direct once the client can take direct paths, the relay
        /// until then.
        #[arg(long, value_name = "PATH", value_parser = ["direct", "relay", "websocket"])]
        path: Option<String>,
        /// Walk the steps, check each, clean up and exit (non-zero, naming
        /// the step, if one failed), instead of staying up.
        #[arg(long)]
        once: bool,
    },
    /// The whole system under a seeded workload of sessions and seeded
    /// faults (daemons killed, links down, NAT mappings lost, packet loss),
    /// with invariants checked all the time; fails at the first breach with
    /// the seed and the event log, else prints a table. As root. See
    /// docs/soak.md.
    Soak {
        /// How long the workload runs, in minutes.
        #[arg(long, default_value_t = 10, conflicts_with = "seconds")]
        minutes: u64,
        /// How long the workload runs, in seconds (short runs).
        #[arg(long)]
        seconds: Option<u64>,
        /// The seed of the schedule; random (and printed) if not given.
        #[arg(long)]
        seed: Option<u64>,
        /// How many technicians (2 to 6; see `ferry-soak --help`).
        #[arg(long, default_value_t = 4)]
        technicians: u64,
        /// How many gateways (1 to 3: behind a cone NAT, behind a symmetric
        /// NAT, on a public address; see `ferry-soak --help`).
        #[arg(long, default_value_t = 3)]
        gateways: u64,
        /// Where the cloud keeps its data: `sled` (one `ferry-cloud`), or
        /// `postgres`: the soak starts its own PostgreSQL (removed at the
        /// end) and runs two `ferry-cloud` replicas on it.
        #[arg(long, default_value = "sled", value_parser = ["sled", "postgres"])]
        storage: String,
        /// Leave out the fault that makes the cloud unreachable.
        #[arg(long, conflicts_with = "cloud_outage_percent")]
        no_cloud_outage: bool,
        /// The chance, in percent, that a fault step brings the cloud's
        /// outage (default 20; 100: every fault step; see `ferry-soak
        /// --help`).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100))]
        cloud_outage_percent: Option<u64>,
    },
    /// Remove network namespaces, sockets and lab folders left by killed
    /// test and demo runs.
    Sweep,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => {
            setup::toolchain()?;
            setup::debian_packages()?;
            setup::cargo_machete()?;
            setup::browser_tests()?;
            Ok(())
        }
        Command::BuildEbpf => {
            let object = setup::build_ebpf()?;
            println!("{}", object.display());
            Ok(())
        }
        Command::Test { cargo_test_args } => test::run(&cargo_test_args),
        Command::Bench { names } => bench::run(&names),
        Command::Demo { path, once } => demo::run(path.as_deref(), once),
        Command::Soak {
            minutes,
            seconds,
            seed,
            technicians,
            gateways,
            storage,
            no_cloud_outage,
            cloud_outage_percent,
        } => {
            let outage_percent = if no_cloud_outage { Some(0) } else { cloud_outage_percent };
            soak::run(minutes, seconds, seed, technicians, gateways, &storage, outage_percent)
        }
        Command::Sweep => {
            for object in ferry_lab::sweep_stale() {
                println!("removed {object}");
            }
            Ok(())
        }
    }
}
