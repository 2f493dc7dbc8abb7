//! Criterion: one poll cycle's money figures — burn rate, pending bill and projected spend per
//! user — for 10,000 users with 100,000 running jobs (plus 100,000 finished ones this month).
//!
//! cargo bench -p bench --bench cost

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use domain::MicroUsd;
use domain::cost::{CostJob, Period, usage_by_user};

fn cycle(c: &mut Criterion) {
    let now: DateTime<Utc> = "2026-11-20T12:00:00Z".parse().expect("time");
    let period = Period::month_of(now);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let users: Vec<String> = (0..10_000).map(|i| format!("user{i}@lab.org")).collect();
    let mut jobs = Vec::with_capacity(200_000);
    for i in 0..200_000u64 {
        let started = now - Duration::seconds((next() % (30 * 86_400)) as i64);
        let running = i < 100_000;
        jobs.push(CostJob {
            user: users[(next() % 10_000) as usize].clone(),
            job_id: i,
            rate: MicroUsd(36_250 * (1 + (next() % 16) as i64)),
            started_at: Some(started),
            ended_at: (!running).then(|| started + Duration::seconds((next() % 86_400) as i64)),
            time_limit_minutes: Some(60 * (1 + (next() % 48) as u32)),
        });
    }
    let by = usage_by_user(&jobs, period, now);
    let running: u32 = by.values().map(|u| u.running_jobs).sum();
    eprintln!("{} users, {running} running jobs", by.len());
    c.bench_function("usage_by_user_10k_users_100k_running", |b| {
        b.iter(|| usage_by_user(&jobs, period, now))
    });
}

criterion_group!(benches, cycle);
criterion_main!(benches);
