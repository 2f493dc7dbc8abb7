//! Files: presigned URLs, listings and deletes, each checked by `domain::storage` and recorded.
//!
//! The object store is a port ([`ObjectStore`]); `gateways::s3` implements it with aws-sdk-s3,
//! against AWS, any S3-compatible endpoint, or the embedded store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::storage::{
    AccessDenied, ExpiryOutOfRange, FileAction, FileMethod, ObjectKey, UploadLimits, UploadRefused,
    authorize, check_upload, expiry, quota_prefixes,
};
use domain::{ClusterId, DomainEvent, Email, FileAccessGranted, FileDeleted, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, LogError, Metadata, Position, StreamId};

/// What the object store was asked to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignRequest {
    pub bucket: String,
    pub key: ObjectKey,
    pub method: FileMethod,
    pub content_type: Option<String>,
    /// For uploads: the exact size, signed into the URL as `Content-Length`.
    pub content_length: Option<u64>,
    /// When the signature starts to count (the clock of the command).
    pub start: DateTime<Utc>,
    pub expires_in_seconds: u64,
}

/// A signed request the holder can make without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    pub url: String,
    /// Headers the request must carry exactly (they are signed).
    pub headers: BTreeMap<String, String>,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectPage {
    pub objects: Vec<ObjectInfo>,
    /// Pass back to get the next page; `None` on the last one.
    pub continuation: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The continuation token was not one the store issued.
    #[error("the continuation token is not valid; start the listing again without it")]
    BadContinuation,
    #[error("the object store could not be reached or refused the request: {0}")]
    Unavailable(String),
}

/// The cluster buckets, wherever they are.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Signs a request. No network call is needed, but the bucket may be created first when the
    /// store is configured to create buckets.
    async fn presign(&self, request: PresignRequest) -> Result<Presigned, StorageError>;
    /// Lists keys under `prefix`, at most `limit` (≤ 1000).
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<&str>,
        limit: u32,
    ) -> Result<ObjectPage, StorageError>;
    /// The longest key this store can keep in `bucket` (S3's limit is 1,024 bytes; a store on a
    /// filesystem may have a lower one).
    fn max_key_bytes(&self, bucket: &str) -> usize {
        let _ = bucket;
        domain::storage::MAX_KEY_BYTES
    }
    /// The object's size, or `None` when there is no such object.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>, StorageError>;
    /// The bytes the objects under `prefixes` take in `bucket` (for quotas).
    async fn usage(&self, bucket: &str, prefixes: &[String]) -> Result<u64, StorageError> {
        let mut total = 0u64;
        for prefix in prefixes {
            let mut continuation: Option<String> = None;
            loop {
                let page = self
                    .list(bucket, prefix, continuation.as_deref(), 1000)
                    .await?;
                total = page
                    .objects
                    .iter()
                    .fold(total, |t, o| t.saturating_add(o.size));
                match page.continuation {
                    Some(c) => continuation = Some(c),
                    None => break,
                }
            }
        }
        Ok(total)
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError>;
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(transparent)]
    Expiry(#[from] ExpiryOutOfRange),
    #[error(transparent)]
    Upload(#[from] UploadRefused),
    #[error("give the upload's size in bytes: it is signed into the URL")]
    SizeMissing,
    #[error("size only applies to uploads (PUT); leave it out for GET")]
    SizeNotForGet,
    #[error("there is no object {key}; list your files to see what there is")]
    NotFound { key: String },
    #[error(
        "the key is {bytes} bytes; this cluster's object store keeps keys of at most {max} bytes: use a shorter path"
    )]
    KeyTooLong { bytes: usize, max: usize },
    #[error(transparent)]
    Store(#[from] StorageError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Namespace of the stream ids of users whose email does not fit in one.
const LONG_EMAIL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6669_6c65_732d_6c6f_6e67_2d65_6d61_696c);

/// The stream of one user's file events in one cluster: `files:<ws>:<cluster>:<email>`, or
/// `files:<ws>:<cluster>:email-<uuid v5 of the email>` when that would pass the 200 characters a
/// stream id may have (emails may have 254).
pub fn stream(workspace: &WorkspaceId, cluster: &ClusterId, user: &Email) -> StreamId {
    StreamId::new(format!("files:{workspace}:{cluster}:{user}")).unwrap_or_else(|_| {
        let id = uuid::Uuid::new_v5(&LONG_EMAIL_NAMESPACE, user.as_str().as_bytes());
        StreamId::new(format!("files:{workspace}:{cluster}:email-{id}"))
            .unwrap_or_else(|e| unreachable!("two slugs and a uuid make a stream id: {e}"))
    })
}

/// Who asks, in which cluster and bucket.
#[derive(Debug, Clone)]
pub struct FileCaller {
    pub workspace: WorkspaceId,
    pub cluster: ClusterId,
    pub bucket: String,
    pub email: Email,
    pub is_admin: bool,
    pub metadata: Metadata,
}

/// A URL handed out.
#[derive(Debug, Clone)]
pub struct Grant {
    pub presigned: Presigned,
    pub expires_at: DateTime<Utc>,
    pub position: Position,
}

async fn record(
    log: &dyn EventLog,
    caller: &FileCaller,
    event: DomainEvent,
) -> Result<Position, FileError> {
    let new = crate::encode(&event, caller.metadata.clone())?;
    let stream = stream(&caller.workspace, &caller.cluster, &caller.email);
    let outcome = log.append(&stream, ExpectedVersion::Any, &[new]).await?;
    Ok(outcome.last_position)
}

/// What a caller asks a URL for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub key: ObjectKey,
    pub method: FileMethod,
    pub content_type: Option<String>,
    pub expires_in_seconds: Option<u64>,
    /// For uploads (required there): the exact size in bytes.
    pub size: Option<u64>,
}

/// Checks the caller may `method` the key, and for an upload its size against `limits` (the
/// largest upload, and the quota of the key's owner in this bucket, counting what their keys
/// take now less the object it replaces); signs the URL, with the size signed in as
/// `Content-Length`; and records the grant. A refused request signs and records nothing; a URL
/// is handed out only once its grant is in the log.
pub async fn grant(
    log: &dyn EventLog,
    store: &dyn ObjectStore,
    caller: &FileCaller,
    request: GrantRequest,
    limits: &UploadLimits,
    now: DateTime<Utc>,
) -> Result<Grant, FileError> {
    let GrantRequest {
        key,
        method,
        content_type,
        expires_in_seconds,
        size,
    } = request;
    authorize(&caller.email, caller.is_admin, &key, method.into())?;
    let (seconds, expires_at) = expiry(now, expires_in_seconds)?;
    let max = store.max_key_bytes(&caller.bucket);
    if key.as_str().len() > max {
        return Err(FileError::KeyTooLong {
            bytes: key.as_str().len(),
            max,
        });
    }
    let content_length = match (method, size) {
        (FileMethod::Get, None) => None,
        (FileMethod::Get, Some(_)) => return Err(FileError::SizeNotForGet),
        (FileMethod::Put, None) => return Err(FileError::SizeMissing),
        (FileMethod::Put, Some(size)) => {
            // The cheap check first: a too-large upload needs no listing.
            check_upload(limits, &key, size, 0, 0)?;
            if limits.quota_bytes.is_some() {
                let used = store.usage(&caller.bucket, &quota_prefixes(&key)).await?;
                let replaced = store.head(&caller.bucket, key.as_str()).await?.unwrap_or(0);
                check_upload(limits, &key, size, used, replaced)?;
            }
            Some(size)
        }
    };
    let presigned = store
        .presign(PresignRequest {
            bucket: caller.bucket.clone(),
            key: key.clone(),
            method,
            content_type: content_type.clone(),
            content_length,
            start: now,
            expires_in_seconds: seconds,
        })
        .await?;
    let event = DomainEvent::FileAccessGranted(FileAccessGranted {
        workspace: caller.workspace.clone(),
        cluster_id: caller.cluster.clone(),
        bucket: caller.bucket.clone(),
        key,
        method,
        user: caller.email.clone(),
        expires_at,
        content_type,
        size: content_length,
    });
    let position = record(log, caller, event).await?;
    Ok(Grant {
        presigned,
        expires_at,
        position,
    })
}

/// Deletes one object the caller may delete and records it. A missing object is `NotFound` and
/// records nothing. The delete happens before the event (a `FileDeleted` is a fact); the append is
/// tried three times, and if the log stays unreachable the delete is logged at ERROR with its key
/// and actor and the caller gets the log's error — the one way a delete can go unrecorded.
pub async fn delete(
    log: &dyn EventLog,
    store: &dyn ObjectStore,
    caller: &FileCaller,
    key: ObjectKey,
) -> Result<(u64, Position), FileError> {
    authorize(&caller.email, caller.is_admin, &key, FileAction::Delete)?;
    let size = store
        .head(&caller.bucket, key.as_str())
        .await?
        .ok_or_else(|| FileError::NotFound {
            key: key.to_string(),
        })?;
    store.delete(&caller.bucket, key.as_str()).await?;
    let deleted = key.to_string();
    let event = DomainEvent::FileDeleted(FileDeleted {
        workspace: caller.workspace.clone(),
        cluster_id: caller.cluster.clone(),
        bucket: caller.bucket.clone(),
        key,
        user: caller.email.clone(),
        size,
    });
    let mut attempt = 0;
    loop {
        match record(log, caller, event.clone()).await {
            Ok(position) => return Ok((size, position)),
            Err(FileError::Log(e)) if attempt < 2 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "recording a delete failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, key = %deleted, actor = %caller.email, "an object was deleted but the delete could not be recorded");
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_email_makes_a_stream_id() {
        let ws = WorkspaceId::new("default").unwrap();
        let cluster = ClusterId::new("local").unwrap();
        let short = Email::new("ada@lab.org").unwrap();
        assert_eq!(
            stream(&ws, &cluster, &short).as_str(),
            "files:default:local:ada@lab.org"
        );
        let long = Email::new(format!("{}@lab.org", "a".repeat(240))).unwrap();
        let id = stream(&ws, &cluster, &long);
        assert!(
            id.as_str().starts_with("files:default:local:email-"),
            "{}",
            id.as_str()
        );
        assert_eq!(id, stream(&ws, &cluster, &long), "stable");
    }
}
