//! The SQLite backend: the embedded default.
//!
//! WAL mode, one in-process writer at a time (a fair async mutex in front of `BEGIN IMMEDIATE`),
//! any number of concurrent readers. Other processes (the `clusterra` CLI) take SQLite's own
//! write lock and wait on `busy_timeout`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::{Mutex, mpsc, watch};
use uuid::Uuid;

use crate::appended;
use crate::group::{self, AppendRequest, GroupResult, GroupWrite, Planned};
use crate::{
    AppendOutcome, Clock, DocChange, DocRow, EventLog, ExpectedVersion, Head, KeyRange, LogError,
    ModelSet, NewEvent, OpenOptions, Position, ProjectionCommit, ReadStore, RecordedEvent,
    StreamId, bind_row, check_reappend, hash32, prepare_rows,
};

const EVENT_COLUMNS: &str = "position, stream_id, stream_version, event_id, event_type, \
     schema_version, data, metadata, recorded_at, prev_hash, hash";

/// SQLite allows 32766 bound parameters per statement; 11 per row.
const ROWS_PER_INSERT: usize = 1_000;

/// How often an open store checkpoints its WAL into the database file, in the background. SQLite's
/// automatic checkpoint runs inside the commit that crosses the threshold — the group writer's,
/// holding the write lock — and stalls every append behind it for as long as copying ~40 MB
/// takes. A passive checkpoint from its own connection copies what no reader needs while appends
/// go on.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

pub struct SqliteStore {
    pool: SqlitePool,
    /// Held by the group writer and by read-model commits: one writer at a time in-process.
    write_lock: Arc<Mutex<()>>,
    head_tx: Arc<watch::Sender<Position>>,
    appends: mpsc::Sender<AppendRequest>,
    /// The WAL checkpoint task ([`CHECKPOINT_EVERY`]), stopped with the store.
    checkpointer: tokio::task::AbortHandle,
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
        .pragma("cache_size", "-65536")
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
        let connect = connect_options(&options.url, &options.sqlite_synchronous)?
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .min_connections(1)
            .connect_with(connect)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let head_tx = Arc::new(watch::channel(head).0);
        let write_lock = Arc::new(Mutex::new(()));
        let checkpointer = tokio::spawn(checkpoint_wal(pool.clone())).abort_handle();
        let (appends, requests) = mpsc::channel(4 * group::MAX_GROUP);
        tokio::spawn(group::run(
            SqliteWriter {
                pool: pool.clone(),
                write_lock: write_lock.clone(),
                head_tx: head_tx.clone(),
                clock,
            },
            requests,
        ));
        Ok(Self {
            pool,
            write_lock,
            head_tx,
            appends,
            checkpointer,
        })
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
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

async fn events_by_id(
    conn: &mut sqlx::SqliteConnection,
    ids: &[Uuid],
) -> Result<Vec<RecordedEvent>, LogError> {
    let mut q = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ("
    ));
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    q.push(") ORDER BY position");
    let rows = q.build().fetch_all(&mut *conn).await?;
    rows.iter().map(event_from_row).collect()
}

/// The SQLite side of group commit (`crate::group`): one `BEGIN IMMEDIATE` transaction per group,
/// under the store's write lock.
struct SqliteWriter {
    pool: SqlitePool,
    write_lock: Arc<Mutex<()>>,
    head_tx: Arc<watch::Sender<Position>>,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl GroupWrite for SqliteWriter {
    async fn write_group(&self, group: &[AppendRequest]) -> Result<GroupResult, LogError> {
        let _writer = self.write_lock.lock().await;
        write_group(&self.pool, group, self.clock.now()).await
    }

    fn moved(&self, head: Position) {
        self.head_tx.send_replace(head);
    }
}

/// Runs one group; returns each append's result and the new head if anything was written.
async fn write_group(
    pool: &SqlitePool,
    group: &[AppendRequest],
    now: chrono::DateTime<Utc>,
) -> Result<GroupResult, LogError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let head_row = sqlx::query("SELECT position, hash FROM log_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let mut head = Head {
        position: head_row.try_get("position")?,
        hash: hash32(head_row.try_get::<&[u8], _>("hash")?, "log_head.hash")?,
    };
    let start = head.position;
    if let Some(results) = append_group(&mut tx, &mut head, group, now).await? {
        return finish(tx, start, head, results).await;
    }
    let mut results = Vec::with_capacity(group.len());
    for request in group {
        // An append that writes with one INSERT needs no savepoint: its checks come before any
        // write, and SQLite undoes a failed statement by itself (a duplicate id). Longer appends
        // are wrapped in one, so a failure undoes only them.
        let savepoint = group.len() > 1 && request.events.len() > ROWS_PER_INSERT;
        if savepoint {
            sqlx::query("SAVEPOINT append").execute(&mut *tx).await?;
        }
        let result = append_one(&mut tx, &mut head, request, now).await;
        if savepoint {
            if result.is_err() {
                sqlx::query("ROLLBACK TO append").execute(&mut *tx).await?;
            }
            sqlx::query("RELEASE append").execute(&mut *tx).await?;
        } else if let Err(LogError::Database(e)) = result {
            // Without a savepoint a database failure (I/O, a full disk) may have ended the
            // transaction: fail the whole group; every append in it gets the error.
            return Err(LogError::Database(e));
        }
        results.push(result);
    }
    finish(tx, start, head, results).await
}

/// Moves the head row and commits, if anything was written.
async fn finish(
    mut tx: sqlx::Transaction<'_, Sqlite>,
    start: Position,
    head: Head,
    results: Vec<Result<AppendOutcome, LogError>>,
) -> Result<GroupResult, LogError> {
    if head.position == start {
        tx.rollback().await?;
        return Ok((results, None));
    }
    sqlx::query("UPDATE log_head SET position = ?, hash = ? WHERE id = 1")
        .bind(head.position)
        .bind(&head.hash[..])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((results, Some(head.position)))
}

/// A whole group in a few statements — whether any of its event ids is stored, every stream's
/// version, one multi-row insert — when nothing in it is unusual (as PostgreSQL's group path).
/// `None`, with nothing written, when an event id is stored already or repeats within the
/// group (an idempotent re-append: the append-at-a-time path sorts those out), when the group is
/// larger than one insert, or the insert meets a stored id; a version conflict refuses only its
/// own append, as on that path.
async fn append_group(
    conn: &mut sqlx::SqliteConnection,
    head: &mut Head,
    group: &[AppendRequest],
    now: chrono::DateTime<Utc>,
) -> Result<Option<Vec<Result<AppendOutcome, LogError>>>, LogError> {
    let ids: Vec<Uuid> = group
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
    // One insert only: SQLite undoes a failed statement by itself, so no savepoint is needed.
    if ids.len() > ROWS_PER_INSERT
        || distinct.len() != ids.len()
        || group.iter().any(|r| r.events.is_empty())
    {
        return Ok(None);
    }
    let mut q = QueryBuilder::<Sqlite>::new("SELECT 1 FROM events WHERE event_id IN (");
    let mut sep = q.separated(", ");
    for id in &ids {
        sep.push_bind(*id);
    }
    q.push(") LIMIT 1");
    if q.build().fetch_optional(&mut *conn).await?.is_some() {
        return Ok(None);
    }
    let mut q = QueryBuilder::<Sqlite>::new(
        "SELECT stream_id, MAX(stream_version) FROM events WHERE stream_id IN (",
    );
    let mut sep = q.separated(", ");
    for request in group {
        sep.push_bind(request.stream.as_str());
    }
    q.push(") GROUP BY stream_id");
    let versions: std::collections::HashMap<String, i64> = q
        .build_query_as::<(String, i64)>()
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
    let Planned { at, rows, results } = group::plan(*head, group, versions, now);
    if !rows.is_empty() {
        let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
        q.push_values(&rows, |b, (stream, r)| bind_row(b, stream, r));
        if let Err(e) = q.build().execute(&mut *conn).await {
            if is_unique_violation(&e) {
                return Ok(None);
            }
            return Err(e.into());
        }
    }
    *head = at;
    Ok(Some(results))
}

/// One append inside the group's transaction; moves `head` on success.
async fn append_one(
    conn: &mut sqlx::SqliteConnection,
    head: &mut Head,
    request: &AppendRequest,
    now: chrono::DateTime<Utc>,
) -> Result<AppendOutcome, LogError> {
    let (stream, events) = (&request.stream, &request.events);
    let first = events.first().ok_or(LogError::EmptyAppend)?;
    let state = sqlx::query(
        "SELECT (SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = ?) AS current, \
                EXISTS (SELECT 1 FROM events WHERE event_id = ?) AS seen",
    )
    .bind(stream.as_str())
    .bind(first.event_id)
    .fetch_one(&mut *conn)
    .await?;
    let ids = || events.iter().map(|e| e.event_id).collect::<Vec<Uuid>>();
    // Idempotent re-append: if the first id is stored, the whole batch must be.
    if state.try_get::<bool, _>("seen")? {
        let stored = events_by_id(conn, &ids()).await?;
        return check_reappend(stream, events, &stored);
    }
    let current: i64 = state.try_get("current")?;
    request.expected.check(stream, current)?;

    let rows = prepare_rows(*head, stream, current, events, now)?;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
        q.push_values(chunk, |b, r| bind_row(b, stream.as_str(), r));
        if let Err(e) = q.build().execute(&mut *conn).await {
            if is_unique_violation(&e) {
                // Some ids of the batch are stored and some are not: refuse the batch. (The
                // caller rolls back to the savepoint; reading here sees the stored ones.)
                let stored = events_by_id(conn, &ids()).await?;
                return check_reappend(stream, events, &stored);
            }
            return Err(e.into());
        }
    }
    appended(head, &rows)
}

/// Decodes a row selected with [`EVENT_COLUMNS`], by column index (name lookups cost ~20% of a
/// replay).
pub(crate) fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent, LogError> {
    let micros: i64 = row.try_get(8)?;
    let recorded_at = Utc
        .timestamp_micros(micros)
        .single()
        .ok_or_else(|| LogError::Corrupt(format!("recorded_at {micros} is out of range")))?;
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

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, LogError> {
        group::submit(&self.appends, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND stream_version > ? \
             ORDER BY stream_version LIMIT ?"
        ))
        .bind(stream.as_str())
        .bind(after_version)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        ))
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
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
        let sql = format!(
            "SELECT position FROM {} WHERE projection = ?",
            set.checkpoints_table()
        );
        let pos: Option<i64> = sqlx::query_scalar(&sql)
            .bind(projection)
            .fetch_optional(&self.pool)
            .await?;
        Ok(pos.unwrap_or(0))
    }

    async fn get_doc(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<String>, LogError> {
        let sql = format!(
            "SELECT doc FROM {} WHERE projection = ? AND collection = ? AND key = ?",
            set.docs_table()
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(projection)
            .bind(collection)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn commit_many(
        &self,
        set: ModelSet,
        commits: &[ProjectionCommit<'_>],
    ) -> Result<(), LogError> {
        if commits.is_empty() {
            return Ok(());
        }
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let cp_table = set.checkpoints_table();
        // Every checkpoint in one query.
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT projection, position FROM {cp_table} WHERE projection IN ("
        ));
        let mut sep = q.separated(", ");
        for c in commits {
            sep.push_bind(c.projection);
        }
        q.push(")");
        let found: std::collections::HashMap<String, i64> = q
            .build_query_as::<(String, i64)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        crate::readstore::check_checkpoints(commits, &found)?;
        let docs = set.docs_table();
        // Puts as multi-row upserts (4 parameters a row, under SQLite's 32,766).
        let puts: Vec<(&str, &str, &str, &str)> = commits
            .iter()
            .flat_map(|c| {
                c.changes.iter().filter_map(move |change| match change {
                    DocChange::Put {
                        collection,
                        key,
                        doc,
                    } => Some((
                        c.projection,
                        collection.as_str(),
                        key.as_str(),
                        doc.as_str(),
                    )),
                    DocChange::Delete { .. } => None,
                })
            })
            .collect();
        for chunk in puts.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO {docs} (projection, collection, key, doc) "
            ));
            q.push_values(chunk, |mut b, (projection, collection, key, doc)| {
                b.push_bind(*projection)
                    .push_bind(*collection)
                    .push_bind(*key)
                    .push_bind(*doc);
            });
            q.push(" ON CONFLICT (projection, collection, key) DO UPDATE SET doc = excluded.doc");
            q.build().execute(&mut *tx).await?;
        }
        let deletes: Vec<(&str, &str, &str)> = commits
            .iter()
            .flat_map(|c| {
                c.changes.iter().filter_map(move |change| match change {
                    DocChange::Delete { collection, key } => {
                        Some((c.projection, collection.as_str(), key.as_str()))
                    }
                    DocChange::Put { .. } => None,
                })
            })
            .collect();
        for chunk in deletes.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "DELETE FROM {docs} WHERE (projection, collection, key) IN ("
            ));
            q.push_values(chunk, |mut b, (projection, collection, key)| {
                b.push_bind(*projection)
                    .push_bind(*collection)
                    .push_bind(*key);
            });
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO {cp_table} (projection, position) "));
        q.push_values(commits, |mut b, c| {
            b.push_bind(c.projection).push_bind(c.to);
        });
        q.push(" ON CONFLICT (projection) DO UPDATE SET position = excluded.position");
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
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
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for table in [set.docs_table(), set.checkpoints_table()] {
            sqlx::query(&format!("DELETE FROM {table} WHERE projection = ?"))
                .bind(projection)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn promote(&self, projection: &str) -> Result<(), LogError> {
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for sql in [
            "DELETE FROM rm_live_docs WHERE projection = ?",
            "DELETE FROM rm_live_checkpoints WHERE projection = ?",
            "INSERT INTO rm_live_docs SELECT * FROM rm_rebuild_docs WHERE projection = ?",
            "INSERT INTO rm_live_checkpoints SELECT * FROM rm_rebuild_checkpoints WHERE projection = ?",
            "DELETE FROM rm_rebuild_docs WHERE projection = ?",
            "DELETE FROM rm_rebuild_checkpoints WHERE projection = ?",
        ] {
            sqlx::query(sql).bind(projection).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn doc_from_row(row: &SqliteRow) -> Result<DocRow, LogError> {
    Ok(DocRow {
        collection: row.try_get("collection")?,
        key: row.try_get("key")?,
        doc: row.try_get("doc")?,
    })
}
