//! The local executor: the embedded default behind the Slurm port.
//!
//! Each job's script runs with `bash` as a real process in its own process group, with the body's
//! environment (and nothing else of the server's) and working directory. stdout goes to
//! `<efs root>/job_<id>.out` unless the body names another file. Time limits are enforced
//! (TIMEOUT), cancels send SIGTERM to the group and SIGKILL after a grace period (CANCELLED), exit
//! codes map to COMPLETED/FAILED. Job ids increase and survive restarts; after a restart, jobs
//! the previous process was running are reported as NODE_FAIL, as Slurm reports jobs of a node
//! that died.
//!
//! Paths under `/mnt/efs` (the cluster's shared mount in production) are mapped to the efs root,
//! so templates written for a real cluster run unchanged on a laptop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::fleet::{NodeChange, NodeFleet};
use commands::slurm::{Accepted, SlurmError, SlurmJob, SlurmPort};
use domain::job::JobState;
use domain::scaling::{Catalog, Demand, Family, NodeSet};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, oneshot};

/// The shared mount production scripts use; mapped to the efs root here.
pub const EFS_MOUNT: &str = "/mnt/efs";

/// Settings of the local executor.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Where job records, scripts and the id counter live.
    pub state_dir: PathBuf,
    /// What `/mnt/efs` means on this machine; job output lands here.
    pub efs_root: PathBuf,
    /// Between SIGTERM and SIGKILL on cancel and timeout.
    pub grace: Duration,
    /// How long one minute of `time_limit` lasts. 60 s, except in demos and tests.
    pub minute: Duration,
    /// Without `nodes`: jobs running at once; the rest wait PENDING (reason `Resources`) in
    /// submission order. 0 runs nothing, which leaves every job pending (benchmarks of the
    /// submit path).
    pub slots: usize,
    /// With nodes (the default of `clusterra serve`): the executor plays Karpenter and the
    /// cluster's slurmd nodes — jobs run only on ready nodes with room, and nodes come and go
    /// as the edge agent reconciles them with the desired counts ([`NodeFleet`]).
    pub nodes: Option<NodeSettings>,
}

/// How the executor's nodes behave.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub catalog: Arc<Catalog>,
    /// Memory per vCPU of jobs that ask for none.
    pub default_mib_per_cpu: u64,
    /// From launch to ready.
    pub cold_start: Duration,
    /// The most nodes one reconcile launches, over all node sets (the rest follow in later
    /// steps), so a runaway desired count cannot start thousands of processes at once.
    pub max_launch_per_step: u32,
}

/// One node of the executor's fleet.
#[derive(Debug, Clone)]
struct LocalNode {
    name: String,
    set: NodeSet,
    free_cpus: u32,
    free_mib: u64,
    launched_at: DateTime<Utc>,
    ready_at: DateTime<Utc>,
    ready: bool,
    /// Jobs placed on it.
    jobs: Vec<u64>,
}

#[derive(Debug, Default)]
struct Fleet {
    nodes: Vec<LocalNode>,
    /// Node names are `<set>-<owner>.<pid>-<n>`, n counting up for the process's life.
    launched: u64,
    /// This executor's id (`<state dir>/executor-id`).
    owner: String,
}

impl Fleet {
    /// Ready nodes of `family` with room for `demand`, `count` of them, or None.
    fn find(&self, family: Family, demand: Demand, count: u32) -> Option<Vec<usize>> {
        let mut found = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.ready
                && n.set.family == family
                && n.free_cpus >= demand.cpus
                && n.free_mib >= demand.memory_mib
            {
                found.push(i);
                if found.len() == count.max(1) as usize {
                    return Some(found);
                }
            }
        }
        None
    }

    fn take(&mut self, at: &[usize], job_id: u64, demand: Demand) -> Vec<String> {
        at.iter()
            .map(|&i| {
                let n = &mut self.nodes[i];
                n.free_cpus -= demand.cpus;
                n.free_mib -= demand.memory_mib;
                n.jobs.push(job_id);
                n.name.clone()
            })
            .collect()
    }

    fn release(&mut self, job_id: u64, demand: Demand) {
        for n in self.nodes.iter_mut().filter(|n| n.jobs.contains(&job_id)) {
            n.jobs.retain(|j| *j != job_id);
            n.free_cpus += demand.cpus;
            n.free_mib += demand.memory_mib;
        }
    }

    fn reconcile(
        &mut self,
        settings: &NodeSettings,
        desired: &BTreeMap<NodeSet, u32>,
        now: DateTime<Utc>,
    ) -> Vec<NodeChange> {
        let mut changes = Vec::new();
        let ms = |d: chrono::Duration| u64::try_from(d.num_milliseconds()).unwrap_or(0);
        for n in self
            .nodes
            .iter_mut()
            .filter(|n| !n.ready && n.ready_at <= now)
        {
            n.ready = true;
            changes.push(NodeChange::Ready {
                node: n.name.clone(),
                set: n.set,
                cold_start_ms: ms(now - n.launched_at),
            });
        }
        let sets: std::collections::BTreeSet<NodeSet> = desired
            .keys()
            .copied()
            .chain(self.nodes.iter().map(|n| n.set))
            .collect();
        let cold =
            chrono::Duration::from_std(settings.cold_start).unwrap_or(chrono::Duration::zero());
        let mut budget = settings.max_launch_per_step as usize;
        for set in sets {
            let want = desired.get(&set).copied().unwrap_or(0) as usize;
            let have = self.nodes.iter().filter(|n| n.set == set).count();
            if have < want {
                let Some(shape) = settings.catalog.shape(set) else {
                    continue;
                };
                let launch = (want - have).min(budget);
                budget -= launch;
                for _ in 0..launch {
                    self.launched += 1;
                    // `<set>-<executor id>.<pid>-<n>`: the executor id (stable for its state
                    // directory) tells this executor's nodes from other processes' in a shared
                    // log, the pid keeps a restarted executor's names new.
                    let name = format!(
                        "{set}-{}.{}-{}",
                        self.owner,
                        std::process::id(),
                        self.launched
                    );
                    let ready = cold.is_zero();
                    self.nodes.push(LocalNode {
                        name: name.clone(),
                        set,
                        free_cpus: shape.vcpus,
                        free_mib: shape.allocatable_mib,
                        launched_at: now,
                        ready_at: now + cold,
                        ready,
                        jobs: Vec::new(),
                    });
                    changes.push(NodeChange::Launched {
                        node: name.clone(),
                        set,
                        instance_type: shape.instance_type.clone(),
                        launched_at: now,
                        ready_expected_at: now + cold,
                    });
                    if ready {
                        changes.push(NodeChange::Ready {
                            node: name,
                            set,
                            cold_start_ms: 0,
                        });
                    }
                }
            } else if have > want {
                // Idle nodes only: the ones still starting first, then the newest.
                let mut idle: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].set == set && self.nodes[i].jobs.is_empty())
                    .collect();
                idle.sort_by_key(|&i| {
                    (
                        self.nodes[i].ready,
                        std::cmp::Reverse(self.nodes[i].launched_at),
                    )
                });
                idle.truncate(have - want);
                idle.sort_unstable_by(|a, b| b.cmp(a));
                for i in idle {
                    let n = self.nodes.remove(i);
                    changes.push(NodeChange::Terminated {
                        node: n.name,
                        set,
                        reason: format!("{set} scaled down to {want}"),
                        up_ms: ms(now - n.launched_at),
                    });
                }
            }
        }
        changes
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    job_id: u64,
    name: String,
    state: JobState,
    reason: Option<String>,
    exit_code: Option<i32>,
    submit_time: DateTime<Utc>,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    comment: Option<String>,
    pid: Option<u32>,
    /// The nodes it runs on (with nodes; "local" without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

impl Record {
    fn view(&self) -> SlurmJob {
        SlurmJob {
            job_id: self.job_id,
            name: self.name.clone(),
            state: self.state,
            reason: self.reason.clone(),
            exit_code: self.exit_code,
            node: self
                .node
                .clone()
                .or_else(|| self.start_time.map(|_| "local".to_string())),
            submit_time: Some(self.submit_time),
            start_time: self.start_time,
            end_time: self.end_time,
            comment: self.comment.clone(),
        }
    }
}

struct Inner {
    settings: LocalSettings,
    records: Mutex<BTreeMap<u64, Record>>,
    cancels: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    /// Jobs waiting for a slot or a node, oldest first, and how many run.
    queue: Mutex<Queue>,
    /// The nodes (with [`NodeSettings`]). Never held across an await.
    fleet: std::sync::Mutex<Fleet>,
}

/// A job waiting to start.
struct Queued {
    job_id: u64,
    job: Value,
    cancel: oneshot::Receiver<()>,
    /// What one of its nodes needs, how many, and of which family.
    demand: Demand,
    nodes: u32,
    family: Family,
}

#[derive(Default)]
struct Queue {
    waiting: std::collections::VecDeque<Queued>,
    running: usize,
}

/// The local executor. Cheap to clone.
#[derive(Clone)]
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("local executor state in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local executor record {path} is unreadable: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The executor's id: 8 hex digits kept in `<state dir>/executor-id`, made on first open.
fn executor_id(state_dir: &Path) -> Result<String, LocalError> {
    let path = state_dir.join("executor-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| LocalError::Io {
        path: path.clone(),
        source: std::io::Error::other(format!("no randomness for the executor id: {e}")),
    })?;
    let id = format!("{:08x}", u32::from_be_bytes(bytes));
    write_atomic(&path, id.as_bytes()).map_err(io(&path))?;
    Ok(id)
}

/// Writes a file atomically: a temp file, then rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl LocalExecutor {
    /// Opens (or creates) the executor's state. Jobs a previous process left unfinished are
    /// killed if still alive and marked NODE_FAIL.
    pub fn open(mut settings: LocalSettings, now: DateTime<Utc>) -> Result<Self, LocalError> {
        // Jobs run in their own working directory: every path the executor uses must be absolute.
        settings.state_dir =
            std::path::absolute(&settings.state_dir).map_err(io(&settings.state_dir))?;
        settings.efs_root =
            std::path::absolute(&settings.efs_root).map_err(io(&settings.efs_root))?;
        for dir in [
            settings.state_dir.join("jobs"),
            settings.state_dir.join("scripts"),
            settings.efs_root.clone(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let mut records = BTreeMap::new();
        let jobs_dir = settings.state_dir.join("jobs");
        for entry in std::fs::read_dir(&jobs_dir).map_err(io(&jobs_dir))? {
            let path = entry.map_err(io(&jobs_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let mut record: Record =
                serde_json::from_str(&text).map_err(|source| LocalError::Record {
                    path: path.clone(),
                    source,
                })?;
            if !record.state.is_terminal() {
                if let Some(pid) = record.pid {
                    // Its process group may have outlived us: make sure it is gone.
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                record.state = JobState::NodeFail;
                record.reason = Some("the local executor restarted while this job was queued or running; its process was lost".into());
                record.end_time = Some(now);
                let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
                write_atomic(&path, &bytes).map_err(io(&path))?;
                tracing::warn!(job_id = record.job_id, "job lost in a restart: NODE_FAIL");
            }
            records.insert(record.job_id, record);
        }
        let owner = executor_id(&settings.state_dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                records: Mutex::new(records),
                cancels: Mutex::new(BTreeMap::new()),
                queue: Mutex::new(Queue::default()),
                fleet: std::sync::Mutex::new(Fleet {
                    owner,
                    ..Fleet::default()
                }),
            }),
        })
    }

    /// Whether jobs run on nodes (which then need an edge agent to reconcile them).
    pub fn nodes_enabled(&self) -> bool {
        self.inner.settings.nodes.is_some()
    }

    fn next_id_path(&self) -> PathBuf {
        self.inner.settings.state_dir.join("next_job_id")
    }

    /// Hands out the next job id and persists the counter before the id is used, so ids never
    /// repeat, even across restarts.
    fn allocate_id(&self, records: &BTreeMap<u64, Record>) -> Result<u64, SlurmError> {
        let path = self.next_id_path();
        let stored = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let id = stored.max(records.keys().next_back().map_or(1, |k| k + 1));
        write_atomic(&path, (id + 1).to_string().as_bytes()).map_err(|e| {
            SlurmError::Unavailable(format!("cannot persist the job id counter: {e}"))
        })?;
        Ok(id)
    }

    /// Where a job path lands, if it stays under the efs root: `/mnt/efs/…` is mapped to the efs
    /// root, relative paths join the working directory, and `..` is refused outright.
    fn confined(&self, path: &str, cwd: &Path) -> Option<PathBuf> {
        let mapped = self.local_path(path);
        let full = if mapped.is_absolute() {
            mapped
        } else {
            cwd.join(mapped)
        };
        let escapes = full
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        (!escapes && full.starts_with(&self.inner.settings.efs_root)).then_some(full)
    }

    /// Maps `/mnt/efs/...` to the efs root.
    fn local_path(&self, path: &str) -> PathBuf {
        match path.strip_prefix(EFS_MOUNT) {
            Some(rest) => self
                .inner
                .settings
                .efs_root
                .join(rest.trim_start_matches('/')),
            None => PathBuf::from(path),
        }
    }

    /// What one node of a job needs, on how many nodes, of which family (with nodes; without,
    /// a placeholder that nothing reads).
    fn demand(&self, body: &Value) -> Result<(Demand, u32, Family), SlurmError> {
        let Some(ns) = &self.inner.settings.nodes else {
            return Ok((
                Demand {
                    cpus: 1,
                    memory_mib: 0,
                },
                1,
                Family::Compute,
            ));
        };
        let shape = domain::submit::canonicalize(body)
            .map_err(|errors| {
                SlurmError::Rejected(errors.into_iter().map(|e| e.message).collect())
            })?
            .shape;
        let demand = Demand::per_node(
            shape.cpus,
            shape.memory_mib,
            shape.nodes,
            ns.default_mib_per_cpu,
        );
        let set = ns
            .catalog
            .place(demand)
            .map_err(|e| SlurmError::Rejected(vec![e.to_string()]))?;
        Ok((demand, shape.nodes.max(1), set.family))
    }

    async fn save(&self, record: &Record) {
        let path = self
            .inner
            .settings
            .state_dir
            .join("jobs")
            .join(format!("{}.json", record.job_id));
        let result = serde_json::to_vec_pretty(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&path, &bytes));
        if let Err(e) = result {
            tracing::error!(job_id = record.job_id, error = %e, "could not persist a local job record");
        }
    }

    async fn update(&self, job_id: u64, f: impl FnOnce(&mut Record)) {
        let mut records = self.inner.records.lock().await;
        if let Some(r) = records.get_mut(&job_id) {
            f(r);
            let copy = r.clone();
            drop(records);
            self.save(&copy).await;
        }
    }

    /// Starts waiting jobs: on ready nodes with room (with nodes), else while slots are free
    /// (one worker per slot in use).
    async fn dispatch(&self) {
        let mut queue = self.inner.queue.lock().await;
        if self.inner.settings.nodes.is_some() {
            let mut i = 0;
            while i < queue.waiting.len() {
                let q = &queue.waiting[i];
                let placed = match self.inner.fleet.lock() {
                    Ok(mut fleet) => fleet
                        .find(q.family, q.demand, q.nodes)
                        .map(|at| fleet.take(&at, q.job_id, q.demand)),
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
    fn run_on(
        self,
        q: Queued,
        nodes: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let (job_id, demand) = (q.job_id, q.demand);
            self.update(job_id, |r| r.node = Some(nodes.join(",")))
                .await;
            self.clone().run(job_id, q.job, q.cancel).await;
            if let Ok(mut fleet) = self.inner.fleet.lock() {
                fleet.release(job_id, demand);
            }
            self.inner.queue.lock().await.running -= 1;
            self.dispatch().await;
        })
    }

    /// Runs jobs one after another until none waits, then frees its slot.
    async fn worker(self, first: Queued) {
        let mut next = first;
        loop {
            self.clone().run(next.job_id, next.job, next.cancel).await;
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

    async fn run(self, job_id: u64, job: Value, cancel: oneshot::Receiver<()>) {
        let settings = &self.inner.settings;
        let script_path = settings
            .state_dir
            .join("scripts")
            .join(format!("{job_id}.sh"));
        let text = |k: &str| job.get(k).and_then(Value::as_str).map(str::to_string);
        let expand = |p: String| p.replace("%j", &job_id.to_string());
        let cwd =
            self.local_path(&text("current_working_directory").unwrap_or_else(|| EFS_MOUNT.into()));
        let resolve = |p: String| {
            let p = self.local_path(&expand(p));
            if p.is_absolute() { p } else { cwd.join(p) }
        };
        let stdout_path = text("standard_output")
            .map(resolve)
            .unwrap_or_else(|| settings.efs_root.join(format!("job_{job_id}.out")));
        let stderr_path = text("standard_error").map(resolve);
        let limit = job
            .get("time_limit")
            .filter(|t| t.get("set") == Some(&Value::Bool(true)))
            .and_then(|t| t.get("number"))
            .and_then(Value::as_u64)
            .map(|m| settings.minute * m as u32);

        let launched = (|| -> std::io::Result<tokio::process::Child> {
            std::fs::write(&script_path, text("script").unwrap_or_default())?;
            if !cwd.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("working directory {} does not exist", cwd.display()),
                ));
            }
            let root = std::fs::canonicalize(&settings.efs_root)?;
            for path in std::iter::once(&stdout_path).chain(stderr_path.as_ref()) {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                    // A symlink planted by an earlier job must not lead the server outside.
                    if !std::fs::canonicalize(parent)?.starts_with(&root) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("{} leads outside {EFS_MOUNT}", path.display()),
                        ));
                    }
                }
            }
            let create = |p: &Path| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(p)
            };
            let out = create(&stdout_path)?;
            let err = match &stderr_path {
                Some(p) => create(p)?,
                None => out.try_clone()?,
            };
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script_path)
                .current_dir(&cwd)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(false);
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
                .env("SLURM_JOB_NAME", text("name").unwrap_or_default())
                .env(
                    "SLURM_CPUS_PER_TASK",
                    job.get("cpus_per_task")
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "1".into()),
                );
            cmd.spawn()
        })();
        let mut child = match launched {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "local job failed to launch");
                self.update(job_id, |r| {
                    r.state = JobState::Failed;
                    r.reason = Some(format!("launch failed: {e}"));
                    r.exit_code = Some(1);
                    r.end_time = Some(Utc::now());
                })
                .await;
                return;
            }
        };
        let pid = child.id();
        self.update(job_id, |r| {
            r.state = JobState::Running;
            r.reason = None;
            r.pid = pid;
            r.start_time = Some(Utc::now());
        })
        .await;
        tracing::info!(job_id, pid, "local job started");

        let sleep_limit = async {
            match limit {
                Some(l) => tokio::time::sleep(l).await,
                None => std::future::pending().await,
            }
        };
        let (state, reason, exit_code) = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => match s.code() {
                    Some(0) => (JobState::Completed, None, Some(0)),
                    Some(code) => (JobState::Failed, Some("NonZeroExitCode".to_string()), Some(code)),
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        let sig = s.signal().unwrap_or(0);
                        (JobState::Failed, Some(format!("killed by signal {sig}")), Some(128 + sig))
                    }
                },
                Err(e) => (JobState::Failed, Some(format!("could not wait for the job: {e}")), None),
            },
            _ = sleep_limit => {
                self.stop_group(pid, &mut child).await;
                (JobState::Timeout, Some("TimeLimit".to_string()), None)
            }
            _ = cancel => {
                self.stop_group(pid, &mut child).await;
                (JobState::Cancelled, Some("cancelled".to_string()), None)
            }
        };
        self.inner.cancels.lock().await.remove(&job_id);
        self.update(job_id, |r| {
            r.state = state;
            r.reason = reason;
            r.exit_code = exit_code;
            r.end_time = Some(Utc::now());
        })
        .await;
        tracing::info!(job_id, state = %state, exit_code, "local job ended");
    }

    /// SIGTERM to the whole group, SIGKILL after the grace period.
    async fn stop_group(&self, pid: Option<u32>, child: &mut tokio::process::Child) {
        let Some(pid) = pid else { return };
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(self.inner.settings.grace, child.wait())
            .await
            .is_err()
        {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait().await;
        }
        // Children that ignored SIGTERM but whose parent exited still belong to the group.
        let _ = killpg(group, Signal::SIGKILL);
    }
}

#[async_trait]
impl SlurmPort for LocalExecutor {
    async fn submit(&self, body: &Value) -> Result<Accepted, SlurmError> {
        let job = body
            .get("job")
            .cloned()
            .ok_or_else(|| SlurmError::Rejected(vec!["the body has no job".into()]))?;
        if !job
            .get("script")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with("#!"))
        {
            return Err(SlurmError::Rejected(vec![
                "the job has no script starting with #!".into(),
            ]));
        }
        // Every path a job names must stay under the shared mount: the server opens the output
        // files, and must not be made to truncate its own database or secret.
        let efs = self.inner.settings.efs_root.clone();
        let cwd_text = job
            .get("current_working_directory")
            .and_then(Value::as_str)
            .unwrap_or(EFS_MOUNT);
        let cwd = self.confined(cwd_text, &efs);
        let mut outside = Vec::new();
        if cwd.is_none() {
            outside.push("current_working_directory");
        }
        for key in ["standard_output", "standard_error", "standard_input"] {
            let escapes = match (job.get(key).and_then(Value::as_str), cwd.as_ref()) {
                (Some(p), Some(dir)) => self.confined(&p.replace("%j", "0"), dir).is_none(),
                _ => false,
            };
            if escapes {
                outside.push(key);
            }
        }
        if !outside.is_empty() {
            return Err(SlurmError::Rejected(vec![format!(
                "{} must stay under {EFS_MOUNT} (the cluster's shared mount), without ..",
                outside.join(", ")
            )]));
        }
        let (demand, nodes, family) = self.demand(body)?;
        let mut records = self.inner.records.lock().await;
        let job_id = self.allocate_id(&records)?;
        let free = self.inner.settings.nodes.is_none() && {
            let q = self.inner.queue.lock().await;
            q.running + q.waiting.len() < self.inner.settings.slots
        };
        let record = Record {
            job_id,
            name: job
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("job")
                .to_string(),
            state: JobState::Pending,
            reason: Some(if free { "None" } else { "Resources" }.into()),
            exit_code: None,
            submit_time: Utc::now(),
            start_time: None,
            end_time: None,
            comment: job
                .get("comment")
                .and_then(Value::as_str)
                .map(str::to_string),
            pid: None,
            node: None,
        };
        records.insert(job_id, record.clone());
        drop(records);
        self.save(&record).await;
        let (tx, rx) = oneshot::channel();
        self.inner.cancels.lock().await.insert(job_id, tx);
        self.inner.queue.lock().await.waiting.push_back(Queued {
            job_id,
            job,
            cancel: rx,
            demand,
            nodes,
            family,
        });
        self.dispatch().await;
        Ok(Accepted {
            job_id,
            warnings: Vec::new(),
        })
    }

    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        Ok(self
            .inner
            .records
            .lock()
            .await
            .get(&job_id)
            .map(Record::view))
    }

    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        Ok(self
            .inner
            .records
            .lock()
            .await
            .values()
            .map(Record::view)
            .collect())
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        if !self.inner.records.lock().await.contains_key(&job_id) {
            return Err(SlurmError::UnknownJob(job_id));
        }
        let queued = {
            let mut q = self.inner.queue.lock().await;
            let before = q.waiting.len();
            q.waiting.retain(|q| q.job_id != job_id);
            q.waiting.len() != before
        };
        if queued {
            // Never started: it ends here, as Slurm ends a pending job it cancels.
            self.inner.cancels.lock().await.remove(&job_id);
            self.update(job_id, |r| {
                r.state = JobState::Cancelled;
                r.reason = Some("cancelled while pending".into());
                r.end_time = Some(Utc::now());
            })
            .await;
        } else if let Some(tx) = self.inner.cancels.lock().await.remove(&job_id) {
            let _ = tx.send(());
        }
        Ok(())
    }
}

#[async_trait]
impl NodeFleet for LocalExecutor {
    async fn reconcile(
        &self,
        desired: &BTreeMap<NodeSet, u32>,
        now: DateTime<Utc>,
    ) -> Vec<NodeChange> {
        let Some(settings) = &self.inner.settings.nodes else {
            return Vec::new();
        };
        let changes = match self.inner.fleet.lock() {
            Ok(mut fleet) => fleet.reconcile(settings, desired, now),
            Err(_) => Vec::new(),
        };
        if changes
            .iter()
            .any(|c| matches!(c, NodeChange::Ready { .. }))
        {
            self.dispatch().await;
        }
        changes
    }

    fn owns(&self, node: &str) -> bool {
        self.inner
            .fleet
            .lock()
            .map(|f| node.contains(&format!("-{}.", f.owner)))
            .unwrap_or(false)
    }

    async fn nodes(&self) -> Vec<String> {
        self.inner
            .fleet
            .lock()
            .map(|f| f.nodes.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default()
    }
}
