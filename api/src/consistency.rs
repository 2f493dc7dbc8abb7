//! Read-your-writes over an eventually consistent read side.
//!
//! A command answers with the log position it produced (body `position` and header
//! `X-Clusterra-Position`). A read that sends `X-Clusterra-Min-Position: N` waits, at most the
//! configured bound (5 s by default), until its projection has applied position N. The answer says
//! what it got in `X-Clusterra-Consistency`: `fresh` when it reached N, `stale` on timeout (the
//! body is then what the projection had), with the projection's position in
//! `X-Clusterra-Projection-Position`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};

use crate::{ApiError, AppState};

pub const POSITION: &str = "x-clusterra-position";
pub const MIN_POSITION: &str = "x-clusterra-min-position";
pub const CONSISTENCY: &str = "x-clusterra-consistency";
pub const PROJECTION_POSITION: &str = "x-clusterra-projection-position";

/// The `X-Clusterra-Min-Position` a read asked for, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinPosition(pub Option<i64>);

impl FromRequestParts<AppState> for MinPosition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(MIN_POSITION) else {
            return Ok(MinPosition(None));
        };
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|p| *p >= 0)
            .map(|p| MinPosition(Some(p)))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_min_position",
                    "X-Clusterra-Min-Position must be a log position: a whole number >= 0, as returned in X-Clusterra-Position",
                )
                .with_field("headers.x-clusterra-min-position")
            })
    }
}

/// Waits for `projection` to reach the asked position and returns the headers to answer with.
pub async fn await_projection(state: &AppState, projection: &str, min: MinPosition) -> HeaderMap {
    await_projections(state, &[projection], min).await
}

/// [`await_projection`] for a read that joins several projections: `fresh` only when every one
/// reached the position; the projection position reported is the least of theirs.
pub async fn await_projections(
    state: &AppState,
    projections: &[&str],
    min: MinPosition,
) -> HeaderMap {
    // One bounded wait in all: once a projection is stale the answer is, and the others are
    // not waited for in turn.
    let mut fresh = true;
    for name in projections {
        if !reached(state, name, min).await {
            fresh = false;
            break;
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        CONSISTENCY,
        HeaderValue::from_static(if fresh { "fresh" } else { "stale" }),
    );
    if let Some(p) = projections
        .iter()
        .filter_map(|name| state.projections.position(name))
        .min()
    {
        headers.insert(PROJECTION_POSITION, HeaderValue::from(p));
    }
    headers
}

/// Whether `projection` has (or, within the bounded wait, gets to) the asked position.
async fn reached(state: &AppState, projection: &str, min: MinPosition) -> bool {
    match min.0 {
        // A position past the log's end was never returned by any replica (a command answers
        // only once its events are in the shared log): it cannot become visible, so there is
        // nothing to wait for. (A position the projection has reached needs no log lookup.)
        Some(p)
            if state
                .projections
                .position(projection)
                .is_some_and(|at| at >= p) =>
        {
            true
        }
        Some(p) if state.store.log.head().await.is_ok_and(|h| p > h.position) => false,
        Some(p) => {
            state
                .projections
                .wait_for(projection, p, state.settings.min_position_wait)
                .await
        }
        None => true,
    }
}

/// The `X-Clusterra-Position` header of a command's answer.
pub fn position_header(position: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(POSITION, HeaderValue::from(position));
    headers
}
