//! The Slurm port: what command handlers and the poll cycle need from a Slurm controller.
//! Adapters: the local executor (embedded default) and slurmrestd v0.0.44 (in `gateways`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use domain::efficiency::Usage;
use domain::job::JobState;

/// The prefix Clusterra stamps on every job's `comment`: `clusterra:<submission id> <submitter>`,
/// then the user's own comment if any, so a job Slurm accepted can always be matched to its
/// submission. The comment is only a lookup key: anyone who can submit to Slurm can write any
/// comment, so the poll cycle adopts a job only for a submission whose request the log recorded,
/// as that request's user (`commands::jobs::settle_submissions`); the email in the comment is for
/// people reading `squeue`, never trusted.
pub const COMMENT_PREFIX: &str = "clusterra:";

/// The comment Clusterra sends for a submission.
pub fn stamp_comment(submission: uuid::Uuid, user: &domain::Email, own: Option<&str>) -> String {
    match own.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("{COMMENT_PREFIX}{submission} {user} | {c}"),
        None => format!("{COMMENT_PREFIX}{submission} {user}"),
    }
}

/// A job as the controller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    pub job_id: u64,
    pub name: String,
    pub state: JobState,
    /// Slurm's reason (`Resources`, `Priority`, `None`, …).
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub node: Option<String>,
    /// When the controller accepted it, if it says.
    pub submit_time: Option<DateTime<Utc>>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub comment: Option<String>,
    /// What the job used, once it ended, as far as the controller measures it (the local
    /// executor: `wait4`'s rusage; slurmctld: nothing without accounting, said in the note).
    /// `None` while it runs.
    pub usage: Option<Usage>,
}

impl SlurmJob {
    /// The submission id stamped in the comment, if any.
    pub fn submission_id(&self) -> Option<uuid::Uuid> {
        let c = self.comment.as_deref()?.strip_prefix(COMMENT_PREFIX)?;
        uuid::Uuid::parse_str(c.split_whitespace().next()?).ok()
    }
}

/// Slurm accepted a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub job_id: u64,
    /// Slurm's own warnings (e.g. ignored fields).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlurmError {
    /// Slurm refused the job; the messages are Slurm's, made readable.
    #[error("Slurm refused the job: {}", .0.join("; "))]
    Rejected(Vec<String>),
    #[error("Slurm has no job {0}")]
    UnknownJob(u64),
    #[error("Slurm could not be reached: {0}")]
    Unavailable(String),
    /// The call was never made, so nothing reached Slurm: its breaker is open, or this server
    /// already has as many calls to it under way as it allows ([`Guarded`]).
    #[error("Slurm was not called: {0}")]
    NotCalled(String),
}

#[async_trait]
pub trait SlurmPort: Send + Sync + 'static {
    /// Submits a canonical v0.0.44 body (its `job.comment` already carries the submission id).
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError>;
    /// One job, or `None` only when the controller positively says it does not know the job
    /// (slurmrestd: error 2017, "Invalid job id specified"). Any answer that says less is an
    /// error, never `None`: reconcile declares a job vanished on `None`.
    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError>;
    /// Every job the controller knows. An answer that cannot be read is an error, never an
    /// empty list.
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError>;
    /// Asks the controller to cancel a job; `Ok` only when the controller accepted the request.
    /// Cancelling a finished job is not an error.
    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError>;
    /// How the calls to this controller have been going. A [`Guarded`] port counts them;
    /// ports that cannot fail to answer (the local executor) are always reachable.
    fn reachability(&self) -> Reachability {
        Reachability::Reachable
    }
    /// A number that moves whenever any job's state in this controller changes, for ports that
    /// can tell (the local executor); `None` when it cannot be known without asking (slurmrestd).
    /// The poll cycle skips reconciling a cluster whose jobs and log are both unchanged.
    fn jobs_version(&self) -> Option<u64> {
        None
    }
    /// The jobs whose state changed after `version` (a [`Self::jobs_version`] value), and the
    /// version they bring the caller to; `None` when the port cannot tell (slurmrestd lists
    /// everything: `update_time` is compared against the whole collection).
    async fn jobs_since(&self, _version: u64) -> Result<Option<JobsDelta>, SlurmError> {
        Ok(None)
    }
    /// Every job's id and state only, from a listing much cheaper than [`Self::jobs`] (slurmrestd:
    /// `GET /jobs/state/`, ~40 bytes a job where the full record is ~8 KiB), for ports that
    /// have one; `None` when the port has none (then reconcile lists every job in full). An
    /// answer that cannot be read is an error, never an empty list.
    async fn states(&self) -> Result<Option<Vec<StateReport>>, SlurmError> {
        Ok(None)
    }
    /// The ids and states of these jobs only (`ids` sorted, without repeats), where the port has
    /// such a listing; jobs the controller does not know are left out, as in [`Self::states`].
    /// `None` when the port has no listing of states. By default [`Self::states`], filtered:
    /// slurmrestd asks for the ids themselves (`GET /jobs/state/?job_id=…`), whose cost follows
    /// the jobs asked for, where a listing of the whole queue costs its controller far more than
    /// its share per job at site size (measured in docs/performance.md).
    async fn states_of(&self, ids: &[u64]) -> Result<Option<Vec<StateReport>>, SlurmError> {
        Ok(self.states().await?.map(|states| {
            states
                .into_iter()
                .filter(|r| ids.binary_search(&r.job_id).is_ok())
                .collect()
        }))
    }
}

/// One job in a listing of states ([`SlurmPort::states`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateReport {
    pub job_id: u64,
    /// `None` for a state Clusterra does not know: the job's full record is read to decide.
    pub state: Option<JobState>,
}

/// What changed in a controller since a version ([`SlurmPort::jobs_since`]).
#[derive(Debug, Clone)]
pub struct JobsDelta {
    pub version: u64,
    pub jobs: Vec<SlurmJob>,
}

/// Whether a cluster's Slurm answers, as the last calls made to it tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// The last call got an answer.
    Reachable,
    /// The last `failures` calls in a row got none; not yet enough to stop calling.
    Failing { failures: u32 },
    /// The breaker is open: calls fail at once, but for a probe now and then, until one gets
    /// an answer.
    Unreachable {
        /// When the first call of the failing run failed.
        since: DateTime<Utc>,
        /// Why the last call failed (no URL, no token).
        cause: String,
    },
}

impl Reachability {
    /// True when the last call got an answer.
    pub fn is_reachable(&self) -> bool {
        matches!(self, Reachability::Reachable)
    }
}

/// When the circuit breaker of a cluster's Slurm opens and how long it waits before a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Calls in a row that got no answer before the breaker opens (at least 1).
    pub failures: u32,
    /// The wait before the first probe; doubled after every failed probe, up to `max_backoff`.
    pub backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 3,
            backoff: std::time::Duration::from_secs(10),
            max_backoff: std::time::Duration::from_secs(160),
        }
    }
}

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: call.
    Call,
    /// Open, and the backoff is over: this one call probes; the others keep failing at once
    /// until it is answered (or until another backoff passes, should the probe never end).
    Probe,
    /// Open: fail at once; the next probe is due in this long.
    Refuse(std::time::Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
        since: Option<DateTime<Utc>>,
    },
    Open {
        until: std::time::Instant,
        backoff: std::time::Duration,
        since: DateTime<Utc>,
        cause: String,
    },
}

/// A per-cluster circuit breaker: after `failures` calls in a row got no answer, calls fail at
/// once for a backoff, then one probe is let through; an answer closes it, a failed probe
/// doubles the backoff. Pure: the caller passes the clocks.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed {
                failures: 0,
                since: None,
            },
        }
    }

    /// May a call be made at `now`?
    pub fn admit(&mut self, now: std::time::Instant) -> Admit {
        match &mut self.state {
            BreakerState::Closed { .. } => Admit::Call,
            BreakerState::Open { until, backoff, .. } => {
                if now < *until {
                    Admit::Refuse(*until - now)
                } else {
                    // The probe's own deadline: should it never come back, another one is
                    // let through after one more backoff.
                    *until = now + *backoff;
                    Admit::Probe
                }
            }
        }
    }

    /// Whether a call at `now` would be refused, and the wait until the next probe; changes
    /// nothing (a call that then waits for a place must not have taken the probe).
    pub fn refusing(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        match &self.state {
            BreakerState::Open { until, .. } if now < *until => Some(*until - now),
            _ => None,
        }
    }

    /// A call got an answer (any answer Slurm gave, a refusal included).
    pub fn answered(&mut self) {
        self.state = BreakerState::Closed {
            failures: 0,
            since: None,
        };
    }

    /// A call got no answer (`cause`): counted while closed; a failed probe doubles the
    /// backoff; calls that were already under way when the breaker opened change nothing.
    pub fn failed(
        &mut self,
        now: std::time::Instant,
        wall: DateTime<Utc>,
        cause: &str,
        probe: bool,
    ) {
        let settings = self.settings;
        match &mut self.state {
            BreakerState::Closed { failures, since } => {
                let failures = *failures + 1;
                let since = since.unwrap_or(wall);
                self.state = if failures >= settings.failures.max(1) {
                    BreakerState::Open {
                        until: now + settings.backoff,
                        backoff: settings.backoff,
                        since,
                        cause: cause.to_string(),
                    }
                } else {
                    BreakerState::Closed {
                        failures,
                        since: Some(since),
                    }
                };
            }
            BreakerState::Open {
                until,
                backoff,
                cause: last,
                ..
            } if probe => {
                *backoff = (*backoff * 2).min(settings.max_backoff.max(settings.backoff));
                *until = now + *backoff;
                *last = cause.to_string();
            }
            BreakerState::Open { .. } => {}
        }
    }

    pub fn reachability(&self) -> Reachability {
        match &self.state {
            BreakerState::Closed { failures: 0, .. } => Reachability::Reachable,
            BreakerState::Closed { failures, .. } => Reachability::Failing {
                failures: *failures,
            },
            BreakerState::Open { since, cause, .. } => Reachability::Unreachable {
                since: *since,
                cause: cause.clone(),
            },
        }
    }
}

/// Calls one server makes to one cluster's Slurm at once, unless configured otherwise
/// (`slurm_max_in_flight`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// How long a call waits for one of those places before it is refused, never sent.
pub const PLACE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A Slurm port behind a circuit breaker and a bound on calls under way: a cluster whose Slurm
/// stopped answering costs its callers nothing (they fail at once) until a probe gets an answer,
/// and however many requests come in (or hang up and leave their submissions running), at most
/// `max_in_flight` calls reach that Slurm at once; a call that finds no place within
/// [`PLACE_WAIT`] is refused as [`SlurmError::NotCalled`]. Only [`SlurmError::Unavailable`]
/// counts as no answer: a refusal is an answer, and a call not made is neither.
pub struct Guarded {
    inner: std::sync::Arc<dyn SlurmPort>,
    breaker: std::sync::Mutex<Breaker>,
    in_flight: tokio::sync::Semaphore,
    max_in_flight: usize,
}

impl Guarded {
    pub fn new(inner: std::sync::Arc<dyn SlurmPort>, settings: BreakerSettings) -> Self {
        Self {
            inner,
            breaker: std::sync::Mutex::new(Breaker::new(settings)),
            in_flight: tokio::sync::Semaphore::new(DEFAULT_MAX_IN_FLIGHT),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// At most `n` calls under way at once (at least 1).
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        let n = n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self.in_flight = tokio::sync::Semaphore::new(n);
        self.max_in_flight = n;
        self
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refusal of a call while the breaker is open.
    fn paused(&self, wait: std::time::Duration) -> SlurmError {
        let cause = match self.breaker().reachability() {
            Reachability::Unreachable { cause, .. } => cause,
            _ => String::new(),
        };
        SlurmError::NotCalled(format!(
            "Slurm has stopped answering ({cause}); calls are paused, the next try is in {:.1} s",
            wait.as_secs_f64()
        ))
    }

    async fn guard<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, SlurmError>>,
    ) -> Result<T, SlurmError> {
        // An open breaker refuses at once, without waiting for a place (calls to a hung Slurm
        // may hold every place until their timeout).
        // (Read into a local first: the guard must be dropped before `paused` locks it again.)
        let refusing = self.breaker().refusing(std::time::Instant::now());
        if let Some(wait) = refusing {
            return Err(self.paused(wait));
        }
        // Then a place, before the breaker is asked for leave to call, so a call that waits for
        // one does not hold the breaker's probe.
        let _place = match tokio::time::timeout(PLACE_WAIT, self.in_flight.acquire()).await {
            Ok(Ok(place)) => place,
            // (The semaphore is never closed; a closed one would refuse alike.)
            _ => {
                return Err(SlurmError::NotCalled(format!(
                    "this server already has {} calls to this Slurm under way (slurm_max_in_flight) and none ended within {} ms; nothing was sent, retry shortly",
                    self.max_in_flight,
                    PLACE_WAIT.as_millis()
                )));
            }
        };
        // (The guard is dropped here, before any arm locks it again.)
        let admit = self.breaker().admit(std::time::Instant::now());
        let probe = match admit {
            Admit::Call => false,
            Admit::Probe => true,
            Admit::Refuse(wait) => return Err(self.paused(wait)),
        };
        let out = call.await;
        match &out {
            Err(SlurmError::Unavailable(cause)) => {
                self.breaker()
                    .failed(std::time::Instant::now(), Utc::now(), cause, probe)
            }
            // (Only a port that guards calls itself says so; it answered nothing.)
            Err(SlurmError::NotCalled(_)) => {}
            _ => self.breaker().answered(),
        }
        out
    }
}

#[async_trait]
impl SlurmPort for Guarded {
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError> {
        self.guard(self.inner.submit(body)).await
    }
    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        self.guard(self.inner.job(job_id)).await
    }
    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        self.guard(self.inner.jobs()).await
    }
    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        self.guard(self.inner.cancel(job_id)).await
    }
    fn reachability(&self) -> Reachability {
        self.breaker().reachability()
    }
    fn jobs_version(&self) -> Option<u64> {
        self.inner.jobs_version()
    }
    async fn jobs_since(&self, version: u64) -> Result<Option<JobsDelta>, SlurmError> {
        self.guard(self.inner.jobs_since(version)).await
    }
    async fn states(&self) -> Result<Option<Vec<StateReport>>, SlurmError> {
        self.guard(self.inner.states()).await
    }
    async fn states_of(&self, ids: &[u64]) -> Result<Option<Vec<StateReport>>, SlurmError> {
        self.guard(self.inner.states_of(ids)).await
    }
}

/// Which Slurm serves which cluster.
pub trait SlurmDirectory: Send + Sync + 'static {
    fn get(
        &self,
        workspace: &domain::WorkspaceId,
        cluster: &domain::ClusterId,
    ) -> Option<std::sync::Arc<dyn SlurmPort>>;
}

/// A directory that grows while the server runs: clusters are connected as they are registered.
#[derive(Default)]
pub struct LiveDirectory {
    entries: std::sync::RwLock<
        std::collections::HashMap<
            (domain::WorkspaceId, domain::ClusterId),
            std::sync::Arc<dyn SlurmPort>,
        >,
    >,
}

impl LiveDirectory {
    pub fn insert(
        &self,
        workspace: domain::WorkspaceId,
        cluster: domain::ClusterId,
        port: std::sync::Arc<dyn SlurmPort>,
    ) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((workspace, cluster), port);
    }

    pub fn contains(&self, workspace: &domain::WorkspaceId, cluster: &domain::ClusterId) -> bool {
        self.get(workspace, cluster).is_some()
    }

    /// Every connected cluster.
    pub fn snapshot(
        &self,
    ) -> Vec<(
        (domain::WorkspaceId, domain::ClusterId),
        std::sync::Arc<dyn SlurmPort>,
    )> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl SlurmDirectory for LiveDirectory {
    fn get(
        &self,
        workspace: &domain::WorkspaceId,
        cluster: &domain::ClusterId,
    ) -> Option<std::sync::Arc<dyn SlurmPort>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(workspace.clone(), cluster.clone()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(25),
        }
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_probes_after_the_backoff() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut b = Breaker::new(settings());
        assert_eq!(b.admit(t0), Admit::Call);
        b.failed(t0, wall, "timed out", false);
        b.failed(t0, wall, "timed out", false);
        // An answer in between starts the count again.
        b.answered();
        assert_eq!(b.reachability(), Reachability::Reachable);
        b.failed(t0, wall, "timed out", false);
        b.failed(t0, wall + chrono::Duration::seconds(1), "timed out", false);
        assert_eq!(b.reachability(), Reachability::Failing { failures: 2 });
        assert_eq!(b.admit(t0), Admit::Call, "still closed");
        b.failed(t0, wall + chrono::Duration::seconds(2), "refused", false);
        assert_eq!(
            b.reachability(),
            Reachability::Unreachable {
                since: wall,
                cause: "refused".into()
            },
            "open, since the first failure of the run"
        );
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admit::Refuse(Duration::from_secs(6))
        );
        // A call that was under way when it opened changes nothing.
        b.failed(t0 + Duration::from_secs(4), wall, "late", false);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(9)),
            Admit::Refuse(Duration::from_secs(1))
        );

        // The backoff is over: one probe, the others still refused while it is out.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert!(matches!(b.admit(t1), Admit::Refuse(_)));
        // It failed: the backoff doubles (20 s), then is capped (25 s).
        b.failed(t1, wall, "timed out", true);
        assert_eq!(
            b.admit(t1 + Duration::from_secs(19)),
            Admit::Refuse(Duration::from_secs(1))
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(b.admit(t2), Admit::Probe);
        b.failed(t2, wall, "timed out", true);
        assert_eq!(
            b.admit(t2 + Duration::from_secs(24)),
            Admit::Refuse(Duration::from_secs(1))
        );
        let t3 = t2 + Duration::from_secs(25);
        // A probe that never comes back: another one after one more backoff.
        assert_eq!(b.admit(t3), Admit::Probe);
        assert_eq!(b.admit(t3 + Duration::from_secs(25)), Admit::Probe);
        // An answer closes it.
        b.answered();
        assert_eq!(b.admit(t3 + Duration::from_secs(26)), Admit::Call);
        assert_eq!(b.reachability(), Reachability::Reachable);
    }

    struct Dead;

    #[async_trait]
    impl SlurmPort for Dead {
        async fn submit(&self, _: &serde_json::Value) -> Result<Accepted, SlurmError> {
            Err(SlurmError::Rejected(vec!["no".into()]))
        }
        async fn job(&self, _: u64) -> Result<Option<SlurmJob>, SlurmError> {
            Err(SlurmError::Unavailable("did not answer".into()))
        }
        async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
            Err(SlurmError::Unavailable("did not answer".into()))
        }
        async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
            Err(SlurmError::UnknownJob(job_id))
        }
    }

    #[tokio::test]
    async fn a_guarded_port_counts_no_answers_not_refusals() {
        let port = Guarded::new(
            std::sync::Arc::new(Dead),
            BreakerSettings {
                failures: 2,
                ..settings()
            },
        );
        assert!(port.submit(&serde_json::json!({})).await.is_err());
        assert!(port.cancel(1).await.is_err());
        assert_eq!(
            port.reachability(),
            Reachability::Reachable,
            "refusals are answers"
        );
        assert!(port.jobs().await.is_err());
        assert_eq!(port.reachability(), Reachability::Failing { failures: 1 });
        assert!(port.job(1).await.is_err());
        assert!(matches!(
            port.reachability(),
            Reachability::Unreachable { .. }
        ));
        // Open: refused at once, without calling.
        match port.jobs().await {
            Err(SlurmError::NotCalled(m)) => assert!(m.contains("paused"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// A Slurm that takes its time to accept a job.
    struct Slow(Duration);

    #[async_trait]
    impl SlurmPort for Slow {
        async fn submit(&self, _: &serde_json::Value) -> Result<Accepted, SlurmError> {
            tokio::time::sleep(self.0).await;
            Ok(Accepted {
                job_id: 7,
                warnings: Vec::new(),
            })
        }
        async fn job(&self, _: u64) -> Result<Option<SlurmJob>, SlurmError> {
            Ok(None)
        }
        async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
            Ok(Vec::new())
        }
        async fn cancel(&self, _: u64) -> Result<(), SlurmError> {
            Ok(())
        }
    }

    /// A guarded port with one place (its breaker opening at one failure) in front of a Slurm
    /// that takes `slow` to accept a job, and a submit that holds that place.
    async fn one_place_held(
        slow: Duration,
    ) -> (
        std::sync::Arc<Guarded>,
        tokio::task::JoinHandle<Result<Accepted, SlurmError>>,
    ) {
        let port = std::sync::Arc::new(
            Guarded::new(
                std::sync::Arc::new(Slow(slow)),
                BreakerSettings {
                    failures: 1,
                    ..settings()
                },
            )
            .with_max_in_flight(1),
        );
        let holder = tokio::spawn({
            let port = port.clone();
            async move { port.submit(&serde_json::json!({})).await }
        });
        while port.in_flight.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (port, holder)
    }

    #[tokio::test]
    async fn a_guarded_port_makes_at_most_its_calls_at_once_and_refuses_the_rest_unsent() {
        let (port, first) = one_place_held(PLACE_WAIT + Duration::from_millis(600)).await;
        let started = Instant::now();
        match port.submit(&serde_json::json!({})).await {
            Err(SlurmError::NotCalled(m)) => assert!(m.contains("1 calls"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= PLACE_WAIT, "it waited for a place");
        // A call not made is no failure of Slurm's: the breaker (opening at one) stays closed.
        assert_eq!(port.reachability(), Reachability::Reachable);
        assert_eq!(first.await.unwrap().unwrap().job_id, 7);
        // The place is free again.
        assert_eq!(port.submit(&serde_json::json!({})).await.unwrap().job_id, 7);
    }

    #[tokio::test]
    async fn an_open_breaker_refuses_at_once_even_when_every_place_is_taken() {
        // A call to a hung Slurm holds the only place; the breaker opens meanwhile (as when
        // other calls timed out).
        let (port, hung) = one_place_held(Duration::from_secs(3)).await;
        port.breaker()
            .failed(Instant::now(), Utc::now(), "timed out", false);
        let started = Instant::now();
        match port.submit(&serde_json::json!({})).await {
            Err(SlurmError::NotCalled(m)) => assert!(m.contains("paused"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < PLACE_WAIT / 2,
            "refused at once, not after waiting for a place: {:?}",
            started.elapsed()
        );
        hung.abort();
    }
}
