//! Simulation of the scaling policy over a workload trace, on a simulated clock (pure: the trace
//! comes in parsed, time is whole seconds after the trace's start).
//!
//! Three answers to "what would this workload cost, and how long would it wait":
//! - **the lower bound**: each job's run time × the cheapest capacity that holds it — the
//!   hourly price of any shape × the job's share of it (the larger of its vCPU share and its
//!   memory share), as if the fleet were perfectly packed, never idle, never starting. No fleet
//!   costs less.
//! - **a fixed fleet the size of the site's machine** (the SWF header's `MaxProcs`, or a count
//!   the caller gives): that many vCPUs of each family's largest shape, split by the families'
//!   shares of the work, always up, its jobs placed on those shapes; jobs queue for it (EASY backfill: the oldest waiting job of
//!   a family holds a reservation, later jobs pass it only when they do not delay it).
//! - **elastic** (Clusterra's policy): every `cycle` seconds in which something changed (a job
//!   arrived or ended, a node became ready) the scaler places the pending jobs ([`plan`]) onto
//!   the nodes that are up or starting and decides desired counts ([`decide`], the same
//!   functions the service runs); missing nodes are launched and are ready `cold_start` seconds
//!   later. Two idle policies: **set** (the service's: a node set shrinks once it has had less
//!   work than nodes for the idle window) and **node** (ParallelCluster's: each node is
//!   terminated once it has been idle for the idle window). Nodes are paid from launch to
//!   termination, cold start included, as EC2 bills; the elastic cost is split into cold starts,
//!   idle nodes and busy nodes, and busy minus the bound is what packing costs.
//!
//! A trace job asks for processors and, maybe, memory; it is placed by the service's rule
//! ([`crate::placement`]: its family by memory per vCPU, then the shape and node count whose
//! whole nodes cost least), over at most `max_nodes_per_job` nodes. Without memory,
//! `default_mib_per_cpu` per processor is assumed. A job no shape holds, or one that needs more
//! nodes than allowed, is refused and reported with its cause and its share of the work.
//!
//! The elastic scheduler (the local executor's rule, `gateways::local`; on a Slurm cluster Slurm
//! chooses nodes its own way) starts pending jobs in submit order on ready nodes of their family
//! with room, and lets a later job pass one that does not fit (new nodes are coming
//! for it). A job takes room on a node of another size only when, by the time limits, it ends
//! before the node's own jobs — so it never keeps a node up longer than the node would have been
//! up anyway — and among those the node whose jobs end soonest after it; else a node of its own
//! set (the size placement chose, which the planner opens for it). Without this rule a one-vCPU
//! job left in a c7g.4xlarge's hole kept the node up after its big job ended: 60–76% of the
//! packing cost over the archive traces was such nodes running one job. A job's wait is its start
//! minus its submit, so cold starts are in it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::MicroUsd;
use crate::placement::{Ask, cheapest, cheapest_of};
use crate::scaling::{
    Catalog, Demand, Family, NodeSet, PendingSlice, SetState, Size, WarmNode, capacity_price,
    decide, mark_full, plan,
};
use crate::trace::Trace;

/// The default most nodes of one simulated job: far above any trace's widest job.
pub const MAX_NODES_PER_JOB: u32 = 100_000;

/// The largest site machine simulated as a fixed fleet, in processors (62,500 nodes of 16
/// vCPUs): a trace header or a flag naming more is not a machine but a typo or an attack on
/// memory, and gets no fixed fleet.
pub const MAX_SITE_PROCS: u64 = 1_000_000;

/// How idle elastic nodes go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdlePolicy {
    /// The service's: a node set shrinks once it has had less work than nodes for the window.
    #[default]
    Set,
    /// Per node: a node idle for the whole window is terminated.
    Node,
}

/// Knobs of a simulation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SimSettings {
    /// Seconds from a node's launch to its being ready for jobs.
    pub cold_start: i64,
    /// Seconds of idleness before nodes go (per set or per node, by the policy).
    pub idle_window: i64,
    /// Seconds between scaling cycles (the service's poll interval).
    pub cycle: i64,
    /// Memory assumed per processor when the trace does not say.
    pub default_mib_per_cpu: u64,
    /// The most nodes one job may use (the cluster's limit).
    pub max_nodes_per_job: u32,
    /// The site's machine in processors; `None`: the trace header's `MaxProcs`.
    pub site_procs: Option<u64>,
    /// Which elastic policies run: `None` both.
    pub idle_policy: Option<IdlePolicy>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            cold_start: 80,
            idle_window: 300,
            cycle: 1,
            default_mib_per_cpu: 2048,
            max_nodes_per_job: MAX_NODES_PER_JOB,
            site_procs: None,
            idle_policy: None,
        }
    }
}

/// A trace job as the simulation runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimJob {
    pub id: u64,
    pub submit: i64,
    pub run: i64,
    /// Nodes it is spread over, each needing `demand`.
    pub nodes: u32,
    pub demand: Demand,
    pub family: Family,
    /// Its processors (for the work it is).
    pub cpus: u32,
    /// Its lower-bound price, micro-USD an hour.
    pub bound_rate: u64,
    /// Seconds it may run (its time limit; [`NO_LIMIT`] when the trace has none): what the
    /// scheduler knows of its end.
    pub limit: i64,
    /// Its own node set: where the planner opens nodes for it.
    pub set: NodeSet,
    /// Where a fixed fleet of each family's largest shape runs it: nodes, each node's demand,
    /// the family.
    pub fixed: (u32, Demand, Family),
}

/// The time limit of a job without one, in seconds: far past any trace.
pub const NO_LIMIT: i64 = i64::MAX / 4;

impl SimJob {
    fn cpu_seconds(&self) -> u64 {
        u64::from(self.cpus) * u64::try_from(self.run).unwrap_or(0)
    }
}

/// Jobs the simulation could not run, by cause.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Refused {
    /// One processor's memory is more than any shape holds.
    pub no_shape: usize,
    /// It needs more nodes than `max_nodes_per_job`.
    pub too_wide: usize,
    /// Their processor-seconds, and that as a share of the whole trace's.
    pub cpu_seconds: u64,
    pub work_share: f64,
}

impl Refused {
    pub fn jobs(&self) -> usize {
        self.no_shape + self.too_wide
    }
}

/// The cheapest capacity that holds `cpus` processors with `mib` (module docs), micro-USD an
/// hour: the least over every shape of hourly × max(vCPU share, memory share).
pub fn bound_rate(catalog: &Catalog, cpus: u32, mib: u64) -> u64 {
    let whole = Demand {
        cpus,
        memory_mib: mib,
    };
    catalog
        .shapes()
        .map(|s| capacity_price(s, whole, 1))
        .min()
        .map_or(0, |r| u64::try_from(r).unwrap_or(u64::MAX))
}

/// A trace shape placed: nodes, each node's demand, the family, the lower-bound rate.
type Placed = (u32, Demand, NodeSet, u64, (u32, Demand, Family));

/// Turns trace jobs into simulated ones, placed by the service's rule; and what was refused.
pub fn prepare(trace: &Trace, catalog: &Catalog, settings: &SimSettings) -> (Vec<SimJob>, Refused) {
    let mut jobs = Vec::with_capacity(trace.jobs.len());
    let mut refused = Refused::default();
    let mut total: u64 = 0;
    // Traces repeat shapes: each is placed once, and a refused one is judged once (`Err`: whether
    // only the node-count limit refused it).
    let mut memo: HashMap<(u32, Option<u64>), Result<Placed, bool>> = HashMap::new();
    let default = settings.default_mib_per_cpu;
    for t in &trace.jobs {
        let work = u64::from(t.cpus) * u64::try_from(t.run).unwrap_or(0);
        total = total.saturating_add(work);
        let placed = *memo.entry((t.cpus, t.memory_mib)).or_insert_with(|| {
            let ask = Ask::processors(t.cpus, t.memory_mib, settings.max_nodes_per_job, default);
            let placed = cheapest(catalog, &ask).ok().map(|p| {
                let mib = t
                    .memory_mib
                    .unwrap_or(u64::from(t.cpus).saturating_mul(default));
                (
                    p.nodes,
                    p.demand,
                    // The planner's set for one node, where the scheduler runs it.
                    catalog.place(p.demand).unwrap_or(p.set),
                    bound_rate(catalog, t.cpus, mib),
                    // On the largest shapes (it fits them if it fits any smaller one).
                    cheapest_of(catalog, &ask, Some(Size::Xlarge))
                        .map_or((p.nodes, p.demand, p.family), |f| {
                            (f.nodes, f.demand, f.family)
                        }),
                )
            });
            // Would any node count hold it? Then only the limit refused it.
            placed.ok_or_else(|| {
                let wide = Ask::processors(t.cpus, t.memory_mib, u32::MAX, default);
                cheapest(catalog, &wide).is_ok()
            })
        });
        match placed {
            Ok((nodes, demand, set, bound_rate, fixed)) => jobs.push(SimJob {
                fixed,
                id: t.id,
                submit: t.submit,
                run: t.run,
                nodes,
                demand,
                family: set.family,
                cpus: t.cpus,
                bound_rate,
                limit: t
                    .time_limit
                    .filter(|l| *l > 0)
                    .map_or(NO_LIMIT, |l| l.min(NO_LIMIT)),
                set,
            }),
            Err(too_wide) => {
                if too_wide {
                    refused.too_wide += 1;
                } else {
                    refused.no_shape += 1;
                }
                refused.cpu_seconds = refused.cpu_seconds.saturating_add(work);
            }
        }
    }
    if total > 0 {
        refused.work_share = refused.cpu_seconds as f64 / total as f64;
    }
    jobs.sort_by_key(|j| (j.submit, j.id));
    (jobs, refused)
}

/// Queue waits, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Waits {
    pub p50: i64,
    pub p95: i64,
    pub p99: i64,
    pub mean: f64,
    pub max: i64,
}

impl Waits {
    pub fn of(mut waits: Vec<i64>) -> Waits {
        if waits.is_empty() {
            return Waits::default();
        }
        waits.sort_unstable();
        // Nearest rank.
        let pct = |p: usize| waits[(waits.len() * p).div_ceil(100).max(1) - 1];
        Waits {
            p50: pct(50),
            p95: pct(95),
            p99: pct(99),
            mean: waits.iter().sum::<i64>() as f64 / waits.len() as f64,
            max: waits[waits.len() - 1],
        }
    }
}

/// One node set's share of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SetUsage {
    pub instance_type: String,
    pub node_seconds: u64,
    pub cost: MicroUsd,
    /// The most nodes up (or starting) at once.
    pub peak_nodes: u32,
    pub launches: u64,
}

/// Where a fleet's money went: nodes starting, nodes up with nothing to run, nodes running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Breakdown {
    pub cold_start: MicroUsd,
    pub idle: MicroUsd,
    pub busy: MicroUsd,
}

/// What one fleet did over the trace.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FleetReport {
    pub node_seconds: u64,
    pub cost: MicroUsd,
    pub breakdown: Breakdown,
    pub waits: Waits,
    /// Seconds from the trace's start to the last job's end.
    pub makespan: i64,
    pub launches: u64,
    pub scaling_cycles: u64,
    /// Jobs that ran.
    pub started: usize,
    #[serde(serialize_with = "by_name")]
    pub per_set: BTreeMap<NodeSet, SetUsage>,
}

impl FleetReport {
    pub fn node_hours(&self) -> f64 {
        self.node_seconds as f64 / 3600.0
    }
}

/// The fixed fleet the size of the site's machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteReport {
    /// The machine's processors, and where that number came from.
    pub procs: u64,
    pub source: &'static str,
    /// Nodes per set.
    #[serde(serialize_with = "by_name")]
    pub fleet: BTreeMap<NodeSet, u32>,
    pub report: FleetReport,
}

/// The elastic runs, by idle policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Elastic {
    pub set: Option<FleetReport>,
    pub node: Option<FleetReport>,
}

/// Every answer over one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub settings: SimSettings,
    /// Jobs simulated.
    pub jobs: usize,
    pub refused: Refused,
    /// Trace lines without run time or processors.
    pub skipped: usize,
    /// Jobs cancelled before they started (never run).
    pub cancelled: usize,
    /// Jobs whose memory is what they used (they requested none).
    pub memory_from_use: usize,
    /// Processor-seconds simulated.
    pub work_cpu_seconds: u64,
    pub lower_bound: MicroUsd,
    pub elastic: Elastic,
    pub site: Option<SiteReport>,
    /// The waits the site's own scheduler gave the simulated jobs (SWF field 3).
    pub traced_waits: Option<Waits>,
}

/// A map by node set as a JSON object keyed `compute-small`, …
fn by_name<S: serde::Serializer, V: Serialize>(
    map: &BTreeMap<NodeSet, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.iter().map(|(set, v)| (set.to_string(), v)))
}

/// Runs every answer over `trace`.
pub fn simulate(trace: &Trace, catalog: &Catalog, settings: SimSettings) -> SimReport {
    let (jobs, refused) = prepare(trace, catalog, &settings);
    let lower = jobs
        .iter()
        .map(|j| u128::from(j.bound_rate) * u128::from(u64::try_from(j.run).unwrap_or(0)) / 3600)
        .sum::<u128>();
    let site = settings
        .site_procs
        .map(|p| (p, "given"))
        .or(trace.max_procs.map(|p| (p, "trace header MaxProcs")))
        .filter(|(p, _)| *p <= MAX_SITE_PROCS)
        .map(|(procs, source)| {
            // Placed on the fleet's shapes: each family's largest.
            let on_largest: Vec<SimJob> = jobs
                .iter()
                .map(|j| SimJob {
                    nodes: j.fixed.0,
                    demand: j.fixed.1,
                    family: j.fixed.2,
                    ..*j
                })
                .collect();
            let fleet = site_fleet(&on_largest, catalog, procs);
            SiteReport {
                procs,
                source,
                report: run(&on_largest, catalog, settings, Mode::Fixed(&fleet)),
                fleet,
            }
        });
    let wants = |p: IdlePolicy| settings.idle_policy.is_none_or(|w| w == p);
    let ids: BTreeSet<u64> = jobs.iter().map(|j| j.id).collect();
    let traced: Vec<i64> = trace
        .jobs
        .iter()
        .filter(|t| ids.contains(&t.id))
        .filter_map(|t| t.traced_wait)
        .collect();
    SimReport {
        settings,
        jobs: jobs.len(),
        skipped: trace.skipped,
        cancelled: trace.cancelled,
        memory_from_use: trace.jobs.iter().filter(|t| t.memory_used).count(),
        work_cpu_seconds: jobs.iter().map(SimJob::cpu_seconds).sum(),
        lower_bound: MicroUsd(i64::try_from(lower).unwrap_or(i64::MAX)),
        elastic: Elastic {
            set: wants(IdlePolicy::Set)
                .then(|| run(&jobs, catalog, settings, Mode::Elastic(IdlePolicy::Set))),
            node: wants(IdlePolicy::Node)
                .then(|| run(&jobs, catalog, settings, Mode::Elastic(IdlePolicy::Node))),
        },
        site,
        traced_waits: (!traced.is_empty()).then(|| Waits::of(traced)),
        refused,
    }
}

/// The site's machine as a fixed fleet: `procs` vCPUs of each family's largest shape, shared out
/// by the families' work (processor-seconds), each family with at least its widest job's nodes.
pub fn site_fleet(jobs: &[SimJob], catalog: &Catalog, procs: u64) -> BTreeMap<NodeSet, u32> {
    let mut work: BTreeMap<Family, (u128, u32)> = BTreeMap::new();
    for j in jobs {
        let w = work.entry(j.family).or_default();
        w.0 += u128::from(j.cpu_seconds());
        w.1 = w.1.max(j.nodes);
    }
    let total: u128 = work.values().map(|w| w.0).sum::<u128>().max(1);
    let mut out = BTreeMap::new();
    for (family, (w, widest)) in work {
        let Some(shape) = catalog.largest(family) else {
            continue;
        };
        let vcpus = u128::from(procs) * w / total;
        let nodes = u32::try_from(vcpus.div_ceil(u128::from(shape.vcpus.max(1))))
            .unwrap_or(u32::MAX)
            .max(widest)
            .max(1);
        out.insert(
            NodeSet {
                family,
                size: shape.size,
            },
            nodes,
        );
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A job ends (frees its nodes first).
    Finish(usize),
    /// A node's cold start is over.
    Ready(usize),
    /// A scaling cycle.
    Cycle,
    /// A node may have been idle for the whole window (the node policy).
    Idle(usize),
}

/// The smallest job that found no room in one scheduling pass: vCPUs, MiB, nodes, time limit.
type Failed = (u32, u64, u32, i64);

/// Which fleet a run is.
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    Fixed(&'a BTreeMap<NodeSet, u32>),
    Elastic(IdlePolicy),
}

struct Node {
    set: NodeSet,
    free_cpus: u32,
    free_mib: u64,
    launched: i64,
    ready_at: i64,
    running: u32,
    gone: bool,
    /// Since when it has run nothing (meaningful while `running == 0` and it is ready).
    idle_since: i64,
    idle_seconds: u64,
    /// When each running job's time limit is up: the node's jobs end by the latest.
    ends: Vec<i64>,
}

struct Sim<'a> {
    jobs: &'a [SimJob],
    catalog: &'a Catalog,
    settings: SimSettings,
    elastic: Option<IdlePolicy>,
    t: i64,
    nodes: Vec<Node>,
    /// Live node numbers per family, oldest first.
    by_family: BTreeMap<Family, BTreeSet<usize>>,
    /// Live nodes with room (a free vCPU and free memory), per family: what the scheduler and
    /// the planner look at. The rest are full: the planner only counts them, per set, so a
    /// cycle's work follows the nodes with room, not the fleet.
    roomy: BTreeMap<Family, BTreeSet<usize>>,
    full_nodes: BTreeMap<NodeSet, u32>,
    live: BTreeMap<NodeSet, u32>,
    desired: BTreeMap<NodeSet, SetState>,
    /// Sets whose work filled their nodes at the last cycle (and so until now: nothing changed
    /// between cycles).
    full: Vec<NodeSet>,
    /// Pending job numbers in submit order.
    pending: Vec<usize>,
    /// Per started job: when its time limit is up.
    limit_ends: Vec<i64>,
    placed: Vec<Vec<usize>>,
    /// Running jobs by (end, job): the fixed fleet's reservations look ahead with them.
    running: BTreeSet<(i64, usize)>,
    events: BinaryHeap<Reverse<(i64, Ev)>>,
    next_cycle: Option<i64>,
    waits: Vec<i64>,
    report: FleetReport,
}

/// Runs one fleet.
fn run(jobs: &[SimJob], catalog: &Catalog, settings: SimSettings, mode: Mode<'_>) -> FleetReport {
    let mut sim = Sim {
        jobs,
        catalog,
        settings,
        elastic: match mode {
            Mode::Elastic(p) => Some(p),
            Mode::Fixed(_) => None,
        },
        t: 0,
        nodes: Vec::new(),
        by_family: BTreeMap::new(),
        roomy: BTreeMap::new(),
        full_nodes: BTreeMap::new(),
        live: BTreeMap::new(),
        desired: BTreeMap::new(),
        full: Vec::new(),
        pending: Vec::new(),
        limit_ends: vec![0; jobs.len()],
        placed: vec![Vec::new(); jobs.len()],
        running: BTreeSet::new(),
        events: BinaryHeap::new(),
        next_cycle: None,
        waits: Vec::with_capacity(jobs.len()),
        report: FleetReport::default(),
    };
    let start = jobs.first().map_or(0, |j| j.submit.min(0));
    sim.t = start;
    if let Mode::Fixed(fleet) = mode {
        for (&set, &n) in fleet {
            for _ in 0..n {
                sim.launch(set, start, 0);
            }
        }
    }
    let mut next_job = 0;
    let mut idle_checks = Vec::new();
    loop {
        let next_event = sim.events.peek().map(|Reverse((t, _))| *t);
        let next_arrival = jobs.get(next_job).map(|j| j.submit);
        let t = match (next_event, next_arrival) {
            (None, None) => break,
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
        };
        sim.t = t;
        let mut freed = false;
        let mut cycle = false;
        while let Some(Reverse((at, ev))) = sim.events.peek().copied() {
            if at != t {
                break;
            }
            sim.events.pop();
            match ev {
                Ev::Finish(j) => {
                    sim.finish(j);
                    freed = true;
                }
                Ev::Ready(n) => {
                    if !sim.nodes[n].gone {
                        freed = true;
                        sim.nodes[n].idle_since = t;
                        sim.idle_check(n);
                    }
                }
                Ev::Cycle => cycle = true,
                Ev::Idle(n) => idle_checks.push(n),
            }
        }
        let first_new = sim.pending.len();
        while next_job < jobs.len() && jobs[next_job].submit == t {
            sim.pending.push(next_job);
            next_job += 1;
        }
        let arrived = sim.pending.len() > first_new;
        if freed || arrived {
            sim.schedule(if freed { 0 } else { first_new });
            if sim.elastic.is_some() {
                // The next cycle tick at or after now.
                let every = settings.cycle.max(1);
                sim.want_cycle_at((t + every - 1).div_euclid(every) * every);
            }
        }
        if cycle {
            sim.next_cycle = None;
            sim.scale();
        }
        for n in idle_checks.drain(..) {
            sim.expire_if_idle(n);
        }
        if sim.elastic == Some(IdlePolicy::Set) && (freed || cycle) {
            sim.terminate_surplus();
        }
    }
    let end = sim.t;
    for n in 0..sim.nodes.len() {
        if !sim.nodes[n].gone {
            sim.retire(n, end);
        }
    }
    sim.report.makespan = end - start;
    sim.report.started = sim.waits.len();
    sim.report.waits = Waits::of(std::mem::take(&mut sim.waits));
    sim.report.cost = MicroUsd(sim.report.per_set.values().map(|u| u.cost.0).sum());
    sim.report
}

/// `seconds` of a shape at `hourly`, micro-USD, rounded down.
fn price(hourly: MicroUsd, seconds: u64) -> i64 {
    i64::try_from(i128::from(hourly.0) * i128::from(seconds) / 3600).unwrap_or(i64::MAX)
}

impl Sim<'_> {
    fn launch(&mut self, set: NodeSet, at: i64, cold_start: i64) {
        let Some(shape) = self.catalog.shape(set) else {
            return;
        };
        let n = self.nodes.len();
        self.nodes.push(Node {
            set,
            free_cpus: shape.vcpus,
            free_mib: shape.allocatable_mib,
            launched: at,
            ready_at: at + cold_start,
            running: 0,
            gone: false,
            idle_since: at + cold_start,
            idle_seconds: 0,
            ends: Vec::new(),
        });
        self.by_family.entry(set.family).or_default().insert(n);
        self.roomy.entry(set.family).or_default().insert(n);
        let live = self.live.entry(set).or_default();
        *live += 1;
        let usage = self.report.per_set.entry(set).or_insert_with(|| SetUsage {
            instance_type: shape.instance_type.clone(),
            ..SetUsage::default()
        });
        usage.launches += 1;
        usage.peak_nodes = usage.peak_nodes.max(*live);
        self.report.launches += 1;
        // Also with no cold start: the Ready event is what makes the scheduler look again.
        self.events.push(Reverse((at + cold_start, Ev::Ready(n))));
    }

    fn retire(&mut self, n: usize, at: i64) {
        let node = &mut self.nodes[n];
        node.gone = true;
        if node.running == 0 && at > node.idle_since {
            node.idle_seconds += u64::try_from(at - node.idle_since).unwrap_or(0);
        }
        let set = node.set;
        let seconds = u64::try_from(at - node.launched).unwrap_or(0);
        let cold = u64::try_from(node.ready_at.min(at) - node.launched).unwrap_or(0);
        let idle = node.idle_seconds.min(seconds - cold);
        if let Some(live) = self.live.get_mut(&set) {
            *live = live.saturating_sub(1);
        }
        if let Some(list) = self.by_family.get_mut(&set.family) {
            list.remove(&n);
        }
        let was_roomy = self
            .roomy
            .get_mut(&set.family)
            .is_some_and(|r| r.remove(&n));
        if !was_roomy && let Some(full) = self.full_nodes.get_mut(&set) {
            *full = full.saturating_sub(1);
        }
        self.report.node_seconds += seconds;
        if let (Some(usage), Some(shape)) =
            (self.report.per_set.get_mut(&set), self.catalog.shape(set))
        {
            usage.node_seconds += seconds;
            // Rounded down to the micro-dollar per node stay.
            let cost = price(shape.hourly, seconds);
            usage.cost = MicroUsd(usage.cost.0 + cost);
            let b = &mut self.report.breakdown;
            let (c, i) = (price(shape.hourly, cold), price(shape.hourly, idle));
            b.cold_start.0 += c;
            b.idle.0 += i;
            b.busy.0 += cost - c - i;
        }
    }

    fn finish(&mut self, j: usize) {
        let d = self.jobs[j].demand;
        let end = self.t;
        self.running.remove(&(end, j));
        let limit_end = self.limit_ends[j];
        for n in std::mem::take(&mut self.placed[j]) {
            let node = &mut self.nodes[n];
            let was_full = node.free_cpus == 0 || node.free_mib == 0;
            node.free_cpus += d.cpus;
            node.free_mib += d.memory_mib;
            node.running -= 1;
            if let Some(k) = node.ends.iter().position(|e| *e == limit_end) {
                node.ends.swap_remove(k);
            }
            let set = node.set;
            if was_full && node.free_cpus > 0 && node.free_mib > 0 {
                self.roomy.entry(set.family).or_default().insert(n);
                if let Some(full) = self.full_nodes.get_mut(&set) {
                    *full = full.saturating_sub(1);
                }
            }
            let node = &mut self.nodes[n];
            if node.running == 0 {
                node.idle_since = end;
                self.idle_check(n);
            }
        }
    }

    /// Under the node policy, look again once the node may have been idle for the window.
    fn idle_check(&mut self, n: usize) {
        if self.elastic == Some(IdlePolicy::Node) && self.nodes[n].running == 0 {
            let at = self.nodes[n].idle_since + self.settings.idle_window;
            self.events.push(Reverse((at, Ev::Idle(n))));
        }
    }

    /// The node policy: a node idle for the whole window goes, and its set's count with it.
    fn expire_if_idle(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.gone
            || node.running > 0
            || node.ready_at > self.t
            || self.t - node.idle_since < self.settings.idle_window
        {
            return;
        }
        let set = node.set;
        self.retire(n, self.t);
        if let Some(state) = self.desired.get_mut(&set) {
            state.desired = state.desired.saturating_sub(1);
        }
    }

    /// Starts pending jobs (from `from` on) that fit on ready nodes.
    fn schedule(&mut self, from: usize) {
        let t = self.t;
        // Per family (elastic: per node set), the smallest demand that found no room this pass:
        // anything at least as big (and as long: elastic jobs may take room by their ends)
        // cannot fit either.
        let mut failed: BTreeMap<(Family, Option<NodeSet>), Failed> = BTreeMap::new();
        // The fixed fleet: per family, the reservation of its oldest waiting job (when it
        // starts, and on which nodes); a later job may not take those nodes past then.
        let mut reserved: BTreeMap<Family, (i64, Vec<usize>)> = BTreeMap::new();
        let fixed = self.elastic.is_none();
        let from = if fixed { 0 } else { from };
        let mut started = Vec::new();
        let mut chosen = Vec::new();
        let mut ranked: Vec<((u8, i64), usize)> = Vec::new();
        for (i, &j) in self.pending.iter().enumerate().skip(from) {
            let job = self.jobs[j];
            let d = job.demand;
            let end = t.saturating_add(job.limit);
            let (key, limit) = if fixed {
                ((job.family, None), 0)
            } else {
                ((job.family, Some(job.set)), job.limit)
            };
            if let Some(&(c, m, k, l)) = failed.get(&key)
                && d.cpus >= c
                && d.memory_mib >= m
                && job.nodes >= k
                && limit >= l
            {
                continue;
            }
            let holds = reserved
                .get(&job.family)
                .filter(|(shadow, _)| t + job.run > *shadow)
                .map(|(_, nodes)| nodes.as_slice());
            chosen.clear();
            let fits = |node: &Node| {
                node.ready_at <= t && node.free_cpus >= d.cpus && node.free_mib >= d.memory_mib
            };
            if fixed {
                // First fit, off the reserved nodes.
                for &n in self.roomy.get(&job.family).into_iter().flatten() {
                    if fits(&self.nodes[n]) && holds.is_none_or(|h| !h.contains(&n)) {
                        chosen.push(n);
                        if chosen.len() == job.nodes as usize {
                            break;
                        }
                    }
                }
            } else {
                // Elastic (module docs): nodes whose jobs end after it, the soonest first; then
                // its own set's busy nodes, then its own set's idle ones; oldest first.
                ranked.clear();
                for &n in self.roomy.get(&job.family).into_iter().flatten() {
                    let node = &self.nodes[n];
                    if !fits(node) {
                        continue;
                    }
                    let ends_by = node.ends.iter().copied().max().unwrap_or(t);
                    let rank = if node.running > 0 && ends_by >= end {
                        (0, ends_by - end)
                    } else if node.set != job.set {
                        continue;
                    } else if node.running > 0 {
                        (1, 0)
                    } else {
                        (2, 0)
                    };
                    ranked.push((rank, n));
                }
                let k = job.nodes as usize;
                if ranked.len() > k {
                    ranked.select_nth_unstable(k - 1);
                    ranked.truncate(k);
                }
                chosen.extend(ranked.iter().map(|r| r.1));
            }
            if chosen.len() < job.nodes as usize {
                if fixed && !reserved.contains_key(&job.family) {
                    let r = self.reservation(job);
                    reserved.insert(job.family, r);
                    continue;
                }
                if holds.is_some() {
                    // Kept off the reserved nodes: a bigger but shorter job may still fit.
                    continue;
                }
                let f = failed
                    .entry(key)
                    .or_insert((d.cpus, d.memory_mib, job.nodes, limit));
                if d.cpus <= f.0 && d.memory_mib <= f.1 && job.nodes <= f.2 && limit <= f.3 {
                    *f = (d.cpus, d.memory_mib, job.nodes, limit);
                }
                continue;
            }
            for &n in &chosen {
                let node = &mut self.nodes[n];
                if node.running == 0 && t > node.idle_since {
                    node.idle_seconds += u64::try_from(t - node.idle_since).unwrap_or(0);
                }
                node.free_cpus -= d.cpus;
                node.free_mib -= d.memory_mib;
                node.ends.push(end);
                node.running += 1;
                if node.free_cpus == 0 || node.free_mib == 0 {
                    let set = node.set;
                    if let Some(r) = self.roomy.get_mut(&set.family) {
                        r.remove(&n);
                    }
                    *self.full_nodes.entry(set).or_default() += 1;
                }
            }
            self.placed[j] = chosen.clone();
            self.limit_ends[j] = end;
            if !fixed {
                // A node just made busy, or whose jobs now end later, may take jobs this pass
                // skipped as too big or too long.
                failed.retain(|(f, _), _| *f != job.family);
            }
            self.waits.push(t - job.submit);
            self.events.push(Reverse((t + job.run, Ev::Finish(j))));
            self.running.insert((t + job.run, j));
            started.push(i);
        }
        if !started.is_empty() {
            let mut k = 0;
            let mut s = started.iter().peekable();
            self.pending.retain(|_| {
                let keep = s.peek() != Some(&&k);
                if !keep {
                    s.next();
                }
                k += 1;
                keep
            });
        }
    }

    /// When `job` could start on the fixed fleet if nothing else started, and on which nodes:
    /// the running jobs of its family end in order, freeing their nodes, until it fits.
    fn reservation(&self, job: SimJob) -> (i64, Vec<usize>) {
        let d = job.demand;
        let family: Vec<usize> = self
            .by_family
            .get(&job.family)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut free: HashMap<usize, (u32, u64)> = family
            .iter()
            .map(|&n| (n, (self.nodes[n].free_cpus, self.nodes[n].free_mib)))
            .collect();
        let fits = |f: &(u32, u64)| f.0 >= d.cpus && f.1 >= d.memory_mib;
        let mut count = free.values().filter(|f| fits(f)).count();
        for &(end, r) in &self.running {
            let rj = self.jobs[r];
            if rj.family != job.family {
                continue;
            }
            for n in &self.placed[r] {
                if let Some(f) = free.get_mut(n) {
                    let before = fits(f);
                    f.0 += rj.demand.cpus;
                    f.1 += rj.demand.memory_mib;
                    if !before && fits(f) {
                        count += 1;
                    }
                }
            }
            if count >= job.nodes as usize {
                let nodes = family
                    .iter()
                    .copied()
                    .filter(|n| free.get(n).is_some_and(fits))
                    .take(job.nodes as usize)
                    .collect();
                return (end, nodes);
            }
        }
        // The fleet cannot hold it at all: it reserves nothing.
        (i64::MAX, Vec::new())
    }

    fn want_cycle_at(&mut self, at: i64) {
        let at = at.max(self.t);
        if self.next_cycle.is_none_or(|c| c > at) {
            self.next_cycle = Some(at);
            self.events.push(Reverse((at, Ev::Cycle)));
        }
    }

    /// One scaling cycle: plan, decide, launch.
    fn scale(&mut self) {
        let t = self.t;
        let node_policy = self.elastic == Some(IdlePolicy::Node);
        self.report.scaling_cycles += 1;
        // Full nodes cannot take a slice: the plan need not see them, only count them.
        let warm: Vec<WarmNode> = self
            .roomy
            .values()
            .flatten()
            .map(|&n| &self.nodes[n])
            .map(|n| WarmNode {
                name: String::new(),
                set: n.set,
                free_cpus: n.free_cpus,
                free_mib: n.free_mib,
                busy: n.running > 0,
            })
            .collect();
        let mut slices = Vec::new();
        for &j in &self.pending {
            let job = self.jobs[j];
            for _ in 0..job.nodes {
                slices.push(PendingSlice {
                    job_id: j as u64,
                    demand: job.demand,
                    running: false,
                });
            }
        }
        let (mut needs, _) = plan(self.catalog, &warm, &slices);
        for (set, &n) in &self.full_nodes {
            if n > 0 {
                needs.entry(*set).or_default().nodes += n;
            }
        }
        let now = instant(t);
        for set in std::mem::take(&mut self.full) {
            if let Some(state) = self.desired.get_mut(&set) {
                state.last_busy = Some(now);
            }
        }
        mark_full(&mut self.desired, &needs, now);
        let decisions = decide(
            &self.desired,
            &needs,
            now,
            Duration::seconds(self.settings.idle_window),
        );
        for d in decisions {
            // Under the node policy sets only grow here: nodes go one by one when idle.
            if node_policy && d.to <= d.from {
                continue;
            }
            let state = self.desired.entry(d.set).or_default();
            state.desired = d.to;
            if d.to > d.from {
                state.last_busy = Some(now);
            }
        }
        self.full = self
            .desired
            .iter()
            .filter(|(set, st)| {
                st.desired > 0 && needs.get(set).map_or(0, |n| n.nodes) >= st.desired
            })
            .map(|(set, _)| *set)
            .collect();
        let sets: Vec<(NodeSet, u32)> = self
            .desired
            .iter()
            .map(|(s, st)| (*s, st.desired))
            .collect();
        for (set, desired) in sets {
            let live = self.live.get(&set).copied().unwrap_or(0);
            for _ in live..desired {
                self.launch(set, t, self.settings.cold_start);
            }
        }
        if node_policy {
            return;
        }
        // Come back when a set that has more nodes than work may shrink.
        let wake = self
            .desired
            .iter()
            .filter(|(set, st)| st.desired > needs.get(set).map_or(0, |n| n.nodes))
            .filter_map(|(_, st)| st.last_busy)
            .map(|b| b.timestamp() + self.settings.idle_window)
            .min();
        if let Some(w) = wake {
            self.want_cycle_at(w.max(t + 1));
        }
    }

    /// Terminates idle nodes of sets above their desired count, starting ones first (an idle
    /// node has all its room: only the nodes with room are looked at).
    fn terminate_surplus(&mut self) {
        let t = self.t;
        let over: Vec<(NodeSet, u32)> = self
            .live
            .iter()
            .filter_map(|(set, &live)| {
                let desired = self.desired.get(set).map_or(0, |s| s.desired);
                (live > desired).then_some((*set, live - desired))
            })
            .collect();
        for (set, mut surplus) in over {
            let mut idle: Vec<usize> = self
                .roomy
                .get(&set.family)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&n| self.nodes[n].set == set && self.nodes[n].running == 0)
                .collect();
            // Not yet ready first, then the newest.
            idle.sort_by_key(|&n| (self.nodes[n].ready_at <= t, Reverse(self.nodes[n].launched)));
            for n in idle {
                if surplus == 0 {
                    break;
                }
                self.retire(n, t);
                surplus -= 1;
            }
        }
    }
}

/// Simulated seconds as an instant (the trace's start is the epoch).
fn instant(t: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{TraceJob, parse_csv, parse_swf};

    const CATALOG: &str = include_str!("../../fixtures/catalog/shapes.json");

    fn catalog() -> Catalog {
        Catalog::parse(CATALOG, 512).unwrap()
    }

    fn job(id: u64, submit: i64, run: i64, cpus: u32, gib: u64) -> TraceJob {
        TraceJob {
            id,
            submit,
            run,
            cpus,
            memory_mib: Some(gib * 1024),
            time_limit: None,
            traced_wait: None,
            memory_used: false,
        }
    }

    fn trace(jobs: Vec<TraceJob>) -> Trace {
        Trace {
            jobs,
            ..Trace::default()
        }
    }

    fn settings() -> SimSettings {
        SimSettings {
            cold_start: 80,
            idle_window: 300,
            cycle: 10,
            ..SimSettings::default()
        }
    }

    fn elastic(r: &SimReport) -> &FleetReport {
        r.elastic.set.as_ref().unwrap()
    }

    fn run_elastic(trace: &Trace, policy: IdlePolicy) -> FleetReport {
        let c = catalog();
        let (jobs, _) = prepare(trace, &c, &settings());
        run(&jobs, &c, settings(), Mode::Elastic(policy))
    }

    #[test]
    fn one_job_waits_for_the_cycle_and_the_cold_start_and_pays_until_the_idle_window_ends() {
        let t = trace(vec![job(1, 5, 600, 1, 1)]);
        let r = simulate(&t, &catalog(), settings());
        let e = elastic(&r);
        // Submitted at 5; the cycle at 10 launches one c7g.medium (1 vCPU, 1.5 GiB allocatable);
        // ready at 90; the job runs 90..690; the set is idle from 690 and shrinks at 990.
        assert_eq!(e.waits.p50, 85);
        assert_eq!(e.launches, 1);
        assert_eq!(e.node_seconds, 990 - 10);
        let medium = e.per_set.values().next().unwrap();
        assert_eq!(medium.instance_type, "c7g.medium");
        // $0.0363 an hour for 980 s, to the micro-dollar, rounded down.
        assert_eq!(e.cost, MicroUsd(36_300 * 980 / 3600));
        // 80 s starting, 300 s idle, 600 s busy.
        assert_eq!(e.breakdown.cold_start, MicroUsd(36_300 * 80 / 3600));
        assert_eq!(e.breakdown.idle, MicroUsd(36_300 * 300 / 3600));
        assert_eq!(
            e.breakdown.cold_start.0 + e.breakdown.idle.0 + e.breakdown.busy.0,
            e.cost.0
        );
        // The bound: 600 s of the cheapest capacity for 1 vCPU and 1 GiB, a sixteenth of a
        // c7g.4xlarge ($0.58 / 16).
        assert_eq!(r.lower_bound, MicroUsd(580_000 / 16 * 600 / 3600));
        // No site size in the trace or the settings: no fixed fleet.
        assert!(r.site.is_none());
    }

    #[test]
    fn a_warm_node_takes_the_next_job_without_a_cold_start() {
        let t = trace(vec![job(1, 0, 100, 1, 1), job(2, 200, 100, 1, 1)]);
        let r = run_elastic(&t, IdlePolicy::Set);
        // The first waits for the cold start (80 s); the second finds the node idle and warm.
        assert_eq!(r.waits.max, 80);
        assert_eq!(r.waits.p50, 0);
        assert_eq!(r.launches, 1);
    }

    #[test]
    fn the_node_policy_lets_each_idle_node_go_after_the_window() {
        // Two nodes' worth of work, one of which ends early: the node policy lets that node go
        // 300 s after its job ended.
        let t = trace(vec![job(1, 0, 60, 16, 16), job(2, 0, 3600, 16, 16)]);
        let set = run_elastic(&t, IdlePolicy::Set);
        let node = run_elastic(&t, IdlePolicy::Node);
        assert_eq!((set.launches, node.launches), (2, 2));
        assert_eq!((set.started, node.started), (2, 2));
        // Node policy: node A 0..(80+60+300), node B 0..(80+3600+300).
        assert_eq!(node.node_seconds, (80 + 60 + 300) + (80 + 3600 + 300));
        // Here the set policy does the same: the set was last full at 80, had one job from
        // 140, and shrinks at 440.
        assert_eq!(set.node_seconds, node.node_seconds, "{set:?} {node:?}");
        let r = simulate(&t, &catalog(), settings());
        assert!(r.elastic.set.is_some() && r.elastic.node.is_some());
        let only = simulate(
            &t,
            &catalog(),
            SimSettings {
                idle_policy: Some(IdlePolicy::Node),
                ..settings()
            },
        );
        assert!(only.elastic.set.is_none() && only.elastic.node.is_some());
    }

    #[test]
    fn sixteen_processors_at_the_default_memory_run_on_compute_nodes() {
        // No memory in the trace: the catalog's default (2,016 MiB per processor) fills one
        // c7g.4xlarge (31.5 GiB for jobs).
        let mut j = job(1, 0, 3600, 16, 0);
        j.memory_mib = None;
        let t = trace(vec![j]);
        let c = catalog();
        let fitting = SimSettings {
            default_mib_per_cpu: c.fitting_mib_per_cpu(),
            ..settings()
        };
        let (jobs, refused) = prepare(&t, &c, &fitting);
        assert_eq!(refused.jobs(), 0);
        assert_eq!((jobs[0].family, jobs[0].nodes), (Family::Compute, 1));
        let r = run(&jobs, &c, fitting, Mode::Elastic(IdlePolicy::Set));
        assert_eq!(
            r.per_set.values().next().unwrap().instance_type,
            "c7g.4xlarge"
        );
        // At 2,048 MiB (32 GiB) no compute node holds it: one m7g.4xlarge ($0.6528) costs less
        // than the two c7g.4xlarge ($1.16) its halves would keep up on their own.
        let (jobs, _) = prepare(&t, &c, &settings());
        assert_eq!((jobs[0].family, jobs[0].nodes), (Family::General, 1));
    }

    #[test]
    fn wide_jobs_fill_nodes_of_their_size_and_others_share_only_when_they_end_first() {
        // A 40-processor job at 1 GiB each fills five c7g.2xlarge (the cheapest whole nodes;
        // ten c7g.xlarge cost the same, and fewer nodes win).
        let c = catalog();
        let (jobs, refused) = prepare(&trace(vec![job(5, 0, 60, 40, 40)]), &c, &settings());
        assert_eq!(refused.jobs(), 0);
        let large = NodeSet {
            family: Family::Compute,
            size: Size::Large,
        };
        assert_eq!(
            (jobs[0].set, jobs[0].nodes, jobs[0].demand.cpus),
            (large, 5, 8)
        );
        // Scheduling: job 1 holds 9 of a c7g.4xlarge's 16 vCPUs for an hour. Job 2 (a
        // c7g.xlarge's size) ends, by its time limit, before job 1: it takes the room at once.
        // Job 3 would fit there too (9 + 3 + 3 of 16) but outlive job 1: it waits for a node of
        // its own size. (First fit on any node of the family would have put it there.)
        let sim = |id: u64, submit: i64, limit: i64, cpus: u32| {
            let demand = Demand {
                cpus,
                memory_mib: 4096,
            };
            let set = c.place(demand).unwrap();
            SimJob {
                id,
                submit,
                run: limit,
                nodes: 1,
                demand,
                family: set.family,
                cpus,
                bound_rate: 0,
                limit,
                set,
                fixed: (1, demand, set.family),
            }
        };
        let jobs = [
            sim(1, 0, 3600, 9),
            sim(2, 100, 600, 3),
            sim(3, 200, 7200, 3),
        ];
        let (xlarge, medium) = (jobs[0].set, jobs[1].set);
        assert_eq!(
            (xlarge.size, medium.size, medium.family),
            (Size::Xlarge, Size::Medium, Family::Compute)
        );
        let r = run(&jobs, &c, settings(), Mode::Elastic(IdlePolicy::Set));
        assert_eq!(r.started, 3, "{r:#?}");
        assert_eq!(r.per_set[&xlarge].peak_nodes, 1);
        assert_eq!(r.per_set[&medium].peak_nodes, 1, "only job 3 opened one");
        // Job 1 and job 3 wait for a cold start (80 s), job 2 for nothing.
        assert_eq!((r.waits.p50, r.waits.max), (80, 80));
        assert!(r.waits.mean < 80.0 * 2.0 / 3.0 + 1.0, "{:?}", r.waits);
    }

    #[test]
    fn refusals_say_why_and_how_much_of_the_work_they_are() {
        // 1 TiB on one processor: no shape, whatever the node count. 64 processors over at
        // most 2 nodes: too wide. One small job runs.
        let t = trace(vec![
            job(1, 0, 60, 1, 1024),
            job(2, 0, 100, 64, 64),
            job(3, 0, 40, 1, 1),
        ]);
        let s = SimSettings {
            max_nodes_per_job: 2,
            ..settings()
        };
        let r = simulate(&t, &catalog(), s);
        assert_eq!(r.jobs, 1);
        assert_eq!((r.refused.no_shape, r.refused.too_wide), (1, 1));
        assert_eq!(r.refused.cpu_seconds, 60 + 6400);
        let share = 6460.0 / 6500.0;
        assert!((r.refused.work_share - share).abs() < 1e-9);
        // Without the limit the wide job runs, on four full nodes.
        let r = simulate(&t, &catalog(), settings());
        assert_eq!((r.jobs, r.refused.jobs()), (2, 1));
        assert_eq!(elastic(&r).started, 2);
    }

    #[test]
    fn a_site_sized_fleet_queues_and_holds_a_reservation_for_the_oldest_job() {
        // A 32-processor machine: two c7g.4xlarge. A 32-processor job arrives behind a
        // 16-processor one; a stream of short 16-processor jobs follows. Without a reservation
        // the short ones would keep passing the wide one; with it the wide job starts when the
        // first ends, and short jobs pass only where they do not delay it.
        let mut jobs = vec![job(1, 0, 1000, 16, 16), job(2, 10, 500, 32, 32)];
        for i in 0..20 {
            jobs.push(job(10 + i, 20 + i as i64 * 50, 2000, 16, 16));
        }
        let t = Trace {
            max_procs: Some(32),
            ..trace(jobs)
        };
        let r = simulate(&t, &catalog(), settings());
        let site = r.site.as_ref().unwrap();
        assert_eq!((site.procs, site.source), (32, "trace header MaxProcs"));
        assert_eq!(site.fleet.values().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(site.report.started, 22);
        // Job 1 runs 0..1000 on one node; the wide job holds both from 1000 (no short job
        // takes the idle node before: each would run past 1000), runs 1000..1500; then the
        // short ones two at a time, ten rounds of 2000 s.
        assert_eq!(site.report.makespan, 1500 + 10 * 2000);
        // The longest wait: the second to last short job (arrived at 920) started in the
        // last round, at 1500 + 9 × 2000.
        assert_eq!(site.report.waits.max, 1500 + 9 * 2000 - 920);
        let c = catalog();
        // A given size wins over the header.
        let r = simulate(
            &t,
            &c,
            SimSettings {
                site_procs: Some(64),
                ..settings()
            },
        );
        assert_eq!(r.site.unwrap().fleet.values().sum::<u32>(), 4);
        // A header claiming more than any machine gets no fixed fleet (and no huge one).
        let huge = Trace {
            max_procs: Some(MAX_SITE_PROCS + 1),
            ..t.clone()
        };
        assert!(simulate(&huge, &c, settings()).site.is_none());
    }

    #[test]
    fn the_fixture_traces_simulate_and_elastic_is_above_the_bound() {
        let c = catalog();
        for text in [
            include_str!("../../fixtures/traces/small.swf"),
            include_str!("../../fixtures/traces/small.csv"),
        ] {
            let trace = if text.starts_with("submit_seconds") {
                parse_csv(text).unwrap()
            } else {
                parse_swf(text).unwrap()
            };
            let r = simulate(&trace, &c, settings());
            assert!(r.jobs > 0);
            for e in [
                r.elastic.set.as_ref().unwrap(),
                r.elastic.node.as_ref().unwrap(),
            ] {
                assert!(e.waits.p99 >= settings().cold_start);
                assert!(e.cost.0 > r.lower_bound.0 && r.lower_bound.0 > 0);
                assert_eq!(e.started, r.jobs);
            }
        }
    }

    #[test]
    fn the_report_serializes_with_node_sets_by_name() {
        let t = Trace {
            max_procs: Some(16),
            ..trace(vec![job(1, 0, 60, 1, 1)])
        };
        let json = serde_json::to_value(simulate(&t, &catalog(), settings())).unwrap();
        assert_eq!(json["site"]["fleet"]["compute-xlarge"], 1, "{json}");
        assert_eq!(
            json["elastic"]["set"]["per_set"]["compute-xs"]["instance_type"], "c7g.medium",
            "{json}"
        );
    }

    #[test]
    fn zero_run_times_and_zero_cold_starts_are_handled() {
        let t = trace(vec![
            job(1, 0, 600, 4, 4),
            job(2, 10, 0, 4, 4),
            job(3, 10, 0, 4, 4),
        ]);
        let s = SimSettings {
            cold_start: 0,
            site_procs: Some(16),
            ..settings()
        };
        let r = simulate(&t, &catalog(), s);
        let e = elastic(&r);
        assert_eq!(
            (e.started, r.site.as_ref().unwrap().report.started),
            (3, 3),
            "{r:?}"
        );
        assert_eq!(
            e.waits.max, 0,
            "no cold start: each job starts at its cycle"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let w = Waits::of((1..=100).collect());
        assert_eq!((w.p50, w.p95, w.p99, w.max), (50, 95, 99, 100));
        assert_eq!(Waits::of(vec![7]).p99, 7);
        assert_eq!(Waits::of(vec![]).p50, 0);
    }
}
