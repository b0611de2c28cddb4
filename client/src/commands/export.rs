//! `ferry export wg-quick`: a configuration for a stock WireGuard client.

use std::{
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use ferry_api::{ConfigRequest, PRIVATE_KEY_PLACEHOLDER};
use ferry_tunnel::PrivateKey;

use super::{block_on, cloud, sessions};
use crate::files;

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    WgQuick(WgQuickArgs),
}

/// A wg-quick file for SESSION, for WireGuard's own tools (`wg-quick up`).
///
/// A key pair is made here; only the public key goes to the cloud, which
/// answers with the file; the private key is filled in here. The session
/// must be active. The file (and --key-file) is written readable by you
/// only. Issuing it revokes your previous configuration of the session,
/// `ferry connect`'s included.
#[derive(Args, Debug)]
pub struct WgQuickArgs {
    /// The session: its number or its name.
    #[arg(value_name = "SESSION")]
    pub session: String,
    /// Keep the private key in FILE (mode 0600): used if it exists, made
    /// and written there if not.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Write the file there (mode 0600) instead of to standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(command: ExportCommand) -> Result<()> {
    match command {
        ExportCommand::WgQuick(args) => wg_quick(args),
    }
}

fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The key in `path`, or a new one written there.
fn key_from(path: &Path) -> Result<PrivateKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by others (mode {:o}): chmod 600 it, or use a new file",
                    path.display(),
                    mode & 0o777
                );
            }
            PrivateKey::from_base64(text.trim())
                .with_context(|| format!("{} holds no WireGuard key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            let mut text = key.to_base64();
            text.push('\n');
            files::write_replacing(folder_of(path), path, text.as_bytes())
                .with_context(|| format!("writing the key to {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The cloud's file with the private key in place of its placeholder (and
/// without the comment that asks for it).
fn fill_in(file: &str, key: &PrivateKey) -> Result<String> {
    let placeholder = format!("PrivateKey = {PRIVATE_KEY_PLACEHOLDER}");
    if !file.lines().any(|l| l.trim() == placeholder) {
        bail!(
            "the cloud's wg-quick file has no private key placeholder; this client does not know its format"
        );
    }
    let mut out = String::with_capacity(file.len() + 64);
    for line in file.lines() {
        if line.starts_with("# Put the private key of ") {
            continue;
        }
        if line.trim() == placeholder {
            out += &format!("PrivateKey = {}", key.to_base64());
        } else {
            out += line;
        }
        out.push('\n');
    }
    Ok(out)
}

fn wg_quick(args: WgQuickArgs) -> Result<()> {
    let key = match &args.key_file {
        Some(path) => key_from(path)?,
        None => PrivateKey::generate(),
    };
    let mut cloud = cloud()?;
    let public_key = key.public_key().to_base64();
    let file = block_on(async {
        let session = sessions::find(&mut cloud, &args.session).await?;
        let path = format!("/api/v1/sessions/{}/config/wg-quick", session.id);
        Ok(cloud.post_for_text(&path, &ConfigRequest { public_key, candidates: Vec::new() }).await?)
    })?;
    let filled = fill_in(&file, &key)?;
    match &args.output {
        Some(path) => {
            files::write_replacing(folder_of(path), path, filled.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "Wrote {} (mode 0600). Bring it up with: sudo wg-quick up {}",
                path.display(),
                path.display()
            );
        }
        None => std::io::stdout().write_all(filled.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const FILE: &str = "# Ferry session \"s\" (8), configuration 9.\n[Interface]\n# Put the private key of PUB on the next line in place of the placeholder.\nPrivateKey = __FERRY_PRIVATE_KEY__\nAddress = 100.96.0.2/32\n\n[Peer]\nPublicKey = GW\n";

    #[test]
    fn the_key_goes_where_the_placeholder_was() {
        let key = PrivateKey::generate();
        let filled = fill_in(FILE, &key).unwrap();
        assert!(filled.contains(&format!("\nPrivateKey = {}\nAddress = 100.96.0.2/32\n", key.to_base64())));
        assert!(!filled.contains(PRIVATE_KEY_PLACEHOLDER) && !filled.contains("Put the private key"));
        assert!(filled.ends_with("PublicKey = GW\n"));
        assert!(fill_in("[Interface]\nPrivateKey = x\n", &key).is_err());
    }

    #[test]
    fn a_key_file_is_made_private_and_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        let made = key_from(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(key_from(&path).unwrap().public_key(), made.public_key());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(key_from(&path).unwrap_err().to_string().contains("readable by others"));
    }
}
