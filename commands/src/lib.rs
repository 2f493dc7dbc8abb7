//! Command handlers: load → decide → append with an expected version.
//!
//! Handlers see the outside world only through ports (traits). The event log port is
//! [`eventlog::EventLog`]; the Slurm ([`slurm`]), replica-store ([`replicas`]) and object-store
//! ([`storage`]) ports live beside the handlers that use them.

pub mod clusters;
pub mod fleet;
pub mod jobs;
pub mod quota;
pub mod replicas;
pub mod scaling;
pub mod slurm;
pub mod storage;
pub mod templates;

pub use eventlog::{Clock, EventLog, LogError, Metadata, Position};

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
