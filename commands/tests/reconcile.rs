//! The poll cycle's reconcile against real SQLite and the real local executor, including a crash
//! between Slurm accepting a job and the log recording it (an append failed on purpose).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use commands::jobs::{JobError, OpenJob, Submission, Submitter, reconcile, stream};
use commands::slurm::SlurmPort;
use domain::job::JobState;
use domain::{ClusterId, DomainEvent, Email, SubmittedVia, WorkspaceId};
use eventlog::{
    AppendOutcome, EventLog, ExpectedVersion, Head, LogError, NewEvent, OpenOptions, Position,
    RecordedEvent, StreamId, SystemClock,
};
use gateways::local::{LocalExecutor, LocalSettings};
use serde_json::json;
use tokio::sync::watch;

/// An event log that fails the next `JobSubmitted` append when armed: the crash window.
struct FailingLog {
    inner: Arc<dyn EventLog>,
    armed: AtomicBool,
}

#[async_trait]
impl EventLog for FailingLog {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, LogError> {
        if events.iter().any(|e| e.event_type == "JobSubmitted")
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

/// A fresh SQLite log and local executor in a temp dir.
async fn setup() -> (tempfile::TempDir, eventlog::Store, LocalExecutor) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let store = eventlog::open(&OpenOptions::new(url), Arc::new(SystemClock))
        .await
        .unwrap();
    let slurm = LocalExecutor::open(
        LocalSettings {
            state_dir: dir.path().join("ex"),
            efs_root: dir.path().join("efs"),
            grace: Duration::from_millis(200),
            minute: Duration::from_secs(60),
            slots: 4,
            nodes: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_slurm_accepted_but_the_log_missed_is_adopted_once() {
    let (_dir, store, slurm) = setup().await;
    let log = FailingLog {
        inner: store.log.clone(),
        armed: AtomicBool::new(true),
    };
    let submitter = Submitter::default();
    let (workspace, cluster, _) = ids();

    let err = submitter
        .submit(&log, &slurm, submission("k1"))
        .await
        .unwrap_err();
    assert!(matches!(err, JobError::Log(_)), "{err:?}");
    let in_slurm = slurm.jobs().await.unwrap();
    assert_eq!(in_slurm.len(), 1, "Slurm accepted it");
    let submission_id = in_slurm[0].submission_id().unwrap();
    assert!(
        log.read_stream(&stream(&cluster, submission_id), 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "the log missed it"
    );

    // Moments after Slurm accepted it, its submitter may still be recording it: not adopted.
    let done = reconcile(&log, &slurm, &workspace, &cluster, &[], chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(done.adopted, 0);
    let later = chrono::Utc::now() + commands::jobs::ADOPT_AFTER;
    let done = reconcile(&log, &slurm, &workspace, &cluster, &[], later)
        .await
        .unwrap();
    assert_eq!(done.adopted, 1);
    let events = log
        .read_stream(&stream(&cluster, submission_id), 0, 10)
        .await
        .unwrap();
    match DomainEvent::decode(&events[0].event_type, 1, &events[0].data).unwrap() {
        Some(DomainEvent::JobSubmitted(j)) => {
            assert_eq!(
                (j.job_id, j.via, j.user.as_str()),
                (in_slurm[0].job_id, SubmittedVia::Adopted, "ada@lab.org")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        reconcile(&log, &slurm, &workspace, &cluster, &[], later_now())
            .await
            .unwrap()
            .adopted,
        0,
        "adopted once"
    );

    // The client's retry gets the adopted job and nothing runs twice.
    let retry = submitter
        .submit(&log, &slurm, submission("k1"))
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.job_id, in_slurm[0].job_id);
    assert_eq!(slurm.jobs().await.unwrap().len(), 1);

    // The state follows; once final, reconcile records nothing more.
    let open = [OpenJob {
        submission_id,
        job_id: retry.job_id,
        state: JobState::Pending,
    }];
    let mut final_state = None;
    for _ in 0..100 {
        reconcile(&log, &slurm, &workspace, &cluster, &open, later_now())
            .await
            .unwrap();
        let (facts, _) = commands::jobs::load(&log, &stream(&cluster, submission_id))
            .await
            .unwrap()
            .unwrap();
        if facts.state.is_terminal() {
            final_state = Some(facts.state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(final_state, Some(JobState::Completed));
    let head = log.head().await.unwrap().position;
    let done = reconcile(&log, &slurm, &workspace, &cluster, &open, later_now())
        .await
        .unwrap();
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
    let (workspace, cluster, _) = ids();
    let submitted = submitter
        .submit(store.log.as_ref(), &slurm, submission("k2"))
        .await
        .unwrap();
    // Pretend the log knows a job id Slurm never had (e.g. MinJobAge purged it while we were down).
    let ghost = OpenJob {
        submission_id: submitted.submission_id,
        job_id: 9_999,
        state: JobState::Pending,
    };
    let done = reconcile(
        store.log.as_ref(),
        &slurm,
        &workspace,
        &cluster,
        &[ghost],
        later_now(),
    )
    .await
    .unwrap();
    assert_eq!(done.vanished, 1);
    let (facts, _) = commands::jobs::load(
        store.log.as_ref(),
        &stream(&cluster, submitted.submission_id),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(facts.state, JobState::NodeFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_failed_append_records_the_job_slurm_already_has() {
    let (_dir, store, slurm) = setup().await;
    let log = FailingLog {
        inner: store.log.clone(),
        armed: AtomicBool::new(true),
    };
    let submitter = Submitter::default();
    assert!(
        submitter
            .submit(&log, &slurm, submission("k3"))
            .await
            .is_err()
    );
    let retry = submitter
        .submit(&log, &slurm, submission("k3"))
        .await
        .unwrap();
    assert_eq!(
        slurm.jobs().await.unwrap().len(),
        1,
        "the retry did not submit a second job"
    );
    assert_eq!(retry.job_id, slurm.jobs().await.unwrap()[0].job_id);
    let (_, cluster, _) = ids();
    let (facts, _) = commands::jobs::load(&log, &stream(&cluster, retry.submission_id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        facts.submitted.via,
        SubmittedVia::Api,
        "recorded with the full submission, not adopted"
    );
    assert_eq!(facts.submitted.name, "adopt-me");
}

/// A clock reading past the adoption grace, so jobs Slurm just accepted count as old.
fn later_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + commands::jobs::ADOPT_AFTER
}
