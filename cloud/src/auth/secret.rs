//! Opaque bearer secrets (refresh and API tokens): `<prefix>.<owner>.<id>.<secret>`.
//! Only a hash of the secret is stored, so a copy of the database does not
//! hand out working tokens.

use blake2::{Blake2s256, Digest};
use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;

/// A parsed token: who it belongs to, which record, and the secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct Opaque {
    pub owner: u64,
    pub id: u64,
    secret: [u8; 32],
}

impl std::fmt::Debug for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opaque").field("owner", &self.owner).field("id", &self.id).finish_non_exhaustive()
    }
}

impl Opaque {
    pub fn generate(owner: u64, id: u64) -> Opaque {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Opaque { owner, id, secret }
    }

    pub fn encode(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}.{}", self.owner, self.id, hex::encode(self.secret))
    }

    /// Parses a token of the given prefix; anything else is `None`.
    pub fn parse(prefix: &str, token: &str) -> Option<Opaque> {
        if token.len() > 200 {
            return None;
        }
        let mut parts = token.split('.');
        if parts.next()? != prefix {
            return None;
        }
        let owner = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(parts.next()?, &mut secret).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Opaque { owner, id, secret })
    }

    /// What the store keeps.
    pub fn hash(&self) -> String {
        hex::encode(Blake2s256::digest(self.secret))
    }

    pub fn matches(&self, stored_hash: &str) -> bool {
        self.hash().as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }
}

/// A store key: a one-byte kind, the owner, then the id, all big-endian so
/// an owner's records are one prefix.
pub fn record_key(kind: u8, owner: u64, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(kind);
    key.extend_from_slice(&owner.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub fn owner_prefix(kind: u8, owner: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(kind);
    key.extend_from_slice(&owner.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed() {
        let token = Opaque::generate(7, 42);
        let text = token.encode("fyr");
        assert_eq!(Opaque::parse("fyr", &text), Some(token.clone()));
        assert_eq!(Opaque::parse("fya", &text), None, "prefix is checked");
        assert!(token.matches(&token.hash()));
        assert!(!Opaque::generate(7, 42).matches(&token.hash()));
        for bad in ["", "fyr", "fyr.1.2", "fyr.x.2.00", "fyr.1.2.zz", "fyr.1.2.00", &format!("{text}.1")] {
            assert_eq!(Opaque::parse("fyr", bad), None, "{bad:?}");
        }
        assert!(!format!("{token:?}").contains(&hex::encode(token.secret)), "Debug hides the secret");
    }
}
