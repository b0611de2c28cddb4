//! Sessions: prepared by admins, started by admins or released users,
//! approved by the customer where required, ended by anyone entitled, or
//! expired. The transitions are in [`machine`]; this module stores them and
//! keeps two indexes in the same atomic commits: the live sessions per
//! gateway, and the tunnel subnets in use.

pub mod addressing;
pub mod machine;

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use machine::{EndReason, GatewayView, Refusal, State};

use crate::store::{BackendError, Batch, Collection, Store};

/// A relay allocation carrying one technician's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RelayAllocation {
    pub relay_id: u64,
    pub allocation_id: u64,
    /// The relay's endpoints for each side, once it answered.
    #[schema(value_type = Option<String>)]
    pub gateway_endpoint: Option<SocketAddr>,
    #[schema(value_type = Option<String>)]
    pub client_endpoint: Option<SocketAddr>,
    pub websocket_url: String,
    /// Both peers present it to the WebSocket relay.
    #[serde(default)]
    pub websocket_token: String,
    /// The relay's certificate fingerprint for a `wss://` URL, as the relay
    /// reported it when the allocation was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_pin: Option<String>,
}

/// A configuration issued to one user of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IssuedConfig {
    pub id: u64,
    pub user_id: u64,
    pub user: String,
    /// The client's WireGuard public key (base64).
    pub public_key: String,
    #[schema(value_type = String)]
    pub tunnel_address: IpAddr,
    pub issued_ms: u64,
    pub expires_ms: u64,
    pub relay: Option<RelayAllocation>,
    /// The client's direct-path candidates (`IP:port`), which its gateway
    /// probes; replaced when the client reports new ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub candidates: Vec<SocketAddr>,
    /// What the gateway last reported of this client's WireGuard peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerReport>,
}

/// How a peer's datagrams reach the gateway, as the gateway reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerPath {
    /// Straight from the client.
    Direct,
    /// Through the relay's UDP allocation.
    Relay,
    /// Through the relay's WebSocket (TCP).
    Websocket,
}

impl From<ferry_control::gateway::PathKind> for PeerPath {
    fn from(path: ferry_control::gateway::PathKind) -> PeerPath {
        use ferry_control::gateway::PathKind;
        match path {
            PathKind::Direct => PeerPath::Direct,
            PathKind::UdpRelay => PeerPath::Relay,
            PathKind::WebsocketRelay => PeerPath::Websocket,
        }
    }
}

/// The gateway's report of a peer: connected (with its endpoint) or gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerReport {
    pub connected: bool,
    /// Where the gateway sees the peer's datagrams come from.
    #[schema(value_type = Option<String>)]
    pub endpoint: Option<SocketAddr>,
    /// The path the gateway reported (or, from a gateway too old to report
    /// it, what its endpoint says; none without either).
    pub path: Option<PeerPath>,
    /// When the gateway reported it.
    pub since_ms: u64,
}

impl IssuedConfig {
    /// The path that a peer endpoint means for this configuration, for
    /// gateways that do not report the path itself. It cannot tell the
    /// relay's WebSocket from its UDP allocation: today's gateways report
    /// the WebSocket's peers at the allocation's address; the loopback rule
    /// is for the older ones that bridged the WebSocket on loopback.
    pub fn path_of(&self, endpoint: SocketAddr) -> PeerPath {
        if endpoint.ip().is_loopback() {
            PeerPath::Websocket
        } else if self.relay.as_ref().is_some_and(|r| r.gateway_endpoint == Some(endpoint)) {
            PeerPath::Relay
        } else {
            PeerPath::Direct
        }
    }
}

#[cfg(test)]
impl IssuedConfig {
    pub fn example() -> IssuedConfig {
        IssuedConfig {
            id: 1,
            user_id: 3,
            user: "tech".into(),
            public_key: "x".into(),
            tunnel_address: addressing::client(0, 2),
            issued_ms: 0,
            expires_ms: 1,
            relay: None,
            candidates: Vec::new(),
            peer: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: u64,
    pub name: String,
    pub gateway_id: u64,
    /// Names of the gateway's targets that the session reaches.
    pub targets: Vec<String>,
    /// Users (ids) the session is released to.
    pub released_to: Vec<u64>,
    pub max_duration_s: u64,
    /// Whether the customer must approve each start at the gateway.
    pub approval_required: bool,
    pub created_by: String,
    pub created_ms: u64,
    pub state: State,
    pub started_by: Option<String>,
    pub started_ms: Option<u64>,
    /// When an active session expires, or a waiting one gives up.
    pub expires_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub end_reason: Option<EndReason>,
    /// Index of the /24 tunnel subnet held while live.
    pub subnet_index: Option<u32>,
    pub configs: Vec<IssuedConfig>,
    /// Bytes the gateway reported for this session, both directions.
    #[serde(default)]
    pub bytes_rx: u64,
    #[serde(default)]
    pub bytes_tx: u64,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        name: String,
        gateway_id: u64,
        targets: Vec<String>,
        released_to: Vec<u64>,
        max_duration_s: u64,
        approval_required: bool,
        created_by: String,
        now_ms: u64,
    ) -> Session {
        Session {
            id,
            name,
            gateway_id,
            targets,
            released_to,
            max_duration_s,
            approval_required,
            created_by,
            created_ms: now_ms,
            state: State::Prepared,
            started_by: None,
            started_ms: None,
            expires_ms: None,
            ended_ms: None,
            end_reason: None,
            subnet_index: None,
            configs: Vec::new(),
            bytes_rx: 0,
            bytes_tx: 0,
        }
    }

    pub fn released_to_user(&self, user_id: u64) -> bool {
        self.released_to.contains(&user_id)
    }

    /// The check a change repeats on every document it runs on: when
    /// `only_for` names a user (a caller whose right covers only sessions
    /// released to them), the session must still be released to that user.
    /// A change whose commit meets a concurrent one runs again on the newest
    /// document, and the rights checked on the first must hold there too.
    pub fn still_released(&self, only_for: Option<u64>) -> Result<(), SessionError> {
        match only_for {
            Some(user) if !self.released_to_user(user) => Err(SessionError::NoLongerReleased(self.id)),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("all {} tunnel subnets are in use", addressing::SUBNETS)]
    PoolExhausted,
    #[error(transparent)]
    Store(#[from] BackendError),
    /// The session was withdrawn from a caller who may act only on sessions
    /// released to them, after their right was checked: found when the
    /// change runs on the newest document.
    #[error("session {0} is no longer released to you")]
    NoLongerReleased(u64),
    /// The user the change was made for was disabled or removed, or their
    /// password changed (which revokes their logins), after their
    /// credential was checked: found when the change runs again. Says
    /// which.
    #[error("{0} since the request was checked; authenticate again")]
    ActorChanged(String),
    /// The role of the user the change was made for changed after their
    /// rights were checked: found when the change runs again.
    #[error("the role of user {0} changed since the request was checked; try again")]
    ActorRoleChanged(String),
}

/// The person a change is made for, as their credential was checked. The
/// commit expects their user record unchanged since then, so a change for
/// a user disabled meanwhile conflicts, and its next attempt reads the
/// record again and refuses. Without it, a start whose rights check passed
/// just before an administrator disabled the technician could commit after
/// the disabling had ended the technician's sessions, and the session ran
/// for a disabled user.
///
/// Only changes that give something (a start, a configuration, a session's
/// settings) carry it: an end or a revocation must go through whoever
/// asked, and whatever happened to them meanwhile.
#[derive(Clone, Debug)]
pub struct ActingUser {
    pub id: u64,
    /// The user's record as read when the credential was checked.
    pub stored: Vec<u8>,
    /// Their role then, which their rights were checked for.
    pub role: ferry_api::Role,
    /// The token epoch their credential was issued in (None for an API
    /// token, which a password change does not revoke).
    pub epoch: Option<u32>,
}

impl ActingUser {
    /// `batch` with this attempt's expectation of the record: the first
    /// attempt expects it as read at the check; the next ones (`again`)
    /// read it again, and refuse if the user is disabled or gone, their
    /// role changed, or their credential was revoked (its epoch passed).
    fn expect_in(&mut self, store: &Store, again: bool, batch: Batch) -> Result<Batch, SessionError> {
        let (collection, key) = crate::users::stored_at(self.id);
        if again {
            let stored = store.backend().get(collection, &key)?;
            let user = stored.as_deref().map(crate::users::from_stored).transpose().map_err(|e| match e {
                crate::users::UserError::Store(e) => SessionError::Store(e),
                other => SessionError::Store(BackendError::Io(other.to_string())),
            })?;
            let changed = match (&user, &stored) {
                (Some(user), _) if user.disabled => Some(format!("user {} was disabled", user.name)),
                (Some(user), _) if user.role != self.role => {
                    return Err(SessionError::ActorRoleChanged(user.name.clone()));
                }
                (Some(user), _) if self.epoch.is_some_and(|e| e != user.token_epoch) => {
                    Some(format!("the logins of user {} were revoked (password changed)", user.name))
                }
                (Some(_), Some(_)) => None,
                _ => Some(format!("user {} was removed", self.id)),
            };
            match (changed, stored) {
                (None, Some(stored)) => self.stored = stored,
                (Some(why), _) => return Err(SessionError::ActorChanged(why)),
                (None, None) => {
                    return Err(SessionError::ActorChanged(format!("user {} was removed", self.id)));
                }
            }
        }
        Ok(batch.expect(collection, key, Some(self.stored.clone())))
    }
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn live_key(gateway_id: u64, session_id: u64) -> Vec<u8> {
    [gateway_id.to_be_bytes(), session_id.to_be_bytes()].concat()
}

fn decode(bytes: &[u8]) -> Result<Session, BackendError> {
    serde_json::from_slice(bytes).map_err(|e| BackendError::Io(format!("unreadable session: {e}")))
}

pub fn create(store: &Store, session: Session) -> Result<Session, BackendError> {
    create_audited(store, session, 0, |_| None)
}

/// Stores a new session together with the audit entry `event` makes of it.
pub fn create_audited(
    store: &Store,
    mut session: Session,
    time_ms: u64,
    event: impl Fn(&Session) -> Option<crate::audit::Event>,
) -> Result<Session, BackendError> {
    session.id = store.backend().generate_id()?;
    let batch = Batch::default().put(Collection::Sessions, key(session.id), crate::store::to_json(&session));
    crate::audit::commit_audited(store, time_ms, event(&session), batch)?;
    Ok(session)
}

/// [`create_audited`] for a task, which waits for the commit without
/// holding a thread.
pub async fn create_audited_async(
    store: &Store,
    mut session: Session,
    time_ms: u64,
    event: impl Fn(&Session) -> Option<crate::audit::Event>,
) -> Result<Session, BackendError> {
    session.id = store.backend().generate_id()?;
    let batch = Batch::default().put(Collection::Sessions, key(session.id), crate::store::to_json(&session));
    crate::audit::commit_audited_async(store, time_ms, event(&session), batch).await?;
    Ok(session)
}

pub fn get(store: &Store, id: u64) -> Result<Option<Session>, BackendError> {
    store.backend().get(Collection::Sessions, &key(id))?.map(|v| decode(&v)).transpose()
}

/// [`get`], with the stored document, which a change can start from
/// ([`modify_audited_async`]'s `known`) instead of reading it again.
pub fn get_stored(store: &Store, id: u64) -> Result<Option<(Session, Vec<u8>)>, BackendError> {
    store.backend().get(Collection::Sessions, &key(id))?.map(|v| Ok((decode(&v)?, v))).transpose()
}

/// Sessions in id order after `after`, up to `limit`.
pub fn page(store: &Store, after: Option<u64>, limit: usize) -> Result<Vec<Session>, BackendError> {
    let after = after.map(key);
    store
        .backend()
        .scan(Collection::Sessions, &[], after.as_ref().map(|k| &k[..]), limit)?
        .iter()
        .map(|(_, v)| decode(v))
        .collect()
}

/// The live (waiting or active) sessions of one gateway.
pub fn live_for_gateway(store: &Store, gateway_id: u64) -> Result<Vec<Session>, BackendError> {
    get_each(store, live_ids(store, &gateway_id.to_be_bytes())?)
}

/// The sessions of `ids` that still exist, read together.
fn get_each(store: &Store, ids: Vec<u64>) -> Result<Vec<Session>, BackendError> {
    let keys: Vec<Vec<u8>> = ids.into_iter().map(|id| key(id).to_vec()).collect();
    store.backend().get_many(Collection::Sessions, &keys)?.into_iter().flatten().map(|v| decode(&v)).collect()
}

/// Every live session.
pub fn all_live(store: &Store) -> Result<Vec<Session>, BackendError> {
    get_each(store, live_ids(store, &[])?)
}

/// How many sessions are live, from the index alone.
pub fn live_count(store: &Store) -> Result<usize, BackendError> {
    Ok(store.backend().scan(Collection::LiveSessions, &[], None, usize::MAX)?.len())
}

/// Tunnel subnets held (by live sessions, unless one leaked).
pub fn subnets_held(store: &Store) -> Result<usize, BackendError> {
    Ok(store.backend().scan(Collection::Subnets, &[], None, usize::MAX)?.len())
}

fn live_ids(store: &Store, prefix: &[u8]) -> Result<Vec<u64>, BackendError> {
    let entries = store.backend().scan(Collection::LiveSessions, prefix, None, usize::MAX)?;
    Ok(entries.iter().filter_map(|(k, _)| k.get(8..16)?.try_into().ok().map(u64::from_be_bytes)).collect())
}

/// Reads a session, applies `change`, and commits it with its index and
/// subnet changes if nobody changed it meanwhile (else retries on the new
/// state). A session that becomes live gets a free subnet; one that stops
/// being live gives its subnet back.
pub fn modify<R>(
    store: &Store,
    id: u64,
    change: impl FnMut(&mut Session) -> Result<R, SessionError>,
) -> Result<Option<(Session, R)>, SessionError> {
    modify_audited(store, id, 0, None, change, |_, _| None)
}

/// [`modify`], with the audit entry that `event` makes of the change
/// committed in the same atomic commit (none if it returns None or nothing
/// changed).
pub fn modify_audited<R>(
    store: &Store,
    id: u64,
    time_ms: u64,
    acting: Option<ActingUser>,
    change: impl FnMut(&mut Session) -> Result<R, SessionError>,
    event: impl Fn(&Session, &R) -> Option<crate::audit::Event>,
) -> Result<Option<(Session, R)>, SessionError> {
    let work = modify_with(store, id, None, acting, change, event, |event, batch| {
        std::future::ready(crate::audit::commit_audited(store, time_ms, event, batch))
    });
    // Every future it awaits is ready: one poll runs it to its end. (Were
    // one ever not, the change might have committed: tests would catch it.)
    futures_util::FutureExt::now_or_never(work).unwrap_or_else(|| {
        debug_assert!(false, "modify_with awaited a future that was not ready");
        Err(BackendError::Io("a session change did not finish".into()).into())
    })
}

/// [`modify_audited`] for a task, which waits for the commit without
/// holding a thread. `known`: the session's stored document as the caller
/// read it just before ([`get_stored`]); the first attempt starts from it
/// instead of reading it again. The commit expects it unchanged, so a
/// document that changed meanwhile is a conflict and the next attempt
/// reads the newest.
pub async fn modify_audited_async<R>(
    store: &Store,
    id: u64,
    time_ms: u64,
    known: Option<Vec<u8>>,
    acting: Option<ActingUser>,
    change: impl FnMut(&mut Session) -> Result<R, SessionError>,
    event: impl Fn(&Session, &R) -> Option<crate::audit::Event>,
) -> Result<Option<(Session, R)>, SessionError> {
    modify_with(store, id, known, acting, change, event, |event, batch| {
        crate::audit::commit_audited_async(store, time_ms, event, batch)
    })
    .await
}

/// The attempts of [`modify_audited`] and [`modify_audited_async`], which
/// differ only in how they `commit`.
async fn modify_with<R, F: std::future::Future<Output = Result<(), BackendError>>>(
    store: &Store,
    id: u64,
    mut known: Option<Vec<u8>>,
    mut acting: Option<ActingUser>,
    mut change: impl FnMut(&mut Session) -> Result<R, SessionError>,
    event: impl Fn(&Session, &R) -> Option<crate::audit::Event>,
    commit: impl Fn(Option<crate::audit::Event>, Batch) -> F,
) -> Result<Option<(Session, R)>, SessionError> {
    for attempt in 0..64 {
        let (_underway, others) = store.session_change();
        // A start that lost its subnet to another, or that runs beside
        // other changes here, picks a free subnet at random: racing all of
        // them for the lowest would make all but one start over.
        let pick = if attempt > 0 || others { Pick::Random } else { Pick::Lowest };
        let Some(planned) = prepare_picking(store, id, pick, known.take(), &mut change)? else {
            return Ok(None);
        };
        if !planned.changed() {
            return Ok(Some((planned.after, planned.result)));
        }
        let batch = match acting.as_mut() {
            Some(acting) => acting.expect_in(store, attempt > 0, planned.batch)?,
            None => planned.batch,
        };
        match commit(event(&planned.after, &planned.result), batch).await {
            Ok(()) => return Ok(Some((planned.after, planned.result))),
            Err(BackendError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(BackendError::Unavailable(format!("session {id} is changed too often; gave up")).into())
}

/// A change to one session, worked out but not committed yet.
pub struct Planned<R> {
    pub before: Session,
    pub after: Session,
    pub result: R,
    /// The session, its live index and its subnet, each expected as read:
    /// committing it (alone or inside a larger batch) fails with a
    /// conflict if anybody changed them meanwhile. Empty when nothing
    /// changed.
    pub batch: Batch,
}

impl<R> Planned<R> {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// Reads a session and works out what `change` does to it, for a caller
/// that commits it together with other changes. A session that becomes
/// live gets a free subnet; one that stops being live gives its subnet
/// back. None: no such session.
pub fn prepare<R>(
    store: &Store,
    id: u64,
    change: impl FnOnce(&mut Session) -> Result<R, SessionError>,
) -> Result<Option<Planned<R>>, SessionError> {
    prepare_picking(store, id, Pick::Lowest, None, change)
}

/// Which free subnet a starting session takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pick {
    /// The lowest: predictable addresses while starts come one at a time.
    Lowest,
    /// Any, at random: concurrent starts rarely want the same one.
    Random,
}

/// [`prepare`] with the pick of a subnet, from the stored document `known`
/// if given (else it is read).
fn prepare_picking<R>(
    store: &Store,
    id: u64,
    pick: Pick,
    known: Option<Vec<u8>>,
    change: impl FnOnce(&mut Session) -> Result<R, SessionError>,
) -> Result<Option<Planned<R>>, SessionError> {
    let before_bytes = match known {
        Some(bytes) => bytes,
        None => match store.backend().get(Collection::Sessions, &key(id))? {
            Some(bytes) => bytes,
            None => return Ok(None),
        },
    };
    let before = decode(&before_bytes)?;
    let mut after = before.clone();
    let result = change(&mut after)?;
    if after == before {
        return Ok(Some(Planned { before, after, result, batch: Batch::default() }));
    }
    let mut batch = Batch::default().expect(Collection::Sessions, key(id), Some(before_bytes));
    let live = live_key(after.gateway_id, id);
    match (before.state.is_live(), after.state.is_live()) {
        (false, true) => {
            let index = free_subnet(store, pick)?;
            after.subnet_index = Some(index);
            batch = batch
                .put(Collection::LiveSessions, live, Vec::new())
                .expect(Collection::Subnets, index.to_be_bytes(), None)
                .put(Collection::Subnets, index.to_be_bytes(), id.to_be_bytes());
        }
        (true, false) => {
            batch = batch.delete(Collection::LiveSessions, live);
            if let Some(index) = after.subnet_index.take() {
                batch = batch.delete(Collection::Subnets, index.to_be_bytes());
            }
        }
        _ => {}
    }
    let batch = batch.put(Collection::Sessions, key(id), crate::store::to_json(&after));
    Ok(Some(Planned { before, after, result, batch }))
}

/// Random subnet indices looked up (together) before a random pick falls
/// back to reading every held subnet.
const RANDOM_PROBES: usize = 4;

/// A subnet index nobody holds, the lowest or one at random.
///
/// A random pick first looks up a few random indices: with the pool far
/// from full, one of them is free, and reading every held subnet for each
/// start (what the lowest needs) would cost each start a scan of a
/// collection that churns with every session. The commit still expects the
/// index absent, so a pick that another start takes meanwhile is a conflict
/// and the start picks again.
fn free_subnet(store: &Store, pick: Pick) -> Result<u32, SessionError> {
    if pick == Pick::Random {
        let probes: Vec<u32> = (0..RANDOM_PROBES)
            .map(|_| rand_core::RngCore::next_u32(&mut rand_core::OsRng) % addressing::SUBNETS)
            .collect();
        let keys: Vec<Vec<u8>> = probes.iter().map(|index| index.to_be_bytes().to_vec()).collect();
        let held = store.backend().get_many(Collection::Subnets, &keys)?;
        if let Some((index, _)) = probes.iter().zip(&held).find(|(_, holder)| holder.is_none()) {
            return Ok(*index);
        }
    }
    let used: std::collections::BTreeSet<u32> = store
        .backend()
        .scan(Collection::Subnets, &[], None, usize::MAX)?
        .iter()
        .filter_map(|(k, _)| Some(u32::from_be_bytes(k.as_slice().try_into().ok()?)))
        .filter(|index| *index < addressing::SUBNETS)
        .collect();
    let free = addressing::SUBNETS - used.len() as u32;
    if free == 0 {
        return Err(SessionError::PoolExhausted);
    }
    let nth = match pick {
        Pick::Lowest => 0,
        Pick::Random => rand_core::RngCore::next_u32(&mut rand_core::OsRng) % free,
    };
    (0..addressing::SUBNETS)
        .filter(|index| !used.contains(index))
        .nth(nth as usize)
        .ok_or(SessionError::PoolExhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: GatewayView = GatewayView { online: true, switch_on: true };

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    fn new(store: &Store, gateway: u64) -> Session {
        create(
            store,
            Session::new(0, "s".into(), gateway, vec!["plc".into()], vec![], 60, false, "a".into(), 0),
        )
        .unwrap()
    }

    #[test]
    fn live_index_and_subnets_follow_the_state() {
        let (_dir, store) = store();
        let a = new(&store, 7);
        let b = new(&store, 7);
        let c = new(&store, 8);
        for s in [&a, &b, &c] {
            modify(&store, s.id, |s| Ok(s.start("x", 0, ON)?)).unwrap();
        }
        let subnets: Vec<Option<u32>> =
            [&a, &b, &c].iter().map(|s| get(&store, s.id).unwrap().unwrap().subnet_index).collect();
        assert_eq!(subnets, [Some(0), Some(1), Some(2)]);
        assert_eq!(live_for_gateway(&store, 7).unwrap().len(), 2);
        assert_eq!(all_live(&store).unwrap().len(), 3);

        modify(&store, b.id, |s| Ok(s.end(EndReason::Customer { session_only: false }, 1)?)).unwrap();
        assert_eq!(get(&store, b.id).unwrap().unwrap().subnet_index, None);
        assert_eq!(live_for_gateway(&store, 7).unwrap().iter().map(|s| s.id).collect::<Vec<_>>(), [a.id]);
        // The freed subnet is reused.
        modify(&store, b.id, |s| Ok(s.start("x", 2, ON)?)).unwrap();
        assert_eq!(get(&store, b.id).unwrap().unwrap().subnet_index, Some(1));
        // A refused transition stores nothing.
        let refused = modify(&store, b.id, |s| Ok(s.start("x", 3, ON)?));
        assert!(matches!(refused, Err(SessionError::Refused(Refusal::AlreadyRunning(_)))));
    }

    #[test]
    fn concurrent_starts_get_distinct_subnets() {
        let (_dir, store) = store();
        let ids: Vec<u64> = (0..8).map(|_| new(&store, 1).id).collect();
        std::thread::scope(|scope| {
            for &id in &ids {
                let store = store.clone();
                scope.spawn(move || modify(&store, id, |s| Ok(s.start("x", 0, ON)?)).unwrap());
            }
        });
        let mut subnets: Vec<u32> =
            ids.iter().map(|&id| get(&store, id).unwrap().unwrap().subnet_index.unwrap()).collect();
        subnets.sort();
        subnets.dedup();
        assert_eq!(subnets.len(), 8, "two sessions hold one subnet: {subnets:?}");
        // One at a time again, the lowest free one is taken.
        let next = new(&store, 1);
        modify(&store, next.id, |s| Ok(s.start("x", 0, ON)?)).unwrap();
        let lowest = (0..).find(|i| !subnets.contains(i)).unwrap();
        assert_eq!(get(&store, next.id).unwrap().unwrap().subnet_index, Some(lowest));
    }

    #[test]
    fn a_change_from_a_stale_known_document_starts_over_on_the_newest() {
        let (_dir, store) = store();
        let session = new(&store, 7);
        let (_, stale) = get_stored(&store, session.id).unwrap().unwrap();
        // Somebody starts it after the caller read it.
        modify(&store, session.id, |s| Ok(s.start("x", 1, ON)?)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut seen = Vec::new();
        let started = runtime.block_on(modify_audited_async(
            &store,
            session.id,
            2,
            Some(stale),
            None,
            |s| {
                seen.push(s.state.is_live());
                Ok(s.start("y", 2, ON)?)
            },
            |_, _| None,
        ));
        // The first attempt started the stale (not live) session, its
        // commit conflicted, and the second saw it running: no second
        // start overwrote the first and took another subnet.
        assert_eq!(seen, [false, true], "the change should run on the stale and then the newest document");
        assert!(matches!(started, Err(SessionError::Refused(Refusal::AlreadyRunning(_)))), "{started:?}");
        assert_eq!(subnets_held(&store).unwrap(), 1);
        assert_eq!(get(&store, session.id).unwrap().unwrap().subnet_index, Some(0));
    }

    /// A caller whose right covers only sessions released to them read the
    /// session while it was; an administrator withdrew it before the
    /// caller's commit. The change starts over on the newest document and
    /// must refuse there, for a start and for an end.
    #[test]
    fn a_change_that_starts_over_checks_the_release_again() {
        let (_dir, store) = store();
        let technician = 5;
        let session = new(&store, 7);
        modify(&store, session.id, |s| {
            s.released_to = vec![technician];
            Ok(())
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let withdraw = |store: &Store| {
            modify(store, session.id, |s| {
                s.released_to.clear();
                Ok(())
            })
            .unwrap()
        };

        // A start: the first attempt passes on the stale document, its
        // commit conflicts, the second refuses.
        let (_, stale) = get_stored(&store, session.id).unwrap().unwrap();
        withdraw(&store);
        let mut checked = Vec::new();
        let started = runtime.block_on(modify_audited_async(
            &store,
            session.id,
            2,
            Some(stale),
            None,
            |s| {
                checked.push(s.still_released(Some(technician)).is_ok());
                s.still_released(Some(technician))?;
                Ok(s.start("tech", 2, ON)?)
            },
            |_, _| None,
        ));
        assert_eq!(
            checked,
            [true, false],
            "the release should be checked on the stale and the newest document"
        );
        assert!(
            matches!(started, Err(SessionError::NoLongerReleased(id)) if id == session.id),
            "{started:?}"
        );
        assert!(!get(&store, session.id).unwrap().unwrap().state.is_live());

        // An end, through the cloud's own call that the handler uses.
        modify(&store, session.id, |s| {
            s.released_to = vec![technician];
            Ok(s.start("tech", 3, ON)?)
        })
        .unwrap();
        let (_, stale) = get_stored(&store, session.id).unwrap().unwrap();
        withdraw(&store);
        let state = crate::http::AppState::new(store.clone()).unwrap();
        let actor = crate::app::Actor { name: "tech".into(), source: None, user: None };
        let reason = || EndReason::User { name: "tech".into() };
        let ended = runtime.block_on(state.end_session_async(
            session.id,
            Some(stale.clone()),
            reason(),
            &actor,
            Some(technician),
        ));
        assert!(matches!(ended, Err(SessionError::NoLongerReleased(_))), "{ended:?}");
        assert!(
            get(&store, session.id).unwrap().unwrap().state.is_live(),
            "ended by a caller without the right"
        );
        // A caller whose right covers every session ends it.
        let ended =
            runtime.block_on(state.end_session_async(session.id, Some(stale), reason(), &actor, None));
        assert!(matches!(ended, Ok(Some(ref s)) if !s.state.is_live()), "{ended:?}");
    }

    /// A technician's credential was checked (their user record read),
    /// then their record changed before their start committed. A change
    /// of no consequence (a failed login counted) makes the start run
    /// again and go through; their disabling makes it refuse when it runs
    /// again, and nothing of it is stored: the disabling's end of their
    /// sessions may already have passed, and would not see this one.
    #[test]
    fn a_change_for_a_user_disabled_meanwhile_is_refused_when_it_runs_again() {
        let (_dir, store) = store();
        let tech =
            crate::users::create(&store, "tech", ferry_api::Role::RemoteConnectUser, "a long password 1", 0)
                .unwrap();
        let checked = || {
            let (collection, key) = crate::users::stored_at(tech.id);
            let stored = store.backend().get(collection, &key).unwrap().unwrap();
            let user = crate::users::from_stored(&stored).unwrap();
            ActingUser { id: tech.id, stored, role: user.role, epoch: Some(user.token_epoch) }
        };
        let change_user = |change: fn(&mut crate::users::User)| {
            crate::users::modify::<_, crate::users::UserError>(&store, tech.id, |u| {
                change(u);
                Ok(())
            })
            .unwrap()
        };

        let first = new(&store, 7);
        let acting = checked();
        change_user(|u| u.failed_logins += 1);
        let mut attempts = 0;
        let started = modify_audited(
            &store,
            first.id,
            1,
            Some(acting),
            |s| {
                attempts += 1;
                Ok(s.start("tech", 1, ON)?)
            },
            |_, _| None,
        );
        assert!(started.is_ok(), "{started:?}");
        assert_eq!(attempts, 2, "the first commit should conflict on the record, the second go through");
        assert!(get(&store, first.id).unwrap().unwrap().state.is_live());

        let second = new(&store, 7);
        let acting = checked();
        change_user(|u| {
            u.disabled = true;
            u.token_epoch += 1;
        });
        let started = modify_audited(
            &store,
            second.id,
            2,
            Some(acting.clone()),
            |s| Ok(s.start("tech", 2, ON)?),
            |_, _| None,
        );
        assert!(
            matches!(started, Err(SessionError::ActorChanged(ref why)) if why == "user tech was disabled"),
            "{started:?}"
        );
        // The same through the cloud's own call for a task, which the
        // start's handler uses, with the actor a handler makes.
        let state = crate::http::AppState::new(store.clone()).unwrap();
        let actor = crate::app::Actor { name: "tech".into(), source: None, user: Some(acting) };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = runtime.block_on(state.change_session_detached(
            second.id,
            None,
            actor,
            "session.start",
            |s| Ok(s.start("tech", 3, ON)?),
            |_, _| None,
        ));
        assert!(matches!(started, Err(SessionError::ActorChanged(_))), "{started:?}");
        assert!(!get(&store, second.id).unwrap().unwrap().state.is_live(), "started for a disabled user");
        assert_eq!(subnets_held(&store).unwrap(), 1, "only the first session holds a subnet");

        // Enabled again; then, after their credential was checked, their
        // password changes (its epoch passes): the credential no longer
        // holds, an API token (no epoch) still does.
        change_user(|u| u.disabled = false);
        let acting = checked();
        change_user(|u| u.token_epoch += 1);
        let start = |acting: ActingUser| {
            modify_audited(&store, second.id, 4, Some(acting), |s| Ok(s.start("tech", 4, ON)?), |_, _| None)
        };
        let started = start(acting.clone());
        assert!(
            matches!(started, Err(SessionError::ActorChanged(ref why)) if why == "the logins of user tech were revoked (password changed)"),
            "{started:?}"
        );
        // Their role changed after their rights were checked: refused too.
        let acting = checked();
        change_user(|u| u.role = ferry_api::Role::RemoteConnectAdministrator);
        let started = start(acting.clone());
        assert!(
            matches!(started, Err(SessionError::ActorRoleChanged(ref name)) if name == "tech"),
            "{started:?}"
        );
        let started = start(ActingUser { epoch: None, ..checked() });
        assert!(started.is_ok(), "{started:?}");
    }

    /// An administrator disables a technician while another administrator
    /// disables the first: the technician's sessions must still end (an
    /// end expects nothing of its actor's record), and an end the
    /// technician asks for goes through too.
    #[test]
    fn ends_go_through_whatever_happened_to_their_actor_meanwhile() {
        let (_dir, store) = store();
        let admin =
            crate::users::create(&store, "admin", ferry_api::Role::Administrator, "a long password 1", 0)
                .unwrap();
        let tech =
            crate::users::create(&store, "tech", ferry_api::Role::RemoteConnectUser, "a long password 1", 0)
                .unwrap();
        let acting = |id: u64| {
            let (collection, key) = crate::users::stored_at(id);
            let stored = store.backend().get(collection, &key).unwrap().unwrap();
            let user = crate::users::from_stored(&stored).unwrap();
            ActingUser { id, stored, role: user.role, epoch: Some(user.token_epoch) }
        };
        let disable = |id: u64| {
            crate::users::modify::<_, crate::users::UserError>(&store, id, |u| {
                u.disabled = true;
                u.token_epoch += 1;
                Ok(())
            })
            .unwrap()
            .unwrap()
            .0
        };
        let (one, two) = (new(&store, 7), new(&store, 7));
        for session in [&one, &two] {
            modify(&store, session.id, |s| Ok(s.start("tech", 1, ON)?)).unwrap();
        }
        let state = crate::http::AppState::new(store.clone()).unwrap();
        let by_admin = crate::app::Actor { name: "admin".into(), source: None, user: Some(acting(admin.id)) };
        let by_tech = crate::app::Actor { name: "tech".into(), source: None, user: Some(acting(tech.id)) };
        disable(admin.id);
        let tech = disable(tech.id);
        // The technician's own end, asked before they were disabled.
        let ended = state.end_session(one.id, EndReason::User { name: "tech".into() }, &by_tech);
        assert!(matches!(ended, Ok(Some(ref s)) if !s.state.is_live()), "{ended:?}");
        // The disabling's own ends, by the administrator disabled meanwhile;
        // asked again (as after a disabling that failed part-way), there is
        // nothing left to do, and no error.
        state.user_disabled(&tech, &by_admin).unwrap();
        state.user_disabled(&tech, &by_admin).unwrap();
        assert!(!get(&store, two.id).unwrap().unwrap().state.is_live(), "a disabled user's session runs on");
        assert_eq!(subnets_held(&store).unwrap(), 0);
    }

    #[test]
    fn random_picks_are_free_and_a_full_pool_is_refused() {
        let (_dir, store) = store();
        let mut batch = Batch::default();
        for index in (0..addressing::SUBNETS).filter(|i| i % 7 != 3) {
            batch = batch.put(Collection::Subnets, index.to_be_bytes(), 1u64.to_be_bytes());
        }
        store.backend().commit(batch).unwrap();
        for _ in 0..50 {
            assert_eq!(free_subnet(&store, Pick::Random).unwrap() % 7, 3);
        }
        assert_eq!(free_subnet(&store, Pick::Lowest).unwrap(), 3);
        let mut fill = Batch::default();
        for index in (0..addressing::SUBNETS).filter(|i| i % 7 == 3) {
            fill = fill.put(Collection::Subnets, index.to_be_bytes(), 1u64.to_be_bytes());
        }
        store.backend().commit(fill).unwrap();
        assert!(matches!(free_subnet(&store, Pick::Random), Err(SessionError::PoolExhausted)));
        assert!(matches!(free_subnet(&store, Pick::Lowest), Err(SessionError::PoolExhausted)));
    }
}
