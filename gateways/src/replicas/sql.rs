//! The embedded replica store: a `replica_counts` table in the same database as the log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use commands::replicas::{ReplicaError, ReplicaStore, ReplicaWrite, Replicas};
use domain::scaling::NodeSet;
use domain::{ClusterId, WorkspaceId};
use eventlog::Db;

const SQLITE_TABLE: &str = "CREATE TABLE IF NOT EXISTS replica_counts (
    workspace TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    node_set TEXT NOT NULL,
    desired INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    decided_at INTEGER NOT NULL,
    PRIMARY KEY (workspace, cluster_id, node_set)
)";

// The pool's search_path already names the schema.
const POSTGRES_TABLE: &str = "CREATE TABLE IF NOT EXISTS replica_counts (
    workspace TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    node_set TEXT NOT NULL,
    desired BIGINT NOT NULL,
    version BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (workspace, cluster_id, node_set)
)";

const COLUMNS: &str = "workspace, cluster_id, node_set, desired, version, updated_at, decided_at";

/// The statements, written once with `$n` placeholders (SQLite gets `?n`, which binds the same).
struct Statements {
    insert: String,
    update: String,
    get: String,
    list: String,
}

impl Statements {
    fn new(sqlite: bool) -> Self {
        let dialect = |s: String| if sqlite { s.replace('$', "?") } else { s };
        Self {
            // Expected version 0: the row must not exist; an existing row makes this a no-op.
            insert: dialect(format!(
                "INSERT INTO replica_counts ({COLUMNS}) VALUES ($1, $2, $3, $4, 1, $5, $6) \
                 ON CONFLICT (workspace, cluster_id, node_set) DO NOTHING RETURNING {COLUMNS}"
            )),
            update: dialect(format!(
                "UPDATE replica_counts SET desired = $4, version = version + 1, updated_at = $5, \
                 decided_at = $6 \
                 WHERE workspace = $1 AND cluster_id = $2 AND node_set = $3 AND version = $7 \
                 RETURNING {COLUMNS}"
            )),
            get: dialect(format!(
                "SELECT {COLUMNS} FROM replica_counts \
                 WHERE workspace = $1 AND cluster_id = $2 AND node_set = $3"
            )),
            list: dialect(format!(
                "SELECT {COLUMNS} FROM replica_counts WHERE workspace = $1 AND cluster_id = $2"
            )),
        }
    }
}

/// A row as the database holds it.
#[derive(sqlx::FromRow)]
struct Row {
    workspace: String,
    cluster_id: String,
    node_set: String,
    desired: i64,
    version: i64,
    updated_at: DateTime<Utc>,
    decided_at: i64,
}

impl Row {
    fn into_replicas(self) -> Result<Replicas, ReplicaError> {
        let what = format!(
            "replica_counts row ({}, {}, {})",
            self.workspace, self.cluster_id, self.node_set
        );
        let corrupt = |field: &str| ReplicaError::Corrupt(format!("{what}: bad {field}"));
        Ok(Replicas {
            node_set: NodeSet::parse(&self.node_set).ok_or_else(|| corrupt("node_set"))?,
            desired: u32::try_from(self.desired).map_err(|_| corrupt("desired"))?,
            version: u64::try_from(self.version).map_err(|_| corrupt("version"))?,
            workspace: WorkspaceId::new(self.workspace.clone())
                .map_err(|_| corrupt("workspace"))?,
            cluster_id: ClusterId::new(self.cluster_id.clone())
                .map_err(|_| corrupt("cluster_id"))?,
            updated_at: self.updated_at,
            decided_at: self.decided_at,
        })
    }
}

/// Runs the same code on whichever pool this is (the row type differs, the text does not).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// Replica counts in a table of the log's database (the embedded default).
pub struct SqlReplicas {
    db: Db,
    sql: Statements,
}

impl SqlReplicas {
    /// Uses `db` (the log's own database), creating the `replica_counts` table if missing.
    pub async fn new(db: Db) -> Result<Self, ReplicaError> {
        let sql = Statements::new(matches!(db, Db::Sqlite(_)));
        let result = match &db {
            Db::Sqlite(pool) => sqlx::query(SQLITE_TABLE).execute(pool).await.map(drop),
            Db::Postgres { pool, .. } => sqlx::query(POSTGRES_TABLE).execute(pool).await.map(drop),
        };
        let store = Self { db, sql };
        result.map_err(|e| store.unavailable("create the replica_counts table", &e))?;
        Ok(store)
    }

    fn database(&self) -> String {
        match &self.db {
            Db::Sqlite(_) => "the SQLite database".into(),
            Db::Postgres { schema, .. } => format!("the PostgreSQL database (schema {schema})"),
        }
    }

    fn unavailable(&self, what: &str, e: &sqlx::Error) -> ReplicaError {
        tracing::warn!(backend = "sql", error = %e, "replica store: could not {what}");
        ReplicaError::Unavailable(format!("could not {what} in {}: {e}", self.database()))
    }

    async fn fetch_one_set(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        set: NodeSet,
    ) -> Result<Option<Replicas>, ReplicaError> {
        let set = set.to_string();
        let row: Option<Row> = on_pool!(&self.db, pool => sqlx::query_as(&self.sql.get)
            .bind(workspace.as_str())
            .bind(cluster.as_str())
            .bind(&set)
            .fetch_optional(pool)
            .await)
        .map_err(|e| self.unavailable("read a replica count", &e))?;
        row.map(Row::into_replicas).transpose()
    }
}

#[async_trait]
impl ReplicaStore for SqlReplicas {
    async fn put(&self, w: &ReplicaWrite) -> Result<Replicas, ReplicaError> {
        let set = w.node_set.to_string();
        let desired = i64::from(w.desired);
        let Ok(expected) = i64::try_from(w.expected_version) else {
            // No stored version is that large: it cannot match.
            let current = self
                .fetch_one_set(&w.workspace, &w.cluster_id, w.node_set)
                .await?;
            return Err(super::lost_version_check("sql", w, current));
        };
        // One statement each way: the version check and the write are one atomic step.
        // The two statements take the same values; the update also the version it expects.
        let (statement, expects) = if expected == 0 {
            (&self.sql.insert, None)
        } else {
            (&self.sql.update, Some(expected))
        };
        let row: Option<Row> = on_pool!(&self.db, pool => {
            let query = sqlx::query_as(statement)
                .bind(w.workspace.as_str())
                .bind(w.cluster_id.as_str())
                .bind(&set)
                .bind(desired)
                .bind(w.now)
                .bind(w.decided_at);
            match expects {
                Some(v) => query.bind(v),
                None => query,
            }
            .fetch_optional(pool)
            .await
        })
        .map_err(|e| self.unavailable("write a replica count", &e))?;
        match row {
            Some(row) => row.into_replicas(),
            None => {
                let current = self
                    .fetch_one_set(&w.workspace, &w.cluster_id, w.node_set)
                    .await?;
                Err(super::lost_version_check("sql", w, current))
            }
        }
    }

    async fn get(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        set: NodeSet,
    ) -> Result<Option<Replicas>, ReplicaError> {
        self.fetch_one_set(workspace, cluster, set).await
    }

    async fn list(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
    ) -> Result<Vec<Replicas>, ReplicaError> {
        let rows: Vec<Row> = on_pool!(&self.db, pool => sqlx::query_as(&self.sql.list)
            .bind(workspace.as_str())
            .bind(cluster.as_str())
            .fetch_all(pool)
            .await)
        .map_err(|e| self.unavailable("list replica counts", &e))?;
        let mut items = rows
            .into_iter()
            .map(Row::into_replicas)
            .collect::<Result<Vec<_>, _>>()?;
        // Node-set order (family, then size), which is not the names' alphabetical order.
        items.sort_by_key(|r| r.node_set);
        Ok(items)
    }

    fn backend(&self) -> &'static str {
        "sql"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_statements_use_numbered_placeholders() {
        let s = Statements::new(true);
        assert!(!s.update.contains('$'));
        assert!(s.update.contains("version = ?7"));
        let p = Statements::new(false);
        assert!(p.update.contains("version = $7"));
    }
}
