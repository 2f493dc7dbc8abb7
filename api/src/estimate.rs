//! `POST /v1/clusters/{id}/jobs/estimate`: what a submission would cost and when it would start,
//! before it is made. It takes the body submit takes (raw v0.0.44 or `{template_id, params}`),
//! checks it exactly as submit does (`Submitter::validate`: the same errors, field by field) and
//! appends nothing.
//!
//! The work per request is the body's own: placement over the catalog, the user's money from the
//! `costs` projection (a few documents), the cluster's node events since the last estimate, and
//! one look at the scaler's last plan — never the queue.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use commands::scaling::Outlook;
use domain::MicroUsd;
use domain::cost::{Period, QuotaStatus, Usage};
use domain::scaling::NodeSet;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projections};
use crate::json::ApiJson;
use crate::{ApiError, AppState};

/// Where the job would run.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimatePlacement {
    #[schema(example = "compute")]
    pub family: String,
    #[schema(example = "xlarge")]
    pub size: String,
    #[schema(example = "c7g.4xlarge")]
    pub instance_type: String,
    pub nodes: u32,
    /// What it holds on each node.
    pub vcpus_per_node: u32,
    pub memory_mib_per_node: u64,
}

/// When the job would start.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExpectedStart {
    pub at: DateTime<Utc>,
    /// `warm_node` (a ready node of its set has room now), `cold_start` (a node is launched
    /// for it), `queued` (behind pending jobs of its set; nodes are launched for them and for
    /// it) or `unknown_plan` (this replica does not lead the poll cycle: at most a cold start).
    #[schema(example = "cold_start")]
    pub kind: String,
    /// The same in a sentence.
    pub reason: String,
}

/// The user's quota if the job ran to its time limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateQuota {
    /// `ok`, `warning` or `blocked`: where the user would stand with this job's maximum cost
    /// added to the projected spend.
    pub status_after: String,
    /// The quota's limit minus that projected spend (negative: over); `null` without a quota.
    pub remaining_usd: Option<String>,
}

/// The answer of `POST /v1/clusters/{id}/jobs/estimate`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Estimate {
    pub placement: EstimatePlacement,
    /// What it would be billed per hour (as submit records it).
    #[schema(example = "0.580000")]
    pub rate_usd_per_hour: String,
    /// The rate × the time limit; `null` when the job has no time limit (then nothing bounds
    /// its cost but a quota: `warnings` says so).
    pub max_cost_usd: Option<String>,
    pub time_limit_minutes: Option<u32>,
    pub expected_start: ExpectedStart,
    pub quota: EstimateQuota,
    /// What submit would warn about, and what the estimate adds (no time limit, a blocked
    /// user).
    #[schema(value_type = Vec<Object>)]
    pub warnings: Vec<domain::submit::Warning>,
}

/// What a submission would cost and when it would start; appends nothing.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/jobs/estimate",
    tag = "jobs",
    params(("id" = String, Path, description = "Cluster id"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible, e.g. a cluster just registered or a quota just set")),
    request_body(content = Object, description = "What submit takes: a v0.0.44 job-submit body, or {template_id, params}"),
    responses(
        (status = 200, description = "The estimate; nothing was recorded", body = Estimate),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
        (status = 422, description = "The body is not a valid submission: the same errors submit answers (`details` lists every problem)", body = crate::error::ErrorBody),
        (status = 503, description = "`slurm_not_connected`: a registered cluster this server has no Slurm connection to, as submit answers", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn estimate(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<Estimate>, ApiError> {
    // The cluster as submit finds it: one registered a moment ago (with the position), and a
    // Slurm this server reaches (else 503 `slurm_not_connected`, as submit answers); a quota
    // just set, with the position its PUT answered.
    await_projections(
        &state,
        &[
            projections::views::clusters::NAME,
            projections::views::costs::NAME,
            projections::views::quotas::NAME,
        ],
        min,
    )
    .await;
    let (cluster, _) = crate::jobs::cluster_and_slurm(&state, &caller, &id).await?;
    let body = match body.get("template_id") {
        Some(_) => crate::templates::render_request(&state, &body)?.0,
        None => body,
    };
    let canonical = state
        .submitter
        .validate(&caller.workspace, &cluster, &body)
        .map_err(crate::jobs::job_error)?;
    let shape = canonical.shape;
    let mut warnings = canonical.warnings;
    let scaling = &state.scaling;
    let placed = domain::placement::of_shape(&scaling.catalog, &shape, scaling.default_mib_per_cpu)
        .map_err(|e| ApiError::internal(format!("a validated job has no placement: {e}")))?;
    let shape_of = |set: NodeSet| scaling.catalog.shape(set);
    let billed = shape_of(placed.set)
        .ok_or_else(|| ApiError::internal("the placement names no catalog shape"))?;
    let rate = state
        .submitter
        .rate(&shape)
        .ok_or_else(|| ApiError::internal("a validated job has no rate"))?;
    // Slurm reads 0 and INFINITE (u32::MAX) minutes as no limit.
    let limit = shape.time_limit_minutes.filter(|m| *m > 0 && *m < u32::MAX);
    let max_cost = limit.map(|m| domain::cost::accrue(rate, i64::from(m) * 60_000));
    if max_cost.is_none() {
        warnings.push(domain::submit::Warning {
            field: "job.time_limit".into(),
            message: "no time limit: nothing bounds this job's cost but your quota; set \
                      job.time_limit (minutes) to know its maximum"
                .into(),
        });
    }

    // When it would start: the planner's own set for one of its nodes.
    let now = state.clock.now();
    let set = scaling.catalog.place(placed.demand).unwrap_or(placed.set);
    let leading = scaling.leading.load(std::sync::atomic::Ordering::Relaxed);
    let outlook = match scaling.scaler.as_ref().filter(|_| leading) {
        Some(scaler) => Some(
            scaler
                .outlook(state.store.log.as_ref(), &caller.workspace, &cluster, set)
                .await
                .map_err(|e| ApiError::internal(format!("could not read the node set: {e}")))?,
        ),
        None => None,
    };
    let expected_start = expected_start(outlook, leading, placed.nodes, set, scaling, now);

    // The quota with this job's maximum added (a job without a limit: until the period ends).
    let period = Period::of(state.settings.billing_period, now);
    let usage =
        crate::usage::user_usage(&state, &caller.workspace, &caller.email, period, now).await?;
    let quota = crate::usage::quota_of(&state, &caller.workspace, caller.email.as_str()).await?;
    let added = max_cost
        .unwrap_or_else(|| domain::cost::accrue(rate, (period.end - now).num_milliseconds()));
    let after = Usage {
        projected: MicroUsd(usage.projected.0.saturating_add(added.0)),
        ..usage
    };
    let mut status = domain::cost::status(&after, quota.as_ref().map(|q| q.quota()).as_ref());
    // A user `block_and_kill` has blocked: submit refuses (403) before it reads the body; the
    // estimate says so instead. Any other failure of the check is the server's.
    match crate::usage::refuse_if_blocked(&state, &caller).await {
        Ok(()) => {}
        Err(e) if e.code == "quota_exceeded" => {
            status = QuotaStatus::Blocked;
            warnings.push(domain::submit::Warning {
                field: "quota".into(),
                message: format!("submit would be refused now: {}", e.message),
            });
        }
        Err(e) => return Err(e),
    }
    Ok(Json(Estimate {
        placement: EstimatePlacement {
            family: placed.family.as_str().into(),
            size: placed.set.size.as_str().into(),
            instance_type: billed.instance_type.clone(),
            nodes: placed.nodes,
            vcpus_per_node: placed.demand.cpus,
            memory_mib_per_node: placed.demand.memory_mib,
        },
        rate_usd_per_hour: rate.decimal(),
        max_cost_usd: max_cost.map(MicroUsd::decimal),
        time_limit_minutes: limit,
        expected_start,
        quota: EstimateQuota {
            status_after: crate::usage::status_name(status).into(),
            remaining_usd: quota
                .as_ref()
                .map(|q| MicroUsd(q.limit.0.saturating_sub(after.projected.0)).decimal()),
        },
        warnings,
    }))
}

/// The expected start from what the set holds (module docs of `commands::scaling::Outlook`).
fn expected_start(
    outlook: Option<Outlook>,
    leading: bool,
    nodes: u32,
    set: NodeSet,
    scaling: &crate::nodesets::Scaling,
    now: DateTime<Utc>,
) -> ExpectedStart {
    let cold = chrono::Duration::from_std(scaling.cold_start).unwrap_or_default();
    let cycle = chrono::Duration::from_std(scaling.poll_interval).unwrap_or_default();
    // "81 s", or "under a second" (a local profile in tests).
    let wait = (cold + cycle).num_seconds();
    let secs = if wait < 1 {
        "under a second".to_string()
    } else {
        format!("{wait} s")
    };
    let launched = |kind: &str, reason: String| ExpectedStart {
        at: now + cycle + cold,
        kind: kind.into(),
        reason,
    };
    let Some(planned) = outlook.and_then(|o| o.planned.map(|p| (o, p))) else {
        let why = if leading {
            "the poll cycle has not planned this cluster yet"
        } else {
            "this replica does not lead the poll cycle"
        };
        return launched(
            "unknown_plan",
            format!(
                "about a cold start (about {secs}) unless its set is at its node limit: {why}, \
                 so it cannot tell whether a {set} node has room now"
            ),
        );
    };
    let (o, p) = planned;
    if p.capped {
        return launched(
            "queued",
            format!(
                "{set} has as many nodes as the cluster allows it (max_nodes_per_set): it starts \
                 when running jobs of the set end, not before about {secs}"
            ),
        );
    }
    if p.pending_jobs > 0 {
        return launched(
            "queued",
            format!(
                "behind {} pending job(s) of {set}; nodes are launched for them and for it: \
                 about {secs} (a poll cycle and a cold start)",
                p.pending_jobs
            ),
        );
    }
    // Ready nodes of the set that the plan left without work.
    let free = o.ready.saturating_sub(p.holding);
    if free >= nodes {
        return ExpectedStart {
            at: now,
            kind: "warm_node".into(),
            reason: format!("{free} ready {set} node(s) have room: it starts at once"),
        };
    }
    launched(
        "cold_start",
        format!(
            "no ready {set} node has room: {} launched at the next poll cycle, ready after a cold \
             start (about {secs})",
            if nodes == 1 {
                "one is".to_string()
            } else {
                format!("{nodes} are")
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::scaling::Planned;
    use domain::scaling::{Catalog, Family, Size};

    fn scaling() -> crate::nodesets::Scaling {
        crate::nodesets::Scaling {
            catalog: std::sync::Arc::new(
                Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512)
                    .expect("the fixture catalog"),
            ),
            default_mib_per_cpu: 2016,
            leading: Default::default(),
            scaler: None,
            cold_start: std::time::Duration::from_secs(80),
            poll_interval: std::time::Duration::from_secs(1),
        }
    }

    fn outlook(ready: u32, pending_jobs: usize, holding: u32, capped: bool) -> Option<Outlook> {
        Some(Outlook {
            ready,
            starting: 0,
            planned: Some(Planned {
                pending_jobs,
                holding,
                capped,
            }),
        })
    }

    #[test]
    fn the_expected_start_reads_the_plan() {
        let s = scaling();
        let set = NodeSet {
            family: Family::Compute,
            size: Size::Xlarge,
        };
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let later = now + chrono::Duration::seconds(81);
        let at = |o, nodes| expected_start(o, true, nodes, set, &s, now);
        // Two ready nodes, one holding work: one free, so a one-node job starts now; a
        // two-node job waits for a node.
        let e = at(outlook(2, 0, 1, false), 1);
        assert_eq!((e.kind.as_str(), e.at), ("warm_node", now));
        let e = at(outlook(2, 0, 1, false), 2);
        assert_eq!((e.kind.as_str(), e.at), ("cold_start", later));
        assert!(e.reason.contains("2 are launched"), "{}", e.reason);
        // Pending jobs of the set go first, even with a free node.
        let e = at(outlook(3, 4, 0, false), 1);
        assert_eq!((e.kind.as_str(), e.at), ("queued", later));
        assert!(e.reason.contains("behind 4 pending job"), "{}", e.reason);
        // At the set's node limit: it waits for running jobs.
        let e = at(outlook(5, 0, 5, true), 1);
        assert_eq!(e.kind, "queued");
        assert!(e.reason.contains("max_nodes_per_set"), "{}", e.reason);
        // No plan: a follower, or a leader before its first cycle of the cluster.
        let e = expected_start(None, false, 1, set, &s, now);
        assert_eq!((e.kind.as_str(), e.at), ("unknown_plan", later));
        assert!(e.reason.contains("does not lead"), "{}", e.reason);
        let e = expected_start(None, true, 1, set, &s, now);
        assert!(
            e.reason.contains("not planned this cluster yet"),
            "{}",
            e.reason
        );
    }
}
