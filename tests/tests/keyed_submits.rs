//! Keyed submits and cancels through the real binary: one Idempotency-Key makes one job even
//! when two replicas on one PostgreSQL database get it at the same moment; a key reused with
//! another body is refused; parallel cancels of one job record one request and all answer it.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Api, ScratchDb};

fn job(script: &str) -> Value {
    json!({"job": {"name": "keyed", "script": script, "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": "/mnt/efs"}})
}

/// The admin submits `body` with Idempotency-Key `key`.
async fn post(api: &Api, body: &Value, key: &str) -> (u16, Value) {
    api.call(
        reqwest::Method::POST,
        "/v1/clusters/local/jobs",
        &api.token,
        Some(body.clone()),
        Some(key),
    )
    .await
}

/// The event types of a job's stream, read from the log through `GET …/jobs/{id}`.
async fn history(api: &Api, id: u64) -> Vec<String> {
    let job = api.job(id).await;
    job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event_type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_sent_to_two_replicas_at_once_makes_one_job() {
    let db = ScratchDb::create().await;
    let url = db.url.clone();
    let (dir, a_dir, b_dir) = tests::replica_dirs();
    // Every run of the job leaves a line here, whichever replica's executor ran it.
    let ran = dir.path().join("ran");
    // Jobs run as an unprivileged user when the tests run as root: let it append here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&ran, "").unwrap();
        std::fs::set_permissions(&ran, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let env = [
        ("CLUSTERRA_EXECUTOR_SLOTS", "4"),
        ("CLUSTERRA_DEFAULT_CLUSTER", "true"),
    ];
    let (a, banner) = tests::start_replica(&a_dir, &url, &env);
    let a = Api {
        server: a,
        token: tests::banner_token(&banner).unwrap(),
        client: reqwest::Client::new(),
    };
    let b = tests::start_another_replica(&a_dir, &b_dir, &url, &env);
    tests::wait_projected(&a.server, 1).await;
    tests::wait_projected(&b, 1).await;

    let body = job(&format!(
        "#!/bin/bash\necho \"$SLURM_JOB_ID\" >> {}\n",
        ran.display()
    ));
    // Several rounds, each a new key sent to both replicas at once (four requests each).
    for round in 0..3 {
        let key = format!("two-replicas-{round}");
        let mut calls = Vec::new();
        for i in 0..8 {
            let (client, token, body, key) =
                (a.client.clone(), a.token.clone(), body.clone(), key.clone());
            let server = if i % 2 == 0 {
                a.server.base.clone()
            } else {
                b.base.clone()
            };
            calls.push(tokio::spawn(async move {
                let res = client
                    .post(format!("{server}/v1/clusters/local/jobs"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (res.status().as_u16(), res.json::<Value>().await.unwrap())
            }));
        }
        let mut answers = Vec::new();
        for c in calls {
            answers.push(c.await.unwrap());
        }
        let created: Vec<&Value> = answers
            .iter()
            .filter(|(s, _)| *s == 201)
            .map(|(_, v)| v)
            .collect();
        for (status, out) in &answers {
            assert!(
                *status == 201
                    || (*status == 409 && out["error"]["code"] == "submission_in_progress"),
                "round {round}: {status} {out}"
            );
        }
        assert!(!created.is_empty(), "round {round}: {answers:?}");
        for out in &created {
            assert_eq!(
                (&out["job_id"], &out["submission_id"], &out["position"]),
                (
                    &created[0]["job_id"],
                    &created[0]["submission_id"],
                    &created[0]["position"]
                ),
                "round {round}: one job, one answer: {answers:?}"
            );
        }
        let id = created[0]["job_id"].as_u64().unwrap();
        let at = created[0]["position"].as_i64().unwrap();
        tests::wait_projected(&a.server, at).await;
        let types = history(&a, id).await;
        assert_eq!(
            (
                types
                    .iter()
                    .filter(|t| *t == "JobSubmissionRequested")
                    .count(),
                types.iter().filter(|t| *t == "JobSubmitted").count()
            ),
            (1, 1),
            "round {round}: {types:?}"
        );
    }

    // Each job ran exactly once, on one replica's executor.
    let deadline = tests::deadline(Duration::from_secs(20));
    loop {
        let lines = std::fs::read_to_string(&ran).unwrap_or_default();
        if lines.lines().count() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs did not run: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lines = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(
        lines.lines().count(),
        3,
        "three keys, three runs, whatever each replica was asked: {lines:?}"
    );

    // The views are what the log says.
    tests::assert_replay_verifies(&a_dir, Some(&url));
    drop((a, b));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_with_another_body_is_refused() {
    let (_dir, _, api) = tests::started(&[("CLUSTERRA_EXECUTOR_SLOTS", "0")]);
    let (status, first) = post(&api, &job("#!/bin/bash\ntrue"), "k").await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = post(&api, &job("#!/bin/bash\ntrue"), "k").await;
    assert_eq!(
        (status, &again),
        (201, &first),
        "the same body: the first answer"
    );
    let before = api.log_position().await;
    let (status, out) = post(&api, &job("#!/bin/bash\nfalse"), "k").await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["error"]["code"], "idempotency_key_reused", "{out}");
    assert_eq!(out["error"]["field"], "headers.idempotency-key", "{out}");
    api.assert_log_at(before, "nothing appended").await;
    // Spelling the same job differently is the same canonical body: not a reuse.
    let mut respelled = job("#!/bin/bash\ntrue");
    respelled["job"]["environment"] = json!({"PATH": "/usr/bin:/bin"});
    let (status, out) = post(&api, &respelled, "k").await;
    assert_eq!((status, &out["job_id"]), (201, &first["job_id"]), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_cancels_of_one_job_record_one_request_and_answer_its_position() {
    let (_dir, _, api) = tests::started(&[("CLUSTERRA_EXECUTOR_SLOTS", "0")]);
    // Pending (nothing runs): the cancels race only with each other.
    let (status, out) = api.submit(job("#!/bin/bash\nsleep 30")).await;
    assert_eq!(status, 201, "{out}");
    let id = out["job_id"].as_u64().unwrap();
    tests::wait_projected(&api.server, out["position"].as_i64().unwrap()).await;
    let mut calls = Vec::new();
    for _ in 0..6 {
        let (client, url, token) = (
            api.client.clone(),
            api.server.url(&format!("/v1/clusters/local/jobs/{id}")),
            api.token.clone(),
        );
        calls.push(tokio::spawn(async move {
            let res = client.delete(url).bearer_auth(token).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }));
    }
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    for (status, out) in &answers {
        assert_eq!(*status, 202, "{answers:?}");
        assert_eq!(out["position"], answers[0].1["position"], "{answers:?}");
    }
    let types = history(&api, id).await;
    assert_eq!(
        types.iter().filter(|t| *t == "JobCancelRequested").count(),
        1,
        "{types:?}"
    );
}
