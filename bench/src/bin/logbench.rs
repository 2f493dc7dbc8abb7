//! Load generator for the event log: concurrent single-event writers, replay throughput and
//! subscriber lag, each beside the raw database figure measured the same way.
//!
//! cargo run --release -p bench --bin logbench -- writers --backend sqlite
//! cargo run --release -p bench --bin logbench -- replay --events 1000000
//! cargo run --release -p bench --bin logbench -- lag --backend postgres --rate 1000 --seconds 10
//!
//! PostgreSQL runs need DATABASE_URL; each run uses a fresh schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::{event, fresh, ms, percentiles, raw_rows};
use clap::{Parser, Subcommand};
use eventlog::{ExpectedVersion, ModelSet, StreamId, SubscribeOptions};
use futures::StreamExt;
use projections::Target;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N concurrent writers appending one event at a time, and the raw single-row INSERT figure
    Writers {
        #[arg(long, default_value = "sqlite")]
        backend: String,
        #[arg(long, default_value_t = 32)]
        writers: usize,
        /// Events per writer
        #[arg(long, default_value_t = 300)]
        per_writer: usize,
    },
    /// Replay N events into the event_counts projection on SQLite, and the raw full-scan figure
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// Subscriber end-to-end lag at a steady append rate
    Lag {
        #[arg(long, default_value = "sqlite")]
        backend: String,
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Writers {
            backend,
            writers,
            per_writer,
        } => writers_bench(&backend, writers, per_writer).await,
        Cmd::Replay { events } => replay_bench(events).await,
        Cmd::Lag {
            backend,
            rate,
            seconds,
        } => lag_bench(&backend, rate, seconds).await,
    }
}

fn report(label: &str, total: usize, elapsed: Duration, latencies: Vec<Duration>) {
    let (p50, p99, max) = percentiles(latencies);
    println!(
        "{label:<28} {total:>8} events in {:>6.2} s = {:>8.0} events/s   p50 {}  p99 {}  max {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(max)
    );
}

async fn writers_bench(backend: &str, writers: usize, per_writer: usize) -> anyhow::Result<()> {
    let db = fresh(backend).await?;
    println!("{writers} concurrent writers x {per_writer} single-event appends, backend {backend}");

    // The event log.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = db.store.log.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("writer-{w}"))?;
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                log.append(
                    &stream,
                    ExpectedVersion::Exact(i as i64),
                    &[event(i as u64)],
                )
                .await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    report(
        "event log append",
        writers * per_writer,
        started.elapsed(),
        lat,
    );

    // The raw limit: single-row autocommit INSERTs of same-sized rows, same concurrency.
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let started = Instant::now();
    let raw = bench::RawDb::connect(&db.options).await?;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (raw, next) = (raw.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let pos = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let rows = raw_rows(pos, &format!("raw-{w}"), i as i64 + 1, 1);
                let t = Instant::now();
                raw.insert(&rows).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    report(
        "raw INSERT (same rows)",
        writers * per_writer,
        started.elapsed(),
        lat,
    );
    Ok(())
}

async fn replay_bench(total: usize) -> anyhow::Result<()> {
    let db = fresh("sqlite").await?;
    println!("filling a fresh SQLite log with {total} events (batches of 1000)…");
    let fill = Instant::now();
    let mut n = 0usize;
    while n < total {
        let size = 1_000.min(total - n);
        let events: Vec<_> = (n..n + size).map(|i| event(i as u64)).collect();
        let stream = StreamId::new(format!("job-local-{}", n / 1_000))?;
        db.store
            .log
            .append(&stream, ExpectedVersion::NoStream, &events)
            .await?;
        n += size;
    }
    println!("filled in {:.1} s", fill.elapsed().as_secs_f64());

    // The raw limit: read every row in the same batches, without applying anything.
    let started = Instant::now();
    let mut after = 0;
    let mut read = 0usize;
    loop {
        let batch = db.store.log.read_all(after, 5_000).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        read += batch.len();
    }
    report(
        "read_all only (no projection)",
        read,
        started.elapsed(),
        vec![],
    );

    let started = Instant::now();
    let reached = projections::catch_up(
        db.store.log.as_ref(),
        db.store.read.as_ref(),
        &projections::views::event_counts::EventCounts,
        Target {
            set: ModelSet::Rebuild,
            until: None,
            batch: projections::rebuild::REBUILD_BATCH,
        },
        None,
        |_, _| {},
    )
    .await?;
    report(
        "replay into event_counts",
        reached as usize,
        started.elapsed(),
        vec![],
    );

    let started = Instant::now();
    let reached = projections::rebuild_and_promote(
        db.store.log.as_ref(),
        db.store.read.as_ref(),
        &projections::views::streams::StreamSummaries,
        |_, _| {},
    )
    .await?;
    report(
        "replay --projection streams",
        reached as usize,
        started.elapsed(),
        vec![],
    );

    let started = Instant::now();
    let verified = projections::verify(
        db.store.log.as_ref(),
        db.store.read.as_ref(),
        &projections::views::streams::StreamSummaries,
        |_, _| {},
    )
    .await?;
    anyhow::ensure!(verified.differences.is_empty(), "verify found differences");
    report(
        "replay --verify streams",
        verified.position as usize,
        started.elapsed(),
        vec![],
    );
    Ok(())
}

async fn lag_bench(backend: &str, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let db = fresh(backend).await?;
    let total = (rate * seconds) as usize;
    println!("subscriber lag at {rate} events/s for {seconds} s, backend {backend}");
    let started_at: Arc<Mutex<HashMap<i64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));

    let sub_log = db.store.log.clone();
    let seen_at = started_at.clone();
    let subscriber = tokio::spawn(async move {
        let mut lags = Vec::with_capacity(total);
        let mut sub = eventlog::subscribe(sub_log, 0, SubscribeOptions::default());
        while lags.len() < total {
            let Some(event) = sub.next().await else { break };
            let event = event?;
            let now = Instant::now();
            // The appender takes the time before it calls append and files it under the
            // position once append returns: wait for it if the subscriber is faster.
            let start = loop {
                if let Some(t) = seen_at
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .remove(&event.position)
                {
                    break t;
                }
                tokio::task::yield_now().await;
            };
            lags.push(now.saturating_duration_since(start));
        }
        anyhow::Ok(lags)
    });

    // Four appenders share one pace, so a slow commit does not hold the rate down.
    let (tick_tx, tick_rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let tick_rx = Arc::new(tokio::sync::Mutex::new(tick_rx));
    let started = Instant::now();
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..total as u64 {
            tick.tick().await;
            if tick_tx.send(i).await.is_err() {
                break;
            }
        }
    });
    let mut appenders = Vec::new();
    for a in 0..4 {
        let (log, rx, started_at) = (db.store.log.clone(), tick_rx.clone(), started_at.clone());
        appenders.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("lag-{a}"))?;
            let mut lat = Vec::new();
            loop {
                let Some(i) = rx.lock().await.recv().await else {
                    break;
                };
                let t = Instant::now();
                let out = log
                    .append(&stream, ExpectedVersion::Any, &[event(i)])
                    .await?;
                lat.push(t.elapsed());
                started_at
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert(out.last_position, t);
            }
            anyhow::Ok(lat)
        }));
    }
    pacer.await?;
    let mut append_lat = Vec::new();
    for a in appenders {
        append_lat.extend(a.await??);
    }
    let elapsed = started.elapsed();
    let lags = subscriber.await??;
    report("append latency", total, elapsed, append_lat);
    report("append start -> subscriber", lags.len(), elapsed, lags);
    Ok(())
}
