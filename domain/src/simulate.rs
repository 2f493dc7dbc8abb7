//! Simulation of the scaling policy over a workload trace, on a simulated clock (pure: the trace
//! comes in parsed, time is whole seconds after the trace's start).
//!
//! Two fleets run the same trace with the same scheduler:
//! - **elastic**: Clusterra's policy. Every `cycle` seconds in which something changed (a job
//!   arrived or ended, a node became ready) the scaler places the pending jobs ([`plan`]) onto the
//!   nodes that are up or starting and decides desired counts ([`decide`], the same functions the
//!   service runs); missing nodes are launched and are ready `cold_start` seconds later; nodes
//!   above the desired count are terminated as soon as they are idle. Nodes are paid from launch
//!   to termination, cold start included, as EC2 bills.
//! - **fixed**: a fleet sized to the trace's peak (the most vCPUs and memory of each family that
//!   would run at once if every job started when submitted), of each family's largest shape,
//!   always up, paid for the whole span.
//!
//! The scheduler (Slurm's part) starts pending jobs in submit order on the first ready nodes of
//! their family with room, and lets a later job pass one that does not fit (backfill without
//! reservations). A job's wait is its start minus its submit, so cold starts are in it.
//!
//! A trace job asks for processors and, maybe, memory: it is spread over the fewest nodes whose
//! share one shape can hold ([`Demand::per_node`]); without memory, `default_mib_per_cpu` per
//! processor is assumed. Jobs no shape can hold even spread over [`MAX_NODES`] nodes are counted
//! as refused, as the service would refuse them at submit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::MicroUsd;
use crate::scaling::{
    Catalog, Demand, Family, NodeSet, PendingSlice, SetState, WarmNode, decide, mark_full, plan,
};
use crate::trace::Trace;

/// The most nodes a trace job is spread over.
pub const MAX_NODES: u32 = 256;

/// Knobs of a simulation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SimSettings {
    /// Seconds from a node's launch to its being ready for jobs.
    pub cold_start: i64,
    /// Seconds a node set must have had less work than nodes before it shrinks.
    pub idle_window: i64,
    /// Seconds between scaling cycles (the service's poll interval).
    pub cycle: i64,
    /// Memory assumed per processor when the trace does not say.
    pub default_mib_per_cpu: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            cold_start: 80,
            idle_window: 300,
            cycle: 1,
            default_mib_per_cpu: 2048,
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
}

/// Turns trace jobs into simulated ones; returns them and the ids of the refused.
pub fn prepare(
    trace: &Trace,
    catalog: &Catalog,
    default_mib_per_cpu: u64,
) -> (Vec<SimJob>, Vec<u64>) {
    let mut jobs = Vec::with_capacity(trace.jobs.len());
    let mut refused = Vec::new();
    for t in &trace.jobs {
        // A node holds at least one of the job's processors.
        let fitted = (1..=MAX_NODES.min(t.cpus.max(1))).find_map(|nodes| {
            let demand = Demand::per_node(t.cpus, t.memory_mib, nodes, default_mib_per_cpu);
            catalog
                .place(demand)
                .ok()
                .map(|set| (nodes, demand, set.family))
        });
        match fitted {
            Some((nodes, demand, family)) => jobs.push(SimJob {
                id: t.id,
                submit: t.submit,
                run: t.run,
                nodes,
                demand,
                family,
            }),
            None => refused.push(t.id),
        }
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
    fn of(mut waits: Vec<i64>) -> Waits {
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

/// What one fleet did over the trace.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FleetReport {
    pub node_seconds: u64,
    pub cost: MicroUsd,
    pub waits: Waits,
    /// Seconds from the trace's start to the last job's end.
    pub makespan: i64,
    pub launches: u64,
    pub scaling_cycles: u64,
    /// Jobs that ran (every job, unless the fleet cannot hold one).
    pub started: usize,
    #[serde(serialize_with = "by_name")]
    pub per_set: BTreeMap<NodeSet, SetUsage>,
}

impl FleetReport {
    pub fn node_hours(&self) -> f64 {
        self.node_seconds as f64 / 3600.0
    }
}

/// Both fleets over one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub settings: SimSettings,
    pub jobs: usize,
    pub refused: usize,
    /// Trace lines without run time or processors.
    pub skipped: usize,
    pub elastic: FleetReport,
    pub fixed: FleetReport,
    /// The fixed fleet: nodes per set.
    #[serde(serialize_with = "by_name")]
    pub fixed_fleet: BTreeMap<NodeSet, u32>,
}

/// A map by node set as a JSON object keyed `compute-small`, …
fn by_name<S: serde::Serializer, V: Serialize>(
    map: &BTreeMap<NodeSet, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.iter().map(|(set, v)| (set.to_string(), v)))
}

/// Runs both fleets over `trace`.
pub fn simulate(trace: &Trace, catalog: &Catalog, settings: SimSettings) -> SimReport {
    let (jobs, refused) = prepare(trace, catalog, settings.default_mib_per_cpu);
    let fleet = peak_fleet(&jobs, catalog);
    SimReport {
        settings,
        jobs: jobs.len(),
        refused: refused.len(),
        skipped: trace.skipped,
        elastic: run(&jobs, catalog, settings, None),
        fixed: run(&jobs, catalog, settings, Some(&fleet)),
        fixed_fleet: fleet,
    }
}

/// The fixed fleet sized to the trace's peak: per family, enough of its largest shape for the
/// most vCPUs and the most memory that would run at once if no job waited.
pub fn peak_fleet(jobs: &[SimJob], catalog: &Catalog) -> BTreeMap<NodeSet, u32> {
    let mut out = BTreeMap::new();
    for family in Family::ALL {
        // (time, 0 start / 1 end, cpus, mib). A job runs at least one second, so its end comes
        // after its start even with a run time of 0; ends sort before starts at the same second.
        let mut edges: Vec<(i64, u8, u64, u64)> = Vec::new();
        for j in jobs.iter().filter(|j| j.family == family) {
            let cpus = u64::from(j.demand.cpus) * u64::from(j.nodes);
            let mib = j.demand.memory_mib * u64::from(j.nodes);
            edges.push((j.submit, 1, cpus, mib));
            edges.push((j.submit.saturating_add(j.run.max(1)), 0, cpus, mib));
        }
        if edges.is_empty() {
            continue;
        }
        edges.sort_unstable_by_key(|e| (e.0, e.1));
        let (mut cpus, mut mib, mut peak_cpus, mut peak_mib) = (0u64, 0u64, 0u64, 0u64);
        for (_, start, c, m) in edges {
            if start == 1 {
                cpus += c;
                mib += m;
            } else {
                cpus = cpus.saturating_sub(c);
                mib = mib.saturating_sub(m);
            }
            peak_cpus = peak_cpus.max(cpus);
            peak_mib = peak_mib.max(mib);
        }
        let Some(shape) = catalog.largest(family) else {
            continue;
        };
        let widest = jobs
            .iter()
            .filter(|j| j.family == family)
            .map(|j| j.nodes)
            .max()
            .unwrap_or(1);
        let nodes = peak_cpus
            .div_ceil(u64::from(shape.vcpus.max(1)))
            .max(peak_mib.div_ceil(shape.allocatable_mib.max(1)))
            .max(u64::from(widest));
        out.insert(
            NodeSet {
                family,
                size: shape.size,
            },
            u32::try_from(nodes).unwrap_or(u32::MAX),
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
}

struct Node {
    set: NodeSet,
    free_cpus: u32,
    free_mib: u64,
    launched: i64,
    ready_at: i64,
    running: u32,
    gone: bool,
}

struct Sim<'a> {
    jobs: &'a [SimJob],
    catalog: &'a Catalog,
    settings: SimSettings,
    elastic: bool,
    t: i64,
    nodes: Vec<Node>,
    /// Live node numbers per family, oldest first.
    by_family: BTreeMap<Family, Vec<usize>>,
    live: BTreeMap<NodeSet, u32>,
    desired: BTreeMap<NodeSet, SetState>,
    /// Sets whose work filled their nodes at the last cycle (and so until now: nothing changed
    /// between cycles).
    full: Vec<NodeSet>,
    /// Pending job numbers in submit order.
    pending: Vec<usize>,
    placed: Vec<Vec<usize>>,
    events: BinaryHeap<Reverse<(i64, Ev)>>,
    next_cycle: Option<i64>,
    waits: Vec<i64>,
    report: FleetReport,
}

/// Runs one fleet: elastic when `fixed` is None.
pub fn run(
    jobs: &[SimJob],
    catalog: &Catalog,
    settings: SimSettings,
    fixed: Option<&BTreeMap<NodeSet, u32>>,
) -> FleetReport {
    let mut sim = Sim {
        jobs,
        catalog,
        settings,
        elastic: fixed.is_none(),
        t: 0,
        nodes: Vec::new(),
        by_family: BTreeMap::new(),
        live: BTreeMap::new(),
        desired: BTreeMap::new(),
        full: Vec::new(),
        pending: Vec::new(),
        placed: vec![Vec::new(); jobs.len()],
        events: BinaryHeap::new(),
        next_cycle: None,
        waits: Vec::with_capacity(jobs.len()),
        report: FleetReport::default(),
    };
    let start = jobs.first().map_or(0, |j| j.submit.min(0));
    sim.t = start;
    for (&set, &n) in fixed.into_iter().flatten() {
        for _ in 0..n {
            sim.launch(set, start, 0);
        }
    }
    let mut next_job = 0;
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
                Ev::Ready(n) => freed |= !sim.nodes[n].gone,
                Ev::Cycle => cycle = true,
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
            if sim.elastic {
                // The next cycle tick at or after now.
                let every = settings.cycle.max(1);
                sim.want_cycle_at((t + every - 1).div_euclid(every) * every);
            }
        }
        if cycle {
            sim.next_cycle = None;
            sim.scale();
        }
        if sim.elastic && (freed || cycle) {
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
        });
        self.by_family.entry(set.family).or_default().push(n);
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
        let set = node.set;
        let seconds = u64::try_from(at - node.launched).unwrap_or(0);
        if let Some(live) = self.live.get_mut(&set) {
            *live = live.saturating_sub(1);
        }
        if let Some(list) = self.by_family.get_mut(&set.family) {
            list.retain(|&m| m != n);
        }
        self.report.node_seconds += seconds;
        if let (Some(usage), Some(shape)) =
            (self.report.per_set.get_mut(&set), self.catalog.shape(set))
        {
            usage.node_seconds += seconds;
            // Rounded down to the micro-dollar per node stay.
            let cost = i128::from(shape.hourly.0) * i128::from(seconds) / 3600;
            usage.cost = MicroUsd(usage.cost.0 + i64::try_from(cost).unwrap_or(i64::MAX));
        }
    }

    fn finish(&mut self, j: usize) {
        let d = self.jobs[j].demand;
        for n in std::mem::take(&mut self.placed[j]) {
            let node = &mut self.nodes[n];
            node.free_cpus += d.cpus;
            node.free_mib += d.memory_mib;
            node.running -= 1;
        }
    }

    /// Starts pending jobs (from `from` on) that fit on ready nodes.
    fn schedule(&mut self, from: usize) {
        let t = self.t;
        // Per family, the smallest demand that found no room this pass: anything at least as
        // big cannot fit either.
        let mut failed: BTreeMap<Family, (u32, u64, u32)> = BTreeMap::new();
        let mut started = Vec::new();
        let mut chosen = Vec::new();
        for (i, &j) in self.pending.iter().enumerate().skip(from) {
            let job = self.jobs[j];
            let d = job.demand;
            if let Some(&(c, m, k)) = failed.get(&job.family)
                && d.cpus >= c
                && d.memory_mib >= m
                && job.nodes >= k
            {
                continue;
            }
            chosen.clear();
            for &n in self.by_family.get(&job.family).into_iter().flatten() {
                let node = &self.nodes[n];
                if node.ready_at <= t && node.free_cpus >= d.cpus && node.free_mib >= d.memory_mib {
                    chosen.push(n);
                    if chosen.len() == job.nodes as usize {
                        break;
                    }
                }
            }
            if chosen.len() < job.nodes as usize {
                let f = failed
                    .entry(job.family)
                    .or_insert((d.cpus, d.memory_mib, job.nodes));
                if d.cpus <= f.0 && d.memory_mib <= f.1 && job.nodes <= f.2 {
                    *f = (d.cpus, d.memory_mib, job.nodes);
                }
                continue;
            }
            for &n in &chosen {
                let node = &mut self.nodes[n];
                node.free_cpus -= d.cpus;
                node.free_mib -= d.memory_mib;
                node.running += 1;
            }
            self.placed[j] = chosen.clone();
            self.waits.push(t - job.submit);
            self.events.push(Reverse((t + job.run, Ev::Finish(j))));
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
        self.report.scaling_cycles += 1;
        let warm: Vec<WarmNode> = self
            .by_family
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
                });
            }
        }
        let (needs, _) = plan(self.catalog, &warm, &slices);
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

    /// Terminates idle nodes of sets above their desired count, starting ones first.
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
                .by_family
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
        }
    }

    fn settings() -> SimSettings {
        SimSettings {
            cold_start: 80,
            idle_window: 300,
            cycle: 10,
            default_mib_per_cpu: 2048,
        }
    }

    #[test]
    fn one_job_waits_for_the_cycle_and_the_cold_start_and_pays_until_the_idle_window_ends() {
        let trace = Trace {
            jobs: vec![job(1, 5, 600, 1, 1)],
            skipped: 0,
        };
        let r = simulate(&trace, &catalog(), settings());
        // Submitted at 5; the cycle at 10 launches one c7g.medium (1 vCPU, 1.5 GiB allocatable);
        // ready at 90; the job runs 90..690; the set is idle from 690 and shrinks at 990.
        assert_eq!(r.elastic.waits.p50, 85);
        assert_eq!(r.elastic.launches, 1);
        assert_eq!(r.elastic.node_seconds, 990 - 10);
        let medium = r.elastic.per_set.values().next().unwrap();
        assert_eq!(medium.instance_type, "c7g.medium");
        // $0.0363 an hour for 980 s, to the micro-dollar, rounded down.
        assert_eq!(r.elastic.cost, MicroUsd(36_300 * 980 / 3600));
        // The fixed fleet: one c7g.4xlarge, up from 0 to the job's end at 605, no wait.
        assert_eq!(r.fixed.waits.max, 0);
        assert_eq!(r.fixed.node_seconds, 605);
        assert_eq!(r.fixed_fleet.values().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_warm_node_takes_the_next_job_without_a_cold_start() {
        let trace = Trace {
            jobs: vec![job(1, 0, 100, 1, 1), job(2, 200, 100, 1, 1)],
            skipped: 0,
        };
        let r = run_elastic(&trace);
        // The first waits for the cold start (80 s); the second finds the node idle and warm.
        assert_eq!(r.waits.max, 80);
        assert_eq!(r.waits.p50, 0);
        assert_eq!(r.launches, 1);
    }

    fn run_elastic(trace: &Trace) -> FleetReport {
        let c = catalog();
        let (jobs, _) = prepare(trace, &c, 2048);
        run(&jobs, &c, settings(), None)
    }

    #[test]
    fn jobs_are_packed_first_fit_and_wide_jobs_are_spread() {
        // A 40-processor job is spread over 3 nodes of 14; the plan sizes the family by its
        // biggest slice (c7g.4xlarge, 16 vCPUs), the 14s take one node each and the four
        // 4-vCPU jobs share a fourth.
        let trace = Trace {
            jobs: (1..=4)
                .map(|i| job(i, 0, 60, 4, 4))
                .chain([job(5, 0, 60, 40, 40)])
                .collect(),
            skipped: 0,
        };
        let c = catalog();
        let (jobs, refused) = prepare(&trace, &c, 2048);
        assert!(refused.is_empty());
        assert_eq!(jobs[4].nodes, 3);
        let r = run(&jobs, &c, settings(), None);
        assert_eq!(r.waits.max, 80, "all start once the first nodes are ready");
        assert_eq!(r.per_set.values().map(|u| u.peak_nodes).sum::<u32>(), 4);
        assert_eq!(
            r.per_set.values().next().unwrap().instance_type,
            "c7g.4xlarge"
        );
    }

    #[test]
    fn jobs_no_shape_can_hold_are_refused() {
        // 1 TiB on one processor: it cannot be spread (a node holds at least one processor)
        // and no shape has that memory.
        let trace = Trace {
            jobs: vec![job(1, 0, 60, 1, 1024)],
            skipped: 0,
        };
        let r = simulate(&trace, &catalog(), settings());
        assert_eq!((r.jobs, r.refused), (0, 1));
    }

    #[test]
    fn the_fixture_traces_simulate_and_elastic_is_cheaper_than_peak() {
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
            assert!(r.elastic.waits.p99 >= settings().cold_start);
            assert_eq!(r.fixed.waits.p50, 0);
            assert!(r.elastic.cost.0 > 0 && r.fixed.cost.0 > r.elastic.cost.0);
            assert_eq!((r.elastic.started, r.fixed.started), (r.jobs, r.jobs));
        }
    }

    #[test]
    fn the_report_serializes_with_node_sets_by_name() {
        let trace = Trace {
            jobs: vec![job(1, 0, 60, 1, 1)],
            skipped: 0,
        };
        let json = serde_json::to_value(simulate(&trace, &catalog(), settings())).unwrap();
        assert_eq!(json["fixed_fleet"]["compute-xlarge"], 1, "{json}");
        assert_eq!(
            json["elastic"]["per_set"]["compute-xs"]["instance_type"], "c7g.medium",
            "{json}"
        );
    }

    #[test]
    fn zero_run_times_and_zero_cold_starts_are_handled() {
        let trace = Trace {
            jobs: vec![
                job(1, 0, 600, 4, 4),
                job(2, 10, 0, 4, 4),
                job(3, 10, 0, 4, 4),
            ],
            skipped: 0,
        };
        let c = catalog();
        let s = SimSettings {
            cold_start: 0,
            ..settings()
        };
        let r = simulate(&trace, &c, s);
        // The peak counts the zero-run jobs once each, never below zero.
        assert_eq!(r.fixed_fleet.values().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!((r.elastic.started, r.fixed.started), (3, 3), "{r:?}");
        assert_eq!(
            r.elastic.waits.max, 0,
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
