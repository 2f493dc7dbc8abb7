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

mod fleet;
mod queue;
mod runner;

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
use domain::scaling::{Catalog, Demand, Family, NodeSet, Size};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, oneshot};

use fleet::Fleet;
use queue::{Queue, Queued};
use runner::stop_leftover;
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
    /// What it used, from `wait4` when it ended (added with the efficiency report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<commands::slurm::Usage>,
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
            usage: self.state.is_terminal().then(|| {
                self.usage.clone().unwrap_or_else(|| {
                    runner::unmeasured(if self.start_time.is_some() {
                        "the job ended while the executor was not running, so nothing waited for it"
                            .into()
                    } else {
                        "the job never started".into()
                    })
                })
            }),
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
    /// The records' journal ([`JOURNAL`]), open for appending. Written under the records'
    /// lock, so its lines are in change order.
    journal: std::sync::Mutex<std::fs::File>,
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

/// Where a job goes on the executor's nodes: what one node needs, on how many nodes, its own node
/// set, and how long it may run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wants {
    pub(super) demand: Demand,
    pub(super) nodes: u32,
    /// The set the planner gives each node (`plan` places per-node demands with
    /// [`Catalog::place`]): where the scaler opens nodes for it.
    pub(super) set: NodeSet,
    /// Its time limit in the executor's minutes; `None`: unlimited.
    pub(super) limit: Option<Duration>,
}

/// What a job wants (with nodes; without, a placeholder that nothing reads).
fn demand_of(settings: &LocalSettings, body: &Value) -> Result<Wants, SlurmError> {
    let Some(ns) = &settings.nodes else {
        return Ok(Wants {
            demand: Demand {
                cpus: 1,
                memory_mib: 0,
            },
            nodes: 1,
            set: NodeSet {
                family: Family::Compute,
                size: Size::Xs,
            },
            limit: None,
        });
    };
    let shape = domain::submit::canonicalize(body)
        .map_err(|errors| SlurmError::Rejected(errors.into_iter().map(|e| e.message).collect()))?
        .shape;
    let p = domain::placement::of_shape(&ns.catalog, &shape, ns.default_mib_per_cpu)
        .map_err(|e| SlurmError::Rejected(vec![e.to_string()]))?;
    let set = ns
        .catalog
        .place(p.demand)
        .map_err(|e| SlurmError::Rejected(vec![e.to_string()]))?;
    Ok(Wants {
        demand: p.demand,
        nodes: p.nodes,
        set,
        limit: shape
            .time_limit_minutes
            .map(|m| settings.minute.saturating_mul(m)),
    })
}

/// The records' journal, in the state directory's `jobs/` (mode 0700 when jobs run as another
/// user): one line of JSON per change of a record, appended; the last line of a job is its
/// record. A line cut short by a crash (no newline) is dropped at open. Opening rewrites the
/// journal with one line per job when it holds more than twice as many lines as jobs. Records of
/// older versions (`jobs/<id>.json`, one file per job, replaced at every change) are read once
/// and moved into it.
const JOURNAL: &str = "records.jsonl";

/// Reads the journal at `path` into `records` (later lines replace earlier ones); returns how
/// many lines it holds. A last line without its newline (a write cut short by a crash) is
/// dropped from the file.
fn read_journal(path: &Path, records: &mut BTreeMap<u64, Record>) -> Result<usize, LocalError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    };
    let mut lines = 0;
    let mut good = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let Some(text) = line.strip_suffix(b"\n") else {
            tracing::warn!(path = %path.display(), bytes = line.len(), "dropping a record cut short by a crash");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            file.set_len(good as u64).map_err(io(path))?;
            break;
        };
        let record: Record = serde_json::from_slice(text).map_err(|source| LocalError::Record {
            path: path.to_path_buf(),
            source,
        })?;
        records.insert(record.job_id, record);
        lines += 1;
        good += line.len();
    }
    Ok(lines)
}

/// Writes one line per record to `path`, through a temporary file renamed over it (synced
/// first), and removes the per-job files of older versions it replaces.
fn rewrite_journal(
    path: &Path,
    records: &BTreeMap<u64, Record>,
    legacy: &[PathBuf],
) -> Result<(), LocalError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let file = open_private(&tmp, false).map_err(io(&tmp))?;
    let mut out = std::io::BufWriter::new(file);
    for record in records.values() {
        let line = journal_line(record).map_err(|source| LocalError::Record {
            path: tmp.clone(),
            source,
        })?;
        out.write_all(&line).map_err(io(&tmp))?;
    }
    let file = out.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    for old in legacy {
        std::fs::remove_file(old).map_err(io(old))?;
    }
    Ok(())
}

/// A record as one journal line, its newline included.
fn journal_line(record: &Record) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(record)?;
    line.push(b'\n');
    Ok(line)
}

/// Appends one record as one line (one `write`, on a file opened for appending).
fn append_line(journal: &mut std::fs::File, record: &Record) -> std::io::Result<()> {
    use std::io::Write;
    journal.write_all(&journal_line(record).map_err(std::io::Error::other)?)
}

/// Opens a file only its owner may read (created with mode 0600): for appending, or for
/// writing from its start.
fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .append(append)
        .truncate(!append)
        .create(true)
        .mode(0o600)
        .open(path)
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
        let jobs_dir = settings.state_dir.join("jobs");
        let journal_path = jobs_dir.join(JOURNAL);
        // Older versions' per-job files first; the journal's lines are newer.
        let mut records = BTreeMap::new();
        let mut legacy = Vec::new();
        for entry in std::fs::read_dir(&jobs_dir).map_err(io(&jobs_dir))? {
            let path = entry.map_err(io(&jobs_dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let record: Record =
                serde_json::from_str(&text).map_err(|source| LocalError::Record {
                    path: path.clone(),
                    source,
                })?;
            records.insert(record.job_id, record);
            legacy.push(path);
        }
        let lines = read_journal(&journal_path, &mut records)?;
        let mut waiting = Vec::new();
        let mut changed = Vec::new();
        for record in records.values_mut() {
            if record.state.is_terminal() {
                continue;
            }
            let never_started = record.state == JobState::Pending
                && record.start_time.is_none()
                && record.pid.is_none();
            match &record.body {
                Some(job) if never_started => {
                    let body = serde_json::json!({ "job": job });
                    match demand_of(&settings, &body) {
                        Ok(wants) => {
                            tracing::info!(
                                job_id = record.job_id,
                                "job waiting before the restart: queued again"
                            );
                            waiting.push((record.job_id, wants));
                            continue;
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
                    stop_leftover(record);
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
            changed.push(record.job_id);
        }
        if !legacy.is_empty() || lines + changed.len() > 2 * records.len() {
            rewrite_journal(&journal_path, &records, &legacy)?;
            changed.clear();
        }
        let mut journal = open_private(&journal_path, true).map_err(io(&journal_path))?;
        for job_id in changed {
            if let Some(record) = records.get(&job_id) {
                append_line(&mut journal, record).map_err(io(&journal_path))?;
            }
        }
        let owner = executor_id(&settings.state_dir)?;
        // Job ids increase with submission: queue them in that order.
        waiting.sort_by_key(|w| w.0);
        let mut queue = Queue::default();
        let mut cancels = BTreeMap::new();
        for (job_id, wants) in waiting {
            let (queued, cancel) = Queued::new(job_id, wants);
            cancels.insert(job_id, cancel);
            queue.waiting.push_back(queued);
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
                journal: std::sync::Mutex::new(journal),
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

    /// What one node of a job needs, on how many nodes, of which set, for how long.
    fn demand(&self, body: &Value) -> Result<Wants, SlurmError> {
        demand_of(&self.inner.settings, body)
    }

    /// Appends a record's line to the journal (called under the records' lock, so lines are in
    /// change order).
    fn persist(&self, record: &Record) {
        let mut journal = self.inner.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = append_line(&mut journal, record) {
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
            self.persist(r);
        }
    }
}
