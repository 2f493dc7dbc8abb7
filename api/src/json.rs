//! The JSON body extractor: its rejections are [`ApiError`]s in the one error shape, with the
//! path of the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON request body of type `T`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                "send the body as JSON with `Content-Type: application/json`",
            )
            .with_field("headers.content-type"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the body is larger than this server accepts (1 MiB by default); send less, or upload files through presigned URLs",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    format!("the request body could not be read ({rejection}); send it again"),
                )
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses JSON bytes into `T`, naming the field at fault on error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut inner = e.into_inner();
        let mut field = (path != ".").then_some(path);
        // A shape error can be found before a syntax error further on (an unknown field in a
        // truncated body): broken JSON is reported as such, whatever came first.
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            inner = syntax;
            field = None;
        }
        let err = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON ({inner}); fix the syntax and send it again"),
            ),
            _ => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("the body does not have the expected shape: {inner}; see /openapi.json for this route's schema"),
            ),
        };
        match field {
            Some(f) => err.with_field(f),
            None => err,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        slurm: Inner,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        endpoint: String,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Body>(br#"{"name": "x", "slurm": {"endpoint": 3}}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_body", Some("slurm.endpoint"))
        );
        let e = parse::<Body>(br#"{"name": "x"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_body");
        assert!(e.message.contains("missing field `slurm`"), "{}", e.message);
        let e = parse::<Body>(br#"{"name": "x", "#).unwrap_err();
        assert_eq!(
            (e.code, e.status),
            ("invalid_json", StatusCode::BAD_REQUEST)
        );
        let e = parse::<Body>(br#"{"nme": "x", "#).unwrap_err();
        assert_eq!((e.code, e.field), ("invalid_json", None));
        let e = parse::<Body>(br#"{"nme": "x"}"#).unwrap_err();
        assert!(e.message.contains("unknown field `nme`"), "{}", e.message);
    }
}
