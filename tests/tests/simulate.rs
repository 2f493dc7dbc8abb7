//! `clusterra simulate` through the real binary, on the fixture traces.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use tests::{repo_root, run, stderr, stdout};

#[test]
fn simulate_prints_both_fleets_and_json_for_swf_csv_and_gzip() {
    let swf = repo_root().join("fixtures/traces/small.swf");
    let out = run(&["simulate", "--trace", swf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "7 jobs simulated",
        "elastic (Clusterra)",
        "fixed, 4 nodes at peak",
        "c7g.4xlarge",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }

    // The CSV, gzipped: read by its magic bytes, format from the name.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("small.csv.gz");
    let csv = std::fs::read(repo_root().join("fixtures/traces/small.csv")).unwrap();
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&gz).unwrap())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &csv).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let out = run(&[
        "simulate",
        "--trace",
        gz.to_str().unwrap(),
        "--profile",
        "local",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["settings"]["cold_start"], 2, "{report}");
    assert!(report["jobs"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["elastic"]["started"], report["jobs"], "{report}");
    assert_eq!(report["elastic"]["waits"]["p99"], 2, "{report}");
    assert!(
        report["fixed"]["cost"].as_i64().unwrap() > report["elastic"]["cost"].as_i64().unwrap(),
        "{report}"
    );
}

#[test]
fn simulate_explains_bad_input() {
    let out = run(&["simulate", "--trace", "/nonexistent/trace.swf"]);
    assert!(!out.status.success());
    tests::assert_contains(&stderr(&out), "could not read the trace");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds\n0,60,x,,\n",
    )
    .unwrap();
    let out = run(&["simulate", "--trace", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 2") && err.contains("cpus"), "{err}");

    let swf = repo_root().join("fixtures/traces/small.swf");
    let out = run(&["simulate", "--trace", swf.to_str().unwrap(), "--cycle", "0"]);
    assert!(!out.status.success());
    tests::assert_contains(&stderr(&out), "--cycle");
}
