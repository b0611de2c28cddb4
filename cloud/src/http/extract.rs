//! Request extractors: validated JSON bodies and the authenticated caller.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{AppState, problem::ApiError};
use crate::{
    audit::Event,
    auth::{Scope, access::AccessError, api_tokens},
    rights::{self, Action},
    users::{self, User},
};

/// Inputs that can be checked beyond their JSON shape.
pub trait Validate {
    fn validate(&self) -> Result<(), String>;
}

/// A JSON body that parsed and validated. Rejections are problem documents
/// that name the field and the problem.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + Validate, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => {
                value.validate().map_err(ApiError::bad_request)?;
                Ok(Body(value))
            }
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    use axum::http::StatusCode;
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid body", e.body_text())
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("request bodies are limited to {} bytes", super::BODY_LIMIT),
        ),
        other => ApiError::bad_request(other.body_text()),
    }
}

/// Query parameters; a bad one is a problem document that names it.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Params(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The client's address, from the connection (proxies' headers are not
/// trusted: they are the client's to forge).
pub fn source(parts: &Parts) -> Option<String> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip().to_string())
}

/// Where a request came from, for the audit log; never refuses.
pub struct Source(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(source(parts)))
    }
}

/// An authenticated user: by a five-minute access token, or by an API token
/// limited to `scopes`. The user record is read fresh on every request, so
/// disabling a user or changing a role takes effect at once.
pub struct Caller {
    pub user: User,
    /// None for a login's access token (all the role's rights).
    pub scopes: Option<Vec<Scope>>,
    pub source: Option<String>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let source = source(parts);
        let refuse = |detail: &str| {
            state.audit(Event {
                actor: "anonymous".into(),
                action: "auth.token".into(),
                allowed: false,
                source: source.clone(),
                session: None,
                gateway: None,
                detail: Some(detail.to_string()),
            });
            ApiError::unauthorized(detail.to_string())
        };
        let Some(header) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "send `Authorization: Bearer <token>`; log in at /api/v1/auth/login",
            ));
        };
        let Some(bearer) = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(refuse("the Authorization header is not `Bearer <token>`"));
        };
        let now = state.now_ms();
        let (user_id, scopes, epoch) = if api_tokens::is_api_token(bearer) {
            match api_tokens::authenticate(&state.store, bearer, now) {
                Ok(token) => (token.user_id, Some(token.scopes), None),
                Err(api_tokens::ApiTokenError::Store(e)) => return Err(ApiError::internal(e)),
                Err(e) => return Err(refuse(&e.to_string())),
            }
        } else {
            match state.access.verify(bearer, now) {
                Ok((id, claims)) => (id, None, Some(claims.epoch)),
                Err(e @ (AccessError::Expired | AccessError::Invalid)) => return Err(refuse(&e.to_string())),
            }
        };
        let user = users::get(&state.store, user_id)?;
        match user {
            Some(user) if user.disabled => Err(refuse(&format!("user {} is disabled", user.name))),
            Some(user) if epoch.is_some_and(|e| e != user.token_epoch) => {
                Err(refuse("the access token was revoked; log in again"))
            }
            Some(user)
                if user.must_change_password
                    && !matches!(parts.uri.path(), "/api/v1/me" | "/api/v1/me/password") =>
            {
                Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "password-change-required",
                    "Password change required",
                    "this account has a one-time password: set your own at /api/v1/me/password first",
                ))
            }
            Some(user) => Ok(Caller { user, scopes, source }),
            None => Err(refuse("the token's user no longer exists")),
        }
    }
}

impl Caller {
    /// Whether the caller's role and token allow `action` (no audit).
    pub fn may(&self, action: Action, scope: Scope) -> bool {
        rights::allowed(self.user.role, action) && self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }

    /// Checks the rights table and the token's scopes. A refusal is
    /// audited as `what`, with the reason, and answered 403.
    pub fn authorize(
        &self,
        state: &AppState,
        action: Action,
        scope: Scope,
        what: &str,
        session: Option<u64>,
        gateway: Option<u64>,
    ) -> Result<(), ApiError> {
        let reason = if !rights::allowed(self.user.role, action) {
            format!("a {} may not {}", self.user.role.label(), action.label())
        } else if self.scopes.as_ref().is_some_and(|s| !s.contains(&scope)) {
            format!("this API token lacks the scope {}", scope.label())
        } else {
            return Ok(());
        };
        state.audit(self.event(what, false, session, gateway, Some(reason.clone())));
        Err(ApiError::forbidden(reason))
    }

    /// An audit event by this caller.
    pub fn event(
        &self,
        what: &str,
        allowed: bool,
        session: Option<u64>,
        gateway: Option<u64>,
        detail: Option<String>,
    ) -> Event {
        Event {
            actor: self.user.name.clone(),
            action: what.to_string(),
            allowed,
            source: self.source.clone(),
            session: session.map(|s| s.to_string()),
            gateway: gateway.map(|g| g.to_string()),
            detail,
        }
    }
}
