//! Jobs: submit, cancel, and the reconcile step of the poll cycle.
//!
//! A submission the API acknowledged is never lost and never runs twice:
//! - the submission id (from the `Idempotency-Key`, or fresh) names the job's stream, so a retry
//!   finds the first answer in the log and submits nothing;
//! - the id is stamped into the job's Slurm `comment`, so if the process dies between Slurm
//!   accepting the job and `JobSubmitted` being appended, the next reconcile finds the job in
//!   Slurm and adopts it (`via: adopted`);
//! - `JobSubmitted`'s event id is derived from the submission id, so the API's append and an
//!   adoption can never both land.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use domain::job::{
    JobFacts, JobRuleError, JobState, Observed, Verdict, decide_cancel, reconcile_verdict,
};
use domain::submit::{FieldError, JobShape, Warning, canonicalize};
use domain::{
    ClusterId, DomainEvent, Email, JobCancelRequested, JobStateChanged, JobSubmitted, SubmittedVia,
    WorkspaceId,
};
use eventlog::{EventLog, ExpectedVersion, LogError, Metadata, Position, StreamId};
use uuid::Uuid;

use crate::slurm::{SlurmError, SlurmJob, SlurmPort, stamp_comment};

/// Namespace for submission ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6c75_7374_6572_7261_6964_656d_706f_7465);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the submission is not valid")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    #[error(transparent)]
    Rule(#[from] JobRuleError),
    #[error("no such job")]
    NotFound,
    #[error("this submission is already in progress; retry in a moment")]
    InProgress,
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("stored event unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The stream of one job: `job-<cluster>-<submission id>`.
pub fn stream(cluster: &ClusterId, submission: Uuid) -> StreamId {
    StreamId::new(format!("job-{cluster}-{submission}"))
        .unwrap_or_else(|e| unreachable!("slug and uuid make a valid stream id: {e}"))
}

/// A submission, raw or rendered from a template.
#[derive(Debug, Clone)]
pub struct Submission {
    pub workspace: WorkspaceId,
    pub cluster: ClusterId,
    pub user: Email,
    pub role: String,
    pub via: SubmittedVia,
    pub template_id: Option<String>,
    pub params: Option<serde_json::Value>,
    pub body: serde_json::Value,
    pub idempotency_key: Option<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub job_id: u64,
    pub submission_id: Uuid,
    pub position: Position,
    pub warnings: Vec<Warning>,
    /// True when this answers a retry of an earlier submission.
    pub replayed: bool,
}

/// Reads and folds one job stream: the facts and the stream's version.
pub async fn load(
    log: &dyn EventLog,
    stream: &StreamId,
) -> Result<Option<(JobFacts, i64)>, JobError> {
    let mut events = Vec::new();
    let mut version = 0;
    loop {
        let batch = log.read_stream(stream, version, 500).await?;
        let Some(last) = batch.last() else { break };
        version = last.stream_version;
        for e in batch {
            if let Some(d) = DomainEvent::decode(&e.event_type, e.schema_version, &e.data)? {
                events.push(d);
            }
        }
    }
    Ok(JobFacts::fold(events).map(|f| (f, version)))
}

/// Submits jobs; one per process, so concurrent retries of one submission are serialised.
pub struct Submitter {
    in_flight: Mutex<HashSet<Uuid>>,
    clock: std::sync::Arc<dyn eventlog::Clock>,
    /// The node shapes jobs must fit, and the memory per vCPU assumed when a job asks for none.
    shapes: Option<(std::sync::Arc<domain::scaling::Catalog>, u64)>,
}

impl Default for Submitter {
    fn default() -> Self {
        Self::new(std::sync::Arc::new(eventlog::SystemClock))
    }
}

struct InFlight<'a>(&'a Mutex<HashSet<Uuid>>, Uuid);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Submitter {
    pub fn new(clock: std::sync::Arc<dyn eventlog::Clock>) -> Self {
        Self {
            in_flight: Mutex::new(HashSet::new()),
            clock,
            shapes: None,
        }
    }

    /// Refuses jobs that no node shape of `catalog` can hold (one node's share of vCPUs and
    /// memory; `default_mib_per_cpu` when the job asks for no memory).
    pub fn with_shapes(
        mut self,
        catalog: std::sync::Arc<domain::scaling::Catalog>,
        default_mib_per_cpu: u64,
    ) -> Self {
        self.shapes = Some((catalog, default_mib_per_cpu));
        self
    }

    fn check_fits(&self, shape: &JobShape) -> Result<(), JobError> {
        let Some((catalog, default_mib)) = &self.shapes else {
            return Ok(());
        };
        let demand = domain::scaling::Demand::per_node(
            shape.cpus,
            shape.memory_mib,
            shape.nodes,
            *default_mib,
        );
        catalog.place(demand).map(|_| ()).map_err(|too_big| {
            JobError::Invalid(vec![FieldError {
                code: "no_shape_fits",
                field: "job".into(),
                message: too_big.to_string(),
            }])
        })
    }

    pub async fn submit(
        &self,
        log: &dyn EventLog,
        slurm: &dyn SlurmPort,
        s: Submission,
    ) -> Result<Submitted, JobError> {
        let canonical = canonicalize(&s.body).map_err(JobError::Invalid)?;
        self.check_fits(&canonical.shape)?;
        let submission_id = match &s.idempotency_key {
            Some(key) => Uuid::new_v5(
                &IDEMPOTENCY_NAMESPACE,
                format!("{}/{}/{}/{key}", s.workspace, s.cluster, s.user).as_bytes(),
            ),
            None => Uuid::now_v7(),
        };
        let stream = stream(&s.cluster, submission_id);
        if let Some(first) = Self::first_answer(log, &stream, submission_id).await? {
            return Ok(first);
        }
        let _guard = {
            let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(submission_id) {
                return Err(JobError::InProgress);
            }
            InFlight(&self.in_flight, submission_id)
        };
        // Checked again under the guard: a concurrent retry may have finished meanwhile.
        if let Some(first) = Self::first_answer(log, &stream, submission_id).await? {
            return Ok(first);
        }
        let mut body = canonical.body;
        let own_comment = body["job"]
            .get("comment")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        body["job"]["comment"] = serde_json::Value::String(stamp_comment(
            submission_id,
            &s.user,
            own_comment.as_deref(),
        ));
        let name = body["job"]
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("job")
            .to_string();

        let submitted_at = self.clock.now();
        // A retry of a submission whose first attempt reached Slurm but not the log (the append
        // failed, or the client went away): Slurm has the job under this submission id. Record
        // that job instead of submitting a second one.
        let earlier = if s.idempotency_key.is_some() {
            slurm
                .jobs()
                .await?
                .into_iter()
                .find(|j| j.submission_id() == Some(submission_id))
        } else {
            None
        };
        let accepted = match earlier {
            Some(job) => {
                tracing::warn!(job_id = job.job_id, %submission_id, "retry found its job in Slurm; recording it, not submitting again");
                crate::slurm::Accepted {
                    job_id: job.job_id,
                    warnings: Vec::new(),
                }
            }
            None => slurm.submit(&body).await?,
        };
        let mut warnings = canonical.warnings;
        warnings.extend(accepted.warnings.into_iter().map(|m| Warning {
            field: "slurm".into(),
            message: m,
        }));
        let event = DomainEvent::JobSubmitted(JobSubmitted {
            submission_id,
            workspace: s.workspace,
            cluster_id: s.cluster,
            job_id: accepted.job_id,
            name,
            user: s.user.clone(),
            via: s.via,
            template_id: s.template_id,
            params: s.params,
            body,
            shape: canonical.shape,
            warnings: warnings.clone(),
            submitted_at: Some(submitted_at),
            rate: self.shapes.as_ref().and_then(|(catalog, default_mib)| {
                domain::cost::job_rate(catalog, &canonical.shape, *default_mib)
            }),
        });
        let metadata = Metadata {
            actor: Some(s.user.to_string()),
            role: Some(s.role),
            via: Some(format!("{:?}", s.via).to_lowercase()),
            correlation_id: Some(submission_id),
            idempotency_key: s.idempotency_key,
            ..Metadata::default()
        };
        let new = crate::encode(&event, metadata)?.with_id(submitted_event_id(submission_id));
        let out = log.append(&stream, ExpectedVersion::NoStream, &[new]).await;
        match out {
            // An adoption by the poll cycle got there first (same event id): answer with it.
            Ok(o) if o.already_stored => Self::first_answer(log, &stream, submission_id)
                .await?
                .ok_or(JobError::NotFound),
            Ok(o) => Ok(Submitted {
                job_id: accepted.job_id,
                submission_id,
                position: o.last_position,
                warnings,
                replayed: false,
            }),
            // Adopted by a reconcile between Slurm's answer and our append: same job.
            Err(LogError::VersionConflict { .. }) => {
                Self::first_answer(log, &stream, submission_id)
                    .await?
                    .ok_or(JobError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn first_answer(
        log: &dyn EventLog,
        stream: &StreamId,
        submission_id: Uuid,
    ) -> Result<Option<Submitted>, JobError> {
        let first = log.read_stream(stream, 0, 1).await?;
        let Some(e) = first.first() else {
            return Ok(None);
        };
        match DomainEvent::decode(&e.event_type, e.schema_version, &e.data)? {
            Some(DomainEvent::JobSubmitted(j)) => Ok(Some(Submitted {
                job_id: j.job_id,
                submission_id,
                position: e.position,
                warnings: j.warnings,
                replayed: true,
            })),
            _ => Ok(None),
        }
    }
}

/// `JobSubmitted`'s event id for a submission: the same whoever appends it.
pub fn submitted_event_id(submission: Uuid) -> Uuid {
    Uuid::new_v5(&submission, b"JobSubmitted")
}

/// A request to cancel one job.
#[derive(Debug, Clone)]
pub struct CancelRequest {
    pub cluster: ClusterId,
    pub submission: Uuid,
    pub caller: Email,
    pub caller_is_admin: bool,
    pub why: Option<String>,
    pub metadata: Metadata,
}

/// Cancels a job: checks the caller may, records `JobCancelRequested`, asks Slurm. The state
/// change to CANCELLED arrives through the poll cycle, like every other state. `Ok` only when
/// Slurm accepted the request; when it did not (no answer, or a refusal) the error says so, and
/// the request stays recorded: each reconcile pass asks Slurm again while the job runs.
pub async fn cancel_job(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    request: CancelRequest,
) -> Result<Position, JobError> {
    let (position, job_id) = record_cancel(log, request).await?;
    slurm.cancel(job_id).await?;
    Ok(position)
}

/// The record half of [`cancel_job`]: checks the caller may and appends `JobCancelRequested`,
/// without calling Slurm (the cluster's reconcile pass asks it). Returns the position and the
/// Slurm job id.
pub async fn record_cancel(
    log: &dyn EventLog,
    request: CancelRequest,
) -> Result<(Position, u64), JobError> {
    let CancelRequest {
        cluster,
        submission,
        caller,
        caller_is_admin,
        why,
        metadata,
    } = request;
    let stream = stream(&cluster, submission);
    let (facts, version) = load(log, &stream).await?.ok_or(JobError::NotFound)?;
    decide_cancel(facts.state, &facts.submitted.user, &caller, caller_is_admin)?;
    let event = DomainEvent::JobCancelRequested(JobCancelRequested {
        job_id: facts.submitted.job_id,
        by: caller,
        why,
    });
    let out = log
        .append(
            &stream,
            ExpectedVersion::Exact(version),
            &[crate::encode(&event, metadata)?],
        )
        .await?;
    Ok((out.last_position, facts.submitted.job_id))
}

/// A job reconcile looks at: one the read side believes is not finished, or one recorded
/// NODE_FAIL (which Slurm's later report corrects).
#[derive(Debug, Clone)]
pub struct OpenJob {
    pub submission_id: Uuid,
    pub job_id: u64,
    /// Its state as the read side has it.
    pub state: JobState,
}

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub state_changes: usize,
    pub adopted: usize,
    pub vanished: usize,
    /// NODE_FAILs overturned by what Slurm reported later.
    pub corrected: usize,
    /// Cancels recorded earlier that Slurm was asked for again (the job still runs).
    pub cancels_resent: usize,
}

/// How long after Slurm accepted a job its `JobSubmitted` may still be on its way to the log
/// (the API appends it right after Slurm answers): reconcile adopts a job only after this.
pub const ADOPT_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// The reason recorded with a job Slurm no longer knows.
pub const VANISHED_REASON: &str = "Slurm no longer knows this job (a lookup by its id answered \"Invalid job id specified\") and its final state was never seen; its outcome is unknown";

/// One reconcile pass for a cluster. It starts with the list of Slurm's jobs; if that call
/// fails (no answer, or an answer that is not a v0.0.44 document) nothing is recorded and the
/// error is returned, for the next cycle to retry. Then, for each job of `open`:
/// - listed by Slurm (same id, same submission id): its state is recorded if the log lacks it
///   (no event when nothing changed), and a recorded NODE_FAIL is corrected;
/// - not listed and not finished: Slurm is asked for that one job; only an answer that it does
///   not know it ("invalid job id", or the id is now another job's) records NODE_FAIL, with a
///   reason that says so; an error records nothing (and no further lookups are made this pass);
/// - cancel requested and Slurm still runs it: Slurm is asked to cancel again (a cancel Slurm
///   did not confirm is retried every cycle).
///
/// Last, it adopts jobs Slurm has whose `JobSubmitted` never reached the log — once they are
/// older than [`ADOPT_AFTER`] at `now`, so a submission still being recorded is not taken over.
pub async fn reconcile(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    open: &[OpenJob],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Reconciled, JobError> {
    let mut done = Reconciled::default();
    let in_slurm: HashMap<u64, SlurmJob> = slurm
        .jobs()
        .await?
        .into_iter()
        .map(|j| (j.job_id, j))
        .collect();
    let system = crate::system_metadata("poll");

    let mut known = HashSet::new();
    let mut lookups = true;
    for job in open {
        known.insert(job.submission_id);
        let ours = |s: &SlurmJob| s.submission_id() == Some(job.submission_id);
        let listed = in_slurm.get(&job.job_id).filter(|s| ours(s)).cloned();
        // A finished job is only looked at again to correct a NODE_FAIL, and only when Slurm
        // lists it: no lookups for the past.
        if job.state.is_terminal()
            && (job.state != JobState::NodeFail
                || listed
                    .as_ref()
                    .is_none_or(|s| s.state == JobState::NodeFail))
        {
            continue;
        }
        let (observed, seen) = match listed {
            Some(s) => (Observed::Reported(s.state), Some(s)),
            None if !lookups => (Observed::NoAnswer, None),
            None => match slurm.job(job.job_id).await {
                Ok(Some(s)) if ours(&s) => (Observed::Reported(s.state), Some(s)),
                // Slurm knows that id as another job: ours is gone from it.
                Ok(Some(_)) | Ok(None) => (Observed::Unknown, None),
                Err(e) => {
                    tracing::warn!(job_id = job.job_id, error = %e, "Slurm did not answer a job lookup; no verdict on it this cycle");
                    lookups = false;
                    (Observed::NoAnswer, None)
                }
            },
        };
        if observed == Observed::NoAnswer {
            continue;
        }
        let stream = stream(cluster, job.submission_id);
        let Some((facts, version)) = load(log, &stream).await? else {
            continue;
        };
        if let Some(s) = &seen
            && facts.cancel_requested
            && matches!(
                s.state,
                JobState::Pending | JobState::Running | JobState::Suspended
            )
        {
            match slurm.cancel(job.job_id).await {
                Ok(()) => done.cancels_resent += 1,
                Err(e) => {
                    tracing::warn!(job_id = job.job_id, error = %e, "cancel not confirmed by Slurm; asking again next cycle")
                }
            }
        }
        let change = match (reconcile_verdict(facts.state, observed), seen) {
            (Verdict::Keep, _) => continue,
            (Verdict::Change { to, correction }, Some(s)) => {
                if correction {
                    done.corrected += 1;
                    tracing::warn!(job_id = job.job_id, from = %facts.state, to = %to, "Slurm reports a job recorded NODE_FAIL; recording the correction");
                }
                JobStateChanged {
                    job_id: job.job_id,
                    from: facts.state,
                    to,
                    reason: if correction && to != JobState::Pending {
                        Some(format!(
                            "correction: Slurm reports this job {to} after it was recorded {}",
                            facts.state
                        ))
                    } else {
                        s.reason.clone().filter(|r| r != "None")
                    },
                    node: s.node.clone(),
                    exit_code: s.exit_code,
                    at: if to.is_terminal() {
                        s.end_time
                    } else {
                        s.start_time
                    },
                    started_at: s.start_time,
                }
            }
            (Verdict::Change { .. }, None) => continue,
            (Verdict::Vanished, _) => {
                done.vanished += 1;
                JobStateChanged {
                    job_id: job.job_id,
                    from: facts.state,
                    to: JobState::NodeFail,
                    reason: Some(VANISHED_REASON.into()),
                    node: None,
                    exit_code: None,
                    at: None,
                    started_at: None,
                }
            }
        };
        let event = DomainEvent::JobStateChanged(change);
        match log
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                &[crate::encode(&event, system.clone())?],
            )
            .await
        {
            Ok(_) => done.state_changes += 1,
            // Someone (a cancel) wrote meanwhile: the next pass sees it.
            Err(LogError::VersionConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }

    for s in in_slurm.values() {
        let Some(submission_id) = s.submission_id() else {
            continue;
        };
        if known.contains(&submission_id) || s.submit_time.is_some_and(|t| now - t < ADOPT_AFTER) {
            continue;
        }
        let stream = stream(cluster, submission_id);
        if !log.read_stream(&stream, 0, 1).await?.is_empty() {
            continue;
        }
        let Some(user) = s.submitter() else { continue };
        let event = DomainEvent::JobSubmitted(JobSubmitted {
            submission_id,
            workspace: workspace.clone(),
            cluster_id: cluster.clone(),
            job_id: s.job_id,
            name: s.name.clone(),
            user,
            via: SubmittedVia::Adopted,
            template_id: None,
            params: None,
            body: serde_json::json!({}),
            shape: JobShape { cpus: 1, memory_mib: None, nodes: 1, time_limit_minutes: None },
            warnings: vec![Warning {
                field: "".into(),
                message: "adopted from Slurm after the API stopped between Slurm accepting the job and recording it; the original body was not recorded".into(),
            }],
            submitted_at: None,
            rate: None,
        });
        let new = crate::encode(&event, system.clone())?.with_id(submitted_event_id(submission_id));
        match log.append(&stream, ExpectedVersion::NoStream, &[new]).await {
            Ok(_) => {
                tracing::warn!(job_id = s.job_id, %submission_id, "adopted a job Slurm had but the log lacked");
                done.adopted += 1;
            }
            Err(LogError::VersionConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}
