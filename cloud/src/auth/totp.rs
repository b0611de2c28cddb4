//! Optional TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, one
//! step of skew), as authenticator apps expect. Each step is accepted once.

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use totp_rs::{Builder, Secret, Totp};

/// A user's TOTP state. `confirmed` turns the factor on; until then the
/// secret is only offered for enrolment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpState {
    /// Base32, as shown to the user once.
    pub secret: String,
    pub confirmed: bool,
    /// The last accepted step, so a code cannot be replayed.
    pub last_step: u64,
}

impl TotpState {
    pub fn generate() -> TotpState {
        let mut bytes = [0u8; 20];
        OsRng.fill_bytes(&mut bytes);
        TotpState { secret: Secret::from(bytes).to_base32(), confirmed: false, last_step: 0 }
    }

    fn totp(&self) -> Option<Totp> {
        let secret = Secret::try_from_base32(&self.secret).ok()?;
        Builder::new().with_secret(secret).build().ok()
    }

    /// Checks `code` at `now_ms`; on success records its step and returns
    /// true. A replayed or stale code is refused.
    pub fn check(&mut self, code: &str, now_ms: u64) -> bool {
        if code.len() > 16 {
            return false;
        }
        let Some(totp) = self.totp() else { return false };
        match totp.check(code.trim(), now_ms / 1000) {
            Some(step) if step > self.last_step => {
                self.last_step = step;
                true
            }
            _ => false,
        }
    }

    /// The code for `now_ms` (for tests and for showing enrolment works).
    pub fn code_at(&self, now_ms: u64) -> Option<String> {
        Some(self.totp()?.generate(now_ms / 1000).to_string())
    }

    /// The `otpauth://` URL an authenticator app scans.
    pub fn url(&self, account: &str) -> String {
        let account: String = account
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!(
            "otpauth://totp/Ferry:{account}?secret={}&issuer=Ferry&algorithm=SHA1&digits=6&period=30",
            self.secret
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_work_once_and_only_in_their_window() {
        let mut state = TotpState::generate();
        let now = 1_800_000_000_000;
        let code = state.code_at(now).unwrap();
        assert_eq!(code.len(), 6);
        assert!(state.check(&code, now));
        assert!(!state.check(&code, now), "replay of the same step");
        let later = now + 30_000;
        let next = state.code_at(later).unwrap();
        assert!(!state.check(&next, later + 120_000), "too old");
        let next = state.code_at(later + 120_000).unwrap();
        assert!(state.check(&next, later + 120_000));
        assert!(!state.check("000000x", later) && !state.check("", later));
        assert!(state.url("bob@example").starts_with("otpauth://totp/Ferry:bob%40example?secret="));
    }

    #[test]
    fn rfc_6238_vector() {
        // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 in 8 digits; the
        // 6-digit code is its last six.
        let state = TotpState {
            secret: Secret::from(*b"12345678901234567890").to_base32(),
            confirmed: true,
            last_step: 0,
        };
        assert_eq!(state.code_at(59_000).unwrap(), "287082");
    }
}
