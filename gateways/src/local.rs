//! The local executor: the embedded default behind the Slurm port.
//!
//! Each job's script runs with `bash` as a real process in its own process group, as the job user
//! ([`crate::jobuser`]: an unprivileged user when the server is root), with the body's environment
//! (and nothing else of the server's) and working directory. stdout goes to
//! `<efs root>/job_<id>.out` unless the body names another file, with Slurm's filename patterns
//! expanded by [`domain::filename`] (the same expansion the log routes use to find it). Time
//! limits are enforced (TIMEOUT), cancels send SIGTERM to the group and SIGKILL after a grace
//! period (CANCELLED), exit codes map to COMPLETED/FAILED. Job ids increase and survive restarts;
//! after a restart, jobs still waiting are queued again and run later, and jobs the previous
//! process was running are reported as NODE_FAIL, as Slurm reports jobs of a node that died —
//! their processes are killed only if they are still theirs (same pid *and* start time, same
//! boot).
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
use commands::slurm::{Accepted, JobsDelta, SlurmError, SlurmJob, SlurmPort};
use domain::filename::{self, JobNames};
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
    /// Who jobs run as.
    pub user: crate::jobuser::JobUser,
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

/// How many job ids are reserved per write of the id counter.
const ID_BLOCK: u64 = 1_000;

/// How long a finished job stays in the listing (slurmctld's `MinJobAge` default).
const MIN_JOB_AGE: chrono::Duration = chrono::Duration::seconds(300);

/// How long after the executor opens every job is listed (well past the poll cycle's
/// `commands::jobs::ADOPT_AFTER`, when submissions left unsettled by a crash are looked up).
const RESTART_LISTS_ALL: chrono::Duration = chrono::Duration::minutes(10);

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
    /// When `pid` started (field 22 of `/proc/<pid>/stat`, clock ticks since boot) and in which
    /// boot (`/proc/sys/kernel/random/boot_id`): after a restart the pid is signalled only if
    /// both still match, so a pid the kernel gave to another process is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    /// The nodes it runs on (with nodes; "local" without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// The job (the body's `job`) while it waits: a restart queues it again from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    /// The executor's change count when this record last changed (in memory only: a restart
    /// starts every count from 0, and the poll cycle then compares every job once).
    #[serde(skip)]
    changed: u64,
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
    /// When this process opened the executor's state.
    opened_at: DateTime<Utc>,
    settings: LocalSettings,
    records: Mutex<BTreeMap<u64, Record>>,
    /// Moves with every change to `records` (SlurmPort::jobs_version).
    changes: std::sync::atomic::AtomicU64,
    /// Each changed record by its latest change number (one entry per record changed since
    /// open), so `jobs_since` reads what changed, not every record. Only changed under the
    /// records' lock.
    by_change: std::sync::Mutex<BTreeMap<u64, u64>>,
    /// Ids handed out below `.1` are persisted: the counter file says `.1` (ids are reserved a
    /// block at a time, so a submission writes the counter once per [`ID_BLOCK`], not each time).
    /// `.0` is the next id. Only changed under the records' lock.
    ids: std::sync::Mutex<(u64, u64)>,
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
    /// In job id order (ids are handed out in submission order; two submits finishing out of
    /// order are put back in it), so a cancel finds a waiting job by binary search.
    waiting: std::collections::VecDeque<Queued>,
    running: usize,
}

impl Queue {
    /// Adds a job in id order: at the back but for a submit overtaken by a later one.
    fn enqueue(&mut self, job: Queued) {
        let at = self
            .waiting
            .iter()
            .rposition(|w| w.job_id < job.job_id)
            .map_or(0, |i| i + 1);
        self.waiting.insert(at, job);
    }

    /// Takes a waiting job out, if it is waiting.
    fn remove(&mut self, job_id: u64) -> bool {
        match self.waiting.binary_search_by_key(&job_id, |w| w.job_id) {
            Ok(i) => self.waiting.remove(i).is_some(),
            Err(_) => false,
        }
    }
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

/// What one node of a job needs, on how many nodes, of which family (with nodes; without, a
/// placeholder that nothing reads).
fn demand_of(settings: &LocalSettings, body: &Value) -> Result<(Demand, u32, Family), SlurmError> {
    let Some(ns) = &settings.nodes else {
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
        .map_err(|errors| SlurmError::Rejected(errors.into_iter().map(|e| e.message).collect()))?
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

/// Writes a file atomically: a temp file, then rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl LocalExecutor {
    /// Opens (or creates) the executor's state. Jobs a previous process left waiting are queued
    /// again, in submission order, and run when there is room; jobs it was running are killed if
    /// still alive *and still theirs* ([`stop_leftover`]) and marked NODE_FAIL.
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
        if settings.user.switch.is_some() {
            // Jobs run as another user: they pass through the state directory to read their
            // script, and see nothing else of it.
            use std::os::unix::fs::PermissionsExt;
            for (dir, mode) in [
                (settings.state_dir.clone(), 0o711),
                (settings.state_dir.join("scripts"), 0o711),
                (settings.state_dir.join("jobs"), 0o700),
            ] {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io(&dir))?;
            }
        }
        let mut records = BTreeMap::new();
        let mut waiting = Vec::new();
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
                let never_started = record.state == JobState::Pending
                    && record.start_time.is_none()
                    && record.pid.is_none();
                match record.body.clone() {
                    Some(job) if never_started => {
                        let body = serde_json::json!({ "job": job });
                        match demand_of(&settings, &body) {
                            Ok((demand, nodes, family)) => {
                                tracing::info!(
                                    job_id = record.job_id,
                                    "job waiting before the restart: queued again"
                                );
                                waiting.push((record.job_id, job, demand, nodes, family));
                            }
                            Err(e) => {
                                record.state = JobState::Failed;
                                record.reason = Some(format!(
                                    "queued again after a restart, but it no longer fits: {e}"
                                ));
                                record.end_time = Some(now);
                                record.body = None;
                            }
                        }
                    }
                    _ => {
                        stop_leftover(&record);
                        record.state = JobState::NodeFail;
                        record.reason = Some(
                            if never_started {
                                "the local executor restarted while this job was queued, and an older version did not keep queued jobs"
                            } else {
                                "the local executor restarted while this job was running; its process was lost"
                            }
                            .into(),
                        );
                        record.end_time = Some(now);
                        record.body = None;
                        tracing::warn!(job_id = record.job_id, "job lost in a restart: NODE_FAIL");
                    }
                }
                let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
                write_atomic(&path, &bytes).map_err(io(&path))?;
            }
            records.insert(record.job_id, record);
        }
        let owner = executor_id(&settings.state_dir)?;
        // Job ids increase with submission: queue them in that order.
        waiting.sort_by_key(|w| w.0);
        let mut queue = Queue::default();
        let mut cancels = BTreeMap::new();
        for (job_id, job, demand, nodes, family) in waiting {
            let (tx, rx) = oneshot::channel();
            cancels.insert(job_id, tx);
            queue.waiting.push_back(Queued {
                job_id,
                job,
                cancel: rx,
                demand,
                nodes,
                family,
            });
        }
        let requeued = !queue.waiting.is_empty();
        let executor = Self {
            inner: Arc::new(Inner {
                opened_at: now,
                settings,
                records: Mutex::new(records),
                changes: std::sync::atomic::AtomicU64::new(0),
                by_change: std::sync::Mutex::new(BTreeMap::new()),
                ids: std::sync::Mutex::new((0, 0)),
                cancels: Mutex::new(cancels),
                queue: Mutex::new(queue),
                fleet: std::sync::Mutex::new(Fleet {
                    owner,
                    ..Fleet::default()
                }),
            }),
        };
        if requeued && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Slots free now start the requeued jobs; with nodes, they start when nodes are ready.
            let me = executor.clone();
            runtime.spawn(async move { me.dispatch().await });
        }
        Ok(executor)
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
    /// The next job id (called under the records' lock). Ids only grow, across restarts too: the
    /// counter file holds the end of the block of ids reserved so far, written before any id of
    /// a new block is handed out; a restart continues after it (skipping at most one block's
    /// unused ids) or after the highest recorded job, whichever is higher.
    fn allocate_id(&self, records: &BTreeMap<u64, Record>) -> Result<u64, SlurmError> {
        let mut ids = self.inner.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 == 0 {
            let stored = std::fs::read_to_string(self.next_id_path())
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(1);
            let next = stored.max(records.keys().next_back().map_or(1, |k| k + 1));
            *ids = (next, next);
        }
        let id = ids.0.max(records.keys().next_back().map_or(1, |k| k + 1));
        if id >= ids.1 {
            let end = id + ID_BLOCK;
            write_atomic(&self.next_id_path(), end.to_string().as_bytes()).map_err(|e| {
                SlurmError::Unavailable(format!("cannot persist the job id counter: {e}"))
            })?;
            ids.1 = end;
        }
        ids.0 = id + 1;
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

    /// What one node of a job needs, on how many nodes, of which family.
    fn demand(&self, body: &Value) -> Result<(Demand, u32, Family), SlurmError> {
        demand_of(&self.inner.settings, body)
    }

    async fn save(&self, record: &Record) {
        let path = self
            .inner
            .settings
            .state_dir
            .join("jobs")
            .join(format!("{}.json", record.job_id));
        let result = serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&path, &bytes));
        if let Err(e) = result {
            tracing::error!(job_id = record.job_id, error = %e, "could not persist a local job record");
        }
    }

    /// Gives a record the next change number (called under the records' lock).
    fn mark_changed(&self, record: &mut Record) {
        let n = self
            .inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let mut by_change = self
            .inner
            .by_change
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        by_change.remove(&record.changed);
        by_change.insert(n, record.job_id);
        record.changed = n;
    }

    async fn update(&self, job_id: u64, f: impl FnOnce(&mut Record)) {
        let mut records = self.inner.records.lock().await;
        if let Some(r) = records.get_mut(&job_id) {
            f(r);
            self.mark_changed(r);
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
            let first = nodes.first().cloned().unwrap_or_else(|| "local".into());
            self.clone().run(job_id, q.job, q.cancel, &first).await;
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
            self.clone()
                .run(next.job_id, next.job, next.cancel, "local")
                .await;
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

    async fn run(self, job_id: u64, job: Value, cancel: oneshot::Receiver<()>, node: &str) {
        let settings = &self.inner.settings;
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

        let launched = (|| -> std::io::Result<tokio::process::Child> {
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
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg(&script_path)
                .current_dir(&cwd)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(false);
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
        let mut child = match launched {
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
        let pid = child.id();
        // Our child until we wait for it: its /proc entry is still ours to read.
        let pid_start = pid.and_then(|p| proc_stat(p).map(|s| s.start));
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

/// Writes a job's script where bash, running as the job user, can read it and nothing else can.
fn write_script(path: &Path, script: &str, user: &crate::jobuser::JobUser) -> std::io::Result<()> {
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
fn create_output(
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
struct ProcStat {
    /// Field 5: the process group.
    pgrp: u32,
    /// Field 22: when it started, in clock ticks since boot.
    start: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
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

fn boot_id() -> Option<String> {
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
fn stop_leftover(record: &Record) {
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
        // File names are expanded as they will be when the job runs (a stand-in for the node,
        // which is not known yet): a pattern the executor cannot expand is refused now, and so
        // is a job name that would lead `%x` out of the mount.
        let names = JobNames {
            job_id: 1,
            name: filename::job_name(&job),
            user: Some(self.inner.settings.user.name.as_str()),
            array_task: None,
            first_node: Some("node"),
        };
        for key in ["standard_output", "standard_error", "standard_input"] {
            let Some(pattern) = job.get(key).and_then(Value::as_str) else {
                continue;
            };
            let expanded = filename::expand(pattern, &names)
                .map_err(|e| SlurmError::Rejected(vec![format!("{key}: {e}")]))?;
            if cwd
                .as_ref()
                .is_some_and(|dir| self.confined(&expanded.path, dir).is_none())
            {
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
        let mut record = Record {
            job_id,
            name: filename::job_name(&job).to_string(),
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
            pid_start: None,
            boot_id: None,
            node: None,
            // Kept until it starts, so a restart can queue it again.
            body: Some(job.clone()),
            changed: 0,
        };
        self.mark_changed(&mut record);
        records.insert(job_id, record.clone());
        drop(records);
        self.save(&record).await;
        let (tx, rx) = oneshot::channel();
        self.inner.cancels.lock().await.insert(job_id, tx);
        self.inner.queue.lock().await.enqueue(Queued {
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

    /// As slurmctld answers: every unfinished job, and finished ones for `MIN_JOB_AGE` after
    /// they ended (older ones are still found by id), so the listing grows with the queue, not
    /// with the history. For `RESTART_LISTS_ALL` after the executor opened, every job is listed:
    /// a submission whose outcome a crash kept from the log is settled from this listing (by its
    /// comment) a minute after the restart, however long ago its job ended.
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        let now = Utc::now();
        let forgotten = if now - self.inner.opened_at < RESTART_LISTS_ALL {
            DateTime::<Utc>::MIN_UTC
        } else {
            now - MIN_JOB_AGE
        };
        Ok(self
            .inner
            .records
            .lock()
            .await
            .values()
            .filter(|r| r.end_time.is_none_or(|end| end > forgotten))
            .map(Record::view)
            .collect())
    }

    fn jobs_version(&self) -> Option<u64> {
        Some(
            self.inner
                .changes
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// The records changed after `version` (read under the records' lock, so none is missed
    /// and the version returned covers exactly what is listed).
    async fn jobs_since(&self, version: u64) -> Result<Option<JobsDelta>, SlurmError> {
        let records = self.inner.records.lock().await;
        let now = self
            .inner
            .changes
            .load(std::sync::atomic::Ordering::Acquire);
        let by_change = self
            .inner
            .by_change
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(Some(JobsDelta {
            version: now,
            jobs: by_change
                .range(version.saturating_add(1)..)
                .filter_map(|(_, id)| records.get(id).map(Record::view))
                .collect(),
        }))
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        if !self.inner.records.lock().await.contains_key(&job_id) {
            return Err(SlurmError::UnknownJob(job_id));
        }
        let queued = self.inner.queue.lock().await.remove(job_id);
        if queued {
            // Never started: it ends here, as Slurm ends a pending job it cancels.
            self.inner.cancels.lock().await.remove(&job_id);
            self.update(job_id, |r| {
                r.state = JobState::Cancelled;
                r.reason = Some("cancelled while pending".into());
                r.end_time = Some(Utc::now());
                r.body = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(job_id: u64) -> Queued {
        Queued {
            job_id,
            job: Value::Null,
            cancel: oneshot::channel().1,
            demand: Demand {
                cpus: 1,
                memory_mib: 1,
            },
            nodes: 1,
            family: Family::Compute,
        }
    }

    #[test]
    fn the_queue_stays_in_id_order_and_a_cancel_finds_its_job() {
        let mut q = Queue::default();
        // Submit 3 finished after submit 4; 1 after everything.
        for id in [2, 4, 3, 5, 1] {
            q.enqueue(queued(id));
        }
        let ids = |q: &Queue| q.waiting.iter().map(|w| w.job_id).collect::<Vec<_>>();
        assert_eq!(ids(&q), [1, 2, 3, 4, 5]);
        assert!(q.remove(3));
        assert!(!q.remove(3), "not waiting any more");
        assert!(!q.remove(9), "never waited");
        assert_eq!(ids(&q), [1, 2, 4, 5]);
    }
}
