//! `/v1/clusters`: register clusters (admins) and read them (everyone in the workspace).
//!
//! A caller only ever sees clusters of their own workspace; another workspace's cluster is a 404,
//! exactly like a cluster that does not exist, so ids do not leak.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use commands::CommandError;
use domain::cluster::{ClusterFields, Registration};
use domain::{ClusterId, ClusterRegistered, WorkspaceId};
use eventlog::Metadata;
use projections::views::clusters::{self, ClusterView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection, position_header};
use crate::json::ApiJson;
use crate::{ApiError, AppState};

/// Body of `POST /v1/clusters`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterClusterRequest {
    /// The cluster's id within the workspace: 1-63 of a-z 0-9 -, starting with a letter.
    #[schema(example = "gpu-east", pattern = "^[a-z][a-z0-9-]{0,62}$")]
    pub id: String,
    /// A display name, 1-100 characters.
    #[schema(example = "GPU cluster, us-east-1")]
    pub name: String,
    /// The cloud region the nodes run in.
    #[schema(example = "us-east-1", pattern = "^[a-z0-9-]{1,32}$")]
    pub region: String,
    /// The cluster's S3 bucket (3-63 of a-z 0-9 . -, no `..`), one the operator's `bucket_allow`
    /// lets clusters use and no other cluster uses.
    #[schema(
        example = "acme-gpu-east",
        min_length = 3,
        max_length = 63,
        pattern = "^[a-z0-9]((\\.?[a-z0-9-])*\\.?)?[a-z0-9]$"
    )]
    pub bucket: String,
    pub slurm: SlurmSettings,
}

/// How Clusterra reaches the cluster's slurmrestd. Tokens are not accepted here: they are
/// secrets, and this request becomes an event every auditor reads.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// `http://` or `https://` URL of slurmrestd, at most 2,048 characters.
    #[schema(
        example = "https://slurm.gpu-east.internal:6820",
        max_length = 2048,
        pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    pub url: String,
    /// Slurm user name sent as `X-SLURM-USER-NAME`.
    #[schema(example = "clusterra", pattern = "^[A-Za-z0-9._-]{1,32}$")]
    pub user: String,
    /// slurmrestd API version; only `v0.0.44` is supported.
    #[serde(default = "default_api_version")]
    #[schema(example = "v0.0.44", pattern = "^v0\\.0\\.44$")]
    pub api_version: String,
}

fn default_api_version() -> String {
    domain::cluster::SLURM_API_VERSION.into()
}

/// A cluster as users see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cluster {
    pub id: String,
    pub workspace: String,
    pub name: String,
    pub region: String,
    pub bucket: String,
    pub slurm: Option<SlurmSettings>,
    pub registered_by: String,
    pub registered_at: DateTime<Utc>,
}

impl From<ClusterView> for Cluster {
    fn from(v: ClusterView) -> Self {
        Cluster {
            id: v.cluster_id.to_string(),
            workspace: v.workspace.to_string(),
            name: v.name,
            region: v.region,
            bucket: v.bucket,
            slurm: v.slurm.map(|s| SlurmSettings {
                url: s.url,
                user: s.user,
                api_version: s.api_version,
            }),
            registered_by: v.registered_by,
            registered_at: v.registered_at,
        }
    }
}

/// Answer of `POST /v1/clusters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterRegisteredResponse {
    pub id: String,
    /// The log position this command produced; pass it as `X-Clusterra-Min-Position` to read it back.
    pub position: i64,
}

/// Answer of `GET /v1/clusters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterList {
    pub clusters: Vec<Cluster>,
}

/// Register a cluster in the caller's workspace (admins only).
#[utoipa::path(
    post,
    path = "/v1/clusters",
    tag = "clusters",
    request_body = RegisterClusterRequest,
    responses(
        (status = 201, description = "Registered; `X-Clusterra-Position` carries the log position", body = ClusterRegisteredResponse),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 403, description = "Not an admin", body = crate::error::ErrorBody),
        (status = 409, description = "A cluster with this id exists", body = crate::error::ErrorBody),
        (status = 415, description = "Not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "A field is invalid; `bucket_not_allowed` for a bucket outside the operator's bucket_allow list", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<RegisterClusterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_admin()?;
    let ClusterFields {
        id: cluster_id,
        name,
        region,
        bucket,
        slurm,
    } = Registration {
        id: &req.id,
        name: &req.name,
        region: &req.region,
        bucket: &req.bucket,
        slurm_url: &req.slurm.url,
        slurm_user: &req.slurm.user,
        slurm_api_version: &req.slurm.api_version,
    }
    .parse()?;
    if let Some(patterns) = &state.settings.bucket_allow
        && !domain::storage::bucket_allowed(patterns, caller.workspace.as_str(), &bucket)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bucket_not_allowed",
            format!(
                "bucket {bucket} is not one this server lets clusters use; ask an operator to add it to bucket_allow"
            ),
        )
        .with_field("bucket"));
    }
    bucket_is_free(
        &state,
        &bucket,
        &format!("{}/{cluster_id}", caller.workspace),
    )
    .await?;
    let event = ClusterRegistered {
        workspace: caller.workspace.clone(),
        cluster_id: cluster_id.clone(),
        name,
        region,
        bucket,
        registered_by: caller.email.clone(),
        slurm: Some(slurm),
    };
    let outcome =
        commands::clusters::register_cluster(state.store.log.as_ref(), event, metadata(&caller))
            .await
            .map_err(|e| {
                match e {
        CommandError::AlreadyExists { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "cluster_exists",
            format!(
                "a cluster with id {cluster_id} already exists in this workspace; pick another id"
            ),
        )
        .with_field("id"),
        other => ApiError::from(other),
    }
            })?;
    let mut headers = position_header(outcome.last_position);
    if let Ok(location) = format!("/v1/clusters/{cluster_id}").parse() {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(ClusterRegisteredResponse {
            id: cluster_id.to_string(),
            position: outcome.last_position,
        }),
    ))
}

/// The clusters of the caller's workspace.
#[utoipa::path(
    get,
    path = "/v1/clusters",
    tag = "clusters",
    params(("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible")),
    responses(
        (status = 200, description = "The workspace's clusters", body = ClusterList),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
) -> Result<(HeaderMap, Json<ClusterList>), ApiError> {
    let headers = await_projection(&state, clusters::NAME, min).await;
    let out = clusters::list(state.store.read.as_ref(), &caller.workspace)
        .await?
        .into_iter()
        .map(Cluster::from)
        .collect();
    Ok((headers, Json(ClusterList { clusters: out })))
}

/// One cluster of the caller's workspace.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}",
    tag = "clusters",
    params(
        ("id" = String, Path, description = "Cluster id"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible"),
    ),
    responses(
        (status = 200, description = "The cluster", body = Cluster),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such cluster in your workspace", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(id): Path<String>,
) -> Result<(HeaderMap, Json<Cluster>), ApiError> {
    let headers = await_projection(&state, clusters::NAME, min).await;
    let (_, view) = visible_cluster(&state, &caller, &id).await?;
    Ok((headers, Json(Cluster::from(view))))
}

/// The cluster `id` of the caller's workspace; 404 `cluster_not_found` for a malformed id or a
/// cluster of another workspace, alike.
pub(crate) async fn visible_cluster(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(ClusterId, ClusterView), ApiError> {
    let id = ClusterId::new(id).map_err(|_| crate::jobs::cluster_not_found())?;
    if let Some(view) = state.cluster_cache.get(&caller.workspace, &id) {
        return Ok((id, view));
    }
    let view = clusters::get(state.store.read.as_ref(), &caller.workspace, &id)
        .await?
        .ok_or_else(crate::jobs::cluster_not_found)?;
    state.cluster_cache.put(&caller.workspace, &id, &view);
    Ok((id, view))
}

/// Refuses a bucket another cluster (of any workspace) already has (`this`, `<ws>/<id>`, is the
/// cluster being registered: a second registration of it gets `cluster_exists` instead): a bucket holds its
/// cluster's users' files, and two clusters sharing one would share them. (Two registrations
/// racing for one bucket can both pass; registrations are rare admin actions.)
async fn bucket_is_free(state: &AppState, bucket: &str, this: &str) -> Result<(), ApiError> {
    if clusters::bucket_taken(state.store.read.as_ref(), bucket, this).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "bucket_in_use",
            format!("bucket {bucket} belongs to another cluster; give this cluster its own bucket"),
        )
        .with_field("bucket"));
    }
    Ok(())
}

/// Cluster views already read, so that the routes under `/v1/clusters/{id}/…` do not read the
/// projection on every request. Sound because a registered cluster never changes: the only
/// cluster event is `ClusterRegistered`. Only clusters that exist are kept (a cluster registered
/// after a miss is found by the next read). When clusters can be changed or removed, entries must
/// be dropped as those events are projected.
#[derive(Default)]
pub struct ClusterCache {
    views: std::sync::RwLock<std::collections::HashMap<(WorkspaceId, ClusterId), ClusterView>>,
}

impl ClusterCache {
    fn get(&self, workspace: &WorkspaceId, id: &ClusterId) -> Option<ClusterView> {
        let views = self.views.read().ok()?;
        views.get(&(workspace.clone(), id.clone())).cloned()
    }

    fn put(&self, workspace: &WorkspaceId, id: &ClusterId, view: &ClusterView) {
        if let Ok(mut views) = self.views.write() {
            views.insert((workspace.clone(), id.clone()), view.clone());
        }
    }
}

/// The envelope metadata of a command made by `caller` over the API.
pub(crate) fn metadata(caller: &Caller) -> Metadata {
    Metadata {
        actor: Some(caller.email.to_string()),
        role: Some(caller.role.as_str().to_string()),
        via: Some(caller.via.into()),
        correlation_id: Some(uuid::Uuid::now_v7()),
        ..Metadata::default()
    }
}
