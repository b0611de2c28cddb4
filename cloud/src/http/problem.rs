//! Errors as RFC 9457 problem documents. Every refusal names its problem in
//! `title` and explains it in `detail`; `type` is a stable identifier that
//! clients can match on.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
/// The body of every error response (in ferry-api: clients read it).
pub use ferry_api::Problem;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError { status, slug, title, detail: detail.into(), retry_after_s: None }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Not authenticated", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", what)
    }

    pub fn conflict(slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, title, detail)
    }

    pub fn too_many(
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
        retry_after_ms: u64,
    ) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_ms.div_ceil(1000).max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, slug, title, detail)
        }
    }

    /// The database cannot be reached now (it is down or restarting):
    /// nothing was done, or it is unknown whether it was. Try again shortly.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "storage unavailable");
        ApiError {
            retry_after_s: Some(2),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Storage unavailable",
                "the cloud cannot reach its database right now; nothing was changed unless a later read \
                 shows it. Try again in a few seconds",
            )
        }
    }

    /// A server-side failure: logged in full, answered without internals.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed; see its log",
        )
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:ferry:problem:{}", self.slug),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            retry_after: self.retry_after_s,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = crate::store::to_json(&self.problem());
        let mut response =
            (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Storage and other library errors are internal unless mapped explicitly.
macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ApiError::internal(e)
            }
        }
    )*};
}

internal_from!(tokio::task::JoinError);

impl From<crate::store::BackendError> for ApiError {
    fn from(e: crate::store::BackendError) -> Self {
        match e {
            crate::store::BackendError::Unavailable(_) => ApiError::unavailable(e),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Backend(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(e: crate::audit::AuditError) -> Self {
        match e {
            crate::audit::AuditError::Store(e) => e.into(),
            // Contention that outlasted the retries: try again later.
            crate::audit::AuditError::Contended => {
                crate::store::BackendError::Unavailable(crate::audit::AuditError::Contended.to_string())
                    .into()
            }
            other => ApiError::internal(other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::users::UserError> for ApiError {
    fn from(e: crate::users::UserError) -> Self {
        use crate::users::UserError::*;
        match e {
            BadName | Password(crate::password::PasswordError::Length) => {
                ApiError::bad_request(e.to_string())
            }
            Exists(_) => ApiError::conflict("name-taken", "Name taken", e.to_string()),
            Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::sessions::SessionError> for ApiError {
    fn from(e: crate::sessions::SessionError) -> Self {
        use crate::sessions::{Refusal, SessionError};
        match e {
            SessionError::Refused(r) => {
                let (slug, title) = match r {
                    Refusal::GatewayOffline => ("gateway-offline", "Gateway offline"),
                    Refusal::SwitchOff => ("switch-off", "Remote maintenance switched off"),
                    Refusal::AlreadyRunning(_) => ("session-running", "Session already running"),
                    Refusal::NotRunning => ("session-not-running", "Session not running"),
                    Refusal::NotWaiting => ("session-not-waiting", "Session not waiting for approval"),
                    Refusal::NoTargets => ("session-without-targets", "Session has no targets"),
                };
                ApiError::conflict(slug, title, r.to_string())
            }
            SessionError::PoolExhausted => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "pool-exhausted",
                "No tunnel subnet free",
                e.to_string(),
            ),
            SessionError::Store(e) => e.into(),
            SessionError::NoLongerReleased(_) => ApiError::forbidden(e.to_string()),
            // As a request with the credential would be refused now.
            SessionError::ActorChanged(_) => ApiError::unauthorized(e.to_string()),
            // The credential still holds; the rights are checked again on
            // the next request.
            SessionError::ActorRoleChanged(_) => ApiError::forbidden(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::ApiError;
    use crate::{audit::AuditError, store::BackendError};

    #[test]
    fn contention_that_outlasts_the_retries_is_a_503_not_a_500() {
        assert_eq!(ApiError::from(AuditError::Contended).status, StatusCode::SERVICE_UNAVAILABLE);
        let gave_up = BackendError::Unavailable("a session record is changed too often; gave up".into());
        assert_eq!(ApiError::from(gave_up).status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ApiError::from(BackendError::Io("disk".into())).status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
