//! The per-cluster event feed through the real binary: pages and filters, redaction of other
//! users' jobs, the live stream with a reconnect, the CLI, the feed rebuilt from the log, and two
//! API replicas on one PostgreSQL database.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tests::{Api, Server, run, stdout};

const ENV: [(&str, &str); 2] = [
    ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
    ("CLUSTERRA_EXECUTOR_GRACE_MS", "500"),
];

fn mint(data: &str, email: &str, workspace: &str) -> String {
    tests::mint(data, email, workspace, false)
}

fn body(script: &str, env: &[&str]) -> Value {
    json!({"job": {"name": "feed", "script": script, "environment": env,
                   "current_working_directory": "/mnt/efs"}})
}

async fn submit(server: &Server, token: &str, body: &Value) -> (u64, i64) {
    let res = reqwest::Client::new()
        .post(server.url("/v1/clusters/local/jobs"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let out: Value = res.json().await.unwrap();
    (
        out["job_id"].as_u64().unwrap(),
        out["position"].as_i64().unwrap(),
    )
}

async fn page(server: &Server, token: &str, query: &str, min: i64) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(server.url(&format!("/v1/clusters/local/events{query}")))
        .bearer_auth(token)
        .header("X-Clusterra-Min-Position", min)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

fn positions(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect()
}

/// `GET` of the feed's live stream as `token`, resuming after the entry `last` when given.
async fn open_stream(server: &Server, token: &str, last: Option<String>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(server.url("/v1/clusters/local/events/stream"))
        .bearer_auth(token);
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    req.send().await.unwrap()
}

/// An open SSE subscription.
struct Sub {
    events: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>,
    >,
}

impl Sub {
    async fn open(server: &Server, token: &str, last: Option<i64>) -> Sub {
        let res = open_stream(server, token, last.map(|l| l.to_string())).await;
        assert_eq!(res.status(), 200);
        let events = eventsource_stream::Eventsource::eventsource(res.bytes_stream())
            .map(|e| e.map_err(|e| e.to_string()));
        Sub {
            events: Box::pin(events),
        }
    }

    /// The next feed entry (skipping comments), within `within`.
    async fn next(&mut self, within: Duration) -> Value {
        loop {
            let event = tokio::time::timeout(within, self.events.next())
                .await
                .expect("an entry within the bound")
                .unwrap()
                .unwrap();
            if !event.data.is_empty() {
                assert_eq!(event.event, "message", "{event:?}");
                let entry: Value = serde_json::from_str(&event.data).unwrap();
                assert_eq!(event.id, entry["position"].to_string());
                return entry;
            }
        }
    }

    /// Entries until one matches `until`.
    async fn until(&mut self, until: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let e = self.next(Duration::from_secs(15)).await;
            let stop = until(&e);
            got.push(e);
            if stop {
                return got;
            }
        }
    }
}

/// A server started with [`ENV`], and the tokens of alice and bob, users of its workspace.
fn started_with_alice_and_bob() -> (tempfile::TempDir, Api, String, String) {
    let (dir, data, api) = tests::started(&ENV);
    let alice = mint(&data, "alice@example.org", "default");
    let bob = mint(&data, "bob@example.org", "default");
    (dir, api, alice, bob)
}

/// A job of alice's with a secret in its environment, run to COMPLETED: its id and the position
/// of its `JobSubmitted`.
async fn alices_secret_job(api: &Api, alice: &str) -> (u64, i64) {
    let secret = ["PATH=/usr/bin:/bin", "TOKEN=s3cr3t"];
    alices_job_in(api, alice, "#!/bin/bash\necho hi", &secret, "COMPLETED").await
}

/// A job of alice's running `script` with `env`, once in `state`: its id and the position of its
/// `JobSubmitted`.
async fn alices_job_in(
    api: &Api,
    alice: &str,
    script: &str,
    env: &[&str],
    state: &str,
) -> (u64, i64) {
    let (job, at) = submit(&api.server, alice, &body(script, env)).await;
    api.wait_state(job, &[state], Duration::from_secs(15)).await;
    (job, at)
}

/// What alice did: her secret job, then a sleeper she cancelled while it ran.
struct Story {
    job: u64,
    /// The position of the secret job's `JobSubmitted`.
    at: i64,
    sleeper: u64,
    /// The position of the cancel's request.
    cancelled_at: i64,
}

async fn alices_story(api: &Api, alice: &str) -> Story {
    let (job, at) = alices_secret_job(api, alice).await;
    let sleeping = "#!/bin/bash\nsleep 30";
    let (sleeper, _) = alices_job_in(api, alice, sleeping, &["PATH=/bin"], "RUNNING").await;
    let (status, cancel) = api
        .delete_as(&format!("/v1/clusters/local/jobs/{sleeper}"), alice)
        .await;
    assert_eq!(status, 202);
    let cancelled_at = cancel["position"].as_i64().unwrap();
    api.wait_state(sleeper, &["CANCELLED"], Duration::from_secs(15))
        .await;
    Story {
        job,
        at,
        sleeper,
        cancelled_at,
    }
}

/// A job of alice's that does nothing, run to COMPLETED and in every view.
async fn alices_quick_job(api: &Api, alice: &str) -> u64 {
    let (job, _) =
        alices_job_in(api, alice, "#!/bin/bash\ntrue", &["PATH=/bin"], "COMPLETED").await;
    tests::wait_projected(&api.server, api.log_position().await).await;
    job
}

/// The entry of `job` reaching COMPLETED.
fn completes(job: u64) -> impl Fn(&Value) -> bool {
    move |e: &Value| {
        e["job_id"] == job && e["type"] == "JobStateChanged" && e["data"]["to"] == "COMPLETED"
    }
}

/// Every entry of the feed, oldest first, as `token` sees it once the feed has `min`.
async fn oldest_first(server: &Server, token: &str, min: i64) -> Value {
    page(server, token, "?order=asc&limit=1000", min).await.1
}

/// A subscriber sees another user's jobs as they happen, in log order, with their script and
/// environment hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_other_users_jobs_live_in_log_order_with_their_script_hidden() {
    let (_dir, api, alice, bob) = started_with_alice_and_bob();
    // A subscriber from now, before anything happens.
    let mut live = Sub::open(&api.server, &bob, None).await;
    let Story {
        job, at, sleeper, ..
    } = alices_story(&api, &alice).await;

    let seen = live
        .until(|e| e["type"] == "JobStateChanged" && e["data"]["to"] == "CANCELLED")
        .await;
    let order: Vec<i64> = seen
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let submitted = &seen[0];
    assert_eq!(submitted["type"], "JobSubmitted");
    assert_eq!(submitted["position"], at);
    assert_eq!(submitted["actor"], "alice@example.org");
    assert_eq!(
        submitted["summary"],
        format!("alice@example.org submitted job {job} (feed)")
    );
    assert_eq!(submitted["data"]["job_id"], job);
    assert!(submitted["data"].get("body").is_none(), "{submitted}");
    assert!(!submitted.to_string().contains("s3cr3t"));
    let summaries: Vec<&str> = seen
        .iter()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert!(
        summaries.contains(
            &format!("job {job} of alice@example.org RUNNING → COMPLETED, exit code 0").as_str()
        ) || summaries.contains(
            &format!("job {job} of alice@example.org PENDING → COMPLETED, exit code 0").as_str()
        ),
        "{summaries:#?}"
    );
    assert!(summaries.contains(&format!("alice@example.org cancelled job {sleeper}").as_str()));
}

/// The feed carries a bounded summary, for the owner and admins too; the body stays in the job's
/// own stream, which the owner and admins read through the job route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_carries_a_summary_and_the_body_stays_in_the_jobs_own_stream() {
    let (_dir, data, api) = tests::started(&ENV);
    let alice = mint(&data, "alice@example.org", "default");
    let (job, at) = alices_secret_job(&api, &alice).await;
    for token in [&alice, &api.token] {
        let (status, p) = page(
            &api.server,
            token,
            &format!("?job_id={job}&type=JobSubmitted"),
            at,
        )
        .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["events"].as_array().unwrap().len(), 1);
        let data = &p["events"][0]["data"];
        assert!(data.get("body").is_none(), "{data}");
        assert_eq!(data["name"], "feed", "{data}");
        assert!(data["shape"].is_object(), "{data}");
        let (status, detail) = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/clusters/local/jobs/{job}"),
                token,
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "{detail}");
        let submitted = detail["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["event_type"] == "JobSubmitted")
            .unwrap();
        assert!(
            submitted["data"]["body"]["job"]["environment"]
                .to_string()
                .contains("s3cr3t"),
            "{detail}"
        );
    }
}

/// Pages are newest first by default and `next` continues to the oldest; `after` pages oldest
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_newest_first_and_next_continues_and_after_reads_oldest_first() {
    let (_dir, api, alice, bob) = started_with_alice_and_bob();
    let server = &api.server;
    let story = alices_story(&api, &alice).await;
    let everything = oldest_first(server, &bob, story.cancelled_at).await;
    let all = positions(&everything);
    assert!(all.len() >= 7, "{everything}");
    assert_eq!(everything["next"], Value::Null);
    let mut newest_first = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let (status, p) = page(server, &bob, &query, story.cancelled_at).await;
        assert_eq!(status, 200, "{p}");
        newest_first.extend(positions(&p));
        match p["next"].as_i64() {
            Some(n) => query = format!("?limit=2&before={n}"),
            None => break,
        }
    }
    newest_first.reverse();
    assert_eq!(newest_first, all);
    let (_, p) = page(
        server,
        &bob,
        &format!("?order=asc&after={}&limit=1", all[1]),
        0,
    )
    .await;
    assert_eq!(positions(&p), vec![all[2]]);
}

/// The type filter takes one type or several; `from` and `to` bound the entries' times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_and_time_filters_pick_their_entries() {
    let (_dir, api, alice, bob) = started_with_alice_and_bob();
    let server = &api.server;
    let story = alices_story(&api, &alice).await;
    let all = positions(&oldest_first(server, &bob, story.cancelled_at).await);
    let (_, p) = page(server, &bob, "?type=JobCancelRequested", 0).await;
    assert_eq!(p["events"].as_array().unwrap().len(), 1);
    assert_eq!(p["events"][0]["actor"], "alice@example.org");
    let (_, p) = page(
        server,
        &bob,
        "?type=ClusterRegistered,JobCancelRequested&order=asc",
        0,
    )
    .await;
    assert_eq!(
        p["events"][0]["summary"],
        "system registered cluster local (Local executor, local)"
    );
    let (_, p) = page(server, &bob, "?from=2999-01-01T00:00:00Z", 0).await;
    assert_eq!(p["events"], json!([]));
    let (_, p) = page(
        server,
        &bob,
        "?to=2999-01-01T00:00:00Z&from=2000-01-01T00:00:00Z&order=asc&limit=1000",
        0,
    )
    .await;
    assert_eq!(positions(&p), all);
}

/// Bad parameters: a clear error with the field, for each; the stream refuses a reconnect id
/// that is not a log position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_with_the_field_at_fault() {
    let (_dir, data, api) = tests::started(&ENV);
    let server = &api.server;
    let bob = mint(&data, "bob@example.org", "default");
    for (query, field) in [
        ("?type=JobExploded", "type"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?order=sideways", "order"),
        ("?after=-1", "after"),
        ("?from=yesterday", "from"),
        ("?job_id=x", "job_id"),
        ("?colour=blue", "colour"),
    ] {
        let (status, p) = page(server, &bob, query, 0).await;
        assert_eq!(status, 400, "{query}: {p}");
        assert_eq!(p["error"]["field"], field, "{query}: {p}");
    }
    let res = open_stream(server, &bob, Some("-3".into())).await;
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_last_event_id", "{err}");
}

/// Another workspace does not see this cluster's feed at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workspace_does_not_see_the_feed() {
    let (_dir, data, api) = tests::started(&ENV);
    let eve = mint(&data, "eve@rival.org", "rival");
    let (status, p) = page(&api.server, &eve, "", 0).await;
    tests::assert_error_code(status, &p, 404, "cluster_not_found");
}

/// A reconnect with Last-Event-ID gets exactly what happened meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_gets_exactly_what_happened_meanwhile() {
    let (_dir, api, alice, bob) = started_with_alice_and_bob();
    let server = &api.server;
    // bob follows the feed until alice's first job is over, then drops off.
    let mut live = Sub::open(server, &bob, None).await;
    let first = alices_quick_job(&api, &alice).await;
    let last = live.until(completes(first)).await.last().unwrap()["position"]
        .as_i64()
        .unwrap();
    drop(live);
    let missed = alices_quick_job(&api, &alice).await;
    let mut again = Sub::open(server, &bob, Some(last)).await;
    let resumed = again.until(completes(missed)).await;
    let (_, p) = page(server, &bob, &format!("?order=asc&after={last}"), 0).await;
    assert_eq!(
        resumed
            .iter()
            .map(|e| e["position"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        positions(&p)
    );
}

/// The CLI prints the feed's latest lines, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_latest_entries() {
    let (_dir, api, alice, bob) = started_with_alice_and_bob();
    let job = alices_quick_job(&api, &alice).await;
    let out = run(&[
        "events",
        "local",
        "--url",
        &api.server.base,
        "--token",
        &bob,
        "--limit",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains(&format!("job {job} of alice@example.org")),
        "{text}"
    );
}

/// The feed projection stores summaries; rebuilt from the log, it is what the live one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_rebuilt_from_the_log_is_the_live_one() {
    let (_dir, data, api) = tests::started(&ENV);
    let alice = mint(&data, "alice@example.org", "default");
    alices_story(&api, &alice).await;
    assert_eq!(api.server.stop(), Some(0));
    let verified = tests::replay_verified(&data, "feed");
    assert!(verified.contains("feed: OK"), "{verified}");
}

/// Two API replicas on one PostgreSQL database: a subscriber on one sees what the other appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_replica_sees_appends_through_another() {
    let db = tests::ScratchDb::create().await;
    let url = db.url.clone();
    let (_dir, a_dir, b_dir) = tests::replica_dirs();
    // Replica B polls Slurm rarely: both replicas would otherwise reconcile the local cluster's
    // jobs against their own executors (one leader per poll cycle is a later feature).
    let (a, banner) = tests::start_replica(
        &a_dir,
        &url,
        &[
            ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
            ("CLUSTERRA_DEFAULT_CLUSTER", "true"),
        ],
    );
    let token = tests::banner_token(&banner).unwrap();
    // Same signing secret on both, as replicas behind one load balancer would have.
    let b = tests::start_another_replica(
        &a_dir,
        &b_dir,
        &url,
        &[("CLUSTERRA_POLL_INTERVAL_MS", "60000")],
    );

    // Both have projected the `local` cluster (registered by A: CLUSTERRA_DEFAULT_CLUSTER).
    tests::wait_projected(&a, 1).await;
    tests::wait_projected(&b, 1).await;
    for (writer, reader) in [(&a, &b), (&b, &a)] {
        let mut sub = Sub::open(reader, &token, None).await;
        let started = Instant::now();
        let (job, at) = submit(
            writer,
            &token,
            &body("#!/bin/bash\nsleep 1", &["PATH=/bin"]),
        )
        .await;
        // By position: both replicas run their own local executor, so job ids repeat (job 1 of
        // each), and a subscriber that starts before its replica projected the first round's
        // entry sees that entry too.
        let entry = loop {
            let e = sub.next(Duration::from_secs(5)).await;
            if e["type"] == "JobSubmitted" && e["position"] == at {
                break e;
            }
        };
        let took = started.elapsed();
        assert_eq!(entry["job_id"], job, "{entry}");
        eprintln!(
            "submit through {} → entry on {}: {:?}",
            writer.base, reader.base, took
        );
    }
    drop((a, b));
    db.drop_database().await;
}
