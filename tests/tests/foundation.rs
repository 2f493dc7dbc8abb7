//! The foundation through the real binary: serve, project, replay --verify, audit — on SQLite
//! and on PostgreSQL (needs DATABASE_URL; scripts/test provides it).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::Arc;

use eventlog::{ExpectedVersion, NewEvent, OpenOptions, StreamId, SystemClock};
use serde_json::json;
use sqlx::Connection;
use tests::{Server, run, stderr, stdout, wait_projected};

/// Appends `n` events over a few streams straight through the library, as another writer would.
async fn append(url: &str, n: usize) -> i64 {
    let store = eventlog::open(&OpenOptions::new(url), Arc::new(SystemClock))
        .await
        .expect("open");
    let mut last = 0;
    for i in 0..n {
        let stream = StreamId::new(format!("job-local-{}", i % 7)).expect("stream");
        let kind = ["SampleRecorded", "SampleNoted", "SampleNoted"][i % 3];
        let out = store
            .log
            .append(
                &stream,
                ExpectedVersion::Any,
                &[NewEvent::new(kind, json!({ "i": i }))],
            )
            .await
            .expect("append");
        last = out.last_position;
    }
    last
}

async fn exec(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut c).await.expect("sql");
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut c).await.expect("sql");
    }
}

/// The whole story against one database; `state` are the flags naming it.
async fn story(state: &[&str], url: &str) {
    let server = Server::start(state);
    let health: serde_json::Value = reqwest::get(server.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let head = append(url, 300).await;
    let ready = wait_projected(&server, head).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["log_position"], head);

    // Unknown routes answer in the one error shape.
    let res = reqwest::get(server.url("/v1/nothing-here")).await.unwrap();
    assert_eq!(res.status(), 404);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "route_not_found");
    assert!(err["error"]["field"].is_null());

    assert_eq!(server.stop(), Some(0), "SIGTERM stops the server cleanly");

    let with = |args: &[&str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend_from_slice(state);
        run(&v)
    };

    let ok = with(&["replay", "--projection", "all", "--verify"]);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    tests::assert_contains(&stdout(&ok), "event_counts: OK");

    let ok = with(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(
        stdout(&ok).starts_with(&format!("OK: {head} events")),
        "{}",
        stdout(&ok)
    );

    let history = with(&["audit", "stream", "job-local-3"]);
    assert!(history.status.success());
    assert_eq!(
        stdout(&history).lines().count(),
        300 / 7 + 1,
        "{}",
        stdout(&history)
    );
    assert!(stdout(&history).contains("SampleRecorded"));

    // Tamper with a live read model: verify names the difference and exits 1.
    exec(url, "UPDATE rm_live_docs SET doc = '{\"event_type\":\"SampleRecorded\",\"count\":1,\"last_position\":1}' \
               WHERE projection = 'event_counts' AND key = 'SampleRecorded'").await;
    let bad = with(&["replay", "--projection", "event_counts", "--verify"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    tests::assert_contains(&stdout(&bad), "types/SampleRecorded: live has");
    // A replay repairs it.
    let fixed = with(&["replay", "--projection", "event_counts"]);
    assert!(fixed.status.success(), "{}", stderr(&fixed));
    assert!(
        stderr(&fixed).contains("events/s"),
        "progress is shown: {}",
        stderr(&fixed)
    );
    assert!(
        with(&["replay", "--projection", "all", "--verify"])
            .status
            .success()
    );

    // Tamper with the log itself: audit names the first broken event.
    exec(
        url,
        "UPDATE events SET data = '{\"i\":-1}' WHERE position = 42",
    )
    .await;
    let broken = with(&["audit", "verify"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stdout(&broken).starts_with("BROKEN at position 42 "),
        "{}",
        stdout(&broken)
    );
    tests::assert_contains(&stdout(&broken), "41 events before it are intact");

    // Usage mistakes are explained.
    let unknown = with(&["replay", "--projection", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    tests::assert_contains(&stderr(&unknown), "use one of: all, event_counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_story() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    story(
        &["--data-dir", data],
        &format!("sqlite://{data}/clusterra.db"),
    )
    .await;

    // The embedded default registered the `local` cluster on first start, once.
    let restarted = Server::start(&["--data-dir", data]);
    assert_eq!(restarted.stop(), Some(0));
    let history = run(&[
        "audit",
        "stream",
        "cluster:default:local",
        "--json",
        "--data-dir",
        data,
    ]);
    let lines: Vec<serde_json::Value> = stdout(&history)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event_type"], "ClusterRegistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_story() {
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL; run scripts/test");
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    exec(&admin_url, &format!("CREATE DATABASE {name}")).await;
    let (base, _) = admin_url.rsplit_once('/').expect("url has a database");
    let url = format!("{base}/{name}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    story(&["--database-url", &url, "--data-dir", data], &url).await;
    exec(&admin_url, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

#[test]
fn bad_configuration_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "listen = \"not an address\"").unwrap();
    let out = run(&["audit", "verify", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    tests::assert_contains(&stderr(&out), "invalid configuration");
    let out = run(&["audit", "verify", "--config", "/nonexistent.toml"]);
    tests::assert_contains(&stderr(&out), "does not exist");
}
