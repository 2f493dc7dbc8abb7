//! The replica-store port ([`commands::replicas::ReplicaStore`]): the desired node count of each
//! node set, where the edge agent reads it.
//!
//! - [`SqlReplicas`]: the embedded default, a `replica_counts` table in the log's own database
//!   (SQLite or PostgreSQL).
//! - [`DynamoReplicas`]: a DynamoDB table (AWS or any DynamoDB-compatible endpoint), one item per
//!   node set.
//!
//! Both make every write conditional on the stored version, so a stale writer gets
//! [`ReplicaError::Conflict`](commands::replicas::ReplicaError::Conflict) with what is stored
//! instead of overwriting a newer decision. See `docs/autoscaling.md`.

mod dynamodb;
mod sql;

pub use dynamodb::{DynamoReplicas, DynamoSettings};
pub use sql::SqlReplicas;

use commands::replicas::{ReplicaError, ReplicaWrite, Replicas};

/// The answer to a write that lost the version check: logged, with what is stored handed back.
pub(crate) fn lost_version_check(
    backend: &'static str,
    w: &ReplicaWrite,
    current: Option<Replicas>,
) -> ReplicaError {
    tracing::debug!(
        backend,
        workspace = %w.workspace,
        cluster = %w.cluster_id,
        node_set = %w.node_set,
        expected = w.expected_version,
        current = current.as_ref().map_or(0, |c| c.version),
        "replica write lost the version check"
    );
    ReplicaError::Conflict {
        current: current.map(Box::new),
    }
}
