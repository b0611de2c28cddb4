//! `cargo xtask demo`: installs what is missing, builds the demo and what it
//! runs in release, and hands over to `ferry-demo`, which builds the world
//! in network namespaces and walks through it.

use std::{os::unix::process::CommandExt as _, time::Instant};

use anyhow::{Context, Result};

use crate::{
    cargo::{cargo, run as run_cmd, target_dir},
    setup,
};

/// What the demo runs: itself (the walk, the PLC and the HMI), the cloud,
/// the relay, the gateway and the technician's client. Only these, so that
/// a first run does not build the benchmarks and test tools in release.
const PACKAGES: [&str; 5] = ["ferry-demo", "ferry-cloud", "ferry-relay", "ferry-gateway", "ferry-client"];

pub fn run(path: Option<&str>, once: bool) -> Result<()> {
    if !setup::is_root() {
        // One line, whatever RUST_BACKTRACE says.
        eprintln!(
            "the demo builds network namespaces and loads XDP programs, so it needs root: run `sudo -E env PATH=$PATH cargo xtask demo`"
        );
        std::process::exit(2);
    }
    let started = Instant::now();
    let step = |n: u8, what: &str| {
        eprintln!("demo [{n}/3] {what} [{:.0}s so far]", started.elapsed().as_secs_f64());
    };
    step(1, "the toolchain (nightly rust-src, bpf-linker) and the Debian packages the world uses");
    setup::toolchain()?;
    setup::debian_packages()?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    step(
        2,
        &format!(
            "building {} in release (cargo's progress below; the first build takes several minutes on {cores} \
             cores, later ones seconds)",
            PACKAGES.join(", ")
        ),
    );
    let mut build = cargo();
    build.args(["build", "--release"]);
    for package in PACKAGES {
        build.args(["-p", package]);
    }
    let building = Instant::now();
    run_cmd(&mut build).context("building the demo")?;
    eprintln!("demo: built in {:.0}s", building.elapsed().as_secs_f64());
    for object in ferry_lab::sweep_stale() {
        eprintln!("demo: removed {object}, left by a run that was killed");
    }

    step(3, if once { "the walk, once" } else { "the walk; the world stays up until Ctrl-C" });
    // The binaries it starts are found beside it, in target/release.
    let mut demo = std::process::Command::new(target_dir().join("release").join("ferry-demo"));
    if let Some(path) = path {
        demo.args(["--path", path]);
    }
    if once {
        demo.arg("--once");
    }
    // Replaced by the demo, Ctrl-C and the exit status are its own.
    let error = demo.exec();
    Err(error).context("starting target/release/ferry-demo")
}
