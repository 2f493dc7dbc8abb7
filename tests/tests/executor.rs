//! The local executor through the real binary: jobs that never started survive a graceful
//! restart and run later, and a server running as root runs jobs as an unprivileged user who
//! cannot read its data directory.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};
use tests::{Api, Server, mint, stdout};

fn job(script: &str) -> Value {
    json!({"job": {"name": "exec", "script": format!("#!/bin/bash\n{script}\n"),
                   "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}})
}

async fn log(api: &Api, id: u64) -> String {
    api.client
        .get(
            api.server
                .url(&format!("/v1/clusters/local/jobs/{id}/logs")),
        )
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_jobs_survive_a_graceful_restart_and_run_later() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // No capacity: the job must wait.
    let parked = [
        ("CLUSTERRA_EXECUTOR_SLOTS", "0"),
        ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
    ];
    let api = Api::start(data, &parked);
    let (status, out) = api.submit(job("echo ran after the restarts")).await;
    assert_eq!(status, 201, "{out}");
    let id = out["job_id"].as_u64().unwrap();
    tests::wait_projected(&api.server, out["position"].as_i64().unwrap()).await;
    assert_eq!(api.job(id).await["state"], "PENDING");

    // SIGTERM, start again: still PENDING, through several poll cycles.
    assert_eq!(api.server.stop(), Some(0));
    let api = Api::start(data, &parked);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let job = api.job(id).await;
    assert_eq!(job["state"], "PENDING", "{job}");

    // Started again with room (nodes, the default): it runs.
    assert_eq!(api.server.stop(), Some(0));
    let api = Api::start(data, &[("CLUSTERRA_POLL_INTERVAL_MS", "100")]);
    let job = api
        .wait_state(id, &["COMPLETED"], Duration::from_secs(30))
        .await;
    assert_eq!(job["exit_code"], 0, "{job}");
    assert_eq!(log(&api, id).await, "ran after the restarts\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_a_user_who_cannot_read_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (server, banner) = Server::start_with_env(
        &["--data-dir", data],
        &[
            ("CLUSTERRA_EXECUTOR_SLOTS", "2"),
            ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
        ],
    );
    let is_root =
        stdout(&std::process::Command::new("id").arg("-u").output().unwrap()).trim() == "0";
    if !is_root {
        // Not root: jobs cannot be switched, and the server says so at start.
        assert!(banner.contains("WARNING: local jobs run as"), "{banner}");
        assert!(banner.contains("jwt-secret"), "{banner}");
        eprintln!("skipped the isolation checks: they need root");
        return;
    }
    assert!(
        banner.contains("local jobs run as clusterra-job"),
        "{banner}"
    );
    assert!(!banner.contains("WARNING"), "{banner}");
    let api = Api {
        server,
        token: mint(data, "admin@clusterra.local", "default", true),
        client: reqwest::Client::new(),
    };
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data), 0o711, "passable to the efs root, not listable");
    assert_eq!(mode(&format!("{data}/jwt-secret")), 0o600);
    assert_eq!(mode(&format!("{data}/clusterra.db")) & 0o077, 0);

    // A job that tries to read the token secret (or the database) is refused by the kernel.
    let (status, out) = api
        .submit(job(&format!(
            "id -un\ncat {data}/clusterra.db > /dev/null || echo db refused\nls {data} || echo listing refused\ncat {data}/jwt-secret"
        )))
        .await;
    assert_eq!(status, 201, "{out}");
    let thief = out["job_id"].as_u64().unwrap();
    let job_view = api
        .wait_state(thief, &["FAILED", "COMPLETED"], Duration::from_secs(20))
        .await;
    assert_eq!(job_view["state"], "FAILED", "{job_view}");
    let output = log(&api, thief).await;
    assert!(output.starts_with("clusterra-job\n"), "{output}");
    assert!(output.contains("db refused"), "{output}");
    assert!(output.contains("listing refused"), "{output}");
    assert!(
        output.contains(&format!("{data}/jwt-secret: Permission denied")),
        "{output}"
    );
    let secret = std::fs::read_to_string(format!("{data}/jwt-secret")).unwrap();
    assert!(!output.contains(secret.trim()));

    // Normal jobs still write their output, and files of their own on the shared filesystem.
    let (_, out) = api
        .submit(job(
            "echo hello > mine.txt\ncat mine.txt\nmkdir -p sub && echo deep > sub/f && cat sub/f",
        ))
        .await;
    let ok = out["job_id"].as_u64().unwrap();
    let job_view = api
        .wait_state(ok, &["COMPLETED", "FAILED"], Duration::from_secs(20))
        .await;
    assert_eq!(job_view["state"], "COMPLETED", "{job_view}");
    assert_eq!(log(&api, ok).await, "hello\ndeep\n");
    let owner = std::process::Command::new("stat")
        .args(["-c", "%U", &format!("{data}/efs/job_{ok}.out")])
        .output()
        .unwrap();
    assert_eq!(stdout(&owner).trim(), "clusterra-job");
}
