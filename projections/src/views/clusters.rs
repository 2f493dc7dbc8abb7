//! `clusters`: one view per registered cluster. Each workspace is its own collection
//! (`ws:<workspace>`), keyed by cluster id, so listing a workspace never touches another's.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{ClusterId, DomainEvent, SlurmEndpoint, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, Reads, ViewTx};

pub const NAME: &str = "clusters";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct ClusterViews;

/// The collection holding a workspace's clusters.
pub fn collection(workspace: &WorkspaceId) -> String {
    format!("ws:{workspace}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub name: String,
    pub region: String,
    pub bucket: String,
    pub registered_by: String,
    pub registered_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmEndpoint>,
    /// The log position that last changed this view.
    pub position: i64,
}

/// The collection holding every workspace's clusters, keyed `<workspace>/<cluster>`, for the
/// server's own use (connecting clusters to their Slurm); never served to callers.
pub const ALL: &str = "all";

/// One cluster of a workspace, if registered.
pub async fn get(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
) -> Result<Option<ClusterView>, super::ViewError> {
    super::live(read, NAME, &collection(workspace), cluster.as_str()).await
}

/// Every cluster of a workspace, in id order.
pub async fn list(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
) -> Result<Vec<ClusterView>, super::ViewError> {
    eventlog::list_all(read, eventlog::ModelSet::Live, NAME, &collection(workspace))
        .await?
        .iter()
        .map(|row| super::decode(NAME, &row.key, &row.doc))
        .collect()
}

/// Whether a cluster other than `except` (`<workspace>/<cluster>`), in any workspace, has
/// `bucket`.
pub async fn bucket_taken(
    read: &dyn eventlog::ReadStore,
    bucket: &str,
    except: &str,
) -> Result<bool, super::ViewError> {
    let mut after: Option<String> = None;
    loop {
        let rows = read
            .list_docs(eventlog::ModelSet::Live, NAME, ALL, after.as_deref(), 500)
            .await?;
        for row in &rows {
            if row.key != except
                && super::decode::<ClusterView>(NAME, &row.key, &row.doc)?.bucket == bucket
            {
                return Ok(true);
            }
        }
        match rows.last() {
            Some(last) if rows.len() == 500 => after = Some(last.key.clone()),
            _ => return Ok(false),
        }
    }
}

/// Whether a cluster's Slurm answers, as last recorded (`SlurmReachabilityChanged`). Kept apart
/// from [`ClusterView`], which never changes after registration (the API caches it); absent
/// for a cluster whose Slurm never stopped answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmStatus {
    pub reachable: bool,
    /// Unreachable since (the first call that got no answer failed), or reachable again since.
    pub since: DateTime<Utc>,
    pub cause: Option<String>,
    pub position: i64,
}

/// The collection of a workspace's [`SlurmStatus`]es, keyed by cluster id.
pub fn status_collection(workspace: &WorkspaceId) -> String {
    format!("slurm-status:{workspace}")
}

/// The recorded reachability of a cluster's Slurm; `None` if it never stopped answering.
pub async fn slurm_status(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
) -> Result<Option<SlurmStatus>, eventlog::LogError> {
    Ok(read
        .get_doc(
            eventlog::ModelSet::Live,
            NAME,
            &status_collection(workspace),
            cluster.as_str(),
        )
        .await?
        .and_then(|doc| serde_json::from_str(&doc).ok()))
}

#[async_trait]
impl Projector for ClusterViews {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(matches!(
            event_type,
            "ClusterRegistered" | "SlurmReachabilityChanged"
        ))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let Event {
            recorded: event,
            domain: decoded,
        } = event;
        if let Some(DomainEvent::SlurmReachabilityChanged(r)) = &decoded {
            let status = SlurmStatus {
                reachable: r.reachable,
                since: r.since,
                cause: r.cause.clone(),
                position: event.position,
            };
            view.put(
                &status_collection(&r.workspace),
                r.cluster_id.as_str(),
                &status,
            )?;
            return Ok(());
        }
        if let Some(DomainEvent::ClusterRegistered(c)) = decoded {
            let doc = ClusterView {
                name: c.name,
                region: c.region,
                bucket: c.bucket,
                registered_by: c.registered_by.to_string(),
                registered_at: event.recorded_at,
                slurm: c.slurm,
                position: event.position,
                workspace: c.workspace,
                cluster_id: c.cluster_id,
            };
            view.put(&collection(&doc.workspace), doc.cluster_id.as_str(), &doc)?;
            view.put(ALL, &format!("{}/{}", doc.workspace, doc.cluster_id), &doc)?;
        }
        Ok(())
    }
}
