//! Registering clusters.

use domain::{ClusterRegistered, DomainEvent};
use eventlog::{AppendOutcome, EventLog, ExpectedVersion, LogError, Metadata, StreamId};

use crate::CommandError;

/// The stream of one cluster: `cluster:<workspace>:<cluster id>` (ids cannot contain `:`, so two
/// workspaces' clusters can never share a stream).
pub fn stream(workspace: &domain::WorkspaceId, cluster: &domain::ClusterId) -> StreamId {
    // Both ids are slugs ([a-z0-9-]), so this is always a valid stream id.
    StreamId::new(format!("cluster:{workspace}:{cluster}"))
        .unwrap_or_else(|e| unreachable!("slug ids make valid stream ids: {e}"))
}

/// Appends `ClusterRegistered` to a new cluster stream. A cluster that exists is refused.
#[tracing::instrument(skip_all, fields(workspace = %cluster.workspace, cluster = %cluster.cluster_id))]
pub async fn register_cluster(
    log: &dyn EventLog,
    cluster: ClusterRegistered,
    metadata: Metadata,
) -> Result<AppendOutcome, CommandError> {
    let stream = stream(&cluster.workspace, &cluster.cluster_id);
    let what = format!(
        "cluster {} in workspace {}",
        cluster.cluster_id, cluster.workspace
    );
    let event = DomainEvent::ClusterRegistered(cluster);
    let new = crate::encode(&event, metadata)?;
    match log.append(&stream, ExpectedVersion::NoStream, &[new]).await {
        Err(LogError::VersionConflict { .. }) => Err(CommandError::AlreadyExists { what }),
        other => Ok(other?),
    }
}

/// The workspace and cluster the embedded defaults start with.
pub const DEFAULT_WORKSPACE: &str = "default";
pub const DEFAULT_CLUSTER: &str = "local";

/// Registers the `local` cluster in the `default` workspace unless it exists. Returns whether it
/// registered it.
pub async fn ensure_default_cluster(log: &dyn EventLog) -> Result<bool, CommandError> {
    let ids = || -> Result<_, domain::IdError> {
        Ok((
            domain::WorkspaceId::new(DEFAULT_WORKSPACE)?,
            domain::ClusterId::new(DEFAULT_CLUSTER)?,
            domain::Email::new("system@clusterra.local")?,
        ))
    };
    let (workspace, cluster_id, registered_by) =
        ids().unwrap_or_else(|e| unreachable!("built-in ids are valid: {e}"));
    let cluster = ClusterRegistered {
        workspace,
        cluster_id,
        name: "Local executor".into(),
        region: "local".into(),
        bucket: "local".into(),
        registered_by,
        slurm: None,
    };
    let metadata = crate::system_metadata("bootstrap");
    match register_cluster(log, cluster, metadata).await {
        Ok(_) => Ok(true),
        Err(CommandError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
