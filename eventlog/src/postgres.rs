//! The PostgreSQL backend: production.
//!
//! Every append takes the row lock on `log_head` (`SELECT … FOR UPDATE`) before it picks
//! positions, and keeps it until its transaction commits. PostgreSQL makes a transaction visible
//! before it releases its locks, so the next appender can only pick position N+1 once N is
//! visible: positions become visible in strictly increasing order, with no gaps, and a reader
//! that reads "everything above the last position I saw" never skips a late commit. The price is
//! that appends are serialised; group commit (`crate::group`) makes each holder of the lock write
//! every append waiting in this process, with one commit. Figures in `docs/performance.md`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Postgres, QueryBuilder, Row};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
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

/// PostgreSQL allows 65535 bound parameters per statement; 11 per row.
const ROWS_PER_INSERT: usize = 1_000;

pub struct PgStore {
    pool: PgPool,
    head_tx: Arc<watch::Sender<Position>>,
    listener: JoinHandle<()>,
    appends: mpsc::Sender<AppendRequest>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit())
}

impl PgStore {
    /// The connection pool (for adapters with their own tables in this database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connects, creates the schema if one is named, and runs the migrations.
    pub async fn open(options: &OpenOptions, clock: Arc<dyn Clock>) -> Result<Self, LogError> {
        let mut connect: PgConnectOptions = options.url.parse()?;
        let schema = options.pg_schema.clone().unwrap_or_else(|| "public".into());
        if !valid_schema(&schema) {
            return Err(LogError::UnsupportedUrl(format!(
                "{} (schema {schema:?}: use lowercase letters, digits and _)",
                options.url
            )));
        }
        if schema != "public" {
            let mut conn = connect.connect().await?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let head_tx = Arc::new(watch::channel(head).0);
        let channel = format!("clusterra_events_{schema}");
        let listener = tokio::spawn(listen(pool.clone(), channel.clone(), head_tx.clone()));
        let (appends, requests) = mpsc::channel(4 * group::MAX_GROUP);
        tokio::spawn(group::run(
            PgWriter {
                pool: pool.clone(),
                channel,
                head_tx: head_tx.clone(),
                clock,
            },
            requests,
        ));
        Ok(Self {
            pool,
            head_tx,
            listener,
            appends,
        })
    }
}

/// Follows NOTIFYs from every process appending to this database and moves the head watch.
/// Reconnects after errors; subscribers also poll, so a gap in notifications only adds latency.
async fn listen(pool: PgPool, channel: String, head_tx: Arc<watch::Sender<Position>>) {
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            loop {
                let note = listener.recv().await?;
                if let Ok(position) = note.payload().parse::<i64>() {
                    head_tx.send_if_modified(|p| {
                        let moved = position > *p;
                        if moved {
                            *p = position;
                        }
                        moved
                    });
                }
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, channel, "event notification listener failed; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent, LogError> {
    let micros: i64 = row.try_get("recorded_at")?;
    let recorded_at = crate::recorded_at(micros)?;
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        data: row.try_get("data")?,
        metadata: row.try_get("metadata")?,
        recorded_at,
        prev_hash: hash32(row.try_get::<&[u8], _>("prev_hash")?, "prev_hash")?,
        hash: hash32(row.try_get::<&[u8], _>("hash")?, "hash")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The PostgreSQL side of group commit (`crate::group`): one transaction per group, holding the
/// `log_head` row lock (see the module docs), a savepoint per append, one NOTIFY, one commit.
struct PgWriter {
    pool: PgPool,
    channel: String,
    head_tx: Arc<watch::Sender<Position>>,
    clock: Arc<dyn Clock>,
}

/// Why one append of a group did not go in.
enum Refused {
    /// Some of its event ids are stored already: an idempotent re-append, or a mixed batch.
    Stored,
    Log(LogError),
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Refused::Log(e.into())
    }
}

impl From<LogError> for Refused {
    fn from(e: LogError) -> Self {
        Refused::Log(e)
    }
}

async fn events_by_id_in(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
) -> Result<Vec<RecordedEvent>, LogError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1) ORDER BY position"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// One append inside the group's transaction; moves `head` on success.
async fn append_one(
    conn: &mut sqlx::PgConnection,
    head: &mut Head,
    request: &AppendRequest,
    now: chrono::DateTime<Utc>,
) -> Result<AppendOutcome, Refused> {
    let (stream, events) = (&request.stream, &request.events);
    let first = events.first().ok_or(LogError::EmptyAppend)?;
    let seen: Option<i64> = sqlx::query_scalar("SELECT position FROM events WHERE event_id = $1")
        .bind(first.event_id)
        .fetch_optional(&mut *conn)
        .await?;
    if seen.is_some() {
        return Err(Refused::Stored);
    }
    let current: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(stream_version), 0)::BIGINT FROM events WHERE stream_id = $1",
    )
    .bind(stream.as_str())
    .fetch_one(&mut *conn)
    .await?;
    request.expected.check(stream, current)?;
    let rows = prepare_rows(*head, stream, current, events, now)?;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Postgres>::new(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
        q.push_values(chunk, |b, r| bind_row(b, stream.as_str(), r));
        if let Err(e) = q.build().execute(&mut *conn).await {
            if is_unique_violation(&e) {
                return Err(Refused::Stored);
            }
            return Err(e.into());
        }
    }
    Ok(appended(head, &rows)?)
}

/// A whole group in a few statements — whether any of its event ids is stored, every stream's
/// version, one multi-row insert — when nothing in it is unusual. `None`, with nothing written,
/// when an event id is stored already or repeats within the group (an idempotent re-append: the
/// append-at-a-time path sorts those out) or the insert meets a stored id; a version conflict
/// refuses only its own append, as on that path.
async fn append_group(
    conn: &mut sqlx::PgConnection,
    head: &mut Head,
    group: &[AppendRequest],
    now: chrono::DateTime<Utc>,
) -> Result<Option<Vec<Result<AppendOutcome, LogError>>>, LogError> {
    let ids: Vec<Uuid> = group
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.event_id))
        .collect();
    let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
    if distinct.len() != ids.len() || group.iter().any(|r| r.events.is_empty()) {
        return Ok(None);
    }
    let stored: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM events WHERE event_id = ANY($1) LIMIT 1")
            .bind(&ids)
            .fetch_optional(&mut *conn)
            .await?;
    if stored.is_some() {
        return Ok(None);
    }
    let streams: Vec<&str> = group.iter().map(|r| r.stream.as_str()).collect();
    // One index probe per stream (the newest version on `(stream_id, stream_version)`), so the
    // cost is the group's size whatever the planner estimates. `stream_id = ANY($1) … GROUP BY`
    // was planned from an estimate of rows per stream, and with it the 100,000-job fill ran 5×
    // slower and poll cycles took up to 530 ms (docs/performance.md, session 25).
    let versions: std::collections::HashMap<String, i64> = sqlx::query_as(
        "SELECT s.stream_id, v.stream_version FROM unnest($1::text[]) AS s(stream_id) \
         CROSS JOIN LATERAL (SELECT stream_version FROM events e \
         WHERE e.stream_id = s.stream_id ORDER BY stream_version DESC LIMIT 1) v",
    )
    .bind(&streams)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let Planned { at, rows, results } = group::plan(*head, group, versions, now);
    sqlx::query("SAVEPOINT append_group")
        .execute(&mut *conn)
        .await?;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Postgres>::new(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
        q.push_values(chunk, |b, (stream, r)| bind_row(b, stream, r));
        if let Err(e) = q.build().execute(&mut *conn).await {
            if !is_unique_violation(&e) {
                // A database failure, not a clash of ids: the group fails, as on the other path.
                return Err(e.into());
            }
            sqlx::query("ROLLBACK TO SAVEPOINT append_group")
                .execute(&mut *conn)
                .await?;
            return Ok(None);
        }
    }
    sqlx::query("RELEASE SAVEPOINT append_group")
        .execute(&mut *conn)
        .await?;
    *head = at;
    Ok(Some(results))
}

#[async_trait]
impl GroupWrite for PgWriter {
    async fn write_group(&self, group: &[AppendRequest]) -> Result<GroupResult, LogError> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        // The log's single write lock, held until commit (see the module docs).
        let head_row = sqlx::query("SELECT position, hash FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let locked = started.elapsed();
        let out = self.write_locked(tx, &head_row, group).await;
        let took = started.elapsed();
        if took >= SLOW_GROUP {
            // Every append waiting for the lock waited this long: lock wait against the rest
            // tells another writer's hold from this group's own statements and commit.
            tracing::debug!(
                requests = group.len(),
                lock_ms = locked.as_secs_f64() * 1e3,
                took_ms = took.as_secs_f64() * 1e3,
                "slow PostgreSQL append group"
            );
        }
        out
    }

    fn moved(&self, head: Position) {
        self.head_tx.send_if_modified(|p| {
            let moved = head > *p;
            if moved {
                *p = head;
            }
            moved
        });
    }
}

/// An append group that takes this long, lock wait included, is said in the debug log.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(5);

impl PgWriter {
    /// Writes `group` in `tx`, which holds the log's write lock (`head_row` read under it).
    async fn write_locked(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
        head_row: &sqlx::postgres::PgRow,
        group: &[AppendRequest],
    ) -> Result<GroupResult, LogError> {
        let mut head = Head {
            position: head_row.try_get("position")?,
            hash: hash32(head_row.try_get::<&[u8], _>("hash")?, "log_head.hash")?,
        };
        let start = head.position;
        // Read under the lock, so `recorded_at` never goes backwards as positions grow.
        let now = self.clock.now();
        if let Some(results) = append_group(&mut tx, &mut head, group, now).await? {
            return self.finish(tx, start, head, results).await;
        }
        // A repeated or already stored event id, an empty request, or a clash on insert: each
        // request on its own, as they must be told apart (a retry's events are answered as
        // stored, a clash refused).
        tracing::debug!(
            requests = group.len(),
            "append group written one request at a time"
        );
        let mut results = Vec::with_capacity(group.len());
        for request in group {
            // Always a savepoint: an error aborts a PostgreSQL transaction until rolled back.
            sqlx::query("SAVEPOINT append").execute(&mut *tx).await?;
            let result = match append_one(&mut tx, &mut head, request, now).await {
                Ok(outcome) => Ok(outcome),
                Err(refused) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT append")
                        .execute(&mut *tx)
                        .await?;
                    match refused {
                        Refused::Stored => {
                            let ids: Vec<Uuid> =
                                request.events.iter().map(|e| e.event_id).collect();
                            let stored = events_by_id_in(&mut tx, &ids).await?;
                            check_reappend(&request.stream, &request.events, &stored)
                        }
                        Refused::Log(e) => Err(e),
                    }
                }
            };
            sqlx::query("RELEASE SAVEPOINT append")
                .execute(&mut *tx)
                .await?;
            results.push(result);
        }
        self.finish(tx, start, head, results).await
    }

    /// Moves the log's head to `head` and commits, or rolls back when nothing was written.
    async fn finish(
        &self,
        mut tx: sqlx::Transaction<'_, Postgres>,
        start: Position,
        head: Head,
        results: Vec<Result<AppendOutcome, LogError>>,
    ) -> Result<GroupResult, LogError> {
        if head.position == start {
            tx.rollback().await?;
            return Ok((results, None));
        }
        sqlx::query("UPDATE log_head SET position = $1, hash = $2 WHERE id = 1")
            .bind(head.position)
            .bind(&head.hash[..])
            .execute(&mut *tx)
            .await?;
        // Delivered to listeners when (and only if) the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(head.position.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((results, Some(head.position)))
    }
}

#[async_trait]
impl EventLog for PgStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, LogError> {
        group::submit(&self.appends, |r| r, stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 \
             ORDER BY stream_version LIMIT $3"
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
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
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
        Ok(Head {
            position: row.try_get("position")?,
            hash: hash32(row.try_get::<&[u8], _>("hash")?, "log_head.hash")?,
        })
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.head_tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

#[async_trait]
impl ReadStore for PgStore {
    async fn checkpoint(&self, set: ModelSet, projection: &str) -> Result<Position, LogError> {
        let sql = format!(
            "SELECT position FROM {} WHERE projection = $1",
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
            "SELECT doc FROM {} WHERE projection = $1 AND collection = $2 AND key = $3",
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
        let mut tx = self.pool.begin().await?;
        let cp_table = set.checkpoints_table();
        let names: Vec<&str> = commits.iter().map(|c| c.projection).collect();
        // Make sure the rows exist, then lock them (in name order: two runners committing
        // overlapping sets cannot deadlock): two runners of one projection serialise here.
        sqlx::query(&format!(
            "INSERT INTO {cp_table} (projection, position) SELECT unnest($1::text[]), 0 \
             ON CONFLICT DO NOTHING"
        ))
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        let found: std::collections::HashMap<String, i64> =
            sqlx::query_as::<_, (String, i64)>(&format!(
                "SELECT projection, position FROM {cp_table} WHERE projection = ANY($1) \
                 ORDER BY projection FOR UPDATE"
            ))
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        crate::readstore::check_checkpoints(commits, &found)?;
        let docs = set.docs_table();
        let (mut puts, mut deletes) = (DocColumns::default(), DocColumns::default());
        for c in commits {
            for change in c.changes {
                match change {
                    DocChange::Put {
                        collection,
                        key,
                        doc,
                    } => puts.push(c.projection, collection, key, Some(doc)),
                    DocChange::Delete { collection, key } => {
                        deletes.push(c.projection, collection, key, None)
                    }
                }
            }
        }
        // Each projection's changes name a document once, so no upsert touches a row twice.
        if !puts.projection.is_empty() {
            sqlx::query(&format!(
                "INSERT INTO {docs} (projection, collection, key, doc) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                 ON CONFLICT (projection, collection, key) DO UPDATE SET doc = excluded.doc"
            ))
            .bind(&puts.projection)
            .bind(&puts.collection)
            .bind(&puts.key)
            .bind(&puts.doc)
            .execute(&mut *tx)
            .await?;
        }
        if !deletes.projection.is_empty() {
            sqlx::query(&format!(
                "DELETE FROM {docs} WHERE (projection, collection, key) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))"
            ))
            .bind(&deletes.projection)
            .bind(&deletes.collection)
            .bind(&deletes.key)
            .execute(&mut *tx)
            .await?;
        }
        let positions: Vec<i64> = commits.iter().map(|c| c.to).collect();
        sqlx::query(&format!(
            "UPDATE {cp_table} SET position = v.position \
             FROM unnest($1::text[], $2::int8[]) AS v(projection, position) \
             WHERE {cp_table}.projection = v.projection"
        ))
        .bind(&names)
        .bind(&positions)
        .execute(&mut *tx)
        .await?;
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
            "SELECT collection, key, doc FROM {} WHERE projection = $1 AND collection = $2 \
             AND key COLLATE \"C\" > $3 AND key COLLATE \"C\" < $4 ORDER BY key COLLATE \"C\" {} LIMIT $5",
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
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let pos: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT position FROM {} WHERE projection = $1",
            set.checkpoints_table()
        ))
        .bind(projection)
        .fetch_optional(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT collection, key, doc FROM {} WHERE projection = $1 \
             ORDER BY collection COLLATE \"C\", key COLLATE \"C\"",
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
        let mut tx = self.pool.begin().await?;
        for table in [set.docs_table(), set.checkpoints_table()] {
            sqlx::query(&format!("DELETE FROM {table} WHERE projection = $1"))
                .bind(projection)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn promote(&self, projection: &str) -> Result<(), LogError> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "LOCK TABLE rm_live_checkpoints IN SHARE ROW EXCLUSIVE MODE",
            "DELETE FROM rm_live_docs WHERE projection = $1",
            "DELETE FROM rm_live_checkpoints WHERE projection = $1",
            "INSERT INTO rm_live_docs SELECT * FROM rm_rebuild_docs WHERE projection = $1",
            "INSERT INTO rm_live_checkpoints SELECT * FROM rm_rebuild_checkpoints WHERE projection = $1",
            "DELETE FROM rm_rebuild_docs WHERE projection = $1",
            "DELETE FROM rm_rebuild_checkpoints WHERE projection = $1",
        ] {
            let q = sqlx::query(sql);
            let q = if sql.contains("$1") {
                q.bind(projection)
            } else {
                q
            };
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn doc_from_row(row: &PgRow) -> Result<DocRow, LogError> {
    Ok(DocRow {
        collection: row.try_get("collection")?,
        key: row.try_get("key")?,
        doc: row.try_get("doc")?,
    })
}

/// Document changes as columns, for `unnest`.
#[derive(Default)]
struct DocColumns<'a> {
    projection: Vec<&'a str>,
    collection: Vec<&'a str>,
    key: Vec<&'a str>,
    doc: Vec<&'a str>,
}

impl<'a> DocColumns<'a> {
    fn push(
        &mut self,
        projection: &'a str,
        collection: &'a str,
        key: &'a str,
        doc: Option<&'a str>,
    ) {
        self.projection.push(projection);
        self.collection.push(collection);
        self.key.push(key);
        if let Some(doc) = doc {
            self.doc.push(doc);
        }
    }
}
