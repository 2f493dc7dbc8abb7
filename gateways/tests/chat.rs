//! The chat-model client against a local server that answers what a test hands it: the error
//! paths of the protocol (a whole JSON answer, an error document inside the stream, a stream cut
//! off before its end, an answer larger than the bound, an HTTP error whose body is not shown).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use commands::agent::{ChatMessage, ChatModel, ChatRequest, ModelError};
use gateways::chat::{ChatSettings, OpenAiChat};

/// A model server that answers every request with `status`, `content_type` and `body`.
async fn answering(status: u16, content_type: &'static str, body: String) -> OpenAiChat {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move {
                (
                    StatusCode::from_u16(status).unwrap(),
                    [(header::CONTENT_TYPE, content_type)],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    OpenAiChat::new(ChatSettings {
        base_url: format!("http://{addr}/v1"),
        model: "m".into(),
        api_key_file: None,
        timeout: Duration::from_secs(10),
        max_tokens: 64,
        stop: Vec::new(),
    })
    .unwrap()
}

async fn ask(chat: &OpenAiChat) -> Result<commands::agent::ChatReply, ModelError> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    chat.complete(
        &ChatRequest {
            messages: vec![ChatMessage::User("hi".into())],
            tools: Vec::new(),
        },
        &tx,
    )
    .await
}

#[tokio::test]
async fn a_whole_json_answer_is_read_with_its_tool_calls() {
    let body = r#"{"choices": [{"finish_reason": "tool_calls", "message": {"content": "ok",
        "tool_calls": [{"id": "c1", "function": {"name": "cancel_job", "arguments": {"job_ids": [7]}}}]}}]}"#;
    let reply = ask(&answering(200, "application/json", body.into()).await)
        .await
        .unwrap();
    assert_eq!(reply.text, "ok");
    assert_eq!(reply.finish_reason, "tool_calls");
    assert_eq!(reply.tool_calls[0].name, "cancel_job");
    assert_eq!(reply.tool_calls[0].arguments, r#"{"job_ids":[7]}"#);
}

#[tokio::test]
async fn what_is_not_a_finished_chat_completion_is_an_error() {
    for (body, says) in [
        (
            "data: {\"error\": {\"message\": \"context too long\"}}\n\n",
            "context too long",
        ),
        (
            "data: {\"choices\": [{\"delta\": {\"content\": \"half\"}}]}\n\n",
            "ended before the answer was finished",
        ),
        ("data: <html>\n\n", "not JSON"),
    ] {
        let err = ask(&answering(200, "text/event-stream", body.into()).await)
            .await
            .unwrap_err();
        assert!(matches!(err, ModelError::Protocol(_)), "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    // A line that never ends is cut off at the bound, not buffered without end.
    let endless = format!("data: {}", "x".repeat(2 * 1024 * 1024));
    let err = ask(&answering(200, "text/event-stream", endless).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    let err = ask(&answering(200, "application/json", "{\"choices\": []}".into()).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no choices"), "{err}");
}

#[tokio::test]
async fn an_http_error_says_its_status_and_a_hint_never_its_body() {
    let err = ask(&answering(
        401,
        "application/json",
        "{\"error\": \"bad key sk-abc123\"}".into(),
    )
    .await)
    .await
    .unwrap_err();
    assert!(matches!(err, ModelError::Status { status: 401 }), "{err}");
    assert!(err.to_string().contains("agent_api_key_file"), "{err}");
    assert!(!err.to_string().contains("sk-abc123"), "{err}");
}
