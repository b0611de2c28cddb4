//! The session life cycle as a pure state machine: every transition takes
//! the time and what is known about the gateway, and either changes the
//! session or says why not. Storage, pushes and audit are the caller's.

// The states and end reasons are what clients read: they live in ferry-api.
pub use ferry_api::{EndReason, State};

use super::Session;

/// How long a start may wait for the customer's approval.
pub const APPROVAL_TIMEOUT_MS: u64 = 15 * 60 * 1000;

/// What the cloud knows about the gateway when a session starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayView {
    pub online: bool,
    pub switch_on: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the gateway is offline: it has no control connection to the cloud")]
    GatewayOffline,
    #[error("remote maintenance is switched off at the gateway; only the customer can switch it on")]
    SwitchOff,
    #[error("the session is already {0}")]
    AlreadyRunning(&'static str),
    #[error("the session is not running")]
    NotRunning,
    #[error("the session is not waiting for approval")]
    NotWaiting,
    #[error("the session has no targets")]
    NoTargets,
}

impl Session {
    /// Starts a prepared (or ended, or expired) session. After an end, only
    /// a new start brings it back; after the customer switched off, the
    /// switch must be on again, which only the customer can do.
    pub fn start(&mut self, by: &str, now_ms: u64, gateway: GatewayView) -> Result<State, Refusal> {
        if self.state.is_live() {
            return Err(Refusal::AlreadyRunning(self.state.label()));
        }
        if self.targets.is_empty() {
            return Err(Refusal::NoTargets);
        }
        if !gateway.online {
            return Err(Refusal::GatewayOffline);
        }
        if !gateway.switch_on {
            return Err(Refusal::SwitchOff);
        }
        self.started_by = Some(by.to_string());
        self.started_ms = Some(now_ms);
        self.ended_ms = None;
        self.end_reason = None;
        self.configs.clear();
        if self.approval_required {
            self.state = State::WaitingForApproval;
            self.expires_ms = Some(now_ms + APPROVAL_TIMEOUT_MS);
        } else {
            self.activate(now_ms);
        }
        Ok(self.state)
    }

    fn activate(&mut self, now_ms: u64) {
        self.state = State::Active;
        self.expires_ms = Some(now_ms + self.max_duration_s * 1000);
    }

    /// The customer approved at the gateway: the duration starts now.
    pub fn approve(&mut self, now_ms: u64) -> Result<(), Refusal> {
        if self.state != State::WaitingForApproval {
            return Err(Refusal::NotWaiting);
        }
        self.activate(now_ms);
        Ok(())
    }

    pub fn deny(&mut self, now_ms: u64) -> Result<(), Refusal> {
        if self.state != State::WaitingForApproval {
            return Err(Refusal::NotWaiting);
        }
        self.finish(State::Ended, EndReason::Denied, now_ms);
        Ok(())
    }

    pub fn end(&mut self, reason: EndReason, now_ms: u64) -> Result<(), Refusal> {
        if !self.state.is_live() {
            return Err(Refusal::NotRunning);
        }
        self.finish(State::Ended, reason, now_ms);
        Ok(())
    }

    /// Expires the session if its time is up; returns whether it did.
    pub fn expire_due(&mut self, now_ms: u64) -> bool {
        let due = self.state.is_live() && self.expires_ms.is_some_and(|at| now_ms >= at);
        if due {
            let reason =
                if self.state == State::Active { EndReason::Duration } else { EndReason::ApprovalTimeout };
            self.finish(State::Expired, reason, now_ms);
        }
        due
    }

    fn finish(&mut self, state: State, reason: EndReason, now_ms: u64) {
        self.state = state;
        self.end_reason = Some(reason);
        self.ended_ms = Some(now_ms);
        // Keys and relay bindings go at once: nothing issued survives.
        self.configs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const ON: GatewayView = GatewayView { online: true, switch_on: true };

    fn session(approval_required: bool) -> Session {
        Session::new(
            1,
            "maintenance".into(),
            2,
            vec!["plc".into()],
            vec![3],
            3600,
            approval_required,
            "admin".into(),
            0,
        )
    }

    #[test]
    fn start_needs_an_online_gateway_with_the_switch_on() {
        let mut s = session(false);
        assert_eq!(
            s.start("a", 0, GatewayView { online: false, switch_on: true }),
            Err(Refusal::GatewayOffline)
        );
        assert_eq!(s.start("a", 0, GatewayView { online: true, switch_on: false }), Err(Refusal::SwitchOff));
        assert_eq!(s.state, State::Prepared, "a refusal changes nothing");
        assert_eq!(s.start("a", 10, ON), Ok(State::Active));
        assert_eq!(s.expires_ms, Some(10 + 3_600_000));
        assert_eq!(s.start("a", 11, ON), Err(Refusal::AlreadyRunning("active")));
        let mut empty = session(false);
        empty.targets.clear();
        assert_eq!(empty.start("a", 0, ON), Err(Refusal::NoTargets));
    }

    #[test]
    fn approval_then_expiry_driven_by_the_clock() {
        let clock = ManualClock::new(1_000);
        let mut s = session(true);
        assert_eq!(s.start("a", clock.now_ms(), ON), Ok(State::WaitingForApproval));
        clock.advance(60_000);
        assert!(!s.expire_due(clock.now_ms()));
        s.approve(clock.now_ms()).unwrap();
        assert_eq!(s.state, State::Active);
        assert_eq!(s.approve(clock.now_ms()), Err(Refusal::NotWaiting));
        clock.advance(3_600_000 - 1);
        assert!(!s.expire_due(clock.now_ms()));
        clock.advance(1);
        assert!(s.expire_due(clock.now_ms()));
        assert_eq!((s.state, s.end_reason.clone()), (State::Expired, Some(EndReason::Duration)));
        assert!(!s.expire_due(clock.now_ms() + 1), "once");
    }

    #[test]
    fn unapproved_starts_time_out_and_denials_end() {
        let mut s = session(true);
        s.start("a", 0, ON).unwrap();
        assert!(s.expire_due(APPROVAL_TIMEOUT_MS));
        assert_eq!(s.end_reason, Some(EndReason::ApprovalTimeout));
        s.start("a", APPROVAL_TIMEOUT_MS, ON).unwrap();
        s.deny(APPROVAL_TIMEOUT_MS + 1).unwrap();
        assert_eq!((s.state, s.end_reason.clone()), (State::Ended, Some(EndReason::Denied)));
    }

    #[test]
    fn ending_is_final_until_a_new_start() {
        let mut s = session(false);
        assert_eq!(s.end(EndReason::Customer { session_only: false }, 0), Err(Refusal::NotRunning));
        s.start("a", 0, ON).unwrap();
        s.configs.push(super::super::IssuedConfig::example());
        s.end(EndReason::User { name: "tech".into() }, 5).unwrap();
        assert_eq!(s.state, State::Ended);
        assert!(s.configs.is_empty(), "issued keys go with the end");
        assert_eq!(s.end(EndReason::Customer { session_only: false }, 6), Err(Refusal::NotRunning));
        assert!(!s.expire_due(u64::MAX));
        assert_eq!(s.start("a", 7, ON), Ok(State::Active), "a new start brings it back");
        assert_eq!((s.ended_ms, s.end_reason.clone()), (None, None));
    }
}
