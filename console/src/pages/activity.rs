//! `/activity`: the cluster's event feed, newest first, followed live over SSE.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::Console;
use crate::call::{query, seg};
use crate::layout::{empty, time};
use crate::session::Session;

/// The feed's types, grouped as the filter offers them.
const KINDS: &[(&str, &str)] = &[
    ("JobSubmitted,JobStateChanged,JobCancelRequested", "Jobs"),
    (
        "ScaleDecisionMade,NodeLaunched,NodeReady,NodeTerminated",
        "Scaling and nodes",
    ),
    ("JobCancelRequested", "Cancels"),
    ("ClusterRegistered,SlurmReachabilityChanged", "Cluster"),
];

#[derive(Debug, Default, Deserialize)]
pub struct ActivityQuery {
    cluster: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// One feed entry as a list item (the browser module renders live entries the same way).
pub fn entry(e: &Value) -> Markup {
    html! {
        li data-position=(e["position"].as_i64().unwrap_or(0)) {
            (time(e["time"].as_str())) " "
            span.type { (e["type"].as_str().unwrap_or("")) } " "
            span { (e["summary"].as_str().unwrap_or("")) }
            @if let Some(a) = e["actor"].as_str() { " " span.muted { "by " (a) } }
        }
    }
}

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<ActivityQuery>,
) -> Response {
    let (frame, cluster) = match console
        .cluster_frame(&session, q.cluster.as_deref(), "/activity", "Activity")
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let kind = q.kind.clone().filter(|k| KINDS.iter().any(|(t, _)| t == k));
    let uri = format!(
        "/v1/clusters/{}/events?{}",
        seg(&cluster),
        query([("limit", Some("100")), ("type", kind.as_deref())])
    );
    let feed = match console.get(&session, &uri).await {
        Ok(f) => f,
        Err(e) => return console.fail_page(&frame, "Activity", &e),
    };
    let events = feed["events"].as_array().cloned().unwrap_or_default();
    let last = events
        .first()
        .and_then(|e| e["position"].as_i64())
        .unwrap_or(0);
    let stream = format!(
        "/v1/clusters/{}/events/stream?{}",
        seg(&cluster),
        query([("type", kind.as_deref())])
    );
    let body = html! {
        form.filters method="get" action="/activity" {
            input type="hidden" name="cluster" value=(cluster);
            label for="kind" { "Show" }
            select #kind name="type" data-autosubmit {
                option value="" { "everything" }
                @for (t, label) in KINDS { option value=(t) selected[kind.as_deref() == Some(*t)] { (label) } }
            }
            noscript { button type="submit" { "Filter" } }
        }
        p #feed-status .muted aria-live="polite" {}
        @if events.is_empty() {
            (empty("Nothing has happened on this cluster yet.", html! { "Submit a job and watch it appear here." }))
        }
        ol #feed .feed data-feed=(stream) data-after=(last) aria-live="polite" {
            @for e in &events { (entry(e)) }
        }
    };
    console.page(&frame, "Activity", body)
}
