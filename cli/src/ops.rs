//! `clusterra replay` and `clusterra audit`: operator tools over the same database.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use eventlog::StreamId;

use server::Config;
use server::store::open_store;

/// Prints progress to stderr at most once a second, and once at the end.
struct Progress {
    label: String,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(label: impl Into<String>) -> Self {
        let now = Instant::now();
        Self {
            label: label.into(),
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, done: i64, total: i64) {
        if self.last.elapsed() >= Duration::from_secs(1) || done >= total {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let pct = if total > 0 { done * 100 / total } else { 100 };
            eprintln!(
                "{}: {done}/{total} events ({pct}%), {:.0} events/s",
                self.label,
                done as f64 / secs
            );
        }
    }
}

pub async fn replay(config: &Config, name: &str, verify: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let chosen = projections::select(name).with_context(|| {
        let names: Vec<_> = projections::all_projectors()
            .iter()
            .map(|p| p.name())
            .collect();
        format!("use one of: all, {}", names.join(", "))
    })?;
    let mut differing = 0usize;
    for projector in chosen {
        let mut progress = Progress::new(format!("replay {}", projector.name()));
        if verify {
            let report = projections::verify(
                store.log.as_ref(),
                store.read.as_ref(),
                projector.as_ref(),
                |p, total| progress.tick(p, total),
            )
            .await?;
            if report.differences.is_empty() {
                println!(
                    "{}: OK — rebuild matches live at position {} ({} documents)",
                    report.projection, report.position, report.documents
                );
            } else {
                differing += 1;
                println!(
                    "{}: {} difference(s) at position {}:",
                    report.projection,
                    report.differences.len(),
                    report.position
                );
                for d in &report.differences {
                    println!("  {d}");
                }
            }
        } else {
            let reached = projections::rebuild_and_promote(
                store.log.as_ref(),
                store.read.as_ref(),
                projector.as_ref(),
                |p, total| progress.tick(p, total),
            )
            .await?;
            println!(
                "{}: rebuilt from position 0 to {reached} and swapped in",
                projector.name()
            );
        }
    }
    Ok(if differing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn audit_verify(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let head = store.log.head().await?.position;
    let mut progress = Progress::new("audit verify");
    let report =
        eventlog::verify_chain(store.log.as_ref(), |n| progress.tick(n as i64, head)).await?;
    match report.first_break {
        None => {
            let head = store.log.head().await?;
            println!(
                "OK: {} events, hash chain intact, head position {} hash {}",
                report.checked,
                head.position,
                hex::encode(head.hash)
            );
            Ok(ExitCode::SUCCESS)
        }
        Some((event, why)) => {
            let what = match why {
                eventlog::hash::ChainBreak::ContentEdited => {
                    "its stored hash does not match its content: the row was edited".to_string()
                }
                eventlog::hash::ChainBreak::LinkBroken => {
                    "its prev_hash is not the previous event's hash: an earlier row was edited or replaced".to_string()
                }
                eventlog::hash::ChainBreak::PositionGap { expected } => {
                    format!("position {expected} is missing: an event was deleted")
                }
            };
            println!(
                "BROKEN at position {} (stream {}, version {}, event {} {}): {what}. {} events before it are intact.",
                event.position,
                event.stream_id,
                event.stream_version,
                event.event_type,
                event.event_id,
                report.checked
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn audit_stream(
    config: &Config,
    stream_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let stream = StreamId::new(stream_id)?;
    let store = open_store(config).await?;
    let mut after = 0;
    let mut printed = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let events = store.log.read_stream(&stream, after, 1_000).await?;
        let Some(last) = events.last() else { break };
        after = last.stream_version;
        for e in events {
            printed += 1;
            let written = if json {
                writeln!(out, "{}", serde_json::to_string(&e)?)
            } else {
                let meta = e.metadata().unwrap_or_default();
                writeln!(
                    out,
                    "#{:<4} pos {:<8} {} {:<24} by {} via {}  {}",
                    e.stream_version,
                    e.position,
                    e.recorded_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    e.event_type,
                    meta.actor.as_deref().unwrap_or("-"),
                    meta.via.as_deref().unwrap_or("-"),
                    e.data
                )
            };
            match written {
                Ok(()) => {}
                // A reader that stopped (`| head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if printed == 0 {
        eprintln!("stream {stream_id} has no events");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
