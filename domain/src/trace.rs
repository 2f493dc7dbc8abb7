//! Workload traces for simulation (pure: the caller reads the file, decompresses it, and passes
//! the text): the Standard Workload Format of the Parallel Workloads Archive, and a simple CSV.
//!
//! SWF: `;` lines are the header (`MaxProcs:` and `MaxNodes:` are read: the site's machine);
//! each job line has 18 whitespace-separated fields, `-1` for unknown. Used here: 1 job,
//! 2 submit, 3 wait (what the site's scheduler gave it), 4 run, 5 allocated processors, 7 used
//! memory (KB per processor: the job's memory when it requested none), 8 requested processors,
//! 9 requested time, 10 requested memory (KB per processor), 11 status (5, cancelled: a job
//! cancelled before it started never ran and is counted apart, not simulated).
//!
//! CSV: a header `submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds`, then one job per
//! line; `memory_mib` and `time_limit_seconds` may be empty.

use serde::Serialize;

/// One job of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceJob {
    pub id: u64,
    /// Seconds after the trace's start.
    pub submit: i64,
    pub run: i64,
    pub cpus: u32,
    /// The whole job's memory; `None` when the trace does not say (the simulation states what
    /// it assumes).
    pub memory_mib: Option<u64>,
    pub time_limit: Option<i64>,
    /// The wait the traced system gave it, when known.
    pub traced_wait: Option<i64>,
    /// `memory_mib` is what the job used (SWF field 7), not what it asked for.
    #[serde(default)]
    pub memory_used: bool,
}

/// A parsed trace: its jobs in submit order, and how many lines were left out (no run time or no
/// processors).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trace {
    pub jobs: Vec<TraceJob>,
    pub skipped: usize,
    /// Jobs cancelled before they started (SWF status 5 without a run): never simulated.
    pub cancelled: usize,
    /// The site's machine, from the SWF header (`MaxProcs`, `MaxNodes`).
    pub max_procs: Option<u64>,
    pub max_nodes: Option<u64>,
}

/// A header line's number, like `; MaxProcs: 240`.
fn header_number(line: &str, key: &str) -> Option<u64> {
    let rest = line.trim_start_matches(';').trim();
    let value = rest.strip_prefix(key)?.trim_start().strip_prefix(':')?;
    value.split_whitespace().next()?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("the CSV header must be submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds")]
    CsvHeader,
}

/// The longest time a trace may name (100 years, in seconds): simulated clocks stay far from
/// overflow.
pub const MAX_SECONDS: i64 = 100 * 365 * 86_400;

fn check_times(line: usize, times: &[(&str, Option<i64>)]) -> Result<(), TraceError> {
    for (name, v) in times {
        if v.is_some_and(|v| v > MAX_SECONDS) {
            return Err(TraceError::Line {
                line,
                problem: format!("{name} is over {MAX_SECONDS} seconds (100 years)"),
            });
        }
    }
    Ok(())
}

fn known(v: i64) -> Option<i64> {
    (v >= 0).then_some(v)
}

/// Parses SWF text.
pub fn parse_swf(text: &str) -> Result<Trace, TraceError> {
    let mut trace = Trace::default();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim();
        if line.starts_with(';') {
            if let Some(n) = header_number(line, "MaxProcs").filter(|n| *n > 0) {
                trace.max_procs = Some(n);
            }
            if let Some(n) = header_number(line, "MaxNodes").filter(|n| *n > 0) {
                trace.max_nodes = Some(n);
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let fields: Vec<i64> = line
            .split_whitespace()
            .map(|f| {
                // Some archive files write fractions in a few fields; whole seconds suffice.
                f.parse::<i64>()
                    .or_else(|_| f.parse::<f64>().map(|x| x as i64))
                    .map_err(|_| TraceError::Line {
                        line: line_no,
                        problem: format!("{f:?} is not a number"),
                    })
            })
            .collect::<Result<_, _>>()?;
        if fields.len() < 11 {
            return Err(TraceError::Line {
                line: line_no,
                problem: format!("{} fields; SWF lines have 18", fields.len()),
            });
        }
        let procs = known(fields[7])
            .filter(|p| *p > 0)
            .or_else(|| known(fields[4]).filter(|p| *p > 0));
        // Cancelled before it started: no run, or no processor ever allocated.
        if fields[10] == 5 && (fields[3] <= 0 || fields[4] <= 0) {
            trace.cancelled += 1;
            continue;
        }
        let (Some(run), Some(procs)) = (known(fields[3]), procs) else {
            trace.skipped += 1;
            continue;
        };
        let cpus = u32::try_from(procs).unwrap_or(u32::MAX);
        check_times(
            line_no,
            &[
                ("submit time", Some(fields[1])),
                ("run time", Some(run)),
                ("requested time", known(fields[8])),
            ],
        )?;
        // KiB per processor × processors: checked (a fuzzed line overflowed it).
        let requested = known(fields[9]).filter(|m| *m > 0);
        let used = known(fields[6]).filter(|m| *m > 0);
        let memory_mib = match requested.or(used) {
            None => None,
            Some(kb_per_proc) => Some(
                kb_per_proc
                    .unsigned_abs()
                    .checked_mul(u64::from(cpus))
                    .ok_or_else(|| TraceError::Line {
                        line: line_no,
                        problem: "memory per processor × processors is larger than any machine"
                            .into(),
                    })?
                    .div_ceil(1024),
            ),
        };
        trace.jobs.push(TraceJob {
            id: u64::try_from(fields[0]).unwrap_or(0),
            submit: fields[1].max(0),
            run,
            cpus,
            memory_mib,
            time_limit: known(fields[8]).filter(|t| *t > 0),
            traced_wait: known(fields[2]),
            memory_used: requested.is_none() && used.is_some(),
        });
    }
    trace.jobs.sort_by_key(|j| (j.submit, j.id));
    Ok(trace)
}

/// Parses the CSV form.
pub fn parse_csv(text: &str) -> Result<Trace, TraceError> {
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l.trim()).unwrap_or_default();
    if header != "submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds" {
        return Err(TraceError::CsvHeader);
    }
    let mut trace = Trace::default();
    for (n, line) in lines {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| TraceError::Line {
            line: line_no,
            problem,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 5 {
            return Err(bad(format!("{} columns; there are 5", cols.len())));
        }
        let number = |i: usize, name: &str| -> Result<Option<i64>, TraceError> {
            if cols[i].is_empty() {
                return Ok(None);
            }
            cols[i]
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= 0)
                .map(Some)
                .ok_or_else(|| bad(format!("{name} {:?} is not a whole number ≥ 0", cols[i])))
        };
        let (Some(submit), Some(run), Some(cpus)) = (
            number(0, "submit_seconds")?,
            number(1, "run_seconds")?,
            number(2, "cpus")?.filter(|c| *c > 0),
        ) else {
            return Err(bad(
                "submit_seconds, run_seconds and cpus (> 0) are required".into(),
            ));
        };
        check_times(
            line_no,
            &[
                ("submit_seconds", Some(submit)),
                ("run_seconds", Some(run)),
                ("time_limit_seconds", number(4, "time_limit_seconds")?),
            ],
        )?;
        trace.jobs.push(TraceJob {
            id: trace.jobs.len() as u64 + 1,
            submit,
            run,
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            memory_mib: number(3, "memory_mib")?.map(|m| m as u64),
            time_limit: number(4, "time_limit_seconds")?,
            traced_wait: None,
            memory_used: false,
        });
    }
    trace.jobs.sort_by_key(|j| (j.submit, j.id));
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_that_overflows_is_a_line_error_not_a_panic() {
        // Found by the `trace` fuzz target: KiB per processor × processors overflowed a u64.
        let line =
            "1 0 0 60 4294967295 -1 -1 4294967295 -1 9223372036854775807 1 -1 -1 -1 -1 -1 -1 -1";
        assert!(matches!(
            parse_swf(line),
            Err(TraceError::Line { line: 1, .. })
        ));
        let crash = include_bytes!("../../fixtures/fuzz/trace-mul-overflow.swf");
        if let Ok(text) = std::str::from_utf8(crash) {
            let _ = parse_swf(text);
        }
    }

    #[test]
    fn times_past_a_century_are_refused() {
        let csv =
            "submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds\n0,99999999999,1,,\n";
        assert!(matches!(
            parse_csv(csv),
            Err(TraceError::Line { line: 2, .. })
        ));
        let swf = "1 99999999999 0 60 1 -1 -1 1 60 -1 1 1 1 1 1 -1 -1 -1\n";
        assert!(matches!(
            parse_swf(swf),
            Err(TraceError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn the_synthetic_swf_trace() {
        let t = parse_swf(include_str!("../../fixtures/traces/small.swf")).unwrap();
        // Job 6 was cancelled before it ran: counted apart. Job 8 has no requested processors:
        // allocated used. Job 9 has no run time: left out.
        assert_eq!((t.skipped, t.cancelled), (1, 1));
        assert_eq!(t.jobs.len(), 8);
        assert_eq!((t.max_procs, t.max_nodes), (Some(64), Some(4)));
        let first = &t.jobs[0];
        assert_eq!(
            (
                first.id,
                first.submit,
                first.run,
                first.cpus,
                first.memory_mib
            ),
            (1, 0, 600, 1, Some(2048))
        );
        assert_eq!(t.jobs[1].memory_mib, Some(4 * 1024), "KB per processor × 4");
        assert_eq!(t.jobs[2].memory_mib, None);
        assert_eq!(t.jobs[6].cpus, 8);
        // Job 10 requested no memory; it used 1 GiB per processor on 2.
        let used = t.jobs.iter().find(|j| j.id == 10).unwrap();
        assert_eq!((used.memory_mib, used.memory_used), (Some(2048), true));
        assert_eq!(t.jobs[3].time_limit, Some(7200));
        assert_eq!(t.jobs[3].traced_wait, Some(40));
    }

    #[test]
    fn the_synthetic_csv_trace() {
        let t = parse_csv(include_str!("../../fixtures/traces/small.csv")).unwrap();
        assert_eq!(t.jobs.len(), 5);
        assert_eq!(t.jobs[2].memory_mib, None);
        assert_eq!(t.jobs[3].memory_mib, Some(65536));
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(
            parse_swf("; header\n1 2 x").unwrap_err(),
            TraceError::Line {
                line: 2,
                problem: "\"x\" is not a number".into()
            }
        );
        assert!(matches!(
            parse_csv("submit_seconds,run_seconds,cpus,memory_mib,time_limit_seconds\n0,10,0,,\n"),
            Err(TraceError::Line { line: 2, .. })
        ));
        assert_eq!(parse_csv("a,b\n"), Err(TraceError::CsvHeader));
    }
}
