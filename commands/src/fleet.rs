//! The edge agent's side: nodes follow the desired counts in the replica store.
//!
//! In production an edge agent in each cluster reads its desired counts from DynamoDB, patches
//! the slurmd Deployments, and Karpenter brings EC2 nodes up. Here the same loop runs against a
//! [`NodeFleet`] port (the local executor implements it: it starts nodes after a cold start and
//! runs jobs only on ready ones) and records what happened to each node as `NodeLaunched`,
//! `NodeReady` and `NodeTerminated` on the cluster's `nodes:<ws>:<cluster>` stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::scaling::NodeSet;
use domain::{ClusterId, DomainEvent, NodeLaunched, NodeReady, NodeTerminated, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, LogError, StreamId};

use crate::replicas::{ReplicaError, ReplicaStore};

/// What happened to one node during a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    Launched {
        node: String,
        set: NodeSet,
        instance_type: String,
        launched_at: DateTime<Utc>,
        ready_expected_at: DateTime<Utc>,
    },
    Ready {
        node: String,
        set: NodeSet,
        cold_start_ms: u64,
    },
    Terminated {
        node: String,
        set: NodeSet,
        reason: String,
        up_ms: u64,
    },
}

/// Where nodes come from (Karpenter and EC2 in production; the local executor here).
#[async_trait]
pub trait NodeFleet: Send + Sync + 'static {
    /// Moves the fleet towards `desired` (node sets not named want 0): launches what is missing,
    /// marks nodes whose cold start is over as ready, terminates idle nodes above the count
    /// (never one running a job). Returns what changed.
    async fn reconcile(
        &self,
        desired: &BTreeMap<NodeSet, u32>,
        now: DateTime<Utc>,
    ) -> Vec<NodeChange>;

    /// The names of the nodes up or starting.
    async fn nodes(&self) -> Vec<String>;

    /// Whether a node named in the log is this fleet's (several fleets may share a log).
    fn owns(&self, node: &str) -> bool;
}

/// The stream of a cluster's node lifecycle events.
pub fn stream(workspace: &WorkspaceId, cluster: &ClusterId) -> StreamId {
    StreamId::new(format!("nodes:{workspace}:{cluster}"))
        .unwrap_or_else(|e| unreachable!("slugs make a stream id: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Replicas(#[from] ReplicaError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One cluster's edge agent.
pub struct EdgeAgent {
    pub workspace: WorkspaceId,
    pub cluster: ClusterId,
    pub replicas: Arc<dyn ReplicaStore>,
    pub fleet: Arc<dyn NodeFleet>,
}

impl EdgeAgent {
    /// One step: read the desired counts, reconcile the fleet, record the changes.
    pub async fn step(
        &self,
        log: &dyn EventLog,
        now: DateTime<Utc>,
    ) -> Result<Vec<NodeChange>, AgentError> {
        let desired: BTreeMap<NodeSet, u32> = self
            .replicas
            .list(&self.workspace, &self.cluster)
            .await?
            .into_iter()
            .map(|r| (r.node_set, r.desired))
            .collect();
        let changes = self.fleet.reconcile(&desired, now).await;
        self.record(log, &changes).await?;
        Ok(changes)
    }

    /// At the agent's start: nodes of this fleet that the log still lists but the fleet does not
    /// have (the process that ran them stopped) are recorded as terminated; other fleets' nodes
    /// are left alone. Returns how many.
    pub async fn recover(&self, log: &dyn EventLog) -> Result<usize, AgentError> {
        let known: std::collections::BTreeSet<String> =
            self.fleet.nodes().await.into_iter().collect();
        let lost: Vec<NodeChange> = live_nodes(log, &self.workspace, &self.cluster)
            .await?
            .into_iter()
            .filter(|(name, _)| self.fleet.owns(name) && !known.contains(name))
            .map(|(node, (set, _))| NodeChange::Terminated {
                node,
                set,
                reason: "lost: the agent that ran it stopped".into(),
                up_ms: 0,
            })
            .collect();
        self.record(log, &lost).await?;
        Ok(lost.len())
    }

    async fn record(&self, log: &dyn EventLog, changes: &[NodeChange]) -> Result<(), AgentError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(changes.len());
        for change in changes {
            batch.push(crate::encode(
                &self.event(change),
                crate::system_metadata("edge-agent"),
            )?);
        }
        // The nodes changed already: record it whatever else was appended meanwhile.
        log.append(
            &stream(&self.workspace, &self.cluster),
            ExpectedVersion::Any,
            &batch,
        )
        .await?;
        Ok(())
    }

    fn event(&self, change: &NodeChange) -> DomainEvent {
        let (workspace, cluster_id) = (self.workspace.clone(), self.cluster.clone());
        match change.clone() {
            NodeChange::Launched {
                node,
                set,
                instance_type,
                launched_at,
                ready_expected_at,
            } => DomainEvent::NodeLaunched(NodeLaunched {
                workspace,
                cluster_id,
                node,
                node_set: set,
                instance_type,
                launched_at,
                ready_expected_at,
            }),
            NodeChange::Ready {
                node,
                set,
                cold_start_ms,
            } => DomainEvent::NodeReady(NodeReady {
                workspace,
                cluster_id,
                node,
                node_set: set,
                cold_start_ms,
            }),
            NodeChange::Terminated {
                node,
                set,
                reason,
                up_ms,
            } => DomainEvent::NodeTerminated(NodeTerminated {
                workspace,
                cluster_id,
                node,
                node_set: set,
                reason,
                up_ms,
            }),
        }
    }
}

/// The nodes the log says exist (launched, not terminated): name → (node set, ready).
pub async fn live_nodes(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
) -> Result<BTreeMap<String, (NodeSet, bool)>, AgentError> {
    let mut known = LiveNodes::default();
    known.read_on(log, &stream(workspace, cluster)).await?;
    Ok(known.nodes)
}

/// A node stream's fold that reads on from where it stopped.
#[derive(Debug, Clone, Default)]
pub struct LiveNodes {
    /// name → (node set, ready)
    pub nodes: BTreeMap<String, (NodeSet, bool)>,
    pub version: i64,
}

impl LiveNodes {
    /// Applies the events appended to `stream` since the last call.
    pub async fn read_on(
        &mut self,
        log: &dyn EventLog,
        stream: &StreamId,
    ) -> Result<(), AgentError> {
        let nodes = &mut self.nodes;
        self.version = crate::fold_stream(log, stream, self.version, 1_000, |_, d| {
            match d {
                Some(DomainEvent::NodeLaunched(n)) => {
                    nodes.insert(n.node, (n.node_set, false));
                }
                Some(DomainEvent::NodeReady(n)) => {
                    nodes.insert(n.node, (n.node_set, true));
                }
                Some(DomainEvent::NodeTerminated(n)) => {
                    nodes.remove(&n.node);
                }
                _ => {}
            }
            Ok::<_, AgentError>(())
        })
        .await?;
        Ok(())
    }
}

/// Per node set, how many nodes the log says are ready and how many are starting.
pub async fn node_counts(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
) -> Result<BTreeMap<NodeSet, (u32, u32)>, AgentError> {
    let mut out: BTreeMap<NodeSet, (u32, u32)> = BTreeMap::new();
    for (set, ready) in live_nodes(log, workspace, cluster).await?.into_values() {
        let e = out.entry(set).or_default();
        if ready {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    Ok(out)
}
