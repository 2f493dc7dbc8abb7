//! Liveness and readiness.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use projections::ProjectionStatus;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    backend: &'static str,
    log_position: Option<i64>,
    /// Whether this replica leads the poll cycle (decides and reconciles) now.
    poll_leader: bool,
    error: Option<String>,
    /// Each projection's position, state (`starting`, `running`, `failing`) and last error.
    #[schema(value_type = Object)]
    projections: BTreeMap<&'static str, ProjectionStatus>,
}

/// Readiness: the log answers and no projector is failing.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the body says why", body = Readiness),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let projections = state.projections.statuses();
    let (log_position, error) = match state.store.log.head().await {
        Ok(head) => (Some(head.position), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let ready = error.is_none() && projections.values().all(|p| p.state != "failing");
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        backend: state.store.log.backend(),
        log_position,
        poll_leader: state
            .scaling
            .leading
            .load(std::sync::atomic::Ordering::Relaxed),
        error,
        projections,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
