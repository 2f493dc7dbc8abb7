//! Autoscaling policy (pure): which node shape a job needs, and how many nodes of each shape a
//! cluster needs for its running and pending jobs.
//!
//! - **Family** by the job's memory per vCPU: `compute` ≤ 3 GiB, `general` ≤ 6 GiB, `memory`
//!   above.
//! - **Size**: a job's own node set, the smallest size whose *allocatable* vCPUs and memory
//!   (instance memory minus the system reserve) hold one of its nodes, in the family whose such
//!   node costs least ([`Catalog::place`]; [`crate::placement`] sizes the job the same way).
//! - **Planning**: first-fit decreasing — the biggest jobs first, each onto the first warm node
//!   of its own set with room, else onto a new node of that set.
//!
//! The catalog (family, size, instance type, vCPUs, GiB, hourly price) is data
//! (`fixtures/catalog/shapes.json`), parsed here from text the caller read.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};

use serde::{Deserialize, Serialize};

use crate::MicroUsd;

/// An instance family, chosen by memory per vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// ≤ 3 GiB per vCPU (c7g).
    Compute,
    /// ≤ 6 GiB per vCPU (m7g).
    General,
    /// More than 6 GiB per vCPU (r7g).
    Memory,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Compute, Family::General, Family::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Compute => "compute",
            Family::General => "general",
            Family::Memory => "memory",
        }
    }

    /// The family of a node-slice needing `cpus` vCPUs and `memory_mib`.
    pub fn for_demand(cpus: u32, memory_mib: u64) -> Family {
        let cpus = u64::from(cpus.max(1));
        // Compare memory_mib / cpus with 3 GiB and 6 GiB without dividing.
        if memory_mib <= 3 * 1024 * cpus {
            Family::Compute
        } else if memory_mib <= 6 * 1024 * cpus {
            Family::General
        } else {
            Family::Memory
        }
    }
}

/// A size within a family, smallest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Xs,
    Small,
    Medium,
    Large,
    Xlarge,
}

impl Size {
    pub const ALL: [Size; 5] = [
        Size::Xs,
        Size::Small,
        Size::Medium,
        Size::Large,
        Size::Xlarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Size::Xs => "xs",
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
            Size::Xlarge => "xlarge",
        }
    }
}

/// A node set of a cluster: every node of one family and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeSet {
    pub family: Family,
    pub size: Size,
}

impl NodeSet {
    /// Reads a node set back from its display form (`compute-small`).
    pub fn parse(s: &str) -> Option<NodeSet> {
        let (family, size) = s.split_once('-')?;
        let family = Family::ALL.into_iter().find(|f| f.as_str() == family)?;
        let size = Size::ALL.into_iter().find(|z| z.as_str() == size)?;
        Some(NodeSet { family, size })
    }
}

impl fmt::Display for NodeSet {
    /// `compute-small`, honouring width and alignment (`{:<18}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}-{}", self.family.as_str(), self.size.as_str()))
    }
}

/// One instance shape of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub family: Family,
    pub size: Size,
    pub instance_type: String,
    pub vcpus: u32,
    pub memory_gib: u32,
    pub hourly: MicroUsd,
    /// What jobs can use: instance memory minus the system reserve.
    pub allocatable_mib: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "_source", default)]
    _source: Option<String>,
    shapes: Vec<ShapeRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeRow {
    family: Family,
    size: Size,
    instance_type: String,
    vcpus: u32,
    memory_gib: u32,
    hourly_usd: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("the catalog is not valid JSON of the expected shape: {0}")]
    Format(String),
    #[error("the catalog has no {0} shape; it needs all five sizes of compute, general and memory")]
    Missing(NodeSet),
    #[error("the catalog lists {0} twice")]
    Duplicate(NodeSet),
    #[error("{set}: {problem}")]
    Bad { set: NodeSet, problem: String },
}

/// The most memory per vCPU a job that asks for none gets by default (2 GiB).
pub const DEFAULT_MIB_PER_CPU: u64 = 2048;

/// The 15 shapes, by family then size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    shapes: BTreeMap<NodeSet, Shape>,
}

impl Catalog {
    /// Parses the catalog file's text. `reserve_mib` is the memory each node keeps for the system
    /// (kubelet, slurmd, the OS).
    pub fn parse(text: &str, reserve_mib: u64) -> Result<Self, CatalogError> {
        let file: CatalogFile =
            serde_json::from_str(text).map_err(|e| CatalogError::Format(e.to_string()))?;
        let mut shapes = BTreeMap::new();
        for row in file.shapes {
            let set = NodeSet {
                family: row.family,
                size: row.size,
            };
            let bad = |problem: &str| CatalogError::Bad {
                set,
                problem: problem.to_string(),
            };
            let hourly = MicroUsd::parse_dollars(&row.hourly_usd)
                .ok_or_else(|| bad("hourly_usd must be a decimal like \"0.0363\""))?;
            let memory_mib = u64::from(row.memory_gib) * 1024;
            if row.vcpus == 0 || memory_mib <= reserve_mib {
                return Err(bad(
                    "needs at least one vCPU and more memory than the system reserve",
                ));
            }
            let shape = Shape {
                family: row.family,
                size: row.size,
                instance_type: row.instance_type,
                vcpus: row.vcpus,
                memory_gib: row.memory_gib,
                hourly,
                allocatable_mib: memory_mib - reserve_mib,
            };
            if shapes.insert(set, shape).is_some() {
                return Err(CatalogError::Duplicate(set));
            }
        }
        for family in Family::ALL {
            let mut previous: Option<&Shape> = None;
            for size in Size::ALL {
                let set = NodeSet { family, size };
                let shape = shapes.get(&set).ok_or(CatalogError::Missing(set))?;
                if let Some(p) = previous
                    && (shape.vcpus < p.vcpus || shape.allocatable_mib < p.allocatable_mib)
                {
                    return Err(CatalogError::Bad {
                        set,
                        problem: "is smaller than the size before it".into(),
                    });
                }
                previous = Some(shape);
            }
        }
        Ok(Self { shapes })
    }

    pub fn shape(&self, set: NodeSet) -> Option<&Shape> {
        self.shapes.get(&set)
    }

    pub fn shapes(&self) -> impl Iterator<Item = &Shape> {
        self.shapes.values()
    }

    /// The memory per vCPU a job that asks for none gets by default: what the largest compute
    /// shape keeps per vCPU after the system reserve (2,016 MiB at the 512 MiB reserve), at most
    /// [`DEFAULT_MIB_PER_CPU`]. So a compute node holds as many default-memory vCPUs as it has:
    /// at 2,048 a c7g.4xlarge (31.5 GiB for jobs) held 15, and a 16-vCPU job fit no compute node.
    pub fn fitting_mib_per_cpu(&self) -> u64 {
        self.largest(Family::Compute)
            .map_or(DEFAULT_MIB_PER_CPU, |s| {
                s.allocatable_mib / u64::from(s.vcpus.max(1))
            })
            .clamp(64, DEFAULT_MIB_PER_CPU)
    }

    /// The largest shape of a family.
    pub fn largest(&self, family: Family) -> Option<&Shape> {
        self.shapes.get(&NodeSet {
            family,
            size: Size::Xlarge,
        })
    }

    /// The smallest size of `family` that holds `cpus` and `memory_mib` on one node.
    pub fn smallest_fit(&self, family: Family, cpus: u32, memory_mib: u64) -> Option<&Shape> {
        Size::ALL
            .iter()
            .filter_map(|&size| self.shapes.get(&NodeSet { family, size }))
            .find(|s| s.vcpus >= cpus && s.allocatable_mib >= memory_mib)
    }

    /// Where one node of a job goes, or why no shape can ever hold it: the smallest size that
    /// holds it in the family its memory per vCPU asks for or a roomier one (general, then
    /// memory), whichever such node costs least (ties to the cheaper capacity,
    /// [`capacity_price`], then the leaner family) — as [`crate::placement`] prices whole nodes.
    /// A compute node keeps about 2 GiB per vCPU, so a node asking 2.5 GiB per vCPU would hold a
    /// compute node's memory before its vCPUs and cost more there than on a general node.
    pub fn place(&self, demand: Demand) -> Result<NodeSet, TooBig> {
        let family = Family::for_demand(demand.cpus, demand.memory_mib);
        let mut best: Option<((u64, u128), NodeSet)> = None;
        for f in Family::ALL.into_iter().filter(|f| *f >= family) {
            let Some(s) = self.smallest_fit(f, demand.cpus, demand.memory_mib) else {
                continue;
            };
            let price = (
                s.hourly.0.max(0).unsigned_abs(),
                capacity_price(s, demand, 1),
            );
            if best.is_none_or(|(p, _)| price < p) {
                best = Some((
                    price,
                    NodeSet {
                        family: f,
                        size: s.size,
                    },
                ));
            }
        }
        best.map(|(_, set)| set).ok_or_else(|| self.too_big(demand))
    }

    /// The refusal of a node no shape holds, naming the largest shape.
    pub fn too_big(&self, demand: Demand) -> TooBig {
        let largest = self
            .shapes
            .values()
            .max_by_key(|s| (s.vcpus, s.allocatable_mib))
            .map_or_else(
                || ("?".to_string(), 0, 0),
                |s| (s.instance_type.clone(), s.vcpus, s.allocatable_mib),
            );
        TooBig {
            demand,
            largest: largest.0,
            largest_vcpus: largest.1,
            largest_mib: largest.2,
        }
    }
}

/// The hourly price, in micro-USD (rounded down once), of the part of `nodes` `shape` nodes that
/// node-slices `d` hold, one on each: the larger of a slice's share of the vCPUs and its share of
/// the allocatable memory (what is left cannot take a job that needs the other).
pub fn capacity_price(shape: &Shape, d: Demand, nodes: u32) -> u128 {
    let (v, m) = (
        u128::from(shape.vcpus.max(1)),
        u128::from(shape.allocatable_mib.max(1)),
    );
    let share = (u128::from(d.cpus) * m).max(u128::from(d.memory_mib) * v);
    u128::from(shape.hourly.0.max(0).unsigned_abs()) * u128::from(nodes) * share / (v * m)
}

/// What one node of a job needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Demand {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl Demand {
    /// One node's share of a job: `cpus` and `memory_mib` are the whole job's, spread over
    /// `nodes` (rounded up). Without a memory request, `default_mib_per_cpu` per vCPU.
    pub fn per_node(
        cpus: u32,
        memory_mib: Option<u64>,
        nodes: u32,
        default_mib_per_cpu: u64,
    ) -> Demand {
        let nodes = nodes.max(1);
        let cpus = cpus.max(1).div_ceil(nodes);
        let memory_mib = memory_mib
            .map(|m| m.div_ceil(u64::from(nodes)))
            .unwrap_or(u64::from(cpus) * default_mib_per_cpu);
        Demand { cpus, memory_mib }
    }
}

/// A job no shape can hold: refused at submit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "one node of this job needs {} vCPUs and {} MiB, more than any shape holds (the largest is {}: {} vCPUs, {} MiB allocatable); ask for fewer CPUs or less memory per node, or spread it over more nodes",
    demand.cpus, demand.memory_mib, largest, largest_vcpus, largest_mib
)]
pub struct TooBig {
    pub demand: Demand,
    pub largest: String,
    pub largest_vcpus: u32,
    pub largest_mib: u64,
}

/// The largest job a cluster takes, and the most nodes one node set may have. A job over any of
/// them is refused at submit (422 `job_too_large`, naming the field); a job already in the log
/// that is over them (accepted before the limit, or under a bigger one) is failed by the poll
/// cycle instead of planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    pub max_nodes_per_job: u32,
    pub max_cpus_per_job: u32,
    pub max_memory_mib_per_job: u64,
    pub max_gpus_per_job: u32,
    /// Desired counts are clamped to this per node set.
    pub max_nodes_per_set: u32,
}

/// The default most nodes of one job.
pub const DEFAULT_MAX_NODES_PER_JOB: u32 = 64;
/// The default most nodes of one node set.
pub const DEFAULT_MAX_NODES_PER_SET: u32 = 256;

impl JobLimits {
    /// What the catalog can place within `max_nodes_per_job` nodes: that many of its biggest
    /// shape's vCPUs and allocatable memory. The catalog has no GPU shapes, so `max_gpus_per_job`
    /// is whatever the operator sets (0 refuses GPU jobs).
    pub fn from_catalog(
        catalog: &Catalog,
        max_nodes_per_job: u32,
        max_nodes_per_set: u32,
        max_gpus_per_job: u32,
    ) -> Self {
        let vcpus = catalog.shapes().map(|s| s.vcpus).max().unwrap_or(0);
        let mib = catalog
            .shapes()
            .map(|s| s.allocatable_mib)
            .max()
            .unwrap_or(0);
        let nodes = max_nodes_per_job.min(max_nodes_per_set);
        Self {
            max_nodes_per_job: nodes,
            max_cpus_per_job: vcpus.saturating_mul(nodes),
            max_memory_mib_per_job: mib.saturating_mul(u64::from(nodes)),
            max_gpus_per_job,
            max_nodes_per_set,
        }
    }

    /// Every limit the job is over, each with the field at fault. `memory_field` is the body's
    /// memory field (`job.memory_per_node` or `job.memory_per_cpu`).
    pub fn check(
        &self,
        shape: &crate::submit::JobShape,
        memory_field: &str,
    ) -> Vec<crate::submit::FieldError> {
        let mut out = Vec::new();
        let mut over = |field: &str, what: String| {
            out.push(crate::submit::FieldError {
                code: "job_too_large",
                field: field.to_string(),
                message: what,
            });
        };
        if shape.nodes > self.max_nodes_per_job {
            over(
                "job.nodes",
                format!(
                    "the job asks for {} nodes; this cluster runs jobs of at most {} nodes: ask for fewer, or ask the operator to raise max_nodes_per_job",
                    shape.nodes, self.max_nodes_per_job
                ),
            );
        }
        if shape.cpus > self.max_cpus_per_job {
            over(
                "job.tasks",
                format!(
                    "the job asks for {} CPUs (tasks × cpus_per_task); this cluster runs jobs of at most {}: ask for fewer",
                    shape.cpus, self.max_cpus_per_job
                ),
            );
        }
        if let Some(mib) = shape.memory_mib
            && mib > self.max_memory_mib_per_job
        {
            over(
                memory_field,
                format!(
                    "the job asks for {mib} MiB in all; this cluster runs jobs of at most {} MiB: ask for less",
                    self.max_memory_mib_per_job
                ),
            );
        }
        if shape.gpus > self.max_gpus_per_job {
            over(
                "job.tres_per_node",
                if self.max_gpus_per_job == 0 {
                    format!(
                        "the job asks for {} GPUs; this cluster has no GPU nodes: drop the gres/gpu request",
                        shape.gpus
                    )
                } else {
                    format!(
                        "the job asks for {} GPUs; this cluster runs jobs of at most {}: ask for fewer",
                        shape.gpus, self.max_gpus_per_job
                    )
                },
            );
        }
        out
    }

    /// Whether a job is within every limit.
    pub fn allows(&self, shape: &crate::submit::JobShape) -> bool {
        self.check(shape, "job.memory_per_node").is_empty()
    }

    /// Clamps each node set's need to `max_nodes_per_set`.
    pub fn clamp(&self, needs: &mut BTreeMap<NodeSet, Need>) {
        for need in needs.values_mut() {
            need.nodes = need.nodes.min(self.max_nodes_per_set);
            need.new_nodes = need.new_nodes.min(need.nodes);
        }
    }
}

/// A node that is up, what its running jobs leave free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmNode {
    pub name: String,
    pub set: NodeSet,
    pub free_cpus: u32,
    pub free_mib: u64,
    /// Running jobs on it.
    pub busy: bool,
}

/// One node-slice of a job to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSlice {
    pub job_id: u64,
    pub demand: Demand,
    /// A running job on nodes the plan does not know (no node event names them): it holds room
    /// like a pending one but is not among the jobs a need names or counts.
    pub running: bool,
}

impl PendingSlice {
    /// A slice of a pending job.
    pub fn pending(job_id: u64, demand: Demand) -> Self {
        Self {
            job_id,
            demand,
            running: false,
        }
    }
}

/// Pending jobs of one slice each and of one demand, given by their number rather than a slice
/// each: a queue holds many jobs of few shapes, so placing them costs steps that grow with the
/// nodes they fill, not with the jobs. They are placed after the slices of the same demand
/// (exactly where they would go as slices when no job of several slices has that demand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRun {
    pub demand: Demand,
    pub count: usize,
    /// The first of the jobs by id, ascending (the first [`MAX_DRIVING_JOBS`] are enough): the
    /// names a need keeps.
    pub first: Vec<u64>,
}

/// What a node set needs after placing every pending job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Need {
    /// Nodes that must be up: warm nodes with running or placed jobs, plus new ones.
    pub nodes: u32,
    /// Nodes to add this cycle.
    pub new_nodes: u32,
    /// Pending jobs placed in this set.
    pub placed: usize,
    /// The first of them in placement order, each once (at most [`MAX_DRIVING_JOBS`]: what a
    /// decision names).
    pub jobs: Vec<u64>,
}

impl Need {
    /// One more pending job placed here.
    fn name(&mut self, job_id: u64) {
        self.placed += 1;
        if self.jobs.len() < MAX_DRIVING_JOBS {
            self.jobs.push(job_id);
        }
    }
}

/// Places every pending slice (first-fit decreasing) and says what each node set needs. A slice
/// goes to nodes of its own set ([`Catalog::place`]: the smallest size of the cheapest family that
/// holds it, as placement sized the job): first onto warm nodes of that set with room (those
/// still starting were opened for it), else onto new ones. Room on nodes of other sizes is left
/// to the scheduler, which takes it only where the job ends before the node's own jobs (the
/// simulator's rule); planning nodes for it anyway costs at most an idle window. Slices
/// no shape can hold are skipped (they were refused at submit; a catalog change may strand old
/// ones) and returned as the second value.
pub fn plan(
    catalog: &Catalog,
    warm: &[WarmNode],
    pending: &[PendingSlice],
) -> (BTreeMap<NodeSet, Need>, Vec<u64>) {
    plan_in_runs(catalog, warm, pending, true)
}

/// [`plan`] with some of the one-slice pending jobs given as runs of one demand ([`PendingRun`]).
/// When no slice of a run's demand belongs to a job of several slices, the plan is the one
/// [`plan`] makes of every job as a slice. A run no shape holds strands the jobs it names.
pub fn plan_with_runs(
    catalog: &Catalog,
    warm: &[WarmNode],
    pending: &[PendingSlice],
    runs: &[PendingRun],
) -> (BTreeMap<NodeSet, Need>, Vec<u64>) {
    plan_reserving(catalog, warm, pending, runs, true, None)
}

/// [`plan`], placing a run of one-node jobs with equal demand a node at a time (as many as the
/// node holds in one step) when `runs` is set, or one slice at a time when not; both give the
/// same plan (first-fit keeps filling the lowest-numbered node with room until it is full), the
/// first in steps that grow with the nodes rather than the jobs. Public for the benchmark that
/// compares the two.
pub fn plan_in_runs(
    catalog: &Catalog,
    warm: &[WarmNode],
    pending: &[PendingSlice],
    runs: bool,
) -> (BTreeMap<NodeSet, Need>, Vec<u64>) {
    plan_reserving(catalog, warm, pending, &[], runs, None)
}

/// [`plan_in_runs`] with `groups` ([`plan_with_runs`]) and room for `reserve` nodes per set at
/// first when given (tests: the tree grows as it needs and the plan does not depend on it).
fn plan_reserving(
    catalog: &Catalog,
    warm: &[WarmNode],
    pending: &[PendingSlice],
    groups: &[PendingRun],
    runs: bool,
    reserve: Option<usize>,
) -> (BTreeMap<NodeSet, Need>, Vec<u64>) {
    let mut needs: BTreeMap<NodeSet, Need> = BTreeMap::new();
    let mut stranded = Vec::new();
    // Per node set: its slices and its runs.
    let mut by_set: BTreeMap<NodeSet, (Vec<PendingSlice>, Vec<PendingRun>)> = BTreeMap::new();
    // Queues hold few distinct demands: each is placed in the catalog once.
    let mut placed: std::collections::HashMap<Demand, Option<NodeSet>> =
        std::collections::HashMap::new();
    let mut last: Option<(Demand, Option<NodeSet>)> = None;
    let mut set_of = |d: Demand| match last {
        Some((l, f)) if l == d => f,
        _ => {
            let f = *placed.entry(d).or_insert_with(|| catalog.place(d).ok());
            last = Some((d, f));
            f
        }
    };
    for s in pending {
        match set_of(s.demand) {
            Some(set) => by_set.entry(set).or_default().0.push(*s),
            None => stranded.push(s.job_id),
        }
    }
    for g in groups.iter().filter(|g| g.count > 0) {
        match set_of(g.demand) {
            Some(set) => by_set.entry(set).or_default().1.push(g.clone()),
            None => stranded.extend(g.first.iter().copied()),
        }
    }
    for node in warm.iter().filter(|n| n.busy) {
        needs.entry(node.set).or_default().nodes += 1;
    }
    for (new_set, (mut slices, mut set_runs)) in by_set {
        let Some(shape) = catalog.shape(new_set) else {
            continue;
        };
        slices.sort_unstable_by(|a, b| b.demand.cmp(&a.demand).then(a.job_id.cmp(&b.job_id)));
        // Runs by demand, largest first; runs of one demand are one run.
        set_runs.sort_by_key(|r| std::cmp::Reverse(r.demand));
        set_runs.dedup_by(|later, kept| {
            if later.demand != kept.demand {
                return false;
            }
            kept.count = kept.count.saturating_add(later.count);
            kept.first.append(&mut later.first);
            true
        });
        for r in &mut set_runs {
            r.first.sort_unstable();
            r.first.dedup();
            r.first.truncate(MAX_DRIVING_JOBS);
        }
        let warm_here = warm.iter().filter(|n| n.set == new_set).count();
        // Room for the nodes the slices fill at least, twice over (the tree grows if first-fit
        // needs more): sized by the slices themselves it was megabytes of fresh, zeroed memory
        // per placement at 100,000 pending jobs, most of it never used.
        let (cpus, mib) = slices
            .iter()
            .map(|s| (s.demand, 1))
            .chain(set_runs.iter().map(|r| (r.demand, r.count)))
            .fold((0u64, 0u64), |(c, m), (d, n)| {
                let n = n as u64;
                (
                    c.saturating_add(u64::from(d.cpus).saturating_mul(n)),
                    m.saturating_add(d.memory_mib.saturating_mul(n)),
                )
            });
        let items = set_runs
            .iter()
            .fold(slices.len(), |n, r| n.saturating_add(r.count));
        let fill = cpus
            .div_ceil(u64::from(shape.vcpus.max(1)))
            .max(mib.div_ceil(shape.allocatable_mib.max(1)));
        let fill = usize::try_from(fill.saturating_mul(2).saturating_add(16)).unwrap_or(usize::MAX);
        let mut bins = Bins::new(reserve.unwrap_or(warm_here + fill.min(items)));
        for node in warm.iter().filter(|n| n.set == new_set) {
            bins.open(node.set, node.free_cpus, node.free_mib, node.busy);
        }
        let need = needs.entry(new_set).or_default();
        // The slices of one job are consecutive (equal demand, then job id) and must go to
        // different nodes, as Slurm places them: nodes holding one of the job's slices are
        // hidden from first-fit until its last slice is placed.
        let mut hidden: Vec<usize> = Vec::new();
        let mut current_job = None;
        // A job of one slice: its neighbours (sorted by demand, then job) are other jobs.
        let single = |k: usize| {
            (k == 0 || slices[k - 1].job_id != slices[k].job_id)
                && slices
                    .get(k + 1)
                    .is_none_or(|n| n.job_id != slices[k].job_id)
        };
        let mut next_run = set_runs.iter().peekable();
        let mut k = 0;
        loop {
            // A run goes after the slices of its demand (and before smaller ones).
            if let Some(run) =
                next_run.next_if(|r| slices.get(k).is_none_or(|s| s.demand < r.demand))
            {
                for i in hidden.drain(..) {
                    bins.update(i);
                }
                current_job = None;
                bins.fill(new_set, shape, run.demand, run.count, runs);
                need.placed = need.placed.saturating_add(run.count);
                let room = MAX_DRIVING_JOBS.saturating_sub(need.jobs.len());
                need.jobs.extend(run.first.iter().take(room.min(run.count)));
                continue;
            }
            let Some(&slice) = slices.get(k) else { break };
            if current_job != Some(slice.job_id) {
                for i in hidden.drain(..) {
                    bins.update(i);
                }
                current_job = Some(slice.job_id);
                if !slice.running {
                    need.name(slice.job_id);
                }
            }
            if runs && single(k) {
                let mut end = k + 1;
                while end < slices.len() && slices[end].demand == slice.demand && single(end) {
                    end += 1;
                }
                for s in slices[k + 1..end].iter().filter(|s| !s.running) {
                    need.name(s.job_id);
                }
                bins.fill(new_set, shape, slice.demand, end - k, true);
                k = end;
                current_job = Some(slices[end - 1].job_id);
                continue;
            }
            k += 1;
            let at = match bins.first_fit(slice.demand) {
                Some(i) => i,
                None => {
                    let leaves = bins.leaves;
                    let i = bins.open_new(new_set, shape.vcpus, shape.allocatable_mib);
                    // Growing the tree rebuilt it from the nodes' real room: hide again. (Only
                    // then: a job of k slices on k new nodes would otherwise cost k² steps.)
                    if bins.leaves != leaves {
                        for &h in &hidden {
                            bins.hide(h);
                        }
                    }
                    i
                }
            };
            bins.take(at, slice.demand);
            bins.hide(at);
            hidden.push(at);
        }
        for (set, opened, new) in bins.used() {
            let need = needs.entry(set).or_default();
            need.nodes += opened;
            need.new_nodes += new;
        }
    }
    (needs, stranded)
}

/// What a node set has now: the desired count last decided, and when it last had work (running
/// or placed jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetState {
    pub desired: u32,
    pub last_busy: Option<DateTime<Utc>>,
}

/// Marks each node set whose work fills its desired count as busy now: a set shrinks only after
/// it has had fewer jobs than nodes for the whole idle window.
pub fn mark_full(
    current: &mut BTreeMap<NodeSet, SetState>,
    needs: &BTreeMap<NodeSet, Need>,
    now: DateTime<Utc>,
) {
    for (set, state) in current.iter_mut() {
        let wanted = needs.get(set).map_or(0, |n| n.nodes);
        if wanted > 0 && wanted >= state.desired {
            state.last_busy = Some(now);
        }
    }
}

/// A change of a node set's desired count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub set: NodeSet,
    pub from: u32,
    pub to: u32,
    /// The pending jobs that drove it (at most [`MAX_DRIVING_JOBS`]).
    pub jobs: Vec<u64>,
    pub reason: String,
}

/// How many driving job ids a decision keeps (the event stays small).
pub const MAX_DRIVING_JOBS: usize = 100;

/// The decisions of one cycle: a set grows at once to what its jobs need; it shrinks to what its
/// jobs need (zero when it has none) only once it has had no work for `idle_window`. Sets whose
/// count does not change get no decision. `needs` comes from [`plan`].
pub fn decide(
    current: &BTreeMap<NodeSet, SetState>,
    needs: &BTreeMap<NodeSet, Need>,
    now: DateTime<Utc>,
    idle_window: Duration,
) -> Vec<Decision> {
    let sets: std::collections::BTreeSet<NodeSet> =
        current.keys().chain(needs.keys()).copied().collect();
    let mut out = Vec::new();
    for set in sets {
        let state = current.get(&set).copied().unwrap_or_default();
        let need = needs.get(&set);
        let wanted = need.map_or(0, |n| n.nodes);
        let jobs: Vec<u64> = need
            .map(|n| n.jobs.iter().take(MAX_DRIVING_JOBS).copied().collect())
            .unwrap_or_default();
        let (to, reason) = if wanted > state.desired {
            (
                wanted,
                format!(
                    "{} pending jobs need {} more {set} nodes",
                    need.map_or(0, |n| n.placed),
                    wanted - state.desired
                ),
            )
        } else if wanted < state.desired {
            let idle_since = state.last_busy;
            let idle_long_enough = idle_since.is_none_or(|t| now - t >= idle_window);
            if !idle_long_enough {
                continue;
            }
            (
                wanted,
                format!(
                    "{} {set} nodes idle for {} s",
                    state.desired - wanted,
                    idle_window.num_seconds()
                ),
            )
        } else {
            continue;
        };
        out.push(Decision {
            set,
            from: state.desired,
            to,
            jobs,
            reason,
        });
    }
    out
}

/// Nodes as bins for first-fit. A max-tree over node numbers (the most free vCPUs and the most
/// free memory in each subtree) finds the lowest-numbered node with room in O(log n) steps when
/// room is common; a subtree is skipped as soon as it cannot hold the slice.
struct Bins {
    nodes: Vec<Bin>,
    leaves: usize,
    cpus: Vec<u32>,
    mib: Vec<u64>,
}

#[derive(Clone, Copy)]
struct Bin {
    set: NodeSet,
    free_cpus: u32,
    free_mib: u64,
    /// Already counted (a busy warm node).
    counted: bool,
    new: bool,
    used: bool,
}

impl Bin {
    /// A new node of `set`, empty.
    fn fresh(set: NodeSet, free_cpus: u32, free_mib: u64) -> Self {
        Self {
            set,
            free_cpus,
            free_mib,
            counted: false,
            new: true,
            used: false,
        }
    }

    /// How many slices of demand `d` it holds.
    fn room(&self, d: Demand) -> usize {
        let by_cpus = self
            .free_cpus
            .checked_div(d.cpus)
            .map_or(usize::MAX, |n| n as usize);
        let by_mib = self
            .free_mib
            .checked_div(d.memory_mib)
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        by_cpus.min(by_mib)
    }
}

impl Bins {
    /// Room for `capacity` nodes (the list of nodes is reserved at once: grown a push at a
    /// time it copied itself ~17 times on the way to 100,000, each copy on fresh memory).
    fn new(capacity: usize) -> Self {
        let leaves = capacity.max(1).next_power_of_two();
        Self {
            nodes: Vec::with_capacity(capacity.max(1)),
            leaves,
            cpus: vec![0; 2 * leaves],
            mib: vec![0; 2 * leaves],
        }
    }

    fn update(&mut self, i: usize) {
        let mut at = self.leaves + i;
        self.cpus[at] = self.nodes[i].free_cpus;
        self.mib[at] = self.nodes[i].free_mib;
        while at > 1 {
            at /= 2;
            self.cpus[at] = self.cpus[2 * at].max(self.cpus[2 * at + 1]);
            self.mib[at] = self.mib[2 * at].max(self.mib[2 * at + 1]);
        }
    }

    fn push(&mut self, bin: Bin) -> usize {
        if self.nodes.len() == self.leaves {
            // Out of room (more nodes than planned for): grow and rebuild.
            let nodes = std::mem::take(&mut self.nodes);
            *self = Self::new(2 * self.leaves);
            for n in nodes {
                self.push(n);
            }
        }
        self.nodes.push(bin);
        let i = self.nodes.len() - 1;
        self.update(i);
        i
    }

    fn open(&mut self, set: NodeSet, free_cpus: u32, free_mib: u64, busy: bool) {
        self.push(Bin {
            set,
            free_cpus,
            free_mib,
            counted: busy,
            new: false,
            used: false,
        });
    }

    fn open_new(&mut self, set: NodeSet, cpus: u32, mib: u64) -> usize {
        self.push(Bin::fresh(set, cpus, mib))
    }

    /// Opens `count` new nodes like `fresh`, each holding `per` slices of demand `d`, and
    /// updates the tree once over them rather than once per node.
    fn open_full(&mut self, fresh: Bin, d: Demand, per: usize, count: usize) {
        let first = self.nodes.len();
        if first + count > self.leaves {
            let nodes = std::mem::take(&mut self.nodes);
            *self = Self::new(2 * (first + count));
            for n in nodes {
                self.push(n);
            }
        }
        let per32 = u32::try_from(per).unwrap_or(u32::MAX);
        let free_cpus = fresh.free_cpus.saturating_sub(d.cpus.saturating_mul(per32));
        let free_mib = fresh
            .free_mib
            .saturating_sub(d.memory_mib.saturating_mul(per as u64));
        for _ in 0..count {
            self.nodes.push(Bin {
                free_cpus,
                free_mib,
                used: true,
                ..fresh
            });
            let at = self.leaves + self.nodes.len() - 1;
            self.cpus[at] = free_cpus;
            self.mib[at] = free_mib;
        }
        // The parents of the new leaves, a level at a time.
        let (mut lo, mut hi) = (self.leaves + first, self.leaves + self.nodes.len() - 1);
        while lo > 1 {
            (lo, hi) = (lo / 2, hi / 2);
            for at in lo..=hi {
                self.cpus[at] = self.cpus[2 * at].max(self.cpus[2 * at + 1]);
                self.mib[at] = self.mib[2 * at].max(self.mib[2 * at + 1]);
            }
        }
    }

    /// The lowest-numbered node with room for `d`.
    fn first_fit(&self, d: Demand) -> Option<usize> {
        // Depth-first, left first, on a stack that never holds more than one pending right
        // sibling per level (at most 64 levels).
        let mut stack = [0usize; 64];
        stack[0] = 1;
        let mut top = 1;
        while top > 0 {
            top -= 1;
            let at = stack[top];
            if self.cpus[at] < d.cpus || self.mib[at] < d.memory_mib {
                continue;
            }
            if at >= self.leaves {
                return Some(at - self.leaves);
            }
            // Right pushed first so the left (lower numbers) is tried first.
            stack[top] = 2 * at + 1;
            stack[top + 1] = 2 * at;
            top += 2;
        }
        None
    }

    /// Makes node `i` look full to first-fit until its next [`Bins::update`].
    fn hide(&mut self, i: usize) {
        let mut at = self.leaves + i;
        self.cpus[at] = 0;
        self.mib[at] = 0;
        while at > 1 {
            at /= 2;
            self.cpus[at] = self.cpus[2 * at].max(self.cpus[2 * at + 1]);
            self.mib[at] = self.mib[2 * at].max(self.mib[2 * at + 1]);
        }
    }

    fn take(&mut self, i: usize, d: Demand) -> NodeSet {
        self.take_many(i, d, 1)
    }

    /// How many slices of demand `d` node `i` holds.
    fn room(&self, i: usize, d: Demand) -> usize {
        self.nodes[i].room(d)
    }

    /// Places `n` slices of demand `d` on node `i` (which holds them: [`Bins::room`]).
    fn take_many(&mut self, i: usize, d: Demand, n: usize) -> NodeSet {
        let node = &mut self.nodes[i];
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        node.free_cpus = node.free_cpus.saturating_sub(d.cpus.saturating_mul(n32));
        node.free_mib = node
            .free_mib
            .saturating_sub(d.memory_mib.saturating_mul(n as u64));
        node.used = true;
        let set = node.set;
        self.update(i);
        set
    }

    /// Places `count` one-slice jobs of demand `d` (new nodes are of `set`, like `shape`):
    /// first-fit, a node at a time (as many as the node holds in one step) when `runs` is set,
    /// else one at a time; the same nodes either way.
    fn fill(&mut self, set: NodeSet, shape: &Shape, d: Demand, count: usize, runs: bool) {
        let mut left = count;
        while left > 0 {
            let at = match self.first_fit(d) {
                Some(i) => i,
                None => {
                    let fresh = Bin::fresh(set, shape.vcpus, shape.allocatable_mib);
                    if runs {
                        // No node has room: the rest of the run fills new nodes in order, each
                        // as full as it gets; all but the last are opened at once.
                        let per = fresh.room(d).max(1);
                        let full = (left - 1) / per;
                        if full > 0 {
                            self.open_full(fresh, d, per, full);
                            left -= full * per;
                        }
                    }
                    self.push(fresh)
                }
            };
            let n = if runs {
                self.room(at, d).clamp(1, left)
            } else {
                1
            };
            self.take_many(at, d, n);
            left -= n;
        }
    }

    /// Per node set: nodes that now must be up and were not counted yet, and how many of them
    /// are new.
    fn used(&self) -> Vec<(NodeSet, u32, u32)> {
        let mut out: BTreeMap<NodeSet, (u32, u32)> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.used && !n.counted) {
            let e = out.entry(n.set).or_default();
            e.0 += 1;
            e.1 += u32::from(n.new);
        }
        out.into_iter().map(|(s, (a, b))| (s, a, b)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_nodes_are_of_each_slice_own_size() {
        let c = Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).unwrap();
        let slices = |n: u64, memory_mib: u64| -> Vec<PendingSlice> {
            (0..n)
                .map(|job_id| {
                    PendingSlice::pending(
                        job_id,
                        Demand {
                            cpus: 1,
                            memory_mib,
                        },
                    )
                })
                .collect()
        };
        let size = |s: &[PendingSlice]| {
            let (needs, _) = plan(&c, &[], s);
            needs
                .iter()
                .map(|(set, need)| (c.shape(*set).unwrap().instance_type.clone(), need.nodes))
                .collect::<Vec<_>>()
        };
        // One 1-vCPU 2 GiB slice: a c7g.medium keeps 1.5 GiB; an m7g.medium ($0.0408) holds it
        // for less than a c7g.large ($0.0725).
        assert_eq!(size(&slices(1, 2048)), vec![("m7g.medium".to_string(), 1)]);
        // Fifteen of 1 GiB: fifteen c7g.medium ($0.5445), each full, not one c7g.4xlarge ($0.58)
        // that stays up, mostly empty, for the longest of them.
        assert_eq!(
            size(&slices(15, 1024)),
            vec![("c7g.medium".to_string(), 15)]
        );
        // Mixed sizes each open their own set.
        let mut mixed = slices(2, 1024);
        mixed.push(PendingSlice {
            job_id: 9,
            demand: d(4, 4),
            running: false,
        });
        assert_eq!(
            size(&mixed),
            vec![("c7g.medium".to_string(), 2), ("c7g.xlarge".to_string(), 1)]
        );
    }

    #[test]
    fn the_default_memory_per_vcpu_fills_a_compute_node() {
        let text = include_str!("../../fixtures/catalog/shapes.json");
        assert_eq!(
            Catalog::parse(text, 512).unwrap().fitting_mib_per_cpu(),
            2016
        );
        assert_eq!(
            Catalog::parse(text, 1024).unwrap().fitting_mib_per_cpu(),
            1984
        );
        assert_eq!(Catalog::parse(text, 0).unwrap().fitting_mib_per_cpu(), 2048);
    }

    #[test]
    fn a_node_set_pads_to_the_width_asked() {
        let set = NodeSet {
            family: Family::Compute,
            size: Size::Small,
        };
        assert_eq!(format!("[{set:<16}]"), "[compute-small   ]");
        assert_eq!(format!("[{set:>14}]"), "[ compute-small]");
    }

    const CATALOG: &str = include_str!("../../fixtures/catalog/shapes.json");

    fn catalog() -> Catalog {
        Catalog::parse(CATALOG, 512).unwrap()
    }

    fn set(family: Family, size: Size) -> NodeSet {
        NodeSet { family, size }
    }

    /// `count` warm nodes of `sets` in turn, with some room left (a half, a third, all of
    /// their vCPUs; half or all of their memory), every other one busy.
    fn warm_nodes(c: &Catalog, count: usize, sets: [NodeSet; 3]) -> Vec<WarmNode> {
        (0..count)
            .map(|i| {
                let set = sets[i % 3];
                let shape = c.shape(set).unwrap();
                WarmNode {
                    name: format!("{set}-{i}"),
                    set,
                    free_cpus: shape.vcpus / (1 + i as u32 % 3),
                    free_mib: shape.allocatable_mib / (1 + i as u64 % 2),
                    busy: i % 2 == 0,
                }
            })
            .collect()
    }

    fn d(cpus: u32, gib: u64) -> Demand {
        Demand {
            cpus,
            memory_mib: gib * 1024,
        }
    }

    #[test]
    fn the_fixture_catalog_parses_with_prices_in_micro_dollars() {
        let c = catalog();
        assert_eq!(c.shapes().count(), 15);
        let s = c.shape(set(Family::Compute, Size::Xs)).unwrap();
        assert_eq!(
            (s.instance_type.as_str(), s.hourly),
            ("c7g.medium", MicroUsd(36_300))
        );
        assert_eq!(s.allocatable_mib, 2048 - 512);
        assert!(Catalog::parse(r#"{"shapes": []}"#, 512).is_err());
    }

    fn shape(cpus: u32, memory_mib: Option<u64>, nodes: u32, gpus: u32) -> crate::submit::JobShape {
        crate::submit::JobShape {
            cpus,
            memory_mib,
            nodes,
            time_limit_minutes: None,
            gpus,
            tasks: None,
        }
    }

    #[test]
    fn limits_come_from_what_the_catalog_places_within_the_node_limit() {
        let c = catalog();
        let limits = JobLimits::from_catalog(&c, 64, 256, 0);
        let biggest_cpus = c.shapes().map(|s| s.vcpus).max().unwrap();
        let biggest_mib = c.shapes().map(|s| s.allocatable_mib).max().unwrap();
        assert_eq!(limits.max_nodes_per_job, 64);
        assert_eq!(limits.max_cpus_per_job, 64 * biggest_cpus);
        assert_eq!(limits.max_memory_mib_per_job, 64 * biggest_mib);
        // A job limit above the set limit is the set limit: no job can need more.
        assert_eq!(
            JobLimits::from_catalog(&c, 1000, 256, 0).max_nodes_per_job,
            256
        );

        assert!(
            limits
                .check(&shape(4, Some(4096), 64, 0), "job.memory_per_node")
                .is_empty()
        );
        let over = limits.check(
            &shape(u32::MAX, Some(u64::MAX), 65, 1),
            "job.memory_per_cpu",
        );
        let fields: Vec<&str> = over.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "job.nodes",
                "job.tasks",
                "job.memory_per_cpu",
                "job.tres_per_node"
            ]
        );
        assert!(over.iter().all(|e| e.code == "job_too_large"));
        assert!(
            over[3].message.contains("no GPU nodes"),
            "{}",
            over[3].message
        );
        assert!(JobLimits::from_catalog(&c, 64, 256, 8).allows(&shape(1, None, 1, 8)));
    }

    #[test]
    fn desired_counts_are_clamped_per_node_set() {
        let c = catalog();
        let limits = JobLimits::from_catalog(&c, 64, 10, 0);
        // 40 one-node jobs that each fill a node: 40 nodes wanted, 10 allowed.
        let big = c.largest(Family::Compute).unwrap();
        let demand = Demand {
            cpus: big.vcpus,
            memory_mib: big.allocatable_mib,
        };
        let slices: Vec<PendingSlice> = (0..40)
            .map(|job_id| PendingSlice::pending(job_id, demand))
            .collect();
        let (mut needs, _) = plan(&c, &[], &slices);
        assert_eq!(needs.values().map(|n| n.nodes).sum::<u32>(), 40);
        limits.clamp(&mut needs);
        assert!(
            needs.values().all(|n| n.nodes <= 10 && n.new_nodes <= 10),
            "{needs:?}"
        );
    }

    #[test]
    fn the_slices_of_one_job_go_to_different_nodes() {
        // A catalog whose smallest compute shape has two vCPUs: one node of it holds two
        // one-vCPU slices.
        let mut doc: serde_json::Value = serde_json::from_str(CATALOG).unwrap();
        doc["shapes"][0]["vcpus"] = serde_json::json!(2);
        doc["shapes"][0]["memory_gib"] = serde_json::json!(4);
        doc["shapes"][0]["hourly_usd"] = serde_json::json!("0.03");
        let c = Catalog::parse(&doc.to_string(), 512).unwrap();
        let demand = Demand::per_node(2, Some(2048), 2, 2048);
        let own = c.place(demand).unwrap();
        assert_eq!(c.shape(own).unwrap().vcpus, 2, "{own}");
        // The two slices of one job: two nodes, as Slurm places them.
        let slices = [PendingSlice::pending(7, demand); 2];
        let (needs, _) = plan(&c, &[], &slices);
        assert_eq!(
            (needs[&own].nodes, needs[&own].new_nodes),
            (2, 2),
            "{needs:?}"
        );
        // Two one-slice jobs share one.
        let two = [
            PendingSlice::pending(7, demand),
            PendingSlice::pending(8, demand),
        ];
        let (needs, _) = plan(&c, &[], &two);
        assert_eq!(
            (needs[&own].nodes, needs[&own].new_nodes),
            (1, 1),
            "{needs:?}"
        );
        // A warm node of the set with room for both takes one slice of the job; the other
        // opens a node.
        let warm = [WarmNode {
            name: "w".into(),
            set: own,
            free_cpus: 2,
            free_mib: 2 * demand.memory_mib,
            busy: true,
        }];
        let (needs, _) = plan(&c, &warm, &slices);
        assert_eq!(
            (needs[&own].nodes, needs[&own].new_nodes),
            (2, 1),
            "{needs:?}"
        );
    }

    #[test]
    fn every_node_set_reads_back_from_its_display_form() {
        for family in Family::ALL {
            for size in Size::ALL {
                let s = NodeSet { family, size };
                assert_eq!(NodeSet::parse(&s.to_string()), Some(s));
            }
        }
        for bad in [
            "",
            "compute",
            "compute-",
            "-small",
            "compute-huge",
            "gpu-small",
            "compute-small-x",
        ] {
            assert_eq!(NodeSet::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn family_by_memory_per_cpu() {
        assert_eq!(Family::for_demand(4, 12 * 1024), Family::Compute);
        assert_eq!(Family::for_demand(4, 12 * 1024 + 1), Family::General);
        assert_eq!(Family::for_demand(4, 24 * 1024), Family::General);
        assert_eq!(Family::for_demand(4, 24 * 1024 + 1), Family::Memory);
        assert_eq!(Family::for_demand(0, 1024), Family::Compute);
    }

    #[test]
    fn smallest_size_that_fits_after_the_reserve() {
        let c = catalog();
        // 2 GiB on one vCPU: c7g.medium keeps 1.5 GiB after the reserve; a c7g.large ($0.0725)
        // holds it, an m7g.medium ($0.0408) for less.
        assert_eq!(c.place(d(1, 2)).unwrap(), set(Family::General, Size::Xs));
        assert_eq!(c.place(d(2, 2)).unwrap(), set(Family::Compute, Size::Small));
        assert_eq!(c.place(d(1, 1)).unwrap(), set(Family::Compute, Size::Xs));
        // 2.5 GiB per vCPU asks for compute, whose largest holds 31.5 GiB: general holds it.
        assert_eq!(
            c.place(d(16, 40)).unwrap(),
            set(Family::General, Size::Xlarge)
        );
        let too_big = c.place(d(32, 64)).unwrap_err();
        assert_eq!(too_big.largest, "r7g.4xlarge");
        assert!(too_big.to_string().contains("r7g.4xlarge"), "{too_big}");
    }

    #[test]
    fn per_node_demand() {
        assert_eq!(Demand::per_node(8, Some(8192), 2, 2048), d(4, 4));
        assert_eq!(
            Demand::per_node(3, None, 1, 2048),
            Demand {
                cpus: 3,
                memory_mib: 6144
            }
        );
        assert_eq!(
            Demand::per_node(5, Some(1000), 2, 2048),
            Demand {
                cpus: 3,
                memory_mib: 500
            }
        );
    }

    #[test]
    fn first_fit_decreasing_fills_warm_nodes_of_the_set_before_new_ones() {
        let c = catalog();
        let large = set(Family::Compute, Size::Large); // 8 vCPUs, 15.5 GiB allocatable
        let medium = set(Family::Compute, Size::Medium); // 4 vCPUs, 7.5 GiB allocatable
        let warm = vec![
            WarmNode {
                name: "compute-large-0".into(),
                set: large,
                free_cpus: 2,
                free_mib: 4096,
                busy: true,
            },
            WarmNode {
                name: "compute-medium-0".into(),
                set: medium,
                free_cpus: 4,
                free_mib: 7680,
                busy: false,
            },
        ];
        let pending: Vec<PendingSlice> = [(1, d(1, 1)), (2, d(4, 4)), (3, d(4, 4)), (4, d(2, 2))]
            .into_iter()
            .map(|(job_id, demand)| PendingSlice::pending(job_id, demand))
            .collect();
        let (needs, stranded) = plan(&c, &warm, &pending);
        assert!(stranded.is_empty());
        // Each slice goes to its own set: 4 vCPUs and 4 GiB to compute-medium, where job 2 takes
        // the warm node and job 3 opens one; 2 vCPUs to compute-small, 1 vCPU and 1 GiB to
        // compute-xs, each new. The room left on the busy compute-large is not planned on.
        assert_eq!(needs[&large].nodes, 1, "{needs:?}");
        assert_eq!(needs[&large].new_nodes, 0);
        assert!(needs[&large].jobs.is_empty());
        assert_eq!((needs[&medium].nodes, needs[&medium].new_nodes), (2, 1));
        assert_eq!(needs[&medium].jobs, vec![2, 3]);
        let small = set(Family::Compute, Size::Small);
        let xs = set(Family::Compute, Size::Xs);
        assert_eq!(
            (needs[&small].new_nodes, needs[&small].jobs.clone()),
            (1, vec![4])
        );
        assert_eq!(
            (needs[&xs].new_nodes, needs[&xs].jobs.clone()),
            (1, vec![1])
        );
    }

    #[test]
    fn runs_of_one_node_jobs_are_placed_as_one_slice_at_a_time_would_place_them() {
        let c = catalog();
        // A mixed queue: many one-node jobs in a few shapes (runs), multi-node jobs among
        // them, all three families, and warm nodes with some room.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let shapes = [
            d(1, 1),
            d(2, 4),
            d(4, 4),
            d(1, 8),
            d(8, 16),
            d(2, 1),
            d(16, 32),
        ];
        let mut pending = Vec::new();
        for job_id in 1..=3_000u64 {
            let demand = shapes[next(shapes.len() as u64) as usize];
            let nodes = if next(10) == 0 { 1 + next(4) } else { 1 };
            for _ in 0..nodes {
                pending.push(PendingSlice::pending(job_id, demand));
            }
        }
        let warm = warm_nodes(
            &c,
            12,
            [
                set(Family::Compute, Size::Large),
                set(Family::General, Size::Medium),
                set(Family::Memory, Size::Xlarge),
            ],
        );
        let one_at_a_time = plan_in_runs(&c, &warm, &pending, false);
        let in_runs = plan_in_runs(&c, &warm, &pending, true);
        assert_eq!(in_runs, one_at_a_time);
        // Room for one node at first: the tree grows at nearly every new node, same plan.
        for runs in [true, false] {
            assert_eq!(
                plan_reserving(&c, &warm, &pending, &[], runs, Some(1)),
                one_at_a_time
            );
        }
        assert!(in_runs.0.values().map(|n| n.new_nodes).sum::<u32>() > 10);
    }

    #[test]
    fn a_long_run_of_one_shape_opens_its_new_nodes_at_once_as_one_at_a_time_would() {
        let c = catalog();
        // Runs of equal one-node jobs (some filling a warm node's room first, some not), whose
        // new nodes are opened at once but for the last: the same plan as one at a time.
        for (count, demand) in [(1, d(1, 1)), (2, d(1, 1)), (1_001, d(1, 1)), (777, d(2, 1))] {
            let pending: Vec<PendingSlice> = (1..=count)
                .map(|job_id| PendingSlice::pending(job_id, demand))
                .collect();
            let warm = [WarmNode {
                name: "w".into(),
                set: set(Family::Compute, Size::Large),
                free_cpus: 3,
                free_mib: 3 * 1024,
                busy: true,
            }];
            for warm in [&warm[..], &[]] {
                let in_runs = plan_in_runs(&c, warm, &pending, true);
                assert_eq!(in_runs, plan_in_runs(&c, warm, &pending, false), "{count}");
                let placed: usize = in_runs.0.values().map(|n| n.placed).sum();
                assert_eq!(placed, count as usize);
            }
        }
    }

    #[test]
    fn wide_jobs_of_small_slices_open_more_nodes_than_first_reserved() {
        let c = catalog();
        // A job of 40 one-CPU slices needs 40 distinct nodes though its CPUs fill about one:
        // the node tree, sized from the demand, grows on the way (and hides the job's nodes
        // again). A second job of 30 such slices goes onto those nodes, one slice per node; a
        // run of one-slice jobs fills the room left.
        let mut pending: Vec<PendingSlice> = Vec::new();
        for (job_id, slices) in [(1u64, 40), (2, 30)] {
            pending.extend((0..slices).map(|_| PendingSlice {
                job_id,
                demand: d(1, 1),
                running: false,
            }));
        }
        pending.extend((3..=100u64).map(|job_id| PendingSlice {
            job_id,
            demand: d(1, 1),
            running: false,
        }));
        let (needs, stranded) = plan(&c, &[], &pending);
        assert!(stranded.is_empty());
        assert_eq!(needs, plan_in_runs(&c, &[], &pending, false).0);
        // As planned with room for every slice's node from the start (the old reserve).
        for runs in [true, false] {
            assert_eq!(
                plan_reserving(&c, &[], &pending, &[], runs, Some(pending.len())).0,
                needs
            );
        }
        // The smallest set holding the demand: each node takes `per` slices.
        let shape = c.place(d(1, 1)).ok().and_then(|s| c.shape(s)).unwrap();
        let per = (shape.vcpus as usize).min((shape.allocatable_mib / 1024) as usize);
        let (job1, job2, singles) = (40, 30, 98);
        let expected = if per == 1 {
            job1 + job2 + singles
        } else {
            // Job 2 takes one slot on 30 of job 1's nodes; the singles fill what is left.
            let room = job1 * (per - 1) - job2;
            job1 + singles.saturating_sub(room).div_ceil(per)
        };
        let new: u32 = needs.values().map(|n| n.new_nodes).sum();
        assert_eq!(new as usize, expected);
        let placed: usize = needs.values().map(|n| n.placed).sum();
        assert_eq!(placed, 100);
    }

    #[test]
    fn sets_grow_at_once_and_shrink_after_the_idle_window() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let small = set(Family::Compute, Size::Small);
        let window = Duration::minutes(5);
        let mut needs = BTreeMap::new();
        needs.insert(
            small,
            Need {
                nodes: 3,
                new_nodes: 3,
                placed: 3,
                jobs: vec![7, 8, 9],
            },
        );
        let up = decide(&BTreeMap::new(), &needs, t0, window);
        assert_eq!(up.len(), 1);
        assert_eq!(
            (up[0].from, up[0].to, up[0].jobs.clone()),
            (0, 3, vec![7, 8, 9])
        );
        // The same need again: no decision.
        let mut current = BTreeMap::new();
        current.insert(
            small,
            SetState {
                desired: 3,
                last_busy: Some(t0),
            },
        );
        assert!(decide(&current, &needs, t0, window).is_empty());
        // Nothing to do: kept for the idle window, then zero.
        let none = BTreeMap::new();
        assert!(decide(&current, &none, t0 + Duration::minutes(4), window).is_empty());
        let down = decide(&current, &none, t0 + Duration::minutes(5), window);
        assert_eq!((down[0].from, down[0].to), (3, 0));
        assert!(down[0].reason.contains("idle"), "{}", down[0].reason);
    }

    #[test]
    fn a_job_no_shape_holds_is_stranded_not_placed() {
        let c = catalog();
        let pending = [PendingSlice {
            job_id: 9,
            demand: d(64, 64),
            running: false,
        }];
        let (needs, stranded) = plan(&c, &[], &pending);
        assert!(needs.is_empty());
        assert_eq!(stranded, vec![9]);
    }

    #[test]
    fn jobs_given_as_runs_of_one_demand_are_planned_as_their_slices_would_be() {
        let c = catalog();
        // A queue of 4,000 jobs: one-slice jobs of five demands (ids interleaved), jobs of
        // several slices of two other demands, one-slice jobs of those two demands too, and a
        // running job on nodes the plan does not know.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let singles = [d(1, 1), d(2, 4), d(1, 8), d(8, 16), d(2, 1)];
        let wide = [d(4, 4), d(16, 32)];
        let mut all = Vec::new();
        let mut slices = Vec::new();
        let mut by_demand: BTreeMap<Demand, Vec<u64>> = BTreeMap::new();
        for job_id in 1..=4_000u64 {
            if next(5) == 0 {
                let demand = wide[next(2) as usize];
                for _ in 0..1 + next(4) {
                    let s = PendingSlice::pending(job_id, demand);
                    all.push(s);
                    slices.push(s);
                }
            } else {
                let demand = singles[next(5) as usize];
                all.push(PendingSlice::pending(job_id, demand));
                by_demand.entry(demand).or_default().push(job_id);
            }
        }
        let running = PendingSlice {
            job_id: 5_000,
            demand: d(2, 4),
            running: true,
        };
        all.push(running);
        slices.push(running);
        // Each demand's jobs as two runs (odd and even positions), the first ids unsorted.
        let mut runs = Vec::new();
        for (demand, ids) in &by_demand {
            for half in 0..2 {
                let mine: Vec<u64> = ids.iter().skip(half).step_by(2).copied().collect();
                runs.push(PendingRun {
                    demand: *demand,
                    count: mine.len(),
                    first: mine.iter().take(500).rev().copied().collect(),
                });
            }
        }
        let warm = warm_nodes(
            &c,
            9,
            [
                set(Family::Compute, Size::Large),
                set(Family::General, Size::Medium),
                set(Family::Compute, Size::Xs),
            ],
        );
        let expected = plan(&c, &warm, &all);
        // The runs' first ids were given unsorted and beyond what a need names: sorted first.
        let (needs, stranded) = plan_with_runs(&c, &warm, &slices, &runs);
        assert_eq!((&needs, &stranded), (&expected.0, &expected.1));
        for runs_mode in [true, false] {
            for reserve in [None, Some(1)] {
                let got = plan_reserving(&c, &warm, &slices, &runs, runs_mode, reserve);
                assert_eq!(got, expected, "{runs_mode} {reserve:?}");
            }
        }
        // Every pending job is counted once, the running one not at all; a need names at most
        // MAX_DRIVING_JOBS.
        let placed: usize = needs.values().map(|n| n.placed).sum();
        assert_eq!(placed, 4_000);
        assert!(needs.values().all(|n| n.jobs.len() <= MAX_DRIVING_JOBS));
        assert!(needs.values().any(|n| n.jobs.len() == MAX_DRIVING_JOBS));
        assert!(needs.values().all(|n| !n.jobs.contains(&5_000)));
    }

    #[test]
    fn a_running_job_holds_room_but_is_not_a_pending_job_of_the_need() {
        let c = catalog();
        let demand = d(1, 1);
        let mut slices = vec![PendingSlice {
            job_id: 1,
            demand,
            running: true,
        }];
        let (alone, _) = plan(&c, &[], &slices);
        let own = c.place(demand).unwrap();
        assert_eq!((alone[&own].nodes, alone[&own].placed), (1, 0));
        assert!(alone[&own].jobs.is_empty());
        slices.push(PendingSlice::pending(2, demand));
        let (both, _) = plan(&c, &[], &slices);
        assert_eq!((both[&own].placed, both[&own].jobs.clone()), (1, vec![2]));
    }
}
