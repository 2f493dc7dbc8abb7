//! Shared pieces of the benchmarks: opening fresh databases, the raw-insert baseline, and
//! latency percentiles.

use std::sync::Arc;
use std::time::Duration;

use eventlog::{NewEvent, OpenOptions, Store, SystemClock};
use serde_json::json;
use sqlx::{Executor, QueryBuilder};

/// A fresh database and what keeps it alive.
pub struct Fresh {
    pub store: Store,
    pub options: OpenOptions,
    _dir: Option<tempfile::TempDir>,
}

/// Opens a fresh SQLite file in a temp dir, or a fresh schema in `DATABASE_URL`'s PostgreSQL.
pub async fn fresh(backend: &str) -> anyhow::Result<Fresh> {
    let (options, dir) = match backend {
        "sqlite" => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (OpenOptions::new(url), Some(dir))
        }
        "postgres" => {
            let url = std::env::var("DATABASE_URL")
                .map_err(|_| anyhow::anyhow!("set DATABASE_URL to benchmark PostgreSQL"))?;
            let mut o = OpenOptions::new(url);
            o.pg_schema = Some(format!("bench_{}", uuid::Uuid::new_v4().simple()));
            o.max_connections = 40;
            (o, None)
        }
        other => anyhow::bail!("unknown backend {other}: use sqlite or postgres"),
    };
    let store = eventlog::open(&options, Arc::new(SystemClock)).await?;
    Ok(Fresh {
        store,
        options,
        _dir: dir,
    })
}

/// A realistic event: about 200 bytes of JSON data, like a job state change.
pub fn event(n: u64) -> NewEvent {
    NewEvent::new(
        "JobStateChanged",
        json!({
            "job_id": n,
            "cluster_id": "local",
            "from": "PENDING",
            "to": "RUNNING",
            "reason": null,
            "node": "compute-small-0",
            "exit_code": null,
            "note": "x".repeat(64),
        }),
    )
}

/// The raw baseline: a table of the same shape as `events` and plain INSERTs into it, with no
/// event-log logic (no version check, no idempotency check, no hash chain, no head row).
const RAW_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS raw_events (position INTEGER PRIMARY KEY, \
    stream_id TEXT NOT NULL, stream_version INTEGER NOT NULL, event_id BLOB NOT NULL UNIQUE, \
    event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL, \
    recorded_at INTEGER NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL, UNIQUE (stream_id, stream_version))";
const RAW_TABLE_PG: &str = "CREATE TABLE IF NOT EXISTS raw_events (position BIGINT PRIMARY KEY, \
    stream_id TEXT NOT NULL, stream_version BIGINT NOT NULL, event_id UUID NOT NULL UNIQUE, \
    event_type TEXT NOT NULL, schema_version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL, \
    recorded_at BIGINT NOT NULL, prev_hash BYTEA NOT NULL, hash BYTEA NOT NULL, UNIQUE (stream_id, stream_version))";

/// One raw row with the same sizes as a stored event.
pub struct RawRow {
    pub position: i64,
    pub stream_id: String,
    pub version: i64,
    pub event_id: uuid::Uuid,
    pub data: String,
}

pub fn raw_rows(first_position: i64, stream: &str, first_version: i64, n: usize) -> Vec<RawRow> {
    (0..n)
        .map(|i| RawRow {
            position: first_position + i as i64,
            stream_id: stream.to_string(),
            version: first_version + i as i64,
            event_id: uuid::Uuid::now_v7(),
            data: serde_json::to_string(&event(i as u64).data).unwrap_or_default(),
        })
        .collect()
}

/// Inserts `rows` into `raw_events` in one transaction with one multi-row INSERT, the same
/// statement shape the SQLite backend uses.
async fn raw_insert_sqlite(pool: &sqlx::SqlitePool, rows: &[RawRow]) -> anyhow::Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut q = QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO raw_events (position, stream_id, stream_version, event_id, event_type, \
         schema_version, data, metadata, recorded_at, prev_hash, hash) ",
    );
    let hash = [7u8; 32];
    q.push_values(rows, |mut b, r| {
        b.push_bind(r.position)
            .push_bind(r.stream_id.as_str())
            .push_bind(r.version)
            .push_bind(r.event_id)
            .push_bind("JobStateChanged")
            .push_bind(1)
            .push_bind(r.data.as_str())
            .push_bind("{}")
            .push_bind(0i64)
            .push_bind(&hash[..])
            .push_bind(&hash[..]);
    });
    tx.execute(q.build()).await?;
    tx.commit().await?;
    Ok(())
}

/// Single-row autocommit INSERT into `raw_events` on PostgreSQL.
async fn raw_insert_pg(pool: &sqlx::PgPool, row: &RawRow) -> anyhow::Result<()> {
    let hash = [7u8; 32];
    sqlx::query(
        "INSERT INTO raw_events (position, stream_id, stream_version, event_id, event_type, \
         schema_version, data, metadata, recorded_at, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, 'JobStateChanged', 1, $5, '{}', 0, $6, $6)",
    )
    .bind(row.position)
    .bind(&row.stream_id)
    .bind(row.version)
    .bind(row.event_id)
    .bind(&row.data)
    .bind(&hash[..])
    .execute(pool)
    .await?;
    Ok(())
}

/// The raw baseline's database: the same file or schema as the log, with the log's own connection
/// settings, and a `raw_events` table of the same shape.
#[derive(Clone)]
pub enum RawDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl RawDb {
    pub async fn connect(options: &OpenOptions) -> anyhow::Result<Self> {
        if options.url.starts_with("sqlite:") {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(eventlog::sqlite::connect_options(
                    &options.url,
                    &options.sqlite_synchronous,
                )?)
                .await?;
            sqlx::query(RAW_TABLE_SQLITE).execute(&pool).await?;
            Ok(RawDb::Sqlite(pool))
        } else {
            let schema = options.pg_schema.as_deref().unwrap_or("public");
            let connect = options
                .url
                .parse::<sqlx::postgres::PgConnectOptions>()?
                .options([("search_path", schema)]);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(40)
                .connect_with(connect)
                .await?;
            sqlx::query(RAW_TABLE_PG).execute(&pool).await?;
            Ok(RawDb::Postgres(pool))
        }
    }

    /// Plain INSERTs of `rows` in one transaction.
    pub async fn insert(&self, rows: &[RawRow]) -> anyhow::Result<()> {
        match self {
            RawDb::Sqlite(pool) => raw_insert_sqlite(pool, rows).await,
            RawDb::Postgres(pool) => {
                for row in rows {
                    raw_insert_pg(pool, row).await?;
                }
                Ok(())
            }
        }
    }
}

/// p50, p99 and max of a set of latencies.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A process's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`; 0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// What a closed-loop load run measured.
pub struct Load {
    pub latencies: Vec<Duration>,
    pub failures: usize,
    pub elapsed: Duration,
}

impl Load {
    /// `N <what> (F failed) in S s with C clients = R <what>/s   p50 …  p99 …  max …`
    pub fn report(self, what: &str, clients: usize) -> String {
        let ok = self.latencies.len();
        let (p50, p99, max) = percentiles(self.latencies);
        format!(
            "{ok} {what} ({} failed) in {:.2} s with {clients} clients = {:.0} {what}/s   p50 {}  p99 {}  max {}",
            self.failures,
            self.elapsed.as_secs_f64(),
            ok as f64 / self.elapsed.as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(max)
        )
    }
}

/// Runs `requests` calls of `call(i)` from `concurrency` clients, each starting its next call when
/// the last one answered, until all are done or `max` has passed. A call's `Err` is a failure
/// (the first two are printed).
pub async fn closed_loop<F, Fut>(
    requests: usize,
    concurrency: usize,
    max: Duration,
    call: F,
) -> anyhow::Result<Load>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let deadline = started + max;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut failures) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || std::time::Instant::now() > deadline {
                    break;
                }
                let t = std::time::Instant::now();
                match call(i).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        failures += 1;
                        if failures < 3 {
                            eprintln!("{e}");
                        }
                    }
                }
            }
            (lat, failures)
        }));
    }
    let mut load = Load {
        latencies: Vec::new(),
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (l, f) = t.await?;
        load.latencies.extend(l);
        load.failures += f;
    }
    load.elapsed = started.elapsed();
    Ok(load)
}

// Where a load generator sends its load and as whom (`--url`, `--token`); a plain comment, so
// clap does not take it for the about text of the tools that flatten it.
#[derive(clap::Args, Debug, Clone)]
pub struct Server {
    /// The server's base URL (or, where the tool says so, the endpoint itself).
    #[arg(long)]
    pub url: String,
    /// A bearer token (minted with `clusterra token mint`), or Slurm's JWT for slurmrestd.
    #[arg(long)]
    pub token: String,
}
