//! The efficiency report: what a finished job used of what it paid for, and the shape that
//! would have held it for less (`domain::efficiency`). One job's report is part of its view
//! (`GET /v1/clusters/{id}/jobs/{job_id}`); `GET /v1/users/me/efficiency` sums the caller's jobs
//! that ended in a window and names the costliest oversizes, and
//! `GET /v1/workspaces/{ws}/efficiency` does it per user for the workspace's admins.
//!
//! The measurements come from the log (`JobUsageRecorded`, kept by the `costs` projection month
//! by month beside each job's cost); the prices, like every cost, are worked out when read.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Duration, Utc};
use domain::MicroUsd;
use domain::cost::Period;
use domain::efficiency::{Efficiency, Run, Summary, Usage, assess};
use domain::submit::JobShape;
use projections::views::costs;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projections};
use crate::query::{RawQuery, raw_query, unknown};
use crate::{ApiError, AppState};

/// The longest window a summary covers, in days: a year of months, read one document each.
pub const MAX_WINDOW_DAYS: i64 = 366;

/// How many of the costliest oversized jobs a summary names.
pub const WORST: usize = 10;

/// A cheaper shape that would have held the job.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuggestionBody {
    #[schema(example = "compute-xs")]
    pub node_set: String,
    #[schema(example = "c7g.medium")]
    pub instance_type: String,
    pub cpus: u32,
    pub memory_mib: u64,
    #[schema(example = "0.036250")]
    pub rate_usd_per_hour: String,
    /// What the same run would have cost on it.
    pub cost_usd: String,
}

/// What a finished job used of what it asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct EfficiencyBody {
    /// CPU time over (run time × CPUs asked), in percent; null when not measured.
    pub cpu_percent: Option<f64>,
    /// Peak memory over the memory asked (or given by default), in percent; null when not
    /// measured.
    pub memory_percent: Option<f64>,
    /// CPU time (user + system), in seconds with millisecond precision; null when not measured.
    pub cpu_seconds: Option<f64>,
    /// Largest resident memory, in bytes; null when not measured.
    pub peak_memory_bytes: Option<u64>,
    /// The memory it was given, in MiB (asked, or the default per CPU).
    pub memory_asked_mib: u64,
    /// How it was measured: `rusage` (the local executor's `wait4`) or `none`.
    #[schema(example = "rusage")]
    pub measured_by: String,
    /// Measured only in part (stopped by its time limit or a cancel): no shape is suggested.
    pub partial: bool,
    /// What the run cost.
    pub cost_usd: String,
    /// What it cost above the suggested shape's price ("0.000000" when none costs less); null
    /// when nothing was measured.
    pub wasted_usd: Option<String>,
    /// A right-sizing suggestion in words, or why there is none.
    #[schema(
        example = "asked 2 CPUs, kept 0.9 busy on average; asked 8 GiB, peaked at 309 MiB: 1 CPU and 512 MiB would have placed it on compute-xs (c7g.medium) at $0.0363/h instead of $0.1071/h, $0.0001 instead of $0.0002 for this run"
    )]
    pub hint: String,
    pub suggestion: Option<SuggestionBody>,
}

/// The report of a job that ran from `started` to `ended` at `rate`, costing `cost`.
pub(crate) fn report(
    state: &AppState,
    shape: &JobShape,
    rate: MicroUsd,
    cost: MicroUsd,
    (started, ended): (DateTime<Utc>, DateTime<Utc>),
    usage: &Usage,
) -> EfficiencyBody {
    let default_mib = state.scaling.default_mib_per_cpu;
    let run = Run {
        shape,
        rate,
        cost,
        elapsed_ms: (ended - started).num_milliseconds(),
    };
    let e = assess(&state.scaling.catalog, default_mib, run, usage);
    body(&e, shape, default_mib, usage)
}

fn body(e: &Efficiency, shape: &JobShape, default_mib: u64, usage: &Usage) -> EfficiencyBody {
    EfficiencyBody {
        cpu_percent: e.cpu_percent,
        memory_percent: e.memory_percent,
        cpu_seconds: usage.cpu_ms.map(|ms| ms as f64 / 1000.0),
        peak_memory_bytes: usage.peak_memory_bytes,
        memory_asked_mib: domain::efficiency::asked_mib(shape, default_mib),
        measured_by: usage.source.clone(),
        partial: usage.partial,
        cost_usd: e.cost.decimal(),
        wasted_usd: e.wasted.map(MicroUsd::decimal),
        hint: e.hint.clone(),
        suggestion: e.suggestion.as_ref().map(|s| SuggestionBody {
            node_set: s.node_set.clone(),
            instance_type: s.instance_type.clone(),
            cpus: s.shape.cpus,
            memory_mib: s.shape.memory_mib.unwrap_or_default(),
            rate_usd_per_hour: s.rate.decimal(),
            cost_usd: s.cost.decimal(),
        }),
    }
}

/// One of the costliest oversized jobs of a summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct WastefulJob {
    pub cluster_id: String,
    pub job_id: u64,
    pub ended_at: DateTime<Utc>,
    pub cost_usd: String,
    pub wasted_usd: String,
    pub hint: String,
}

/// Finished jobs over a window, summed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EfficiencySummary {
    /// Jobs that ran and ended in the window.
    pub jobs: u64,
    /// Of those, the ones whose use was measured (Slurm without accounting measures none).
    pub measured: u64,
    /// CPU time over (run time × CPUs asked), over the measured jobs; null when none.
    pub cpu_percent: Option<f64>,
    /// Peak over asked memory, weighted by run time, over the measured jobs; null when none.
    pub memory_percent: Option<f64>,
    pub cost_usd: String,
    /// What the jobs cost above the shapes that would have held them.
    pub wasted_usd: String,
    /// The jobs that wasted most, most first (at most ten).
    pub worst: Vec<WastefulJob>,
}

/// `GET /v1/users/me/efficiency`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyEfficiency {
    pub email: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[serde(flatten)]
    pub summary: EfficiencySummary,
}

/// One user of `GET /v1/workspaces/{ws}/efficiency`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEfficiency {
    pub email: String,
    #[serde(flatten)]
    pub summary: EfficiencySummary,
}

/// `GET /v1/workspaces/{ws}/efficiency`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkspaceEfficiency {
    pub workspace: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Everyone with a job that ended in the window, by email.
    pub users: Vec<UserEfficiency>,
}

/// `from` and `to` of a summary: the billing period's start and now by default.
fn window(state: &AppState, query: RawQuery) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let q = raw_query(query)?;
    unknown(&q, &["from", "to"])?;
    let now = state.clock.now();
    let time = |name: &str| crate::usage::parse_time(&q.get(name).cloned(), name);
    let from = time("from")?.unwrap_or(Period::of(state.settings.billing_period, now).start);
    let to = time("to")?.unwrap_or(now);
    if to <= from {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            "to must be after from",
        )
        .with_field("to"));
    }
    if to - from > Duration::days(MAX_WINDOW_DAYS) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("from..to may span at most {MAX_WINDOW_DAYS} days; ask for one year at a time"),
        )
        .with_field("from"));
    }
    Ok((from, to))
}

/// Each user's ended jobs, summed as they are read.
struct Summing<'a> {
    state: &'a AppState,
    pricing: domain::cost::Pricing,
    sums: HashMap<String, (Summary, Vec<(MicroUsd, WastefulJob)>)>,
}

impl<'a> Summing<'a> {
    fn new(state: &'a AppState) -> Self {
        Summing {
            state,
            pricing: crate::usage::pricing(state),
            sums: HashMap::new(),
        }
    }

    fn add(&mut self, e: costs::EndedJob) {
        let default_mib = self.state.scaling.default_mib_per_cpu;
        let j = &e.job;
        let (Some(started), Some(ended_at)) = (j.started_at, j.ended_at) else {
            return;
        };
        let rate = j.rate.unwrap_or_else(|| self.pricing.rate(&j.shape));
        let elapsed_ms = (ended_at - started).num_milliseconds();
        let run = Run {
            shape: &j.shape,
            rate,
            cost: domain::cost::accrue(rate, elapsed_ms),
            elapsed_ms,
        };
        let assessed = j
            .usage
            .as_ref()
            .map(|u| assess(&self.state.scaling.catalog, default_mib, run, u));
        let (sum, worst) = self.sums.entry(e.user.clone()).or_default();
        sum.add(run, default_mib, j.usage.as_ref(), assessed.as_ref());
        if let Some(a) = assessed.filter(|a| a.wasted.is_some_and(|w| w > MicroUsd::ZERO)) {
            let (cluster_id, job_id) = e.key.split_once('/').unwrap_or((e.key.as_str(), "0"));
            let wasted = a.wasted.unwrap_or(MicroUsd::ZERO);
            worst.push((
                wasted,
                WastefulJob {
                    cluster_id: cluster_id.to_string(),
                    job_id: job_id.parse().unwrap_or_default(),
                    ended_at,
                    cost_usd: a.cost.decimal(),
                    wasted_usd: wasted.decimal(),
                    hint: a.hint,
                },
            ));
            // Keep only the costliest few as we go: a year of jobs is not held in full.
            if worst.len() > 4 * WORST {
                trim(worst);
            }
        }
    }

    /// Each user's summary, in email order.
    fn finish(self) -> BTreeMap<String, EfficiencySummary> {
        self.sums
            .into_iter()
            .map(|(user, (s, mut worst))| {
                trim(&mut worst);
                (
                    user,
                    EfficiencySummary {
                        jobs: s.jobs,
                        measured: s.measured,
                        cpu_percent: s.cpu_percent,
                        memory_percent: s.memory_percent,
                        cost_usd: s.cost.decimal(),
                        wasted_usd: s.wasted.decimal(),
                        worst: worst.into_iter().map(|(_, w)| w).collect(),
                    },
                )
            })
            .collect()
    }
}

/// The [`WORST`] that wasted most, most first (ties: the latest first).
fn trim(worst: &mut Vec<(MicroUsd, WastefulJob)>) {
    worst.sort_by(|(a, x), (b, y)| b.cmp(a).then(y.ended_at.cmp(&x.ended_at)));
    worst.truncate(WORST);
}

fn empty() -> EfficiencySummary {
    EfficiencySummary {
        jobs: 0,
        measured: 0,
        cpu_percent: None,
        memory_percent: None,
        cost_usd: MicroUsd::ZERO.decimal(),
        wasted_usd: MicroUsd::ZERO.decimal(),
        worst: Vec::new(),
    }
}

/// How your jobs that ended in a window used what they asked for, and what oversizing cost.
#[utoipa::path(get, path = "/v1/users/me/efficiency", tag = "usage",
    params(
        ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339; default: the billing period's start"),
        ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339, at most 366 days after from; default: now"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible, e.g. a job that just ended"),
    ),
    responses(
        (status = 200, description = "Your jobs' efficiency", body = MyEfficiency),
        (status = 422, description = "A bad time or window (the field says which)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn mine(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    query: RawQuery,
) -> Result<(HeaderMap, Json<MyEfficiency>), ApiError> {
    let (from, to) = window(&state, query)?;
    let headers = await_projections(&state, &[costs::NAME], min).await;
    let mut sums = Summing::new(&state);
    costs::ended_between(
        state.store.read.as_ref(),
        &caller.workspace,
        Some(&caller.email),
        (from, to),
        |e| sums.add(e),
    )
    .await?;
    let summary = sums
        .finish()
        .remove(caller.email.as_str())
        .unwrap_or_else(empty);
    Ok((
        headers,
        Json(MyEfficiency {
            email: caller.email.to_string(),
            from,
            to,
            summary,
        }),
    ))
}

/// Per user: how the jobs that ended in a window used what they asked for (admins of the
/// workspace).
#[utoipa::path(get, path = "/v1/workspaces/{ws}/efficiency", tag = "usage",
    params(
        ("ws" = String, Path, description = "Workspace"),
        ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339; default: the billing period's start"),
        ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339, at most 366 days after from; default: now"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible"),
    ),
    responses(
        (status = 200, description = "The workspace's efficiency, per user", body = WorkspaceEfficiency),
        (status = 403, description = "Not an admin of this workspace", body = crate::error::ErrorBody),
        (status = 422, description = "A bad time or window (the field says which)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn workspace(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(ws): Path<String>,
    query: RawQuery,
) -> Result<(HeaderMap, Json<WorkspaceEfficiency>), ApiError> {
    let workspace = crate::usage::require_workspace_admin(&caller, &ws)?;
    let (from, to) = window(&state, query)?;
    let headers = await_projections(&state, &[costs::NAME], min).await;
    let mut sums = Summing::new(&state);
    costs::ended_between(
        state.store.read.as_ref(),
        &workspace,
        None,
        (from, to),
        |e| sums.add(e),
    )
    .await?;
    let users = sums
        .finish()
        .into_iter()
        .map(|(email, summary)| UserEfficiency { email, summary })
        .collect();
    Ok((
        headers,
        Json(WorkspaceEfficiency {
            workspace: workspace.to_string(),
            from,
            to,
            users,
        }),
    ))
}
