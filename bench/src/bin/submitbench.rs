//! HTTP load generator: job submissions against a running server, with a fixed number of
//! concurrent clients on loopback. Bounded in count and time.
//!
//! bench/submit.sh runs it against a fresh release server whose local executor runs nothing, so
//! every job stays pending (no node to run them), as the jobs issue asks.
//!
//! submitbench --url http://127.0.0.1:8080 --token JWT --requests 5000 --concurrency 32

use std::time::Duration;

use bench::closed_loop;
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: bench::Server,
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
    let (url, token, user) = (args.server.url, args.server.token, args.slurmrestd_user);
    let load = closed_loop(
        args.requests,
        args.concurrency,
        Duration::from_secs(args.max_seconds),
        move |i| {
            let mut body = json!({"job": {
                "name": format!("bench-{i}"),
                "script": "#!/bin/bash\nsrun hostname\n",
                "environment": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "current_working_directory": "/mnt/efs",
                "tasks": 1, "cpus_per_task": 1,
                "memory_per_node": {"set": true, "infinite": false, "number": 512},
                "time_limit": {"set": true, "infinite": false, "number": 10}
            }});
            if user.is_some() {
                // Held jobs stay PENDING: nothing runs, as with executor_slots = 0.
                body["job"]["hold"] = json!(true);
                body["job"]["current_working_directory"] = json!("/tmp");
            }
            let req = client.post(&url).json(&body);
            let req = match &user {
                Some(u) => req
                    .header("X-SLURM-USER-NAME", u)
                    .header("X-SLURM-USER-TOKEN", &token),
                None => req.bearer_auth(&token),
            };
            async move {
                let r = req.send().await.map_err(|e| format!("error: {e}"))?;
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("status {status}: {text}"))
                }
            }
        },
    )
    .await?;
    println!("{}", load.report("submits", args.concurrency));
    Ok(())
}
