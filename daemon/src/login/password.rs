//! Passwords: argon2id hashes in PHC string form, and one-time passwords for
//! new accounts.

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use rand_core::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password must be 12 to 1024 characters long")]
    Length,
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// The shortest password accepted (NIST SP 800-63B asks for at least 8; a
/// remote-maintenance account deserves more).
pub const MIN_LEN: usize = 12;
/// The longest: argon2 accepts more, but a megabyte "password" is a DoS.
pub const MAX_LEN: usize = 1024;

/// Hashes with argon2id and a random salt (the crate's default parameters:
/// 19 MiB, 2 passes, as OWASP recommends).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let len = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&len) {
        return Err(PasswordError::Length);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC hash. A malformed hash never
/// matches.
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > MAX_LEN * 4 {
        return false;
    }
    PasswordHash::new(phc)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A random one-time password: 20 characters from a 56-symbol alphabet
/// without look-alikes (about 116 bits).
pub fn one_time() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let byte = (OsRng.next_u32() & 0xff) as usize;
        // Rejection sampling keeps the choice uniform.
        if byte < ALPHABET.len() * (256 / ALPHABET.len()) {
            out.push(ALPHABET[byte % ALPHABET.len()] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery", &a));
        assert!(!verify("correct horse batterY", &a));
        assert!(!verify("correct horse battery", "not a hash"));
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(matches!(hash("short"), Err(PasswordError::Length)));
        assert!(matches!(hash(&"x".repeat(MAX_LEN + 1)), Err(PasswordError::Length)));
    }

    #[test]
    fn one_time_passwords_are_long_and_distinct() {
        let a = one_time();
        assert_eq!(a.len(), 20);
        assert_ne!(a, one_time());
        assert!(hash(&a).is_ok(), "a one-time password is itself acceptable");
    }
}
