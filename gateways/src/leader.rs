//! Leader election for the poll cycle: with several API replicas on one PostgreSQL database,
//! only the holder of a session-level advisory lock decides and reconciles.
//!
//! The lock lives on one dedicated connection. It is released when that connection ends — the
//! process exits or is killed, or the database drops it — and another replica's next try takes
//! it. The leader checks its connection before every cycle and steps down when the check fails.
//! Split brain cannot double a decision anyway: decisions are appended at the exact version of
//! the scaling stream that was read.
//!
//! On SQLite there is one process per database file: it always leads.

use eventlog::Db;
use sqlx::postgres::PgConnection;

/// The advisory-lock key of a schema's poll cycle (two schemas of one database, as tests use,
/// elect separately). FNV-1a over the name: stable across builds and processes.
pub fn lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("clusterra-poll-leader:{schema}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// How long a check or a try may take before it counts as failed (a half-open connection must
/// not stall the poll cycle).
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// This process's claim on leadership.
pub struct Leadership {
    db: Db,
    /// The connection holding the lock, while this process leads.
    held: Option<PgConnection>,
    /// A follower's connection, kept between tries.
    candidate: Option<PgConnection>,
}

impl Leadership {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            held: None,
            candidate: None,
        }
    }

    /// Whether this process leads now: keeps the lock if its connection still answers, else
    /// tries to take it. Errors and timeouts count as "not leader" (logged).
    pub async fn lead(&mut self) -> bool {
        let Db::Postgres { pool, schema } = &self.db else {
            return true;
        };
        let key = lock_key(schema);
        if let Some(conn) = self.held.as_mut() {
            let check = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *conn);
            match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the leader's lock connection failed: stepping down");
                }
                Err(_) => {
                    tracing::warn!("the leader's lock connection stopped answering: stepping down")
                }
            }
            // Dropped: if the connection still lives somewhere, closing it releases the lock.
            self.held = None;
        }
        let mut conn = match self.candidate.take() {
            Some(c) => c,
            None => match tokio::time::timeout(CHECK_TIMEOUT, pool.acquire()).await {
                // Detached: the lock must not go back to the pool with the connection.
                Ok(Ok(c)) => c.detach(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not connect to try for leadership");
                    return false;
                }
                Err(_) => {
                    tracing::warn!("connecting to try for leadership timed out");
                    return false;
                }
            },
        };
        let try_lock = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn);
        match tokio::time::timeout(CHECK_TIMEOUT, try_lock).await {
            Ok(Ok(true)) => {
                tracing::info!(schema, "this replica leads the poll cycle");
                self.held = Some(conn);
                true
            }
            Ok(Ok(false)) => {
                self.candidate = Some(conn);
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not try for leadership");
                false
            }
            Err(_) => {
                tracing::warn!("trying for leadership timed out");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_schema_and_are_stable() {
        assert_eq!(lock_key("public"), lock_key("public"));
        assert_ne!(lock_key("public"), lock_key("t_1"));
    }
}
