//! Password logins as the cloud and the gateway's local panel do them:
//! argon2id hashes ([`password`]) and the slowdown and lockout after failed
//! attempts ([`lockout`]).

pub mod lockout;
pub mod password;
