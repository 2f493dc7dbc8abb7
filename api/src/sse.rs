//! Server-Sent Events framing, done once per message.
//!
//! The live routes send the same message to many subscribers. Rendering a frame into `Bytes`
//! once and handing every subscriber a reference-counted clone keeps the per-subscriber cost at
//! a pointer copy; axum's `Sse` would format every event again for every connection. Every
//! `data` here is one line of compact JSON (serde_json escapes newlines), so a frame is always
//! `id:`/`event:` lines, one `data:` line and a blank line.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

/// One SSE message: optional `event` name, optional `id`, and one line of `data`.
pub fn frame(event: Option<&str>, id: Option<&str>, data: &str) -> Bytes {
    debug_assert!(!data.contains('\n') && !data.contains('\r'));
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// The first frame of a stream: a comment naming it and the reconnect delay to use.
pub fn hello(name: &str, retry: Duration) -> Bytes {
    Bytes::from(format!(": {name}\nretry: {}\n\n", retry.as_millis()))
}

/// A comment that keeps proxies from closing an idle stream.
pub fn heartbeat() -> Bytes {
    Bytes::from_static(b": heartbeat\n\n")
}

/// The `Last-Event-ID` a reconnecting client sent (this API's ids are whole numbers: `what` says
/// which), or a 400 naming the header.
pub fn last_event_id(headers: &HeaderMap, what: &str) -> Result<Option<u64>, crate::ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| {
                    crate::ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "invalid_last_event_id",
                        format!("Last-Event-ID must be the id of an event of this stream: {what}"),
                    )
                    .with_field("headers.last-event-id")
                })
        })
        .transpose()
}

/// A `text/event-stream` response over `frames`.
pub fn response(frames: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures::StreamExt;
    let body = Body::from_stream(frames.map(Ok::<_, Infallible>));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        assert_eq!(
            frame(Some("end"), Some("12"), "{\"a\":1}"),
            Bytes::from_static(b"event: end\nid: 12\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(frame(None, None, "x"), Bytes::from_static(b"data: x\n\n"));
        assert_eq!(
            hello("feed", Duration::from_secs(2)),
            Bytes::from_static(b": feed\nretry: 2000\n\n")
        );
    }
}
