//! Liveness and readiness.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use projections::ProjectionStatus;
use serde::Serialize;

use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// The process is up and answering.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    backend: &'static str,
    log_position: Option<i64>,
    error: Option<String>,
    projections: BTreeMap<&'static str, ProjectionStatus>,
}

/// Ready when the log answers and no projector is failing.
async fn readyz(State(state): State<AppState>) -> Response {
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
