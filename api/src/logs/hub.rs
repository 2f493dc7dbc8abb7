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
//!
//! Whoever notices a change (the notification thread or the poll) also reads the new bytes once
//! and publishes them as a ready SSE frame ([`SharedChunk`]). A follower whose position is exactly
//! where one of the recent chunks starts sends that frame and every later one in one write; one
//! that is elsewhere (catching up from further back, or after a replacement) reads the file
//! itself. So a thousand followers at the end of a growing log cost
//! one read per change, not a thousand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use domain::job::JobState;
use domain::{ClusterId, WorkspaceId};
use eventlog::Store;
use notify::{RecursiveMode, Watcher};
use projections::views::jobs;
use tokio::sync::watch;

/// How a job ended, for the stream's `end` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobEnd {
    pub state: JobState,
    pub exit_code: Option<i32>,
}

/// A file's identity: (device, inode). A different one at the same path means it was replaced.
pub type Identity = (u64, u64);

/// Bytes read once for every follower, as a ready `log` frame.
#[derive(Debug)]
pub struct SharedChunk {
    pub identity: Identity,
    pub start: u64,
    pub end: u64,
    /// The bytes, for merging several chunks into one event.
    pub raw: bytes::Bytes,
    pub frame: bytes::Bytes,
}

/// How many recent chunks a file keeps for followers that fell a little behind.
pub const RECENT_CHUNKS: usize = 64;

/// What a follower sees: a counter bumped on every possible change, the most recent shared
/// chunks (oldest first, contiguous), and the job's end once known.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub changes: u64,
    pub recent: Arc<std::collections::VecDeque<Arc<SharedChunk>>>,
    pub end: Option<JobEnd>,
}

impl Tick {
    /// The recent chunks from the one that starts at `offset` of file `identity`, as many as fit
    /// in `max_bytes` (at least one); `None` when no recent chunk starts there.
    pub fn chunks_from(
        &self,
        identity: Identity,
        offset: u64,
        max_bytes: usize,
    ) -> Option<Vec<Arc<SharedChunk>>> {
        let at = self
            .recent
            .iter()
            .position(|c| c.identity == identity && c.start == offset)?;
        let mut size = 0;
        Some(
            self.recent
                .iter()
                .skip(at)
                .take_while(|c| {
                    let first = size == 0;
                    size += c.raw.len();
                    first || size <= max_bytes
                })
                .cloned()
                .collect(),
        )
    }
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
    /// The root the file must stay under (see `open_confined`).
    root: PathBuf,
    followers: usize,
    /// (length, modified, inode) at the last poll.
    seen: Option<(u64, Option<SystemTime>, u64)>,
    /// The hub's own handle on the file, and how far it has published chunks.
    reader: Option<(std::fs::File, Identity)>,
    shared_end: u64,
}

struct Inner {
    /// Keyed by file and job: two jobs writing one file each keep their own end.
    files: HashMap<Key, Entry>,
    /// Watched directories and how many followed files are in each.
    dirs: HashMap<PathBuf, usize>,
    chunk_bytes: usize,
}

/// Reads what is new in `path` and publishes it, chunk by chunk, then bumps the change counter.
/// Blocking I/O: called on the notification thread or the blocking pool.
fn advance(path: &Path, entry: &mut Entry, chunk_bytes: usize) {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let meta = std::fs::metadata(path).ok();
    let identity = meta.as_ref().map(|m| (m.dev(), m.ino()));
    if entry.reader.as_ref().map(|(_, id)| *id) != identity {
        // New, replaced or gone: start sharing from the start of whatever is there now.
        entry.reader = None;
        entry.shared_end = 0;
        if identity.is_some()
            && let Ok(Some(file)) = super::open_confined(&entry.root, path)
            && let Ok(m) = file.metadata()
        {
            entry.reader = Some((file, (m.dev(), m.ino())));
        }
    }
    // Keep only chunks of the file as it is now (a replaced file starts a new run).
    let current = entry.reader.as_ref().map(|(_, id)| *id);
    let mut recent: std::collections::VecDeque<Arc<SharedChunk>> = entry
        .tx
        .borrow()
        .recent
        .iter()
        .filter(|c| Some(c.identity) == current)
        .cloned()
        .collect();
    if let Some((file, id)) = &entry.reader {
        let len = file.metadata().map_or(0, |m| m.len());
        if len < entry.shared_end {
            // Truncated: what was shared no longer describes the file.
            entry.shared_end = len;
            recent.clear();
        }
        // A burst larger than the ring is not read here (under the hub's lock): skip to its last
        // ring's worth; followers further back read the file themselves.
        let most = (RECENT_CHUNKS * chunk_bytes) as u64;
        if len - entry.shared_end > most {
            entry.shared_end = len - most;
            recent.clear();
        }
        while len > entry.shared_end {
            let start = entry.shared_end;
            let want = ((len - start) as usize).min(chunk_bytes);
            let mut buf = vec![0u8; want];
            let n = match file.read_at(&mut buf, start) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            let Some(bytes) = super::stream::utf8_cut(buf, true) else {
                break;
            };
            let end = start + bytes.len() as u64;
            entry.shared_end = end;
            let raw = bytes::Bytes::from(bytes);
            if recent.len() == RECENT_CHUNKS {
                recent.pop_front();
            }
            recent.push_back(Arc::new(SharedChunk {
                identity: *id,
                start,
                end,
                frame: super::stream::log_frame(start, raw.to_vec()),
                raw,
            }));
        }
    }
    let recent = Arc::new(recent);
    entry.tx.send_modify(|t| {
        t.changes += 1;
        t.recent = recent;
    });
}

/// The shared watcher. Cheap to clone through `Arc`.
pub struct LogHub {
    inner: Arc<Mutex<Inner>>,
    /// The notification watcher and the directories it watches. Never locked while `inner` is:
    /// notify's `watch`/`unwatch` wait for its event thread, which may be in our callback
    /// waiting for `inner`.
    watcher: Mutex<
        Option<(
            notify::RecommendedWatcher,
            std::collections::HashSet<PathBuf>,
        )>,
    >,
}

type Key = (PathBuf, JobRef);

/// A client's subscription; dropping it unsubscribes.
pub struct Follow {
    pub rx: watch::Receiver<Tick>,
    key: Key,
    hub: Weak<LogHub>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unfollow(&self.key);
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
    pub fn start(store: Store, poll_interval: Duration, chunk_bytes: usize) -> Arc<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            files: HashMap::new(),
            dirs: HashMap::new(),
            chunk_bytes,
        }));
        let notified = Arc::downgrade(&inner);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let (Ok(event), Some(inner)) = (event, notified.upgrade()) else {
                return;
            };
            let mut guard = lock(&inner);
            let chunk_bytes = guard.chunk_bytes;
            for ((path, _), entry) in guard.files.iter_mut() {
                if event.paths.contains(path) {
                    advance(path, entry, chunk_bytes);
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some((w, std::collections::HashSet::new())),
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
    pub fn follow(self: &Arc<Self>, path: &Path, root: &Path, job: JobRef) -> Follow {
        let mut guard = lock(&self.inner);
        let key = (path.to_path_buf(), job.clone());
        let rx = match guard.files.get_mut(&key) {
            Some(entry) => {
                entry.followers += 1;
                entry.tx.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(Tick::default());
                let mut entry = Entry {
                    tx,
                    root: root.to_path_buf(),
                    followers: 1,
                    seen: None,
                    reader: None,
                    shared_end: 0,
                };
                // Share from the current end: what is already there each follower reads itself.
                use std::os::unix::fs::MetadataExt;
                if let Ok(Some(file)) = super::open_confined(root, path)
                    && let Ok(m) = file.metadata()
                {
                    entry.shared_end = m.len();
                    entry.reader = Some((file, (m.dev(), m.ino())));
                }
                guard.files.insert(key.clone(), entry);
                if let Some(dir) = path.parent() {
                    *guard.dirs.entry(dir.to_path_buf()).or_insert(0) += 1;
                }
                rx
            }
        };
        drop(guard);
        if let Some(dir) = path.parent() {
            self.sync_watch(dir);
        }
        Follow {
            rx,
            key,
            hub: Arc::downgrade(self),
        }
    }

    /// How many files are followed (for metrics and tests).
    pub fn files(&self) -> usize {
        lock(&self.inner).files.len()
    }

    fn unfollow(&self, key: &Key) {
        let path = key.0.as_path();
        let mut guard = lock(&self.inner);
        let Some(entry) = guard.files.get_mut(key) else {
            return;
        };
        entry.followers -= 1;
        if entry.followers > 0 {
            return;
        }
        guard.files.remove(key);
        if let Some(dir) = path.parent()
            && let Some(count) = guard.dirs.get_mut(dir)
        {
            *count -= 1;
            if *count == 0 {
                guard.dirs.remove(dir);
            }
        }
        drop(guard);
        if let Some(dir) = path.parent() {
            self.sync_watch(dir);
        }
    }

    /// Makes the notification watch on `dir` match whether any followed file is in it.
    fn sync_watch(&self, dir: &Path) {
        let mut guard = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((watcher, watched)) = guard.as_mut() else {
            return;
        };
        let wanted = lock(&self.inner).dirs.contains_key(dir);
        let result = match (wanted, watched.contains(dir)) {
            (true, false) => watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map(|()| watched.insert(dir.to_path_buf())),
            (false, true) => {
                watched.remove(dir);
                watcher.unwatch(dir).map(|()| true)
            }
            _ => Ok(true),
        };
        if let Err(e) = result {
            // A directory that does not exist yet, or a limit on watches: polling covers it.
            tracing::debug!(dir = %dir.display(), error = %e, wanted, "directory watch not changed");
        }
    }

    /// One polling pass: stat every followed file, and ask the projection about jobs not ended.
    async fn poll(&self, store: &Store) {
        let pending: Vec<(Key, bool)> = lock(&self.inner)
            .files
            .iter()
            .map(|(k, e)| (k.clone(), e.tx.borrow().end.is_none()))
            .collect();
        for (key, open) in pending {
            let job = &key.1;
            let end = if open {
                job_end(store, job).await
            } else {
                None
            };
            let inner = self.inner.clone();
            // Stat (and read what is new) off the async threads: on EFS a stat can block.
            let _ = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::MetadataExt;
                let path = key.0.as_path();
                let seen = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.len(), m.modified().ok(), m.ino()));
                let mut guard = lock(&inner);
                let chunk_bytes = guard.chunk_bytes;
                // The entry may have gone while the projection was asked.
                let Some(entry) = guard.files.get_mut(&key) else {
                    return;
                };
                if entry.seen != seen {
                    entry.seen = seen;
                    advance(path, entry, chunk_bytes);
                }
                if end.is_some() {
                    entry.tx.send_modify(|t| {
                        t.changes += 1;
                        t.end = end;
                    });
                }
            })
            .await;
        }
    }
}

/// The job's end, if the jobs projection has it in a final state.
pub async fn job_end(store: &Store, job: &JobRef) -> Option<JobEnd> {
    let view = jobs::get(
        store.read.as_ref(),
        &job.workspace,
        &job.cluster,
        job.job_id,
    )
    .await
    .ok()??;
    view.state.is_terminal().then_some(JobEnd {
        state: view.state,
        exit_code: view.exit_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(identity: Identity, start: u64, text: &str) -> Arc<SharedChunk> {
        Arc::new(SharedChunk {
            identity,
            start,
            end: start + text.len() as u64,
            raw: bytes::Bytes::from(text.to_string()),
            frame: bytes::Bytes::from(text.to_string()),
        })
    }

    #[test]
    fn a_follower_a_few_chunks_behind_gets_them_all_at_once() {
        let file = (1, 7);
        let tick = Tick {
            recent: Arc::new(
                [
                    chunk(file, 0, "ab"),
                    chunk(file, 2, "cd"),
                    chunk(file, 4, "e"),
                ]
                .into(),
            ),
            ..Tick::default()
        };
        let raw = |cs: Vec<Arc<SharedChunk>>| {
            cs.iter()
                .map(|c| c.raw.clone())
                .collect::<Vec<_>>()
                .concat()
        };
        assert_eq!(raw(tick.chunks_from(file, 2, 1024).unwrap()), b"cde");
        // A size bound, but never less than one chunk.
        assert_eq!(raw(tick.chunks_from(file, 0, 3).unwrap()), b"ab");
        assert_eq!(raw(tick.chunks_from(file, 0, 1).unwrap()), b"ab");
        // Not at a chunk boundary, another file, or further back than the ring: read the file.
        assert!(tick.chunks_from(file, 3, 1024).is_none());
        assert!(tick.chunks_from((1, 8), 2, 1024).is_none());
        assert!(tick.chunks_from(file, 5, 1024).is_none());
    }
}
