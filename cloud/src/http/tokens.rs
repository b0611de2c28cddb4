//! Scoped API tokens for automation, made by Administrators.

use axum::{Json, extract::State, http::StatusCode};
use ferry_api::{CreatedToken, NewToken};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::{Body, Caller, Path, Validate},
    problem::{ApiError, ApiResult},
};
use crate::{
    auth::{ApiToken, Scope, api_tokens},
    rights::Action,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(revoke))
}

impl Validate for NewToken {
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.chars().count() > 64 {
            return Err("`name` must be 1 to 64 characters".into());
        }
        if self.scopes.is_empty() || self.scopes.len() > 16 {
            return Err("`scopes` must list 1 to 16 scopes".into());
        }
        if self.expires_in_days.is_some_and(|d| !(1..=3650).contains(&d)) {
            return Err("`expires_in_days` must be 1 to 3650".into());
        }
        Ok(())
    }
}

/// All API tokens (without their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = Vec<ApiToken>), (status = 403, body = super::Problem)))]
async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ApiToken>>> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersRead, "token.list", None, None)?;
    Ok(Json(api_tokens::list(&state.store)?))
}

/// Make an API token acting as the caller, limited to its scopes.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken, security(("bearer" = [])),
    responses((status = 201, body = CreatedToken), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersWrite, "token.create", None, None)?;
    if caller.scopes.is_some() {
        state.audit(caller.event("token.create", false, None, None, Some("by an API token".into())));
        return Err(ApiError::forbidden(
            "API tokens are made by a logged-in Administrator, not by another token",
        ));
    }
    let now = state.now_ms();
    let expires = request.expires_in_days.map(|d| now + u64::from(d) * 86_400_000);
    let mut scopes = request.scopes;
    scopes.dedup();
    let event = |token: &ApiToken| {
        let scopes: Vec<&str> = token.scopes.iter().map(|s| s.label()).collect();
        caller.event("token.create", true, None, None, Some(format!("{} ({})", token.name, scopes.join(" "))))
    };
    let (token, secret) =
        api_tokens::create(&state.store, caller.user.id, &request.name, scopes, expires, now, Some(&event))?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 204), (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
async fn revoke(State(state): State<AppState>, caller: Caller, Path(id): Path<u64>) -> ApiResult<StatusCode> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersWrite, "token.revoke", None, None)?;
    let token =
        api_tokens::revoke(&state.store, id)?.ok_or_else(|| ApiError::not_found(format!("no token {id}")))?;
    state.audit(caller.event("token.revoke", true, None, None, Some(token.name)));
    Ok(StatusCode::NO_CONTENT)
}
