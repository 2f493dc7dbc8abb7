//! `/submit` and `POST /jobs`: a job from a template (a form made from its JSON Schema), or a
//! raw slurmrestd v0.0.44 body.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Console;
use crate::call::{Fail, seg};
use crate::layout::{empty, error_box};
use crate::session::Session;

#[derive(Debug, Default, Deserialize)]
pub struct SubmitQuery {
    cluster: Option<String>,
    template: Option<String>,
    raw: Option<String>,
}

const RAW_EXAMPLE: &str = r##"{
  "job": {
    "name": "hello",
    "script": "#!/bin/bash\necho hello from $(hostname)\n",
    "current_working_directory": "/mnt/efs",
    "environment": ["PATH=/usr/bin:/bin"],
    "tasks": 1,
    "cpus_per_task": 1,
    "memory_per_cpu": {"set": true, "number": 512},
    "time_limit": {"set": true, "number": 10}
  }
}"##;

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<SubmitQuery>,
) -> Response {
    render(
        &console,
        &session,
        q.cluster.as_deref(),
        q.template.as_deref(),
        q.raw.is_some(),
        &BTreeMap::new(),
        None,
        None,
    )
    .await
}

/// The page, with the values and errors of a submit that was refused, or the estimate of what
/// the form holds.
#[allow(clippy::too_many_arguments)]
async fn render(
    console: &Console,
    session: &Session,
    cluster: Option<&str>,
    template: Option<&str>,
    raw: bool,
    values: &BTreeMap<String, String>,
    fail: Option<&Fail>,
    estimate: Option<&Value>,
) -> Response {
    let (frame, cluster) = match console
        .cluster_frame(session, cluster, "/submit", "Submit")
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let list = match console.get(session, "/v1/templates").await {
        Ok(l) => l,
        Err(e) => return console.fail_page(&frame, "Submit", &e),
    };
    let detail = match template.filter(|t| !t.is_empty()) {
        Some(t) => match console
            .get(session, &format!("/v1/templates/{}", seg(t)))
            .await
        {
            Ok(d) => Some(d),
            Err(e) => return console.fail_page(&frame, "Submit", &e),
        },
        None => None,
    };
    let idem = idempotency_key();
    let templates = list["templates"].as_array().cloned().unwrap_or_default();
    let body = html! {
        form.filters method="get" action="/submit" {
            input type="hidden" name="cluster" value=(cluster);
            label for="template-pick" { "Template" }
            select #template-pick name="template" {
                option value="" { "— choose —" }
                @for t in &templates {
                    @let id = t["id"].as_str().unwrap_or("");
                    option value=(id) selected[template == Some(id)] { (t["name"].as_str().unwrap_or(id)) }
                }
            }
            button type="submit" { "Use this template" }
            " or " a href={"/submit?raw=1&cluster=" (seg(&cluster))} { "write a raw v0.0.44 body" }
        }
        @if let Some(f) = fail {
            (error_box(f))
        }
        @if let Some(d) = &detail {
            p.help { (d["description"].as_str().unwrap_or("")) }
            div.with-estimate {
            form #template-form .card method="post" action={"/jobs?cluster=" (seg(&cluster))} novalidate[false] {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="idempotency_key" value=(idem);
                input type="hidden" name="template_id" value=(d["id"].as_str().unwrap_or(""));
                (fields(&d["params_schema"], values, fail))
                button #submit-job type="submit" { "Submit job" }
                " "
                button #estimate-job .secondary type="submit" formaction={"/jobs/estimate?cluster=" (seg(&cluster))} formnovalidate { "Estimate cost and start" }
            }
            (estimate_box(estimate))
            }
        } @else if raw {
            div.with-estimate {
            form #raw-form .card method="post" action={"/jobs?cluster=" (seg(&cluster))} {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="idempotency_key" value=(idem);
                label for="raw-body" { "Job body (slurmrestd v0.0.44 JSON)" }
                textarea #raw-body name="body" rows="16" spellcheck="false" required aria-describedby="raw-help" {
                    (values.get("body").map_or(RAW_EXAMPLE, String::as_str))
                }
                p #raw-help .help { "The body slurmrestd's " code { "POST /slurm/v0.0.44/job/submit" } " takes. docs/jobs.md lists what is checked before it reaches Slurm." }
                button #submit-raw type="submit" { "Submit job" }
                " "
                button #estimate-raw .secondary type="submit" formaction={"/jobs/estimate?cluster=" (seg(&cluster))} formnovalidate { "Estimate cost and start" }
            }
            (estimate_box(estimate))
            }
        } @else if templates.is_empty() {
            (empty("No templates in the catalog.", html! { a href={"/submit?raw=1&cluster=" (seg(&cluster))} { "Write a raw body" } }))
        } @else {
            ul.cards {
                @for t in &templates {
                    @let id = t["id"].as_str().unwrap_or("");
                    li { a href={"/submit?cluster=" (seg(&cluster)) "&template=" (seg(id))} { strong { (t["name"].as_str().unwrap_or(id)) } } br; span.muted { (t["description"].as_str().unwrap_or("")) } }
                }
            }
        }
    };
    let mut res = console.page(&frame, "Submit a job", body);
    if let Some(f) = fail {
        *res.status_mut() = f.status;
    }
    res
}

/// The estimate of what the form holds (`POST …/jobs/estimate`), or an empty live region the
/// page's script fills as the form changes.
fn estimate_box(estimate: Option<&Value>) -> Markup {
    let s = |v: &Value| match v {
        Value::String(t) => t.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    html! {
        section #estimate .card aria-live="polite" data-estimate {
            @if let Some(e) = estimate {
                h2 { "Estimate" }
                @let p = &e["placement"];
                dl.facts {
                    dt { "Runs on" } dd { (s(&p["nodes"])) " × " (s(&p["instance_type"])) " (" (s(&p["family"])) "-" (s(&p["size"])) "), " (s(&p["vcpus_per_node"])) " vCPUs and " (s(&p["memory_mib_per_node"])) " MiB on each" }
                    dt { "Rate" } dd { "$" (s(&e["rate_usd_per_hour"])) " an hour" }
                    dt { "At most" } dd {
                        @match e["max_cost_usd"].as_str() {
                            Some(m) => { "$" (m) " (time limit " (s(&e["time_limit_minutes"])) " min)" }
                            None => { "unbounded: no time limit" }
                        }
                    }
                    dt { "Starts" } dd { time datetime=(s(&e["expected_start"]["at"])) { (s(&e["expected_start"]["at"])) } ": " (s(&e["expected_start"]["reason"])) }
                    dt { "Quota after it" } dd {
                        (s(&e["quota"]["status_after"]))
                        @if let Some(r) = e["quota"]["remaining_usd"].as_str() { ", $" (r) " of the limit left" }
                    }
                }
                @for w in e["warnings"].as_array().into_iter().flatten() {
                    p.help { strong { (s(&w["field"])) } ": " (s(&w["message"])) }
                }
                p.muted { "Nothing was submitted." }
            }
        }
    }
}

fn idempotency_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The inputs of a template's params, from its JSON Schema.
fn fields(schema: &Value, values: &BTreeMap<String, String>, fail: Option<&Fail>) -> Markup {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let empty = Map::new();
    let props = schema["properties"].as_object().unwrap_or(&empty);
    html! {
        @for (name, p) in props {
            @let id = format!("p-{name}");
            @let field = format!("p.{name}");
            @let errors = fail.map(|f| f.at(&format!("params.{name}"))).unwrap_or_default();
            @let req = required.contains(&name.as_str());
            @let value = values.get(&field).cloned().or_else(|| p.get("default").map(|d| match d { Value::String(s) => s.clone(), other => other.to_string() }));
            @let help = format!("{id}-help");
            div.field.invalid[!errors.is_empty()] {
                label for=(id) { (p["title"].as_str().unwrap_or(name)) @if req { " " span.req aria-hidden="true" { "*" } } }
                @match (p["type"].as_str(), p.get("enum")) {
                    (_, Some(Value::Array(options))) => {
                        select id=(id) name=(field) required[req] aria-describedby=(help) aria-invalid=[(!errors.is_empty()).then_some("true")] {
                            @if !req { option value="" { "—" } }
                            @for o in options {
                                @let o = match o { Value::String(s) => s.clone(), other => other.to_string() };
                                option value=(o) selected[value.as_deref() == Some(o.as_str())] { (o) }
                            }
                        }
                    }
                    (Some("boolean"), _) => {
                        input id=(id) type="checkbox" name=(field) value="true" checked[value.as_deref() == Some("true")] aria-describedby=(help);
                    }
                    (Some("integer" | "number"), _) => {
                        input id=(id) type="number" name=(field) value=[value.as_deref()] required[req]
                            min=[p["minimum"].as_f64()] max=[p["maximum"].as_f64()]
                            step=(if p["type"] == "integer" { "1" } else { "any" })
                            aria-describedby=(help) aria-invalid=[(!errors.is_empty()).then_some("true")];
                    }
                    (Some("string"), _) if p["maxLength"].as_u64().unwrap_or(0) > 200 => {
                        textarea id=(id) name=(field) rows="4" required[req] maxlength=[p["maxLength"].as_u64()] aria-describedby=(help) aria-invalid=[(!errors.is_empty()).then_some("true")] { (value.as_deref().unwrap_or("")) }
                    }
                    (Some("array" | "object"), _) => {
                        textarea id=(id) name=(field) rows="3" required[req] aria-describedby=(help) data-json { (value.as_deref().unwrap_or("")) }
                    }
                    _ => {
                        input id=(id) type="text" name=(field) value=[value.as_deref()] required[req]
                            minlength=[p["minLength"].as_u64()] maxlength=[p["maxLength"].as_u64()] pattern=[p["pattern"].as_str()]
                            aria-describedby=(help) aria-invalid=[(!errors.is_empty()).then_some("true")];
                    }
                }
                p.help id=(help) {
                    (p["description"].as_str().unwrap_or(""))
                    @if let (Some(a), Some(b)) = (p["minimum"].as_f64(), p["maximum"].as_f64()) { " (" (a) "–" (b) ")" }
                    @if matches!(p["type"].as_str(), Some("array" | "object")) { " (JSON)" }
                }
                @for e in &errors { p.field-error role="alert" { (e) } }
            }
        }
    }
}

/// The params of a template form, typed by the template's schema. A value that does not parse
/// as its type is sent as text, so the API's schema check names the field.
fn params(schema: &Value, values: &BTreeMap<String, String>) -> Value {
    let mut out = Map::new();
    let empty = Map::new();
    for (name, p) in schema["properties"].as_object().unwrap_or(&empty) {
        let field = format!("p.{name}");
        let text = values.get(&field).map(String::as_str);
        let v = match (p["type"].as_str(), text) {
            (Some("boolean"), t) => Value::Bool(t == Some("true")),
            (_, None) | (_, Some("")) => continue,
            (Some("integer"), Some(t)) => t
                .trim()
                .parse::<i64>()
                .map_or_else(|_| json!(t), |n| json!(n)),
            (Some("number"), Some(t)) => t
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or_else(|| json!(t), Value::Number),
            (Some("array" | "object"), Some(t)) => {
                serde_json::from_str(t).unwrap_or_else(|_| json!(t))
            }
            (_, Some(t)) => json!(t),
        };
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

/// What a submit form asks: its values, cluster, template and API body; or the page to answer.
struct Asked {
    values: BTreeMap<String, String>,
    cluster: String,
    template: Option<String>,
    body: Value,
}

/// Reads a submit form (checking its CSRF token) into the body the API takes.
async fn asked(
    console: &Console,
    session: &Session,
    cluster: Option<String>,
    form: Vec<(String, String)>,
) -> Result<Asked, Response> {
    let values: BTreeMap<String, String> = form.into_iter().collect();
    if let Some(r) = session.csrf_refusal(values.get("csrf").map(String::as_str)) {
        return Err(r);
    }
    let Some(cluster) = cluster.filter(|c| !c.is_empty()) else {
        return Err(crate::layout::problem(
            StatusCode::BAD_REQUEST,
            "cluster_missing",
            "Pick a cluster first: open Submit from the navigation.",
        ));
    };
    let template = values.get("template_id").cloned().filter(|t| !t.is_empty());
    let body = match &template {
        Some(t) => {
            let detail = match console
                .get(session, &format!("/v1/templates/{}", seg(t)))
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    return Err(render(
                        console,
                        session,
                        Some(&cluster),
                        None,
                        false,
                        &values,
                        Some(&e),
                        None,
                    )
                    .await);
                }
            };
            json!({"template_id": t, "params": params(&detail["params_schema"], &values)})
        }
        None => {
            match serde_json::from_str::<Value>(values.get("body").map_or("", String::as_str)) {
                Ok(v) => v,
                Err(e) => {
                    let fail = Fail {
                        status: StatusCode::UNPROCESSABLE_ENTITY,
                        code: "invalid_json".into(),
                        message: format!("The body is not JSON ({e}); fix it and submit again."),
                        field: Some("body".into()),
                        details: Vec::new(),
                    };
                    return Err(render(
                        console,
                        session,
                        Some(&cluster),
                        None,
                        true,
                        &values,
                        Some(&fail),
                        None,
                    )
                    .await);
                }
            }
        }
    };
    Ok(Asked {
        values,
        cluster,
        template,
        body,
    })
}

/// `POST /jobs/estimate`: the estimate of what the form holds, on the submit page with the form
/// as it was (nothing is submitted).
pub async fn estimate(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<super::ClusterQuery>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let a = match asked(&console, &session, q.cluster, form).await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let uri = format!("/v1/clusters/{}/jobs/estimate", seg(&a.cluster));
    let (estimate, fail) = match console
        .call_with(
            &session,
            Method::POST,
            &uri,
            Some(&a.body),
            HeaderMap::new(),
        )
        .await
    {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    render(
        &console,
        &session,
        Some(&a.cluster),
        a.template.as_deref(),
        a.template.is_none(),
        &a.values,
        fail.as_ref(),
        estimate.as_ref(),
    )
    .await
}

/// `POST /jobs`: submits the form through the API; on success, to the job's page.
pub async fn post(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<super::ClusterQuery>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Asked {
        values,
        cluster,
        template,
        body,
    } = match asked(&console, &session, q.cluster, form).await {
        Ok(a) => a,
        Err(page) => return page,
    };
    let mut headers = HeaderMap::new();
    if let Some(k) = values.get("idempotency_key").and_then(|k| k.parse().ok()) {
        headers.insert("idempotency-key", k);
    }
    let uri = format!("/v1/clusters/{}/jobs", seg(&cluster));
    match console
        .call_with(&session, Method::POST, &uri, Some(&body), headers)
        .await
    {
        Ok(v) => {
            let id = v["job_id"].as_u64().unwrap_or_default();
            Redirect::to(&format!(
                "/jobs/{id}?cluster={}{}",
                seg(&cluster),
                super::at(&v)
            ))
            .into_response()
        }
        Err(e) => {
            render(
                &console,
                &session,
                Some(&cluster),
                template.as_deref(),
                template.is_none(),
                &values,
                Some(&e),
                None,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_typed_by_the_schema() {
        let schema = json!({"properties": {
            "n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
            "s": {"type": "string"}, "l": {"type": "array"}, "skip": {"type": "string"}}});
        let values: BTreeMap<String, String> = [
            ("p.n", "12"),
            ("p.x", "1.5"),
            ("p.b", "true"),
            ("p.s", "hi"),
            ("p.l", "[1,2]"),
            ("p.skip", ""),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        assert_eq!(
            params(&schema, &values),
            json!({"n": 12, "x": 1.5, "b": true, "s": "hi", "l": [1, 2]})
        );
        let bad: BTreeMap<String, String> = [("p.n".to_owned(), "twelve".to_owned())]
            .into_iter()
            .collect();
        assert_eq!(params(&schema, &bad)["n"], json!("twelve"));
    }
}
