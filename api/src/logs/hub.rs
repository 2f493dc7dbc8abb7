//! One watcher per followed log file, shared by every client that follows it.
//!
//! A client subscribes to a file and gets a [`Follow`]: a `watch` receiver that changes whenever
//! the file may have new bytes or the job ended. Two sources feed it: filesystem notifications
//! (inotify through the `notify` crate, on the file's directory, so a file that does not exist yet
//! is seen when it appears) and one polling task that stats every followed file each
//! `poll_interval` — the fallback for network filesystems such as EFS, where notifications from
//! other machines never arrive. The same task asks the jobs projection, once per file and tick,
//! whether the job has ended. Per client this costs one receiver; the per-file work does not grow
//! with the number of clients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use domain::job::JobState;
use domain::{ClusterId, WorkspaceId};
use eventlog::{ModelSet, Store};
use notify::{RecursiveMode, Watcher};
use projections::views::jobs::{self, JobView};
use tokio::sync::watch;

/// How a job ended, for the stream's `end` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobEnd {
    pub state: JobState,
    pub exit_code: Option<i32>,
}

/// What a follower sees: a counter bumped on every possible change, and the job's end once known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    pub changes: u64,
    pub end: Option<JobEnd>,
}

/// The job whose log a file is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobRef {
    pub workspace: WorkspaceId,
    pub cluster: ClusterId,
    pub job_id: u64,
}

struct Entry {
    tx: watch::Sender<Tick>,
    job: JobRef,
    followers: usize,
    /// (length, modified, inode) at the last poll.
    seen: Option<(u64, Option<SystemTime>, u64)>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<PathBuf, Entry>,
    /// Watched directories and how many followed files are in each.
    dirs: HashMap<PathBuf, usize>,
}

/// The shared watcher. Cheap to clone through `Arc`.
pub struct LogHub {
    inner: Arc<Mutex<Inner>>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

/// A client's subscription; dropping it unsubscribes.
pub struct Follow {
    pub rx: watch::Receiver<Tick>,
    path: PathBuf,
    hub: Weak<LogHub>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unfollow(&self.path);
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves only counters behind; keep serving.
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LogHub {
    /// Starts the hub and its polling task (which ends when the hub is dropped).
    pub fn start(store: Store, poll_interval: Duration) -> Arc<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let notified = Arc::downgrade(&inner);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let (Ok(event), Some(inner)) = (event, notified.upgrade()) else {
                return;
            };
            let guard = lock(&inner);
            for path in &event.paths {
                if let Some(entry) = guard.files.get(path) {
                    entry.tx.send_modify(|t| t.changes += 1);
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no filesystem notifications; logs are followed by polling only");
                None
            }
        };
        let hub = Arc::new(Self {
            inner,
            watcher: Mutex::new(watcher),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(poll_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(hub) = weak.upgrade() else { break };
                hub.poll(&store).await;
            }
        });
        hub
    }

    /// Follows `path`, the log of `job`.
    pub fn follow(self: &Arc<Self>, path: &Path, job: JobRef) -> Follow {
        let mut guard = lock(&self.inner);
        let rx = match guard.files.get_mut(path) {
            Some(entry) => {
                entry.followers += 1;
                entry.tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(Tick::default());
                guard.files.insert(
                    path.to_path_buf(),
                    Entry {
                        tx,
                        job,
                        followers: 1,
                        seen: None,
                    },
                );
                if let Some(dir) = path.parent() {
                    let count = guard.dirs.entry(dir.to_path_buf()).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        self.watch_dir(dir, true);
                    }
                }
                rx
            }
        };
        Follow {
            rx,
            path: path.to_path_buf(),
            hub: Arc::downgrade(self),
        }
    }

    /// How many files are followed (for metrics and tests).
    pub fn files(&self) -> usize {
        lock(&self.inner).files.len()
    }

    fn unfollow(&self, path: &Path) {
        let mut guard = lock(&self.inner);
        let Some(entry) = guard.files.get_mut(path) else {
            return;
        };
        entry.followers -= 1;
        if entry.followers > 0 {
            return;
        }
        guard.files.remove(path);
        if let Some(dir) = path.parent()
            && let Some(count) = guard.dirs.get_mut(dir)
        {
            *count -= 1;
            if *count == 0 {
                guard.dirs.remove(dir);
                self.watch_dir(dir, false);
            }
        }
    }

    fn watch_dir(&self, dir: &Path, on: bool) {
        let mut guard = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(watcher) = guard.as_mut() else {
            return;
        };
        let result = if on {
            watcher.watch(dir, RecursiveMode::NonRecursive)
        } else {
            watcher.unwatch(dir)
        };
        if let Err(e) = result {
            // A directory that does not exist yet, or a limit on watches: polling covers it.
            tracing::debug!(dir = %dir.display(), error = %e, on, "directory watch not changed");
        }
    }

    /// One polling pass: stat every followed file, and ask the projection about jobs not ended.
    async fn poll(&self, store: &Store) {
        let pending: Vec<(PathBuf, JobRef, bool)> = lock(&self.inner)
            .files
            .iter()
            .map(|(p, e)| (p.clone(), e.job.clone(), e.tx.borrow().end.is_none()))
            .collect();
        for (path, job, open) in pending {
            let seen = std::fs::metadata(&path).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.len(), m.modified().ok(), m.ino())
            });
            let end = if open {
                job_end(store, &job).await
            } else {
                None
            };
            // The entry may have gone while the projection was asked.
            let mut guard = lock(&self.inner);
            let Some(entry) = guard.files.get_mut(&path) else {
                continue;
            };
            let changed = entry.seen != seen;
            entry.seen = seen;
            if changed || end.is_some() {
                entry.tx.send_modify(|t| {
                    t.changes += 1;
                    if end.is_some() {
                        t.end = end;
                    }
                });
            }
        }
    }
}

/// The job's end, if the jobs projection has it in a final state.
pub async fn job_end(store: &Store, job: &JobRef) -> Option<JobEnd> {
    let doc = store
        .read
        .get_doc(
            ModelSet::Live,
            jobs::NAME,
            &jobs::collection(&job.workspace, &job.cluster),
            &jobs::key(job.job_id),
        )
        .await
        .ok()??;
    let view: JobView = serde_json::from_str(&doc).ok()?;
    view.state.is_terminal().then_some(JobEnd {
        state: view.state,
        exit_code: view.exit_code,
    })
}
