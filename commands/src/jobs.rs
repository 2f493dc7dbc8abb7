//! Jobs: submit, cancel, and the reconcile step of the poll cycle.
//!
//! A submission the API acknowledged is never lost and never runs twice:
//! - the submission id (from the `Idempotency-Key`, or fresh) names the job's stream;
//! - before Slurm is called, `JobSubmissionRequested` (the caller, the body's digest, the shape)
//!   is appended as the stream's first event with "no stream" expected: of two requests for one
//!   submission — two replicas, two retries — exactly one wins that append, and only the winner
//!   calls Slurm. `JobSubmitted` (or `JobSubmissionFailed`) follows at the next version;
//! - a retry reads the stream: `JobSubmitted` is answered again, a request still in flight is
//!   waited for briefly and then answered 409 `submission_in_progress`, a request with another
//!   body digest is refused (`idempotency_key_reused`). The request path never lists Slurm's jobs;
//! - the id is stamped into the job's Slurm `comment`. If the submitter stops between the request
//!   and its outcome, the poll cycle ([`settle_submissions`]) looks the submission up in Slurm,
//!   once, by that comment: found, it is adopted (`via: adopted`) as the *recorded* request's
//!   user; not found, `JobSubmissionFailed` frees the key. A Slurm job whose comment names no
//!   recorded request is never adopted ([`reconcile`] logs it and leaves it alone);
//! - `JobSubmitted`'s event id is derived from the submission id, so the API's append and an
//!   adoption can never both land.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use domain::job::{
    Cancel, JobFacts, JobRuleError, JobState, Observed, Verdict, decide_cancel, reconcile_verdict,
};
use domain::submit::{FieldError, JobShape, Warning, canonicalize};
use domain::{
    ClusterId, DomainEvent, Email, JobStateChanged, JobSubmissionFailed, JobSubmissionRequested,
    JobSubmitted, SubmittedVia, WorkspaceId,
};
use eventlog::{EventLog, ExpectedVersion, LogError, Metadata, Position, StreamId};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::slurm::{SlurmError, SlurmJob, SlurmPort, StateReport, stamp_comment};

/// Namespace for submission ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6c75_7374_6572_7261_6964_656d_706f_7465);

/// How long a retry waits for a submission another request is making before answering
/// `submission_in_progress`.
pub const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

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
    /// Another request is making this submission (or made it and stopped before its outcome was
    /// recorded; the poll cycle settles that within [`ADOPT_AFTER`] and a bit).
    #[error("this submission is already in progress; retry in a moment")]
    InProgress,
    /// The `Idempotency-Key` names a submission with another body.
    #[error("this Idempotency-Key was used for a submission with another body")]
    KeyReused,
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

/// `sha256:<hex>` of a canonical body's JSON (object keys sorted: serde_json's map is ordered).
pub fn body_digest(canonical_body: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(canonical_body).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
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
    Ok(load_job(log, stream).await?.map(|j| (j.facts, j.version)))
}

/// A job stream folded, with what cancel needs beyond the facts.
struct LoadedJob {
    facts: JobFacts,
    version: i64,
    /// The position of the first `JobCancelRequested`, if there is one.
    cancel_position: Option<Position>,
}

async fn load_job(log: &dyn EventLog, stream: &StreamId) -> Result<Option<LoadedJob>, JobError> {
    let mut events = Vec::new();
    let mut cancel_position = None;
    let version = crate::fold_stream(log, stream, 0, 500, |e, d| {
        if let Some(d) = d {
            if matches!(d, DomainEvent::JobCancelRequested(_)) && cancel_position.is_none() {
                cancel_position = Some(e.position);
            }
            events.push(d);
        }
        Ok::<_, JobError>(())
    })
    .await?;
    Ok(JobFacts::fold(events).map(|facts| LoadedJob {
        facts,
        version,
        cancel_position,
    }))
}

/// The latest recorded request of a submission.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub request: JobSubmissionRequested,
    /// Its version in the stream.
    pub version: i64,
    pub recorded_at: DateTime<Utc>,
}

/// What a job stream says about its submission.
#[derive(Debug, Default)]
pub struct SubmissionRecord {
    /// The stream's version (as far as it was read: reading stops at `JobSubmitted`).
    pub version: i64,
    /// The latest request, if any (streams written before requests existed have none).
    pub request: Option<RecordedRequest>,
    /// `JobSubmitted`, as the answer to a retry.
    pub submitted: Option<(Submitted, u64)>,
    /// The latest request failed (`JobSubmissionFailed` after it).
    pub failed: bool,
}

impl SubmissionRecord {
    /// A request is recorded and nothing has followed it yet.
    pub fn unsettled(&self) -> Option<&RecordedRequest> {
        self.request
            .as_ref()
            .filter(|_| self.submitted.is_none() && !self.failed)
    }
}

/// Reads a job stream up to its `JobSubmitted`.
pub async fn read_submission(
    log: &dyn EventLog,
    stream: &StreamId,
    submission_id: Uuid,
) -> Result<SubmissionRecord, JobError> {
    let mut out = SubmissionRecord::default();
    'read: loop {
        let batch = log.read_stream(stream, out.version, 100).await?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            out.version = e.stream_version;
            match DomainEvent::decode(&e.event_type, e.schema_version, &e.data)? {
                Some(DomainEvent::JobSubmissionRequested(r)) => {
                    out.request = Some(RecordedRequest {
                        request: r,
                        version: e.stream_version,
                        recorded_at: e.recorded_at,
                    });
                    out.failed = false;
                }
                Some(DomainEvent::JobSubmissionFailed(_)) => out.failed = true,
                Some(DomainEvent::JobSubmitted(j)) => {
                    out.submitted = Some((
                        Submitted {
                            job_id: j.job_id,
                            submission_id,
                            position: e.position,
                            warnings: j.warnings,
                            replayed: true,
                        },
                        j.job_id,
                    ));
                    break 'read;
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Submits jobs. Any number of them, in any number of processes, may submit at once: the
/// write-ahead request's "no stream" append decides which one calls Slurm.
pub struct Submitter {
    clock: std::sync::Arc<dyn eventlog::Clock>,
    /// The node shapes jobs must fit, and the memory per vCPU assumed when a job asks for none.
    shapes: Option<(std::sync::Arc<domain::scaling::Catalog>, u64)>,
    /// The largest job each cluster takes: per `<workspace>/<cluster>`, else the default.
    limits: Option<ClusterLimits>,
}

/// The job limits of every cluster: a default, and overrides by `<workspace>/<cluster>`.
#[derive(Debug, Clone)]
pub struct ClusterLimits {
    pub default: domain::scaling::JobLimits,
    pub clusters: std::collections::BTreeMap<String, domain::scaling::JobLimits>,
}

impl ClusterLimits {
    pub fn of(&self, workspace: &WorkspaceId, cluster: &ClusterId) -> domain::scaling::JobLimits {
        self.clusters
            .get(&format!("{workspace}/{cluster}"))
            .copied()
            .unwrap_or(self.default)
    }
}

impl Default for Submitter {
    fn default() -> Self {
        Self::new(std::sync::Arc::new(eventlog::SystemClock))
    }
}

impl Submitter {
    pub fn new(clock: std::sync::Arc<dyn eventlog::Clock>) -> Self {
        Self {
            clock,
            shapes: None,
            limits: None,
        }
    }

    /// Refuses jobs over their cluster's limits (nodes, CPUs, memory, GPUs).
    pub fn with_limits(mut self, limits: ClusterLimits) -> Self {
        self.limits = Some(limits);
        self
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
        domain::placement::of_shape(catalog, shape, *default_mib)
            .map(|_| ())
            .map_err(|too_big| {
                JobError::Invalid(vec![FieldError {
                    code: "no_shape_fits",
                    field: "job".into(),
                    message: too_big.to_string(),
                }])
            })
    }

    /// Checks a body as [`Self::submit`] does, recording nothing: its canonical form, or every
    /// field error submit would answer. The job estimate uses it, so both refuse alike.
    pub fn validate(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        body: &serde_json::Value,
    ) -> Result<domain::submit::CanonicalSubmit, JobError> {
        let canonical = canonicalize(body).map_err(JobError::Invalid)?;
        if let Some(limits) = &self.limits {
            let memory_field = if canonical.body["job"]
                .get("memory_per_cpu")
                .is_some_and(|v| !v.is_null())
            {
                "job.memory_per_cpu"
            } else {
                "job.memory_per_node"
            };
            let over = limits
                .of(workspace, cluster)
                .check(&canonical.shape, memory_field);
            if !over.is_empty() {
                return Err(JobError::Invalid(over));
            }
        }
        self.check_fits(&canonical.shape)?;
        Ok(canonical)
    }

    /// A shape's hourly rate as submit records it (`None` without a catalog, or when nothing
    /// holds it).
    pub fn rate(&self, shape: &JobShape) -> Option<domain::MicroUsd> {
        self.shapes
            .as_ref()
            .and_then(|(catalog, default_mib)| domain::cost::job_rate(catalog, shape, *default_mib))
    }

    #[tracing::instrument(skip_all, fields(workspace = %s.workspace, cluster = %s.cluster, user = %s.user))]
    pub async fn submit(
        &self,
        log: &dyn EventLog,
        slurm: &dyn SlurmPort,
        s: Submission,
    ) -> Result<Submitted, JobError> {
        let canonical = self.validate(&s.workspace, &s.cluster, &s.body)?;
        let digest = body_digest(&canonical.body);
        let submission_id = match &s.idempotency_key {
            Some(key) => Uuid::new_v5(
                &IDEMPOTENCY_NAMESPACE,
                format!("{}/{}/{}/{key}", s.workspace, s.cluster, s.user).as_bytes(),
            ),
            None => Uuid::now_v7(),
        };
        let stream = stream(&s.cluster, submission_id);
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
        let rate = self.rate(&canonical.shape);
        let metadata = Metadata {
            actor: Some(s.user.to_string()),
            role: Some(s.role),
            via: Some(format!("{:?}", s.via).to_lowercase()),
            correlation_id: Some(submission_id),
            idempotency_key: s.idempotency_key,
            ..Metadata::default()
        };
        let request = DomainEvent::JobSubmissionRequested(JobSubmissionRequested {
            submission_id,
            workspace: s.workspace.clone(),
            cluster_id: s.cluster.clone(),
            user: s.user.clone(),
            via: s.via,
            name: name.clone(),
            template_id: s.template_id.clone(),
            body_digest: digest.clone(),
            shape: canonical.shape,
            rate,
        });

        // Record the request, unless the log already answers this submission.
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(20);
        // The first attempt appends without reading the stream: "no stream" guards it. Without
        // a key the submission id is new (a v7 uuid), so its stream cannot hold anything yet;
        // with one, a first attempt is the common case, and a retry (or a concurrent attempt)
        // meets the version conflict, reads the stream and answers from it.
        let mut fresh = true;
        let keyed = metadata.idempotency_key.is_some();
        // A keyed first attempt that failed otherwise: the stream may still answer (a replay,
        // a reused key, another attempt under way), as it did when it was read first; if it
        // does not, this is the answer.
        let mut blind_error: Option<LogError> = None;
        let request_version = loop {
            let blind = std::mem::take(&mut fresh);
            let seen = if blind {
                SubmissionRecord::default()
            } else {
                read_submission(log, &stream, submission_id).await?
            };
            // A key names one submission: another body under it is refused, unless its last
            // attempt failed (nothing was created, the key is free again).
            let settled_failed = seen.failed && seen.submitted.is_none();
            if let Some(r) = &seen.request
                && !settled_failed
                && r.request.body_digest != digest
            {
                return Err(JobError::KeyReused);
            }
            if let Some((answer, _)) = seen.submitted {
                return Ok(answer);
            }
            if let Some(r) = seen.unsettled() {
                // Another request is making it (or made it and stopped halfway: the poll cycle
                // settles those after ADOPT_AFTER). Wait briefly for its outcome.
                let stale = self.clock.now() - r.recorded_at >= ADOPT_AFTER;
                if stale || started.elapsed() >= IN_FLIGHT_WAIT {
                    return Err(JobError::InProgress);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(250));
                continue;
            }
            if let Some(e) = blind_error.take() {
                return Err(e.into());
            }
            // Nothing recorded, or the last attempt failed: this request makes the submission.
            let expected = match seen.version {
                0 => ExpectedVersion::NoStream,
                v => ExpectedVersion::Exact(v),
            };
            match log
                .append(
                    &stream,
                    expected,
                    &[crate::encode(&request, metadata.clone())?],
                )
                .await
            {
                Ok(o) => break o.stream_version,
                // The stream exists: read it, however long the append took (a retry's answer
                // is in it).
                Err(LogError::VersionConflict { .. }) if blind => continue,
                Err(e) if blind && keyed => {
                    blind_error = Some(e);
                    continue;
                }
                // Another request (another replica, a concurrent retry) got there first.
                Err(LogError::VersionConflict { .. }) if started.elapsed() < IN_FLIGHT_WAIT => {
                    continue;
                }
                Err(LogError::VersionConflict { .. }) => return Err(JobError::InProgress),
                Err(e) => return Err(e.into()),
            }
        };

        let submitted_at = self.clock.now();
        let accepted = match slurm.submit(&body).await {
            Ok(a) => a,
            Err(e @ (SlurmError::Rejected(_) | SlurmError::NotCalled(_))) => {
                // Slurm answered no, or was never called: nothing was created, and the key is
                // free again.
                let failed = DomainEvent::JobSubmissionFailed(JobSubmissionFailed {
                    submission_id,
                    workspace: s.workspace,
                    cluster_id: s.cluster,
                    reason: e.to_string(),
                });
                match log
                    .append(
                        &stream,
                        ExpectedVersion::Exact(request_version),
                        &[crate::encode(&failed, metadata)?],
                    )
                    .await
                {
                    Ok(_) | Err(LogError::VersionConflict { .. }) => {}
                    Err(le) => {
                        tracing::warn!(%submission_id, error = %le, "could not record a refused submission; the poll cycle will settle it")
                    }
                }
                return Err(e.into());
            }
            // Whether Slurm took it is unknown: the poll cycle looks it up after ADOPT_AFTER.
            Err(e) => return Err(e.into()),
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
            user: s.user,
            via: s.via,
            template_id: s.template_id,
            params: s.params,
            body,
            shape: canonical.shape,
            warnings: warnings.clone(),
            submitted_at: Some(submitted_at),
            rate,
        });
        let new = crate::encode(&event, metadata)?.with_id(submitted_event_id(submission_id));
        let mut expected = request_version;
        for _ in 0..2 {
            match log
                .append(
                    &stream,
                    ExpectedVersion::Exact(expected),
                    std::slice::from_ref(&new),
                )
                .await
            {
                // An adoption by the poll cycle got there first (same event id): answer with it.
                Ok(o) if o.already_stored => break,
                Ok(o) => {
                    return Ok(Submitted {
                        job_id: accepted.job_id,
                        submission_id,
                        position: o.last_position,
                        warnings,
                        replayed: false,
                    });
                }
                Err(LogError::VersionConflict { .. }) => {
                    let seen = read_submission(log, &stream, submission_id).await?;
                    if seen.submitted.is_some() {
                        break;
                    }
                    // The poll cycle gave up on this request while Slurm was answering (a call
                    // slower than ADOPT_AFTER): Slurm has the job, so record it after all.
                    if seen.failed {
                        expected = seen.version;
                        continue;
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match read_submission(log, &stream, submission_id)
            .await?
            .submitted
        {
            Some((answer, job_id)) if job_id == accepted.job_id => Ok(answer),
            other => {
                // Another attempt of this submission was recorded meanwhile: ours is surplus.
                tracing::warn!(%submission_id, job_id = accepted.job_id, recorded = ?other.map(|o| o.1), "a slow submission lost to a newer attempt; cancelling its Slurm job");
                if let Err(e) = slurm.cancel(accepted.job_id).await {
                    // Nothing in the log names this Slurm job, so no pass will cancel it later.
                    tracing::error!(%submission_id, job_id = accepted.job_id, error = %e, "the surplus Slurm job of a slow submission could not be cancelled; cancel it in Slurm by hand (scancel)");
                }
                Err(JobError::InProgress)
            }
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
///
/// Idempotent: a job has at most one `JobCancelRequested`. A cancel of a job whose cancel is
/// already recorded (a retry, or several at once) records nothing, asks Slurm again unless the
/// job already ended, and answers the first request's position. Concurrent appends to the
/// stream (a state change, another cancel) are re-read and decided again.
#[tracing::instrument(skip_all, fields(cluster = %request.cluster, submission = %request.submission, caller = %request.caller))]
pub async fn cancel_job(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    request: CancelRequest,
) -> Result<Position, JobError> {
    let (position, job_id, running) = record_cancel(log, request).await?;
    if running {
        slurm.cancel(job_id).await?;
    }
    Ok(position)
}

/// The record half of [`cancel_job`]: checks the caller may and appends `JobCancelRequested`
/// (once per job), without calling Slurm (the cluster's reconcile pass asks it). Returns the
/// position of the job's cancel request, the Slurm job id, and whether the job still runs (so
/// Slurm should be asked).
pub async fn record_cancel(
    log: &dyn EventLog,
    request: CancelRequest,
) -> Result<(Position, u64, bool), JobError> {
    let CancelRequest {
        cluster,
        submission,
        caller,
        caller_is_admin,
        why,
        metadata,
    } = request;
    let stream = stream(&cluster, submission);
    let mut tries = 0;
    loop {
        tries += 1;
        let job = load_job(log, &stream).await?.ok_or(JobError::NotFound)?;
        let facts = &job.facts;
        let events = match decide_cancel(facts, &caller, caller_is_admin, why.clone())? {
            Cancel::Record(events) => events,
            Cancel::AlreadyAsked { unfinished } => match job.cancel_position {
                Some(first) => return Ok((first, facts.submitted.job_id, unfinished)),
                // The fold saw a JobCancelRequested, so the load noted its position: not reached.
                None => return Err(JobError::NotFound),
            },
        };
        let records = events
            .iter()
            .map(|e| crate::encode(e, metadata.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        match log
            .append(&stream, ExpectedVersion::Exact(job.version), &records)
            .await
        {
            Ok(out) => return Ok((out.last_position, facts.submitted.job_id, true)),
            // Someone wrote meanwhile (a cancel, a state change): decide again on what is there.
            Err(LogError::VersionConflict { .. }) if tries < 10 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A job reconcile looks at: one the read side believes is not finished, or one recorded
/// NODE_FAIL (which Slurm's later report corrects).
#[derive(Debug, Clone)]
pub struct OpenJob {
    pub submission_id: Uuid,
    pub job_id: u64,
    /// Its state as the read side has it.
    pub state: JobState,
    /// Whether the read side has a cancel asked for it. With its state, this lets reconcile
    /// skip reading the job's stream when Slurm reports what the read side has.
    pub cancel_requested: bool,
    /// The version of the job's stream the read side's state and cancel reflect, when it knows
    /// (the poll cycle's index does): a change is then appended at it without reading the
    /// stream, which is read only if that append meets a newer event.
    pub version: Option<i64>,
}

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub state_changes: usize,
    pub vanished: usize,
    /// Slurm jobs with a Clusterra comment that names no submission this service recorded (or
    /// names one recorded with another Slurm job): ignored, never adopted.
    pub ignored: usize,
    /// NODE_FAILs overturned by what Slurm reported later.
    pub corrected: usize,
    /// Cancels recorded earlier that Slurm was asked for again (the job still runs).
    pub cancels_resent: usize,
    /// What is left for the next pass that no one job names: a Slurm job whose comment names a
    /// submission being recorded right now.
    pub left: usize,
    /// Open jobs to compare again next pass, whatever changes: a cancel sent again (or not
    /// confirmed), a lookup Slurm did not answer, a write that kept meeting newer events.
    pub recheck: Vec<u64>,
}

/// How long after a submission's request was recorded its outcome may still be on its way (the
/// submitter is waiting for Slurm, then appends `JobSubmitted`): only then does the poll cycle
/// look it up in Slurm ([`settle_submissions`]), and a retry stop waiting for it.
pub const ADOPT_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// Slurm jobs with a Clusterra comment already checked against the log (by cluster, Slurm job id
/// and the comment's submission id): `true` when the log records this submission with this job.
/// The answer never changes (the log only grows), so each is read once per process; the memory is
/// bounded by starting over past 100,000 entries.
type CommentKey = (ClusterId, u64, Uuid);
static COMMENT_VERDICTS: LazyLock<Mutex<HashMap<CommentKey, bool>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn comment_verdicts() -> std::sync::MutexGuard<'static, HashMap<CommentKey, bool>> {
    let mut memo = COMMENT_VERDICTS.lock().unwrap_or_else(|p| p.into_inner());
    if memo.len() > 100_000 {
        memo.clear();
    }
    memo
}

/// The reason recorded with a job Slurm no longer knows.
pub const VANISHED_REASON: &str = "Slurm no longer knows this job (a lookup by its id answered \"Invalid job id specified\") and its final state was never seen; its outcome is unknown";

/// One reconcile pass for a cluster. It starts with a listing of Slurm's jobs — where the port
/// has a listing of states, only the ids and states of the jobs of `open` that are unfinished
/// or NODE_FAIL ([`SlurmPort::states_of`]; see [`reconcile_states`]), else every job in full;
/// if that call fails (no answer, or an answer
/// that is not a v0.0.44 document) nothing is recorded and the error is returned, for the next
/// cycle to retry. Then, for each job of `open`:
/// - listed by Slurm (same id, same submission id): its state is recorded if the log lacks it
///   (no event when nothing changed), and a recorded NODE_FAIL is corrected;
/// - not listed and not finished: Slurm is asked for that one job; only an answer that it does
///   not know it ("invalid job id", or the id is now another job's) records NODE_FAIL, with a
///   reason that says so; an error records nothing (and no further lookups are made this pass);
/// - cancel requested and Slurm still runs it: Slurm is asked to cancel again (a cancel Slurm
///   did not confirm is retried every cycle).
///
/// It adopts nothing: a Slurm job whose `JobSubmitted` never reached the log is adopted only by
/// [`settle_submissions`], from its recorded request.
pub async fn reconcile(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    open: &[OpenJob],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Reconciled, JobError> {
    reconcile_timed(log, slurm, workspace, cluster, open, now, &mut None).await
}

/// [`reconcile`], setting `listing` to how long Slurm took to answer its listing of states
/// (left as it is when the port has no such listing or did not answer): the poll cycle paces
/// the next listing by it.
#[tracing::instrument(skip_all, fields(%workspace, %cluster, open = open.len()))]
pub async fn reconcile_timed(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    open: &[OpenJob],
    now: chrono::DateTime<chrono::Utc>,
    listing: &mut Option<std::time::Duration>,
) -> Result<Reconciled, JobError> {
    let started = std::time::Instant::now();
    if let Some(states) = slurm.states_of(&listed_ids(open)).await? {
        *listing = Some(started.elapsed());
        return reconcile_states(log, slurm, workspace, cluster, open, &states, now).await;
    }
    let listed = slurm.jobs().await?;
    reconcile_listed(log, slurm, workspace, cluster, open, listed, now).await
}

/// The open jobs whose states a pass asks Slurm for: the unfinished ones, and NODE_FAILs (a
/// listing in another state corrects them); sorted, without repeats.
fn listed_ids(open: &[OpenJob]) -> Vec<u64> {
    let mut ids: Vec<u64> = open
        .iter()
        .filter(|j| !j.state.is_terminal() || j.state == JobState::NodeFail)
        .map(|j| j.job_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// How many full job records a pass that listed states reads from Slurm at once.
const LOOKUP_CONCURRENCY: usize = 8;

/// The open jobs a listing of states gives reason to look at in full: those Slurm reports in
/// another state than the read side has (or in a state Clusterra does not know), those it does
/// not list (looked up by id, as in a full pass), those with a recorded cancel Slurm still runs,
/// and NODE_FAILs Slurm lists in another state (a correction). Finished jobs are not looked at
/// otherwise. One hash of the listing, one probe per open job: no job's record is read here.
pub fn differing<'a>(open: &'a [OpenJob], states: &[StateReport]) -> Vec<&'a OpenJob> {
    differing_by_id(open, &by_id(states))
}

/// A listing of states by job id.
fn by_id(states: &[StateReport]) -> HashMap<u64, Option<JobState>> {
    states.iter().map(|r| (r.job_id, r.state)).collect()
}

fn differing_by_id<'a>(
    open: &'a [OpenJob],
    by_id: &HashMap<u64, Option<JobState>>,
) -> Vec<&'a OpenJob> {
    open.iter()
        .filter(|job| {
            let listed = by_id.get(&job.job_id).copied();
            if job.state.is_terminal() {
                return job.state == JobState::NodeFail
                    && matches!(listed, Some(s) if s != Some(JobState::NodeFail));
            }
            match listed {
                None | Some(None) => true,
                Some(Some(s)) => {
                    s != job.state
                        || (job.cancel_requested
                            && matches!(
                                s,
                                JobState::Pending | JobState::Running | JobState::Suspended
                            ))
                }
            }
        })
        .collect()
}

/// [`reconcile`] from a listing of states: only the open jobs [`differing`] names are looked at,
/// their full records read from Slurm by id (a few at once), and then recorded as in a full pass
/// ([`reconcile_listed`]). Slurm's other jobs are not read, so a job whose comment claims a
/// submission this service did not record is not reported here (it is still never adopted:
/// adoption is [`settle_submissions`]', of recorded requests only). A lookup that gets no answer
/// fails the pass and records nothing.
pub async fn reconcile_states(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    open: &[OpenJob],
    states: &[StateReport],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Reconciled, JobError> {
    let listing = by_id(states);
    let todo: Vec<OpenJob> = differing_by_id(open, &listing)
        .into_iter()
        .cloned()
        .collect();
    if todo.is_empty() {
        return Ok(Reconciled::default());
    }
    let lookups: Vec<u64> = todo
        .iter()
        .map(|j| j.job_id)
        .filter(|id| listing.contains_key(id))
        .collect();
    let records: Vec<Result<Option<SlurmJob>, SlurmError>> =
        futures::stream::iter(lookups.into_iter().map(|id| slurm.job(id)))
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .collect()
            .await;
    let mut listed = Vec::with_capacity(records.len());
    for record in records {
        // A job gone between the two calls is not listed: the pass looks it up once more.
        if let Some(job) = record? {
            listed.push(job);
        }
    }
    reconcile_listed(log, slurm, workspace, cluster, &todo, listed, now).await
}

/// [`reconcile`] with Slurm's listing already made: the whole of it for every open job, or (from
/// a port that can tell, [`SlurmPort::jobs_since`]) only the jobs that changed, with `open`
/// holding the open jobs they name and those the read side changed. An open job the listing
/// lacks is looked up by id, as in a full pass.
pub async fn reconcile_listed(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    open: &[OpenJob],
    listed: Vec<SlurmJob>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Reconciled, JobError> {
    let mut done = Reconciled::default();
    let in_slurm: HashMap<u64, SlurmJob> = listed.into_iter().map(|j| (j.job_id, j)).collect();

    let mut known = HashSet::new();
    let mut lookups = true;
    let mut todo = Vec::new();
    for job in open {
        known.insert(job.submission_id);
        let ours = |s: &SlurmJob| s.submission_id() == Some(job.submission_id);
        // Borrowed from the listing: a job's report is copied only when it is to be recorded.
        let listed = in_slurm.get(&job.job_id).filter(|s| ours(s));
        // A finished job is only looked at again to correct a NODE_FAIL, and only when Slurm
        // lists it: no lookups for the past.
        if job.state.is_terminal()
            && (job.state != JobState::NodeFail
                || listed.is_none_or(|s| s.state == JobState::NodeFail))
        {
            continue;
        }
        let (observed, seen) = match listed {
            Some(s) => (Observed::Reported(s.state), Some(Cow::Borrowed(s))),
            None if !lookups => (Observed::NoAnswer, None),
            None => match slurm.job(job.job_id).await {
                Ok(Some(s)) if ours(&s) => (Observed::Reported(s.state), Some(Cow::Owned(s))),
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
            done.recheck.push(job.job_id);
            continue;
        }
        // What the read side has agrees with Slurm and no cancel is to be sent again: nothing
        // to record, and the job's stream is not read (most jobs, most cycles).
        let resend = job.cancel_requested && seen.as_deref().is_some_and(still_cancellable);
        if !resend && reconcile_verdict(job.state, observed) == Verdict::Keep {
            continue;
        }
        todo.push((job.clone(), observed, seen.map(Cow::into_owned)));
    }
    // The jobs that need a record are read and written side by side: their appends share the
    // log's group commits instead of paying one each.
    let outcomes: Vec<Result<Reconciled, JobError>> = futures::stream::iter(
        todo.into_iter()
            .map(|(job, observed, seen)| record_one(log, slurm, cluster, job, observed, seen)),
    )
    .buffer_unordered(RECORD_CONCURRENCY)
    .collect()
    .await;
    for outcome in outcomes {
        let o = outcome?;
        done.state_changes += o.state_changes;
        done.vanished += o.vanished;
        done.corrected += o.corrected;
        done.cancels_resent += o.cancels_resent;
        done.left += o.left;
        done.recheck.extend(o.recheck);
    }

    // Adoption is settle_submissions' (of recorded requests only); here, Slurm jobs that claim
    // a submission id are checked against the log once each, and unknown ones reported.
    let _ = now;
    for s in in_slurm.values() {
        let Some(submission_id) = s.submission_id() else {
            continue;
        };
        if known.contains(&submission_id) {
            continue;
        }
        let memo_key = (cluster.clone(), s.job_id, submission_id);
        let memo = comment_verdicts().get(&memo_key).copied();
        let verdict = match memo {
            Some(v) => Some(v),
            None => {
                let record =
                    read_submission(log, &stream(cluster, submission_id), submission_id).await?;
                let verdict = match (&record.submitted, record.unsettled()) {
                    (Some((_, job_id)), _) => Some(*job_id == s.job_id),
                    // Being submitted right now, or settled by the poll cycle soon: undecided.
                    (None, Some(_)) => None,
                    // No request, or its attempts failed: not a job of this submission.
                    (None, None) => Some(false),
                };
                if let Some(v) = verdict {
                    comment_verdicts().insert(memo_key, v);
                    if !v {
                        tracing::warn!(%workspace, %cluster, job_id = s.job_id, %submission_id, comment = ?s.comment, "a Slurm job's comment names a Clusterra submission this service did not record with it; ignored, not adopted");
                    }
                }
                verdict
            }
        };
        match verdict {
            Some(false) => done.ignored += 1,
            // Being submitted or settled right now: looked at again next pass.
            None => done.left += 1,
            Some(true) => {}
        }
    }
    Ok(done)
}

/// Whether Slurm still holds a job a cancel would stop: a recorded cancel is sent again then.
fn still_cancellable(job: &SlurmJob) -> bool {
    matches!(
        job.state,
        JobState::Pending | JobState::Running | JobState::Suspended
    )
}

/// How many jobs one reconcile reads and records at once.
const RECORD_CONCURRENCY: usize = 64;

/// One job whose Slurm report the read side lacks (or whose cancel is to be sent again): its
/// stream is read, the verdict made on what the log holds, and the change appended at the
/// version read.
async fn record_one(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    cluster: &ClusterId,
    job: OpenJob,
    observed: Observed,
    seen: Option<SlurmJob>,
) -> Result<Reconciled, JobError> {
    let mut done = Reconciled::default();
    let system = crate::system_metadata("poll");
    let stream = stream(cluster, job.submission_id);
    // First on what the read side knows (when it knows the version), then, if the log moved
    // past it, once more on the stream as read.
    let mut known = job.version.map(|v| (job.state, job.cancel_requested, v));
    let mut resent = false;
    for _ in 0..2 {
        let (state, cancel_requested, version) = match known.take() {
            Some(k) => k,
            None => match load(log, &stream).await? {
                Some((facts, v)) => (facts.state, facts.cancel_requested, v),
                None => return Ok(done),
            },
        };
        if !resent && cancel_requested && seen.as_ref().is_some_and(still_cancellable) {
            resent = true;
            // Looked at again next pass until Slurm reports it ended.
            done.recheck.push(job.job_id);
            match slurm.cancel(job.job_id).await {
                Ok(()) => done.cancels_resent += 1,
                Err(e) => {
                    tracing::warn!(job_id = job.job_id, error = %e, "cancel not confirmed by Slurm; asking again next cycle")
                }
            }
        }
        // A job that ended says what it used, in the same append as its end.
        let usage =
            seen.as_ref()
                .and_then(|s| s.usage.clone())
                .map(|usage| domain::JobUsageRecorded {
                    job_id: job.job_id,
                    usage,
                });
        let (change, corrected, vanished) = match (reconcile_verdict(state, observed), &seen) {
            (Verdict::Keep, _) => return Ok(done),
            (Verdict::Change { to, correction }, Some(s)) => (
                JobStateChanged {
                    job_id: job.job_id,
                    from: state,
                    to,
                    reason: if correction && to != JobState::Pending {
                        Some(format!(
                            "correction: Slurm reports this job {to} after it was recorded {state}"
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
                },
                correction,
                false,
            ),
            (Verdict::Change { .. }, None) => return Ok(done),
            (Verdict::Vanished, _) => (
                JobStateChanged {
                    job_id: job.job_id,
                    from: state,
                    to: JobState::NodeFail,
                    reason: Some(VANISHED_REASON.into()),
                    node: None,
                    exit_code: None,
                    at: None,
                    started_at: None,
                },
                false,
                true,
            ),
        };
        let to = change.to;
        let mut events = vec![crate::encode(
            &DomainEvent::JobStateChanged(change),
            system.clone(),
        )?];
        if let Some(u) = usage.clone().filter(|_| to.is_terminal() && !vanished) {
            events.push(crate::encode(
                &DomainEvent::JobUsageRecorded(u),
                system.clone(),
            )?);
        }
        match log
            .append(&stream, ExpectedVersion::Exact(version), &events)
            .await
        {
            Ok(_) => {
                done.state_changes += 1;
                if corrected {
                    done.corrected += 1;
                    tracing::warn!(job_id = job.job_id, from = %state, %to, "Slurm reports a job recorded NODE_FAIL; recording the correction");
                }
                if vanished {
                    done.vanished += 1;
                }
                return Ok(done);
            }
            // Someone (a cancel, another replica) wrote meanwhile: decide again on the stream.
            Err(LogError::VersionConflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    // Still meeting newer events: the next pass sees them.
    done.recheck.push(job.job_id);
    Ok(done)
}

/// A submission whose request is recorded and whose outcome is not (from the `jobs`
/// projection's `submitting` collection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsettled {
    pub submission_id: Uuid,
    /// When its request was recorded.
    pub requested_at: DateTime<Utc>,
}

/// What one settling pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Found in Slurm by their comment and recorded as `JobSubmitted` (`via: adopted`).
    pub adopted: usize,
    /// Not in Slurm: recorded as `JobSubmissionFailed`.
    pub failed: usize,
}

/// How far Slurm's clock may be behind ours when telling whether a Slurm job was submitted after
/// its request was recorded.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::seconds(5);

/// Settles submissions whose request was recorded more than [`ADOPT_AFTER`] before `now` and
/// whose outcome never was (the submitter stopped between the two, or Slurm's answer was lost).
/// Each is looked up in one listing of Slurm's jobs (made only when there is one to settle) by
/// the submission id stamped in the comment — where the port lists states, the jobs are read in
/// full by id, [`SETTLE_LOOKUPS`] new ones per pass, and a submission is failed only once every
/// listed job has been read: found (submitted after its request), it is
/// adopted as `JobSubmitted` with the request's user, name, shape and rate (`via: adopted`; the
/// body itself is not recorded in the request, only its digest); not found,
/// `JobSubmissionFailed` frees its `Idempotency-Key`.
pub async fn settle_submissions(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    unsettled: &[Unsettled],
    now: DateTime<Utc>,
) -> Result<Settled, JobError> {
    let mut done = Settled::default();
    let stale: Vec<&Unsettled> = unsettled
        .iter()
        .filter(|u| now - u.requested_at >= ADOPT_AFTER)
        .collect();
    if stale.is_empty() {
        return Ok(done);
    }
    // Where the port lists states, Slurm's jobs are read in full by id, a bounded number per
    // pass; until every listed job has been read, a submission found nowhere is not yet failed.
    let (listed, complete) = match slurm.states().await? {
        Some(states) => read_commented(slurm, workspace, cluster, &states).await?,
        None => (slurm.jobs().await?, true),
    };
    let mut by_submission: HashMap<Uuid, Vec<SlurmJob>> = HashMap::new();
    for j in listed {
        if let Some(id) = j.submission_id() {
            by_submission.entry(id).or_default().push(j);
        }
    }
    let system = crate::system_metadata("poll");
    for u in stale {
        let stream = stream(cluster, u.submission_id);
        let record = read_submission(log, &stream, u.submission_id).await?;
        let Some(req) = record.unsettled().cloned() else {
            continue; // settled since the caller's list was taken
        };
        let r = &req.request;
        let mut candidates: Vec<&SlurmJob> = by_submission
            .get(&u.submission_id)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        // A job submitted before its request was recorded cannot be this submission's.
        candidates.retain(|j| {
            j.submit_time
                .is_none_or(|t| t >= req.recorded_at - CLOCK_SKEW)
        });
        candidates.sort_by_key(|j| j.job_id);
        if candidates.len() > 1 {
            tracing::warn!(submission_id = %u.submission_id, jobs = ?candidates.iter().map(|j| j.job_id).collect::<Vec<_>>(), "several Slurm jobs carry one submission id; adopting the first");
        }
        if candidates.is_empty() && !complete {
            continue; // Slurm's jobs are not all read yet: looked for again next pass
        }
        let (event, id) = match candidates.first() {
            Some(found) => (
                DomainEvent::JobSubmitted(JobSubmitted {
                    submission_id: u.submission_id,
                    workspace: r.workspace.clone(),
                    cluster_id: r.cluster_id.clone(),
                    job_id: found.job_id,
                    name: r.name.clone(),
                    user: r.user.clone(),
                    via: SubmittedVia::Adopted,
                    template_id: r.template_id.clone(),
                    params: None,
                    body: serde_json::json!({}),
                    shape: r.shape,
                    warnings: vec![Warning {
                        field: "".into(),
                        message: "adopted from Slurm after its submitter stopped between recording the request and recording Slurm's answer; the body sent was not recorded (only its digest)".into(),
                    }],
                    submitted_at: Some(req.recorded_at),
                    rate: r.rate,
                }),
                Some(submitted_event_id(u.submission_id)),
            ),
            None => (
                DomainEvent::JobSubmissionFailed(JobSubmissionFailed {
                    submission_id: u.submission_id,
                    workspace: r.workspace.clone(),
                    cluster_id: r.cluster_id.clone(),
                    reason: format!(
                        "Slurm has no job for this submission {} s after it was requested: its submitter stopped before Slurm took it",
                        ADOPT_AFTER.num_seconds()
                    ),
                }),
                None,
            ),
        };
        let mut new = crate::encode(&event, system.clone())?;
        if let Some(id) = id {
            new = new.with_id(id);
        }
        match log
            .append(&stream, ExpectedVersion::Exact(req.version), &[new])
            .await
        {
            Ok(o) if o.already_stored => {}
            Ok(_) if id.is_some() => {
                tracing::warn!(job_id = candidates[0].job_id, submission_id = %u.submission_id, user = %r.user, "adopted a job Slurm had for a recorded request whose outcome the log lacked");
                done.adopted += 1;
            }
            Ok(_) => {
                tracing::warn!(submission_id = %u.submission_id, "a recorded submission request never reached Slurm; marked failed");
                done.failed += 1;
            }
            // Its submitter recorded the outcome meanwhile.
            Err(LogError::VersionConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// How many Slurm jobs one settling pass reads in full (newest first) when the port lists
/// states: each is read once per process ([`SEEN_COMMENTS`]), so a big cluster's jobs are all
/// read within a few passes, and none is read twice.
const SETTLE_LOOKUPS: usize = 256;

/// Slurm jobs read in full while settling, per cluster (by workspace and cluster: a cluster id
/// names one cluster only within its workspace, and two Slurms number their jobs alike), by job
/// id: the job (kept only when its comment names a submission). A job id names one job while
/// Slurm lists it; a cluster's memory is bounded by starting over past 100,000 entries.
type SeenComments = HashMap<(WorkspaceId, ClusterId), HashMap<u64, Option<SlurmJob>>>;
static SEEN_COMMENTS: LazyLock<Mutex<SeenComments>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Runs `f` on what settling has read of one cluster's Slurm.
fn with_seen<T>(
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    f: impl FnOnce(&mut HashMap<u64, Option<SlurmJob>>) -> T,
) -> T {
    let mut memo = SEEN_COMMENTS.lock().unwrap_or_else(|p| p.into_inner());
    let seen = memo
        .entry((workspace.clone(), cluster.clone()))
        .or_default();
    if seen.len() > 100_000 {
        seen.clear();
    }
    f(seen)
}

/// The jobs of a listing of states whose comment names a submission, read in full by id (at
/// most [`SETTLE_LOOKUPS`] not read before, newest first, 8 at once), and whether every listed
/// job has now been read. A lookup that gets no answer fails the pass.
async fn read_commented(
    slurm: &dyn SlurmPort,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    states: &[StateReport],
) -> Result<(Vec<SlurmJob>, bool), JobError> {
    let mut unread: Vec<u64> = with_seen(workspace, cluster, |seen| {
        states
            .iter()
            .map(|r| r.job_id)
            .filter(|id| !seen.contains_key(id))
            .collect()
    });
    unread.sort_unstable_by(|a, b| b.cmp(a));
    let complete = unread.len() <= SETTLE_LOOKUPS;
    unread.truncate(SETTLE_LOOKUPS);
    let records: Vec<(u64, Result<Option<SlurmJob>, SlurmError>)> = futures::stream::iter(
        unread
            .into_iter()
            .map(|id| async move { (id, slurm.job(id).await) }),
    )
    .buffer_unordered(LOOKUP_CONCURRENCY)
    .collect()
    .await;
    // What was read before a lookup failed is kept, as before; the failure fails the pass.
    let mut read = Vec::with_capacity(records.len());
    let mut failed = None;
    for (id, record) in records {
        match record {
            Ok(job) => read.push((id, job.filter(|j| j.submission_id().is_some()))),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let listed = with_seen(workspace, cluster, |seen| {
        seen.extend(read);
        states
            .iter()
            .filter_map(|r| seen.get(&r.job_id).cloned().flatten())
            .collect()
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok((listed, complete)),
    }
}

/// An open job over its cluster's limits: accepted before the limits, or under bigger ones.
#[derive(Debug, Clone)]
pub struct OversizedJob {
    pub submission_id: Uuid,
    pub job_id: u64,
    /// Which limits it is over, as one sentence.
    pub why: String,
}

/// Fails open jobs that are over their cluster's limits, so they are never planned again (a
/// server that restarts with such a job in its log must start and scale for the others): asks
/// Slurm to cancel each (whatever it answers) and records `JobStateChanged` to FAILED with the
/// reason. Returns how many it recorded.
pub async fn fail_oversized(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    cluster: &ClusterId,
    jobs: &[OversizedJob],
) -> Result<usize, JobError> {
    let system = crate::system_metadata("poll");
    let mut failed = 0;
    for job in jobs {
        let stream = stream(cluster, job.submission_id);
        let Some((facts, version)) = load(log, &stream).await? else {
            continue;
        };
        if facts.state.is_terminal() {
            continue;
        }
        if let Err(e) = slurm.cancel(job.job_id).await {
            tracing::warn!(job_id = job.job_id, error = %e, "could not cancel an oversized job in Slurm; recording it failed anyway");
        }
        let event = DomainEvent::JobStateChanged(JobStateChanged {
            job_id: job.job_id,
            from: facts.state,
            to: JobState::Failed,
            reason: Some(format!(
                "over this cluster's job limits, so it can never be placed: {}",
                job.why
            )),
            node: None,
            exit_code: None,
            at: None,
            started_at: None,
        });
        match log
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                &[crate::encode(&event, system.clone())?],
            )
            .await
        {
            Ok(_) => {
                tracing::warn!(job_id = job.job_id, why = %job.why, "job over the cluster's limits recorded failed");
                failed += 1;
            }
            Err(LogError::VersionConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(job_id: u64, state: JobState, cancel_requested: bool) -> OpenJob {
        OpenJob {
            submission_id: Uuid::now_v7(),
            job_id,
            state,
            cancel_requested,
            version: Some(1),
        }
    }

    fn report(job_id: u64, state: Option<JobState>) -> StateReport {
        StateReport { job_id, state }
    }

    #[test]
    fn a_listing_of_states_names_only_the_jobs_to_read_in_full() {
        use JobState::*;
        let jobs = [
            open(1, Pending, false),   // same state: nothing to do
            open(2, Pending, false),   // now running
            open(3, Running, false),   // not listed: looked up by id
            open(4, Running, false),   // a state Clusterra does not know
            open(5, Running, true),    // cancel recorded, Slurm still runs it
            open(6, Cancelled, true),  // finished: never looked at again
            open(7, NodeFail, false),  // listed as running: a correction
            open(8, NodeFail, false),  // listed as NODE_FAIL: nothing new
            open(9, Completed, false), // finished and listed otherwise: the past stays
            open(10, Failed, false),   // finished and not listed: no lookups for the past
        ];
        let states = [
            report(1, Some(Pending)),
            report(2, Some(Running)),
            report(4, None),
            report(5, Some(Running)),
            report(6, Some(Running)),
            report(7, Some(Running)),
            report(8, Some(NodeFail)),
            report(9, Some(Running)),
            report(42, Some(Running)), // someone else's job
        ];
        let named: Vec<u64> = differing(&jobs, &states).iter().map(|j| j.job_id).collect();
        assert_eq!(named, vec![2, 3, 4, 5, 7]);
        assert!(differing(&jobs[..1], &states).is_empty());
    }
}
