//! `costs`: what each user's jobs cost, kept per user so that a profile, a usage series or a
//! workspace's usage reads a few documents, not every job of the workspace.
//!
//! Per workspace, a user's started jobs that have not ended are in `running:<ws>` (keyed by
//! email), and the jobs that ended in a UTC month in `ended:<ws>:<YYYY-MM>` (keyed by email).
//! Each job's own entry (`by-stream`, keyed by its stream) remembers where it is, so a state
//! change moves it: started → running; ended → its month; a NODE_FAIL that Slurm corrects back to
//! running. Jobs that never started cost nothing and stay in their own entry only. Prices are not
//! stored: a job keeps its shape and the rate recorded at submission, and is priced when read
//! (`domain::cost::Pricing::job`), exactly as the jobs view is.
//!
//! A job is filed under the month of its end (Slurm's end time when it says one). Reads take the
//! months from the first instant asked about to the month after now's, so an end Slurm's clock
//! dates a little ahead of the server's is still read; an end dated more than a month ahead is not.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use domain::cost::{CostJob, PricedJob, Pricing};
use domain::job::times_after;
use domain::submit::JobShape;
use domain::{ClusterId, DomainEvent, Email, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::{Applied, Event, Projector, Reads, ViewTx};

pub const NAME: &str = "costs";

/// The projector; its documents and checkpoint are kept under [`NAME`].
pub struct CostViews;

const BY_STREAM: &str = "by-stream";

fn running_collection(workspace: &WorkspaceId) -> String {
    format!("running:{workspace}")
}

fn ended_collection(workspace: &WorkspaceId, month: &str) -> String {
    format!("ended:{workspace}:{month}")
}

fn month_of(at: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", at.year(), at.month())
}

/// One job as cost reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostedJob {
    pub job_id: u64,
    pub shape: JobShape,
    /// The hourly rate recorded at submission (`None` for jobs recorded before cost existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<domain::MicroUsd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// What it used, once it ended and its executor said (`JobUsageRecorded`): what a user's
    /// efficiency summary reads, month by month, beside the cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<domain::efficiency::Usage>,
}

/// A user's jobs in one place (running, or ended in one month), keyed `<cluster>/<job id>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserJobs {
    pub jobs: BTreeMap<String, CostedJob>,
}

/// A job's own entry: whose it is and where its costed copy is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    workspace: WorkspaceId,
    cluster_id: ClusterId,
    user: Email,
    job: CostedJob,
    /// The month it is filed under while ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_in: Option<String>,
}

impl Entry {
    fn key(&self) -> String {
        format!("{}/{}", self.cluster_id, self.job.job_id)
    }

    /// The collection its costed copy is in, if it started.
    fn place(&self) -> Option<String> {
        self.job.started_at?;
        Some(match &self.ended_in {
            Some(month) => ended_collection(&self.workspace, month),
            None => running_collection(&self.workspace),
        })
    }
}

#[async_trait]
impl Projector for CostViews {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads(&self, event_type: &str) -> Reads {
        Reads::decoded_if(matches!(
            event_type,
            "JobSubmitted" | "JobStateChanged" | "JobUsageRecorded"
        ))
    }

    async fn apply(&self, view: &mut ViewTx<'_>, event: Event<'_>) -> Applied {
        let stream = &event.recorded.stream_id;
        let recorded_at = event.recorded.recorded_at;
        match event.domain {
            Some(DomainEvent::JobSubmitted(j)) => {
                let entry = Entry {
                    workspace: j.workspace,
                    cluster_id: j.cluster_id,
                    user: j.user,
                    job: CostedJob {
                        job_id: j.job_id,
                        shape: j.shape,
                        rate: j.rate,
                        started_at: None,
                        ended_at: None,
                        usage: None,
                    },
                    ended_in: None,
                };
                view.put(BY_STREAM, stream, &entry)
            }
            Some(DomainEvent::JobStateChanged(c)) => {
                let Some(mut entry) = view.get::<Entry>(BY_STREAM, stream).await? else {
                    return Ok(());
                };
                let before = entry.place();
                (entry.job.started_at, entry.job.ended_at) =
                    times_after(entry.job.started_at, &c, recorded_at);
                entry.ended_in = entry.job.ended_at.map(month_of);
                let (key, after) = (entry.key(), entry.place());
                let user = entry.user.as_str();
                // Moved (started, ended, or ended no more): out of where it was.
                if let Some(from) = before.filter(|b| after.as_ref() != Some(b)) {
                    let mut jobs: UserJobs = view.get(&from, user).await?.unwrap_or_default();
                    jobs.jobs.remove(&key);
                    put_or_delete(view, &from, user, &jobs)?;
                }
                if let Some(to) = after {
                    let mut jobs: UserJobs = view.get(&to, user).await?.unwrap_or_default();
                    jobs.jobs.insert(key, entry.job.clone());
                    view.put(&to, user, &jobs)?;
                }
                view.put(BY_STREAM, stream, &entry)
            }
            Some(DomainEvent::JobUsageRecorded(u)) => {
                let Some(mut entry) = view.get::<Entry>(BY_STREAM, stream).await? else {
                    return Ok(());
                };
                entry.job.usage = Some(u.usage);
                if let Some(place) = entry.place() {
                    let user = entry.user.as_str();
                    let mut jobs: UserJobs = view.get(&place, user).await?.unwrap_or_default();
                    jobs.jobs.insert(entry.key(), entry.job.clone());
                    view.put(&place, user, &jobs)?;
                }
                view.put(BY_STREAM, stream, &entry)
            }
            _ => Ok(()),
        }
    }
}

fn put_or_delete(view: &mut ViewTx<'_>, collection: &str, key: &str, jobs: &UserJobs) -> Applied {
    if jobs.jobs.is_empty() {
        view.delete(collection, key);
        Ok(())
    } else {
        view.put(collection, key, jobs)
    }
}

/// The months from `from`'s to the one after `now`'s, as `YYYY-MM` (at most 1,200: a century).
fn months(from: DateTime<Utc>, now: DateTime<Utc>) -> Vec<String> {
    let (mut y, mut m) = (from.year(), from.month());
    let last = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let mut out = Vec::new();
    while (y, m) <= last && out.len() < 1_200 {
        out.push(format!("{y:04}-{m:02}"));
        (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    }
    out
}

/// Where the jobs that cost something from `since` to `now` are: the running jobs, then the
/// month collections.
fn places(workspace: &WorkspaceId, since: DateTime<Utc>, now: DateTime<Utc>) -> Vec<String> {
    let ended = months(since, now);
    let ended = ended.iter().map(|m| ended_collection(workspace, m));
    std::iter::once(running_collection(workspace))
        .chain(ended)
        .collect()
}

fn priced(user: &str, jobs: UserJobs, pricing: &Pricing, out: &mut Vec<CostJob>) {
    out.extend(jobs.jobs.values().filter_map(|j| {
        pricing.job(PricedJob {
            user,
            job_id: j.job_id,
            shape: &j.shape,
            started_at: j.started_at,
            ended_at: j.ended_at,
            recorded_rate: j.rate,
        })
    }));
}

/// The jobs that cost something from `since` to `now`, priced: `user`'s, or every user's of the
/// workspace with `None` — the running ones and those that ended from `since`'s month on. Reads
/// one document (one collection for every user) per month.
pub async fn priced_jobs(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    user: Option<&Email>,
    (since, now): (DateTime<Utc>, DateTime<Utc>),
    pricing: &Pricing,
) -> Result<Vec<CostJob>, super::ViewError> {
    let mut out = Vec::new();
    for place in places(workspace, since, now) {
        match user {
            Some(user) => {
                if let Some(jobs) = super::live(read, NAME, &place, user.as_str()).await? {
                    priced(user.as_str(), jobs, pricing, &mut out);
                }
            }
            None => {
                for row in eventlog::list_all(read, eventlog::ModelSet::Live, NAME, &place).await? {
                    let jobs = super::decode(NAME, &row.key, &row.doc)?;
                    priced(&row.key, jobs, pricing, &mut out);
                }
            }
        }
    }
    Ok(out)
}

/// One ended job of [`ended_between`].
#[derive(Debug, Clone)]
pub struct EndedJob {
    pub user: String,
    /// `<cluster>/<job id>`.
    pub key: String,
    pub job: CostedJob,
}

/// Hands `visit` each job that ended in `[from, to)`: `user`'s, or every user's of the
/// workspace with `None`, in month, user and job order, one month's documents at a time (a
/// year of a workspace's jobs is never held at once). Reads the month collections from
/// `from`'s to `to`'s (one document per month for one user).
pub async fn ended_between(
    read: &dyn eventlog::ReadStore,
    workspace: &WorkspaceId,
    user: Option<&Email>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    mut visit: impl FnMut(EndedJob),
) -> Result<(), super::ViewError> {
    let within = |j: &CostedJob| j.ended_at.is_some_and(|e| e >= from && e < to);
    let mut take = |user: &str, jobs: UserJobs| {
        for (key, job) in jobs.jobs.into_iter().filter(|(_, j)| within(j)) {
            visit(EndedJob {
                user: user.to_string(),
                key,
                job,
            });
        }
    };
    for month in months(from, to) {
        let place = ended_collection(workspace, &month);
        match user {
            Some(user) => {
                if let Some(jobs) = super::live(read, NAME, &place, user.as_str()).await? {
                    take(user.as_str(), jobs);
                }
            }
            None => {
                for row in eventlog::list_all(read, eventlog::ModelSet::Live, NAME, &place).await? {
                    let jobs = super::decode(NAME, &row.key, &row.doc)?;
                    take(&row.key, jobs);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn months_run_from_the_first_to_the_last_inclusive() {
        let at = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
        assert_eq!(
            months(at(2026, 11, 30), at(2027, 1, 1)),
            ["2026-11", "2026-12", "2027-01", "2027-02"]
        );
        assert_eq!(
            months(at(2026, 12, 2), at(2026, 12, 29)),
            ["2026-12", "2027-01"]
        );
        assert!(months(at(2027, 3, 1), at(2026, 1, 1)).is_empty());
    }
}
