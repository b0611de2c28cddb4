//! `cargo xtask`: the project's own commands.

mod bench;
mod cargo;
mod setup;
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
    /// Remove network namespaces and sockets left by killed test runs.
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
        Command::Sweep => {
            for object in ferry_lab::sweep_stale() {
                println!("removed {object}");
            }
            Ok(())
        }
    }
}
