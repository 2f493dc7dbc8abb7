//! Cost and quota (pure): what a job costs per hour, what a user has spent in the billing period,
//! what they will have spent when their running jobs reach their time limits, and where that
//! stands against their quota. Time comes in as an argument; money is integer micro-USD.
//!
//! **The rate rule.** A job pays for the vCPUs it asks for, at the price per vCPU of the shape
//! the policy places one of its nodes on ([`Catalog::place`]): `hourly × vCPUs per node ÷ shape
//! vCPUs × nodes`, rounded down to the micro-dollar. A job that fills its node pays the node; a
//! job that does not pays its vCPU share; the share of a node no job uses is Clusterra's, not a
//! user's. Memory is not billed apart: the family is chosen by memory per vCPU, so a
//! memory-heavy job pays the memory family's dearer vCPUs.
//!
//! **Accrual.** A job accrues from `started_at` to `ended_at` (or `now` while it runs), counted
//! in milliseconds: `rate × ms ÷ 3,600,000`, rounded down per job. The bill of a period is the
//! sum over the user's jobs of what each accrued inside the period.
//!
//! **Projection.** Projected spend = the period's bill so far + what each running job will
//! accrue until its time limit (`started_at + limit`); a running job without a time limit counts
//! one more hour ([`NO_LIMIT_HORIZON_MS`]); what would fall after the period's end belongs to
//! the next period and is not counted.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::MicroUsd;
use crate::scaling::Catalog;
use crate::submit::JobShape;

/// What a running job without a time limit is expected to run on, for projections: one hour.
pub const NO_LIMIT_HORIZON_MS: i64 = 3_600_000;

const MS_PER_HOUR: i128 = 3_600_000;

/// A job's hourly rate by the rule above; `None` when no shape holds it (refused at submit; a
/// catalog change may strand an old job, which then costs nothing).
pub fn job_rate(catalog: &Catalog, shape: &JobShape, default_mib_per_cpu: u64) -> Option<MicroUsd> {
    let p = crate::placement::of_shape(catalog, shape, default_mib_per_cpu).ok()?;
    let s = catalog.shape(p.set)?;
    let rate = i128::from(s.hourly.0) * i128::from(p.demand.cpus) * i128::from(p.nodes.max(1))
        / i128::from(s.vcpus.max(1));
    Some(MicroUsd(i64::try_from(rate).unwrap_or(i64::MAX)))
}

/// Prices jobs by the rule above: the catalog and the memory per vCPU of jobs that ask for none.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub catalog: std::sync::Arc<Catalog>,
    pub default_mib_per_cpu: u64,
}

impl Pricing {
    /// A shape's hourly rate from the catalog (zero when no instance holds it).
    pub fn rate(&self, shape: &JobShape) -> MicroUsd {
        job_rate(&self.catalog, shape, self.default_mib_per_cpu).unwrap_or(MicroUsd::ZERO)
    }

    /// A job as cost sees it, or `None` before it started (a job costs from its start). The rate
    /// recorded at submission (`recorded`) wins over today's catalog; a job without an end is
    /// billed up to the instant asked about.
    pub fn job(&self, job: PricedJob<'_>) -> Option<CostJob> {
        let started_at = job.started_at?;
        Some(CostJob {
            user: job.user.to_string(),
            job_id: job.job_id,
            rate: job.recorded_rate.unwrap_or_else(|| self.rate(job.shape)),
            started_at: Some(started_at),
            ended_at: job.ended_at,
            time_limit_minutes: job.shape.time_limit_minutes,
        })
    }
}

/// What [`Pricing::job`] reads of a job.
#[derive(Debug, Clone, Copy)]
pub struct PricedJob<'a> {
    pub user: &'a str,
    pub job_id: u64,
    pub shape: &'a JobShape,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub recorded_rate: Option<MicroUsd>,
}

/// What accrues at `rate` per hour over `ms` milliseconds, rounded down.
pub fn accrue(rate: MicroUsd, ms: i64) -> MicroUsd {
    let v = i128::from(rate.0) * i128::from(ms.max(0)) / MS_PER_HOUR;
    MicroUsd(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A billing period: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// How long a billing period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    /// Calendar months, UTC (the default).
    #[default]
    Month,
    /// ISO weeks: Monday 00:00 UTC to the next Monday.
    Week,
    /// Days, UTC.
    Day,
}

impl PeriodKind {
    pub fn parse(text: &str) -> Option<PeriodKind> {
        match text {
            "month" => Some(PeriodKind::Month),
            "week" => Some(PeriodKind::Week),
            "day" => Some(PeriodKind::Day),
            _ => None,
        }
    }
}

impl Period {
    /// The period of `kind` holding `at`.
    pub fn of(kind: PeriodKind, at: DateTime<Utc>) -> Period {
        let midnight = at
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(at, |d| d.and_utc());
        match kind {
            PeriodKind::Month => Period::month_of(at),
            PeriodKind::Day => Period {
                start: midnight,
                end: midnight + Duration::days(1),
            },
            PeriodKind::Week => {
                let start =
                    midnight - Duration::days(i64::from(at.weekday().num_days_from_monday()));
                Period {
                    start,
                    end: start + Duration::days(7),
                }
            }
        }
    }

    /// The calendar month (UTC) holding `at`.
    pub fn month_of(at: DateTime<Utc>) -> Period {
        let first = |y: i32, m: u32| {
            Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
                .single()
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        };
        let start = first(at.year(), at.month());
        let end = if at.month() == 12 {
            first(at.year() + 1, 1)
        } else {
            first(at.year(), at.month() + 1)
        };
        Period { start, end }
    }
}

/// A job as cost sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostJob {
    pub user: String,
    pub job_id: u64,
    pub rate: MicroUsd,
    pub started_at: Option<DateTime<Utc>>,
    /// None while it runs (or has not started).
    pub ended_at: Option<DateTime<Utc>>,
    pub time_limit_minutes: Option<u32>,
}

impl CostJob {
    pub fn running(&self) -> bool {
        self.started_at.is_some() && self.ended_at.is_none()
    }

    /// What it accrued between `from` and `to` (clipped to its run and to `now`).
    pub fn cost_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> MicroUsd {
        let Some(start) = self.started_at else {
            return MicroUsd::ZERO;
        };
        let end = self.ended_at.unwrap_or(now).min(now);
        let (a, b) = (start.max(from), end.min(to));
        if b <= a {
            return MicroUsd::ZERO;
        }
        accrue(self.rate, (b - a).num_milliseconds())
    }

    /// What a running job will still accrue until its time limit (one hour without one), within
    /// the period (what falls after `until` is the next period's).
    pub fn remaining(&self, now: DateTime<Utc>, until: DateTime<Utc>) -> MicroUsd {
        if !self.running() {
            return MicroUsd::ZERO;
        }
        let end = match (self.started_at, self.time_limit_minutes) {
            (Some(start), Some(limit)) => start + Duration::minutes(i64::from(limit)),
            _ => now + Duration::milliseconds(NO_LIMIT_HORIZON_MS),
        };
        accrue(self.rate, (end.min(until) - now).num_milliseconds())
    }
}

/// One user's (or a workspace's) money now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Sum of the running jobs' rates, per hour.
    pub burn_rate: MicroUsd,
    /// Accrued in the period so far.
    pub pending_bill: MicroUsd,
    /// `pending_bill` + what running jobs will accrue until their limits.
    pub projected: MicroUsd,
    pub running_jobs: u32,
}

impl Usage {
    fn add(&mut self, job: &CostJob, period: Period, now: DateTime<Utc>) {
        let bill = job.cost_between(period.start, period.end, now);
        self.pending_bill = MicroUsd(self.pending_bill.0.saturating_add(bill.0));
        let mut projected = bill.0;
        if job.running() {
            self.burn_rate = MicroUsd(self.burn_rate.0.saturating_add(job.rate.0));
            self.running_jobs += 1;
            projected = projected.saturating_add(job.remaining(now, period.end).0);
        }
        self.projected = MicroUsd(self.projected.0.saturating_add(projected));
    }
}

/// Usage over `jobs`.
pub fn usage<'a>(
    jobs: impl IntoIterator<Item = &'a CostJob>,
    period: Period,
    now: DateTime<Utc>,
) -> Usage {
    let mut u = Usage::default();
    for j in jobs {
        u.add(j, period, now);
    }
    u
}

/// Usage per user (one pass).
pub fn usage_by_user(jobs: &[CostJob], period: Period, now: DateTime<Utc>) -> HashMap<&str, Usage> {
    let mut out: HashMap<&str, Usage> = HashMap::new();
    for j in jobs {
        out.entry(j.user.as_str()).or_default().add(j, period, now);
    }
    out
}

/// A point of a usage series: what was spent in `[start, start + bucket)` and the burn rate at
/// the bucket's end (or `now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsagePoint {
    pub start: DateTime<Utc>,
    pub spend: MicroUsd,
    pub burn_rate: MicroUsd,
}

/// Spend per bucket over `[from, to)`.
pub fn series(
    jobs: &[&CostJob],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Duration,
    now: DateTime<Utc>,
) -> Vec<UsagePoint> {
    let mut out = Vec::new();
    if bucket <= Duration::zero() {
        return out;
    }
    let mut at = from;
    while at < to {
        let end = (at + bucket).min(to);
        let instant = end.min(now);
        let spend = jobs
            .iter()
            .map(|j| j.cost_between(at, end, now).0)
            .sum::<i64>();
        let burn = jobs
            .iter()
            .filter(|j| {
                j.started_at.is_some_and(|s| s <= instant)
                    && j.ended_at.is_none_or(|e| e > instant)
                    && instant <= now
            })
            .map(|j| j.rate.0)
            .sum::<i64>();
        out.push(UsagePoint {
            start: at,
            spend: MicroUsd(spend),
            burn_rate: MicroUsd(burn),
        });
        at = end;
    }
    out
}

/// What happens at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaMode {
    /// A warning once per crossing; jobs keep running.
    Warn,
    /// Past limit × (1 + buffer), running jobs are cancelled and new ones refused.
    BlockAndKill,
}

/// A user's quota in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub limit: MicroUsd,
    pub mode: QuotaMode,
    pub buffer_percent: u32,
}

impl Quota {
    /// A quota from what a caller sent: `limit_json` is the `limit_usd` value's own JSON text (a
    /// number or a string of dollars, read from its digits, never through a float: 0.000001 is one
    /// micro-dollar), `mode` `warn` (default) or `block_and_kill`, `buffer_percent` 0-1000
    /// (default 0). Refused with the field at fault and how to fix it.
    pub fn parse(
        limit_json: &str,
        mode: Option<&str>,
        buffer_percent: Option<u32>,
    ) -> Result<Quota, crate::submit::FieldError> {
        let bad = |field: &str, message: String| crate::submit::FieldError {
            code: "invalid_quota",
            field: field.into(),
            message,
        };
        let raw = limit_json.trim();
        let (text, limit) = match serde_json::from_str::<String>(raw) {
            Ok(s) => {
                let s = s.trim().to_string();
                let limit = MicroUsd::parse_dollars(&s);
                (s, limit)
            }
            Err(_) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                (raw.to_string(), MicroUsd::parse_json_number(raw))
            }
            Err(_) => {
                return Err(bad(
                    "limit_usd",
                    format!(
                        "limit_usd must be a number of dollars such as 250 or \"0.01\", not {}",
                        raw.chars().take(40).collect::<String>()
                    ),
                ));
            }
        };
        let limit = limit.ok_or_else(|| {
            bad(
                "limit_usd",
                format!("limit_usd must be dollars ≥ 0 with at most six decimals, such as 250 or 0.01, not {text:?}"),
            )
        })?;
        let mode = match mode.unwrap_or("warn") {
            "warn" => QuotaMode::Warn,
            "block_and_kill" => QuotaMode::BlockAndKill,
            other => {
                return Err(bad(
                    "mode",
                    format!("mode must be warn or block_and_kill, not {other:?}"),
                ));
            }
        };
        let buffer_percent = buffer_percent.unwrap_or(0);
        if buffer_percent > 1_000 {
            return Err(bad(
                "buffer_percent",
                format!("buffer_percent must be from 0 to 1000, not {buffer_percent}"),
            ));
        }
        Ok(Quota {
            limit,
            mode,
            buffer_percent,
        })
    }

    /// limit × (1 + buffer%), rounded down.
    pub fn hard_limit(&self) -> MicroUsd {
        let v = i128::from(self.limit.0) * (100 + i128::from(self.buffer_percent)) / 100;
        MicroUsd(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

/// Where a user stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaStatus {
    Ok,
    /// Projected spend at or over the limit.
    Warning,
    /// `block_and_kill` and projected spend over the hard limit.
    Blocked,
}

pub fn status(usage: &Usage, quota: Option<&Quota>) -> QuotaStatus {
    let Some(q) = quota else {
        return QuotaStatus::Ok;
    };
    if q.mode == QuotaMode::BlockAndKill && usage.projected > q.hard_limit() {
        QuotaStatus::Blocked
    } else if usage.projected >= q.limit && usage.projected > MicroUsd::ZERO {
        QuotaStatus::Warning
    } else {
        QuotaStatus::Ok
    }
}

/// Where a user stands, counting a block enforced earlier in this period (`enforced_in`, the
/// start of the period it was enforced in): it holds until the quota is set again.
pub fn standing(
    usage: &Usage,
    quota: &Quota,
    enforced_in: Option<DateTime<Utc>>,
    period: Period,
) -> QuotaStatus {
    if quota.mode == QuotaMode::BlockAndKill && enforced_in == Some(period.start) {
        QuotaStatus::Blocked
    } else {
        status(usage, Some(quota))
    }
}

/// A submission refused by a `block_and_kill` quota: what the sentence quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "your quota blocks new jobs: projected spend this period ${} (${} spent, the rest is your running jobs until their time limits) went over your limit of ${} plus {}% (${}); a workspace admin can raise the limit, otherwise the block ends with the period",
    usage.projected.decimal(),
    usage.pending_bill.decimal(),
    quota.limit.decimal(),
    quota.buffer_percent,
    quota.hard_limit().decimal()
)]
pub struct SubmitBlocked {
    pub usage: Usage,
    pub quota: Quota,
}

/// May a user submit? Only a `block_and_kill` quota refuses: once the projected spend passed
/// limit × (1 + buffer), or a block was enforced this period (it holds until the quota is set
/// again).
pub fn check_submit(
    facts: &QuotaFacts,
    usage: &Usage,
    period: Period,
) -> Result<(), SubmitBlocked> {
    match facts.quota {
        Some(quota) if standing(usage, &quota, facts.enforced, period) == QuotaStatus::Blocked => {
            Err(SubmitBlocked {
                usage: *usage,
                quota,
            })
        }
        _ => Ok(()),
    }
}

/// What a user's quota stream says, for enforcement: the quota, and the starts of the periods a
/// warning was raised and a block enforced in since it was last set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaFacts {
    pub quota: Option<Quota>,
    pub warned: Option<DateTime<Utc>>,
    pub enforced: Option<DateTime<Utc>>,
}

/// What one enforcement cycle does for one user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enforcement {
    /// To append to the user's quota stream, at the version the facts were read at.
    pub events: Vec<crate::DomainEvent>,
    /// Whether the user's unfinished jobs are to be cancelled (blocked this period).
    pub cancel_jobs: bool,
}

/// Quota enforcement's decision for one user: a warning once per period when the projected
/// spend passes the limit; for `block_and_kill`, past limit × (1 + buffer), a block once per
/// period and every unfinished job cancelled — each cycle while the block holds.
pub fn decide_enforcement(
    workspace: &crate::WorkspaceId,
    email: &crate::Email,
    facts: &QuotaFacts,
    usage: &Usage,
    period: Period,
) -> Enforcement {
    let mut out = Enforcement::default();
    let Some(quota) = facts.quota else {
        return out;
    };
    let status = standing(usage, &quota, facts.enforced, period);
    if status == QuotaStatus::Ok {
        return out;
    }
    if facts.warned != Some(period.start) {
        out.events.push(crate::DomainEvent::QuotaWarningRaised(
            crate::events::QuotaWarningRaised {
                workspace: workspace.clone(),
                email: email.clone(),
                projected: usage.projected,
                pending_bill: usage.pending_bill,
                limit: quota.limit,
                period_start: period.start,
            },
        ));
    }
    if status == QuotaStatus::Blocked {
        if facts.enforced != Some(period.start) {
            out.events.push(crate::DomainEvent::QuotaEnforced(
                crate::events::QuotaEnforced {
                    workspace: workspace.clone(),
                    email: email.clone(),
                    projected: usage.projected,
                    pending_bill: usage.pending_bill,
                    limit: quota.limit,
                    hard_limit: quota.hard_limit(),
                    period_start: period.start,
                },
            ));
        }
        out.cancel_jobs = true;
    }
    out
}

#[cfg(test)]
mod enforcement {
    //! Given a quota stream's facts and a user's usage, when a cycle decides, then these events
    //! and cancels follow.
    use super::*;
    use crate::DomainEvent;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn november() -> Period {
        Period {
            start: t("2026-11-01T00:00:00Z"),
            end: t("2026-12-01T00:00:00Z"),
        }
    }

    fn quota(dollars: i64, mode: QuotaMode, buffer_percent: u32) -> Option<Quota> {
        Some(Quota {
            limit: MicroUsd::from_dollars_cents(dollars, 0),
            mode,
            buffer_percent,
        })
    }

    fn projected(dollars: i64) -> Usage {
        Usage {
            projected: MicroUsd::from_dollars_cents(dollars, 0),
            pending_bill: MicroUsd::from_dollars_cents(dollars / 2, 0),
            ..Usage::default()
        }
    }

    fn when(facts: QuotaFacts, usage: Usage) -> (Vec<&'static str>, bool) {
        let ws = crate::WorkspaceId::new("lab").unwrap();
        let email = crate::Email::new("ada@lab.org").unwrap();
        let out = decide_enforcement(&ws, &email, &facts, &usage, november());
        let names = out.events.iter().map(DomainEvent::event_type).collect();
        (names, out.cancel_jobs)
    }

    #[test]
    fn quotas_parse_from_what_callers_send_and_name_the_field_at_fault() {
        let q = Quota::parse("\"0.000001\"", None, None).unwrap();
        assert_eq!(
            (q.limit, q.mode, q.buffer_percent),
            (MicroUsd(1), QuotaMode::Warn, 0)
        );
        let q = Quota::parse("250", Some("block_and_kill"), Some(20)).unwrap();
        assert_eq!(q.limit, MicroUsd::from_dollars_cents(250, 0));
        for (limit, mode, buffer, field) in [
            ("-1", None, None, "limit_usd"),
            ("0.0000001", None, None, "limit_usd"),
            ("true", None, None, "limit_usd"),
            ("1", Some("kill"), None, "mode"),
            ("1", None, Some(1_001), "buffer_percent"),
        ] {
            let err = Quota::parse(limit, mode, buffer).unwrap_err();
            assert_eq!(
                (err.code, err.field.as_str()),
                ("invalid_quota", field),
                "{limit}"
            );
        }
    }

    #[test]
    fn given_each_quota_when_a_user_submits_then_only_a_block_refuses() {
        let submit =
            |facts: QuotaFacts, spent: i64| check_submit(&facts, &projected(spent), november());
        assert_eq!(submit(QuotaFacts::default(), 1_000_000), Ok(()));
        let warn = QuotaFacts {
            quota: quota(100, QuotaMode::Warn, 0),
            ..QuotaFacts::default()
        };
        assert_eq!(submit(warn, 1_000), Ok(()), "warn never refuses");
        let block = QuotaFacts {
            quota: quota(100, QuotaMode::BlockAndKill, 20),
            ..QuotaFacts::default()
        };
        assert_eq!(submit(block, 120), Ok(()), "within the buffer");
        let refused = submit(block, 121).unwrap_err();
        assert!(refused.to_string().contains("$121.000000"), "{refused}");
        // Enforced this period: refused even once spend fell; a new quota clears it.
        let enforced = QuotaFacts {
            enforced: Some(november().start),
            ..block
        };
        assert!(submit(enforced, 0).is_err());
    }

    #[test]
    fn given_no_quota_when_spending_anything_then_nothing() {
        assert_eq!(
            when(QuotaFacts::default(), projected(1_000_000)),
            (vec![], false)
        );
    }

    #[test]
    fn given_a_warn_quota_when_under_the_limit_then_nothing() {
        let facts = QuotaFacts {
            quota: quota(100, QuotaMode::Warn, 0),
            ..QuotaFacts::default()
        };
        assert_eq!(when(facts, projected(99)), (vec![], false));
    }

    #[test]
    fn given_a_warn_quota_when_over_the_limit_then_one_warning_per_period_and_no_cancel() {
        let mut facts = QuotaFacts {
            quota: quota(100, QuotaMode::Warn, 0),
            ..QuotaFacts::default()
        };
        assert_eq!(
            when(facts, projected(500)),
            (vec!["QuotaWarningRaised"], false)
        );
        facts.warned = Some(november().start);
        assert_eq!(when(facts, projected(500)), (vec![], false));
        // Warned last period only: warned again.
        facts.warned = Some(t("2026-10-01T00:00:00Z"));
        assert_eq!(
            when(facts, projected(500)),
            (vec!["QuotaWarningRaised"], false)
        );
    }

    #[test]
    fn given_block_and_kill_when_over_the_limit_within_the_buffer_then_a_warning_only() {
        let facts = QuotaFacts {
            quota: quota(100, QuotaMode::BlockAndKill, 20),
            ..QuotaFacts::default()
        };
        assert_eq!(
            when(facts, projected(110)),
            (vec!["QuotaWarningRaised"], false)
        );
    }

    #[test]
    fn given_block_and_kill_when_past_the_buffer_then_warned_blocked_and_jobs_cancelled() {
        let facts = QuotaFacts {
            quota: quota(100, QuotaMode::BlockAndKill, 20),
            ..QuotaFacts::default()
        };
        assert_eq!(
            when(facts, projected(121)),
            (vec!["QuotaWarningRaised", "QuotaEnforced"], true)
        );
    }

    #[test]
    fn given_a_block_enforced_this_period_when_spend_falls_then_still_blocked_and_nothing_recorded_again()
     {
        let facts = QuotaFacts {
            quota: quota(100, QuotaMode::BlockAndKill, 0),
            warned: Some(november().start),
            enforced: Some(november().start),
        };
        // Jobs were cancelled, so the projection fell; the block holds until the quota is set.
        assert_eq!(when(facts, projected(10)), (vec![], true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Demand;

    const CATALOG: &str = include_str!("../../fixtures/catalog/shapes.json");

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn shape(cpus: u32, gib: Option<u64>, nodes: u32) -> JobShape {
        JobShape {
            cpus,
            memory_mib: gib.map(|g| g * 1024),
            nodes,
            time_limit_minutes: None,
            gpus: 0,
            tasks: None,
        }
    }

    #[test]
    fn a_job_pays_its_vcpu_share_of_the_shape_it_is_placed_on() {
        let c = Catalog::parse(CATALOG, 512).unwrap();
        // 1 vCPU, 1 GiB: c7g.medium ($0.0363/h, 1 vCPU): the whole node.
        assert_eq!(
            job_rate(&c, &shape(1, Some(1), 1), 2048),
            Some(MicroUsd(36_300))
        );
        // 1 vCPU with 2 GiB does not fit c7g.medium (1.5 GiB allocatable); an m7g.medium
        // ($0.0408/h, 1 vCPU, 3.5 GiB) costs less than a c7g.large ($0.0725/h): the whole node.
        assert_eq!(
            job_rate(&c, &shape(1, None, 1), 2048),
            Some(MicroUsd(40_800))
        );
        // 16 vCPUs over 2 nodes: 8 per node on c7g.2xlarge ($0.29/h, 8 vCPUs), two nodes.
        let r = job_rate(&c, &shape(16, Some(16), 2), 2048).unwrap();
        let s = c
            .shape(
                c.place(Demand {
                    cpus: 8,
                    memory_mib: 8 * 1024,
                })
                .unwrap(),
            )
            .unwrap();
        assert_eq!(r, MicroUsd(s.hourly.0 * 2));
        // Nothing holds it: no rate.
        assert_eq!(job_rate(&c, &shape(64, None, 1), 2048), None);
    }

    #[test]
    fn accrual_is_exact_to_the_micro_dollar_and_rounds_down() {
        assert_eq!(accrue(MicroUsd(36_250), 3_600_000), MicroUsd(36_250));
        assert_eq!(accrue(MicroUsd(36_250), 1_000), MicroUsd(10)); // 10.069…
        assert_eq!(accrue(MicroUsd(36_250), 99), MicroUsd(0));
        assert_eq!(accrue(MicroUsd(36_250), -5), MicroUsd(0));
    }

    fn job(user: &str, rate: i64, start: &str, end: Option<&str>, limit: Option<u32>) -> CostJob {
        CostJob {
            user: user.into(),
            job_id: 1,
            rate: MicroUsd(rate),
            started_at: Some(t(start)),
            ended_at: end.map(t),
            time_limit_minutes: limit,
        }
    }

    #[test]
    fn the_bill_counts_only_the_period_and_the_projection_adds_the_time_limits() {
        let now = t("2026-11-01T01:00:00Z");
        let period = Period::month_of(now);
        assert_eq!(period.start, t("2026-11-01T00:00:00Z"));
        assert_eq!(period.end, t("2026-12-01T00:00:00Z"));
        assert_eq!(
            Period::month_of(t("2026-12-31T23:59:59Z")).end,
            t("2027-01-01T00:00:00Z")
        );
        let jobs = vec![
            // Ran across the month boundary: only November's hour counts.
            job(
                "a",
                1_000_000,
                "2026-10-31T23:00:00Z",
                Some("2026-11-01T01:00:00Z"),
                None,
            ),
            // Running for 30 minutes, limit 90: 0.5 h accrued, 1 h to come.
            job("a", 2_000_000, "2026-11-01T00:30:00Z", None, Some(90)),
            // Running, no limit: one more hour projected.
            job("b", 600_000, "2026-11-01T00:00:00Z", None, None),
        ];
        let by = usage_by_user(&jobs, period, now);
        let a = by["a"];
        assert_eq!(a.pending_bill, MicroUsd(1_000_000 + 1_000_000));
        assert_eq!(a.burn_rate, MicroUsd(2_000_000));
        assert_eq!(a.projected, MicroUsd(2_000_000 + 2_000_000));
        assert_eq!(a.running_jobs, 1);
        let b = by["b"];
        assert_eq!(
            (b.pending_bill, b.projected),
            (MicroUsd(600_000), MicroUsd(1_200_000))
        );
        let all = usage(&jobs, period, now);
        assert_eq!(all.pending_bill, MicroUsd(2_600_000));
        // Near the period's end, only what falls inside it is projected.
        let late = t("2026-11-30T23:30:00Z");
        let long = job("c", 2_000_000, "2026-11-30T23:00:00Z", None, Some(600));
        let u = usage([&long], Period::month_of(late), late);
        assert_eq!(u.projected, MicroUsd(1_000_000 + 1_000_000));
        // An hour later the same jobs have accrued more: the clock is an argument.
        let later = usage(&jobs, period, now + Duration::hours(1));
        assert_eq!(
            later.pending_bill,
            MicroUsd(1_000_000 + 3_000_000 + 1_200_000)
        );
    }

    #[test]
    fn periods_of_each_kind() {
        let at = t("2026-11-26T15:30:00Z"); // a Thursday
        assert_eq!(
            Period::of(PeriodKind::Month, at).start,
            t("2026-11-01T00:00:00Z")
        );
        let w = Period::of(PeriodKind::Week, at);
        assert_eq!(
            (w.start, w.end),
            (t("2026-11-23T00:00:00Z"), t("2026-11-30T00:00:00Z"))
        );
        let d = Period::of(PeriodKind::Day, at);
        assert_eq!(
            (d.start, d.end),
            (t("2026-11-26T00:00:00Z"), t("2026-11-27T00:00:00Z"))
        );
        assert_eq!(PeriodKind::parse("week"), Some(PeriodKind::Week));
        assert_eq!(PeriodKind::parse("year"), None);
    }

    #[test]
    fn status_by_mode_and_buffer() {
        let u = |p: i64| Usage {
            projected: MicroUsd(p),
            ..Usage::default()
        };
        let warn = Quota {
            limit: MicroUsd(10_000),
            mode: QuotaMode::Warn,
            buffer_percent: 0,
        };
        assert_eq!(status(&u(9_999), Some(&warn)), QuotaStatus::Ok);
        assert_eq!(status(&u(10_000), Some(&warn)), QuotaStatus::Warning);
        assert_eq!(status(&u(1_000_000), Some(&warn)), QuotaStatus::Warning);
        let kill = Quota {
            mode: QuotaMode::BlockAndKill,
            buffer_percent: 10,
            ..warn
        };
        assert_eq!(kill.hard_limit(), MicroUsd(11_000));
        assert_eq!(status(&u(11_000), Some(&kill)), QuotaStatus::Warning);
        assert_eq!(status(&u(11_001), Some(&kill)), QuotaStatus::Blocked);
        assert_eq!(status(&u(11_001), None), QuotaStatus::Ok);
        // A block enforced this period holds whatever is spent now; last period's does not.
        let period = Period::month_of(t("2026-11-05T00:00:00Z"));
        let earlier = Some(period.start);
        assert_eq!(
            standing(&u(0), &kill, earlier, period),
            QuotaStatus::Blocked
        );
        let last_month = Some(t("2026-10-01T00:00:00Z"));
        assert_eq!(standing(&u(0), &kill, last_month, period), QuotaStatus::Ok);
        assert_eq!(standing(&u(0), &warn, earlier, period), QuotaStatus::Ok);
        // A zero limit warns only once something is spent.
        let zero = Quota {
            limit: MicroUsd(0),
            ..warn
        };
        assert_eq!(status(&u(0), Some(&zero)), QuotaStatus::Ok);
        assert_eq!(status(&u(1), Some(&zero)), QuotaStatus::Warning);
    }

    #[test]
    fn a_series_splits_spend_by_bucket() {
        let now = t("2026-11-01T03:00:00Z");
        let j = job(
            "a",
            3_600_000,
            "2026-11-01T00:30:00Z",
            Some("2026-11-01T02:00:00Z"),
            None,
        );
        let s = series(
            &[&j],
            t("2026-11-01T00:00:00Z"),
            now,
            Duration::hours(1),
            now,
        );
        let spend: Vec<i64> = s.iter().map(|p| p.spend.0).collect();
        assert_eq!(spend, vec![1_800_000, 3_600_000, 0]);
        let burn: Vec<i64> = s.iter().map(|p| p.burn_rate.0).collect();
        assert_eq!(burn, vec![3_600_000, 0, 0]);
    }
}
