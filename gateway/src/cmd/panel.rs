//! `ferry-gateway panel password|status`: the local panel's password (root
//! only) and where and how the panel is reachable. Neither needs the daemon:
//! the password is a file the daemon reads at every login, so a new one
//! counts at once (and ends the sessions logged in with the old one).

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::{Context as _, Result, bail};
use ferry_daemon::login::lockout::Lockout;

use super::{Paths, now_ms};
use crate::{
    config::{Config, DEFAULT_PANEL_PORT, PanelListen},
    panel::auth,
};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PanelAction {
    /// Set the panel's password (12 characters at least), as root. Prompts
    /// twice without echo; `--stdin` reads one line instead. Clears a
    /// lockout after failed logins, and ends every panel session logged in
    /// with the old password.
    Password {
        /// Read the password from the first line of standard input.
        #[arg(long)]
        stdin: bool,
    },
    /// Where the panel listens, its certificate's fingerprint (to check the
    /// browser's warning against), whether a password is set, and whether
    /// logins are locked.
    Status,
}

pub fn run(paths: &Paths, config: &Config, action: PanelAction) -> Result<()> {
    match action {
        PanelAction::Password { stdin } => password(paths, stdin),
        PanelAction::Status => {
            print!("{}", status(paths, config));
            Ok(())
        }
    }
}

/// Reads the new password (from a line of stdin, or twice from the terminal).
fn read_new_password(stdin: bool) -> Result<String> {
    if stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on: pass --stdin to read it from standard input");
    }
    let first = rpassword::prompt_password("New password for the local panel (12 characters at least): ")
        .context("reading the password")?;
    let again = rpassword::prompt_password("The same again: ").context("reading the password")?;
    if first != again {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

fn password(paths: &Paths, stdin: bool) -> Result<()> {
    if !ferry_daemon::paths::is_root() {
        bail!("only root may set the panel's password: run `sudo ferry-gateway panel password`");
    }
    let new = read_new_password(stdin)?;
    set(paths, &new)?;
    println!("the local panel's password is set; panel sessions logged in with an older one have ended");
    Ok(())
}

/// Stores `new` as the panel's password (also used by `install`).
pub fn set(paths: &Paths, new: &str) -> Result<()> {
    auth::set_password(&paths.data_dir, new)
        .with_context(|| format!("setting the panel's password in {}", paths.data_dir.display()))
}

/// Whether a password is set in `paths.data_dir`.
pub fn is_set(paths: &Paths) -> bool {
    auth::password_hash(&paths.data_dir).ok().flatten().is_some()
}

/// The readable `panel status`.
pub fn status(paths: &Paths, config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let listen = match config.panel.listen {
        PanelListen::Off => None,
        PanelListen::At(addr) => Some(addr.to_string()),
        PanelListen::Lan => {
            let lan = config.lan.address.map(Ok).or_else(|| {
                config
                    .lan
                    .interface
                    .as_deref()
                    .map(|i| crate::daemon::host::lan_address(i).map_err(|e| e.to_string()))
            });
            Some(match lan {
                Some(Ok(ip)) => format!("{ip}:{DEFAULT_PANEL_PORT}"),
                Some(Err(e)) => format!("the LAN address, port {DEFAULT_PANEL_PORT} ({e})"),
                None => format!(
                    "the LAN interface's address, port {DEFAULT_PANEL_PORT} (lan.interface is not set)"
                ),
            })
        }
    };
    match listen {
        Some(at) => {
            let _ = writeln!(out, "local panel: https://{at} (LAN side or loopback only, never the uplink)");
        }
        None => {
            let _ = writeln!(out, "local panel: off (panel.listen = \"off\")");
        }
    }
    let cert = crate::panel::tls_dir(&paths.data_dir).join(ferry_daemon::tls::self_signed::CERT_FILE);
    match ferry_daemon::tls::fingerprint_file(&cert) {
        Ok(fingerprint) => {
            let _ = writeln!(out, "certificate sha256 {fingerprint}");
        }
        Err(_) => {
            let _ = writeln!(out, "certificate: not made yet (the daemon makes it when it starts the panel)");
        }
    }
    if is_set(paths) {
        let _ = writeln!(out, "password: set");
    } else {
        let _ =
            writeln!(out, "password: NOT SET: nobody can log in; set it with `ferry-gateway panel password`");
    }
    let lockout = Lockout::default();
    let now = now_ms();
    let failures = auth::read_failures(&paths.data_dir, &lockout, now);
    let _ = match (failures.locked_until_ms.filter(|&until| until > now), failures.count) {
        (Some(until), _) => writeln!(
            out,
            "logins: LOCKED after repeated wrong passwords, for {} more (or set a new password)",
            super::human_duration(std::time::Duration::from_millis(until - now))
        ),
        (None, 0) => writeln!(out, "logins: open"),
        (None, n) => writeln!(out, "logins: open, {n} wrong password(s) since the last success"),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_address_the_password_and_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { data_dir: dir.path().to_path_buf(), socket: dir.path().join("s") };
        let config: Config = toml::from_str("[lan]\naddress = \"192.168.0.2\"").unwrap();
        let text = status(&paths, &config);
        assert!(text.contains("https://192.168.0.2:8443"), "{text}");
        assert!(text.contains("password: NOT SET"), "{text}");
        assert!(text.contains("certificate: not made yet"), "{text}");
        assert!(text.contains("logins: open"), "{text}");

        set(&paths, "a long enough passphrase").unwrap();
        let (cert, _) =
            ferry_daemon::tls::ensure_self_signed(&crate::panel::tls_dir(dir.path()), "t", &[]).unwrap();
        let fingerprint = ferry_daemon::tls::fingerprint_file(&cert).unwrap();
        let off: Config = toml::from_str("[panel]\nlisten = \"off\"").unwrap();
        let text = status(&paths, &off);
        assert!(text.contains("local panel: off"), "{text}");
        assert!(text.contains(&format!("certificate sha256 {fingerprint}")), "{text}");
        assert!(text.contains("password: set"), "{text}");
    }
}
