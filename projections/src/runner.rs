//! The checkpointed runner: catch each projector up from its checkpoint, then follow the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventlog::{EventLog, LogError, ModelSet, Position, ReadStore};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{ProjectionError, Projector, ViewTx};

/// Events applied and committed per transaction.
pub const BATCH: usize = 1_000;

/// Where [`catch_up`] writes and how far it goes.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub set: ModelSet,
    /// Stop at this position; `None` = the head.
    pub until: Option<Position>,
    /// Events per transaction.
    pub batch: usize,
}

/// Applies the events after the projector's checkpoint in `target.set`, up to `target.until`
/// (or the head), committing each batch with its checkpoint. Stops early, at a checkpoint, when
/// `stop` turns true. Returns the checkpoint reached.
pub async fn catch_up(
    log: &dyn EventLog,
    store: &dyn ReadStore,
    projector: &dyn Projector,
    target: Target,
    stop: Option<&watch::Receiver<bool>>,
    on_batch: impl FnMut(Position, usize),
) -> Result<Position, ProjectionError> {
    let checkpoint = store.checkpoint(target.set, projector.name()).await?;
    let mut cursor = Cursor::eager(checkpoint);
    advance(log, store, projector, target, stop, &mut cursor, on_batch).await?;
    Ok(cursor.persisted)
}

/// Events a live projector may apply without persisting its checkpoint, when they changed none of
/// its documents.
const LAZY_EVENTS: i64 = 10_000;
/// How long a live projector may go without persisting its checkpoint.
const LAZY_FOR: Duration = Duration::from_secs(1);

/// Where a projector is: `applied` in memory, `persisted` with its documents.
///
/// A live projector does not commit a batch that changed none of its documents (most events
/// concern few projectors): it only advances `applied`, and persists the checkpoint with its next
/// change, after [`LAZY_EVENTS`] or [`LAZY_FOR`], and when it stops. After a crash it re-reads
/// those events and they change nothing again — applying an event is deterministic given the
/// documents, which nothing changed in between.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    applied: Position,
    persisted: Position,
    persisted_at: Instant,
    lazy: bool,
}

impl Cursor {
    fn eager(checkpoint: Position) -> Self {
        Self {
            applied: checkpoint,
            persisted: checkpoint,
            persisted_at: Instant::now(),
            lazy: false,
        }
    }

    fn lazy(checkpoint: Position) -> Self {
        Self {
            lazy: true,
            ..Self::eager(checkpoint)
        }
    }

    fn must_persist(&self, last: Position, changed: bool) -> bool {
        !self.lazy
            || changed
            || last - self.persisted >= LAZY_EVENTS
            || self.persisted_at.elapsed() >= LAZY_FOR
    }

    /// Writes the checkpoint if events were applied since it was last written.
    async fn flush(
        &mut self,
        store: &dyn ReadStore,
        set: ModelSet,
        name: &str,
    ) -> Result<(), LogError> {
        if self.applied > self.persisted {
            store
                .commit(set, name, self.persisted, self.applied, &[])
                .await?;
            self.persisted = self.applied;
            self.persisted_at = Instant::now();
        }
        Ok(())
    }
}

async fn advance(
    log: &dyn EventLog,
    store: &dyn ReadStore,
    projector: &dyn Projector,
    target: Target,
    stop: Option<&watch::Receiver<bool>>,
    cursor: &mut Cursor,
    mut on_batch: impl FnMut(Position, usize),
) -> Result<(), ProjectionError> {
    let Target { set, until, batch } = target;
    let name = projector.name();
    // How many events to read after `from`, or None when `until` is reached.
    let limit_after = |from: Position| match until {
        Some(u) if u <= from => None,
        Some(u) => Some(batch.min((u - from) as usize)),
        None => Some(batch),
    };
    let read = |from: Position| async move {
        match limit_after(from) {
            Some(limit) => log.read_all(from, limit).await,
            None => Ok(Vec::new()),
        }
    };
    let mut events = read(cursor.applied).await?;
    loop {
        if stop.is_some_and(|s| *s.borrow()) {
            break;
        }
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        // Read the next batch while this one is applied and committed: the database reads on
        // its own thread, so the two overlap.
        let snapshot = *cursor;
        let apply = async {
            let mut view = ViewTx::new(store, set, name);
            for event in &events {
                crate::apply_one(projector, &mut view, event).await?;
            }
            let changes = view.into_changes();
            let persist = snapshot.must_persist(last, !changes.is_empty());
            if persist {
                store
                    .commit(set, name, snapshot.persisted, last, &changes)
                    .await?;
            }
            Ok::<_, ProjectionError>(persist)
        };
        let (applied, next) = tokio::join!(apply, read(last));
        if applied? {
            cursor.persisted = last;
            cursor.persisted_at = Instant::now();
        }
        cursor.applied = last;
        on_batch(last, events.len());
        events = next?;
    }
    Ok(())
}

/// What a live projector is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectionStatus {
    /// The last position applied to the live read model.
    pub position: Position,
    /// "starting", "running" or "failing".
    pub state: &'static str,
    pub last_error: Option<String>,
}

/// The live projectors of a running server.
pub struct Projections {
    statuses: BTreeMap<&'static str, watch::Receiver<ProjectionStatus>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Projections {
    /// Starts one task per projector. They stop at a checkpoint when `shutdown` turns true.
    pub fn start(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ReadStore>,
        projectors: Vec<Arc<dyn Projector>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut statuses = BTreeMap::new();
        let mut tasks = Vec::new();
        for projector in projectors {
            let (tx, rx) = watch::channel(ProjectionStatus {
                position: 0,
                state: "starting",
                last_error: None,
            });
            statuses.insert(projector.name(), rx);
            tasks.push(tokio::spawn(follow(
                log.clone(),
                store.clone(),
                projector,
                tx,
                shutdown.clone(),
            )));
        }
        Self { statuses, tasks }
    }

    /// Every projector's status, by name.
    pub fn statuses(&self) -> BTreeMap<&'static str, ProjectionStatus> {
        self.statuses
            .iter()
            .map(|(name, rx)| (*name, rx.borrow().clone()))
            .collect()
    }

    /// The lowest position every named projector has reached.
    pub fn position(&self, name: &str) -> Option<Position> {
        self.statuses.get(name).map(|rx| rx.borrow().position)
    }

    /// A receiver of projector `name`'s status, to follow its progress.
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<ProjectionStatus>> {
        self.statuses.get(name).cloned()
    }

    /// Waits until projector `name` has applied `position`, at most `timeout`. True if it has.
    pub async fn wait_for(&self, name: &str, position: Position, timeout: Duration) -> bool {
        let Some(rx) = self.statuses.get(name) else {
            return false;
        };
        let mut rx = rx.clone();
        let reached = rx.wait_for(|s| s.position >= position);
        matches!(tokio::time::timeout(timeout, reached).await, Ok(Ok(_)))
    }

    /// Waits for every projector task to stop (after shutdown was signalled).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "projector task ended abnormally");
            }
        }
    }
}

async fn follow(
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadStore>,
    projector: Arc<dyn Projector>,
    status: watch::Sender<ProjectionStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = projector.name();
    let mut head = log.watch_head();
    let mut backoff = Duration::from_millis(200);
    let mut cursor: Option<Cursor> = None;
    loop {
        // Stopped when told so, or when whoever could tell it is gone (a server dropped, or
        // failing to start, after the projections started): never a loop with nothing to wait on.
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            break;
        }
        head.borrow_and_update();
        let result = async {
            let c = match &mut cursor {
                Some(c) => c,
                None => cursor.insert(Cursor::lazy(store.checkpoint(ModelSet::Live, name).await?)),
            };
            advance(
                log.as_ref(),
                store.as_ref(),
                projector.as_ref(),
                Target {
                    set: ModelSet::Live,
                    until: None,
                    batch: BATCH,
                },
                Some(&shutdown),
                c,
                |position, _| {
                    status.send_modify(|s| {
                        s.position = position;
                        s.state = "running";
                        s.last_error = None;
                    })
                },
            )
            .await?;
            if c.persisted_at.elapsed() >= LAZY_FOR || *shutdown.borrow() {
                c.flush(store.as_ref(), ModelSet::Live, name).await?;
            }
            Ok::<_, ProjectionError>(c.applied)
        }
        .await;
        match result {
            Ok(position) => {
                backoff = Duration::from_millis(200);
                status.send_if_modified(|s| {
                    let changed = s.position != position || s.state != "running";
                    s.position = position;
                    s.state = "running";
                    s.last_error = None;
                    changed
                });
            }
            Err(ProjectionError::Store(LogError::CheckpointMoved { found, .. })) => {
                // A rebuild was promoted or another runner moved it: pick up from there, and say
                // where we are (it may be behind what we had reported).
                cursor = None;
                status.send_modify(|s| s.position = found);
                tracing::info!(
                    projection = name,
                    checkpoint = found,
                    "checkpoint moved; resuming from it"
                );
                continue;
            }
            Err(e) => {
                // Start again from what is persisted: a failed batch may have half-applied.
                cursor = None;
                tracing::error!(projection = name, error = %e, retry_in_ms = backoff.as_millis() as u64, "projection failed");
                status.send_modify(|s| {
                    s.state = "failing";
                    s.last_error = Some(e.to_string());
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => {}
        }
    }
    if let Some(c) = &mut cursor
        && let Err(e) = c.flush(store.as_ref(), ModelSet::Live, name).await
    {
        tracing::warn!(projection = name, error = %e, "could not write the checkpoint at stop; the events after it will be read again");
    }
    tracing::info!(
        projection = name,
        position = status.borrow().position,
        "projector stopped at its checkpoint"
    );
}
