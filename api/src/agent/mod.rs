//! Ask AI: the agent's routes (docs/agent.md).
//!
//! A conversation belongs to one user and one cluster. Each message is answered by a loop of
//! model calls ([`run`]): read tools run at once as the caller, through this API's own router
//! in-process with the caller's token ([`tools`]), so their authorization and validation are
//! the API's; act tools (submit, cancel, delete, quota) only ever become a proposal the user
//! confirms with its digest. Confirming runs exactly the stored arguments through the same
//! router, once (the outcome is appended at the confirmation's version).

mod run;
mod tools;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use commands::agent::{AgentError, ChatModel, Confirmed};
use domain::DomainEvent;
use domain::agent::{DecideError, ProposalState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::json::ApiJson;
use crate::{ApiError, AppState};

/// The agent's model and limits. `model: None` = not configured: every agent route answers
/// 503 `agent_unavailable`.
pub struct Agent {
    pub model: Option<Arc<dyn ChatModel>>,
    pub limits: AgentLimits,
    /// Messages per user in the last minute (this replica's count).
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Conversations whose message is being answered in this process.
    busy: Mutex<HashSet<uuid::Uuid>>,
}

/// Limits of the agent.
#[derive(Debug, Clone)]
pub struct AgentLimits {
    /// Model calls to answer one message (tool rounds included).
    pub max_turns: u32,
    /// User messages in one conversation.
    pub max_messages: u32,
    /// Messages one user may send per minute.
    pub messages_per_minute: u32,
    /// How long a proposal may be confirmed.
    pub proposal_ttl: Duration,
    /// The longest one model call may take (with `max_turns`, how long a message may be in
    /// answering on any replica).
    pub model_timeout: Duration,
    /// The tools offered to the model (a call of another is refused as unknown).
    pub tools: Vec<domain::agent::Tool>,
    /// Example exchanges put after the system prompt (a small model needs a few).
    pub examples: Vec<commands::agent::ChatMessage>,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            max_turns: 6,
            max_messages: 50,
            messages_per_minute: 10,
            proposal_ttl: Duration::from_secs(600),
            model_timeout: Duration::from_secs(60),
            tools: domain::agent::Tool::ALL.to_vec(),
            examples: Vec::new(),
        }
    }
}

impl Agent {
    pub fn new(model: Option<Arc<dyn ChatModel>>, limits: AgentLimits) -> Self {
        Self {
            model,
            limits,
            recent: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// Not configured.
    pub fn disabled() -> Self {
        Self::new(None, AgentLimits::default())
    }

    fn model(&self) -> Result<Arc<dyn ChatModel>, ApiError> {
        self.model.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_unavailable",
                "No model is configured for Ask AI. Set agent_model_url (CLUSTERRA_AGENT_MODEL_URL, an \
                 OpenAI-compatible base URL ending in /v1), agent_model and, if the server needs one, \
                 agent_api_key_file, then restart the server.",
            )
        })
    }

    /// Counts a message of `user`; refuses past the per-minute limit.
    fn admit(&self, user: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() > 10_000 {
            recent.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = recent.entry(user.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        if q.len() >= self.limits.messages_per_minute as usize {
            let wait = q
                .front()
                .map_or(60, |t| 60 - now.duration_since(*t).as_secs().min(59));
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "agent_rate_limited",
                format!(
                    "You sent {} messages to Ask AI in the last minute, the most allowed; try again in {wait} s",
                    self.limits.messages_per_minute
                ),
            ));
        }
        q.push_back(now);
        Ok(())
    }

    /// Marks a conversation as being answered; `None` when it already is.
    fn hold(self: &Arc<Self>, id: uuid::Uuid) -> Option<Held> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(id).then(|| Held {
            agent: self.clone(),
            id,
        })
    }
}

/// A conversation being answered; released when dropped.
struct Held {
    agent: Arc<Agent>,
    id: uuid::Uuid,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut busy = self.agent.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.id);
    }
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conversation_busy",
        "Ask AI is still answering the previous message of this conversation; wait for its reply, then send again",
    )
}

fn not_found(what: &'static str, field: &str) -> ApiError {
    let (code, message) = match what {
        "conversation" => (
            "conversation_not_found",
            "No such conversation of yours in this cluster; start one with POST …/agent/conversations",
        ),
        _ => (
            "proposal_not_found",
            "No such proposal of yours in this cluster; list yours with GET …/agent/proposals",
        ),
    };
    ApiError::new(StatusCode::NOT_FOUND, code, message).with_field(field)
}

fn agent_error(e: AgentError) -> ApiError {
    match e {
        AgentError::NoConversation => not_found("conversation", "conversation_id"),
        AgentError::NoProposal => not_found("proposal", "proposal_id"),
        AgentError::Busy => busy(),
        AgentError::Contended => ApiError::new(
            StatusCode::CONFLICT,
            "proposal_busy",
            "Other requests are deciding this proposal right now; read it again (GET …/agent/proposals) and retry",
        ),
        AgentError::Decide(d) => match d {
            DecideError::NotFound => not_found("proposal", "proposal_id"),
            DecideError::DigestMismatch => ApiError::new(
                StatusCode::CONFLICT,
                "digest_mismatch",
                "This digest is not the proposal's: confirm with the digest of the action you were shown (GET …/agent/proposals)",
            )
            .with_field("digest"),
            DecideError::Expired(at) => ApiError::new(
                StatusCode::GONE,
                "proposal_expired",
                format!("The proposal expired at {at} unconfirmed; ask Ask AI again for a fresh one"),
            ),
            DecideError::Invalidated(reason) => ApiError::new(
                StatusCode::CONFLICT,
                "proposal_invalidated",
                format!("The proposal no longer holds ({reason}); ask Ask AI again for a fresh one"),
            ),
            DecideError::Running(since) => ApiError::new(
                StatusCode::CONFLICT,
                "proposal_running",
                format!(
                    "The proposal was confirmed at {since} and is running; read its outcome with GET …/agent/proposals (nothing was run again)"
                ),
            ),
            DecideError::Decided(state) => ApiError::new(
                StatusCode::CONFLICT,
                "proposal_decided",
                format!("The proposal was already {state}; nothing was run"),
            ),
        },
        AgentError::Log(e) => ApiError::from(e),
        AgentError::Decode(e) => ApiError::internal(format!("stored agent event unreadable: {e}")),
    }
}

/// The caller's bearer token, to call the API in-process as them.
fn bearer(headers: &HeaderMap) -> Result<HeaderValue, ApiError> {
    headers.get(header::AUTHORIZATION).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "Send your token as Authorization: Bearer <token>",
        )
        .with_field("headers.authorization")
    })
}

fn parse_id(text: &str, what: &'static str, field: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(text).map_err(|_| not_found(what, field))
}

/// `POST …/agent/conversations`'s answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationCreated {
    pub conversation_id: uuid::Uuid,
    pub cluster_id: String,
    /// The log position of its start.
    pub position: i64,
}

/// `POST …/agent/conversations`'s body: `{}` (nothing to set yet).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartIn {}

/// Start a conversation with the agent in a cluster.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/agent/conversations",
    tag = "agent",
    params(("id" = String, Path, description = "Cluster id")),
    request_body = StartIn,
    responses(
        (status = 201, description = "Started", body = ConversationCreated),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
        (status = 503, description = "`agent_unavailable`: no model is configured", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    if let Some(field) = body.keys().next() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "A conversation takes no settings yet: send {}",
        )
        .with_field(field.clone()));
    }
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    state.agent.model()?;
    state.agent.admit(caller.email.as_str())?;
    let conversation_id = uuid::Uuid::now_v7();
    let stream =
        commands::agent::conversation_stream(&caller.workspace, &cluster, &conversation_id);
    let event = DomainEvent::AgentConversationStarted(domain::events::AgentConversationStarted {
        conversation_id,
        workspace: caller.workspace.clone(),
        cluster_id: cluster.clone(),
        user: caller.email.clone(),
        at: state.clock.now(),
    });
    let position = commands::agent::append_conversation(
        state.store.log.as_ref(),
        &stream,
        0,
        &[event],
        &commands::agent::agent_metadata(&caller.email, caller.role.as_str()),
    )
    .await
    .map_err(agent_error)?;
    Ok((
        StatusCode::CREATED,
        crate::consistency::position_header(position),
        Json(ConversationCreated {
            conversation_id,
            cluster_id: cluster.to_string(),
            position,
        }),
    )
        .into_response())
}

/// One message of a conversation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageOut {
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    pub position: i64,
}

/// One tool call the agent made (reads; an act tool's call names its proposal).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ToolCallOut {
    pub call_id: String,
    pub tool: String,
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
    pub result_bytes: u64,
    pub proposal_id: Option<uuid::Uuid>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    pub position: i64,
}

/// A proposal as its owner sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProposalOut {
    pub proposal_id: uuid::Uuid,
    pub conversation_id: uuid::Uuid,
    pub tool: String,
    /// Exactly what will run when confirmed.
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
    /// Send this back to confirm.
    pub digest: String,
    /// What the server resolved: names, owners, states, cost so far, what will change.
    #[schema(value_type = Object)]
    pub preview: serde_json::Value,
    /// pending, confirmed, rejected, expired, invalidated, executed or failed.
    pub state: String,
    pub expires_at: DateTime<Utc>,
    pub reason: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<domain::events::AgentOutcome>,
}

impl ProposalOut {
    fn from_view(v: projections::views::agent::ProposalView, now: DateTime<Utc>) -> Self {
        ProposalOut {
            proposal_id: v.proposal_id,
            conversation_id: v.conversation_id,
            tool: v.tool.name().to_string(),
            arguments: v.arguments,
            digest: v.digest,
            preview: v.preview,
            state: v.decision.state.at(v.expires_at, now).as_str().to_string(),
            expires_at: v.expires_at,
            reason: v.decision.reason,
            outcome: v.decision.outcome,
        }
    }
}

/// A conversation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationOut {
    pub conversation_id: uuid::Uuid,
    pub cluster_id: String,
    pub user: String,
    pub started_at: DateTime<Utc>,
    pub messages: Vec<MessageOut>,
    pub tool_calls: Vec<ToolCallOut>,
    pub proposals: Vec<ProposalOut>,
}

/// A conversation of the caller's, with its messages, tool calls and proposals.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/agent/conversations/{cid}",
    tag = "agent",
    params(("id" = String, Path, description = "Cluster id"),
           ("cid" = String, Path, description = "Conversation id"),
           ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until the proposals view shows this log position")),
    responses(
        (status = 200, description = "The conversation", body = ConversationOut),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such conversation of yours in this cluster", body = crate::error::ErrorBody),
        (status = 503, description = "`agent_unavailable`: no model is configured", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    min: crate::consistency::MinPosition,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    state.agent.model()?;
    let cid = parse_id(&cid, "conversation", "cid")?;
    let conversation = own_conversation(&state, &caller, &cluster, &cid).await?;
    let headers =
        crate::consistency::await_projection(&state, projections::views::agent::NAME, min).await;
    let Some(started) = conversation.started.clone() else {
        return Err(not_found("conversation", "cid"));
    };
    let now = state.clock.now();
    let proposals = projections::views::agent::of_conversation(
        state.store.read.as_ref(),
        &caller.workspace,
        &cluster,
        &caller.email,
        &cid,
    )
    .await?
    .into_iter()
    .map(|p| ProposalOut::from_view(p, now))
    .collect();
    let mut messages = Vec::new();
    let mut tool_calls = Vec::new();
    for (position, _, event) in conversation.events {
        match event {
            DomainEvent::AgentMessageAdded(m) => messages.push(MessageOut {
                role: m.role,
                text: m.text,
                error: m.error,
                at: m.at,
                position,
            }),
            DomainEvent::AgentToolCalled(t) => tool_calls.push(ToolCallOut {
                call_id: t.call_id,
                tool: t.tool,
                arguments: t.arguments,
                result_bytes: t.result_bytes,
                proposal_id: t.proposal_id,
                error: t.error,
                at: t.at,
                position,
            }),
            _ => {}
        }
    }
    Ok((
        headers,
        Json(ConversationOut {
            conversation_id: cid,
            cluster_id: cluster.to_string(),
            user: started.user.to_string(),
            started_at: started.at,
            messages,
            tool_calls,
            proposals,
        }),
    )
        .into_response())
}

/// The caller's conversation `cid` in `cluster`, or 404.
async fn own_conversation(
    state: &AppState,
    caller: &Caller,
    cluster: &domain::ClusterId,
    cid: &uuid::Uuid,
) -> Result<commands::agent::Conversation, ApiError> {
    let stream = commands::agent::conversation_stream(&caller.workspace, cluster, cid);
    let conversation = commands::agent::load_conversation(state.store.log.as_ref(), &stream)
        .await
        .map_err(agent_error)?;
    match &conversation.started {
        Some(s) if s.user == caller.email => Ok(conversation),
        _ => Err(not_found("conversation", "cid")),
    }
}

/// `POST …/messages`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// What you ask, 1–4,000 characters.
    pub text: String,
}

/// Ask the agent: the reply streams back as Server-Sent Events.
///
/// Events: `delta` `{text}` (the reply as it is written), `tool_call` `{call_id, tool, risk,
/// arguments, ok, error}` (a read tool ran, or a call was refused), `proposal` (an action waiting
/// for your confirmation: `{proposal_id, tool, arguments, digest, preview, expires_at}`),
/// `error` `{code, message}` (the model failed; the message is recorded with the error), then
/// `done` `{text, position, proposals}`.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/agent/conversations/{cid}/messages",
    tag = "agent",
    params(("id" = String, Path, description = "Cluster id"),
           ("cid" = String, Path, description = "Conversation id")),
    request_body = MessageIn,
    responses(
        (status = 200, description = "The reply, as an SSE stream", content_type = "text/event-stream"),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such conversation of yours in this cluster", body = crate::error::ErrorBody),
        (status = 409, description = "`conversation_busy`: the previous message is still being answered; `conversation_full`: start a new conversation", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_field`: the text is empty or too long", body = crate::error::ErrorBody),
        (status = 429, description = "`agent_rate_limited`: too many messages this minute", body = crate::error::ErrorBody),
        (status = 503, description = "`agent_unavailable`: no model is configured", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, cid)): Path<(String, String)>,
    ApiJson(body): ApiJson<MessageIn>,
) -> Result<Response, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    let model = state.agent.model()?;
    let token = bearer(&headers)?;
    let cid = parse_id(&cid, "conversation", "cid")?;
    let text = body.text.trim().to_string();
    if text.is_empty() || text.chars().count() > domain::agent::MAX_MESSAGE_CHARS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!(
                "Write a message of 1 to {} characters",
                domain::agent::MAX_MESSAGE_CHARS
            ),
        )
        .with_field("text"));
    }
    let conversation = own_conversation(&state, &caller, &cluster, &cid).await?;
    let asked = conversation
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, DomainEvent::AgentMessageAdded(m) if m.role == "user"))
        .count();
    if asked >= state.agent.limits.max_messages as usize {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conversation_full",
            format!(
                "This conversation has {asked} messages, the most one may hold; start a new conversation"
            ),
        ));
    }
    // A message being answered on another replica: the last one is the user's, younger than
    // the longest an answer may take.
    if let Some((_, _, DomainEvent::AgentMessageAdded(m))) = conversation.events.last()
        && m.role == "user"
    {
        let answering = state.agent.limits.model_timeout * state.agent.limits.max_turns
            + Duration::from_secs(30);
        let answering = chrono::Duration::from_std(answering).unwrap_or(chrono::Duration::hours(1));
        if state.clock.now() < m.at + answering {
            return Err(busy());
        }
    }
    let held = state.agent.hold(cid).ok_or_else(busy)?;
    state.agent.admit(caller.email.as_str())?;
    let meta = commands::agent::agent_metadata(&caller.email, caller.role.as_str());
    commands::agent::append_conversation(
        state.store.log.as_ref(),
        &commands::agent::conversation_stream(&caller.workspace, &cluster, &cid),
        conversation.version,
        &[DomainEvent::AgentMessageAdded(
            domain::events::AgentMessageAdded {
                conversation_id: cid,
                role: "user".into(),
                text: text.clone(),
                error: None,
                at: state.clock.now(),
            },
        )],
        &meta,
    )
    .await
    .map_err(agent_error)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let tx_beat = tx.clone();
    let turn = run::Turn {
        state: state.clone(),
        api: crate::router(state.clone()),
        model,
        caller,
        token,
        cluster,
        conversation: cid,
        history: conversation.events,
        version: conversation.version + 1,
        meta,
        frames: tx,
        gone: Default::default(),
    };
    // A model may think for a minute: heartbeats keep proxies from closing the quiet stream.
    let (beats, every) = (tx_beat, state.logs.heartbeat);
    tokio::spawn(async move {
        let _held = held;
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if beats.send(crate::sse::heartbeat()).await.is_err() {
                    break;
                }
            }
        });
        turn.answer(text).await;
        heartbeat.abort();
    });
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(crate::sse::response(futures::StreamExt::chain(
        futures::stream::once(async { crate::sse::hello("agent", Duration::from_secs(3)) }),
        frames,
    )))
}

/// Query of the proposals route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProposalQuery {
    /// Only proposals in this state (pending, confirmed, rejected, expired, invalidated,
    /// executed, failed).
    #[param(pattern = "^(pending|confirmed|rejected|expired|invalidated|executed|failed)$")]
    pub state: Option<String>,
    /// At most this many, newest first (1–100, default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// `GET …/agent/proposals`'s answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProposalList {
    pub proposals: Vec<ProposalOut>,
}

/// The caller's proposals in a cluster, newest first.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/agent/proposals",
    tag = "agent",
    params(("id" = String, Path, description = "Cluster id"), ProposalQuery,
           ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until the proposals view shows this log position")),
    responses(
        (status = 200, description = "Your proposals", body = ProposalList),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
        (status = 503, description = "`agent_unavailable`: no model is configured", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_proposals(
    State(state): State<AppState>,
    caller: Caller,
    min: crate::consistency::MinPosition,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    state.agent.model()?;
    let wanted = match q.get("state") {
        None => None,
        Some(s) => Some(ProposalState::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "state is one of pending, confirmed, rejected, expired, invalidated, executed, failed",
            )
            .with_field("query.state")
        })?),
    };
    let limit = match q.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "limit is a whole number from 1 to 100",
                )
                .with_field("query.limit")
            })?,
    };
    let headers =
        crate::consistency::await_projection(&state, projections::views::agent::NAME, min).await;
    let now = state.clock.now();
    let proposals = projections::views::agent::of_user(
        state.store.read.as_ref(),
        &caller.workspace,
        &cluster,
        &caller.email,
        wanted,
        now,
        limit,
    )
    .await?
    .into_iter()
    .map(|p| ProposalOut::from_view(p, now))
    .collect();
    Ok((headers, Json(ProposalList { proposals })).into_response())
}

/// `POST …/confirm`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmIn {
    /// The proposal's digest, as shown (64 hex digits).
    pub digest: String,
}

/// `POST …/reject`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectIn {
    /// Why, for the agent (at most 500 characters; may be empty).
    #[serde(default)]
    pub reason: String,
}

/// What became of a confirmed or rejected proposal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecisionOut {
    pub proposal_id: uuid::Uuid,
    /// executed, failed or rejected.
    pub state: String,
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<domain::events::AgentOutcome>,
    /// Why it failed (the API's error code and sentence).
    pub error: Option<Failure>,
    /// The log position of what this request recorded (0 when it recorded nothing new): send
    /// it as `X-Clusterra-Min-Position` to read the proposal's new state.
    pub position: i64,
}

/// An API refusal of a confirmed proposal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

/// Confirm a proposal: runs its stored arguments, once.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/agent/proposals/{pid}/confirm",
    tag = "agent",
    params(("id" = String, Path, description = "Cluster id"),
           ("pid" = String, Path, description = "Proposal id")),
    request_body = ConfirmIn,
    responses(
        (status = 200, description = "It ran (`executed`), or the API refused it (`failed`, with the error). Confirming an executed proposal again answers its outcome and runs nothing", body = DecisionOut),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such proposal of yours (another user's is not found either)", body = crate::error::ErrorBody),
        (status = 409, description = "`digest_mismatch`, `proposal_invalidated` (what it acts on changed since you saw it), `proposal_decided` (rejected or failed before) or `conversation_busy`", body = crate::error::ErrorBody),
        (status = 410, description = "`proposal_expired`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_field`: the digest is not 64 hex digits", body = crate::error::ErrorBody),
        (status = 503, description = "`agent_unavailable`: no model is configured", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(body): ApiJson<ConfirmIn>,
) -> Result<Response, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    state.agent.model()?;
    let token = bearer(&headers)?;
    let pid = parse_id(&pid, "proposal", "pid")?;
    if body.digest.len() != 64 || !body.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "digest is the proposal's 64 hex digits, as shown with it",
        )
        .with_field("digest"));
    }
    let meta = commands::agent::agent_metadata(&caller.email, caller.role.as_str());
    let api = crate::router(state.clone());
    let tools = tools::Tools {
        api: &api,
        token: &token,
        caller: &caller,
        cluster: &cluster,
    };
    let now = state.clock.now();
    let decided = commands::agent::confirm(
        state.store.log.as_ref(),
        commands::agent::ProposalRef {
            workspace: &caller.workspace,
            cluster: &cluster,
            id: &pid,
        },
        commands::agent::Decider {
            email: &caller.email,
            meta: &meta,
        },
        &body.digest.to_ascii_lowercase(),
        now,
        |proposal| {
            let tools = &tools;
            async move { tools.changed(&proposal.proposed).await }
        },
    )
    .await
    .map_err(agent_error)?;
    let out = match decided {
        Confirmed::Done(outcome) => DecisionOut {
            proposal_id: pid,
            state: "executed".into(),
            outcome: Some(outcome),
            error: None,
            position: 0,
        },
        Confirmed::Run { proposal, version } => {
            // The run and its record go on even when the client hangs up: a task of their own.
            let (state, api, token, caller, cluster, meta) = (
                state.clone(),
                api.clone(),
                token.clone(),
                caller.clone(),
                cluster.clone(),
                meta.clone(),
            );
            let run = tokio::spawn(async move {
                let tools = tools::Tools {
                    api: &api,
                    token: &token,
                    caller: &caller,
                    cluster: &cluster,
                };
                let result = tools.execute(&proposal.proposed).await;
                commands::agent::record_outcome(
                    state.store.log.as_ref(),
                    &proposal,
                    version,
                    result,
                    &meta,
                    state.clock.now(),
                )
                .await
            });
            let recorded = run
                .await
                .map_err(|e| ApiError::internal(format!("the proposal's run stopped: {e}")))?
                .map_err(agent_error)?;
            match recorded {
                (Ok(outcome), position) => DecisionOut {
                    proposal_id: pid,
                    state: "executed".into(),
                    outcome: Some(outcome),
                    error: None,
                    position,
                },
                (Err((code, message)), position) => DecisionOut {
                    proposal_id: pid,
                    state: "failed".into(),
                    outcome: None,
                    error: Some(Failure { code, message }),
                    position,
                },
            }
        }
    };
    Ok(Json(out).into_response())
}

/// Reject a proposal: it never runs; the reason goes back to the agent.
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/agent/proposals/{pid}/reject",
    tag = "agent",
    params(("id" = String, Path, description = "Cluster id"),
           ("pid" = String, Path, description = "Proposal id")),
    request_body = RejectIn,
    responses(
        (status = 200, description = "Rejected (also when it was rejected before)", body = DecisionOut),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such proposal of yours", body = crate::error::ErrorBody),
        (status = 409, description = "`proposal_decided`: it was confirmed before", body = crate::error::ErrorBody),
        (status = 410, description = "`proposal_expired`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_field`: the reason is too long", body = crate::error::ErrorBody),
        (status = 503, description = "`agent_unavailable`: no model is configured", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(String, String)>,
    ApiJson(body): ApiJson<RejectIn>,
) -> Result<Response, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    state.agent.model()?;
    let pid = parse_id(&pid, "proposal", "pid")?;
    if body.reason.chars().count() > domain::agent::MAX_REASON_CHARS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!(
                "Give a reason of at most {} characters",
                domain::agent::MAX_REASON_CHARS
            ),
        )
        .with_field("reason"));
    }
    let meta = commands::agent::agent_metadata(&caller.email, caller.role.as_str());
    let position = commands::agent::reject(
        state.store.log.as_ref(),
        commands::agent::ProposalRef {
            workspace: &caller.workspace,
            cluster: &cluster,
            id: &pid,
        },
        commands::agent::Decider {
            email: &caller.email,
            meta: &meta,
        },
        &body.reason,
        state.clock.now(),
    )
    .await
    .map_err(agent_error)?;
    let mut headers = HeaderMap::new();
    if position > 0 {
        headers = crate::consistency::position_header(position);
    }
    Ok((
        headers,
        Json(DecisionOut {
            proposal_id: pid,
            state: "rejected".into(),
            outcome: None,
            error: None,
            position,
        }),
    )
        .into_response())
}
