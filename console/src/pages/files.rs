//! `/files`: browse `scripts/`, `data/`, `outputs/` (your own) and `shared/`; upload straight to
//! the object store through a presigned PUT (the file never passes through Clusterra); download
//! through a presigned GET; delete with a confirmation.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use crate::Console;
use crate::call::{query, seg};
use crate::layout::{empty, error_box, time};
use crate::session::Session;

const LOCATIONS: &[(&str, &str)] = &[
    ("scripts", "Your job scripts"),
    ("data", "Your input data"),
    ("outputs", "What your jobs wrote"),
    ("shared", "Shared with the workspace (admins write)"),
];

#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    cluster: Option<String>,
    location: Option<String>,
    prefix: Option<String>,
    continuation: Option<String>,
    at: Option<i64>,
}

fn size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<FilesQuery>,
) -> Response {
    let (frame, cluster) = match console
        .cluster_frame(&session, q.cluster.as_deref(), "/files", "Files")
        .await
    {
        Ok(f) => f,
        Err(page) => return page,
    };
    let location = q
        .location
        .clone()
        .filter(|l| LOCATIONS.iter().any(|(x, _)| x == l))
        .unwrap_or_else(|| "data".into());
    let uri = format!(
        "/v1/clusters/{}/storage/objects?{}",
        seg(&cluster),
        query([
            ("location", Some(location.as_str())),
            ("prefix", q.prefix.as_deref()),
            ("continuation", q.continuation.as_deref()),
            ("limit", Some("200"))
        ])
    );
    let listing = console.get_at(&session, &uri, q.at).await;
    let writable = location != "shared" || session.caller.is_admin();
    let here = |extra: &str| {
        format!(
            "/files?cluster={}&location={}{extra}",
            seg(&cluster),
            seg(&location)
        )
    };
    let body = html! {
        nav.tabs aria-label="Locations" {
            @for (l, label) in LOCATIONS {
                a href={"/files?cluster=" (seg(&cluster)) "&location=" (l)} aria-current=[(*l == location).then_some("page")] title=(label) { (l) "/" }
            }
        }
        form.filters method="get" action="/files" {
            input type="hidden" name="cluster" value=(cluster);
            input type="hidden" name="location" value=(location);
            label { "Folder " input type="text" name="prefix" value=[q.prefix.as_deref()] placeholder="all" maxlength="1024"; }
            button type="submit" { "Show" }
        }
        @if writable {
            form #upload .card data-upload data-cluster=(cluster) data-location=(location) {
                label for="upload-file" { "Upload to " (location) "/" }
                input #upload-file type="file" name="file" required;
                label for="upload-path" { "As (path inside " (location) "/; empty: the file's name)" }
                input #upload-path type="text" name="path" value=[q.prefix.as_deref()] maxlength="1024";
                button #upload-button type="submit" { "Upload" }
                progress #upload-progress max="100" value="0" hidden {}
                span #upload-status aria-live="polite" {}
                noscript { p.muted { "Uploading needs JavaScript (the browser sends the file straight to storage), or use " code { "clusterra files put" } "." } }
            }
        }
        @match &listing {
            Err(e) => (error_box(e)),
            Ok(l) => {
                @let objects = l["objects"].as_array().cloned().unwrap_or_default();
                @if objects.is_empty() {
                    (empty(&format!("Nothing in {location}/ yet."), html! { @if writable { "Upload a file above, or use " code { "clusterra files put FILE " (location) "/" } "." } @else { "Workspace admins put shared files here." } }))
                } @else {
                    div.scroll { table.files {
                        caption.sr { "Files in " (location) "/" }
                        thead { tr { th scope="col" { "Path" } th scope="col" { "Size" } th scope="col" { "Modified" } th scope="col" { span.sr { "Actions" } } } }
                        tbody {
                            @for o in &objects {
                                @let path = o["path"].as_str().unwrap_or("");
                                @let key = o["key"].as_str().unwrap_or("");
                                tr {
                                    td { code { (path) } }
                                    td { (size(o["size"].as_u64().unwrap_or(0))) }
                                    td { (time(o["last_modified"].as_str())) }
                                    td.actions {
                                        form method="post" action={"/files/download?cluster=" (seg(&cluster))} {
                                            input type="hidden" name="csrf" value=(session.csrf);
                                            input type="hidden" name="location" value=(location);
                                            input type="hidden" name="path" value=(path);
                                            button.link type="submit" aria-label={"Download " (path)} { "Download" }
                                        }
                                        @if writable {
                                            form.confirm method="post" action={"/files/delete?cluster=" (seg(&cluster))} {
                                                input type="hidden" name="csrf" value=(session.csrf);
                                                input type="hidden" name="key" value=(key);
                                                input type="hidden" name="back" value=(here(""));
                                                label { input type="checkbox" name="confirm" value="yes" required aria-label={"Confirm deleting " (path)}; " sure" }
                                                button.link.danger type="submit" aria-label={"Delete " (path)} { "Delete" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    } }
                    @if let Some(c) = l["continuation"].as_str() {
                        p { a.button href=(here(&format!("&continuation={}", seg(c)))) { "More" } }
                    }
                }
            }
        }
    };
    console.page(&frame, "Files", body)
}

#[derive(Debug, Deserialize)]
pub struct PresignRequest {
    location: String,
    path: String,
    method: String,
    size: Option<u64>,
    content_type: Option<String>,
}

/// `POST /files/presign` (JSON, `X-CSRF-Token`): the API's presigned URL, for the upload module.
pub async fn presign(
    State(console): State<Arc<Console>>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<super::ClusterQuery>,
    Json(req): Json<PresignRequest>,
) -> Response {
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if session.csrf_refusal(sent).is_some() {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"code": "csrf_token_invalid", "message": "reload the page and try again: this request did not carry the page's CSRF token", "field": "headers.x-csrf-token"}})),
        )
            .into_response();
    }
    let Some(cluster) = q.cluster else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "cluster_missing", "message": "add ?cluster=", "field": "cluster"}}))).into_response();
    };
    let mut body = json!({"location": req.location, "path": req.path, "method": req.method});
    if let Some(s) = req.size {
        body["size"] = json!(s);
    }
    if let Some(c) = req.content_type.filter(|c| !c.is_empty()) {
        body["content_type"] = json!(c);
    }
    let uri = format!("/v1/clusters/{}/storage/presigned-url", seg(&cluster));
    match console
        .call(&session, Method::POST, &uri, Some(&body))
        .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => (
            e.status,
            Json(json!({"error": {"code": e.code, "message": e.message, "field": e.field}})),
        )
            .into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct FileForm {
    csrf: Option<String>,
    key: Option<String>,
    location: Option<String>,
    path: Option<String>,
    confirm: Option<String>,
    back: Option<String>,
}

/// `POST /files/download`: a presigned GET, then the browser goes there.
pub async fn download(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<super::ClusterQuery>,
    Form(form): Form<FileForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let cluster = q.cluster.unwrap_or_default();
    let body = json!({"location": form.location, "path": form.path, "method": "GET"});
    let uri = format!("/v1/clusters/{}/storage/presigned-url", seg(&cluster));
    match console
        .call(&session, Method::POST, &uri, Some(&body))
        .await
    {
        Ok(v) => match v["url"].as_str() {
            Some(url) => Redirect::to(url).into_response(),
            None => crate::layout::problem(
                StatusCode::BAD_GATEWAY,
                "no_url",
                "The server made no download link; try again.",
            ),
        },
        Err(e) => failed(&console, &session, &cluster, &e).await,
    }
}

/// `POST /files/delete`: the API's DELETE, after the confirmation box was ticked.
pub async fn delete(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<super::ClusterQuery>,
    Form(form): Form<FileForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let cluster = q.cluster.unwrap_or_default();
    if form.confirm.as_deref() != Some("yes") {
        return crate::layout::problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirm_missing",
            "Tick the box beside Delete to confirm.",
        );
    }
    let uri = format!(
        "/v1/clusters/{}/storage/objects?{}",
        seg(&cluster),
        query([("key", form.key.as_deref())])
    );
    match console.call(&session, Method::DELETE, &uri, None).await {
        Ok(v) => {
            let back = form
                .back
                .filter(|b| crate::session::safe_next(b) && b.starts_with("/files"))
                .unwrap_or_else(|| "/files".into());
            let sep = if back.contains('?') { "" } else { "?" };
            Redirect::to(&format!("{back}{sep}{}", super::at(&v))).into_response()
        }
        Err(e) => failed(&console, &session, &cluster, &e).await,
    }
}

async fn failed(
    console: &Console,
    session: &Session,
    cluster: &str,
    e: &crate::call::Fail,
) -> Response {
    match console.frame(session, Some(cluster), "/files").await {
        Ok(frame) => console.fail_page(&frame, "Files", e),
        Err(_) => console.bare_fail(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_well() {
        assert_eq!(super::size(512), "512 B");
        assert_eq!(super::size(5 * 1024 * 1024), "5.0 MiB");
    }
}
