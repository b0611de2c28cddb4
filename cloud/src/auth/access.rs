//! Access tokens: HS256-signed JWTs valid for five minutes. They carry the
//! user and the user's token epoch; the epoch moves when a user is disabled
//! or changes password, which voids every token issued before.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::{
    rights::Role,
    store::{BackendError, Batch, Collection, Store},
};

pub const ACCESS_TTL_MS: u64 = 5 * 60 * 1000;
const KEY_NAME: &[u8] = b"access_token_key";
const ISSUER: &str = "ferry-cloud";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    pub name: String,
    pub role: Role,
    pub iss: String,
    /// Issued and expiry times in milliseconds: the five-minute lifetime is
    /// checked against the cloud's clock, not the library's.
    pub iat_ms: u64,
    pub exp_ms: u64,
    pub epoch: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("the access token is malformed or its signature is wrong")]
    Invalid,
    #[error("the access token expired; refresh it")]
    Expired,
}

/// The signing key, made once per data folder and kept in the store.
pub struct AccessKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl AccessKey {
    pub fn load_or_create(store: &Store) -> Result<AccessKey, BackendError> {
        let backend = store.backend();
        let secret = match backend.get(Collection::Meta, KEY_NAME)? {
            Some(secret) if secret.len() == 32 => secret,
            Some(other) => {
                return Err(BackendError::Io(format!(
                    "the stored token key has {} bytes, not 32",
                    other.len()
                )));
            }
            None => {
                let mut secret = vec![0u8; 32];
                OsRng.fill_bytes(&mut secret);
                match backend.commit(Batch::default().expect(Collection::Meta, KEY_NAME, None).put(
                    Collection::Meta,
                    KEY_NAME,
                    secret.clone(),
                )) {
                    Ok(()) => secret,
                    // Another process made it first: use theirs.
                    Err(BackendError::Conflict { .. }) => backend
                        .get(Collection::Meta, KEY_NAME)?
                        .ok_or_else(|| BackendError::Io("the token key vanished after a conflict".into()))?,
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(AccessKey::from_secret(&secret))
    }

    fn from_secret(secret: &[u8]) -> AccessKey {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked in `verify` with the cloud's clock.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[ISSUER]);
        AccessKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    #[allow(
        clippy::expect_used,
        reason = "HS256 with a secret key fails only if the claims do not serialize; they are plain data"
    )]
    pub fn issue(&self, user_id: u64, name: &str, role: Role, epoch: u32, now_ms: u64) -> String {
        let claims = AccessClaims {
            sub: user_id.to_string(),
            name: name.to_string(),
            role,
            iss: ISSUER.to_string(),
            iat_ms: now_ms,
            exp_ms: now_ms + ACCESS_TTL_MS,
            epoch,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    pub fn verify(&self, token: &str, now_ms: u64) -> Result<(u64, AccessClaims), AccessError> {
        if token.len() > 2048 {
            return Err(AccessError::Invalid);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| AccessError::Invalid)?;
        let claims = data.claims;
        let user_id = claims.sub.parse().map_err(|_| AccessError::Invalid)?;
        if now_ms >= claims.exp_ms {
            return Err(AccessError::Expired);
        }
        Ok((user_id, claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_for_five_minutes_then_expired() {
        let key = AccessKey::from_secret(&[7; 32]);
        let token = key.issue(3, "alice", Role::Administrator, 0, 1_000_000);
        let (id, claims) = key.verify(&token, 1_000_000 + ACCESS_TTL_MS - 1).unwrap();
        assert_eq!((id, claims.role), (3, Role::Administrator));
        assert_eq!(key.verify(&token, 1_000_000 + ACCESS_TTL_MS), Err(AccessError::Expired));
    }

    #[test]
    fn other_keys_tampering_and_none_algorithm_are_refused() {
        let key = AccessKey::from_secret(&[7; 32]);
        let other = AccessKey::from_secret(&[8; 32]);
        let token = key.issue(3, "alice", Role::RemoteConnectUser, 0, 0);
        assert_eq!(other.verify(&token, 1), Err(AccessError::Invalid));

        // Raise the role in the payload, keep the signature.
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(engine.decode(parts[1]).unwrap()).unwrap();
        let forged = payload.replace("remote_connect_user", "administrator");
        let forged = format!("{}.{}.{}", parts[0], engine.encode(forged), parts[2]);
        assert_eq!(key.verify(&forged, 1), Err(AccessError::Invalid));

        // An unsigned token ("alg": "none") is not accepted.
        let header = engine.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{header}.{}.", parts[1]);
        assert_eq!(key.verify(&unsigned, 1), Err(AccessError::Invalid));
        assert_eq!(key.verify("garbage", 1), Err(AccessError::Invalid));
    }

    #[test]
    fn the_key_persists_per_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let token = AccessKey::load_or_create(&store).unwrap().issue(1, "a", Role::Administrator, 0, 0);
        assert!(AccessKey::load_or_create(&store).unwrap().verify(&token, 1).is_ok());
    }
}
