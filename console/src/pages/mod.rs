//! One module per page.

pub mod activity;
pub mod ask;
pub mod files;
pub mod job;
pub mod jobs;
pub mod login;
pub mod nodes;
pub mod submit;
pub mod usage;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::Console;

/// The query every page takes: which cluster.
#[derive(Debug, Default, Deserialize)]
pub struct ClusterQuery {
    pub cluster: Option<String>,
    /// A log position the page must show (after a change the browser just made).
    pub at: Option<i64>,
}

/// `&at=N` for the page shown after a change recorded at log position `v["position"]` (the
/// page's address already has a query).
pub fn at(v: &serde_json::Value) -> String {
    v["position"]
        .as_i64()
        .map(|p| format!("&at={p}"))
        .unwrap_or_default()
}

/// `/`: to the jobs when signed in, to the sign-in page otherwise.
pub async fn home(
    State(_console): State<Arc<Console>>,
    headers: axum::http::HeaderMap,
) -> Response {
    if api::auth::session_token(&headers).is_some() {
        Redirect::to("/jobs").into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}
