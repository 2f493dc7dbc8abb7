//! The typed queries the API reads views with, against both read stores: SQLite and PostgreSQL
//! (needs DATABASE_URL). One suite, run against each backend.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;

use domain::job::JobState;
use domain::{ClusterId, WorkspaceId};
use eventlog::{DocChange, ModelSet, OpenOptions, ReadStore, Store, SystemClock};
use projections::views::ViewError;
use projections::views::jobs::{self, JobQuery};
use serde_json::json;

async fn open(postgres: bool) -> (Store, Option<tempfile::TempDir>) {
    if postgres {
        let url = std::env::var("DATABASE_URL")
            .expect("the PostgreSQL cases need DATABASE_URL; run scripts/test");
        let mut o = OpenOptions::new(url);
        o.pg_schema = Some(format!("t_{}", uuid::Uuid::new_v4().simple()));
        (
            eventlog::open(&o, Arc::new(SystemClock)).await.unwrap(),
            None,
        )
    } else {
        let dir = tempfile::tempdir().unwrap();
        let o = OpenOptions::new(format!("sqlite://{}", dir.path().join("v.db").display()));
        (
            eventlog::open(&o, Arc::new(SystemClock)).await.unwrap(),
            Some(dir),
        )
    }
}

/// Job `id`: users alternate a/b, every third job is RUNNING, the rest PENDING; every fifth
/// came from template `t`.
fn job_doc(ws: &WorkspaceId, cluster: &ClusterId, id: u64) -> String {
    json!({
        "job_id": id, "cluster_id": cluster, "workspace": ws,
        "submission_id": uuid::Uuid::from_u128(u128::from(id)),
        "name": "j", "user": if id.is_multiple_of(2) { "a@example.org" } else { "b@example.org" },
        "state": if id.is_multiple_of(3) { "RUNNING" } else { "PENDING" },
        "exit_code": null, "submitted_at": "2026-11-29T00:00:00Z", "started_at": null,
        "ended_at": null, "pending_reason": null, "reason": null, "node": null,
        "shape": {"cpus": 1, "memory_mib": null, "nodes": 1, "time_limit_minutes": null, "gpus": 0},
        "via": "api", "template_id": if id.is_multiple_of(5) { Some("t") } else { None },
        "cancel_requested_by": null, "stream_id": format!("job-{id}"), "position": id
    })
    .to_string()
}

async fn typed_queries_page_filter_and_refuse_unreadable_views(postgres: bool) {
    let (store, _dir) = open(postgres).await;
    let read: &dyn ReadStore = store.read.as_ref();
    let ws = WorkspaceId::new("ws").unwrap();
    let cluster = ClusterId::new("c1").unwrap();
    // 1,203 jobs: more than two of the store's 500-row pages.
    let changes: Vec<DocChange> = (1..=1_203u64)
        .map(|id| DocChange::Put {
            collection: jobs::collection(&ws, &cluster),
            key: jobs::key(id),
            doc: job_doc(&ws, &cluster, id),
        })
        .collect();
    read.commit(ModelSet::Live, jobs::NAME, 0, 1, &changes)
        .await
        .unwrap();
    // The per-user view holds the same documents by user (what `UserJobViews` keeps).
    let by_user: Vec<DocChange> = (1..=1_203u64)
        .map(|id| DocChange::Put {
            collection: jobs::user_collection(
                ws.as_str(),
                cluster.as_str(),
                if id.is_multiple_of(2) {
                    "a@example.org"
                } else {
                    "b@example.org"
                },
            ),
            key: jobs::key(id),
            doc: job_doc(&ws, &cluster, id),
        })
        .collect();
    read.commit(ModelSet::Live, jobs::BY_USER_NAME, 0, 1, &by_user)
        .await
        .unwrap();

    let one = jobs::get(read, &ws, &cluster, 42).await.unwrap().unwrap();
    assert_eq!((one.job_id, one.user.as_str()), (42, "a@example.org"));
    assert!(
        jobs::get(read, &ws, &cluster, 5_000)
            .await
            .unwrap()
            .is_none()
    );
    let other = ClusterId::new("c2").unwrap();
    assert!(jobs::get(read, &ws, &other, 42).await.unwrap().is_none());

    // b's RUNNING jobs from template t: odd multiples of 15, across the store's pages.
    let mut query = JobQuery {
        state: Some(JobState::Running),
        template: Some("t"),
        visible_to: Some("b@example.org"),
        limit: 30,
        ..JobQuery::default()
    };
    let (page, more) = jobs::page(read, &ws, &cluster, &query).await.unwrap();
    let ids: Vec<u64> = page.iter().map(|j| j.job_id).collect();
    let want: Vec<u64> = (1..=1_203u64).filter(|i| i % 30 == 15).take(30).collect();
    assert_eq!(ids, want);
    assert!(more, "40 such jobs exist");
    query.after = ids.last().copied();
    let (rest, more) = jobs::page(read, &ws, &cluster, &query).await.unwrap();
    assert_eq!(rest.len(), 10);
    assert!(!more);
    // A user filter that the caller may not see: nothing.
    let none = JobQuery {
        user: Some("a@example.org"),
        visible_to: Some("b@example.org"),
        limit: 10,
        ..JobQuery::default()
    };
    assert!(
        jobs::page(read, &ws, &cluster, &none)
            .await
            .unwrap()
            .0
            .is_empty()
    );

    // A document that is not a job view: an error naming it, not a skipped row.
    read.commit(
        ModelSet::Live,
        jobs::NAME,
        1,
        2,
        &[DocChange::Put {
            collection: jobs::collection(&ws, &cluster),
            key: jobs::key(7),
            doc: "{\"job_id\": \"seven\"}".into(),
        }],
    )
    .await
    .unwrap();
    let err = jobs::get(read, &ws, &cluster, 7).await.unwrap_err();
    assert!(
        matches!(&err, ViewError::Unreadable { view: "jobs", key, .. } if key == &jobs::key(7)),
        "{err}"
    );
    let all = JobQuery {
        limit: 500,
        ..JobQuery::default()
    };
    assert!(matches!(
        jobs::page(read, &ws, &cluster, &all).await,
        Err(ViewError::Unreadable { .. })
    ));
}

async fn feed_ranges_hand_back_each_entry_or_why_it_does_not_parse(postgres: bool) {
    use projections::views::feed::{self, FeedEntry};
    let (store, _dir) = open(postgres).await;
    let read: &dyn ReadStore = store.read.as_ref();
    let ws = WorkspaceId::new("ws").unwrap();
    let cluster = ClusterId::new("c1").unwrap();
    let collection = feed::collection(&ws, &cluster);
    let entry = |position: i64| FeedEntry {
        position,
        time: chrono::DateTime::parse_from_rfc3339("2026-11-29T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
        event_type: "JobSubmitted".into(),
        actor: "ada@lab.org".into(),
        summary: format!("entry {position}"),
        job_id: Some(1),
        owner: Some("ada@lab.org".into()),
        data: json!({}),
    };
    let mut changes: Vec<DocChange> = [1, 2, 4]
        .into_iter()
        .map(|p| DocChange::Put {
            collection: collection.clone(),
            key: feed::key(p),
            doc: serde_json::to_string(&entry(p)).unwrap(),
        })
        .collect();
    changes.push(DocChange::Put {
        collection: collection.clone(),
        key: feed::key(3),
        doc: "not json".into(),
    });
    read.commit(ModelSet::Live, feed::NAME, 0, 4, &changes)
        .await
        .unwrap();
    let collection = &collection;
    let range = |after: Option<i64>, before: Option<i64>, descending: bool, limit: usize| {
        let (after, before) = (after.map(feed::key), before.map(feed::key));
        async move {
            feed::range(
                read,
                collection,
                eventlog::KeyRange {
                    after: after.as_deref(),
                    before: before.as_deref(),
                    descending,
                    limit,
                },
            )
            .await
            .unwrap()
        }
    };
    let all = range(None, None, false, 10).await;
    let keys: Vec<&str> = all.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        [feed::key(1), feed::key(2), feed::key(3), feed::key(4)]
    );
    assert_eq!(all[1].entry.as_ref().unwrap(), &entry(2));
    assert!(matches!(
        &all[2].entry,
        Err(ViewError::Unreadable { view: "feed", .. })
    ));
    let newest_first = range(Some(1), Some(4), true, 10).await;
    let keys: Vec<&str> = newest_first.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, [feed::key(3), feed::key(2)]);
    assert_eq!(range(Some(1), None, false, 1).await.len(), 1);
}

#[tokio::test]
async fn sqlite_feed_ranges() {
    feed_ranges_hand_back_each_entry_or_why_it_does_not_parse(false).await;
}

#[tokio::test]
async fn postgres_feed_ranges() {
    feed_ranges_hand_back_each_entry_or_why_it_does_not_parse(true).await;
}

#[tokio::test]
async fn sqlite_typed_queries() {
    typed_queries_page_filter_and_refuse_unreadable_views(false).await;
}

#[tokio::test]
async fn postgres_typed_queries() {
    typed_queries_page_filter_and_refuse_unreadable_views(true).await;
}
