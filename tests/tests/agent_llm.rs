//! Ask AI through the real binary against a real small model (Gemma 3 270M behind llama.cpp's
//! OpenAI-compatible server, `scripts/llm-local`, started by `scripts/test`): "Please cancel job
//! N." becomes a proposal naming exactly job N, nothing runs until the user confirms its digest,
//! and then it runs. The model is given the few-shot examples a base model this small needs
//! (`scripts/llm/examples.json`, `agent_examples_file`) and only the two tools of the case
//! (`agent_tools`). Its judgement is not what is tested: the protocol and the gate are.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::Duration;

use serde_json::{Value, json};
use tests::model::frames;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_model_asked_to_cancel_a_job_makes_a_proposal_that_runs_only_when_confirmed() {
    let url = match std::env::var("CLUSTERRA_TEST_LLM_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!(
                "SKIPPED: no real model for this run (SKIP_LLM=1, or not run by scripts/test: \
                 start one with scripts/llm-local start DIR and set CLUSTERRA_TEST_LLM_URL)"
            );
            return;
        }
    };
    let examples = tests::repo_root().join("scripts/llm/examples.json");
    let (_dir, _data, api, ada) = tests::started_with_user(
        &[
            ("CLUSTERRA_AGENT_MODEL_URL", &url),
            ("CLUSTERRA_AGENT_MODEL", "gemma3-270m"),
            ("CLUSTERRA_AGENT_TOOLS", "list_jobs,cancel_job"),
            ("CLUSTERRA_AGENT_EXAMPLES_FILE", examples.to_str().unwrap()),
            ("CLUSTERRA_AGENT_MODEL_STOP", "</tool_call>"),
            ("CLUSTERRA_AGENT_MAX_TOKENS", "64"),
            ("CLUSTERRA_AGENT_MAX_TURNS", "2"),
            // A 270M model on two busy cores: seconds to tens of seconds per answer.
            ("CLUSTERRA_AGENT_MODEL_TIMEOUT_MS", "240000"),
        ],
        "ada@lab.org",
    );
    // Job 1 is a quick one: asked about "job 1", this model copies an example's id instead
    // (its judgement, which is not what this test is about).
    let (status, out) = api
        .submit_as(
            &ada,
            json!({"job": {"name": "quick", "script": "#!/bin/sh\ntrue\n",
                "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}),
        )
        .await;
    assert_eq!(status, 201, "{out}");
    let (status, out) = api
        .submit_as(
            &ada,
            json!({"job": {"name": "long", "script": "#!/bin/sh\nsleep 600\n",
                "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}),
        )
        .await;
    assert_eq!(status, 201, "{out}");
    let job = out["job_id"].as_u64().unwrap();
    api.wait_state(job, &["RUNNING"], Duration::from_secs(30))
        .await;
    let (status, out) = api
        .post_as("/v1/clusters/local/agent/conversations", &ada, json!({}))
        .await;
    assert_eq!(status, 201, "{out}");
    let cid = out["conversation_id"].as_str().unwrap().to_string();
    let res = api
        .client
        .post(api.server.url(&format!(
            "/v1/clusters/local/agent/conversations/{cid}/messages"
        )))
        .bearer_auth(&ada)
        .json(&json!({ "text": format!("Please cancel job {job}.") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let reply = frames(res).await;
    assert!(
        reply.iter().any(|(e, _)| e == "done"),
        "the reply ends with done: {reply:?}"
    );
    let proposals: Vec<&Value> = reply
        .iter()
        .filter(|(e, _)| e == "proposal")
        .map(|(_, d)| d)
        .collect();
    assert!(!proposals.is_empty(), "no proposal: {reply:?}");
    for p in &proposals {
        assert_eq!(p["tool"], "cancel_job");
        assert_eq!(p["arguments"], json!({ "job_ids": [job] }), "{p}");
    }
    // Nothing ran.
    assert_eq!(api.job(job).await["state"], "RUNNING");
    let p = proposals[0];
    let (status, out) = api
        .post_as(
            &format!(
                "/v1/clusters/local/agent/proposals/{}/confirm",
                p["proposal_id"].as_str().unwrap()
            ),
            &ada,
            json!({ "digest": p["digest"] }),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["state"], "executed", "{out}");
    api.wait_state(job, &["CANCELLED"], Duration::from_secs(30))
        .await;
}
