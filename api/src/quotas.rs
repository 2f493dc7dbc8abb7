//! Quotas: `PUT|GET|DELETE /v1/workspaces/{ws}/quotas/{email}` (admins of the workspace). The
//! rules are in `domain::cost` (`Quota::parse`, `decide_enforcement`) and `commands::quota`; this
//! parses, authorizes, calls one command or reads the quota, and renders.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use domain::Email;
use domain::cost::Quota;
use projections::views::quotas::{self, QuotaView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection, position_header};
use crate::json::ApiJson;
use crate::usage::{QuotaBody, quota_body, quota_of, require_workspace_admin};
use crate::{ApiError, AppState};

/// Body of `PUT /v1/workspaces/{ws}/quotas/{email}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    /// US dollars per billing period, at most six decimals: a number or a string.
    #[schema(value_type = String, example = "250")]
    pub limit_usd: Box<serde_json::value::RawValue>,
    /// `warn` (default) or `block_and_kill`.
    #[serde(default)]
    #[schema(pattern = "^(warn|block_and_kill)$")]
    pub mode: Option<String>,
    /// How far past the limit `block_and_kill` lets projected spend go (0-1000, default 0).
    #[serde(default)]
    #[schema(maximum = 1000)]
    pub buffer_percent: Option<u32>,
}

fn target_email(email: &str) -> Result<Email, ApiError> {
    Email::new(email).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
            format!("{email:?} is not an email address: {e}"),
        )
        .with_field("email")
    })
}

/// The answer to a quota change.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaChanged {
    pub email: String,
    /// The quota now (null after a delete).
    pub quota: Option<QuotaBody>,
    pub position: i64,
}

/// Set a user's quota (admins of the workspace).
#[utoipa::path(put, path = "/v1/workspaces/{ws}/quotas/{email}", tag = "usage",
    params(("ws" = String, Path, description = "Workspace"), ("email" = String, Path, description = "The user")),
    request_body = QuotaRequest,
    responses(
        (status = 200, description = "Set", body = QuotaChanged),
        (status = 403, description = "Not an admin of this workspace", body = crate::error::ErrorBody),
        (status = 422, description = "A bad field (the field says which)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn put_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, email)): Path<(String, String)>,
    ApiJson(req): ApiJson<QuotaRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let workspace = require_workspace_admin(&caller, &ws)?;
    let email = target_email(&email)?;
    let quota = Quota::parse(req.limit_usd.get(), req.mode.as_deref(), req.buffer_percent)?;
    let Quota {
        limit,
        mode,
        buffer_percent,
    } = quota;
    let position = commands::quota::set(
        state.store.log.as_ref(),
        &workspace,
        &email,
        quota,
        &caller.email,
        crate::clusters::metadata(&caller),
    )
    .await?;
    let view = QuotaView {
        workspace,
        email: email.to_string(),
        limit,
        mode,
        buffer_percent,
        set_by: caller.email.to_string(),
        set_at: state.clock.now(),
        enforced_in: None,
        position,
    };
    Ok((
        position_header(position),
        Json(QuotaChanged {
            email: email.to_string(),
            quota: Some(quota_body(&view)),
            position,
        }),
    ))
}

/// A user's quota (admins of the workspace).
#[utoipa::path(get, path = "/v1/workspaces/{ws}/quotas/{email}", tag = "usage",
    params(("ws" = String, Path, description = "Workspace"), ("email" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The quota", body = QuotaBody),
        (status = 403, description = "Not an admin of this workspace", body = crate::error::ErrorBody),
        (status = 404, description = "No quota for this user", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_email`: the path is not an email address", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get_quota(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path((ws, email)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let workspace = require_workspace_admin(&caller, &ws)?;
    let email = target_email(&email)?;
    let headers = await_projection(&state, quotas::NAME, min).await;
    let quota = quota_of(&state, &workspace, email.as_str())
        .await?
        .ok_or_else(|| no_quota(&email))?;
    Ok((headers, Json(quota_body(&quota))))
}

pub(crate) fn no_quota(email: &Email) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "quota_not_found",
        format!("{email} has no quota in this workspace; PUT one to set it"),
    )
    .with_field("email")
}

/// Remove a user's quota (admins of the workspace).
#[utoipa::path(delete, path = "/v1/workspaces/{ws}/quotas/{email}", tag = "usage",
    params(("ws" = String, Path, description = "Workspace"), ("email" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "Removed", body = QuotaChanged),
        (status = 403, description = "Not an admin of this workspace", body = crate::error::ErrorBody),
        (status = 404, description = "No quota for this user", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_email`: the path is not an email address", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn delete_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path((ws, email)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let workspace = require_workspace_admin(&caller, &ws)?;
    let email = target_email(&email)?;
    let position = commands::quota::remove(
        state.store.log.as_ref(),
        &workspace,
        &email,
        &caller.email,
        crate::clusters::metadata(&caller),
    )
    .await?;
    Ok((
        position_header(position),
        Json(QuotaChanged {
            email: email.to_string(),
            quota: None,
            position,
        }),
    ))
}
