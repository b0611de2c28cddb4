//! The acknowledged-writes invariant: every write the workload got a
//! success answer for (a session created, started, approved, ended; a user
//! disabled or enabled; the switch position the cloud showed) is recorded,
//! and after every kill of the cloud (once it is back) and at the end each
//! is still visible through the API, through every replica: the session
//! exists and is at least as far as the acknowledged transition, the user's
//! disabled flag is the last one acknowledged.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use ferry_world::poll;
use serde_json::Value;

use crate::soak::{Outcome, Soak};

/// How long a read may take to show a write the cloud acknowledged: the
/// write is in the store when the answer came, so this only covers a read
/// that is refused meanwhile (503 while a replica reconnects to its
/// database).
const CLOUD_ACKED: Duration = Duration::from_secs(10);
/// How long an end the gateway acknowledged (`ferry-gateway end`) may take
/// to reach the cloud: through its event queue, which survives kills, over
/// a control channel that may be reconnecting.
const GATEWAY_ACKED: Duration = Duration::from_secs(60);

/// What a session must show, at least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Created: it exists.
    Exists,
    /// Started or approved: its state ranks at least this ([`rank`]).
    AtLeast(u8),
    /// Over, in exactly this state (`ended`, `expired`); `via_gateway`:
    /// acknowledged by the gateway, which tells the cloud afterwards.
    Over { state: &'static str, via_gateway: bool },
}

/// The writes acknowledged so far: per session the furthest, per user the
/// last disabled flag.
#[derive(Default)]
pub struct Acked {
    sessions: BTreeMap<u64, Want>,
    users: BTreeMap<u64, bool>,
    /// API tokens created around kills of the cloud: just before the
    /// kill, through the replica killed; meanwhile, through the other.
    tokens: Vec<String>,
}

impl Acked {
    /// Session `id`'s write `want` was acknowledged; an end stays the end.
    pub fn session(&mut self, id: u64, want: Want) {
        let entry = self.sessions.entry(id).or_insert(want);
        let keep = match (*entry, want) {
            (Want::Over { via_gateway: false, .. }, _) => true,
            (Want::Over { .. }, Want::Over { .. }) => false,
            (Want::Over { .. }, _) => true,
            (Want::AtLeast(had), Want::AtLeast(now)) => had >= now,
            (Want::AtLeast(_), Want::Exists) => true,
            _ => false,
        };
        if !keep {
            *entry = want;
        }
    }

    /// User `id`'s disabled flag was set to `disabled`.
    pub fn user(&mut self, id: u64, disabled: bool) {
        self.users.insert(id, disabled);
    }

    /// The API token `name` was created.
    pub fn token(&mut self, name: String) {
        self.tokens.push(name);
    }

    /// A name for the next token.
    pub fn next_token_name(&self) -> String {
        format!("soak-acked-{}", self.tokens.len() + 1)
    }
}

/// One read that must find a write: the API path, what the answer must
/// hold, how long it may take, and what it checks (for the log).
struct Read {
    path: String,
    holds: Holds,
    bound: Duration,
    what: String,
}

/// What an answer must show.
enum Holds {
    Session(Want),
    UserDisabled(bool),
    SwitchOn(bool),
    /// The token list names every one of them.
    Tokens(Vec<String>),
}

impl Holds {
    fn by(&self, status: u16, answer: &Value) -> bool {
        status == 200
            && match *self {
                Holds::Session(Want::Exists) => true,
                Holds::Session(Want::AtLeast(r)) => {
                    answer["state"].as_str().and_then(rank).is_some_and(|s| s >= r)
                }
                Holds::Session(Want::Over { state, .. }) => answer["state"] == state,
                Holds::UserDisabled(disabled) => answer["disabled"] == disabled,
                Holds::SwitchOn(on) => answer["last_seen"]["switch_on"] == on,
                Holds::Tokens(ref names) => {
                    let listed: Vec<&str> =
                        answer.as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
                    names.iter().all(|n| listed.contains(&n.as_str()))
                }
            }
    }
}

/// The order of a session's states: a later one is further.
pub fn rank(state: &str) -> Option<u8> {
    match state {
        "prepared" => Some(0),
        "waiting_for_approval" => Some(1),
        "active" => Some(2),
        "ended" | "expired" => Some(3),
        _ => None,
    }
}

impl Soak {
    /// Every acknowledged write is visible through every replica (the one
    /// cloud on sled). A breach names what is missing and what was seen.
    pub fn check_acked(&mut self, after: &str) -> Outcome {
        let addrs: Vec<SocketAddr> = if self.database.is_some() {
            self.world.cloud_replica_addrs()
        } else {
            vec![self.world.cloud_addr()]
        };
        // An admin call first, so that an expired token is renewed.
        let (status, _) =
            self.world.admin("GET", &format!("/api/v1/gateways/{}", self.gateways[0].id), Value::Null);
        if status != 200 {
            return Err(format!("after {after}: the admin's GET of the gateway: {status}"));
        }
        let mut reads: Vec<Read> = Vec::new();
        for (&id, &want) in &self.acked.sessions {
            let (bound, what) = match want {
                Want::Over { via_gateway: true, state } => {
                    (GATEWAY_ACKED, format!("{state} (at the gateway)"))
                }
                Want::Over { state, .. } => (CLOUD_ACKED, state.to_string()),
                Want::AtLeast(r) => (CLOUD_ACKED, format!("at least rank {r}")),
                Want::Exists => (CLOUD_ACKED, "exists".to_string()),
            };
            reads.push(Read {
                path: format!("/api/v1/sessions/{id}"),
                holds: Holds::Session(want),
                bound,
                what: format!("session {id}: {what}"),
            });
        }
        for (&id, &disabled) in &self.acked.users {
            reads.push(Read {
                path: format!("/api/v1/users/{id}"),
                holds: Holds::UserDisabled(disabled),
                bound: CLOUD_ACKED,
                what: format!("user {id}: disabled {disabled}"),
            });
        }
        for gateway in &self.gateways {
            let (id, switch_on) = (gateway.id, gateway.switch_on);
            reads.push(Read {
                path: format!("/api/v1/gateways/{id}"),
                holds: Holds::SwitchOn(switch_on),
                bound: CLOUD_ACKED,
                what: format!("gateway {id}: switch_on {switch_on}"),
            });
        }
        let writes = reads.len() + self.acked.tokens.len();
        if !self.acked.tokens.is_empty() {
            reads.push(Read {
                path: "/api/v1/tokens".to_string(),
                holds: Holds::Tokens(self.acked.tokens.clone()),
                bound: CLOUD_ACKED,
                what: format!("API tokens {}", self.acked.tokens.join(", ")),
            });
        }
        self.stats.acked_writes = writes as u64;
        let mut waited = 0;
        for addr in &addrs {
            let api = self.world.api().at(*addr);
            for Read { path, holds, bound, what } in &reads {
                let mut seen = String::new();
                let mut tries = 0;
                let ok = poll(*bound, || {
                    tries += 1;
                    // The admin's access token lasts minutes, a long run
                    // hours: a refused one is renewed, and the read tried
                    // again.
                    let token = self.world.admin_token.lock().unwrap().clone();
                    let (api, path) = (api.clone(), path.clone());
                    match self
                        .world
                        .office_ns
                        .run_in(move || api.call("GET", &path, token.as_deref(), Value::Null))
                    {
                        Ok(Ok((401, body))) => {
                            seen = format!("401 {body}");
                            self.world.renew_admin_token();
                            false
                        }
                        Ok(Ok((status, body))) => {
                            seen = format!("{status} {body}");
                            holds.by(status, &body)
                        }
                        Ok(Err(e)) => {
                            seen = e.to_string();
                            false
                        }
                        Err(e) => {
                            seen = e.to_string();
                            false
                        }
                    }
                });
                self.stats.acked_checks += 1;
                self.stats.checks += 1;
                if tries > 1 {
                    waited += 1;
                }
                if !ok {
                    return Err(format!(
                        "after {after}: an acknowledged write is not visible through {addr} within {bound:?}: \
                         {what}; the cloud shows {seen}"
                    ));
                }
            }
        }
        self.event(format!(
            "after {after}: all {writes} acknowledged writes visible through {} ({} reads needed more than one try)",
            addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
            waited
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_its_furthest_acknowledged_write_and_an_end_stays() {
        let mut acked = Acked::default();
        acked.session(1, Want::Exists);
        acked.session(1, Want::AtLeast(2));
        acked.session(1, Want::AtLeast(1));
        assert_eq!(acked.sessions[&1], Want::AtLeast(2));
        acked.session(1, Want::Over { state: "ended", via_gateway: true });
        acked.session(1, Want::AtLeast(2));
        assert_eq!(acked.sessions[&1], Want::Over { state: "ended", via_gateway: true });
        // What the cloud itself answered wins over what the gateway said.
        acked.session(1, Want::Over { state: "expired", via_gateway: false });
        acked.session(1, Want::Over { state: "ended", via_gateway: true });
        assert_eq!(acked.sessions[&1], Want::Over { state: "expired", via_gateway: false });
        acked.user(7, true);
        acked.user(7, false);
        assert!(!acked.users[&7]);
    }

    #[test]
    fn the_token_list_must_name_every_acknowledged_token() {
        let holds = Holds::Tokens(vec!["a".into(), "b".into()]);
        let listed = serde_json::json!([{"name": "b"}, {"name": "x"}, {"name": "a"}]);
        assert!(holds.by(200, &listed));
        assert!(!holds.by(200, &serde_json::json!([{"name": "a"}])), "b is missing");
        assert!(!holds.by(503, &listed), "not an answer");
        let session = Holds::Session(Want::AtLeast(2));
        assert!(session.by(200, &serde_json::json!({"state": "expired"})));
        assert!(!session.by(200, &serde_json::json!({"state": "waiting_for_approval"})));
        assert!(!Holds::Session(Want::Exists).by(404, &Value::Null));
    }

    #[test]
    fn states_rank_in_the_order_a_session_moves() {
        let order = ["prepared", "waiting_for_approval", "active", "ended"];
        let ranks: Vec<u8> = order.iter().filter_map(|s| rank(s)).collect();
        assert_eq!(ranks, vec![0, 1, 2, 3]);
        assert_eq!(rank("expired"), rank("ended"));
        assert_eq!(rank("unknown"), None);
    }
}
