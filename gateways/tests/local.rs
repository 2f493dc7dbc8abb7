//! The local executor with real bash processes.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use chrono::Utc;
use commands::slurm::SlurmPort;
use domain::job::JobState;
use gateways::local::{LocalExecutor, LocalSettings};
use serde_json::{Value, json};

fn settings(dir: &std::path::Path) -> LocalSettings {
    LocalSettings {
        state_dir: dir.join("executor"),
        efs_root: dir.join("efs"),
        grace: Duration::from_millis(500),
        minute: Duration::from_millis(300),
        slots: 8,
        nodes: None,
        user: gateways::jobuser::JobUser::current(),
    }
}

/// An executor in `dir`, started now.
fn executor(dir: &std::path::Path) -> LocalExecutor {
    LocalExecutor::open(settings(dir), Utc::now()).unwrap()
}

/// An executor in a new temporary folder (keep it to the end of the test) that runs at most
/// `slots` jobs at once.
fn executor_with_slots(slots: usize) -> (tempfile::TempDir, LocalExecutor) {
    let dir = tempfile::tempdir().unwrap();
    let limited = LocalSettings {
        slots,
        ..settings(dir.path())
    };
    let ex = LocalExecutor::open(limited, Utc::now()).unwrap();
    (dir, ex)
}

fn body(script: &str, time_limit: Option<u64>) -> Value {
    let mut job = json!({
        "name": "t",
        "script": format!("#!/bin/bash\n{script}\n"),
        "environment": ["PATH=/usr/bin:/bin", "GREETING=hello"],
        "current_working_directory": "/mnt/efs",
        "comment": "clusterra:6f1c2a4e-1d5b-4d8e-9d6e-0a1b2c3d4e5f"
    });
    if let Some(m) = time_limit {
        job["time_limit"] = json!({"set": true, "infinite": false, "number": m});
    }
    json!({ "job": job })
}

/// A job running `true` on `ex`, run to its end: its id.
async fn ran_true(ex: &LocalExecutor) -> u64 {
    let job = ex.submit(&body("true", None)).await.unwrap();
    wait_final(ex, job.job_id, Duration::from_secs(10)).await;
    job.job_id
}

async fn wait_final(ex: &LocalExecutor, id: u64, within: Duration) -> commands::slurm::SlurmJob {
    let deadline = Instant::now() + within;
    let mut job = ex.job(id).await.unwrap().unwrap();
    while !job.state.is_terminal() {
        assert!(
            Instant::now() < deadline,
            "job {id} still {} after {within:?}",
            job.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        job = ex.job(id).await.unwrap().unwrap();
    }
    job
}

#[tokio::test]
async fn runs_maps_exit_codes_enforces_limits_and_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(dir.path());

    let ok = ex
        .submit(&body(
            "echo \"$GREETING from $SLURM_JOB_ID in $(pwd)\"; echo oops >&2",
            None,
        ))
        .await
        .unwrap();
    let job = wait_final(&ex, ok.job_id, Duration::from_secs(10)).await;
    assert_eq!((job.state, job.exit_code), (JobState::Completed, Some(0)));
    let out =
        std::fs::read_to_string(dir.path().join(format!("efs/job_{}.out", ok.job_id))).unwrap();
    let efs = dir.path().join("efs");
    assert!(
        out.contains(&format!("hello from {} in {}", ok.job_id, efs.display())),
        "{out}"
    );
    assert!(
        out.contains("oops"),
        "stderr goes with stdout by default: {out}"
    );
    assert_eq!(
        job.submission_id().unwrap().to_string(),
        "6f1c2a4e-1d5b-4d8e-9d6e-0a1b2c3d4e5f"
    );

    let failed = ex.submit(&body("exit 3", None)).await.unwrap();
    let job = wait_final(&ex, failed.job_id, Duration::from_secs(10)).await;
    assert_eq!((job.state, job.exit_code), (JobState::Failed, Some(3)));
    assert!(failed.job_id > ok.job_id);

    // The server's own environment does not leak into jobs.
    let env = ex
        .submit(&body("echo \"home=[$HOME]\"", None))
        .await
        .unwrap();
    wait_final(&ex, env.job_id, Duration::from_secs(10)).await;
    let out =
        std::fs::read_to_string(dir.path().join(format!("efs/job_{}.out", env.job_id))).unwrap();
    assert_eq!(out.trim(), "home=[]");

    let slow = ex.submit(&body("sleep 30", Some(1))).await.unwrap();
    let job = wait_final(&ex, slow.job_id, Duration::from_secs(10)).await;
    assert_eq!(job.state, JobState::Timeout);

    // A job that ignores SIGTERM is killed after the grace period, children included.
    let stubborn = ex
        .submit(&body("trap '' TERM; sleep 30 & sleep 30", None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ex.job(stubborn.job_id).await.unwrap().unwrap().state,
        JobState::Running
    );
    let started = Instant::now();
    ex.cancel(stubborn.job_id).await.unwrap();
    let job = wait_final(&ex, stubborn.job_id, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Cancelling a finished job is not an error; an unknown one is.
    ex.cancel(stubborn.job_id).await.unwrap();
    assert!(ex.cancel(9_999).await.is_err());

    // Paths that leave the shared mount are refused before anything runs.
    for (key, path) in [
        ("standard_output", "/mnt/efs/../clusterra.db"),
        ("standard_output", "/etc/passwd"),
        ("standard_error", "../../x"),
        ("current_working_directory", "/root"),
    ] {
        let mut b = body("true", None);
        b["job"][key] = json!(path);
        let err = ex.submit(&b).await.unwrap_err();
        assert!(format!("{err}").contains(key), "{key}={path}: {err}");
    }
    // A symlink an earlier job planted does not lead the server's output outside either.
    let efs = dir.path().join("efs");
    std::os::unix::fs::symlink(dir.path(), efs.join("escape")).unwrap();
    let mut b = body("true", None);
    b["job"]["standard_output"] = json!("/mnt/efs/escape/owned.txt");
    let planted = ex.submit(&b).await.unwrap();
    let job = wait_final(&ex, planted.job_id, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(!dir.path().join("owned.txt").exists());

    let bad_dir = ex.submit(&json!({"job": {"script": "#!/bin/bash\ntrue", "current_working_directory": "/mnt/efs/nonexistent/dir"}})).await.unwrap();
    let job = wait_final(&ex, bad_dir.job_id, Duration::from_secs(5)).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.reason.unwrap().contains("does not exist"));
}

#[tokio::test]
async fn ids_survive_restarts_and_lost_jobs_are_node_fail() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let ex = executor(dir.path());
        ran_true(&ex).await;
        let b = ex.submit(&body("sleep 30", None)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            ex.job(b.job_id).await.unwrap().unwrap().state,
            JobState::Running
        );
        b.job_id
    };
    // The executor "crashed" with job `first` running; a new one takes over the state.
    let ex = executor(dir.path());
    let lost = ex.job(first).await.unwrap().unwrap();
    assert_eq!(lost.state, JobState::NodeFail);
    let next = ex.submit(&body("true", None)).await.unwrap();
    // Ids are never handed out twice: a restart continues after the block of ids the counter
    // reserved (written once per block, not per submission).
    assert!(next.job_id > first, "{} after {first}", next.job_id);
    assert_eq!(ex.jobs().await.unwrap().len(), 3);
    let after = ex.submit(&body("true", None)).await.unwrap();
    assert_eq!(after.job_id, next.job_id + 1, "dense within a run");
}

#[tokio::test]
async fn jobs_beyond_the_slots_wait_pending_in_order() {
    let (dir, ex) = executor_with_slots(1);
    let first = ex.submit(&body("sleep 0.5", None)).await.unwrap();
    let second = ex.submit(&body("true", None)).await.unwrap();
    let third = ex.submit(&body("sleep 30", None)).await.unwrap();
    let waiting = ex.job(second.job_id).await.unwrap().unwrap();
    assert_eq!(
        (waiting.state, waiting.reason.as_deref()),
        (JobState::Pending, Some("Resources"))
    );
    // Cancelling a pending job ends it at once, without running it.
    ex.cancel(third.job_id).await.unwrap();
    assert_eq!(
        ex.job(third.job_id).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        wait_final(&ex, first.job_id, Duration::from_secs(10))
            .await
            .state,
        JobState::Completed
    );
    assert_eq!(
        wait_final(&ex, second.job_id, Duration::from_secs(10))
            .await
            .state,
        JobState::Completed
    );
    let out = std::fs::metadata(dir.path().join(format!("efs/job_{}.out", third.job_id)));
    assert!(out.is_err(), "the cancelled pending job never ran");

    let mut s = settings(dir.path());
    s.slots = 0;
    s.state_dir = dir.path().join("executor-0");
    let none = LocalExecutor::open(s, Utc::now()).unwrap();
    let parked = none.submit(&body("true", None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        none.job(parked.job_id).await.unwrap().unwrap().state,
        JobState::Pending
    );
}

#[tokio::test]
async fn waiting_jobs_are_queued_again_after_a_restart_and_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.slots = 0;
    let (first, second, cancelled) = {
        let ex = LocalExecutor::open(s.clone(), Utc::now()).unwrap();
        let a = ex.submit(&body("echo one", None)).await.unwrap();
        let b = ex.submit(&body("echo two", None)).await.unwrap();
        let c = ex.submit(&body("echo never", None)).await.unwrap();
        (a.job_id, b.job_id, c.job_id)
    };
    // Restarted, still without room: they wait; one is cancelled while it waits.
    let ex = LocalExecutor::open(s.clone(), Utc::now()).unwrap();
    for id in [first, second, cancelled] {
        assert_eq!(
            ex.job(id).await.unwrap().unwrap().state,
            JobState::Pending,
            "{id}"
        );
    }
    ex.cancel(cancelled).await.unwrap();
    drop(ex);
    // Restarted with a slot: the two left run, one after the other.
    s.slots = 1;
    let ex = LocalExecutor::open(s, Utc::now()).unwrap();
    let a = wait_final(&ex, first, Duration::from_secs(10)).await;
    let b = wait_final(&ex, second, Duration::from_secs(10)).await;
    assert_eq!(
        (a.state, b.state),
        (JobState::Completed, JobState::Completed)
    );
    assert!(a.end_time <= b.start_time, "in submission order");
    let out = |id: u64| std::fs::read_to_string(dir.path().join(format!("efs/job_{id}.out")));
    assert_eq!(out(first).unwrap(), "one\n");
    assert_eq!(out(second).unwrap(), "two\n");
    assert_eq!(
        ex.job(cancelled).await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert!(out(cancelled).is_err());
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[test]
fn a_restart_kills_the_jobs_own_leftovers_and_never_a_reused_pid() {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let (kept, ended) = {
        // The first server: its runtime goes away with it, as in a crash; the jobs' processes
        // live on.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ex = executor(dir.path());
            let kept = ex.submit(&body("sleep 300", None)).await.unwrap().job_id;
            let ended = ex.submit(&body("sleep 300", None)).await.unwrap().job_id;
            let deadline = Instant::now() + Duration::from_secs(10);
            for id in [kept, ended] {
                while ex.job(id).await.unwrap().unwrap().state != JobState::Running {
                    assert!(Instant::now() < deadline);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (kept, ended)
        })
    };
    // The records' journal: a job's last line is its record.
    let journal = dir.path().join("executor/jobs/records.jsonl");
    let record = |id: u64| -> Value {
        std::fs::read_to_string(&journal)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .rfind(|r| r["job_id"] == json!(id))
            .unwrap()
    };
    let pid = |id: u64| record(id)["pid"].as_u64().unwrap() as u32;
    let (kept_pid, ended_pid) = (pid(kept), pid(ended));
    assert!(
        record(kept)["pid_start"].as_u64().is_some(),
        "{}",
        record(kept)
    );
    assert!(alive(kept_pid) && alive(ended_pid));

    // While the server is down, `ended` finishes, and its pid goes to an unrelated process that
    // leads its own group (what a reused pid looks like): written into the stored state as the
    // job's, with the job's recorded start time.
    killpg(Pid::from_raw(ended_pid as i32), Signal::SIGKILL).unwrap();
    // Start times are in clock ticks (10 ms): a process started within the job's tick would
    // pass for the job itself (CI saw this once). A real reused pid cannot come that soon (the
    // pid space would have to wrap within one tick), so the stand-in starts a few ticks later.
    std::thread::sleep(Duration::from_millis(30));
    let mut unrelated = std::process::Command::new("sleep")
        .arg("1000")
        .env_remove("SLURM_JOB_ID")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stored = record(ended);
    stored["pid"] = json!(unrelated.id());
    let mut line = serde_json::to_vec(&stored).unwrap();
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(&line)
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ex = executor(dir.path());
        for id in [kept, ended] {
            assert_eq!(
                ex.job(id).await.unwrap().unwrap().state,
                JobState::NodeFail,
                "{id}"
            );
        }
    });
    assert!(
        unrelated.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    // The job that was still its own is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(kept_pid) {
        assert!(Instant::now() < deadline, "the leftover job still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();
}

#[tokio::test]
async fn jobs_since_a_version_lists_only_what_changed_after_it() {
    let (_dir, ex) = executor_with_slots(0);
    let a = ex.submit(&body("true", None)).await.unwrap();
    let b = ex.submit(&body("true", None)).await.unwrap();
    let v1 = ex.jobs_version().unwrap();
    let ids =
        |jobs: &[commands::slurm::SlurmJob]| jobs.iter().map(|j| j.job_id).collect::<Vec<_>>();
    let all = ex.jobs_since(0).await.unwrap().unwrap();
    assert_eq!(ids(&all.jobs), vec![a.job_id, b.job_id]);
    assert_eq!(all.version, v1);
    // Nothing since: an empty delta at the same version.
    let none = ex.jobs_since(v1).await.unwrap().unwrap();
    assert!(none.jobs.is_empty());
    assert_eq!(none.version, v1);
    // A cancel changes one record: only it is listed, and the version moves.
    ex.cancel(b.job_id).await.unwrap();
    let after = ex.jobs_since(v1).await.unwrap().unwrap();
    assert_eq!(ids(&after.jobs), vec![b.job_id]);
    assert_eq!(after.jobs[0].state, JobState::Cancelled);
    assert!(after.version > v1);
    assert_eq!(ex.jobs_version(), Some(after.version));
}

#[tokio::test]
async fn jobs_that_ended_long_ago_leave_the_listing_except_just_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let ex = executor(dir.path());
        ran_true(&ex).await
    };
    // Its record says it ended an hour ago (a newer line in the records' journal).
    let journal = dir.path().join("executor/jobs/records.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut record: Value = serde_json::from_str(text.lines().next_back().unwrap()).unwrap();
    assert_eq!(record["job_id"], json!(id));
    record["end_time"] = json!(Utc::now() - chrono::Duration::hours(1));
    std::fs::write(&journal, format!("{text}{record}\n")).unwrap();
    let listed = |jobs: Vec<commands::slurm::SlurmJob>| jobs.iter().any(|j| j.job_id == id);
    // Just after a restart every job is listed (a crash may have left its submission unsettled).
    let fresh = executor(dir.path());
    assert!(listed(fresh.jobs().await.unwrap()));
    // Later, a job that ended over MinJobAge ago is not listed, and is still found by id.
    let later = LocalExecutor::open(
        settings(dir.path()),
        Utc::now() - chrono::Duration::minutes(20),
    )
    .unwrap();
    assert!(!listed(later.jobs().await.unwrap()));
    assert_eq!(
        later.job(id).await.unwrap().unwrap().state,
        JobState::Completed
    );
}

#[tokio::test]
async fn the_records_journal_drops_a_torn_line_moves_old_files_in_and_compacts() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let queued = || LocalSettings {
        slots: 0,
        ..settings(dir.path())
    };
    let journal = dir.path().join("executor/jobs/records.jsonl");
    let lines = || {
        std::fs::read_to_string(&journal)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b) = {
        let ex = LocalExecutor::open(queued(), Utc::now()).unwrap();
        let a = ex.submit(&body("true", None)).await.unwrap().job_id;
        let b = ex.submit(&body("true", None)).await.unwrap().job_id;
        (a, b)
    };
    assert_eq!(lines().len(), 2, "one line per submission");

    // A crash cut the last write short; an older version left a record file of its own.
    let mut older = lines()[0].clone();
    older["job_id"] = json!(b + 10);
    std::fs::write(
        dir.path().join(format!("executor/jobs/{}.json", b + 10)),
        serde_json::to_vec(&older).unwrap(),
    )
    .unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    file.write_all(br#"{"job_id": 999, "name": "#).unwrap();
    drop(file);

    let ex = LocalExecutor::open(queued(), Utc::now()).unwrap();
    for id in [a, b, b + 10] {
        let job = ex.job(id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Pending, "{id} is queued again");
    }
    assert!(
        ex.job(999).await.unwrap().is_none(),
        "the torn line is not a job"
    );
    let ids: Vec<Value> = lines().iter().map(|r| r["job_id"].clone()).collect();
    assert_eq!(
        ids,
        vec![json!(a), json!(b), json!(b + 10)],
        "one line per job"
    );
    assert!(
        !dir.path()
            .join(format!("executor/jobs/{}.json", b + 10))
            .exists(),
        "the old record file moved into the journal"
    );

    // Changes append, and a journal of up to two lines a job is kept as it is at open.
    ex.cancel(a).await.unwrap();
    let c = ex.submit(&body("true", None)).await.unwrap().job_id;
    let grown = lines().len();
    assert!(grown >= 5, "{grown} lines");
    drop(ex);
    let ex = LocalExecutor::open(queued(), Utc::now()).unwrap();
    assert_eq!(lines().len(), grown, "{grown} lines for 4 jobs: kept");
    drop(ex);
    // More than two lines a job (each change of a long-lived job adds one): rewritten at open,
    // one line per job, each the newest.
    let text = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, format!("{text}{text}{text}")).unwrap();
    let ex = LocalExecutor::open(queued(), Utc::now()).unwrap();
    assert_eq!(lines().len(), 4, "rewritten: one line per job");
    assert_eq!(ex.job(a).await.unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(ex.job(c).await.unwrap().unwrap().state, JobState::Pending);
}

#[tokio::test]
async fn a_corrupt_line_inside_the_records_journal_refuses_to_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let queued = || LocalSettings {
        slots: 0,
        ..settings(dir.path())
    };
    {
        let ex = LocalExecutor::open(queued(), Utc::now()).unwrap();
        ex.submit(&body("true", None)).await.unwrap();
        ex.submit(&body("true", None)).await.unwrap();
    }
    // Not a torn tail (that is dropped): a whole line in the middle that is not a record.
    let journal = dir.path().join("executor/jobs/records.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    std::fs::write(&journal, format!("{first}\nnot a record\n{rest}")).unwrap();
    let Err(e) = LocalExecutor::open(queued(), Utc::now()) else {
        panic!("a corrupt journal opened");
    };
    assert!(e.to_string().contains("records.jsonl"), "{e}");
    // Nothing was rewritten over it: the operator still has every line to repair.
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        format!("{first}\nnot a record\n{rest}")
    );
}
