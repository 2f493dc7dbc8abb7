//! The Clusterra event log.
//!
//! One [`EventLog`] trait with two backends — [`sqlite::SqliteStore`] (the embedded default) and
//! [`postgres::PgStore`] (production) — plus the storage the projection engine writes its read
//! models and checkpoints to ([`ReadStore`]), kept in the same database so a projector can commit
//! its rows and its checkpoint in one transaction.
//!
//! Ordering guarantee (both backends): positions are handed out under the log's single write lock
//! (a row lock on `log_head`) and the lock is held until commit, so positions are gap-free and
//! become visible in position order. See `docs/event-log.md`.

mod envelope;
mod group;
pub mod hash;
pub mod postgres;
mod readstore;
pub mod sqlite;
mod sqlite_read;
mod sqlite_writer;
mod subscribe;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub use envelope::{
    AppendOutcome, ExpectedVersion, Head, Metadata, NewEvent, Position, RecordedEvent, StreamId,
};
pub use readstore::{DocChange, DocRow, KeyRange, ModelSet, ProjectionCommit, ReadStore, list_all};
pub use subscribe::{SubscribeOptions, subscribe};

/// Errors of the log and the read-model store.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid stream id {0:?}: use 1-200 characters of A-Z a-z 0-9 . _ : @ + -")]
    InvalidStreamId(String),
    #[error("stream {stream_id} is at version {actual}, the append expected {expected:?}")]
    VersionConflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: i64,
    },
    #[error(
        "event {event_id} is already stored, but not as part of this same batch on stream {stream_id}"
    )]
    DuplicateEventMismatch {
        event_id: uuid::Uuid,
        stream_id: String,
    },
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("projection {projection} checkpoint moved: expected {expected}, found {found}")]
    CheckpointMoved {
        projection: String,
        expected: Position,
        found: Position,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database url {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("could not encode event data: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An error of the SQLite store's writer connection (`sqlite_writer`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("could not start the SQLite writer thread: {0}")]
    Io(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The clock the log stamps `recorded_at` with.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The append-only, hash-chained event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    ///
    /// A conflict is [`LogError::VersionConflict`] and writes nothing. Re-appending a batch whose
    /// event ids are all stored already is a no-op that returns the stored positions.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendOutcome, LogError>;

    /// Events of one stream with a version above `after_version`, oldest first, at most `limit`.
    async fn read_stream(
        &self,
        stream: &StreamId,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError>;

    /// Events with a position above `after`, in position order, at most `limit`.
    async fn read_all(&self, after: Position, limit: usize)
    -> Result<Vec<RecordedEvent>, LogError>;

    /// The newest position and hash.
    async fn head(&self) -> Result<Head, LogError>;

    /// A receiver that changes whenever the head moves (own appends at once; other processes'
    /// appends through the backend's notification channel or, at worst, the subscriber's poll).
    fn watch_head(&self) -> watch::Receiver<Position>;

    /// Which backend this is ("sqlite" or "postgres").
    fn backend(&self) -> &'static str;
}

/// An opened database: the log and the read-model store over the same connection pool.
#[derive(Clone)]
pub struct Store {
    pub log: Arc<dyn EventLog>,
    pub read: Arc<dyn ReadStore>,
    /// The database itself, for adapters that keep their own tables beside the log (the
    /// embedded replica store) and for leader election.
    pub db: Db,
}

/// The connection pool of an opened database.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    /// `schema` is the one the pool's `search_path` names (`public` unless configured).
    Postgres {
        pool: sqlx::PgPool,
        schema: String,
    },
}

/// Settings for [`open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// PostgreSQL schema to use (created if missing); tests give each case its own.
    pub pg_schema: Option<String>,
    /// SQLite `synchronous` setting: "normal" (default; durable across process crashes) or "full"
    /// (also across power loss, slower).
    pub sqlite_synchronous: String,
    pub max_connections: u32,
}

impl OpenOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pg_schema: None,
            sqlite_synchronous: "normal".into(),
            max_connections: 8,
        }
    }
}

/// Opens (and migrates) the database named by `options.url`.
pub async fn open(options: &OpenOptions, clock: Arc<dyn Clock>) -> Result<Store, LogError> {
    let url = options.url.as_str();
    if url.starts_with("sqlite:") {
        let store = Arc::new(sqlite::SqliteStore::open(options, clock).await?);
        Ok(Store {
            db: Db::Sqlite(store.pool().clone()),
            log: store.clone(),
            read: store,
        })
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = Arc::new(postgres::PgStore::open(options, clock).await?);
        Ok(Store {
            db: Db::Postgres {
                pool: store.pool().clone(),
                schema: options.pg_schema.clone().unwrap_or_else(|| "public".into()),
            },
            log: store.clone(),
            read: store,
        })
    } else {
        Err(LogError::UnsupportedUrl(url.to_string()))
    }
}

/// Where the hash chain first breaks, if it does.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainReport {
    pub checked: u64,
    pub head: Position,
    pub first_break: Option<(RecordedEvent, hash::ChainBreak)>,
}

/// Walks the whole log and checks every link of the hash chain; `progress` is called per batch
/// with the number of events checked so far.
pub async fn verify_chain(
    log: &dyn EventLog,
    mut progress: impl FnMut(u64),
) -> Result<ChainReport, LogError> {
    let mut verifier = hash::ChainVerifier::default();
    let mut after = 0;
    let mut checked = 0u64;
    loop {
        let batch = log.read_all(after, 5_000).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for event in batch {
            if let Err(why) = verifier.check(&event) {
                return Ok(ChainReport {
                    checked,
                    head: log.head().await?.position,
                    first_break: Some((event, why)),
                });
            }
            checked += 1;
        }
        progress(checked);
    }
    let head = log.head().await?;
    // The head row must agree with the last event, or events were cut off the end.
    if head.position != after || head.hash != verifier.last_hash() {
        return Err(LogError::Corrupt(format!(
            "log head says position {} but the last readable event is {}: events were removed from the end",
            head.position, after
        )));
    }
    Ok(ChainReport {
        checked,
        head: head.position,
        first_break: None,
    })
}

/// Builds the rows of an append: positions, versions and the hash chain, shared by both backends.
pub(crate) struct PreparedRow<'a> {
    pub position: Position,
    pub stream_version: i64,
    pub event: &'a NewEvent,
    pub data: String,
    pub metadata: String,
    pub recorded_at_micros: i64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

pub(crate) fn prepare_rows<'a>(
    head: Head,
    stream: &StreamId,
    current_version: i64,
    events: &'a [NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<PreparedRow<'a>>, LogError> {
    let micros = now.timestamp_micros();
    let mut prev = head.hash;
    let mut rows = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let position = head.position + 1 + i as i64;
        let stream_version = current_version + 1 + i as i64;
        let data = serde_json::to_string(&event.data)?;
        let metadata = serde_json::to_string(&event.metadata)?;
        let hash = hash::event_hash(&hash::HashInput {
            prev_hash: &prev,
            position,
            stream_id: stream.as_str(),
            stream_version,
            event_id: &event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            data: &data,
            metadata: &metadata,
            recorded_at_micros: micros,
        });
        rows.push(PreparedRow {
            position,
            stream_version,
            event,
            data,
            metadata,
            recorded_at_micros: micros,
            prev_hash: prev,
            hash,
        });
        prev = hash;
    }
    Ok(rows)
}

/// Turns a stored `recorded_at` (microseconds since the epoch) into a time.
pub(crate) fn recorded_at(micros: i64) -> Result<DateTime<Utc>, LogError> {
    use chrono::TimeZone;
    Utc.timestamp_micros(micros)
        .single()
        .ok_or_else(|| LogError::Corrupt(format!("recorded_at {micros} is out of range")))
}

/// Turns stored bytes into a 32-byte hash.
pub(crate) fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], LogError> {
    bytes
        .try_into()
        .map_err(|_| LogError::Corrupt(format!("{what} is {} bytes, not 32", bytes.len())))
}

/// Checks an idempotent re-append: every event of the batch must be stored on this stream, in
/// order, with consecutive positions.
pub(crate) fn check_reappend(
    stream: &StreamId,
    events: &[NewEvent],
    stored: &[RecordedEvent],
) -> Result<AppendOutcome, LogError> {
    let mismatch = |event_id| LogError::DuplicateEventMismatch {
        event_id,
        stream_id: stream.to_string(),
    };
    if stored.len() != events.len() {
        let missing = events
            .iter()
            .find(|e| !stored.iter().any(|s| s.event_id == e.event_id))
            .unwrap_or(&events[0]);
        return Err(mismatch(missing.event_id));
    }
    for (new, old) in events.iter().zip(stored) {
        if new.event_id != old.event_id || old.stream_id != stream.as_str() {
            return Err(mismatch(new.event_id));
        }
    }
    let (first, last) = (&stored[0], &stored[stored.len() - 1]);
    Ok(AppendOutcome {
        first_position: first.position,
        last_position: last.position,
        stream_version: last.stream_version,
        already_stored: true,
    })
}

/// Pushes one prepared row's values, in `EVENT_COLUMNS` order, onto an `INSERT … VALUES` being
/// built — the same for both backends.
pub(crate) fn bind_row<'q, DB>(
    mut b: sqlx::query_builder::Separated<'_, 'q, DB, &'static str>,
    stream: &'q str,
    r: &'q PreparedRow<'_>,
) where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    uuid::Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    b.push_bind(r.position)
        .push_bind(stream)
        .push_bind(r.stream_version)
        .push_bind(r.event.event_id)
        .push_bind(r.event.event_type.as_str())
        .push_bind(r.event.schema_version)
        .push_bind(r.data.as_str())
        .push_bind(r.metadata.as_str())
        .push_bind(r.recorded_at_micros)
        .push_bind(&r.prev_hash[..])
        .push_bind(&r.hash[..]);
}

/// After a batch's rows are written: moves `head` to its last row and says what was appended.
pub(crate) fn appended(
    head: &mut Head,
    rows: &[PreparedRow<'_>],
) -> Result<AppendOutcome, LogError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(LogError::EmptyAppend);
    };
    *head = Head {
        position: last.position,
        hash: last.hash,
    };
    Ok(AppendOutcome {
        first_position: first.position,
        last_position: last.position,
        stream_version: last.stream_version,
        already_stored: false,
    })
}
