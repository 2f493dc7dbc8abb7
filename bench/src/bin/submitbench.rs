//! HTTP load generator: job submissions against a running server, with a fixed number of
//! concurrent clients on loopback. Bounded in count and time.
//!
//! bench/submit.sh runs it against a fresh release server whose local executor runs nothing, so
//! every job stays pending (no node to run them), as the jobs issue asks.
//!
//! submitbench --url http://127.0.0.1:8080 --token JWT --requests 5000 --concurrency 32

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bench::{ms, percentiles};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Send to slurmrestd's submit endpoint instead (the same body, Slurm's auth headers).
    #[arg(long)]
    slurmrestd_user: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, url, token, user) = (
            client.clone(),
            next.clone(),
            args.url.clone(),
            args.token.clone(),
            args.slurmrestd_user.clone(),
        );
        let total = args.requests;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    break;
                }
                let body = json!({"job": {
                    "name": format!("bench-{i}"),
                    "script": "#!/bin/bash\nsrun hostname\n",
                    "environment": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                    "current_working_directory": "/tmp",
                    "tasks": 1, "cpus_per_task": 1,
                    "memory_per_node": {"set": true, "infinite": false, "number": 512},
                    "time_limit": {"set": true, "infinite": false, "number": 10}
                }});
                let mut body = body;
                if user.is_some() {
                    // Held jobs stay PENDING: nothing runs, as with executor_slots = 0.
                    body["job"]["hold"] = json!(true);
                    body["job"]["current_working_directory"] = json!("/tmp");
                }
                let mut req = client.post(&url).json(&body);
                req = match &user {
                    Some(u) => req
                        .header("X-SLURM-USER-NAME", u)
                        .header("X-SLURM-USER-TOKEN", &token),
                    None => req.bearer_auth(&token),
                };
                let t = Instant::now();
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    Ok(r) => {
                        failures += 1;
                        if failures < 3 {
                            eprintln!(
                                "status {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures < 3 {
                            eprintln!("error: {e}");
                        }
                    }
                }
            }
            (lat, failures)
        }));
    }
    let mut lat = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    let ok = lat.len();
    let (p50, p99, max) = percentiles(lat);
    println!(
        "{ok} submits ({failures} failed) in {:.2} s with {} clients = {:.0} submits/s   p50 {}  p99 {}  max {}",
        elapsed.as_secs_f64(),
        args.concurrency,
        ok as f64 / elapsed.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(max)
    );
    Ok(())
}
