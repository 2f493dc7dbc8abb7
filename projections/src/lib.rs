//! The projection engine: projectors derive read models from the log.
//!
//! A [`Projector`] turns events into document changes through a [`ViewTx`]; the runner
//! ([`runner`]) applies a batch of events and commits the changes together with the new
//! checkpoint in one transaction, so a crash never applies an event twice or skips one.
//! [`rebuild`] replays the log from position 0 into the rebuild tables, and can promote them or
//! compare them with the live ones.

pub mod rebuild;
pub mod runner;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use domain::DomainEvent;
use eventlog::{DocChange, LogError, ModelSet, ReadStore, RecordedEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use rebuild::{Difference, VerifyReport, rebuild_and_promote, verify};
pub use runner::{ProjectionStatus, Projections, Target, catch_up};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] LogError),
    #[error("event {position} ({event_type}) could not be read: {source}")]
    BadEvent {
        position: i64,
        event_type: String,
        source: serde_json::Error,
    },
    #[error("document {collection}/{key} could not be read: {source}")]
    BadDocument {
        collection: String,
        key: String,
        source: serde_json::Error,
    },
    #[error("no projection named {0:?}")]
    Unknown(String),
    /// The shared follower could not read the log; every projector starts again from its
    /// checkpoint.
    #[error("reading the log failed: {0}")]
    LogRead(String),
    /// The shared follower's commit of a batch failed for every projector in it.
    #[error("committing the batch failed: {0}")]
    CommitFailed(String),
}

impl ProjectionError {
    pub fn bad_event(event: &RecordedEvent, source: serde_json::Error) -> Self {
        ProjectionError::BadEvent {
            position: event.position,
            event_type: event.event_type.clone(),
            source,
        }
    }
}

/// What a projector reads of an event of a given type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Not handed to the projector at all.
    Nothing,
    /// The envelope only (type, stream, position, time): the data is not decoded.
    Envelope,
    /// The envelope and the decoded [`DomainEvent`]; a type this build does not know is skipped.
    Decoded,
}

impl Reads {
    /// `Decoded` when `wanted`, else `Nothing`.
    pub fn decoded_if(wanted: bool) -> Self {
        if wanted {
            Reads::Decoded
        } else {
            Reads::Nothing
        }
    }
}

/// One event as the runner hands it to a projector: decoded once, by the runner, when the
/// projector [`Reads::Decoded`] it.
pub struct Event<'a> {
    pub recorded: &'a RecordedEvent,
    /// `Some` exactly when the projector's [`Projector::reads`] said `Decoded`.
    pub domain: Option<DomainEvent>,
}

/// What [`Projector::apply`] returns.
pub type Applied = Result<(), ProjectionError>;

/// Derives one read model from the log.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// A stable name: it keys the projector's documents and checkpoint.
    fn name(&self) -> &'static str;

    /// Which events this projector reads, and how much of them. Must depend on the type only.
    /// By default every event, undecoded.
    fn reads(&self, event_type: &str) -> Reads {
        let _ = event_type;
        Reads::Envelope
    }

    /// Applies one event. Must be deterministic: the same events give the same documents, which
    /// is what `replay --verify` checks.
    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied;
}

/// Hands `event` to `projector` as it reads it: skipped, as its envelope, or decoded. An event
/// whose data does not decode stops the projector (`BadEvent`) rather than being skipped.
pub(crate) async fn apply_one(
    projector: &dyn Projector,
    view: &mut ViewTx<'_>,
    recorded: &RecordedEvent,
) -> Applied {
    let domain = match projector.reads(&recorded.event_type) {
        Reads::Nothing => return Ok(()),
        Reads::Envelope => None,
        Reads::Decoded => {
            match DomainEvent::decode(
                &recorded.event_type,
                recorded.schema_version,
                &recorded.data,
            ) {
                Ok(Some(domain)) => Some(domain),
                Ok(None) => return Ok(()),
                Err(e) => return Err(ProjectionError::bad_event(recorded, e)),
            }
        }
    };
    projector.apply(view, Event { recorded, domain }).await
}

/// The documents a projector reads and writes while it applies one batch. Reads go to a
/// batch-local cache first; writes stay in the cache until the runner commits them.
pub struct ViewTx<'a> {
    store: &'a dyn ReadStore,
    set: ModelSet,
    projection: &'static str,
    /// Document id -> (value, written in this batch).
    cache: HashMap<(String, String), (Option<serde_json::Value>, bool)>,
    /// Written ids in first-write order, so commits are deterministic.
    dirty: Vec<(String, String)>,
}

impl<'a> ViewTx<'a> {
    pub(crate) fn new(store: &'a dyn ReadStore, set: ModelSet, projection: &'static str) -> Self {
        Self {
            store,
            set,
            projection,
            cache: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    /// Reads a document, as this batch has left it so far.
    pub async fn get<T: DeserializeOwned>(
        &mut self,
        collection: &str,
        key: &str,
    ) -> Result<Option<T>, ProjectionError> {
        let id = (collection.to_string(), key.to_string());
        if !self.cache.contains_key(&id) {
            let stored = self
                .store
                .get_doc(self.set, self.projection, collection, key)
                .await?;
            let value = stored
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|source| ProjectionError::BadDocument {
                    collection: collection.into(),
                    key: key.into(),
                    source,
                })?;
            self.cache.insert(id.clone(), (value, false));
        }
        match self.cache.get(&id) {
            Some((Some(value), _)) => {
                serde_json::from_value(value.clone())
                    .map(Some)
                    .map_err(|source| ProjectionError::BadDocument {
                        collection: collection.into(),
                        key: key.into(),
                        source,
                    })
            }
            _ => Ok(None),
        }
    }

    /// Writes a document.
    pub fn put<T: Serialize>(
        &mut self,
        collection: &str,
        key: &str,
        doc: &T,
    ) -> Result<(), ProjectionError> {
        let value = serde_json::to_value(doc).map_err(|source| ProjectionError::BadDocument {
            collection: collection.into(),
            key: key.into(),
            source,
        })?;
        self.mark(collection, key, Some(value));
        Ok(())
    }

    /// Deletes a document.
    pub fn delete(&mut self, collection: &str, key: &str) {
        self.mark(collection, key, None);
    }

    fn mark(&mut self, collection: &str, key: &str, value: Option<serde_json::Value>) {
        let id = (collection.to_string(), key.to_string());
        let was_dirty = matches!(self.cache.get(&id), Some((_, true)));
        self.cache.insert(id.clone(), (value, true));
        if !was_dirty {
            self.dirty.push(id);
        }
    }

    pub(crate) fn into_changes(mut self) -> Vec<DocChange> {
        let mut changes = Vec::with_capacity(self.dirty.len());
        for (collection, key) in std::mem::take(&mut self.dirty) {
            match self.cache.remove(&(collection.clone(), key.clone())) {
                Some((Some(value), _)) => changes.push(DocChange::Put {
                    collection,
                    key,
                    doc: value.to_string(),
                }),
                _ => changes.push(DocChange::Delete { collection, key }),
            }
        }
        changes
    }
}

/// Every projector this build ships.
pub fn all_projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(views::event_counts::EventCounts),
        Arc::new(views::streams::StreamSummaries),
        Arc::new(views::clusters::ClusterViews),
        Arc::new(views::jobs::JobViews),
        Arc::new(views::jobs::UserJobViews),
        Arc::new(views::feed::Feed),
        Arc::new(views::quotas::QuotaViews),
        Arc::new(views::costs::CostViews),
        Arc::new(views::agent::AgentViews),
        Arc::new(views::webhooks::WebhookViews),
    ]
}

/// The projectors selected by `name`, or all of them for `"all"`.
pub fn select(name: &str) -> Result<Vec<Arc<dyn Projector>>, ProjectionError> {
    let all = all_projectors();
    if name == "all" {
        return Ok(all);
    }
    let chosen: Vec<_> = all.into_iter().filter(|p| p.name() == name).collect();
    if chosen.is_empty() {
        Err(ProjectionError::Unknown(name.to_string()))
    } else {
        Ok(chosen)
    }
}
