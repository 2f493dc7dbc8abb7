//! `clusterra simulate`: the scaling policy and the cost model over a workload trace, on a
//! simulated clock (domain::simulate does the work; this reads the file and prints).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use domain::simulate::{SimReport, SimSettings, simulate};
use domain::trace::{Trace, parse_csv, parse_swf};

use server::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Swf,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The trace: SWF (Parallel Workloads Archive) or CSV; `.gz` files are decompressed
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// The trace's format [default: csv for *.csv(.gz), else swf]
    #[arg(long)]
    pub format: Option<Format>,
    /// Cold-start profile
    #[arg(long, value_enum, default_value_t = Profile::Realistic)]
    pub profile: Profile,
    /// Cold start in seconds (overrides --profile)
    #[arg(long, value_name = "SECONDS")]
    pub cold_start: Option<i64>,
    /// Seconds a node set must be under-used before it shrinks
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub idle_window: i64,
    /// Seconds between scaling cycles
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    pub cycle: i64,
    /// Memory assumed per processor for jobs whose trace line has none
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub mib_per_cpu: u64,
    /// The node-shape catalog [default: the built-in one]
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// MiB of each node kept for the system
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub reserve_mib: u64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.idle_window >= 0, "--idle-window must be ≥ 0 seconds");
    anyhow::ensure!(args.cycle >= 1, "--cycle must be at least 1 second");
    let cold_start = args
        .cold_start
        .unwrap_or_else(|| args.profile.cold_start_seconds());
    anyhow::ensure!(cold_start >= 0, "--cold-start must be ≥ 0 seconds");
    let catalog_text = match &args.catalog {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("could not read the catalog {}", path.display()))?,
        None => include_str!("../../fixtures/catalog/shapes.json").to_string(),
    };
    let catalog = domain::scaling::Catalog::parse(&catalog_text, args.reserve_mib)
        .context("the node-shape catalog is not valid (see docs/autoscaling.md)")?;
    let trace = read_trace(&args.trace, args.format)?;
    anyhow::ensure!(
        !trace.jobs.is_empty(),
        "{} holds no job with a run time and processors",
        args.trace.display()
    );
    let started = std::time::Instant::now();
    let report = simulate(
        &trace,
        &catalog,
        SimSettings {
            cold_start,
            idle_window: args.idle_window,
            cycle: args.cycle,
            default_mib_per_cpu: args.mib_per_cpu,
        },
    );
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        jobs = report.jobs,
        "simulated"
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&args.trace, &report));
    }
    Ok(())
}

/// Reads a trace file, gzip or not, in the format asked for or guessed from its name.
pub fn read_trace(path: &Path, format: Option<Format>) -> anyhow::Result<Trace> {
    let raw = std::fs::read(path)
        .with_context(|| format!("could not read the trace {}", path.display()))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not a readable gzip file", path.display()))?;
        out
    } else {
        raw
    };
    // Archive files are Latin-1: each byte is its own character.
    let text: String = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| char::from(b)).collect(),
    };
    let format = format.unwrap_or(if name.ends_with(".csv") || name.ends_with(".csv.gz") {
        Format::Csv
    } else {
        Format::Swf
    });
    match format {
        Format::Swf => parse_swf(&text),
        Format::Csv => parse_csv(&text),
    }
    .with_context(|| format!("{} is not a valid {format:?} trace", path.display()))
}

fn render(path: &Path, r: &SimReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &r.settings;
    let _ = writeln!(
        out,
        "trace {}: {} jobs simulated, {} refused (no shape holds them), {} lines without run time or processors",
        path.display(),
        r.jobs,
        r.refused,
        r.skipped
    );
    let _ = writeln!(
        out,
        "cold start {} s, idle window {} s, a scaling cycle every {} s, {} MiB per processor where the trace has no memory\n",
        s.cold_start, s.idle_window, s.cycle, s.default_mib_per_cpu
    );
    let _ = writeln!(
        out,
        "{:<26} {:>14} {:>16} {:>9} {:>9} {:>9} {:>10}",
        "fleet", "node-hours", "cost (USD)", "p50 wait", "p95 wait", "p99 wait", "launches"
    );
    let fixed_nodes: u32 = r.fixed_fleet.values().sum();
    for (name, f) in [
        ("elastic (Clusterra)".to_string(), &r.elastic),
        (format!("fixed, {fixed_nodes} nodes at peak"), &r.fixed),
    ] {
        let _ = writeln!(
            out,
            "{:<26} {:>14.1} {:>16} {:>8}s {:>8}s {:>8}s {:>10}",
            name,
            f.node_hours(),
            f.cost.to_string(),
            f.waits.p50,
            f.waits.p95,
            f.waits.p99,
            f.launches
        );
    }
    let _ = writeln!(out, "\nfixed fleet:");
    for (set, n) in &r.fixed_fleet {
        let usage = r.fixed.per_set.get(set);
        let _ = writeln!(
            out,
            "  {set:<18} {n:>5} x {}",
            usage.map_or("?", |u| u.instance_type.as_str())
        );
    }
    let _ = writeln!(out, "elastic node sets used:");
    for (set, u) in &r.elastic.per_set {
        let _ = writeln!(
            out,
            "  {set:<18} {:<14} peak {:>5} nodes, {:>10.1} node-hours, {}",
            u.instance_type,
            u.peak_nodes,
            u.node_seconds as f64 / 3600.0,
            u.cost
        );
    }
    if r.fixed.cost.0 > 0 {
        let _ = writeln!(
            out,
            "\nelastic costs {:.1}% of the fixed fleet",
            100.0 * r.elastic.cost.0 as f64 / r.fixed.cost.0 as f64
        );
    }
    out
}
