//! What a server costs while it holds a queue (bench/queue.sh fills it first): the server's CPU
//! while nothing happens, and the poll cycle's duration when a few jobs change.
//!
//! 1. Waits until the leader's poll cycle has read the whole log (its `poll_events_read` stops
//!    moving) and no projection lags, then prints the duration of a few idle cycles
//!    (`/metrics`); it fails after 10 minutes without catching up. With `--settle-only` it
//!    stops there (`settle` in bench/lib.sh).
//! 2. Idle CPU: the server's user + system time (`/proc/<pid>/stat`) over `--idle-seconds`, with
//!    no request sent meanwhile, as a share of one core.
//! 3. Changes: cancels jobs 1..=`--changes` (pending jobs of the local executor: each cancel is a
//!    `JobCancelRequested`, the executor ends the job, and reconcile records its
//!    `JobStateChanged`), then samples `/metrics` every 10 ms and prints every cycle that ran
//!    until all of them are recorded, with its duration and the events it read.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: bench::Server,
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value = "local")]
    cluster: String,
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    #[arg(long, default_value_t = 100)]
    changes: u64,
    /// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Only wait until the server has caught up with its log (step 1), then stop.
    #[arg(long)]
    settle_only: bool,
}

/// What `/metrics` says about the poll cycle.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Poll {
    /// Events the projections are behind the log, summed over all of them.
    lag: f64,
    cycles: f64,
    last_seconds: f64,
    events: f64,
}

async fn poll_metrics(client: &reqwest::Client, url: &str) -> anyhow::Result<Poll> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Every projection's lag, summed (one labelled line each).
    let lag = text
        .lines()
        .filter_map(|l| l.strip_prefix("clusterra_projection_lag_events{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    Ok(Poll {
        lag,
        cycles: value("clusterra_poll_cycles_total"),
        last_seconds: value("clusterra_poll_cycle_last_duration_seconds"),
        events: value("clusterra_poll_events_read_total"),
    })
}

/// The server's CPU time so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("unreadable stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// How long step 1 waits for the server to catch up with its log (a 100,000-job fill takes
/// well under a minute here) before it gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// Waits for the next cycle after `after` and returns it.
async fn next_cycle(client: &reqwest::Client, url: &str, after: Poll) -> anyhow::Result<Poll> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = poll_metrics(client, url).await?;
        if now.cycles > after.cycles {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("no poll cycle in 60 s: is this server the leader?");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let url = args.server.url.trim_end_matches('/').to_string();

    // 1. Caught up: three cycles in a row that read nothing new, with every projection at the
    // head (a fill faster than the projectors leaves them working after the poll cycle is done).
    let started = Instant::now();
    let mut last = poll_metrics(&client, &url).await?;
    let mut quiet = 0;
    let mut idle_cycles = Vec::new();
    while quiet < 3 {
        if started.elapsed() > CATCH_UP_LIMIT {
            bail!(
                "the poll cycle and the projections did not catch up with the log within {} s: is something still writing to this server?",
                CATCH_UP_LIMIT.as_secs()
            );
        }
        let now = next_cycle(&client, &url, last).await?;
        if now.events == last.events && now.lag == 0.0 {
            quiet += 1;
            idle_cycles.push(now.last_seconds);
        } else {
            quiet = 0;
            idle_cycles.clear();
        }
        last = now;
    }
    println!(
        "poll cycle and projections caught up with the log after {:.1} s; idle cycles: {}",
        started.elapsed().as_secs_f64(),
        idle_cycles
            .iter()
            .map(|s| format!("{:.2} ms", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.settle_only {
        return Ok(());
    }

    // 2. Idle CPU, no request meanwhile.
    let before = cpu_ticks(args.server_pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let ticks = cpu_ticks(args.server_pid)? - before;
    let share = ticks as f64 / args.clk_tck as f64 / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle server CPU over {} s: {share:.2} % of one core ({ticks} ticks)",
        args.idle_seconds
    );

    // 3. A few changes.
    let before = poll_metrics(&client, &url).await?;
    let sent = Instant::now();
    let cancels = (1..=args.changes).map(|id| {
        let req = client
            .delete(format!("{url}/v1/clusters/{}/jobs/{id}", args.cluster))
            .bearer_auth(&args.server.token)
            .send();
        async move { req.await.map(|r| r.status()) }
    });
    let statuses = futures::future::join_all(cancels).await;
    let failed = statuses
        .iter()
        .filter(|s| !s.as_ref().is_ok_and(|s| s.is_success()))
        .count();
    if failed > 0 {
        bail!("{failed} of {} cancels were refused", args.changes);
    }
    println!(
        "{} cancels accepted in {:.0} ms",
        args.changes,
        sent.elapsed().as_secs_f64() * 1e3
    );
    // Each cancel is two events (`JobCancelRequested` by the API, `JobStateChanged` by
    // reconcile): cycles are watched until they have read both for every job, and one more.
    // Nothing else is asked of the server meanwhile (a job listing would load it).
    let mut cycles = Vec::new();
    let mut last = before;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut settled = 0;
    while settled < 2 {
        let now = next_cycle(&client, &url, last).await?;
        cycles.push((now.last_seconds, now.events - last.events));
        last = now;
        if last.events - before.events >= 2.0 * args.changes as f64 {
            settled += 1;
        }
        if Instant::now() > deadline {
            bail!("the changes were not all read by the poll cycle after 60 s");
        }
    }
    // Then each job is checked: CANCELLED.
    let mut cancelled = 0;
    for id in 1..=args.changes {
        let job: serde_json::Value = client
            .get(format!("{url}/v1/clusters/{}/jobs/{id}", args.cluster))
            .bearer_auth(&args.server.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if job["state"] == "CANCELLED" {
            cancelled += 1;
        }
    }
    if cancelled < args.changes {
        bail!("only {cancelled} of {} jobs are CANCELLED", args.changes);
    }
    let worst = cycles.iter().map(|c| c.0).fold(0.0, f64::max);
    println!(
        "cycles until all {} changes were read: {} — {}; worst {:.2} ms; all {cancelled} jobs CANCELLED",
        args.changes,
        cycles.len(),
        cycles
            .iter()
            .map(|(s, e)| format!("{:.2} ms ({e} events)", s * 1e3))
            .collect::<Vec<_>>()
            .join(", "),
        worst * 1e3
    );
    Ok(())
}
