//! Issued configurations as their clients watch them.
//!
//! A configuration lives in its session's document (`Session::configs`)
//! while it is in force; that list is what gateways and relays get, and it
//! empties when the session ends. Its client must learn more: that it ended,
//! why, and what the gateway's candidates are meanwhile. So each issued
//! configuration also gets a record of its own here, keyed by its id, with
//! the SHA-256 hash of its *watch token* (the bearer secret of the
//! `/api/v1/configs/{id}` endpoints; the token itself is shown once, at
//! issuance) and, once it stopped, how it stopped. The record outlives the
//! session's list, so a client asking after the end still learns why.
//!
//! A watch token works only for its own configuration, and only until the
//! configuration's expiry time. Revoking the configuration through its own
//! token (the client's `disconnect`) forgets the hash: the token is spent.
//! A configuration revoked otherwise (replaced by a newer one, withdrawn from
//! its user) or ended with its session stays readable until its expiry, so
//! its client can be told.

use ferry_api::{ConfigState, ConfigStatus, EndReason, State};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    gateways::Gateway,
    sessions::Session,
    store::{BackendError, Batch, Collection, Store},
};

/// What the watch endpoints need of one issued configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub id: u64,
    pub session_id: u64,
    pub gateway_id: u64,
    pub user_id: u64,
    pub user: String,
    /// Hex SHA-256 of the watch token; empty once the token is spent.
    pub watch_hash: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// Set once it stopped being in force.
    pub end: Option<ConfigEnd>,
}

/// How a configuration stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEnd {
    pub state: ConfigState,
    pub end_reason: Option<EndReason>,
    pub detail: Option<String>,
    pub ms: u64,
}

/// A fresh watch token (64 hex digits: 32 random bytes) and its hash.
pub fn new_watch_token() -> (String, String) {
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let token = hex::encode(secret);
    let hash = hash(&token);
    (token, hash)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl ConfigRecord {
    /// Whether `token` is this configuration's watch token (compared in
    /// constant time, as hashes). A spent token matches nothing.
    pub fn matches(&self, token: &str) -> bool {
        !self.watch_hash.is_empty() && bool::from(hash(token).as_bytes().ct_eq(self.watch_hash.as_bytes()))
    }
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn put(store: &Store, record: &ConfigRecord) -> Result<(), BackendError> {
    store.backend().commit(Batch::default().put(
        Collection::Configs,
        key(record.id),
        crate::store::to_json(record),
    ))
}

pub fn get(store: &Store, id: u64) -> Result<Option<ConfigRecord>, BackendError> {
    store
        .backend()
        .get(Collection::Configs, &key(id))?
        .map(|v| serde_json::from_slice(&v).map_err(|e| BackendError::Io(format!("configuration {id}: {e}"))))
        .transpose()
}

/// Records how configuration `id` stopped, unless that is known already
/// (the first word stays: an explicit revocation comes before the generic
/// one that follows its session change). `spend` forgets the token's hash.
pub fn record_end(store: &Store, id: u64, end: ConfigEnd, spend: bool) -> Result<(), BackendError> {
    store
        .modify_json(
            Collection::Configs,
            &key(id),
            end.ms,
            |r: &mut ConfigRecord| {
                if r.end.is_none() {
                    r.end = Some(end.clone());
                }
                if spend {
                    r.watch_hash.clear();
                }
                Ok::<_, BackendError>(())
            },
            |_, _| None,
        )
        .map(|_| ())
}

/// How a configuration that just left `after.configs` stopped, judged from
/// the session after the change.
pub fn end_after(after: &Session, config_user: u64, now_ms: u64) -> ConfigEnd {
    let (state, end_reason, detail) = if !after.state.is_live() {
        let state = if after.state == State::Expired { ConfigState::Expired } else { ConfigState::Ended };
        (state, after.end_reason.clone(), after.end_reason.as_ref().map(EndReason::describe))
    } else if after.configs.iter().any(|c| c.user_id == config_user) {
        (ConfigState::Revoked, None, Some("replaced by a newer configuration of the same user".to_string()))
    } else if !after.released_to_user(config_user) {
        (ConfigState::Revoked, None, Some("the session was withdrawn from its user".to_string()))
    } else {
        (ConfigState::Revoked, None, Some("revoked".to_string()))
    };
    ConfigEnd { state, end_reason, detail, ms: now_ms }
}

/// What the cloud knows about the gateway, for a status.
pub struct GatewayNow<'a> {
    pub gateway: Option<&'a Gateway>,
    pub connected: bool,
}

/// The status of `record` now, from its session as stored.
pub fn status(
    record: &ConfigRecord,
    session: Option<&Session>,
    gateway: GatewayNow<'_>,
    now_ms: u64,
) -> ConfigStatus {
    let in_force = session
        .filter(|s| s.state == State::Active)
        .is_some_and(|s| s.configs.iter().any(|c| c.id == record.id));
    let (state, end_reason, detail) = if in_force && now_ms < record.expires_ms {
        (ConfigState::Live, None, None)
    } else if let Some(end) = &record.end {
        (end.state, end.end_reason.clone(), end.detail.clone())
    } else if in_force {
        // Its time is up; the cloud's tick ends the session within a second.
        (ConfigState::Expired, Some(EndReason::Duration), Some(EndReason::Duration.describe()))
    } else {
        // Stopped, but its record was not written (the cloud stopped in
        // between): judge from the session.
        match session {
            Some(s) if !s.state.is_live() && s.started_ms.is_none_or(|at| at <= record.issued_ms) => {
                let state = if s.state == State::Expired { ConfigState::Expired } else { ConfigState::Ended };
                (state, s.end_reason.clone(), s.end_reason.as_ref().map(EndReason::describe))
            }
            Some(s) if s.started_ms.is_some_and(|at| at > record.issued_ms) => {
                (ConfigState::Ended, None, Some("the session ended and was started again".to_string()))
            }
            None => (ConfigState::Ended, None, Some("the session is gone".to_string())),
            Some(_) => (ConfigState::Revoked, None, None),
        }
    };
    let live = state == ConfigState::Live;
    ConfigStatus {
        config_id: record.id,
        session_id: record.session_id,
        state,
        end_reason,
        detail,
        session_state: session.map_or(State::Ended, |s| s.state),
        expires_ms: record.expires_ms,
        gateway_endpoints: match gateway.gateway {
            Some(g) if live => g.endpoints.iter().map(|e| e.to_string()).collect(),
            _ => Vec::new(),
        },
        gateway_connected: gateway.connected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{GatewayView, IssuedConfig};

    fn record(id: u64, issued_ms: u64) -> ConfigRecord {
        ConfigRecord {
            id,
            session_id: 1,
            gateway_id: 2,
            user_id: 3,
            user: "tech".into(),
            watch_hash: hash("token"),
            issued_ms,
            expires_ms: 1_000_000,
            end: None,
        }
    }

    fn session_with(config: u64) -> Session {
        let mut s = Session::new(1, "s".into(), 2, vec!["plc".into()], vec![3], 3600, false, "a".into(), 0);
        s.start("a", 10, GatewayView { online: true, switch_on: true }).unwrap();
        s.configs.push(IssuedConfig { id: config, ..IssuedConfig::example() });
        s
    }

    const NO_GATEWAY: GatewayNow<'static> = GatewayNow { gateway: None, connected: false };

    #[test]
    fn tokens_match_only_their_hash_and_not_once_spent() {
        let (token, hash) = new_watch_token();
        assert_eq!(token.len(), 64);
        let mut r = ConfigRecord { watch_hash: hash, ..record(1, 0) };
        assert!(r.matches(&token));
        assert!(!r.matches(&token.to_uppercase()));
        assert!(!r.matches(""));
        r.watch_hash.clear();
        assert!(!r.matches(&token) && !r.matches(""), "a spent token matches nothing");
    }

    #[test]
    fn the_status_follows_the_session_and_the_record() {
        let mut s = session_with(7);
        let r = record(7, 20);
        assert_eq!(status(&r, Some(&s), NO_GATEWAY, 100).state, ConfigState::Live);
        let late = status(&r, Some(&s), NO_GATEWAY, r.expires_ms);
        assert_eq!((late.state, late.end_reason), (ConfigState::Expired, Some(EndReason::Duration)));

        // Ended by the customer, record not written yet: from the session.
        s.end(EndReason::Customer { session_only: false }, 200).unwrap();
        let ended = status(&r, Some(&s), NO_GATEWAY, 300);
        assert_eq!(
            (ended.state, ended.end_reason.clone()),
            (ConfigState::Ended, Some(EndReason::Customer { session_only: false }))
        );
        assert_eq!(ended.session_state, State::Ended);
        // The record's word, once written, stays also after a restart.
        let end = end_after(&s, 3, 200);
        let r = ConfigRecord { end: Some(end), ..r };
        s.start("a", 400, GatewayView { online: true, switch_on: true }).unwrap();
        let after_restart = status(&r, Some(&s), NO_GATEWAY, 500);
        assert_eq!(
            (after_restart.state, after_restart.end_reason),
            (ConfigState::Ended, Some(EndReason::Customer { session_only: false }))
        );
        assert_eq!(after_restart.session_state, State::Active);
        // Without the record, a restart still says ended.
        let bare = record(7, 20);
        assert_eq!(status(&bare, Some(&s), NO_GATEWAY, 500).state, ConfigState::Ended);
    }

    #[test]
    fn revocations_say_why() {
        let mut s = session_with(7);
        s.configs.clear();
        s.configs.push(IssuedConfig { id: 8, ..IssuedConfig::example() });
        assert_eq!(
            end_after(&s, 3, 0).detail.as_deref(),
            Some("replaced by a newer configuration of the same user")
        );
        s.configs.clear();
        s.released_to.clear();
        assert_eq!(end_after(&s, 3, 0).state, ConfigState::Revoked);
        assert!(end_after(&s, 3, 0).detail.unwrap().contains("withdrawn"));
        assert_eq!(status(&record(7, 20), Some(&s), NO_GATEWAY, 30).state, ConfigState::Revoked);
    }
}
