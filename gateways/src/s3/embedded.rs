//! The embedded S3-compatible endpoint of `clusterra serve`: `s3s` (the S3 protocol, with real
//! SigV4 checks of header-signed and presigned requests, expiry included) over `s3s-fs` (objects
//! as plain files under a folder, one folder per bucket).
//!
//! It runs on its own port: a prefix in front of it would change the signed path. Browsers can
//! upload to it: CORS preflights are answered and `ETag` is exposed.
//!
//! s3s-fs resolves `..` in keys on disk, so every key that reaches it must have been checked by
//! `domain::storage` first; the API never signs one that was not.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::error_handling::HandleError;
use axum::http::StatusCode;
use domain::storage::{ObjectKey, UploadLimits, UploadRefused, check_upload, quota_prefixes};
use s3s::S3ErrorCode;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::watch;

/// The operations the embedded store serves: what presigned URLs do (get, put, head) and what
/// the server itself calls (list, head, delete, bucket checks). Everything else is refused, in
/// particular copies: a presigned PUT signs only the headers it lists, so an added
/// `x-amz-copy-source` would otherwise turn an upload URL into a copy from any bucket.
///
/// Uploads are bounded too ([`Uploads`]): a PUT must carry its `Content-Length` (no chunked
/// bodies), a presigned PUT must have that length signed in (the API signs the size it was
/// told; the signature check then holds the length to it, and HTTP framing holds the body to the
/// length), and the length must fit `max_upload_bytes` and the key owner's quota.
struct OnlyWhatClusterraUses {
    uploads: Arc<Uploads>,
}

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
        if op == "PutObject"
            && let s3s::path::S3Path::Object { bucket, key } = cx.s3_path()
        {
            let (bucket, key) = (bucket.to_string(), key.to_string());
            let length = upload_length(cx.headers(), cx.uri())?;
            let reservation = self.uploads.admit(&bucket, &key, length).await?;
            cx.extensions_mut().insert(reservation);
        }
        Ok(())
    }
}

/// The length a PUT declares, if it may be taken: present, not chunked, and signed into a
/// presigned URL.
fn upload_length(headers: &axum::http::HeaderMap, uri: &axum::http::Uri) -> s3s::S3Result<u64> {
    if headers.contains_key(axum::http::header::TRANSFER_ENCODING) {
        return Err(s3s::s3_error!(
            MissingContentLength,
            "send the upload with a Content-Length, not chunked"
        ));
    }
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            s3s::s3_error!(
                MissingContentLength,
                "send the upload with its Content-Length"
            )
        })?;
    let query = uri.query().unwrap_or("");
    let signed_headers = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("X-Amz-SignedHeaders="));
    let presigned = query
        .split('&')
        .any(|kv| kv.starts_with("X-Amz-Signature="));
    if presigned
        && !signed_headers.is_some_and(|h| {
            h.replace("%3b", ";")
                .replace("%3B", ";")
                .split(';')
                .any(|h| h.eq_ignore_ascii_case("content-length"))
        })
    {
        return Err(s3s::s3_error!(
            AccessDenied,
            "this upload URL does not sign the upload's size; ask the API for a new one, giving size"
        ));
    }
    Ok(length)
}

/// The upload limits of the embedded store: the largest upload and each owner's quota, counted
/// on disk (the objects under the owner's prefixes in the bucket) plus the uploads in progress.
pub struct Uploads {
    root: PathBuf,
    limits: UploadLimits,
    /// Bytes of uploads in progress, by bucket and quota prefix set.
    in_progress: Mutex<HashMap<(String, String), u64>>,
}

/// An upload in progress: its bytes count against the quota until the request ends.
#[derive(Clone)]
struct Reservation(#[allow(dead_code)] Arc<Reserved>);

struct Reserved {
    uploads: Arc<Uploads>,
    slot: (String, String),
    bytes: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut map = self.uploads.lock();
        if let Some(b) = map.get_mut(&self.slot) {
            *b = b.saturating_sub(self.bytes);
            if *b == 0 {
                map.remove(&self.slot);
            }
        }
    }
}

impl Uploads {
    pub fn new(root: &Path, limits: UploadLimits) -> Self {
        Self {
            root: root.to_path_buf(),
            limits,
            in_progress: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits an upload of `length` bytes to `bucket`/`key`, or says why not.
    async fn admit(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        length: u64,
    ) -> s3s::S3Result<Reservation> {
        // Keys the API never signs (the server itself does not upload) have no owner; only
        // their size is bounded.
        let Ok(parsed) = ObjectKey::parse(key) else {
            if length > self.limits.max_upload_bytes {
                return Err(refusal(UploadRefused::TooLarge {
                    size: length,
                    max: self.limits.max_upload_bytes,
                }));
            }
            return Ok(self.reserve((bucket.to_string(), String::new()), 0));
        };
        let prefixes = quota_prefixes(&parsed);
        let slot = (bucket.to_string(), prefixes.join(","));
        // The cheap check first: a too-large upload needs no walk of the disk.
        check_upload(&self.limits, &parsed, length, 0, 0).map_err(refusal)?;
        if self.limits.quota_bytes.is_none() {
            return Ok(self.reserve(slot, 0));
        }
        let (root, b, k) = (self.root.clone(), bucket.to_string(), key.to_string());
        let (used, replaced) = tokio::task::spawn_blocking(move || {
            let bucket_dir = root.join(&b);
            let used = prefixes
                .iter()
                .map(|p| tree_bytes(&bucket_dir.join(p)))
                .fold(0u64, u64::saturating_add);
            let replaced = std::fs::symlink_metadata(bucket_dir.join(&k))
                .ok()
                .filter(std::fs::Metadata::is_file)
                .map_or(0, |m| m.len());
            (used, replaced)
        })
        .await
        .map_err(|e| s3s::s3_error!(InternalError, "could not count the quota: {e}"))?;
        // Check and reserve under one lock, so two uploads cannot both take the last bytes.
        let mut map = self.lock();
        let pending = map.get(&slot).copied().unwrap_or(0);
        check_upload(
            &self.limits,
            &parsed,
            length,
            used.saturating_add(pending),
            replaced,
        )
        .map_err(refusal)?;
        *map.entry(slot.clone()).or_insert(0) += length;
        drop(map);
        Ok(Reservation(Arc::new(Reserved {
            uploads: self.clone(),
            slot,
            bytes: length,
        })))
    }

    fn reserve(self: &Arc<Self>, slot: (String, String), bytes: u64) -> Reservation {
        Reservation(Arc::new(Reserved {
            uploads: self.clone(),
            slot,
            bytes,
        }))
    }
}

/// The bytes of the regular files under `dir` (0 when it does not exist).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

/// The store's answer to a refused upload: S3's `EntityTooLarge` (400), or `QuotaExceeded`
/// (403), with the sentence the API would give.
fn refusal(e: UploadRefused) -> s3s::S3Error {
    match &e {
        UploadRefused::TooLarge { .. } => {
            s3s::S3Error::with_message(S3ErrorCode::EntityTooLarge, e.to_string())
        }
        UploadRefused::OverQuota { .. } => {
            let code =
                S3ErrorCode::from_bytes(b"QuotaExceeded").unwrap_or(S3ErrorCode::AccessDenied);
            let mut err = s3s::S3Error::with_message(code, e.to_string());
            err.set_status_code(StatusCode::FORBIDDEN);
            err
        }
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

/// How the embedded endpoint runs.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// Where the objects are kept (one folder per bucket).
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// The one key pair requests are signed with.
    pub access_key: String,
    pub secret_key: String,
    /// Connections, header and idle timeouts.
    pub edge: edge::Limits,
    /// The largest upload and each owner's quota.
    pub uploads: UploadLimits,
}

/// Starts the endpoint. It stops when `stop` turns true (uploads in flight finish).
pub async fn start(
    settings: EmbeddedSettings,
    mut stop: watch::Receiver<bool>,
) -> Result<Embedded, EmbeddedError> {
    let EmbeddedSettings {
        root,
        listen,
        access_key,
        secret_key,
        edge: limits,
        uploads,
    } = settings;
    let root = root.as_path();
    let folder = |source| EmbeddedError::Folder {
        path: root.display().to_string(),
        source,
    };
    std::fs::create_dir_all(root).map_err(folder)?;
    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|e| folder(std::io::Error::other(format!("{e:?}"))))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    builder.set_access(OnlyWhatClusterraUses {
        uploads: Arc::new(Uploads::new(root, uploads)),
    });
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
    let task = tokio::spawn(edge::serve(listener, app, limits, "objects", async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    tracing::info!(%addr, root = %root.display(), "embedded object store listening");
    Ok(Embedded { addr, task })
}
