//! `/v1/clusters/{id}/storage`: presigned URLs, listings and deletes of the cluster's bucket.
//!
//! File bytes never pass through here. Who may reach which key is decided in `domain::storage`;
//! every URL handed out and every delete is an event (`FileAccessGranted`, `FileDeleted`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use commands::storage::{FileCaller, FileError, GrantRequest, ObjectStore, StorageError};
use domain::storage::{
    FileMethod, Location, ObjectKey, PathError, check_content_type, list_prefix,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::consistency::position_header;
use crate::json::ApiJson;
use crate::query::{RawQuery, number, raw_query, unknown};
use crate::{ApiError, AppState};

/// The object store behind every cluster's bucket.
#[derive(Clone)]
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    /// The largest upload and each user's quota per bucket, checked before an upload URL is
    /// signed (the embedded store checks them again on the upload itself).
    pub uploads: domain::storage::UploadLimits,
}

/// Body of `POST /v1/clusters/{id}/storage/presigned-url`. Name the file either by `location` and
/// `path` (the key is then `<location>/<your email>/<path>`, or `shared/<path>`), or by its whole
/// `key` as listings return it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"location": "data", "path": "runs/input.csv", "method": "PUT", "content_type": "text/csv", "size": 1024}))]
pub struct PresignBody {
    /// `scripts`, `data`, `outputs` or `shared`.
    #[schema(pattern = "^(scripts|data|outputs|shared)$")]
    pub location: Option<String>,
    /// A relative path: no leading `/`, no `.`/`..` or empty segments, no backslashes or control
    /// characters; the whole key at most 1,024 bytes.
    pub path: Option<String>,
    /// A whole key instead of `location` + `path`.
    pub key: Option<String>,
    /// `PUT` to upload, `GET` to download.
    #[schema(pattern = "^(PUT|GET)$")]
    pub method: String,
    /// For `PUT`: the `Content-Type` the upload must carry (it is signed into the URL).
    pub content_type: Option<String>,
    /// 1 to 3600; default 900 (15 minutes).
    #[schema(minimum = 1, maximum = 3600)]
    pub expires_in_seconds: Option<u64>,
    /// For `PUT` (required there): the file's exact size in bytes. It is signed into the URL as
    /// `Content-Length`: the upload must be exactly this long. At most `max_upload_bytes`, and
    /// within your storage quota.
    pub size: Option<u64>,
}

/// A presigned URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresignedUrl {
    /// Make the request to this URL; no other credentials are needed.
    pub url: String,
    pub method: String,
    pub key: String,
    pub expires_at: DateTime<Utc>,
    /// Headers the request must carry exactly (e.g. `content-type` when one was asked for).
    pub headers: BTreeMap<String, String>,
    /// The log position of the `FileAccessGranted` event.
    pub position: i64,
}

/// One object of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredObject {
    pub key: String,
    /// The key without its namespace (`<location>/<email>/` or `shared/`).
    pub path: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// Answer of `GET /v1/clusters/{id}/storage/objects`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectList {
    pub location: String,
    pub prefix: String,
    pub objects: Vec<StoredObject>,
    /// Pass as `continuation` for the next page; null on the last page.
    pub continuation: Option<String>,
}

/// Answer of `DELETE /v1/clusters/{id}/storage/objects`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectDeleted {
    pub key: String,
    pub size: u64,
    pub position: i64,
}

/// Query of `GET /v1/clusters/{id}/storage/objects`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the query; the handler reads it as strings for field errors
pub struct ListQuery {
    /// `scripts`, `data`, `outputs` or `shared` (required).
    #[param(pattern = "^(scripts|data|outputs|shared)$")]
    pub location: String,
    /// Only keys under this relative prefix (may end with `/`; the path rules of docs/files.md).
    pub prefix: Option<String>,
    /// The `continuation` of the previous page (opaque; one the server did not issue is 400).
    #[param(pattern = "^[!-~]{1,1024}$")]
    pub continuation: Option<String>,
    /// Objects per page, 1-1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Query of `DELETE /v1/clusters/{id}/storage/objects`: `key`, or `location` and `path`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DeleteQuery {
    /// The whole key (`data/<you>/runs/a.csv`); or give `location` and `path` instead.
    pub key: Option<String>,
    /// `scripts`, `data`, `outputs` or `shared`, with `path`.
    #[param(pattern = "^(scripts|data|outputs|shared)$")]
    pub location: Option<String>,
    /// The file's path in `location` (the path rules of docs/files.md).
    pub path: Option<String>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
}

fn path_error(field: &str, e: PathError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_path",
        e.to_string(),
    )
    .with_field(field)
}

fn path_error_text(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_path", message).with_field(field)
}

fn location(field: &str, value: &str) -> Result<Location, ApiError> {
    Location::parse(value).ok_or_else(|| {
        invalid(
            field,
            format!("location {value:?} is not one of scripts, data, outputs, shared"),
        )
    })
}

/// The key a request names: `key`, or `location` + `path` in the caller's namespace.
fn named_key(
    caller: &Caller,
    key: Option<&str>,
    loc: Option<&str>,
    path: Option<&str>,
) -> Result<ObjectKey, ApiError> {
    match (key, loc, path) {
        (Some(key), None, None) => ObjectKey::parse(key).map_err(|e| path_error("key", e)),
        (None, Some(loc), Some(path)) => {
            ObjectKey::build(location("location", loc)?, &caller.email, path)
                .map_err(|e| path_error("path", e))
        }
        (None, Some(_), None) => Err(invalid(
            "path",
            "give the file's path within the location, e.g. \"runs/input.csv\"",
        )),
        (None, None, Some(_)) => Err(invalid(
            "location",
            "give the location too: scripts, data, outputs or shared",
        )),
        (None, None, None) => Err(invalid(
            "location",
            "name the file: location and path, or its whole key",
        )),
        (Some(_), _, _) => Err(invalid(
            "key",
            "give either key, or location and path, not both",
        )),
    }
}

async fn file_caller(state: &AppState, caller: &Caller, id: &str) -> Result<FileCaller, ApiError> {
    let (cluster, view) = crate::clusters::visible_cluster(state, caller, id).await?;
    Ok(FileCaller {
        workspace: caller.workspace.clone(),
        cluster,
        bucket: view.bucket,
        email: caller.email.clone(),
        is_admin: caller.is_admin(),
        metadata: crate::clusters::metadata(caller),
    })
}

fn file_error(e: FileError, key_field: &str) -> ApiError {
    match e {
        FileError::KeyTooLong { .. } => path_error_text(key_field, e.to_string()),
        FileError::Denied(d) => {
            let code = match d {
                domain::storage::AccessDenied::NotYours { .. } => "not_your_file",
                domain::storage::AccessDenied::SharedIsAdminOnly => "shared_admin_only",
            };
            ApiError::new(StatusCode::FORBIDDEN, code, d.to_string())
        }
        FileError::Expiry(e) => invalid("expires_in_seconds", e.to_string()),
        FileError::SizeMissing | FileError::SizeNotForGet => invalid("size", e.to_string()),
        FileError::Upload(u) => {
            let code = match u {
                domain::storage::UploadRefused::TooLarge { .. } => "upload_too_large",
                domain::storage::UploadRefused::OverQuota { .. } => "storage_quota_exceeded",
            };
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, u.to_string()).with_field("size")
        }
        FileError::NotFound { key } => ApiError::new(
            StatusCode::NOT_FOUND,
            "object_not_found",
            format!("there is no object {key}; list your files to see what there is"),
        )
        .with_field("key"),
        FileError::Store(e) => store_error(e),
        FileError::Log(e) => e.into(),
        FileError::Encode(e) => ApiError::internal(format!("could not encode the event: {e}")),
    }
}

fn store_error(e: StorageError) -> ApiError {
    match e {
        StorageError::BadContinuation => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_continuation",
            e.to_string(),
        )
        .with_field("continuation"),
        StorageError::Unavailable(detail) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "object_store_unavailable",
            "the cluster's object store did not answer; retry shortly, or ask an operator to check it",
        )
        .with_detail(detail),
    }
}

/// `POST /v1/clusters/{id}/storage/presigned-url`
#[utoipa::path(
    post,
    path = "/v1/clusters/{id}/storage/presigned-url",
    tag = "storage",
    params(("id" = String, Path, description = "Cluster id")),
    request_body = PresignBody,
    responses(
        (status = 201, description = "The URL; its grant is in the log", body = PresignedUrl),
        (status = 403, description = "Another user's key, or a PUT to shared/ by a non-admin", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster", body = crate::error::ErrorBody),
        (status = 422, description = "A bad location, path, key, method, content type, expiry or size; an upload over max_upload_bytes (`upload_too_large`) or over your storage quota (`storage_quota_exceeded`)", body = crate::error::ErrorBody),
        (status = 502, description = "The object store could not be reached", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn presign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PresignBody>,
) -> Result<impl IntoResponse, ApiError> {
    let method = FileMethod::parse(&body.method)
        .ok_or_else(|| invalid("method", "method must be PUT (upload) or GET (download)"))?;
    let key = named_key(
        &caller,
        body.key.as_deref(),
        body.location.as_deref(),
        body.path.as_deref(),
    )?;
    if let Some(ct) = &body.content_type {
        if method != FileMethod::Put {
            return Err(invalid(
                "content_type",
                "content_type only applies to uploads (PUT); leave it out for GET",
            ));
        }
        if !check_content_type(ct) {
            return Err(invalid(
                "content_type",
                "content_type must be a media type like text/csv or application/octet-stream",
            ));
        }
    }
    let files = file_caller(&state, &caller, &id).await?;
    let grant = commands::storage::grant(
        state.store.log.as_ref(),
        state.storage.store.as_ref(),
        &files,
        GrantRequest {
            key: key.clone(),
            method,
            content_type: body.content_type,
            expires_in_seconds: body.expires_in_seconds,
            size: body.size,
        },
        &state.storage.uploads,
        state.clock.now(),
    )
    .await
    .map_err(|e| file_error(e, if body.key.is_some() { "key" } else { "path" }))?;
    tracing::info!(key = %key, method = method.as_str(), expires_at = %grant.expires_at, "presigned URL granted");
    Ok((
        StatusCode::CREATED,
        position_header(grant.position),
        Json(PresignedUrl {
            url: grant.presigned.url,
            method: method.as_str().to_string(),
            key: key.to_string(),
            expires_at: grant.expires_at,
            headers: grant.presigned.headers,
            position: grant.position,
        }),
    ))
}

/// `GET /v1/clusters/{id}/storage/objects`
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/storage/objects",
    tag = "storage",
    params(("id" = String, Path, description = "Cluster id"), ListQuery),
    responses(
        (status = 200, description = "Your keys in the location (or shared/), by key", body = ObjectList),
        (status = 400, description = "A bad or unknown parameter", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster", body = crate::error::ErrorBody),
        (status = 502, description = "The object store could not be reached", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: RawQuery,
) -> Result<Json<ObjectList>, ApiError> {
    let q: HashMap<String, String> = raw_query(query)?;
    unknown(&q, &["location", "prefix", "continuation", "limit"])?;
    let loc = q.get("location").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            "add location=scripts, data, outputs or shared",
        )
        .with_field("location")
    })?;
    let loc = location("location", loc).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        ..e
    })?;
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let full = list_prefix(loc, &caller.email, prefix).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        ..path_error("prefix", e)
    })?;
    let limit = match number(&q, "limit", 1000)? {
        Some(0) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_number",
                "limit must be a whole number from 1 to 1000",
            )
            .with_field("limit"));
        }
        Some(n) => n as u32,
        None => 1000,
    };
    // Tokens are opaque, but every store issues them as visible ASCII: anything else never
    // reaches the store (whose client would fail to send it and look unavailable).
    let continuation = q.get("continuation").map(String::as_str);
    if continuation
        .is_some_and(|c| c.is_empty() || c.len() > 1024 || !c.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(store_error(StorageError::BadContinuation));
    }
    let files = file_caller(&state, &caller, &id).await?;
    let page = state
        .storage
        .store
        .list(&files.bucket, &full, continuation, limit)
        .await
        .map_err(store_error)?;
    let objects = page
        .objects
        .into_iter()
        // Only keys the namespace rules could have made (a bucket shared with other tools
        // may hold others; they are not listed).
        .filter_map(|o| {
            let key = ObjectKey::parse(&o.key).ok()?;
            // Defence in depth: the prefix already confines the listing to the caller's own
            // keys or shared/.
            if key.location() != loc || key.owner().is_some_and(|owner| *owner != caller.email) {
                return None;
            }
            Some(StoredObject {
                path: key.path().to_string(),
                key: o.key,
                size: o.size,
                last_modified: o.last_modified,
            })
        })
        .collect();
    Ok(Json(ObjectList {
        location: loc.to_string(),
        prefix: prefix.to_string(),
        objects,
        continuation: page.continuation,
    }))
}

/// `DELETE /v1/clusters/{id}/storage/objects`
#[utoipa::path(
    delete,
    path = "/v1/clusters/{id}/storage/objects",
    tag = "storage",
    params(("id" = String, Path, description = "Cluster id"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted; `FileDeleted` is in the log", body = ObjectDeleted),
        (status = 403, description = "Another user's key, or shared/ by a non-admin", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster or object", body = crate::error::ErrorBody),
        (status = 422, description = "A bad key, location or path", body = crate::error::ErrorBody),
        (status = 502, description = "The object store could not be reached", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let q = raw_query(query)?;
    unknown(&q, &["key", "location", "path"])?;
    let key = named_key(
        &caller,
        q.get("key").map(String::as_str),
        q.get("location").map(String::as_str),
        q.get("path").map(String::as_str),
    )?;
    let files = file_caller(&state, &caller, &id).await?;
    let (size, position) = commands::storage::delete(
        state.store.log.as_ref(),
        state.storage.store.as_ref(),
        &files,
        key.clone(),
    )
    .await
    .map_err(|e| file_error(e, "key"))?;
    tracing::info!(key = %key, size, "object deleted");
    Ok((
        position_header(position),
        Json(ObjectDeleted {
            key: key.to_string(),
            size,
            position,
        }),
    ))
}
