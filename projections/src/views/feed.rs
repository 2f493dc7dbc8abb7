//! `feed`: each cluster's user-facing events in log order, for `GET /v1/clusters/{id}/events` and
//! its live stream. Which events and how they read is decided in `domain::feed`.
//!
//! Collections: `feed:<workspace>:<cluster>`, keyed by the log position zero-padded to 20 digits
//! (key order = log order); `job-streams` maps a job's stream to its cluster and owner, because
//! state and cancel events name only the job.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::feed::{self, JobContext};
use domain::{ClusterId, DomainEvent, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, ProjectionError, Projector, Reads, ViewTx};

pub const NAME: &str = "feed";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct Feed;

const JOB_STREAMS: &str = "job-streams";

/// One line of a cluster's feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub position: i64,
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub actor: String,
    pub summary: String,
    /// The job it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub job_id: Option<u64>,
    /// Whose job it is; other members see `data` redacted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<String>,
    /// A bounded summary of the event's data (`domain::feed::summarize`).
    pub data: serde_json::Value,
}

/// The collection of a cluster's feed.
pub fn collection(workspace: &WorkspaceId, cluster: &ClusterId) -> String {
    format!("feed:{workspace}:{cluster}")
}

/// The key of a feed entry.
pub fn key(position: i64) -> String {
    format!("{position:020}")
}

/// One stored feed entry as read: its key, and the entry or why it does not parse (each reader
/// decides: a page refuses it, a live stream skips it and goes on).
#[derive(Debug)]
pub struct Read {
    pub key: String,
    pub entry: Result<FeedEntry, super::ViewError>,
}

/// The feed entries of a collection within `range` (positions as [`key`]s), in its order.
pub async fn range(
    read: &dyn eventlog::ReadStore,
    collection: &str,
    range: eventlog::KeyRange<'_>,
) -> Result<Vec<Read>, eventlog::LogError> {
    Ok(read
        .list_docs_between(eventlog::ModelSet::Live, NAME, collection, range)
        .await?
        .into_iter()
        .map(|row| Read {
            entry: super::decode(NAME, &row.key, &row.doc),
            key: row.key,
        })
        .collect())
}

#[derive(Serialize, Deserialize)]
struct JobStream {
    collection: String,
    job_id: u64,
    owner: String,
}

#[async_trait]
impl Projector for Feed {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(feed::FEED_TYPES.contains(&event_type))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let Event {
            recorded: event,
            domain: Some(decoded),
        } = event
        else {
            return Ok(());
        };
        let (target, job) = match &decoded {
            DomainEvent::ClusterRegistered(c) => (collection(&c.workspace, &c.cluster_id), None),
            DomainEvent::ScaleDecisionMade(d) => (collection(&d.workspace, &d.cluster_id), None),
            DomainEvent::NodeLaunched(n) => (collection(&n.workspace, &n.cluster_id), None),
            DomainEvent::NodeReady(n) => (collection(&n.workspace, &n.cluster_id), None),
            DomainEvent::NodeTerminated(n) => (collection(&n.workspace, &n.cluster_id), None),
            DomainEvent::SlurmReachabilityChanged(r) => {
                (collection(&r.workspace, &r.cluster_id), None)
            }
            DomainEvent::AgentActionProposed(e) => (collection(&e.workspace, &e.cluster_id), None),
            DomainEvent::AgentActionConfirmed(e) => (collection(&e.workspace, &e.cluster_id), None),
            DomainEvent::AgentActionRejected(e) => (collection(&e.workspace, &e.cluster_id), None),
            DomainEvent::AgentActionExpired(e) => (collection(&e.workspace, &e.cluster_id), None),
            DomainEvent::AgentActionInvalidated(e) => {
                (collection(&e.workspace, &e.cluster_id), None)
            }
            DomainEvent::AgentActionExecuted(e) => (collection(&e.workspace, &e.cluster_id), None),
            DomainEvent::AgentActionFailed(e) => (collection(&e.workspace, &e.cluster_id), None),
            DomainEvent::JobSubmitted(j) => {
                let target = collection(&j.workspace, &j.cluster_id);
                view.put(
                    JOB_STREAMS,
                    &event.stream_id,
                    &JobStream {
                        collection: target.clone(),
                        job_id: j.job_id,
                        owner: j.user.to_string(),
                    },
                )?;
                (target, None)
            }
            DomainEvent::JobStateChanged(_) | DomainEvent::JobCancelRequested(_) => {
                let Some(js) = view.get::<JobStream>(JOB_STREAMS, &event.stream_id).await? else {
                    return Ok(());
                };
                let ctx = JobContext {
                    job_id: js.job_id,
                    owner: js.owner,
                };
                (js.collection, Some(ctx))
            }
            // Not in FEED_TYPES: the runner does not hand them over (`reads`); which events are
            // cluster activity is decided once, in `domain::feed`.
            _ => return Ok(()),
        };
        let actor = event
            .metadata()
            .ok()
            .and_then(|m| m.actor)
            .unwrap_or_else(|| "system".into());
        let Some(described) = feed::describe(&decoded, &actor, job.as_ref()) else {
            return Ok(());
        };
        let entry = FeedEntry {
            position: event.position,
            time: event.recorded_at,
            event_type: event.event_type.clone(),
            actor,
            summary: described.summary,
            job_id: described.job_id,
            owner: described.owner,
            // A bounded summary: the whole body stays in the job's own stream.
            data: {
                let mut data = feed::summarize(
                    &event
                        .data_json()
                        .map_err(|e| ProjectionError::bad_event(event, e))?,
                );
                // A rejection's or invalidation's words are the proposal owner's, not the feed's.
                if event.event_type.starts_with("AgentAction")
                    && let Some(fields) = data.as_object_mut()
                {
                    fields.remove("reason");
                }
                data
            },
        };
        view.put(&target, &key(event.position), &entry)
    }
}
