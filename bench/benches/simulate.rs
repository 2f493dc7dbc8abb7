//! Criterion: `clusterra simulate` over a one-year trace of 200,000 jobs (both fleets: the
//! elastic policy and the fixed peak-sized fleet), realistic cold starts (80 s).
//!
//! The trace is synthetic and deterministic: arrivals over 365 days with a day/night rhythm,
//! run times from 1 minute to 1 day (log-uniform), 1–64 processors, memory known for half the
//! jobs (1–8 GiB per processor).
//!
//! cargo bench -p bench --bench simulate

use criterion::{Criterion, criterion_group, criterion_main};
use domain::scaling::Catalog;
use domain::simulate::{SimSettings, simulate};
use domain::trace::{Trace, TraceJob};

const JOBS: u64 = 200_000;
const YEAR: i64 = 365 * 86_400;

fn one_year() -> Trace {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut jobs = Vec::with_capacity(JOBS as usize);
    for id in 0..JOBS {
        // Uniform over the year, then pulled towards working hours: half the jobs move into
        // 08:00–18:00 of their day.
        let mut submit = (next() % YEAR as u64) as i64;
        if next() % 2 == 0 {
            submit = submit - submit % 86_400 + 8 * 3_600 + (next() % (10 * 3_600)) as i64;
        }
        let run = (60.0 * (1_440f64).powf((next() % 10_000) as f64 / 10_000.0)) as i64;
        let cpus = [1u32, 1, 1, 2, 4, 4, 8, 16, 32, 64][(next() % 10) as usize];
        let memory_mib = (next() % 2 == 0).then(|| u64::from(cpus) * (1 + next() % 8) * 1_024);
        jobs.push(TraceJob {
            id,
            submit,
            run,
            cpus,
            memory_mib,
            time_limit: Some(run * 2),
            traced_wait: None,
        });
    }
    jobs.sort_by_key(|j| (j.submit, j.id));
    Trace { jobs, skipped: 0 }
}

fn year(c: &mut Criterion) {
    let catalog =
        Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).expect("catalog");
    let trace = one_year();
    let settings = SimSettings {
        cold_start: 80,
        idle_window: 300,
        cycle: 1,
        default_mib_per_cpu: 2048,
    };
    let r = simulate(&trace, &catalog, settings);
    eprintln!(
        "one year, {} jobs: elastic {:.0} node-hours {} (p50/p95/p99 wait {}/{}/{} s, {} cycles); fixed {} nodes {:.0} node-hours {}",
        r.jobs,
        r.elastic.node_hours(),
        r.elastic.cost,
        r.elastic.waits.p50,
        r.elastic.waits.p95,
        r.elastic.waits.p99,
        r.elastic.scaling_cycles,
        r.fixed_fleet.values().sum::<u32>(),
        r.fixed.node_hours(),
        r.fixed.cost
    );
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    group.bench_function("one_year_200k_jobs", |b| {
        b.iter(|| simulate(&trace, &catalog, settings))
    });
    group.finish();
}

criterion_group!(benches, year);
criterion_main!(benches);
