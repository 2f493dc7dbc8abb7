//! The efficiency report through the real binary and the local executor: a job that burns a
//! known CPU time and holds a known amount of memory gets a report within 5% of both (as the job
//! measures itself), a hint naming a cheaper shape that would have held it, a place in its
//! owner's summary and in the admins' per-user view, and `clusterra job` prints it. The log
//! replays to the same views.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use serde_json::{Value, json};

/// Burns `BURN_S` seconds of CPU, then holds `HOLD_MIB` MiB (every page touched), then prints
/// what the kernel says it used: its own `getrusage`, the figure the report must match.
const BURN_S: f64 = 3.0;
const HOLD_MIB: u64 = 300;

fn measured_job() -> Value {
    let script = format!(
        "#!/bin/bash\nexec /usr/bin/python3 - <<'PY'\nimport resource, time\nt = time.process_time()\nwhile time.process_time() - t < {BURN_S}:\n    pass\nb = bytearray({HOLD_MIB} << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\ntime.sleep(0.2)\nr = resource.getrusage(resource.RUSAGE_SELF)\nprint('cpu', r.ru_utime + r.ru_stime, 'maxrss_kib', r.ru_maxrss)\nPY\n"
    );
    json!({"job": {"name": "measured", "script": script,
        "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs",
        "tasks": 1, "cpus_per_task": 2, "memory_per_node": {"set": true, "number": 8192},
        "time_limit": {"set": true, "number": 10}}})
}

fn within(measured: f64, known: f64, percent: f64) -> bool {
    (measured - known).abs() <= known * percent / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_a_report_within_five_percent_and_a_cheaper_shape() {
    let (_dir, data, api, user) =
        tests::started_with_user(&[("CLUSTERRA_POLL_INTERVAL_MS", "100")], "ada@lab.org");
    let (status, out) = api.submit_as(&user, measured_job()).await;
    assert_eq!(status, 201, "{out}");
    let id = out["job_id"].as_u64().unwrap();
    api.wait_state(id, &["COMPLETED", "FAILED"], Duration::from_secs(60))
        .await;
    let deadline = tests::deadline(Duration::from_secs(10));
    let job = loop {
        let (_, job) = api
            .get_as(&format!("/v1/clusters/local/jobs/{id}"), &user)
            .await;
        if !job["efficiency"].is_null() {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "COMPLETED", "{job}");
    let res = api
        .client
        .get(
            api.server
                .url(&format!("/v1/clusters/local/jobs/{id}/logs")),
        )
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    let log = res.text().await.unwrap();
    let words: Vec<&str> = log.split_whitespace().collect();
    let (own_cpu, own_kib): (f64, f64) = match words.as_slice() {
        ["cpu", cpu, "maxrss_kib", kib] => (cpu.parse().unwrap(), kib.parse().unwrap()),
        _ => panic!("the job's own measurement: {log:?}"),
    };
    let e = &job["efficiency"];
    assert_eq!(e["measured_by"], "rusage", "{e}");
    let cpu = e["cpu_seconds"].as_f64().unwrap();
    let peak = e["peak_memory_bytes"].as_f64().unwrap();
    // Within 5% of what the job measured of itself, and of what it was written to use.
    assert!(
        within(cpu, own_cpu, 5.0),
        "{cpu} s against {own_cpu} s: {e}"
    );
    // At least the burn; above it, Python's start and the page faults of what it holds.
    assert!((BURN_S..=BURN_S + 1.0).contains(&cpu), "{cpu} s: {e}");
    assert!(
        within(peak, own_kib * 1024.0, 5.0),
        "{peak} B against {own_kib} KiB: {e}"
    );
    let hold = (HOLD_MIB << 20) as f64;
    assert!(peak >= hold && within(peak, hold, 5.0), "{peak} B: {e}");
    // Percentages of what it asked: 2 CPUs over its run, 8 GiB.
    let memory = e["memory_percent"].as_f64().unwrap();
    // One decimal.
    assert!(
        (memory - peak * 100.0 / (8192.0 * 1048576.0)).abs() <= 0.05,
        "{e}"
    );
    // CPU time over the run's time (the job's own start and end) × 2 CPUs: how busy the one
    // burning thread was kept depends on what else the machine runs, so it is checked against
    // the run's own figures, and at most one of the two CPUs.
    let cpu_percent = e["cpu_percent"].as_f64().unwrap();
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap_or_default())
            .unwrap_or_else(|err| panic!("{field}: {err}: {job}"))
    };
    let run_ms = (at("ended_at") - at("started_at")).num_milliseconds() as f64;
    let expected = cpu * 1000.0 * 100.0 / (run_ms * 2.0);
    assert!(
        (cpu_percent - expected).abs() <= 0.06 && cpu_percent > 0.0 && cpu_percent <= 50.0,
        "one of two CPUs at most, {expected:.2}% by the job's start and end: {e}"
    );

    // The hint names a cheaper shape that holds it: one CPU, 512 MiB (its peak + 25%, rounded
    // up to a power of two), at a lower rate than the one it paid.
    let s = &e["suggestion"];
    assert_eq!(
        (s["cpus"].as_u64(), s["memory_mib"].as_u64()),
        (Some(1), Some(512)),
        "{e}"
    );
    // Amounts are decimal dollars with six places: micro-dollars without the point.
    let rate = |v: &Value| -> i64 { v.as_str().unwrap().replace('.', "").parse().unwrap() };
    assert!(
        rate(&s["rate_usd_per_hour"]) < rate(&job["rate_usd_per_hour"]),
        "{job}"
    );
    let hint = e["hint"].as_str().unwrap();
    assert!(
        hint.starts_with("asked 2 CPUs, kept ")
            && hint.contains("; asked 8 GiB, peaked at 3")
            && hint.contains(&format!(
                ": 1 CPU and 512 MiB would have placed it on {} ({})",
                s["node_set"].as_str().unwrap(),
                s["instance_type"].as_str().unwrap()
            )),
        "{hint}"
    );
    assert!(rate(&e["wasted_usd"]) > 0, "{e}");
    assert_eq!(
        rate(&e["wasted_usd"]),
        rate(&e["cost_usd"]) - rate(&s["cost_usd"]),
        "{e}"
    );

    // The owner's summary counts it and names it; others do not see it.
    let (status, mine) = api.get_as("/v1/users/me/efficiency", &user).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(
        (mine["jobs"].as_u64(), mine["measured"].as_u64()),
        (Some(1), Some(1)),
        "{mine}"
    );
    assert_eq!(mine["worst"][0]["job_id"].as_u64(), Some(id), "{mine}");
    assert_eq!(mine["worst"][0]["hint"], e["hint"], "{mine}");
    assert_eq!(mine["wasted_usd"], e["wasted_usd"], "{mine}");
    assert_eq!(mine["cpu_percent"], e["cpu_percent"], "{mine}");
    let admin_own = api.get_ok("/v1/users/me/efficiency").await;
    assert_eq!(admin_own["jobs"], 0, "{admin_own}");
    // Admins see everyone's; users may not.
    let all = api.get_ok("/v1/workspaces/default/efficiency").await;
    let users = all["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{all}");
    assert_eq!(users[0]["email"], "ada@lab.org", "{all}");
    assert_eq!(users[0]["worst"][0]["job_id"].as_u64(), Some(id), "{all}");
    let (status, out) = api.get_as("/v1/workspaces/default/efficiency", &user).await;
    tests::assert_error_code(status, &out, 403, "admin_required");
    // A window before the job ended holds nothing; bad windows say which field is wrong.
    let (_, before) = api
        .get_as(
            "/v1/users/me/efficiency?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z",
            &user,
        )
        .await;
    assert_eq!(before["jobs"], 0, "{before}");
    for (query, field) in [
        ("from=yesterday", "from"),
        ("from=2026-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", "to"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        let (status, out) = api
            .get_as(&format!("/v1/users/me/efficiency?{query}"), &user)
            .await;
        tests::assert_error_field(status, &out, 422, field);
    }
    let (status, out) = api.get_as("/v1/users/me/efficiency?user=x", &user).await;
    tests::assert_error_code(status, &out, 400, "unknown_parameter");

    // The command line prints the report.
    let printed = std::process::Command::new(tests::binary())
        .args(["job", &id.to_string()])
        .env("CLUSTERRA_URL", &api.server.base)
        .env("CLUSTERRA_TOKEN", &user)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let text = tests::stdout(&printed);
    assert!(printed.status.success(), "{}", tests::stderr(&printed));
    assert!(text.contains(&format!("  hint       {hint}")), "{text}");
    assert!(text.contains("  wasted     $"), "{text}");

    // The report is the log's: the views rebuilt from it match.
    tests::assert_replay_verifies(std::path::Path::new(&data), None);
}

/// A job its time limit stopped is measured only in part (what the stop killed was never waited
/// for by its shell): the figures are shown, marked partial, and no shape is suggested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_by_its_time_limit_is_measured_in_part_and_gets_no_suggestion() {
    let (_dir, _data, api) = tests::started(&[
        ("CLUSTERRA_POLL_INTERVAL_MS", "100"),
        // One minute of time limit lasts a second.
        ("CLUSTERRA_EXECUTOR_MINUTE_SECONDS", "1"),
        ("CLUSTERRA_EXECUTOR_GRACE_MS", "200"),
    ]);
    let body = json!({"job": {"name": "spins", "script": "#!/bin/bash\n/usr/bin/python3 -c 'while True: pass'\n",
        "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs",
        "tasks": 1, "cpus_per_task": 4, "time_limit": {"set": true, "number": 1}}});
    let (status, out) = api.submit(body).await;
    assert_eq!(status, 201, "{out}");
    let id = out["job_id"].as_u64().unwrap();
    api.wait_state(id, &["TIMEOUT"], Duration::from_secs(30))
        .await;
    let deadline = tests::deadline(Duration::from_secs(10));
    let job = loop {
        let job = api.job(id).await;
        if !job["efficiency"].is_null() {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let e = &job["efficiency"];
    assert_eq!(
        (&e["partial"], &e["measured_by"]),
        (&json!(true), &json!("rusage")),
        "{e}"
    );
    assert!(
        e["suggestion"].is_null() && e["wasted_usd"].is_null(),
        "{e}"
    );
    assert!(
        e["hint"].as_str().unwrap().starts_with(
            "measured in part, so no smaller shape is suggested: the job was stopped (TimeLimit)"
        ),
        "{e}"
    );
}
