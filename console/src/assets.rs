//! The browser files, embedded in the binary and served under names that carry a hash of their
//! content, so they can be cached for a year and a new build is fetched at once.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use crate::Console;

struct Asset {
    /// `console.js`
    name: &'static str,
    /// `console.3f2a9c1b04.js`
    hashed: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

pub struct Assets(Vec<Asset>);

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/console.js"),
    ),
];

impl Assets {
    pub fn embedded() -> Self {
        Assets(
            FILES
                .iter()
                .map(|(name, content_type, bytes)| {
                    let hash = hex::encode(&sha2::Sha256::digest(bytes)[..5]);
                    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
                    Asset {
                        name,
                        hashed: format!("{stem}.{hash}.{ext}"),
                        content_type,
                        bytes,
                    }
                })
                .collect(),
        )
    }

    /// The URL of an embedded file by its plain name.
    pub fn url(&self, name: &str) -> String {
        self.0.iter().find(|a| a.name == name).map_or_else(
            || format!("/assets/{name}"),
            |a| format!("/assets/{}", a.hashed),
        )
    }
}

pub async fn serve(State(console): State<Arc<Console>>, Path(name): Path<String>) -> Response {
    match console.assets.0.iter().find(|a| a.hashed == name) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            a.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
