//! A failing slurmrestd through the real binary: answers that are not v0.0.44 documents (an
//! HTML 502, a 404 page, garbage JSON) change no job and append nothing to it, a cancel Slurm
//! did not confirm is answered 503 and retried by the poll cycle, and clusters whose slurmrestd
//! never answers (a real TCP listener that accepts and stays silent) hold up no other cluster:
//! the healthy one's states still advance within a couple of poll intervals, while the silent
//! ones are recorded unreachable once and their jobs say so.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tests::Api;
use tests::fake_slurm::{FakeSlurm, Mode};

const POLL_MS: u64 = 200;

fn body() -> Value {
    json!({"job": {"name": "e2e", "script": "#!/bin/bash\ntrue", "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": "/mnt/efs"}})
}

async fn register(api: &Api, id: &str, url: &str) {
    let (status, out) = api
        .call(
            Method::POST,
            "/v1/clusters",
            &api.token,
            Some(
                json!({"id": id, "name": id, "region": "local", "bucket": format!("{id}-bucket"),
                "slurm": {"url": url, "user": "root"}}),
            ),
            None,
        )
        .await;
    assert_eq!(status, 201, "{out}");
}

/// Submits to `cluster` once it is connected (the poll cycle connects it within an interval).
async fn submit(api: &Api, cluster: &str) -> u64 {
    let deadline = tests::deadline(Duration::from_secs(20));
    loop {
        let (status, out) = api
            .call(
                Method::POST,
                &format!("/v1/clusters/{cluster}/jobs"),
                &api.token,
                Some(body()),
                None,
            )
            .await;
        if status == 201 {
            return out["job_id"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "submit to {cluster}: {status} {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job(api: &Api, cluster: &str, id: u64) -> Value {
    api.call(
        Method::GET,
        &format!("/v1/clusters/{cluster}/jobs/{id}"),
        &api.token,
        None,
        None,
    )
    .await
    .1
}

/// Waits until `check` holds for the job; returns it and how long that took.
async fn wait_job(
    api: &Api,
    cluster: &str,
    id: u64,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let j = job(api, cluster, id).await;
        if check(&j) {
            return (j, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "job {id} of {cluster} after {within:?}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The cluster's `SlurmReachabilityChanged` feed entries, oldest first.
async fn reachability(api: &Api, cluster: &str) -> Vec<Value> {
    api.call(
        Method::GET,
        &format!("/v1/clusters/{cluster}/events?type=SlurmReachabilityChanged&order=asc"),
        &api.token,
        None,
        None,
    )
    .await
    .1["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_slurm_changes_no_job_and_holds_up_no_other_cluster() {
    let good = FakeSlurm::start().await;
    let flaky = FakeSlurm::start().await;
    // A real TCP listener that accepts every connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tokens = data.join("slurm-tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    for id in ["good", "flaky", "silent"] {
        std::fs::write(tokens.join(format!("default.{id}.jwt")), "jwt\n").unwrap();
    }
    // The default call timeout (5 s): one cycle that waited for a silent cluster would take
    // at least 25 poll intervals; the healthy cluster's states must show within two intervals
    // (plus a second for the projection and a loaded machine).
    let api = Api::start(
        data.to_str().unwrap(),
        &[
            ("CLUSTERRA_POLL_INTERVAL_MS", &POLL_MS.to_string()),
            ("CLUSTERRA_SLURM_BREAKER_FAILURES", "2"),
            // Probes at most 16 × 200 ms = 3.2 s apart.
            ("CLUSTERRA_SLURM_BREAKER_BACKOFF_MS", "200"),
        ],
    );
    register(&api, "good", &good.url).await;
    register(&api, "flaky", &flaky.url).await;
    register(&api, "silent", &silent_url).await;

    let on_good = submit(&api, "good").await;
    let on_flaky = submit(&api, "flaky").await;
    flaky.set_state(on_flaky, "RUNNING");
    wait_job(&api, "flaky", on_flaky, Duration::from_secs(10), |j| {
        j["state"] == "RUNNING"
    })
    .await;
    let history = job(&api, "flaky", on_flaky).await["history"]
        .as_array()
        .unwrap()
        .len();

    // Answers that are not v0.0.44 documents: the job stays RUNNING and its stream unchanged.
    let bad = [
        Mode::Canned(
            502,
            "text/html",
            "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>".into(),
        ),
        Mode::Canned(404, "text/html", "<html><body><h1>404 Not Found</h1></body></html>".into()),
        Mode::Canned(200, "application/json", "{}".into()),
        Mode::Canned(200, "application/json", r#"{"jobs": []}"#.into()),
    ];
    for (i, mode) in bad.into_iter().enumerate() {
        flaky.set_mode(mode.clone());
        let seen = flaky.requests();
        let started = Instant::now();
        while flaky.requests() < seen + 2 && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(flaky.requests() > seen, "{mode:?} was polled");
        if i == 0 {
            // A cancel Slurm did not confirm: not 202.
            let (status, out) = api
                .call(
                    Method::DELETE,
                    &format!("/v1/clusters/flaky/jobs/{on_flaky}"),
                    &api.token,
                    None,
                    None,
                )
                .await;
            assert_eq!(status, 503, "{out}");
            assert_eq!(out["error"]["code"], "slurm_unavailable", "{out}");
        }
        let j = job(&api, "flaky", on_flaky).await;
        assert_eq!(j["state"], "RUNNING", "{mode:?}: {j}");
        let expected = history + 1; // the JobCancelRequested, nothing else
        assert_eq!(
            j["history"].as_array().unwrap().len(),
            expected,
            "{mode:?} appended to the job: {j}"
        );
    }
    assert!(flaky.cancels().is_empty(), "no cancel reached Slurm yet");
    // Its breaker opened: recorded once, and the job says why its state is stale.
    let (j, _) = wait_job(&api, "flaky", on_flaky, Duration::from_secs(10), |j| {
        j["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains("Slurm is unreachable"))
    })
    .await;
    assert_eq!(j["state"], "RUNNING");
    assert_eq!(reachability(&api, "flaky").await.len(), 1);

    // Now flaky hangs as well, and silent never answered: the healthy cluster's states still
    // follow within a couple of poll intervals, each time.
    flaky.set_mode(Mode::Hang);
    for (state, after) in [("RUNNING", "PENDING"), ("COMPLETED", "RUNNING")] {
        wait_job(&api, "good", on_good, Duration::from_secs(5), |j| {
            j["state"] == after
        })
        .await;
        good.set_state(on_good, state);
        let (_, took) = wait_job(&api, "good", on_good, Duration::from_secs(10), |j| {
            j["state"] == state
        })
        .await;
        assert!(
            took < Duration::from_millis(POLL_MS * 2 + 1000),
            "the healthy cluster's {state} took {took:?} to show"
        );
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the silent cluster was called"
    );
    // The silent cluster is recorded unreachable once, with a cause and no URL.
    let deadline = tests::deadline(Duration::from_secs(30));
    let events = loop {
        let events = reachability(&api, "silent").await;
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["reachable"], false);
    let summary = events[0]["summary"].as_str().unwrap();
    assert!(summary.contains("unreachable"), "{summary}");
    assert!(!summary.contains("127.0.0.1"), "{summary}");

    // flaky answers again: the probe closes its breaker (recorded once more), the cancel the
    // user asked for is sent by the poll cycle, and the job's state follows.
    flaky.set_mode(Mode::Slurm);
    let (j, _) = wait_job(&api, "flaky", on_flaky, Duration::from_secs(40), |j| {
        j["state"] == "CANCELLED"
    })
    .await;
    assert!(j["pending_reason"].is_null(), "{j}");
    assert_eq!(flaky.cancels().first(), Some(&on_flaky));
    let events = reachability(&api, "flaky").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["data"]["reachable"], true);
}

/// A server with `cluster` registered to a fake slurmrestd (its token file written first) and
/// connected; `env` adds settings. The directory holds the server's data.
async fn connected_to_a_fake(
    cluster: &str,
    env: &[(&str, &str)],
) -> (FakeSlurm, tempfile::TempDir, Api) {
    let slurm = FakeSlurm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tokens = data.join("slurm-tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::write(tokens.join(format!("default.{cluster}.jwt")), "jwt\n").unwrap();
    let poll = POLL_MS.to_string();
    let mut settings = vec![("CLUSTERRA_POLL_INTERVAL_MS", poll.as_str())];
    settings.extend_from_slice(env);
    let api = Api::start(data.to_str().unwrap(), &settings);
    register(&api, cluster, &slurm.url).await;
    submit(&api, cluster).await; // connected
    (slurm, dir, api)
}

/// A caller that hangs up while Slurm is still taking its keyed submit does not stop the
/// submission: Slurm's job is recorded, and the retry with the same key is answered at once
/// from the log with that job (not `submission_in_progress` until the poll cycle settles the
/// attempt a minute later), and Slurm is not asked a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_that_hangs_up_mid_submit_does_not_stop_the_submission() {
    let (slurm, _dir, api) = connected_to_a_fake("slow", &[]).await;
    let keyed = || {
        api.client
            .post(api.server.url("/v1/clusters/slow/jobs"))
            .bearer_auth(&api.token)
            .header("Idempotency-Key", "hang-up-1")
            .json(&body())
    };

    // The caller gives up after 500 ms; Slurm takes 1.5 s to take the job, and takes it though
    // the caller is gone.
    slurm.set_submit_delay(Duration::from_millis(1_500));
    let hung_up = keyed().timeout(Duration::from_millis(500)).send().await;
    assert!(hung_up.is_err_and(|e| e.is_timeout()));
    let deadline = tests::deadline(Duration::from_secs(10));
    while slurm.state.lock().unwrap().jobs.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "Slurm never got the hung-up submission"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    slurm.set_submit_delay(Duration::ZERO);

    let started = Instant::now();
    let res = keyed().send().await.unwrap();
    let took = started.elapsed();
    let status = res.status().as_u16();
    let replayed = res.headers().get("idempotent-replayed").cloned();
    let out: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{out}");
    assert_eq!(replayed.as_ref().map(|v| v.as_bytes()), Some(&b"true"[..]));
    let job_id = out["job_id"].as_u64().unwrap();
    let jobs = slurm.state.lock().unwrap().jobs.clone();
    // The first job and the hung-up submission's: the retry did not ask Slurm again.
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.contains_key(&job_id), "{job_id} not in {jobs:?}");
    // Answered from the log, not after the whole in-flight wait (3 s).
    assert!(took < Duration::from_secs(3), "the retry took {took:?}");
}

/// However many submissions come in at once, a server makes at most `slurm_max_in_flight`
/// calls to one cluster's slurmrestd: one that finds no place within a second is answered 503
/// without reaching Slurm, and its Idempotency-Key is free again at once (no
/// `submission_in_progress` until the poll cycle settles it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_makes_at_most_its_calls_to_one_slurm_at_once() {
    let (slurm, _dir, api) =
        connected_to_a_fake("busy", &[("CLUSTERRA_SLURM_MAX_IN_FLIGHT", "1")]).await;
    let keyed = |key: &'static str| {
        api.client
            .post(api.server.url("/v1/clusters/busy/jobs"))
            .bearer_auth(&api.token)
            .header("Idempotency-Key", key)
            .json(&body())
    };

    // Slurm takes 1.5 s to take the first job; the second finds the one place taken.
    slurm.set_submit_delay(Duration::from_millis(1_500));
    let before = slurm.submits_started();
    let first = tokio::spawn(keyed("busy-1").send());
    let deadline = tests::deadline(Duration::from_secs(10));
    while slurm.submits_started() == before {
        assert!(Instant::now() < deadline, "busy-1 never reached Slurm");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let res = keyed("busy-2").send().await.unwrap();
    let took = started.elapsed();
    let status = res.status().as_u16();
    let out: Value = res.json().await.unwrap();
    assert_eq!(status, 503, "{out}");
    assert_eq!(out["error"]["code"], "slurm_unavailable", "{out}");
    let message = out["error"]["message"].as_str().unwrap();
    assert!(message.contains("slurm_max_in_flight"), "{message}");
    assert!(
        took >= Duration::from_millis(900),
        "it waited for a place first: {took:?}"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status().as_u16(), 201);
    assert_eq!(
        slurm.state.lock().unwrap().jobs.len(),
        2,
        "the refused submit never reached Slurm"
    );

    // The key is free again: the retry submits at once, and is no replay.
    slurm.set_submit_delay(Duration::ZERO);
    let started = Instant::now();
    let res = keyed("busy-2").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the retry took {:?}",
        started.elapsed()
    );
    assert_eq!(slurm.state.lock().unwrap().jobs.len(), 3);
}
