//! Criterion: `clusterra simulate` (every answer: the lower bound, both elastic idle policies)
//! over two synthetic, deterministic traces, realistic cold starts (80 s):
//! - `one_year_200k_jobs`: arrivals over 365 days with a day/night rhythm, run times from
//!   1 minute to 1 day (log-uniform), 1–64 processors, memory known for half the jobs (1–8 GiB
//!   per processor);
//! - `wide_300k_jobs`: 300,000 jobs over 90 days, mostly small, with campaigns of jobs of
//!   1,024–16,384 processors that drive the elastic fleet to a peak of about 20,000 nodes (the
//!   issue's case: a 300,000-job trace with a 19,500-node peak).
//!
//! cargo bench -p bench --bench simulate

use criterion::{Criterion, criterion_group, criterion_main};
use domain::scaling::Catalog;
use domain::simulate::{SimSettings, simulate};
use domain::trace::{Trace, TraceJob};

const YEAR: i64 = 365 * 86_400;

fn rng() -> impl FnMut() -> u64 {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn trace(mut jobs: Vec<TraceJob>) -> Trace {
    jobs.sort_by_key(|j| (j.submit, j.id));
    Trace {
        jobs,
        ..Trace::default()
    }
}

fn job(id: u64, submit: i64, run: i64, cpus: u32, memory_mib: Option<u64>) -> TraceJob {
    TraceJob {
        id,
        submit,
        run,
        cpus,
        memory_mib,
        time_limit: Some(run * 2),
        traced_wait: None,
        memory_used: false,
    }
}

pub fn one_year() -> Trace {
    let mut next = rng();
    let jobs = (0..200_000u64)
        .map(|id| {
            // Uniform over the year, then pulled towards working hours: half the jobs move
            // into 08:00–18:00 of their day.
            let mut submit = (next() % YEAR as u64) as i64;
            if next().is_multiple_of(2) {
                submit = submit - submit % 86_400 + 8 * 3_600 + (next() % (10 * 3_600)) as i64;
            }
            let run = (60.0 * (1_440f64).powf((next() % 10_000) as f64 / 10_000.0)) as i64;
            let cpus = [1u32, 1, 1, 2, 4, 4, 8, 16, 32, 64][(next() % 10) as usize];
            let memory_mib =
                (next().is_multiple_of(2)).then(|| u64::from(cpus) * (1 + next() % 8) * 1_024);
            job(id, submit, run, cpus, memory_mib)
        })
        .collect();
    trace(jobs)
}

pub fn wide() -> Trace {
    let mut next = rng();
    let span = 90 * 86_400u64;
    let mut jobs: Vec<TraceJob> = (0..300_000u64)
        .map(|id| {
            let submit = (next() % span) as i64;
            let run = (60.0 * (240f64).powf((next() % 10_000) as f64 / 10_000.0)) as i64;
            let cpus = [1u32, 1, 2, 4, 8, 16, 32, 64][(next() % 8) as usize];
            job(id, submit, run, cpus, Some(u64::from(cpus) * 1_024))
        })
        .collect();
    // Campaigns: every few days, a burst of very wide jobs submitted within an hour.
    let mut id = 1_000_000;
    for day in (0..90).step_by(3) {
        let start = day * 86_400 + 9 * 3_600;
        for _ in 0..40 {
            let cpus = [1_024u32, 2_048, 4_096, 8_192, 16_384][(next() % 5) as usize];
            let run = 3_600 + (next() % (6 * 3_600)) as i64;
            jobs.push(job(id, start + (next() % 3_600) as i64, run, cpus, None));
            id += 1;
        }
    }
    trace(jobs)
}

fn bench(c: &mut Criterion) {
    let catalog =
        Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).expect("catalog");
    let settings = SimSettings {
        default_mib_per_cpu: catalog.fitting_mib_per_cpu(),
        ..SimSettings::default()
    };
    let mut group = c.benchmark_group("simulate");
    group.sample_size(10);
    for (name, t) in [
        ("one_year_200k_jobs", one_year()),
        ("wide_300k_jobs", wide()),
    ] {
        let r = simulate(&t, &catalog, settings);
        for (policy, e) in [("set", &r.elastic.set), ("node", &r.elastic.node)] {
            let Some(e) = e else { continue };
            eprintln!(
                "{name}, {} jobs, {policy} policy: {:.0} node-hours {} = {:.2} x the bound {} (p50/p95/p99 wait {}/{}/{} s, {} cycles, peak {} nodes)",
                r.jobs,
                e.node_hours(),
                e.cost.cents(),
                e.cost.0 as f64 / r.lower_bound.0.max(1) as f64,
                r.lower_bound.cents(),
                e.waits.p50,
                e.waits.p95,
                e.waits.p99,
                e.scaling_cycles,
                e.per_set.values().map(|u| u.peak_nodes).sum::<u32>(),
            );
        }
        group.bench_function(name, |b| b.iter(|| simulate(&t, &catalog, settings)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
