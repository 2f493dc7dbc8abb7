//! How much of what a finished job paid for it used, and what shape would have held it for less
//! (pure). The executor measures a job's CPU time and peak memory when it ends
//! (`JobUsageRecorded`); the job view keeps the measurement and this module turns it into
//! percentages, the money spent on room the job never used, and a concrete right-sizing hint.
//!
//! The suggested shape keeps the job's nodes and time limit and asks for
//! - the CPUs it kept busy on average, rounded up (at least one, never more than it asked);
//! - its peak memory plus [`HEADROOM_PERCENT`], rounded up to a power of two MiB (at least
//!   [`MIN_SUGGESTED_MIB`], never more than it asked). `rusage` gives the peak of the job's
//!   *largest process*, not of all of them at once: a job that kept more than one core busy may
//!   have run several processes side by side, so its peak is taken that many times (⌈cores busy⌉
//!   × the largest process) — an overestimate for one multi-threaded process, never an
//!   underestimate that would have the suggested shape run out of memory.
//!
//! A job stopped by its time limit or a cancel is measured only in part (the processes the
//! stop killed were never waited for by the job's shell): its figures are shown, but no shape
//! is suggested from them.
//!
//! It is priced from the same catalog and rule as submit (`cost::job_rate`); what the job cost
//! above that price over the same run is `wasted`. A measurement the executor could not make
//! (Slurm without accounting) is "not measured", never a guess.

use serde::{Deserialize, Serialize};

use crate::MicroUsd;
use crate::scaling::Catalog;
use crate::submit::JobShape;

/// How much above its peak a suggested shape leaves room for.
pub const HEADROOM_PERCENT: u64 = 25;
/// The least memory a suggestion asks for.
pub const MIN_SUGGESTED_MIB: u64 = 256;

const MIB: u64 = 1024 * 1024;

/// What a finished job used, as its executor measured it (the data of `JobUsageRecorded`, kept
/// in the job's view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time (user + system) of the job's processes, in milliseconds; `None`: not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// The largest resident memory of the job's processes, in bytes; `None`: not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// How it was measured: `rusage` (the local executor's `wait4`), or `none`.
    pub source: String,
    /// Why something was not measured, or measured only in part, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Measured only in part (a job stopped by its time limit or a cancel): no suggestion is
    /// made from it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// A cheaper shape that would have held the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub shape: JobShape,
    /// Its node set (`compute-medium`) and instance type.
    pub node_set: String,
    pub instance_type: String,
    pub rate: MicroUsd,
    /// What the same run would have cost on it.
    pub cost: MicroUsd,
}

/// The efficiency report of one finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct Efficiency {
    /// CPU time over (run time × CPUs asked), in percent (one decimal); `None`: not measured.
    pub cpu_percent: Option<f64>,
    /// Peak memory over the memory asked (or given by default), in percent; `None`: not
    /// measured.
    pub memory_percent: Option<f64>,
    /// What the run cost.
    pub cost: MicroUsd,
    /// What it cost above the suggested shape's price; zero when no cheaper shape holds it;
    /// `None` when nothing was measured.
    pub wasted: Option<MicroUsd>,
    pub suggestion: Option<Suggestion>,
    /// One sentence a researcher can act on.
    pub hint: String,
}

/// What a job asked for, as the facts the report needs.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub shape: &'a JobShape,
    /// Its hourly rate (as recorded at submission).
    pub rate: MicroUsd,
    /// What the run cost (the job view's cost).
    pub cost: MicroUsd,
    /// From its start to its end.
    pub elapsed_ms: i64,
}

/// The memory a job was given: what it asked for, else the default per CPU.
pub fn asked_mib(shape: &JobShape, default_mib_per_cpu: u64) -> u64 {
    shape
        .memory_mib
        .unwrap_or_else(|| u64::from(shape.cpus.max(1)).saturating_mul(default_mib_per_cpu))
}

/// The report of a finished job that ran for `run.elapsed_ms` and used `usage`.
pub fn assess(
    catalog: &Catalog,
    default_mib_per_cpu: u64,
    run: Run<'_>,
    usage: &Usage,
) -> Efficiency {
    let shape = run.shape;
    let cpus = shape.cpus.max(1);
    let asked = asked_mib(shape, default_mib_per_cpu);
    let elapsed = run.elapsed_ms.max(0) as u64;
    let busy = usage
        .cpu_ms
        .filter(|_| elapsed > 0)
        .map(|ms| ms as f64 / elapsed as f64);
    let cpu_percent = busy.map(|b| round1(b * 100.0 / f64::from(cpus)));
    let memory_percent = usage
        .peak_memory_bytes
        .filter(|_| asked > 0)
        .map(|b| round1(b as f64 * 100.0 / (asked as f64 * MIB as f64)));
    if busy.is_none() && usage.peak_memory_bytes.is_none() {
        let why = usage
            .note
            .clone()
            .unwrap_or_else(|| "the executor reported no usage for this job".into());
        return Efficiency {
            cpu_percent,
            memory_percent,
            cost: run.cost,
            wasted: None,
            suggestion: None,
            hint: format!("not measured: {why}"),
        };
    }

    if usage.partial {
        let why = usage
            .note
            .as_deref()
            .unwrap_or("the job was stopped before it ended");
        return Efficiency {
            cpu_percent,
            memory_percent,
            cost: run.cost,
            wasted: None,
            suggestion: None,
            hint: format!("measured in part, so no smaller shape is suggested: {why}"),
        };
    }

    let want_cpus = busy.map_or(cpus, |b| (b.ceil() as u32).clamp(1, cpus));
    // Several processes side by side may each have held the largest one's peak.
    let at_once = busy.map_or(u64::from(cpus), |b| b.ceil().max(1.0) as u64);
    let want_mib = usage.peak_memory_bytes.map_or(asked, |b| {
        suggested_mib(b.saturating_mul(at_once)).min(asked)
    });
    let smaller = JobShape {
        cpus: want_cpus,
        memory_mib: Some(want_mib),
        tasks: None,
        ..*shape
    };
    let suggestion = (want_cpus < cpus || want_mib < asked)
        .then(|| price(catalog, default_mib_per_cpu, &smaller, run.elapsed_ms))
        .flatten()
        .filter(|s| s.rate < run.rate);

    let mut asked_words = Vec::new();
    let mut wanted_words = Vec::new();
    if let Some(s) = &suggestion {
        if let Some(b) = busy.filter(|_| s.shape.cpus < cpus) {
            asked_words.push(format!("asked {cpus} CPUs, kept {b:.1} busy on average"));
            wanted_words.push(format!("{} CPU{}", s.shape.cpus, plural(s.shape.cpus)));
        }
        if let Some(peak) = usage.peak_memory_bytes.filter(|_| want_mib < asked) {
            asked_words.push(format!(
                "asked {}, peaked at {}",
                mib_words(asked),
                bytes_words(peak)
            ));
            wanted_words.push(mib_words(want_mib));
        }
    }
    let hint = match &suggestion {
        Some(s) => format!(
            "{}: {} would have placed it on {} ({}) at {}/h instead of {}/h, {} instead of {} for this run",
            asked_words.join("; "),
            wanted_words.join(" and "),
            s.node_set,
            s.instance_type,
            usd(s.rate),
            usd(run.rate),
            usd(s.cost),
            usd(run.cost),
        ),
        None => {
            let used = [
                cpu_percent.map(|p| format!("{p}% of its CPU time")),
                memory_percent.map(|p| format!("{p}% of its memory")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ");
            if want_cpus < cpus || want_mib < asked {
                format!("used {used}, but no smaller shape costs less in this catalog")
            } else {
                format!("well sized: used {used}")
            }
        }
    };
    let wasted = suggestion.as_ref().map_or(MicroUsd::ZERO, |s| {
        MicroUsd(run.cost.0.saturating_sub(s.cost.0).max(0))
    });
    Efficiency {
        cpu_percent,
        memory_percent,
        cost: run.cost,
        wasted: Some(wasted),
        suggestion,
        hint,
    }
}

/// Finished jobs over a window, summed: a user's efficiency summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Jobs that ended in the window and ran.
    pub jobs: u64,
    /// Of those, the ones whose CPU time or memory was measured.
    pub measured: u64,
    /// CPU time over (run time × CPUs asked), summed over the measured jobs.
    pub cpu_percent: Option<f64>,
    /// Peak over asked memory, weighted by run time, over the jobs whose memory was measured.
    pub memory_percent: Option<f64>,
    pub cost: MicroUsd,
    pub wasted: MicroUsd,
    cpu_ms: u128,
    cpu_asked_ms: u128,
    memory_weighted: f64,
    memory_ms: u128,
}

impl Summary {
    /// Counts one job that ran, with its report when it has one.
    pub fn add(
        &mut self,
        run: Run<'_>,
        default_mib_per_cpu: u64,
        usage: Option<&Usage>,
        e: Option<&Efficiency>,
    ) {
        self.jobs += 1;
        self.cost = MicroUsd(self.cost.0.saturating_add(run.cost.0));
        let elapsed = u128::from(run.elapsed_ms.max(0) as u64);
        let Some(u) = usage.filter(|u| u.cpu_ms.is_some() || u.peak_memory_bytes.is_some()) else {
            return;
        };
        self.measured += 1;
        if let Some(w) = e.and_then(|e| e.wasted) {
            self.wasted = MicroUsd(self.wasted.0.saturating_add(w.0));
        }
        if let Some(cpu) = u.cpu_ms {
            self.cpu_ms += u128::from(cpu);
            self.cpu_asked_ms += elapsed * u128::from(run.shape.cpus.max(1));
        }
        let asked = asked_mib(run.shape, default_mib_per_cpu);
        if let Some(peak) = u.peak_memory_bytes.filter(|_| asked > 0 && elapsed > 0) {
            self.memory_weighted += peak as f64 / (asked as f64 * MIB as f64) * elapsed as f64;
            self.memory_ms += elapsed;
        }
        self.cpu_percent = (self.cpu_asked_ms > 0)
            .then(|| round1(self.cpu_ms as f64 * 100.0 / self.cpu_asked_ms as f64));
        self.memory_percent = (self.memory_ms > 0)
            .then(|| round1(self.memory_weighted * 100.0 / self.memory_ms as f64));
    }
}

fn price(
    catalog: &Catalog,
    default_mib_per_cpu: u64,
    shape: &JobShape,
    ms: i64,
) -> Option<Suggestion> {
    let placed = crate::placement::of_shape(catalog, shape, default_mib_per_cpu).ok()?;
    let instance = catalog.shape(placed.set)?;
    let rate = crate::cost::job_rate(catalog, shape, default_mib_per_cpu)?;
    Some(Suggestion {
        shape: *shape,
        node_set: placed.set.to_string(),
        instance_type: instance.instance_type.clone(),
        rate,
        cost: crate::cost::accrue(rate, ms),
    })
}

/// Peak memory plus the headroom, rounded up to a power of two MiB.
pub fn suggested_mib(peak_bytes: u64) -> u64 {
    let with_room = peak_bytes
        .div_ceil(MIB)
        .saturating_mul(100 + HEADROOM_PERCENT)
        .div_ceil(100);
    with_room
        .max(MIN_SUGGESTED_MIB)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `512 MiB`, `2 GiB`, `1.5 GiB`.
fn mib_words(mib: u64) -> String {
    if mib >= 1024 {
        let gib = mib as f64 / 1024.0;
        if mib.is_multiple_of(1024) {
            format!("{} GiB", mib / 1024)
        } else {
            format!("{gib:.1} GiB")
        }
    } else {
        format!("{mib} MiB")
    }
}

/// `1.2 GiB`, `310 MiB`, `12 KiB`.
fn bytes_words(bytes: u64) -> String {
    if bytes >= 1024 * MIB {
        format!("{:.1} GiB", bytes as f64 / (1024.0 * MIB as f64))
    } else if bytes >= MIB {
        format!("{} MiB", bytes.div_ceil(MIB))
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// Dollars to the cent from $1, else to four places (`$0.0408`): a short run's cost is mostly
/// below a cent.
pub fn usd(m: MicroUsd) -> String {
    // Past $0.9999, four places (rounded up) would read $0.10000: cents read better.
    if m.0.unsigned_abs() > 999_900 {
        m.cents()
    } else {
        let sign = if m.0 < 0 { "-" } else { "" };
        let hundredths_of_cents = m.0.unsigned_abs().div_ceil(100);
        format!("{sign}$0.{hundredths_of_cents:04}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(include_str!("../../fixtures/catalog/shapes.json"), 512).unwrap()
    }

    fn shape(cpus: u32, memory_mib: Option<u64>) -> JobShape {
        JobShape {
            cpus,
            memory_mib,
            nodes: 1,
            time_limit_minutes: Some(60),
            gpus: 0,
            tasks: None,
        }
    }

    fn measured(cpu_ms: u64, peak_mib: u64) -> Usage {
        Usage {
            cpu_ms: Some(cpu_ms),
            peak_memory_bytes: Some(peak_mib * MIB),
            source: "rusage".into(),
            note: None,
            partial: false,
        }
    }

    fn run_of(c: &Catalog, shape: &JobShape, hours: i64) -> (MicroUsd, MicroUsd, i64) {
        let rate = crate::cost::job_rate(c, shape, c.fitting_mib_per_cpu()).unwrap();
        let ms = hours * 3_600_000;
        (rate, crate::cost::accrue(rate, ms), ms)
    }

    #[test]
    fn a_job_that_asked_16_gib_and_peaked_at_1_2_is_told_a_smaller_shape_and_what_it_costs() {
        let c = catalog();
        let d = c.fitting_mib_per_cpu();
        let asked = shape(1, Some(16 * 1024));
        let (rate, cost, ms) = run_of(&c, &asked, 1);
        let e = assess(
            &c,
            d,
            Run {
                shape: &asked,
                rate,
                cost,
                elapsed_ms: ms,
            },
            &measured(3_600_000, 1229),
        );
        assert_eq!(e.cpu_percent, Some(100.0));
        assert_eq!(e.memory_percent, Some(7.5));
        let s = e.suggestion.clone().expect("a cheaper shape");
        assert_eq!(s.shape.cpus, 1);
        assert_eq!(s.shape.memory_mib, Some(2048));
        assert!(s.rate < rate, "{s:?}");
        assert_eq!(e.wasted, Some(MicroUsd(cost.0 - s.cost.0)));
        assert!(
            e.hint
                .starts_with("asked 16 GiB, peaked at 1.2 GiB: 2 GiB would have placed it on "),
            "{}",
            e.hint
        );
        assert!(
            e.hint.contains(&s.node_set) && e.hint.contains(&usd(cost)),
            "{}",
            e.hint
        );
    }

    #[test]
    fn idle_cpus_are_named_and_a_well_sized_job_is_told_so() {
        let c = catalog();
        let d = c.fitting_mib_per_cpu();
        let asked = shape(8, None);
        let (rate, cost, ms) = run_of(&c, &asked, 2);
        // One core busy, memory near what the default gives 8 CPUs.
        let e = assess(
            &c,
            d,
            Run {
                shape: &asked,
                rate,
                cost,
                elapsed_ms: ms,
            },
            &measured(ms as u64, 7 * 1024),
        );
        assert_eq!(e.cpu_percent, Some(12.5));
        assert!(
            e.hint.starts_with("asked 8 CPUs, kept 1.0 busy on average"),
            "{}",
            e.hint
        );
        assert!(e.wasted.unwrap() > MicroUsd::ZERO);

        let small = shape(1, None);
        let (rate, cost, ms) = run_of(&c, &small, 1);
        let e = assess(
            &c,
            d,
            Run {
                shape: &small,
                rate,
                cost,
                elapsed_ms: ms,
            },
            &measured(ms as u64 * 95 / 100, 1800),
        );
        assert_eq!(e.suggestion, None);
        assert_eq!(e.wasted, Some(MicroUsd::ZERO));
        assert!(
            e.hint.starts_with("well sized: used 95% of its CPU time"),
            "{}",
            e.hint
        );
    }

    #[test]
    fn several_busy_cores_take_the_largest_process_that_many_times_and_a_stopped_job_gets_no_suggestion()
     {
        let c = catalog();
        let d = c.fitting_mib_per_cpu();
        let asked = shape(8, Some(32 * 1024));
        let (rate, cost, ms) = run_of(&c, &asked, 1);
        let run = Run {
            shape: &asked,
            rate,
            cost,
            elapsed_ms: ms,
        };
        // Four cores busy, the largest process at 1 GiB: four such may have run at once.
        let e = assess(&c, d, run, &measured(4 * ms as u64, 1024));
        let s = e.suggestion.expect("a cheaper shape");
        assert_eq!(
            (s.shape.cpus, s.shape.memory_mib),
            (4, Some(8192)),
            "{}",
            e.hint
        );
        let stopped = Usage {
            partial: true,
            note: Some("stopped by its time limit".into()),
            ..measured(ms as u64, 1024)
        };
        let e = assess(&c, d, run, &stopped);
        assert_eq!((e.suggestion, e.wasted), (None, None));
        assert_eq!(e.cpu_percent, Some(12.5));
        assert!(e.hint.starts_with("measured in part"), "{}", e.hint);
    }

    #[test]
    fn nothing_measured_says_so_and_guesses_nothing() {
        let c = catalog();
        let asked = shape(4, None);
        let (rate, cost, ms) = run_of(&c, &asked, 1);
        let e = assess(
            &c,
            c.fitting_mib_per_cpu(),
            Run {
                shape: &asked,
                rate,
                cost,
                elapsed_ms: ms,
            },
            &Usage {
                cpu_ms: None,
                peak_memory_bytes: None,
                source: "none".into(),
                note: Some("Slurm keeps no usage without accounting".into()),
                partial: false,
            },
        );
        assert_eq!(
            (e.cpu_percent, e.memory_percent, e.wasted),
            (None, None, None)
        );
        assert_eq!(
            e.hint,
            "not measured: Slurm keeps no usage without accounting"
        );
    }

    #[test]
    fn a_summary_weighs_jobs_by_what_they_asked_and_counts_the_unmeasured_apart() {
        let c = catalog();
        let d = c.fitting_mib_per_cpu();
        let (one, four) = (shape(1, Some(1024)), shape(4, Some(4096)));
        let (r1, c1, ms) = run_of(&c, &one, 1);
        let (r4, c4, _) = run_of(&c, &four, 1);
        let mut s = Summary::default();
        let u1 = measured(ms as u64, 512);
        let e1 = assess(
            &c,
            d,
            Run {
                shape: &one,
                rate: r1,
                cost: c1,
                elapsed_ms: ms,
            },
            &u1,
        );
        s.add(
            Run {
                shape: &one,
                rate: r1,
                cost: c1,
                elapsed_ms: ms,
            },
            d,
            Some(&u1),
            Some(&e1),
        );
        let u4 = measured(ms as u64, 1024);
        let e4 = assess(
            &c,
            d,
            Run {
                shape: &four,
                rate: r4,
                cost: c4,
                elapsed_ms: ms,
            },
            &u4,
        );
        s.add(
            Run {
                shape: &four,
                rate: r4,
                cost: c4,
                elapsed_ms: ms,
            },
            d,
            Some(&u4),
            Some(&e4),
        );
        s.add(
            Run {
                shape: &one,
                rate: r1,
                cost: c1,
                elapsed_ms: ms,
            },
            d,
            None,
            None,
        );
        assert_eq!((s.jobs, s.measured), (3, 2));
        // 2 CPU-hours used of 5 asked; memory 50% and 25% for an hour each.
        assert_eq!(s.cpu_percent, Some(40.0));
        assert_eq!(s.memory_percent, Some(37.5));
        assert_eq!(s.cost, MicroUsd(2 * c1.0 + c4.0));
        assert_eq!(
            s.wasted,
            MicroUsd(e1.wasted.unwrap().0 + e4.wasted.unwrap().0)
        );
    }

    #[test]
    fn suggestions_round_up_with_headroom() {
        assert_eq!(suggested_mib(1229 * MIB), 2048);
        assert_eq!(suggested_mib(10 * MIB), MIN_SUGGESTED_MIB);
        assert_eq!(suggested_mib(400 * MIB), 512);
        assert!(suggested_mib(u64::MAX).is_power_of_two());
        assert_eq!(usd(MicroUsd(40_800)), "$0.0408");
        assert_eq!(usd(MicroUsd(1)), "$0.0001");
        assert_eq!(usd(MicroUsd(12_345_678)), "$12.35");
        assert_eq!(usd(MicroUsd(999_900)), "$0.9999");
        assert_eq!(usd(MicroUsd(999_901)), "$1.00");
    }
}
