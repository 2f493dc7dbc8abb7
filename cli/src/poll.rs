//! The poll cycle: every interval, reconcile each connected cluster's job states from Slurm into
//! the log, make the scaling decisions (commands::scaling) and copy the desired counts to the
//! replica store. Only the leader runs it (gateways::leader). (Quota joins it later.)
//!
//! The edge agent of the local executor runs beside it in every process ([`agent`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use commands::fleet::EdgeAgent;
use commands::quota::{Pricing, RunningJob};
use commands::replicas::ReplicaStore;
use domain::cost::{Period, QuotaStatus, usage_by_user};

use commands::jobs::{OpenJob, Unsettled, reconcile, settle_submissions};
use commands::scaling::{Scaler, ScalingJob};
use commands::slurm::LiveDirectory;
use eventlog::{ModelSet, Store};
use projections::views::clusters::ClusterView;
use projections::views::jobs;
use tokio::sync::watch;

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
    /// Each cluster's job limits: open jobs over them are failed, not planned.
    pub limits: commands::jobs::ClusterLimits,
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
        limits,
    } = p;
    loop {
        let leading = leadership.lead().await;
        if is_leading.swap(leading, Ordering::Relaxed) != leading {
            tracing::info!(leading, "poll cycle leadership changed");
            if leading {
                scaler.lead_from(chrono::Utc::now());
            }
        }
        if !leading {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            continue;
        }
        // One read of the registered clusters per cycle, for connecting and for quotas.
        let clusters = match all_clusters(&store).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not list clusters");
                Vec::new()
            }
        };
        connect_clusters(&clusters, &directory, &tokens_dir);
        for ((workspace, cluster), slurm) in &directory.snapshot() {
            match open_jobs(&store, workspace, cluster).await {
                Ok((open, sizing)) => {
                    fail_oversized(
                        &store,
                        slurm.as_ref(),
                        &limits,
                        workspace,
                        cluster,
                        &open,
                        &sizing,
                    )
                    .await;
                    match scaler
                        .cycle(
                            store.log.as_ref(),
                            workspace,
                            cluster,
                            &sizing,
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
                    match scaler
                        .sync_replicas(
                            store.log.as_ref(),
                            replicas.as_ref(),
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
                    match reconcile(
                        store.log.as_ref(),
                        slurm.as_ref(),
                        workspace,
                        cluster,
                        &open,
                        chrono::Utc::now(),
                    )
                    .await
                    {
                        Ok(done) if done.state_changes + done.vanished + done.ignored > 0 => {
                            tracing::debug!(%cluster, changes = done.state_changes, vanished = done.vanished, ignored = done.ignored, "reconciled");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%cluster, error = %e, "reconcile failed; retrying next cycle")
                        }
                    }
                }
                Err(e) => tracing::warn!(%cluster, error = %e, "could not list open jobs"),
            }
            settle(&store, slurm.as_ref(), workspace, cluster).await;
        }
        enforce_quotas(
            &store,
            &clusters,
            directory.as_ref(),
            &pricing,
            billing_period,
        )
        .await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    tracing::info!("poll cycle stopped");
}

/// Settles the cluster's submissions whose request is recorded but whose outcome is not, once
/// they are older than `ADOPT_AFTER` (commands::jobs::settle_submissions). Lists Slurm's jobs
/// only when there is such a submission.
async fn settle(
    store: &Store,
    slurm: &dyn commands::slurm::SlurmPort,
    workspace: &domain::WorkspaceId,
    cluster: &domain::ClusterId,
) {
    let unsettled = match jobs::submitting(store.read.as_ref(), workspace, cluster).await {
        Ok(list) => list
            .into_iter()
            .map(|p| Unsettled {
                submission_id: p.submission_id,
                requested_at: p.requested_at,
            })
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "could not list unsettled submissions");
            return;
        }
    };
    if unsettled.is_empty() {
        return;
    }
    match settle_submissions(
        store.log.as_ref(),
        slurm,
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
/// (`<tokens dir>/<workspace>.<cluster>.jwt`) and are not connected yet.
fn connect_clusters(
    clusters: &[ClusterView],
    directory: &LiveDirectory,
    tokens_dir: &std::path::Path,
) {
    for view in clusters {
        let Some(endpoint) = &view.slurm else {
            continue;
        };
        if directory.contains(&view.workspace, &view.cluster_id) {
            continue;
        }
        let file = tokens_dir.join(format!("{}.{}.jwt", view.workspace, view.cluster_id));
        let Ok(token) = std::fs::read_to_string(&file) else {
            continue;
        };
        match gateways::slurmrestd::SlurmRestd::new(&endpoint.url, &endpoint.user, token.trim()) {
            Ok(port) => {
                tracing::info!(workspace = %view.workspace, cluster = %view.cluster_id, url = %endpoint.url, "cluster connected to slurmrestd");
                directory.insert(
                    view.workspace.clone(),
                    view.cluster_id.clone(),
                    Arc::new(port),
                );
            }
            Err(e) => {
                tracing::warn!(cluster = %view.cluster_id, error = %e, "could not connect cluster")
            }
        }
    }
}

/// Jobs the read side believes are not finished, for reconcile and for sizing nodes.
async fn open_jobs(
    store: &Store,
    workspace: &domain::WorkspaceId,
    cluster: &domain::ClusterId,
) -> Result<(Vec<OpenJob>, Vec<ScalingJob>), eventlog::LogError> {
    let mut open = Vec::new();
    let mut sizing = Vec::new();
    for view in jobs::of_cluster(store.read.as_ref(), workspace, cluster).await? {
        if view.state.is_terminal() {
            continue;
        }
        open.push(OpenJob {
            submission_id: view.submission_id,
            job_id: view.job_id,
        });
        sizing.push(ScalingJob {
            job_id: view.job_id,
            running: view.state != domain::job::JobState::Pending,
            shape: view.shape,
            nodes: view.node,
        });
    }
    Ok((open, sizing))
}

/// Open jobs over their cluster's limits are failed with the reason (the scaler already skips
/// them); one that is only pending in the log costs nothing here.
async fn fail_oversized(
    store: &Store,
    slurm: &dyn commands::slurm::SlurmPort,
    limits: &commands::jobs::ClusterLimits,
    workspace: &domain::WorkspaceId,
    cluster: &domain::ClusterId,
    open: &[OpenJob],
    sizing: &[ScalingJob],
) {
    let limits = limits.of(workspace, cluster);
    let over: Vec<commands::jobs::OversizedJob> = open
        .iter()
        .zip(sizing)
        .filter_map(|(o, s)| {
            let why = limits.check(&s.shape, "job.memory_per_node");
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
    if let Err(e) = commands::jobs::fail_oversized(store.log.as_ref(), slurm, cluster, &over).await
    {
        tracing::warn!(%cluster, error = %e, "could not fail jobs over the limits; retrying next cycle");
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
/// (commands::quota::enforce records once and cancels through the standard path).
async fn enforce_quotas(
    store: &Store,
    clusters: &[ClusterView],
    directory: &LiveDirectory,
    pricing: &Pricing,
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
        let views = match jobs::of_workspace(store.read.as_ref(), ws).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(workspace = %ws, error = %e, "quota check: could not list jobs");
                continue;
            }
        };
        let jobs = api::usage::cost_jobs(pricing, &views);
        let by_user = usage_by_user(&jobs, period, now);
        for (email, quota) in &quotas {
            let usage = by_user.get(email.as_str()).copied().unwrap_or_default();
            let status = quota.status(&usage, period);
            // block_and_kill users are always looked at: enforce decides on the log, which
            // the projection may lag.
            if status == QuotaStatus::Ok && quota.mode != domain::cost::QuotaMode::BlockAndKill {
                continue;
            }
            let Ok(user) = domain::Email::new(email) else {
                continue;
            };
            let running: Vec<RunningJob> = views
                .iter()
                .filter(|v| v.user == *email && !v.state.is_terminal())
                .map(|v| RunningJob {
                    cluster: v.cluster_id.clone(),
                    submission: v.submission_id,
                    job_id: v.job_id,
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
