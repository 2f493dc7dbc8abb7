//! `/nodes`: node sets with desired / starting / ready / busy, and cold starts under way.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;

use super::ClusterQuery;
use crate::Console;
use crate::call::seg;
use crate::layout::{empty, error_box, money, time};
use crate::session::Session;

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let (frame, cluster) = match console
        .cluster_frame(&session, q.cluster.as_deref(), "/nodes", "Nodes")
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let sets = match console
        .get(
            &session,
            &format!("/v1/clusters/{}/nodesets", seg(&cluster)),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return console.fail_page(&frame, "Nodes", &e),
    };
    // Cold starts under way: nodes launched whose ready or end is not in the recent feed.
    let recent = console
        .get(
            &session,
            &format!(
                "/v1/clusters/{}/events?limit=500&type=NodeLaunched,NodeReady,NodeTerminated",
                seg(&cluster)
            ),
        )
        .await;
    let mut starting: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    if let Ok(r) = &recent {
        // Oldest first, so a later ready or end removes the launch.
        for e in r["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .rev()
        {
            let node = e["data"]["node"].as_str().unwrap_or("").to_owned();
            match e["type"].as_str() {
                Some("NodeLaunched") => {
                    starting.insert(node, e.clone());
                }
                _ => {
                    starting.remove(&node);
                }
            }
        }
    }
    let list = sets["nodesets"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if list.is_empty() {
            (empty("No node sets yet.", html! { "Node sets appear when jobs need nodes." }))
        } @else {
            div.scroll { table.nodes {
                caption.sr { "Node sets of " (cluster) }
                thead { tr { th scope="col" { "Node set" } th scope="col" { "Instance" } th scope="col" { "Per hour" } th scope="col" { "Desired" } th scope="col" { "Starting" } th scope="col" { "Ready" } th scope="col" { "Busy" } } }
                tbody {
                    @for s in &list {
                        tr {
                            td { (s["family"].as_str().unwrap_or("")) "-" (s["size"].as_str().unwrap_or("")) }
                            td { (s["instance_type"].as_str().unwrap_or("")) " (" (s["vcpus"].as_u64().unwrap_or(0)) " vCPU, " (s["memory_gib"].as_u64().unwrap_or(0)) " GiB)" }
                            td { (money(s["hourly_usd"].as_str())) }
                            td { (s["desired"].as_u64().unwrap_or(0)) }
                            td { (s["starting"].as_u64().unwrap_or(0)) }
                            td { (s["ready"].as_u64().unwrap_or(0)) }
                            td { (s["busy"].as_u64().unwrap_or(0)) }
                        }
                    }
                }
            } }
        }
        h2 { "Cold starts under way" }
        @if let Err(e) = &recent { (error_box(e)) }
        @if starting.is_empty() {
            p.muted { "No node is starting." }
        } @else {
            ul {
                @for (node, e) in &starting {
                    li { code { (node) } " (" (e["data"]["instance_type"].as_str().unwrap_or("")) "), launched " (time(e["data"]["launched_at"].as_str().or(e["time"].as_str()))) ", expected ready " (time(e["data"]["ready_expected_at"].as_str())) }
                }
            }
        }
    };
    console.page(&frame, "Nodes", body)
}
