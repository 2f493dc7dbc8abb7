//! The chat-model client against a real model: Gemma 3 270M behind llama.cpp's OpenAI-compatible
//! server (`scripts/llm-local`, started by `scripts/test`, its URL in `CLUSTERRA_TEST_LLM_URL`).
//! It tests the protocol — stream deltas, finish reasons, a tool call with its arguments as a
//! JSON string, a timeout — and never the model's judgement (a 270M base model has little).

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use commands::agent::{ChatMessage, ChatModel, ChatRequest, ModelError, ToolSpec};
use gateways::chat::{ChatSettings, OpenAiChat};

fn model_url() -> Option<String> {
    match std::env::var("CLUSTERRA_TEST_LLM_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED: no real model for this run (SKIP_LLM=1, or not run by scripts/test: \
                 start one with scripts/llm-local start DIR and set CLUSTERRA_TEST_LLM_URL)"
            );
            None
        }
    }
}

fn client(url: &str, timeout: Duration, max_tokens: u32) -> OpenAiChat {
    OpenAiChat::new(ChatSettings {
        base_url: url.to_string(),
        model: "gemma3-270m".into(),
        api_key_file: None,
        timeout,
        max_tokens,
        stop: vec!["</tool_call>".into()],
    })
    .unwrap()
}

fn examples() -> Vec<ChatMessage> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/llm/examples.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc.as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::from_openai(m).unwrap())
        .collect()
}

fn tools() -> Vec<ToolSpec> {
    [
        domain::agent::Tool::ListJobs,
        domain::agent::Tool::CancelJob,
    ]
    .into_iter()
    .map(|t| ToolSpec {
        name: t.name(),
        description: t.description(),
        parameters: t.parameters(),
    })
    .collect()
}

#[tokio::test]
async fn a_streamed_answer_arrives_in_deltas_with_its_finish_reason() {
    let Some(url) = model_url() else { return };
    let chat = client(&url, Duration::from_secs(240), 12);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reply = chat
        .complete(
            &ChatRequest {
                messages: vec![ChatMessage::User("Say hello.".into())],
                tools: Vec::new(),
            },
            &tx,
        )
        .await
        .unwrap();
    drop(tx);
    let mut deltas = Vec::new();
    while let Some(d) = rx.recv().await {
        deltas.push(d);
    }
    assert!(deltas.len() > 1, "{deltas:?}");
    assert_eq!(deltas.concat(), reply.text);
    assert!(reply.tool_calls.is_empty());
    assert!(
        ["stop", "length"].contains(&reply.finish_reason.as_str()),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_cancel_request_comes_back_as_a_tool_call_the_server_accepts() {
    let Some(url) = model_url() else { return };
    let chat = client(&url, Duration::from_secs(240), 64);
    let mut messages = vec![ChatMessage::System(
        "You are Clusterra's Slurm assistant. Answer with a tool call.".into(),
    )];
    messages.extend(examples());
    messages.push(ChatMessage::User("Please cancel job 4242.".into()));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let reply = chat
        .complete(
            &ChatRequest {
                messages,
                tools: tools(),
            },
            &tx,
        )
        .await
        .unwrap();
    assert_eq!(reply.finish_reason, "tool_calls", "{reply:?}");
    assert_eq!(reply.tool_calls.len(), 1, "{reply:?}");
    let call = &reply.tool_calls[0];
    assert!(!call.id.is_empty());
    assert_eq!(call.name, "cancel_job");
    // The arguments arrive as JSON text, pieced together from the stream.
    let checked = domain::agent::check_call(&call.name, &call.arguments).unwrap();
    assert_eq!(checked.arguments, serde_json::json!({"job_ids": [4242]}));
}

#[tokio::test]
async fn a_model_slower_than_the_timeout_is_a_timeout() {
    let Some(url) = model_url() else { return };
    let chat = client(&url, Duration::from_millis(50), 64);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = vec![ChatMessage::System("Answer with a tool call.".into())];
    messages.extend(examples());
    messages.push(ChatMessage::User("Please cancel job 4242.".into()));
    let err = chat
        .complete(
            &ChatRequest {
                messages,
                tools: tools(),
            },
            &tx,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::Timeout(50)), "{err}");
}
