//! Files: presigned URLs, listings and deletes, each checked by `domain::storage` and recorded.
//!
//! The object store is a port ([`ObjectStore`]); `gateways::s3` implements it with aws-sdk-s3,
//! against AWS, any S3-compatible endpoint, or the embedded store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::storage::{
    AccessDenied, ExpiryOutOfRange, FileAction, FileMethod, ObjectKey, authorize, expiry,
};
use domain::{ClusterId, DomainEvent, Email, FileAccessGranted, FileDeleted, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, LogError, Metadata, NewEvent, Position, StreamId};

/// What the object store was asked to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignRequest {
    pub bucket: String,
    pub key: ObjectKey,
    pub method: FileMethod,
    pub content_type: Option<String>,
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
    /// The object's size, or `None` when there is no such object.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<u64>, StorageError>;
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError>;
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(transparent)]
    Expiry(#[from] ExpiryOutOfRange),
    #[error("there is no object {key}; list your files to see what there is")]
    NotFound { key: String },
    #[error(transparent)]
    Store(#[from] StorageError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("could not encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The stream of one user's file events in one cluster: `files:<ws>:<cluster>:<email>`.
pub fn stream(workspace: &WorkspaceId, cluster: &ClusterId, user: &Email) -> StreamId {
    StreamId::new(format!("files:{workspace}:{cluster}:{user}"))
        .unwrap_or_else(|e| unreachable!("slugs and a checked email make a stream id: {e}"))
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
    let new = NewEvent {
        schema_version: event.schema_version(),
        ..NewEvent::new(event.event_type(), event.data()?)
    }
    .with_metadata(caller.metadata.clone());
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
}

/// Checks the caller may `method` the key, signs the URL, and records the grant. A refused
/// request signs and records nothing; a URL is handed out only once its grant is in the log.
pub async fn grant(
    log: &dyn EventLog,
    store: &dyn ObjectStore,
    caller: &FileCaller,
    request: GrantRequest,
    now: DateTime<Utc>,
) -> Result<Grant, FileError> {
    let GrantRequest {
        key,
        method,
        content_type,
        expires_in_seconds,
    } = request;
    authorize(&caller.email, caller.is_admin, &key, method.into())?;
    let (seconds, expires_at) = expiry(now, expires_in_seconds)?;
    let presigned = store
        .presign(PresignRequest {
            bucket: caller.bucket.clone(),
            key: key.clone(),
            method,
            content_type: content_type.clone(),
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
    });
    let position = record(log, caller, event).await?;
    Ok(Grant {
        presigned,
        expires_at,
        position,
    })
}

/// Deletes one object the caller may delete and records it. A missing object is `NotFound` and
/// records nothing. The delete happens before the event: if the append fails the caller is told
/// so and a retry (a delete is idempotent in S3) records it.
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
    let event = DomainEvent::FileDeleted(FileDeleted {
        workspace: caller.workspace.clone(),
        cluster_id: caller.cluster.clone(),
        bucket: caller.bucket.clone(),
        key,
        user: caller.email.clone(),
        size,
    });
    Ok((size, record(log, caller, event).await?))
}
