//! Fan-out of a cluster's new feed entries to its live subscribers.
//!
//! One task follows the `feed` projection's progress (which moves when this replica applies new
//! events, or when another replica on the same PostgreSQL did and its NOTIFY woke this one). For
//! every cluster with subscribers it reads the entries after the last one it sent, once, and puts
//! them on that cluster's `broadcast` channel, serialized once in both forms (full and redacted).
//! Each subscriber holds a receiver into that shared ring: a subscriber that falls more than the
//! ring's capacity behind gets `Lagged` and is dropped with a resume position, so no subscriber can
//! make the server hold more than the ring.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use eventlog::Store;
use projections::views::feed::{self, FeedEntry};
use projections::{ProjectionStatus, Projections};
use tokio::sync::{broadcast, watch};

/// One entry as subscribers receive it: its SSE frame rendered once in both forms.
#[derive(Debug)]
pub struct Shared {
    pub entry: FeedEntry,
    /// As the owner and admins see it.
    pub full: Bytes,
    /// With `data` redacted, for other members (the same bytes when the entry is about no one's
    /// job).
    pub redacted: Bytes,
}

/// The SSE frame of an entry: `id` = its log position, `data` = the entry.
pub fn render(entry: &FeedEntry) -> Bytes {
    let json = serde_json::to_string(entry).unwrap_or_default();
    crate::sse::frame(None, Some(&entry.position.to_string()), &json)
}

impl Shared {
    pub fn new(entry: FeedEntry) -> Self {
        let entry = super::bounded(entry);
        let full = render(&entry);
        let redacted = if entry.owner.is_some() {
            let mut other = entry.clone();
            other.data = domain::feed::redact(&other.data);
            render(&other)
        } else {
            full.clone()
        };
        Self {
            entry,
            full,
            redacted,
        }
    }

    /// The frame `caller` sees.
    pub fn for_caller(&self, email: &str, admin: bool) -> &Bytes {
        match &self.entry.owner {
            Some(owner) if !admin && owner != email => &self.redacted,
            _ => &self.full,
        }
    }
}

struct ClusterFeed {
    tx: broadcast::Sender<Arc<Shared>>,
    /// The last position put on `tx` (or, before any, where the projection was when it opened).
    last: i64,
}

/// The hub of every cluster's live feed in this process.
pub struct FeedHub {
    clusters: Mutex<HashMap<String, ClusterFeed>>,
    capacity: usize,
    /// The feed projection's progress.
    status: watch::Receiver<ProjectionStatus>,
}

/// A new subscription: live entries after `from` arrive on `rx`.
pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<Shared>>,
    /// Every entry after this position comes through `rx`; entries up to it are in the projection.
    pub from: i64,
}

impl FeedHub {
    /// Starts the hub; its task ends when the hub is dropped. `None` without a feed projection.
    pub fn start(store: Store, projections: &Projections, capacity: usize) -> Option<Arc<Self>> {
        let status = projections.watch(feed::NAME)?;
        let hub = Arc::new(Self {
            clusters: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            status: status.clone(),
        });
        let weak: Weak<Self> = Arc::downgrade(&hub);
        let mut status = status;
        tokio::spawn(async move {
            loop {
                if status.changed().await.is_err() {
                    break;
                }
                let Some(hub) = weak.upgrade() else { break };
                hub.pump(&store).await;
            }
        });
        Some(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClusterFeed>> {
        self.clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes to `collection` (a cluster's feed).
    pub fn subscribe(&self, collection: &str) -> Subscription {
        let position = self.status.borrow().position;
        let mut clusters = self.lock();
        let feed = clusters
            .entry(collection.to_string())
            .or_insert_with(|| ClusterFeed {
                tx: broadcast::channel(self.capacity).0,
                last: position,
            });
        Subscription {
            rx: feed.tx.subscribe(),
            from: feed.last,
        }
    }

    /// Reads what is new for every subscribed cluster and sends it.
    async fn pump(&self, store: &Store) {
        let work: Vec<(String, i64)> = {
            let mut clusters = self.lock();
            clusters.retain(|_, f| f.tx.receiver_count() > 0);
            clusters.iter().map(|(c, f)| (c.clone(), f.last)).collect()
        };
        for (collection, mut last) in work {
            loop {
                let rows = match feed::range(
                    store.read.as_ref(),
                    &collection,
                    eventlog::KeyRange {
                        after: Some(&feed::key(last)),
                        before: None,
                        descending: false,
                        limit: 500,
                    },
                )
                .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(%collection, error = %e, "feed read failed; retrying on the next change");
                        break;
                    }
                };
                let n = rows.len();
                let read_to = rows.last().and_then(|r| r.key.parse::<i64>().ok());
                let entries: Vec<Arc<Shared>> = rows
                    .into_iter()
                    .filter_map(|r| r.entry.ok())
                    .map(|e| Arc::new(Shared::new(e)))
                    .collect();
                {
                    let mut clusters = self.lock();
                    let Some(feed) = clusters.get_mut(&collection) else {
                        break;
                    };
                    for e in entries {
                        if e.entry.position > feed.last {
                            feed.last = e.entry.position;
                            // No receiver left is fine: the entry is in the projection.
                            let _ = feed.tx.send(e);
                        }
                    }
                    // Past rows that did not decode too, so they are not read again and again.
                    if let Some(p) = read_to {
                        feed.last = feed.last.max(p);
                    }
                    last = feed.last;
                }
                if n < 500 {
                    break;
                }
            }
        }
    }
}
