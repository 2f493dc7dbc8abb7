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
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            details: Vec::new(),
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
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
            format!("the event log could not be reached ({e}); retry shortly"),
        )
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
