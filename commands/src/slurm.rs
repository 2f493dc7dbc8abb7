//! The Slurm port: what command handlers and the poll cycle need from a Slurm controller.
//! Adapters: the local executor (embedded default) and slurmrestd v0.0.44 (in `gateways`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::job::JobState;

/// The prefix Clusterra stamps on every job's `comment`: `clusterra:<submission id> <submitter>`,
/// then the user's own comment if any, so a job Slurm accepted can always be matched to its
/// submission. The comment is only a lookup key: anyone who can submit to Slurm can write any
/// comment, so the poll cycle adopts a job only for a submission whose request the log recorded,
/// as that request's user (`commands::jobs::settle_submissions`); the email in the comment is for
/// people reading `squeue`, never trusted.
pub const COMMENT_PREFIX: &str = "clusterra:";

/// The comment Clusterra sends for a submission.
pub fn stamp_comment(submission: uuid::Uuid, user: &domain::Email, own: Option<&str>) -> String {
    match own.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("{COMMENT_PREFIX}{submission} {user} | {c}"),
        None => format!("{COMMENT_PREFIX}{submission} {user}"),
    }
}

/// A job as the controller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    pub job_id: u64,
    pub name: String,
    pub state: JobState,
    /// Slurm's reason (`Resources`, `Priority`, `None`, …).
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub node: Option<String>,
    /// When the controller accepted it, if it says.
    pub submit_time: Option<DateTime<Utc>>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub comment: Option<String>,
}

impl SlurmJob {
    /// The submission id stamped in the comment, if any.
    pub fn submission_id(&self) -> Option<uuid::Uuid> {
        let c = self.comment.as_deref()?.strip_prefix(COMMENT_PREFIX)?;
        uuid::Uuid::parse_str(c.split_whitespace().next()?).ok()
    }
}

/// Slurm accepted a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub job_id: u64,
    /// Slurm's own warnings (e.g. ignored fields).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlurmError {
    /// Slurm refused the job; the messages are Slurm's, made readable.
    #[error("Slurm refused the job: {}", .0.join("; "))]
    Rejected(Vec<String>),
    #[error("Slurm has no job {0}")]
    UnknownJob(u64),
    #[error("Slurm could not be reached: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait SlurmPort: Send + Sync + 'static {
    /// Submits a canonical v0.0.44 body (its `job.comment` already carries the submission id).
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError>;
    /// One job, or `None` if the controller no longer knows it.
    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError>;
    /// Every job the controller knows.
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError>;
    /// Asks the controller to cancel a job. Cancelling a finished job is not an error.
    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError>;
}

/// Which Slurm serves which cluster.
pub trait SlurmDirectory: Send + Sync + 'static {
    fn get(
        &self,
        workspace: &domain::WorkspaceId,
        cluster: &domain::ClusterId,
    ) -> Option<std::sync::Arc<dyn SlurmPort>>;
}

/// A directory that grows while the server runs: clusters are connected as they are registered.
#[derive(Default)]
pub struct LiveDirectory {
    entries: std::sync::RwLock<
        std::collections::HashMap<
            (domain::WorkspaceId, domain::ClusterId),
            std::sync::Arc<dyn SlurmPort>,
        >,
    >,
}

impl LiveDirectory {
    pub fn insert(
        &self,
        workspace: domain::WorkspaceId,
        cluster: domain::ClusterId,
        port: std::sync::Arc<dyn SlurmPort>,
    ) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((workspace, cluster), port);
    }

    pub fn contains(&self, workspace: &domain::WorkspaceId, cluster: &domain::ClusterId) -> bool {
        self.get(workspace, cluster).is_some()
    }

    /// Every connected cluster.
    pub fn snapshot(
        &self,
    ) -> Vec<(
        (domain::WorkspaceId, domain::ClusterId),
        std::sync::Arc<dyn SlurmPort>,
    )> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl SlurmDirectory for LiveDirectory {
    fn get(
        &self,
        workspace: &domain::WorkspaceId,
        cluster: &domain::ClusterId,
    ) -> Option<std::sync::Arc<dyn SlurmPort>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(workspace.clone(), cluster.clone()))
            .cloned()
    }
}
