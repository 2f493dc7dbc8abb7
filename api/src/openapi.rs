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
        crate::usage::put_quota,
        crate::usage::get_quota,
        crate::usage::delete_quota,
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

/// The OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
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
