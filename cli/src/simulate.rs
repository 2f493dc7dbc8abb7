//! `clusterra simulate`: the scaling policy and the cost model over a workload trace, on a
//! simulated clock (domain::simulate does the work; this reads the file and prints).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use domain::simulate::{FleetReport, IdlePolicy, SimReport, SimSettings, simulate};
use domain::trace::{Trace, parse_csv, parse_swf};

use server::Profile;

/// Which elastic idle policies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policies {
    /// The service's: a node set shrinks once under-used for the idle window
    Set,
    /// Per node: a node idle for the idle window is terminated (ParallelCluster's)
    Node,
    /// Both, side by side
    Both,
}

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
    /// Seconds of idleness before nodes go (per set or per node, by --idle-policy)
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub idle_window: i64,
    /// How idle elastic nodes go away
    #[arg(long, value_enum, default_value_t = Policies::Both)]
    pub idle_policy: Policies,
    /// The most nodes one job may use (wider jobs are refused and reported)
    #[arg(long, value_name = "N", default_value_t = domain::simulate::MAX_NODES_PER_JOB)]
    pub max_nodes_per_job: u32,
    /// The site's machine in processors, for the fixed-fleet baseline [default: the SWF
    /// header's MaxProcs]
    #[arg(long, value_name = "N")]
    pub site_procs: Option<u64>,
    /// Seconds between scaling cycles
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    pub cycle: i64,
    /// Memory assumed per processor for jobs whose trace line has none [default: what the largest
    /// compute shape keeps per vCPU after --reserve-mib, at most 2048; 2016 with the defaults]
    #[arg(long, value_name = "MIB")]
    pub mib_per_cpu: Option<u64>,
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
    anyhow::ensure!(
        (1..=domain::simulate::MAX_NODES_PER_JOB).contains(&args.max_nodes_per_job),
        "--max-nodes-per-job must be from 1 to {}",
        domain::simulate::MAX_NODES_PER_JOB
    );
    anyhow::ensure!(
        args.site_procs
            .is_none_or(|p| (1..=domain::simulate::MAX_SITE_PROCS).contains(&p)),
        "--site-procs must be from 1 to {}",
        domain::simulate::MAX_SITE_PROCS
    );
    anyhow::ensure!(
        args.mib_per_cpu
            .is_none_or(|m| (64..=1024 * 1024).contains(&m)),
        "--mib-per-cpu must be from 64 to 1048576"
    );
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
            default_mib_per_cpu: args
                .mib_per_cpu
                .unwrap_or_else(|| catalog.fitting_mib_per_cpu()),
            max_nodes_per_job: args.max_nodes_per_job,
            site_procs: args.site_procs,
            idle_policy: match args.idle_policy {
                Policies::Set => Some(IdlePolicy::Set),
                Policies::Node => Some(IdlePolicy::Node),
                Policies::Both => None,
            },
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
        "trace {}: {} jobs simulated; {} refused ({:.1}% of the work: {} need more memory per processor than any shape, {} more than {} nodes); {} cancelled before they started (not run); {} lines without run time or processors",
        path.display(),
        r.jobs,
        r.refused.jobs(),
        100.0 * r.refused.work_share,
        r.refused.no_shape,
        r.refused.too_wide,
        s.max_nodes_per_job,
        r.cancelled,
        r.skipped
    );
    let _ = writeln!(
        out,
        "cold start {} s, idle window {} s, a scaling cycle every {} s, {} MiB per processor where the trace has no memory ({} jobs took the memory they used)\n",
        s.cold_start, s.idle_window, s.cycle, s.default_mib_per_cpu, r.memory_from_use
    );
    let bound = r.lower_bound.0.max(1) as f64;
    let _ = writeln!(
        out,
        "{:<38} {:>12} {:>16} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "", "node-hours", "cost", "x bound", "p50 wait", "p95 wait", "p99 wait", "launches"
    );
    let _ = writeln!(
        out,
        "{:<38} {:>12} {:>16} {:>8.2} {:>9} {:>9} {:>9} {:>9}",
        "lower bound (perfectly packed)",
        "-",
        r.lower_bound.cents(),
        1.0,
        "-",
        "-",
        "-",
        "-"
    );
    let mut fleets: Vec<(String, &FleetReport)> = Vec::new();
    if let Some(f) = &r.elastic.set {
        fleets.push(("elastic, set idle policy (Clusterra)".into(), f));
    }
    if let Some(f) = &r.elastic.node {
        fleets.push(("elastic, node idle policy".into(), f));
    }
    if let Some(site) = &r.site {
        fleets.push((
            format!(
                "fixed, site size ({} procs, {} nodes)",
                site.procs,
                site.fleet.values().sum::<u32>()
            ),
            &site.report,
        ));
    }
    for (name, f) in &fleets {
        let _ = writeln!(
            out,
            "{:<38} {:>12.1} {:>16} {:>8.2} {:>8}s {:>8}s {:>8}s {:>9}",
            name,
            f.node_hours(),
            f.cost.cents(),
            f.cost.0 as f64 / bound,
            f.waits.p50,
            f.waits.p95,
            f.waits.p99,
            f.launches
        );
    }
    if let Some(w) = &r.traced_waits {
        let _ = writeln!(
            out,
            "{:<38} {:>12} {:>16} {:>8} {:>8}s {:>8}s {:>8}s {:>9}",
            "the site's own scheduler (traced)", "", "", "", w.p50, w.p95, w.p99, ""
        );
    }
    if r.site.is_none() {
        let _ = writeln!(
            out,
            "(no fixed-fleet baseline: the trace names no MaxProcs; give --site-procs N)"
        );
    }
    let _ = writeln!(out, "\nwhere each fleet's cost goes:");
    for (name, f) in &fleets {
        let b = &f.breakdown;
        let packing = domain::MicroUsd(b.busy.0 - r.lower_bound.0);
        let pct = |m: domain::MicroUsd| 100.0 * m.0 as f64 / f.cost.0.max(1) as f64;
        let _ = writeln!(
            out,
            "  {name:<36} starting {:>14} ({:>4.1}%)  idle {:>14} ({:>4.1}%)  busy {:>14}, of which packing {:>12} ({:>4.1}%)",
            b.cold_start.cents(),
            pct(b.cold_start),
            b.idle.cents(),
            pct(b.idle),
            b.busy.cents(),
            packing.cents(),
            pct(packing)
        );
    }
    if let Some(site) = &r.site {
        let _ = writeln!(out, "\nsite-size fleet ({}):", site.source);
        for (set, n) in &site.fleet {
            let usage = site.report.per_set.get(set);
            let _ = writeln!(
                out,
                "  {set:<18} {n:>6} x {}",
                usage.map_or("?", |u| u.instance_type.as_str())
            );
        }
    }
    for (name, f) in &fleets[..fleets.len() - usize::from(r.site.is_some())] {
        let _ = writeln!(out, "\nnode sets used, {name}:");
        for (set, u) in &f.per_set {
            let _ = writeln!(
                out,
                "  {set:<18} {:<14} peak {:>6} nodes {:>12.1} node-hours {:>14}",
                u.instance_type,
                u.peak_nodes,
                u.node_seconds as f64 / 3600.0,
                u.cost.cents()
            );
        }
    }
    out
}
