//! `/usage`: burn rate, pending bill, projected spend, quota with its thresholds, spend over
//! time; admins: every user's figures and quota editing.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Console;
use crate::call::{query, seg};
use crate::layout::{error_box, money, time};
use crate::session::Session;

#[derive(Debug, Default, Deserialize)]
pub struct UsageQuery {
    cluster: Option<String>,
    bucket: Option<String>,
    at: Option<i64>,
}

fn usd(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

/// The quota bar: projected spend against the warn line (the limit) and the block line (the
/// limit plus its buffer).
fn quota_bar(usage: &Value) -> Markup {
    let quota = &usage["quota"];
    if quota.is_null() {
        return html! { p.muted { "No quota is set for you: spend is not limited." } };
    }
    let limit = usd(&quota["limit_usd"]);
    let hard = usd(&quota["hard_limit_usd"]).max(limit);
    let projected = usd(&usage["projected_spend_usd"]);
    let spent = usd(&usage["pending_bill_usd"]);
    let scale = (hard.max(projected) * 1.1).max(0.000_001);
    // Drawn as SVG (attributes, not inline styles: the CSP allows no inline style).
    let x = |v: f64| format!("{:.1}", (v / scale * 600.0).clamp(0.0, 600.0));
    let blocking = quota["mode"].as_str() == Some("block_and_kill");
    html! {
        svg.quota viewBox="0 0 600 28" role="img" aria-label={ "Spent " (format!("{spent:.2}")) ", projected " (format!("{projected:.2}")) " of a " (format!("{limit:.2}")) " US dollar limit" } {
            rect.track x="0" y="4" width="600" height="20" {}
            rect.projected x="0" y="4" width=(x(projected)) height="20" {}
            rect.spent x="0" y="4" width=(x(spent)) height="20" {}
            line.warn x1=(x(limit)) x2=(x(limit)) y1="0" y2="28" { title { "warn: the limit" } }
            @if blocking { line.block x1=(x(hard)) x2=(x(hard)) y1="0" y2="28" { title { "block: the limit plus its buffer" } } }
        }
        p.legend {
            "Limit " (money(quota["limit_usd"].as_str())) " per period (" (quota["mode"].as_str().unwrap_or("")) ")"
            @if blocking { "; jobs are blocked and cancelled at " (money(quota["hard_limit_usd"].as_str())) " (buffer " (quota["buffer_percent"].as_u64().unwrap_or(0)) " %)" }
            "."
        }
    }
}

/// Spend per bucket as bars (an SVG drawn here, no script).
fn chart(series: &Value) -> Markup {
    let points = series["points"].as_array().cloned().unwrap_or_default();
    if points.is_empty() {
        return html! { p.muted { "No spend in this range yet." } };
    }
    let max = points
        .iter()
        .map(|p| usd(&p["spend_usd"]))
        .fold(0.0_f64, f64::max)
        .max(0.000_001);
    let (w, h) = (720.0_f64, 160.0_f64);
    let bw = w / points.len() as f64;
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (w) " " (h + 20.0) } role="img" aria-label={ "Spend per " (series["bucket"].as_str().unwrap_or("bucket")) ", highest " (format!("${max:.2}")) } {
                @for (i, p) in points.iter().enumerate() {
                    @let v = usd(&p["spend_usd"]);
                    @let bh = (v / max * h).max(if v > 0.0 { 1.0 } else { 0.0 });
                    rect x=(format!("{:.1}", i as f64 * bw + 1.0)) y=(format!("{:.1}", h - bh)) width=(format!("{:.1}", (bw - 2.0).max(1.0))) height=(format!("{bh:.1}")) {
                        title { (p["start"].as_str().unwrap_or("")) ": $" (format!("{v:.4}")) }
                    }
                }
                line x1="0" y1=(h) x2=(w) y2=(h) {}
            }
            figcaption { "Spend per " (series["bucket"].as_str().unwrap_or("")) " from " (time(series["from"].as_str())) " to " (time(series["to"].as_str())) "; highest " (format!("${max:.2}")) " USD" }
        }
    }
}

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<UsageQuery>,
) -> Response {
    let frame = match console
        .frame(&session, q.cluster.as_deref(), "/usage")
        .await
    {
        Ok(f) => f,
        Err(e) => return console.bare_fail(&e),
    };
    let me = match console.get_at(&session, "/v1/users/me", q.at).await {
        Ok(m) => m,
        Err(e) => return console.fail_page(&frame, "Usage", &e),
    };
    let bucket = if q.bucket.as_deref() == Some("hour") {
        "hour"
    } else {
        "day"
    };
    let from = (bucket == "hour").then(|| {
        (console.clock.now() - chrono::Duration::hours(48))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let series = console
        .get(
            &session,
            &format!(
                "/v1/users/me/usage?{}",
                query([("bucket", Some(bucket)), ("from", from.as_deref())])
            ),
        )
        .await;
    let admin = session.caller.is_admin();
    let ws = if admin {
        Some(
            console
                .get_at(
                    &session,
                    &format!(
                        "/v1/workspaces/{}/usage",
                        seg(session.caller.workspace.as_str())
                    ),
                    q.at,
                )
                .await,
        )
    } else {
        None
    };
    let u = &me;
    let cq = frame
        .cluster
        .as_deref()
        .map(|c| format!("&cluster={}", seg(c)))
        .unwrap_or_default();
    let body = html! {
        div.stats {
            div.stat { span.label { "Burn rate now" } span #burn-rate .value { (money(u["burn_rate_usd_per_hour"].as_str())) " / h" } span.muted { (u["running_jobs"].as_u64().unwrap_or(0)) " running job(s)" } }
            div.stat { span.label { "Pending bill" } span #pending-bill .value { (money(u["pending_bill_usd"].as_str())) } span.muted { "this period, so far" } }
            div.stat { span.label { "Projected spend" } span #projected .value { (money(u["projected_spend_usd"].as_str())) } span.muted { "if running jobs use their time" } }
            div.stat { span.label { "Status" } span #quota-status .value { (u["status"].as_str().unwrap_or("ok")) } }
        }
        p.muted { "Billing period " (time(me["period"]["start"].as_str())) " to " (time(me["period"]["end"].as_str())) "." }
        h2 { "Quota" }
        (quota_bar(u))
        h2 { "Spend over time" }
        p { a href={"/usage?bucket=day" (cq)} aria-current=[(bucket == "day").then_some("page")] { "Per day, this period" } " · " a href={"/usage?bucket=hour" (cq)} aria-current=[(bucket == "hour").then_some("page")] { "Per hour, last 48 h" } }
        @match &series { Ok(s) => (chart(s)), Err(e) => (error_box(e)) }
        @if let Some(ws) = &ws {
            h2 { "Everyone in " (session.caller.workspace.as_str()) }
            @match ws {
                Err(e) => (error_box(e)),
                Ok(w) => {
                    p { "Workspace burn rate " (money(w["burn_rate_usd_per_hour"].as_str())) " / h, pending bill " (money(w["pending_bill_usd"].as_str())) ", projected " (money(w["projected_spend_usd"].as_str())) "." }
                    div.scroll { table.users {
                        thead { tr { th scope="col" { "User" } th scope="col" { "Burn rate / h" } th scope="col" { "Pending bill" } th scope="col" { "Projected" } th scope="col" { "Quota" } } }
                        tbody {
                            @for user in w["users"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                                @let uu = user;
                                tr { td { (user["email"].as_str().unwrap_or("")) } td { (money(uu["burn_rate_usd_per_hour"].as_str())) } td { (money(uu["pending_bill_usd"].as_str())) } td { (money(uu["projected_spend_usd"].as_str())) }
                                    td { @if uu["quota"].is_null() { "none" } @else { (money(uu["quota"]["limit_usd"].as_str())) " " (uu["quota"]["mode"].as_str().unwrap_or("")) } } }
                            }
                        }
                    } }
                }
            }
            h2 #quota-h { "Set a quota" }
            form #quota-form .card method="post" action={"/usage/quota?" (cq.trim_start_matches('&'))} aria-labelledby="quota-h" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="q-email" { "User's email" } input #q-email type="email" name="email" required maxlength="254";
                label for="q-limit" { "Limit per period (USD)" } input #q-limit type="number" name="limit_usd" min="0" step="0.01" required;
                label for="q-mode" { "When the limit is reached" }
                select #q-mode name="mode" { option value="warn" { "warn" } option value="block_and_kill" { "block new jobs and cancel running ones" } }
                label for="q-buffer" { "Buffer past the limit before blocking (%)" } input #q-buffer type="number" name="buffer_percent" min="0" max="1000" value="0";
                button #set-quota type="submit" { "Set quota" }
            }
        }
    };
    console.page(&frame, "Usage", body)
}

#[derive(Debug, Default, Deserialize)]
pub struct QuotaForm {
    csrf: Option<String>,
    email: Option<String>,
    limit_usd: Option<String>,
    mode: Option<String>,
    buffer_percent: Option<String>,
}

/// `POST /usage/quota` (admins): the API's PUT of the user's quota.
pub async fn set_quota(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<UsageQuery>,
    Form(form): Form<QuotaForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let email = form.email.unwrap_or_default();
    let buffer = form
        .buffer_percent
        .as_deref()
        .filter(|b| !b.is_empty())
        .map(|b| b.parse::<u32>().map_or_else(|_| json!(b), |n| json!(n)));
    let mut body = json!({"limit_usd": form.limit_usd.unwrap_or_default(), "mode": form.mode.unwrap_or_else(|| "warn".into())});
    if let Some(b) = buffer {
        body["buffer_percent"] = b;
    }
    let uri = format!(
        "/v1/workspaces/{}/quotas/{}",
        seg(session.caller.workspace.as_str()),
        seg(&email)
    );
    let cq = q
        .cluster
        .as_deref()
        .map(|c| format!("&cluster={}", seg(c)))
        .unwrap_or_default();
    match console.call(&session, Method::PUT, &uri, Some(&body)).await {
        Ok(v) => Redirect::to(&format!("/usage?bucket=day{cq}{}", super::at(&v))).into_response(),
        Err(e) => match console
            .frame(&session, q.cluster.as_deref(), "/usage")
            .await
        {
            Ok(frame) => console.fail_page(&frame, "Usage", &e),
            Err(_) => console.bare_fail(&e),
        },
    }
}
