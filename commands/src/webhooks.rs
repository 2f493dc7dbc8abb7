//! Webhooks: registering and removing them, and the outbox that delivers the log's events to
//! them.
//!
//! The outbox is a projector-like worker with a checkpoint of its own in the read store
//! ([`OUTBOX`]): it reads the log after its checkpoint and, in the same read-store transaction
//! that moves the checkpoint, queues each event a webhook asked for (collection
//! `queue:<webhook id>`, keyed by log position, with the exact body to send). So an event is
//! queued once, and a queued delivery survives a restart. Each webhook's queue is delivered in
//! order, head first: a delivery that fails is tried again after a backoff
//! (`domain::webhook::backoff`) and the webhook's later events wait behind it (in order per job,
//! and per webhook), until it is delivered or, [`domain::webhook::GIVE_UP_AFTER_HOURS`] after
//! its first attempt, given up. Every attempt is recorded in the log
//! (`WebhookDeliveryAttempted`), which is what the user's list of deliveries shows. A delivery
//! whose receiver answered but whose outcome was not recorded (the server stopped in between)
//! is sent again: delivery is at least once, and the id header says which repeat it is.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::webhook::{self, JobOwner, Kind, Payload};
use domain::{DomainEvent, Email, WebhookDeliveryAttempted, WorkspaceId};
use eventlog::{
    DocChange, ExpectedVersion, LogError, ModelSet, ReadStore, RecordedEvent, StreamId,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::EventLog;

/// The outbox's name in the read store (its checkpoint and documents).
pub const OUTBOX: &str = "webhook-outbox";
const HOOKS: &str = "hooks";
/// Log events read per step.
const BATCH: usize = 500;
/// Webhooks delivered to at once.
const CONCURRENCY: usize = 16;
/// The shortest time between two outbox passes (what a delivery may wait beyond its event).
const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a read position that queued nothing may go unstored.
const IDLE_COMMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Job owners remembered before the memory is cleared (a miss reads the job's stream).
const OWNER_CACHE: usize = 100_000;

fn queue_collection(webhook: uuid::Uuid) -> String {
    format!("queue:{webhook}")
}

/// Log order, then the event's own order.
fn queue_key(position: i64, index: u8) -> String {
    format!("{:020}.{index}", position.max(0))
}

/// A webhook's stream: `webhook:<workspace>:<id>`.
pub fn stream(workspace: &WorkspaceId, webhook: uuid::Uuid) -> Result<StreamId, LogError> {
    StreamId::new(format!("webhook:{workspace}:{webhook}"))
}

/// A user's registrations and removals: `webhooks:<workspace>:<email>`. One stream per user, so
/// the count of their webhooks is checked against the stream's version ([`register`]).
pub fn user_stream(workspace: &WorkspaceId, user: &Email) -> Result<StreamId, LogError> {
    StreamId::new(format!("webhooks:{workspace}:{user}"))
}

/// Why a webhook command was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("you have {0} webhooks, the most one user may have; remove one first")]
    TooMany(usize),
    #[error("you have no webhook {0}")]
    NotFound(uuid::Uuid),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The user's webhooks now (ids), and their stream's version.
async fn active(
    log: &dyn EventLog,
    stream: &StreamId,
) -> Result<(BTreeSet<uuid::Uuid>, i64), WebhookError> {
    let mut ids = BTreeSet::new();
    let version = crate::fold_stream(log, stream, 0, 500, |_, e| {
        match e {
            Some(DomainEvent::WebhookRegistered(w)) => {
                ids.insert(w.webhook_id);
            }
            Some(DomainEvent::WebhookRemoved(w)) => {
                ids.remove(&w.webhook_id);
            }
            _ => {}
        }
        Ok::<(), WebhookError>(())
    })
    .await?;
    Ok((ids, version))
}

/// Registers a webhook of `user`'s (URL and events already checked): at most
/// [`webhook::MAX_PER_USER`] per user, whatever requests race. Returns its id and position.
pub async fn register(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    user: &Email,
    url: &str,
    events: Vec<Kind>,
    metadata: eventlog::Metadata,
    now: DateTime<Utc>,
) -> Result<(uuid::Uuid, i64), WebhookError> {
    let stream = user_stream(workspace, user)?;
    let (ids, version) = active(log, &stream).await?;
    if ids.len() >= webhook::MAX_PER_USER {
        return Err(WebhookError::TooMany(ids.len()));
    }
    let webhook_id = uuid::Uuid::now_v7();
    let event = DomainEvent::WebhookRegistered(domain::WebhookRegistered {
        webhook_id,
        workspace: workspace.clone(),
        user: user.clone(),
        url: url.to_string(),
        events,
        at: now,
    });
    let out = log
        .append(
            &stream,
            ExpectedVersion::Exact(version),
            &[crate::encode(&event, metadata)?],
        )
        .await?;
    Ok((webhook_id, out.last_position))
}

/// Removes one of `user`'s webhooks; nothing more is delivered to it.
pub async fn remove(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    user: &Email,
    webhook_id: uuid::Uuid,
    metadata: eventlog::Metadata,
    now: DateTime<Utc>,
) -> Result<i64, WebhookError> {
    let stream = user_stream(workspace, user)?;
    let (ids, version) = active(log, &stream).await?;
    if !ids.contains(&webhook_id) {
        return Err(WebhookError::NotFound(webhook_id));
    }
    let event = DomainEvent::WebhookRemoved(domain::WebhookRemoved {
        webhook_id,
        workspace: workspace.clone(),
        user: user.clone(),
        by: user.clone(),
        at: now,
    });
    Ok(log
        .append(
            &stream,
            ExpectedVersion::Exact(version),
            &[crate::encode(&event, metadata)?],
        )
        .await?
        .last_position)
}

/// A webhook as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub webhook_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub user: Email,
    pub url: String,
    pub events: Vec<Kind>,
    /// Its attempt stream's version as the outbox last wrote it (stored with each attempt's
    /// queue change): attempts are appended at it, so a replica that stopped leading without
    /// knowing it cannot record (and act on) a stale attempt after the new leader wrote one, and
    /// a new leader starts from it instead of reading every past attempt.
    #[serde(default)]
    pub version: i64,
}

/// One queued delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub position: i64,
    #[serde(default)]
    pub index: u8,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// The exact body sent on every attempt.
    pub body: String,
    /// When the event was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// How a POST to a receiver went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// It answered with this status.
    Answered(u16),
    /// It did not answer (refused, timed out, reset), in words.
    NoAnswer(String),
}

/// The port that POSTs a delivery (implemented with an HTTP client in `gateways`). It must not
/// follow redirects: an allowed host could send the request on to one that is not.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    async fn post(&self, url: &str, headers: &[(&'static str, String)], body: &[u8]) -> Sent;
}

/// What the outbox needs beside the log, the read store and the sender.
#[derive(Clone)]
pub struct OutboxSettings {
    /// The server's webhook key: each webhook's secret is derived from it.
    pub key: Arc<Vec<u8>>,
    /// `webhook_allow`: the hosts deliveries may go to (checked again at each attempt).
    pub allow: Arc<Vec<String>>,
}

impl std::fmt::Debug for OutboxSettings {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxSettings")
            .field("key", &"<redacted>")
            .field("allow", &self.allow)
            .finish()
    }
}

/// What one outbox pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub queued: usize,
    pub delivered: usize,
    pub failed: usize,
    pub gave_up: usize,
}

/// The webhooks the outbox knows, by id and by user.
#[derive(Debug, Clone, Default)]
struct Hooks {
    by_id: HashMap<uuid::Uuid, Hook>,
    by_user: HashMap<(WorkspaceId, Email), Vec<uuid::Uuid>>,
}

impl Hooks {
    fn insert(&mut self, hook: Hook) {
        let user = (hook.workspace.clone(), hook.user.clone());
        let ids = self.by_user.entry(user).or_default();
        if !ids.contains(&hook.webhook_id) {
            ids.push(hook.webhook_id);
        }
        self.by_id.insert(hook.webhook_id, hook);
    }

    fn remove(&mut self, id: uuid::Uuid) {
        if let Some(hook) = self.by_id.remove(&id) {
            let user = (hook.workspace, hook.user);
            if let Some(ids) = self.by_user.get_mut(&user) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
    }

    /// The user's webhooks that asked for `kind`.
    fn of(&self, workspace: &WorkspaceId, user: &Email, kind: Kind) -> Vec<&Hook> {
        self.by_user
            .get(&(workspace.clone(), user.clone()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .filter(|h| h.events.contains(&kind))
            .collect()
    }
}

/// The outbox worker's state between passes.
pub struct Outbox {
    log: Arc<dyn EventLog>,
    read: Arc<dyn ReadStore>,
    sender: Arc<dyn WebhookSender>,
    settings: OutboxSettings,
    clock: Arc<dyn eventlog::Clock>,
    /// How far the log has been read.
    checkpoint: i64,
    /// The checkpoint in the read store: behind `checkpoint` while only events that queue
    /// nothing were read since (stored at most every [`IDLE_COMMIT`], so a busy log that
    /// tells no webhook anything costs no write per pass).
    stored: i64,
    stored_at: std::time::Instant,
    hooks: Hooks,
    /// Webhooks whose queue may hold something, and when its head is due (`None`: now).
    busy: HashMap<uuid::Uuid, Option<DateTime<Utc>>>,
    owners: HashMap<String, Option<JobOwner>>,
    loaded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One attempt's result, waiting to be recorded.
struct Attempted {
    hook: Hook,
    q: Queued,
    sent: Sent,
    duration_ms: u64,
    at: DateTime<Utc>,
}

impl Outbox {
    pub fn new(
        log: Arc<dyn EventLog>,
        read: Arc<dyn ReadStore>,
        sender: Arc<dyn WebhookSender>,
        settings: OutboxSettings,
        clock: Arc<dyn eventlog::Clock>,
    ) -> Self {
        Outbox {
            log,
            read,
            sender,
            settings,
            clock,
            checkpoint: 0,
            stored: 0,
            stored_at: std::time::Instant::now(),
            hooks: Hooks::default(),
            busy: HashMap::new(),
            owners: HashMap::new(),
            loaded: false,
        }
    }

    /// Reads the checkpoint and the webhooks from the read store (at the first pass, and again
    /// when another runner moved the checkpoint or wrote a webhook's stream).
    async fn load(&mut self) -> Result<(), OutboxError> {
        self.checkpoint = self.read.checkpoint(ModelSet::Live, OUTBOX).await?;
        self.stored = self.checkpoint;
        self.stored_at = std::time::Instant::now();
        self.hooks = Hooks::default();
        for row in eventlog::list_all(self.read.as_ref(), ModelSet::Live, OUTBOX, HOOKS).await? {
            let hook: Hook = serde_json::from_str(&row.doc)?;
            self.hooks.insert(hook);
        }
        // Any of them may have a queue left from before.
        self.busy = self.hooks.by_id.keys().map(|id| (*id, None)).collect();
        self.loaded = true;
        Ok(())
    }

    /// Queues what the log holds after the checkpoint (a batch at most), then delivers what is
    /// due. Returns what it did and whether the log has more to read.
    pub async fn pass(&mut self) -> Result<(Pass, bool), OutboxError> {
        if !self.loaded {
            self.load().await?;
        }
        let mut done = Pass::default();
        let events = self.log.read_all(self.checkpoint, BATCH).await?;
        let more = events.len() == BATCH;
        if let Some(last) = events.last().map(|e| e.position) {
            let mut changes = Vec::new();
            let mut busy = Vec::new();
            // Taken, not cloned: a batch that fails to commit makes the worker load again.
            let mut hooks = std::mem::take(&mut self.hooks);
            let mut scanned = Ok(());
            for e in &events {
                scanned = self
                    .scan(e, &mut hooks, &mut changes, &mut busy, &mut done)
                    .await;
                if scanned.is_err() {
                    break;
                }
            }
            self.hooks = hooks;
            if let Err(e) = scanned {
                self.loaded = false;
                return Err(e);
            }
            if changes.is_empty() && self.stored_at.elapsed() < IDLE_COMMIT {
                self.checkpoint = last;
                self.deliver(&mut done).await?;
                return Ok((done, more));
            }
            match self
                .read
                .commit(ModelSet::Live, OUTBOX, self.stored, last, &changes)
                .await
            {
                Ok(()) => {
                    self.checkpoint = last;
                    self.stored = last;
                    self.stored_at = std::time::Instant::now();
                    for id in busy {
                        self.busy.entry(id).or_insert(None);
                    }
                }
                Err(e) => {
                    // Another runner (a former leader) moved it, or the store failed: start
                    // again from what the store holds.
                    self.loaded = false;
                    return match e {
                        LogError::CheckpointMoved { .. } => Ok((Pass::default(), true)),
                        e => Err(e.into()),
                    };
                }
            }
        }
        self.deliver(&mut done).await?;
        Ok((done, more))
    }

    /// What one log event changes: a webhook registered or removed, or an event to queue.
    async fn scan(
        &mut self,
        e: &RecordedEvent,
        hooks: &mut Hooks,
        changes: &mut Vec<DocChange>,
        busy: &mut Vec<uuid::Uuid>,
        done: &mut Pass,
    ) -> Result<(), OutboxError> {
        let relevant = matches!(
            e.event_type.as_str(),
            "WebhookRegistered"
                | "WebhookRemoved"
                | "JobSubmitted"
                | "JobStateChanged"
                | "QuotaWarningRaised"
                | "QuotaEnforced"
        );
        if !relevant {
            return Ok(());
        }
        // Nothing to tell anyone until someone has a webhook.
        if hooks.by_id.is_empty() && !e.event_type.starts_with("Webhook") {
            return Ok(());
        }
        let Some(event) = DomainEvent::decode(&e.event_type, e.schema_version, &e.data)? else {
            return Ok(());
        };
        match &event {
            DomainEvent::WebhookRegistered(w) => {
                let hook = Hook {
                    webhook_id: w.webhook_id,
                    workspace: w.workspace.clone(),
                    user: w.user.clone(),
                    url: w.url.clone(),
                    events: w.events.clone(),
                    version: 0,
                };
                changes.push(DocChange::Put {
                    collection: HOOKS.into(),
                    key: w.webhook_id.to_string(),
                    doc: serde_json::to_string(&hook)?,
                });
                hooks.insert(hook);
                return Ok(());
            }
            DomainEvent::WebhookRemoved(w) => {
                hooks.remove(w.webhook_id);
                changes.push(DocChange::Delete {
                    collection: HOOKS.into(),
                    key: w.webhook_id.to_string(),
                });
                // Its queue goes with it: what this batch queued, and what the store holds.
                let queue = queue_collection(w.webhook_id);
                changes.retain(
                    |c| !matches!(c, DocChange::Put { collection, .. } if *collection == queue),
                );
                for row in
                    eventlog::list_all(self.read.as_ref(), ModelSet::Live, OUTBOX, &queue).await?
                {
                    changes.push(DocChange::Delete {
                        collection: queue.clone(),
                        key: row.key,
                    });
                }
                return Ok(());
            }
            DomainEvent::JobSubmitted(j) => {
                self.remember(
                    &e.stream_id,
                    Some(JobOwner {
                        workspace: j.workspace.clone(),
                        cluster_id: j.cluster_id.clone(),
                        job_id: j.job_id,
                        name: j.name.clone(),
                        user: j.user.clone(),
                    }),
                );
                return Ok(());
            }
            _ => {}
        }
        let owner = match &event {
            DomainEvent::JobStateChanged(_) => self.owner(&e.stream_id).await?,
            _ => None,
        };
        for o in webhook::occurrences(&event, owner.as_ref()) {
            for hook in hooks.of(&o.workspace, &o.user, o.kind) {
                let payload = Payload {
                    id: webhook::delivery_id(hook.webhook_id, e.position, o.index),
                    kind: o.kind,
                    position: e.position,
                    occurred_at: e.recorded_at,
                    workspace: o.workspace.clone(),
                    user: o.user.clone(),
                    data: o.data.clone(),
                };
                let queued = Queued {
                    position: e.position,
                    index: o.index,
                    kind: o.kind,
                    job_id: o.job_id,
                    body: serde_json::to_string(&payload)?,
                    occurred_at: Some(e.recorded_at),
                    attempts: 0,
                    first_attempt_at: None,
                    next_attempt_at: None,
                };
                changes.push(DocChange::Put {
                    collection: queue_collection(hook.webhook_id),
                    key: queue_key(e.position, o.index),
                    doc: serde_json::to_string(&queued)?,
                });
                busy.push(hook.webhook_id);
                done.queued += 1;
            }
        }
        Ok(())
    }

    fn remember(&mut self, stream: &str, owner: Option<JobOwner>) {
        if self.owners.len() >= OWNER_CACHE {
            self.owners.clear();
        }
        self.owners.insert(stream.to_string(), owner);
    }

    /// Whose job a stream is: remembered from its `JobSubmitted`, else read from the stream
    /// (page by page: retried submissions put requests and failures before it).
    async fn owner(&mut self, stream: &str) -> Result<Option<JobOwner>, OutboxError> {
        if let Some(o) = self.owners.get(stream) {
            return Ok(o.clone());
        }
        let id = StreamId::new(stream)?;
        let mut found = None;
        let mut after = 0;
        'pages: loop {
            let page = self.log.read_stream(&id, after, 64).await?;
            let Some(last) = page.last() else { break };
            after = last.stream_version;
            for e in &page {
                if let Some(DomainEvent::JobSubmitted(j)) =
                    DomainEvent::decode(&e.event_type, e.schema_version, &e.data)?
                {
                    found = Some(JobOwner {
                        workspace: j.workspace,
                        cluster_id: j.cluster_id,
                        job_id: j.job_id,
                        name: j.name,
                        user: j.user,
                    });
                    break 'pages;
                }
            }
        }
        self.remember(stream, found.clone());
        Ok(found)
    }

    /// The hook's document with `version`, to store beside a queue change (none once removed).
    fn hook_at(&mut self, id: uuid::Uuid, version: i64) -> Result<Option<DocChange>, OutboxError> {
        let Some(hook) = self.hooks.by_id.get_mut(&id) else {
            return Ok(None);
        };
        hook.version = version;
        Ok(Some(DocChange::Put {
            collection: HOOKS.into(),
            key: id.to_string(),
            doc: serde_json::to_string(hook)?,
        }))
    }

    /// Sends each busy webhook's due head delivery (several webhooks at once), records each
    /// attempt in the log, then takes delivered and given-up ones off their queues.
    async fn deliver(&mut self, done: &mut Pass) -> Result<(), OutboxError> {
        let now = self.clock.now();
        let mut due = Vec::new();
        let mut idle = Vec::new();
        let candidates: Vec<uuid::Uuid> = self
            .busy
            .iter()
            .filter(|(_, at)| at.is_none_or(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in candidates {
            let Some(hook) = self.hooks.by_id.get(&id).cloned() else {
                idle.push(id);
                continue;
            };
            let head = self
                .read
                .list_docs(ModelSet::Live, OUTBOX, &queue_collection(id), None, 1)
                .await?;
            let Some(row) = head.into_iter().next() else {
                idle.push(id);
                continue;
            };
            let q: Queued = serde_json::from_str(&row.doc)?;
            match q.next_attempt_at.filter(|at| *at > now) {
                Some(at) => {
                    self.busy.insert(id, Some(at));
                }
                None => due.push((hook, q)),
            }
        }
        for id in idle {
            self.busy.remove(&id);
        }
        if due.is_empty() {
            return Ok(());
        }
        let attempts: Vec<Attempted> =
            futures::stream::iter(due.into_iter().map(|(hook, q)| self.attempt(hook, q, now)))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        for a in attempts {
            // Recorded one by one: an attempt the log holds is taken off its queue at once.
            if !self.record(a, done).await? {
                self.loaded = false;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Records an attempt in the log at its webhook stream's version, then updates its queue.
    /// `false` when another runner wrote the stream meanwhile (its result is dropped).
    async fn record(&mut self, a: Attempted, done: &mut Pass) -> Result<bool, OutboxError> {
        let Attempted {
            hook,
            mut q,
            sent,
            duration_ms,
            at,
        } = a;
        q.attempts = q.attempts.saturating_add(1);
        let first = *q.first_attempt_at.get_or_insert(at);
        let day = chrono::Duration::hours(webhook::GIVE_UP_AFTER_HOURS);
        let (outcome, status, error) = match &sent {
            Sent::Answered(s) if (200..300).contains(s) => ("delivered", Some(*s), None),
            Sent::Answered(s) => (
                "failed",
                Some(*s),
                Some(format!("the receiver answered HTTP {s}")),
            ),
            Sent::NoAnswer(why) => ("failed", None, Some(why.clone())),
        };
        // Given up a day after its first attempt, or once the event itself is a day old (what
        // queued behind a receiver that was down goes at once then, instead of a day each).
        let stale = at - first >= day || q.occurred_at.is_some_and(|o| at - o >= day);
        let outcome = if outcome == "failed" && stale {
            "gave_up"
        } else {
            outcome
        };
        let next = (outcome == "failed").then(|| at + webhook::backoff(q.attempts));
        let event = DomainEvent::WebhookDeliveryAttempted(WebhookDeliveryAttempted {
            webhook_id: hook.webhook_id,
            workspace: hook.workspace.clone(),
            user: hook.user.clone(),
            delivery_id: webhook::delivery_id(hook.webhook_id, q.position, q.index),
            position: q.position,
            event: q.kind,
            job_id: q.job_id,
            attempt: q.attempts,
            outcome: outcome.into(),
            status,
            error,
            duration_ms,
            at,
            next_attempt_at: next,
        });
        let attempts = stream(&hook.workspace, hook.webhook_id)?;
        let version = match self
            .log
            .append(
                &attempts,
                ExpectedVersion::Exact(hook.version),
                &[crate::encode(&event, crate::system_metadata("webhooks"))?],
            )
            .await
        {
            Ok(out) => out.stream_version,
            Err(LogError::VersionConflict { .. }) => {
                // Another runner wrote the stream (or this one stopped between an append and
                // its queue change): this result is dropped, and the version caught up from
                // the one known, reading only what was written since.
                tracing::warn!(webhook = %hook.webhook_id, "another runner wrote this webhook's attempts; this attempt's result is dropped");
                let caught_up =
                    crate::fold_stream(self.log.as_ref(), &attempts, hook.version, 500, |_, _| {
                        Ok::<(), OutboxError>(())
                    })
                    .await?;
                let change = self.hook_at(hook.webhook_id, caught_up)?;
                self.read
                    .commit(
                        ModelSet::Live,
                        OUTBOX,
                        self.stored,
                        self.stored,
                        &change.into_iter().collect::<Vec<_>>(),
                    )
                    .await?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let collection = queue_collection(hook.webhook_id);
        let key = queue_key(q.position, q.index);
        let change = match outcome {
            "delivered" | "gave_up" => {
                if outcome == "delivered" {
                    done.delivered += 1;
                } else {
                    done.gave_up += 1;
                    tracing::warn!(webhook = %hook.webhook_id, position = q.position, attempts = q.attempts, "webhook delivery given up");
                }
                self.busy.insert(hook.webhook_id, None);
                DocChange::Delete { collection, key }
            }
            _ => {
                done.failed += 1;
                q.next_attempt_at = next;
                self.busy.insert(hook.webhook_id, next);
                DocChange::Put {
                    collection,
                    key,
                    doc: serde_json::to_string(&q)?,
                }
            }
        };
        let mut changes = vec![change];
        changes.extend(self.hook_at(hook.webhook_id, version)?);
        match self
            .read
            .commit(ModelSet::Live, OUTBOX, self.stored, self.stored, &changes)
            .await
        {
            Ok(()) => Ok(true),
            Err(LogError::CheckpointMoved { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One signed POST of a queued delivery — unless the host is no longer allowed, or the
    /// event is a day old (then it is not sent, and given up).
    async fn attempt(&self, hook: Hook, q: Queued, now: DateTime<Utc>) -> Attempted {
        let started = std::time::Instant::now();
        let day = chrono::Duration::hours(webhook::GIVE_UP_AFTER_HOURS);
        let host = url_host(&hook.url);
        let sent = match host {
            _ if q.occurred_at.is_some_and(|o| now - o >= day) => Sent::NoAnswer(format!(
                "the event is more than {} hours old; not sent",
                webhook::GIVE_UP_AFTER_HOURS
            )),
            Some(h) if webhook::host_allowed(&self.settings.allow, &h) => {
                let secret = webhook::secret_of(&self.settings.key, hook.webhook_id);
                let timestamp = now.timestamp();
                let headers = [
                    ("Content-Type", "application/json".to_string()),
                    ("User-Agent", "Clusterra-Webhooks/1".to_string()),
                    (
                        "Clusterra-Webhook-Id",
                        webhook::delivery_id(hook.webhook_id, q.position, q.index),
                    ),
                    ("Clusterra-Webhook-Timestamp", timestamp.to_string()),
                    (
                        "Clusterra-Webhook-Signature",
                        webhook::signature(secret.as_bytes(), timestamp, q.body.as_bytes()),
                    ),
                ];
                self.sender
                    .post(&hook.url, &headers, q.body.as_bytes())
                    .await
            }
            Some(h) => Sent::NoAnswer(format!(
                "host {h} is not in the server's webhook_allow list; not sent"
            )),
            None => Sent::NoAnswer("the webhook's URL has no host; not sent".into()),
        };
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Attempted {
            hook,
            q,
            sent,
            duration_ms,
            at: now,
        }
    }
}

/// The host of an `http(s)://` URL, lower case (`[::1]` for IPv6), without port or user.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if host_port.starts_with('[') {
        &host_port[..=host_port.find(']')?]
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Runs the outbox until `stop` turns true: a pass whenever the log moves, and at least every
/// `tick` for retries that come due — while `leading` (the poll leader's flag) is set, so one
/// replica delivers. A replica that stops leading reads the checkpoint again when it leads again.
pub async fn run(
    mut outbox: Outbox,
    tick: std::time::Duration,
    leading: Arc<std::sync::atomic::AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut head = outbox.log.watch_head();
    let mut last_pass = tokio::time::Instant::now();
    let mut caught_up = false;
    loop {
        if *stop.borrow() {
            return;
        }
        // Caught up, at most one pass per MIN_GAP: under a stream of appends (a submit burst)
        // the head moves continuously, and a pass per move read the log a few events at a time
        // beside the projectors. Catching up (a full batch last time) goes on at once.
        if caught_up {
            tokio::time::sleep_until(last_pass + MIN_GAP).await;
        }
        last_pass = tokio::time::Instant::now();
        caught_up = true;
        if !leading.load(std::sync::atomic::Ordering::Acquire) {
            outbox.loaded = false;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        match outbox.pass().await {
            Ok((pass, more)) => {
                if pass != Pass::default() {
                    tracing::debug!(
                        queued = pass.queued,
                        delivered = pass.delivered,
                        failed = pass.failed,
                        gave_up = pass.gave_up,
                        "webhook outbox pass"
                    );
                }
                if more {
                    caught_up = false;
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox pass failed; trying again");
                outbox.loaded = false;
            }
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_url_is_found_without_user_port_or_path() {
        assert_eq!(
            url_host("http://127.0.0.1:8080/hook"),
            Some("127.0.0.1".into())
        );
        assert_eq!(
            url_host("https://Hooks.Lab.org/x?y=1"),
            Some("hooks.lab.org".into())
        );
        assert_eq!(url_host("http://[::1]:9/x"), Some("[::1]".into()));
        assert_eq!(
            url_host("http://u:p@evil.org@127.0.0.1/"),
            Some("127.0.0.1".into())
        );
        assert_eq!(url_host("ftp://x"), None);
        assert_eq!(url_host("http:///x"), None);
    }
}
