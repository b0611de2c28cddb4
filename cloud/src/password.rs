//! Passwords: argon2id hashes in PHC string form, and one-time passwords for
//! new accounts (shared with the gateway's local panel:
//! `ferry_daemon::login::password`).

pub use ferry_daemon::login::password::*;
