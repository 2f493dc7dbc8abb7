//! The poll cycle: every interval, for each connected cluster, reconcile its job states from
//! Slurm into the log, make its scaling decisions (commands::scaling) and copy its desired counts
//! to the replica store; and enforce quotas. Only the leader runs it (gateways::leader).
//!
//! One cluster never holds up another: each cluster's pass is its own task, every call to a
//! slurmrestd has a timeout (`slurm_call_timeout_ms`), and each cluster's Slurm sits behind a
//! circuit breaker (commands::slurm::Guarded) that stops calling it after
//! `slurm_breaker_failures` calls in a row got no answer, probing again after a backoff. A cycle
//! waits for its passes at most one interval; a pass still running then goes on in the
//! background and that cluster is skipped until it ends. The quota pass is a task of its own
//! too. When a breaker opens or closes the pass records it once (`SlurmReachabilityChanged`), and
//! the jobs routes show that cluster's unfinished jobs as waiting for Slurm.
//!
//! The edge agent of the local executor runs beside it in every process ([`agent`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commands::fleet::EdgeAgent;
use commands::open::Tracker;
use commands::quota::RunningJob;
use commands::replicas::ReplicaStore;
use domain::cost::{Period, Pricing, QuotaStatus};

use commands::jobs::{Unsettled, reconcile_listed, reconcile_timed, settle_submissions};
use commands::scaling::Scaler;
use commands::slurm::{BreakerSettings, LiveDirectory, Reachability, SlurmPort};
use eventlog::{ModelSet, Store};
use projections::views::clusters::ClusterView;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How the server talks to registered clusters' slurmrestd.
#[derive(Debug, Clone, Copy)]
pub struct SlurmCalls {
    /// One call's limit, connection included.
    pub timeout: Duration,
    pub breaker: BreakerSettings,
    /// Calls to one cluster's Slurm under way at once.
    pub max_in_flight: usize,
}

/// What the poll cycle works with.
pub struct Poller {
    pub store: Store,
    pub directory: Arc<LiveDirectory>,
    pub tokens_dir: std::path::PathBuf,
    pub every: Duration,
    pub scaler: Arc<Scaler>,
    pub replicas: Arc<dyn ReplicaStore>,
    pub leadership: gateways::leader::Leadership,
    /// Whether this process leads now (shown by /readyz).
    pub leading: Arc<AtomicBool>,
    pub pricing: Pricing,
    pub billing_period: domain::cost::PeriodKind,
    pub slurm: SlurmCalls,
    /// Each cluster's job limits: open jobs over them are failed, not planned.
    pub limits: commands::jobs::ClusterLimits,
    /// Where each cycle's duration is reported.
    pub metrics: Arc<api::Metrics>,
}

type Key = (domain::WorkspaceId, domain::ClusterId);

/// A reconcile pass that left nothing but named jobs to look at again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clean {
    slurm_version: u64,
    generation: u64,
    recheck: Vec<u64>,
}

/// What every cluster pass shares.
struct Shared {
    store: Store,
    scaler: Arc<Scaler>,
    replicas: Arc<dyn ReplicaStore>,
    limits: commands::jobs::ClusterLimits,
    /// Each cluster's reachability as last recorded in the log (seeded from the projection).
    recorded: Mutex<HashMap<Key, bool>>,
    /// The jobs as the cycle needs them, read on from the log each cycle.
    tracker: Arc<Tracker>,
    /// Per cluster, what the last clean reconcile saw (Slurm's jobs version, the index's
    /// generation) and the jobs it left to compare again. While both stand and none is left,
    /// reconcile would find nothing and is skipped.
    reconciled: Mutex<HashMap<Key, Clean>>,
    /// Per cluster whose port cannot tell what changed (slurmrestd): when its last listing of
    /// states started and how long it took ([`listing_due`]).
    listed: Mutex<HashMap<Key, Listed>>,
}

/// A listing of a cluster's open jobs' states: when it started, how long Slurm took to answer (or
/// to fail), whether it answered, and how many listings in a row (this one included) did not.
#[derive(Debug, Clone, Copy)]
struct Listed {
    at: std::time::Instant,
    took: Duration,
    answered: bool,
    failed_in_a_row: u32,
}

/// A listing of states costs Slurm time in proportion to the jobs listed (the poll cycle names
/// its open jobs, [`commands::slurm::SlurmPort::states_of`]; a listing of a whole queue of
/// 20,000 jobs took ~0.2 s of slurmrestd's): it is made at most once per this many times its own
/// last duration, so the poll cycle takes at most about 1/20 of slurmrestd's time whatever the
/// queue holds. A short listing (under 1/20 of the poll interval) is made every cycle.
const LISTING_SHARE: u32 = 20;

/// However long answered listings take, one is made at least this often. A listing of ~20,000
/// jobs took slurmrestd 2-4.5 s while it was saturated with submits (`bench/keyed-vs-slurm.sh`):
/// with 10 s here, as before, that was a fifth to nearly half of its time, and the submits it
/// served meanwhile fell to half their rate. A minute keeps the 1/20 share for listings of up to
/// 3 s; state changes then reach the log up to a minute late on such a Slurm, with Slurm's own
/// times (a job's cost follows those, not when it was seen).
const LISTING_EVERY_MAX: Duration = Duration::from_secs(60);

/// After a listing that got no answer, the next is made at most this long after it: the breaker
/// counts calls that failed, so a Slurm that stopped answering is found unreachable within a few
/// of these, not minutes. From the third failed listing in a row while the breaker stays closed
/// (an open breaker spaces the calls itself, and starts the count again) this doubles, up to
/// [`LISTING_EVERY_MAX`]: a Slurm that answers its other calls (so its breaker stays closed) but
/// is too busy to answer a listing within the call's timeout (measured when the listing
/// was of the whole queue: ~35,000 jobs on a saturated Slurm, `bench/keyed-vs-slurm.sh`) is not asked again every ~15 s for a listing it
/// spends the whole timeout on and never delivers.
const RETRY_LISTING_MAX: Duration = Duration::from_secs(10);

/// The longest pause after `failed_in_a_row` listings without an answer (see
/// [`RETRY_LISTING_MAX`]).
fn retry_listing_max(failed_in_a_row: u32) -> Duration {
    let doublings = failed_in_a_row.saturating_sub(2).min(8);
    RETRY_LISTING_MAX
        .saturating_mul(1 << doublings)
        .min(LISTING_EVERY_MAX)
}

/// How a pass with a listing of states ended, for [`failed_in_a_row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListingOutcome {
    Answered,
    /// It failed while the cluster's breaker is open.
    BreakerOpen,
    /// A call of the pass was never made (no place among `slurm_max_in_flight`): this server's
    /// own load, not Slurm's.
    NotCalled,
    /// It failed while the breaker stays closed: Slurm answers other calls, not this.
    Failed,
}

impl ListingOutcome {
    /// How a pass ended: whether its listing was `answered`, else why not, from the port's
    /// breaker and the pass's error.
    fn of<T>(
        answered: bool,
        slurm: &dyn SlurmPort,
        done: Result<&T, &commands::jobs::JobError>,
    ) -> Self {
        if answered {
            Self::Answered
        } else if matches!(slurm.reachability(), Reachability::Unreachable { .. }) {
            Self::BreakerOpen
        } else if matches!(
            done,
            Err(commands::jobs::JobError::Slurm(
                commands::slurm::SlurmError::NotCalled(_)
            ))
        ) {
            Self::NotCalled
        } else {
            Self::Failed
        }
    }
}

/// The failed listings in a row after `before` and a pass that ended as `outcome`. Only
/// failures while the breaker stays closed lengthen the pause ([`RETRY_LISTING_MAX`]): once it
/// opens, the breaker spaces the calls and the count starts again, so the listing is due as
/// soon as a probe is answered; and a call this server did not make is no failure of Slurm's.
fn failed_in_a_row(before: Option<&Listed>, outcome: ListingOutcome) -> u32 {
    let before = before.map_or(0, |l| l.failed_in_a_row);
    match outcome {
        ListingOutcome::Answered | ListingOutcome::BreakerOpen => 0,
        ListingOutcome::NotCalled => before,
        ListingOutcome::Failed => before.saturating_add(1),
    }
}

/// Whether a cluster's next listing of states is due at `now`, after `last`.
fn listing_due(last: Option<&Listed>, now: std::time::Instant) -> bool {
    last.is_none_or(|l| {
        let most = if l.answered {
            LISTING_EVERY_MAX
        } else {
            retry_listing_max(l.failed_in_a_row)
        };
        let pause = l.took.saturating_mul(LISTING_SHARE).min(most);
        now.saturating_duration_since(l.at) >= pause
    })
}

/// What a listing of states costs Slurm, for [`listing_due`]: how long it took to answer. A pass
/// that failed without an answer paces by the time it spent: a Slurm too busy to answer
/// within the call's timeout is not asked again at once (measured: three
/// listings of ~20,000 jobs back to back, each dropped after 5 s, while it was saturated). A
/// refused connection fails at once and paces nothing; the breaker spaces those calls. A port
/// without a listing of states has nothing timed: it is paced only by a pass that failed.
fn listing_cost(
    answered: Option<Duration>,
    failed: bool,
    spent: Duration,
) -> Option<(Duration, bool)> {
    answered
        .map(|took| (took, true))
        .or(failed.then_some((spent, false)))
}

/// The work of one cycle under way: cluster passes (`Some(key)`) and the quota pass (`None`).
#[derive(Default)]
struct Passes {
    set: JoinSet<()>,
    tasks: HashMap<tokio::task::Id, Option<Key>>,
    busy: HashSet<Option<Key>>,
}

impl Passes {
    /// Starts `work` for `key` unless its previous pass is still running.
    fn start(
        &mut self,
        key: Option<Key>,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        if !self.busy.insert(key.clone()) {
            tracing::debug!(pass = ?key, "previous pass still running; skipped this cycle");
            return;
        }
        let handle = self.set.spawn(work);
        self.tasks.insert(handle.id(), key);
    }

    /// Forgets the passes that ended since the last look (before a cycle starts new ones).
    fn reap(&mut self) {
        while let Some(ended) = self.set.try_join_next_with_id() {
            self.ended(ended);
        }
    }

    /// Waits until every pass ended or `until`, whichever comes first.
    async fn wait(&mut self, until: tokio::time::Instant) {
        while let Ok(Some(ended)) =
            tokio::time::timeout_at(until, self.set.join_next_with_id()).await
        {
            self.ended(ended);
        }
    }

    fn ended(&mut self, result: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match result {
            Ok((id, ())) => id,
            Err(e) => {
                tracing::error!(error = %e, "a poll pass ended abnormally");
                e.id()
            }
        };
        if let Some(key) = self.tasks.remove(&id) {
            self.busy.remove(&key);
        }
    }
}

pub async fn run(p: Poller, mut stop: watch::Receiver<bool>) {
    let Poller {
        store,
        directory,
        tokens_dir,
        every,
        scaler,
        replicas,
        mut leadership,
        leading: is_leading,
        pricing,
        billing_period,
        slurm,
        limits,
        metrics,
    } = p;
    let tracker = Arc::new(Tracker::default());
    let shared = Arc::new(Shared {
        store: store.clone(),
        scaler: scaler.clone(),
        replicas,
        limits,
        recorded: Mutex::new(HashMap::new()),
        tracker: tracker.clone(),
        reconciled: Mutex::new(HashMap::new()),
        listed: Mutex::new(HashMap::new()),
    });
    let pricing = Arc::new(pricing);
    let mut passes = Passes::default();
    loop {
        let leading = leadership.lead().await;
        if is_leading.swap(leading, Ordering::Relaxed) != leading {
            tracing::info!(leading, "poll cycle leadership changed");
            if leading {
                scaler.lead_from(chrono::Utc::now());
            } else {
                scaler.stop_leading();
            }
        }
        let deadline = tokio::time::Instant::now() + every;
        // One read of the registered clusters per cycle, for connecting and for quotas. Every
        // replica connects them, leader or not: each serves submits, cancels and log reads for
        // every cluster; only the passes below (reconcile, scaling, quotas) are the leader's.
        let clusters = match all_clusters(&store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not list clusters");
                Vec::new()
            }
        };
        connect_clusters(&clusters, &directory, &tokens_dir, slurm);
        if !leading {
            if stopped_before(deadline, &mut stop).await {
                break;
            }
            continue;
        }
        passes.reap();
        let started = std::time::Instant::now();
        let now = chrono::Utc::now();
        tracker.set_period(Period::of(billing_period, now));
        // The open-job index reads what was appended since the last cycle (all of the log the
        // first time this process leads); the passes below work from it.
        let caught_up_started = std::time::Instant::now();
        let caught_up = match tracker
            .catch_up(store.log.as_ref(), &|shape| pricing.rate(shape))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the log for the poll cycle; retrying next cycle");
                if stopped_before(deadline, &mut stop).await {
                    break;
                }
                continue;
            }
        };
        let catch_up_took = caught_up_started.elapsed();
        for (key, port) in directory.snapshot() {
            let work = cluster_pass(shared.clone(), key.clone(), port);
            passes.start(Some(key), work);
        }
        let (store2, directory2, tracker2) = (store.clone(), directory.clone(), tracker.clone());
        passes.start(None, async move {
            enforce_quotas(
                &store2,
                &clusters,
                directory2.as_ref(),
                &tracker2,
                billing_period,
            )
            .await
        });
        // Wait for this cycle's passes, at most one interval: a pass held up by a Slurm that
        // does not answer goes on in the background, and holds up no one else.
        tokio::select! {
            _ = passes.wait(deadline) => {}
            _ = stop.changed() => {}
        }
        let took = started.elapsed();
        metrics.poll_cycle(took, caught_up.events as u64);
        tracing::debug!(
            took_ms = took.as_secs_f64() * 1e3,
            catch_up_ms = catch_up_took.as_secs_f64() * 1e3,
            events = caught_up.events,
            position = caught_up.position,
            "poll cycle"
        );
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    // Let passes under way finish (each Slurm call is bounded), then stop the rest.
    passes
        .wait(tokio::time::Instant::now() + slurm.timeout + Duration::from_secs(1))
        .await;
    passes.set.abort_all();
    tracing::info!("poll cycle stopped");
}

/// Waits until `deadline` or a stop, whichever comes first; true when it was a stop.
async fn stopped_before(deadline: tokio::time::Instant, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline) => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
}

/// One cluster's pass: scaling and its replica copy beside reconcile, then settling and its
/// reachability. Its work
/// follows what changed: the jobs come from the open-job index, jobs are checked against the
/// limits once (when they enter), the scaler places them only when they or the nodes changed,
/// and reconcile is skipped while neither Slurm's jobs (where the port can tell) nor the index
/// moved since a reconcile that left nothing to do.
async fn cluster_pass(shared: Arc<Shared>, key: Key, slurm: Arc<dyn SlurmPort>) {
    let (workspace, cluster) = &key;
    let store = &shared.store;
    let t0 = std::time::Instant::now();
    let slurm_version = slurm.jobs_version();
    let snapshot = shared.tracker.snapshot(&key);
    fail_oversized(&shared, slurm.as_ref(), &key, snapshot.added).await;
    let t_limits = t0.elapsed();
    // Scaling (then the replica copy of its decisions) runs beside reconcile, on its own task
    // (stopped with the pass): placement is CPU work over the pending set, reconcile mostly
    // waits on Slurm and the log.
    let scaling = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(scale_and_copy(
        shared.clone(),
        key.clone(),
        snapshot.generation,
    )));
    // What the last clean reconcile saw: the same again, with no job left to look at, means
    // nothing changed on either side.
    let last_clean = shared
        .reconciled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    let unchanged = last_clean.as_ref().is_some_and(|c| {
        Some(c.slurm_version) == slurm_version
            && c.generation == snapshot.generation
            && c.recheck.is_empty()
    });
    // A port that cannot tell what changed is asked for its open jobs' states, paced by what
    // that costs it.
    let paced = slurm_version.is_none() && {
        let listed = shared.listed.lock().unwrap_or_else(|p| p.into_inner());
        !listing_due(listed.get(&key), std::time::Instant::now())
    };
    if !unchanged && !paced {
        // A port that can tell what changed since the last clean pass lists only that, and only
        // those jobs, the ones the index changed and the ones left to look at again are
        // compared; any other port (slurmrestd), or no clean pass yet, compares Slurm's listing
        // of the open jobs' states with them and reads in full only those that differ.
        let delta = match &last_clean {
            Some(c) => slurm.jobs_since(c.slurm_version).await,
            None => Ok(None),
        };
        let pass = match delta {
            Ok(Some(delta)) => {
                let recheck = last_clean.iter().flat_map(|c| c.recheck.iter().copied());
                let ids: std::collections::BTreeSet<u64> = delta
                    .jobs
                    .iter()
                    .map(|j| j.job_id)
                    .chain(snapshot.changed.iter().copied())
                    .chain(recheck)
                    .collect();
                let open = shared.tracker.open_of(&key, ids);
                reconcile_listed(
                    store.log.as_ref(),
                    slurm.as_ref(),
                    workspace,
                    cluster,
                    &open,
                    delta.jobs,
                    chrono::Utc::now(),
                )
                .await
                .map(|done| (done, Some(delta.version)))
            }
            Ok(None) => {
                let open = shared.tracker.open(&key);
                let at = std::time::Instant::now();
                let mut listing = None;
                let done = reconcile_timed(
                    store.log.as_ref(),
                    slurm.as_ref(),
                    workspace,
                    cluster,
                    &open,
                    chrono::Utc::now(),
                    &mut listing,
                )
                .await;
                let took = listing_cost(listing, done.is_err(), at.elapsed());
                if let (Some((took, answered)), None) = (took, slurm_version) {
                    let outcome = ListingOutcome::of(answered, slurm.as_ref(), done.as_ref());
                    let mut listed = shared.listed.lock().unwrap_or_else(|p| p.into_inner());
                    let failed_in_a_row = failed_in_a_row(listed.get(&key), outcome);
                    listed.insert(
                        key.clone(),
                        Listed {
                            at,
                            took,
                            answered,
                            failed_in_a_row,
                        },
                    );
                }
                done.map(|done| (done, slurm_version))
            }
            Err(e) => Err(e.into()),
        };
        // A pass that left something no job names (or failed) makes the next one compare
        // everything; changes it recorded do not (they move the index, whose changed jobs the
        // next pass compares), nor do the jobs it names to look at again.
        let clean = match &pass {
            Ok((done, Some(v))) if done.left == 0 => Some(Clean {
                slurm_version: *v,
                generation: snapshot.generation,
                recheck: done.recheck.clone(),
            }),
            _ => None,
        };
        {
            let mut reconciled = shared.reconciled.lock().unwrap_or_else(|p| p.into_inner());
            match clean {
                Some(c) => reconciled.insert(key.clone(), c),
                None => reconciled.remove(&key),
            };
        }
        match pass {
            Ok((done, _)) if done != Default::default() => {
                tracing::debug!(%cluster, changes = done.state_changes, ignored = done.ignored, vanished = done.vanished, corrected = done.corrected, cancels_resent = done.cancels_resent, left = done.left, recheck = done.recheck.len(), "reconciled");
            }
            Ok(_) => {}
            // Its breaker is open: said once when it opened, not every cycle.
            Err(e) if matches!(slurm.reachability(), Reachability::Unreachable { .. }) => {
                tracing::debug!(%cluster, error = %e, "reconcile skipped: Slurm unreachable")
            }
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "reconcile failed; nothing recorded, retrying next cycle")
            }
        }
    }
    let t_reconcile = t0.elapsed();
    let (scaling_took, replicas_took) = match scaling.await {
        Ok(took) => took,
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "scaling step ended abnormally; retrying next cycle");
            Default::default()
        }
    };
    let t_both = t0.elapsed();
    settle(&shared, slurm.as_ref(), &key).await;
    record_reachability(&shared, &key, slurm.reachability()).await;
    tracing::debug!(
        %cluster,
        limits_ms = t_limits.as_secs_f64() * 1e3,
        scaling_ms = scaling_took.as_secs_f64() * 1e3,
        replicas_ms = replicas_took.as_secs_f64() * 1e3,
        reconcile_ms = (t_reconcile - t_limits).as_secs_f64() * 1e3,
        rest_ms = (t0.elapsed() - t_both).as_secs_f64() * 1e3,
        reconciled = !unchanged && !paced,
        "cluster pass"
    );
}

/// A cluster's scaling step, then the copy of its decisions to the replica store; how long each
/// took.
async fn scale_and_copy(
    shared: Arc<Shared>,
    key: Key,
    generation: u64,
) -> (std::time::Duration, std::time::Duration) {
    let (workspace, cluster) = &key;
    let store = &shared.store;
    let t0 = std::time::Instant::now();
    let tracker = shared.tracker.clone();
    match shared
        .scaler
        .cycle_with(
            store.log.as_ref(),
            workspace,
            cluster,
            Some(generation),
            |each| tracker.sizing(&key, each),
            chrono::Utc::now(),
        )
        .await
    {
        Ok(made) => {
            for d in made {
                tracing::info!(%cluster, node_set = %d.node_set, from = d.from, to = d.to, reason = %d.reason, "scale decision");
            }
        }
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "scaling step failed; retrying next cycle")
        }
    }
    let t_scaling = t0.elapsed();
    match shared
        .scaler
        .sync_replicas(
            store.log.as_ref(),
            shared.replicas.as_ref(),
            workspace,
            cluster,
            chrono::Utc::now(),
        )
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!(%cluster, written = n, "replica store updated"),
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "replica store not updated; retrying next cycle")
        }
    }
    (t_scaling, t0.elapsed() - t_scaling)
}

/// Settles the cluster's submissions whose request is recorded but whose outcome is not, once
/// they are older than `ADOPT_AFTER` (commands::jobs::settle_submissions). They come from the
/// open-job index (caught up from the log this cycle: no read of the store), and Slurm's jobs
/// are listed only when there is such a submission.
async fn settle(shared: &Shared, slurm: &dyn commands::slurm::SlurmPort, key: &Key) {
    let (workspace, cluster) = key;
    let unsettled: Vec<Unsettled> = shared
        .tracker
        .submitting(key)
        .into_iter()
        .map(|(submission_id, requested_at)| Unsettled {
            submission_id,
            requested_at,
        })
        .collect();
    if unsettled.is_empty() {
        return;
    }
    match settle_submissions(
        shared.store.log.as_ref(),
        slurm,
        workspace,
        cluster,
        &unsettled,
        chrono::Utc::now(),
    )
    .await
    {
        Ok(done) if done.adopted + done.failed > 0 => {
            tracing::info!(%cluster, adopted = done.adopted, failed = done.failed, "settled submissions");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "settling submissions failed; retrying next cycle")
        }
    }
}

/// Open jobs over their cluster's limits are failed with the reason (the scaler already skips
/// them); one that is only pending in the log costs nothing here. Each job is checked once, when
/// it enters the index (`added`); a check that could not be recorded is made again next cycle.
async fn fail_oversized(
    shared: &Shared,
    slurm: &dyn commands::slurm::SlurmPort,
    key: &Key,
    added: Vec<u64>,
) {
    if added.is_empty() {
        return;
    }
    let (workspace, cluster) = key;
    let limits = shared.limits.of(workspace, cluster);
    let over: Vec<commands::jobs::OversizedJob> = shared
        .tracker
        .shapes(key, &added)
        .into_iter()
        .filter_map(|(o, shape)| {
            let why = limits.check(&shape, "job.memory_per_node");
            (!why.is_empty()).then(|| commands::jobs::OversizedJob {
                submission_id: o.submission_id,
                job_id: o.job_id,
                why: why
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            })
        })
        .collect();
    if over.is_empty() {
        return;
    }
    if let Err(e) =
        commands::jobs::fail_oversized(shared.store.log.as_ref(), slurm, cluster, &over).await
    {
        tracing::warn!(%cluster, error = %e, "could not fail jobs over the limits; retrying next cycle");
        shared
            .tracker
            .readd(key, over.iter().map(|o| o.job_id).collect());
    }
}

/// Records a change of a cluster's reachability, once: `SlurmReachabilityChanged` when its
/// breaker opened (unreachable) and when an answer closed it again (reachable).
async fn record_reachability(shared: &Shared, key: &Key, now: Reachability) {
    let (workspace, cluster) = key;
    let known = shared
        .recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .copied();
    let recorded = match known {
        Some(r) => r,
        None => match projections::views::clusters::slurm_status(
            shared.store.read.as_ref(),
            workspace,
            cluster,
        )
        .await
        {
            Ok(status) => status.is_none_or(|s| s.reachable),
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "could not read the recorded Slurm status");
                return;
            }
        },
    };
    let change = match (&now, recorded) {
        (Reachability::Unreachable { since, cause }, true) => {
            Some(domain::SlurmReachabilityChanged {
                workspace: workspace.clone(),
                cluster_id: cluster.clone(),
                reachable: false,
                since: *since,
                cause: Some(cause.clone()),
            })
        }
        (Reachability::Reachable, false) => Some(domain::SlurmReachabilityChanged {
            workspace: workspace.clone(),
            cluster_id: cluster.clone(),
            reachable: true,
            since: chrono::Utc::now(),
            cause: None,
        }),
        _ => None,
    };
    let mut state = recorded;
    if let Some(change) = change {
        let reachable = change.reachable;
        let event = domain::DomainEvent::SlurmReachabilityChanged(change);
        let appended = match commands::encode(&event, commands::system_metadata("poll")) {
            Ok(new) => shared
                .store
                .log
                .append(
                    &commands::clusters::stream(workspace, cluster),
                    eventlog::ExpectedVersion::Any,
                    &[new],
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match appended {
            Ok(_) if reachable => {
                tracing::info!(%workspace, %cluster, "Slurm answers again; recorded");
                state = true;
            }
            Ok(_) => {
                tracing::warn!(%workspace, %cluster, status = ?now, "Slurm stopped answering; calls paused, recorded");
                state = false;
            }
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "could not record the Slurm status; retrying next cycle");
                return;
            }
        }
    }
    shared
        .recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), state);
}

/// Every registered cluster, from the clusters projection.
async fn all_clusters(store: &Store) -> Result<Vec<ClusterView>, eventlog::LogError> {
    Ok(eventlog::list_all(
        store.read.as_ref(),
        ModelSet::Live,
        projections::views::clusters::NAME,
        projections::views::clusters::ALL,
    )
    .await?
    .iter()
    .filter_map(|row| serde_json::from_str::<ClusterView>(&row.doc).ok())
    .collect())
}

/// Connects registered clusters that have a slurmrestd endpoint and a token file
/// (`<tokens dir>/<workspace>.<cluster>.jwt`) and are not connected yet. The file is re-read
/// whenever it changes, so a rotated token needs no restart.
fn connect_clusters(
    clusters: &[ClusterView],
    directory: &LiveDirectory,
    tokens_dir: &std::path::Path,
    calls: SlurmCalls,
) {
    for view in clusters {
        let Some(endpoint) = &view.slurm else {
            continue;
        };
        if directory.contains(&view.workspace, &view.cluster_id) {
            continue;
        }
        let file = tokens_dir.join(format!("{}.{}.jwt", view.workspace, view.cluster_id));
        if !file.is_file() {
            continue;
        }
        match gateways::slurmrestd::SlurmRestd::with_token_file(
            &endpoint.url,
            &endpoint.user,
            &file,
        ) {
            Ok(port) => {
                tracing::info!(workspace = %view.workspace, cluster = %view.cluster_id, url = %endpoint.url, "cluster connected to slurmrestd");
                let port = port.call_timeout(calls.timeout);
                directory.insert(
                    view.workspace.clone(),
                    view.cluster_id.clone(),
                    Arc::new(
                        commands::slurm::Guarded::new(Arc::new(port), calls.breaker)
                            .with_max_in_flight(calls.max_in_flight),
                    ),
                );
            }
            Err(e) => {
                tracing::warn!(cluster = %view.cluster_id, error = %e, "could not connect cluster")
            }
        }
    }
}

/// The edge agent of the local executor: every `every`, nodes follow the desired counts. Runs in
/// every process that has a local executor (each runs its own nodes), leader or not.
pub async fn agent(
    store: Store,
    agent: EdgeAgent,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    match agent.recover(store.log.as_ref()).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(lost = n, "nodes of an earlier run recorded as terminated"),
        Err(e) => tracing::warn!(error = %e, "could not check for nodes of an earlier run"),
    }
    loop {
        match agent.step(store.log.as_ref(), chrono::Utc::now()).await {
            Ok(changes) => {
                for c in changes {
                    tracing::info!(cluster = %agent.cluster, change = ?c, "node");
                }
            }
            Err(e) => tracing::warn!(error = %e, "edge agent step failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
}

/// Quota enforcement: every workspace with quotas, every user over, once per cycle
/// (commands::quota::enforce records once and cancels through the standard path). Each user's
/// usage and unfinished jobs come from the open-job index: a few additions per user, whatever
/// the size of the queue or of the history.
async fn enforce_quotas(
    store: &Store,
    clusters: &[ClusterView],
    directory: &LiveDirectory,
    tracker: &Tracker,
    kind: domain::cost::PeriodKind,
) {
    let now = chrono::Utc::now();
    let period = Period::of(kind, now);
    let workspaces: std::collections::BTreeSet<&domain::WorkspaceId> =
        clusters.iter().map(|c| &c.workspace).collect();
    for ws in workspaces {
        let quotas = match projections::views::quotas::of_workspace(store.read.as_ref(), ws).await {
            Ok(q) if !q.is_empty() => q,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(workspace = %ws, error = %e, "quota check: could not read quotas");
                continue;
            }
        };
        for (email, quota) in &quotas {
            let (usage, jobs) = tracker.user(ws, email, period, now);
            let status = quota.status(&usage, period);
            // block_and_kill users are always looked at: enforce decides on the log, which
            // the projection may lag.
            if status == QuotaStatus::Ok && quota.mode != domain::cost::QuotaMode::BlockAndKill {
                continue;
            }
            let Ok(user) = domain::Email::new(email) else {
                continue;
            };
            let running: Vec<RunningJob> = jobs
                .into_iter()
                .map(|j| RunningJob {
                    cluster: j.cluster,
                    submission: j.submission_id,
                    job_id: j.job_id,
                })
                .collect();
            match commands::quota::enforce(
                store.log.as_ref(),
                directory,
                ws,
                &user,
                &usage,
                period,
                &running,
            )
            .await
            {
                Ok(done) => {
                    if done.warned {
                        tracing::info!(workspace = %ws, %email, projected = %usage.projected, limit = %quota.limit, "quota warning raised");
                    }
                    if done.blocked {
                        tracing::warn!(workspace = %ws, %email, projected = %usage.projected, limit = %quota.limit, "quota enforced: new jobs refused, running jobs cancelled");
                    }
                    for job_id in done.cancelled {
                        tracing::warn!(workspace = %ws, %email, job_id, "job cancelled by quota");
                    }
                }
                Err(e) => {
                    tracing::warn!(workspace = %ws, %email, error = %e, "quota enforcement failed; retrying next cycle")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listing_waits_twenty_times_its_own_duration_at_most_a_minute() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let listed = |took_ms: u64| Listed {
            at: t0,
            took: Duration::from_millis(took_ms),
            answered: true,
            failed_in_a_row: 0,
        };
        assert!(listing_due(None, t0));
        // 5 ms (a small queue): due again after 100 ms, so every cycle of a 1 s interval.
        assert!(!listing_due(Some(&listed(5)), at(99)));
        assert!(listing_due(Some(&listed(5)), at(100)));
        // 200 ms (about 20,000 jobs): every 4 s.
        assert!(!listing_due(Some(&listed(200)), at(3_999)));
        assert!(listing_due(Some(&listed(200)), at(4_000)));
        // 2.8 s (about 20,000 jobs on a saturated Slurm): every 56 s.
        assert!(!listing_due(Some(&listed(2_800)), at(55_999)));
        assert!(listing_due(Some(&listed(2_800)), at(56_000)));
        // However slow, at least every minute.
        assert!(!listing_due(Some(&listed(60_000)), at(59_999)));
        assert!(listing_due(Some(&listed(60_000)), at(60_000)));
    }

    #[test]
    fn a_listing_that_timed_out_paces_the_next_as_long_as_it_waited() {
        let ms = Duration::from_millis;
        // Answered: its own duration, whatever the pass did after it.
        assert_eq!(
            listing_cost(Some(ms(200)), false, ms(900)),
            Some((ms(200), true))
        );
        assert_eq!(
            listing_cost(Some(ms(200)), true, ms(900)),
            Some((ms(200), true))
        );
        // Dropped after the 5 s timeout: the next waits the longest pause after a failure,
        // 10 s (not the minute an answered listing may wait: the breaker counts failures).
        let t0 = std::time::Instant::now();
        let listed = |(took, answered)| Listed {
            at: t0,
            took,
            answered,
            failed_in_a_row: u32::from(!answered),
        };
        let last = listed(listing_cost(None, true, ms(5_000)).unwrap());
        assert!(!last.answered);
        assert!(!listing_due(Some(&last), t0 + ms(9_999)));
        assert!(listing_due(Some(&last), t0 + ms(10_000)));
        // The second in a row too (the breaker, closed, needs three to open); from the third
        // the pause doubles, up to the minute an answered listing may wait.
        let in_a_row = |n| Listed {
            failed_in_a_row: n,
            ..last
        };
        for (n, pause) in [
            (2, 10_000),
            (3, 20_000),
            (4, 40_000),
            (5, 60_000),
            (40, 60_000),
        ] {
            assert!(!listing_due(Some(&in_a_row(n)), t0 + ms(pause - 1)), "{n}");
            assert!(listing_due(Some(&in_a_row(n)), t0 + ms(pause)), "{n}");
        }
        // The count: only failures while the breaker stays closed add to it; an answer or an
        // open breaker starts it again; a call this server did not make leaves it.
        assert_eq!(failed_in_a_row(None, ListingOutcome::Failed), 1);
        assert_eq!(
            failed_in_a_row(Some(&in_a_row(3)), ListingOutcome::Failed),
            4
        );
        assert_eq!(
            failed_in_a_row(Some(&in_a_row(3)), ListingOutcome::NotCalled),
            3
        );
        assert_eq!(
            failed_in_a_row(Some(&in_a_row(3)), ListingOutcome::BreakerOpen),
            0
        );
        assert_eq!(
            failed_in_a_row(Some(&in_a_row(3)), ListingOutcome::Answered),
            0
        );
        // A cheap failure (refused at once) stays cheap however many came before.
        let refused = Listed {
            took: ms(1),
            ..in_a_row(9)
        };
        assert!(listing_due(Some(&refused), t0 + ms(20)));
        // Refused at once: due again almost at once (the breaker spaces those).
        let refused = listed(listing_cost(None, true, ms(1)).unwrap());
        assert!(listing_due(Some(&refused), t0 + ms(20)));
        // No listing to time (a port without one): nothing to pace by.
        assert_eq!(listing_cost(None, false, ms(900)), None);
    }

    /// A port that only says how reachable it is.
    struct Reaching(Reachability);

    #[async_trait::async_trait]
    impl SlurmPort for Reaching {
        async fn submit(
            &self,
            _: &serde_json::Value,
        ) -> Result<commands::slurm::Accepted, commands::slurm::SlurmError> {
            unreachable!("not called")
        }
        async fn job(
            &self,
            _: u64,
        ) -> Result<Option<commands::slurm::SlurmJob>, commands::slurm::SlurmError> {
            unreachable!("not called")
        }
        async fn jobs(
            &self,
        ) -> Result<Vec<commands::slurm::SlurmJob>, commands::slurm::SlurmError> {
            unreachable!("not called")
        }
        async fn cancel(&self, _: u64) -> Result<(), commands::slurm::SlurmError> {
            unreachable!("not called")
        }
        fn reachability(&self) -> Reachability {
            self.0.clone()
        }
    }

    #[test]
    fn a_listing_outcome_says_whose_failure_it_was() {
        use commands::jobs::JobError;
        use commands::slurm::SlurmError;
        let closed = Reaching(Reachability::Failing { failures: 1 });
        let open = Reaching(Reachability::Unreachable {
            since: chrono::Utc::now(),
            cause: "timed out".into(),
        });
        let timed_out = JobError::Slurm(SlurmError::Unavailable("timed out".into()));
        let not_called = JobError::Slurm(SlurmError::NotCalled("no place".into()));
        let of = |answered, port: &Reaching, done: Result<&(), &JobError>| {
            ListingOutcome::of(answered, port, done)
        };
        assert_eq!(of(true, &open, Ok(&())), ListingOutcome::Answered);
        assert_eq!(
            of(false, &open, Err(&timed_out)),
            ListingOutcome::BreakerOpen
        );
        assert_eq!(
            of(false, &closed, Err(&not_called)),
            ListingOutcome::NotCalled
        );
        assert_eq!(of(false, &closed, Err(&timed_out)), ListingOutcome::Failed);
    }
}
