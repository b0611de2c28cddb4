//! Sessions as a client sees them: their state, and why one ended.

use serde::{Deserialize, Serialize};

// No doc comment: it would become a description in the cloud's OpenAPI
// document, which predates this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
    Prepared,
    WaitingForApproval,
    Active,
    Ended,
    Expired,
}

impl State {
    /// Waiting for the customer's approval or active: it holds a tunnel
    /// subnet and its gateway knows it.
    pub fn is_live(self) -> bool {
        matches!(self, State::WaitingForApproval | State::Active)
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Prepared => "prepared",
            State::WaitingForApproval => "waiting for approval",
            State::Active => "active",
            State::Ended => "ended",
            State::Expired => "expired",
        }
    }
}

// Why a session ended; `by` names the kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum EndReason {
    /// An admin or the technician ended it.
    User { name: String },
    /// The customer switched remote maintenance off at the gateway.
    Customer,
    /// The customer refused the approval.
    Denied,
    /// The user who started it was disabled.
    UserDisabled { name: String },
    /// Nobody approved it in time.
    ApprovalTimeout,
    /// The maximum duration ran out.
    Duration,
}

impl EndReason {
    /// In words, for people: the audit log's detail and `ferry status`.
    pub fn describe(&self) -> String {
        match self {
            EndReason::User { name } => format!("ended by {name}"),
            EndReason::Customer => "ended by the customer (switch off)".into(),
            EndReason::Denied => "approval denied by the customer".into(),
            EndReason::UserDisabled { name } => format!("user {name} was disabled"),
            EndReason::ApprovalTimeout => "no approval in time".into(),
            EndReason::Duration => "maximum duration reached".into(),
        }
    }
}

/// A session as `GET /api/v1/sessions` lists it, with the fields a client
/// needs. The cloud's `Session` document has the same JSON plus fields for
/// admins (issued configurations, the tunnel subnet); unknown fields are
/// ignored here, so the client keeps reading newer clouds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: u64,
    pub name: String,
    pub gateway_id: u64,
    /// Names of the gateway's targets that the session reaches.
    pub targets: Vec<String>,
    /// Users (ids) the session is released to.
    pub released_to: Vec<u64>,
    pub max_duration_s: u64,
    /// Whether the customer must approve each start at the gateway.
    pub approval_required: bool,
    pub created_by: String,
    pub created_ms: u64,
    pub state: State,
    pub started_by: Option<String>,
    pub started_ms: Option<u64>,
    /// When an active session expires, or a waiting one gives up.
    pub expires_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub end_reason: Option<EndReason>,
    /// Bytes the gateway reported for this session, both directions.
    #[serde(default)]
    pub bytes_rx: u64,
    #[serde(default)]
    pub bytes_tx: u64,
}
