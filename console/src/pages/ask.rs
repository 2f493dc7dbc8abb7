//! `/ask`: Ask AI. A conversation with the agent about the cluster; the reply streams in as it
//! is written (a small module of `console.js` reads the API's SSE reply, passed through by
//! `POST /ask/messages`); each action the agent proposes is a card showing what the server
//! resolved (names, owners, states, cost so far, what will change) with Confirm and Reject.
//! Confirm sends the digest the card shows; nothing runs otherwise. Without JavaScript the form
//! still works: the console waits for the whole reply and shows the conversation.

use std::sync::Arc;

use axum::Form;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Console;
use crate::call::{Fail, seg};
use crate::layout::time;
use crate::session::Session;

#[derive(Debug, Default, Deserialize)]
pub struct AskQuery {
    pub cluster: Option<String>,
    pub conversation: Option<String>,
    pub at: Option<i64>,
}

fn conversation_ok(cid: &str) -> bool {
    cid.len() == 36 && cid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The page's own address for a conversation.
fn here(cluster: &str, conversation: Option<&str>) -> String {
    match conversation {
        Some(c) => format!("/ask?cluster={}&conversation={}", seg(cluster), seg(c)),
        None => format!("/ask?cluster={}", seg(cluster)),
    }
}

/// One proposal as a card, with Confirm and Reject while it is pending.
fn card(p: &Value, cluster: &str, conversation: Option<&str>, csrf: &str) -> Markup {
    let pid = p["proposal_id"].as_str().unwrap_or_default();
    let state = p["state"].as_str().unwrap_or("pending");
    let back = conversation
        .map(|c| format!("&conversation={}", seg(c)))
        .unwrap_or_default();
    let action = |what: &str| {
        format!(
            "/ask/proposals/{}/{what}?cluster={}{back}",
            seg(pid),
            seg(cluster)
        )
    };
    html! {
        article.card.proposal data-proposal=(pid) aria-label={"Proposal " (p["tool"].as_str().unwrap_or(""))} {
            h3 { (p["tool"].as_str().unwrap_or("")) " " span.badge { (state) } }
            @if let Some(w) = p["preview"]["what_changes"].as_str() { p { strong { (w) } } }
            @if let Some(jobs) = p["preview"]["jobs"].as_array() {
                ul { @for j in jobs {
                    li { "job " (j["job_id"]) " " (j["name"].as_str().unwrap_or("")) " of " (j["owner"].as_str().unwrap_or(""))
                         ", " (j["state"].as_str().unwrap_or("")) ", $" (j["cost_so_far_usd"].as_str().unwrap_or("0")) " so far" }
                } }
            }
            details { summary { "Exactly what runs" } pre { (serde_json::to_string_pretty(&p["arguments"]).unwrap_or_default()) } }
            @if let Some(o) = p["outcome"]["summary"].as_str() { p { "Result: " (o) } }
            @if let Some(r) = p["reason"].as_str() { p.muted { "Why: " (r) } }
            @if state == "pending" {
                p.muted { "Expires " (time(p["expires_at"].as_str())) }
                div.actions {
                    form method="post" action=(action("confirm")) {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="digest" value=(p["digest"].as_str().unwrap_or_default());
                        button.danger type="submit" { "Confirm" }
                    }
                    form method="post" action=(action("reject")) {
                        input type="hidden" name="csrf" value=(csrf);
                        label { "Why not (optional) " input type="text" name="reason" maxlength="500"; }
                        button type="submit" { "Reject" }
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<AskQuery>,
) -> Response {
    let (frame, cluster) = match console
        .cluster_frame(&session, q.cluster.as_deref(), "/ask", "Ask AI")
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let agent = format!("/v1/clusters/{}/agent", seg(&cluster));
    let conversation = q.conversation.as_deref().filter(|c| conversation_ok(c));
    let pending = match console
        .get_at(&session, &format!("{agent}/proposals?state=pending"), q.at)
        .await
    {
        Ok(v) => v,
        Err(e) if e.code == "agent_unavailable" => {
            return console.page(&frame, "Ask AI", html! {
                div.empty {
                    p { "Ask AI is not set up on this server." }
                    p { "An operator turns it on by pointing " code { "agent_model_url" } " at an OpenAI-compatible model server (see the configuration guide)." }
                }
            });
        }
        Err(e) => return console.fail_page(&frame, "Ask AI", &e),
    };
    let talk = match conversation {
        Some(c) => match console
            .get_at(&session, &format!("{agent}/conversations/{}", seg(c)), q.at)
            .await
        {
            Ok(v) => Some(v),
            Err(e) => return console.fail_page(&frame, "Ask AI", &e),
        },
        None => None,
    };
    let shown: Vec<&str> = talk
        .as_ref()
        .and_then(|t| t["proposals"].as_array())
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["proposal_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let action = format!(
        "/ask/messages?cluster={}{}",
        seg(&cluster),
        conversation
            .map(|c| format!("&conversation={}", seg(c)))
            .unwrap_or_default()
    );
    let body = html! {
        p.muted { "Ask about your jobs, logs, files, spend and nodes. Ask AI can also propose to submit, cancel or delete; nothing runs until you confirm the exact action on its card." }
        section #chat .chat aria-label="Conversation" aria-live="polite" {
            @if let Some(t) = &talk {
                @for m in t["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    div class={"msg " (m["role"].as_str().unwrap_or(""))} {
                        p.who { (if m["role"] == "user" { "You" } else { "Ask AI" }) }
                        p.text { (m["text"].as_str().unwrap_or("")) }
                        @if let Some(e) = m["error"].as_str() { p.muted { "(" (e) ")" } }
                    }
                }
                @for p in t["proposals"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    (card(p, &cluster, conversation, &session.csrf))
                }
            }
        }
        form #ask-form .card method="post" action=(action) data-ask {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="ask-text" { "Your question" }
            textarea #ask-text name="text" rows="3" maxlength="4000" required placeholder="Why is my job pending?" {}
            button #ask-send type="submit" { "Ask" }
            span #ask-status .muted aria-live="polite" {}
        }
        @if conversation.is_some() { p { a href=(here(&cluster, None)) { "Start a new conversation" } } }
        @let others: Vec<&Value> = pending["proposals"].as_array().map(|ps| ps.iter().filter(|p| !shown.contains(&p["proposal_id"].as_str().unwrap_or(""))).collect()).unwrap_or_default();
        @if !others.is_empty() {
            section aria-labelledby="pending-h" {
                h2 #pending-h { "Waiting for your confirmation" }
                @for p in others {
                    (card(p, &cluster, Some(p["conversation_id"].as_str().unwrap_or("")).filter(|c| conversation_ok(c)), &session.csrf))
                }
            }
        }
    };
    console.page(&frame, "Ask AI", body)
}

#[derive(Debug, Default, Deserialize)]
pub struct MessageForm {
    csrf: Option<String>,
    text: Option<String>,
}

/// `POST /ask/messages`: the question, to the API (a conversation is started if none is named).
/// A browser that accepts `text/event-stream` gets the reply streamed through as the API writes
/// it, with the conversation id in `X-Conversation-Id`; a plain form post waits for the whole
/// reply and shows the conversation.
pub async fn message(
    State(console): State<Arc<Console>>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<AskQuery>,
    Form(form): Form<MessageForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let frame = match console.frame(&session, q.cluster.as_deref(), "/ask").await {
        Ok(f) => f,
        Err(e) => return console.bare_fail(&e),
    };
    let Some(cluster) = frame.cluster.clone() else {
        return Redirect::to("/ask").into_response();
    };
    let agent = format!("/v1/clusters/{}/agent", seg(&cluster));
    let stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let fail = |e: &Fail| -> Response {
        if stream {
            (
                e.status,
                axum::Json(
                    json!({"error": {"code": e.code, "message": e.message, "field": e.field}}),
                ),
            )
                .into_response()
        } else {
            let back = here(&cluster, q.conversation.as_deref());
            console.fail_back(&frame, "Ask AI", e, (&back, "Back"))
        }
    };
    let cid = match q.conversation.as_deref().filter(|c| conversation_ok(c)) {
        Some(c) => c.to_string(),
        None => match console
            .call(
                &session,
                Method::POST,
                &format!("{agent}/conversations"),
                Some(&json!({})),
            )
            .await
        {
            Ok(v) => v["conversation_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            Err(e) => return fail(&e),
        },
    };
    let uri = format!("{agent}/conversations/{}/messages", seg(&cid));
    let body = json!({ "text": form.text.unwrap_or_default() });
    let res = match console.call_raw(&session, Method::POST, &uri, &body).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !res.status().is_success() {
        let status = res.status();
        let bytes = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        return fail(&Fail {
            status,
            code: text(&v["error"]["code"]),
            message: text(&v["error"]["message"]),
            field: v["error"]["field"].as_str().map(str::to_owned),
            details: Vec::new(),
        });
    }
    if stream {
        let mut out = Response::new(Body::new(res.into_body()));
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&cid) {
            h.insert("x-conversation-id", v);
        }
        return out;
    }
    // No script: read the reply to its end, then show the conversation.
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let at = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|d| d["position"].as_i64())
        .max()
        .map(|p| format!("&at={p}"))
        .unwrap_or_default();
    Redirect::to(&format!("{}{at}", here(&cluster, Some(&cid)))).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct DecideForm {
    csrf: Option<String>,
    digest: Option<String>,
    reason: Option<String>,
}

/// `POST /ask/proposals/{pid}/confirm` and `…/reject`: the API's decision routes, then back to
/// the conversation, which shows what became of the proposal.
pub async fn decide(
    State(console): State<Arc<Console>>,
    session: Session,
    Path((pid, what)): Path<(String, String)>,
    Query(q): Query<AskQuery>,
    Form(form): Form<DecideForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let frame = match console.frame(&session, q.cluster.as_deref(), "/ask").await {
        Ok(f) => f,
        Err(e) => return console.bare_fail(&e),
    };
    let Some(cluster) = frame.cluster.clone() else {
        return Redirect::to("/ask").into_response();
    };
    let body = match what.as_str() {
        "confirm" => json!({ "digest": form.digest.unwrap_or_default() }),
        "reject" => json!({ "reason": form.reason.unwrap_or_default() }),
        _ => return crate::layout::problem(StatusCode::NOT_FOUND, "not_found", "No such page."),
    };
    let uri = format!(
        "/v1/clusters/{}/agent/proposals/{}/{what}",
        seg(&cluster),
        seg(&pid)
    );
    let back = here(
        &cluster,
        q.conversation.as_deref().filter(|c| conversation_ok(c)),
    );
    match console
        .call(&session, Method::POST, &uri, Some(&body))
        .await
    {
        Ok(v) => {
            let at = v["position"]
                .as_i64()
                .filter(|p| *p > 0)
                .map(|p| format!("&at={p}"))
                .unwrap_or_default();
            Redirect::to(&format!("{back}{at}")).into_response()
        }
        Err(e) => console.fail_back(&frame, "Ask AI", &e, (&back, "Back to the conversation")),
    }
}
