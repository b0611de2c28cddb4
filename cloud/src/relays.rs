//! Relays: registered by an Administrator, who gets the relay's token once.
//! The relay presents it on its control channel; the cloud keeps its health.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    auth::secret::{Opaque, record_key},
    store::{BackendError, Batch, Collection, Store},
};

const PREFIX: &str = "fyl";
const KIND: u8 = b'l';

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayHealth {
    pub online: bool,
    #[schema(value_type = Option<String>)]
    pub udp: Option<SocketAddr>,
    pub websocket_url: Option<String>,
    /// SHA-256 fingerprint of the relay's WebSocket certificate, if it
    /// serves TLS itself. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_pin: Option<String>,
    pub software_version: Option<String>,
    pub seen_ms: Option<u64>,
    pub bindings: u64,
    pub capacity: u32,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub drops: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Relay {
    pub id: u64,
    pub name: String,
    pub created_ms: u64,
    pub health: RelayHealth,
}

#[derive(Serialize, Deserialize)]
struct TokenRecord {
    secret_hash: String,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Registers a relay; returns it and its token (shown once).
pub fn create(
    store: &Store,
    name: &str,
    now_ms: u64,
    event: impl Fn(&Relay) -> Option<crate::audit::Event>,
) -> Result<(Relay, String), BackendError> {
    let id = store.backend().generate_id()?;
    let relay = Relay { id, name: name.to_string(), created_ms: now_ms, health: RelayHealth::default() };
    let token = Opaque::generate(id, store.backend().generate_id()?);
    let record = TokenRecord { secret_hash: token.hash() };
    let batch = Batch::default().put(Collection::Relays, key(id), crate::store::to_json(&relay)).put(
        Collection::Tokens,
        record_key(KIND, id, token.id),
        crate::store::to_json(&record),
    );
    crate::audit::commit_audited(store, now_ms, event(&relay), batch)?;
    Ok((relay, token.encode(PREFIX)))
}

/// The relay a token belongs to, if the token is valid for `relay_id`.
pub fn authenticate(store: &Store, relay_id: u64, token: &str) -> Result<Option<Relay>, BackendError> {
    let Some(parsed) = Opaque::parse(PREFIX, token).filter(|p| p.owner == relay_id) else { return Ok(None) };
    let Some(stored) = store.backend().get(Collection::Tokens, &record_key(KIND, parsed.owner, parsed.id))?
    else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_slice::<TokenRecord>(&stored) else { return Ok(None) };
    if !parsed.matches(&record.secret_hash) {
        return Ok(None);
    }
    get(store, relay_id)
}

pub fn get(store: &Store, id: u64) -> Result<Option<Relay>, BackendError> {
    store
        .backend()
        .get(Collection::Relays, &key(id))?
        .map(|v| serde_json::from_slice(&v).map_err(|e| BackendError::Io(format!("relay {id}: {e}"))))
        .transpose()
}

pub fn list(store: &Store) -> Result<Vec<Relay>, BackendError> {
    store
        .backend()
        .scan(Collection::Relays, &[], None, usize::MAX)?
        .iter()
        .map(|(_, v)| {
            serde_json::from_slice(v).map_err(|e| BackendError::Io(format!("unreadable relay: {e}")))
        })
        .collect()
}

/// Stores the latest health (last writer wins: health is a report, not a
/// decision).
pub fn set_health(store: &Store, id: u64, health: RelayHealth) -> Result<(), BackendError> {
    let Some(mut relay) = get(store, id)? else { return Ok(()) };
    relay.health = health;
    store.backend().commit(Batch::default().put(Collection::Relays, key(id), crate::store::to_json(&relay)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_tokens_authenticate_only_their_relay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, token_a) = create(&store, "relay-a", 0, |_| None).unwrap();
        let (b, _) = create(&store, "relay-b", 0, |_| None).unwrap();
        assert_eq!(authenticate(&store, a.id, &token_a).unwrap().map(|r| r.name), Some("relay-a".into()));
        assert_eq!(authenticate(&store, b.id, &token_a).unwrap(), None);
        assert_eq!(authenticate(&store, a.id, "fyl.1.2.00").unwrap(), None);
        assert_eq!(list(&store).unwrap().len(), 2);
    }
}
