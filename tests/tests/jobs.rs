//! Jobs through the real binary on the local executor: run, fail, time out, cancel, retry,
//! refuse bad bodies, survive a restart, and replay to the same views.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::Api;

const ENV: [(&str, &str); 3] = [
    ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
    ("CLUSTERRA_EXECUTOR_MINUTE_SECONDS", "1"),
    ("CLUSTERRA_EXECUTOR_GRACE_MS", "500"),
];

fn raw(script: &str, minutes: Option<u64>) -> Value {
    let mut job = json!({"name": "raw", "script": script, "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"});
    if let Some(m) = minutes {
        job["time_limit"] = json!({"set": true, "number": m});
    }
    json!({ "job": job })
}

/// Submits `body` as the admin and returns the new job's id.
async fn submitted(api: &Api, body: Value) -> u64 {
    let (status, out) = api.submit(body).await;
    assert_eq!(status, 201, "{out}");
    out["job_id"].as_u64().unwrap()
}

/// `DELETE` on job `id`, as the admin.
async fn cancel(api: &Api, id: u64) -> (u16, Value) {
    api.delete_as(&format!("/v1/clusters/local/jobs/{id}"), &api.token)
        .await
}

/// Each pitfall in a submission gets its own error, and no refusal appends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_submission_gets_its_own_error_and_appends_nothing() {
    let (_dir, _, api) = tests::started(&ENV);
    // Nothing runs: the log position of an idle server moves only by what the requests append.
    let before = api.log_position().await;
    let good = || raw("#!/bin/bash\ntrue", None);
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut b = good();
    b["job"]["script"] = json!("echo no shebang");
    cases.push(("script_no_shebang", b));
    let mut b = good();
    b["job"].as_object_mut().unwrap().remove("environment");
    cases.push(("environment_missing", b));
    let mut b = good();
    b["job"]["environment"] = json!([]);
    cases.push(("environment_missing", b));
    let mut b = good();
    b["job"]["time_limit"] = json!({"number": 60});
    cases.push(("wrapped_number_unset", b));
    let mut b = good();
    b["job"]["time_limit"] = json!("01:00:00");
    cases.push(("time_limit_not_minutes", b));
    let mut b = good();
    b["job"]
        .as_object_mut()
        .unwrap()
        .remove("current_working_directory");
    cases.push(("working_directory_missing", b));
    let mut b = good();
    b["job"]["memory_per_cpu"] = json!(1024);
    b["job"]["memory_per_node"] = json!(4096);
    cases.push(("memory_conflict", b));
    cases.push((
        "heterogeneous_unsupported",
        json!({"jobs": [good()["job"]]}),
    ));
    cases.push(("job_missing", json!({"script": "#!/bin/bash\ntrue"})));
    cases.push((
        "template_not_found",
        json!({"template_id": "nope", "params": {}}),
    ));
    cases.push((
        "invalid_param",
        json!({"template_id": "shell", "params": {"command": 42}}),
    ));
    for (code, body) in cases {
        let (status, out) = api.submit(body).await;
        assert!(status == 422 || status == 404, "{code}: {status} {out}");
        assert_eq!(out["error"]["code"], code, "{out}");
        assert!(out["error"]["field"].is_string(), "{out}");
    }
    let res = api
        .client
        .post(api.server.url("/v1/clusters/local/jobs"))
        .bearer_auth(&api.token)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = api
        .client
        .post(api.server.url("/v1/clusters/local/jobs"))
        .bearer_auth(&api.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
    api.assert_log_at(before, "rejected submissions appended nothing")
        .await;
}

/// A template job that prints a known line reaches COMPLETED with the line in its output, a full
/// view and its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_job_completes_with_its_line_in_its_output() {
    let (_dir, data, api) = tests::started(&ENV);
    let (status, out) = api
        .submit(
            json!({"template_id": "shell", "params": {"command": "echo clusterra-e2e-$((6*7))"}}),
        )
        .await;
    assert_eq!(status, 201, "{out}");
    for field in ["job_id", "submission_id", "position", "warnings"] {
        assert!(!out[field].is_null(), "submit answer lacks {field}: {out}");
    }
    let id = out["job_id"].as_u64().unwrap();
    let job = api
        .wait_state(id, &["COMPLETED"], Duration::from_secs(15))
        .await;
    assert_eq!(job["exit_code"], 0);
    assert_eq!(job["template_id"], "shell");
    for field in [
        "job_id",
        "cluster_id",
        "name",
        "user",
        "state",
        "exit_code",
        "submitted_at",
        "started_at",
        "ended_at",
        "pending_reason",
        "shape",
    ] {
        assert!(job.get(field).is_some(), "job view lacks {field}: {job}");
    }
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(
        time(&job["submitted_at"]) <= time(&job["started_at"]),
        "{job}"
    );
    assert!(time(&job["started_at"]) <= time(&job["ended_at"]), "{job}");
    let output = std::fs::read_to_string(format!("{data}/efs/job_{id}.out")).unwrap();
    assert_eq!(output.trim(), "clusterra-e2e-42");
    let history: Vec<&str> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event_type"].as_str().unwrap())
        .collect();
    // The write-ahead request, then Slurm's answer.
    assert_eq!(history[..2], ["JobSubmissionRequested", "JobSubmitted"]);
    // Its end, with what it used in the same append.
    assert_eq!(
        history[history.len() - 2..],
        ["JobStateChanged", "JobUsageRecorded"]
    );
}

/// A job that exits 3 is FAILED with exit code 3; over, with no cancel asked for, it has nothing
/// to cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_exits_3_fails_with_exit_code_3_and_has_nothing_to_cancel() {
    let (_dir, _, api) = tests::started(&ENV);
    let job_failed = submitted(&api, raw("#!/bin/bash\nexit 3", None)).await;
    let job = api
        .wait_state(job_failed, &["FAILED"], Duration::from_secs(15))
        .await;
    assert_eq!(job["exit_code"], 3);
    let (status, out) = cancel(&api, job_failed).await;
    tests::assert_error_code(status, &out, 409, "job_finished");
}

/// A job over its time limit (1 "minute" = 1 s here) is TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_time_limit_times_out() {
    let (_dir, _, api) = tests::started(&ENV);
    let id = submitted(&api, raw("#!/bin/bash\nsleep 30", Some(1))).await;
    api.wait_state(id, &["TIMEOUT"], Duration::from_secs(15))
        .await;
}

/// A sleeping job is CANCELLED within 2 s of its cancel; asking again answers the first request,
/// even once it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_cancelled_within_two_seconds_and_a_second_cancel_answers_the_first() {
    let (_dir, _, api) = tests::started(&ENV);
    let sleeper = submitted(&api, raw("#!/bin/bash\nsleep 30", None)).await;
    api.wait_state(sleeper, &["RUNNING", "PENDING"], Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, out) = cancel(&api, sleeper).await;
    assert_eq!(status, 202, "{out}");
    let job = api
        .wait_state(sleeper, &["CANCELLED"], Duration::from_secs(2))
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(job["cancel_requested_by"], "admin@clusterra.local");
    let first_cancel = &out["position"];
    let (status, out) = cancel(&api, sleeper).await;
    assert_eq!((status, &out["position"]), (202, first_cancel), "{out}");
}

/// A retry with the same Idempotency-Key answers the same and creates one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_creates_one_job() {
    let (_dir, _, api) = tests::started(&ENV);
    let body = json!({"template_id": "shell", "params": {"command": "true"}});
    let submit_with_key = || {
        api.call(
            reqwest::Method::POST,
            "/v1/clusters/local/jobs",
            &api.token,
            Some(body.clone()),
            Some("key-1"),
        )
    };
    let (s1, first) = submit_with_key().await;
    let (s2, second) = submit_with_key().await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, second);
    // Read our own write: wait (bounded) until the view has the retry's position.
    let list = api
        .get_at(
            "/v1/clusters/local/jobs?template=shell",
            &api.token,
            second["position"].as_i64().unwrap(),
        )
        .await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
}

/// A plain user sees only their own jobs (the list, one job, the state filter); an admin sees
/// theirs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_user_sees_only_their_own_jobs_and_an_admin_sees_everyones() {
    let (_dir, _, api, bob) = tests::started_with_user(&ENV, "bob@lab.org");
    // The admin's job, over before bob looks.
    let id = submitted(&api, raw("#!/bin/bash\ntrue", None)).await;
    api.wait_state(id, &["COMPLETED"], Duration::from_secs(15))
        .await;
    let (_, list) = api.get_as("/v1/clusters/local/jobs", &bob).await;
    assert_eq!(list["jobs"], json!([]));
    let (status, _) = api
        .get_as(&format!("/v1/clusters/local/jobs/{id}"), &bob)
        .await;
    assert_eq!(status, 404);
    let (_, out) = api
        .submit_as(&bob, raw("#!/bin/bash\nsleep 30", None))
        .await;
    let bobs = out["job_id"].as_u64().unwrap();
    api.wait_state(bobs, &["RUNNING"], Duration::from_secs(10))
        .await;
    // The state filter, as bob: exactly his running job; as admin: his too (admins see all).
    for who in [&bob, &api.token] {
        let (_, list) = api
            .get_as("/v1/clusters/local/jobs?state=RUNNING", who)
            .await;
        let jobs = list["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{list}");
        assert_eq!(jobs[0]["job_id"], bobs, "{list}");
    }
}

/// A restart loses the running job the way Slurm loses a dead node's (NODE_FAIL), job ids keep
/// increasing across it, and every view is then what the log says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fails_the_running_job_keeps_ids_increasing_and_the_views_replay_the_same() {
    let (_dir, data, api) = tests::started(&ENV);
    let running = submitted(&api, raw("#!/bin/bash\nsleep 30", None)).await;
    api.wait_state(running, &["RUNNING"], Duration::from_secs(10))
        .await;
    assert_eq!(api.server.stop(), Some(0));
    let api = Api::start(&data, &ENV);
    let job = api
        .wait_state(running, &["NODE_FAIL"], Duration::from_secs(10))
        .await;
    assert!(
        job["reason"].as_str().unwrap().contains("restarted"),
        "{job}"
    );
    // Job ids keep increasing across restarts (never handed out twice; a restart continues after
    // the block of ids the executor had reserved).
    let next = submitted(&api, raw("#!/bin/bash\ntrue", None)).await;
    assert!(next > running, "{next} after {running}");
    api.wait_state(next, &["COMPLETED"], Duration::from_secs(10))
        .await;
    assert_eq!(api.server.stop(), Some(0));

    // Every view is what the log says.
    let verified = tests::replay_verified(&data, "all");
    assert!(verified.contains("jobs: OK"), "{verified}");
}

/// A job no node shape can hold is refused at submit, naming the largest shape; nothing is
/// appended. A big job that a roomier family holds is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_no_shape_can_hold_are_refused_at_submit() {
    let (_dir, _, api) = tests::started(&[("CLUSTERRA_EXECUTOR_SLOTS", "0")]);
    let head = api.log_position().await;
    let mut big = raw("#!/bin/bash\ntrue\n", Some(1));
    big["job"]["cpus_per_task"] = json!(64);
    let (status, out) = api.submit(big).await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["error"]["code"], "no_shape_fits", "{out}");
    assert_eq!(out["error"]["field"], "job", "{out}");
    let message = out["error"]["message"].as_str().unwrap();
    assert!(message.contains("r7g.4xlarge"), "{message}");
    api.assert_log_at(head, "a refused job appends nothing")
        .await;

    // 16 vCPUs with 40 GiB: more than compute's largest keeps, general's holds it.
    let mut roomy = raw("#!/bin/bash\ntrue\n", Some(1));
    roomy["job"]["cpus_per_task"] = json!(16);
    roomy["job"]["memory_per_node"] = json!({"set": true, "number": 40 * 1024});
    submitted(&api, roomy).await;
}

/// The poll cycle sizes node sets for pending jobs: a decision when counts change (in the feed,
/// with the jobs that drove it), none while nothing changes, and back to zero after the idle
/// window once the jobs are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_jobs_drive_scale_decisions_and_idle_sets_go_to_zero() {
    let (_dir, _, api) = tests::started(&[
        ("CLUSTERRA_EXECUTOR_SLOTS", "0"),
        ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
        ("CLUSTERRA_SCALE_IDLE_WINDOW_MS", "1000"),
    ]);
    let decisions = || api.events("ScaleDecisionMade");
    // Until the latest decision sets the count to `to` (a cycle may see only some of the jobs
    // and a later one grow the set again).
    let wait_for = |to: u64| async move {
        let deadline = tests::deadline(Duration::from_secs(15));
        loop {
            let d = decisions().await;
            if d.last().is_some_and(|e| e["data"]["to"] == to) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "a decision to {to} expected: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Three jobs of 2 vCPUs and 3 GiB: c7g.large nodes (2 vCPUs, 3.5 GiB allocatable) hold one
    // each, for less than any bigger size holds them (new nodes are the cheapest size for the
    // pending jobs, whichever of them a cycle sees).
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut body = raw("#!/bin/bash\ntrue\n", Some(1));
        body["job"]["cpus_per_task"] = json!(2);
        body["job"]["memory_per_node"] = json!({"set": true, "number": 3072});
        ids.push(submitted(&api, body).await);
    }
    let up = wait_for(3).await;
    let last = up.last().unwrap();
    assert_eq!(last["data"]["node_set"]["family"], "compute", "{last}");
    assert_eq!(last["data"]["node_set"]["size"], "small", "{last}");
    assert_eq!(last["data"]["instance_type"], "c7g.large");
    assert_eq!(last["data"]["to"], 3, "{up:?}");
    assert_eq!(last["actor"], "system");
    let sets = api.get_ok("/v1/clusters/local/nodesets").await;
    let sets = sets["nodesets"].as_array().unwrap().clone();
    assert_eq!(sets.len(), 15);
    let small = sets
        .iter()
        .find(|s| s["family"] == "compute" && s["size"] == "small")
        .unwrap();
    assert_eq!(
        (
            small["desired"].as_u64(),
            small["busy"].as_u64(),
            small["hourly_usd"].as_str()
        ),
        (Some(3), Some(0), Some("0.0725")),
        "{small}"
    );
    // Nothing changes: no more decisions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let steady = decisions().await;
    assert_eq!(steady.last().unwrap()["data"]["to"], 3, "{steady:?}");
    let count = steady.len();
    // The jobs go away; after the idle window the set goes to zero.
    for id in ids {
        let (status, out) = cancel(&api, id).await;
        assert_eq!(status, 202, "{out}");
    }
    let down = wait_for(0).await;
    assert_eq!(down.len(), count + 1, "one decision down: {down:?}");
    let last = down.last().unwrap();
    assert_eq!(
        (last["data"]["from"].as_u64(), last["data"]["to"].as_u64()),
        (Some(3), Some(0)),
        "{down:?}"
    );
    assert!(last["summary"].as_str().unwrap().contains("idle"), "{last}");
}

/// Job sizes are bounded: a count no cluster has, or more nodes, CPUs or GPUs than the cluster's
/// limits, is refused at submit with the field and appends nothing. A job already in the log that
/// is over the limits (accepted under bigger ones) does not stop a restart: the poll cycle fails
/// it with the reason, and other jobs still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_jobs_are_refused_and_one_in_the_log_is_failed_after_a_restart() {
    // Under a generous limit, with nodes that never finish starting: the big job stays pending.
    let (_dir, data, api) = tests::started(&[
        ("CLUSTERRA_MAX_NODES_PER_JOB", "200"),
        ("CLUSTERRA_NODE_COLD_START_MS", "3600000"),
    ]);
    let head = api.log_position().await;
    let with = |field: &str, value: Value| {
        let mut b = raw("#!/bin/bash\ntrue\n", Some(1));
        b["job"][field] = value;
        b
    };
    for (body, code, field) in [
        (
            with("nodes", json!("4294967295")),
            "invalid_nodes",
            "job.nodes",
        ),
        (with("nodes", json!(201)), "job_too_large", "job.nodes"),
        (with("tasks", json!(100_000)), "job_too_large", "job.tasks"),
        (
            with("tres_per_node", json!("gres/gpu:1")),
            "job_too_large",
            "job.tres_per_node",
        ),
    ] {
        let (status, out) = api.submit(body).await;
        assert_eq!(status, 422, "{out}");
        assert_eq!(out["error"]["code"], code, "{out}");
        assert_eq!(out["error"]["field"], field, "{out}");
    }
    api.assert_log_at(head, "a refused job appends nothing")
        .await;

    let big = submitted(&api, with("nodes", json!(150))).await;
    api.wait_state(big, &["PENDING"], Duration::from_secs(5))
        .await;
    assert_eq!(api.server.stop(), Some(0));

    // The default limit is 64 nodes: the job can never be placed. The server starts, fails it
    // with the reason, and runs a normal job.
    let api = Api::start(&data, &[("CLUSTERRA_NODE_COLD_START_MS", "200")]);
    let failed = api
        .wait_state(big, &["FAILED"], Duration::from_secs(20))
        .await;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("at most 64 nodes"), "{failed}");
    let small = submitted(&api, raw("#!/bin/bash\ntrue\n", Some(1))).await;
    api.wait_state(small, &["COMPLETED"], Duration::from_secs(30))
        .await;
    // No node set was ever asked for more than the per-set limit.
    for d in api.events("ScaleDecisionMade").await {
        assert!(d["data"]["to"].as_u64().unwrap_or(0) <= 256, "{d}");
    }
}

/// `via` is decided by the server: a client may call itself `api` or `cli`, but not `agent` or
/// `console` (those come from the server's own routes); a refused label appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_is_decided_by_the_server() {
    let (_dir, _, api) = tests::started(&[("CLUSTERRA_EXECUTOR_SLOTS", "0")]);
    let head = api.log_position().await;
    let submit = |via: &'static str| {
        api.client
            .post(api.server.url("/v1/clusters/local/jobs"))
            .bearer_auth(&api.token)
            .header("X-Clusterra-Via", via)
            .json(&raw("#!/bin/bash\ntrue\n", Some(1)))
            .send()
    };
    for forged in ["agent", "console", "adopted"] {
        let res = submit(forged).await.unwrap();
        assert_eq!(res.status().as_u16(), 400, "{forged}");
        let out: Value = res.json().await.unwrap();
        assert_eq!(out["error"]["code"], "invalid_via", "{out}");
        assert_eq!(out["error"]["field"], "headers.x-clusterra-via", "{out}");
    }
    api.assert_log_at(head, "a refused label appends nothing")
        .await;
    let res = submit("cli").await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let out: Value = res.json().await.unwrap();
    let job = api
        .wait_state(
            out["job_id"].as_u64().unwrap(),
            &["PENDING"],
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(job["via"], "cli", "{job}");
}
