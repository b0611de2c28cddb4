//! The application: shared state and the operations that both the HTTP API
//! and the control channels perform (ending sessions, expiry, a switch going
//! off, a user being disabled), so each rule lives in one place.

use std::{
    ops::Deref,
    sync::{Arc, OnceLock},
};

use ferry_api::ConfigState;

use crate::{
    audit::{self, Event},
    auth::{AccessKey, LoginPolicy},
    clock::{SharedClock, SystemClock},
    configs::{self, ConfigEnd},
    hub::{Change, Hub},
    metrics::Metrics,
    sessions::{self, ActingUser, EndReason, Session, SessionError},
    store::{BackendError, Store},
    users::User,
};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub metrics: Metrics,
    pub clock: SharedClock,
    pub access: AccessKey,
    pub policy: LoginPolicy,
    pub hub: Hub,
    openapi: OnceLock<String>,
    /// The SHA-256 fingerprint of the certificate served, when serving TLS:
    /// the console puts it in the commands it shows (gateway enrolment,
    /// the technician's login).
    tls_pin: OnceLock<String>,
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Who did something, for the audit log.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub source: Option<String>,
    /// The person's user record as their credential was checked, when a
    /// person acts: their session changes expect it unchanged
    /// ([`ActingUser`]).
    pub user: Option<ActingUser>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor { name: "system".into(), source: None, user: None }
    }

    pub fn gateway(id: u64, source: Option<String>) -> Actor {
        Actor { name: format!("gateway:{id}"), source, user: None }
    }

    /// The actor of a change that takes something away (an end, a
    /// revocation): it expects nothing of their user record, so it goes
    /// through whatever happened to them meanwhile. (An administrator
    /// disabled while disabling another must still end that user's
    /// sessions.)
    pub fn taking_away(&self) -> Actor {
        Actor { user: None, ..self.clone() }
    }

    /// An audit event by this actor about `session`.
    pub fn session_event(
        &self,
        action: &str,
        allowed: bool,
        session: &Session,
        detail: Option<String>,
    ) -> Event {
        Event {
            actor: self.name.clone(),
            action: action.to_string(),
            allowed,
            source: self.source.clone(),
            session: Some(session.id.to_string()),
            gateway: Some(session.gateway_id.to_string()),
            detail,
        }
    }
}

impl AppState {
    pub fn new(store: Store) -> Result<AppState, BackendError> {
        AppState::with_clock(store, Arc::new(SystemClock))
    }

    pub fn with_clock(store: Store, clock: SharedClock) -> Result<AppState, BackendError> {
        let hub = Hub::default();
        hub.start_revisions_at(clock.now_ms());
        Ok(AppState(Arc::new(Inner {
            access: AccessKey::load_or_create(&store)?,
            store,
            metrics: Metrics::new(),
            clock,
            policy: LoginPolicy::default(),
            hub,
            openapi: OnceLock::new(),
            tls_pin: OnceLock::new(),
        })))
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn set_openapi(&self, json: String) {
        let _ = self.openapi.set(json);
    }

    pub fn set_tls_pin(&self, fingerprint: String) {
        let _ = self.tls_pin.set(fingerprint);
    }

    pub fn tls_pin(&self) -> Option<&str> {
        self.tls_pin.get().map(String::as_str)
    }

    pub fn openapi_json(&self) -> Option<&str> {
        self.openapi.get().map(String::as_str)
    }

    /// Appends to the audit log. A failure is logged and counted; it does
    /// not undo the action, which is already durable.
    pub fn audit(&self, event: Event) {
        if let Err(error) = audit::append(&self.store, self.now_ms(), event) {
            self.metrics.audit_failures.inc();
            tracing::error!(%error, "appending to the audit log failed");
        }
    }

    pub fn audit_session(
        &self,
        actor: &Actor,
        action: &str,
        allowed: bool,
        session: &Session,
        detail: Option<String>,
    ) {
        self.audit(actor.session_event(action, allowed, session, detail));
    }

    /// Changes a session and pushes the result to its gateway and to every
    /// relay that held or holds one of its allocations.
    pub fn change_session<R>(
        &self,
        id: u64,
        change: impl FnMut(&mut Session) -> Result<R, SessionError>,
    ) -> Result<Option<(Session, R)>, SessionError> {
        self.change_session_with(id, None, change, |_, _| None)
    }

    /// [`Self::change_session`], recording `action` by `actor` in the audit
    /// log in the same commit as the change, with the detail `detail` makes.
    pub fn change_session_audited<R>(
        &self,
        id: u64,
        actor: &Actor,
        action: &str,
        change: impl FnMut(&mut Session) -> Result<R, SessionError>,
        detail: impl Fn(&Session, &R) -> Option<String>,
    ) -> Result<Option<(Session, R)>, SessionError> {
        self.change_session_with(id, actor.user.clone(), change, |session, result| {
            Some(actor.session_event(action, true, session, detail(session, result)))
        })
    }

    fn change_session_with<R>(
        &self,
        id: u64,
        acting: Option<ActingUser>,
        change: impl FnMut(&mut Session) -> Result<R, SessionError>,
        event: impl Fn(&Session, &R) -> Option<Event>,
    ) -> Result<Option<(Session, R)>, SessionError> {
        self.change_session_then(id, acting, change, event, |_, _| {})
    }

    /// [`Self::change_session_with`], running `committed` on the new
    /// session once it is stored and before anyone is told of it.
    fn change_session_then<R>(
        &self,
        id: u64,
        acting: Option<ActingUser>,
        mut change: impl FnMut(&mut Session) -> Result<R, SessionError>,
        event: impl Fn(&Session, &R) -> Option<Event>,
        committed: impl FnOnce(&Session, &R),
    ) -> Result<Option<(Session, R)>, SessionError> {
        let mut before = None;
        let changed = sessions::modify_audited(
            &self.store,
            id,
            self.now_ms(),
            acting,
            |s| {
                before = Some(s.clone());
                change(s)
            },
            event,
        )?;
        if let (Some((session, result)), Some(before)) = (&changed, &before) {
            committed(session, result);
            self.push(before, session);
        }
        Ok(changed)
    }

    /// [`Self::change_session_audited`] for a task, which waits for the
    /// commit without holding a thread; `known` as in
    /// [`sessions::modify_audited_async`].
    pub async fn change_session_audited_async<R>(
        &self,
        id: u64,
        known: Option<Vec<u8>>,
        actor: &Actor,
        action: &str,
        mut change: impl FnMut(&mut Session) -> Result<R, SessionError>,
        detail: impl Fn(&Session, &R) -> Option<String>,
    ) -> Result<Option<(Session, R)>, SessionError> {
        let mut before = None;
        let changed = sessions::modify_audited_async(
            &self.store,
            id,
            self.now_ms(),
            known,
            actor.user.clone(),
            |s| {
                before = Some(s.clone());
                change(s)
            },
            |session, result| Some(actor.session_event(action, true, session, detail(session, result))),
        )
        .await?;
        if let (Some((session, _)), Some(before)) = (&changed, &before) {
            self.push(before, session);
        }
        Ok(changed)
    }

    /// [`Self::change_session_audited_async`] in a task of its own, which
    /// runs to its end even if the caller is dropped: once a request's
    /// change is taken into another request's group it is committed with
    /// it, and the gateway and the relays must then hear of it
    /// ([`Self::push`]). An HTTP handler is dropped when its client hangs
    /// up; awaited inline, the change would stand in the store and the
    /// audit log while the gateway kept the session's keys.
    pub async fn change_session_detached<R: Send + 'static>(
        &self,
        id: u64,
        known: Option<Vec<u8>>,
        actor: Actor,
        action: &'static str,
        change: impl FnMut(&mut Session) -> Result<R, SessionError> + Send + 'static,
        detail: impl Fn(&Session, &R) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Option<(Session, R)>, SessionError> {
        let app = self.clone();
        let task = tokio::spawn(async move {
            app.change_session_audited_async(id, known, &actor, action, change, detail).await
        });
        task.await.map_err(|e| {
            SessionError::from(BackendError::Unavailable(format!("the session change failed: {e}")))
        })?
    }

    /// [`Self::end_session`] for a task; detached as
    /// [`Self::change_session_detached`] is, so that an end, once
    /// committed, always reaches the gateway and the relays.
    pub async fn end_session_async(
        &self,
        id: u64,
        known: Option<Vec<u8>>,
        reason: EndReason,
        actor: &Actor,
        only_for: Option<u64>,
    ) -> Result<Option<Session>, SessionError> {
        let now = self.now_ms();
        let detail = describe(&reason);
        let ended = self
            .change_session_detached(
                id,
                known,
                actor.taking_away(),
                "session.end",
                move |s| {
                    s.still_released(only_for)?;
                    Ok(s.end(reason.clone(), now)?)
                },
                move |_, _| Some(detail.clone()),
            )
            .await?;
        Ok(ended.map(|(s, ())| s))
    }

    /// Tells the gateway and the relays of a session that was changed
    /// (from `before` to `after`) by a commit made elsewhere.
    pub fn session_changed(&self, before: &Session, after: &Session) {
        self.push(before, after);
    }

    /// After a session changed from `before` to `after`: its configurations
    /// that stopped get their end recorded, its gateway and every relay that
    /// held or holds one of its allocations get their new desired state, and
    /// subscribers hear of it.
    fn push(&self, before: &Session, after: &Session) {
        for gone in before.configs.iter().filter(|c| after.configs.iter().all(|a| a.id != c.id)) {
            let end = configs::end_after(after, gone.user_id, self.now_ms());
            if let Err(error) = configs::record_end(&self.store, gone.id, end, false) {
                tracing::error!(%error, config = gone.id, "recording the end of a configuration failed");
            }
        }
        self.hub.touch_gateway(after.gateway_id);
        let mut relays = relay_ids(after);
        relays.extend_from_slice(&relay_ids(before));
        relays.sort_unstable();
        relays.dedup();
        for relay in relays {
            self.hub.touch_relay(relay);
        }
        // `ferry_cloud_sessions_live` is read from the store at the scrape:
        // counting here would scan the live index on every change.
        self.hub.notify(Change::Session(after.id));
    }

    /// The client of configuration `config_id` revokes it (`disconnect`):
    /// it leaves the session (the gateway drops the peer, the relay its
    /// allocation) and its watch token is spent. None: it was not in force.
    pub fn revoke_config(
        &self,
        session_id: u64,
        config_id: u64,
        actor: &Actor,
    ) -> Result<Option<Session>, SessionError> {
        let now = self.now_ms();
        let revoked = self.change_session_then(
            session_id,
            None,
            |s| {
                let before = s.configs.len();
                s.configs.retain(|c| c.id != config_id);
                Ok(s.configs.len() != before)
            },
            |s, revoked| {
                revoked.then(|| {
                    actor.session_event(
                        "config.revoke",
                        true,
                        s,
                        Some(format!("configuration {config_id} revoked by its client")),
                    )
                })
            },
            |_, revoked| {
                if *revoked {
                    let end = ConfigEnd {
                        state: ConfigState::Revoked,
                        end_reason: None,
                        detail: Some("revoked by its client (disconnect)".into()),
                        ms: now,
                    };
                    if let Err(error) = configs::record_end(&self.store, config_id, end, true) {
                        tracing::error!(%error, config = config_id, "recording a revocation failed");
                    }
                }
            },
        )?;
        Ok(revoked.and_then(|(s, revoked)| revoked.then_some(s)))
    }

    /// Ends a live session at once (keys and relay bindings go with it).
    pub fn end_session(
        &self,
        id: u64,
        reason: EndReason,
        actor: &Actor,
    ) -> Result<Option<Session>, SessionError> {
        let now = self.now_ms();
        let ended = self.change_session_audited(
            id,
            &actor.taking_away(),
            "session.end",
            |s| Ok(s.end(reason.clone(), now)?),
            |_, _| Some(describe(&reason)),
        )?;
        Ok(ended.map(|(s, ())| s))
    }

    /// Expires every live session whose time is up; returns how many.
    /// The server calls it every second; tests call it after moving the clock.
    pub fn tick(&self) -> Result<usize, SessionError> {
        let now = self.now_ms();
        let mut expired = 0;
        for session in sessions::all_live(&self.store)? {
            if session.expires_ms.is_some_and(|at| now >= at)
                && let Some((_, true)) = self.change_session_audited(
                    session.id,
                    &Actor::system(),
                    "session.expire",
                    |s| Ok(s.expire_due(now)),
                    |s, _| s.end_reason.as_ref().map(describe),
                )?
            {
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// The customer switched remote maintenance off: every live session of
    /// the gateway ends at once.
    pub fn switch_off(&self, gateway_id: u64, actor: &Actor) -> Result<usize, SessionError> {
        let live = sessions::live_for_gateway(&self.store, gateway_id)?;
        let mut ended = 0;
        for session in live {
            if self.end_session(session.id, EndReason::Customer { session_only: false }, actor)?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// A user was just disabled by `by`: sessions they started end, and
    /// configurations issued to them in other sessions are revoked. Each
    /// session is checked again on its newest document (it may have ended,
    /// or been started again by another, since the list was read), and
    /// every one is tried even if one fails: the first error is returned
    /// after. Running it again finishes what a failure left.
    pub fn user_disabled(&self, user: &User, by: &Actor) -> Result<(), SessionError> {
        let by = by.taking_away();
        let now = self.now_ms();
        let reason = EndReason::UserDisabled { name: user.name.clone() };
        let started_by_them = |s: &Session| s.started_by.as_deref() == Some(user.name.as_str());
        let mut first_error = None;
        for session in sessions::all_live(&self.store)? {
            let (what, done) = if started_by_them(&session) {
                let ended = self.change_session_audited(
                    session.id,
                    &by,
                    "session.end",
                    |s| {
                        if s.state.is_live() && started_by_them(s) {
                            s.end(reason.clone(), now)?;
                        }
                        Ok(())
                    },
                    |_, _| Some(describe(&reason)),
                );
                ("ending", ended.map(drop))
            } else if session.configs.iter().any(|c| c.user_id == user.id) {
                let revoked = self.change_session_audited(
                    session.id,
                    &by,
                    "session.config_revoke",
                    |s| {
                        s.configs.retain(|c| c.user_id != user.id);
                        Ok(())
                    },
                    |_, _| Some(format!("configuration of disabled user {} revoked", user.name)),
                );
                ("revoking the configurations of", revoked.map(drop))
            } else {
                continue;
            };
            if let Err(error) = done {
                tracing::error!(%error, session = session.id, user = %user.name, "{what} a disabled user's session failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn relay_ids(session: &Session) -> Vec<u64> {
    session.configs.iter().filter_map(|c| c.relay.as_ref().map(|r| r.relay_id)).collect()
}

pub fn describe(reason: &EndReason) -> String {
    reason.describe()
}
