//! `streams`: one summary per stream — how many events, its version, what happened last and when.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, ViewTx};

pub const NAME: &str = "streams";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct StreamSummaries;

pub const COLLECTION: &str = "streams";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub stream_id: String,
    pub events: u64,
    pub version: i64,
    pub last_event_type: String,
    pub last_position: i64,
    pub first_recorded_at: DateTime<Utc>,
    pub last_recorded_at: DateTime<Utc>,
}

#[async_trait]
impl Projector for StreamSummaries {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let event = event.recorded;
        // A stream's first event starts its summary: nothing to read (its documents never run
        // ahead of its checkpoint, so none can be there yet, even when events are read again).
        let earlier = if event.stream_version <= 1 {
            None
        } else {
            view.get::<StreamSummary>(COLLECTION, &event.stream_id)
                .await?
        };
        let summary = match earlier {
            Some(mut s) => {
                s.events += 1;
                s.version = event.stream_version;
                s.last_event_type = event.event_type.clone();
                s.last_position = event.position;
                s.last_recorded_at = event.recorded_at;
                s
            }
            None => StreamSummary {
                stream_id: event.stream_id.clone(),
                events: 1,
                version: event.stream_version,
                last_event_type: event.event_type.clone(),
                last_position: event.position,
                first_recorded_at: event.recorded_at,
                last_recorded_at: event.recorded_at,
            },
        };
        view.put(COLLECTION, &event.stream_id, &summary)
    }
}
