//! The slurmrestd adapter against a real slurmctld + slurmrestd (v0.0.44): the same scenario as
//! the local executor's test. Needs `SLURMRESTD_URL`, `SLURM_USER_NAME`, `SLURM_JWT` and
//! `SLURM_EFS_ROOT` from a running local Slurm: `scripts/test` starts one with
//! `scripts/slurm-local start` (or `SKIP_SLURM=1 scripts/test` skips this test, saying so).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use commands::slurm::SlurmPort;
use domain::job::JobState;
use gateways::slurmrestd::SlurmRestd;
use serde_json::json;

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run scripts/test (it starts a Slurm), or `scripts/slurm-local start` and export its output")
    })
}

fn body(script: &str, minutes: Option<u64>) -> serde_json::Value {
    let efs = env("SLURM_EFS_ROOT");
    let mut job = json!({
        "name": "clusterra-adapter-test",
        "script": format!("#!/bin/bash\n{script}\n"),
        "environment": ["PATH=/usr/bin:/bin"],
        "current_working_directory": efs,
        "standard_output": format!("{efs}/job_%j.out"),
        "partition": std::env::var("SLURM_PARTITION").unwrap_or_else(|_| "debug".into()),
        "comment": "clusterra:6f1c2a4e-1d5b-4d8e-9d6e-0a1b2c3d4e5f ada@lab.org"
    });
    if let Some(m) = minutes {
        job["time_limit"] = json!({"set": true, "infinite": false, "number": m});
    }
    json!({ "job": job })
}

/// Job `id` once Slurm reports it in `state`, polled for at most `seconds`.
async fn wait(
    slurm: &SlurmRestd,
    id: u64,
    state: JobState,
    seconds: u64,
) -> commands::slurm::SlurmJob {
    let within = Duration::from_secs(seconds);
    let deadline = Instant::now() + within;
    loop {
        if let Some(job) = slurm.job(id).await.unwrap() {
            if job.state == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} is {} after {within:?}",
                job.state
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_adapter_against_a_real_slurm() {
    if std::env::var("CLUSTERRA_SKIP_SLURM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: CLUSTERRA_SKIP_SLURM=1 (no real Slurm in this run)");
        return;
    }
    let slurm = SlurmRestd::new(
        &env("SLURMRESTD_URL"),
        &env("SLURM_USER_NAME"),
        &env("SLURM_JWT"),
    )
    .unwrap();

    let ok = slurm
        .submit(&body("echo adapter-says-hello", None))
        .await
        .unwrap();
    let job = wait(&slurm, ok.job_id, JobState::Completed, 60).await;
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(
        job.submission_id().unwrap().to_string(),
        "6f1c2a4e-1d5b-4d8e-9d6e-0a1b2c3d4e5f"
    );
    assert!(
        job.comment.as_deref().unwrap().contains(" ada@lab.org"),
        "{:?}",
        job.comment
    );
    let out = std::fs::read_to_string(format!("{}/job_{}.out", env("SLURM_EFS_ROOT"), ok.job_id))
        .unwrap();
    assert!(out.contains("adapter-says-hello"), "{out}");

    let failed = slurm.submit(&body("exit 3", None)).await.unwrap();
    let job = wait(&slurm, failed.job_id, JobState::Failed, 60).await;
    assert_eq!(job.exit_code, Some(3));

    let sleeper = slurm.submit(&body("sleep 300", None)).await.unwrap();
    wait(&slurm, sleeper.job_id, JobState::Running, 60).await;
    slurm.cancel(sleeper.job_id).await.unwrap();
    wait(&slurm, sleeper.job_id, JobState::Cancelled, 30).await;
    slurm.cancel(sleeper.job_id).await.unwrap();

    let timeout = slurm.submit(&body("sleep 300", Some(1))).await.unwrap();
    wait(&slurm, timeout.job_id, JobState::Timeout, 150).await;

    let rejected = slurm
        .submit(&json!({"job": {"script": "#!/bin/bash\ntrue", "current_working_directory": "/tmp", "environment": []}}))
        .await
        .unwrap_err();
    assert!(
        matches!(rejected, commands::slurm::SlurmError::Rejected(_)),
        "{rejected:?}"
    );
    assert!(slurm.job(999_999).await.unwrap().is_none());
    let listed = slurm.jobs().await.unwrap();
    assert!(listed.iter().any(|j| j.job_id == ok.job_id));
    // The cheap listing of states agrees with the full one on this test's jobs (all finished;
    // other tests' jobs may move between the two calls).
    let states = slurm
        .states()
        .await
        .unwrap()
        .expect("slurmrestd lists states");
    let state_of = |id: u64| states.iter().find(|r| r.job_id == id).map(|r| r.state);
    for (id, state) in [
        (ok.job_id, JobState::Completed),
        (failed.job_id, JobState::Failed),
        (sleeper.job_id, JobState::Cancelled),
        (timeout.job_id, JobState::Timeout),
    ] {
        assert_eq!(state_of(id), Some(Some(state)), "job {id}");
        let full = listed.iter().find(|j| j.job_id == id).map(|j| j.state);
        assert_eq!(full, Some(state), "job {id}");
    }
    // The listing of some jobs by id names those jobs and no other; an id Slurm does not know
    // is left out, not an error.
    let mut ids = vec![ok.job_id, sleeper.job_id, timeout.job_id, 999_999_999];
    ids.sort_unstable();
    let mut some = slurm
        .states_of(&ids)
        .await
        .unwrap()
        .expect("slurmrestd lists states by id");
    some.sort_by_key(|r| r.job_id);
    let mut want = vec![
        (ok.job_id, Some(JobState::Completed)),
        (sleeper.job_id, Some(JobState::Cancelled)),
        (timeout.job_id, Some(JobState::Timeout)),
    ];
    want.sort_unstable_by_key(|(id, _)| *id);
    let got: Vec<_> = some.iter().map(|r| (r.job_id, r.state)).collect();
    assert_eq!(got, want);
    assert_eq!(slurm.states_of(&[]).await.unwrap(), Some(vec![]));
}
