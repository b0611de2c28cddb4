//! Gateways: the customer-side edge devices, their targets, and enrolment.
//!
//! An Administrator adds a gateway and gets a one-time enrolment token that
//! expires. The gateway makes its own Ed25519 identity key, presents the
//! token once with its public key, and from then on proves itself with that
//! key on the control channel. The token is spent atomically at first use.

use std::net::IpAddr;

pub use ferry_api::{PortRange, Protocol};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    auth::secret::{Opaque, record_key},
    store::{BackendError, Batch, Collection, Store},
};

const ENROL_PREFIX: &str = "fye";
const ENROL_KIND: u8 = b'e';
/// Default lifetime of an enrolment token.
pub const ENROL_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// A device behind a gateway that sessions can make reachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Unique per gateway: 1 to 64 letters, digits, spaces (not first or
    /// last), `. _ -`.
    #[schema(
        pattern = r"^[A-Za-z0-9._-]([A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?$",
        min_length = 1,
        max_length = 64
    )]
    pub name: String,
    /// Its address in the machine network.
    #[schema(schema_with = ip_address)]
    pub address: IpAddr,
    pub protocol: Protocol,
    /// Allowed ports; empty means all (only for `icmp` and `any`).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub ports: Vec<PortRange>,
}

/// An IPv4 or IPv6 address, as [`IpAddr`] parses it.
fn ip_address() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let format =
        |known| ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(known)));
    AnyOfBuilder::new()
        .item(format(KnownFormat::Ipv4))
        .item(format(KnownFormat::Ipv6))
        .description(Some("Its address in the machine network (IPv4 or IPv6)."))
        .build()
        .into()
}

impl Target {
    pub fn validate(&self) -> Result<(), String> {
        if !valid_label(&self.name) {
            return Err(format!("target name `{}` must be 1 to 64 letters, digits, `. _ -`", self.name));
        }
        let a = self.address;
        if a.is_unspecified()
            || a.is_loopback()
            || a.is_multicast()
            || matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
        {
            return Err(format!("target `{}`: {a} is not a device address", self.name));
        }
        if self.ports.len() > 64 {
            return Err(format!("target `{}`: at most 64 port ranges", self.name));
        }
        for p in &self.ports {
            if p.first == 0 || p.first > p.last {
                return Err(format!("target `{}`: port range {}-{} is invalid", self.name, p.first, p.last));
            }
        }
        match (self.protocol, self.ports.is_empty()) {
            (Protocol::Tcp | Protocol::Udp, true) => {
                Err(format!("target `{}`: tcp and udp targets must name their ports", self.name))
            }
            (Protocol::Icmp, false) => Err(format!("target `{}`: icmp has no ports", self.name)),
            _ => Ok(()),
        }
    }
}

/// Names of gateways, sessions, targets and sites.
pub fn valid_label(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '))
        && !name.starts_with(' ')
        && !name.ends_with(' ')
}

/// What the gateway last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LastSeen {
    /// Connected to the control channel now.
    pub online: bool,
    /// The customer's local switch: remote maintenance allowed.
    pub switch_on: bool,
    pub software_version: Option<String>,
    pub seen_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Gateway {
    pub id: u64,
    pub name: String,
    pub site: String,
    pub created_ms: u64,
    pub targets: Vec<Target>,
    /// Hex Ed25519 public key, set at enrolment.
    pub identity_key: Option<String>,
    /// The WireGuard public key it reported (base64).
    pub wg_public_key: Option<String>,
    /// Its public UDP endpoints as it learned them (STUN), for direct paths.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub endpoints: Vec<std::net::SocketAddr>,
    pub last_seen: LastSeen,
    /// The newest gateway event stored, so a resent event is not applied twice.
    #[serde(default)]
    pub last_event_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("the enrolment token is not valid, or was used already")]
    Invalid,
    #[error("the enrolment token expired; ask an Administrator for a new one")]
    Expired,
    /// Every try met a concurrent change of the gateway's record: the token
    /// was not spent and may be fine, so this is worth trying again.
    #[error("the gateway's record is changed too often; gave up, try again shortly")]
    Contended,
    #[error(transparent)]
    Store(#[from] BackendError),
}

#[derive(Serialize, Deserialize)]
struct EnrolRecord {
    secret_hash: String,
    expires_ms: u64,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn create(
    store: &Store,
    name: &str,
    site: &str,
    targets: Vec<Target>,
    now_ms: u64,
    event: impl Fn(&Gateway) -> Option<crate::audit::Event>,
) -> Result<Gateway, BackendError> {
    let gateway = Gateway {
        id: store.backend().generate_id()?,
        name: name.to_string(),
        site: site.to_string(),
        created_ms: now_ms,
        targets,
        identity_key: None,
        wg_public_key: None,
        endpoints: Vec::new(),
        last_seen: LastSeen::default(),
        last_event_seq: 0,
    };
    let batch = Batch::default().put(Collection::Gateways, key(gateway.id), crate::store::to_json(&gateway));
    crate::audit::commit_audited(store, now_ms, event(&gateway), batch)?;
    Ok(gateway)
}

pub fn get(store: &Store, id: u64) -> Result<Option<Gateway>, BackendError> {
    store
        .backend()
        .get(Collection::Gateways, &key(id))?
        .map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| BackendError::Io(format!("gateway {id} is unreadable: {e}")))
        })
        .transpose()
}

pub fn list(store: &Store) -> Result<Vec<Gateway>, BackendError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.backend().scan(Collection::Gateways, &[], after.as_deref(), 500)?;
        let Some(last) = page.last() else { return Ok(out) };
        after = Some(last.0.clone());
        for (_, v) in page {
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| BackendError::Io(format!("unreadable gateway: {e}")))?,
            );
        }
    }
}

/// A gateway as stored, for a change committed together with others.
pub struct Snapshot {
    pub gateway: Gateway,
    stored: Vec<u8>,
}

impl Snapshot {
    /// Stores `after` in place of the gateway read, on the condition that
    /// nobody changed it meanwhile.
    pub fn replace_with(&self, after: &Gateway) -> Batch {
        Batch::default().expect(Collection::Gateways, key(after.id), Some(self.stored.clone())).put(
            Collection::Gateways,
            key(after.id),
            crate::store::to_json(after),
        )
    }
}

pub fn snapshot(store: &Store, id: u64) -> Result<Option<Snapshot>, BackendError> {
    let Some(stored) = store.backend().get(Collection::Gateways, &key(id))? else { return Ok(None) };
    let gateway = serde_json::from_slice(&stored)
        .map_err(|e| BackendError::Io(format!("gateway {id} is unreadable: {e}")))?;
    Ok(Some(Snapshot { gateway, stored }))
}

/// Read-modify-write with a compare-and-swap, retried on conflict.
pub fn modify<R>(
    store: &Store,
    id: u64,
    change: impl FnMut(&mut Gateway) -> R,
) -> Result<Option<(Gateway, R)>, BackendError> {
    modify_audited(store, id, 0, change, |_, _| None)
}

/// [`modify`], with the audit entry `event` makes in the same commit.
pub fn modify_audited<R>(
    store: &Store,
    id: u64,
    time_ms: u64,
    mut change: impl FnMut(&mut Gateway) -> R,
    event: impl Fn(&Gateway, &R) -> Option<crate::audit::Event>,
) -> Result<Option<(Gateway, R)>, BackendError> {
    store.modify_json(Collection::Gateways, &key(id), time_ms, |g| Ok::<_, BackendError>(change(g)), event)
}

/// A new one-time enrolment token for a gateway. Earlier unused tokens of
/// the same gateway are revoked: only the newest works.
pub fn enrolment_token(
    store: &Store,
    gateway_id: u64,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<String, BackendError> {
    let prefix = crate::auth::secret::owner_prefix(ENROL_KIND, gateway_id);
    let old = store.backend().scan(Collection::Tokens, &prefix, None, usize::MAX)?;
    let id = store.backend().generate_id()?;
    let token = Opaque::generate(gateway_id, id);
    let record = EnrolRecord { secret_hash: token.hash(), expires_ms: now_ms + ttl_ms };
    let batch = old.into_iter().fold(Batch::default(), |b, (k, _)| b.delete(Collection::Tokens, k)).put(
        Collection::Tokens,
        record_key(ENROL_KIND, gateway_id, id),
        crate::store::to_json(&record),
    );
    store.backend().commit(batch)?;
    Ok(token.encode(ENROL_PREFIX))
}

/// Spends an enrolment token and records the gateway's identity key.
/// Exactly one presentation of a token can succeed.
/// The enrolment and its audit entry (`event`) are one commit.
pub fn enrol(
    store: &Store,
    token: &str,
    identity_key: &str,
    now_ms: u64,
    event: impl Fn(&Gateway) -> crate::audit::Event,
) -> Result<Gateway, EnrolError> {
    let parsed = Opaque::parse(ENROL_PREFIX, token).ok_or(EnrolError::Invalid)?;
    // A conflict may be the gateway's record changing meanwhile (its last
    // channel closing writes it), not the token being spent: try again, and
    // the token's read says which it was.
    for _ in 0..ENROL_ATTEMPTS {
        if let Some(gateway) = enrol_once(store, &parsed, identity_key, now_ms, &event)? {
            return Ok(gateway);
        }
    }
    Err(EnrolError::Contended)
}

/// How often an enrolment is tried when its commit meets a concurrent change.
const ENROL_ATTEMPTS: usize = 5;

/// One try; `None` when the commit met a concurrent change.
fn enrol_once(
    store: &Store,
    parsed: &Opaque,
    identity_key: &str,
    now_ms: u64,
    event: &impl Fn(&Gateway) -> crate::audit::Event,
) -> Result<Option<Gateway>, EnrolError> {
    let token_key = record_key(ENROL_KIND, parsed.owner, parsed.id);
    let stored = store.backend().get(Collection::Tokens, &token_key)?.ok_or(EnrolError::Invalid)?;
    let record: EnrolRecord = serde_json::from_slice(&stored).map_err(|_| EnrolError::Invalid)?;
    if !parsed.matches(&record.secret_hash) {
        return Err(EnrolError::Invalid);
    }
    if now_ms >= record.expires_ms {
        store.backend().commit(Batch::default().delete(Collection::Tokens, token_key))?;
        return Err(EnrolError::Expired);
    }
    // The expectation is on the stored bytes themselves: a record written
    // by another version (another field order) is still the same record.
    let before = store.backend().get(Collection::Gateways, &key(parsed.owner))?.ok_or(EnrolError::Invalid)?;
    let mut gateway: Gateway = serde_json::from_slice(&before)
        .map_err(|e| BackendError::Io(format!("gateway {} is unreadable: {e}", parsed.owner)))?;
    // The identity key lives in the gateway's data folder, with its event
    // queue: a new key is a new folder (a reinstalled or replaced machine)
    // whose events count from 1 again, and the old numbers would make the
    // cloud take them for events it already has.
    if gateway.identity_key.as_deref() != Some(identity_key) {
        gateway.last_event_seq = 0;
    }
    gateway.identity_key = Some(identity_key.to_string());
    let batch = Batch::default()
        .expect(Collection::Tokens, token_key.clone(), Some(stored))
        .expect(Collection::Gateways, key(gateway.id), Some(before))
        .delete(Collection::Tokens, token_key)
        .put(Collection::Gateways, key(gateway.id), crate::store::to_json(&gateway));
    match crate::audit::commit_audited(store, now_ms, Some(event(&gateway)), batch) {
        Ok(()) => Ok(Some(gateway)),
        Err(BackendError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, protocol: Protocol, ports: &[(u16, u16)]) -> Target {
        Target {
            name: name.into(),
            address: "10.0.0.5".parse().unwrap(),
            protocol,
            ports: ports.iter().map(|&(first, last)| PortRange { first, last }).collect(),
        }
    }

    #[test]
    fn targets_are_validated() {
        assert!(target("plc", Protocol::Tcp, &[(502, 502)]).validate().is_ok());
        assert!(target("hmi", Protocol::Any, &[]).validate().is_ok());
        assert!(target("plc", Protocol::Tcp, &[]).validate().is_err());
        assert!(target("plc", Protocol::Tcp, &[(0, 5)]).validate().is_err());
        assert!(target("plc", Protocol::Tcp, &[(6, 5)]).validate().is_err());
        assert!(target("plc", Protocol::Icmp, &[(1, 5)]).validate().is_err());
        assert!(target("bad/name", Protocol::Any, &[]).validate().is_err());
        let mut lo = target("lo", Protocol::Any, &[]);
        lo.address = "127.0.0.1".parse().unwrap();
        assert!(lo.validate().is_err());
    }

    fn enrol_plain(store: &Store, token: &str, key: &str, now: u64) -> Result<Gateway, EnrolError> {
        enrol(store, token, key, now, |g| crate::audit::Event {
            actor: format!("gateway:{}", g.id),
            action: "gateway.enrol".into(),
            allowed: true,
            source: None,
            session: None,
            gateway: Some(g.id.to_string()),
            detail: None,
        })
    }

    #[test]
    fn enrolment_tokens_work_once_expire_and_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gw = create(&store, "press 4", "plant a", vec![], 0, |_| None).unwrap();
        let token = enrolment_token(&store, gw.id, 1000, 0).unwrap();
        let enrolled = enrol_plain(&store, &token, "ab".repeat(32).as_str(), 10).unwrap();
        assert_eq!(enrolled.identity_key.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(matches!(enrol_plain(&store, &token, "cd", 11), Err(EnrolError::Invalid)), "never reusable");

        let stale = enrolment_token(&store, gw.id, 1000, 0).unwrap();
        assert!(matches!(enrol_plain(&store, &stale, "cd", 1000), Err(EnrolError::Expired)));
        let first = enrolment_token(&store, gw.id, 1000, 0).unwrap();
        let second = enrolment_token(&store, gw.id, 1000, 0).unwrap();
        assert!(matches!(enrol_plain(&store, &first, "cd", 1), Err(EnrolError::Invalid)), "replaced");
        assert!(enrol_plain(&store, &second, "cd", 1).is_ok());
        assert!(matches!(enrol_plain(&store, "fye.1.2.zz", "cd", 1), Err(EnrolError::Invalid)));
    }
}
