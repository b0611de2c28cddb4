//! `ferry-gateway install`: the unit file, the binary and a configuration
//! template, so that the gateway runs under systemd. Idempotent.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use clap::Args;

pub const UNIT: &str = include_str!("../../ferry-gateway.service");

/// Written to `/etc/ferry/gateway.toml` when that file does not exist.
pub const CONFIG_TEMPLATE: &str = r#"# ferry-gateway configuration. Every setting is optional; commented lines show
# the defaults. Flags on the command line override this file.

# Where the switch, approvals, event queue and keys live (systemd's StateDirectory).
# data_dir = "/var/lib/ferry-gateway"
# The local control socket for `ferry-gateway remote|approve|deny|sessions`.
# control_socket = "/run/ferry-gateway/control.sock"

[uplink]
# The interface toward the customer network and the internet.
# interface = "enp1s0"
# The one UDP port the gateway receives WireGuard on.
# wireguard_port = 51820
# How the XDP guard attaches: auto, native or generic.
# xdp_mode = "auto"

[lan]
# The interface toward the machine network.
# interface = "enp2s0"
# The gateway's own address in the machine network (default: the interface's).
# address = "192.168.0.2"

[tunnel]
# interface = "ferry0"
# How WireGuard traffic leaves: auto, udp or websocket (for uplinks that only allow TCP 443).
# transport = "auto"

[forwarding]
# How long a technician's connection to a machine may stay idle, in seconds, before the
# gateway forgets it (like Linux's nf_conntrack_tcp_timeout_established and
# nf_conntrack_udp_timeout). The next packet after that starts a new connection.
# tcp_idle_timeout_secs = 7200
# UDP and ping.
# udp_idle_timeout_secs = 120

[metrics]
# Prometheus metrics; "off" to disable.
# listen = "127.0.0.1:9479"

[panel]
# The local web panel for the plant operators (the switch, approvals, sessions,
# diagnostics), over HTTPS. Only on the LAN address (the default: the LAN
# interface's, port 8443) or on loopback; never on the uplink. "off" to disable.
# Its password: ferry-gateway panel password
# listen = "192.168.0.2:8443"
"#;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Install below this directory instead of `/` (for images and packages).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Do not run `systemctl daemon-reload`.
    #[arg(long)]
    pub no_systemctl: bool,
    /// Do not offer to set the local panel's password (it is offered only
    /// on a terminal, when none is set yet).
    #[arg(long)]
    pub no_panel_password: bool,
}

fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

enum Outcome {
    Written,
    Unchanged,
    Kept,
}

fn write_if_different(path: &Path, contents: &[u8], mode: u32) -> io::Result<Outcome> {
    if std::fs::read(path).is_ok_and(|existing| existing == contents) {
        return Ok(Outcome::Unchanged);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::state::file::replace(path, contents, mode)?;
    Ok(Outcome::Written)
}

fn report(path: &Path, outcome: Outcome) {
    let what = match outcome {
        Outcome::Written => "wrote",
        Outcome::Unchanged => "unchanged",
        Outcome::Kept => "kept (exists)",
    };
    println!("{what:>14}  {}", path.display());
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub fn run(args: InstallArgs) -> Result<()> {
    let root = &args.root;

    let unit = under(root, "/etc/systemd/system/ferry-gateway.service");
    report(
        &unit,
        write_if_different(&unit, UNIT.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", unit.display()))?,
    );

    let binary = under(root, "/usr/local/bin/ferry-gateway");
    let current = std::env::current_exe().context("finding this executable")?;
    if same_file(&current, &binary) {
        report(&binary, Outcome::Unchanged);
    } else {
        let bytes = std::fs::read(&current).with_context(|| format!("reading {}", current.display()))?;
        report(
            &binary,
            write_if_different(&binary, &bytes, 0o755)
                .with_context(|| format!("writing {}", binary.display()))?,
        );
    }

    let config = under(root, "/etc/ferry/gateway.toml");
    if config.exists() {
        report(&config, Outcome::Kept);
    } else {
        report(
            &config,
            write_if_different(&config, CONFIG_TEMPLATE.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", config.display()))?,
        );
    }

    let systemd = Path::new("/run/systemd/system").is_dir();
    if args.no_systemctl {
        println!("skipped `systemctl daemon-reload` (--no-systemctl)");
    } else if !systemd {
        println!("skipped `systemctl daemon-reload`: systemd is not running here");
    } else {
        let status = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .context("running systemctl daemon-reload")?;
        if !status.success() {
            anyhow::bail!("`systemctl daemon-reload` failed ({status})");
        }
        println!("ran `systemctl daemon-reload`");
    }

    let panel = offer_panel_password(&args)?;
    println!(
        "\nNext steps:\n\
         1. Edit {} (uplink and LAN interfaces).\n\
         2. Enrol: ferry-gateway enroll --cloud https://CLOUD:PORT --token TOKEN --pin FINGERPRINT\n\
         3. Start it: systemctl enable --now ferry-gateway\n\
         4. Remote maintenance is OFF until you run: ferry-gateway remote on\n   \
            (or switch it on in the local panel, https://LAN-ADDRESS:8443{panel})",
        config.display()
    );
    Ok(())
}

/// Offers to set the local panel's password when none is set and a person
/// sits at a terminal; returns a hint for the next steps.
fn offer_panel_password(args: &InstallArgs) -> Result<&'static str> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let paths = super::Paths {
        data_dir: under(&args.root, "/var/lib/ferry-gateway"),
        socket: under(&args.root, "/run/ferry-gateway/control.sock"),
    };
    if super::panel::is_set(&paths) {
        println!("{:>14}  the local panel's password (set)", "kept");
        return Ok("");
    }
    let hint = "; set its password first: ferry-gateway panel password";
    if args.no_panel_password || !std::io::stdin().is_terminal() {
        return Ok(hint);
    }
    print!("\nSet the password of the local panel now (the plant operators log in with it)? [Y/n] ");
    std::io::stdout().flush().context("writing to the terminal")?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "" | "y" | "yes") {
        return Ok(hint);
    }
    loop {
        let first = rpassword::prompt_password("New password (12 characters at least): ")
            .context("reading the password")?;
        let again = rpassword::prompt_password("The same again: ").context("reading the password")?;
        if first != again {
            println!("the two differ; once more");
            continue;
        }
        match super::panel::set(&paths, &first) {
            Ok(()) => {
                println!("{:>14}  the local panel's password", "set");
                return Ok("");
            }
            Err(e) => println!("{e:#}; once more"),
        }
    }
}
