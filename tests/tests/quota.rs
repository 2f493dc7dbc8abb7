//! Cost and quotas through the real binary on the local executor: only a workspace admin sets a
//! quota and bad fields are named; a $0.0001 `block_and_kill` quota cancels a running job within a
//! cycle (the cancel is in the feed with its reason) and blocks new submissions until the limit is
//! raised; a `warn` user's job keeps running and one warning is raised; the usage series and the
//! profile; the bill after replaying the log from zero equals the live figure.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Api, mint, run, stderr, stdout};

fn job(script: &str, minutes: u64) -> Value {
    json!({"job": {"name": "q", "script": script, "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": "/mnt/efs",
        "time_limit": {"set": true, "number": minutes}}})
}

/// bob's quota, as the API names it.
const BOBS_QUOTA: &str = "/v1/workspaces/default/quotas/bob@lab.org";

/// `token`'s PUT of `body` to `path`.
async fn put_as(api: &Api, token: &str, path: &str, body: Value) -> (u16, Value) {
    api.call(reqwest::Method::PUT, path, token, Some(body), None)
        .await
}

async fn set_quota(api: &Api, email: &str, body: Value) -> Value {
    let path = format!("/v1/workspaces/default/quotas/{email}");
    let (status, out) = put_as(api, &api.token, &path, body).await;
    assert_eq!(status, 200, "{out}");
    out
}

fn quota_events(data: &str, email: &str, kind: &str) -> usize {
    let out = run(&[
        "audit",
        "stream",
        &format!("quota:default:{email}"),
        "--data-dir",
        data,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().filter(|l| l.contains(kind)).count()
}

/// Submits `body` as `token`'s user and returns the new job's id.
async fn submitted(api: &Api, token: &str, body: Value) -> u64 {
    let (status, out) = api.submit_as(token, body).await;
    assert_eq!(status, 201, "{out}");
    out["job_id"].as_u64().unwrap()
}

/// Refused quota changes append nothing: the log is still at `head`.
async fn assert_still_at(api: &Api, head: i64) {
    api.assert_log_at(head, "refused quota changes append nothing")
        .await;
}

/// bob: $0.0001, block_and_kill. A one-hour job on an m7g.medium ($0.0408/h) projects its rate
/// until its time limit or the period's end, whichever comes first: over the limit as soon as
/// it runs, so it is cancelled. (A limit of $0.01 was over only with 15 minutes of the period
/// left: these tests failed in the last quarter hour of every month.) Returns the job's id, its view once
/// seen running (or already cancelled), and its view once cancelled.
async fn killed_by_quota(api: &Api, bob: &str) -> (u64, Value, Value) {
    let set = set_quota(
        api,
        "bob@lab.org",
        json!({"limit_usd": "0.0001", "mode": "block_and_kill"}),
    )
    .await;
    assert_eq!(set["quota"]["limit_usd"], "0.000100", "{set}");
    let id = submitted(api, bob, job("#!/bin/bash\nsleep 60\n", 60)).await;
    let running = api
        .wait_state(id, &["RUNNING", "CANCELLED"], Duration::from_secs(15))
        .await;
    let started = Instant::now();
    let done = api
        .wait_state(id, &["CANCELLED"], Duration::from_secs(10))
        .await;
    eprintln!(
        "cancelled {} ms after it was seen running",
        started.elapsed().as_millis()
    );
    (id, running, done)
}

/// A two-second job of `token`'s user, run to COMPLETED.
async fn ran_two_seconds(api: &Api, token: &str) {
    let id = submitted(api, token, job("#!/bin/bash\nsleep 2\n", 60)).await;
    api.wait_state(id, &["COMPLETED"], Duration::from_secs(15))
        .await;
}

/// Only an admin of the workspace sets quotas: not its users, not another workspace's admin;
/// nothing is appended for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_of_the_workspace_may_set_a_quota() {
    let (_dir, data, api, bob) = tests::started_with_user(&[], "bob@lab.org");
    let head = api.log_position().await;
    let (status, out) = put_as(&api, &bob, BOBS_QUOTA, json!({"limit_usd": 100})).await;
    tests::assert_error_code(status, &out, 403, "admin_required");
    // An admin of another workspace is not an admin of this one.
    let rival = mint(&data, "ada@rival.org", "rival", true);
    let (status, out) = put_as(&api, &rival, BOBS_QUOTA, json!({"limit_usd": 100})).await;
    assert_eq!(status, 403, "{out}");
    assert_still_at(&api, head).await;
}

/// Bad quota fields, and an address that is not an email, are named; nothing is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quota_fields_are_named_and_append_nothing() {
    let (_dir, _, api) = tests::started(&[]);
    let head = api.log_position().await;
    for (body, field) in [
        (json!({"limit_usd": "-1"}), "limit_usd"),
        (json!({"limit_usd": "0.0000001"}), "limit_usd"),
        (json!({"limit_usd": 1, "mode": "kill"}), "mode"),
        (
            json!({"limit_usd": 1, "buffer_percent": 5000}),
            "buffer_percent",
        ),
    ] {
        let (status, out) = put_as(&api, &api.token, BOBS_QUOTA, body).await;
        tests::assert_error_field(status, &out, 422, field);
    }
    let (status, out) = api.get("/v1/workspaces/default/quotas/not-an-email").await;
    tests::assert_error_field(status, &out, 422, "email");
    assert_still_at(&api, head).await;
}

/// With no quota set, reading or removing one says so, and appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_never_set_can_be_neither_read_nor_removed() {
    let (_dir, _, api) = tests::started(&[]);
    let head = api.log_position().await;
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, out) = api.call(method, BOBS_QUOTA, &api.token, None, None).await;
        tests::assert_error_code(status, &out, 404, "quota_not_found");
    }
    assert_still_at(&api, head).await;
}

/// The usage series names the parameter at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_series_names_the_parameter_at_fault() {
    let (_dir, _, api, bob) = tests::started_with_user(&[], "bob@lab.org");
    for (query, field) in [
        ("bucket=week", Some("bucket")),
        ("from=yesterday", Some("from")),
        (
            "from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
            Some("to"),
        ),
        ("from=2000-01-01T00:00:00Z&bucket=hour", Some("from")),
        // One day, but centuries ago: refused before any month is read.
        (
            "from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z&bucket=day",
            Some("from"),
        ),
        ("colour=blue", None),
    ] {
        let (status, out) = api
            .get_as(&format!("/v1/users/me/usage?{query}"), &bob)
            .await;
        assert_eq!(status, 422, "{query}: {out}");
        assert_eq!(out["error"]["code"], "invalid_query", "{query}: {out}");
        assert_eq!(out["error"]["field"].as_str(), field, "{query}: {out}");
    }
}

/// A $0.0001 `block_and_kill` quota cancels a running job within a cycle (in the feed with its
/// reason), blocks new submissions with spend and limit until the limit is raised, and records
/// the block once however many cycles see the user over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_and_kill_quota_cancels_the_job_and_blocks_submissions_until_raised() {
    let (_dir, data, api, bob) = tests::started_with_user(&[], "bob@lab.org");
    let (id, running, done) = killed_by_quota(&api, &bob).await;
    assert!(!running["started_at"].is_null(), "{running}");
    assert_eq!(
        done["cancel_requested_by"], "system@clusterra.local",
        "{done}"
    );
    // In the cluster's feed, as any other cancel, with its reason.
    let cancel = api
        .events("JobCancelRequested")
        .await
        .into_iter()
        .find(|e| e["job_id"] == id)
        .unwrap();
    assert_eq!(cancel["actor"], "system", "{cancel}");
    assert!(
        cancel["summary"].as_str().unwrap().contains("(quota)"),
        "{cancel}"
    );
    assert_eq!(quota_events(&data, "bob@lab.org", "QuotaEnforced"), 1);

    // Blocked: the profile says so and new jobs are refused with spend and limit, appending nothing.
    // (The profile reads the quotas projection: give it a moment to apply QuotaEnforced.)
    let deadline = tests::deadline(Duration::from_secs(5));
    let me = loop {
        let (_, me) = api.get_as("/v1/users/me", &bob).await;
        if me["status"] == "blocked" || Instant::now() > deadline {
            break me;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(me["status"], "blocked", "{me}");
    assert_eq!(me["quota"]["mode"], "block_and_kill", "{me}");
    let head = api.log_position().await;
    let (status, out) = api.submit_as(&bob, job("#!/bin/bash\ntrue\n", 1)).await;
    tests::assert_error_code(status, &out, 403, "quota_exceeded");
    let msg = out["error"]["message"].as_str().unwrap();
    assert!(msg.contains("$0.000100"), "{msg}");
    api.assert_log_at(head, "a refused submission appends nothing")
        .await;

    // Raising the limit lifts the block.
    set_quota(
        &api,
        "bob@lab.org",
        json!({"limit_usd": 100, "mode": "block_and_kill", "buffer_percent": 10}),
    )
    .await;
    let lifted = submitted(&api, &bob, job("#!/bin/bash\ntrue\n", 1)).await;
    api.wait_state(lifted, &["COMPLETED"], Duration::from_secs(15))
        .await;
    // Cycles later, still one record each.
    assert_eq!(quota_events(&data, "bob@lab.org", "QuotaEnforced"), 1);
    assert_eq!(quota_events(&data, "bob@lab.org", "QuotaWarningRaised"), 1);
}

/// A $0.0001 `warn` quota (over as soon as the job runs, as in [`killed_by_quota`]): the job runs
/// to the end, priced at submission, and one warning is raised however many cycles see the user
/// over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warn_quota_lets_the_job_run_and_raises_one_warning() {
    let (_dir, data, api, carol) = tests::started_with_user(&[], "carol@lab.org");
    set_quota(&api, "carol@lab.org", json!({"limit_usd": 0.0001})).await;
    let cid = submitted(&api, &carol, job("#!/bin/bash\nsleep 2\n", 60)).await;
    api.wait_state(cid, &["RUNNING"], Duration::from_secs(15))
        .await;
    let (_, me) = api.get_as("/v1/users/me", &carol).await;
    assert_eq!(me["status"], "warning", "{me}");
    assert_eq!(me["running_jobs"], 1, "{me}");
    assert_eq!(me["burn_rate_usd_per_hour"], "0.040800", "{me}");
    let done = api
        .wait_state(cid, &["COMPLETED"], Duration::from_secs(15))
        .await;
    assert!(done["cancel_requested_by"].is_null(), "{done}");
    // Its rate is in the log, priced at submission (micro-USD per hour).
    assert_eq!(done["history"][0]["data"]["rate"], 40_800, "{done}");
    assert_eq!(
        quota_events(&data, "carol@lab.org", "QuotaWarningRaised"),
        1
    );
}

/// A user's usage series has one point per day of the period so far, their spend in today's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_series_has_a_point_per_day_with_the_spend_in_todays() {
    let (_dir, _, api, carol) = tests::started_with_user(&[], "carol@lab.org");
    ran_two_seconds(&api, &carol).await;
    let (status, series) = api.get_as("/v1/users/me/usage?bucket=day", &carol).await;
    assert_eq!(status, 200, "{series}");
    let today = series["points"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_ne!(today["spend_usd"], "0.000000", "{series}");
}

/// An admin reads a user's quota back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reads_a_quota_back() {
    let (_dir, _, api) = tests::started(&[]);
    let set = set_quota(&api, "carol@lab.org", json!({"limit_usd": 0.01})).await;
    // Read our own write: the quota view has the PUT once its position is projected.
    tests::wait_projected(&api.server, set["position"].as_i64().unwrap()).await;
    let (status, q) = api.get("/v1/workspaces/default/quotas/carol@lab.org").await;
    assert_eq!(
        (status, q["limit_usd"].as_str()),
        (200, Some("0.010000")),
        "{q}"
    );
}

/// `clusterra me` prints the caller's profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_profile() {
    let (_dir, _, api, carol) = tests::started_with_user(&[], "carol@lab.org");
    let out = run(&["me", "--url", &api.server.base, "--token", &carol]);
    assert!(out.status.success(), "{}", stderr(&out));
    tests::assert_contains(&stdout(&out), "carol@lab.org (user) in workspace default");
}

/// Once a job killed by its quota and a finished one have ended, the bill is fixed: replaying
/// the log from zero gives the same, and so does a restart with every price doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bill_of_a_killed_and_a_finished_job_survives_a_replay_and_dearer_prices() {
    let (dir, data, api) = tests::started(&[]);
    let bob = mint(&data, "bob@lab.org", "default", false);
    let carol = mint(&data, "carol@lab.org", "default", false);
    killed_by_quota(&api, &bob).await;
    ran_two_seconds(&api, &carol).await;
    let live = workspace_usage(&api).await;
    assert_ne!(live["pending_bill_usd"], "0.000000", "{live}");
    let token = api.token.clone();
    assert_eq!(api.server.stop(), Some(0));
    let out = run(&["replay", "--projection", "all", "--data-dir", &data]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Restarted with every price doubled: the bill stays what the log recorded.
    let mut catalog: Value = serde_json::from_str(
        &std::fs::read_to_string(tests::repo_root().join("fixtures/catalog/shapes.json")).unwrap(),
    )
    .unwrap();
    for shape in catalog["shapes"].as_array_mut().unwrap() {
        let price: f64 = shape["hourly_usd"].as_str().unwrap().parse().unwrap();
        shape["hourly_usd"] = json!(format!("{:.6}", price * 2.0));
    }
    let dearer = dir.path().join("dearer.json");
    std::fs::write(&dearer, catalog.to_string()).unwrap();
    let api = Api::start(
        &data,
        &[("CLUSTERRA_CATALOG_FILE", dearer.to_str().unwrap())],
    );
    let api = Api { token, ..api };
    let replayed = workspace_usage(&api).await;
    for field in ["pending_bill_usd", "burn_rate_usd_per_hour"] {
        assert_eq!(
            replayed[field], live[field],
            "{field}: {live} vs {replayed}"
        );
    }
    assert_eq!(replayed["users"], live["users"]);
}

async fn workspace_usage(api: &Api) -> Value {
    api.get_ok("/v1/workspaces/default/usage").await
}

/// A limit is read from the number's own text: `0.000001` is one micro-dollar (it used to go
/// through a float and come back as "1e-6", which was refused), `1e-6` too; seven decimals are
/// still refused, and nothing is appended for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_six_decimals_is_read_exactly() {
    let (_dir, _, api) = tests::started(&[("CLUSTERRA_EXECUTOR_SLOTS", "0")]);
    let put = |text: &'static str| {
        api.client
            .put(api.server.url(BOBS_QUOTA))
            .bearer_auth(&api.token)
            .header("content-type", "application/json")
            .body(text)
            .send()
    };
    for text in [r#"{"limit_usd": 0.000001}"#, r#"{"limit_usd": 1e-6}"#] {
        let res = put(text).await.unwrap();
        let status = res.status().as_u16();
        let out: serde_json::Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{text}: {out}");
        assert_eq!(out["quota"]["limit_usd"], "0.000001", "{out}");
    }
    let head = api.log_position().await;
    for text in [
        r#"{"limit_usd": 0.0000001}"#,
        r#"{"limit_usd": -1}"#,
        r#"{"limit_usd": 1e400}"#,
        r#"{"limit_usd": true}"#,
    ] {
        let res = put(text).await.unwrap();
        let status = res.status().as_u16();
        let out: serde_json::Value = res.json().await.unwrap();
        assert_eq!(status, 422, "{text}: {out}");
        assert_eq!(out["error"]["field"], "limit_usd", "{out}");
    }
    api.assert_log_at(head, "a refused quota appends nothing")
        .await;
}
