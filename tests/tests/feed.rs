//! The per-cluster event feed through the real binary: pages and filters, redaction of other
//! users' jobs, the live stream with a reconnect, the CLI, and two API replicas on one
//! PostgreSQL database.

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

/// An open SSE subscription.
struct Sub {
    events: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>,
    >,
}

impl Sub {
    async fn open(server: &Server, token: &str, last: Option<i64>) -> Sub {
        let mut req = reqwest::Client::new()
            .get(server.url("/v1/clusters/local/events/stream"))
            .bearer_auth(token);
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l);
        }
        let res = req.send().await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_pages_filters_redacts_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let api = Api::start(data, &ENV);
    let server = &api.server;
    let admin = api.token.clone();
    let alice = mint(data, "alice@example.org", "default");
    let bob = mint(data, "bob@example.org", "default");
    let eve = mint(data, "eve@rival.org", "rival");

    // A subscriber from now, before anything happens.
    let mut live = Sub::open(server, &bob, None).await;

    let (job, at) = submit(
        server,
        &alice,
        &body(
            "#!/bin/bash\necho hi",
            &["PATH=/usr/bin:/bin", "TOKEN=s3cr3t"],
        ),
    )
    .await;
    api.wait_state(job, &["COMPLETED"], Duration::from_secs(15))
        .await;
    let (sleeper, _) = submit(
        server,
        &alice,
        &body("#!/bin/bash\nsleep 30", &["PATH=/bin"]),
    )
    .await;
    api.wait_state(sleeper, &["RUNNING"], Duration::from_secs(15))
        .await;
    let res = reqwest::Client::new()
        .delete(server.url(&format!("/v1/clusters/local/jobs/{sleeper}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let cancelled_at = res.json::<Value>().await.unwrap()["position"]
        .as_i64()
        .unwrap();
    api.wait_state(sleeper, &["CANCELLED"], Duration::from_secs(15))
        .await;

    // Bob's live view: alice's jobs show up, in log order, with their script hidden.
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

    // The feed carries a bounded summary, for alice and admins too; the body stays in the job's
    // own stream, which alice and admins read through the job route.
    for token in [&alice, &admin] {
        let (status, p) = page(
            server,
            token,
            &format!("?job_id={job}&type=JobSubmitted"),
            cancelled_at,
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

    // Pages: newest first by default, `next` continues; oldest first with `after`.
    let (_, everything) = page(server, &bob, "?order=asc&limit=1000", cancelled_at).await;
    let all = positions(&everything);
    assert!(all.len() >= 7, "{everything}");
    assert_eq!(everything["next"], Value::Null);
    let mut newest_first = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let (status, p) = page(server, &bob, &query, cancelled_at).await;
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

    // Bad parameters: a clear error with the field, for each.
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
    // The stream refuses a reconnect id that is not a log position.
    let res = reqwest::Client::new()
        .get(server.url("/v1/clusters/local/events/stream"))
        .bearer_auth(&bob)
        .header("Last-Event-ID", "-3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_last_event_id", "{err}");
    // Another workspace does not see this cluster at all.
    let (status, p) = page(server, &eve, "", 0).await;
    assert_eq!(
        (status, p["error"]["code"].as_str()),
        (404, Some("cluster_not_found"))
    );

    // A reconnect with Last-Event-ID gets exactly what happened meanwhile.
    let last = *all.last().unwrap();
    drop(live);
    let (missed, _) = submit(server, &alice, &body("#!/bin/bash\ntrue", &["PATH=/bin"])).await;
    api.wait_state(missed, &["COMPLETED"], Duration::from_secs(15))
        .await;
    let mut again = Sub::open(server, &bob, Some(last)).await;
    let resumed = again
        .until(|e| {
            e["job_id"] == missed
                && e["type"] == "JobStateChanged"
                && e["data"]["to"] == "COMPLETED"
        })
        .await;
    let (_, p) = page(server, &bob, &format!("?order=asc&after={last}"), 0).await;
    assert_eq!(
        resumed
            .iter()
            .map(|e| e["position"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        positions(&p)
    );

    // The CLI prints the same lines, oldest first.
    let out = run(&[
        "events",
        "local",
        "--url",
        &server.base,
        "--token",
        &bob,
        "--limit",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains(&format!("job {missed} of alice@example.org")),
        "{text}"
    );

    // The feed projection stores summaries; rebuilt from the log, it is what the live one is.
    drop(again);
    let Api { server, .. } = api;
    assert_eq!(server.stop(), Some(0));
    let verify = run(&[
        "replay",
        "--projection",
        "feed",
        "--verify",
        "--data-dir",
        data,
    ]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("feed: OK"), "{}", stdout(&verify));
}

/// Two API replicas on one PostgreSQL database: a subscriber on one sees what the other appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_replica_sees_appends_through_another() {
    let db = tests::ScratchDb::create().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a_data = a_dir.to_str().unwrap();
    // Replica B polls Slurm rarely: both replicas would otherwise reconcile the local cluster's
    // jobs against their own executors (one leader per poll cycle is a later feature).
    let (a, banner) = Server::start_with_env(
        &["--data-dir", a_data, "--database-url", &url],
        &[
            ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
            ("CLUSTERRA_DEFAULT_CLUSTER", "true"),
        ],
    );
    let token = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("export CLUSTERRA_TOKEN="))
        .unwrap()
        .to_string();
    // Same signing secret on both, as replicas behind one load balancer would have.
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::copy(a_dir.join("jwt-secret"), b_dir.join("jwt-secret")).unwrap();
    let b = Server::start_with_env(
        &[
            "--data-dir",
            b_dir.to_str().unwrap(),
            "--database-url",
            &url,
        ],
        &[("CLUSTERRA_POLL_INTERVAL_MS", "60000")],
    )
    .0;

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
