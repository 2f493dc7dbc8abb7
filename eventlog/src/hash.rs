//! The hash chain: every event's hash covers its content and the previous event's hash.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Position, RecordedEvent};

/// The hash before the first event.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// The fields an event's hash covers, borrowed.
pub struct HashInput<'a> {
    pub prev_hash: &'a [u8; 32],
    pub position: Position,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_id: &'a Uuid,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub data: &'a str,
    pub metadata: &'a str,
    pub recorded_at_micros: i64,
}

/// SHA-256 over an unambiguous encoding: fixed-width integers, length-prefixed strings.
pub fn event_hash(input: &HashInput<'_>) -> [u8; 32] {
    fn text(h: &mut Sha256, s: &str) {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    let mut h = Sha256::new();
    h.update(b"clusterra-event-v1");
    h.update(input.prev_hash);
    h.update(input.position.to_be_bytes());
    text(&mut h, input.stream_id);
    h.update(input.stream_version.to_be_bytes());
    h.update(input.event_id.as_bytes());
    text(&mut h, input.event_type);
    h.update(input.schema_version.to_be_bytes());
    text(&mut h, input.data);
    text(&mut h, input.metadata);
    h.update(input.recorded_at_micros.to_be_bytes());
    h.finalize().into()
}

/// Recomputes a stored event's hash from its stored fields.
pub fn recompute(event: &RecordedEvent) -> [u8; 32] {
    event_hash(&HashInput {
        prev_hash: &event.prev_hash,
        position: event.position,
        stream_id: &event.stream_id,
        stream_version: event.stream_version,
        event_id: &event.event_id,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        data: &event.data,
        metadata: &event.metadata,
        recorded_at_micros: event.recorded_at.timestamp_micros(),
    })
}

/// Why the chain is broken at an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// The stored hash does not match the event's content: the row was edited.
    ContentEdited,
    /// The event's `prev_hash` is not the previous event's hash: a row was edited, removed or inserted.
    LinkBroken,
    /// Positions are not consecutive: an event was removed.
    PositionGap { expected: Position },
}

/// Walks a chain incrementally, so any reader (batches, streams) can check it.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev_hash: [u8; 32],
    next_position: Position,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev_hash: GENESIS_HASH,
            next_position: 1,
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, event: &RecordedEvent) -> Result<(), ChainBreak> {
        if event.position != self.next_position {
            return Err(ChainBreak::PositionGap {
                expected: self.next_position,
            });
        }
        if event.prev_hash != self.prev_hash {
            return Err(ChainBreak::LinkBroken);
        }
        if recompute(event) != event.hash {
            return Err(ChainBreak::ContentEdited);
        }
        self.prev_hash = event.hash;
        self.next_position += 1;
        Ok(())
    }

    pub fn last_hash(&self) -> [u8; 32] {
        self.prev_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn event(position: Position, prev: [u8; 32], data: &str) -> RecordedEvent {
        let mut e = RecordedEvent {
            position,
            stream_id: "s".into(),
            stream_version: position,
            event_id: Uuid::from_u128(position as u128),
            event_type: "Thing".into(),
            schema_version: 1,
            data: data.into(),
            metadata: "{}".into(),
            recorded_at: Utc.timestamp_micros(1_700_000_000_000_000).unwrap(),
            prev_hash: prev,
            hash: [0; 32],
        };
        e.hash = recompute(&e);
        e
    }

    #[test]
    fn a_valid_chain_verifies_and_an_edit_is_found() {
        let a = event(1, GENESIS_HASH, r#"{"n":1}"#);
        let b = event(2, a.hash, r#"{"n":2}"#);
        let mut v = ChainVerifier::default();
        assert_eq!(v.check(&a), Ok(()));
        assert_eq!(v.check(&b), Ok(()));

        let mut edited = b.clone();
        edited.data = r#"{"n":3}"#.into();
        let mut v = ChainVerifier::default();
        v.check(&a).unwrap();
        assert_eq!(v.check(&edited), Err(ChainBreak::ContentEdited));
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let a = event(1, GENESIS_HASH, "{}");
        let b = event(2, a.hash, "{}");
        let forged_a = event(1, GENESIS_HASH, r#"{"forged":true}"#);
        let mut v = ChainVerifier::default();
        v.check(&forged_a).unwrap();
        assert_eq!(v.check(&b), Err(ChainBreak::LinkBroken));
    }

    #[test]
    fn a_removed_event_is_a_gap() {
        let a = event(1, GENESIS_HASH, "{}");
        let c = event(3, a.hash, "{}");
        let mut v = ChainVerifier::default();
        v.check(&a).unwrap();
        assert_eq!(v.check(&c), Err(ChainBreak::PositionGap { expected: 2 }));
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let prev = GENESIS_HASH;
        let id = Uuid::nil();
        let base = HashInput {
            prev_hash: &prev,
            position: 1,
            stream_id: "ab",
            stream_version: 1,
            event_id: &id,
            event_type: "c",
            schema_version: 1,
            data: "{}",
            metadata: "{}",
            recorded_at_micros: 0,
        };
        let shifted = HashInput {
            stream_id: "a",
            event_type: "bc",
            ..base
        };
        let base = HashInput {
            stream_id: "ab",
            event_type: "c",
            ..shifted
        };
        assert_ne!(event_hash(&base), event_hash(&shifted));
    }
}
