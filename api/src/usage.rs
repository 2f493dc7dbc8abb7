//! Money: `GET /v1/users/me` (the profile with burn rate, pending bill, quota and status),
//! `GET /v1/users/me/usage` (a series for plotting) and `GET /v1/workspaces/{ws}/usage` (admins:
//! per user). The quota routes are in `quotas.rs`.
//!
//! Figures are computed at read time with `domain::cost` (the rules are there and in docs/cost.md)
//! from the `costs` projection, which keeps each user's running jobs and the jobs that ended in
//! each month: a request reads a few documents of the caller (or of the workspace's users), not
//! every job. A replayed log gives the same figures for the same instant.
//! Amounts are decimal strings of US dollars with six decimals (exact micro-USD).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Duration, Utc};
use domain::cost::{
    CostJob, Period, Pricing, QuotaMode, QuotaStatus, Usage, series, usage, usage_by_user,
};
use domain::{Email, WorkspaceId};
use projections::views::costs;
use projections::views::quotas::{self, QuotaView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projections};
use crate::{ApiError, AppState};

pub(crate) fn pricing(state: &AppState) -> Pricing {
    Pricing {
        catalog: state.scaling.catalog.clone(),
        default_mib_per_cpu: state.scaling.default_mib_per_cpu,
    }
}

pub(crate) async fn quota_of(
    state: &AppState,
    workspace: &WorkspaceId,
    email: &str,
) -> Result<Option<QuotaView>, ApiError> {
    Ok(quotas::get(state.store.read.as_ref(), workspace, email).await?)
}

/// A quota as answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaBody {
    pub email: String,
    #[schema(example = "250.000000")]
    pub limit_usd: String,
    /// `warn` or `block_and_kill`.
    #[schema(example = "block_and_kill")]
    pub mode: String,
    pub buffer_percent: u32,
    /// `limit × (1 + buffer%)`: past it, `block_and_kill` cancels and refuses.
    pub hard_limit_usd: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

pub(crate) fn quota_body(q: &QuotaView) -> QuotaBody {
    QuotaBody {
        email: q.email.clone(),
        limit_usd: q.limit.decimal(),
        mode: mode_name(q.mode).into(),
        buffer_percent: q.buffer_percent,
        hard_limit_usd: q.quota().hard_limit().decimal(),
        set_by: q.set_by.clone(),
        set_at: q.set_at,
    }
}

fn mode_name(m: QuotaMode) -> &'static str {
    match m {
        QuotaMode::Warn => "warn",
        QuotaMode::BlockAndKill => "block_and_kill",
    }
}

pub(crate) fn status_name(s: QuotaStatus) -> &'static str {
    match s {
        QuotaStatus::Ok => "ok",
        QuotaStatus::Warning => "warning",
        QuotaStatus::Blocked => "blocked",
    }
}

/// The billing period.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodBody {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One user's money now.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBody {
    /// What the user's running jobs cost per hour.
    #[schema(example = "0.072500")]
    pub burn_rate_usd_per_hour: String,
    /// Accrued in the billing period so far.
    pub pending_bill_usd: String,
    /// The pending bill plus what the running jobs will cost until their time limits.
    pub projected_spend_usd: String,
    pub running_jobs: u32,
    /// `ok`, `warning` (projected spend at or over the limit) or `blocked`.
    pub status: String,
    pub quota: Option<QuotaBody>,
}

fn usage_body(u: &Usage, quota: Option<&QuotaView>, period: Period) -> UsageBody {
    UsageBody {
        burn_rate_usd_per_hour: u.burn_rate.decimal(),
        pending_bill_usd: u.pending_bill.decimal(),
        projected_spend_usd: u.projected.decimal(),
        running_jobs: u.running_jobs,
        status: status_name(quota.map_or(QuotaStatus::Ok, |q| q.status(u, period))).into(),
        quota: quota.map(quota_body),
    }
}

/// `GET /v1/users/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    pub email: String,
    /// `admin` or `user`.
    pub role: String,
    pub workspace: String,
    pub period: PeriodBody,
    #[serde(flatten)]
    pub usage: UsageBody,
}

/// Your profile: who you are, what your jobs cost, your quota and where you stand.
#[utoipa::path(get, path = "/v1/users/me", tag = "usage",
    params(("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible, e.g. a quota just set")),
    responses(
        (status = 200, description = "Your profile", body = Profile),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn me(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
) -> Result<(HeaderMap, Json<Profile>), ApiError> {
    let headers = await_projections(&state, &[costs::NAME, quotas::NAME], min).await;
    let now = state.clock.now();
    let period = Period::of(state.settings.billing_period, now);
    let u = user_usage(&state, &caller.workspace, &caller.email, period, now).await?;
    let quota = quota_of(&state, &caller.workspace, caller.email.as_str()).await?;
    Ok((
        headers,
        Json(Profile {
            email: caller.email.to_string(),
            role: caller.role.as_str().into(),
            workspace: caller.workspace.to_string(),
            period: PeriodBody {
                start: period.start,
                end: period.end,
            },
            usage: usage_body(&u, quota.as_ref(), period),
        }),
    ))
}

/// A user's money in `period` at `now`, from the jobs projection.
pub(crate) async fn user_usage(
    state: &AppState,
    workspace: &WorkspaceId,
    email: &Email,
    period: Period,
    now: DateTime<Utc>,
) -> Result<Usage, ApiError> {
    let read = state.store.read.as_ref();
    let window = (period.start, now);
    let jobs = costs::priced_jobs(read, workspace, Some(email), window, &pricing(state)).await?;
    Ok(usage(&jobs, period, now))
}

/// Refuses a submission by a user `block_and_kill` has blocked (`commands::quota::check_submit`:
/// the rule is `domain::cost::check_submit`).
pub(crate) async fn refuse_if_blocked(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let now = state.clock.now();
    let period = Period::of(state.settings.billing_period, now);
    commands::quota::check_submit(
        state.store.log.as_ref(),
        &caller.workspace,
        &caller.email,
        period,
        async || user_usage(state, &caller.workspace, &caller.email, period, now).await,
    )
    .await
}

/// Query of `GET /v1/users/me/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
}

/// One bucket of the series.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    pub start: DateTime<Utc>,
    /// Spent within the bucket.
    pub spend_usd: String,
    /// The burn rate at the bucket's end (or now).
    pub burn_rate_usd_per_hour: String,
}

/// `GET /v1/users/me/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `hour` or `day`.
    pub bucket: String,
    pub points: Vec<SeriesPoint>,
}

/// The most buckets one series answers.
pub const MAX_BUCKETS: i64 = 2_000;

/// How far back a series may start, in days (ten years): the spend is read per month from `from`
/// on, so an unbounded `from` would make one request read centuries of empty months.
pub const MAX_HISTORY_DAYS: i64 = 3_660;

pub(crate) fn parse_time(
    text: &Option<String>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.as_deref()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_query",
                        format!("{field} must be an RFC 3339 time such as 2026-11-01T00:00:00Z, not {t:?}"),
                    )
                    .with_field(field)
                })
        })
        .transpose()
}

/// Your spend and burn rate over time, per hour or per day, for plotting.
#[utoipa::path(get, path = "/v1/users/me/usage", tag = "usage",
    params(
        ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339, at most ten years ago; default: the billing period's start"),
        ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339; default: now"),
        ("bucket" = Option<String>, Query, pattern = "^(hour|day)$", description = "`hour` (default) or `day`"),
    ),
    responses(
        (status = 200, description = "The series", body = Series),
        (status = 422, description = "A bad parameter (the field says which)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn my_series(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Series>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("{e}; the parameters are from, to and bucket"),
        )
    })?;
    let now = state.clock.now();
    let from = parse_time(&q.from, "from")?
        .unwrap_or(Period::of(state.settings.billing_period, now).start);
    let to = parse_time(&q.to, "to")?.unwrap_or(now);
    let (bucket_name, bucket) = match q.bucket.as_deref().unwrap_or("hour") {
        "hour" => ("hour", Duration::hours(1)),
        "day" => ("day", Duration::days(1)),
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_query",
                format!("bucket must be hour or day, not {other:?}"),
            )
            .with_field("bucket"));
        }
    };
    if from < now - Duration::days(MAX_HISTORY_DAYS) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("from may be at most {MAX_HISTORY_DAYS} days (ten years) before now"),
        )
        .with_field("from"));
    }
    if to <= from {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            "to must be after from",
        )
        .with_field("to"));
    }
    if (to - from).num_seconds() / bucket.num_seconds() > MAX_BUCKETS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!(
                "at most {MAX_BUCKETS} buckets per request: shorten from..to or use bucket=day"
            ),
        )
        .with_field("from"));
    }
    let read = state.store.read.as_ref();
    let (ws, me) = (&caller.workspace, &caller.email);
    let jobs = costs::priced_jobs(read, ws, Some(me), (from, now), &pricing(&state)).await?;
    let refs: Vec<&CostJob> = jobs.iter().collect();
    let points = series(&refs, from, to, bucket, now)
        .into_iter()
        .map(|p| SeriesPoint {
            start: p.start,
            spend_usd: p.spend.decimal(),
            burn_rate_usd_per_hour: p.burn_rate.decimal(),
        })
        .collect();
    Ok(Json(Series {
        from,
        to,
        bucket: bucket_name.into(),
        points,
    }))
}

pub(crate) fn require_workspace_admin(caller: &Caller, ws: &str) -> Result<WorkspaceId, ApiError> {
    let forbidden = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            format!("only admins of workspace {ws:?} may do this; ask one of them"),
        )
    };
    let workspace = WorkspaceId::new(ws).map_err(|_| forbidden())?;
    if workspace != caller.workspace || !caller.is_admin() {
        return Err(forbidden());
    }
    Ok(workspace)
}

/// One user in the workspace's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserUsage {
    pub email: String,
    #[serde(flatten)]
    pub usage: UsageBody,
}

/// `GET /v1/workspaces/{ws}/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceUsage {
    pub workspace: String,
    pub period: PeriodBody,
    pub burn_rate_usd_per_hour: String,
    pub pending_bill_usd: String,
    pub projected_spend_usd: String,
    /// Everyone with jobs or a quota, by email.
    pub users: Vec<UserUsage>,
}

/// Per user: burn rate, pending bill, projected spend, quota and status (admins of the workspace).
#[utoipa::path(get, path = "/v1/workspaces/{ws}/usage", tag = "usage",
    params(("ws" = String, Path, description = "Workspace"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible, e.g. a quota just set")),
    responses(
        (status = 200, description = "The workspace's usage", body = WorkspaceUsage),
        (status = 403, description = "Not an admin of this workspace", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn workspace_usage(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(ws): Path<String>,
) -> Result<(HeaderMap, Json<WorkspaceUsage>), ApiError> {
    let workspace = require_workspace_admin(&caller, &ws)?;
    let headers = await_projections(&state, &[costs::NAME, quotas::NAME], min).await;
    let now = state.clock.now();
    let period = Period::of(state.settings.billing_period, now);
    let read = state.store.read.as_ref();
    let window = (period.start, now);
    let jobs = costs::priced_jobs(read, &workspace, None, window, &pricing(&state)).await?;
    let by_user = usage_by_user(&jobs, period, now);
    let quotas = quotas::of_workspace(state.store.read.as_ref(), &workspace).await?;
    let mut emails: std::collections::BTreeSet<String> =
        by_user.keys().map(|e| e.to_string()).collect();
    emails.extend(quotas.keys().cloned());
    let total = usage(&jobs, period, now);
    let users = emails
        .into_iter()
        .map(|email| {
            let u = by_user.get(email.as_str()).copied().unwrap_or_default();
            UserUsage {
                usage: usage_body(&u, quotas.get(&email), period),
                email,
            }
        })
        .collect();
    Ok((
        headers,
        Json(WorkspaceUsage {
            workspace: workspace.to_string(),
            period: PeriodBody {
                start: period.start,
                end: period.end,
            },
            burn_rate_usd_per_hour: total.burn_rate.decimal(),
            pending_bill_usd: total.pending_bill.decimal(),
            projected_spend_usd: total.projected.decimal(),
            users,
        }),
    ))
}
