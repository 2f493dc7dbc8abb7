//! The embedded S3-compatible endpoint of `clusterra serve`: `s3s` (the S3 protocol, with real
//! SigV4 checks of header-signed and presigned requests, expiry included) over `s3s-fs` (objects
//! as plain files under a folder, one folder per bucket).
//!
//! It runs on its own port: a prefix in front of it would change the signed path. Browsers can
//! upload to it: CORS preflights are answered and `ETag` is exposed.
//!
//! s3s-fs resolves `..` in keys on disk, so every key that reaches it must have been checked by
//! `domain::storage` first; the API never signs one that was not.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::error_handling::HandleError;
use axum::http::StatusCode;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::watch;

/// The operations the embedded store serves: what presigned URLs do (get, put, head) and what
/// the server itself calls (list, head, delete, bucket checks). Everything else is refused, in
/// particular copies: a presigned PUT signs only the headers it lists, so an added
/// `x-amz-copy-source` would otherwise turn an upload URL into a copy from any bucket.
struct OnlyWhatClusterraUses;

const ALLOWED: [&str; 7] = [
    "GetObject",
    "PutObject",
    "HeadObject",
    "DeleteObject",
    "ListObjectsV2",
    "HeadBucket",
    "CreateBucket",
];

#[async_trait::async_trait]
impl S3Access for OnlyWhatClusterraUses {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> s3s::S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3s::s3_error!(
                AccessDenied,
                "sign the request or use a presigned URL"
            ));
        }
        let op = cx.s3_op().name();
        if !ALLOWED.contains(&op) {
            return Err(s3s::s3_error!(
                AccessDenied,
                "this store does not serve {op}"
            ));
        }
        if cx
            .headers()
            .keys()
            .any(|h| h.as_str().starts_with("x-amz-copy-source"))
        {
            return Err(s3s::s3_error!(AccessDenied, "copies are not served"));
        }
        Ok(())
    }
}

/// A running embedded endpoint.
pub struct Embedded {
    /// Where it listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("could not prepare the object folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "could not listen on {addr} for the embedded object store: {source}; pick another address with s3_listen (CLUSTERRA_S3_LISTEN)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Starts the endpoint on `listen`, storing under `root`, accepting requests signed with the one
/// key pair. It stops when `stop` turns true.
pub async fn start(
    root: &Path,
    listen: SocketAddr,
    access_key: &str,
    secret_key: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<Embedded, EmbeddedError> {
    let folder = |source| EmbeddedError::Folder {
        path: root.display().to_string(),
        source,
    };
    std::fs::create_dir_all(root).map_err(folder)?;
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| folder(std::io::Error::other(format!("{e:?}"))))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key.to_string()));
    builder.set_access(OnlyWhatClusterraUses);
    let service = builder.build();
    let app = Router::new()
        .fallback_service(HandleError::new(service, |e: s3s::HttpError| async move {
            tracing::error!(error = ?e, "embedded object store failed a request");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the embedded object store failed; see the server log",
            )
        }))
        .layer(axum::middleware::map_response(
            |res: axum::response::Response| async move {
                if res.status().is_server_error() {
                    tracing::error!(
                        status = res.status().as_u16(),
                        "embedded object store answered with a server error"
                    );
                }
                res
            },
        ))
        .layer(
            tower_http::cors::CorsLayer::very_permissive()
                .expose_headers([axum::http::header::ETAG]),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| EmbeddedError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmbeddedError::Listen {
            addr: listen,
            source,
        })?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, root = %root.display(), "embedded object store listening");
    Ok(Embedded { addr, task })
}
