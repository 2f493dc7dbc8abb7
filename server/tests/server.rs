//! The server library in-process: `Server::build` wires the API, the projections and the
//! workers from settings, `Server::run` serves them on a listener until told to stop. A job
//! submitted over real HTTP is run by the local executor and recorded as finished by the poll
//! cycle (a worker inside the server), and the server stops cleanly when its shutdown future
//! completes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic on what it did not expect

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Lets the job user pass through the temporary folders above `path` (tempfile makes them 0700).
fn passable(path: &std::path::Path) {
    let tmp = std::env::temp_dir();
    for dir in path.ancestors().skip(1) {
        if dir.starts_with(&tmp)
            && dir != tmp
            && let Ok(meta) = std::fs::metadata(dir)
        {
            let mode = meta.permissions().mode();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_built_in_process_runs_a_job_through_its_poll_cycle_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    passable(&data);
    let config = server::Config {
        data_dir: data.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        s3_listen: "127.0.0.1:0".parse().unwrap(),
        executor_slots: Some(1),
        poll_interval_ms: 100,
        ..server::Config::default()
    };
    let listener = server::bind(&config).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = server::token::mint(
        &config,
        "researcher@example.org",
        "default",
        false,
        Duration::from_secs(600),
    )
    .unwrap();
    let built = server::Server::build(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(built.run(listener, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    // The JSON answer of a request made as the researcher.
    let answer = async |request: reqwest::RequestBuilder| -> Value {
        request
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let submitted = answer(client.post(format!("{url}/v1/clusters/local/jobs")).json(
        &json!({"job": {"name": "in-process", "script": "#!/bin/bash\necho hello\n",
                "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}),
    ))
    .await;
    let id = submitted["job_id"].as_u64().expect("a job id");
    // Only the poll cycle records a local job's end (reconcile): COMPLETED proves it runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = answer(client.get(format!("{url}/v1/clusters/local/jobs/{id}"))).await;
        if job["state"] == "COMPLETED" || job["state"] == "FAILED" {
            break job;
        }
        assert!(Instant::now() < deadline, "job never finished: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "COMPLETED", "{job}");
    assert_eq!(job["exit_code"], 0, "{job}");

    // Asked to stop: run returns (requests finished, workers and projections stopped).
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the server stops within 20 s")
        .unwrap()
        .unwrap();
    assert!(
        client.get(format!("{url}/readyz")).send().await.is_err(),
        "nothing listens after the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_built_and_dropped_without_running_stops_its_embedded_object_store() {
    let dir = tempfile::tempdir().unwrap();
    // A free port for the embedded object store, to see it go away.
    let s3 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = server::Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        s3_listen: s3,
        executor_slots: Some(0),
        ..server::Config::default()
    };
    let built = server::Server::build(config).await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(s3).await.is_ok(),
        "the embedded object store runs once built"
    );
    drop(built);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(s3).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the object store still listens 10 s after the server was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
