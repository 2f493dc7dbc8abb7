//! Command handlers: load → decide → append with an expected version.
//!
//! Handlers see the outside world only through ports (traits). The event log port is
//! [`eventlog::EventLog`]; the Slurm ([`slurm`]), replica-store ([`replicas`]) and object-store
//! ([`storage`]) ports live beside the handlers that use them.

pub mod agent;
pub mod clusters;
pub mod fleet;
pub mod jobs;
pub mod open;
pub mod quota;
pub mod replicas;
pub mod scaling;
pub mod slurm;
pub mod storage;
pub mod templates;
pub mod webhooks;

pub use eventlog::{Clock, EventLog, LogError, Metadata, Position};

use domain::DomainEvent;
use eventlog::NewEvent;

/// A domain event as the log stores it: its type name, schema version and data, with `metadata`.
pub fn encode(event: &DomainEvent, metadata: Metadata) -> Result<NewEvent, serde_json::Error> {
    Ok(NewEvent {
        schema_version: event.schema_version(),
        ..NewEvent::new(event.event_type(), event.data()?)
    }
    .with_metadata(metadata))
}

/// Reads `stream` after `version` to its end, `batch` events per read, handing each event
/// (decoded; `None` for a type this build does not know) to `apply`; returns the stream's
/// version after the last event read. The one paging loop every command's load uses.
pub async fn fold_stream<E>(
    log: &dyn EventLog,
    stream: &eventlog::StreamId,
    mut version: i64,
    batch: usize,
    mut apply: impl FnMut(&eventlog::RecordedEvent, Option<DomainEvent>) -> Result<(), E>,
) -> Result<i64, E>
where
    E: From<LogError> + From<serde_json::Error>,
{
    loop {
        let events = log.read_stream(stream, version, batch).await?;
        let Some(last) = events.last() else {
            return Ok(version);
        };
        version = last.stream_version;
        for e in &events {
            apply(
                e,
                DomainEvent::decode(&e.event_type, e.schema_version, &e.data)?,
            )?;
        }
    }
}

/// The metadata of what the system does by itself; `via` says which part (`poll`,
/// `edge-agent`, `bootstrap`).
pub fn system_metadata(via: &str) -> Metadata {
    Metadata {
        actor: Some("system".into()),
        role: Some("system".into()),
        via: Some(via.into()),
        ..Metadata::default()
    }
}

/// Errors of command handling, mapped once to HTTP at the API edge.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not encode event: {0}")]
    Encode(#[from] serde_json::Error),
}
