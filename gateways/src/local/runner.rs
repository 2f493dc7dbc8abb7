//! Running jobs: starting waiting jobs on free slots or nodes, each as a process group of its own,
//! with its time limit, cancel and exit code; and stopping what a previous process left running.

use super::*;

impl LocalExecutor {
    /// Starts waiting jobs: on ready nodes with room (with nodes), else while slots are free
    /// (one worker per slot in use).
    pub(super) async fn dispatch(&self) {
        let mut queue = self.inner.queue.lock().await;
        if self.inner.settings.nodes.is_some() {
            let mut i = 0;
            while i < queue.waiting.len() {
                let q = &queue.waiting[i];
                let now = Utc::now();
                // When its time limit is up if it starts now (`None`: never).
                let end = q
                    .wants
                    .limit
                    .and_then(|l| chrono::Duration::from_std(l).ok())
                    .and_then(|l| now.checked_add_signed(l));
                let placed = match self.inner.fleet.lock() {
                    Ok(mut fleet) => fleet
                        .find(&q.wants, end)
                        .map(|at| fleet.take(&at, q.job_id, q.wants.demand, end)),
                    Err(_) => None,
                };
                match placed.and_then(|names| queue.waiting.remove(i).map(|q| (q, names))) {
                    Some((q, names)) => {
                        queue.running += 1;
                        tokio::spawn(self.clone().run_on(q, names));
                    }
                    None => i += 1,
                }
            }
            return;
        }
        while queue.running < self.inner.settings.slots {
            let Some(first) = queue.waiting.pop_front() else {
                break;
            };
            queue.running += 1;
            tokio::spawn(self.clone().worker(first));
        }
    }

    /// Runs one job on the nodes it was given, then frees them and starts what now fits.
    /// (Boxed as `Send`: it awaits `dispatch`, which spawns it.)
    pub(super) fn run_on(
        self,
        q: Queued,
        nodes: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let (job_id, demand) = (q.job_id, q.wants.demand);
            self.update(job_id, |r| r.node = Some(nodes.join(",")))
                .await;
            let first = nodes.first().cloned().unwrap_or_else(|| "local".into());
            self.clone().run(job_id, q.cancel, &first).await;
            if let Ok(mut fleet) = self.inner.fleet.lock() {
                fleet.release(job_id, demand);
            }
            self.inner.queue.lock().await.running -= 1;
            self.dispatch().await;
        })
    }

    /// Runs jobs one after another until none waits, then frees its slot.
    pub(super) async fn worker(self, first: Queued) {
        let mut next = first;
        loop {
            self.clone().run(next.job_id, next.cancel, "local").await;
            let mut queue = self.inner.queue.lock().await;
            match queue.waiting.pop_front() {
                Some(job) => next = job,
                None => {
                    queue.running -= 1;
                    break;
                }
            }
        }
    }

    pub(super) async fn run(self, job_id: u64, cancel: oneshot::Receiver<()>, node: &str) {
        let settings = &self.inner.settings;
        // The body waits in the job's record until it starts (cleared below, once running).
        let body = self
            .inner
            .records
            .lock()
            .await
            .get(&job_id)
            .and_then(|r| r.body.clone());
        let Some(job) = body else {
            tracing::warn!(job_id, "a queued local job has no body to run; failed");
            self.update(job_id, |r| {
                r.state = JobState::Failed;
                r.reason = Some("the job's body was lost before it started".into());
                r.end_time = Some(Utc::now());
            })
            .await;
            return;
        };
        let script_path = settings
            .state_dir
            .join("scripts")
            .join(format!("{job_id}.sh"));
        let text = |k: &str| job.get(k).and_then(Value::as_str).map(str::to_string);
        let names = JobNames {
            job_id,
            name: filename::job_name(&job),
            user: Some(settings.user.name.as_str()),
            array_task: None,
            first_node: Some(node),
        };
        let cwd =
            self.local_path(&text("current_working_directory").unwrap_or_else(|| EFS_MOUNT.into()));
        let limit = job
            .get("time_limit")
            .filter(|t| t.get("set") == Some(&Value::Bool(true)))
            .and_then(|t| t.get("number"))
            .and_then(Value::as_u64)
            .map(|m| settings.minute * m as u32);

        let launched = (|| -> std::io::Result<std::process::Child> {
            // The same expansion the log routes use to find the file again.
            let outside = |key: &str, p: &str| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{key} {p} leads outside {EFS_MOUNT}"),
                )
            };
            let place =
                |key: &str, expanded: Result<filename::Expanded, filename::PatternError>| {
                    let expanded = expanded.map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{key}: {e}"))
                    })?;
                    self.confined(&expanded.path, &cwd)
                        .ok_or_else(|| outside(key, &expanded.path))
                };
            let stdout_path = place("standard_output", filename::stdout_file(&job, &names))?;
            let stderr_path = text("standard_error")
                .map(|p| place("standard_error", filename::job_file(&job, &p, &names)))
                .transpose()?;
            write_script(
                &script_path,
                &text("script").unwrap_or_default(),
                &settings.user,
            )?;
            if !cwd.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("working directory {} does not exist", cwd.display()),
                ));
            }
            let root = std::fs::canonicalize(&settings.efs_root)?;
            let create = |p: &Path| -> std::io::Result<std::fs::File> {
                let rel = p
                    .strip_prefix(&settings.efs_root)
                    .map_err(|_| outside("an output file", &p.display().to_string()))?;
                create_output(&root, rel, settings.user.switch)
            };
            let out = create(&stdout_path)?;
            let err = match &stderr_path {
                Some(p) if *p != stdout_path => create(p)?,
                _ => out.try_clone()?,
            };
            // std's process, not tokio's: it is reaped by `wait4` (below), which tells what the
            // job used; std's `Child` neither waits nor kills when dropped.
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new("bash");
            cmd.arg(&script_path)
                .current_dir(&cwd)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0);
            if let Some((uid, gid)) = settings.user.switch {
                // std drops the supplementary groups too when it switches the uid.
                cmd.uid(uid).gid(gid);
            }
            for entry in job
                .get("environment")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some((k, v)) = entry.as_str().and_then(|e| e.split_once('=')) {
                    cmd.env(k, v);
                }
            }
            cmd.env("SLURM_JOB_ID", job_id.to_string())
                .env("SLURM_JOB_NAME", filename::job_name(&job))
                .env(
                    "SLURM_CPUS_PER_TASK",
                    job.get("cpus_per_task")
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "1".into()),
                );
            cmd.spawn()
        })();
        let child = match launched {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "local job failed to launch");
                self.update(job_id, |r| {
                    r.state = JobState::Failed;
                    r.reason = Some(format!("launch failed: {e}"));
                    r.exit_code = Some(1);
                    r.end_time = Some(Utc::now());
                    r.body = None;
                })
                .await;
                return;
            }
        };
        let pid = Some(child.id());
        // Our child until we wait for it: its /proc entry is still ours to read.
        let pid_start = pid.and_then(|p| proc_stat(p).map(|s| s.start));
        let mut exited = wait_in_thread(job_id, child);
        let boot = boot_id();
        self.update(job_id, |r| {
            r.state = JobState::Running;
            r.reason = None;
            r.pid = pid;
            r.pid_start = pid_start;
            r.boot_id = boot;
            r.start_time = Some(Utc::now());
            r.body = None;
        })
        .await;
        tracing::info!(job_id, pid, "local job started");

        let sleep_limit = async {
            match limit {
                Some(l) => tokio::time::sleep(l).await,
                None => std::future::pending().await,
            }
        };
        let (stopped, waited) = tokio::select! {
            waited = &mut exited => (None, waited),
            _ = sleep_limit => (
                Some((JobState::Timeout, "TimeLimit")),
                self.stop_group(pid, &mut exited).await,
            ),
            _ = cancel => (
                Some((JobState::Cancelled, "cancelled")),
                self.stop_group(pid, &mut exited).await,
            ),
        };
        let waited = waited
            .map_err(|_| std::io::Error::other("the thread waiting for it stopped"))
            .and_then(|w| w);
        let (state, reason, exit_code) = match (stopped, &waited) {
            (Some((state, why)), _) => (state, Some(why.to_string()), None),
            (None, Ok(w)) => match w.status.code() {
                Some(0) => (JobState::Completed, None, Some(0)),
                Some(code) => (
                    JobState::Failed,
                    Some("NonZeroExitCode".to_string()),
                    Some(code),
                ),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    let sig = w.status.signal().unwrap_or(0);
                    (
                        JobState::Failed,
                        Some(format!("killed by signal {sig}")),
                        Some(128 + sig),
                    )
                }
            },
            (None, Err(e)) => (
                JobState::Failed,
                Some(format!("could not wait for the job: {e}")),
                None,
            ),
        };
        let usage = match &waited {
            Ok(w) => usage_of(&w.rusage, stopped.map(|(_, why)| why)),
            Err(e) => unmeasured(format!("the executor could not wait for the job: {e}")),
        };
        self.inner.cancels.lock().await.remove(&job_id);
        self.update(job_id, |r| {
            r.state = state;
            r.reason = reason;
            r.exit_code = exit_code;
            r.end_time = Some(Utc::now());
            r.usage = Some(usage);
        })
        .await;
        tracing::info!(job_id, state = %state, exit_code, "local job ended");
    }

    /// SIGTERM to the whole group, SIGKILL after the grace period; then what the wait saw.
    pub(super) async fn stop_group(&self, pid: Option<u32>, exited: &mut Exited) -> Waited {
        let Some(pid) = pid else {
            return exited.await;
        };
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let waited = match tokio::time::timeout(self.inner.settings.grace, &mut *exited).await {
            Ok(w) => w,
            Err(_) => {
                let _ = killpg(group, Signal::SIGKILL);
                exited.await
            }
        };
        // Children that ignored SIGTERM but whose parent exited still belong to the group.
        let _ = killpg(group, Signal::SIGKILL);
        waited
    }
}

/// What waiting for a job's process gives: its exit status and resource use.
pub(super) type Waited = Result<std::io::Result<wait4::ResUse>, oneshot::error::RecvError>;
/// Resolves once the job's process has been reaped.
pub(super) type Exited = oneshot::Receiver<std::io::Result<wait4::ResUse>>;

/// Reaps a job's process with `wait4(2)` on a thread of its own (the process's resource use is
/// only told to whoever reaps it), and hands the result over. A plain thread, not tokio's
/// blocking pool: a job may run for days, and a pool thread held that long is one the server's
/// file I/O cannot use.
fn wait_in_thread(job_id: u64, mut child: std::process::Child) -> Exited {
    use wait4::Wait4;
    let (tx, rx) = oneshot::channel();
    let pid = child.id();
    let waiter = std::thread::Builder::new()
        .name(format!("job-{job_id}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let waited = loop {
                match child.wait4() {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let _ = tx.send(waited);
        });
    if let Err(e) = waiter {
        // No thread: the job is stopped and reaped here rather than left running unwatched
        // (the channel's sender went with the closure, so the job is recorded as not waited
        // for).
        tracing::error!(job_id, error = %e, "no thread to wait for a local job; stopping it");
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(group, None);
    }
    rx
}

/// A job's CPU time (user + system, its own and its reaped children's) and peak resident
/// memory (the largest of its processes), as `wait4` reports them; `stopped` says why only part
/// of it was (processes the stop killed were never waited for by the job's shell).
fn usage_of(r: &wait4::ResourceUsage, stopped: Option<&str>) -> commands::slurm::Usage {
    let cpu = r.utime.saturating_add(r.stime);
    commands::slurm::Usage {
        cpu_ms: Some(u64::try_from(cpu.as_millis()).unwrap_or(u64::MAX)),
        peak_memory_bytes: Some(r.maxrss),
        source: "rusage".into(),
        note: stopped.map(|why| {
            format!("the job was stopped ({why}): what its killed processes used is not counted")
        }),
        partial: stopped.is_some(),
    }
}

/// A job the executor could not measure, and why.
pub(super) fn unmeasured(why: String) -> commands::slurm::Usage {
    commands::slurm::Usage {
        cpu_ms: None,
        peak_memory_bytes: None,
        source: "none".into(),
        note: Some(why),
        partial: false,
    }
}

/// Writes a job's script where bash, running as the job user, can read it and nothing else can.
pub(super) fn write_script(
    path: &Path,
    script: &str,
    user: &crate::jobuser::JobUser,
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    std::io::Write::write_all(&mut file, script.as_bytes())?;
    if let Some((uid, gid)) = user.switch {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
    }
    Ok(())
}

/// Creates (or reuses) the output file `rel` under `root` (the efs root, resolved), without
/// following any link on the way: each folder is opened relative to the last with `O_NOFOLLOW`,
/// so a job cannot swap a folder for a link between a check and the open and make the server —
/// root, when jobs run as another user — create or truncate a file elsewhere. Folders it makes
/// and a new file are given to the job user (`owner`); an existing file is reused only if it is
/// a plain file with one name that already belongs to the job user (or to the server, when jobs
/// are not switched), and is truncated only then.
pub(super) fn create_output(
    root: &Path,
    rel: &Path,
    owner: Option<(u32, u32)>,
) -> std::io::Result<std::fs::File> {
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(s) => Ok(s),
            _ => Err(refuse(format!("{} is not a plain path", rel.display()))),
        })
        .collect::<Result<_, _>>()?;
    let Some((name, folders)) = parts.split_last() else {
        return Err(refuse("an output file needs a name".into()));
    };
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut dir = openat(nix::fcntl::AT_FDCWD, root, dir_flags, Mode::empty())?;
    let linked = |part: &std::ffi::OsStr| {
        refuse(format!(
            "{} goes through {}, which is a link or a file, not a folder",
            rel.display(),
            part.to_string_lossy()
        ))
    };
    for part in folders {
        dir = match openat(&dir, *part, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(&dir, *part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = openat(&dir, *part, dir_flags, Mode::empty()).map_err(|e| match e {
                    Errno::ELOOP | Errno::ENOTDIR => linked(part),
                    e => e.into(),
                })?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&fd, Some(uid), Some(gid))?;
                }
                fd
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(linked(part)),
            Err(e) => return Err(e.into()),
        };
    }
    let file_flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(
        &dir,
        *name,
        file_flags | OFlag::O_CREAT | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o644),
    ) {
        Ok(fd) => {
            let file = std::fs::File::from(fd);
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
            Ok(file)
        }
        Err(Errno::EEXIST) => {
            // O_NONBLOCK: a named pipe in its place must not hang the server.
            let fd = openat(&dir, *name, file_flags | OFlag::O_NONBLOCK, Mode::empty()).map_err(
                |e| match e {
                    Errno::ELOOP => linked(name),
                    Errno::ENXIO => refuse(format!("{} is not a plain file", rel.display())),
                    e => e.into(),
                },
            )?;
            let file = std::fs::File::from(fd);
            let meta = file.metadata()?;
            let expected = owner.map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
            if !meta.is_file() || meta.nlink() != 1 || meta.uid() != expected {
                return Err(refuse(format!(
                    "{} exists and is not a plain file of the job user with one name; it is left alone",
                    rel.display()
                )));
            }
            file.set_len(0)?;
            Ok(file)
        }
        Err(Errno::ELOOP) => Err(linked(name)),
        Err(e) => Err(e.into()),
    }
}

/// What the executor reads of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// Field 5: the process group.
    pub(super) pgrp: u32,
    /// Field 22: when it started, in clock ticks since boot.
    pub(super) start: u64,
}

pub(super) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything, spaces and ')' too.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    Some(ProcStat {
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

pub(super) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Kills what is left of a job a previous process was running — only what is provably still
/// that job. A stored pid alone proves nothing: the kernel may have given it to another process
/// since. The job's group leader is killed with its group when its pid, start time and boot all
/// still match; when the leader is gone, each remaining member of its group is killed only if it
/// started after the job and carries the job's `SLURM_JOB_ID` in its environment. Anything else
/// is left alone.
pub(super) fn stop_leftover(record: &Record) {
    let Some(pid) = record.pid else { return };
    let Some(start) = record.pid_start else {
        tracing::warn!(
            job_id = record.job_id,
            pid,
            "no start time was stored with this job's pid; not signalling it"
        );
        return;
    };
    if record.boot_id.is_none() || record.boot_id != boot_id() {
        return; // the machine restarted: nothing of the job survived
    }
    let group = Pid::from_raw(pid as i32);
    match proc_stat(pid) {
        Some(s) if s.start == start && s.pgrp == pid => {
            tracing::warn!(
                job_id = record.job_id,
                pid,
                "killing a job's processes left from before the restart"
            );
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        Some(_) => {
            tracing::info!(
                job_id = record.job_id,
                pid,
                "the job's pid now belongs to another process; it is left alone"
            );
        }
        None => {}
    }
    let marker = format!("SLURM_JOB_ID={}", record.job_id);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(member) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = proc_stat(member).is_some_and(|s| s.pgrp == pid && s.start >= start)
            && std::fs::read(format!("/proc/{member}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()));
        if ours {
            tracing::warn!(
                job_id = record.job_id,
                pid = member,
                "killing a job's process left from before the restart"
            );
            let _ = nix::sys::signal::kill(Pid::from_raw(member as i32), Signal::SIGKILL);
        }
    }
}
