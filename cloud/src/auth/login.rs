//! Password login with slowdown and lockout. After `slow_after` consecutive
//! failures each further attempt must wait an exponentially growing delay;
//! at `lock_after` failures the account is locked for `lock_ms`. Attempts
//! during the wait or the lock are refused without checking the password,
//! so guessing cannot go faster by ignoring the delay. TOTP and disabled
//! accounts are the cloud's own.

use ferry_daemon::login::lockout::{Failures, Lockout, Refused};

use crate::users::User;

/// The counting itself is `ferry_daemon::login::lockout`, shared with the
/// gateway's local panel; the cloud keeps the counters on the user.
pub type LoginPolicy = Lockout;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    Success,
    /// Wrong password (or unknown user: the caller cannot tell).
    BadCredentials,
    /// The password was right, the account has TOTP, no code was given.
    TotpRequired,
    BadTotp,
    /// Too soon after the last failure.
    Throttled {
        retry_after_ms: u64,
    },
    /// Locked until then; `new` is true for the attempt that locked it.
    Locked {
        until_ms: u64,
        new: bool,
    },
    Disabled,
}

fn failures(user: &User) -> Failures {
    Failures {
        count: user.failed_logins,
        last_failed_ms: user.last_failed_ms,
        locked_until_ms: user.locked_until_ms,
    }
}

fn store(user: &mut User, failures: Failures) {
    user.failed_logins = failures.count;
    user.last_failed_ms = failures.last_failed_ms;
    user.locked_until_ms = failures.locked_until_ms;
}

/// The login checks on a user's record.
pub trait UserLogin {
    /// Whether an attempt may be checked at all now.
    fn gate(&self, user: &User, now_ms: u64) -> Option<LoginOutcome>;

    /// Applies an attempt whose password check gave `password_ok` to the
    /// user's counters (the caller stores the user back).
    fn record(&self, user: &mut User, now_ms: u64, password_ok: bool, totp: Option<&str>) -> LoginOutcome;
}

impl UserLogin for Lockout {
    fn gate(&self, user: &User, now_ms: u64) -> Option<LoginOutcome> {
        match self.check(&failures(user), now_ms) {
            Ok(()) => None,
            Err(Refused::Locked { until_ms }) => Some(LoginOutcome::Locked { until_ms, new: false }),
            Err(Refused::Throttled { retry_after_ms }) => Some(LoginOutcome::Throttled { retry_after_ms }),
        }
    }

    fn record(&self, user: &mut User, now_ms: u64, password_ok: bool, totp: Option<&str>) -> LoginOutcome {
        if let Some(refused) = self.gate(user, now_ms) {
            return refused;
        }
        let outcome = match (password_ok, user.totp.as_mut().filter(|t| t.confirmed)) {
            (false, _) => LoginOutcome::BadCredentials,
            (true, Some(state)) => match totp {
                None => return LoginOutcome::TotpRequired,
                Some(code) if !state.check(code, now_ms) => LoginOutcome::BadTotp,
                Some(_) if user.disabled => return LoginOutcome::Disabled,
                Some(_) => LoginOutcome::Success,
            },
            (true, None) if user.disabled => return LoginOutcome::Disabled,
            (true, None) => LoginOutcome::Success,
        };
        let mut counted = failures(user);
        if outcome == LoginOutcome::Success {
            counted.succeeded();
            store(user, counted);
            return outcome;
        }
        let locked = self.failed(&mut counted, now_ms);
        store(user, counted);
        match locked {
            Some(until_ms) => LoginOutcome::Locked { until_ms, new: true },
            None => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::totp::TotpState, rights::Role};

    fn user() -> User {
        User::new(1, "alice".into(), Role::RemoteConnectUser, "$argon2id$x".into(), 0)
    }

    #[test]
    fn slows_down_then_locks_then_starts_over() {
        let policy = LoginPolicy::default();
        let mut u = user();
        let mut now = 1_000_000;
        for _ in 0..3 {
            assert_eq!(policy.record(&mut u, now, false, None), LoginOutcome::BadCredentials);
        }
        // Three failures: the next attempt must wait 1 s, then 2 s, 4 s...
        assert_eq!(
            policy.record(&mut u, now + 10, true, None),
            LoginOutcome::Throttled { retry_after_ms: 990 }
        );
        assert_eq!(u.failed_logins, 3, "a throttled attempt is not counted");
        for failures in 3..9 {
            now += policy.delay_ms(failures);
            assert_eq!(policy.record(&mut u, now, false, None), LoginOutcome::BadCredentials);
        }
        now += policy.delay_ms(9);
        let until = now + policy.lock_ms;
        assert_eq!(
            policy.record(&mut u, now, false, None),
            LoginOutcome::Locked { until_ms: until, new: true }
        );
        // Even the right password is refused while locked.
        assert_eq!(
            policy.record(&mut u, until - 1, true, None),
            LoginOutcome::Locked { until_ms: until, new: false }
        );
        assert_eq!(policy.record(&mut u, until, true, None), LoginOutcome::Success);
        assert_eq!((u.failed_logins, u.locked_until_ms), (0, None));
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = LoginPolicy::default();
        let delays: Vec<u64> = (0..12).map(|f| policy.delay_ms(f)).collect();
        assert_eq!(delays, [0, 0, 0, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
        assert_eq!(policy.delay_ms(u32::MAX), 60000);
    }

    #[test]
    fn totp_and_disabled() {
        let policy = LoginPolicy::default();
        let mut u = user();
        let mut totp = TotpState::generate();
        totp.confirmed = true;
        u.totp = Some(totp.clone());
        let now = 1_800_000_000_000;
        assert_eq!(policy.record(&mut u, now, true, None), LoginOutcome::TotpRequired);
        assert_eq!(u.failed_logins, 0);
        assert_eq!(policy.record(&mut u, now, true, Some("123")), LoginOutcome::BadTotp);
        assert_eq!(u.failed_logins, 1, "a wrong code counts as a failure");
        let code = totp.code_at(now).unwrap();
        assert_eq!(policy.record(&mut u, now, true, Some(&code)), LoginOutcome::Success);
        assert_eq!(policy.record(&mut u, now, true, Some(&code)), LoginOutcome::BadTotp, "no replay");
        u.disabled = true;
        let later = now + 31_000;
        let code = totp.code_at(later).unwrap();
        assert_eq!(policy.record(&mut u, later, true, Some(&code)), LoginOutcome::Disabled);
        assert_eq!(policy.record(&mut u, later, false, None), LoginOutcome::BadCredentials);
    }
}
