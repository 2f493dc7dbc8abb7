//! The checkpointed runner: catch each projector up from its checkpoint, then follow the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::DomainEvent;
use eventlog::{
    DocChange, EventLog, LogError, ModelSet, Position, ProjectionCommit, ReadStore, RecordedEvent,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Event, ProjectionError, Projector, Reads, ViewTx};

/// Events applied and committed per transaction.
pub const BATCH: usize = 1_000;

/// Events the live follower applies and commits per transaction. Smaller than [`BATCH`]: a
/// follower behind a busy log commits every projector's changes of a batch at once, and on
/// SQLite appends wait behind that commit on the one writer, so a shorter commit is a shorter
/// wait for the requests behind it.
pub const LIVE_BATCH: usize = 250;

/// Events the live follower applies between yields to the runtime. A projector's reads of its
/// documents on SQLite run on the calling thread and never wait, so without a yield a whole
/// batch (every member over [`LIVE_BATCH`] events) would hold one tokio worker from start to
/// end, and the requests queued on that worker would wait behind it.
const APPLY_BETWEEN_YIELDS: usize = 32;

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

/// While appends keep coming, the live projectors start a pass at most this often: a pass costs
/// the same reads, document writes and commit whether it applies one event or fifty, and a
/// steady stream of small group commits (keyed submits: two appends each) otherwise wakes them
/// for every one. The first append after a quiet spell is applied at once.
const MIN_PASS_GAP: Duration = Duration::from_millis(4);

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
        // Read the next batch while this one is applied and committed. A long read overlaps
        // with both (its database work is on another thread); on SQLite the first rows are
        // read on this task when `read` is first polled, so they overlap with the commit.
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
    /// Starts the projectors on one task that reads the log once for all of them, decodes each
    /// event once, and commits every projector's changes of a batch in one transaction
    /// ([`ReadStore::commit_many`]). A projector that fails is retried on its own, with backoff,
    /// while the others go on. They stop at a checkpoint when `shutdown` turns true.
    pub fn start(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ReadStore>,
        projectors: Vec<Arc<dyn Projector>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut statuses = BTreeMap::new();
        let mut members = Vec::new();
        for projector in projectors {
            let (tx, rx) = watch::channel(ProjectionStatus {
                position: 0,
                state: "starting",
                last_error: None,
            });
            statuses.insert(projector.name(), rx);
            members.push(Member {
                projector,
                status: tx,
                cursor: None,
                backoff: FIRST_BACKOFF,
                retry_at: Instant::now(),
            });
        }
        let tasks = vec![tokio::spawn(follow(log, store, members, shutdown))];
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

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One live projector of the shared follower.
struct Member {
    projector: Arc<dyn Projector>,
    status: watch::Sender<ProjectionStatus>,
    /// `None` until its checkpoint is read, and again after a failure.
    cursor: Option<Cursor>,
    backoff: Duration,
    /// When a member without a cursor may read its checkpoint again.
    retry_at: Instant,
}

impl Member {
    fn name(&self) -> &'static str {
        self.projector.name()
    }

    fn running(&self, position: Position) {
        self.status.send_if_modified(|s| {
            let changed = s.position != position || s.state != "running";
            s.position = position;
            s.state = "running";
            s.last_error = None;
            changed
        });
    }

    /// Starts again from what is persisted (a failed batch may have half-applied), after a
    /// backoff; or at once from the stored checkpoint when another runner moved it.
    fn failed(&mut self, e: ProjectionError) {
        self.cursor = None;
        if let ProjectionError::Store(LogError::CheckpointMoved { found, .. }) = e {
            // A rebuild was promoted or another runner moved it: pick up from there, and say
            // where we are (it may be behind what we had reported).
            self.status.send_modify(|s| s.position = found);
            self.retry_at = Instant::now();
            tracing::info!(
                projection = self.name(),
                checkpoint = found,
                "checkpoint moved; resuming from it"
            );
            return;
        }
        tracing::error!(projection = self.name(), error = %e, retry_in_ms = self.backoff.as_millis() as u64, "projection failed");
        self.status.send_modify(|s| {
            s.state = "failing";
            s.last_error = Some(e.to_string());
        });
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// The shared follower: catches every projector up, then follows the head.
async fn follow(
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadStore>,
    mut members: Vec<Member>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut head = log.watch_head();
    // When the current pass started.
    let mut last_pass;
    loop {
        // Stopped when told so, or when whoever could tell it is gone (a server dropped, or
        // failing to start, after the projections started): never a loop with nothing to wait on.
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            break;
        }
        head.borrow_and_update();
        let now = Instant::now();
        last_pass = now;
        for m in members
            .iter_mut()
            .filter(|m| m.cursor.is_none() && m.retry_at <= now)
        {
            match store.checkpoint(ModelSet::Live, m.name()).await {
                Ok(checkpoint) => m.cursor = Some(Cursor::lazy(checkpoint)),
                Err(e) => m.failed(e.into()),
            }
        }
        if let Err(e) = advance_all(log.as_ref(), store.as_ref(), &mut members, &shutdown).await {
            // The log could not be read: every member starts again from its checkpoint.
            for m in members.iter_mut().filter(|m| m.cursor.is_some()) {
                m.failed(ProjectionError::LogRead(e.to_string()));
            }
        }
        // Caught up: every member with a cursor is running where it is (one whose checkpoint was
        // already at the head, say written by another replica, read no batch to say so).
        for m in &members {
            if let Some(c) = m.cursor {
                m.running(c.applied);
            }
        }
        let due: Vec<usize> = (0..members.len())
            .filter(|&i| {
                members[i]
                    .cursor
                    .is_some_and(|c| c.persisted_at.elapsed() >= LAZY_FOR)
            })
            .collect();
        flush(store.as_ref(), &mut members, &due).await;
        let now = Instant::now();
        if members
            .iter()
            .any(|m| m.cursor.is_none() && m.retry_at <= now)
        {
            continue;
        }
        let wait = members
            .iter()
            .filter(|m| m.cursor.is_none())
            .map(|m| m.retry_at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX)
            .min(Duration::from_millis(500));
        tokio::select! {
            _ = head.changed() => {
                let gap = MIN_PASS_GAP.saturating_sub(last_pass.elapsed());
                if !gap.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(gap) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    let all: Vec<usize> = (0..members.len()).collect();
    if !flush(store.as_ref(), &mut members, &all).await {
        tracing::warn!(
            "could not write every checkpoint at stop; the events after them will be read again"
        );
    }
    for m in &members {
        tracing::info!(
            projection = m.name(),
            position = m.status.borrow().position,
            "projector stopped at its checkpoint"
        );
    }
}

/// Persists the checkpoints of `which` members that applied events since they last wrote it.
/// False if any could not be written.
async fn flush(store: &dyn ReadStore, members: &mut [Member], which: &[usize]) -> bool {
    let parts: Vec<(usize, Vec<DocChange>, Position)> = which
        .iter()
        .filter_map(|&i| {
            let c = members[i].cursor?;
            (c.applied > c.persisted).then(|| (i, Vec::new(), c.applied))
        })
        .collect();
    commit(store, members, parts).await
}

/// Commits members' changes up to a position each, all in one transaction; when that fails,
/// one member at a time, so one member's failure (a moved checkpoint) stops only that member.
/// False if any part failed.
async fn commit(
    store: &dyn ReadStore,
    members: &mut [Member],
    parts: Vec<(usize, Vec<DocChange>, Position)>,
) -> bool {
    if parts.is_empty() {
        return true;
    }
    let commits: Vec<ProjectionCommit<'_>> = parts
        .iter()
        .map(|(i, changes, to)| ProjectionCommit {
            projection: members[*i].name(),
            from: members[*i].cursor.map_or(0, |c| c.persisted),
            to: *to,
            changes,
        })
        .collect();
    let mut ok = true;
    let results: Vec<Result<(), ProjectionError>> =
        match store.commit_many(ModelSet::Live, &commits).await {
            Ok(()) => parts.iter().map(|_| Ok(())).collect(),
            // Only a moved checkpoint is one member's own: the others can commit without it. Any
            // other failure (the database) is every member's; it is not tried again part by part.
            Err(e @ LogError::CheckpointMoved { .. }) if parts.len() == 1 => vec![Err(e.into())],
            Err(e) if !matches!(e, LogError::CheckpointMoved { .. }) => {
                let message = e.to_string();
                parts
                    .iter()
                    .map(|_| Err(ProjectionError::CommitFailed(message.clone())))
                    .collect()
            }
            Err(_) => {
                let mut each = Vec::with_capacity(commits.len());
                for c in &commits {
                    each.push(
                        store
                            .commit(ModelSet::Live, c.projection, c.from, c.to, c.changes)
                            .await
                            .map_err(ProjectionError::from),
                    );
                }
                each
            }
        };
    for ((i, _, to), result) in parts.into_iter().zip(results) {
        match result {
            Ok(()) => {
                if let Some(c) = &mut members[i].cursor {
                    c.persisted = to;
                    c.persisted_at = Instant::now();
                }
            }
            Err(e) => {
                ok = false;
                members[i].failed(e);
            }
        }
    }
    ok
}

/// Applies the events after every member's position to the members that have not seen them,
/// batch by batch, reading each batch once (the next one while this one is applied and
/// committed) and decoding each event once. Returns when caught up with the head or told to
/// stop; a member that fails is left without a cursor (see [`Member::failed`]).
async fn advance_all(
    log: &dyn EventLog,
    store: &dyn ReadStore,
    members: &mut [Member],
    stop: &watch::Receiver<bool>,
) -> Result<(), LogError> {
    let lowest = |members: &[Member]| {
        members
            .iter()
            .filter_map(|m| m.cursor)
            .map(|c| c.applied)
            .min()
    };
    let Some(from) = lowest(members) else {
        return Ok(());
    };
    let mut events = log.read_all(from, LIVE_BATCH).await?;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let apply = apply_batch(store, members, &events, last);
        let (_, next) = tokio::join!(apply, log.read_all(last, LIVE_BATCH));
        events = next?;
        if lowest(members).is_none() {
            return Ok(());
        }
    }
}

/// Applies one batch to the members behind `last`, then commits what they changed.
async fn apply_batch(
    store: &dyn ReadStore,
    members: &mut [Member],
    events: &[RecordedEvent],
    last: Position,
) {
    // Decoded once for every member that reads the event decoded.
    let mut decoded: Vec<Option<Result<Option<DomainEvent>, ()>>> = vec![None; events.len()];
    let mut parts = Vec::new();
    let mut moved = Vec::new();
    let mut since_yield = 0;
    for (i, member) in members.iter_mut().enumerate() {
        let Some(cursor) = member.cursor.filter(|c| c.applied < last) else {
            continue;
        };
        let projector = member.projector.clone();
        let mut view = ViewTx::new(store, ModelSet::Live, projector.name());
        let mut result = Ok(());
        for (event, decoded) in events.iter().zip(decoded.iter_mut()) {
            if event.position <= cursor.applied {
                continue;
            }
            let domain = match projector.reads(&event.event_type) {
                Reads::Nothing => continue,
                Reads::Envelope => None,
                Reads::Decoded => {
                    let once = decoded.get_or_insert_with(|| {
                        DomainEvent::decode(&event.event_type, event.schema_version, &event.data)
                            .map_err(drop)
                    });
                    match once {
                        Ok(Some(domain)) => Some(domain.clone()),
                        Ok(None) => continue,
                        Err(()) => {
                            // Decoded again for the error itself (it cannot be cloned).
                            result = Err(decode_error(event));
                            break;
                        }
                    }
                }
            };
            since_yield += 1;
            if since_yield >= APPLY_BETWEEN_YIELDS {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            if let Err(e) = projector
                .apply(
                    &mut view,
                    Event {
                        recorded: event,
                        domain,
                    },
                )
                .await
            {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => {
                let changes = view.into_changes();
                if cursor.must_persist(last, !changes.is_empty()) {
                    parts.push((i, changes, last));
                }
                moved.push(i);
            }
            Err(e) => member.failed(e),
        }
    }
    commit(store, members, parts).await;
    for i in moved {
        // A member whose commit failed has no cursor any more.
        if let Some(c) = &mut members[i].cursor {
            c.applied = last;
            members[i].running(last);
        }
    }
}

fn decode_error(event: &RecordedEvent) -> ProjectionError {
    match DomainEvent::decode(&event.event_type, event.schema_version, &event.data) {
        Err(e) => ProjectionError::bad_event(event, e),
        Ok(_) => ProjectionError::Store(LogError::Corrupt(format!(
            "event {} decoded on the second attempt only",
            event.position
        ))),
    }
}
