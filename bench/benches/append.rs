//! Criterion: SQLite appends in batches of 100 events, beside the raw limit — plain multi-row
//! INSERTs of same-sized rows in one transaction, without any event-log logic.
//!
//! cargo bench -p bench --bench append

use std::sync::atomic::{AtomicI64, Ordering};

use bench::{event, fresh, raw_rows};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventlog::{ExpectedVersion, NewEvent, StreamId};

const BATCH: usize = 100;

fn sqlite_batches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(fresh("sqlite")).expect("fresh sqlite");
    // The raw baseline uses exactly the log's connection settings and database.
    let raw = rt
        .block_on(bench::RawDb::connect(&db.options))
        .expect("raw database");

    let mut group = c.benchmark_group("sqlite_append_batch_100");
    group.throughput(Throughput::Elements(BATCH as u64));

    let stream_no = AtomicI64::new(0);
    group.bench_function("event_log", |b| {
        b.iter_batched(
            || {
                let n = stream_no.fetch_add(1, Ordering::Relaxed);
                let events: Vec<NewEvent> = (0..BATCH as u64).map(event).collect();
                (StreamId::new(format!("job-local-{n}")).expect("id"), events)
            },
            |(stream, events)| {
                rt.block_on(
                    db.store
                        .log
                        .append(&stream, ExpectedVersion::NoStream, &events),
                )
                .expect("append")
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let next = AtomicI64::new(1);
    group.bench_function("raw_insert", |b| {
        b.iter_batched(
            || {
                let first = next.fetch_add(BATCH as i64, Ordering::Relaxed);
                raw_rows(first, &format!("raw-{first}"), 1, BATCH)
            },
            |rows| rt.block_on(raw.insert(&rows)).expect("raw insert"),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, sqlite_batches);
criterion_main!(benches);
