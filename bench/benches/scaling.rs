//! Criterion: one scaling decision — placing 100,000 pending jobs (first-fit decreasing) across
//! the 15 node sets of the fixture catalog, beside 1,000 warm nodes.
//!
//! cargo bench -p bench --bench scaling

use criterion::{Criterion, criterion_group, criterion_main};
use domain::scaling::{
    Catalog, Demand, Family, NodeSet, PendingRun, PendingSlice, Size, WarmNode, plan, plan_in_runs,
    plan_with_runs,
};

fn decision(c: &mut Criterion) {
    let catalog =
        Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).expect("catalog");
    // A deterministic mix: 1-16 vCPUs, 1-8 GiB per vCPU, so every family and size is asked for.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let pending: Vec<PendingSlice> = (0..100_000u64)
        .map(|job_id| {
            let cpus = [1, 1, 1, 2, 2, 4, 4, 8, 16][(next() % 9) as usize];
            let gib_per_cpu = 1 + next() % 8;
            PendingSlice::pending(
                job_id,
                Demand {
                    cpus,
                    memory_mib: u64::from(cpus) * gib_per_cpu * 1024 - 600,
                },
            )
        })
        .collect();
    let warm: Vec<WarmNode> = (0..1_000)
        .map(|i| {
            let family = Family::ALL[i % 3];
            let size = Size::ALL[i % 5];
            WarmNode {
                name: format!("node-{i}"),
                set: NodeSet { family, size },
                free_cpus: 1,
                free_mib: 1024,
                busy: true,
            }
        })
        .collect();
    let (needs, stranded) = plan(&catalog, &warm, &pending);
    eprintln!(
        "node sets used: {}, nodes: {}, stranded: {}",
        needs.len(),
        needs.values().map(|n| n.nodes).sum::<u32>(),
        stranded.len()
    );
    c.bench_function("scaling_decision_100k_pending", |b| {
        b.iter(|| plan(&catalog, &warm, &pending))
    });
    c.bench_function("scaling_decision_100k_pending_one_slice_at_a_time", |b| {
        b.iter(|| plan_in_runs(&catalog, &warm, &pending, false))
    });
    // bench/queue.sh's queue: 100,000 jobs of one shape (1 vCPU, 512 MiB), no warm node.
    let same: Vec<PendingSlice> = (0..100_000u64)
        .map(|job_id| {
            PendingSlice::pending(
                job_id,
                Demand {
                    cpus: 1,
                    memory_mib: 512,
                },
            )
        })
        .collect();
    c.bench_function("scaling_decision_100k_pending_one_shape", |b| {
        b.iter(|| plan(&catalog, &[], &same))
    });
    // The same queue as the live scaler hands it over: one run of 100,000 (its count and its
    // first 100 ids), no slice.
    let run = [PendingRun {
        demand: Demand {
            cpus: 1,
            memory_mib: 512,
        },
        count: 100_000,
        first: (0..100).collect(),
    }];
    assert_eq!(
        plan_with_runs(&catalog, &[], &[], &run),
        plan(&catalog, &[], &same)
    );
    c.bench_function("scaling_decision_100k_pending_one_shape_as_a_run", |b| {
        b.iter(|| plan_with_runs(&catalog, &[], &[], &run))
    });
}

criterion_group!(benches, decision);
criterion_main!(benches);
