//! The object-store port on S3: AWS, any S3-compatible endpoint, or the embedded store
//! ([`embedded`]), all through aws-sdk-s3.
//!
//! Two clients: one for what the server itself does (list, head, delete, create bucket) at
//! `endpoint`, and one only for signing at `public_endpoint` — SigV4 signs the host, so a URL
//! must be presigned for the address its user will fetch.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use commands::storage::{
    ObjectInfo, ObjectPage, ObjectStore, PresignRequest, Presigned, StorageError,
};
use domain::storage::FileMethod;

pub mod embedded;

/// How to reach the buckets.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The endpoint the server talks to; `None` = AWS's own for the region.
    pub endpoint: Option<String>,
    /// The endpoint presigned URLs carry; `None` = `endpoint`.
    pub public_endpoint: Option<String>,
    pub region: String,
    /// `https://host/bucket/key` (true) or `https://bucket.host/key` (false).
    pub path_style: bool,
    /// Static keys; `None` = the AWS default chain (environment, web identity, instance role).
    pub credentials: Option<(String, String)>,
    /// Create a cluster's bucket the first time it is used, if it does not exist.
    pub create_buckets: bool,
    /// How long one call (list, head, delete) may take, retries included.
    pub timeout: Duration,
    /// The store keeps objects as files named after their keys (the embedded s3s-fs store):
    /// keys are then limited by file-name length, not by S3's 1,024 bytes.
    pub filesystem_keys: bool,
}

/// Cluster buckets on S3 or an S3-compatible store.
pub struct S3Store {
    internal: Client,
    public: Client,
    create_buckets: bool,
    filesystem_keys: bool,
    /// Buckets known to exist (only tracked when creating buckets).
    known: Mutex<HashSet<String>>,
}

impl S3Store {
    pub async fn connect(settings: &S3Settings) -> Self {
        let shared = crate::aws::loader(&settings.region, settings.credentials.as_ref())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(settings.timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            )
            .load()
            .await;
        let client = |endpoint: Option<&String>| {
            let mut b =
                aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.path_style);
            if let Some(url) = endpoint {
                b = b.endpoint_url(url.clone());
            }
            Client::from_conf(b.build())
        };
        let internal = client(settings.endpoint.as_ref());
        let public = client(
            settings
                .public_endpoint
                .as_ref()
                .or(settings.endpoint.as_ref()),
        );
        Self {
            internal,
            public,
            create_buckets: settings.create_buckets,
            filesystem_keys: settings.filesystem_keys,
            known: Mutex::new(HashSet::new()),
        }
    }

    /// Creates the bucket if this store creates buckets and has not seen it yet.
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StorageError> {
        if !self.create_buckets || self.known_bucket(bucket) {
            return Ok(());
        }
        match self.internal.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                match self.internal.create_bucket().bucket(bucket).send().await {
                    Ok(_) => tracing::info!(bucket, "created bucket"),
                    Err(e)
                        if e.as_service_error().is_some_and(|s| {
                            s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                        }) => {}
                    Err(e) => return Err(unavailable("create the bucket", e)),
                }
            }
            Err(e) => return Err(unavailable("check the bucket", e)),
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert(bucket.to_string());
        }
        Ok(())
    }

    fn known_bucket(&self, bucket: &str) -> bool {
        self.known.lock().is_ok_and(|k| k.contains(bucket))
    }
}

fn unavailable<E>(what: &str, e: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = match &e {
        SdkError::ServiceError(s) => format!(
            "HTTP {} {}{}",
            s.raw().status().as_u16(),
            s.err().code().unwrap_or("(no error code)"),
            s.err()
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        other => format!("{}", aws_sdk_s3::error::DisplayErrorContext(other)),
    };
    // The detail may name internal endpoints: it goes to the log, not to the caller.
    tracing::warn!(what, error = %detail, "object store call failed");
    StorageError::Unavailable(format!("the object store could not {what}"))
}

/// The longest key s3s-fs can keep in `bucket`: it writes metadata beside each object in a file
/// named `.bucket-<base64 bucket>.object-<base64 key>.metadata.json`, and a file name has at most
/// 255 bytes.
pub fn filesystem_max_key_bytes(bucket: &str) -> usize {
    const NAME_MAX: usize = 255;
    const FIXED: usize = ".bucket-".len() + ".object-".len() + ".metadata.json".len();
    let encoded = |n: usize| (4 * n).div_ceil(3);
    let budget = NAME_MAX.saturating_sub(FIXED + encoded(bucket.len()));
    (budget * 3 / 4).min(domain::storage::MAX_KEY_BYTES)
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn max_key_bytes(&self, bucket: &str) -> usize {
        if self.filesystem_keys {
            filesystem_max_key_bytes(bucket)
        } else {
            domain::storage::MAX_KEY_BYTES
        }
    }

    async fn presign(&self, request: PresignRequest) -> Result<Presigned, StorageError> {
        self.ensure_bucket(&request.bucket).await?;
        let config = PresigningConfig::builder()
            .start_time(SystemTime::from(request.start))
            .expires_in(Duration::from_secs(request.expires_in_seconds))
            .build()
            .map_err(|e| StorageError::Unavailable(format!("could not sign: {e}")))?;
        let signed = match request.method {
            FileMethod::Put => self
                .public
                .put_object()
                .bucket(&request.bucket)
                .key(request.key.as_str())
                .set_content_type(request.content_type.clone())
                // Signed: the store takes exactly this many bytes.
                .set_content_length(
                    request
                        .content_length
                        .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                )
                .presigned(config)
                .await
                .map_err(|e| unavailable("sign the URL", e)),
            FileMethod::Get => self
                .public
                .get_object()
                .bucket(&request.bucket)
                .key(request.key.as_str())
                .presigned(config)
                .await
                .map_err(|e| unavailable("sign the URL", e)),
        }?;
        let headers: BTreeMap<String, String> = signed
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Presigned {
            url: signed.uri().to_string(),
            headers,
        })
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<&str>,
        limit: u32,
    ) -> Result<ObjectPage, StorageError> {
        self.ensure_bucket(bucket).await?;
        let answer = self
            .internal
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .max_keys(limit.clamp(1, 1000) as i32)
            .set_continuation_token(continuation.map(str::to_string))
            .send()
            .await;
        let page = match answer {
            Ok(page) => page,
            Err(e)
                if continuation.is_some()
                    && e.raw_response().is_some_and(|r| r.status().as_u16() == 400) =>
            {
                return Err(StorageError::BadContinuation);
            }
            Err(e) => return Err(unavailable("list the bucket", e)),
        };
        let objects = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                })
            })
            .collect();
        Ok(ObjectPage {
            objects,
            continuation: page
                .next_continuation_token()
                .filter(|_| page.is_truncated().unwrap_or(false))
                .map(str::to_string),
        })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>, StorageError> {
        match self
            .internal
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(h.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            // A bucket that does not exist yet holds no objects.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(unavailable("read the object", e)),
        }
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.internal
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("delete the object", e))
    }
}
