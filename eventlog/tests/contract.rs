//! The event-log contract: one suite, run unchanged against every backend.
//!
//! PostgreSQL cases need `DATABASE_URL` (scripts/test sets it); each case gets its own schema.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use eventlog::{
    ChainReport, DocChange, ExpectedVersion, LogError, ModelSet, NewEvent, OpenOptions,
    ProjectionCommit, Store, StreamId, SubscribeOptions, SystemClock, hash::ChainBreak, subscribe,
    verify_chain,
};
use futures::StreamExt;
use serde_json::json;
use sqlx::Connection;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Ctx {
    options: OpenOptions,
    _dir: Option<tempfile::TempDir>,
}

impl Ctx {
    fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("log.db").display());
                Ctx {
                    options: OpenOptions::new(url),
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let url = std::env::var("DATABASE_URL").expect(
                    "the PostgreSQL contract cases need DATABASE_URL; run scripts/test, which finds or starts a PostgreSQL",
                );
                let mut options = OpenOptions::new(url);
                options.pg_schema = Some(format!("t_{}", uuid::Uuid::new_v4().simple()));
                options.max_connections = 16;
                Ctx {
                    options,
                    _dir: None,
                }
            }
        }
    }

    async fn open(&self) -> Store {
        eventlog::open(&self.options, Arc::new(SystemClock))
            .await
            .expect("open store")
    }

    /// Runs SQL behind the log's back, as an attacker or a careless operator would.
    async fn tamper(&self, sql: &str) {
        if self.options.url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&self.options.url)
                .await
                .expect("connect");
            sqlx::query(sql).execute(&mut c).await.expect("tamper");
        } else {
            let mut c = sqlx::PgConnection::connect(&self.options.url)
                .await
                .expect("connect");
            let schema = self.options.pg_schema.as_deref().unwrap_or("public");
            sqlx::query(&format!("SET search_path TO {schema}"))
                .execute(&mut c)
                .await
                .expect("search_path");
            sqlx::query(sql).execute(&mut c).await.expect("tamper");
        }
    }
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("stream id")
}

fn ev(n: u64) -> NewEvent {
    NewEvent::new("Counted", json!({ "n": n, "pad": "x".repeat(64) }))
}

async fn append_and_read(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    let log = &store.log;
    let out = log
        .append(&sid("a"), ExpectedVersion::NoStream, &[ev(1), ev(2), ev(3)])
        .await
        .unwrap();
    assert_eq!(
        (out.first_position, out.last_position, out.stream_version),
        (1, 3, 3)
    );
    assert!(!out.already_stored);
    let out = log
        .append(&sid("b"), ExpectedVersion::Exact(0), &[ev(4)])
        .await
        .unwrap();
    assert_eq!((out.first_position, out.stream_version), (4, 1));
    let out = log
        .append(&sid("a"), ExpectedVersion::Exact(3), &[ev(5)])
        .await
        .unwrap();
    assert_eq!((out.first_position, out.stream_version), (5, 4));

    let a = log.read_stream(&sid("a"), 0, 100).await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        a.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 5]
    );
    assert_eq!(
        log.read_stream(&sid("a"), 2, 1).await.unwrap()[0].stream_version,
        3
    );
    let all = log.read_all(0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[1].data_json().unwrap()["n"], 2);
    assert_eq!(log.read_all(3, 1).await.unwrap()[0].position, 4);
    assert_eq!(log.head().await.unwrap().position, 5);
    assert_eq!(log.head().await.unwrap().hash, all[4].hash);
    assert!(matches!(
        log.append(&sid("a"), ExpectedVersion::Any, &[]).await,
        Err(LogError::EmptyAppend)
    ));
}

async fn conflict_writes_nothing(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    let log = &store.log;
    log.append(&sid("s"), ExpectedVersion::NoStream, &[ev(1)])
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
    ] {
        let err = log
            .append(&sid("s"), expected, &[ev(2), ev(3)])
            .await
            .expect_err("must conflict");
        assert!(
            matches!(err, LogError::VersionConflict { actual: 1, .. }),
            "{err:?}"
        );
    }
    assert_eq!(log.head().await.unwrap().position, 1);
    assert_eq!(log.read_all(0, 10).await.unwrap().len(), 1);
}

async fn racing_writers_one_winner_per_version(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    const TASKS: usize = 8;
    const ROUNDS: i64 = 15;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let log = store.log.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait().await;
                match log
                    .append(
                        &sid("contended"),
                        ExpectedVersion::Exact(round),
                        &[ev(t as u64)],
                    )
                    .await
                {
                    Ok(out) => wins.push(out.stream_version),
                    Err(LogError::VersionConflict { .. }) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
                barrier.wait().await;
            }
            wins
        }));
    }
    let mut wins: Vec<i64> = Vec::new();
    for h in handles {
        wins.extend(h.await.unwrap());
    }
    wins.sort();
    assert_eq!(
        wins,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "exactly one winner per version"
    );
    let stream = store
        .log
        .read_stream(&sid("contended"), 0, 1000)
        .await
        .unwrap();
    assert_eq!(stream.len() as i64, ROUNDS);
}

async fn concurrent_writers_and_a_live_subscriber(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    const WRITERS: u64 = 8;
    const PER_WRITER: u64 = 1_000;
    let total = (WRITERS * PER_WRITER) as usize;

    let sub = subscribe(store.log.clone(), 0, SubscribeOptions::default());
    let reader = tokio::spawn(async move {
        let events: Vec<_> = sub
            .take(total)
            .map(|r| r.expect("subscriber read"))
            .collect()
            .await;
        events
    });
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = store.log.clone();
        writers.push(tokio::spawn(async move {
            let stream = sid(&format!("writer-{w}"));
            for i in 0..PER_WRITER {
                log.append(&stream, ExpectedVersion::Exact(i as i64), &[ev(i)])
                    .await
                    .expect("append");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let events = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("subscriber saw every event within 60 s")
        .unwrap();
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=total as i64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let mut next_version: HashMap<String, i64> = HashMap::new();
    for e in &events {
        let v = next_version.entry(e.stream_id.clone()).or_insert(1);
        assert_eq!(
            e.stream_version, *v,
            "stream order kept for {}",
            e.stream_id
        );
        *v += 1;
    }
    assert_eq!(next_version.len(), WRITERS as usize);
    let ids: HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), total);
    assert_chain_intact(&store).await;
}

async fn assert_chain_intact(store: &Store) {
    let report = verify_chain(store.log.as_ref(), |_| {}).await.unwrap();
    assert_eq!(report.first_break, None);
}

async fn idempotent_reappend(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    let log = &store.log;
    let batch = vec![ev(1), ev(2)];
    let first = log
        .append(&sid("s"), ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    log.append(&sid("other"), ExpectedVersion::Any, &[ev(9)])
        .await
        .unwrap();
    // Even though the stream moved on, a retry of the same batch returns the stored positions.
    log.append(&sid("s"), ExpectedVersion::Any, &[ev(3)])
        .await
        .unwrap();
    let again = log
        .append(&sid("s"), ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    assert!(again.already_stored);
    assert_eq!(
        (
            again.first_position,
            again.last_position,
            again.stream_version
        ),
        (
            first.first_position,
            first.last_position,
            first.stream_version
        )
    );
    assert_eq!(log.head().await.unwrap().position, 4);

    // A batch mixing a stored id with a new one is refused whole; the same id on another stream
    // is refused too.
    let mixed = vec![ev(10), batch[1].clone()];
    for (stream, events) in [("s", &mixed), ("elsewhere", &batch)] {
        let err = log
            .append(&sid(stream), ExpectedVersion::Any, events)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::DuplicateEventMismatch { .. }),
            "{stream}: {err:?}"
        );
    }
    assert_eq!(log.head().await.unwrap().position, 4);
    assert_eq!(log.read_all(0, 100).await.unwrap().len(), 4);
}

/// One batch sent by many callers at once (a retry racing its original) lands once: one caller
/// appends it, the others get its stored positions; a group mixing new streams with it keeps
/// the new ones.
async fn racing_reappends_of_one_batch_land_once(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    const TASKS: usize = 8;
    let batch = vec![ev(1), ev(2)];
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (log, barrier, batch) = (store.log.clone(), barrier.clone(), batch.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let (s, mine) = (sid("s"), sid(&format!("t{t}")));
            let fresh_event = [ev(100 + t as u64)];
            let again = log.append(&s, ExpectedVersion::NoStream, &batch);
            let fresh = log.append(&mine, ExpectedVersion::NoStream, &fresh_event);
            let (again, fresh) = tokio::join!(again, fresh);
            (again.unwrap(), fresh.unwrap())
        }));
    }
    let mut appended = 0;
    for h in handles {
        let (again, fresh) = h.await.unwrap();
        appended += usize::from(!again.already_stored);
        assert_eq!(again.stream_version, 2, "{again:?}");
        assert!(!fresh.already_stored);
        assert_eq!(fresh.stream_version, 1);
    }
    assert_eq!(appended, 1, "one caller appended the batch");
    assert_eq!(store.log.head().await.unwrap().position, 2 + TASKS as i64);
    assert_chain_intact(&store).await;
}

/// Appends `ev(i)` for each `i` of `numbers` to stream `s`, one append each.
async fn append_one_by_one(store: &Store, numbers: std::ops::Range<u64>) {
    for i in numbers {
        store
            .log
            .append(&sid("s"), ExpectedVersion::Any, &[ev(i)])
            .await
            .unwrap();
    }
}

async fn resume_from_checkpoint_after_reopen(b: Backend) {
    let ctx = Ctx::new(b);
    let checkpoint = {
        let store = ctx.open().await;
        append_one_by_one(&store, 0..10).await;
        let seen: Vec<_> = subscribe(store.log.clone(), 0, SubscribeOptions::default())
            .take(6)
            .map(|r| r.unwrap())
            .collect()
            .await;
        seen.last().unwrap().position
    };
    assert_eq!(checkpoint, 6);
    let store = ctx.open().await;
    append_one_by_one(&store, 10..15).await;
    let rest: Vec<_> = subscribe(
        store.log.clone(),
        checkpoint,
        SubscribeOptions {
            batch: 3,
            ..Default::default()
        },
    )
    .take(9)
    .map(|r| r.unwrap())
    .collect()
    .await;
    assert_eq!(
        rest.iter().map(|e| e.position).collect::<Vec<_>>(),
        (7..=15).collect::<Vec<_>>()
    );
    let next = tokio::time::timeout(
        Duration::from_millis(300),
        subscribe(store.log.clone(), 15, SubscribeOptions::default()).next(),
    )
    .await;
    assert!(next.is_err(), "nothing after the head");
}

async fn hash_chain_finds_an_edited_row(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    for i in 0..20 {
        store
            .log
            .append(&sid(&format!("s{}", i % 3)), ExpectedVersion::Any, &[ev(i)])
            .await
            .unwrap();
    }
    let ok = verify_chain(store.log.as_ref(), |_| {}).await.unwrap();
    assert_eq!(
        ok,
        ChainReport {
            checked: 20,
            head: 20,
            first_break: None
        }
    );

    ctx.tamper(r#"UPDATE events SET data = '{"n":999}' WHERE position = 7"#)
        .await;
    let report = verify_chain(store.log.as_ref(), |_| {}).await.unwrap();
    let (event, why) = report.first_break.expect("the edit is found");
    assert_eq!(event.position, 7);
    assert_eq!(why, ChainBreak::ContentEdited);
    assert_eq!(report.checked, 6);

    // Deleting an event is found as well.
    ctx.tamper("DELETE FROM events WHERE position = 3").await;
    let report = verify_chain(store.log.as_ref(), |_| {}).await.unwrap();
    let (event, why) = report.first_break.expect("the gap is found");
    assert_eq!(
        (event.position, why),
        (4, ChainBreak::PositionGap { expected: 3 })
    );
}

/// A document `k` of collection `c` holding `v`.
fn put(k: &str, v: &str) -> DocChange {
    DocChange::Put {
        collection: "c".into(),
        key: k.into(),
        doc: v.into(),
    }
}

async fn read_store_commits_atomically_with_its_checkpoint(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    let rs = &store.read;
    assert_eq!(rs.checkpoint(ModelSet::Live, "p").await.unwrap(), 0);
    rs.commit(ModelSet::Live, "p", 0, 5, &[put("a", "1"), put("b", "2")])
        .await
        .unwrap();
    assert_eq!(rs.checkpoint(ModelSet::Live, "p").await.unwrap(), 5);
    // A stale writer is refused and writes nothing.
    let err = rs
        .commit(ModelSet::Live, "p", 0, 9, &[put("z", "9")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::CheckpointMoved { found: 5, .. }),
        "{err:?}"
    );
    assert_eq!(
        rs.get_doc(ModelSet::Live, "p", "c", "z").await.unwrap(),
        None
    );
    rs.commit(
        ModelSet::Live,
        "p",
        5,
        6,
        &[
            DocChange::Delete {
                collection: "c".into(),
                key: "a".into(),
            },
            put("c", "3"),
        ],
    )
    .await
    .unwrap();
    let listed = rs
        .list_docs(ModelSet::Live, "p", "c", None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    let page = rs
        .list_docs(ModelSet::Live, "p", "c", Some("b"), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    // Bounded ranges, both directions (the feed pages newest-first with `before`).
    rs.commit(ModelSet::Live, "p", 6, 7, &[put("d", "4"), put("e", "5")])
        .await
        .unwrap();
    let keys = |rows: Vec<eventlog::DocRow>| rows.into_iter().map(|d| d.key).collect::<Vec<_>>();
    let between = |after, before, descending, limit| {
        let range = eventlog::KeyRange {
            after,
            before,
            descending,
            limit,
        };
        rs.list_docs_between(ModelSet::Live, "p", "c", range)
    };
    assert_eq!(
        keys(between(None, None, true, 10).await.unwrap()),
        ["e", "d", "c", "b"]
    );
    assert_eq!(
        keys(between(None, Some("e"), true, 2).await.unwrap()),
        ["d", "c"]
    );
    assert_eq!(
        keys(between(Some("b"), Some("e"), false, 10).await.unwrap()),
        ["c", "d"]
    );
    assert_eq!(
        keys(between(Some("c"), None, false, 1).await.unwrap()),
        ["d"]
    );
    assert!(
        between(Some("d"), Some("e"), false, 10)
            .await
            .unwrap()
            .is_empty()
    );

    rs.commit(
        ModelSet::Rebuild,
        "p",
        0,
        6,
        &[put("b", "2"), put("c", "3"), put("d", "4")],
    )
    .await
    .unwrap();
    rs.promote("p").await.unwrap();
    let (pos, docs) = rs.dump(ModelSet::Live, "p").await.unwrap();
    assert_eq!(pos, 6);
    assert_eq!(docs.len(), 3);
    assert_eq!(rs.dump(ModelSet::Rebuild, "p").await.unwrap(), (0, vec![]));
    rs.clear(ModelSet::Live, "p").await.unwrap();
    assert_eq!(rs.dump(ModelSet::Live, "p").await.unwrap(), (0, vec![]));
}

/// Several projections commit in one transaction: all of it lands, or (one checkpoint moved)
/// none of it.
async fn read_store_commits_many_projections_at_once(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    let rs = &store.read;
    let part = |projection, from, to, changes| ProjectionCommit {
        projection,
        from,
        to,
        changes,
    };
    let (p1, p2) = ([put("a", "1"), put("b", "2")], [put("a", "x")]);
    rs.commit_many(
        ModelSet::Live,
        &[part("p", 0, 4, &p1), part("q", 0, 4, &p2)],
    )
    .await
    .unwrap();
    let doc = |projection, key| rs.get_doc(ModelSet::Live, projection, "c", key);
    assert_eq!(doc("p", "a").await.unwrap().as_deref(), Some("1"));
    assert_eq!(doc("p", "b").await.unwrap().as_deref(), Some("2"));
    assert_eq!(doc("q", "a").await.unwrap().as_deref(), Some("x"));
    // One stale part refuses the whole commit: nothing of `p`'s part is written either.
    let (p3, q3) = (
        [put("a", "changed"), put("z", "new")],
        [DocChange::Delete {
            collection: "c".into(),
            key: "a".into(),
        }],
    );
    let err = rs
        .commit_many(
            ModelSet::Live,
            &[part("p", 4, 9, &p3), part("q", 2, 9, &q3)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LogError::CheckpointMoved { projection, expected: 2, found: 4 } if projection == "q"),
        "{err:?}"
    );
    assert_eq!(doc("p", "a").await.unwrap().as_deref(), Some("1"));
    assert_eq!(doc("p", "z").await.unwrap(), None);
    assert_eq!(rs.checkpoint(ModelSet::Live, "p").await.unwrap(), 4);
    // Puts, deletes and a checkpoint-only part together; a new projection starts at 0.
    rs.commit_many(
        ModelSet::Live,
        &[
            part("p", 4, 9, &p3),
            part("q", 4, 9, &q3),
            part("r", 0, 9, &[]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(doc("p", "a").await.unwrap().as_deref(), Some("changed"));
    assert_eq!(doc("p", "z").await.unwrap().as_deref(), Some("new"));
    assert_eq!(doc("q", "a").await.unwrap(), None);
    for projection in ["p", "q", "r"] {
        assert_eq!(rs.checkpoint(ModelSet::Live, projection).await.unwrap(), 9);
    }
    // The rebuild set is its own.
    assert_eq!(rs.checkpoint(ModelSet::Rebuild, "p").await.unwrap(), 0);
    rs.commit_many(ModelSet::Live, &[]).await.unwrap();
}

/// A long stream reads the same whole, in pages of every size, and from any version: SQLite
/// reads the first rows on the calling thread and the rest from its pool.
async fn long_stream_reads_whole_and_in_pages(b: Backend) {
    let ctx = Ctx::new(b);
    let store = ctx.open().await;
    let log = &store.log;
    let events: Vec<NewEvent> = (1..=150).map(ev).collect();
    log.append(&sid("long"), ExpectedVersion::NoStream, &events)
        .await
        .unwrap();
    log.append(&sid("other"), ExpectedVersion::NoStream, &[ev(0)])
        .await
        .unwrap();
    let versions = |read: &[eventlog::RecordedEvent]| {
        read.iter().map(|e| e.stream_version).collect::<Vec<_>>()
    };
    let whole = log.read_stream(&sid("long"), 0, 1_000).await.unwrap();
    assert_eq!(versions(&whole), (1..=150).collect::<Vec<_>>());
    assert_eq!(whole[149].data_json().unwrap()["n"], 150);
    assert_eq!(whole, log.read_all(0, 150).await.unwrap());
    for (after, limit) in [
        (0, 64),
        (0, 65),
        (0, 100),
        (10, 70),
        (100, 64),
        (140, 1_000),
    ] {
        let page = log.read_stream(&sid("long"), after, limit).await.unwrap();
        let want: Vec<i64> = ((after + 1)..=150).take(limit).collect();
        assert_eq!(versions(&page), want, "after {after}, limit {limit}");
    }
    assert!(
        log.read_stream(&sid("long"), 150, 10)
            .await
            .unwrap()
            .is_empty()
    );
    for (after, limit) in [(0, 64), (0, 65), (5, 100), (100, 1_000)] {
        let page = log.read_all(after, limit).await.unwrap();
        let want: Vec<i64> = ((after + 1)..=151).take(limit).collect();
        let positions: Vec<i64> = page.iter().map(|e| e.position).collect();
        assert_eq!(positions, want, "all after {after}, limit {limit}");
    }
    assert!(
        log.read_stream(&sid("none"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The SQLite store opens its file from several connections: an in-memory URL is refused, not
/// split into databases that do not see each other's writes.
#[tokio::test]
async fn an_in_memory_sqlite_url_is_refused() {
    for url in ["sqlite::memory:", "sqlite://log.db?mode=memory"] {
        let opened = eventlog::open(&OpenOptions::new(url), Arc::new(SystemClock)).await;
        assert!(
            matches!(opened, Err(LogError::UnsupportedUrl(ref u)) if u == url),
            "{url}: {:?}",
            opened.err()
        );
    }
}

/// One test per case, each running `super::case` against `backend`.
macro_rules! cases_against {
    ($backend:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                super::$case($backend).await;
            }
        )*
    };
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            cases_against!(super::Backend::Sqlite; $($case),*);
        }
        mod postgres {
            cases_against!(super::Backend::Postgres; $($case),*);
        }
    };
}

contract!(
    append_and_read,
    conflict_writes_nothing,
    racing_writers_one_winner_per_version,
    concurrent_writers_and_a_live_subscriber,
    idempotent_reappend,
    racing_reappends_of_one_batch_land_once,
    resume_from_checkpoint_after_reopen,
    hash_chain_finds_an_edited_row,
    read_store_commits_atomically_with_its_checkpoint,
    read_store_commits_many_projections_at_once,
    long_stream_reads_whole_and_in_pages,
);
