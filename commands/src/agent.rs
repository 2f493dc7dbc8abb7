//! The agent's commands: the chat-model port, and the conversation and proposal streams.
//!
//! A conversation lives on `agent:<workspace>:<cluster>:<conversation id>`; each proposal on
//! `proposal:<workspace>:<cluster>:<proposal id>`. A confirmation, a rejection and an outcome are
//! appended at exactly the version read, so however many requests (or replicas) race, a proposal
//! is decided once and its outcome recorded once ([`domain::agent::decide_confirm`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::agent::{Confirm, DecideError, Proposal};
use domain::events::{AgentActionExecuted, AgentActionFailed, AgentOutcome};
use domain::{ClusterId, DomainEvent, Email, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, LogError, Metadata, NewEvent, StreamId};
use serde::{Deserialize, Serialize};

/// One message sent to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChatMessage {
    System(String),
    User(String),
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        call_id: String,
        content: String,
    },
}

impl ChatMessage {
    /// One message in OpenAI's chat format (`{"role", "content", "tool_calls", "tool_call_id"}`),
    /// as an operator writes few-shot examples for a small model.
    pub fn from_openai(v: &serde_json::Value) -> Result<ChatMessage, String> {
        let text = |k: &str| {
            v.get(k)
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string()
        };
        match v.get("role").and_then(|r| r.as_str()) {
            Some("system") => Ok(ChatMessage::System(text("content"))),
            Some("user") => Ok(ChatMessage::User(text("content"))),
            Some("assistant") => {
                let mut tool_calls = Vec::new();
                for c in v
                    .get("tool_calls")
                    .and_then(|c| c.as_array())
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let f = c.get("function").ok_or("a tool call without a function")?;
                    let name = f
                        .get("name")
                        .and_then(|n| n.as_str())
                        .ok_or("a tool call without a name")?;
                    let arguments = match f.get("arguments") {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => "{}".into(),
                    };
                    tool_calls.push(ToolCall {
                        id: c
                            .get("id")
                            .and_then(|i| i.as_str())
                            .unwrap_or("example")
                            .to_string(),
                        name: name.to_string(),
                        arguments,
                    });
                }
                Ok(ChatMessage::Assistant {
                    text: text("content"),
                    tool_calls,
                })
            }
            Some("tool") => Ok(ChatMessage::Tool {
                call_id: text("tool_call_id"),
                content: text("content"),
            }),
            _ => Err("each message has a role: system, user, assistant or tool".into()),
        }
    }
}

/// A tool call as the model made it: `arguments` is the JSON text it wrote (maybe not JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: serde_json::Value,
}

/// One request to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
}

/// The model's whole answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `tool_calls`, `length`, …, as the server said.
    pub finish_reason: String,
}

/// Why the model gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model did not answer within {0} ms")]
    Timeout(u64),
    #[error("the model server could not be reached: {0}")]
    Unreachable(String),
    /// The server's body is logged where it is read, never carried (it may echo a key).
    #[error("the model server answered HTTP {status}{hint}", hint = status_hint(*status))]
    Status { status: u16 },
    #[error("the model server's answer is not a chat completion: {0}")]
    Protocol(String),
}

/// A chat-completions model (OpenAI's protocol, with tools and streaming). Text arrives on
/// `deltas` as it is generated; the whole answer is returned at the end.
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    async fn complete(
        &self,
        request: &ChatRequest,
        deltas: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<ChatReply, ModelError>;
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (it refused the credentials: check agent_api_key_file)",
        404 => " (check agent_model_url and agent_model)",
        429 => " (it is rate-limiting this server)",
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no such conversation")]
    NoConversation,
    #[error("no such proposal")]
    NoProposal,
    #[error("another message of this conversation is being answered; wait for it")]
    Busy,
    #[error("the proposal is being decided by other requests; try again")]
    Contended,
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("stored event unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A conversation's stream.
pub fn conversation_stream(
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    id: &uuid::Uuid,
) -> StreamId {
    StreamId::new(format!("agent:{workspace}:{cluster}:{id}"))
        .unwrap_or_else(|e| unreachable!("slugs and a uuid make a stream id: {e}"))
}

/// A proposal's stream.
pub fn proposal_stream(workspace: &WorkspaceId, cluster: &ClusterId, id: &uuid::Uuid) -> StreamId {
    StreamId::new(format!("proposal:{workspace}:{cluster}:{id}"))
        .unwrap_or_else(|e| unreachable!("slugs and a uuid make a stream id: {e}"))
}

/// The metadata of what a user does through the agent.
pub fn agent_metadata(user: &Email, role: &str) -> Metadata {
    Metadata {
        actor: Some(user.to_string()),
        role: Some(role.to_string()),
        via: Some("agent".into()),
        ..Default::default()
    }
}

fn encode(events: &[DomainEvent], meta: &Metadata) -> Result<Vec<NewEvent>, AgentError> {
    events
        .iter()
        .map(|e| Ok(NewEvent::new(e.event_type(), e.data()?).with_metadata(meta.clone())))
        .collect()
}

/// Appends `events` to `stream` at exactly `version`: the last position, or `None` when the
/// stream moved on since it was read (decide again).
async fn append_at(
    log: &dyn EventLog,
    stream: &StreamId,
    version: i64,
    events: &[DomainEvent],
    meta: &Metadata,
) -> Result<Option<i64>, AgentError> {
    match log
        .append(
            stream,
            ExpectedVersion::Exact(version),
            &encode(events, meta)?,
        )
        .await
    {
        Ok(out) => Ok(Some(out.last_position)),
        Err(LogError::VersionConflict { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A conversation as its stream holds it.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// `None` when the stream is empty.
    pub started: Option<domain::events::AgentConversationStarted>,
    pub events: Vec<(i64, DateTime<Utc>, DomainEvent)>,
    pub version: i64,
}

/// Reads a conversation's stream (bounded: a conversation holds at most the messages its
/// settings allow).
pub async fn load_conversation(
    log: &dyn EventLog,
    stream: &StreamId,
) -> Result<Conversation, AgentError> {
    let mut c = Conversation::default();
    c.version = crate::fold_stream(log, stream, 0, 500, |rec, event| {
        if let Some(event) = event {
            if let DomainEvent::AgentConversationStarted(s) = &event {
                c.started = Some(s.clone());
            }
            c.events.push((rec.position, rec.recorded_at, event));
        }
        Ok::<_, AgentError>(())
    })
    .await?;
    Ok(c)
}

/// Appends `events` to a conversation at `version` (0: it starts it). A conflict means another
/// message is being answered.
pub async fn append_conversation(
    log: &dyn EventLog,
    stream: &StreamId,
    version: i64,
    events: &[DomainEvent],
    meta: &Metadata,
) -> Result<i64, AgentError> {
    let expected = if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    };
    match log.append(stream, expected, &encode(events, meta)?).await {
        Ok(out) => Ok(out.last_position),
        Err(LogError::VersionConflict { .. }) => Err(AgentError::Busy),
        Err(e) => Err(e.into()),
    }
}

/// Records a new proposal on its own stream.
pub async fn propose(
    log: &dyn EventLog,
    proposed: domain::events::AgentActionProposed,
    meta: &Metadata,
) -> Result<i64, AgentError> {
    let stream = proposal_stream(
        &proposed.workspace,
        &proposed.cluster_id,
        &proposed.proposal_id,
    );
    let out = log
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &encode(&[DomainEvent::AgentActionProposed(proposed)], meta)?,
        )
        .await?;
    Ok(out.last_position)
}

/// A proposal and the version its stream is at.
pub async fn load_proposal(
    log: &dyn EventLog,
    workspace: &WorkspaceId,
    cluster: &ClusterId,
    id: &uuid::Uuid,
) -> Result<(Proposal, i64), AgentError> {
    let stream = proposal_stream(workspace, cluster, id);
    let mut proposal: Option<Proposal> = None;
    let version = crate::fold_stream(log, &stream, 0, 100, |_, event| {
        match (event, proposal.as_mut()) {
            (Some(DomainEvent::AgentActionProposed(p)), None) => proposal = Some(Proposal::new(p)),
            (Some(e), Some(p)) => p.apply(&e),
            _ => {}
        }
        Ok::<_, AgentError>(())
    })
    .await?;
    proposal.map(|p| (p, version)).ok_or(AgentError::NoProposal)
}

/// Which proposal a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct ProposalRef<'a> {
    pub workspace: &'a WorkspaceId,
    pub cluster: &'a ClusterId,
    pub id: &'a uuid::Uuid,
}

/// Who decides, and the metadata their events carry.
#[derive(Debug, Clone, Copy)]
pub struct Decider<'a> {
    pub email: &'a Email,
    pub meta: &'a Metadata,
}

/// What confirming decided.
#[derive(Debug)]
pub enum Confirmed {
    /// Run the proposal's stored arguments, then [`record_outcome`] at `version`.
    Run {
        proposal: Box<Proposal>,
        version: i64,
    },
    /// It ran before: its outcome.
    Done(AgentOutcome),
}

/// Confirms a proposal: decides, records the decision at the version read (a conflict is
/// decided again), and says whether to run it. `changed` checks the proposal's preconditions
/// against the world now (a sentence when one no longer holds).
pub async fn confirm<F, Fut>(
    log: &dyn EventLog,
    target: ProposalRef<'_>,
    by: Decider<'_>,
    digest: &str,
    now: DateTime<Utc>,
    changed: F,
) -> Result<Confirmed, AgentError>
where
    F: Fn(Proposal) -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let ProposalRef {
        workspace,
        cluster,
        id,
    } = target;
    let (caller, meta) = (by.email, by.meta);
    let stream = proposal_stream(workspace, cluster, id);
    for _ in 0..3 {
        let (proposal, version) = load_proposal(log, workspace, cluster, id).await?;
        // Preconditions matter only for a proposal about to be confirmed now.
        let pending = proposal.decision.state == domain::agent::ProposalState::Pending
            && digest == proposal.proposed.digest
            && now < proposal.proposed.expires_at
            && &proposal.proposed.user == caller;
        let changed = if pending {
            changed(proposal.clone()).await
        } else {
            None
        };
        match domain::agent::decide_confirm(&proposal, caller, digest, now, changed) {
            Confirm::Done(outcome) => return Ok(Confirmed::Done(outcome)),
            Confirm::Refuse { error, record } => {
                if !record.is_empty()
                    && append_at(log, &stream, version, &record, meta)
                        .await?
                        .is_none()
                {
                    continue;
                }
                return Err(error.into());
            }
            Confirm::Execute(record) => {
                // Always a confirmation at the exact version read: of two requests, one runs.
                if append_at(log, &stream, version, &record, meta)
                    .await?
                    .is_some()
                {
                    return Ok(Confirmed::Run {
                        proposal: Box::new(proposal),
                        version: version + record.len() as i64,
                    });
                }
            }
        }
    }
    Err(AgentError::Contended)
}

/// How a confirmed proposal's run ended.
#[derive(Debug, Clone)]
pub enum RunResult {
    Ran(AgentOutcome),
    Refused { code: String, message: String },
}

/// Records a run's outcome at `version` (the confirmation's): once. When another request
/// recorded one first, that one is the outcome.
pub async fn record_outcome(
    log: &dyn EventLog,
    proposal: &Proposal,
    version: i64,
    result: RunResult,
    meta: &Metadata,
    now: DateTime<Utc>,
) -> Result<(Result<AgentOutcome, (String, String)>, i64), AgentError> {
    let p = &proposal.proposed;
    let event = match &result {
        RunResult::Ran(outcome) => DomainEvent::AgentActionExecuted(AgentActionExecuted {
            proposal_id: p.proposal_id,
            workspace: p.workspace.clone(),
            cluster_id: p.cluster_id.clone(),
            user: p.user.clone(),
            outcome: outcome.clone(),
            at: now,
        }),
        RunResult::Refused { code, message } => DomainEvent::AgentActionFailed(AgentActionFailed {
            proposal_id: p.proposal_id,
            workspace: p.workspace.clone(),
            cluster_id: p.cluster_id.clone(),
            user: p.user.clone(),
            code: code.clone(),
            message: message.clone(),
            at: now,
        }),
    };
    let stream = proposal_stream(&p.workspace, &p.cluster_id, &p.proposal_id);
    match append_at(log, &stream, version, &[event], meta).await? {
        Some(position) => Ok((
            match result {
                RunResult::Ran(o) => Ok(o),
                RunResult::Refused { code, message } => Err((code, message)),
            },
            position,
        )),
        None => {
            let (now_there, _) =
                load_proposal(log, &p.workspace, &p.cluster_id, &p.proposal_id).await?;
            let outcome = match (now_there.decision.outcome, now_there.decision.reason) {
                (Some(o), _) => Ok(o),
                (None, reason) => Err((
                    "proposal_failed".into(),
                    reason.unwrap_or_else(|| "the proposal did not run".into()),
                )),
            };
            Ok((outcome, 0))
        }
    }
}

/// Rejects a proposal (recorded once).
pub async fn reject(
    log: &dyn EventLog,
    target: ProposalRef<'_>,
    by: Decider<'_>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<i64, AgentError> {
    let ProposalRef {
        workspace,
        cluster,
        id,
    } = target;
    let (caller, meta) = (by.email, by.meta);
    let stream = proposal_stream(workspace, cluster, id);
    for _ in 0..3 {
        let (proposal, version) = load_proposal(log, workspace, cluster, id).await?;
        let events = domain::agent::decide_reject(&proposal, caller, reason, now)?;
        if events.is_empty() {
            return Ok(0);
        }
        if let Some(position) = append_at(log, &stream, version, &events, meta).await? {
            return Ok(position);
        }
    }
    Err(AgentError::Contended)
}
