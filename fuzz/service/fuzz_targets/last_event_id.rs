//! `Last-Event-ID` (and the log offsets it carries): any header bytes are a number or a 400.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = axum::http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("last-event-id", value);
    if let Ok(Some(n)) = api::sse::last_event_id(&headers, "fuzz") {
        assert!(n <= i64::MAX as u64);
    }
});
