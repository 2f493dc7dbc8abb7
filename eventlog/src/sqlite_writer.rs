//! The SQLite store's writer: one OS thread owning one rusqlite connection, through which every
//! write of the store goes — groups of appends, projector commits, a rebuild's clear and promote.
//!
//! sqlx's SQLite driver hands each statement to its connection's thread and waits for the answer
//! (two thread wake-ups per statement); a group append is about seven statements and a projector
//! commit about five, all under the single writer. Here a whole transaction is one hand-off: the
//! job goes over a channel, the thread runs every statement (prepared once, cached) and answers
//! on a oneshot. Being the only writer in the process, the thread also replaces the in-process
//! write lock. Other processes (the CLI) still meet SQLite's own lock and wait on `busy_timeout`.
//! Point reads run on the caller's thread (`crate::sqlite_read`); other reads stay on the sqlx
//! pool.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::group::{self, AppendRequest, GroupResult, MAX_GROUP};
use crate::{
    AppendOutcome, Clock, DocChange, Head, LogError, ModelSet, NewEvent, Position,
    ProjectionCommit, RecordedEvent, appended, check_reappend, hash32, prepare_rows,
};

/// Prepared statements kept per connection (a few per table set, plus the log's).
const STATEMENT_CACHE: usize = 32;

/// The writer connection's page cache: 8 MiB (negative: KiB), where the pool's readers keep
/// 64 MiB. At the end of every transaction SQLite drops cached pages past the database's end,
/// and a B-tree split that reorders pages parks one for a moment at the pending-byte page
/// (page 262,145 with 4 KiB pages) — so while the file is under 1 GiB nearly every commit
/// walks the whole cache (`pcache1TruncateUnsafe`). With 64 MiB that walk was most of the
/// writer's time in a burst after an idle spell (150 ms for one 60-row projector commit); with
/// 8 MiB it is an eighth; a page the writer no longer holds is read back from the OS's file
/// cache. Measured, not assumed: the 100,000-job fill ran faster with 8 MiB than with 64
/// (docs/performance.md).
const WRITER_CACHE_SIZE: &str = "-8192";

/// A writer job that runs this long is logged (debug): every write queued behind it waited.
const SLOW_JOB: Duration = Duration::from_millis(5);

/// A piece of work for the writer thread.
pub(crate) enum Job {
    Append(AppendRequest),
    Commit {
        set: ModelSet,
        commits: Vec<OwnedCommit>,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    Clear {
        set: ModelSet,
        projection: String,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
    Promote {
        projection: String,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// One projection's part of a commit, owned so it can cross to the writer thread.
pub(crate) struct OwnedCommit {
    pub projection: String,
    pub from: Position,
    pub to: Position,
    pub changes: Vec<DocChange>,
}

impl OwnedCommit {
    pub(crate) fn of(c: &ProjectionCommit<'_>) -> Self {
        Self {
            projection: c.projection.to_string(),
            from: c.from,
            to: c.to,
            changes: c.changes.to_vec(),
        }
    }

    fn borrowed(&self) -> ProjectionCommit<'_> {
        ProjectionCommit {
            projection: &self.projection,
            from: self.from,
            to: self.to,
            changes: &self.changes,
        }
    }
}

/// Opens the writer's connection to the database file at `path` with the store's settings
/// (the pool has created the file, set WAL and run the migrations already).
pub(crate) fn connect(path: &Path, synchronous: &str) -> Result<Connection, LogError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let synchronous = match synchronous {
        "full" => "FULL",
        "extra" => "EXTRA",
        _ => "NORMAL",
    };
    // journal_mode is a property of the file (WAL, set by the pool); the rest are per connection,
    // as `crate::sqlite::connect_options` sets them on the pool's.
    let cache_size = WRITER_CACHE_SIZE;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
         PRAGMA cache_size = {cache_size}; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;"
    ))?;
    Ok(conn)
}

/// Starts the writer thread; it runs until every sender of `jobs` is gone.
pub(crate) fn spawn(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    head_tx: Arc<watch::Sender<Position>>,
    clock: Arc<dyn Clock>,
) -> Result<(), LogError> {
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || run(conn, jobs, &head_tx, clock.as_ref()))
        .map_err(|e| LogError::Io(e.to_string()))?;
    Ok(())
}

fn run(
    mut conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    head_tx: &watch::Sender<Position>,
    clock: &dyn Clock,
) {
    // Jobs other than appends, in the order they came, waiting for their turn.
    let mut deferred: VecDeque<Job> = VecDeque::new();
    // A group of appends just ran: the oldest deferred job goes next, so appends never starve
    // a commit.
    let mut owed = false;
    loop {
        let Some(job) = next_job(&mut jobs, &mut deferred, &mut owed) else {
            return;
        };
        let started = std::time::Instant::now();
        let (kind, items) = match job {
            Job::Append(first) => {
                // Every append waiting joins the group, those queued behind a commit too (a
                // submission waits for its append, a projector's commit only delays how soon
                // views show it); other jobs keep their order for their turn.
                let mut appends = vec![first];
                while appends.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(Job::Append(r)) => appends.push(r),
                        Ok(other) => deferred.push_back(other),
                        Err(_) => break,
                    }
                }
                let items = appends.len();
                let result = write_group(&mut conn, &appends, clock.now());
                group::deliver(appends, result, |head| {
                    head_tx.send_replace(head);
                });
                owed = true;
                ("append", items)
            }
            Job::Commit {
                set,
                commits,
                reply,
            } => {
                let items = commits.iter().map(|c| c.changes.len()).sum();
                let _ = reply.send(commit_many(&mut conn, set, &commits));
                ("commit", items)
            }
            Job::Clear {
                set,
                projection,
                reply,
            } => {
                let statements = [
                    format!("DELETE FROM {} WHERE projection = ?1", set.docs_table()),
                    format!(
                        "DELETE FROM {} WHERE projection = ?1",
                        set.checkpoints_table()
                    ),
                ];
                let _ = reply.send(script(&mut conn, &statements, &projection));
                ("clear", 0)
            }
            Job::Promote { projection, reply } => {
                let statements = [
                    "DELETE FROM rm_live_docs WHERE projection = ?1",
                    "DELETE FROM rm_live_checkpoints WHERE projection = ?1",
                    "INSERT INTO rm_live_docs SELECT * FROM rm_rebuild_docs WHERE projection = ?1",
                    "INSERT INTO rm_live_checkpoints SELECT * FROM rm_rebuild_checkpoints WHERE projection = ?1",
                    "DELETE FROM rm_rebuild_docs WHERE projection = ?1",
                    "DELETE FROM rm_rebuild_checkpoints WHERE projection = ?1",
                ];
                let _ = reply.send(script(&mut conn, &statements, &projection));
                ("promote", 0)
            }
        };
        // Everything queued behind a job waits as long as it runs: the slow ones are said.
        let took = started.elapsed();
        if took >= SLOW_JOB {
            tracing::debug!(
                kind,
                items,
                took_ms = took.as_secs_f64() * 1e3,
                "slow writer job"
            );
        }
    }
}

/// The writer's next job: the oldest deferred one if a group of appends just ran, else an
/// append waiting on the channel (other jobs met on the way are deferred), else the oldest
/// deferred job, else whatever comes next. `None` once every sender is gone and nothing waits.
fn next_job(
    jobs: &mut mpsc::Receiver<Job>,
    deferred: &mut VecDeque<Job>,
    owed: &mut bool,
) -> Option<Job> {
    if std::mem::take(owed)
        && let Some(job) = deferred.pop_front()
    {
        return Some(job);
    }
    while let Ok(job) = jobs.try_recv() {
        match job {
            Job::Append(r) => return Some(Job::Append(r)),
            other => deferred.push_back(other),
        }
    }
    deferred.pop_front().or_else(|| jobs.blocking_recv())
}

/// Statements each bound to one parameter, in one `BEGIN IMMEDIATE` transaction.
fn script(
    conn: &mut Connection,
    statements: &[impl AsRef<str>],
    param: &str,
) -> Result<(), LogError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for sql in statements {
        tx.execute(sql.as_ref(), [param])?;
    }
    tx.commit()?;
    Ok(())
}

const INSERT_EVENT: &str = "INSERT INTO events (position, stream_id, stream_version, event_id, \
     event_type, schema_version, data, metadata, recorded_at, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// One group in one `BEGIN IMMEDIATE` transaction: each append in a savepoint, so a refused
/// append (a version conflict, a mismatched re-append) undoes only itself; a database failure
/// fails the whole group. Returns each append's result and the new head if anything was written.
fn write_group(
    conn: &mut Connection,
    appends: &[AppendRequest],
    now: chrono::DateTime<Utc>,
) -> Result<GroupResult, LogError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (position, hash) = tx
        .prepare_cached("SELECT position, hash FROM log_head WHERE id = 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    let mut head = Head {
        position,
        hash: hash32(&hash, "log_head.hash")?,
    };
    let start = head.position;
    let mut results = Vec::with_capacity(appends.len());
    for request in appends {
        tx.prepare_cached("SAVEPOINT append")?.execute([])?;
        let result = append_one(&tx, &mut head, request, now);
        // The transaction may be gone (I/O, a full disk): every append of the group fails
        // (dropping `tx` rolls back).
        if let Err(e @ LogError::Sqlite(_)) = result {
            return Err(e);
        }
        if result.is_err() {
            tx.prepare_cached("ROLLBACK TO append")?.execute([])?;
        }
        tx.prepare_cached("RELEASE append")?.execute([])?;
        results.push(result);
    }
    if head.position == start {
        tx.rollback()?;
        return Ok((results, None));
    }
    tx.prepare_cached("UPDATE log_head SET position = ?1, hash = ?2 WHERE id = 1")?
        .execute(params![head.position, &head.hash[..]])?;
    tx.commit()?;
    Ok((results, Some(head.position)))
}

/// One append inside the group's transaction and its savepoint; moves `head` on success.
fn append_one(
    tx: &Connection,
    head: &mut Head,
    request: &AppendRequest,
    now: chrono::DateTime<Utc>,
) -> Result<AppendOutcome, LogError> {
    let (stream, events) = (&request.stream, &request.events);
    let first = events.first().ok_or(LogError::EmptyAppend)?;
    let (current, seen) = tx
        .prepare_cached(
            "SELECT (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?1), \
                    EXISTS (SELECT 1 FROM events WHERE event_id = ?2)",
        )?
        .query_row(
            params![stream.as_str(), &first.event_id.as_bytes()[..]],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
        )?;
    // Idempotent re-append: if the first id is stored, the whole batch must be.
    if seen {
        return check_reappend(stream, events, &events_by_id(tx, events)?);
    }
    request.expected.check(stream, current)?;
    let rows = prepare_rows(*head, stream, current, events, now)?;
    let mut insert = tx.prepare_cached(INSERT_EVENT)?;
    for r in &rows {
        let inserted = insert.execute(params![
            r.position,
            stream.as_str(),
            r.stream_version,
            &r.event.event_id.as_bytes()[..],
            r.event.event_type,
            r.event.schema_version,
            r.data,
            r.metadata,
            r.recorded_at_micros,
            &r.prev_hash[..],
            &r.hash[..],
        ]);
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                // Some ids of the batch are stored and some are not: undo this append's rows,
                // then refuse it with what is stored.
                drop(insert);
                tx.prepare_cached("ROLLBACK TO append")?.execute([])?;
                return check_reappend(stream, events, &events_by_id(tx, events)?);
            }
            Err(e) => return Err(e.into()),
        }
    }
    appended(head, &rows)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// The stored events among `events`' ids, in position order.
fn events_by_id(tx: &Connection, events: &[NewEvent]) -> Result<Vec<RecordedEvent>, LogError> {
    let mut select = tx.prepare_cached(crate::sqlite::BY_ID_SQL)?;
    let mut stored = Vec::new();
    for event in events {
        let row = select
            .query_row([&event.event_id.as_bytes()[..]], Stored::from_row)
            .optional()?;
        if let Some(row) = row {
            stored.push(row.decode()?);
        }
    }
    stored.sort_by_key(|e| e.position);
    Ok(stored)
}

/// An `events` row as SQLite gives it.
pub(crate) struct Stored {
    position: i64,
    stream_id: String,
    stream_version: i64,
    event_id: Vec<u8>,
    event_type: String,
    schema_version: i32,
    data: String,
    metadata: String,
    recorded_at: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl Stored {
    /// A row selected with `crate::sqlite`'s event columns, in their order.
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            position: r.get(0)?,
            stream_id: r.get(1)?,
            stream_version: r.get(2)?,
            event_id: r.get(3)?,
            event_type: r.get(4)?,
            schema_version: r.get(5)?,
            data: r.get(6)?,
            metadata: r.get(7)?,
            recorded_at: r.get(8)?,
            prev_hash: r.get(9)?,
            hash: r.get(10)?,
        })
    }

    pub(crate) fn decode(self) -> Result<RecordedEvent, LogError> {
        let recorded_at = crate::recorded_at(self.recorded_at)?;
        let event_id = Uuid::from_slice(&self.event_id).map_err(|_| {
            LogError::Corrupt(format!(
                "event_id at position {} is not 16 bytes",
                self.position
            ))
        })?;
        Ok(RecordedEvent {
            position: self.position,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            data: self.data,
            metadata: self.metadata,
            recorded_at,
            prev_hash: hash32(&self.prev_hash, "prev_hash")?,
            hash: hash32(&self.hash, "hash")?,
        })
    }
}

/// Several projections' changes and checkpoints in one transaction (see
/// [`crate::ReadStore::commit_many`]).
fn commit_many(
    conn: &mut Connection,
    set: ModelSet,
    commits: &[OwnedCommit],
) -> Result<(), LogError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (docs, cps) = (set.docs_table(), set.checkpoints_table());
    let mut found = HashMap::with_capacity(commits.len());
    {
        let mut select =
            tx.prepare_cached(&format!("SELECT position FROM {cps} WHERE projection = ?1"))?;
        for c in commits {
            if let Some(position) = select
                .query_row([&c.projection], |r| r.get::<_, i64>(0))
                .optional()?
            {
                found.insert(c.projection.clone(), position);
            }
        }
    }
    let borrowed: Vec<ProjectionCommit<'_>> = commits.iter().map(OwnedCommit::borrowed).collect();
    crate::readstore::check_checkpoints(&borrowed, &found)?;
    {
        let mut put = tx.prepare_cached(&format!(
            "INSERT INTO {docs} (projection, collection, key, doc) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (projection, collection, key) DO UPDATE SET doc = excluded.doc"
        ))?;
        let mut delete = tx.prepare_cached(&format!(
            "DELETE FROM {docs} WHERE projection = ?1 AND collection = ?2 AND key = ?3"
        ))?;
        let mut checkpoint = tx.prepare_cached(&format!(
            "INSERT INTO {cps} (projection, position) VALUES (?1, ?2) \
             ON CONFLICT (projection) DO UPDATE SET position = excluded.position"
        ))?;
        for c in commits {
            for change in &c.changes {
                match change {
                    DocChange::Put {
                        collection,
                        key,
                        doc,
                    } => put.execute(params![c.projection, collection, key, doc])?,
                    DocChange::Delete { collection, key } => {
                        delete.execute(params![c.projection, collection, key])?
                    }
                };
            }
            checkpoint.execute(params![c.projection, c.to])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Sends a job and waits for its answer; a stopped writer is an error, never a hang.
pub(crate) async fn ask<T>(
    jobs: &mpsc::Sender<Job>,
    job: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Job,
) -> Result<T, LogError> {
    let (reply, answer) = oneshot::channel();
    jobs.send(job(reply)).await.map_err(|_| group::stopped())?;
    answer.await.map_err(|_| group::stopped())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(stream: &str) -> Job {
        let (reply, _) = oneshot::channel();
        Job::Append(AppendRequest {
            stream: crate::StreamId::new(stream).unwrap_or_else(|e| panic!("{e}")),
            expected: crate::ExpectedVersion::Any,
            events: Vec::new(),
            reply,
        })
    }

    fn promote(projection: &str) -> Job {
        let (reply, _) = oneshot::channel();
        Job::Promote {
            projection: projection.into(),
            reply,
        }
    }

    /// What a job is, to compare orders.
    fn name(job: &Job) -> String {
        match job {
            Job::Append(r) => format!("append {}", r.stream),
            Job::Promote { projection, .. } => format!("promote {projection}"),
            Job::Commit { .. } => "commit".into(),
            Job::Clear { projection, .. } => format!("clear {projection}"),
        }
    }

    #[test]
    fn appends_go_before_queued_jobs_which_keep_their_order_and_get_a_turn_after_each_group() {
        let (tx, mut rx) = mpsc::channel(16);
        for job in [promote("p1"), promote("p2"), append("s-1"), promote("p3")] {
            tx.try_send(job).unwrap_or_else(|_| panic!("queue full"));
        }
        let mut deferred = VecDeque::new();
        let mut owed = false;
        // The append waiting behind two other jobs goes first; those two wait, in order.
        let first = next_job(&mut rx, &mut deferred, &mut owed).map(|j| name(&j));
        assert_eq!(first.as_deref(), Some("append s-1"));
        // A group ran: the oldest waiting job is owed its turn, even with an append queued.
        owed = true;
        tx.try_send(append("s-2"))
            .unwrap_or_else(|_| panic!("queue full"));
        let second = next_job(&mut rx, &mut deferred, &mut owed).map(|j| name(&j));
        assert_eq!(second.as_deref(), Some("promote p1"));
        // Not owed: the append again, then the others in the order they came.
        drop(tx);
        let rest: Vec<String> = std::iter::from_fn(|| next_job(&mut rx, &mut deferred, &mut owed))
            .map(|j| name(&j))
            .collect();
        assert_eq!(
            rest,
            ["append s-2", "promote p2", "promote p3"]
                .map(String::from)
                .to_vec()
        );
    }
}
