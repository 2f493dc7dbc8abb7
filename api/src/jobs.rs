//! `/v1/clusters/{id}/jobs`: submit (raw v0.0.44 body or template), list, read, cancel.
//!
//! Users see and cancel their own jobs; admins see and cancel every job of their workspace.
//! Another user's job answers 404, like a job that does not exist.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use commands::jobs::{CancelRequest, JobError, Submission};
use commands::slurm::{SlurmError, SlurmPort};
use domain::job::{JobRuleError, JobState};
use domain::{ClusterId, SubmittedVia};
use eventlog::StreamId;
use projections::views::clusters::SlurmStatus;
use projections::views::jobs::{self, JobView};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection, position_header};
use crate::error::ErrorItem;
use crate::json::ApiJson;
use crate::{ApiError, AppState};

/// The answer to a submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    /// Slurm's job id.
    pub job_id: u64,
    pub submission_id: uuid::Uuid,
    /// The log position this submission produced.
    pub position: i64,
    /// What was accepted but is worth knowing (spellings fixed, unknown fields forwarded).
    #[schema(value_type = Vec<Object>)]
    pub warnings: Vec<domain::submit::Warning>,
}

/// A job as users see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    pub job_id: u64,
    pub cluster_id: String,
    pub submission_id: uuid::Uuid,
    pub name: String,
    pub user: String,
    /// Slurm's state name: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, …
    #[schema(example = "RUNNING")]
    pub state: String,
    pub exit_code: Option<i32>,
    pub submitted_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it is waiting, in words; null unless PENDING.
    pub pending_reason: Option<String>,
    pub reason: Option<String>,
    pub node: Option<String>,
    #[schema(value_type = Object)]
    pub shape: domain::submit::JobShape,
    #[schema(example = "template")]
    pub via: String,
    pub template_id: Option<String>,
    pub cancel_requested_by: Option<String>,
}

impl Job {
    /// The job as users see it, given what is recorded about its cluster's Slurm: while that
    /// Slurm is unreachable, an unfinished job's state is the last one seen, and its
    /// `pending_reason` says so.
    fn seen(v: JobView, slurm: Option<&SlurmStatus>) -> Self {
        let mut job = Job::from(v);
        if let Some(reason) = unreachable_reason(&job.state, slurm) {
            job.pending_reason = Some(reason);
        }
        job
    }
}

/// The pending reason of an unfinished job whose cluster's Slurm is unreachable.
fn unreachable_reason(state: &str, slurm: Option<&SlurmStatus>) -> Option<String> {
    let status = slurm.filter(|s| !s.reachable)?;
    let unfinished = JobState::ALL
        .into_iter()
        .find(|s| s.as_str() == state)
        .is_some_and(|s| !s.is_terminal());
    unfinished.then(|| {
        format!(
            "Slurm is unreachable (no answer since {}); {state} is the last state seen, and it updates when Slurm answers again",
            status.since.format("%Y-%m-%d %H:%M:%S UTC")
        )
    })
}

/// What the log says about the cluster's Slurm answering (`None`: it never stopped).
async fn slurm_status(
    state: &AppState,
    caller: &Caller,
    cluster: &ClusterId,
) -> Result<Option<SlurmStatus>, ApiError> {
    Ok(projections::views::clusters::slurm_status(
        state.store.read.as_ref(),
        &caller.workspace,
        cluster,
    )
    .await?)
}

impl From<JobView> for Job {
    fn from(v: JobView) -> Self {
        Job {
            job_id: v.job_id,
            cluster_id: v.cluster_id.to_string(),
            submission_id: v.submission_id,
            name: v.name,
            user: v.user,
            state: v.state.as_str().to_string(),
            exit_code: v.exit_code,
            submitted_at: v.submitted_at,
            started_at: v.started_at,
            ended_at: v.ended_at,
            pending_reason: v.pending_reason,
            reason: v.reason,
            node: v.node,
            shape: v.shape,
            via: serde_json::to_value(v.via)
                .ok()
                .and_then(|x| x.as_str().map(str::to_string))
                .unwrap_or_default(),
            template_id: v.template_id,
            cancel_requested_by: v.cancel_requested_by,
        }
    }
}

/// One event of a job's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub position: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A job and its event history.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    /// What the job has cost so far, in US dollars (from its start to its end, or to now while
    /// it runs), at the hourly rate recorded when it was submitted; `"0"` before it starts.
    #[schema(example = "0.012345")]
    pub cost_usd: String,
    /// Its hourly rate in US dollars (its share of the node it needs).
    #[schema(example = "0.0416")]
    pub rate_usd_per_hour: String,
    /// What it used of what it asked for, once it ended and its executor measured it (or said
    /// it could not); null before.
    pub efficiency: Option<crate::efficiency::EfficiencyBody>,
    pub history: Vec<HistoryEntry>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/clusters/{id}/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only jobs in this state (Slurm name, e.g. RUNNING; lower case is taken too).
    #[param(
        pattern = "^(PENDING|RUNNING|SUSPENDED|COMPLETING|COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE|OUT_OF_MEMORY|pending|running|suspended|completing|completed|failed|cancelled|timeout|node_fail|preempted|boot_fail|deadline|out_of_memory)$"
    )]
    pub state: Option<String>,
    /// Only this user's jobs (admins; a user only ever sees their own).
    pub user: Option<String>,
    /// Only jobs from this template.
    pub template: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,19}$")]
    pub cursor: Option<String>,
    /// Page size, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

pub(crate) fn cluster_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "cluster_not_found",
        "no cluster with this id in your workspace; list yours with GET /v1/clusters",
    )
    .with_field("id")
}

fn job_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "job_not_found", "no job with this id on this cluster that you can see; list yours with GET /v1/clusters/{id}/jobs")
        .with_field("job_id")
}

/// Resolves the cluster (in the caller's workspace) and its Slurm.
pub(crate) async fn cluster_and_slurm(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(ClusterId, Arc<dyn SlurmPort>), ApiError> {
    let cluster = ClusterId::new(id).map_err(|_| cluster_not_found())?;
    cluster_exists(state, caller, &cluster).await?;
    let slurm = connected_slurm(state, caller, &cluster)?;
    Ok((cluster, slurm))
}

/// The Slurm of a cluster known to exist: 503 while this server has no connection to it.
fn connected_slurm(
    state: &AppState,
    caller: &Caller,
    cluster: &ClusterId,
) -> Result<Arc<dyn SlurmPort>, ApiError> {
    state.slurm.get(&caller.workspace, cluster).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slurm_not_connected",
            format!("cluster {cluster} has no Slurm connection on this server yet; use the local cluster, or ask an operator to connect it"),
        )
    })
}

pub(crate) fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::Invalid(errors) => {
            let first = errors.first().cloned();
            let message = if errors.len() == 1 {
                errors[0].message.clone()
            } else {
                format!(
                    "{} problems: {}",
                    errors.len(),
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                first.as_ref().map_or("invalid_body", |f| f.code),
                message,
            );
            if let Some(f) = first.filter(|f| !f.field.is_empty()) {
                err = err.with_field(f.field);
            }
            err.details = errors
                .into_iter()
                .map(|e| ErrorItem {
                    code: e.code.into(),
                    field: e.field,
                    message: e.message,
                })
                .collect();
            err
        }
        JobError::Slurm(SlurmError::Rejected(m)) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "slurm_rejected",
            format!("Slurm refused the job: {}", m.join("; ")),
        ),
        JobError::Slurm(SlurmError::UnknownJob(_)) | JobError::NotFound => job_not_found(),
        JobError::Slurm(SlurmError::Unavailable(m)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slurm_unavailable",
            "Slurm could not be reached; retry with the same Idempotency-Key",
        )
        .with_detail(m),
        JobError::Slurm(SlurmError::NotCalled(m)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "slurm_unavailable",
            "Slurm was not called, so nothing was submitted: its slurmrestd has stopped answering, or this server already has as many calls to it under way as it allows (slurm_max_in_flight); retry in a few seconds, with the same Idempotency-Key or without one",
        )
        .with_detail(m),
        JobError::Rule(JobRuleError::AlreadyFinished(s)) => ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("the job already finished as {s}; there is nothing to cancel"),
        ),
        JobError::Rule(JobRuleError::NotOwner) => job_not_found(),
        JobError::Rule(e @ JobRuleError::ImpossibleTransition { .. }) => {
            ApiError::internal(e.to_string())
        }
        JobError::InProgress => ApiError::new(
            StatusCode::CONFLICT,
            "submission_in_progress",
            "a submission with this Idempotency-Key is still being processed; retry in a few seconds (if its submitter stopped halfway, the poll cycle settles it within about a minute)",
        )
        .with_field("headers.idempotency-key"),
        JobError::KeyReused => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a submission with a different body; use a new key for a new job, or resend the first body to get its answer",
        )
        .with_field("headers.idempotency-key"),
        JobError::Log(e) => e.into(),
        JobError::Decode(e) => ApiError::internal(format!("a stored event is unreadable: {e}")),
    }
}

/// A cancel answers 202 only when Slurm accepted it. When Slurm did not, the request is still
/// recorded (and the poll cycle asks Slurm again while the job runs): 503 when Slurm did not
/// answer, 502 when it refused.
fn cancel_error(e: JobError) -> ApiError {
    match e {
        JobError::Slurm(SlurmError::Unavailable(m) | SlurmError::NotCalled(m)) => {
            tracing::warn!(error = %m, "cancel recorded but not confirmed by Slurm");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "slurm_unavailable",
                "the cancel is recorded, but Slurm did not confirm it (no answer); the server asks Slurm again every poll cycle while the job runs, and retrying is safe",
            )
        }
        JobError::Slurm(SlurmError::Rejected(m)) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "slurm_rejected",
            format!(
                "the cancel is recorded, but Slurm refused it: {}",
                m.join("; ")
            ),
        ),
        other => job_error(other),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(str::trim)
        .filter(|k| (1..=200).contains(&k.len()) && k.chars().all(|c| c.is_ascii_graphic()))
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-200 visible ASCII characters, e.g. a UUID",
            )
            .with_field("headers.idempotency-key")
        })
}

/// How a submission came in. A client may label itself `api` or `cli` (informational); `console`
/// and `agent` are decided by the server's own routes for them, never taken from a header, so an
/// API caller cannot make its job look like the agent's or the console's.
fn via(headers: &HeaderMap, template: bool, caller: &Caller) -> Result<SubmittedVia, ApiError> {
    if caller.via == "agent" {
        return Ok(SubmittedVia::Agent);
    }
    if template {
        return Ok(SubmittedVia::Template);
    }
    if caller.via == "console" {
        return Ok(SubmittedVia::Console);
    }
    match headers
        .get("x-clusterra-via")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("api") => Ok(SubmittedVia::Api),
        Some("cli") => Ok(SubmittedVia::Cli),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_via",
            "X-Clusterra-Via may be api or cli (or left out); console and agent are set by the server's own routes",
        )
        .with_field("headers.x-clusterra-via")),
    }
}

/// Submit a job: a raw slurmrestd v0.0.44 body (`{"job": {...}}`), or `{"template_id", "params"}`.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/jobs",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Cluster id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", description = "1-200 visible ASCII characters, e.g. a UUID. A retry with the same key returns the first answer and creates nothing"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible, e.g. a cluster just registered"),
    ),
    request_body(content = Object, description = "A v0.0.44 job-submit body, or {template_id, params}"),
    responses(
        (status = 201, description = "Submitted (also the answer to a retry)", body = SubmitResponse),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
        (status = 409, description = "`submission_in_progress`: another request with this Idempotency-Key is still being processed; retry shortly", body = crate::error::ErrorBody),
        (status = 422, description = "The body is not a valid submission (`details` lists every problem), or `idempotency_key_reused`: the key was used with another body", body = crate::error::ErrorBody),
        (status = 503, description = "`slurm_unavailable`: Slurm did not answer, or was not called (its breaker is open, or this server has `slurm_max_in_flight` calls to it under way; nothing was submitted); retry with the same Idempotency-Key", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency_key(&headers)?;
    // A cluster registered a moment ago: the caller may pass its position to wait for it.
    await_projection(&state, projections::views::clusters::NAME, min).await;
    let (cluster, slurm) = cluster_and_slurm(&state, &caller, &id).await?;
    crate::usage::refuse_if_blocked(&state, &caller).await?;
    let (body, template_id, params) = match body.get("template_id") {
        Some(_) => {
            let (rendered, template_id, params) = crate::templates::render_request(&state, &body)?;
            (rendered, Some(template_id), Some(params))
        }
        None => (body, None, None),
    };
    let via = via(&headers, template_id.is_some(), &caller)?;
    let submission = Submission {
        workspace: caller.workspace.clone(),
        cluster,
        user: caller.email.clone(),
        role: caller.role.as_str().into(),
        via,
        template_id,
        params,
        body,
        idempotency_key: key,
    };
    // The submission runs on a task of its own: a caller that hangs up mid-way (a timeout, a
    // closed tab) drops this handler, but not the submission. Once its request is recorded it
    // goes on to Slurm and records the outcome, so a retry with the same key is answered from
    // the log at once, instead of finding an attempt stopped halfway that the poll cycle
    // settles only after `ADOPT_AFTER`.
    let (submitter, log) = (state.submitter.clone(), state.store.log.clone());
    let submitted = tokio::spawn(
        async move {
            submitter
                .submit(log.as_ref(), slurm.as_ref(), submission)
                .await
        }
        .in_current_span(),
    )
    .await
    .map_err(|e| ApiError::internal(format!("the submission task stopped: {e}")))?
    .map_err(job_error)?;
    let mut headers = position_header(submitted.position);
    if submitted.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(SubmitResponse {
            job_id: submitted.job_id,
            submission_id: submitted.submission_id,
            position: submitted.position,
            warnings: submitted.warnings,
        }),
    ))
}

/// The cluster's jobs, newest last; users see their own, admins all.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/jobs",
    tag = "jobs",
    params(("id" = String, Path, description = "Cluster id"), JobFilter,
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible")),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A filter is invalid", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(id): Path<String>,
    filter: Result<Query<JobFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<(HeaderMap, Json<JobPage>), ApiError> {
    let Query(filter) = filter.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("{e}; the filters are state, user, template, cursor and limit"),
        )
    })?;
    let cluster = ClusterId::new(id).map_err(|_| cluster_not_found())?;
    cluster_exists(&state, &caller, &cluster).await?;
    let want_state = match filter.state.as_deref() {
        Some(s) => Some(JobState::ALL.into_iter().find(|x| x.as_str() == s.to_ascii_uppercase()).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_state", format!("state {s:?} is not a Slurm state name; use e.g. PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL"))
                .with_field("state")
        })?),
        None => None,
    };
    let limit = filter.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            "limit must be from 1 to 500",
        )
        .with_field("limit"));
    }
    let after = match filter.cursor.as_deref() {
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor must be a next_cursor from a previous page",
            )
            .with_field("cursor")
        })?),
        None => None,
    };
    // A user's page (or a user filter) reads the per-user view: wait for that one too.
    let by_user = filter.user.is_some() || !caller.is_admin();
    let headers = await_projection(
        &state,
        if by_user {
            jobs::BY_USER_NAME
        } else {
            jobs::NAME
        },
        min,
    )
    .await;
    let user = filter.user.as_deref().map(str::to_ascii_lowercase);
    let (out, more) = jobs::page(
        state.store.read.as_ref(),
        &caller.workspace,
        &cluster,
        &jobs::JobQuery {
            state: want_state,
            user: user.as_deref(),
            template: filter.template.as_deref(),
            visible_to: (!caller.is_admin()).then_some(caller.email.as_str()),
            after,
            limit,
        },
    )
    .await?;
    let next_cursor = if more {
        out.last().map(|v| v.job_id.to_string())
    } else {
        None
    };
    let slurm = slurm_status(&state, &caller, &cluster).await?;
    Ok((
        headers,
        Json(JobPage {
            jobs: out
                .into_iter()
                .map(|v| Job::seen(v, slurm.as_ref()))
                .collect(),
            next_cursor,
        }),
    ))
}

async fn cluster_exists(
    state: &AppState,
    caller: &Caller,
    cluster: &ClusterId,
) -> Result<(), ApiError> {
    crate::clusters::visible_cluster(state, caller, cluster.as_str())
        .await
        .map(|_| ())
}

pub(crate) async fn visible_job(
    state: &AppState,
    caller: &Caller,
    cluster: &ClusterId,
    job_id: &str,
) -> Result<JobView, ApiError> {
    let job_id: u64 = job_id.parse().map_err(|_| job_not_found())?;
    let view = jobs::get(
        state.store.read.as_ref(),
        &caller.workspace,
        cluster,
        job_id,
    )
    .await?
    .ok_or_else(job_not_found)?;
    if !caller.is_admin() && view.user != caller.email.as_str() {
        return Err(job_not_found());
    }
    Ok(view)
}

/// One job and its event history.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/jobs/{job_id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Cluster id"), ("job_id" = u64, Path, maximum = 4294967295_i64, description = "Slurm job id (a 32-bit number)"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible")),
    responses(
        (status = 200, description = "The job and its history", body = JobDetail),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such job that you can see", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<(HeaderMap, Json<JobDetail>), ApiError> {
    let cluster = ClusterId::new(id).map_err(|_| cluster_not_found())?;
    cluster_exists(&state, &caller, &cluster).await?;
    let headers = await_projection(&state, jobs::NAME, min).await;
    let view = visible_job(&state, &caller, &cluster, &job_id).await?;
    let stream =
        StreamId::new(view.stream_id.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    let history = state
        .store
        .log
        .read_stream(&stream, 0, 1_000)
        .await?
        .into_iter()
        .map(|e| HistoryEntry {
            position: e.position,
            event_type: e.event_type.clone(),
            recorded_at: e.recorded_at,
            data: e.data_json().unwrap_or(serde_json::Value::Null),
        })
        .collect();
    let pricing = crate::usage::pricing(&state);
    let now = state.clock.now();
    let priced = pricing.job(domain::cost::PricedJob {
        user: &view.user,
        job_id: view.job_id,
        shape: &view.shape,
        started_at: view.started_at,
        ended_at: view.ended_at,
        recorded_rate: view.rate,
    });
    let rate = view.rate.unwrap_or_else(|| pricing.rate(&view.shape));
    let cost = priced.map_or(domain::MicroUsd::ZERO, |j| {
        j.cost_between(chrono::DateTime::<Utc>::MIN_UTC, now, now)
    });
    let efficiency = match (&view.usage, view.started_at, view.ended_at) {
        (Some(usage), Some(started), Some(ended)) => Some(crate::efficiency::report(
            &state,
            &view.shape,
            rate,
            cost,
            (started, ended),
            usage,
        )),
        _ => None,
    };
    Ok((
        headers,
        Json(JobDetail {
            cost_usd: cost.decimal(),
            rate_usd_per_hour: rate.decimal(),
            efficiency,
            job: Job::seen(
                view,
                slurm_status(&state, &caller, &cluster).await?.as_ref(),
            ),
            history,
        }),
    ))
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    pub job_id: u64,
    /// The log position of `JobCancelRequested`; the job turns CANCELLED shortly after.
    pub position: i64,
}

/// Cancel a job (its owner or an admin).
#[utoipa::path(
    delete,
    path = "/v1/clusters/{id}/jobs/{job_id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Cluster id"), ("job_id" = u64, Path, maximum = 4294967295_i64, description = "Slurm job id (a 32-bit number)")),
    responses(
        (status = 202, description = "Cancel requested; the state follows. Idempotent: a repeated cancel answers the first one's position", body = CancelResponse),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such job that you can see", body = crate::error::ErrorBody),
        (status = 409, description = "`job_finished`: the job ended before any cancel was requested; `conflict`: a concurrent change, retry", body = crate::error::ErrorBody),
        (status = 502, description = "The cancel is recorded, but Slurm refused it (`slurm_rejected`)", body = crate::error::ErrorBody),
        (status = 503, description = "The cancel is recorded, but Slurm did not answer or was not called (`slurm_unavailable`); the server keeps asking it every poll cycle", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, job_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    // An unknown job is 404 whether or not the cluster's Slurm is connected.
    let cluster = ClusterId::new(id).map_err(|_| cluster_not_found())?;
    cluster_exists(&state, &caller, &cluster).await?;
    let view = visible_job(&state, &caller, &cluster, &job_id).await?;
    let slurm = connected_slurm(&state, &caller, &cluster)?;
    let position = commands::jobs::cancel_job(
        state.store.log.as_ref(),
        slurm.as_ref(),
        CancelRequest {
            cluster,
            submission: view.submission_id,
            caller: caller.email.clone(),
            caller_is_admin: caller.is_admin(),
            why: None,
            metadata: crate::clusters::metadata(&caller),
        },
    )
    .await
    .map_err(cancel_error)?;
    Ok((
        StatusCode::ACCEPTED,
        position_header(position),
        Json(CancelResponse {
            job_id: view.job_id,
            position,
        }),
    ))
}
