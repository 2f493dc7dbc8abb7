//! Set-ups shared by the commands crate's integration tests.

#![allow(dead_code)] // each test binary uses only some of them

use std::path::Path;
use std::sync::Arc;

use domain::submit::JobShape;
use eventlog::{OpenOptions, SystemClock};

/// A fresh SQLite event log in `dir` (`log.db`).
pub async fn sqlite_store(dir: &Path) -> eventlog::Store {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    eventlog::open(&OpenOptions::new(url), Arc::new(SystemClock))
        .await
        .unwrap()
}

/// What a one-vCPU, one-node job asks for: no memory, time limit or GPUs.
pub fn one_cpu() -> JobShape {
    JobShape {
        cpus: 1,
        memory_mib: None,
        nodes: 1,
        time_limit_minutes: None,
        gpus: 0,
        tasks: None,
    }
}
