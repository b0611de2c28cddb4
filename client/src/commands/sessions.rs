//! `ferry sessions`, `ferry start`, `ferry end`, and finding a session by
//! its number or its name.

use anyhow::{Result, bail};
use clap::Args;
use ferry_api::{SessionView, State};

use super::{block_on, cloud, duration, print_json};
use crate::cloud::{Cloud, now_ms};

/// The sessions you may see, with their state and targets.
///
/// A remoteConnect User sees the sessions released to them; administrators
/// see all. Ended and expired sessions are left out unless --all.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Also the ended and expired sessions.
    #[arg(long)]
    pub all: bool,
    /// JSON (the cloud's session documents) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SessionArgs {
    /// The session: its number or its name, as `ferry sessions` shows them.
    #[arg(value_name = "SESSION")]
    pub session: String,
    /// The session as JSON afterwards, instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// What the cloud's rights and a session's state refuse, said before the
/// cloud is asked (exit status 4, as the cloud's own refusals).
#[derive(Debug, thiserror::Error)]
pub enum SessionRefused {
    #[error(
        "no session {0:?} that you may see: it is not released to you, or there is none \
         (`ferry sessions --all` lists yours)"
    )]
    NotVisible(String),
    #[error("session {id} is not started: `ferry start {id}` first")]
    NotStarted { id: u64 },
    #[error("session {id} is {state}{why}: it cannot be connected to any more; ask for a new session")]
    Over { id: u64, state: &'static str, why: String },
    #[error("session {id} is {state}, not active")]
    NotActive { id: u64, state: &'static str },
}

impl SessionRefused {
    /// Refused unless `session` is active.
    pub fn unless_active(session: &SessionView) -> Result<(), SessionRefused> {
        let (id, state) = (session.id, session.state.label());
        match session.state {
            State::Active => Ok(()),
            State::Prepared => Err(SessionRefused::NotStarted { id }),
            State::Ended | State::Expired => {
                let why =
                    session.end_reason.as_ref().map(|r| format!(" ({})", r.describe())).unwrap_or_default();
                Err(SessionRefused::Over { id, state, why })
            }
            State::WaitingForApproval => Err(SessionRefused::NotActive { id, state }),
        }
    }
}

/// The session SESSION names: a number is an id first, then a name; a name
/// that several sessions share is refused with their numbers.
pub fn pick(sessions: Vec<SessionView>, wanted: &str) -> Result<SessionView> {
    let wanted = wanted.trim();
    if let Ok(id) = wanted.parse::<u64>()
        && let Some(found) = sessions.iter().find(|s| s.id == id)
    {
        return Ok(found.clone());
    }
    let mut named: Vec<SessionView> = sessions.into_iter().filter(|s| s.name == wanted).collect();
    match named.len() {
        0 => Err(SessionRefused::NotVisible(wanted.to_string()).into()),
        1 => Ok(named.remove(0)),
        _ => {
            let ids: Vec<String> = named.iter().map(|s| s.id.to_string()).collect();
            bail!("several sessions are named {wanted:?} ({}): name one by its number", ids.join(", "))
        }
    }
}

pub async fn find(cloud: &mut Cloud, wanted: &str) -> Result<SessionView> {
    let sessions: Vec<SessionView> = cloud.get("/api/v1/sessions").await?;
    pick(sessions, wanted)
}

fn time_left(session: &SessionView) -> String {
    match (session.state, session.expires_ms) {
        (State::Active | State::WaitingForApproval, Some(at)) => {
            duration(std::time::Duration::from_millis(at.saturating_sub(now_ms())))
        }
        _ => "-".into(),
    }
}

pub fn list(args: ListArgs) -> Result<()> {
    let mut cloud = cloud()?;
    let mut sessions: Vec<SessionView> = block_on(async { Ok(cloud.get("/api/v1/sessions").await?) })?;
    if !args.all {
        sessions.retain(|s| !matches!(s.state, State::Ended | State::Expired));
    }
    if args.json {
        return print_json(&sessions);
    }
    if sessions.is_empty() {
        println!("No sessions{}.", if args.all { "" } else { " (--all shows ended ones)" });
        return Ok(());
    }
    let name_width = sessions.iter().map(|s| s.name.chars().count()).max().unwrap_or(4).max(4);
    println!("{:>6}  {:<name_width$}  {:<20}  {:>11}  TARGETS", "ID", "NAME", "STATE", "TIME LEFT");
    for s in &sessions {
        println!(
            "{:>6}  {:<name_width$}  {:<20}  {:>11}  {}",
            s.id,
            s.name,
            s.state.label(),
            time_left(s),
            s.targets.join(", ")
        );
    }
    Ok(())
}

fn describe(session: &SessionView) -> String {
    let mut text = format!("Session {} {:?} is {}", session.id, session.name, session.state.label());
    match session.state {
        State::Active => {
            text += &format!(" ({} left). Connect with: ferry connect {}", time_left(session), session.id)
        }
        State::WaitingForApproval => text += ": the customer must approve it at the gateway",
        State::Ended | State::Expired => {
            if let Some(reason) = &session.end_reason {
                text += &format!(" ({})", reason.describe());
            }
        }
        State::Prepared => {}
    }
    text + "."
}

fn act(args: SessionArgs, action: &str) -> Result<()> {
    let mut cloud = cloud()?;
    let session = block_on(async {
        let session = find(&mut cloud, &args.session).await?;
        let path = format!("/api/v1/sessions/{}/{action}", session.id);
        Ok(cloud.post::<SessionView>(&path, None::<&()>).await?)
    })?;
    if args.json {
        return print_json(&session);
    }
    println!("{}", describe(&session));
    Ok(())
}

pub fn start(args: SessionArgs) -> Result<()> {
    act(args, "start")
}

pub fn end(args: SessionArgs) -> Result<()> {
    act(args, "end")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, name: &str) -> SessionView {
        // As the cloud lists it.
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "gateway_id": 1, "targets": ["plc-web"], "released_to": [3],
            "max_duration_s": 600, "approval_required": false, "created_by": "admin", "created_ms": 1,
            "state": "prepared", "started_by": null, "started_ms": null, "expires_ms": null,
            "ended_ms": null, "end_reason": null, "subnet_index": null, "configs": [],
        }))
        .unwrap()
    }

    #[test]
    fn sessions_by_number_or_name() {
        let all = || vec![session(4, "press"), session(7, "12"), session(12, "oven"), session(13, "oven")];
        assert_eq!(pick(all(), "4").unwrap().id, 4);
        assert_eq!(pick(all(), "press").unwrap().id, 4);
        // A number is an id first.
        assert_eq!(pick(all(), "12").unwrap().id, 12);
        let err = pick(all(), "oven").unwrap_err().to_string();
        assert!(err.contains("12, 13"), "{err}");
        let err = pick(all(), "mill").unwrap_err();
        assert!(matches!(err.downcast_ref(), Some(SessionRefused::NotVisible(_))), "{err}");

        let mut over = session(4, "press");
        over.state = State::Ended;
        over.end_reason = Some(ferry_api::EndReason::Customer { session_only: false });
        let err = SessionRefused::unless_active(&over).unwrap_err().to_string();
        assert!(err.contains("session 4 is ended (ended by the customer (switch off))"), "{err}");
        assert!(
            SessionRefused::unless_active(&session(4, "p"))
                .unwrap_err()
                .to_string()
                .contains("ferry start 4")
        );
    }
}
