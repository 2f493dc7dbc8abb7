//! `/jobs`: the caller's jobs (admins: everyone's), paged and filtered; states change live.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use crate::Console;
use crate::call::{query, seg};
use crate::layout::{empty, state_badge, time};
use crate::session::Session;

/// Jobs per page.
pub const PAGE: &str = "50";

const STATES: &[&str] = &[
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
];

#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    cluster: Option<String>,
    state: Option<String>,
    template: Option<String>,
    user: Option<String>,
    cursor: Option<String>,
    at: Option<i64>,
}

pub async fn list(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<JobsQuery>,
) -> Response {
    let (frame, cluster) = match console
        .cluster_frame(&session, q.cluster.as_deref(), "/jobs", "Jobs")
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let admin = session.caller.is_admin();
    let uri = format!(
        "/v1/clusters/{}/jobs?{}",
        seg(&cluster),
        query([
            ("state", q.state.as_deref()),
            ("template", q.template.as_deref()),
            ("user", q.user.as_deref().filter(|_| admin)),
            ("cursor", q.cursor.as_deref()),
            ("limit", Some(PAGE)),
        ])
    );
    let page = match console.get_at(&session, &uri, q.at).await {
        Ok(p) => p,
        Err(e) => return console.fail_page(&frame, "Jobs", &e),
    };
    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
    let next = page["next_cursor"].as_str().map(|c| {
        format!(
            "/jobs?{}",
            query([
                ("cluster", Some(cluster.as_str())),
                ("state", q.state.as_deref()),
                ("template", q.template.as_deref()),
                ("user", q.user.as_deref()),
                ("cursor", Some(c)),
            ])
        )
    });
    let filtered = q.state.is_some() || q.template.is_some() || q.user.is_some();
    let body = html! {
        form.filters method="get" action="/jobs" {
            input type="hidden" name="cluster" value=(cluster);
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in STATES { option value=(s) selected[q.state.as_deref() == Some(*s)] { (s) } }
                }
            }
            label { "Template " input type="text" name="template" value=[q.template.as_deref()] placeholder="any" maxlength="64"; }
            @if admin {
                label { "User " input type="email" name="user" value=[q.user.as_deref()] placeholder="everyone" maxlength="254"; }
            }
            button type="submit" { "Filter" }
            @if filtered { " " a href={"/jobs?cluster=" (seg(&cluster))} { "Clear" } }
        }
        p #live-status .muted aria-live="polite" data-live-jobs=(cluster) data-me=(session.caller.email.as_str()) data-admin=(admin) {}
        @if jobs.is_empty() {
            @if filtered {
                (empty("No job matches these filters.", html! { a href={"/jobs?cluster=" (seg(&cluster))} { "Show all jobs" } }))
            } @else {
                (empty("No jobs on this cluster yet.", html! { a href={"/submit?cluster=" (seg(&cluster))} { "Submit your first job" } " from a template." }))
            }
        } @else {
            div.scroll {
                table.jobs {
                    caption.sr { "Jobs on " (cluster) }
                    thead { tr { th scope="col" { "Job" } th scope="col" { "Name" } @if admin { th scope="col" { "User" } } th scope="col" { "State" } th scope="col" { "Template" } th scope="col" { "Submitted" } th scope="col" { "Node" } } }
                    tbody {
                        @for j in &jobs { (row(&cluster, j, admin)) }
                    }
                }
            }
            @if let Some(n) = &next { p { a.button href=(n) rel="next" { "Next page" } } }
        }
    };
    console.page(&frame, "Jobs", body)
}

fn row(cluster: &str, j: &Value, admin: bool) -> maud::Markup {
    let id = j["job_id"].as_u64().unwrap_or_default();
    let s = j["state"].as_str().unwrap_or("?");
    html! {
        tr data-job-id=(id) {
            td { a href={"/jobs/" (id) "?cluster=" (seg(cluster))} { (id) } }
            td { (j["name"].as_str().unwrap_or("")) }
            @if admin { td { (j["user"].as_str().unwrap_or("")) } }
            td.state-cell { (state_badge(s)) }
            td { (j["template_id"].as_str().unwrap_or("—")) }
            td { (time(j["submitted_at"].as_str())) }
            td { (j["node"].as_str().unwrap_or("—")) }
        }
    }
}
