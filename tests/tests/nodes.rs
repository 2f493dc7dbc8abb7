//! Nodes of the local executor through the real binary: decisions reach the replica store, the
//! edge agent launches nodes that become ready after their cold start, jobs run only on ready
//! nodes, a warm node takes the next job without a launch, idle nodes are terminated; and with
//! two replicas on PostgreSQL only the leader decides, and another takes over when it dies.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Api, ScratchDb, Server};

fn job(script: &str) -> Value {
    json!({"job": {"name": "n", "script": script, "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": "/mnt/efs"}})
}

async fn wait_events(api: &Api, types: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = tests::deadline(within);
    loop {
        let e = api.events(types).await;
        if e.len() >= n {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{n} {types} events expected: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap()
}

async fn nodeset(api: &Api, instance_type: &str) -> Value {
    api.get_ok("/v1/clusters/local/nodesets").await["nodesets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance_type"] == instance_type)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_nodes_that_come_up_after_their_cold_start_and_go_when_idle() {
    let (_dir, _, api) = tests::started(&[
        ("CLUSTERRA_NODE_COLD_START_MS", "1500"),
        ("CLUSTERRA_SCALE_IDLE_WINDOW_MS", "4000"),
    ]);
    // One vCPU with the default 2,016 MiB: a c7g.medium keeps 1.5 GiB, and an m7g.medium
    // (general-xs, $0.0408) holds it for less than a c7g.large ($0.0725).
    let (status, out) = api.submit(job("#!/bin/bash\nsleep 1\n")).await;
    assert_eq!(status, 201, "{out}");
    let first = out["job_id"].as_u64().unwrap();
    // Pending (no node) through the cold start.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(api.job(first).await["state"], "PENDING");
    let launched = wait_events(&api, "NodeLaunched", 1, Duration::from_secs(10)).await;
    assert_eq!(
        launched[0]["data"]["instance_type"], "m7g.medium",
        "{launched:?}"
    );
    let node = launched[0]["data"]["node"].as_str().unwrap().to_string();
    let done = api
        .wait_state(first, &["COMPLETED"], Duration::from_secs(20))
        .await;
    let ready = wait_events(&api, "NodeReady", 1, Duration::from_secs(5)).await;
    assert_eq!(ready[0]["data"]["node"], node.as_str());
    assert!(
        ready[0]["data"]["cold_start_ms"].as_u64().unwrap() >= 1500,
        "{ready:?}"
    );
    // It ran on that node, and only once the node was ready.
    assert!(
        time(&done["started_at"]) >= time(&launched[0]["data"]["ready_expected_at"]),
        "{done} {launched:?}"
    );
    assert_eq!(
        api.job(first).await["node"].as_str().unwrap_or_default(),
        node,
        "the job view names its node"
    );
    let set = nodeset(&api, "m7g.medium").await;
    assert_eq!(
        (set["desired"].as_u64(), set["ready"].as_u64()),
        (Some(1), Some(1)),
        "{set}"
    );

    // The node is warm: the next job starts on it without a launch.
    let (status, out) = api.submit(job("#!/bin/bash\ntrue\n")).await;
    assert_eq!(status, 201, "{out}");
    let second = out["job_id"].as_u64().unwrap();
    let done = api
        .wait_state(second, &["COMPLETED"], Duration::from_secs(10))
        .await;
    let wait = time(&done["started_at"]) - time(&done["submitted_at"]);
    eprintln!(
        "warm node: started {} ms after submit",
        wait.num_milliseconds()
    );
    assert_eq!(
        api.events("NodeLaunched").await.len(),
        1,
        "no second launch"
    );
    assert_eq!(api.job(second).await["node"], node.as_str());

    // Idle past the window: scaled to 0 and the node is terminated.
    let gone = wait_events(&api, "NodeTerminated", 1, Duration::from_secs(20)).await;
    assert_eq!(gone[0]["data"]["node"], node.as_str(), "{gone:?}");
    let set = nodeset(&api, "m7g.medium").await;
    assert_eq!(
        (set["desired"].as_u64(), set["ready"].as_u64()),
        (Some(0), Some(0)),
        "{set}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_vcpu_job_at_the_default_memory_runs_on_compute_nodes() {
    let (_dir, _, api) = tests::started(&[("CLUSTERRA_NODE_COLD_START_MS", "300")]);
    let run = |body: Value| {
        let api = &api;
        async move {
            let (status, out) = api.submit(body).await;
            assert_eq!(status, 201, "{out}");
            let id = out["job_id"].as_u64().unwrap();
            api.wait_state(id, &["COMPLETED"], Duration::from_secs(20))
                .await
        }
    };
    // 16 tasks, no memory asked: the default memory per vCPU is what a c7g.4xlarge keeps per
    // vCPU after the 512 MiB reserve (2,016 MiB), so the job fills one compute node exactly.
    let mut body = job("#!/bin/bash\ntrue\n");
    body["job"]["tasks"] = json!(16);
    let done = run(body.clone()).await;
    let nodes: Vec<&str> = done["node"].as_str().unwrap().split(',').collect();
    assert_eq!(nodes.len(), 1, "{done}");
    assert!(nodes[0].starts_with("compute-xlarge-"), "{done}");
    assert_eq!(done["rate_usd_per_hour"], "0.580000", "{done}");

    // 20 tasks at the default memory (39.4 GiB): Slurm may spread them (no node count). Two
    // c7g.4xlarge would hold them for $1.16 of nodes, half empty; five m7g.xlarge, four tasks
    // each, fill theirs for $0.816 (placement prices the whole nodes a job starts).
    let mut twenty = body.clone();
    twenty["job"]["tasks"] = json!(20);
    let done = run(twenty).await;
    let nodes: Vec<&str> = done["node"].as_str().unwrap().split(',').collect();
    assert_eq!(nodes.len(), 5, "{done}");
    assert!(
        nodes.iter().all(|n| n.starts_with("general-medium-")),
        "{done}"
    );
    assert_eq!(done["rate_usd_per_hour"], "0.816000", "{done}");
    let launched = wait_events(&api, "NodeLaunched", 6, Duration::from_secs(10)).await;
    assert_eq!(
        launched
            .iter()
            .filter(|e| e["data"]["instance_type"] == "m7g.xlarge")
            .count(),
        5,
        "{launched:?}"
    );

    // 2 GiB per vCPU asked (32 GiB, more than a c7g.4xlarge keeps), pinned to one node
    // (`nodes: 1`) or not: no compute size holds it on one node, and one m7g.4xlarge ($0.6528)
    // costs less than the two c7g.4xlarge ($1.16) its halves would keep up.
    body["job"]["memory_per_cpu"] = json!({"set": true, "number": 2048});
    let spread = body.clone();
    body["job"]["nodes"] = json!(1);
    for b in [spread, body] {
        let done = run(b).await;
        let node = done["node"].as_str().unwrap();
        assert!(node.starts_with("general-xlarge-"), "{done}");
    }
}

async fn readyz(server: &Server) -> Value {
    reqwest::get(server.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_leader(server: &Server, within: Duration) {
    let deadline = tests::deadline(within);
    while readyz(server).await["poll_leader"] != true {
        assert!(Instant::now() < deadline, "{} never led", server.base);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_decides_and_another_takes_over_when_it_dies() {
    let db = ScratchDb::create().await;
    let url = db.url.clone();
    let (_dir, a_dir, b_dir) = tests::replica_dirs();
    // No nodes and nothing runs (executor_slots = 0): pending jobs only drive decisions.
    let env = [
        ("CLUSTERRA_EXECUTOR_SLOTS", "0"),
        ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
        ("CLUSTERRA_SCALE_IDLE_WINDOW_MS", "600000"),
        ("CLUSTERRA_DEFAULT_CLUSTER", "true"),
    ];
    let (a, banner) = tests::start_replica(&a_dir, &url, &env);
    let token = tests::banner_token(&banner).unwrap();
    wait_leader(&a, Duration::from_secs(10)).await;
    let b = tests::start_another_replica(&a_dir, &b_dir, &url, &env);
    tests::wait_projected(&b, 1).await;
    // A leads, B waits (several of B's cycles).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(readyz(&a).await["poll_leader"], true);
    assert_eq!(readyz(&b).await["poll_leader"], false);

    let api_a = Api {
        server: a,
        token: token.clone(),
        client: reqwest::Client::new(),
    };
    let (status, out) = api_a.submit(job("#!/bin/bash\ntrue\n")).await;
    assert_eq!(status, 201, "{out}");
    let first = wait_events(&api_a, "ScaleDecisionMade", 1, Duration::from_secs(10)).await;
    assert_eq!(
        (
            first[0]["data"]["from"].as_u64(),
            first[0]["data"]["to"].as_u64()
        ),
        (Some(0), Some(1))
    );

    // The leader dies without a word; B takes the lock once A's connection is gone.
    let killed = Instant::now();
    api_a.server.kill();
    wait_leader(&b, Duration::from_secs(15)).await;
    eprintln!(
        "B leads {} ms after A was killed",
        killed.elapsed().as_millis()
    );

    let api_b = Api {
        server: b,
        token,
        client: reqwest::Client::new(),
    };
    for _ in 0..2 {
        let (status, out) = api_b.submit(job("#!/bin/bash\ntrue\n")).await;
        assert_eq!(status, 201, "{out}");
    }
    // B continues from A's decision (from 1), and nothing was decided twice.
    let deadline = tests::deadline(Duration::from_secs(15));
    let all = loop {
        let all = api_b.events("ScaleDecisionMade").await;
        if all.iter().any(|d| d["data"]["from"] != 0) {
            break all;
        }
        assert!(Instant::now() < deadline, "B decided nothing: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut count = 0;
    for pair in all.windows(2) {
        assert_eq!(
            pair[1]["data"]["from"], pair[0]["data"]["to"],
            "a chain of decisions: {all:?}"
        );
    }
    for d in &all {
        assert_eq!(d["data"]["node_set"], all[0]["data"]["node_set"], "{all:?}");
        count += 1;
    }
    assert!(count >= 2, "{all:?}");
    assert_eq!(all[0]["data"]["from"], 0, "{all:?}");
    drop(api_b);
    db.drop_database().await;
}

/// The same flow with the replica store in DynamoDB (the moto_server scripts/test starts): the
/// desired counts reach the agent through the table, so the job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_desired_counts_from_dynamodb() {
    if std::env::var("CLUSTERRA_SKIP_DYNAMODB").is_ok() {
        eprintln!("SKIPPED: SKIP_DYNAMODB=1, no DynamoDB-compatible server for this run");
        return;
    }
    let endpoint = std::env::var("CLUSTERRA_DYNAMODB_ENDPOINT")
        .expect("CLUSTERRA_DYNAMODB_ENDPOINT; run scripts/test (it starts moto_server)");
    let table = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    let (_dir, data, api) = tests::started(&[
        ("CLUSTERRA_REPLICA_STORE", "dynamodb"),
        ("CLUSTERRA_DYNAMODB_ENDPOINT", &endpoint),
        ("CLUSTERRA_DYNAMODB_TABLE", &table),
        ("CLUSTERRA_DYNAMODB_CREATE_TABLE", "true"),
        ("CLUSTERRA_DYNAMODB_ACCESS_KEY_ID", "test"),
        ("CLUSTERRA_DYNAMODB_SECRET_ACCESS_KEY", "test"),
    ]);
    let (status, out) = api.submit(job("#!/bin/bash\ntrue\n")).await;
    assert_eq!(status, 201, "{out}");
    let id = out["job_id"].as_u64().unwrap();
    api.wait_state(id, &["COMPLETED"], Duration::from_secs(20))
        .await;
    let ready = wait_events(&api, "NodeReady", 1, Duration::from_secs(5)).await;
    assert_eq!(api.job(id).await["node"], ready[0]["data"]["node"]);
    // No row went to the embedded table: the agent could only have read DynamoDB.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{data}/clusterra.db"))
        .await
        .unwrap();
    let rows: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM replica_counts")
        .fetch_optional(&db)
        .await
        .unwrap_or(None);
    assert!(
        rows.unwrap_or(0) == 0,
        "the embedded replica table was written: {rows:?}"
    );
}
