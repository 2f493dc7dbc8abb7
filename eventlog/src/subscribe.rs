//! Catch-up-then-live subscription, shared by both backends.
//!
//! It needs only two things of a backend: `read_all(after, limit)` returning events in position
//! order, and a head watch that changes after each commit. Because positions are gap-free and
//! become visible in position order (see `docs/event-log.md`), reading "everything above the last
//! position I delivered" can never skip an event, and tracking that last position means it can
//! never repeat one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};

use crate::{EventLog, LogError, Position, RecordedEvent};

/// Tuning for [`subscribe`].
#[derive(Debug, Clone, Copy)]
pub struct SubscribeOptions {
    /// Events fetched per read.
    pub batch: usize,
    /// How often to look for new events when no notification arrives (appends by another
    /// process, a lost notification).
    pub poll_interval: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            batch: 1_000,
            poll_interval: Duration::from_millis(250),
        }
    }
}

struct State {
    log: Arc<dyn EventLog>,
    head: tokio::sync::watch::Receiver<Position>,
    after: Position,
    buffer: VecDeque<RecordedEvent>,
    options: SubscribeOptions,
}

/// Every event after `after`, in position order, then every new one as it commits. The stream
/// ends only when dropped. A read error is yielded once; polling the stream again retries from
/// the last delivered position.
pub fn subscribe(
    log: Arc<dyn EventLog>,
    after: Position,
    options: SubscribeOptions,
) -> BoxStream<'static, Result<RecordedEvent, LogError>> {
    let head = log.watch_head();
    let state = State {
        log,
        head,
        after,
        buffer: VecDeque::new(),
        options,
    };
    Box::pin(stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.buffer.pop_front() {
                s.after = event.position;
                return Some((Ok(event), s));
            }
            // Mark the current head as seen *before* reading, so an append that commits after
            // the read still wakes us.
            s.head.borrow_and_update();
            match s.log.read_all(s.after, s.options.batch).await {
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Some((Err(e), s));
                }
                Ok(events) if events.is_empty() => {
                    tokio::select! {
                        changed = s.head.changed() => {
                            if changed.is_err() {
                                // The log was dropped; keep polling so we still end up correct.
                                tokio::time::sleep(s.options.poll_interval).await;
                            }
                        }
                        _ = tokio::time::sleep(s.options.poll_interval) => {}
                    }
                }
                Ok(events) => s.buffer.extend(events),
            }
        }
    }))
}
