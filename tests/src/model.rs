//! A scripted chat-completions server: the one stand-in of these tests, because no model that
//! follows instructions runs on this machine (the real small model's wire format is tested in
//! `agent_llm.rs`). It speaks OpenAI's streaming protocol (`POST /v1/chat/completions`,
//! `stream: true` answered with SSE chunks) and replays a fixed list of answers, one per
//! request, keeping every request it got so a test can see what the model was shown.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A text answer (sent in two deltas), finish reason `stop`.
    Text(String),
    /// Tool calls `(id, name, arguments JSON text)`, streamed in pieces; finish reason
    /// `tool_calls`.
    Calls(Vec<(String, String, String)>),
    /// Says nothing for this long (a model that hangs).
    Hang(Duration),
    /// An HTTP error status.
    Status(u16),
    /// A 200 whose stream is not a chat completion.
    Garbage,
}

/// A tool call for [`Reply::Calls`].
pub fn call(id: &str, name: &str, arguments: Value) -> (String, String, String) {
    (id.into(), name.into(), arguments.to_string())
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    requests: Vec<Value>,
}

/// The running scripted model.
#[derive(Clone)]
pub struct ScriptedModel {
    inner: Arc<Mutex<Inner>>,
    /// Its base URL, ending in `/v1`.
    pub url: String,
}

impl ScriptedModel {
    /// Starts it on a free loopback port (on the test's runtime).
    pub async fn start() -> ScriptedModel {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedModel {
            inner,
            url: format!("http://{addr}/v1"),
        }
    }

    /// Adds answers to the script.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        let mut inner = self.inner.lock().expect("the script");
        inner.script.extend(replies);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.lock().expect("the script").requests.clone()
    }

    /// The environment that points a server at this model.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CLUSTERRA_AGENT_MODEL_URL", self.url.clone()),
            ("CLUSTERRA_AGENT_MODEL", "scripted".into()),
        ]
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let doc = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "scripted",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {doc}\n\n")
}

async fn answer(State(inner): State<Arc<Mutex<Inner>>>, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let reply = {
        let mut inner = inner.lock().expect("the script");
        inner.requests.push(request);
        inner.script.pop_front()
    };
    let reply = reply.unwrap_or_else(|| Reply::Text("(the script has no more answers)".into()));
    let mut out = String::new();
    match reply {
        Reply::Text(text) => {
            let mid = text
                .char_indices()
                .nth(text.chars().count() / 2)
                .map_or(0, |(i, _)| i);
            out.push_str(&chunk(json!({"role": "assistant", "content": ""}), None));
            out.push_str(&chunk(json!({"content": &text[..mid]}), None));
            out.push_str(&chunk(json!({"content": &text[mid..]}), None));
            out.push_str(&chunk(json!({}), Some("stop")));
        }
        Reply::Calls(calls) => {
            out.push_str(&chunk(json!({"role": "assistant", "content": null}), None));
            for (i, (id, name, args)) in calls.iter().enumerate() {
                let mid = args.len() / 2;
                let (a, b) = args.split_at(if args.is_char_boundary(mid) { mid } else { 0 });
                out.push_str(&chunk(
                    json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                                           "function": {"name": name, "arguments": a}}]}),
                    None,
                ));
                out.push_str(&chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": b}}]}),
                    None,
                ));
            }
            out.push_str(&chunk(json!({}), Some("tool_calls")));
        }
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            out.push_str(&chunk(json!({"content": "too late"}), Some("stop")));
        }
        Reply::Status(code) => {
            return (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "{\"error\": {\"message\": \"scripted failure\"}}",
            )
                .into_response();
        }
        Reply::Garbage => {
            return (
                [(header::CONTENT_TYPE, "text/event-stream")],
                "data: <html>oops</html>\n\n",
            )
                .into_response();
        }
    }
    out.push_str("data: [DONE]\n\n");
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(out),
    )
        .into_response()
}

/// The frames of an agent reply (`event` name, `data` as JSON), read to the end of the stream.
pub async fn frames(res: reqwest::Response) -> Vec<(String, Value)> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut events = res.bytes_stream().eventsource();
    while let Some(Ok(e)) = events.next().await {
        out.push((
            e.event,
            serde_json::from_str(&e.data).unwrap_or(Value::Null),
        ));
    }
    out
}
