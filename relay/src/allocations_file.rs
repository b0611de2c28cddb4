//! Static allocations from a TOML file, for a relay that runs without a
//! cloud (standalone use, tests). The daemon reads it at start and again on
//! SIGHUP; an allocation missing from the new file ends at once.
//!
//! ```toml
//! [[allocation]]
//! id = 1
//! session_id = 1
//! gateway_key = "base64 WireGuard public key"
//! client_key = "base64 WireGuard public key"
//! port = 40000                    # optional: any free port of the range
//! websocket_token = "a long random secret"
//! expires_ms = 1893456000000      # optional, Unix milliseconds
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use ferry_tunnel::PublicKey;
use serde::Deserialize;

use crate::runtime::AllocationSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    allocation: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: u64,
    #[serde(default)]
    session_id: u64,
    gateway_key: String,
    client_key: String,
    port: Option<u16>,
    websocket_token: String,
    expires_ms: Option<u64>,
}

/// Minimum WebSocket token length: it is the only thing a WebSocket peer
/// presents.
const MIN_TOKEN_CHARS: usize = 16;

pub fn parse(text: &str) -> Result<Vec<AllocationSpec>> {
    let file: File = ferry_daemon::config::parse(text).map_err(anyhow::Error::msg)?;
    let mut specs = Vec::new();
    for entry in file.allocation {
        let key = |k: &str, what: &str| {
            PublicKey::from_base64(k).with_context(|| format!("allocation {}: {what}", entry.id))
        };
        if entry.websocket_token.len() < MIN_TOKEN_CHARS {
            bail!("allocation {}: websocket_token needs at least {MIN_TOKEN_CHARS} characters", entry.id);
        }
        if specs.iter().any(|s: &AllocationSpec| s.id == entry.id) {
            bail!("allocation {} appears twice", entry.id);
        }
        specs.push(AllocationSpec {
            id: entry.id,
            session_id: entry.session_id,
            gateway_key: key(&entry.gateway_key, "gateway_key")?,
            client_key: key(&entry.client_key, "client_key")?,
            expires_ms: entry.expires_ms.unwrap_or(u64::MAX),
            websocket_token: entry.websocket_token,
            port: entry.port,
        });
    }
    Ok(specs)
}

pub fn load(path: &Path) -> Result<Vec<AllocationSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn entries_parse_and_mistakes_are_named() {
        let ok = format!(
            "[[allocation]]\nid = 3\ngateway_key = \"{KEY_A}\"\nclient_key = \"{KEY_B}\"\nport = 40000\n\
             websocket_token = \"0123456789abcdef\"\n"
        );
        let specs = parse(&ok).unwrap();
        assert_eq!(specs[0].id, 3);
        assert_eq!(specs[0].port, Some(40000));
        assert_eq!(specs[0].expires_ms, u64::MAX);
        let short = ok.replace("0123456789abcdef", "short");
        assert!(parse(&short).unwrap_err().to_string().contains("websocket_token"));
        let bad_key = ok.replace(KEY_A, "nope");
        assert!(format!("{:#}", parse(&bad_key).unwrap_err()).contains("gateway_key"));
        let twice = format!("{ok}{}", ok.replace("port = 40000\n", ""));
        assert!(parse(&twice).unwrap_err().to_string().contains("twice"));
        assert!(parse("[[allocation]]\nid = 1\nbogus = 2\n").is_err());
    }
}
