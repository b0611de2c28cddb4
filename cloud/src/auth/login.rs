//! Password login with slowdown and lockout. After `slow_after` consecutive
//! failures each further attempt must wait an exponentially growing delay;
//! at `lock_after` failures the account is locked for `lock_ms`. Attempts
//! during the wait or the lock are refused without checking the password,
//! so guessing cannot go faster by ignoring the delay.

use crate::users::User;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    pub slow_after: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub lock_after: u32,
    pub lock_ms: u64,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            slow_after: 3,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            lock_after: 10,
            lock_ms: 15 * 60 * 1000,
        }
    }
}

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

impl LoginPolicy {
    /// How long after the last failure the next attempt may come.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        if failures < self.slow_after {
            return 0;
        }
        let doublings = (failures - self.slow_after).min(30);
        (self.base_delay_ms << doublings).min(self.max_delay_ms)
    }

    /// Whether an attempt may be checked at all now.
    pub fn gate(&self, user: &User, now_ms: u64) -> Option<LoginOutcome> {
        if let Some(until_ms) = user.locked_until_ms.filter(|&until| now_ms < until) {
            return Some(LoginOutcome::Locked { until_ms, new: false });
        }
        let ready_at = user.last_failed_ms.unwrap_or(0) + self.delay_ms(user.failed_logins);
        (user.failed_logins >= self.slow_after && now_ms < ready_at)
            .then(|| LoginOutcome::Throttled { retry_after_ms: ready_at - now_ms })
    }

    /// Applies an attempt whose password check gave `password_ok` to the
    /// user's counters (the caller stores the user back).
    pub fn record(
        &self,
        user: &mut User,
        now_ms: u64,
        password_ok: bool,
        totp: Option<&str>,
    ) -> LoginOutcome {
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
        if outcome == LoginOutcome::Success {
            user.failed_logins = 0;
            user.last_failed_ms = None;
            user.locked_until_ms = None;
            return outcome;
        }
        user.failed_logins += 1;
        user.last_failed_ms = Some(now_ms);
        if user.failed_logins >= self.lock_after {
            let until_ms = now_ms + self.lock_ms;
            user.locked_until_ms = Some(until_ms);
            // The lock is the penalty; afterwards counting starts over.
            user.failed_logins = 0;
            user.last_failed_ms = None;
            return LoginOutcome::Locked { until_ms, new: true };
        }
        outcome
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
