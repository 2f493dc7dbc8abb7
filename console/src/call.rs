//! Calling the API in-process with the session's token: the console's only way to read or
//! change anything.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::Console;
use crate::session::Session;

/// The largest API answer the console reads (a page of jobs or events is far below).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// An API error, as the API answered it.
#[derive(Debug, Clone)]
pub struct Fail {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// `(field, message)` of every problem, when the API listed several.
    pub details: Vec<(String, String)>,
}

impl Fail {
    fn internal(message: impl Into<String>) -> Self {
        Fail {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal".into(),
            message: message.into(),
            field: None,
            details: Vec::new(),
        }
    }

    /// The messages that name `field` (or a field under it).
    pub fn at(&self, field: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .details
            .iter()
            .filter(|(f, _)| f == field || f.starts_with(&format!("{field}.")))
            .map(|(_, m)| m.as_str())
            .collect();
        if out.is_empty() && self.field.as_deref() == Some(field) {
            out.push(&self.message);
        }
        out
    }
}

/// A path segment, percent-encoded.
pub fn seg(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A query string of the pairs whose value is present and not empty.
pub fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

impl Console {
    /// Sends one request to the API as the session's caller; the JSON answer or its error.
    pub async fn call(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Value, Fail> {
        self.call_with(session, method, uri, body, HeaderMap::new())
            .await
    }

    /// [`Console::call`] with more request headers (an `Idempotency-Key`).
    pub async fn call_with(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<&Value>,
        headers: HeaderMap,
    ) -> Result<Value, Fail> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", session.token))
            .extension(api::FromConsole);
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(v).map_err(|e| Fail::internal(e.to_string()))?)
            }
            None => Body::empty(),
        };
        if let Some(h) = req.headers_mut() {
            h.extend(headers);
        }
        let req = req
            .body(body)
            .map_err(|e| Fail::internal(format!("bad request to {uri}: {e}")))?;
        let res = self
            .api
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| Fail::internal(e.to_string()))?;
        let status = res.status();
        let bytes = http_body_util::Limited::new(res.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Fail::internal(format!("reading the API's answer: {e}")))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| Fail::internal(format!("the API's answer is not JSON: {e}")))?
        };
        if status.is_success() {
            return Ok(value);
        }
        let e = &value["error"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Err(Fail {
            status,
            code: text(&e["code"]),
            message: text(&e["message"]),
            field: e["field"].as_str().map(str::to_owned),
            details: e["details"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|i| (text(&i["field"]), text(&i["message"])))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// One request to the API as the session's caller, its answer as it comes (a stream is
    /// passed through as it is written: Ask AI's reply).
    pub async fn call_raw(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: &Value,
    ) -> Result<axum::response::Response, Fail> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", session.token))
            .header(header::CONTENT_TYPE, "application/json")
            .extension(api::FromConsole)
            .body(Body::from(body.to_string()))
            .map_err(|e| Fail::internal(format!("bad request to {uri}: {e}")))?;
        self.api
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| Fail::internal(e.to_string()))
    }

    pub async fn get(&self, session: &Session, uri: &str) -> Result<Value, Fail> {
        self.call(session, Method::GET, uri, None).await
    }

    /// A read that waits (bounded, as the API does) until the log position `at` is visible:
    /// a page shown right after a change the browser made sees that change.
    pub async fn get_at(
        &self,
        session: &Session,
        uri: &str,
        at: Option<i64>,
    ) -> Result<Value, Fail> {
        let mut headers = HeaderMap::new();
        if let Some(at) = at.filter(|a| *a > 0) {
            headers.insert("x-clusterra-min-position", at.into());
        }
        self.call_with(session, Method::GET, uri, None, headers)
            .await
    }
}
