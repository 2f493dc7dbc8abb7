//! Quotas: set and remove (workspace admins), and the poll cycle's enforcement.
//!
//! Each user's quota events live on `quota:<workspace>:<email>`: `QuotaSet`, `QuotaRemoved`, and
//! the enforcement records `QuotaWarningRaised` and `QuotaEnforced`. Enforcement folds that stream
//! and appends at exactly the version it read, so a warning is raised once per crossing and a
//! block recorded once, however many cycles (or replicas, or restarts) see the user over. The
//! cancels go through [`crate::jobs::cancel_job`], the path a user's DELETE takes, with the system
//! as actor and `quota` as reason; a job already asked to cancel is left alone (the cluster's
//! reconcile pass asks Slurm again while it runs), and a cluster whose Slurm is not answering
//! gets the cancel recorded without being called.

use domain::cost::{Period, Quota, Usage};
use domain::{ClusterId, DomainEvent, Email, QuotaRemoved, QuotaSet, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, LogError, Metadata, Position, StreamId};
use uuid::Uuid;

use crate::jobs::{CancelRequest, JobError, cancel_job};
use crate::slurm::SlurmDirectory;

/// The actor of the system's own cancels.
pub const SYSTEM_EMAIL: &str = "system@clusterra.local";

/// The reason the system's quota cancels carry.
pub const QUOTA_REASON: &str = "quota";

const LONG_EMAIL_NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_3a5c_2d41_4b7e_9a35_0c1d_7e2f_9b48);

/// A user's quota stream (a uuid-v5 of the email when the email is too long for a stream id).
pub fn stream(workspace: &WorkspaceId, email: &Email) -> StreamId {
    StreamId::new(format!("quota:{workspace}:{email}")).unwrap_or_else(|_| {
        let id = Uuid::new_v5(&LONG_EMAIL_NAMESPACE, email.as_str().as_bytes());
        StreamId::new(format!("quota:{workspace}:email-{id}"))
            .unwrap_or_else(|e| unreachable!("a slug and a uuid make a stream id: {e}"))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{0} has no quota in this workspace")]
    NoQuota(Email),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("stored event unreadable: {0}")]
    Decode(#[from] serde_json::Error),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Blocked(#[from] domain::cost::SubmitBlocked),
}

/// What the quota stream says now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaState {
    /// The quota, and the periods a warning was raised and a block recorded in since it was set.
    pub facts: domain::cost::QuotaFacts,
    pub version: i64,
}

/// Folds a user's quota stream.
pub async fn load(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    email: &Email,
) -> Result<QuotaState, QuotaError> {
    let stream = stream(workspace, email);
    let mut state = domain::cost::QuotaFacts::default();
    let version = crate::fold_stream(log, &stream, 0, 500, |_, d| {
        match d {
            Some(DomainEvent::QuotaSet(q)) => {
                state.quota = Some(Quota {
                    limit: q.limit,
                    mode: q.mode,
                    buffer_percent: q.buffer_percent,
                });
                state.warned = None;
                state.enforced = None;
            }
            Some(DomainEvent::QuotaRemoved(_)) => state = domain::cost::QuotaFacts::default(),
            Some(DomainEvent::QuotaWarningRaised(w)) => state.warned = Some(w.period_start),
            Some(DomainEvent::QuotaEnforced(q)) => state.enforced = Some(q.period_start),
            _ => {}
        }
        Ok::<_, QuotaError>(())
    })
    .await?;
    Ok(QuotaState {
        facts: state,
        version,
    })
}

/// Refuses a submission by a user a `block_and_kill` quota has blocked, deciding on the quota
/// *stream* (one short read), never on a projection that may lag an admin's change. `usage` (the
/// user's money in `period`) is asked for only when the user has such a quota.
pub async fn check_submit<E: From<QuotaError>>(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    email: &Email,
    period: Period,
    usage: impl AsyncFnOnce() -> Result<Usage, E>,
) -> Result<(), E> {
    let facts = load(log, workspace, email).await?.facts;
    if facts
        .quota
        .is_none_or(|q| q.mode != domain::cost::QuotaMode::BlockAndKill)
    {
        return Ok(());
    }
    let usage = usage().await?;
    domain::cost::check_submit(&facts, &usage, period).map_err(|b| QuotaError::from(b).into())
}

/// Sets (or replaces) a user's quota. Raising the limit lifts a block: the next check uses it.
#[tracing::instrument(skip_all, fields(%workspace, %email))]
pub async fn set(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    email: &Email,
    quota: Quota,
    by: &Email,
    metadata: Metadata,
) -> Result<Position, QuotaError> {
    let e = DomainEvent::QuotaSet(QuotaSet {
        workspace: workspace.clone(),
        email: email.clone(),
        limit: quota.limit,
        mode: quota.mode,
        buffer_percent: quota.buffer_percent,
        by: by.clone(),
    });
    Ok(log
        .append(
            &stream(workspace, email),
            ExpectedVersion::Any,
            &[crate::encode(&e, metadata)?],
        )
        .await?
        .last_position)
}

/// Removes a user's quota; `NoQuota` when there is none (nothing appended).
#[tracing::instrument(skip_all, fields(%workspace, %email))]
pub async fn remove(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    email: &Email,
    by: &Email,
    metadata: Metadata,
) -> Result<Position, QuotaError> {
    let state = load(log, workspace, email).await?;
    if state.facts.quota.is_none() {
        return Err(QuotaError::NoQuota(email.clone()));
    }
    let e = DomainEvent::QuotaRemoved(QuotaRemoved {
        workspace: workspace.clone(),
        email: email.clone(),
        by: by.clone(),
    });
    Ok(log
        .append(
            &stream(workspace, email),
            ExpectedVersion::Exact(state.version),
            &[crate::encode(&e, metadata)?],
        )
        .await?
        .last_position)
}

/// A job enforcement cancels: any of the user's jobs not finished (running, pending or
/// suspended).
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub cluster: ClusterId,
    pub submission: Uuid,
    pub job_id: u64,
}

/// What one enforcement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforcement {
    pub warned: bool,
    pub blocked: bool,
    pub cancelled: Vec<u64>,
}

/// One user's enforcement in one cycle: the quota stream is read and the status decided on it
/// (never on a projection that may lag), and the records are appended at exactly the version
/// read (a conflict means another cycle got there first).
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(%workspace, %email))]
pub async fn enforce(
    log: &dyn EventLog,
    slurm: &dyn SlurmDirectory,
    workspace: &WorkspaceId,
    email: &Email,
    usage: &Usage,
    period: Period,
    running: &[RunningJob],
) -> Result<Enforcement, QuotaError> {
    let state = load(log, workspace, email).await?;
    let decided = domain::cost::decide_enforcement(workspace, email, &state.facts, usage, period);
    let mut out = Enforcement {
        warned: decided
            .events
            .iter()
            .any(|e| matches!(e, DomainEvent::QuotaWarningRaised(_))),
        blocked: decided
            .events
            .iter()
            .any(|e| matches!(e, DomainEvent::QuotaEnforced(_))),
        cancelled: Vec::new(),
    };
    if !decided.events.is_empty() {
        let records = decided
            .events
            .iter()
            .map(|e| crate::encode(e, crate::system_metadata("poll")))
            .collect::<Result<Vec<_>, _>>()?;
        match log
            .append(
                &stream(workspace, email),
                ExpectedVersion::Exact(state.version),
                &records,
            )
            .await
        {
            Ok(_) => {}
            Err(LogError::VersionConflict { .. }) => return Ok(Enforcement::default()),
            Err(e) => return Err(e.into()),
        }
    }
    if !decided.cancel_jobs {
        return Ok(out);
    }
    let system = Email::new(SYSTEM_EMAIL)
        .unwrap_or_else(|e| unreachable!("the system's address is a valid email: {e}"));
    for job in running {
        let Some(port) = slurm.get(workspace, &job.cluster) else {
            continue;
        };
        let job_stream = crate::jobs::stream(&job.cluster, job.submission);
        match crate::jobs::load(log, &job_stream).await? {
            Some((facts, _)) if facts.state.is_terminal() => continue,
            // Asked before, still not over: the ask may not have reached Slurm (a crash between
            // the record and the call, or Slurm did not answer). The cluster's reconcile pass
            // asks again every cycle while Slurm still runs it (commands::jobs::reconcile).
            Some((facts, _)) if facts.cancel_requested => continue,
            Some(_) => {}
            None => continue,
        }
        let request = CancelRequest {
            cluster: job.cluster.clone(),
            submission: job.submission,
            caller: system.clone(),
            caller_is_admin: true,
            why: Some(QUOTA_REASON.into()),
            metadata: crate::system_metadata("poll"),
        };
        // A cluster whose Slurm is not answering is not called here (that would hold up every
        // other user's enforcement for its timeout): the cancel is recorded, and the cluster's
        // own reconcile pass asks Slurm for it once Slurm answers again.
        let outcome = if port.reachability().is_reachable() {
            cancel_job(log, port.as_ref(), request).await
        } else {
            crate::jobs::record_cancel(log, request)
                .await
                .map(|(position, _, _)| position)
        };
        match outcome {
            Ok(_) => out.cancelled.push(job.job_id),
            // Another cycle cancelled it between the check and the append, or it just ended.
            Err(JobError::Log(LogError::VersionConflict { .. })) | Err(JobError::Rule(_)) => {}
            // Recorded, but Slurm did not take it: the reconcile pass asks again.
            Err(JobError::Slurm(e)) => {
                tracing::warn!(job_id = job.job_id, error = %e, "quota cancel recorded but not confirmed by Slurm; asking again next cycle");
                out.cancelled.push(job.job_id);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}
