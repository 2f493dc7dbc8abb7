//! The replica-store port: the desired node count of each node set, where the edge agent reads it.
//!
//! In production this is a DynamoDB table the edge agent of each cluster polls; the embedded
//! default is a table in the same database as the log. The log is the truth (every desired count
//! is a `ScaleDecisionMade`); the store is a copy the poll cycle keeps in step with it.
//!
//! Writes are conditional on the item's version, so a writer that read an old item (a stale
//! leader) can never overwrite a newer decision: [`ReplicaError::Conflict`] hands back what is
//! stored, and the writer compares its `decided_at` log position with the stored one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::scaling::NodeSet;
use domain::{ClusterId, WorkspaceId};
use eventlog::Position;
use serde::{Deserialize, Serialize};

/// One node set's desired count, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub node_set: NodeSet,
    pub desired: u32,
    /// 1 after the first write, +1 on each write.
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    /// The log position of the `ScaleDecisionMade` this count comes from.
    pub decided_at: Position,
}

/// A conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaWrite {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub node_set: NodeSet,
    pub desired: u32,
    /// The version the writer read: 0 means "the item must not exist yet".
    pub expected_version: u64,
    pub decided_at: Position,
    pub now: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The stored version is not the one expected; `current` is what is stored (None: no item).
    #[error("the stored replica count changed since it was read (now version {})", current.as_ref().map_or(0, |c| c.version))]
    Conflict { current: Option<Box<Replicas>> },
    /// The store could not be reached or refused the request (after retries).
    #[error("replica store unavailable: {0}")]
    Unavailable(String),
    /// A stored item this code cannot read.
    #[error("replica store item unreadable: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait ReplicaStore: Send + Sync + 'static {
    /// Writes `w.desired` if the stored version equals `w.expected_version`; returns the item as
    /// stored (version `expected_version + 1`).
    async fn put(&self, w: &ReplicaWrite) -> Result<Replicas, ReplicaError>;

    /// One node set's item.
    async fn get(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        set: NodeSet,
    ) -> Result<Option<Replicas>, ReplicaError>;

    /// Every node set's item of a cluster, in node-set order.
    async fn list(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
    ) -> Result<Vec<Replicas>, ReplicaError>;

    /// Which adapter this is ("sql" or "dynamodb"), for logs.
    fn backend(&self) -> &'static str;
}
