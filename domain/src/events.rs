//! Domain events: past-tense facts. Each has a stable type name and schema version; the log
//! stores them as JSON.

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::job::JobState;
use crate::scaling::NodeSet;
use crate::storage::{FileMethod, ObjectKey};
use crate::submit::{JobShape, Warning};
use crate::{ClusterId, Email, WorkspaceId};

/// A cluster was registered in a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRegistered {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub name: String,
    pub region: String,
    pub bucket: String,
    pub registered_by: Email,
    /// How to reach the cluster's slurmrestd; `None` for the local executor. Added after the
    /// first release: older events lack it, hence the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmEndpoint>,
}

/// Where a cluster's slurmrestd answers and as whom Clusterra talks to it. Never a secret: the
/// log is read by auditors; tokens live in the server's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmEndpoint {
    /// `http(s)://host:port` of slurmrestd.
    pub url: String,
    /// The Slurm user name sent as `X-SLURM-USER-NAME`.
    pub user: String,
    /// The REST API version, e.g. `v0.0.44`.
    pub api_version: String,
}

/// How a job reached Clusterra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmittedVia {
    Api,
    Template,
    Console,
    Cli,
    Agent,
    /// Found in Slurm by its submission id after a crash between Slurm accepting it and the log
    /// recording it.
    Adopted,
}

/// Slurm accepted a job. Stream `job-<cluster>-<submission id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubmitted {
    pub submission_id: Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    /// Slurm's job id.
    pub job_id: u64,
    pub name: String,
    pub user: Email,
    pub via: SubmittedVia,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// The canonical v0.0.44 body that was sent.
    pub body: serde_json::Value,
    pub shape: JobShape,
    #[serde(default)]
    pub warnings: Vec<Warning>,
    /// When the API received the submission (before Slurm saw it); the event's `recorded_at`
    /// comes after Slurm accepted it, by which time a fast job may already have started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
    /// What the job costs per hour while it runs (`domain::cost::job_rate`), priced from the
    /// catalog when it was submitted: bills come from the log, not from today's prices. Added
    /// with cost; older events lack it (they are priced from the current catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<crate::MicroUsd>,
}

/// The write-ahead record of a submission, appended to the job's stream (as its first event, with
/// "no stream" expected) *before* Slurm is called. Whoever appends it is the one process that
/// may call Slurm for this submission; `JobSubmitted` (or `JobSubmissionFailed`) follows. It is
/// also what lets the poll cycle adopt a job whose `JobSubmitted` never reached the log: only a
/// Slurm job whose comment names a recorded request is adopted, as this request's user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubmissionRequested {
    pub submission_id: Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    /// Who submitted it: the job is theirs (and billed to them) whatever Slurm's comment says.
    pub user: Email,
    pub via: SubmittedVia,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// `sha256:<hex>` of the canonical body (`domain::submit::canonicalize`, keys sorted, before
    /// the comment stamp): a retry with the same `Idempotency-Key` and another body is refused.
    pub body_digest: String,
    pub shape: JobShape,
    /// What it costs per hour while it runs, as `JobSubmitted` records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<crate::MicroUsd>,
}

/// A recorded submission request did not produce a job: Slurm refused it, Slurm was never
/// called for it (its breaker was open, or every `slurm_max_in_flight` place was taken), or the
/// poll cycle looked for it in Slurm (after the submitter stopped between the request and its
/// outcome) and Slurm did not have it. The submission's `Idempotency-Key` may be used again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubmissionFailed {
    pub submission_id: Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub reason: String,
}

/// Slurm reported a new state for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStateChanged {
    pub job_id: u64,
    pub from: JobState,
    pub to: JobState,
    /// Slurm's reason, or Clusterra's when it decided (e.g. the job vanished from Slurm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When Slurm says it happened (start or end time), if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// When Slurm says the job started, if it did (a poll may see PENDING, then COMPLETED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

/// What a finished job used, as its executor measured it: appended with the job's terminal
/// `JobStateChanged`, on the job's stream. `usage` says what was not measured and why (a Slurm
/// controller without accounting keeps no usage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsageRecorded {
    pub job_id: u64,
    #[serde(flatten)]
    pub usage: crate::efficiency::Usage,
}

/// Someone asked for a job to be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCancelRequested {
    pub job_id: u64,
    pub by: Email,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Someone was handed a presigned URL for a key: the audit trail of who could touch what. The URL
/// itself is never recorded (it is a bearer credential). Stream `files:<ws>:<cluster>:<email>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAccessGranted {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub bucket: String,
    pub key: ObjectKey,
    pub method: FileMethod,
    pub user: Email,
    pub expires_at: DateTime<Utc>,
    /// The `Content-Type` signed into an upload URL, if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The exact size signed into an upload URL (`Content-Length`). Added with upload limits;
    /// older grants lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// An object was deleted through Clusterra. Stream `files:<ws>:<cluster>:<email>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDeleted {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub bucket: String,
    pub key: ObjectKey,
    pub user: Email,
    /// The object's size when it was deleted.
    pub size: u64,
}

/// The autoscaler changed how many nodes of one node set a cluster should have. Appended only
/// when the count changes. Stream `scaling:<ws>:<cluster>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleDecisionMade {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub node_set: NodeSet,
    pub instance_type: String,
    pub from: u32,
    pub to: u32,
    /// The pending jobs that drove it (at most 100).
    #[serde(default)]
    pub jobs: Vec<u64>,
    pub reason: String,
}

/// The edge agent launched a node for a node set (Karpenter's part). Stream
/// `nodes:<workspace>:<cluster>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLaunched {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub node: String,
    pub node_set: NodeSet,
    pub instance_type: String,
    pub launched_at: DateTime<Utc>,
    /// When its cold start should be over.
    pub ready_expected_at: DateTime<Utc>,
}

/// A launched node finished its cold start and takes jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReady {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub node: String,
    pub node_set: NodeSet,
    /// From launch to ready.
    pub cold_start_ms: u64,
}

/// A node went away: its set shrank while it was idle, or its agent lost it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTerminated {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub node: String,
    pub node_set: NodeSet,
    pub reason: String,
    /// From launch to termination (what it was paid for).
    pub up_ms: u64,
}

/// A workspace admin set a user's quota. Stream `quota:<workspace>:<email>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSet {
    pub workspace: WorkspaceId,
    pub email: Email,
    pub limit: crate::MicroUsd,
    pub mode: crate::cost::QuotaMode,
    pub buffer_percent: u32,
    pub by: Email,
}

/// A workspace admin removed a user's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRemoved {
    pub workspace: WorkspaceId,
    pub email: Email,
    pub by: Email,
}

/// A user's projected spend reached their limit (once per crossing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaWarningRaised {
    pub workspace: WorkspaceId,
    pub email: Email,
    pub projected: crate::MicroUsd,
    pub pending_bill: crate::MicroUsd,
    pub limit: crate::MicroUsd,
    pub period_start: DateTime<Utc>,
}

/// A `block_and_kill` user's projected spend passed limit × (1 + buffer): new jobs are refused
/// and the running ones are cancelled (each through the standard cancel path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaEnforced {
    pub workspace: WorkspaceId,
    pub email: Email,
    pub projected: crate::MicroUsd,
    pub pending_bill: crate::MicroUsd,
    pub limit: crate::MicroUsd,
    pub hard_limit: crate::MicroUsd,
    pub period_start: DateTime<Utc>,
}

/// The server stopped getting answers from a cluster's Slurm (its circuit breaker opened after
/// `slurm_breaker_failures` calls in a row got none), or gets them again (a probe was
/// answered). One event per change, never one per poll cycle. Stream
/// `cluster:<workspace>:<cluster>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmReachabilityChanged {
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub reachable: bool,
    /// Unreachable: when the first call of the failing run failed. Reachable: when the
    /// answer came.
    pub since: DateTime<Utc>,
    /// Why calls failed, in words (never a URL or a token), e.g. `slurmrestd did not answer
    /// within 5000 ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// A one-time console sign-in link (`clusterra token mint --login-link`) was used and opened a
/// console session. Appended on stream `login:<link_id>` with "no stream yet" as the expected
/// version, so a link signs in once however many requests (or replicas) race with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInLinkUsed {
    pub link_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub email: Email,
    /// `admin` or `user`.
    pub role: String,
    pub at: DateTime<Utc>,
}

/// A user started a conversation with the agent in a cluster. Stream
/// `agent:<workspace>:<cluster>:<conversation id>`; the conversation's messages and read tool
/// calls follow on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConversationStarted {
    pub conversation_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub at: DateTime<Utc>,
}

/// A message of a conversation: the user's, or the agent's reply (`error` when the model
/// failed or was cut off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMessageAdded {
    pub conversation_id: uuid::Uuid,
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// The agent ran a read tool as the user, made a proposal of an act tool (`proposal_id`), or
/// refused a call (`error` says why). A read tool's result is not kept, only its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentToolCalled {
    pub conversation_id: uuid::Uuid,
    pub call_id: String,
    pub tool: String,
    pub arguments: serde_json::Value,
    pub result_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// What must still hold when a proposal runs: the stream of what it acts on at the version the
/// user was shown (e.g. a job's history of 3 events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPrecondition {
    /// What it is about, e.g. `job 42`.
    pub subject: String,
    pub version: i64,
}

/// The agent proposed an action (a submit, cancel, delete or quota change); it runs only when
/// the user confirms this exact digest. Stream `proposal:<workspace>:<cluster>:<proposal id>`:
/// its decision and outcome follow on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionProposed {
    pub proposal_id: uuid::Uuid,
    pub conversation_id: uuid::Uuid,
    /// The model's tool-call id (one proposal per call, also for parallel calls).
    pub call_id: String,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub tool: crate::agent::Tool,
    /// The canonical arguments that will run, and nothing else.
    pub arguments: serde_json::Value,
    /// SHA-256 of the proposal id, cluster, tool and canonical arguments (`agent::digest`).
    pub digest: String,
    /// What the server resolved for the user to read: names, owners, states, cost so far, what
    /// will change.
    pub preview: serde_json::Value,
    pub preconditions: Vec<AgentPrecondition>,
    pub expires_at: DateTime<Utc>,
}

/// The user confirmed a proposal with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionConfirmed {
    pub proposal_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub by: Email,
    pub digest: String,
    pub at: DateTime<Utc>,
}

/// The user rejected a proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionRejected {
    pub proposal_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub by: Email,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A proposal was confirmed after its expiry: it will never run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionExpired {
    pub proposal_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub at: DateTime<Utc>,
}

/// What a proposal acts on changed since the user was shown it: it will never run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionInvalidated {
    pub proposal_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// What a proposal's execution did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOutcome {
    /// The log position of the last event the action appended (0 when it appended none).
    pub position: i64,
    /// The jobs it submitted or cancelled.
    #[serde(default)]
    pub job_ids: Vec<u64>,
    pub summary: String,
}

/// A confirmed proposal ran. Appended at the proposal stream's version after the
/// confirmation: once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionExecuted {
    pub proposal_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub outcome: AgentOutcome,
    pub at: DateTime<Utc>,
}

/// A confirmed proposal was refused by the API it ran through (the error's code and sentence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentActionFailed {
    pub proposal_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub cluster_id: ClusterId,
    pub user: Email,
    pub code: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A user registered a webhook. Stream `webhooks:<workspace>:<email>` (the user's registrations
/// and removals; its delivery attempts are on `webhook:<workspace>:<webhook id>`). Its secret is
/// not recorded: it is derived from the server's webhook key and the id (`webhook::secret_of`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRegistered {
    pub webhook_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub user: Email,
    pub url: String,
    pub events: Vec<crate::webhook::Kind>,
    pub at: DateTime<Utc>,
}

/// A webhook was removed: nothing more is delivered to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRemoved {
    pub webhook_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub user: Email,
    pub by: Email,
    pub at: DateTime<Utc>,
}

/// One attempt to deliver an event to a webhook, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeliveryAttempted {
    pub webhook_id: uuid::Uuid,
    pub workspace: WorkspaceId,
    pub user: Email,
    /// `<webhook id>:<log position>:<n>`, the same on every attempt.
    pub delivery_id: String,
    /// The log position of the event delivered.
    pub position: i64,
    pub event: crate::webhook::Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `delivered` (a 2xx answer), `failed` (tried again at `next_attempt_at`) or `gave_up`.
    pub outcome: String,
    /// The receiver's HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Every domain event, tagged by its type name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DomainEvent {
    ClusterRegistered(ClusterRegistered),
    JobSubmissionRequested(JobSubmissionRequested),
    JobSubmitted(JobSubmitted),
    JobSubmissionFailed(JobSubmissionFailed),
    JobStateChanged(JobStateChanged),
    JobUsageRecorded(JobUsageRecorded),
    JobCancelRequested(JobCancelRequested),
    FileAccessGranted(FileAccessGranted),
    FileDeleted(FileDeleted),
    ScaleDecisionMade(ScaleDecisionMade),
    NodeLaunched(NodeLaunched),
    NodeReady(NodeReady),
    NodeTerminated(NodeTerminated),
    QuotaSet(QuotaSet),
    QuotaRemoved(QuotaRemoved),
    QuotaWarningRaised(QuotaWarningRaised),
    QuotaEnforced(QuotaEnforced),
    SlurmReachabilityChanged(SlurmReachabilityChanged),
    SignInLinkUsed(SignInLinkUsed),
    AgentConversationStarted(AgentConversationStarted),
    AgentMessageAdded(AgentMessageAdded),
    AgentToolCalled(AgentToolCalled),
    AgentActionProposed(AgentActionProposed),
    AgentActionConfirmed(AgentActionConfirmed),
    AgentActionRejected(AgentActionRejected),
    AgentActionExpired(AgentActionExpired),
    AgentActionInvalidated(AgentActionInvalidated),
    AgentActionExecuted(AgentActionExecuted),
    AgentActionFailed(AgentActionFailed),
    WebhookRegistered(WebhookRegistered),
    WebhookRemoved(WebhookRemoved),
    WebhookDeliveryAttempted(WebhookDeliveryAttempted),
}

impl DomainEvent {
    /// The type name stored in the envelope's `event_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            DomainEvent::ClusterRegistered(_) => "ClusterRegistered",
            DomainEvent::JobSubmissionRequested(_) => "JobSubmissionRequested",
            DomainEvent::JobSubmitted(_) => "JobSubmitted",
            DomainEvent::JobSubmissionFailed(_) => "JobSubmissionFailed",
            DomainEvent::JobStateChanged(_) => "JobStateChanged",
            DomainEvent::JobUsageRecorded(_) => "JobUsageRecorded",
            DomainEvent::JobCancelRequested(_) => "JobCancelRequested",
            DomainEvent::FileAccessGranted(_) => "FileAccessGranted",
            DomainEvent::FileDeleted(_) => "FileDeleted",
            DomainEvent::ScaleDecisionMade(_) => "ScaleDecisionMade",
            DomainEvent::NodeLaunched(_) => "NodeLaunched",
            DomainEvent::NodeReady(_) => "NodeReady",
            DomainEvent::NodeTerminated(_) => "NodeTerminated",
            DomainEvent::QuotaSet(_) => "QuotaSet",
            DomainEvent::QuotaRemoved(_) => "QuotaRemoved",
            DomainEvent::QuotaWarningRaised(_) => "QuotaWarningRaised",
            DomainEvent::QuotaEnforced(_) => "QuotaEnforced",
            DomainEvent::SlurmReachabilityChanged(_) => "SlurmReachabilityChanged",
            DomainEvent::SignInLinkUsed(_) => "SignInLinkUsed",
            DomainEvent::AgentConversationStarted(_) => "AgentConversationStarted",
            DomainEvent::AgentMessageAdded(_) => "AgentMessageAdded",
            DomainEvent::AgentToolCalled(_) => "AgentToolCalled",
            DomainEvent::AgentActionProposed(_) => "AgentActionProposed",
            DomainEvent::AgentActionConfirmed(_) => "AgentActionConfirmed",
            DomainEvent::AgentActionRejected(_) => "AgentActionRejected",
            DomainEvent::AgentActionExpired(_) => "AgentActionExpired",
            DomainEvent::AgentActionInvalidated(_) => "AgentActionInvalidated",
            DomainEvent::AgentActionExecuted(_) => "AgentActionExecuted",
            DomainEvent::AgentActionFailed(_) => "AgentActionFailed",
            DomainEvent::WebhookRegistered(_) => "WebhookRegistered",
            DomainEvent::WebhookRemoved(_) => "WebhookRemoved",
            DomainEvent::WebhookDeliveryAttempted(_) => "WebhookDeliveryAttempted",
        }
    }

    /// The schema version of the data this build writes.
    pub fn schema_version(&self) -> i32 {
        1
    }

    /// The event's data, as stored in the envelope.
    pub fn data(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            DomainEvent::ClusterRegistered(e) => serde_json::to_value(e),
            DomainEvent::JobSubmissionRequested(e) => serde_json::to_value(e),
            DomainEvent::JobSubmitted(e) => serde_json::to_value(e),
            DomainEvent::JobSubmissionFailed(e) => serde_json::to_value(e),
            DomainEvent::JobStateChanged(e) => serde_json::to_value(e),
            DomainEvent::JobUsageRecorded(e) => serde_json::to_value(e),
            DomainEvent::JobCancelRequested(e) => serde_json::to_value(e),
            DomainEvent::FileAccessGranted(e) => serde_json::to_value(e),
            DomainEvent::FileDeleted(e) => serde_json::to_value(e),
            DomainEvent::ScaleDecisionMade(e) => serde_json::to_value(e),
            DomainEvent::NodeLaunched(e) => serde_json::to_value(e),
            DomainEvent::NodeReady(e) => serde_json::to_value(e),
            DomainEvent::NodeTerminated(e) => serde_json::to_value(e),
            DomainEvent::QuotaSet(e) => serde_json::to_value(e),
            DomainEvent::QuotaRemoved(e) => serde_json::to_value(e),
            DomainEvent::QuotaWarningRaised(e) => serde_json::to_value(e),
            DomainEvent::QuotaEnforced(e) => serde_json::to_value(e),
            DomainEvent::SlurmReachabilityChanged(e) => serde_json::to_value(e),
            DomainEvent::SignInLinkUsed(e) => serde_json::to_value(e),
            DomainEvent::AgentConversationStarted(e) => serde_json::to_value(e),
            DomainEvent::AgentMessageAdded(e) => serde_json::to_value(e),
            DomainEvent::AgentToolCalled(e) => serde_json::to_value(e),
            DomainEvent::AgentActionProposed(e) => serde_json::to_value(e),
            DomainEvent::AgentActionConfirmed(e) => serde_json::to_value(e),
            DomainEvent::AgentActionRejected(e) => serde_json::to_value(e),
            DomainEvent::AgentActionExpired(e) => serde_json::to_value(e),
            DomainEvent::AgentActionInvalidated(e) => serde_json::to_value(e),
            DomainEvent::AgentActionExecuted(e) => serde_json::to_value(e),
            DomainEvent::AgentActionFailed(e) => serde_json::to_value(e),
            DomainEvent::WebhookRegistered(e) => serde_json::to_value(e),
            DomainEvent::WebhookRemoved(e) => serde_json::to_value(e),
            DomainEvent::WebhookDeliveryAttempted(e) => serde_json::to_value(e),
        }
    }

    /// Reads an event back from its envelope fields. Unknown types are `Ok(None)`: a newer
    /// writer's events must not stop an older reader.
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        data: &str,
    ) -> Result<Option<Self>, serde_json::Error> {
        let _ = schema_version; // every type is still at version 1: nothing to upcast yet
        Ok(match event_type {
            "ClusterRegistered" => {
                Some(DomainEvent::ClusterRegistered(serde_json::from_str(data)?))
            }
            "JobSubmissionRequested" => Some(DomainEvent::JobSubmissionRequested(
                serde_json::from_str(data)?,
            )),
            "JobSubmitted" => Some(DomainEvent::JobSubmitted(serde_json::from_str(data)?)),
            "JobSubmissionFailed" => Some(DomainEvent::JobSubmissionFailed(serde_json::from_str(
                data,
            )?)),
            "JobStateChanged" => Some(DomainEvent::JobStateChanged(serde_json::from_str(data)?)),
            "JobUsageRecorded" => Some(DomainEvent::JobUsageRecorded(serde_json::from_str(data)?)),
            "JobCancelRequested" => {
                Some(DomainEvent::JobCancelRequested(serde_json::from_str(data)?))
            }
            "FileAccessGranted" => {
                Some(DomainEvent::FileAccessGranted(serde_json::from_str(data)?))
            }
            "FileDeleted" => Some(DomainEvent::FileDeleted(serde_json::from_str(data)?)),
            "ScaleDecisionMade" => {
                Some(DomainEvent::ScaleDecisionMade(serde_json::from_str(data)?))
            }
            "NodeLaunched" => Some(DomainEvent::NodeLaunched(serde_json::from_str(data)?)),
            "NodeReady" => Some(DomainEvent::NodeReady(serde_json::from_str(data)?)),
            "NodeTerminated" => Some(DomainEvent::NodeTerminated(serde_json::from_str(data)?)),
            "QuotaSet" => Some(DomainEvent::QuotaSet(serde_json::from_str(data)?)),
            "QuotaRemoved" => Some(DomainEvent::QuotaRemoved(serde_json::from_str(data)?)),
            "QuotaWarningRaised" => {
                Some(DomainEvent::QuotaWarningRaised(serde_json::from_str(data)?))
            }
            "QuotaEnforced" => Some(DomainEvent::QuotaEnforced(serde_json::from_str(data)?)),
            "SlurmReachabilityChanged" => Some(DomainEvent::SlurmReachabilityChanged(
                serde_json::from_str(data)?,
            )),
            "SignInLinkUsed" => Some(DomainEvent::SignInLinkUsed(serde_json::from_str(data)?)),
            "AgentConversationStarted" => Some(DomainEvent::AgentConversationStarted(
                serde_json::from_str(data)?,
            )),
            "AgentMessageAdded" => {
                Some(DomainEvent::AgentMessageAdded(serde_json::from_str(data)?))
            }
            "AgentToolCalled" => Some(DomainEvent::AgentToolCalled(serde_json::from_str(data)?)),
            "AgentActionProposed" => Some(DomainEvent::AgentActionProposed(serde_json::from_str(
                data,
            )?)),
            "AgentActionConfirmed" => Some(DomainEvent::AgentActionConfirmed(
                serde_json::from_str(data)?,
            )),
            "AgentActionRejected" => Some(DomainEvent::AgentActionRejected(serde_json::from_str(
                data,
            )?)),
            "AgentActionExpired" => {
                Some(DomainEvent::AgentActionExpired(serde_json::from_str(data)?))
            }
            "AgentActionInvalidated" => Some(DomainEvent::AgentActionInvalidated(
                serde_json::from_str(data)?,
            )),
            "AgentActionExecuted" => Some(DomainEvent::AgentActionExecuted(serde_json::from_str(
                data,
            )?)),
            "AgentActionFailed" => {
                Some(DomainEvent::AgentActionFailed(serde_json::from_str(data)?))
            }
            "WebhookRegistered" => {
                Some(DomainEvent::WebhookRegistered(serde_json::from_str(data)?))
            }
            "WebhookRemoved" => Some(DomainEvent::WebhookRemoved(serde_json::from_str(data)?)),
            "WebhookDeliveryAttempted" => Some(DomainEvent::WebhookDeliveryAttempted(
                serde_json::from_str(data)?,
            )),
            _ => None,
        })
    }

    /// As [`Self::decode`], but a `JobSubmitted`'s job body, parameters and warnings are skipped
    /// over, not built: `body` is `null`, `params` `None`, `warnings` empty. For folds that read
    /// none of them (the poll cycle's open-job index), where building the body was most of the
    /// cost of each event.
    pub fn decode_without_bodies(
        event_type: &str,
        schema_version: i32,
        data: &str,
    ) -> Result<Option<Self>, serde_json::Error> {
        if event_type != "JobSubmitted" {
            return Self::decode(event_type, schema_version, data);
        }
        let j: SubmittedWithoutBody = serde_json::from_str(data)?;
        Ok(Some(DomainEvent::JobSubmitted(JobSubmitted {
            submission_id: j.submission_id,
            workspace: j.workspace,
            cluster_id: j.cluster_id,
            job_id: j.job_id,
            name: j.name,
            user: j.user,
            via: j.via,
            template_id: j.template_id,
            params: None,
            body: serde_json::Value::Null,
            shape: j.shape,
            warnings: Vec::new(),
            submitted_at: j.submitted_at,
            rate: j.rate,
        })))
    }
}

/// [`JobSubmitted`] less what [`DomainEvent::decode_without_bodies`] skips: `body` must be
/// there, as for [`DomainEvent::decode`], but is passed over without being built, and so are
/// the fields this struct does not name.
#[derive(Deserialize)]
struct SubmittedWithoutBody {
    #[allow(dead_code)] // required, never built
    body: serde::de::IgnoredAny,
    submission_id: Uuid,
    workspace: WorkspaceId,
    cluster_id: ClusterId,
    job_id: u64,
    name: String,
    user: Email,
    via: SubmittedVia,
    #[serde(default)]
    template_id: Option<String>,
    shape: JobShape,
    #[serde(default)]
    submitted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    rate: Option<crate::MicroUsd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_decoded_without_bodies_is_the_same_but_for_them() {
        let full = JobSubmitted {
            submission_id: Uuid::now_v7(),
            workspace: WorkspaceId::new("default").unwrap(),
            cluster_id: ClusterId::new("local").unwrap(),
            job_id: 42,
            name: "train".into(),
            user: Email::new("ada@example.org").unwrap(),
            via: SubmittedVia::Template,
            template_id: Some("pytorch".into()),
            params: Some(serde_json::json!({"epochs": 3})),
            body: serde_json::json!({"job": {"script": "#!/bin/bash\ntrue", "environment": ["A=1"], "nested": {"deep": [1, {"x": null}]}}}),
            shape: JobShape {
                cpus: 4,
                memory_mib: Some(8_192),
                nodes: 2,
                time_limit_minutes: Some(60),
                gpus: 1,
                tasks: Some(4),
            },
            warnings: vec![Warning {
                field: "slurm".into(),
                message: "ignored".into(),
            }],
            submitted_at: Some(Utc::now()),
            rate: Some(crate::MicroUsd(1_234)),
        };
        let e = DomainEvent::JobSubmitted(full.clone());
        let data = serde_json::to_string(&e.data().unwrap()).unwrap();
        let lean = DomainEvent::decode_without_bodies(e.event_type(), 1, &data).unwrap();
        assert_eq!(
            lean,
            Some(DomainEvent::JobSubmitted(JobSubmitted {
                params: None,
                body: serde_json::Value::Null,
                warnings: Vec::new(),
                ..full
            }))
        );
        // Any other event decodes as `decode` does; a broken submission is still an error.
        assert_eq!(
            DomainEvent::decode_without_bodies("FromTheFuture", 1, "{}").unwrap(),
            None
        );
        assert!(DomainEvent::decode_without_bodies("JobSubmitted", 1, r#"{"job_id": 1}"#).is_err());
        let mut without_body = e.data().unwrap();
        without_body.as_object_mut().unwrap().remove("body");
        let without_body = without_body.to_string();
        assert!(DomainEvent::decode("JobSubmitted", 1, &without_body).is_err());
        assert!(DomainEvent::decode_without_bodies("JobSubmitted", 1, &without_body).is_err());
    }

    #[test]
    fn round_trips_through_envelope_fields() {
        let e = DomainEvent::ClusterRegistered(ClusterRegistered {
            workspace: WorkspaceId::new("default").unwrap(),
            cluster_id: ClusterId::new("local").unwrap(),
            name: "Local".into(),
            region: "local".into(),
            bucket: "local".into(),
            registered_by: Email::new("admin@localhost.localdomain").unwrap(),
            slurm: None,
        });
        let data = serde_json::to_string(&e.data().unwrap()).unwrap();
        let back = DomainEvent::decode(e.event_type(), e.schema_version(), &data).unwrap();
        assert_eq!(back, Some(e));
        assert_eq!(DomainEvent::decode("FromTheFuture", 1, "{}").unwrap(), None);

        let change = DomainEvent::JobStateChanged(JobStateChanged {
            job_id: 7,
            from: JobState::Pending,
            to: JobState::Running,
            reason: None,
            node: Some("local".into()),
            exit_code: None,
            at: None,
            started_at: None,
        });
        let data = serde_json::to_string(&change.data().unwrap()).unwrap();
        assert_eq!(
            DomainEvent::decode(change.event_type(), 1, &data).unwrap(),
            Some(change)
        );
        let cancel = DomainEvent::JobCancelRequested(JobCancelRequested {
            job_id: 7,
            by: Email::new("ada@lab.org").unwrap(),
            why: None,
        });
        let data = serde_json::to_string(&cancel.data().unwrap()).unwrap();
        assert_eq!(
            DomainEvent::decode(cancel.event_type(), 1, &data).unwrap(),
            Some(cancel)
        );
    }
}
