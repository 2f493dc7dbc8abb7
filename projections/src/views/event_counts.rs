//! `event_counts`: how many events of each type the log holds. The simplest projection; it is
//! also what the replay benchmark measures.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, ViewTx};

pub const NAME: &str = "event_counts";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct EventCounts;

pub const COLLECTION: &str = "types";

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeCount {
    pub event_type: String,
    pub count: u64,
    pub last_position: i64,
}

#[async_trait]
impl Projector for EventCounts {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let Event { recorded, .. } = event;
        let mut doc: EventTypeCount = view
            .get(COLLECTION, &recorded.event_type)
            .await?
            .unwrap_or_else(|| EventTypeCount {
                event_type: recorded.event_type.clone(),
                ..Default::default()
            });
        doc.count += 1;
        doc.last_position = recorded.position;
        view.put(COLLECTION, &recorded.event_type, &doc)
    }
}
