//! The poll cycle's reconcile and the submit path's write-ahead request against real SQLite, the
//! real local executor and a fake Slurm: a crash between Slurm accepting a job and the log
//! recording it (an append failed on purpose) is settled by adopting the recorded request; a
//! Slurm job with a forged comment is never adopted; one key makes one job however many ask at
//! once; a keyed retry whose request append fails is answered from its stream; cancels are
//! idempotent.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use commands::jobs::{
    JobError, OpenJob, Reconciled, Settled, Submission, Submitter, Unsettled, reconcile,
    settle_submissions, stream,
};
use commands::slurm::{Accepted, SlurmError, SlurmJob, SlurmPort, StateReport};
use domain::job::{JobFacts, JobState};
use domain::{ClusterId, DomainEvent, Email, SubmittedVia, WorkspaceId};
use eventlog::{
    AppendOutcome, EventLog, ExpectedVersion, Head, LogError, NewEvent, Position, RecordedEvent,
    StreamId,
};
use gateways::local::{LocalExecutor, LocalSettings};
use serde_json::json;
use tokio::sync::watch;

mod common;

/// An event log that fails the next append of one event type when armed: `JobSubmitted`, the
/// crash window; `JobSubmissionRequested`, a write path that fails.
struct FailingLog {
    inner: Arc<dyn EventLog>,
    armed: AtomicBool,
    fails: &'static str,
}

#[async_trait]
impl EventLog for FailingLog {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, LogError> {
        if events.iter().any(|e| e.event_type == self.fails)
            && self.armed.swap(false, Ordering::SeqCst)
        {
            return Err(LogError::Corrupt(
                "injected: the process died before the append".into(),
            ));
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        self.inner.read_stream(s, after, limit).await
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        self.inner.read_all(after, limit).await
    }
    async fn head(&self) -> Result<Head, LogError> {
        self.inner.head().await
    }
    fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.watch_head()
    }
    fn backend(&self) -> &'static str {
        "failing"
    }
}

impl FailingLog {
    /// `inner`, armed: its next `JobSubmitted` append fails.
    fn failing_next_submit(inner: Arc<dyn EventLog>) -> FailingLog {
        FailingLog {
            inner,
            armed: AtomicBool::new(true),
            fails: "JobSubmitted",
        }
    }

    /// `inner`, armed: its next `JobSubmissionRequested` append fails.
    fn failing_next_request(inner: Arc<dyn EventLog>) -> FailingLog {
        FailingLog {
            fails: "JobSubmissionRequested",
            ..Self::failing_next_submit(inner)
        }
    }
}

/// A keyed submit appends its request before reading its stream. When that append fails for
/// another reason than a conflict, the stream still answers a retry (as it did when it was read
/// first); a key the stream knows nothing of gets the append's error, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_retry_is_answered_from_its_stream_when_the_request_append_fails() {
    let (_dir, store, slurm) = setup().await;
    let (_, cluster, _) = ids();
    let first = Submitter::default()
        .submit(store.log.as_ref(), &slurm, submission("k-write"))
        .await
        .unwrap();
    let failing = FailingLog::failing_next_request(store.log.clone());
    let retry = Submitter::default()
        .submit(&failing, &slurm, submission("k-write"))
        .await
        .unwrap();
    assert!(
        !failing.armed.load(Ordering::SeqCst),
        "the append was tried"
    );
    assert!(retry.replayed);
    assert_eq!(
        (retry.job_id, retry.submission_id),
        (first.job_id, first.submission_id)
    );

    let failing = FailingLog::failing_next_request(store.log.clone());
    let head = store.log.head().await.unwrap().position;
    let err = Submitter::default()
        .submit(&failing, &slurm, submission("k-never"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::Log(LogError::Corrupt(_))),
        "{err:?}"
    );
    assert_eq!(store.log.head().await.unwrap().position, head);
    let never = commands::jobs::read_submission(
        store.log.as_ref(),
        &stream(&cluster, first.submission_id),
        first.submission_id,
    )
    .await
    .unwrap();
    assert!(
        never.submitted.is_some(),
        "the first key's job is untouched"
    );
}

/// A fresh SQLite log and local executor in a temp dir.
async fn setup() -> (tempfile::TempDir, eventlog::Store, LocalExecutor) {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let slurm = LocalExecutor::open(
        LocalSettings {
            state_dir: dir.path().join("ex"),
            efs_root: dir.path().join("efs"),
            grace: Duration::from_millis(200),
            minute: Duration::from_secs(60),
            slots: 4,
            nodes: None,
            user: gateways::jobuser::JobUser::current(),
        },
        chrono::Utc::now(),
    )
    .unwrap();
    (dir, store, slurm)
}

fn ids() -> (WorkspaceId, ClusterId, Email) {
    (
        WorkspaceId::new("default").unwrap(),
        ClusterId::new("local").unwrap(),
        Email::new("ada@lab.org").unwrap(),
    )
}

fn submission(key: &str) -> Submission {
    let (workspace, cluster, user) = ids();
    Submission {
        workspace,
        cluster,
        user,
        role: "user".into(),
        via: SubmittedVia::Api,
        template_id: None,
        params: None,
        body: json!({"job": {"name": "adopt-me", "script": "#!/bin/bash\nsleep 0.2", "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}),
        idempotency_key: Some(key.into()),
    }
}

/// The event types of a job stream, in order.
async fn history(log: &dyn EventLog, cluster: &ClusterId, submission: uuid::Uuid) -> Vec<String> {
    log.read_stream(&stream(cluster, submission), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// The submission id a keyed submission of `ids()` gets (the one in its Slurm comment).
async fn submission_id_in_slurm(slurm: &dyn SlurmPort) -> uuid::Uuid {
    let jobs = slurm.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs[0].submission_id().unwrap()
}

/// A clock a fixed time ahead of the system's.
struct Ahead(chrono::Duration);

impl eventlog::Clock for Ahead {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.0
    }
}

fn unsettled(submission_id: uuid::Uuid) -> Vec<Unsettled> {
    vec![Unsettled {
        submission_id,
        requested_at: chrono::Utc::now(),
    }]
}

/// Settles `unsettled` requests of the `default` workspace's `cluster` as of `now`.
async fn settle(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    cluster: &ClusterId,
    unsettled: &[Unsettled],
    now: chrono::DateTime<chrono::Utc>,
) -> Settled {
    let workspace = WorkspaceId::new("default").unwrap();
    settle_submissions(log, slurm, &workspace, cluster, unsettled, now)
        .await
        .unwrap()
}

/// Settles the one request `submission` as of [`later_now`], past the adoption grace.
async fn settle_later(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    cluster: &ClusterId,
    submission: uuid::Uuid,
) -> Settled {
    settle(log, slurm, cluster, &unsettled(submission), later_now()).await
}

/// Reconciles the `default` workspace's `cluster` against `open`, as of [`later_now`].
async fn reconcile_later(
    log: &dyn EventLog,
    slurm: &dyn SlurmPort,
    cluster: &ClusterId,
    open: &[OpenJob],
) -> Reconciled {
    let workspace = WorkspaceId::new("default").unwrap();
    reconcile(log, slurm, &workspace, cluster, open, later_now())
        .await
        .unwrap()
}

/// What the log holds of a submission's job.
async fn job_facts(log: &dyn EventLog, cluster: &ClusterId, submission: uuid::Uuid) -> JobFacts {
    commands::jobs::load(log, &stream(cluster, submission))
        .await
        .unwrap()
        .unwrap()
        .0
}

/// The submission id in a job stream's id (`job-local-<id>`).
fn submission_of(stream_id: &str) -> uuid::Uuid {
    stream_id.rsplit("local-").next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_request_whose_outcome_the_log_missed_is_adopted_once_as_its_user() {
    let (_dir, store, slurm) = setup().await;
    let log = FailingLog::failing_next_submit(store.log.clone());
    let submitter = Submitter::default();
    let (_, cluster, _) = ids();

    let err = submitter
        .submit(&log, &slurm, submission("k1"))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Log(_)), "{err:?}");
    let submission_id = submission_id_in_slurm(&slurm).await;
    let job_id = slurm.jobs().await.unwrap()[0].job_id;
    assert_eq!(
        history(&log, &cluster, submission_id).await,
        ["JobSubmissionRequested"],
        "the request was recorded before Slurm was called; its outcome was lost"
    );

    // A retry while the outcome is unknown neither submits again nor waits forever; it never
    // lists Slurm's jobs (the request path has no Slurm scan any more).
    let later = Submitter::new(Arc::new(Ahead(commands::jobs::ADOPT_AFTER)));
    let err = later
        .submit(&log, &slurm, submission("k1"))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::InProgress), "{err:?}");
    assert_eq!(slurm.jobs().await.unwrap().len(), 1);

    // Reconcile does not adopt (it only follows known jobs); settling does, once the request is
    // older than the grace, as the recorded user.
    let done = reconcile_later(&log, &slurm, &cluster, &[]).await;
    assert_eq!(done.ignored, 0, "its request is recorded: not a forgery");
    let now = chrono::Utc::now();
    let early = settle(&log, &slurm, &cluster, &unsettled(submission_id), now).await;
    assert_eq!(early, Settled::default(), "still within the grace");
    let settled = settle_later(&log, &slurm, &cluster, submission_id).await;
    assert_eq!(settled.adopted, 1);
    let events = log
        .read_stream(&stream(&cluster, submission_id), 0, 10)
        .await
        .unwrap();
    match DomainEvent::decode(&events[1].event_type, 1, &events[1].data).unwrap() {
        Some(DomainEvent::JobSubmitted(j)) => {
            assert_eq!(
                (j.job_id, j.via, j.user.as_str(), j.name.as_str()),
                (job_id, SubmittedVia::Adopted, "ada@lab.org", "adopt-me")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        settle_later(&log, &slurm, &cluster, submission_id).await,
        Settled::default(),
        "adopted once"
    );

    // The client's retry gets the adopted job and nothing runs twice.
    let retry = submitter
        .submit(&log, &slurm, submission("k1"))
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.job_id, job_id);
    assert_eq!(slurm.jobs().await.unwrap().len(), 1);

    // The state follows; once final, reconcile records nothing more.
    let open = [OpenJob {
        submission_id,
        job_id: retry.job_id,
        state: JobState::Pending,
        cancel_requested: false,
        version: None,
    }];
    let mut final_state = None;
    for _ in 0..100 {
        reconcile_later(&log, &slurm, &cluster, &open).await;
        let facts = job_facts(&log, &cluster, submission_id).await;
        if facts.state.is_terminal() {
            final_state = Some(facts.state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(final_state, Some(JobState::Completed));
    let head = log.head().await.unwrap().position;
    let done = reconcile_later(&log, &slurm, &cluster, &open).await;
    assert_eq!(
        (done.state_changes, log.head().await.unwrap().position),
        (0, head),
        "no event when nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_vanished_from_slurm_gets_a_final_state_that_says_so() {
    let (_dir, store, slurm) = setup().await;
    let submitter = Submitter::default();
    let (_, cluster, _) = ids();
    let submitted = submitter
        .submit(store.log.as_ref(), &slurm, submission("k2"))
        .await
        .unwrap();
    // Pretend the log knows a job id Slurm never had (e.g. MinJobAge purged it while we were down).
    let ghost = OpenJob {
        submission_id: submitted.submission_id,
        job_id: 9_999,
        state: JobState::Pending,
        cancel_requested: false,
        version: None,
    };
    let done = reconcile_later(store.log.as_ref(), &slurm, &cluster, &[ghost]).await;
    assert_eq!(done.vanished, 1);
    let facts = job_facts(store.log.as_ref(), &cluster, submitted.submission_id).await;
    assert_eq!(facts.state, JobState::NodeFail);
}

/// A Slurm that only lists what it is told to, and accepts submissions after `delay` (or fails
/// them with `fail`).
#[derive(Default)]
struct FakeSlurm {
    jobs: std::sync::Mutex<Vec<SlurmJob>>,
    delay: Duration,
    fail: std::sync::Mutex<Option<SlurmError>>,
    submits: std::sync::atomic::AtomicUsize,
    lists: std::sync::atomic::AtomicUsize,
    /// Answers `states()` (as slurmrestd does) instead of `None`.
    lists_states: bool,
    lookups: std::sync::atomic::AtomicUsize,
}

impl FakeSlurm {
    fn with(jobs: Vec<SlurmJob>) -> Self {
        FakeSlurm {
            jobs: std::sync::Mutex::new(jobs),
            ..FakeSlurm::default()
        }
    }
}

fn slurm_job(job_id: u64, comment: &str, submit_time: chrono::DateTime<chrono::Utc>) -> SlurmJob {
    SlurmJob {
        job_id,
        name: "forged".into(),
        state: JobState::Running,
        reason: None,
        exit_code: None,
        node: Some("n1".into()),
        submit_time: Some(submit_time),
        start_time: Some(submit_time),
        end_time: None,
        comment: Some(comment.into()),
        usage: None,
    }
}

#[async_trait]
impl SlurmPort for FakeSlurm {
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if let Some(e) = self.fail.lock().unwrap().take() {
            return Err(e);
        }
        let mut jobs = self.jobs.lock().unwrap();
        let job_id = 1_000 + jobs.len() as u64;
        jobs.push(SlurmJob {
            state: JobState::Pending,
            name: body["job"]["name"].as_str().unwrap_or("").into(),
            ..slurm_job(
                job_id,
                body["job"]["comment"].as_str().unwrap(),
                chrono::Utc::now(),
            )
        });
        Ok(Accepted {
            job_id,
            warnings: Vec::new(),
        })
    }
    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .find(|j| j.job_id == job_id)
            .cloned())
    }
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        Ok(self.jobs.lock().unwrap().clone())
    }
    async fn cancel(&self, _job_id: u64) -> Result<(), SlurmError> {
        Ok(())
    }
    async fn states(&self) -> Result<Option<Vec<StateReport>>, SlurmError> {
        Ok(self.lists_states.then(|| {
            self.jobs
                .lock()
                .unwrap()
                .iter()
                .map(|j| StateReport {
                    job_id: j.job_id,
                    state: Some(j.state),
                })
                .collect()
        }))
    }
}

async fn sqlite_log() -> (tempfile::TempDir, eventlog::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    (dir, store)
}

/// Submits `key` to `slurm` while the log fails the `JobSubmitted` append: Slurm takes the job,
/// the log records only the request. Returns the job Slurm took.
async fn submit_losing_the_outcome(
    store: &eventlog::Store,
    slurm: &FakeSlurm,
    key: &str,
) -> SlurmJob {
    let request_log = FailingLog::failing_next_submit(store.log.clone());
    Submitter::default()
        .submit(&request_log, slurm, submission(key))
        .await
        .unwrap_err();
    slurm.jobs.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slurm_job_with_a_forged_comment_is_never_adopted() {
    let (_dir, store) = sqlite_log().await;
    let (_, cluster, _) = ids();
    // Someone with Slurm access submits a job whose comment claims a submission of the victim's,
    // long enough ago that the old rule (adopt any commented job older than 60 s) took it.
    let forged_id = uuid::Uuid::now_v7();
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let slurm = FakeSlurm::with(vec![slurm_job(
        77,
        &format!("clusterra:{forged_id} victim@lab.org"),
        long_ago,
    )]);
    let log = store.log.as_ref();
    for _ in 0..3 {
        let done = reconcile_later(log, &slurm, &cluster, &[]).await;
        assert_eq!(done.ignored, 1, "reported as unknown, every cycle");
        assert_eq!(done.state_changes, 0);
    }
    // Settling only looks at recorded requests: a made-up one is not in the log, so nothing.
    let settled = settle_later(log, &slurm, &cluster, forged_id).await;
    assert_eq!(settled, Settled::default());
    assert_eq!(
        log.head().await.unwrap().position,
        0,
        "nothing was recorded: no job, nobody billed"
    );

    // A forged job that claims a real keyed submission's id (ids from keys are predictable) is
    // not adopted either: it was in Slurm before the request was recorded.
    let request_log = FailingLog::failing_next_submit(store.log.clone());
    let real = FakeSlurm::default();
    let err = Submitter::default()
        .submit(&request_log, &real, submission("k-forged"))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Log(_)), "{err:?}");
    let real_job = real.jobs().await.unwrap()[0].clone();
    let submission_id = real_job.submission_id().unwrap();
    real.jobs.lock().unwrap().insert(
        0,
        slurm_job(
            5,
            &format!("clusterra:{submission_id} mallory@lab.org"),
            long_ago,
        ),
    );
    let settled = settle_later(log, &real, &cluster, submission_id).await;
    assert_eq!(settled.adopted, 1);
    let facts = job_facts(log, &cluster, submission_id).await;
    assert_eq!(
        (facts.submitted.job_id, facts.submitted.user.as_str()),
        (real_job.job_id, "ada@lab.org"),
        "the job submitted after the request, as the recorded user"
    );
    let done = reconcile_later(log, &real, &cluster, &[]).await;
    assert_eq!(done.ignored, 1, "the forged twin is reported, not adopted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slurm_never_got_is_marked_failed_and_frees_its_key() {
    let (_dir, store) = sqlite_log().await;
    let (_, cluster, _) = ids();
    let log = store.log.as_ref();
    let slurm = FakeSlurm::default();
    *slurm.fail.lock().unwrap() = Some(SlurmError::Unavailable("connection reset".into()));
    let err = Submitter::default()
        .submit(log, &slurm, submission("k-lost"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JobError::Slurm(SlurmError::Unavailable(_))),
        "{err:?}"
    );
    // Whether Slurm took it is unknown: the request stays open, and retries do not resubmit.
    let submitter = Submitter::new(Arc::new(Ahead(commands::jobs::ADOPT_AFTER)));
    assert!(matches!(
        submitter
            .submit(log, &slurm, submission("k-lost"))
            .await
            .unwrap_err(),
        JobError::InProgress
    ));
    assert_eq!(slurm.submits.load(Ordering::SeqCst), 1);
    assert_eq!(
        slurm.lists.load(Ordering::SeqCst),
        0,
        "no Slurm scan on the request path"
    );
    let key_stream = log
        .read_all(0, 10)
        .await
        .unwrap()
        .first()
        .map(|e| e.stream_id.clone())
        .unwrap();
    let submission_id = submission_of(&key_stream);
    let settled = settle_later(log, &slurm, &cluster, submission_id).await;
    assert_eq!(settled.failed, 1);
    assert_eq!(slurm.lists.load(Ordering::SeqCst), 1, "looked up once");

    // The key is free again: the retry submits.
    let ok = Submitter::default()
        .submit(log, &slurm, submission("k-lost"))
        .await
        .unwrap();
    assert!(!ok.replayed);
    assert_eq!(
        history(log, &cluster, submission_id).await,
        [
            "JobSubmissionRequested",
            "JobSubmissionFailed",
            "JobSubmissionRequested",
            "JobSubmitted"
        ]
    );

    // Slurm refusing a job, or a call never made (an open breaker, too many calls under way),
    // records the failure at once: nothing reached Slurm, and the retry goes ahead without
    // waiting.
    for (key, error) in [
        ("k-refused", SlurmError::Rejected(vec!["no".into()])),
        (
            "k-not-called",
            SlurmError::NotCalled("calls are paused".into()),
        ),
    ] {
        let expected = std::mem::discriminant(&error);
        *slurm.fail.lock().unwrap() = Some(error);
        let jobs = slurm.jobs.lock().unwrap().len();
        let err = Submitter::default()
            .submit(log, &slurm, submission(key))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, JobError::Slurm(e) if std::mem::discriminant(e) == expected),
            "{key}: {err:?}"
        );
        let again = Submitter::default()
            .submit(log, &slurm, submission(key))
            .await
            .unwrap();
        assert!(!again.replayed, "{key}");
        assert_eq!(
            history(log, &cluster, again.submission_id).await,
            [
                "JobSubmissionRequested",
                "JobSubmissionFailed",
                "JobSubmissionRequested",
                "JobSubmitted"
            ],
            "{key}"
        );
        assert_eq!(
            slurm.jobs.lock().unwrap().len(),
            jobs + 1,
            "{key}: one job made"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_big_slurm_settling_reads_jobs_by_id_a_few_hundred_a_pass_and_fails_only_after_all() {
    let (_dir, store) = sqlite_log().await;
    let (_, cluster, _) = ids();
    let log = store.log.as_ref();
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut foreign: Vec<SlurmJob> = (1..=600)
        .map(|id| slurm_job(id, "someone else's", long_ago))
        .collect();
    for j in &mut foreign {
        j.comment = None;
    }
    let slurm = FakeSlurm {
        lists_states: true,
        ..FakeSlurm::with(foreign)
    };
    // A: Slurm never got it. B: Slurm took it, and its `JobSubmitted` never reached the log.
    *slurm.fail.lock().unwrap() = Some(SlurmError::Unavailable("connection reset".into()));
    Submitter::default()
        .submit(log, &slurm, submission("k-never-sent"))
        .await
        .unwrap_err();
    let taken = submit_losing_the_outcome(&store, &slurm, "k-taken").await;
    let b = taken.submission_id().unwrap();
    let requests: Vec<uuid::Uuid> = log
        .read_all(0, 10)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "JobSubmissionRequested")
        .map(|e| submission_of(&e.stream_id))
        .collect();
    let a = *requests.iter().find(|id| **id != b).unwrap();
    let both = [unsettled(a), unsettled(b)].concat();

    // Newest first: B's job is read in the first pass and adopted; A is not failed while
    // Slurm's jobs are not all read.
    let first = settle(log, &slurm, &cluster, &both, later_now()).await;
    assert_eq!((first.adopted, first.failed), (1, 0));
    let second = settle_later(log, &slurm, &cluster, a).await;
    assert_eq!(second, Settled::default(), "89 jobs still unread");
    let third = settle_later(log, &slurm, &cluster, a).await;
    assert_eq!((third.adopted, third.failed), (0, 1));
    assert_eq!(
        slurm.lookups.load(Ordering::SeqCst),
        601,
        "each job read once"
    );
    assert_eq!(
        slurm.lists.load(Ordering::SeqCst),
        0,
        "never listed in full"
    );
    let facts = job_facts(log, &cluster, b).await;
    assert_eq!(facts.submitted.job_id, taken.job_id);
    assert_eq!(
        history(log, &cluster, a).await,
        ["JobSubmissionRequested", "JobSubmissionFailed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_key_make_one_job_and_another_body_is_refused() {
    let (_dir, store) = sqlite_log().await;
    let log = store.log.clone();
    let slurm = Arc::new(FakeSlurm {
        delay: Duration::from_millis(300),
        ..FakeSlurm::default()
    });
    // Separate submitters: as two replicas have (no shared in-process guard).
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (log, slurm) = (log.clone(), slurm.clone());
        tasks.push(tokio::spawn(async move {
            Submitter::default()
                .submit(log.as_ref(), slurm.as_ref(), submission("same"))
                .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().job_id);
    }
    assert_eq!(slurm.submits.load(Ordering::SeqCst), 1, "one call to Slurm");
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the one job");

    let mut other = submission("same");
    other.body["job"]["name"] = json!("something-else");
    let err = Submitter::default()
        .submit(log.as_ref(), slurm.as_ref(), other)
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::KeyReused), "{err:?}");
    // The same body again (a plain retry) is answered.
    assert!(
        Submitter::default()
            .submit(log.as_ref(), slurm.as_ref(), submission("same"))
            .await
            .unwrap()
            .replayed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancels_record_one_request_and_answer_its_position() {
    let (_dir, store) = sqlite_log().await;
    let log = store.log.clone();
    let slurm = Arc::new(FakeSlurm::default());
    let (_, cluster, user) = ids();
    let job = Submitter::default()
        .submit(log.as_ref(), slurm.as_ref(), submission("to-cancel"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (log, slurm, cluster, user) =
            (log.clone(), slurm.clone(), cluster.clone(), user.clone());
        let submission = job.submission_id;
        tasks.push(tokio::spawn(async move {
            commands::jobs::cancel_job(
                log.as_ref(),
                slurm.as_ref(),
                commands::jobs::CancelRequest {
                    cluster,
                    submission,
                    caller: user,
                    caller_is_admin: false,
                    why: None,
                    metadata: eventlog::Metadata::default(),
                },
            )
            .await
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.push(t.await.unwrap().unwrap());
    }
    positions.dedup();
    assert_eq!(positions.len(), 1, "{positions:?}");
    let types = history(log.as_ref(), &cluster, job.submission_id).await;
    assert_eq!(
        types.iter().filter(|t| *t == "JobCancelRequested").count(),
        1,
        "{types:?}"
    );
}

/// A clock reading past the adoption grace, so jobs Slurm just accepted count as old.
fn later_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + commands::jobs::ADOPT_AFTER
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_keeps_what_it_read_apart_per_workspace_for_clusters_of_one_name() {
    let (_, cluster, _) = ids();
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    // Workspace `other` has a cluster of the same name on another Slurm, whose job 1000 is
    // someone else's: settling there reads it (and remembers it has no comment).
    let (_other_dir, other_store) = sqlite_log().await;
    let mut theirs = slurm_job(1_000, "someone else's", long_ago);
    theirs.comment = None;
    let their_slurm = FakeSlurm {
        lists_states: true,
        ..FakeSlurm::with(vec![theirs])
    };
    settle_submissions(
        other_store.log.as_ref(),
        &their_slurm,
        &WorkspaceId::new("other").unwrap(),
        &cluster,
        &unsettled(uuid::Uuid::now_v7()),
        later_now(),
    )
    .await
    .unwrap();
    // In `default`, job 1000 of its own Slurm is a submission whose `JobSubmitted` was lost.
    let (_dir, store) = sqlite_log().await;
    let slurm = FakeSlurm {
        lists_states: true,
        ..FakeSlurm::with(Vec::new())
    };
    let taken = submit_losing_the_outcome(&store, &slurm, "k-taken").await;
    assert_eq!(taken.job_id, 1_000, "the same job id as the other Slurm's");
    let settled = settle_later(
        store.log.as_ref(),
        &slurm,
        &cluster,
        taken.submission_id().unwrap(),
    )
    .await;
    assert_eq!(
        (settled.adopted, settled.failed),
        (1, 0),
        "read in its own Slurm and adopted, not taken for the other workspace's job"
    );
}
