//! `quotas`: each workspace's per-user quotas (collection `quotas:<workspace>`, keyed by email),
//! for `GET /v1/workspaces/{ws}/quotas/{email}`, the profile, and the poll cycle's enforcement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::cost::{Quota, QuotaMode};
use domain::{DomainEvent, MicroUsd, WorkspaceId};
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};

use crate::{ProjectionError, Projector, ViewTx};

pub const NAME: &str = "quotas";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaView {
    pub workspace: WorkspaceId,
    pub email: String,
    pub limit: MicroUsd,
    pub mode: QuotaMode,
    pub buffer_percent: u32,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
    /// The log position that last changed this view.
    pub position: i64,
}

impl QuotaView {
    pub fn quota(&self) -> Quota {
        Quota {
            limit: self.limit,
            mode: self.mode,
            buffer_percent: self.buffer_percent,
        }
    }
}

/// The collection of a workspace's quotas.
pub fn collection(workspace: &WorkspaceId) -> String {
    format!("quotas:{workspace}")
}

pub struct QuotaViews;

#[async_trait]
impl Projector for QuotaViews {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(
        &self,
        view: &mut ViewTx<'_>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        if !event.event_type.starts_with("Quota") {
            return Ok(());
        }
        let decoded = DomainEvent::decode(&event.event_type, event.schema_version, &event.data)
            .map_err(|e| ProjectionError::bad_event(event, e))?;
        match decoded {
            Some(DomainEvent::QuotaSet(q)) => {
                let doc = QuotaView {
                    email: q.email.to_string(),
                    limit: q.limit,
                    mode: q.mode,
                    buffer_percent: q.buffer_percent,
                    set_by: q.by.to_string(),
                    set_at: event.recorded_at,
                    position: event.position,
                    workspace: q.workspace,
                };
                view.put(&collection(&doc.workspace), &doc.email, &doc)?;
            }
            Some(DomainEvent::QuotaRemoved(q)) => {
                view.delete(&collection(&q.workspace), q.email.as_str());
            }
            _ => {}
        }
        Ok(())
    }
}
