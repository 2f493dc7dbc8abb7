//! A cluster registered with a slurmrestd endpoint takes jobs through the API and runs them on a
//! real Slurm (started by scripts/test with scripts/slurm-local).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::Server;

fn env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run scripts/test, which starts a Slurm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_a_registered_slurmrestd_cluster() {
    if std::env::var("CLUSTERRA_SKIP_SLURM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CLUSTERRA_SKIP_SLURM=1 (no real Slurm in this run)");
        return;
    }
    let (url, user, jwt, efs) = (
        env("SLURMRESTD_URL"),
        env("SLURM_USER_NAME"),
        env("SLURM_JWT"),
        env("SLURM_EFS_ROOT"),
    );
    let (dir, server, token) = tests::serving(&[("CLUSTERRA_POLL_INTERVAL_MS", "200")]);
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let registered_at = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client
            .request(method, server.url(path))
            .bearer_auth(&token)
            .header(
                "X-Clusterra-Min-Position",
                registered_at.load(std::sync::atomic::Ordering::SeqCst),
            );
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, out) = call(
        reqwest::Method::POST,
        "/v1/clusters",
        Some(json!({"id": "real", "name": "Real Slurm", "region": "local", "bucket": "real-bucket", "slurm": {"url": url, "user": user}})),
    )
    .await;
    assert_eq!(status, 201, "{out}");
    registered_at.store(
        out["position"].as_i64().unwrap(),
        std::sync::atomic::Ordering::SeqCst,
    );
    // Without its token the cluster is not connected and says so.
    let body = |script: &str| {
        json!({"job": {"name": "on-real-slurm", "script": script, "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": "/mnt/efs"}})
    };
    let (status, out) = call(
        reqwest::Method::POST,
        "/v1/clusters/real/jobs",
        Some(body("#!/bin/bash\ntrue")),
    )
    .await;
    tests::assert_error_code(status, &out, 503, "slurm_not_connected");

    std::fs::create_dir_all(data.join("slurm-tokens")).unwrap();
    std::fs::write(data.join("slurm-tokens/default.real.jwt"), &jwt).unwrap();
    let deadline = tests::deadline(Duration::from_secs(20));
    let submitted = loop {
        let (status, out) = call(
            reqwest::Method::POST,
            "/v1/clusters/real/jobs",
            Some(body("#!/bin/bash\necho hello-from-real-slurm")),
        )
        .await;
        if status == 201 {
            break out;
        }
        assert!(Instant::now() < deadline, "never connected: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let id = submitted["job_id"].as_u64().unwrap();
    let wait = |id: u64, state: &'static str, secs: u64| {
        let call = &call;
        async move {
            let deadline = tests::deadline(Duration::from_secs(secs));
            loop {
                let (_, job) = call(
                    reqwest::Method::GET,
                    &format!("/v1/clusters/real/jobs/{id}"),
                    None,
                )
                .await;
                if job["state"] == state {
                    return job;
                }
                assert!(Instant::now() < deadline, "job {id} not {state}: {job}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut job = wait(id, "COMPLETED", 60).await;
    assert_eq!(job["exit_code"], 0);
    // Slurm's controller reports no usage (there is no accounting here): the report says so
    // and guesses nothing.
    let deadline = tests::deadline(Duration::from_secs(10));
    while job["efficiency"].is_null() {
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        job = call(
            reqwest::Method::GET,
            &format!("/v1/clusters/real/jobs/{id}"),
            None,
        )
        .await
        .1;
    }
    let e = &job["efficiency"];
    assert_eq!(e["measured_by"], "none", "{e}");
    assert!(
        e["cpu_percent"].is_null() && e["wasted_usd"].is_null(),
        "{e}"
    );
    assert!(
        e["hint"].as_str().unwrap().starts_with("not measured: "),
        "{e}"
    );
    let output = std::fs::read_to_string(format!("{efs}/job_{id}.out")).unwrap();
    assert!(output.contains("hello-from-real-slurm"), "{output}");
    // The log through the API: the cluster's shared filesystem is mounted (here: linked) at
    // <efs_mounts_dir>/<workspace>.<cluster>.
    let logs = format!("/v1/clusters/real/jobs/{id}/logs");
    let (status, out) = call(reqwest::Method::GET, &logs, None).await;
    assert_eq!(status, 409, "not mounted on this server yet: {out}");
    std::fs::create_dir_all(data.join("efs-mounts")).unwrap();
    std::os::unix::fs::symlink(&efs, data.join("efs-mounts/default.real")).unwrap();
    let res = client
        .get(server.url(&logs))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), output);

    let (_, out) = call(
        reqwest::Method::POST,
        "/v1/clusters/real/jobs",
        Some(body("#!/bin/bash\nsleep 300")),
    )
    .await;
    let sleeper = out["job_id"].as_u64().unwrap();
    wait(sleeper, "RUNNING", 60).await;
    let (status, out) = call(
        reqwest::Method::DELETE,
        &format!("/v1/clusters/real/jobs/{sleeper}"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{out}");
    wait(sleeper, "CANCELLED", 30).await;
    server.stop();
}

/// Two replicas on one PostgreSQL, clients alternating between them with no balancer: every
/// submit is accepted by either replica (each connects the cluster, not only the poll leader),
/// each job is listed once by both, the ids are unique, and the log replays to the same views.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_both_submit_to_the_real_slurm() {
    if std::env::var("CLUSTERRA_SKIP_SLURM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CLUSTERRA_SKIP_SLURM=1 (no real Slurm in this run)");
        return;
    }
    let (url, user, jwt) = (
        env("SLURMRESTD_URL"),
        env("SLURM_USER_NAME"),
        env("SLURM_JWT"),
    );
    let db = tests::ScratchDb::create().await;
    let (dir, a_dir, b_dir) = tests::replica_dirs();
    let env = [("CLUSTERRA_POLL_INTERVAL_MS", "200")];
    let start = |data: &std::path::Path| {
        Server::start_with_env(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--database-url",
                &db.url,
            ],
            &env,
        )
    };
    let (a, banner) = start(&a_dir);
    let token = tests::banner_token(&banner).unwrap();
    std::fs::copy(a_dir.join("jwt-secret"), dir.path().join("secret")).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::copy(dir.path().join("secret"), b_dir.join("jwt-secret")).unwrap();
    let b = start(&b_dir).0;
    for data in [&a_dir, &b_dir] {
        std::fs::create_dir_all(data.join("slurm-tokens")).unwrap();
        std::fs::write(data.join("slurm-tokens/default.real.jwt"), &jwt).unwrap();
    }
    let client = reqwest::Client::new();
    let call = |server: &Server, method: reqwest::Method, path: &str, body: Option<Value>| {
        let req = client.request(method, server.url(path)).bearer_auth(&token);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, out) = call(
        &a,
        reqwest::Method::POST,
        "/v1/clusters",
        Some(json!({"id": "real", "name": "Real Slurm", "region": "local", "bucket": "real-two-replicas", "slurm": {"url": url, "user": user}})),
    )
    .await;
    assert_eq!(status, 201, "{out}");
    let registered = out["position"].as_i64().unwrap();
    tests::wait_projected(&a, registered).await;
    tests::wait_projected(&b, registered).await;
    let body = json!({"job": {"name": "two-replicas", "script": "#!/bin/bash\ntrue", "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": "/mnt/efs"}});
    let mut ids = Vec::new();
    for i in 0..20 {
        let server = if i % 2 == 0 { &a } else { &b };
        let deadline = tests::deadline(Duration::from_secs(15));
        let out = loop {
            let (status, out) = call(
                server,
                reqwest::Method::POST,
                "/v1/clusters/real/jobs",
                Some(body.clone()),
            )
            .await;
            if status == 201 {
                break out;
            }
            // Only before this replica first connected the cluster.
            assert!(
                ids.len() < 2 && out["error"]["code"] == "slurm_not_connected",
                "submit {i} to replica {}: {status} {out}",
                if i % 2 == 0 { "A" } else { "B" }
            );
            assert!(Instant::now() < deadline, "never connected: {out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ids.push((
            out["job_id"].as_u64().unwrap(),
            out["position"].as_i64().unwrap(),
        ));
    }
    let mut unique: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 20, "job ids are unique: {ids:?}");
    let last = ids.iter().map(|(_, p)| *p).max().unwrap();
    for server in [&a, &b] {
        tests::wait_projected(server, last).await;
        let (status, page) = call(
            server,
            reqwest::Method::GET,
            "/v1/clusters/real/jobs?limit=500",
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let mut listed: Vec<u64> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_u64().unwrap())
            .collect();
        listed.sort_unstable();
        assert_eq!(listed, unique, "each job listed once by {}", server.base);
    }
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    tests::assert_replay_verifies(&a_dir, Some(&db.url));
    db.drop_database().await;
}
