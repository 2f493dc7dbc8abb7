//! Clusterra's domain: ids, value types and events. Pure: no I/O, no async, no clock reads —
//! time always comes in as an argument.

pub mod agent;
pub mod cluster;
pub mod cost;
pub mod efficiency;
pub mod events;
pub mod feed;
pub mod filename;
pub mod ids;
pub mod job;
pub mod money;
pub mod open;
pub mod placement;
pub mod scaling;
pub mod simulate;
pub mod storage;
pub mod submit;
pub mod trace;
pub mod webhook;

pub use events::{
    ClusterRegistered, DomainEvent, FileAccessGranted, FileDeleted, JobCancelRequested,
    JobStateChanged, JobSubmissionFailed, JobSubmissionRequested, JobSubmitted, JobUsageRecorded,
    NodeLaunched, NodeReady, NodeTerminated, QuotaEnforced, QuotaRemoved, QuotaSet,
    QuotaWarningRaised, ScaleDecisionMade, SignInLinkUsed, SlurmEndpoint, SlurmReachabilityChanged,
    SubmittedVia, WebhookDeliveryAttempted, WebhookRegistered, WebhookRemoved,
};
pub use ids::{ClusterId, Email, IdError, WorkspaceId};
pub use money::MicroUsd;
