//! One error shape for every route:
//! `{"error": {"code": "stable_machine_code", "message": "how to fix it", "field": null}}`.

use axum::Json;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Every problem, when there is more than one (the first is `code`/`field`).
    pub details: Vec<ErrorItem>,
    /// What went wrong inside (a database error, an upstream's address, a path): written to the
    /// server's log with the request id, never sent to the caller.
    pub detail: Option<String>,
}

/// One of several problems with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ErrorItem {
    pub code: String,
    pub field: String,
    pub message: String,
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `token_expired`.
    #[schema(example = "invalid_field")]
    pub code: String,
    /// A sentence that says how to fix it.
    pub message: String,
    /// The field at fault, as a path (`slurm.url`, `headers.authorization`), or null.
    pub field: Option<String>,
    /// Every problem found, when the request had more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorItem>,
    /// This request's id (also in `X-Request-Id`): the server's log has the details under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            details: Vec::new(),
            detail: None,
        }
    }

    /// Keeps `detail` for the server's log (never sent to the caller).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// A 500: the caller gets a sentence and the request id; `detail` goes to the log only.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete this request; retry, and if it fails again give the operator its request_id",
        )
        .with_detail(detail)
    }

    fn body(&self, request_id: Option<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                field: self.field.clone(),
                details: self.details.clone(),
                request_id,
            },
        }
    }
}

impl IntoResponse for ApiError {
    /// The JSON body, and the error itself as a response extension for [`log_errors`], which
    /// logs it inside the request's span and adds the request id to the body.
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body(None))).into_response();
        response.extensions_mut().insert(std::sync::Arc::new(self));
        response
    }
}

/// Logs every error answer once, inside the request's span, with its internal detail, and puts
/// the request id into the body so a user can quote it.
pub(crate) async fn log_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    let Some(error) = response
        .extensions()
        .get::<std::sync::Arc<ApiError>>()
        .cloned()
    else {
        return response;
    };
    let detail = error.detail.as_deref().unwrap_or("");
    if error.status.is_server_error() {
        tracing::error!(status = error.status.as_u16(), code = error.code, message = %error.message, detail, "request failed");
    } else {
        tracing::debug!(
            status = error.status.as_u16(),
            code = error.code,
            detail,
            "request refused"
        );
    }
    let (mut parts, _) = response.into_parts();
    let body = error.body(request_id);
    match serde_json::to_vec(&body) {
        Ok(bytes) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(bytes))
        }
        Err(_) => Response::from_parts(parts, axum::body::Body::empty()),
    }
}

impl From<eventlog::LogError> for ApiError {
    fn from(e: eventlog::LogError) -> Self {
        // Another request changed the same thing at the same moment: nothing was written, and
        // doing it again decides on what is there now. Not a storage failure.
        if let eventlog::LogError::VersionConflict { stream_id, .. } = &e {
            tracing::info!(stream = %stream_id, "version conflict answered 409 conflict");
            return ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "another request changed this at the same moment and nothing was done; retry the request",
            );
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the event log could not be reached; retry shortly",
        )
        .with_detail(e.to_string())
    }
}

impl From<domain::submit::FieldError> for ApiError {
    /// A field a domain rule refused (a quota's, a cluster registration's): 422 with its code.
    fn from(e: domain::submit::FieldError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.message).with_field(e.field)
    }
}

impl From<projections::views::ViewError> for ApiError {
    fn from(e: projections::views::ViewError) -> Self {
        match e {
            projections::views::ViewError::Log(e) => e.into(),
            e @ projections::views::ViewError::Unreadable { .. } => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<commands::jobs::JobError> for ApiError {
    fn from(e: commands::jobs::JobError) -> Self {
        crate::jobs::job_error(e)
    }
}

impl From<commands::quota::QuotaError> for ApiError {
    fn from(e: commands::quota::QuotaError) -> Self {
        use commands::quota::QuotaError;
        match e {
            QuotaError::NoQuota(email) => crate::quotas::no_quota(&email),
            QuotaError::Log(e) => e.into(),
            QuotaError::Job(e) => e.into(),
            QuotaError::Blocked(b) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", b.to_string())
            }
            e @ QuotaError::Decode(_) => ApiError::internal(format!("the quota stream: {e}")),
        }
    }
}

impl From<commands::CommandError> for ApiError {
    fn from(e: commands::CommandError) -> Self {
        match e {
            commands::CommandError::AlreadyExists { what } => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{what} already exists; pick another id"),
            ),
            commands::CommandError::Log(e) => e.into(),
            commands::CommandError::Encode(e) => {
                ApiError::internal(format!("could not encode the event: {e}"))
            }
        }
    }
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!(
            "there is no route {}; see /openapi.json for the routes this server has",
            uri.path()
        ),
    )
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not accept {method}; see /openapi.json for its methods",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn failing() -> Result<(), ApiError> {
        Err(ApiError::internal(
            "pool timed out at postgres://db.internal:5432, /var/lib/clusterra/x",
        ))
    }

    #[tokio::test]
    async fn internals_go_to_the_log_and_the_caller_gets_a_request_id() {
        let app = Router::new()
            .route("/", get(failing))
            .layer(axum::middleware::from_fn(log_errors));
        let response = app
            .oneshot(
                axum::http::Request::get("/")
                    .header("x-request-id", "req-42")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["request_id"], "req-42");
        let text = body.to_string();
        assert!(
            !text.contains("db.internal") && !text.contains("/var/lib"),
            "{text}"
        );
    }

    #[test]
    fn a_version_conflict_is_a_retryable_409_that_quotes_no_versions() {
        let e: ApiError = eventlog::LogError::VersionConflict {
            stream_id: "job-local-x".into(),
            expected: eventlog::ExpectedVersion::Exact(3),
            actual: 4,
        }
        .into();
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "conflict"));
        assert!(e.message.contains("retry"), "{}", e.message);
        assert!(
            !e.message.contains("version") && !e.message.contains("job-local"),
            "{}",
            e.message
        );
    }
}
