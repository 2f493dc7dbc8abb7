//! Load generator for job logs (bench/logs.sh runs it against a fresh release server).
//!
//! 1. Follow: submits a long job, opens `--clients` SSE streams on its log, then appends
//!    `--rate` lines per second to the log file for `--seconds`, each line stamped with the wall
//!    clock. Every client measures write → delivery latency of the first line of each event (the
//!    oldest line in it, so the worst), and must end with exactly the bytes written. Server memory
//!    per client is the growth of the server's RSS (`--server-pid`) with the clients connected.
//! 2. Read: writes `--big-mib` MiB into a finished job's log and reads it from offset 0, through
//!    `GET …/logs` and through the SSE stream.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench::{ms, percentiles, rss_kib};
use clap::Parser;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: bench::Server,
    /// The server's efs root (its `job_<id>.out` files are appended to directly).
    #[arg(long)]
    efs: std::path::PathBuf,
    /// The server's pid, for its resident memory.
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Lines appended per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Size of the log read from offset 0 (0 skips the read test).
    #[arg(long, default_value_t = 1_024)]
    big_mib: u64,
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn submit(&self, script: &str) -> anyhow::Result<u64> {
        let out: Value = self
            .http
            .post(format!("{}/v1/clusters/local/jobs", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"job": {"name": "tailbench", "script": script,
                "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}))
            .send()
            .await?
            .json()
            .await?;
        out["job_id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("submit failed: {out}"))
    }

    async fn wait_state(&self, id: u64, states: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job: Value = self
                .http
                .get(format!("{}/v1/clusters/local/jobs/{id}", self.url))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            if states.iter().any(|s| job["state"] == *s) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "job {id} never reached {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stream(&self, id: u64) -> reqwest::RequestBuilder {
        self.http
            .get(format!(
                "{}/v1/clusters/local/jobs/{id}/logs/stream",
                self.url
            ))
            .bearer_auth(&self.token)
    }
}

/// The text of a `log` event (the bench writes only UTF-8).
fn text_of(data: &str) -> Option<String> {
    let v: Value = serde_json::from_str(data).ok()?;
    v["text"].as_str().map(str::to_string)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = Arc::new(Api {
        http: reqwest::Client::builder().build()?,
        url: args.server.url.trim_end_matches('/').to_string(),
        token: args.server.token.clone(),
    });
    let id = api.submit("#!/bin/bash\nsleep 3600\n").await?;
    api.wait_state(id, &["RUNNING"]).await?;
    let path = args.efs.join(format!("job_{id}.out"));
    let rss_before = rss_kib(args.server_pid);

    // Connect every client and wait until each has its first event (the retry hint).
    let connected = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicU64::new(u64::MAX));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (api, connected, written) = (api.clone(), connected.clone(), written.clone());
        clients.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut bytes = 0u64;
            let Ok(res) = api.stream(id).send().await else {
                return (samples, bytes);
            };
            let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
            let mut first = true;
            while let Some(Ok(event)) = events.next().await {
                if first {
                    first = false;
                    connected.fetch_add(1, Ordering::SeqCst);
                }
                if event.event != "log" {
                    continue;
                }
                let arrived = now_nanos();
                let Some(text) = text_of(&event.data) else {
                    continue;
                };
                bytes += text.len() as u64;
                if let Some(stamp) = text
                    .split_once('\n')
                    .map(|(first, _)| first)
                    // A chunk cut inside a line starts with the rest of it: no stamp to trust.
                    .filter(|l| l.starts_with("seq="))
                    .and_then(|l| l.split(" t=").nth(1))
                    .and_then(|t| t.split(' ').next())
                    .and_then(|t| t.parse::<u128>().ok())
                {
                    samples.push(Duration::from_nanos(
                        arrived.saturating_sub(stamp).try_into().unwrap_or(u64::MAX),
                    ));
                }
                if bytes >= written.load(Ordering::SeqCst) {
                    break;
                }
            }
            (samples, bytes)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) < args.clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_connected = rss_kib(args.server_pid);

    // Append at the rate, one write per line, as a job's output would arrive.
    let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
    let lines = args.rate * args.seconds;
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now();
    let mut total = 0u64;
    let mut rss_peak = rss_connected;
    for n in 0..lines {
        let target = start + every * n as u32;
        if let Some(wait) = target.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let line = format!("seq={n:08} t={} payload-{}\n", now_nanos(), "x".repeat(40));
        file.write_all(line.as_bytes())?;
        total += line.len() as u64;
        if n % args.rate == 0 {
            rss_peak = rss_peak.max(rss_kib(args.server_pid));
        }
    }
    let wrote_for = start.elapsed();
    written.store(total, Ordering::SeqCst);
    // Wake clients that already have everything.
    file.write_all(b"")?;
    let mut samples = Vec::new();
    let mut complete = 0;
    let mut connected_ok = 0;
    for c in clients {
        if let Ok(Ok((s, bytes))) = tokio::time::timeout(Duration::from_secs(30), c).await {
            connected_ok += usize::from(!s.is_empty());
            complete += usize::from(bytes == total);
            samples.extend(s);
        }
    }
    let (p50, p99, max) = percentiles(samples.clone());
    println!(
        "follow: {} clients ({} connected), {} lines at {}/s over {:.1} s ({} bytes)",
        args.clients,
        connected.load(Ordering::SeqCst),
        lines,
        args.rate,
        wrote_for.as_secs_f64(),
        total
    );
    println!(
        "  write -> delivery latency (oldest line of each event, {} samples): p50 {}, p99 {}, max {}",
        samples.len(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "  clients with every byte: {complete}/{} (clients that received data: {connected_ok})",
        args.clients
    );
    println!(
        "  server RSS: {} KiB before, {} KiB with clients connected, {} KiB peak while writing: {:.1} KiB per client connected, {:.1} KiB per client at peak",
        rss_before,
        rss_connected,
        rss_peak,
        (rss_connected.saturating_sub(rss_before)) as f64 / args.clients as f64,
        (rss_peak.saturating_sub(rss_before)) as f64 / args.clients as f64,
    );
    let _ = api
        .http
        .delete(format!("{}/v1/clusters/local/jobs/{id}", api.url))
        .bearer_auth(&api.token)
        .send()
        .await;

    if args.big_mib > 0 {
        let big = api.submit("#!/bin/bash\ntrue\n").await?;
        api.wait_state(big, &["COMPLETED"]).await?;
        let path = args.efs.join(format!("job_{big}.out"));
        let line = format!("{}\n", "0123456789abcdef".repeat(8));
        let block = line.repeat(1024 * 1024 / line.len());
        let mut f = std::fs::File::create(&path)?;
        let mut size = 0u64;
        while size < args.big_mib * 1024 * 1024 {
            f.write_all(block.as_bytes())?;
            size += block.len() as u64;
        }
        f.sync_all()?;
        drop(f);
        // Warm the page cache once, as a log being read right after it was written would be.
        let _ = std::fs::read(&path).map(|v| v.len());
        let started = Instant::now();
        let res = api
            .http
            .get(format!("{}/v1/clusters/local/jobs/{big}/logs", api.url))
            .bearer_auth(&api.token)
            .send()
            .await?;
        let mut got = 0u64;
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            got += chunk?.len() as u64;
        }
        let took = started.elapsed();
        anyhow::ensure!(got == size, "read {got} of {size} bytes");
        println!(
            "read: GET …/logs of {} MiB from offset 0: {:.2} s, {:.0} MB/s",
            size / (1024 * 1024),
            took.as_secs_f64(),
            size as f64 / 1e6 / took.as_secs_f64()
        );
        let started = Instant::now();
        let res = api.stream(big).send().await?;
        let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
        let mut got = 0u64;
        while let Some(event) = events.next().await {
            let event = event?;
            match event.event.as_str() {
                "log" => got += text_of(&event.data).map_or(0, |t| t.len() as u64),
                "end" => break,
                _ => {}
            }
        }
        let took = started.elapsed();
        anyhow::ensure!(got == size, "streamed {got} of {size} bytes");
        println!(
            "read: SSE stream of {} MiB from offset 0 to its end event: {:.2} s, {:.0} MB/s",
            size / (1024 * 1024),
            took.as_secs_f64(),
            size as f64 / 1e6 / took.as_secs_f64()
        );
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}
