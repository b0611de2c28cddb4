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
    /// The customer ended it at the gateway: by switching remote maintenance
    /// off (every session ends), or, with `session_only`, this session alone
    /// on the gateway's local panel or command line. Older records and
    /// clouds have no `session_only`: it reads as false.
    Customer {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        session_only: bool,
    },
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
            EndReason::Customer { session_only: false } => "ended by the customer (switch off)".into(),
            EndReason::Customer { session_only: true } => "ended by the customer at the gateway".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customers_single_end_reads_on_older_clients_and_old_records_read_here() {
        let switch = EndReason::Customer { session_only: false };
        assert_eq!(serde_json::to_value(&switch).unwrap(), serde_json::json!({"by": "customer"}));
        let one = EndReason::Customer { session_only: true };
        let json = serde_json::to_value(&one).unwrap();
        assert_eq!(json, serde_json::json!({"by": "customer", "session_only": true}));
        assert_eq!(serde_json::from_value::<EndReason>(json).unwrap(), one);
        assert_eq!(serde_json::from_str::<EndReason>(r#"{"by":"customer"}"#).unwrap(), switch);
        assert!(one.describe().contains("by the customer") && switch.describe().contains("switch off"));
    }
}
