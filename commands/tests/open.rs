//! The poll cycle's open-job index read on from a real SQLite log: what it applies, what it
//! skips, and that a second catch-up reads only what was appended since.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use commands::open::Tracker;
use domain::submit::JobShape;
use domain::{ClusterId, DomainEvent, Email, JobSubmitted, MicroUsd, SubmittedVia, WorkspaceId};
use eventlog::{ExpectedVersion, NewEvent, StreamId};
use serde_json::json;

mod common;

fn submitted(job_id: u64) -> DomainEvent {
    DomainEvent::JobSubmitted(JobSubmitted {
        submission_id: uuid::Uuid::from_u128(u128::from(job_id)),
        workspace: WorkspaceId::new("ws").unwrap(),
        cluster_id: ClusterId::new("c1").unwrap(),
        job_id,
        name: "j".into(),
        user: Email::new("ada@lab.org").unwrap(),
        via: SubmittedVia::Api,
        template_id: None,
        params: None,
        body: json!({}),
        shape: common::one_cpu(),
        warnings: Vec::new(),
        submitted_at: None,
        rate: None,
    })
}

#[tokio::test]
async fn catch_up_applies_job_events_skips_unreadable_ones_and_reads_on_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let log = store.log.as_ref();
    let append = |stream: &str, event: NewEvent| {
        let stream = StreamId::new(stream).unwrap();
        async move {
            log.append(&stream, ExpectedVersion::Any, &[event])
                .await
                .unwrap()
        }
    };
    let meta = commands::system_metadata("test");
    append(
        "job-c1-1",
        commands::encode(&submitted(1), meta.clone()).unwrap(),
    )
    .await;
    // A job event whose data is not what its type says, and an event of another kind.
    append(
        "job-c1-2",
        NewEvent::new("JobStateChanged", json!({"bogus": true})),
    )
    .await;
    append("other", NewEvent::new("SomethingElse", json!({}))).await;

    let tracker = Tracker::default();
    let price = |_: &JobShape| MicroUsd(1);
    let first = tracker.catch_up(log, &price).await.unwrap();
    assert_eq!((first.events, first.unreadable, first.position), (3, 1, 3));
    let key = (
        WorkspaceId::new("ws").unwrap(),
        ClusterId::new("c1").unwrap(),
    );
    let snapshot = tracker.snapshot(&key);
    assert_eq!(snapshot.added, vec![1]);
    assert_eq!(tracker.open(&key).len(), 1);

    // Nothing new: nothing read. Then only the new event.
    let again = tracker.catch_up(log, &price).await.unwrap();
    assert_eq!((again.events, again.position), (0, 3));
    append("job-c1-3", commands::encode(&submitted(3), meta).unwrap()).await;
    let next = tracker.catch_up(log, &price).await.unwrap();
    assert_eq!((next.events, next.unreadable, next.position), (1, 0, 4));
    assert_eq!(tracker.snapshot(&key).added, vec![3]);
    assert_eq!(tracker.open(&key).len(), 2);
}

#[tokio::test]
async fn catch_up_keeps_the_submissions_whose_outcome_is_not_in_the_log_yet() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_store(dir.path()).await;
    let log = store.log.as_ref();
    let meta = commands::system_metadata("test");
    let append = |stream: &str, event: DomainEvent| {
        let stream = StreamId::new(stream).unwrap();
        let event = commands::encode(&event, meta.clone()).unwrap();
        async move {
            log.append(&stream, ExpectedVersion::Any, &[event])
                .await
                .unwrap()
        }
    };
    let requested = |n: u128| {
        DomainEvent::JobSubmissionRequested(domain::JobSubmissionRequested {
            submission_id: uuid::Uuid::from_u128(n),
            workspace: WorkspaceId::new("ws").unwrap(),
            cluster_id: ClusterId::new("c1").unwrap(),
            user: Email::new("ada@lab.org").unwrap(),
            via: SubmittedVia::Api,
            name: "j".into(),
            template_id: None,
            body_digest: "sha256:00".into(),
            shape: common::one_cpu(),
            rate: None,
        })
    };
    let key = (
        WorkspaceId::new("ws").unwrap(),
        ClusterId::new("c1").unwrap(),
    );
    let tracker = Tracker::default();
    let price = |_: &JobShape| MicroUsd(1);
    let unsettled = |tracker: &Tracker| -> Vec<u128> {
        tracker
            .submitting(&key)
            .into_iter()
            .map(|(id, _)| id.as_u128())
            .collect()
    };
    // Two requests: both unsettled until their outcome is read from the log.
    append("job-c1-1", requested(1)).await;
    append("job-c1-2", requested(2)).await;
    tracker.catch_up(log, &price).await.unwrap();
    assert_eq!(unsettled(&tracker), vec![1, 2]);
    // One gets its job, the other fails.
    append("job-c1-1", submitted(1)).await;
    append(
        "job-c1-2",
        DomainEvent::JobSubmissionFailed(domain::JobSubmissionFailed {
            submission_id: uuid::Uuid::from_u128(2),
            workspace: WorkspaceId::new("ws").unwrap(),
            cluster_id: ClusterId::new("c1").unwrap(),
            reason: "Slurm refused it".into(),
        }),
    )
    .await;
    tracker.catch_up(log, &price).await.unwrap();
    assert!(unsettled(&tracker).is_empty());
}
