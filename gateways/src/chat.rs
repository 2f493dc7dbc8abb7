//! The chat-model port over OpenAI's chat-completions protocol (OpenAI, vLLM, llama.cpp's
//! server, Ollama): `POST {base}/chat/completions` with tools and `stream: true`, read as
//! Server-Sent Events (a server that answers with one JSON document is read too).
//!
//! Everything the server says is bounded and checked: the whole answer is cut off at
//! [`MAX_ANSWER_BYTES`] and [`MAX_TOOL_CALLS`], the whole exchange at the timeout; an error
//! document, a non-2xx status or a stream that is not a chat completion is a
//! [`ModelError`], never a half-read reply.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use commands::agent::{ChatMessage, ChatModel, ChatReply, ChatRequest, ModelError, ToolCall};
use serde_json::{Value, json};

/// The most bytes of one answer read.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The most tool calls one answer may make.
pub const MAX_TOOL_CALLS: usize = 16;

/// Settings of the model connection.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// The base URL, ending in `/v1` (`http://127.0.0.1:8000/v1`).
    pub base_url: String,
    pub model: String,
    /// A file holding the API key (sent as a bearer token), read at each request so a rotated
    /// key is used at once.
    pub api_key_file: Option<PathBuf>,
    /// The longest one request may take, answer included.
    pub timeout: Duration,
    pub max_tokens: u32,
    /// Stop sequences to send (some small models need `</tool_call>`).
    pub stop: Vec<String>,
}

/// The OpenAI-compatible chat-completions client.
pub struct OpenAiChat {
    client: reqwest::Client,
    url: String,
    settings: ChatSettings,
}

impl OpenAiChat {
    pub fn new(settings: ChatSettings) -> Result<Self, ModelError> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ModelError::Unreachable(e.to_string()))?;
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        Ok(Self {
            client,
            url,
            settings,
        })
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| match m {
                ChatMessage::System(text) => json!({"role": "system", "content": text}),
                ChatMessage::User(text) => json!({"role": "user", "content": text}),
                ChatMessage::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                    json!({"role": "assistant", "content": text})
                }
                ChatMessage::Assistant { text, tool_calls } => json!({
                    "role": "assistant",
                    "content": text,
                    "tool_calls": tool_calls.iter().map(|c| json!({
                        "id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments}
                    })).collect::<Vec<_>>(),
                }),
                ChatMessage::Tool { call_id, content } => {
                    json!({"role": "tool", "tool_call_id": call_id, "content": content})
                }
            })
            .collect();
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
        let mut body = json!({
            "model": self.settings.model,
            "messages": messages,
            "stream": true,
            "max_tokens": self.settings.max_tokens,
            "temperature": 0,
        });
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
            body["tool_choice"] = json!("auto");
        }
        if !self.settings.stop.is_empty() {
            body["stop"] = json!(self.settings.stop);
        }
        body
    }

    async fn exchange(
        &self,
        request: &ChatRequest,
        deltas: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<ChatReply, ModelError> {
        let mut req = self.client.post(&self.url).json(&self.body(request));
        if let Some(file) = &self.settings.api_key_file {
            let key = tokio::fs::read_to_string(file).await.map_err(|e| {
                ModelError::Unreachable(format!("the API key file could not be read: {e}"))
            })?;
            req = req.bearer_auth(key.trim());
        }
        let res = req
            .send()
            .await
            .map_err(|e| ModelError::Unreachable(without_url(&e)))?;
        let status = res.status();
        let is_stream = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !status.is_success() {
            // The body may echo part of a key or name internal hosts: logged here, never
            // shown to users or recorded.
            let body = read_limited(res, 4096).await.unwrap_or_default();
            tracing::warn!(status = status.as_u16(), body = %domain::feed::clip(&String::from_utf8_lossy(&body), 300), "the model server refused a request");
            return Err(ModelError::Status {
                status: status.as_u16(),
            });
        }
        if !is_stream {
            let body = read_limited(res, MAX_ANSWER_BYTES).await?;
            let doc: Value = serde_json::from_slice(&body)
                .map_err(|e| ModelError::Protocol(format!("not JSON: {e}")))?;
            return whole_answer(&doc, deltas);
        }
        read_stream(res, deltas).await
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(
        &self,
        request: &ChatRequest,
        deltas: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<ChatReply, ModelError> {
        let ms = u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX);
        tokio::time::timeout(self.settings.timeout, self.exchange(request, deltas))
            .await
            .map_err(|_| ModelError::Timeout(ms))?
    }
}

/// A reqwest error in words, without the URL (which may carry credentials).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the model server");
    }
    text
}

async fn read_limited(res: reqwest::Response, max: usize) -> Result<Vec<u8>, ModelError> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ModelError::Unreachable(without_url(&e)))?;
        if out.len() + chunk.len() > max {
            return Err(ModelError::Protocol(format!(
                "answer larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Why the model's stream was cut off while it was read.
#[derive(Debug, thiserror::Error)]
enum Cut {
    #[error("{0}")]
    Http(String),
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// Tool calls as their pieces arrive, by the index the server gives each.
#[derive(Default)]
struct Calls {
    by_index: BTreeMap<u64, ToolCall>,
}

impl Calls {
    fn add(&mut self, delta: &Value) -> Result<(), ModelError> {
        let Some(items) = delta.get("tool_calls").and_then(Value::as_array) else {
            return Ok(());
        };
        for (n, item) in items.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(n as u64);
            if !self.by_index.contains_key(&index) && self.by_index.len() >= MAX_TOOL_CALLS {
                return Err(ModelError::Protocol(format!(
                    "more than {MAX_TOOL_CALLS} tool calls in one answer"
                )));
            }
            let call = self.by_index.entry(index).or_insert_with(|| ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                call.id = domain::feed::clip(id, 128);
            }
            if let Some(f) = item.get("function") {
                if let Some(name) = f.get("name").and_then(Value::as_str) {
                    call.name.push_str(name);
                }
                match f.get("arguments") {
                    Some(Value::String(piece)) => call.arguments.push_str(piece),
                    // Some servers send the arguments as an object, not its JSON text.
                    Some(v @ Value::Object(_)) => call.arguments.push_str(&v.to_string()),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Vec<ToolCall> {
        self.by_index
            .into_iter()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = format!("call_{i}");
                }
                c
            })
            .collect()
    }
}

fn server_error(doc: &Value) -> Option<ModelError> {
    doc.get("error").map(|e| {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string());
        ModelError::Protocol(format!(
            "the model server reported: {}",
            domain::feed::clip(&message, 300)
        ))
    })
}

fn whole_answer(
    doc: &Value,
    deltas: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<ChatReply, ModelError> {
    if let Some(e) = server_error(doc) {
        return Err(e);
    }
    let choice = doc
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| ModelError::Protocol("no choices".into()))?;
    let message = choice
        .get("message")
        .ok_or_else(|| ModelError::Protocol("a choice without a message".into()))?;
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !text.is_empty() {
        let _ = deltas.send(text.clone());
    }
    let mut calls = Calls::default();
    calls.add(message)?;
    Ok(ChatReply {
        text,
        tool_calls: calls.finish(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop")
            .to_string(),
    })
}

async fn read_stream(
    res: reqwest::Response,
    deltas: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<ChatReply, ModelError> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    // Bytes are counted before they are parsed: a line that never ends is cut off too.
    let mut seen = 0usize;
    let bounded = res.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| Cut::Http(without_url(&e)))?;
        seen += chunk.len();
        if seen > MAX_ANSWER_BYTES {
            return Err(Cut::TooLarge);
        }
        Ok(chunk)
    });
    let mut events = bounded.eventsource();
    let mut reply = ChatReply::default();
    let mut calls = Calls::default();
    let mut done = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| ModelError::Protocol(format!("broken event stream: {e}")))?;
        let data = event.data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        if data.is_empty() {
            continue;
        }
        let doc: Value = serde_json::from_str(data)
            .map_err(|e| ModelError::Protocol(format!("an event is not JSON: {e}")))?;
        if let Some(e) = server_error(&doc) {
            return Err(e);
        }
        let Some(choice) = doc.get("choices").and_then(|c| c.get(0)) else {
            continue; // e.g. a usage-only chunk
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(text) = delta.get("content").and_then(Value::as_str)
                && !text.is_empty()
            {
                reply.text.push_str(text);
                let _ = deltas.send(text.to_string());
            }
            calls.add(delta)?;
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            reply.finish_reason = reason.to_string();
        }
    }
    if !done && reply.finish_reason.is_empty() {
        return Err(ModelError::Protocol(
            "the stream ended before the answer was finished".into(),
        ));
    }
    reply.tool_calls = calls.finish();
    Ok(reply)
}
