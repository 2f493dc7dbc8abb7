//! The OpenAPI 3.1 document (`/openapi.json`, generated from the handlers' annotations) and a
//! self-contained reference page (`/docs`) rendered from it — no scripts from elsewhere, so it
//! works on air-gapped clusters.

use axum::Json;
use axum::response::Html;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{PathItem, RefOr};
use utoipa::{Modify, OpenApi};

use crate::logs::{read as logs_read, stream as logs_stream};
use crate::{clusters, health, jobs, metrics, templates};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Clusterra API",
        description = "The Clusterra control plane. Every command is an appended event; every read is a projection of the log. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`. Commands answer with the log position they produced (`X-Clusterra-Position`); send it back as `X-Clusterra-Min-Position` on a read to wait (bounded) until that read reflects it."
    ),
    paths(
        health::healthz,
        health::readyz,
        metrics::metrics,
        json,
        docs,
        clusters::register,
        clusters::list,
        clusters::get_one,
        jobs::submit,
        crate::estimate::estimate,
        jobs::list,
        jobs::get_one,
        jobs::cancel,
        logs_read::read,
        logs_stream::stream,
        crate::nodesets::list,
        crate::feed::list,
        crate::feed::stream,
        crate::storage::presign,
        crate::storage::list,
        crate::storage::delete,
        templates::list,
        templates::get_one,
        crate::usage::me,
        crate::usage::my_series,
        crate::usage::workspace_usage,
        crate::efficiency::mine,
        crate::efficiency::workspace,
        crate::webhooks::register,
        crate::webhooks::list,
        crate::webhooks::remove,
        crate::webhooks::deliveries,
        crate::quotas::put_quota,
        crate::quotas::get_quota,
        crate::quotas::delete_quota,
        crate::agent::start,
        crate::agent::get_conversation,
        crate::agent::post_message,
        crate::agent::list_proposals,
        crate::agent::confirm,
        crate::agent::reject,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail, crate::error::ErrorItem)),
    modifiers(&BearerAuth),
    tags(
        (name = "clusters", description = "Clusters of your workspace"),
        (name = "jobs", description = "Submit, track and cancel jobs"),
        (name = "events", description = "A cluster's event feed, paged and live"),
        (name = "logs", description = "Read and follow a job's output"),
        (name = "storage", description = "Presigned URLs to the cluster's bucket, listings and deletes"),
        (name = "templates", description = "Parameterised job templates"),
        (name = "usage", description = "Burn rate, pending bill, usage series and quotas"),
        (name = "webhooks", description = "Signed webhooks: your jobs' starts and ends, your quota's warnings"),
        (name = "agent", description = "Ask AI: conversations, and proposals you confirm or reject"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT with claims email, workspace, role (admin|user) and exp. Locally: `clusterra token mint`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document: the handlers' annotations, completed by [`conform`]. Built once per
/// process (it never changes while the server runs).
pub fn document() -> utoipa::openapi::OpenApi {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(build).clone()
}

fn build() -> utoipa::openapi::OpenApi {
    let doc = ApiDoc::openapi();
    let Ok(mut value) = serde_json::to_value(&doc) else {
        return doc;
    };
    conform(&mut value);
    serde_json::from_value(value).unwrap_or(doc)
}

/// The answers every route of a kind gives, so no handler has to repeat them, and the parameter
/// rules the extractors enforce. Each rule here mirrors one piece of shared server code:
/// - a route with `security` runs the token extractor (`auth.rs`): 401 when the token is
///   missing, malformed, expired or not yet valid;
/// - a route with query or header parameters reads them through `query.rs`/`consistency.rs`:
///   400 for a malformed one (an unknown parameter, a number out of range);
/// - a route with a JSON body reads it through `json.rs`: 400 for bytes that are not JSON,
///   413 above the body limit, 415 without `Content-Type: application/json`, 422 for a body of
///   the wrong shape;
/// - a header or query value is text: it is present or absent, never JSON `null`;
/// - `X-Clusterra-Min-Position` and `Last-Event-ID` are log positions or byte offsets (whole
///   numbers from 0), and `type` filters are comma-separated feed event types.
fn conform(doc: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    bodies(doc);
    let types = domain::feed::FEED_TYPES.join("|");
    let type_pattern = format!("^(({types})(,({types}))*)?$");
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let mut has_params = false;
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut() {
                    let name = p["name"].as_str().unwrap_or_default().to_string();
                    let location = p["in"].as_str().unwrap_or_default().to_string();
                    if location == "path" {
                        if name == "email" {
                            // `domain::Email::new`: after trimming and lowercasing, letters, digits
                            // and . _ + - before the @; a dotted domain of letters, digits, . -.
                            p["schema"] = json!({"type": "string", "maxLength": 254,
                                "pattern": "^[A-Za-z0-9._+-]+@[A-Za-z0-9-][A-Za-z0-9.-]*\\.[A-Za-z0-9.-]*[A-Za-z0-9-]$"});
                        }
                        continue;
                    }
                    has_params = true;
                    let Some(schema) = p.get_mut("schema").and_then(Value::as_object_mut) else {
                        continue;
                    };
                    if let Some(Value::Array(kinds)) = schema.get_mut("type") {
                        kinds.retain(|k| k != "null");
                        if kinds.len() == 1 {
                            let kind = kinds[0].clone();
                            schema.insert("type".into(), kind);
                        }
                    }
                    match (location.as_str(), name.as_str()) {
                        ("header", "X-Clusterra-Min-Position" | "Last-Event-ID") => {
                            schema.insert("minimum".into(), json!(0));
                            schema.insert("maximum".into(), json!(i64::MAX));
                        }
                        ("query", "type") => {
                            schema.insert("pattern".into(), json!(type_pattern));
                        }
                        _ => {}
                    }
                }
            }
            let secured = op.get("security").is_some();
            let has_body = op.get("requestBody").is_some();
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error(description));
            };
            if secured {
                add(
                    "401",
                    "Missing, malformed, expired or not-yet-valid token (`token_*`)",
                );
            }
            if has_params || has_body {
                add(
                    "400",
                    "A malformed parameter or body (the field says which)",
                );
            }
            if has_body {
                add(
                    "413",
                    "The body is larger than the server takes (`body_too_large`)",
                );
                add(
                    "415",
                    "The body is not sent as `Content-Type: application/json`",
                );
                add("422", "A field is invalid (the field says which)");
            }
        }
    }
}

/// The request bodies whose rules are more than one struct's fields can say: the submit body is
/// a v0.0.44 job (validated by `domain::submit`, see docs/jobs.md) or a template request; a
/// presigned-URL request names its file by `key` or by `location` + `path`, and an upload
/// (`PUT`) must give its size and content type.
fn bodies(doc: &mut serde_json::Value) {
    use serde_json::json;
    let submit = json!({
        "description": "A v0.0.44 job-submit body (docs/jobs.md; other v0.0.44 job fields are taken too), or {template_id, params} (GET /v1/templates/{id} gives the params schema)",
        "required": true,
        "content": {"application/json": {"schema": {"oneOf": [
            {
                "type": "object",
                "required": ["job"],
                "not": {"required": ["template_id"]},
                "properties": {"job": {
                    "type": "object",
                    "required": ["script", "environment", "current_working_directory"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 200},
                        "script": {"type": "string", "pattern": "^#!", "description": "Starts with #! (up to 1 MiB)"},
                        "environment": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*="}},
                        "current_working_directory": {"type": "string", "pattern": "^/"}
                    }
                }}
            },
            {
                "type": "object",
                "required": ["template_id"],
                "properties": {
                    "template_id": {"type": "string"},
                    "params": {"type": "object"}
                }
            }
        ]}}}
    });
    if let Some(op) = doc.pointer_mut("/paths/~1v1~1clusters~1{id}~1jobs/post") {
        op["requestBody"] = submit;
    }
    // Dollars as a string or a JSON number, read from its text (`MicroUsd`): at most six
    // decimals, up to what micro-dollars in an i64 hold.
    if let Some(limit) = doc.pointer_mut("/components/schemas/QuotaRequest/properties/limit_usd") {
        *limit = json!({
            "description": "US dollars per billing period, at most six decimals: a number or a string",
            "example": "250",
            "oneOf": [
                {"type": "string", "pattern": "^\\s*[0-9]{1,12}(\\.[0-9]{1,6})?\\s*$"},
                {"type": "number", "minimum": 0, "maximum": 9_223_372_036_854_i64}
            ]
        });
    }
    if let Some(schema) = doc.pointer_mut("/components/schemas/PresignBody") {
        schema["allOf"] = json!([
            {"oneOf": [
                {"required": ["key"], "not": {"anyOf": [{"required": ["location"]}, {"required": ["path"]}]}},
                {"required": ["location", "path"], "not": {"required": ["key"]}}
            ]},
            {"oneOf": [
                {"properties": {"method": {"const": "GET"}}},
                {"properties": {"method": {"const": "PUT"}}, "required": ["size", "content_type"]}
            ]}
        ]);
    }
}

/// This document, as JSON.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

/// A browsable reference of this API.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "HTML reference page", content_type = "text/html")))]
pub(crate) async fn docs() -> Html<String> {
    Html(render(&document()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The operations of a path item, with their method names.
pub fn operations(item: &PathItem) -> Vec<(&'static str, &utoipa::openapi::path::Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("PATCH", &item.patch),
        ("DELETE", &item.delete),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

fn render(doc: &utoipa::openapi::OpenApi) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Clusterra API</title><style>\
         body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
         h2{border-bottom:1px solid #ddd;padding-bottom:.3rem}code,pre{background:#f5f5f5;padding:.1rem .3rem}\
         pre{padding:.6rem;overflow:auto}.m{font-weight:bold;display:inline-block;min-width:4.5rem}\
         table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}\
         </style></head><body>",
    );
    out.push_str(&format!("<h1>{}</h1>", esc(&doc.info.title)));
    if let Some(d) = &doc.info.description {
        out.push_str(&format!("<p>{}</p>", esc(d)));
    }
    out.push_str("<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a></p>");
    for (path, item) in &doc.paths.paths {
        for (method, op) in operations(item) {
            out.push_str(&format!(
                "<h2><span class=\"m\">{method}</span> <code>{}</code></h2>",
                esc(path)
            ));
            if let Some(s) = op.summary.as_ref().or(op.description.as_ref()) {
                out.push_str(&format!("<p>{}</p>", esc(s)));
            }
            if op.security.is_some() {
                out.push_str("<p>Needs <code>Authorization: Bearer &lt;JWT&gt;</code>.</p>");
            }
            if let Some(params) = &op.parameters {
                out.push_str("<table><tr><th>parameter</th><th>in</th><th>description</th></tr>");
                for p in params {
                    let location = serde_json::to_value(&p.parameter_in)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        esc(&p.name),
                        esc(&location),
                        esc(p.description.as_deref().unwrap_or(""))
                    ));
                }
                out.push_str("</table>");
            }
            if let Some(Ok(text)) = op.request_body.as_ref().map(serde_json::to_string_pretty) {
                out.push_str(&format!("<p>Request body:</p><pre>{}</pre>", esc(&text)));
            }
            out.push_str("<table><tr><th>status</th><th>meaning</th></tr>");
            for (status, response) in &op.responses.responses {
                let description = match response {
                    RefOr::T(r) => r.description.clone(),
                    RefOr::Ref(r) => r.ref_location.clone(),
                };
                out.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc(status),
                    esc(&description)
                ));
            }
            out.push_str("</table>");
        }
    }
    if let Some(components) = &doc.components {
        out.push_str("<h2>Schemas</h2>");
        for (name, schema) in &components.schemas {
            if let Ok(text) = serde_json::to_string_pretty(schema) {
                out.push_str(&format!(
                    "<h3 id=\"{0}\">{0}</h3><pre>{1}</pre>",
                    esc(name),
                    esc(&text)
                ));
            }
        }
    }
    out.push_str("</body></html>");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_route_documents_the_answers_its_extractors_give() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                if op.get("security").is_some() {
                    assert!(responses.contains_key("401"), "{method} {path}");
                    checked += 1;
                }
                if op.get("requestBody").is_some() {
                    for status in ["400", "413", "415", "422"] {
                        assert!(responses.contains_key(status), "{method} {path} {status}");
                    }
                }
            }
        }
        assert!(checked > 20, "{checked}");
    }

    #[test]
    fn header_and_query_parameters_are_never_null() {
        let doc = serde_json::to_value(document()).unwrap();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if let Some(kinds) = p["schema"]["type"].as_array() {
                        assert!(!kinds.iter().any(|k| k == "null"), "{p}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_state_filter_names_every_job_state() {
        let doc = serde_json::to_value(document()).unwrap();
        let params = doc["paths"]["/v1/clusters/{id}/jobs"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let state = params.iter().find(|p| p["name"] == "state").unwrap();
        let pattern = state["schema"]["pattern"].as_str().unwrap();
        for s in domain::job::JobState::ALL {
            let name = s.as_str();
            assert!(
                pattern.contains(&format!("|{name}|")) || pattern.contains(&format!("({name}|")),
                "{name}"
            );
            let lower = name.to_ascii_lowercase();
            assert!(
                pattern.contains(&format!("|{lower}|")) || pattern.contains(&format!("|{lower})")),
                "{lower}"
            );
        }
    }
}
