//! The projection engine against real databases: SQLite and PostgreSQL (needs DATABASE_URL).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use eventlog::{ExpectedVersion, ModelSet, NewEvent, OpenOptions, Store, StreamId, SystemClock};
use projections::views::event_counts::{self, EventCounts, EventTypeCount};
use projections::{
    Applied, Difference, Event, ProjectionError, Projections, Projector, Reads, Target,
    VerifyReport, ViewTx, catch_up, rebuild_and_promote, verify,
};
use serde_json::json;

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn open(postgres: bool) -> Db {
    if postgres {
        let url = std::env::var("DATABASE_URL")
            .expect("the PostgreSQL cases need DATABASE_URL; run scripts/test");
        let mut o = OpenOptions::new(url);
        o.pg_schema = Some(format!("t_{}", uuid::Uuid::new_v4().simple()));
        Db {
            store: eventlog::open(&o, Arc::new(SystemClock)).await.unwrap(),
            _dir: None,
        }
    } else {
        let dir = tempfile::tempdir().unwrap();
        let o = OpenOptions::new(format!("sqlite://{}", dir.path().join("p.db").display()));
        Db {
            store: eventlog::open(&o, Arc::new(SystemClock)).await.unwrap(),
            _dir: Some(dir),
        }
    }
}

async fn append(store: &Store, n: usize) {
    for i in 0..n {
        let kind = ["A", "B", "C"][i % 3];
        store
            .log
            .append(
                &StreamId::new(format!("s-{}", i % 5)).unwrap(),
                ExpectedVersion::Any,
                &[NewEvent::new(kind, json!({ "i": i }))],
            )
            .await
            .unwrap();
    }
}

async fn count(store: &Store, set: ModelSet, kind: &str) -> u64 {
    let doc = store
        .read
        .get_doc(set, event_counts::NAME, event_counts::COLLECTION, kind)
        .await
        .unwrap();
    doc.map(|d| serde_json::from_str::<EventTypeCount>(&d).unwrap().count)
        .unwrap_or(0)
}

/// Starts every projector on `store`; the sender stops them.
fn start_all(store: &Store) -> (tokio::sync::watch::Sender<bool>, Projections) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let live = Projections::start(
        store.log.clone(),
        store.read.clone(),
        projections::all_projectors(),
        stop_rx,
    );
    (stop_tx, live)
}

/// Whether the live EventCounts reaches `position` within 10 s.
async fn event_counts_reach(live: &Projections, position: i64) -> bool {
    live.wait_for(event_counts::NAME, position, Duration::from_secs(10))
        .await
}

/// Rebuilds EventCounts from the log and compares it with the live view.
async fn verify_event_counts(store: &Store) -> VerifyReport {
    verify(
        store.log.as_ref(),
        store.read.as_ref(),
        &EventCounts,
        |_, _| {},
    )
    .await
    .unwrap()
}

/// Catches `p` up on the live set, 10 events a batch.
async fn catch_up_live(store: &Store, p: &Flaky) -> Result<i64, ProjectionError> {
    catch_up(
        store.log.as_ref(),
        store.read.as_ref(),
        p,
        Target {
            set: ModelSet::Live,
            until: None,
            batch: 10,
        },
        None,
        |_, _| {},
    )
    .await
}

/// How many events [`Flaky`] has applied to the live set.
async fn flaky_count(store: &Store) -> u64 {
    serde_json::from_str(
        &store
            .read
            .get_doc(ModelSet::Live, "flaky", "n", "all")
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap()
}

/// Counts events like EventCounts, but fails once on the event at `fail_at`.
struct Flaky {
    fail_at: AtomicI64,
}

#[async_trait]
impl Projector for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn reads(&self, _: &str) -> Reads {
        Reads::Envelope
    }
    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let event = event.recorded;
        if self.fail_at.load(Ordering::SeqCst) == event.position {
            self.fail_at.store(-1, Ordering::SeqCst);
            return Err(ProjectionError::bad_event(
                event,
                serde_json::from_str::<u8>("x").unwrap_err(),
            ));
        }
        let n: u64 = view.get("n", "all").await?.unwrap_or(0);
        view.put("n", "all", &(n + 1))
    }
}

async fn a_failed_batch_commits_nothing_and_resumes_exactly(postgres: bool) {
    let db = open(postgres).await;
    append(&db.store, 30).await;
    let p = Flaky {
        fail_at: AtomicI64::new(17),
    };
    let err = catch_up_live(&db.store, &p).await;
    assert!(err.is_err());
    // The first batch (1..=10) committed; the failing one (11..=20) left no trace.
    assert_eq!(
        db.store
            .read
            .checkpoint(ModelSet::Live, "flaky")
            .await
            .unwrap(),
        10
    );
    let n = flaky_count(&db.store).await;
    assert_eq!(n, 10);
    let reached = catch_up_live(&db.store, &p).await.unwrap();
    assert_eq!(reached, 30);
    let n = flaky_count(&db.store).await;
    assert_eq!(n, 30, "every event applied exactly once");
}

async fn live_runner_follows_and_verify_finds_tampering(postgres: bool) {
    let db = open(postgres).await;
    append(&db.store, 12).await;
    let (stop_tx, live) = start_all(&db.store);
    assert!(event_counts_reach(&live, 12).await);
    append(&db.store, 9).await;
    assert!(event_counts_reach(&live, 21).await, "follows live appends");
    assert!(
        !live
            .wait_for(event_counts::NAME, 22, Duration::from_millis(200))
            .await
    );
    assert_eq!(count(&db.store, ModelSet::Live, "A").await, 4 + 3);
    stop_tx.send(true).unwrap();
    live.join().await;

    let clean = verify_event_counts(&db.store).await;
    assert_eq!(
        (clean.position, clean.documents, clean.differences.len()),
        (21, 3, 0)
    );

    // Edit a live row behind the engine's back, add a stray one: both are reported.
    let bad = json!({"event_type": "A", "count": 999, "last_position": 19}).to_string();
    db.store
        .read
        .commit(
            ModelSet::Live,
            event_counts::NAME,
            21,
            21,
            &[
                eventlog::DocChange::Put {
                    collection: "types".into(),
                    key: "A".into(),
                    doc: bad,
                },
                eventlog::DocChange::Put {
                    collection: "types".into(),
                    key: "Z".into(),
                    doc: "{}".into(),
                },
            ],
        )
        .await
        .unwrap();
    let report = verify_event_counts(&db.store).await;
    assert_eq!(report.differences.len(), 2, "{:?}", report.differences);
    assert!(
        matches!(&report.differences[0], Difference::Changed { key, live, .. } if key == "A" && live["count"] == 999)
    );
    assert!(matches!(&report.differences[1], Difference::NotInRebuild { key, .. } if key == "Z"));
    // Verify leaves the live tables alone; a replay repairs them.
    assert_eq!(count(&db.store, ModelSet::Live, "A").await, 999);
    let mut calls = 0;
    let reached = rebuild_and_promote(
        db.store.log.as_ref(),
        db.store.read.as_ref(),
        &EventCounts,
        |_, _| calls += 1,
    )
    .await
    .unwrap();
    assert_eq!(reached, 21);
    assert!(calls >= 1);
    assert_eq!(count(&db.store, ModelSet::Live, "A").await, 7);
    let report = verify_event_counts(&db.store).await;
    assert!(report.differences.is_empty());
}

/// Fails on one position every time it sees it.
struct Broken;

#[async_trait]
impl Projector for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    async fn apply(&self, _: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        if event.recorded.position == 17 {
            return Err(ProjectionError::bad_event(
                event.recorded,
                serde_json::from_str::<u8>("x").unwrap_err(),
            ));
        }
        Ok(())
    }
}

/// The live projectors share one reader and one commit per batch: one that fails (for good, or
/// once) neither stops the others nor loses or repeats an event of its own.
async fn one_failing_live_projector_does_not_hold_up_the_others(postgres: bool) {
    let db = open(postgres).await;
    append(&db.store, 30).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flaky = Arc::new(Flaky {
        fail_at: AtomicI64::new(17),
    });
    let live = Projections::start(
        db.store.log.clone(),
        db.store.read.clone(),
        vec![Arc::new(Broken), flaky, Arc::new(EventCounts)],
        stop_rx,
    );
    assert!(event_counts_reach(&live, 30).await);
    assert!(live.wait_for("flaky", 30, Duration::from_secs(10)).await);
    assert_eq!(
        flaky_count(&db.store).await,
        30,
        "every event applied exactly once"
    );
    let broken = live.statuses()["broken"].clone();
    assert_eq!(broken.state, "failing");
    assert!(broken.position < 17, "{broken:?}");
    let error = broken.last_error.unwrap_or_default();
    assert!(error.starts_with("event 17 "), "{error}");
    // It keeps retrying on its own; the others follow new events meanwhile.
    append(&db.store, 5).await;
    assert!(event_counts_reach(&live, 35).await);
    assert!(live.wait_for("flaky", 35, Duration::from_secs(10)).await);
    assert_eq!(flaky_count(&db.store).await, 35);
    stop_tx.send(true).unwrap();
    live.join().await;
    for (name, at) in [(event_counts::NAME, 35), ("flaky", 35)] {
        let checkpoint = db
            .store
            .read
            .checkpoint(ModelSet::Live, name)
            .await
            .unwrap();
        assert_eq!(checkpoint, at, "{name} persists its checkpoint at stop");
    }
    assert!(
        db.store
            .read
            .checkpoint(ModelSet::Live, "broken")
            .await
            .unwrap()
            < 17
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_failing_projector() {
    one_failing_live_projector_does_not_hold_up_the_others(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_failing_projector() {
    one_failing_live_projector_does_not_hold_up_the_others(true).await;
}

#[tokio::test]
async fn sqlite_failed_batch() {
    a_failed_batch_commits_nothing_and_resumes_exactly(false).await;
}

#[tokio::test]
async fn postgres_failed_batch() {
    a_failed_batch_commits_nothing_and_resumes_exactly(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_live_and_verify() {
    live_runner_follows_and_verify_finds_tampering(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_live_and_verify() {
    live_runner_follows_and_verify_finds_tampering(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_runner_stops_when_whoever_could_stop_it_is_gone() {
    let db = open(false).await;
    append(&db.store, 3).await;
    let (stop_tx, live) = start_all(&db.store);
    assert!(event_counts_reach(&live, 3).await);
    // A server that failed to start (or was dropped) after starting its projections: the sender
    // is dropped without a stop being sent.
    drop(stop_tx);
    tokio::time::timeout(Duration::from_secs(10), live.join())
        .await
        .expect("every projector task ends once its stop sender is gone");
}

/// A runner whose checkpoints are already at the head (a restart, or another replica wrote them)
/// reads no batch, and still says it is running there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_starting_at_the_head_reports_running_there() {
    let db = open(false).await;
    append(&db.store, 4).await;
    let (stop_tx, live) = start_all(&db.store);
    assert!(event_counts_reach(&live, 4).await);
    stop_tx.send(true).unwrap();
    live.join().await;
    let (stop_tx, again) = start_all(&db.store);
    for name in again.statuses().into_keys() {
        assert!(
            again.wait_for(name, 4, Duration::from_secs(10)).await,
            "{name} says where it is"
        );
    }
    let statuses = again.statuses();
    assert!(
        statuses
            .values()
            .all(|s| s.state == "running" && s.position == 4),
        "{statuses:?}"
    );
    stop_tx.send(true).unwrap();
    again.join().await;
}

/// Notes, at each event it applies, how often a task beside it has run so far.
struct Ticks {
    ticks: Arc<std::sync::atomic::AtomicU64>,
    seen: std::sync::Mutex<Vec<(i64, u64)>>,
}

#[async_trait]
impl Projector for Ticks {
    fn name(&self) -> &'static str {
        "ticks"
    }
    fn reads(&self, _: &str) -> Reads {
        Reads::Envelope
    }
    async fn apply(&self, _: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let ticks = self.ticks.load(Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap()
            .push((event.recorded.position, ticks));
        Ok(())
    }
}

/// On a runtime of one thread, a task beside the live follower runs while one batch is applied:
/// the follower yields between events (a projector that never waits would otherwise hold the
/// thread for the whole batch, and every request queued on it would wait).
#[tokio::test]
async fn sqlite_the_live_follower_lets_other_tasks_run_within_a_batch() {
    let db = open(false).await;
    let batch = projections::runner::LIVE_BATCH;
    append(&db.store, batch).await;
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                ticks.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let projector = Arc::new(Ticks {
        ticks,
        seen: std::sync::Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let live = Projections::start(
        db.store.log.clone(),
        db.store.read.clone(),
        vec![projector.clone()],
        stop_rx,
    );
    let batch = i64::try_from(batch).unwrap();
    assert!(live.wait_for("ticks", batch, Duration::from_secs(10)).await);
    stop_tx.send(true).unwrap();
    live.join().await;
    ticker.abort();
    let seen = projector.seen.lock().unwrap().clone();
    // The log held one batch when the follower started: it read and applied it in one go.
    let at = |position: i64| seen.iter().find(|(p, _)| *p == position).unwrap().1;
    assert!(
        at(batch) > at(1),
        "the task beside it ran {} times while the follower applied events 1 to {batch}",
        at(batch) - at(1)
    );
}
