//! The poll cycle's view of the jobs ([`domain::open::OpenJobs`]), kept in memory and read on
//! from the log: each cycle reads only the events appended since the last one, so its work
//! follows what changed, not the size of the queue. Built from the log's start when the process
//! first leads (one read of the history; measured in docs/performance.md).

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use domain::cost::{Period, Usage};
use domain::open::{ClusterKey, OpenJobs, UserJob};
use domain::submit::JobShape;
use domain::{DomainEvent, MicroUsd, WorkspaceId};
use eventlog::{EventLog, LogError};

use crate::jobs::OpenJob;
use crate::scaling::{ScalingJob, Sizing};

/// Events read per call to the log while catching up.
const BATCH: usize = 2_000;

/// Events applied under one hold of the index's lock, between which the catch-up yields to the
/// runtime. Under `bench/submit-vs-slurm.sh` at 16 connections the poll cycle folded ~12,000
/// events a second in ~200 ms (~16 µs each: a `JobSubmitted` decodes its whole job body), so a
/// whole batch at once held a tokio worker ~30 ms, and requests queued on that worker waited
/// behind it. (Clusterra's p99 there, 11-22 ms against a p50 of 3 ms, was as spread after this
/// as before: it was not the only stall.)
const APPLY_CHUNK: usize = 128;

/// The open-job index of this process.
#[derive(Default)]
pub struct Tracker {
    fold: Mutex<OpenJobs>,
}

/// What a catch-up read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    /// Events read.
    pub events: usize,
    /// Job events that did not decode (skipped with a warning; the projections report them).
    pub unreadable: usize,
    /// The log position now applied.
    pub position: i64,
}

/// Where one cluster's open jobs stand as a pass starts.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub generation: u64,
    /// Jobs that entered since the last snapshot.
    pub added: Vec<u64>,
    /// Open jobs that entered or changed since the last snapshot.
    pub changed: Vec<u64>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenJobs> {
        self.fold.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` over a cluster's jobs; nothing when the index holds none of that cluster.
    fn of_cluster<T>(
        &self,
        key: &ClusterKey,
        f: impl FnOnce(&domain::open::ClusterJobs) -> Vec<T>,
    ) -> Vec<T> {
        self.lock().cluster(key).map(f).unwrap_or_default()
    }

    /// The last log position applied.
    pub fn position(&self) -> i64 {
        self.lock().position()
    }

    /// Applies every event appended since the last call. `price` rates shapes of jobs whose
    /// submission recorded no rate. A read error leaves what was applied so far, and the next
    /// call goes on from there.
    pub async fn catch_up(
        &self,
        log: &dyn EventLog,
        price: &(dyn Fn(&JobShape) -> MicroUsd + Sync),
    ) -> Result<CaughtUp, LogError> {
        let mut done = CaughtUp::default();
        loop {
            let after = self.position();
            let batch = log.read_all(after, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            done.events += batch.len();
            for chunk in batch.chunks(APPLY_CHUNK) {
                self.apply_chunk(chunk, price, &mut done);
                tokio::task::yield_now().await;
            }
            if batch.len() < BATCH {
                break;
            }
        }
        done.position = self.position();
        Ok(done)
    }

    /// Applies `chunk` (in log order, right after the last position applied) and advances to
    /// its end, under one hold of the lock.
    fn apply_chunk(
        &self,
        chunk: &[eventlog::RecordedEvent],
        price: &(dyn Fn(&JobShape) -> MicroUsd + Sync),
        done: &mut CaughtUp,
    ) {
        let Some(last) = chunk.last().map(|e| e.position) else {
            return;
        };
        let mut state = self.lock();
        for e in chunk {
            if !matches!(
                e.event_type.as_str(),
                "JobSubmitted"
                    | "JobStateChanged"
                    | "JobCancelRequested"
                    | "JobSubmissionRequested"
                    | "JobSubmissionFailed"
            ) {
                // Any other event on a job's stream still moves its version.
                if e.stream_id.starts_with("job-") {
                    state.touch(&e.stream_id, e.stream_version);
                }
                continue;
            }
            // The index reads no job body: skipping it halves the decode of a `JobSubmitted`.
            match DomainEvent::decode_without_bodies(&e.event_type, e.schema_version, &e.data) {
                Ok(Some(event)) => state.apply(
                    &e.stream_id,
                    e.stream_version,
                    e.position,
                    e.recorded_at,
                    &event,
                    price,
                ),
                Ok(None) => {}
                Err(err) => {
                    done.unreadable += 1;
                    tracing::warn!(position = e.position, event_type = %e.event_type, error = %err, "open-job index: unreadable job event skipped");
                }
            }
        }
        state.advance(last);
    }

    /// A cluster's generation and the jobs new since last time.
    pub fn snapshot(&self, key: &ClusterKey) -> ClusterSnapshot {
        let mut state = self.lock();
        let added = state.take_added(key);
        let changed = state.take_changed(key);
        ClusterSnapshot {
            generation: state.cluster(key).map_or(0, |c| c.generation),
            added,
            changed,
        }
    }

    /// A cluster's open jobs, for reconcile.
    pub fn open(&self, key: &ClusterKey) -> Vec<OpenJob> {
        self.of_cluster(key, |c| {
            c.jobs.iter().map(|(id, e)| open_job(*id, e)).collect()
        })
    }

    /// Some of a cluster's open jobs, by id (those still open), for reconcile.
    pub fn open_of(&self, key: &ClusterKey, jobs: impl IntoIterator<Item = u64>) -> Vec<OpenJob> {
        self.of_cluster(key, |c| {
            jobs.into_iter()
                .filter_map(|id| c.jobs.get(&id).map(|e| open_job(id, e)))
                .collect()
        })
    }

    /// Puts jobs back among the new ones of a cluster (a check on them could not be finished).
    pub fn readd(&self, key: &ClusterKey, jobs: Vec<u64>) {
        self.lock().readd(key, jobs);
    }

    /// Calls `each` with every job of a cluster the scaler sizes nodes for: unfinished ones
    /// (NODE_FAIL left out). No list is made (at 100,000 jobs building one cost more than the
    /// placement); the index is held while it runs.
    pub fn sizing(&self, key: &ClusterKey, each: &mut dyn FnMut(&dyn Sizing)) {
        let state = self.lock();
        let Some(c) = state.cluster(key) else { return };
        each(&IndexSizing(c));
    }

    /// A cluster's submissions whose request is recorded and whose outcome is not, with when
    /// each request was recorded.
    pub fn submitting(&self, key: &ClusterKey) -> Vec<(uuid::Uuid, DateTime<Utc>)> {
        self.of_cluster(key, |c| c.submitting().collect())
    }

    /// Shapes of some of a cluster's open jobs, by id (those still unfinished).
    pub fn shapes(&self, key: &ClusterKey, jobs: &[u64]) -> Vec<(OpenJob, JobShape)> {
        self.of_cluster(key, |c| {
            jobs.iter()
                .filter_map(|id| {
                    let e = c.jobs.get(id)?;
                    (!e.state.is_terminal()).then_some((open_job(*id, e), e.shape))
                })
                .collect()
        })
    }

    /// The billing period now: ended jobs that can no longer count in it are forgotten when it
    /// changes (and not kept from then on), so memory holds one period's ended jobs. Call it
    /// before the first catch-up.
    pub fn set_period(&self, period: Period) {
        self.lock().forget_ended_before(period.start);
    }

    /// A user's money in `period` at `now`, and their unfinished jobs.
    pub fn user(
        &self,
        workspace: &WorkspaceId,
        user: &str,
        period: Period,
        now: DateTime<Utc>,
    ) -> (Usage, Vec<UserJob>) {
        let mut state = self.lock();
        let usage = state.usage(workspace, user, period, now);
        (usage, state.user_jobs(workspace, user))
    }
}

/// A cluster's jobs in the index, as placement reads them.
struct IndexSizing<'a>(&'a domain::open::ClusterJobs);

impl Sizing for IndexSizing<'_> {
    fn pending(&self, each: &mut dyn FnMut(&JobShape, &mut dyn ExactSizeIterator<Item = u64>)) {
        for (shape, ids) in self.0.pending_by_shape() {
            each(shape, &mut ids.iter().copied());
        }
    }

    fn others(&self, each: &mut dyn FnMut(&ScalingJob)) {
        self.0.sizing_others(&mut |job_id, e| {
            each(&ScalingJob {
                job_id,
                running: true,
                shape: e.shape,
                nodes: e.node.clone(),
            })
        });
    }
}

/// What reconcile needs of an entry.
fn open_job(job_id: u64, e: &domain::open::OpenEntry) -> OpenJob {
    OpenJob {
        submission_id: e.submission_id,
        job_id,
        state: e.state,
        cancel_requested: e.cancel_requested,
        version: Some(e.version),
    }
}
