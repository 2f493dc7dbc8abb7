//! `webhooks`: each user's webhooks (collection `hooks:<workspace>:<email>`, keyed by webhook id)
//! and each webhook's delivery attempts (collection `deliveries:<webhook id>`, keyed by the
//! attempt's log position, zero-padded so key order is log order), for
//! `/v1/users/me/webhooks[/{id}/deliveries]`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::webhook::Kind;
use domain::{DomainEvent, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, Reads, ViewTx};

pub const NAME: &str = "webhooks";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct WebhookViews;

/// The collection of one user's webhooks.
pub fn hooks_collection(workspace: &WorkspaceId, email: &str) -> String {
    format!("hooks:{workspace}:{email}")
}

/// The collection of one webhook's delivery attempts.
pub fn deliveries_collection(webhook: uuid::Uuid) -> String {
    format!("deliveries:{webhook}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookView {
    pub webhook_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub user: String,
    pub url: String,
    pub events: Vec<Kind>,
    pub created_at: DateTime<Utc>,
    /// Its last delivery attempt, if any.
    #[serde(default)]
    pub last_attempt: Option<DeliveryView>,
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub delivery_id: String,
    pub position: i64,
    pub event: Kind,
    pub job_id: Option<u64>,
    pub attempt: u32,
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The log position of the attempt itself.
    pub attempt_position: i64,
}

/// One user's webhooks (live set), in id order.
pub async fn of_user(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    email: &str,
) -> Result<Vec<HookView>, super::ViewError> {
    let collection = hooks_collection(workspace, email);
    eventlog::list_all(read, eventlog::ModelSet::Live, NAME, &collection)
        .await?
        .iter()
        .map(|row| super::decode(NAME, &row.key, &row.doc))
        .collect()
}

/// One of a user's webhooks.
pub async fn get(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    email: &str,
    webhook: uuid::Uuid,
) -> Result<Option<HookView>, super::ViewError> {
    super::live(
        read,
        NAME,
        &hooks_collection(workspace, email),
        &webhook.to_string(),
    )
    .await
}

/// A webhook's latest delivery attempts, newest first: at most `limit`, before the attempt at
/// log position `before` when given (a previous page's last).
pub async fn deliveries(
    read: &dyn eventlog::ReadStore,
    webhook: uuid::Uuid,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<DeliveryView>, super::ViewError> {
    let before = before.map(key);
    read.list_docs_between(
        eventlog::ModelSet::Live,
        NAME,
        &deliveries_collection(webhook),
        eventlog::KeyRange {
            after: None,
            before: before.as_deref(),
            descending: true,
            limit,
        },
    )
    .await?
    .iter()
    .map(|row| super::decode(NAME, &row.key, &row.doc))
    .collect()
}

fn key(position: i64) -> String {
    format!("{:020}", position.max(0))
}

#[async_trait]
impl Projector for WebhookViews {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(event_type.starts_with("Webhook"))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let (event, domain) = (event.recorded, event.domain);
        match domain {
            Some(DomainEvent::WebhookRegistered(w)) => {
                let doc = HookView {
                    webhook_id: w.webhook_id,
                    user: w.user.to_string(),
                    url: w.url,
                    events: w.events,
                    created_at: w.at,
                    last_attempt: None,
                    position: event.position,
                    workspace: w.workspace,
                };
                let c = hooks_collection(&doc.workspace, &doc.user);
                view.put(&c, &doc.webhook_id.to_string(), &doc)?;
            }
            Some(DomainEvent::WebhookRemoved(w)) => {
                let c = hooks_collection(&w.workspace, w.user.as_str());
                view.delete(&c, &w.webhook_id.to_string());
            }
            Some(DomainEvent::WebhookDeliveryAttempted(d)) => {
                let attempt = DeliveryView {
                    delivery_id: d.delivery_id,
                    position: d.position,
                    event: d.event,
                    job_id: d.job_id,
                    attempt: d.attempt,
                    outcome: d.outcome,
                    status: d.status,
                    error: d.error,
                    duration_ms: d.duration_ms,
                    at: d.at,
                    next_attempt_at: d.next_attempt_at,
                    attempt_position: event.position,
                };
                view.put(
                    &deliveries_collection(d.webhook_id),
                    &key(event.position),
                    &attempt,
                )?;
                let c = hooks_collection(&d.workspace, d.user.as_str());
                let id = d.webhook_id.to_string();
                if let Some(mut hook) = view.get::<HookView>(&c, &id).await? {
                    hook.last_attempt = Some(attempt);
                    hook.position = event.position;
                    view.put(&c, &id, &hook)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
