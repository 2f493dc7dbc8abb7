//! Reconcile and cancel when Slurm fails, against a real SQLite log and a scripted Slurm port:
//! a failed list records nothing; a job is declared vanished only after Slurm says it does not
//! know it; a NODE_FAIL is corrected when Slurm reports the job again; a cancel Slurm did not
//! confirm is an error and is asked again by the next pass.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use commands::jobs::{
    CancelRequest, JobError, OpenJob, Submission, Submitter, cancel_job, load, reconcile, stream,
};
use commands::slurm::{Accepted, SlurmError, SlurmJob, SlurmPort, StateReport};
use domain::job::JobState;
use domain::{ClusterId, DomainEvent, Email, SubmittedVia, WorkspaceId};
use eventlog::EventLog;
use serde_json::json;

mod common;

/// A Slurm whose every answer the test decides.
struct Scripted {
    /// The next job id `submit` hands out, and the comment it was given, per id.
    comments: Mutex<HashMap<u64, String>>,
    list: Mutex<Result<Vec<SlurmJob>, SlurmError>>,
    lookup: Mutex<HashMap<u64, Result<Option<SlurmJob>, SlurmError>>>,
    cancel: Mutex<Result<(), SlurmError>>,
    lookups: AtomicUsize,
    cancels: AtomicUsize,
    /// `None`: the port lists no states (full listings only).
    states: Mutex<Option<Result<Vec<StateReport>, SlurmError>>>,
}

impl Scripted {
    fn new() -> Self {
        Self {
            comments: Mutex::new(HashMap::new()),
            list: Mutex::new(Ok(Vec::new())),
            lookup: Mutex::new(HashMap::new()),
            cancel: Mutex::new(Ok(())),
            lookups: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            states: Mutex::new(None),
        }
    }

    /// Job `id` as Slurm would report it, with the comment it was submitted with.
    fn job(&self, id: u64, state: JobState) -> SlurmJob {
        SlurmJob {
            job_id: id,
            name: "j".into(),
            state,
            reason: None,
            exit_code: None,
            node: Some("n1".into()),
            submit_time: None,
            start_time: None,
            end_time: None,
            comment: self.comments.lock().unwrap().get(&id).cloned(),
            usage: None,
        }
    }

    fn lists(&self, answer: Result<Vec<SlurmJob>, SlurmError>) {
        *self.list.lock().unwrap() = answer;
    }

    /// Lists only job `id`, in `state`.
    fn lists_only(&self, id: u64, state: JobState) {
        self.lists(Ok(vec![self.job(id, state)]));
    }

    fn looks_up(&self, id: u64, answer: Result<Option<SlurmJob>, SlurmError>) {
        self.lookup.lock().unwrap().insert(id, answer);
    }

    /// How many single jobs it was asked for.
    fn lookups_made(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }

    /// How many cancels it was asked for.
    fn cancels_sent(&self) -> usize {
        self.cancels.load(Ordering::SeqCst)
    }
}

fn down() -> SlurmError {
    SlurmError::Unavailable("slurmrestd answered HTTP 502 with an HTML page".into())
}

#[async_trait]
impl SlurmPort for Scripted {
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError> {
        let mut comments = self.comments.lock().unwrap();
        let id = comments.len() as u64 + 1;
        comments.insert(id, body["job"]["comment"].as_str().unwrap().to_string());
        Ok(Accepted {
            job_id: id,
            warnings: Vec::new(),
        })
    }
    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.lookup
            .lock()
            .unwrap()
            .get(&job_id)
            .cloned()
            .unwrap_or_else(|| Err(down()))
    }
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        self.list.lock().unwrap().clone()
    }
    async fn cancel(&self, _job_id: u64) -> Result<(), SlurmError> {
        self.cancels.fetch_add(1, Ordering::SeqCst);
        self.cancel.lock().unwrap().clone()
    }
    async fn states(&self) -> Result<Option<Vec<StateReport>>, SlurmError> {
        self.states.lock().unwrap().clone().transpose()
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: eventlog::Store,
    slurm: Scripted,
    workspace: WorkspaceId,
    cluster: ClusterId,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = common::sqlite_store(dir.path()).await;
        World {
            _dir: dir,
            store,
            slurm: Scripted::new(),
            workspace: WorkspaceId::new("default").unwrap(),
            cluster: ClusterId::new("remote").unwrap(),
        }
    }

    /// A new world with one job submitted.
    async fn with_a_job() -> (World, OpenJob) {
        let w = World::new().await;
        let job = w.submit().await;
        (w, job)
    }

    fn log(&self) -> &dyn EventLog {
        self.store.log.as_ref()
    }

    /// Its submitter asking to cancel `job`.
    fn cancel_request(&self, job: &OpenJob) -> CancelRequest {
        CancelRequest {
            cluster: self.cluster.clone(),
            submission: job.submission_id,
            caller: Email::new("ada@lab.org").unwrap(),
            caller_is_admin: false,
            why: None,
            metadata: eventlog::Metadata::default(),
        }
    }

    /// Submits a job through the real submit path; returns it as reconcile sees it.
    async fn submit(&self) -> OpenJob {
        let s = Submitter::default()
            .submit(
                self.log(),
                &self.slurm,
                Submission {
                    workspace: self.workspace.clone(),
                    cluster: self.cluster.clone(),
                    user: Email::new("ada@lab.org").unwrap(),
                    role: "user".into(),
                    via: SubmittedVia::Api,
                    template_id: None,
                    params: None,
                    body: json!({"job": {"name": "j", "script": "#!/bin/bash\ntrue", "environment": ["PATH=/bin"], "current_working_directory": "/mnt/efs"}}),
                    idempotency_key: None,
                },
            )
            .await
            .unwrap();
        OpenJob {
            submission_id: s.submission_id,
            job_id: s.job_id,
            state: JobState::Pending,
            cancel_requested: false,
            version: None,
        }
    }

    async fn reconcile(&self, open: &[OpenJob]) -> Result<commands::jobs::Reconciled, JobError> {
        reconcile(
            self.log(),
            &self.slurm,
            &self.workspace,
            &self.cluster,
            open,
            chrono::Utc::now(),
        )
        .await
    }

    /// Reconciles the one open `job`.
    async fn reconcile_one(&self, job: &OpenJob) -> Result<commands::jobs::Reconciled, JobError> {
        self.reconcile(std::slice::from_ref(job)).await
    }

    async fn state(&self, job: &OpenJob) -> JobState {
        load(self.log(), &stream(&self.cluster, job.submission_id))
            .await
            .unwrap()
            .unwrap()
            .0
            .state
    }

    async fn head(&self) -> i64 {
        self.log().head().await.unwrap().position
    }

    /// The job's `JobStateChanged` events, as (from, to, reason).
    async fn changes(&self, job: &OpenJob) -> Vec<(JobState, JobState, Option<String>)> {
        self.log()
            .read_stream(&stream(&self.cluster, job.submission_id), 0, 100)
            .await
            .unwrap()
            .iter()
            .filter_map(
                |e| match DomainEvent::decode(&e.event_type, 1, &e.data).unwrap() {
                    Some(DomainEvent::JobStateChanged(c)) => Some((c.from, c.to, c.reason)),
                    _ => None,
                },
            )
            .collect()
    }
}

#[tokio::test]
async fn a_failed_list_records_nothing_however_often() {
    let (w, job) = World::with_a_job().await;
    w.slurm.lists_only(job.job_id, JobState::Running);
    w.reconcile_one(&job).await.unwrap();
    assert_eq!(w.state(&job).await, JobState::Running);
    let head = w.head().await;
    let running = OpenJob {
        state: JobState::Running,
        ..job.clone()
    };
    // A proxy's HTML 502 (or a 404 page, or garbage) on the list: an error, nothing appended,
    // no lookups made, cycle after cycle.
    w.slurm.lists(Err(down()));
    w.slurm.looks_up(job.job_id, Ok(None));
    for _ in 0..5 {
        assert!(matches!(
            w.reconcile_one(&running).await,
            Err(JobError::Slurm(SlurmError::Unavailable(_)))
        ));
    }
    assert_eq!(w.head().await, head, "nothing appended");
    assert_eq!(w.slurm.lookups_made(), 0);
    assert_eq!(w.state(&job).await, JobState::Running);
}

#[tokio::test]
async fn a_listing_of_states_is_only_a_hint_and_a_lookup_without_answer_records_nothing() {
    let (w, job) = World::with_a_job().await;
    let head = w.head().await;
    let listed = |state| {
        Some(Ok(vec![StateReport {
            job_id: job.job_id,
            state: Some(state),
        }]))
    };
    // Listed in the state the log has: no lookup, nothing to record.
    *w.slurm.states.lock().unwrap() = listed(JobState::Pending);
    assert_eq!(w.reconcile_one(&job).await.unwrap(), Default::default());
    assert_eq!(w.slurm.lookups_made(), 0);
    // Listed as running, but the full record gets no answer: the pass fails, nothing appended.
    *w.slurm.states.lock().unwrap() = listed(JobState::Running);
    w.slurm.looks_up(job.job_id, Err(down()));
    assert!(matches!(
        w.reconcile_one(&job).await,
        Err(JobError::Slurm(SlurmError::Unavailable(_)))
    ));
    assert_eq!(w.head().await, head, "nothing appended");
    // The listing itself failing: an error, no lookup.
    *w.slurm.states.lock().unwrap() = Some(Err(down()));
    let lookups = w.slurm.lookups_made();
    assert!(w.reconcile_one(&job).await.is_err());
    assert_eq!(w.slurm.lookups_made(), lookups);
    assert_eq!(w.head().await, head, "nothing appended");
    // Only the full record is believed: it says running, and that is recorded.
    *w.slurm.states.lock().unwrap() = listed(JobState::Running);
    w.slurm.looks_up(
        job.job_id,
        Ok(Some(w.slurm.job(job.job_id, JobState::Running))),
    );
    let done = w.reconcile_one(&job).await.unwrap();
    assert_eq!(done.state_changes, 1);
    assert_eq!(w.state(&job).await, JobState::Running);
}

#[tokio::test]
async fn a_job_vanishes_only_when_slurm_says_it_does_not_know_it() {
    let (w, job) = World::with_a_job().await;
    let other = w.submit().await;
    // Slurm's list lacks the first job; the lookup fails: no verdict, nothing appended.
    w.slurm.lists_only(other.job_id, JobState::Pending);
    let head = w.head().await;
    let done = w.reconcile(&[job.clone(), other.clone()]).await.unwrap();
    assert_eq!(done.vanished, 0);
    assert_eq!(w.head().await, head);
    assert_eq!(w.state(&job).await, JobState::Pending);

    // The lookup answers "invalid job id": now it vanished, with a reason that says so.
    w.slurm.looks_up(job.job_id, Ok(None));
    let done = w.reconcile(&[job.clone(), other.clone()]).await.unwrap();
    assert_eq!(done.vanished, 1);
    assert_eq!(w.state(&job).await, JobState::NodeFail);
    let changes = w.changes(&job).await;
    assert_eq!(changes.len(), 1);
    assert!(
        changes[0].2.as_deref().unwrap().contains("Invalid job id"),
        "{changes:?}"
    );
    assert_eq!(
        w.state(&other).await,
        JobState::Pending,
        "the listed one stays"
    );

    // A job whose id Slurm now gives another job (a different submission) is gone too.
    let third = w.submit().await;
    let mut stranger = w.slurm.job(third.job_id, JobState::Running);
    stranger.comment = Some(format!("clusterra:{} bob@lab.org", uuid::Uuid::now_v7()));
    w.slurm.lists(Ok(vec![stranger.clone()]));
    w.slurm.looks_up(third.job_id, Ok(Some(stranger)));
    w.reconcile_one(&third).await.unwrap();
    assert_eq!(w.state(&third).await, JobState::NodeFail);
}

#[tokio::test]
async fn node_fail_is_corrected_when_slurm_reports_the_job_again() {
    let (w, job) = World::with_a_job().await;
    w.slurm.lists(Ok(Vec::new()));
    w.slurm.looks_up(job.job_id, Ok(None));
    w.reconcile_one(&job).await.unwrap();
    assert_eq!(w.state(&job).await, JobState::NodeFail);
    let recorded = OpenJob {
        state: JobState::NodeFail,
        ..job.clone()
    };
    // Still unknown: a recorded NODE_FAIL is never looked up again, never re-recorded.
    let head = w.head().await;
    let lookups = w.slurm.lookups_made();
    w.reconcile_one(&recorded).await.unwrap();
    assert_eq!(w.head().await, head);
    assert_eq!(w.slurm.lookups_made(), lookups);

    // Slurm lists it running (its controller came back with its state): the correction.
    w.slurm.lists_only(job.job_id, JobState::Running);
    let done = w.reconcile_one(&recorded).await.unwrap();
    assert_eq!((done.corrected, done.state_changes), (1, 1));
    assert_eq!(w.state(&job).await, JobState::Running);
    let changes = w.changes(&job).await;
    let last = changes.last().unwrap();
    assert_eq!((last.0, last.1), (JobState::NodeFail, JobState::Running));
    assert!(
        last.2.as_deref().unwrap().contains("correction"),
        "{last:?}"
    );

    // And it ends normally.
    w.slurm.lists_only(job.job_id, JobState::Completed);
    let running = OpenJob {
        state: JobState::Running,
        ..job.clone()
    };
    w.reconcile(&[running]).await.unwrap();
    assert_eq!(w.state(&job).await, JobState::Completed);

    // Other final states are never overturned.
    let done_job = OpenJob {
        state: JobState::Completed,
        ..job.clone()
    };
    w.slurm.lists_only(job.job_id, JobState::Running);
    let head = w.head().await;
    w.reconcile(&[done_job]).await.unwrap();
    assert_eq!(w.head().await, head);
}

#[tokio::test]
async fn a_cancel_slurm_did_not_confirm_is_an_error_and_is_asked_again() {
    let (w, job) = World::with_a_job().await;
    w.slurm.lists_only(job.job_id, JobState::Running);
    w.reconcile_one(&job).await.unwrap();
    *w.slurm.cancel.lock().unwrap() = Err(down());
    let request = w.cancel_request(&job);
    let err = cancel_job(w.log(), &w.slurm, request).await.unwrap_err();
    assert!(
        matches!(err, JobError::Slurm(SlurmError::Unavailable(_))),
        "{err:?}"
    );
    let (facts, _) = load(w.log(), &stream(&w.cluster, job.submission_id))
        .await
        .unwrap()
        .unwrap();
    assert!(facts.cancel_requested, "the request is recorded");
    assert_eq!(w.slurm.cancels_sent(), 1);

    // Each pass asks again while Slurm still runs it; once Slurm takes it, the state follows.
    let running = OpenJob {
        state: JobState::Running,
        cancel_requested: true,
        ..job.clone()
    };
    let done = w.reconcile_one(&running).await.unwrap();
    assert_eq!(done.cancels_resent, 0, "still not confirmed");
    assert_eq!(w.slurm.cancels_sent(), 2);
    *w.slurm.cancel.lock().unwrap() = Ok(());
    let done = w.reconcile_one(&running).await.unwrap();
    assert_eq!(done.cancels_resent, 1);
    w.slurm.lists_only(job.job_id, JobState::Cancelled);
    w.reconcile(&[running]).await.unwrap();
    assert_eq!(w.state(&job).await, JobState::Cancelled);
    assert_eq!(w.slurm.cancels_sent(), 3, "not asked once over");
}

#[tokio::test]
async fn a_change_made_on_a_stale_version_is_decided_again_on_the_stream() {
    let (w, job) = World::with_a_job().await;
    let (_, version) = load(w.log(), &stream(&w.cluster, job.submission_id))
        .await
        .unwrap()
        .unwrap();
    // The read side believes the job pending at an older version; the log has moved on (the
    // job was cancelled meanwhile) and Slurm reports it running: the append at the old version
    // conflicts, the stream is read, and the change is recorded from what the log holds.
    let request = w.cancel_request(&job);
    cancel_job(w.log(), &w.slurm, request).await.unwrap();
    let stale = OpenJob {
        version: Some(version),
        ..job.clone()
    };
    w.slurm.lists_only(job.job_id, JobState::Running);
    let done = w.reconcile_one(&stale).await.unwrap();
    assert_eq!(done.state_changes, 1, "{done:?}");
    assert_eq!(w.state(&job).await, JobState::Running);
    // And at the version the log is at, the change goes in without a conflict.
    let (_, now) = load(w.log(), &stream(&w.cluster, job.submission_id))
        .await
        .unwrap()
        .unwrap();
    let current = OpenJob {
        state: JobState::Running,
        version: Some(now),
        ..job.clone()
    };
    w.slurm.lists_only(job.job_id, JobState::Completed);
    let done = w.reconcile(&[current]).await.unwrap();
    assert_eq!(
        (done.state_changes, done.left, done.recheck.len()),
        (1, 0, 0),
        "{done:?}"
    );
    assert_eq!(w.state(&job).await, JobState::Completed);
}
