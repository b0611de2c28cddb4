//! The audit log over HTTP: query it page by page, export it as JSON Lines,
//! and check its hash chain. For Administrators and remoteConnect
//! Administrators, or API tokens with `audit:read`.

use std::{
    collections::HashSet,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::Response,
};
use hyper::body::Frame;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::Caller,
    problem::{ApiError, ApiResult},
};
use crate::{
    audit::{self, AuditError, Entry},
    auth::Scope,
    rights::Action,
    store::Store,
};

/// The page size when `limit` is not given, and the largest allowed.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Entries per chunk of an export.
const EXPORT_PAGE: usize = 1000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(export)).routes(routes!(verify))
}

/// Where a page starts and how long it is.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// The `next` cursor of the previous page.
    pub after: Option<u64>,
    /// Entries per page, 1 to 1000.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Matching entries, oldest first.
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; null when the log is exhausted. A
    /// page can be short or even empty and still have a cursor: one request
    /// reads a bounded part of the log.
    pub next: Option<u64>,
}

/// The chain check's result: intact, or the first broken entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub intact: bool,
    /// How many entries were checked (when intact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// The last entry removed by retention; the chain is checked from there.
    pub anchor_seq: Option<u64>,
    /// The first entry that fails (when not intact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn invalid(name: &str, problem: &str) -> ApiError {
    ApiError::bad_request(format!("query parameter `{name}` {problem}"))
}

/// Reads the filters, and with `paged` the cursor and page size, naming the
/// parameter at fault. Done by hand because serde's messages for query
/// strings do not say which parameter failed.
fn parse(pairs: Pairs, paged: bool) -> Result<(audit::Query, Page), ApiError> {
    let Query(pairs) = pairs.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut query = audit::Query::default();
    let mut page = Page { after: None, limit: None };
    let mut seen = HashSet::new();
    // The document's integers are int64: beyond i64::MAX is out of range,
    // as a generated client would assume.
    let number = |name: &str, value: &str| -> Result<u64, ApiError> {
        value
            .parse::<u64>()
            .ok()
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or_else(|| invalid(name, "must be a whole number from 0 to 9223372036854775807"))
    };
    let text = |name: &str, value: String| -> Result<Option<String>, ApiError> {
        if !(1..=256).contains(&value.chars().count()) {
            return Err(invalid(name, "must be 1 to 256 characters"));
        }
        Ok(Some(value))
    };
    for (name, value) in pairs {
        if !seen.insert(name.clone()) {
            return Err(invalid(&name, "is given more than once"));
        }
        match name.as_str() {
            "from_ms" => query.from_ms = Some(number(&name, &value)?),
            "to_ms" => query.to_ms = Some(number(&name, &value)?),
            "actor" => query.actor = text(&name, value)?,
            "session" => query.session = text(&name, value)?,
            "gateway" => query.gateway = text(&name, value)?,
            "action" => query.action = text(&name, value)?,
            "allowed" => {
                query.allowed = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid(&name, "must be `true` or `false`")),
                })
            }
            "after" if paged => page.after = Some(number(&name, &value)?),
            "limit" if paged => {
                let limit = number(&name, &value)?;
                if !(1..=MAX_LIMIT as u64).contains(&limit) {
                    return Err(invalid(&name, &format!("must be 1 to {MAX_LIMIT}")));
                }
                page.limit = Some(limit as usize);
            }
            other => {
                let known = if paged {
                    "from_ms, to_ms, actor, session, gateway, action, allowed, after, limit"
                } else {
                    "from_ms, to_ms, actor, session, gateway, action, allowed"
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`; known: {known}"
                )));
            }
        }
    }
    if let (Some(from), Some(to)) = (query.from_ms, query.to_ms)
        && to <= from
    {
        return Err(invalid("to_ms", "must be after `from_ms` (it is exclusive)"));
    }
    Ok((query, page))
}

/// Audit entries matching the filters, oldest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])),
    params(audit::Query, Page),
    responses((status = 200, body = AuditPage), (status = 400, body = super::Problem),
        (status = 401, body = super::Problem), (status = 403, body = super::Problem)))]
async fn list(State(state): State<AppState>, caller: Caller, pairs: Pairs) -> ApiResult<Json<AuditPage>> {
    caller.authorize(&state, Action::ReadAudit, Scope::AuditRead, "audit.read", None, None)?;
    let (query, page) = parse(pairs, true)?;
    let store = state.store.clone();
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    let (entries, next) =
        tokio::task::spawn_blocking(move || audit::query(&store, &query, page.after, limit)).await??;
    Ok(Json(AuditPage { entries, next }))
}

/// The matching entries as JSON Lines, oldest first: one entry per line,
/// exactly as stored, so that each line's hash can be checked again. The
/// export ends with the newest entry there when it began; it is itself
/// audited (`audit.export`). If reading fails midway the response is cut off
/// without its proper end, so a partial file cannot pass for a whole one.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", security(("bearer" = [])),
    params(audit::Query),
    responses(
        (status = 200, content_type = "application/jsonl", body = String,
            description = "One audit entry as JSON per line"),
        (status = 400, body = super::Problem), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem)))]
async fn export(State(state): State<AppState>, caller: Caller, pairs: Pairs) -> ApiResult<Response> {
    caller.authorize(&state, Action::ReadAudit, Scope::AuditRead, "audit.export", None, None)?;
    let (query, _) = parse(pairs, false)?;
    let filters = String::from_utf8_lossy(&crate::store::to_json(&query)).into_owned();
    state.audit(caller.event("audit.export", true, None, None, Some(format!("filters {filters}"))));
    let store = state.store.clone();
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || produce(&store, &query, &tx));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/jsonl")
        .header(header::CONTENT_DISPOSITION, "attachment; filename=\"ferry-audit.jsonl\"")
        .body(Body::new(Chunks(rx)))
        .map_err(ApiError::internal)
}

/// Pages through the log into `tx` until the head as it was at the start;
/// stops early when the client goes away.
fn produce(store: &Store, query: &audit::Query, tx: &mpsc::Sender<Result<Bytes, AuditError>>) {
    let send = |chunk| tx.blocking_send(chunk).is_ok();
    let head = match audit::head_seq(store) {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(e) => {
            send(Err(e));
            return;
        }
    };
    let mut after = None;
    loop {
        let (entries, next) = match audit::query(store, query, after, EXPORT_PAGE) {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "the audit export failed");
                send(Err(e));
                return;
            }
        };
        let mut chunk = Vec::new();
        for entry in entries.iter().filter(|e| e.seq <= head) {
            chunk.extend_from_slice(&crate::store::to_json(entry));
            chunk.push(b'\n');
        }
        if !chunk.is_empty() && !send(Ok(Bytes::from(chunk))) {
            return;
        }
        match next {
            Some(next) if next < head => after = Some(next),
            _ => return,
        }
    }
}

/// A response body fed by [`produce`] through a bounded channel, so a slow
/// client holds back the reading rather than the server buffering the log.
struct Chunks(mpsc::Receiver<Result<Bytes, AuditError>>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = AuditError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AuditError>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| c.map(Frame::data)))
    }
}

/// Checks the hash chain from the retention anchor to the newest entry. A
/// report either way (200): `intact` with the count, or the first broken
/// entry and why.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = VerifyReport), (status = 401, body = super::Problem),
        (status = 403, body = super::Problem)))]
async fn verify(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<VerifyReport>> {
    caller.authorize(&state, Action::ReadAudit, Scope::AuditRead, "audit.verify", None, None)?;
    let store = state.store.clone();
    let outcome = tokio::task::spawn_blocking(move || audit::verify(&store)).await??;
    let (report, summary) = match outcome {
        Ok(intact) => (
            VerifyReport {
                intact: true,
                entries: Some(intact.entries),
                anchor_seq: intact.anchor_seq,
                broken_seq: None,
                reason: None,
            },
            format!("intact: {} entries", intact.entries),
        ),
        Err(broken) => {
            let summary = format!("broken at {}: {}", broken.seq, broken.reason);
            tracing::warn!(seq = broken.seq, reason = %broken.reason, "the audit chain is broken");
            (
                VerifyReport {
                    intact: false,
                    entries: None,
                    anchor_seq: audit::anchor(&state.store).ok().flatten().map(|a| a.seq),
                    broken_seq: Some(broken.seq),
                    reason: Some(broken.reason),
                },
                summary,
            )
        }
    };
    state.audit(caller.event("audit.verify", true, None, None, Some(summary)));
    Ok(Json(report))
}
