//! `GET /v1/clusters/{id}/nodesets`: every node set of the catalog with the count the autoscaler
//! last decided, the nodes ready and starting (from the node events), and how many nodes the
//! running jobs hold.

use axum::Json;
use axum::extract::{Path, State};
use commands::scaling::{ScalingJob, desired_counts};
use domain::scaling::{PendingSlice, plan};
use projections::views::jobs;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// One node set.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeSetView {
    #[schema(example = "compute")]
    pub family: String,
    #[schema(example = "small")]
    pub size: String,
    #[schema(example = "c7g.large")]
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_gib: u32,
    /// What jobs can use of a node's memory (the system reserve taken off).
    pub allocatable_mib: u64,
    /// USD per node-hour, as a decimal string (exact).
    #[schema(example = "0.0725")]
    pub hourly_usd: String,
    /// The count the autoscaler last decided (`ScaleDecisionMade`).
    pub desired: u32,
    /// Nodes that the running jobs hold: the distinct nodes they run on, by name (the local
    /// executor's names start with their set); jobs on nodes not named so are placed on their
    /// own set (first-fit of their shapes).
    pub busy: u32,
    /// Nodes up and taking jobs (`NodeReady`, not terminated).
    pub ready: u32,
    /// Nodes launched and still in their cold start.
    pub starting: u32,
}

/// Answer of `GET /v1/clusters/{id}/nodesets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeSetList {
    pub nodesets: Vec<NodeSetView>,
}

/// `GET /v1/clusters/{id}/nodesets`
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/nodesets",
    tag = "clusters",
    params(("id" = String, Path, description = "Cluster id")),
    responses(
        (status = 200, description = "Every node set of the catalog", body = NodeSetList),
        (status = 404, description = "No such cluster", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NodeSetList>, ApiError> {
    let (cluster, _) = crate::clusters::visible_cluster(&state, &caller, &id).await?;
    let stream = commands::scaling::stream(&caller.workspace, &cluster);
    let desired = desired_counts(state.store.log.as_ref(), &stream)
        .await
        .map_err(|e| ApiError::internal(format!("could not read the scaling decisions: {e}")))?
        .desired;
    let nodes = commands::fleet::node_counts(state.store.log.as_ref(), &caller.workspace, &cluster)
        .await
        .map_err(|e| ApiError::internal(format!("could not read the node events: {e}")))?;
    let running: Vec<ScalingJob> =
        jobs::of_cluster(state.store.read.as_ref(), &caller.workspace, &cluster)
            .await?
            .into_iter()
            .filter(|v| v.state == domain::job::JobState::Running)
            .map(|v| ScalingJob {
                job_id: v.job_id,
                running: true,
                shape: v.shape,
                nodes: v.node,
            })
            .collect();
    // Nodes named `<set>-…` are counted once each, by their set; the rest are planned.
    let mut named: std::collections::BTreeMap<
        domain::scaling::NodeSet,
        std::collections::BTreeSet<&str>,
    > = std::collections::BTreeMap::new();
    let mut unnamed = Vec::new();
    for j in &running {
        let sets: Option<Vec<(domain::scaling::NodeSet, &str)>> = j
            .nodes
            .as_deref()
            .map(|names| {
                names
                    .split(',')
                    .map(|n| node_set_of(n).map(|s| (s, n)))
                    .collect()
            })
            .unwrap_or(None);
        match sets {
            Some(sets) if !sets.is_empty() => {
                for (s, n) in sets {
                    named.entry(s).or_default().insert(n);
                }
            }
            _ => unnamed.push(j),
        }
    }
    // Running jobs come in few shapes: each is placed once.
    let mut placed = std::collections::HashMap::new();
    let slices: Vec<PendingSlice> = unnamed
        .iter()
        .flat_map(|j| {
            let (demand, nodes) = *placed.entry(j.shape).or_insert_with(|| {
                domain::placement::of_shape(
                    &state.scaling.catalog,
                    &j.shape,
                    state.scaling.default_mib_per_cpu,
                )
                .map_or_else(
                    |e| (e.demand, j.shape.nodes.max(1)),
                    |p| (p.demand, p.nodes),
                )
            });
            (0..nodes).map(move |_| PendingSlice {
                job_id: j.job_id,
                demand,
                running: true,
            })
        })
        .collect();
    let (busy, _) = plan(&state.scaling.catalog, &[], &slices);
    let nodesets = state
        .scaling
        .catalog
        .shapes()
        .map(|s| {
            let set = domain::scaling::NodeSet {
                family: s.family,
                size: s.size,
            };
            NodeSetView {
                family: s.family.as_str().to_string(),
                size: s.size.as_str().to_string(),
                instance_type: s.instance_type.clone(),
                vcpus: s.vcpus,
                memory_gib: s.memory_gib,
                allocatable_mib: s.allocatable_mib,
                hourly_usd: dollars(s.hourly),
                desired: desired.get(&set).map_or(0, |d| d.desired),
                busy: busy.get(&set).map_or(0, |n| n.nodes)
                    + named
                        .get(&set)
                        .map_or(0, |n| u32::try_from(n.len()).unwrap_or(u32::MAX)),
                ready: nodes.get(&set).map_or(0, |n| n.0),
                starting: nodes.get(&set).map_or(0, |n| n.1),
            }
        })
        .collect();
    Ok(Json(NodeSetList { nodesets }))
}

/// The node set a node named `<family>-<size>-…` belongs to (the local executor's names).
fn node_set_of(name: &str) -> Option<domain::scaling::NodeSet> {
    let mut parts = name.splitn(3, '-');
    let (family, size) = (parts.next()?, parts.next()?);
    parts.next()?;
    domain::scaling::NodeSet::parse(&format!("{family}-{size}"))
}

/// `0.0725` from 72,500 micro-USD.
fn dollars(m: domain::MicroUsd) -> String {
    let text = m.decimal();
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The node-shape catalog and the memory assumed per vCPU.
pub struct Scaling {
    pub catalog: std::sync::Arc<domain::scaling::Catalog>,
    pub default_mib_per_cpu: u64,
    /// Whether this replica leads the poll cycle now.
    pub leading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The scaler the poll cycle runs (its last plans and node folds answer job estimates).
    pub scaler: Option<std::sync::Arc<commands::scaling::Scaler>>,
    /// A new node's cold start, and the poll cycle's interval: what a job waits for a node.
    pub cold_start: std::time::Duration,
    pub poll_interval: std::time::Duration,
}
