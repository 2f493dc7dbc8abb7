//! The SQLite backend: the embedded default.
//!
//! WAL mode. Every write of the store — groups of appends, projector commits — goes through one
//! writer thread with a connection of its own (`crate::sqlite_writer`: one hand-off per
//! transaction). Short reads (the next events of a stream or of the log, one document, a
//! checkpoint) run on the calling thread (`crate::sqlite_read`); other reads, and the rest of a
//! long one, use the sqlx pool, any number at once.
//! Other processes (the `clusterra` CLI) take SQLite's own write lock and wait on
//! `busy_timeout`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio::sync::{mpsc, watch};

use crate::group;
use crate::sqlite_read::{INLINE_ROWS, Readers};
use crate::sqlite_writer::{self, Job, OwnedCommit};
use crate::{
    AppendOutcome, Clock, DocRow, EventLog, ExpectedVersion, Head, KeyRange, LogError, ModelSet,
    NewEvent, OpenOptions, Position, ProjectionCommit, ReadStore, RecordedEvent, StreamId, hash32,
};

/// The `events` columns in the order [`event_from_row`] and `sqlite_writer::Stored::from_row`
/// read them, for `concat!` into the store's statements.
macro_rules! event_columns {
    () => {
        "position, stream_id, stream_version, event_id, event_type, schema_version, data, \
         metadata, recorded_at, prev_hash, hash"
    };
}

/// A stream's events after a version, oldest first, at most a number (rusqlite and sqlx alike).
pub(crate) const STREAM_SQL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE stream_id = ?1 AND stream_version > ?2 ORDER BY stream_version LIMIT ?3"
);

/// The log's events after a position, in order, at most a number.
pub(crate) const ALL_SQL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
);

/// One event by its id.
pub(crate) const BY_ID_SQL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE event_id = ?1"
);

/// Every pool connection's page cache: 64 MiB (negative: KiB). The writer thread's connection
/// keeps a smaller one (`crate::sqlite_writer::WRITER_CACHE_SIZE`, and why).
pub(crate) const CACHE_SIZE: &str = "-65536";

/// How often an open store checkpoints its WAL into the database file, in the background. SQLite's
/// automatic checkpoint runs inside the commit that crosses the threshold — the group writer's,
/// holding the write lock — and stalls every append behind it for as long as copying ~40 MB
/// takes. A passive checkpoint from its own connection copies what no reader needs while appends
/// go on.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A checkpoint that takes this long is said in the debug log, with how much it copied.
const SLOW_CHECKPOINT: Duration = Duration::from_millis(20);

pub struct SqliteStore {
    pool: SqlitePool,
    head_tx: Arc<watch::Sender<Position>>,
    /// The writer thread's queue (it stops when the store, the last sender, drops).
    jobs: mpsc::Sender<Job>,
    /// The WAL checkpoint task ([`CHECKPOINT_EVERY`]), stopped with the store.
    checkpointer: tokio::task::AbortHandle,
    /// Point reads on the calling thread.
    readers: Readers,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// The connection settings of the log: WAL, the given `synchronous` level, a 10 s busy timeout,
/// and a WAL of up to ~40 MB between checkpoints (fewer checkpoint fsyncs on busy logs). A
/// store opened by [`SqliteStore::open`] turns the automatic checkpoint off on its own
/// connections and checkpoints from a task of its own instead (see [`CHECKPOINT_EVERY`]).
/// Public so benchmarks measure the raw database limit with exactly the same settings.
pub fn connect_options(url: &str, synchronous: &str) -> Result<SqliteConnectOptions, LogError> {
    let synchronous = match synchronous {
        "full" => SqliteSynchronous::Full,
        "extra" => SqliteSynchronous::Extra,
        _ => SqliteSynchronous::Normal,
    };
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .pragma("cache_size", CACHE_SIZE)
        .pragma("temp_store", "memory")
        .pragma("wal_autocheckpoint", "10000"))
}

impl SqliteStore {
    /// The connection pool (for adapters with their own tables in this database).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Opens `sqlite://PATH` (created if missing) and runs the migrations.
    pub async fn open(options: &OpenOptions, clock: Arc<dyn Clock>) -> Result<Self, LogError> {
        // The writer and the readers open the file by its path: an in-memory database would be
        // a different one on each of their connections.
        if options.url.contains(":memory:") || options.url.contains("mode=memory") {
            return Err(LogError::UnsupportedUrl(options.url.clone()));
        }
        let connect = connect_options(&options.url, &options.sqlite_synchronous)?
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .min_connections(1)
            .connect_with(connect.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let head_tx = Arc::new(watch::channel(head).0);
        let path = connect.get_filename().to_path_buf();
        let conn = sqlite_writer::connect(&path, &options.sqlite_synchronous)?;
        let (jobs, queue) = mpsc::channel(4 * group::MAX_GROUP);
        sqlite_writer::spawn(conn, queue, head_tx.clone(), clock)?;
        let checkpointer = tokio::spawn(checkpoint_wal(pool.clone())).abort_handle();
        Ok(Self {
            pool,
            head_tx,
            jobs,
            checkpointer,
            readers: Readers::new(&path),
        })
    }

    /// Completes a read of up to `limit` events whose first [`INLINE_ROWS`] were read on the
    /// calling thread (`first`): when those were all there was room for and more were asked
    /// for, `rest(last event, how many more)` reads the rest from the pool, off this thread.
    async fn rest_from_pool<'q>(
        &self,
        mut first: Vec<RecordedEvent>,
        limit: usize,
        rest: impl FnOnce(
            &RecordedEvent,
            i64,
        )
            -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let last = match first.last() {
            Some(last) if first.len() == INLINE_ROWS && limit > INLINE_ROWS => last,
            _ => return Ok(first),
        };
        let rows = rest(last, (limit - INLINE_ROWS) as i64)
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            first.push(event_from_row(row)?);
        }
        Ok(first)
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] while the pool is open (passive: it never
/// waits for a reader or a writer).
async fn checkpoint_wal(pool: SqlitePool) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if pool.is_closed() {
            return;
        }
        let started = std::time::Instant::now();
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            // Busy, the WAL's frames, and how many of them are now in the database file.
            Ok((_, frames, copied)) => {
                let took = started.elapsed();
                if took >= SLOW_CHECKPOINT {
                    tracing::debug!(
                        frames,
                        copied,
                        took_ms = took.as_secs_f64() * 1e3,
                        "slow WAL checkpoint"
                    );
                }
            }
            Err(e) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
            }
        }
    }
}

/// Decodes a row selected with `event_columns!`, by column index (name lookups cost ~20% of a
/// replay).
pub(crate) fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent, LogError> {
    let micros: i64 = row.try_get(8)?;
    let recorded_at = crate::recorded_at(micros)?;
    Ok(RecordedEvent {
        position: row.try_get(0)?,
        stream_id: row.try_get(1)?,
        stream_version: row.try_get(2)?,
        event_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        schema_version: row.try_get(5)?,
        data: row.try_get(6)?,
        metadata: row.try_get(7)?,
        recorded_at,
        prev_hash: hash32(row.try_get::<&[u8], _>(9)?, "prev_hash")?,
        hash: hash32(row.try_get::<&[u8], _>(10)?, "hash")?,
    })
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, LogError> {
        group::submit(&self.jobs, Job::Append, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        // Most streams are a job's few events: read on this thread.
        let first = self.readers.stream(stream, after_version, limit)?;
        self.rest_from_pool(first, limit, |last, more| {
            sqlx::query(STREAM_SQL)
                .bind(stream.as_str())
                .bind(last.stream_version)
                .bind(more)
        })
        .await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        // The projectors' and the feed's next few events: read on this thread.
        let first = self.readers.all(after, limit)?;
        self.rest_from_pool(first, limit, |last, more| {
            sqlx::query(ALL_SQL).bind(last.position).bind(more)
        })
        .await
    }

    async fn head(&self) -> Result<Head, LogError> {
        let row = sqlx::query("SELECT position, hash FROM log_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let position: i64 = row.try_get("position")?;
        self.head_tx.send_if_modified(|p| {
            let moved = position > *p;
            if moved {
                *p = position;
            }
            moved
        });
        Ok(Head {
            position,
            hash: hash32(row.try_get::<&[u8], _>("hash")?, "log_head.hash")?,
        })
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head_tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[async_trait]
impl ReadStore for SqliteStore {
    async fn checkpoint(&self, set: ModelSet, projection: &str) -> Result<Position, LogError> {
        self.readers.checkpoint(set, projection)
    }

    async fn get_doc(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<String>, LogError> {
        self.readers.doc(set, projection, collection, key)
    }

    async fn commit_many(
        &self,
        set: ModelSet,
        commits: &[ProjectionCommit<'_>],
    ) -> Result<(), LogError> {
        if commits.is_empty() {
            return Ok(());
        }
        let commits = commits.iter().map(OwnedCommit::of).collect();
        sqlite_writer::ask(&self.jobs, |reply| Job::Commit {
            set,
            commits,
            reply,
        })
        .await
    }

    async fn list_docs(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocRow>, LogError> {
        let range = KeyRange {
            after: after_key,
            limit,
            ..KeyRange::default()
        };
        self.list_docs_between(set, projection, collection, range)
            .await
    }

    async fn list_docs_between(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        range: KeyRange<'_>,
    ) -> Result<Vec<DocRow>, LogError> {
        // Keys are printable text; U+10FFFF sorts after every one of them.
        let sql = format!(
            "SELECT collection, key, doc FROM {} WHERE projection = ? AND collection = ? \
             AND key > ? AND key < ? ORDER BY key {} LIMIT ?",
            set.docs_table(),
            if range.descending { "DESC" } else { "ASC" }
        );
        let rows = sqlx::query(&sql)
            .bind(projection)
            .bind(collection)
            .bind(range.after.unwrap_or(""))
            .bind(range.before.unwrap_or("\u{10FFFF}"))
            .bind(range.limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(doc_from_row).collect()
    }

    async fn dump(
        &self,
        set: ModelSet,
        projection: &str,
    ) -> Result<(Position, Vec<DocRow>), LogError> {
        // A read transaction gives one snapshot for the checkpoint and the documents.
        let mut tx = self.pool.begin().await?;
        let pos: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT position FROM {} WHERE projection = ?",
            set.checkpoints_table()
        ))
        .bind(projection)
        .fetch_optional(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT collection, key, doc FROM {} WHERE projection = ? ORDER BY collection, key",
            set.docs_table()
        ))
        .bind(projection)
        .fetch_all(&mut *tx)
        .await?;
        let docs = rows.iter().map(doc_from_row).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok((pos.unwrap_or(0), docs))
    }

    async fn clear(&self, set: ModelSet, projection: &str) -> Result<(), LogError> {
        let projection = projection.to_string();
        sqlite_writer::ask(&self.jobs, |reply| Job::Clear {
            set,
            projection,
            reply,
        })
        .await
    }

    async fn promote(&self, projection: &str) -> Result<(), LogError> {
        let projection = projection.to_string();
        sqlite_writer::ask(&self.jobs, |reply| Job::Promote { projection, reply }).await
    }
}

fn doc_from_row(row: &SqliteRow) -> Result<DocRow, LogError> {
    Ok(DocRow {
        collection: row.try_get("collection")?,
        key: row.try_get("key")?,
        doc: row.try_get("doc")?,
    })
}
