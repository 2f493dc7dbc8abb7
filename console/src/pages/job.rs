//! `/jobs/{job_id}`: one job, its history, its live log, and cancelling it.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::ClusterQuery;
use crate::Console;
use crate::call::seg;
use crate::layout::{money, state_badge, time};
use crate::session::Session;

/// A Slurm pending reason in plain English.
pub fn pending_reason(reason: &str) -> String {
    let plain = match reason {
        "Resources" => {
            "waiting for a node with enough free CPUs and memory; the autoscaler adds one if the node sets allow it"
        }
        "Priority" => "other jobs are ahead of it in the queue",
        "BeginTime" => "it was asked to start later",
        "Dependency" => "it waits for another job to finish",
        "DependencyNeverSatisfied" => {
            "the job it depends on ended in a way that means it will never start; cancel it"
        }
        "JobHeldUser" => "held by its owner; release it to let it start",
        "JobHeldAdmin" => "held by an administrator",
        "ReqNodeNotAvail" => "the nodes it asked for are not available",
        "PartitionTimeLimit" => {
            "its time limit is above what the partition allows; resubmit with a shorter one"
        }
        "QOSMaxJobsPerUserLimit" | "AssocMaxJobsLimit" => {
            "you have as many jobs running as your limit allows"
        }
        "AssocGrpCPULimit" | "QOSGrpCpuLimit" => "your group uses all the CPUs it may use at once",
        "launch failed requeued held" => "its start failed and it was held; cancel and resubmit it",
        "None" | "" => "none given yet; Slurm has not looked at it",
        _ => return format!("{reason} (Slurm's reason)"),
    };
    format!("{plain} ({reason})")
}

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Path(job_id): Path<String>,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let title = format!("Job {job_id}");
    let (frame, cluster) = match console
        .cluster_frame(&session, q.cluster.as_deref(), "/jobs", &title)
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let base = format!("/v1/clusters/{}/jobs/{}", seg(&cluster), seg(&job_id));
    let job = match console.get_at(&session, &base, q.at).await {
        Ok(j) => j,
        Err(e) => return console.fail_page(&frame, &title, &e),
    };
    let state = job["state"].as_str().unwrap_or("?").to_owned();
    let shape = &job["shape"];
    let final_state = !matches!(
        state.as_str(),
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "RESIZING"
    );
    let title = format!("Job {job_id}: {}", job["name"].as_str().unwrap_or(""));
    let body = html! {
        dl.facts data-live-job=(job_id) data-cluster=(cluster) {
            dt { "State" } dd #job-state { (state_badge(&state)) @if let Some(c) = job["exit_code"].as_i64() { " exit code " (c) } }
            @if state == "PENDING" {
                dt { "Why it waits" } dd #pending-reason { (pending_reason(job["pending_reason"].as_str().unwrap_or(""))) }
            }
            @if let Some(r) = job["reason"].as_str() { dt { "Reason" } dd { (r) } }
            dt { "Owner" } dd { (job["user"].as_str().unwrap_or("")) }
            dt { "Node" } dd { (job["node"].as_str().unwrap_or("not placed yet")) }
            dt { "Shape" } dd {
                (shape["cpus"].as_u64().unwrap_or(0)) " CPU(s), "
                @match shape["memory_mib"].as_u64() { Some(m) => { (m) " MiB" } None => { "the node's default memory per CPU" } }
                @if let Some(n) = shape["nodes"].as_u64() { ", " (n) " node(s)" }
                @if let Some(t) = shape["time_limit_minutes"].as_u64() { ", up to " (t) " min" }
            }
            dt { "Cost so far" } dd #job-cost { (money(job["cost_usd"].as_str())) " at " (money(job["rate_usd_per_hour"].as_str())) " per hour" }
            dt { "Submitted" } dd { (time(job["submitted_at"].as_str())) " via " (job["via"].as_str().unwrap_or("")) }
            dt { "Started" } dd { (time(job["started_at"].as_str())) }
            dt { "Ended" } dd { (time(job["ended_at"].as_str())) }
            @if let Some(t) = job["template_id"].as_str() { dt { "Template" } dd { (t) } }
            @if let Some(e) = job["efficiency"].as_object() {
                dt { "Efficiency" } dd #job-efficiency {
                    @if let Some(c) = e.get("cpu_percent").and_then(|v| v.as_f64()) { (c) "% of its CPU time, " }
                    @if let Some(m) = e.get("memory_percent").and_then(|v| v.as_f64()) { (m) "% of its memory; " }
                    (e.get("hint").and_then(|v| v.as_str()).unwrap_or(""))
                }
            }
        }
        p.muted #facts-note aria-live="polite" {}
        section aria-labelledby="log-h" {
            h2 #log-h { "Output" }
            div.log-tools {
                label { input #log-follow type="checkbox" checked; " Follow the end" }
                a.button download={"job-" (job_id) ".log"} href={(base) "/logs"} { "Download the log" }
                span #log-status .muted aria-live="polite" { "connecting…" }
            }
            pre #log .log tabindex="0" aria-label="Job output" data-log-panel={(base) "/logs/stream"} {}
        }
        @if !final_state {
            section #cancel aria-labelledby="cancel-h" {
                h2 #cancel-h { "Cancel" }
                form.card method="post" action={"/jobs/" (seg(&job_id)) "/cancel?cluster=" (seg(&cluster))} {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label { input #confirm-cancel type="checkbox" name="confirm" value="yes" required; " Yes, cancel job " (job_id) " (it cannot be undone)" }
                    button #cancel-job .danger type="submit" { "Cancel job" }
                }
            }
        }
        section aria-labelledby="history-h" {
            h2 #history-h { "History" }
            ol.history {
                @for h in job["history"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    li { (time(h["recorded_at"].as_str())) " " strong { (h["event_type"].as_str().unwrap_or("")) }
                        @if let Some(to) = h["data"]["to"].as_str() { " → " (to) }
                        @if let Some(r) = h["data"]["reason"].as_str() { " (" (r) ")" } }
                }
            }
        }
    };
    console.page(&frame, &title, body)
}

#[derive(Debug, Default, Deserialize)]
pub struct CancelForm {
    csrf: Option<String>,
    confirm: Option<String>,
}

/// `POST /jobs/{job_id}/cancel`: the API's DELETE, after the confirmation box was ticked.
pub async fn cancel(
    State(console): State<Arc<Console>>,
    session: Session,
    Path(job_id): Path<String>,
    Query(q): Query<ClusterQuery>,
    Form(form): Form<CancelForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let frame = match console.frame(&session, q.cluster.as_deref(), "/jobs").await {
        Ok(f) => f,
        Err(e) => return console.bare_fail(&e),
    };
    let Some(cluster) = frame.cluster.clone() else {
        return Redirect::to("/jobs").into_response();
    };
    let back = format!("/jobs/{}?cluster={}", seg(&job_id), seg(&cluster));
    if form.confirm.as_deref() != Some("yes") {
        let mut res = console.page(
            &frame,
            "Cancel",
            html! {
                div.error role="alert" { p { "Tick the box to confirm the cancel." } }
                p { a href=(back) { "Back to the job" } }
            },
        );
        *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return res;
    }
    let uri = format!("/v1/clusters/{}/jobs/{}", seg(&cluster), seg(&job_id));
    match console.call(&session, Method::DELETE, &uri, None).await {
        Ok(v) => Redirect::to(&format!("{back}{}", super::at(&v))).into_response(),
        Err(e) => console.fail_back(&frame, "Cancel", &e, (&back, "Back to the job")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_read_as_sentences() {
        assert!(super::pending_reason("Resources").starts_with("waiting for a node"));
        assert_eq!(super::pending_reason("Weird"), "Weird (Slurm's reason)");
    }
}
