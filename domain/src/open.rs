//! The open-job index: what the poll cycle needs of the jobs, folded event by event so a cycle
//! costs what changed, not what is queued.
//!
//! Per cluster: the jobs not finished (and those recorded NODE_FAIL, which Slurm may correct),
//! with their shapes, nodes and whether a cancel was asked, and a generation that moves whenever
//! that set or a job's state in it changes (the scaler plans again only then). Per user of a
//! workspace: the running jobs priced, and the jobs that ended with their cost, so burn rate,
//! pending bill and projected spend are a few additions per cycle.
//!
//! Pure: the caller reads the log and hands each job event in with its stream, position and
//! recording time; prices come in as a function.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::cost::{CostJob, Period, Usage, usage};
use crate::job::JobState;
use crate::submit::JobShape;
use crate::{ClusterId, DomainEvent, MicroUsd, WorkspaceId};

/// A cluster of a workspace.
pub type ClusterKey = (WorkspaceId, ClusterId);

/// One job the index holds.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenEntry {
    pub submission_id: uuid::Uuid,
    pub user: String,
    pub state: JobState,
    pub shape: JobShape,
    /// The nodes it runs on, as Slurm names them, if known.
    pub node: Option<String>,
    pub cancel_requested: bool,
    /// The version of the job's stream this entry reflects: a change appended at it was made
    /// on what the log holds (a conflict means the entry is behind).
    pub version: i64,
}

/// A cluster's open jobs, by Slurm job id.
#[derive(Debug, Clone, Default)]
pub struct ClusterJobs {
    pub jobs: BTreeMap<u64, OpenEntry>,
    /// Moves whenever a job enters or leaves, changes state or nodes, or has a cancel asked.
    pub generation: u64,
    /// Jobs that entered since [`OpenJobs::take_added`] was last called for this cluster.
    added: Vec<u64>,
    /// Open jobs that entered or changed since [`OpenJobs::take_changed`] was last called (at
    /// most the open set: a job that leaves it leaves this too).
    changed: BTreeSet<u64>,
    /// The unfinished jobs again, compact, for [`ClusterJobs::pending_by_shape`] and [`ClusterJobs::sizing_others`].
    sizing: SizingIndex,
    /// Submissions whose request is recorded (`JobSubmissionRequested`) and whose outcome is not
    /// yet (`JobSubmitted`, `JobSubmissionFailed`), with when the request was recorded.
    submitting: BTreeMap<uuid::Uuid, DateTime<Utc>>,
}

/// A cluster's unfinished jobs as the scaler walks them at every placement: the pending ones by
/// shape (ids only: a queue holds few shapes, and a walk over ids touches a few bytes per job
/// where the entries are scattered over the heap), the others by id.
#[derive(Debug, Clone, Default)]
struct SizingIndex {
    pending: BTreeMap<JobShape, BTreeSet<u64>>,
    others: BTreeSet<u64>,
}

impl SizingIndex {
    fn add(&mut self, job_id: u64, e: &OpenEntry) {
        if e.state == JobState::Pending {
            self.pending.entry(e.shape).or_default().insert(job_id);
        } else if !e.state.is_terminal() {
            self.others.insert(job_id);
        }
    }

    fn remove(&mut self, job_id: u64, e: &OpenEntry) {
        if e.state == JobState::Pending {
            if let Some(ids) = self.pending.get_mut(&e.shape) {
                ids.remove(&job_id);
                if ids.is_empty() {
                    self.pending.remove(&e.shape);
                }
            }
        } else {
            self.others.remove(&job_id);
        }
    }
}

impl ClusterJobs {
    /// Submissions whose request is recorded and whose outcome is not, with when the request
    /// was recorded: usually none, or the few on their way to Slurm right now.
    pub fn submitting(&self) -> impl Iterator<Item = (uuid::Uuid, DateTime<Utc>)> + '_ {
        self.submitting.iter().map(|(id, at)| (*id, *at))
    }

    /// The pending jobs by shape: each shape with their ids, ascending (never empty).
    pub fn pending_by_shape(&self) -> impl Iterator<Item = (&JobShape, &BTreeSet<u64>)> {
        self.sizing.pending.iter()
    }

    /// Calls `each` with every unfinished job that is not pending (running and the like), by id.
    pub fn sizing_others(&self, each: &mut dyn FnMut(u64, &OpenEntry)) {
        for id in &self.sizing.others {
            if let Some(e) = self.jobs.get(id) {
                each(*id, e);
            }
        }
    }
}

/// One user's money, kept up to date job by job.
#[derive(Debug, Clone, Default)]
struct UserCosts {
    /// Started and not ended, by job stream.
    running: BTreeMap<String, CostJob>,
    /// Ended, by job stream (only those that can still count in a period: see `closed`).
    ended: BTreeMap<String, CostJob>,
    /// The ended jobs' sum for one period, kept while that period lasts.
    closed: Option<(Period, MicroUsd)>,
}

/// Where a job's stream points.
#[derive(Debug, Clone)]
struct Located {
    cluster: ClusterKey,
    job_id: u64,
    user: String,
    rate: MicroUsd,
    time_limit_minutes: Option<u32>,
    started_at: Option<DateTime<Utc>>,
}

/// The fold.
#[derive(Debug, Default)]
pub struct OpenJobs {
    /// The last log position applied.
    position: i64,
    clusters: BTreeMap<ClusterKey, ClusterJobs>,
    /// Every job stream seen that may still change (open ones, and ended ones that could be
    /// corrected or still cost money this period).
    streams: HashMap<String, Located>,
    /// Per workspace and user.
    costs: BTreeMap<(WorkspaceId, String), UserCosts>,
    /// Open jobs per workspace and user: (cluster, job id).
    by_user: BTreeMap<(WorkspaceId, String), BTreeSet<(ClusterId, u64)>>,
    /// Jobs that ended at or before this are not kept for cost sums ([`Self::forget_ended_before`]).
    cutoff: Option<DateTime<Utc>>,
}

/// An open job of a user, as quota enforcement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserJob {
    pub cluster: ClusterId,
    pub submission_id: uuid::Uuid,
    pub job_id: u64,
}

impl OpenJobs {
    /// The last log position applied (0 before any).
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Marks `position` applied: an event that changes none of this (not a job event) moves it
    /// too, so the reader resumes after it.
    pub fn advance(&mut self, position: i64) {
        self.position = self.position.max(position);
    }

    /// Applies one event of stream `stream` (at `stream_version` in it) at `position`, recorded
    /// at `recorded_at`. `price` gives the hourly rate of a shape for jobs whose submission
    /// recorded none. Events at or below the last position applied are ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        stream: &str,
        stream_version: i64,
        position: i64,
        recorded_at: DateTime<Utc>,
        event: &DomainEvent,
        price: &dyn Fn(&JobShape) -> MicroUsd,
    ) {
        if position <= self.position {
            return;
        }
        self.position = position;
        self.touch(stream, stream_version);
        match event {
            DomainEvent::JobSubmissionRequested(r) => {
                self.clusters
                    .entry((r.workspace.clone(), r.cluster_id.clone()))
                    .or_default()
                    .submitting
                    .insert(r.submission_id, recorded_at);
            }
            DomainEvent::JobSubmissionFailed(f) => {
                let key = (f.workspace.clone(), f.cluster_id.clone());
                if let Some(cluster) = self.clusters.get_mut(&key) {
                    cluster.submitting.remove(&f.submission_id);
                }
            }
            DomainEvent::JobSubmitted(j) => {
                let key = (j.workspace.clone(), j.cluster_id.clone());
                if let Some(cluster) = self.clusters.get_mut(&key) {
                    cluster.submitting.remove(&j.submission_id);
                }
                if self.streams.contains_key(stream) {
                    return;
                }
                let key = (j.workspace.clone(), j.cluster_id.clone());
                let user = j.user.to_string();
                let cluster = self.clusters.entry(key.clone()).or_default();
                let entry = OpenEntry {
                    submission_id: j.submission_id,
                    user: user.clone(),
                    state: JobState::Pending,
                    shape: j.shape,
                    node: None,
                    cancel_requested: false,
                    version: stream_version,
                };
                // A Slurm id seen before (another stream's job) is replaced, as in the map.
                if let Some(old) = cluster.jobs.remove(&j.job_id) {
                    cluster.sizing.remove(j.job_id, &old);
                }
                cluster.sizing.add(j.job_id, &entry);
                cluster.jobs.insert(j.job_id, entry);
                cluster.added.push(j.job_id);
                cluster.changed.insert(j.job_id);
                cluster.generation += 1;
                self.by_user
                    .entry((j.workspace.clone(), user.clone()))
                    .or_default()
                    .insert((j.cluster_id.clone(), j.job_id));
                self.streams.insert(
                    stream.to_string(),
                    Located {
                        cluster: key,
                        job_id: j.job_id,
                        user,
                        rate: j.rate.unwrap_or_else(|| price(&j.shape)),
                        time_limit_minutes: j.shape.time_limit_minutes,
                        started_at: None,
                    },
                );
            }
            DomainEvent::JobCancelRequested(_) => {
                let Some(at) = self.streams.get(stream) else {
                    return;
                };
                if let Some(cluster) = self.clusters.get_mut(&at.cluster)
                    && let Some(entry) = cluster.jobs.get_mut(&at.job_id)
                {
                    entry.cancel_requested = true;
                    cluster.changed.insert(at.job_id);
                    cluster.generation += 1;
                }
            }
            DomainEvent::JobStateChanged(c) => self.state_changed(stream, recorded_at, c),
            _ => {}
        }
    }

    fn state_changed(
        &mut self,
        stream: &str,
        recorded_at: DateTime<Utc>,
        c: &crate::JobStateChanged,
    ) {
        let Some(at) = self.streams.get_mut(stream) else {
            return;
        };
        // As the jobs view has it: started when Slurm says, or when it is first seen running.
        let when = c.at.unwrap_or(recorded_at);
        if at.started_at.is_none() {
            at.started_at = c.started_at.or((c.to == JobState::Running).then_some(when));
        }
        let ws = at.cluster.0.clone();
        let user_key = (ws, at.user.clone());
        let job = CostJob {
            user: at.user.clone(),
            job_id: at.job_id,
            rate: at.rate,
            started_at: at.started_at,
            ended_at: c.to.is_terminal().then_some(when),
            time_limit_minutes: at.time_limit_minutes,
        };
        // Stays in the open set unless it finished (a NODE_FAIL stays: Slurm may correct it). A
        // stream is known here only while its job is in the open set: one that leaves is
        // forgotten below.
        let keep = !c.to.is_terminal() || c.to == JobState::NodeFail;
        let (cluster_key, job_id) = (at.cluster.clone(), at.job_id);
        let cluster = self.clusters.entry(cluster_key.clone()).or_default();
        cluster.generation += 1;
        if keep {
            cluster.changed.insert(job_id);
            if let Some(entry) = cluster.jobs.get_mut(&job_id) {
                cluster.sizing.remove(job_id, entry);
                entry.state = c.to;
                if c.node.is_some() {
                    entry.node = c.node.clone();
                }
                cluster.sizing.add(job_id, entry);
            }
        } else {
            if let Some(old) = cluster.jobs.remove(&job_id) {
                cluster.sizing.remove(job_id, &old);
            }
            cluster.changed.remove(&job_id);
            if let Some(set) = self.by_user.get_mut(&user_key) {
                set.remove(&(cluster_key.1.clone(), job_id));
                if set.is_empty() {
                    self.by_user.remove(&user_key);
                }
            }
        }
        let cutoff = self.cutoff;
        let costs = self.costs.entry(user_key).or_default();
        // Its cost moves between running and ended; the closed sum follows.
        if let Some(old) = costs.ended.remove(stream)
            && let Some((period, sum)) = &mut costs.closed
        {
            let gone = old.cost_between(period.start, period.end, old.ended_at.unwrap_or(when));
            *sum = MicroUsd(sum.0.saturating_sub(gone.0));
        }
        costs.running.remove(stream);
        if job.started_at.is_some() {
            if let Some(end) = job.ended_at {
                if cutoff.is_none_or(|c| end > c) {
                    if let Some((period, sum)) = &mut costs.closed {
                        let add = job.cost_between(period.start, period.end, end);
                        *sum = MicroUsd(sum.0.saturating_add(add.0));
                    }
                    costs.ended.insert(stream.to_string(), job);
                }
            } else {
                costs.running.insert(stream.to_string(), job);
            }
        }
        if !keep {
            // A finished job changes no more (only NODE_FAIL is corrected, and it is kept): its
            // stream is forgotten; its cost stays in `ended` for the period.
            self.streams.remove(stream);
        }
    }

    /// Notes that an open job's stream reached `stream_version` (any event on it, those this
    /// fold does not interpret too).
    pub fn touch(&mut self, stream: &str, stream_version: i64) {
        let Some(at) = self.streams.get(stream) else {
            return;
        };
        if let Some(entry) = self
            .clusters
            .get_mut(&at.cluster)
            .and_then(|c| c.jobs.get_mut(&at.job_id))
        {
            entry.version = entry.version.max(stream_version);
        }
    }

    /// A cluster's open jobs.
    pub fn cluster(&self, key: &ClusterKey) -> Option<&ClusterJobs> {
        self.clusters.get(key)
    }

    /// The jobs of `key` that entered since the last call (for checks made once per job).
    pub fn take_added(&mut self, key: &ClusterKey) -> Vec<u64> {
        self.clusters
            .get_mut(key)
            .map(|c| std::mem::take(&mut c.added))
            .unwrap_or_default()
    }

    /// The open jobs of `key` that entered or changed since the last call.
    pub fn take_changed(&mut self, key: &ClusterKey) -> Vec<u64> {
        self.clusters
            .get_mut(key)
            .map(|c| std::mem::take(&mut c.changed).into_iter().collect())
            .unwrap_or_default()
    }

    /// Puts jobs back among those [`Self::take_added`] hands out.
    pub fn readd(&mut self, key: &ClusterKey, jobs: Vec<u64>) {
        if let Some(c) = self.clusters.get_mut(key) {
            c.added.extend(jobs);
        }
    }

    /// A user's money in `period` at `now`: running jobs one by one, ended ones as one sum kept
    /// for the period (computed again only when the period changes). Ended jobs that can no
    /// longer count (ended before the period) are dropped then.
    pub fn usage(
        &mut self,
        workspace: &WorkspaceId,
        user: &str,
        period: Period,
        now: DateTime<Utc>,
    ) -> Usage {
        let Some(costs) = self.costs.get_mut(&(workspace.clone(), user.to_string())) else {
            return Usage::default();
        };
        let closed = match costs.closed {
            Some((p, sum)) if p == period => sum,
            _ => {
                costs
                    .ended
                    .retain(|_, j| j.ended_at.is_none_or(|e| e > period.start));
                let sum = costs.ended.values().fold(MicroUsd::ZERO, |acc, j| {
                    let c = j.cost_between(period.start, period.end, j.ended_at.unwrap_or(now));
                    MicroUsd(acc.0.saturating_add(c.0))
                });
                costs.closed = Some((period, sum));
                sum
            }
        };
        let mut u = usage(costs.running.values(), period, now);
        u.pending_bill = MicroUsd(u.pending_bill.0.saturating_add(closed.0));
        u.projected = MicroUsd(u.projected.0.saturating_add(closed.0));
        u
    }

    /// Forgets ended jobs that can no longer count in a period starting at `start` (call it when
    /// the period changes, so memory holds one period's ended jobs, not the history).
    /// Idempotent: a start at or before the one already given changes nothing.
    pub fn forget_ended_before(&mut self, start: DateTime<Utc>) {
        if self.cutoff.is_some_and(|c| c >= start) {
            return;
        }
        self.cutoff = Some(start);
        for costs in self.costs.values_mut() {
            costs
                .ended
                .retain(|_, j| j.ended_at.is_none_or(|e| e > start));
            costs.closed = None;
        }
        self.costs
            .retain(|_, c| !c.running.is_empty() || !c.ended.is_empty());
    }

    /// A user's unfinished jobs in a workspace (NODE_FAIL ones left out).
    pub fn user_jobs(&self, workspace: &WorkspaceId, user: &str) -> Vec<UserJob> {
        let Some(set) = self.by_user.get(&(workspace.clone(), user.to_string())) else {
            return Vec::new();
        };
        set.iter()
            .filter_map(|(cluster, job_id)| {
                let entry = self
                    .clusters
                    .get(&(workspace.clone(), cluster.clone()))?
                    .jobs
                    .get(job_id)?;
                (!entry.state.is_terminal()).then(|| UserJob {
                    cluster: cluster.clone(),
                    submission_id: entry.submission_id,
                    job_id: *job_id,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{PeriodKind, usage_by_user};
    use crate::{Email, JobCancelRequested, JobStateChanged, JobSubmitted, SubmittedVia};
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 10, h, m, 0)
            .single()
            .unwrap_or_default()
    }

    fn shape(cpus: u32) -> JobShape {
        JobShape {
            cpus,
            memory_mib: None,
            nodes: 1,
            time_limit_minutes: Some(120),
            gpus: 0,
            tasks: None,
        }
    }

    fn submitted(job_id: u64, user: &str, rate: Option<i64>) -> DomainEvent {
        DomainEvent::JobSubmitted(JobSubmitted {
            submission_id: uuid::Uuid::from_u128(u128::from(job_id)),
            workspace: WorkspaceId::new("ws").unwrap_or_else(|_| unreachable!()),
            cluster_id: ClusterId::new("c1").unwrap_or_else(|_| unreachable!()),
            job_id,
            name: format!("job{job_id}"),
            user: Email::new(user).unwrap_or_else(|_| unreachable!()),
            via: SubmittedVia::Api,
            template_id: None,
            params: None,
            body: serde_json::json!({}),
            shape: shape(2),
            warnings: Vec::new(),
            submitted_at: None,
            rate: rate.map(MicroUsd),
        })
    }

    fn changed(job_id: u64, from: JobState, to: JobState, at: DateTime<Utc>) -> DomainEvent {
        DomainEvent::JobStateChanged(JobStateChanged {
            job_id,
            from,
            to,
            reason: None,
            node: (to == JobState::Running).then(|| "n1".to_string()),
            exit_code: None,
            at: Some(at),
            started_at: None,
        })
    }

    fn key() -> ClusterKey {
        (
            WorkspaceId::new("ws").unwrap_or_else(|_| unreachable!()),
            ClusterId::new("c1").unwrap_or_else(|_| unreachable!()),
        )
    }

    /// Applies `events` as (stream, event) at positions 1, 2, …; every rate is 1 USD/h unless the
    /// submission recorded one.
    fn fold(events: &[(&str, DomainEvent)]) -> OpenJobs {
        let mut open = OpenJobs::default();
        for (i, (stream, e)) in events.iter().enumerate() {
            open.apply(stream, 0, i as i64 + 1, t(9, 0), e, &|_| {
                MicroUsd(1_000_000)
            });
        }
        open
    }

    #[test]
    fn given_submitted_jobs_when_one_finishes_then_only_the_other_is_open() {
        let open = fold(&[
            ("s1", submitted(1, "a@x.org", None)),
            ("s2", submitted(2, "a@x.org", None)),
            (
                "s1",
                changed(1, JobState::Pending, JobState::Running, t(10, 0)),
            ),
            (
                "s1",
                changed(1, JobState::Running, JobState::Completed, t(11, 0)),
            ),
        ]);
        let c = open
            .cluster(&key())
            .map(|c| c.jobs.keys().copied().collect::<Vec<_>>());
        assert_eq!(c, Some(vec![2]));
        assert_eq!(open.position(), 4);
    }

    #[test]
    fn given_a_node_fail_when_slurm_corrects_it_then_the_job_is_open_and_running_again() {
        let open = fold(&[
            ("s1", submitted(1, "a@x.org", None)),
            (
                "s1",
                changed(1, JobState::Pending, JobState::Running, t(10, 0)),
            ),
            (
                "s1",
                changed(1, JobState::Running, JobState::NodeFail, t(10, 30)),
            ),
            (
                "s1",
                changed(1, JobState::NodeFail, JobState::Running, t(10, 40)),
            ),
        ]);
        let entry = open
            .cluster(&key())
            .and_then(|c| c.jobs.get(&1))
            .map(|e| e.state);
        assert_eq!(entry, Some(JobState::Running));
        let jobs = open.user_jobs(&key().0, "a@x.org");
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn generation_moves_on_every_change_and_added_is_taken_once() {
        let mut open = fold(&[("s1", submitted(1, "a@x.org", None))]);
        let g1 = open.cluster(&key()).map(|c| c.generation);
        open.apply(
            "s1",
            0,
            2,
            t(9, 0),
            &DomainEvent::JobCancelRequested(JobCancelRequested {
                job_id: 1,
                by: Email::new("a@x.org").unwrap_or_else(|_| unreachable!()),
                why: None,
            }),
            &|_| MicroUsd::ZERO,
        );
        let after = open.cluster(&key()).map(|c| c.generation);
        assert!(after > g1);
        assert_eq!(
            open.cluster(&key())
                .and_then(|c| c.jobs.get(&1))
                .map(|e| e.cancel_requested),
            Some(true)
        );
        assert_eq!(open.take_added(&key()), vec![1]);
        assert!(open.take_added(&key()).is_empty());
        assert_eq!(open.take_changed(&key()), vec![1]);
        assert!(open.take_changed(&key()).is_empty());
        // A replayed event (at or below the position) changes nothing.
        open.apply("s9", 0, 1, t(9, 0), &submitted(9, "a@x.org", None), &|_| {
            MicroUsd::ZERO
        });
        assert_eq!(open.cluster(&key()).map(|c| c.jobs.len()), Some(1));
    }

    #[test]
    fn usage_equals_the_sum_over_every_job_across_a_period_change() {
        // Three jobs of one user: one ended, one running, one corrected after NODE_FAIL; the
        // recorded rate wins over the price function.
        let events = vec![
            ("s1", submitted(1, "a@x.org", Some(2_000_000))),
            ("s2", submitted(2, "a@x.org", None)),
            ("s3", submitted(3, "a@x.org", None)),
            (
                "s1",
                changed(1, JobState::Pending, JobState::Running, t(9, 0)),
            ),
            (
                "s1",
                changed(1, JobState::Running, JobState::Completed, t(10, 30)),
            ),
            (
                "s2",
                changed(2, JobState::Pending, JobState::Running, t(10, 0)),
            ),
            (
                "s3",
                changed(3, JobState::Pending, JobState::Running, t(10, 0)),
            ),
            (
                "s3",
                changed(3, JobState::Running, JobState::NodeFail, t(10, 10)),
            ),
            (
                "s3",
                changed(3, JobState::NodeFail, JobState::Running, t(10, 20)),
            ),
        ];
        let mut open = fold(&events);
        let now = t(11, 0);
        let expected = |period: Period| {
            let jobs = vec![
                CostJob {
                    user: "a@x.org".into(),
                    job_id: 1,
                    rate: MicroUsd(2_000_000),
                    started_at: Some(t(9, 0)),
                    ended_at: Some(t(10, 30)),
                    time_limit_minutes: Some(120),
                },
                CostJob {
                    user: "a@x.org".into(),
                    job_id: 2,
                    rate: MicroUsd(1_000_000),
                    started_at: Some(t(10, 0)),
                    ended_at: None,
                    time_limit_minutes: Some(120),
                },
                CostJob {
                    user: "a@x.org".into(),
                    job_id: 3,
                    rate: MicroUsd(1_000_000),
                    started_at: Some(t(10, 0)),
                    ended_at: None,
                    time_limit_minutes: Some(120),
                },
            ];
            usage_by_user(&jobs, period, now)
                .get("a@x.org")
                .copied()
                .unwrap_or_default()
        };
        let day = Period::of(PeriodKind::Day, now);
        let month = Period::of(PeriodKind::Month, now);
        assert_eq!(open.usage(&key().0, "a@x.org", month, now), expected(month));
        assert_eq!(open.usage(&key().0, "a@x.org", day, now), expected(day));
        // A period that starts after job 1 ended: it no longer counts, and is dropped.
        let later = Period {
            start: t(10, 45),
            end: t(23, 0),
        };
        assert_eq!(open.usage(&key().0, "a@x.org", later, now), expected(later));
        assert_eq!(
            open.usage(&key().0, "b@x.org", month, now),
            Usage::default()
        );
    }

    #[test]
    fn a_job_ending_after_the_sum_was_kept_is_added_to_it() {
        let mut open = fold(&[
            ("s1", submitted(1, "a@x.org", None)),
            (
                "s1",
                changed(1, JobState::Pending, JobState::Running, t(9, 0)),
            ),
        ]);
        let month = Period::of(PeriodKind::Month, t(10, 0));
        let before = open.usage(&key().0, "a@x.org", month, t(10, 0));
        assert_eq!(before.running_jobs, 1);
        open.apply(
            "s1",
            0,
            3,
            t(10, 0),
            &changed(1, JobState::Running, JobState::Completed, t(10, 0)),
            &|_| MicroUsd::ZERO,
        );
        let after = open.usage(&key().0, "a@x.org", month, t(12, 0));
        assert_eq!(after.running_jobs, 0);
        assert_eq!(after.pending_bill, MicroUsd(1_000_000));
        assert_eq!(after.projected, MicroUsd(1_000_000));
        assert!(open.user_jobs(&key().0, "a@x.org").is_empty());
    }

    #[test]
    fn an_entry_follows_its_streams_version_whatever_the_event() {
        let mut open = OpenJobs::default();
        let price = |_: &JobShape| MicroUsd::ZERO;
        open.apply("s1", 2, 10, t(9, 0), &submitted(1, "a@x.org", None), &price);
        let version = |o: &OpenJobs| {
            o.cluster(&key())
                .and_then(|c| c.jobs.get(&1))
                .map(|e| e.version)
        };
        assert_eq!(version(&open), Some(2));
        // An event this fold does not interpret still moves the version.
        open.touch("s1", 3);
        assert_eq!(version(&open), Some(3));
        open.apply(
            "s1",
            4,
            11,
            t(9, 0),
            &changed(1, JobState::Pending, JobState::Running, t(10, 0)),
            &price,
        );
        assert_eq!(version(&open), Some(4));
        // Another stream's version is not this job's.
        open.touch("s2", 9);
        assert_eq!(version(&open), Some(4));
    }

    /// What the sizing walk (`pending_by_shape`, `sizing_others`) gives, in a stable order:
    /// (id, running, nodes, cpus).
    fn sized(open: &OpenJobs) -> Vec<(u64, bool, Option<String>, u32)> {
        let mut out = Vec::new();
        if let Some(c) = open.cluster(&key()) {
            c.sizing_others(&mut |id, e| out.push((id, true, e.node.clone(), e.shape.cpus)));
            for (shape, ids) in c.pending_by_shape() {
                out.extend(ids.iter().map(|id| (*id, false, None, shape.cpus)));
            }
        }
        out.sort();
        out
    }

    /// The same from the entries themselves: the unfinished ones.
    fn unfinished(open: &OpenJobs) -> Vec<(u64, bool, Option<String>, u32)> {
        let mut out: Vec<_> = open
            .cluster(&key())
            .map(|c| {
                c.jobs
                    .iter()
                    .filter(|(_, e)| !e.state.is_terminal())
                    .map(|(id, e)| {
                        let running = e.state != JobState::Pending;
                        (
                            *id,
                            running,
                            e.node.clone().filter(|_| running),
                            e.shape.cpus,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    #[test]
    fn the_sizing_walk_gives_exactly_the_unfinished_jobs_through_every_kind_of_change() {
        let shaped = |job_id: u64, cpus: u32| {
            let mut e = submitted(job_id, "a@x.org", None);
            if let DomainEvent::JobSubmitted(j) = &mut e {
                j.shape = shape(cpus);
            }
            e
        };
        let mut events = vec![
            ("s1", shaped(1, 2)),
            ("s2", shaped(2, 2)),
            ("s3", shaped(3, 4)),
            ("s4", shaped(4, 8)),
            ("s5", shaped(5, 4)),
            ("s6", shaped(6, 2)),
        ];
        let steps = [
            (
                "s1",
                changed(1, JobState::Pending, JobState::Running, t(10, 0)),
            ),
            (
                "s2",
                changed(2, JobState::Pending, JobState::Completed, t(10, 1)),
            ),
            (
                "s3",
                changed(3, JobState::Pending, JobState::Running, t(10, 2)),
            ),
            (
                "s3",
                changed(3, JobState::Running, JobState::NodeFail, t(10, 3)),
            ),
            (
                "s4",
                changed(4, JobState::Pending, JobState::Cancelled, t(10, 4)),
            ),
            (
                "s6",
                changed(6, JobState::Pending, JobState::Running, t(10, 5)),
            ),
            // Requeued: pending again, under its own shape.
            (
                "s6",
                changed(6, JobState::Running, JobState::Pending, t(10, 6)),
            ),
            // Slurm corrects the NODE_FAIL.
            (
                "s3",
                changed(3, JobState::NodeFail, JobState::Running, t(10, 7)),
            ),
        ];
        events.extend(steps);
        // Another stream submits under a Slurm id already held: it replaces the entry.
        events.push(("s7", shaped(5, 16)));
        for n in 1..=events.len() {
            let open = fold(&events[..n]);
            assert_eq!(sized(&open), unfinished(&open), "after {n} events");
        }
        let open = fold(&events);
        assert_eq!(
            sized(&open),
            vec![
                (1, true, Some("n1".into()), 2),
                (3, true, Some("n1".into()), 4),
                (5, false, None, 16),
                (6, false, None, 2),
            ]
        );
    }

    #[test]
    fn a_submission_is_unsettled_from_its_request_until_its_outcome() {
        let requested = |n: u128| {
            DomainEvent::JobSubmissionRequested(crate::JobSubmissionRequested {
                submission_id: uuid::Uuid::from_u128(n),
                workspace: key().0,
                cluster_id: key().1,
                user: Email::new("ada@example.org").unwrap_or_else(|_| unreachable!()),
                via: SubmittedVia::Api,
                name: format!("job{n}"),
                template_id: None,
                body_digest: "sha256:00".into(),
                shape: shape(2),
                rate: None,
            })
        };
        let failed = DomainEvent::JobSubmissionFailed(crate::JobSubmissionFailed {
            submission_id: uuid::Uuid::from_u128(8),
            workspace: key().0,
            cluster_id: key().1,
            reason: "Slurm refused it".into(),
        });
        let unsettled = |open: &OpenJobs| -> Vec<u128> {
            open.cluster(&key())
                .map(|c| c.submitting().map(|(id, _)| id.as_u128()).collect())
                .unwrap_or_default()
        };
        // Submission 7 gets its job (submitted(7) carries submission id 7), 8 fails, 9 is left
        // between its request and its outcome.
        let events = [
            ("job-a", requested(7)),
            ("job-b", requested(8)),
            ("job-c", requested(9)),
            ("job-a", submitted(7, "ada@example.org", None)),
            ("job-b", failed),
        ];
        for n in 0..=events.len() {
            let open = fold(&events[..n]);
            let want: Vec<u128> = match n {
                0 => vec![],
                1 => vec![7],
                2 => vec![7, 8],
                3 => vec![7, 8, 9],
                4 => vec![8, 9],
                _ => vec![9],
            };
            assert_eq!(unsettled(&open), want, "after {n} events");
        }
        // When the request was recorded comes with it.
        let open = fold(&events);
        let at: Vec<DateTime<Utc>> = open
            .cluster(&key())
            .map(|c| c.submitting().map(|(_, at)| at).collect())
            .unwrap_or_default();
        assert_eq!(at, vec![t(9, 0)]);
    }
}
