//! `POST /v1/clusters/{id}/jobs/estimate` through the real binary: it refuses exactly what submit
//! refuses and appends nothing; its placement and rate are what submit then records, for every
//! built-in template; its expected start is right for a cold start, a queue and a warm node; it
//! adds the job's maximum cost to the quota; and `clusterra submit --dry-run` prints it.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use serde_json::{Value, json};
use tests::Api;

const ESTIMATE: &str = "/v1/clusters/local/jobs/estimate";

fn job(cpus: u32, minutes: Option<u32>) -> Value {
    let mut j = json!({"job": {"name": "e", "script": "#!/bin/bash\nsleep 1\n",
        "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs",
        "tasks": 1, "cpus_per_task": cpus}});
    if let Some(m) = minutes {
        j["job"]["time_limit"] = json!({"set": true, "number": m});
    }
    j
}

async fn estimate(api: &Api, body: Value) -> Value {
    let (status, out) = api.post_as(ESTIMATE, &api.token, body).await;
    assert_eq!(status, 200, "{out}");
    out
}

/// Estimates `body` until its expected start is of `kind` (the poll cycle moves the plan).
async fn estimate_until(api: &Api, body: &Value, kind: &str, within: Duration) -> Value {
    let deadline = tests::deadline(within);
    loop {
        let e = estimate(api, body.clone()).await;
        if e["expected_start"]["kind"] == kind {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected start {kind} expected: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_estimate_refuses_what_submit_refuses_and_appends_nothing() {
    let (_dir, _, api) = tests::started(&[]);
    // Let the first poll cycles settle: an idle server appends nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let head = api.log_position().await;
    for bad in [
        json!({"job": {"script": 42}}),
        json!({"job": {"script": "#!/bin/bash\ntrue\n", "tasks": 100000}}),
        json!({"template_id": "nope", "params": {}}),
        json!({"template_id": "shell", "params": {"command": 42}}),
        json!([1, 2]),
    ] {
        let (s1, mut e1) = api.post_as(ESTIMATE, &api.token, bad.clone()).await;
        let (s2, mut e2) = api.submit(bad.clone()).await;
        assert!((400..500).contains(&s1), "{bad}: {s1} {e1}");
        // Every request has its own id; the rest is the same.
        for e in [&mut e1, &mut e2] {
            e["error"]["request_id"].take();
        }
        assert_eq!((s1, &e1), (s2, &e2), "{bad}: the same answer as submit");
    }
    // Unknown clusters and callers without a token.
    let (status, out) = api
        .post_as("/v1/clusters/nope/jobs/estimate", &api.token, job(1, None))
        .await;
    tests::assert_error_code(status, &out, 404, "cluster_not_found");
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            ESTIMATE,
            "not-a-token",
            Some(job(1, None)),
            None,
        )
        .await;
    assert_eq!(status, 401);
    // A good body is estimated, and still nothing is recorded.
    let e = estimate(&api, job(1, Some(60))).await;
    assert_eq!(
        e["max_cost_usd"], e["rate_usd_per_hour"],
        "an hour's limit: {e}"
    );
    api.assert_log_at(head, "estimates append nothing").await;
    // Without a time limit the cost is unbounded, and the answer says so.
    let e = estimate(&api, job(1, None)).await;
    assert!(e["max_cost_usd"].is_null(), "{e}");
    assert!(
        e["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["field"] == "job.time_limit"),
        "{e}"
    );
    api.assert_log_at(head, "estimates append nothing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_is_estimated_as_submit_then_prices_it() {
    let (_dir, _, api) = tests::started(&[]);
    let templates = api.get_ok("/v1/templates").await;
    let templates = templates["templates"].as_array().unwrap().clone();
    assert!(templates.len() >= 6, "{templates:?}");
    let mut placed = Vec::new();
    for t in templates {
        let id = t["id"].as_str().unwrap();
        let full = api.get_ok(&format!("/v1/templates/{id}")).await;
        let params = full["params_schema"]["examples"][0].clone();
        assert!(params.is_object(), "{id} has an example: {full}");
        let body = json!({"template_id": id, "params": params});
        let e = estimate(&api, body.clone()).await;
        let (status, out) = api.submit(body).await;
        assert_eq!(status, 201, "{id}: {out}");
        let id = out["job_id"].as_u64().unwrap();
        let deadline = tests::deadline(Duration::from_secs(10));
        let view = loop {
            let view = api.job(id).await;
            if !view["rate_usd_per_hour"].is_null() {
                break view;
            }
            assert!(std::time::Instant::now() < deadline, "{id}: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            view["rate_usd_per_hour"], e["rate_usd_per_hour"],
            "{id}: the estimate's rate is the recorded one: {e} {view}"
        );
        assert_eq!(
            view["shape"]["time_limit_minutes"], e["time_limit_minutes"],
            "{id}: {e} {view}"
        );
        // The rate is the placement's: the shape's hourly price × its vCPU share × nodes.
        let sets = api.get_ok("/v1/clusters/local/nodesets").await;
        let set = sets["nodesets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["instance_type"] == e["placement"]["instance_type"])
            .cloned()
            .unwrap();
        let hourly: f64 = set["hourly_usd"].as_str().unwrap().parse().unwrap();
        let per_node = e["placement"]["vcpus_per_node"].as_f64().unwrap();
        let nodes = e["placement"]["nodes"].as_f64().unwrap();
        let rate: f64 = e["rate_usd_per_hour"].as_str().unwrap().parse().unwrap();
        let expected = hourly * per_node / set["vcpus"].as_f64().unwrap() * nodes;
        assert!((rate - expected).abs() < 1e-5, "{id}: {rate} vs {expected}");
        placed.push((
            id.to_string(),
            view["job_id"].as_u64().unwrap(),
            e["placement"].clone(),
        ));
    }
    // Each ran where its estimate placed it: on as many nodes, each of that set.
    for (id, job, p) in placed {
        let deadline = tests::deadline(Duration::from_secs(30));
        let nodes = loop {
            let view = api.job(job).await;
            if let Some(n) = view["node"].as_str() {
                break n.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id}: never placed: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let prefix = format!(
            "{}-{}-",
            p["family"].as_str().unwrap(),
            p["size"].as_str().unwrap()
        );
        let names: Vec<&str> = nodes.split(',').collect();
        assert_eq!(
            names.len() as u64,
            p["nodes"].as_u64().unwrap(),
            "{id}: {nodes} {p}"
        );
        assert!(
            names.iter().all(|n| n.starts_with(&prefix)),
            "{id}: {nodes} {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expected_start_follows_cold_starts_queues_and_warm_nodes() {
    let (_dir, _, api) = tests::started(&[
        ("CLUSTERRA_NODE_COLD_START_MS", "4000"),
        ("CLUSTERRA_SCALE_IDLE_WINDOW_MS", "60000"),
    ]);
    let body = job(2, Some(10));
    // No node: one is launched for it, ready after the next poll cycle (at most a second) and
    // the 4 s cold start.
    estimate_until(&api, &body, "cold_start", Duration::from_secs(10)).await;
    let before = chrono::Utc::now();
    let e = estimate(&api, body.clone()).await;
    let after = chrono::Utc::now();
    assert_eq!(e["expected_start"]["kind"], "cold_start", "{e}");
    let at = chrono::DateTime::parse_from_rfc3339(e["expected_start"]["at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let (four, five) = (chrono::Duration::seconds(4), chrono::Duration::seconds(5));
    assert!(
        at >= before + four && at <= after + five,
        "{before} {at} {after}: {e}"
    );
    // A job of the same set waits for its node: the next is behind it.
    let (status, out) = api.submit(body.clone()).await;
    assert_eq!(status, 201, "{out}");
    let first = out["job_id"].as_u64().unwrap();
    let e = estimate_until(&api, &body, "queued", Duration::from_secs(4)).await;
    assert!(
        e["expected_start"]["reason"]
            .as_str()
            .unwrap()
            .contains("behind 1 pending job"),
        "{e}"
    );
    // Once it ran, its node is warm and idle: the next starts at once.
    api.wait_state(first, &["COMPLETED"], Duration::from_secs(20))
        .await;
    let e = estimate_until(&api, &body, "warm_node", Duration::from_secs(10)).await;
    let placed = &e["placement"];
    let (status, out) = api.submit(body).await;
    assert_eq!(status, 201, "{out}");
    let second = api
        .wait_state(
            out["job_id"].as_u64().unwrap(),
            &["RUNNING", "COMPLETED"],
            Duration::from_secs(3),
        )
        .await;
    let node = second["node"].as_str().unwrap();
    assert!(
        node.starts_with(&format!(
            "{}-{}-",
            placed["family"].as_str().unwrap(),
            placed["size"].as_str().unwrap()
        )),
        "it ran where the estimate placed it: {node} {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_after_the_job_and_the_cli_dry_run() {
    let (_dir, data, api, user) = tests::started_with_user(&[], "dana@lab.org");
    let (status, out) = api
        .call(
            reqwest::Method::PUT,
            "/v1/workspaces/default/quotas/dana@lab.org",
            &api.token,
            Some(json!({"limit_usd": "1.00", "mode": "warn"})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{out}");
    // The quota just set, seen through the position its PUT answered.
    let at = out["position"].as_i64().unwrap().to_string();
    let estimate_as = |body: Value| {
        let (api, user, at) = (&api, &user, &at);
        async move {
            let res = api
                .client
                .post(api.server.url(ESTIMATE))
                .bearer_auth(user)
                .header("X-Clusterra-Min-Position", at.as_str())
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    // An hour of one vCPU fits the dollar; a week of sixteen does not.
    let (status, small) = estimate_as(job(1, Some(60))).await;
    assert_eq!(status, 200, "{small}");
    assert_eq!(small["quota"]["status_after"], "ok", "{small}");
    let rate: f64 = small["rate_usd_per_hour"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left: f64 = small["quota"]["remaining_usd"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((left - (1.0 - rate)).abs() < 1e-6, "{small}");
    let (status, big) = estimate_as(job(16, Some(7 * 24 * 60))).await;
    assert_eq!(status, 200, "{big}");
    assert_eq!(big["quota"]["status_after"], "warning", "{big}");
    assert!(
        big["quota"]["remaining_usd"]
            .as_str()
            .unwrap()
            .starts_with('-'),
        "{big}"
    );

    // The CLI prints the estimate and submits nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.json");
    std::fs::write(&file, job(1, Some(60)).to_string()).unwrap();
    let head = api.log_position().await;
    let out = std::process::Command::new(tests::binary())
        .args([
            "submit",
            "--dry-run",
            "--url",
            &api.server.url(""),
            "--token",
            &user,
        ])
        .arg(&file)
        .output()
        .unwrap();
    let text = tests::stdout(&out);
    assert!(out.status.success(), "{text} {}", tests::stderr(&out));
    for part in [
        "placement",
        "rate",
        "max cost",
        "starts",
        "quota      ok",
        "nothing was submitted",
    ] {
        tests::assert_contains(&text, part);
    }
    drop(data);
    api.assert_log_at(head, "a dry run submits nothing").await;
}
