//! `cargo xtask soak`: builds the soak and what it runs (debug: the same
//! build the tests use, no release build on a small machine), sweeps what
//! killed runs left, and hands over to `ferry-soak`.

use std::os::unix::process::CommandExt as _;

use anyhow::{Context, Result};

use crate::{
    cargo::{cargo, run as run_cmd, target_dir},
    setup,
};

/// What the soak runs: itself, the cloud, the relay, the gateway and the
/// technicians' `ferry` client.
const PACKAGES: [&str; 5] = ["ferry-soak", "ferry-cloud", "ferry-relay", "ferry-gateway", "ferry-client"];

pub fn run(
    minutes: u64,
    seconds: Option<u64>,
    seed: Option<u64>,
    technicians: u64,
    gateways: u64,
    storage: &str,
    outage_percent: Option<u64>,
) -> Result<()> {
    if !setup::is_root() {
        eprintln!(
            "the soak builds network namespaces and loads XDP programs, so it needs root: run `sudo -E env PATH=$PATH cargo xtask soak`"
        );
        std::process::exit(2);
    }
    setup::toolchain()?;
    setup::debian_packages()?;
    let mut build = cargo();
    build.arg("build");
    for package in PACKAGES {
        build.args(["-p", package]);
    }
    run_cmd(&mut build).context("building the soak")?;
    for object in ferry_lab::sweep_stale() {
        eprintln!("soak: removed {object}, left by a run that was killed");
    }
    let mut soak = std::process::Command::new(target_dir().join("debug").join("ferry-soak"));
    match seconds {
        Some(seconds) => soak.args(["--seconds", &seconds.to_string()]),
        None => soak.args(["--minutes", &minutes.to_string()]),
    };
    if let Some(seed) = seed {
        soak.args(["--seed", &seed.to_string()]);
    }
    soak.args(["--technicians", &technicians.to_string()]);
    soak.args(["--gateways", &gateways.to_string()]);
    soak.args(["--storage", storage]);
    if let Some(percent) = outage_percent {
        soak.args(["--cloud-outage-percent", &percent.to_string()]);
    }
    // Replaced by the soak, Ctrl-C and the exit status are its own.
    let error = soak.exec();
    Err(error).context("starting target/debug/ferry-soak")
}
