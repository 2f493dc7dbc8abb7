//! A cluster's event feed: `GET /v1/clusters/{id}/events` (pages) and `…/events/stream` (SSE).
//!
//! Both read the `feed` projection; the stream then follows the [`hub::FeedHub`]. Workspace
//! members see their clusters' feeds; another user's job events have their `data` redacted
//! (`domain::feed::redact`): the job and its state changes show, its script, environment and
//! params do not. docs/events.md.

pub mod hub;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use eventlog::KeyRange;
use futures::StreamExt;
use projections::views::feed::{self, FeedEntry};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use utoipa::ToSchema;

pub use hub::FeedHub;
use hub::{Shared, render};

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection};
use crate::query::{RawQuery, number, raw_query, unknown};
use crate::{ApiError, AppState};

/// The most entries one page answers.
const MAX_LIMIT: u64 = 1_000;
/// The most entries one list request examines (filters may skip many); past it, `next` says
/// where to go on.
const SCAN_LIMIT: usize = 10_000;
const PAGE: usize = 500;
/// The most bytes of entries one list page answers (as stored JSON); past it, `next` says where
/// to go on. At least one entry is always answered.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// How many entries a live stream reads from the projection at a time while it catches up: its
/// own buffer (entries are at most a few KiB each, `domain::feed`).
const CATCH_UP_PAGE: usize = 64;
const RETRY: Duration = Duration::from_secs(2);
/// How much a live subscriber's write may carry when entries are waiting.
const BATCH_BYTES: usize = 64 * 1024;

/// Settings of the feed routes.
pub struct FeedSettings {
    pub hub: Arc<FeedHub>,
    pub heartbeat: Duration,
    /// The most bytes of entries one list page answers ([`MAX_PAGE_BYTES`]; lower in tests).
    pub max_page_bytes: usize,
}

/// Which entries a request wants.
#[derive(Debug, Clone, Default)]
struct Filter {
    types: Option<Vec<String>>,
    job_id: Option<u64>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl Filter {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let types = match q.get("type") {
            None => None,
            Some(list) => {
                let mut types = Vec::new();
                for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !domain::feed::FEED_TYPES.contains(&t) {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_type",
                            format!("{t:?} is not a feed event type; use one or more (comma-separated) of {}", domain::feed::FEED_TYPES.join(", ")),
                        )
                        .with_field("type"));
                    }
                    types.push(t.to_string());
                }
                Some(types)
            }
        };
        let time = |name: &str| {
            q.get(name)
                .map(|v| {
                    DateTime::parse_from_rfc3339(v)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| {
                            ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_time",
                                format!(
                                    "{name} must be an RFC 3339 time, like 2026-11-26T10:00:00Z"
                                ),
                            )
                            .with_field(name)
                        })
                })
                .transpose()
        };
        Ok(Self {
            types,
            job_id: number(q, "job_id", u64::from(u32::MAX))?,
            from: time("from")?,
            to: time("to")?,
        })
    }

    fn matches(&self, e: &FeedEntry) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(&e.event_type))
            && self.job_id.is_none_or(|j| e.job_id == Some(j))
            && self.from.is_none_or(|f| e.time >= f)
            && self.to.is_none_or(|t| e.time < t)
    }
}

fn position(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    Ok(number(q, name, i64::MAX as u64)?.map(|n| n as i64))
}

/// The cluster's feed collection, if the caller's workspace has the cluster.
async fn feed_of(state: &AppState, caller: &Caller, id: &str) -> Result<String, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(state, caller, id).await?;
    Ok(feed::collection(&caller.workspace, &cluster))
}

/// An entry with its summary and data bounded (entries projected before `domain::feed::summarize`
/// existed carry the whole event; they read like new ones).
pub(crate) fn bounded(mut entry: FeedEntry) -> FeedEntry {
    entry.data = domain::feed::summarize(&entry.data);
    if entry.summary.len() > domain::feed::MAX_SUMMARY_BYTES {
        entry.summary = domain::feed::clip(&entry.summary, domain::feed::MAX_SUMMARY_BYTES);
    }
    entry
}

/// An entry as `caller` may see it.
fn visible(entry: FeedEntry, caller: &Caller) -> FeedEntry {
    let mut entry = bounded(entry);
    if entry
        .owner
        .as_deref()
        .is_some_and(|o| !caller.is_admin() && o != caller.email.as_str())
    {
        entry.data = domain::feed::redact(&entry.data);
    }
    entry
}

/// One page of a cluster's feed.
#[derive(Serialize, ToSchema)]
pub struct FeedPage {
    /// `{position, time, type, actor, summary, job_id?, owner?, data}` each.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<FeedEntry>,
    /// Where the next page starts: pass it as `before` (newest-first) or `after` (oldest-first)
    /// with the same filters; null at the end. A page ends at `limit` entries or 1 MiB of them,
    /// whichever comes first.
    pub next: Option<i64>,
}

/// The cluster's events, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/events",
    tag = "events",
    params(("id" = String, Path, description = "Cluster id"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Only entries after this log position"),
        ("before" = Option<i64>, Query, minimum = 0, description = "Only entries before this log position"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "At most this many (1–1000, default 100); a page also ends at 1 MiB, with `next` set"),
        ("order" = Option<String>, Query, pattern = "^(asc|desc)$", description = "`desc` (newest first, default) or `asc`"),
        ("type" = Option<String>, Query, description = "Comma-separated event types"),
        ("job_id" = Option<u64>, Query, maximum = 4294967295_i64, description = "Only entries about this job"),
        ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Only entries at or after this RFC 3339 time"),
        ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Only entries before this RFC 3339 time"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible")),
    responses(
        (status = 200, description = "A page of entries", body = FeedPage),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(id): Path<String>,
    query: RawQuery,
) -> Result<(HeaderMap, Json<FeedPage>), ApiError> {
    let q = raw_query(query)?;
    unknown(
        &q,
        &[
            "after", "before", "limit", "order", "type", "job_id", "from", "to",
        ],
    )?;
    let filter = Filter::parse(&q)?;
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_number",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )
                .with_field("limit")
            })?,
    };
    let descending = match q.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_order",
                "order is desc (newest first) or asc (oldest first)",
            )
            .with_field("order"));
        }
    };
    let (mut after, mut before) = (position(&q, "after")?, position(&q, "before")?);
    // The cluster must be visible too: a cluster registered just now is in the same position.
    await_projection(&state, projections::views::clusters::NAME, min).await;
    let headers = await_projection(&state, feed::NAME, min).await;
    let collection = feed_of(&state, &caller, &id).await?;
    let mut events = Vec::new();
    let mut scanned = 0;
    let mut bytes = 0;
    // The position of the last entry examined: where the next page starts when this one is full.
    let mut last_examined: Option<i64> = None;
    let mut next = None;
    'scan: loop {
        let rows = feed::range(
            state.store.read.as_ref(),
            &collection,
            KeyRange {
                after: after.map(feed::key).as_deref(),
                before: before.map(feed::key).as_deref(),
                descending,
                limit: PAGE,
            },
        )
        .await?;
        let full = rows.len() == PAGE;
        for row in rows {
            let entry = row.entry?;
            scanned += 1;
            let at = entry.position;
            if filter.matches(&entry) {
                let entry = visible(entry, &caller);
                let size = serde_json::to_vec(&entry).map_or(0, |b| b.len() + 1);
                if !events.is_empty() && bytes + size > state.feed.max_page_bytes {
                    // Full in bytes: the next page starts with this entry.
                    next = last_examined;
                    break 'scan;
                }
                bytes += size;
                events.push(entry);
            }
            last_examined = Some(at);
            if descending {
                before = Some(at);
            } else {
                after = Some(at);
            }
            if events.len() as u64 == limit || scanned == SCAN_LIMIT {
                next = Some(at);
                break 'scan;
            }
        }
        if !full {
            break;
        }
    }
    Ok((headers, Json(FeedPage { events, next })))
}

/// Where a live stream is.
enum Phase {
    /// Reading the projection after the cursor, up to `until` (where the live part starts).
    CatchUp {
        until: i64,
    },
    Live,
    Done,
}

struct FeedStream {
    state: AppState,
    caller: Caller,
    collection: String,
    filter: Filter,
    rx: tokio::sync::broadcast::Receiver<Arc<Shared>>,
    /// The last position handled (sent or filtered out): the resume point.
    cursor: i64,
    buffer: VecDeque<FeedEntry>,
    phase: Phase,
    heartbeat: Duration,
    /// When the last frame went out (heartbeats fill silences longer than `heartbeat`).
    sent_at: Instant,
    /// Set when the ring overtook this subscriber while it was batching.
    lagged: Option<u64>,
}

impl FeedStream {
    async fn next(&mut self) -> Option<Bytes> {
        let frame = self.next_frame().await;
        self.sent_at = Instant::now();
        frame
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::CatchUp { until } => {
                    if let Some(entry) = self.buffer.pop_front() {
                        self.cursor = entry.position;
                        if self.filter.matches(&entry) {
                            return Some(render(&visible(entry, &self.caller)));
                        }
                        continue;
                    }
                    if self.cursor >= until {
                        self.phase = Phase::Live;
                        continue;
                    }
                    let rows = feed::range(
                        self.state.store.read.as_ref(),
                        &self.collection,
                        KeyRange {
                            after: Some(&feed::key(self.cursor)),
                            before: Some(&feed::key(until + 1)),
                            descending: false,
                            limit: CATCH_UP_PAGE,
                        },
                    )
                    .await;
                    match rows {
                        Ok(rows) if rows.is_empty() => self.cursor = until,
                        Ok(rows) => {
                            // Past every row read, even one that does not decode (logged), so
                            // a bad row cannot make catch-up read the same page forever.
                            let last = rows.last().and_then(|r| r.key.parse::<i64>().ok());
                            for r in rows {
                                match r.entry {
                                    Ok(e) => self.buffer.push_back(bounded(e)),
                                    Err(e) => {
                                        tracing::warn!(key = %r.key, error = %e, "an unreadable feed entry was skipped")
                                    }
                                }
                            }
                            if self.buffer.is_empty()
                                && let Some(p) = last
                            {
                                self.cursor = p;
                            }
                        }
                        Err(e) => {
                            return Some(
                                self.drop_with(&format!("the feed could not be read: {e}")),
                            );
                        }
                    }
                }
                Phase::Live => {
                    if let Some(missed) = self.lagged.take() {
                        return Some(self.drop_with(&format!(
                            "this subscriber fell {missed} events behind; reconnect with Last-Event-ID to resume"
                        )));
                    }
                    let quiet_until = self.sent_at + self.heartbeat;
                    let received = match tokio::time::timeout_at(quiet_until, self.rx.recv()).await
                    {
                        Ok(r) => r,
                        Err(_) => return Some(crate::sse::heartbeat()),
                    };
                    match received {
                        Ok(shared) => {
                            let Some(first) = self.take(&shared) else {
                                continue;
                            };
                            // Whatever else is already waiting goes out in the same write: one
                            // syscall per batch instead of one per entry when entries come fast.
                            let mut batch: Option<bytes::BytesMut> = None;
                            while batch.as_ref().map_or(first.len(), |b| b.len()) < BATCH_BYTES {
                                let more = match self.rx.try_recv() {
                                    Ok(more) => more,
                                    Err(TryRecvError::Lagged(missed)) => {
                                        // The ring moved on: drop this subscriber after the batch.
                                        self.lagged = Some(missed);
                                        break;
                                    }
                                    Err(_) => break,
                                };
                                if let Some(frame) = self.take(&more) {
                                    batch
                                        .get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                                        .extend_from_slice(&frame);
                                }
                            }
                            return Some(batch.map_or(first, bytes::BytesMut::freeze));
                        }
                        Err(RecvError::Lagged(missed)) => {
                            return Some(self.drop_with(&format!(
                                "this subscriber fell {missed} events behind; reconnect with Last-Event-ID to resume"
                            )));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        }
    }

    /// The frame of a live entry for this subscriber, if it is new and passes the filter.
    fn take(&mut self, shared: &Shared) -> Option<Bytes> {
        let at = shared.entry.position;
        if at <= self.cursor {
            return None;
        }
        self.cursor = at;
        self.filter.matches(&shared.entry).then(|| {
            shared
                .for_caller(self.caller.email.as_str(), self.caller.is_admin())
                .clone()
        })
    }

    fn drop_with(&mut self, reason: &str) -> Bytes {
        self.phase = Phase::Done;
        crate::sse::frame(
            Some("dropped"),
            Some(&self.cursor.to_string()),
            &json!({"resume_after": self.cursor, "reason": reason}).to_string(),
        )
    }
}

/// Follow the cluster's events live.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/events/stream",
    tag = "events",
    params(("id" = String, Path, description = "Cluster id"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Start after this log position (default: from now)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event; wins over after"),
        ("type" = Option<String>, Query, description = "Comma-separated event types"),
        ("job_id" = Option<u64>, Query, maximum = 4294967295_i64, description = "Only entries about this job")),
    responses(
        (status = 200, description = "text/event-stream: one event per entry (id = log position, data = the entry as JSON); `dropped` tells a subscriber that fell behind where to resume", content_type = "text/event-stream"),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let q = raw_query(query)?;
    unknown(&q, &["after", "type", "job_id"])?;
    let filter = Filter::parse(&q)?;
    // `after` is checked even when Last-Event-ID (which wins) is sent.
    let after = position(&q, "after")?;
    let resume = match crate::sse::last_event_id(&headers, "a log position")? {
        Some(id) => Some(id as i64),
        None => after,
    };
    let collection = feed_of(&state, &caller, &id).await?;
    let subscription = state.feed.hub.subscribe(&collection);
    let cursor = resume.unwrap_or(subscription.from);
    let heartbeat = state.feed.heartbeat;
    let feed_stream = FeedStream {
        state,
        caller,
        collection,
        filter,
        rx: subscription.rx,
        cursor,
        buffer: VecDeque::new(),
        // The projection holds everything up to where the live channel starts.
        phase: Phase::CatchUp {
            until: subscription.from,
        },
        heartbeat,
        sent_at: Instant::now(),
        lagged: None,
    };
    let hello = crate::sse::hello("clusterra event feed", RETRY);
    let frames = futures::stream::once(async move { hello })
        .chain(futures::stream::unfold(feed_stream, |mut s| async move {
            s.next().await.map(|f| (f, s))
        }));
    Ok(crate::sse::response(frames))
}
