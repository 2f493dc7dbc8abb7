//! Where a job goes (pure): the family its memory per vCPU asks for (or a roomier one), and the
//! shape and the node count that cost least when the job runs alone on them.
//!
//! Among the node counts Slurm may use (from the job's minimum to its maximum, each node holding
//! whole tasks) and the sizes of the families, the cheapest **whole nodes** win: `nodes ×
//! hourly`, the price of the nodes the job makes the cluster start when nothing shares them. Ties
//! (prices are linear in a family, so one c7g.2xlarge costs what two c7g.xlarge do) go to the
//! cheaper *capacity* — on each node the job holds the larger of its share of the vCPUs and its
//! share of the allocatable memory, priced `nodes × hourly × share` — then to fewer nodes, the
//! leaner family and the smaller size. Pricing whole nodes sizes each job to nodes it fills:
//! other jobs share a node only when they end before the node's own jobs (the simulator's
//! scheduler) or are of its size, so a node's leftover room is seldom filled, and the capacity
//! price alone (which assumes it always is) left 15–21% of the elastic fleet's money on half-empty
//! nodes over the archive traces (docs/autoscaling.md). The families tried are the seed's rule's ([`Family::for_demand`] on the whole job: `compute`
//! ≤ 3 GiB per vCPU, `general` ≤ 6 GiB, `memory` above) and the roomier ones: a job asking
//! 2.5 GiB per vCPU holds a compute node's memory before its vCPUs, and costs less on a general
//! node.
//!
//! Why not the fewest nodes: 20 tasks at the default 2,016 MiB per vCPU fit two c7g.4xlarge (ten
//! each, $1.16 an hour of nodes, 12 vCPUs left over); five m7g.xlarge hold four each and are full
//! for $0.816. Why not the capacity price alone: an 8-vCPU job at that memory (15.75 GiB, more
//! than a c7g.2xlarge keeps) is $0.29 of a c7g.4xlarge's capacity, but $0.58 of node when nothing
//! fills the other half; one m7g.2xlarge holds it for $0.3264.

use crate::MicroUsd;
use crate::scaling::{Catalog, Demand, Family, NodeSet, Size, TooBig, capacity_price};
use crate::submit::JobShape;

/// What a job asks for, as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Tasks; each runs whole on one node.
    pub tasks: u32,
    pub cpus_per_task: u32,
    /// The whole job's memory, spread evenly over its nodes; `None`: `default_mib_per_cpu` per
    /// vCPU on each node.
    pub memory_mib: Option<u64>,
    pub default_mib_per_cpu: u64,
    pub min_nodes: u32,
    /// At most this many nodes (at least `min_nodes`; more than `tasks` is never used).
    pub max_nodes: u32,
}

impl Ask {
    /// A job of `cpus` processors of one vCPU each (a trace job), on 1 to `max_nodes` nodes.
    pub fn processors(
        cpus: u32,
        memory_mib: Option<u64>,
        max_nodes: u32,
        default_mib_per_cpu: u64,
    ) -> Ask {
        Ask {
            tasks: cpus.max(1),
            cpus_per_task: 1,
            memory_mib,
            default_mib_per_cpu,
            min_nodes: 1,
            max_nodes: max_nodes.max(1),
        }
    }

    /// A submitted job: on exactly its `nodes` unless Slurm may choose ([`JobShape::tasks`]).
    pub fn of_shape(shape: &JobShape, default_mib_per_cpu: u64) -> Ask {
        let min_nodes = shape.nodes.max(1);
        match shape
            .tasks
            .filter(|t| *t > 0 && shape.cpus.is_multiple_of(*t))
        {
            Some(tasks) => Ask {
                tasks,
                cpus_per_task: (shape.cpus / tasks).max(1),
                memory_mib: shape.memory_mib,
                default_mib_per_cpu,
                min_nodes,
                max_nodes: tasks.max(min_nodes),
            },
            // Pinned: the old rule, `⌈cpus / nodes⌉` on each of `nodes`.
            None => Ask {
                tasks: shape.cpus.max(1),
                cpus_per_task: 1,
                memory_mib: shape.memory_mib,
                default_mib_per_cpu,
                min_nodes,
                max_nodes: min_nodes,
            },
        }
    }

    /// The node counts Slurm may use: from the minimum to the maximum, never more nodes than
    /// tasks when it chooses (a job pinned to more nodes than tasks gets them, as in Slurm).
    fn node_range(&self) -> (u32, u32) {
        let min = self.min_nodes.max(1);
        let max = if self.max_nodes > min {
            self.max_nodes.min(self.tasks.max(1)).max(min)
        } else {
            min
        };
        (min, max)
    }

    fn cpus(&self) -> u64 {
        u64::from(self.tasks.max(1)) * u64::from(self.cpus_per_task.max(1))
    }

    /// One node's share on `nodes` nodes.
    fn demand(&self, nodes: u32) -> Demand {
        let nodes = nodes.max(1);
        let cpus = self.tasks.max(1).div_ceil(nodes) * self.cpus_per_task.max(1);
        let memory_mib = self
            .memory_mib
            .map(|m| m.div_ceil(u64::from(nodes)))
            .unwrap_or(u64::from(cpus) * self.default_mib_per_cpu);
        Demand { cpus, memory_mib }
    }

    /// The family the seed's rule gives the whole job.
    pub fn family(&self) -> Family {
        let cpus = self.cpus();
        let mib = self
            .memory_mib
            .unwrap_or(cpus.saturating_mul(self.default_mib_per_cpu));
        Family::for_demand(u32::try_from(cpus).unwrap_or(u32::MAX), mib)
    }
}

/// Where a job goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub family: Family,
    /// The shape whose capacity priced it (new nodes are sized by the planner).
    pub set: NodeSet,
    pub nodes: u32,
    /// What each node needs.
    pub demand: Demand,
    /// The hourly price of the capacity it holds, `nodes × hourly × share` (placement minimises
    /// the whole nodes' price first, then this). What the job is billed is `cost::job_rate`.
    pub capacity_price: MicroUsd,
}

/// The cheapest place for `ask` (module docs), or why none holds it.
pub fn cheapest(catalog: &Catalog, ask: &Ask) -> Result<Placement, TooBig> {
    cheapest_of(catalog, ask, None)
}

/// [`cheapest`] over the shapes of one size only (`None`: every size): a fixed fleet of each
/// family's largest shape places its jobs with `Some(Size::Xlarge)`.
pub fn cheapest_of(catalog: &Catalog, ask: &Ask, only: Option<Size>) -> Result<Placement, TooBig> {
    let seed = ask.family();
    let (min_nodes, max_nodes) = ask.node_range();
    // (whole nodes' price, capacity price, nodes, family, size, demand); ties to fewer nodes, the
    // leaner family, the smaller size (the order they are tried in).
    let mut best: Option<(u128, u128, u32, Family, Size, Demand)> = None;
    for family in Family::ALL.into_iter().filter(|f| *f >= seed) {
        for size in Size::ALL
            .into_iter()
            .filter(|s| only.is_none_or(|o| o == *s))
        {
            let Some(shape) = catalog.shape(NodeSet { family, size }) else {
                continue;
            };
            let Some(lo) = fewest_nodes(ask, shape.vcpus, shape.allocatable_mib, min_nodes) else {
                continue;
            };
            // Only the fewest nodes of a size: each more costs a whole node more (the capacity
            // price that once made more nodes round better is only the tie-break now).
            let nodes = lo;
            let d = ask.demand(nodes);
            if d.cpus > shape.vcpus || d.memory_mib > shape.allocatable_mib {
                continue;
            }
            let whole = u128::from(nodes) * u128::from(shape.hourly.0.max(0).unsigned_abs());
            let price = capacity_price(shape, d, nodes);
            if best.is_none_or(|(w, p, n, ..)| (whole, price, nodes) < (w, p, n)) {
                best = Some((whole, price, nodes, family, size, d));
            }
        }
    }
    if let Some((_, price, nodes, family, size, demand)) = best {
        // The planner opens the smallest size that holds a node; the billed rate is that size's.
        let set = catalog
            .smallest_fit(family, demand.cpus, demand.memory_mib)
            .map_or(NodeSet { family, size }, |s| NodeSet {
                family,
                size: s.size,
            });
        return Ok(Placement {
            family,
            set,
            nodes,
            demand,
            capacity_price: MicroUsd(i64::try_from(price).unwrap_or(i64::MAX)),
        });
    }
    // Nothing holds it: the error names one node at the most nodes allowed.
    let demand = ask.demand(max_nodes.max(min_nodes));
    Err(catalog
        .place(demand)
        .err()
        .unwrap_or_else(|| catalog.too_big(demand)))
}

/// The fewest nodes from `min_nodes` on whose share fits `vcpus` and `mib`, or `None` when even
/// one task per node does not (or it would take more nodes than the job may have).
fn fewest_nodes(ask: &Ask, vcpus: u32, mib: u64, min_nodes: u32) -> Option<u32> {
    let cpt = ask.cpus_per_task.max(1);
    let mut per_node = vcpus / cpt;
    if ask.memory_mib.is_none() {
        let task_mib = u64::from(cpt) * ask.default_mib_per_cpu;
        per_node = per_node.min(u32::try_from(mib.checked_div(task_mib)?).unwrap_or(u32::MAX));
    }
    if per_node == 0 {
        return None;
    }
    let mut nodes = ask.tasks.max(1).div_ceil(per_node).max(min_nodes);
    if let Some(m) = ask.memory_mib {
        nodes = nodes.max(u32::try_from(m.div_ceil(mib.max(1))).unwrap_or(u32::MAX));
    }
    let (_, most) = ask.node_range();
    (nodes <= most).then_some(nodes)
}

/// A submitted job's placement.
pub fn of_shape(
    catalog: &Catalog,
    shape: &JobShape,
    default_mib_per_cpu: u64,
) -> Result<Placement, TooBig> {
    cheapest(catalog, &Ask::of_shape(shape, default_mib_per_cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).unwrap()
    }

    #[test]
    fn sixteen_vcpus_at_the_default_memory_fill_one_compute_node() {
        let c = catalog();
        let default = c.fitting_mib_per_cpu();
        assert_eq!(default, 2016);
        let p = cheapest(&c, &Ask::processors(16, None, 256, default)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::Compute, 1));
        assert_eq!(c.shape(p.set).unwrap().instance_type, "c7g.4xlarge");
        // At 2,048 MiB a vCPU (32 GiB) no compute node holds it; one m7g.4xlarge ($0.6528) costs
        // less than the two c7g.4xlarge ($1.16) half of it would start on their own.
        let p = cheapest(&c, &Ask::processors(16, None, 256, 2048)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::General, 1));
        assert_eq!(c.shape(p.set).unwrap().instance_type, "m7g.4xlarge");
    }

    #[test]
    fn a_job_is_sized_to_nodes_it_fills_not_to_half_a_big_one() {
        let c = catalog();
        // 8 vCPUs at 2,016 MiB (15.75 GiB): no c7g.2xlarge holds it (15.5 GiB). Half a
        // c7g.4xlarge is $0.29 of capacity but $0.58 of node when nothing fills the other half;
        // three c7g.xlarge (three vCPUs each) are $0.435, one m7g.2xlarge $0.3264.
        let p = cheapest(&c, &Ask::processors(8, None, 256, 2016)).unwrap();
        assert_eq!(
            (c.shape(p.set).unwrap().instance_type.as_str(), p.nodes),
            ("m7g.2xlarge", 1)
        );
        // Pinned to three nodes: three c7g.xlarge ($0.435) beat three m7g.xlarge ($0.4896).
        let three = Ask {
            min_nodes: 3,
            max_nodes: 3,
            ..Ask::processors(8, None, 256, 2016)
        };
        let p = cheapest(&c, &three).unwrap();
        assert_eq!(
            (
                c.shape(p.set).unwrap().instance_type.as_str(),
                p.demand.cpus
            ),
            ("c7g.xlarge", 3)
        );
        // Equal node prices (a family's prices are linear) go to the cheaper capacity, then to
        // fewer nodes: 8 vCPUs at 1 GiB fill one c7g.2xlarge, not two c7g.xlarge.
        let p = cheapest(&c, &Ask::processors(8, Some(8 * 1024), 256, 2016)).unwrap();
        assert_eq!(
            (c.shape(p.set).unwrap().instance_type.as_str(), p.nodes),
            ("c7g.2xlarge", 1)
        );
    }

    #[test]
    fn a_job_pinned_to_one_node_keeps_the_fewest_nodes_rule() {
        let c = catalog();
        let shape = JobShape {
            cpus: 16,
            memory_mib: None,
            nodes: 1,
            time_limit_minutes: None,
            gpus: 0,
            tasks: None,
        };
        let p = of_shape(&c, &shape, 2048).unwrap();
        assert_eq!((p.family, p.nodes), (Family::General, 1));
        // 20 vCPUs pinned to two nodes: ten on each of two c7g.4xlarge ($1.16). Left to Slurm,
        // its 20 tasks go four to each of five m7g.xlarge ($0.816; three c7g.2xlarge, seven
        // tasks each by memory, would be $0.87).
        let twenty = JobShape {
            cpus: 20,
            nodes: 2,
            ..shape
        };
        let p = of_shape(&c, &twenty, 2016).unwrap();
        assert_eq!((c.shape(p.set).unwrap().vcpus, p.nodes), (16, 2));
        let free = JobShape {
            tasks: Some(20),
            ..twenty
        };
        let p = of_shape(&c, &free, 2016).unwrap();
        assert_eq!(
            (c.shape(p.set).unwrap().instance_type.as_str(), p.nodes),
            ("m7g.xlarge", 5)
        );
        // One task of 16 vCPUs cannot be split.
        let one_task = JobShape {
            tasks: Some(1),
            ..shape
        };
        assert_eq!(of_shape(&c, &one_task, 2048).unwrap().nodes, 1);
    }

    #[test]
    fn small_jobs_stay_on_one_node_and_in_their_family() {
        let c = catalog();
        let p = cheapest(&c, &Ask::processors(1, Some(1024), 256, 2048)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::Compute, 1));
        assert_eq!(c.shape(p.set).unwrap().instance_type, "c7g.medium");
        // 5 GiB per vCPU asks for general, but four of them (20 GiB) fit no m7g.xlarge (15.5 GiB
        // for jobs): an r7g.xlarge ($0.2142) holds them for less than an m7g.2xlarge ($0.3264).
        let p = cheapest(&c, &Ask::processors(4, Some(4 * 5 * 1024), 256, 2048)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::Memory, 1));
        let p = cheapest(&c, &Ask::processors(4, Some(4 * 3 * 1024), 256, 2048)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::General, 1));
        let p = cheapest(&c, &Ask::processors(2, Some(2 * 10 * 1024), 256, 2048)).unwrap();
        assert_eq!(p.family, Family::Memory);
    }

    #[test]
    fn wide_jobs_are_placed_up_to_the_most_nodes_and_refused_past_it() {
        let c = catalog();
        // 8,192 processors: 512 full compute nodes.
        let p = cheapest(&c, &Ask::processors(8192, Some(8192 * 1024), 100_000, 2048)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::Compute, 512));
        assert!(cheapest(&c, &Ask::processors(8192, Some(8192 * 1024), 256, 2048)).is_err());
        // A processor needing more memory than any shape: refused whatever the node count.
        assert!(cheapest(&c, &Ask::processors(1, Some(1 << 20), 100_000, 2048)).is_err());
    }

    #[test]
    fn a_job_pinned_to_more_nodes_than_tasks_gets_them() {
        let c = catalog();
        let shape = JobShape {
            cpus: 1,
            memory_mib: None,
            nodes: 150,
            time_limit_minutes: None,
            gpus: 0,
            tasks: None,
        };
        let p = of_shape(&c, &shape, 2048).unwrap();
        assert_eq!((p.nodes, p.demand.cpus), (150, 1));
    }

    #[test]
    fn a_roomier_family_takes_a_job_when_it_holds_it_for_less() {
        let c = catalog();
        let ask = |mib: u64, max_nodes: u32| Ask {
            tasks: 16,
            cpus_per_task: 1,
            memory_mib: Some(mib),
            default_mib_per_cpu: 2048,
            min_nodes: 1,
            max_nodes,
        };
        // 2.5 GiB per vCPU asks for compute by ratio, but holds a compute node's memory before
        // its vCPUs: $0.58 × 40/31.5 × … on compute, $0.6528 for an m7g.4xlarge.
        assert_eq!(
            cheapest(&c, &ask(40 * 1024, 1)).unwrap().family,
            Family::General
        );
        assert_eq!(
            cheapest(&c, &ask(40 * 1024, 16)).unwrap().family,
            Family::General
        );
        // 1.875 GiB per vCPU: compute holds it, for less.
        let p = cheapest(&c, &ask(30 * 1024, 1)).unwrap();
        assert_eq!((p.family, p.nodes), (Family::Compute, 1));
        // Never a leaner family than the ratio asks: 10 GiB per vCPU stays on memory nodes.
        assert_eq!(
            cheapest(&c, &ask(160 * 1024, 16)).unwrap().family,
            Family::Memory
        );
    }
}
