//! User accounts: Administrators add users and assign roles; disabling a
//! user stops their tokens at once and ends their sessions.

use axum::{Json, extract::State, http::StatusCode};
pub use ferry_api::UserView;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::{Body, Caller, Path, Validate},
    problem::{ApiError, ApiResult},
};
use crate::{
    auth::{Scope, api_tokens, console, refresh},
    password,
    rights::{Action, Role},
    users::{self, User},
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, update))
        .routes(routes!(reset_password))
        .routes(routes!(releasable))
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id,
            name: u.name.clone(),
            role: u.role,
            disabled: u.disabled,
            created_ms: u.created_ms,
            totp_enabled: u.totp.as_ref().is_some_and(|t| t.confirmed),
            locked_until_ms: u.locked_until_ms,
            must_change_password: u.must_change_password,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 64 characters: letters, digits and `. _ - @`.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$", min_length = 1, max_length = 64)]
    pub name: String,
    pub role: Role,
    /// If omitted, a one-time password is made and returned once; it must
    /// be changed at first use. 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: Option<String>,
}

impl Validate for NewUser {
    fn validate(&self) -> Result<(), String> {
        if !users::valid_name(&self.name) {
            return Err("`name` must be 1 to 64 characters of letters, digits and . _ - @".into());
        }
        if let Some(p) = &self.password {
            let len = p.chars().count();
            if !(password::MIN_LEN..=password::MAX_LEN).contains(&len) {
                return Err(format!(
                    "`password` must be {} to {} characters",
                    password::MIN_LEN,
                    password::MAX_LEN
                ));
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedUser {
    pub user: UserView,
    /// Only when no password was given: shown this once.
    pub one_time_password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    pub role: Option<Role>,
    /// Disabling revokes every token of the user and ends their sessions.
    pub disabled: Option<bool>,
    /// Lifts a login lockout.
    pub unlock: Option<bool>,
}

impl Validate for UserChange {
    fn validate(&self) -> Result<(), String> {
        if self.role.is_none() && self.disabled.is_none() && self.unlock.is_none() {
            return Err("give at least one of `role`, `disabled`, `unlock`".into());
        }
        Ok(())
    }
}

/// All users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserView>), (status = 403, body = super::Problem)))]
async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<UserView>>> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersRead, "user.list", None, None)?;
    Ok(Json(users::list(&state.store)?.iter().map(UserView::from).collect()))
}

/// Add a user with a role.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser, security(("bearer" = [])),
    responses((status = 201, body = CreatedUser), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem), (status = 409, body = super::Problem)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersWrite, "user.create", None, None)?;
    let detail = format!("{} as {:?}", request.name, request.role);
    let event = caller.event("user.create", true, None, None, Some(detail));
    let (user, one_time) =
        create_user(&state, &request.name, request.role, request.password, Some(event)).await?;
    Ok((StatusCode::CREATED, Json(CreatedUser { user: UserView::from(&user), one_time_password: one_time })))
}

/// Creates a user; without a password, with a one-time one that must be
/// changed at first use (returned).
pub async fn create_user(
    state: &AppState,
    name: &str,
    role: Role,
    password: Option<String>,
    audit: Option<crate::audit::Event>,
) -> ApiResult<(User, Option<String>)> {
    let (secret, one_time) = match password {
        Some(password) => (password, None),
        None => {
            let one_time = password::one_time();
            (one_time.clone(), Some(one_time))
        }
    };
    let (store, name_owned, now) = (state.store.clone(), name.to_string(), state.now_ms());
    let must_change = one_time.is_some();
    let user = tokio::task::spawn_blocking(move || {
        users::create_with(&store, &name_owned, role, &secret, now, must_change, audit)
    })
    .await??;
    Ok((user, one_time))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, body = UserView), (status = 403, body = super::Problem), (status = 404, body = super::Problem)))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<Json<UserView>> {
    if id != caller.user.id {
        caller.authorize(&state, Action::ManageUsers, Scope::UsersRead, "user.get", None, None)?;
    }
    let user = users::get(&state.store, id)?.ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    Ok(Json(UserView::from(&user)))
}

/// Change a user's role, disable or enable them, or lift a lockout.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = UserChange,
    security(("bearer" = [])), params(("id" = u64, Path)),
    responses((status = 200, body = UserView), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
    Body(change): Body<UserChange>,
) -> ApiResult<Json<UserView>> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersWrite, "user.update", None, None)?;
    if id == caller.user.id
        && (change.disabled == Some(true) || change.role.is_some_and(|r| r != caller.user.role))
    {
        return Err(ApiError::conflict(
            "self-lockout",
            "Cannot change own access",
            "an Administrator cannot disable themselves or change their own role; ask another Administrator",
        ));
    }
    let mut disabled_now = false;
    let detail = |u: &User| {
        let disabled = change.disabled.map_or("-".into(), |d| d.to_string());
        let unlock = change.unlock.unwrap_or(false);
        format!("{}: role {:?}, disabled {disabled}, unlock {unlock}", u.name, change.role)
    };
    // Audited in the same commit as the change; a change that changes
    // nothing is recorded on its own.
    let recorded = std::cell::Cell::new(false);
    let change_user = |u: &mut User| {
        if let Some(role) = change.role {
            u.role = role;
        }
        if let Some(disabled) = change.disabled {
            disabled_now = disabled && !u.disabled;
            if disabled_now {
                u.token_epoch += 1;
            }
            u.disabled = disabled;
        }
        if change.unlock == Some(true) {
            u.locked_until_ms = None;
            u.failed_logins = 0;
            u.last_failed_ms = None;
        }
        Ok::<_, ApiError>(())
    };
    let (user, _) = users::modify_audited(&state.store, id, state.now_ms(), change_user, |u, _| {
        recorded.set(true);
        Some(caller.event("user.update", true, None, None, Some(detail(u))))
    })?
    .ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    if !recorded.get() {
        state.audit(caller.event("user.update", true, None, None, Some(detail(&user))));
    }
    // Also when the user was disabled already: a disabling whose ends
    // failed part-way is finished by asking again.
    if disabled_now || (change.disabled == Some(true) && user.disabled) {
        refresh::revoke_user(&state.store, id)?;
        api_tokens::revoke_user(&state.store, id)?;
        console::end_user(&state.store, id)?;
        state.user_disabled(&user, &caller.actor()).map_err(ApiError::from)?;
    }
    Ok(Json(UserView::from(&user)))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PasswordReset {
    pub user: UserView,
    /// The new one-time password, shown this once; the user must change it
    /// at first use.
    pub one_time_password: String,
}

/// Reset a user's password to a new one-time password (returned once). The
/// user's logins end: access and refresh tokens and console sessions stop
/// working, and the next login must set a new password.
#[utoipa::path(post, path = "/api/v1/users/{id}/password", tag = "users", security(("bearer" = [])),
    params(("id" = u64, Path)),
    responses((status = 200, body = PasswordReset), (status = 403, body = super::Problem),
        (status = 404, body = super::Problem), (status = 409, body = super::Problem)))]
async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<Json<PasswordReset>> {
    caller.authorize(&state, Action::ManageUsers, Scope::UsersWrite, "user.password_reset", None, None)?;
    if id == caller.user.id {
        return Err(ApiError::conflict(
            "own-password",
            "Use your own password change",
            "change your own password with POST /api/v1/me/password",
        ));
    }
    let one_time = password::one_time();
    let secret = one_time.clone();
    let hash =
        tokio::task::spawn_blocking(move || password::hash(&secret)).await?.map_err(ApiError::internal)?;
    let (user, ()) = users::modify_audited(
        &state.store,
        id,
        state.now_ms(),
        |u| {
            u.password_hash = hash.clone();
            u.must_change_password = true;
            u.token_epoch += 1;
            Ok::<_, ApiError>(())
        },
        |u, _| Some(caller.event("user.password_reset", true, None, None, Some(u.name.clone()))),
    )?
    .ok_or_else(|| ApiError::not_found(format!("no user {id}")))?;
    refresh::revoke_user(&state.store, id)?;
    console::end_user(&state.store, id)?;
    Ok(Json(PasswordReset { user: UserView::from(&user), one_time_password: one_time }))
}

/// A user a session can be released to.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserRef {
    pub id: u64,
    pub name: String,
    pub role: Role,
}

/// The enabled users, by id and name, for whoever prepares sessions and
/// releases them (remoteConnect Administrators may not list accounts).
#[utoipa::path(get, path = "/api/v1/users/releasable", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<UserRef>), (status = 403, body = super::Problem)))]
async fn releasable(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<UserRef>>> {
    caller.authorize(&state, Action::CreateSession, Scope::SessionsWrite, "user.releasable", None, None)?;
    let users = users::list(&state.store)?;
    Ok(Json(
        users
            .into_iter()
            .filter(|u| !u.disabled)
            .map(|u| UserRef { id: u.id, name: u.name, role: u.role })
            .collect(),
    ))
}
