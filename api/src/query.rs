//! Query parameters read as strings, so that each bad one gets its own error naming its field.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::StatusCode;

use crate::ApiError;

/// Query parameters as strings, so that each bad one gets its own field error.
pub(crate) type RawQuery =
    Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

pub(crate) fn raw_query(q: RawQuery) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e}")))
}

/// A whole number query parameter, if present.
pub(crate) fn number(
    q: &HashMap<String, String>,
    name: &str,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_number",
                    format!("{name} must be a whole number from 0 to {max}"),
                )
                .with_field(name)
            })
        })
        .transpose()
}

/// Refuses a query parameter the route does not take, naming the ones it does.
pub(crate) fn unknown(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            format!(
                "{k:?} is not a parameter of this route; it takes {}",
                allowed.join(", ")
            ),
        )
        .with_field(k.clone())),
        None => Ok(()),
    }
}
