//! `ferry-bench`: Ferry's benchmarks. Use `cargo xtask bench <name>`, which
//! builds in release mode and runs this with the right output folder.

mod cgroup;
mod client;
mod cloud;
mod cpu;
mod gateway;
mod gateway_traffic;
mod guard;
mod lab_run;
mod relay;
mod relay_traffic;
mod report;
mod tunnel;
mod tunnel_crypto;
mod tunnel_handshake;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

/// Run Ferry's benchmarks; each prints a table and writes <out-dir>/<name>.json.
#[derive(Parser, Debug)]
#[command(name = "ferry-bench", version, about)]
struct Cli {
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,

    /// A ferry-wg built with `-C target-cpu=native`, measured as an extra row
    /// of the tunnel benchmark.
    #[arg(long)]
    native_ferry_wg: Option<PathBuf>,

    /// Cloudflare's `boringtun-cli`, measured as a second peer of the tunnel
    /// benchmark.
    #[arg(long)]
    boringtun: Option<PathBuf>,

    /// Benchmarks to run: guard, gateway, relay, tunnel, cloud, client (and
    /// parts of some: gateway-prog, relay-prog, cloud-capped, tunnel-crypto,
    /// tunnel-handshake).
    #[arg(required = true)]
    names: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    for name in &cli.names {
        let rows = match name.as_str() {
            "guard" => guard::run()?,
            "gateway" => gateway::run()?,
            // The BPF_PROG_RUN rows alone, without the traffic through a
            // whole gateway: for work on the programs.
            "gateway-prog" => gateway::prog_run_rows()?,
            "relay" => relay::run()?,
            // The BPF_PROG_RUN rows alone, without traffic between namespaces.
            "relay-prog" => relay::prog_run_rows()?,
            "tunnel" => tunnel::run(&tunnel::Peers {
                native_ferry_wg: cli.native_ferry_wg.as_deref(),
                boringtun: cli.boringtun.as_deref(),
            })?,
            "cloud" => cloud::run(&cli.out_dir)?,
            // The capped comparison of the storages and replica counts alone.
            "cloud-capped" => cloud::run_capped(&cli.out_dir)?,
            // The uncapped write rows alone, against raw sled in the same run.
            "cloud-writes" => cloud::run_writes(&cli.out_dir)?,
            // The tunnel benchmark's crypto rows alone (no namespaces).
            "tunnel-crypto" => tunnel_crypto::rows()?,
            // Its handshake row alone.
            "tunnel-handshake" => tunnel_handshake::rows()?,
            "client" => client::run()?,
            other => bail!("unknown benchmark `{other}`"),
        };
        report::print(name, &rows);
        let path = report::write_json(&cli.out_dir, name, &rows)?;
        println!("wrote {}\n", path.display());
    }
    Ok(())
}
