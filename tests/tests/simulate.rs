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
        "8 jobs simulated; 0 refused (0.0% of the work",
        "1 cancelled before they started",
        "1 lines without run time or processors",
        "(1 jobs took the memory they used)",
        "lower bound (perfectly packed)",
        "elastic, set idle policy (Clusterra)",
        "elastic, node idle policy",
        "fixed, site size (64 procs, ",
        "the site's own scheduler (traced)",
        "site-size fleet (trace header MaxProcs)",
        "x c7g.4xlarge",
        "of which packing",
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
    for policy in ["set", "node"] {
        let e = &report["elastic"][policy];
        assert_eq!(e["started"], report["jobs"], "{report}");
        assert_eq!(e["waits"]["p99"], 2, "{report}");
        assert!(
            e["cost"].as_i64().unwrap() > report["lower_bound"].as_i64().unwrap(),
            "{report}"
        );
    }
    // No site size in a CSV: no fixed fleet unless given.
    assert!(report["site"].is_null(), "{report}");
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
    for (flag, value) in [
        ("--max-nodes-per-job", "0"),
        ("--site-procs", "0"),
        ("--site-procs", "1000001"),
        ("--mib-per-cpu", "1"),
    ] {
        let out = run(&["simulate", "--trace", swf.to_str().unwrap(), flag, value]);
        assert!(!out.status.success());
        tests::assert_contains(&stderr(&out), flag);
    }
}
