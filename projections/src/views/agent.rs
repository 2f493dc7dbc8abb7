//! `agent`: the agent's proposals, per user and cluster (collection
//! `proposals:<workspace>:<cluster>:<email>`, keyed by proposal id — a uuid v7, so key order is
//! the order they were made in), for `GET /v1/clusters/{id}/agent/proposals`; and each
//! conversation's proposal ids (`conversation-proposals:<conversation id>`), for the
//! conversation route. Conversations themselves are read from their own (bounded) stream.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::agent::{Decision, ProposalState, Tool};
use domain::{ClusterId, DomainEvent, Email, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, Reads, ViewTx};

pub const NAME: &str = "agent";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct AgentViews;

/// The collection of a user's proposals in a cluster.
pub fn collection(workspace: &WorkspaceId, cluster: &ClusterId, user: &Email) -> String {
    format!("proposals:{workspace}:{cluster}:{user}")
}

fn conversation_collection(conversation: &uuid::Uuid) -> String {
    format!("conversation-proposals:{conversation}")
}

/// A proposal as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalView {
    pub proposal_id: uuid::Uuid,
    pub conversation_id: uuid::Uuid,
    pub call_id: String,
    pub tool: Tool,
    pub arguments: serde_json::Value,
    pub digest: String,
    pub preview: serde_json::Value,
    /// As recorded: a pending proposal past `expires_at` reads as expired
    /// ([`ProposalState::at`]).
    #[serde(flatten)]
    pub decision: Decision,
    pub expires_at: DateTime<Utc>,
    pub proposed_at: DateTime<Utc>,
    /// The log position that last changed it.
    pub position: i64,
}

/// A user's proposals in a cluster, newest first, at most `limit`, in the states `wanted`
/// (as of `now`), reading at most `scan` documents.
pub async fn of_user(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    user: &Email,
    wanted: Option<ProposalState>,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<ProposalView>, super::ViewError> {
    let rows = read
        .list_docs_between(
            eventlog::ModelSet::Live,
            NAME,
            &collection(workspace, cluster, user),
            eventlog::KeyRange {
                descending: true,
                limit: 1_000,
                ..Default::default()
            },
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let p: ProposalView = super::decode(NAME, &row.key, &row.doc)?;
        if wanted.is_none_or(|w| p.decision.state.at(p.expires_at, now) == w) {
            out.push(p);
            if out.len() == limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The proposals a conversation made, oldest first.
pub async fn of_conversation(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    user: &Email,
    conversation: &uuid::Uuid,
) -> Result<Vec<ProposalView>, super::ViewError> {
    let ids = eventlog::list_all(
        read,
        eventlog::ModelSet::Live,
        NAME,
        &conversation_collection(conversation),
    )
    .await?;
    let c = collection(workspace, cluster, user);
    let mut out = Vec::with_capacity(ids.len());
    for row in ids {
        if let Some(p) = super::live::<ProposalView>(read, NAME, &c, &row.key).await? {
            out.push(p);
        }
    }
    Ok(out)
}

#[async_trait]
impl Projector for AgentViews {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(event_type.starts_with("AgentAction"))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let (event, domain) = (event.recorded, event.domain);
        let Some(domain) = domain else { return Ok(()) };
        if let DomainEvent::AgentActionProposed(p) = &domain {
            let key = p.proposal_id.to_string();
            let doc = ProposalView {
                proposal_id: p.proposal_id,
                conversation_id: p.conversation_id,
                call_id: p.call_id.clone(),
                tool: p.tool,
                arguments: p.arguments.clone(),
                digest: p.digest.clone(),
                preview: p.preview.clone(),
                decision: Decision::default(),
                expires_at: p.expires_at,
                proposed_at: event.recorded_at,
                position: event.position,
            };
            view.put(
                &collection(&p.workspace, &p.cluster_id, &p.user),
                &key,
                &doc,
            )?;
            return view.put(
                &conversation_collection(&p.conversation_id),
                &key,
                &serde_json::json!({}),
            );
        }
        let (workspace, cluster, user, id) = match &domain {
            DomainEvent::AgentActionConfirmed(e) => {
                (&e.workspace, &e.cluster_id, &e.user, e.proposal_id)
            }
            DomainEvent::AgentActionRejected(e) => {
                (&e.workspace, &e.cluster_id, &e.user, e.proposal_id)
            }
            DomainEvent::AgentActionExpired(e) => {
                (&e.workspace, &e.cluster_id, &e.user, e.proposal_id)
            }
            DomainEvent::AgentActionInvalidated(e) => {
                (&e.workspace, &e.cluster_id, &e.user, e.proposal_id)
            }
            DomainEvent::AgentActionExecuted(e) => {
                (&e.workspace, &e.cluster_id, &e.user, e.proposal_id)
            }
            DomainEvent::AgentActionFailed(e) => {
                (&e.workspace, &e.cluster_id, &e.user, e.proposal_id)
            }
            _ => return Ok(()),
        };
        let c = collection(workspace, cluster, user);
        let key = id.to_string();
        let Some(mut doc) = view.get::<ProposalView>(&c, &key).await? else {
            return Ok(());
        };
        doc.decision.apply(&domain);
        doc.position = event.position;
        view.put(&c, &key, &doc)
    }
}
