//! `quotas`: each workspace's per-user quotas (collection `quotas:<workspace>`, keyed by email),
//! for `GET /v1/workspaces/{ws}/quotas/{email}`, the profile, and the poll cycle's enforcement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::cost::{Period, Quota, QuotaMode, QuotaStatus};
use domain::{DomainEvent, MicroUsd, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, Reads, ViewTx};

pub const NAME: &str = "quotas";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct QuotaViews;

/// The collection of a workspace's quotas.
pub fn collection(workspace: &WorkspaceId) -> String {
    format!("quotas:{workspace}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaView {
    pub workspace: WorkspaceId,
    pub email: String,
    pub limit: MicroUsd,
    pub mode: QuotaMode,
    pub buffer_percent: u32,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
    /// The billing period (its start) in which `block_and_kill` was enforced since the quota
    /// was set: the user stays blocked for the rest of that period unless an admin sets the
    /// quota again.
    #[serde(default)]
    pub enforced_in: Option<DateTime<Utc>>,
    /// The log position that last changed this view.
    pub position: i64,
}

impl QuotaView {
    /// Where the user stands: the computed status, or blocked for the rest of a period in which
    /// the block was enforced.
    pub fn status(&self, usage: &domain::cost::Usage, period: Period) -> QuotaStatus {
        domain::cost::standing(usage, &self.quota(), self.enforced_in, period)
    }

    pub fn quota(&self) -> Quota {
        Quota {
            limit: self.limit,
            mode: self.mode,
            buffer_percent: self.buffer_percent,
        }
    }
}

/// One user's quota, if set.
pub async fn get(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    email: &str,
) -> Result<Option<QuotaView>, super::ViewError> {
    super::live(read, NAME, &collection(workspace), email).await
}

/// Every quota of a workspace (live set), by email.
pub async fn of_workspace(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
) -> Result<std::collections::BTreeMap<String, QuotaView>, eventlog::LogError> {
    Ok(
        eventlog::list_all(read, eventlog::ModelSet::Live, NAME, &collection(workspace))
            .await?
            .into_iter()
            .filter_map(|r| serde_json::from_str::<QuotaView>(&r.doc).ok())
            .map(|q| (q.email.clone(), q))
            .collect(),
    )
}

#[async_trait]
impl Projector for QuotaViews {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(matches!(
            event_type,
            // QuotaWarningRaised changes no view, but is read (and so must decode) as before.
            "QuotaSet" | "QuotaRemoved" | "QuotaEnforced" | "QuotaWarningRaised"
        ))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let (event, domain) = (event.recorded, event.domain);
        match domain {
            Some(DomainEvent::QuotaSet(q)) => {
                let doc = QuotaView {
                    email: q.email.to_string(),
                    limit: q.limit,
                    mode: q.mode,
                    buffer_percent: q.buffer_percent,
                    set_by: q.by.to_string(),
                    set_at: event.recorded_at,
                    enforced_in: None,
                    position: event.position,
                    workspace: q.workspace,
                };
                view.put(&collection(&doc.workspace), &doc.email, &doc)?;
            }
            Some(DomainEvent::QuotaRemoved(q)) => {
                view.delete(&collection(&q.workspace), q.email.as_str());
            }
            Some(DomainEvent::QuotaEnforced(q)) => {
                let c = collection(&q.workspace);
                if let Some(mut doc) = view.get::<QuotaView>(&c, q.email.as_str()).await? {
                    doc.enforced_in = Some(q.period_start);
                    doc.position = event.position;
                    view.put(&c, q.email.as_str(), &doc)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
