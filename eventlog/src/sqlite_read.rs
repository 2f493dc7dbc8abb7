//! The SQLite store's point reads, run on the calling thread.
//!
//! sqlx's SQLite driver hands every statement to its connection's own thread and streams the
//! rows back over a channel: each read of one job stream or one projection document costs
//! several thread wake-ups, far more than the read (a few B-tree pages SQLite already holds).
//! A keyed submit makes several such reads (the caller's quota stream, the submission's
//! stream), the projectors one per document a batch first touches and one per batch of the
//! log, so those hand-offs were a large share of the server's CPU per submit
//! (docs/performance.md, "Keyed submits").
//!
//! Here a short read takes an idle rusqlite connection (or opens one), runs one cached
//! statement on the calling thread and puts the connection back. In WAL mode a reader never
//! waits for the writer, so the read takes about as long as an in-memory lookup: it is bounded
//! by [`INLINE_ROWS`] rows, and a longer read takes the rest from the sqlx pool, off this
//! thread. Every connection is `query_only`: nothing written here.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::sqlite::{ALL_SQL, STREAM_SQL};
use crate::sqlite_writer::Stored;
use crate::{LogError, ModelSet, Position, RecordedEvent, StreamId};

/// The most rows one read returns on the calling thread.
pub(crate) const INLINE_ROWS: usize = 64;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 16;

/// Each reader's page cache: 2 MiB (negative: KiB), where the pool's connections keep 64 MiB.
/// In WAL mode a connection drops its whole cache when it starts a read after another
/// connection committed, which under appends is nearly every read here, and dropping it walks
/// every slot the cache ever grew to (`pcache1TruncateUnsafe`: 3 % of the server's CPU in a
/// keyed-submit profile with 64 MiB). A point read needs a few B-tree pages; a page not held
/// is read back from the OS's file cache.
const READER_CACHE_SIZE: &str = "-2048";

/// How long a read waits when SQLite says the database is busy (a WAL reader meets that only
/// while another connection recovers the WAL after a crash).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Read connections to one database file.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Readers of the database file at `path`, which exists (the pool created it). The path is
    /// made absolute now: connections are opened later, whatever the working directory is then.
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> Result<Connection, LogError> {
        // Never created here: a missing file is an error, not a new empty database.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(&format!(
            "PRAGMA query_only = ON; PRAGMA cache_size = {READER_CACHE_SIZE}; PRAGMA temp_store = MEMORY;"
        ))?;
        Ok(conn)
    }

    /// Runs `read` on an idle connection (opened if there is none).
    fn with<R>(
        &self,
        read: impl FnOnce(&Connection) -> Result<R, LogError>,
    ) -> Result<R, LogError> {
        let idle = self.lock().pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let out = read(&conn);
        // Every connection goes back: a read never yields, so there are never more of them than
        // threads that read at once (tokio's workers), and a fixed cap below that number would
        // open and close one per read.
        self.lock().push(conn);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A panic while holding the lock leaves the list itself sound.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `limit` (at most [`INLINE_ROWS`]) events of a stream after `after_version`.
    pub(crate) fn stream(
        &self,
        stream: &StreamId,
        after_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let limit = limit.min(INLINE_ROWS) as i64;
        self.with(|conn| {
            events(
                conn,
                STREAM_SQL,
                params![stream.as_str(), after_version, limit],
            )
        })
    }

    /// Up to `limit` (at most [`INLINE_ROWS`]) events of the log after `after`.
    pub(crate) fn all(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let limit = limit.min(INLINE_ROWS) as i64;
        self.with(|conn| events(conn, ALL_SQL, params![after, limit]))
    }

    /// One projection document.
    pub(crate) fn doc(
        &self,
        set: ModelSet,
        projection: &str,
        collection: &str,
        key: &str,
    ) -> Result<Option<String>, LogError> {
        let sql = format!(
            "SELECT doc FROM {} WHERE projection = ?1 AND collection = ?2 AND key = ?3",
            set.docs_table()
        );
        self.with(|conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(params![projection, collection, key], |r| r.get(0))
                .optional()?)
        })
    }

    /// A projection's checkpoint (0 before its first commit).
    pub(crate) fn checkpoint(&self, set: ModelSet, projection: &str) -> Result<Position, LogError> {
        let sql = format!(
            "SELECT position FROM {} WHERE projection = ?1",
            set.checkpoints_table()
        );
        self.with(|conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_row([projection], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0))
        })
    }
}

/// The events a statement selecting `crate::sqlite`'s event columns finds.
fn events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, LogError> {
    let mut select = conn.prepare_cached(sql)?;
    let rows = select.query_map(params, Stored::from_row)?;
    rows.map(|row| row?.decode()).collect()
}
