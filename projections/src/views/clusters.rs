//! `clusters`: one view per registered cluster, keyed `<workspace>/<cluster id>`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{ClusterId, DomainEvent, WorkspaceId};
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};

use crate::{ProjectionError, Projector, ViewTx};

pub const NAME: &str = "clusters";
pub const COLLECTION: &str = "clusters";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub name: String,
    pub region: String,
    pub bucket: String,
    pub registered_by: String,
    pub registered_at: DateTime<Utc>,
    pub position: i64,
}

/// The document key of a cluster.
pub fn key(workspace: &WorkspaceId, cluster: &ClusterId) -> String {
    format!("{workspace}/{cluster}")
}

pub struct ClusterViews;

#[async_trait]
impl Projector for ClusterViews {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(
        &self,
        view: &mut ViewTx<'_>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let decoded = DomainEvent::decode(&event.event_type, event.schema_version, &event.data)
            .map_err(|e| ProjectionError::bad_event(event, e))?;
        if let Some(DomainEvent::ClusterRegistered(c)) = decoded {
            let doc = ClusterView {
                name: c.name,
                region: c.region,
                bucket: c.bucket,
                registered_by: c.registered_by.to_string(),
                registered_at: event.recorded_at,
                position: event.position,
                workspace: c.workspace,
                cluster_id: c.cluster_id,
            };
            view.put(COLLECTION, &key(&doc.workspace, &doc.cluster_id), &doc)?;
        }
        Ok(())
    }
}
