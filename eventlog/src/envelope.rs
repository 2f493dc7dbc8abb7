//! The event envelope: what callers hand to the log and what the log hands back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::LogError;

/// Global log position. Position 0 means "before the first event"; the first event is 1.
pub type Position = i64;

/// The id of one stream, e.g. `job-local-6f1c…`, `cluster-local`, `quota-acme-ada@lab.org`.
///
/// Stream ids come from code, not users, but they are still checked: 1–200 characters of
/// `[A-Za-z0-9._:@+-]`, so they are safe in logs, URLs and SQL identifiers' neighbourhood.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    pub fn new(id: impl Into<String>) -> Result<Self, LogError> {
        let id = id.into();
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@+-".contains(c);
        if id.is_empty() || id.len() > 200 || !id.chars().all(ok_char) {
            return Err(LogError::InvalidStreamId(id));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = LogError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who did it, through what, and why: carried with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// api, template, console, cli, agent, system, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: Metadata,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id and schema version 1.
    pub fn new(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: Metadata::default(),
        }
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    /// The event's JSON exactly as stored (the hash covers these bytes).
    pub data: String,
    /// The metadata's JSON exactly as stored.
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

impl RecordedEvent {
    pub fn data_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.data)
    }

    pub fn metadata(&self) -> Result<Metadata, serde_json::Error> {
        serde_json::from_str(&self.metadata)
    }
}

/// What the writer expects the stream's current version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (0 = empty stream).
    Exact(i64),
}

impl ExpectedVersion {
    pub(crate) fn check(self, stream: &StreamId, current: i64) -> Result<(), LogError> {
        let ok = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if ok {
            Ok(())
        } else {
            Err(LogError::VersionConflict {
                stream_id: stream.to_string(),
                expected: self,
                actual: current,
            })
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    pub first_position: Position,
    pub last_position: Position,
    /// The stream's version after the append (the version of its last event).
    pub stream_version: i64,
    /// True when every event id was already stored: nothing was written.
    pub already_stored: bool,
}

/// The log's newest position and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub position: Position,
    pub hash: [u8; 32],
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_checked() {
        assert!(StreamId::new("job-local-0192f2").is_ok());
        assert!(StreamId::new("quota-acme-ada@lab.org").is_ok());
        assert!(StreamId::new("").is_err());
        assert!(StreamId::new("a b").is_err());
        assert!(StreamId::new("x'; drop table events; --").is_err());
        assert!(StreamId::new("x".repeat(201)).is_err());
    }

    #[test]
    fn expected_version_rules() {
        let s = StreamId::new("s").unwrap();
        assert!(ExpectedVersion::Any.check(&s, 7).is_ok());
        assert!(ExpectedVersion::NoStream.check(&s, 0).is_ok());
        assert!(ExpectedVersion::NoStream.check(&s, 1).is_err());
        assert!(ExpectedVersion::Exact(3).check(&s, 3).is_ok());
        assert!(ExpectedVersion::Exact(3).check(&s, 4).is_err());
    }
}
