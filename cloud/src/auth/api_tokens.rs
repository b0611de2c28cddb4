//! Scoped API tokens for automation. An Administrator makes them; a token
//! acts as its creator, limited to its scopes, so it can never do more than
//! the creator's current role allows, and disabling the creator stops it.

// What API tokens look like to clients (and their scopes) is in ferry-api.
pub use ferry_api::{ApiToken, Scope};
use serde::{Deserialize, Serialize};

use super::secret::{Opaque, owner_prefix, record_key};
use crate::store::{BackendError, Batch, Collection, Store};

const PREFIX: &str = "fya";
const KIND: u8 = b'a';

#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    #[error("the API token is not valid")]
    Invalid,
    #[error("the API token expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] BackendError),
}

/// Stored form: the public fields plus the hash, which is never sent.
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    token: ApiToken,
    secret_hash: String,
}

pub fn create(
    store: &Store,
    user_id: u64,
    name: &str,
    scopes: Vec<Scope>,
    expires_ms: Option<u64>,
    now_ms: u64,
    audit: Option<&dyn Fn(&ApiToken) -> crate::audit::Event>,
) -> Result<(ApiToken, String), BackendError> {
    let id = store.backend().generate_id()?;
    let secret = Opaque::generate(user_id, id);
    let token = ApiToken { id, user_id, name: name.to_string(), scopes, created_ms: now_ms, expires_ms };
    let record = Record { secret_hash: secret.hash(), token: token.clone() };
    let batch = Batch::default().put(
        Collection::Tokens,
        record_key(KIND, user_id, id),
        crate::store::to_json(&record),
    );
    // With an audit event, the token and its entry are one commit.
    crate::audit::commit_audited(store, now_ms, audit.map(|event| event(&token)), batch)?;
    Ok((token, secret.encode(PREFIX)))
}

/// Whether a bearer string looks like an API token (rather than a JWT).
pub fn is_api_token(bearer: &str) -> bool {
    bearer.starts_with("fya.")
}

pub fn authenticate(store: &Store, bearer: &str, now_ms: u64) -> Result<ApiToken, ApiTokenError> {
    let parsed = Opaque::parse(PREFIX, bearer).ok_or(ApiTokenError::Invalid)?;
    let stored = store.backend().get(Collection::Tokens, &record_key(KIND, parsed.owner, parsed.id))?;
    check(&parsed, stored, now_ms)
}

/// [`authenticate`], and what is stored for the user the token names, read
/// in the same round trip (the caller checks the user next). The user's
/// record is None when absent, or when the token's user is another than
/// the one its string names (then it was not read).
pub fn authenticate_with_user(
    store: &Store,
    bearer: &str,
    now_ms: u64,
) -> Result<(ApiToken, Option<Vec<u8>>), ApiTokenError> {
    let parsed = Opaque::parse(PREFIX, bearer).ok_or(ApiTokenError::Invalid)?;
    let mut read = store
        .backend()
        .get_each(&[
            (Collection::Tokens, record_key(KIND, parsed.owner, parsed.id)),
            crate::users::stored_at(parsed.owner),
        ])?
        .into_iter();
    let (stored, user) = (read.next().flatten(), read.next().flatten());
    let token = check(&parsed, stored, now_ms)?;
    let user = if token.user_id == parsed.owner { user } else { None };
    Ok((token, user))
}

/// The token `stored` for `parsed`, if it matches and has not expired.
fn check(parsed: &Opaque, stored: Option<Vec<u8>>, now_ms: u64) -> Result<ApiToken, ApiTokenError> {
    let stored = stored.ok_or(ApiTokenError::Invalid)?;
    let record: Record = serde_json::from_slice(&stored).map_err(|_| ApiTokenError::Invalid)?;
    if !parsed.matches(&record.secret_hash) {
        return Err(ApiTokenError::Invalid);
    }
    if record.token.expires_ms.is_some_and(|at| now_ms >= at) {
        return Err(ApiTokenError::Expired);
    }
    Ok(record.token)
}

/// Every API token, of every user.
pub fn list(store: &Store) -> Result<Vec<ApiToken>, BackendError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.backend().scan(Collection::Tokens, &[KIND], after.as_deref(), 500)?;
        let Some(last) = page.last() else { return Ok(out) };
        after = Some(last.0.clone());
        out.extend(
            page.iter().filter_map(|(_, v)| serde_json::from_slice::<Record>(v).ok()).map(|r| r.token),
        );
    }
}

/// Deletes a token by id; returns whether it existed.
pub fn revoke(store: &Store, id: u64) -> Result<Option<ApiToken>, BackendError> {
    let Some(token) = list(store)?.into_iter().find(|t| t.id == id) else { return Ok(None) };
    store
        .backend()
        .commit(Batch::default().delete(Collection::Tokens, record_key(KIND, token.user_id, id)))?;
    Ok(Some(token))
}

/// Deletes every API token a user made.
pub fn revoke_user(store: &Store, user_id: u64) -> Result<usize, BackendError> {
    let keys = store.backend().scan(Collection::Tokens, &owner_prefix(KIND, user_id), None, usize::MAX)?;
    let count = keys.len();
    if count > 0 {
        let batch = keys.into_iter().fold(Batch::default(), |b, (k, _)| b.delete(Collection::Tokens, k));
        store.backend().commit(batch)?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_expire_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (token, bearer) =
            create(&store, 1, "ci", vec![Scope::SessionsRead], Some(1000), 0, None).unwrap();
        assert!(is_api_token(&bearer));
        assert_eq!(authenticate(&store, &bearer, 999).unwrap(), token);
        assert!(matches!(authenticate(&store, &bearer, 1000), Err(ApiTokenError::Expired)));
        let (_, forever) = create(&store, 1, "ops", vec![], None, 0, None).unwrap();
        assert!(authenticate(&store, &forever, u64::MAX).is_ok());
        assert!(!serde_json::to_string(&token).unwrap().contains("secret_hash"));
        assert_eq!(list(&store).unwrap().len(), 2);
        assert_eq!(revoke(&store, token.id).unwrap().map(|t| t.name), Some("ci".into()));
        assert!(matches!(authenticate(&store, &bearer, 1), Err(ApiTokenError::Invalid)));
        assert_eq!(revoke_user(&store, 1).unwrap(), 1);
        assert!(matches!(authenticate(&store, &forever, 1), Err(ApiTokenError::Invalid)));
    }

    #[test]
    fn a_token_is_read_with_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, forever) = create(&store, 1, "ops", vec![], None, 0, None).unwrap();
        // With its user, read together: none stored here yet.
        assert_eq!(authenticate_with_user(&store, &forever, 1).unwrap().1, None);
        let user =
            crate::users::create(&store, "owner", ferry_api::Role::Administrator, "a long password 1", 0)
                .unwrap();
        let (_, theirs) = create(&store, user.id, "own", vec![], None, 0, None).unwrap();
        let (token, stored) = authenticate_with_user(&store, &theirs, 1).unwrap();
        assert_eq!(token.user_id, user.id);
        assert_eq!(crate::users::from_stored(&stored.unwrap()).unwrap().name, "owner");
        assert!(matches!(authenticate_with_user(&store, &theirs, u64::MAX - 1).map(|_| ()), Ok(())));
        assert!(matches!(authenticate_with_user(&store, "fya.nonsense", 1), Err(ApiTokenError::Invalid)));
    }
}
