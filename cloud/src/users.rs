//! User accounts: unique names, a role, an argon2id password hash, and the
//! state that login throttling and disabling need.

use serde::{Deserialize, Serialize};

use crate::{
    auth::totp::TotpState,
    password::{self, PasswordError},
    rights::Role,
    store::{BackendError, Batch, Collection, Store},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub role: Role,
    /// argon2id, PHC string form. Never leaves the server.
    pub password_hash: String,
    pub disabled: bool,
    pub created_ms: u64,
    /// Consecutive failed logins, for slowing down and locking out.
    pub failed_logins: u32,
    #[serde(default)]
    pub last_failed_ms: Option<u64>,
    pub locked_until_ms: Option<u64>,
    /// Moves when the user is disabled or changes password: access tokens
    /// carry it, and older ones stop working.
    #[serde(default)]
    pub token_epoch: u32,
    /// The optional second factor.
    #[serde(default)]
    pub totp: Option<TotpState>,
    /// Made with a one-time password: only changing it is allowed.
    #[serde(default)]
    pub must_change_password: bool,
}

impl User {
    pub fn new(id: u64, name: String, role: Role, password_hash: String, now_ms: u64) -> User {
        User {
            id,
            name,
            role,
            password_hash,
            disabled: false,
            created_ms: now_ms,
            failed_logins: 0,
            last_failed_ms: None,
            locked_until_ms: None,
            token_epoch: 0,
            totp: None,
            must_change_password: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user name must be 1 to 64 characters of letters, digits and . _ - @")]
    BadName,
    #[error("a user named `{0}` exists")]
    Exists(String),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] BackendError),
    #[error("stored user record is unreadable: {0}")]
    Corrupt(String),
}

pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Creates a user; the name must be free (checked atomically with the write).
pub fn create(store: &Store, name: &str, role: Role, password: &str, now_ms: u64) -> Result<User, UserError> {
    create_with(store, name, role, password, now_ms, false, None)
}

/// Creates a user whose password may have to be changed at first use.
pub fn create_with(
    store: &Store,
    name: &str,
    role: Role,
    password: &str,
    now_ms: u64,
    must_change_password: bool,
    audit: Option<crate::audit::Event>,
) -> Result<User, UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName);
    }
    let password_hash = password::hash(password)?;
    let id = store.backend().generate_id()?;
    let user = User { must_change_password, ..User::new(id, name.to_string(), role, password_hash, now_ms) };
    let value = crate::store::to_json(&user);
    let batch = Batch::default()
        .expect(Collection::UserNames, name.as_bytes(), None)
        .put(Collection::UserNames, name.as_bytes(), key(id))
        .put(Collection::Users, key(id), value);
    // With an audit event, the user and its entry are one commit.
    let committed = crate::audit::commit_audited(store, now_ms, audit, batch);
    match committed {
        Ok(()) => Ok(user),
        Err(BackendError::Conflict { .. }) => Err(UserError::Exists(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

pub fn get(store: &Store, id: u64) -> Result<Option<User>, UserError> {
    store.backend().get(Collection::Users, &key(id))?.map(|v| decode(&v)).transpose()
}

/// Where a user is stored, and the user from what is stored there (for a
/// caller that reads it together with something else).
pub fn stored_at(id: u64) -> (Collection, Vec<u8>) {
    (Collection::Users, key(id).to_vec())
}

pub fn from_stored(bytes: &[u8]) -> Result<User, UserError> {
    decode(bytes)
}

pub fn by_name(store: &Store, name: &str) -> Result<Option<User>, UserError> {
    let Some(id) = store.backend().get(Collection::UserNames, name.as_bytes())? else { return Ok(None) };
    let id =
        u64::from_be_bytes(id.as_slice().try_into().map_err(|_| UserError::Corrupt("name index".into()))?);
    get(store, id)
}

/// Every user, in id order.
pub fn list(store: &Store) -> Result<Vec<User>, UserError> {
    let mut users = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.backend().scan(Collection::Users, &[], after.as_deref(), 500)?;
        if page.is_empty() {
            return Ok(users);
        }
        for (_, value) in &page {
            users.push(decode(value)?);
        }
        after = page.last().map(|(k, _)| k.clone());
    }
}

/// Reads a user, lets `change` edit it, and writes it back only if nobody
/// changed it meanwhile (else reads again and retries), so concurrent login
/// attempts cannot lose a failure count. `change` returns what the caller
/// wants back; returning `Err` writes nothing.
pub fn modify<R, E: From<UserError>>(
    store: &Store,
    id: u64,
    change: impl FnMut(&mut User) -> Result<R, E>,
) -> Result<Option<(User, R)>, E> {
    modify_audited(store, id, 0, change, |_, _| None)
}

/// [`modify`], with the audit entry `event` makes of the change in the same
/// commit.
pub fn modify_audited<R, E: From<UserError>>(
    store: &Store,
    id: u64,
    time_ms: u64,
    mut change: impl FnMut(&mut User) -> Result<R, E>,
    event: impl Fn(&User, &R) -> Option<crate::audit::Event>,
) -> Result<Option<(User, R)>, E> {
    // The caller's error type, or the store's, through one `?`-able type.
    enum Failed<E> {
        Change(E),
        Store(BackendError),
    }
    impl<E> From<BackendError> for Failed<E> {
        fn from(e: BackendError) -> Self {
            Failed::Store(e)
        }
    }
    store
        .modify_json(Collection::Users, &key(id), time_ms, |u| change(u).map_err(Failed::Change), event)
        .map_err(|e| match e {
            Failed::Change(e) => e,
            Failed::Store(e) => UserError::from(e).into(),
        })
}

/// Whether there is no user at all (first start creates an Administrator).
pub fn none_exist(store: &Store) -> Result<bool, UserError> {
    Ok(store.backend().scan(Collection::Users, &[], None, 1)?.is_empty())
}

fn decode(bytes: &[u8]) -> Result<User, UserError> {
    serde_json::from_slice(bytes).map_err(|e| UserError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    #[test]
    fn create_find_update_list() {
        let (_dir, store) = store();
        assert!(none_exist(&store).unwrap());
        let alice = create(&store, "alice", Role::Administrator, "correct horse battery", 1).unwrap();
        let bob = create(&store, "bob@example", Role::RemoteConnectUser, "another long secret", 2).unwrap();
        assert!(!none_exist(&store).unwrap());
        assert_eq!(by_name(&store, "alice").unwrap().unwrap(), alice);
        assert_eq!(get(&store, bob.id).unwrap().unwrap().role, Role::RemoteConnectUser);
        assert!(password::verify("correct horse battery", &alice.password_hash));
        modify(&store, bob.id, |u| {
            u.disabled = true;
            Ok::<_, UserError>(())
        })
        .unwrap();
        assert!(by_name(&store, "bob@example").unwrap().unwrap().disabled);
        let names: Vec<String> = list(&store).unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, vec!["alice", "bob@example"]);
        assert_eq!(by_name(&store, "carol").unwrap(), None);
    }

    #[test]
    fn names_are_unique_and_validated() {
        let (_dir, store) = store();
        create(&store, "alice", Role::Administrator, "correct horse battery", 1).unwrap();
        assert!(matches!(
            create(&store, "alice", Role::RemoteConnectUser, "another long secret", 2),
            Err(UserError::Exists(n)) if n == "alice"
        ));
        for bad in ["", "a b", "x".repeat(65).as_str(), "semi;colon", "ünï"] {
            assert!(
                matches!(
                    create(&store, bad, Role::RemoteConnectUser, "another long secret", 2),
                    Err(UserError::BadName)
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            create(&store, "dave", Role::RemoteConnectUser, "short", 2),
            Err(UserError::Password(_))
        ));
        assert_eq!(list(&store).unwrap().len(), 1, "refused creations left nothing behind");
    }

    #[test]
    fn concurrent_creations_of_one_name_give_one_user() {
        let (_dir, store) = store();
        let results: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let store = store.clone();
                    scope.spawn(move || {
                        create(&store, "racer", Role::RemoteConnectUser, "a long enough secret", 1).is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
        assert_eq!(list(&store).unwrap().len(), 1);
    }
}
