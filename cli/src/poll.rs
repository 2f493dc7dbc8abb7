//! The poll cycle: every interval, reconcile each connected cluster's job states from Slurm into
//! the log, and make the scaling decisions (commands::scaling). (Quota joins it later.)

use std::sync::Arc;
use std::time::Duration;

use commands::jobs::{OpenJob, reconcile};
use commands::scaling::{Scaler, ScalingJob};
use commands::slurm::LiveDirectory;
use eventlog::{ModelSet, Store};
use projections::views::jobs::{self, JobView};
use tokio::sync::watch;

pub async fn run(
    store: Store,
    directory: Arc<LiveDirectory>,
    tokens_dir: std::path::PathBuf,
    every: Duration,
    scaler: Arc<Scaler>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        connect_clusters(&store, &directory, &tokens_dir).await;
        for ((workspace, cluster), slurm) in &directory.snapshot() {
            match open_jobs(&store, workspace, cluster).await {
                Ok((open, sizing)) => {
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
                        Ok(done) if done.state_changes + done.adopted + done.vanished > 0 => {
                            tracing::debug!(%cluster, changes = done.state_changes, adopted = done.adopted, vanished = done.vanished, "reconciled");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%cluster, error = %e, "reconcile failed; retrying next cycle")
                        }
                    }
                }
                Err(e) => tracing::warn!(%cluster, error = %e, "could not list open jobs"),
            }
        }
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

/// Connects registered clusters that have a slurmrestd endpoint and a token file
/// (`<tokens dir>/<workspace>.<cluster>.jwt`) and are not connected yet.
async fn connect_clusters(store: &Store, directory: &LiveDirectory, tokens_dir: &std::path::Path) {
    let views = match eventlog::list_all(
        store.read.as_ref(),
        ModelSet::Live,
        projections::views::clusters::NAME,
        projections::views::clusters::ALL,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not list clusters");
            return;
        }
    };
    for row in views {
        let Ok(view) = serde_json::from_str::<projections::views::clusters::ClusterView>(&row.doc)
        else {
            continue;
        };
        let Some(endpoint) = view.slurm else { continue };
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
                directory.insert(view.workspace, view.cluster_id, Arc::new(port));
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
    let rows = eventlog::list_all(
        store.read.as_ref(),
        ModelSet::Live,
        jobs::NAME,
        &jobs::collection(workspace, cluster),
    )
    .await?;
    let mut open = Vec::new();
    let mut sizing = Vec::new();
    for row in rows {
        match serde_json::from_str::<JobView>(&row.doc) {
            Ok(view) if !view.state.is_terminal() => {
                open.push(OpenJob {
                    submission_id: view.submission_id,
                    job_id: view.job_id,
                });
                sizing.push(ScalingJob {
                    job_id: view.job_id,
                    running: view.state != domain::job::JobState::Pending,
                    shape: view.shape,
                });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key = %row.key, error = %e, "unreadable job view skipped"),
        }
    }
    Ok((open, sizing))
}
