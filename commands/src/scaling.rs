//! The scaling step of the poll cycle: from the cluster's open jobs to `ScaleDecisionMade`
//! events, one per node set whose desired count changes.
//!
//! The current desired counts are the fold of the cluster's `scaling:<ws>:<cluster>` stream, and
//! the decisions are appended at exactly the version that was read: when two replicas decide at
//! once, one append wins and the other is a version conflict that decides nothing.
//! [`sync_replicas`] then copies the desired counts to the replica store, where the edge agent
//! ([`crate::fleet`]) reads them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use domain::scaling::{
    Catalog, Demand, MAX_DRIVING_JOBS, Need, NodeSet, PendingRun, PendingSlice, SetState, WarmNode,
    decide, mark_full, plan_with_runs,
};
use domain::submit::JobShape;
use domain::{ClusterId, DomainEvent, ScaleDecisionMade, WorkspaceId};
use eventlog::{EventLog, ExpectedVersion, LogError, Position, StreamId};

use crate::replicas::{ReplicaError, ReplicaStore, ReplicaWrite, Replicas};

/// A job the cycle sizes nodes for.
#[derive(Debug, Clone)]
pub struct ScalingJob {
    pub job_id: u64,
    /// Running (holds its nodes) or pending (needs a place).
    pub running: bool,
    pub shape: JobShape,
    /// The nodes a running job runs on, as Slurm names them (comma-separated), if known.
    pub nodes: Option<String>,
}

/// A cluster's unfinished jobs as placement reads them: the pending ones by shape (a queue holds
/// many jobs of few shapes, and placing a shape's one-node jobs costs steps that grow with the
/// nodes they fill), the others one by one.
pub trait Sizing {
    /// Calls `each` with every shape of pending jobs and their ids, ascending (at least one).
    fn pending(&self, each: &mut dyn FnMut(&JobShape, &mut dyn ExactSizeIterator<Item = u64>));
    /// Calls `each` with every unfinished job that is not pending (running and the like).
    fn others(&self, each: &mut dyn FnMut(&ScalingJob));
}

/// A list of jobs as a [`Sizing`] (tests, and callers that keep no index).
impl Sizing for &[ScalingJob] {
    fn pending(&self, each: &mut dyn FnMut(&JobShape, &mut dyn ExactSizeIterator<Item = u64>)) {
        let mut by_shape: BTreeMap<JobShape, Vec<u64>> = BTreeMap::new();
        for job in self.iter().filter(|j| !j.running) {
            by_shape.entry(job.shape).or_default().push(job.job_id);
        }
        for (shape, mut ids) in by_shape {
            ids.sort_unstable();
            each(&shape, &mut ids.into_iter());
        }
    }

    fn others(&self, each: &mut dyn FnMut(&ScalingJob)) {
        self.iter().filter(|j| j.running).for_each(each);
    }
}

/// The stream of a cluster's scaling decisions.
pub fn stream(workspace: &WorkspaceId, cluster: &ClusterId) -> StreamId {
    StreamId::new(format!("scaling:{workspace}:{cluster}"))
        .unwrap_or_else(|e| unreachable!("slugs make a stream id: {e}"))
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("stored event unreadable: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("could not read the node events: {0}")]
    Nodes(#[source] crate::fleet::AgentError),
}

type SetKey = (WorkspaceId, ClusterId, NodeSet);

/// Decides node counts, cycle after cycle.
pub struct Scaler {
    catalog: Arc<Catalog>,
    default_mib_per_cpu: u64,
    idle_window: Duration,
    /// When this process started deciding: the idle window of a set it has not seen busy counts
    /// from here.
    started: Mutex<DateTime<Utc>>,
    /// When each node set last had work, as this process saw it (since it started).
    last_busy: Mutex<BTreeMap<SetKey, DateTime<Utc>>>,
    /// Each scaling stream's fold so far, so a cycle reads only the decisions after it.
    folded: Mutex<BTreeMap<String, Folded>>,
    /// Each node stream's fold so far.
    nodes: Mutex<BTreeMap<String, crate::fleet::LiveNodes>>,
    /// Jobs over these are not planned (the poll cycle fails them); desired counts are clamped
    /// to their `max_nodes_per_set`.
    limits: Option<crate::jobs::ClusterLimits>,
    /// Each cluster's last plan, with the job generation and node-stream version it was made
    /// from: while neither moves, the plan stands and the placement is not run again.
    plans: Mutex<BTreeMap<(WorkspaceId, ClusterId), Plan>>,
}

/// A plan kept between cycles.
#[derive(Clone)]
struct Plan {
    generation: u64,
    nodes_version: i64,
    needs: Arc<BTreeMap<NodeSet, Need>>,
}

/// A node set as a new job would find it ([`Scaler::outlook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    /// Nodes of the set up and taking jobs.
    pub ready: u32,
    /// Nodes of the set launched and still in their cold start.
    pub starting: u32,
    /// What the last plan put on the set; `None` when this process has made none.
    pub planned: Option<Planned>,
}

/// What a plan put on one node set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Pending jobs placed on the set.
    pub pending_jobs: usize,
    /// Nodes up or starting that hold running or placed jobs.
    pub holding: u32,
    /// The set needs as many nodes as the cluster allows it (`max_nodes_per_set`): more jobs
    /// wait for running ones to end, not for a node to start.
    pub capped: bool,
}

/// A scaling stream folded: each node set's desired count, the log position of the decision
/// that set it, and the stream's version.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    pub desired: BTreeMap<NodeSet, SetState>,
    pub decided_at: BTreeMap<NodeSet, Position>,
    pub version: i64,
}

impl Scaler {
    pub fn new(
        catalog: Arc<Catalog>,
        default_mib_per_cpu: u64,
        idle_window: Duration,
        started: DateTime<Utc>,
    ) -> Self {
        Self {
            catalog,
            default_mib_per_cpu,
            idle_window,
            started: Mutex::new(started),
            last_busy: Mutex::new(BTreeMap::new()),
            folded: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(BTreeMap::new()),
            limits: None,
            plans: Mutex::new(BTreeMap::new()),
        }
    }

    /// Plans only jobs within their cluster's limits and clamps desired counts per node set.
    pub fn with_limits(mut self, limits: crate::jobs::ClusterLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// This process has just started deciding (it became the leader): sets it has not seen busy
    /// get a full idle window from now, not from the process's start.
    pub fn lead_from(&self, now: DateTime<Utc>) {
        if let Ok(mut s) = self.started.lock() {
            *s = now;
        }
    }

    /// This process stopped deciding: its plans are no longer kept current, so none is kept.
    pub fn stop_leading(&self) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.clear();
        }
    }

    /// One cycle for one cluster; returns the decisions appended (none when nothing changed or
    /// another replica decided first).
    pub async fn cycle(
        &self,
        log: &dyn EventLog,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        jobs: &[ScalingJob],
        now: DateTime<Utc>,
    ) -> Result<Vec<ScaleDecisionMade>, ScaleError> {
        self.cycle_with(log, workspace, cluster, None, |each| each(&jobs), now)
            .await
    }

    /// [`Self::cycle`] for a caller that numbers the states of the cluster's jobs
    /// (`generation`): the jobs are asked for (`jobs` calls the function it is given with a
    /// [`Sizing`] of them, from wherever the caller keeps them: no list is made) and placed only
    /// when the generation or the cluster's nodes moved since the last plan; otherwise the last plan is
    /// used, and the cycle costs the idle-window rule alone. `None` plans every time.
    pub async fn cycle_with(
        &self,
        log: &dyn EventLog,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        generation: Option<u64>,
        jobs: impl FnOnce(&mut dyn FnMut(&dyn Sizing)),
        now: DateTime<Utc>,
    ) -> Result<Vec<ScaleDecisionMade>, ScaleError> {
        let started = std::time::Instant::now();
        let stream = stream(workspace, cluster);
        let Folded {
            desired: mut current,
            version,
            ..
        } = self.current(log, &stream).await?;
        let (live, nodes_version) = self.live_nodes(log, workspace, cluster).await?;
        let read = started.elapsed();
        let key = (workspace.clone(), cluster.clone());
        let kept = generation.and_then(|g| {
            let plans = self.plans.lock().ok()?;
            let plan = plans.get(&key)?;
            (plan.generation == g && plan.nodes_version == nodes_version)
                .then(|| plan.needs.clone())
        });
        let kept_none = kept.is_none();
        let needs = match kept {
            Some(needs) => needs,
            None => {
                let place = || Arc::new(self.place(workspace, cluster, &live, jobs));
                // Placement is CPU work over every pending job (tens of ms at 100,000): on a
                // multi-thread runtime its worker hands its other tasks (requests) over first.
                let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
                let needs = match flavor {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(place)
                    }
                    _ => place(),
                };
                if let (Some(g), Ok(mut plans)) = (generation, self.plans.lock()) {
                    plans.insert(
                        key,
                        Plan {
                            generation: g,
                            nodes_version,
                            needs: needs.clone(),
                        },
                    );
                }
                needs
            }
        };
        let placed = started.elapsed();
        let decided = self
            .decide_from(
                &stream,
                workspace,
                cluster,
                &mut current,
                version,
                &needs,
                now,
                log,
            )
            .await;
        tracing::debug!(
            %cluster,
            planned = kept_none,
            read_ms = read.as_secs_f64() * 1e3,
            place_ms = (placed - read).as_secs_f64() * 1e3,
            decide_ms = (started.elapsed() - placed).as_secs_f64() * 1e3,
            "scaling step"
        );
        decided
    }

    /// Where the pending jobs go: each node set's need, with only pending jobs named in it.
    fn place(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        live: &BTreeMap<String, (NodeSet, bool)>,
        jobs: impl FnOnce(&mut dyn FnMut(&dyn Sizing)),
    ) -> BTreeMap<NodeSet, Need> {
        // The cluster's nodes (from the node events), with what their running jobs leave free:
        // pending jobs are placed onto them first. Running jobs on nodes the events do not name
        // (a Slurm cluster without an edge agent here) hold places of their own in the plan.
        let mut warm: BTreeMap<&str, WarmNode> = BTreeMap::new();
        for (name, (set, _ready)) in live {
            if let Some(shape) = self.catalog.shape(*set) {
                warm.insert(
                    name.as_str(),
                    WarmNode {
                        name: name.clone(),
                        set: *set,
                        free_cpus: shape.vcpus,
                        free_mib: shape.allocatable_mib,
                        busy: false,
                    },
                );
            }
        }
        let limits = self.limits.as_ref().map(|l| l.of(workspace, cluster));
        // Only jobs of several nodes (and those beside them) and running ones on unnamed
        // nodes come as slices: one-node pending jobs come as runs.
        let mut slices: Vec<PendingSlice> = Vec::new();
        let mut runs: Vec<PendingRun> = Vec::new();
        // Queues hold few distinct shapes: each is placed once per cycle, and a job shaped like
        // the one before it is not even looked up.
        let mut placed = std::collections::HashMap::new();
        let mut last = None;
        let mut place_shape = |shape: &JobShape| -> (Demand, u32) {
            let key = (shape.cpus, shape.memory_mib, shape.nodes, shape.tasks);
            match last {
                Some((k, placement)) if k == key => placement,
                _ => {
                    let placement = *placed.entry(key).or_insert_with(|| {
                        domain::placement::of_shape(&self.catalog, shape, self.default_mib_per_cpu)
                            .map_or_else(
                                // No shape holds it: the planner strands it (as before).
                                |e| (e.demand, shape.nodes.max(1)),
                                |p| (p.demand, p.nodes),
                            )
                    });
                    last = Some((key, placement));
                    placement
                }
            }
        };
        // A job over the limits is never planned: it could ask for millions of nodes.
        let allowed = |shape: &JobShape| limits.is_none_or(|l| l.allows(shape));
        jobs(&mut |sizing| {
            // Demands some job of several slices has: one-slice jobs of those go as slices too,
            // so the jobs of one demand keep their order (by id) among them.
            let mut wide: std::collections::HashSet<Demand> = std::collections::HashSet::new();
            sizing.others(&mut |job| {
                if !allowed(&job.shape) {
                    return;
                }
                let (demand, nodes) = place_shape(&job.shape);
                let on: Vec<&str> = job
                    .nodes
                    .as_deref()
                    .map(|n| n.split(',').filter(|n| warm.contains_key(n)).collect())
                    .unwrap_or_default();
                if !on.is_empty() {
                    for name in on {
                        if let Some(node) = warm.get_mut(name) {
                            node.free_cpus = node.free_cpus.saturating_sub(demand.cpus);
                            node.free_mib = node.free_mib.saturating_sub(demand.memory_mib);
                            node.busy = true;
                        }
                    }
                    return;
                }
                // Running on nodes the events do not name: it holds places of its own.
                if nodes > 1 {
                    wide.insert(demand);
                }
                for _ in 0..nodes {
                    slices.push(PendingSlice {
                        job_id: job.job_id,
                        demand,
                        running: true,
                    });
                }
            });
            sizing.pending(&mut |shape, _| {
                if allowed(shape) {
                    let (demand, nodes) = place_shape(shape);
                    if nodes > 1 {
                        wide.insert(demand);
                    }
                }
            });
            sizing.pending(&mut |shape, ids| {
                if !allowed(shape) {
                    return;
                }
                let (demand, nodes) = place_shape(shape);
                if nodes > 1 || wide.contains(&demand) {
                    for id in ids {
                        for _ in 0..nodes {
                            slices.push(PendingSlice::pending(id, demand));
                        }
                    }
                } else {
                    runs.push(PendingRun {
                        demand,
                        count: ids.len(),
                        first: ids.take(MAX_DRIVING_JOBS).collect(),
                    });
                }
            });
        });
        let warm: Vec<WarmNode> = warm.into_values().collect();
        let (mut needs, _stranded) = plan_with_runs(&self.catalog, &warm, &slices, &runs);
        if let Some(l) = limits {
            l.clamp(&mut needs);
        }
        needs
    }

    /// Marks busy sets, applies the idle window and appends the decisions at `version`.
    #[allow(clippy::too_many_arguments)]
    async fn decide_from(
        &self,
        stream: &StreamId,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        current: &mut BTreeMap<NodeSet, SetState>,
        version: i64,
        needs: &BTreeMap<NodeSet, Need>,
        now: DateTime<Utc>,
        log: &dyn EventLog,
    ) -> Result<Vec<ScaleDecisionMade>, ScaleError> {
        let started = self.started.lock().map_or(now, |s| *s);
        if let Ok(mut busy) = self.last_busy.lock() {
            let key = |set: NodeSet| (workspace.clone(), cluster.clone(), set);
            for set in needs.keys() {
                current.entry(*set).or_default();
            }
            for (set, state) in current.iter_mut() {
                state.last_busy = Some(busy.get(&key(*set)).copied().unwrap_or(started));
            }
            // The rule domain::simulate runs too: busy while the work fills the nodes.
            mark_full(current, needs, now);
            for (set, state) in current.iter() {
                if state.last_busy == Some(now) {
                    busy.insert(key(*set), now);
                }
            }
        }
        let decisions = decide(current, needs, now, self.idle_window);
        if decisions.is_empty() {
            return Ok(Vec::new());
        }
        let events: Vec<ScaleDecisionMade> = decisions
            .into_iter()
            .map(|d| ScaleDecisionMade {
                workspace: workspace.clone(),
                cluster_id: cluster.clone(),
                node_set: d.set,
                instance_type: self
                    .catalog
                    .shape(d.set)
                    .map(|s| s.instance_type.clone())
                    .unwrap_or_default(),
                from: d.from,
                to: d.to,
                jobs: d.jobs,
                reason: d.reason,
            })
            .collect();
        let mut batch = Vec::with_capacity(events.len());
        for e in &events {
            batch.push(crate::encode(
                &DomainEvent::ScaleDecisionMade(e.clone()),
                crate::system_metadata("poll"),
            )?);
        }
        match log
            .append(stream, ExpectedVersion::Exact(version), &batch)
            .await
        {
            Ok(_) => Ok(events),
            // Another replica decided from the same state first.
            Err(LogError::VersionConflict { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Brings the replica store in step with the log: every node set whose latest decision is newer
    /// than the stored item is written, conditional on the version read. Idempotent: run it every
    /// cycle, and a crash between a decision and its write is repaired by the next one. A stored
    /// item from a newer decision (another leader got there first) is left alone. Returns how many
    /// items were written.
    pub async fn sync_replicas(
        &self,
        log: &dyn EventLog,
        replicas: &dyn ReplicaStore,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        now: DateTime<Utc>,
    ) -> Result<usize, SyncError> {
        let folded = self.current(log, &stream(workspace, cluster)).await?;
        let stored: BTreeMap<NodeSet, Replicas> = replicas
            .list(workspace, cluster)
            .await?
            .into_iter()
            .map(|r| (r.node_set, r))
            .collect();
        let mut written = 0;
        for (set, state) in &folded.desired {
            let decided_at = folded.decided_at.get(set).copied().unwrap_or(0);
            let mut current = stored.get(set).cloned();
            // At most a few rounds: each conflict hands back the newer item.
            for _ in 0..3 {
                if current.as_ref().is_some_and(|c| c.decided_at >= decided_at) {
                    break;
                }
                let write = ReplicaWrite {
                    workspace: workspace.clone(),
                    cluster_id: cluster.clone(),
                    node_set: *set,
                    desired: state.desired,
                    expected_version: current.as_ref().map_or(0, |c| c.version),
                    decided_at,
                    now,
                };
                match replicas.put(&write).await {
                    Ok(_) => {
                        written += 1;
                        break;
                    }
                    Err(ReplicaError::Conflict { current: newer }) => current = newer.map(|b| *b),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(written)
    }

    /// The cluster's live nodes, read on from where the last cycle left them, and the version
    /// of their stream.
    async fn live_nodes(
        &self,
        log: &dyn EventLog,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
    ) -> Result<(BTreeMap<String, (NodeSet, bool)>, i64), ScaleError> {
        let stream = crate::fleet::stream(workspace, cluster);
        let known = read_on_cached(&self.nodes, &stream, |mut known| async {
            known
                .read_on(log, &stream)
                .await
                .map_err(ScaleError::Nodes)?;
            Ok(known)
        })
        .await?;
        Ok((known.nodes, known.version))
    }

    /// What a new job of `set` would find in a cluster: its nodes of that set as the log has them
    /// (read on from the last call), and what this process's last plan of the cluster placed
    /// there (`None` when it has not planned the cluster: it does not lead the poll cycle).
    /// Costs the node events since the last call and one look at the kept plan: never the queue.
    pub async fn outlook(
        &self,
        log: &dyn EventLog,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        set: NodeSet,
    ) -> Result<Outlook, ScaleError> {
        let plan = self.plans.lock().ok().and_then(|plans| {
            plans
                .get(&(workspace.clone(), cluster.clone()))
                .map(|p| p.needs.get(&set).cloned().unwrap_or_default())
        });
        let Some(need) = plan else {
            // No plan to read: the nodes alone cannot say whether one has room.
            return Ok(Outlook {
                ready: 0,
                starting: 0,
                planned: None,
            });
        };
        let (live, _) = self.live_nodes(log, workspace, cluster).await?;
        let (mut ready, mut starting) = (0, 0);
        for (s, is_ready) in live.values() {
            if *s == set {
                if *is_ready {
                    ready += 1;
                } else {
                    starting += 1;
                }
            }
        }
        let most = self
            .limits
            .as_ref()
            .map(|l| l.of(workspace, cluster).max_nodes_per_set);
        Ok(Outlook {
            ready,
            starting,
            planned: Some(Planned {
                pending_jobs: need.placed,
                holding: need.nodes.saturating_sub(need.new_nodes),
                capped: most.is_some_and(|m| need.nodes >= m),
            }),
        })
    }

    /// The stream's fold, read on from where the last cycle left it.
    async fn current(&self, log: &dyn EventLog, stream: &StreamId) -> Result<Folded, ScaleError> {
        read_on_cached(&self.folded, stream, |known| fold_from(log, stream, known)).await
    }
}

/// A stream's fold kept between cycles: `fold` reads on from the kept state, and the result is
/// kept for the next call.
async fn read_on_cached<T, F, Fut>(
    cache: &Mutex<BTreeMap<String, T>>,
    stream: &StreamId,
    fold: F,
) -> Result<T, ScaleError>
where
    T: Clone + Default,
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Result<T, ScaleError>>,
{
    let known = cache
        .lock()
        .ok()
        .and_then(|c| c.get(stream.as_str()).cloned())
        .unwrap_or_default();
    let folded = fold(known).await?;
    if let Ok(mut c) = cache.lock() {
        c.insert(stream.as_str().to_string(), folded.clone());
    }
    Ok(folded)
}

/// The desired count of every node set decided so far in `stream`, and the stream's version.
pub async fn desired_counts(log: &dyn EventLog, stream: &StreamId) -> Result<Folded, ScaleError> {
    fold_from(log, stream, Folded::default()).await
}

/// Folds the decisions after `folded.version` into it.
async fn fold_from(
    log: &dyn EventLog,
    stream: &StreamId,
    mut folded: Folded,
) -> Result<Folded, ScaleError> {
    folded.version = crate::fold_stream(log, stream, folded.version, 1_000, |e, d| {
        if let Some(DomainEvent::ScaleDecisionMade(d)) = d {
            folded.desired.insert(
                d.node_set,
                SetState {
                    desired: d.to,
                    last_busy: None,
                },
            );
            folded.decided_at.insert(d.node_set, e.position);
        }
        Ok::<_, ScaleError>(())
    })
    .await?;
    Ok(folded)
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Scale(#[from] ScaleError),
    #[error(transparent)]
    Replicas(#[from] ReplicaError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::scaling::plan;

    fn shape(cpus: u32, nodes: u32) -> JobShape {
        JobShape {
            cpus,
            memory_mib: None,
            nodes,
            time_limit_minutes: Some(60),
            gpus: 0,
            tasks: None,
        }
    }

    #[test]
    fn placement_by_shape_gives_the_plan_of_every_job_as_a_slice() {
        let catalog = Arc::new(
            Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512)
                .unwrap_or_else(|e| panic!("catalog: {e}")),
        );
        let scaler = Scaler::new(catalog.clone(), 2016, Duration::minutes(5), Utc::now());
        let job = |job_id: u64, shape: JobShape, running: bool| ScalingJob {
            job_id,
            running,
            shape,
            // Running on a node no event names: it holds room of its own in the plan.
            nodes: running.then(|| "ghost".to_string()),
        };
        let mut jobs = Vec::new();
        // 300 one-node jobs of one vCPU (a run); one-node jobs of two vCPUs and two-node jobs
        // of four (two per node: the same demand per node), their ids alternating, so the
        // one-node ones must keep their order among the others; three running jobs.
        for id in 1..=300 {
            jobs.push(job(id, shape(1, 1), false));
        }
        for id in 301..=360 {
            let s = if id % 2 == 0 {
                shape(2, 1)
            } else {
                shape(4, 2)
            };
            jobs.push(job(id, s, false));
        }
        for id in 361..=363 {
            jobs.push(job(id, shape(1, 1), true));
        }
        let ws = WorkspaceId::new("ws").unwrap_or_else(|_| unreachable!());
        let cl = ClusterId::new("c1").unwrap_or_else(|_| unreachable!());
        let needs = scaler.place(&ws, &cl, &BTreeMap::new(), |each| each(&jobs.as_slice()));
        // Every job as slices, by the same placement.
        let mut all = Vec::new();
        for j in &jobs {
            let p = domain::placement::of_shape(&catalog, &j.shape, 2016)
                .unwrap_or_else(|e| panic!("{e:?}"));
            for _ in 0..p.nodes {
                all.push(PendingSlice {
                    job_id: j.job_id,
                    demand: p.demand,
                    running: j.running,
                });
            }
        }
        let two = domain::placement::of_shape(&catalog, &shape(2, 1), 2016).map(|p| p.demand);
        let wide = domain::placement::of_shape(&catalog, &shape(4, 2), 2016).map(|p| p.demand);
        assert_eq!(two, wide, "the test needs one demand for both");
        let (expected, _) = plan(&catalog, &[], &all);
        assert_eq!(needs, expected);
        assert_eq!(needs.values().map(|n| n.placed).sum::<usize>(), 360);
    }
}
