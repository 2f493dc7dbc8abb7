//! The client verbs against a running server: submit (template and body file), jobs, job, cancel.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Server, binary, stderr, stdout};

fn cli(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env("CLUSTERRA_URL", &server.base)
        .env("CLUSTERRA_TOKEN", token)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

#[test]
fn submit_list_show_and_cancel_from_the_command_line() {
    let (dir, server, token) = tests::serving(&[("CLUSTERRA_POLL_INTERVAL_MS", "100")]);

    let out = cli(
        &server,
        &token,
        &[
            "submit",
            "--template",
            "shell",
            "--param",
            "command=echo via-cli",
            "--param",
            "minutes=5",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = answer["job_id"].as_u64().unwrap();

    let body = dir.path().join("body.json");
    std::fs::write(&body, r##"{"job": {"name": "sleeper", "script": "#!/bin/bash\nsleep 30", "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}"##).unwrap();
    let out = cli(
        &server,
        &token,
        &[
            "submit",
            body.to_str().unwrap(),
            "--idempotency-key",
            "cli-1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sleeper = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["job_id"]
        .as_u64()
        .unwrap();

    let deadline = tests::deadline(Duration::from_secs(15));
    loop {
        let out = cli(&server, &token, &["job", &id.to_string(), "--json"]);
        let job: Value = serde_json::from_str(&stdout(&out)).unwrap();
        if job["state"] == "COMPLETED" {
            assert_eq!(job["via"], "template");
            break;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = stdout(&cli(&server, &token, &["jobs"]));
    assert!(
        listed.contains("COMPLETED") && listed.contains("sleeper"),
        "{listed}"
    );

    let out = cli(&server, &token, &["cancel", &sleeper.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&server, &token, &["cancel", "4242"]);
    assert_eq!(out.status.code(), Some(1));
    tests::assert_contains(&stderr(&out), "job_not_found");

    // A body the API refuses is explained, with the field at fault.
    std::fs::write(&body, r##"{"job": {"script": "echo hi", "environment": ["PATH=/bin"], "current_working_directory": "/mnt/efs"}}"##).unwrap();
    let out = cli(&server, &token, &["submit", body.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("script_no_shebang") && stderr(&out).contains("(field job.script)"),
        "{}",
        stderr(&out)
    );
    server.stop();
}
