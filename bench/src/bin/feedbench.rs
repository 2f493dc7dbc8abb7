//! Load generator for the live event feed (bench/feed.sh runs it against a fresh release server
//! on a fresh PostgreSQL database).
//!
//! Registers a cluster `bench` (a Slurm endpoint nobody answers, so the poll cycle leaves it
//! alone), opens `--subscribers` SSE streams on its feed, then appends `JobSubmitted` events for
//! it straight into the log at `--rate` per second for `--seconds`, from `--writers` concurrent
//! writers — as another API replica would: the server learns of them through PostgreSQL
//! NOTIFY, projects them and fans them out. Every subscriber counts the entries it receives (none
//! may be lost: each must end with exactly as many as were appended); a sample (every
//! `--sample-every`-th subscriber) also parses each entry and measures the time from the event's
//! `recorded_at` (stamped by the appender just before commit) to delivery. Server memory per
//! subscriber is the growth of the server's RSS with the subscribers connected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bench::{ms, percentiles, rss_kib};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: bench::Server,
    #[arg(long)]
    server_pid: u32,
    /// The server's PostgreSQL database.
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 32)]
    writers: usize,
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Entries appended per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Every N-th subscriber measures latency.
    #[arg(long, default_value_t = 100)]
    sample_every: usize,
}

/// Counts `needle` in a byte stream delivered in chunks (a match may straddle two chunks).
struct Counter {
    tail: Vec<u8>,
    count: u64,
}

impl Counter {
    fn feed(&mut self, chunk: &[u8], needle: &[u8]) {
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(chunk);
        self.count += joined
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count() as u64;
        let keep = needle.len() - 1;
        self.tail = joined[joined.len().saturating_sub(keep)..].to_vec();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.server.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().build()?;
    let registered: Value = http
        .post(format!("{base}/v1/clusters"))
        .bearer_auth(&args.server.token)
        .json(
            &json!({"id": "bench", "name": "Bench", "region": "local", "bucket": "bench",
            "slurm": {"url": "http://127.0.0.1:9", "user": "bench"}}),
        )
        .send()
        .await?
        .json()
        .await?;
    let position = registered["position"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("could not register the bench cluster: {registered}"))?;
    let seen = http
        .get(format!("{base}/v1/clusters/bench/events"))
        .bearer_auth(&args.server.token)
        .header("X-Clusterra-Min-Position", position)
        .send()
        .await?;
    anyhow::ensure!(
        seen.status().is_success(),
        "the bench cluster is not visible: {} {}",
        seen.status(),
        seen.text().await.unwrap_or_default()
    );
    let stream_url = format!("{base}/v1/clusters/bench/events/stream");
    let rss_before = rss_kib(args.server_pid);

    let connected = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let mut subs = Vec::new();
    let opened = Instant::now();
    for i in 0..args.subscribers {
        let (http, url, token, connected, target) = (
            http.clone(),
            stream_url.clone(),
            args.server.token.clone(),
            connected.clone(),
            target.clone(),
        );
        let sample = i % args.sample_every == 0;
        subs.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut dropped = false;
            let Ok(res) = http.get(url).bearer_auth(token).send().await else {
                return (0u64, samples, dropped);
            };
            connected.fetch_add(1, Ordering::SeqCst);
            if sample {
                let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
                let mut n = 0u64;
                loop {
                    if n >= target.load(Ordering::SeqCst) {
                        break;
                    }
                    let e = match tokio::time::timeout(Duration::from_secs(1), events.next()).await
                    {
                        Err(_) => continue,
                        Ok(Some(Ok(e))) => e,
                        Ok(_) => break,
                    };
                    if e.event == "dropped" {
                        dropped = true;
                        break;
                    }
                    if e.data.is_empty() {
                        continue;
                    }
                    let now = chrono::Utc::now();
                    if let Ok(v) = serde_json::from_str::<Value>(&e.data)
                        && let Some(t) = v["time"].as_str()
                        && let Ok(t) = chrono::DateTime::parse_from_rfc3339(t)
                    {
                        samples.push(
                            (now - t.with_timezone(&chrono::Utc))
                                .to_std()
                                .unwrap_or_default(),
                        );
                    }
                    n += 1;
                    if n >= target.load(Ordering::SeqCst) {
                        break;
                    }
                }
                (n, samples, dropped)
            } else {
                let mut body = res.bytes_stream();
                let mut entries = Counter {
                    tail: Vec::new(),
                    count: 0,
                };
                let mut drops = Counter {
                    tail: Vec::new(),
                    count: 0,
                };
                while let Some(Ok(chunk)) = body.next().await {
                    entries.feed(&chunk, b"\ndata: ");
                    drops.feed(&chunk, b"event: dropped");
                    if drops.count > 0 {
                        dropped = true;
                        break;
                    }
                    if entries.count >= target.load(Ordering::SeqCst) {
                        break;
                    }
                }
                (entries.count, samples, dropped)
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::SeqCst) < args.subscribers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the streams' catch-up phase finish before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connect_took = opened.elapsed();
    let rss_connected = rss_kib(args.server_pid);

    // Append at the rate, straight into the log, from a few concurrent writers.
    let store = eventlog::open(
        &eventlog::OpenOptions::new(args.database_url.clone()),
        Arc::new(eventlog::SystemClock),
    )
    .await?;
    let total = args.rate * args.seconds;
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..args.writers {
        let (log, next, ok) = (store.log.clone(), next.clone(), ok.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    break;
                }
                let due = started + every * n as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let submission = uuid::Uuid::now_v7();
                let Ok(stream) = eventlog::StreamId::new(format!("job-bench-{submission}")) else {
                    continue;
                };
                let event = eventlog::NewEvent::new(
                    "JobSubmitted",
                    json!({"submission_id": submission, "workspace": "default", "cluster_id": "bench",
                        "job_id": n + 1, "name": "feedbench", "user": "bench@clusterra.local",
                        "via": "api", "body": {}, "shape": {"cpus": 1, "memory_mib": null, "nodes": 1,
                        "time_limit_minutes": null}, "warnings": []}),
                )
                .with_metadata(eventlog::Metadata {
                    actor: Some("bench@clusterra.local".into()),
                    ..Default::default()
                });
                if log
                    .append(&stream, eventlog::ExpectedVersion::NoStream, &[event])
                    .await
                    .is_ok()
                {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let mut rss_peak = rss_connected;
    while writers.iter().any(|w| !w.is_finished()) {
        rss_peak = rss_peak.max(rss_kib(args.server_pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let submit_took = started.elapsed();
    let appended = ok.load(Ordering::SeqCst);
    target.store(appended, Ordering::SeqCst);
    rss_peak = rss_peak.max(rss_kib(args.server_pid));

    let mut complete = 0;
    let mut dropped = 0;
    let mut counts = std::collections::BTreeMap::new();
    let mut samples = Vec::new();
    // One deadline for all: a subscriber still waiting then has lost entries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for s in subs {
        match tokio::time::timeout_at(deadline, s).await {
            Ok(Ok((n, smp, d))) => {
                complete += usize::from(n == appended);
                dropped += usize::from(d);
                *counts.entry(n).or_insert(0usize) += 1;
                samples.extend(smp);
            }
            _ => *counts.entry(u64::MAX).or_insert(0) += 1,
        }
    }
    let (p50, p99, max) = percentiles(samples.clone());
    println!(
        "feed: {} subscribers ({} connected in {:.1} s); {} entries appended at {}/s over {:.1} s",
        args.subscribers,
        connected.load(Ordering::SeqCst),
        connect_took.as_secs_f64(),
        appended,
        args.rate,
        submit_took.as_secs_f64()
    );
    println!(
        "  append -> delivery latency ({} samples from every {}th subscriber): p50 {}, p99 {}, max {}",
        samples.len(),
        args.sample_every,
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "  subscribers with every entry: {complete}/{} (dropped as too slow: {dropped}); entries received -> subscribers: {:?}",
        args.subscribers, counts
    );
    println!(
        "  server RSS: {rss_before} KiB before, {rss_connected} KiB connected, {rss_peak} KiB peak: {:.1} KiB per subscriber connected, {:.1} KiB at peak",
        rss_connected.saturating_sub(rss_before) as f64 / args.subscribers as f64,
        rss_peak.saturating_sub(rss_before) as f64 / args.subscribers as f64
    );
    Ok(())
}
