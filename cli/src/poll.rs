//! The poll cycle: every interval, reconcile each connected cluster's job states from Slurm into
//! the log. (Scaling and quota join this cycle in later features.)

use std::sync::Arc;
use std::time::Duration;

use commands::jobs::{OpenJob, reconcile};
use commands::slurm::StaticDirectory;
use eventlog::{ModelSet, Store};
use projections::views::jobs::{self, JobView};
use tokio::sync::watch;

pub async fn run(
    store: Store,
    directory: Arc<StaticDirectory>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for ((workspace, cluster), slurm) in &directory.0 {
            match open_jobs(&store, workspace, cluster).await {
                Ok(open) => match reconcile(
                    store.log.as_ref(),
                    slurm.as_ref(),
                    workspace,
                    cluster,
                    &open,
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
                },
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

/// Jobs the read side believes are not finished.
async fn open_jobs(
    store: &Store,
    workspace: &domain::WorkspaceId,
    cluster: &domain::ClusterId,
) -> Result<Vec<OpenJob>, eventlog::LogError> {
    let rows = eventlog::list_all(
        store.read.as_ref(),
        ModelSet::Live,
        jobs::NAME,
        &jobs::collection(workspace, cluster),
    )
    .await?;
    let mut open = Vec::new();
    for row in rows {
        match serde_json::from_str::<JobView>(&row.doc) {
            Ok(view) if !view.state.is_terminal() => open.push(OpenJob {
                submission_id: view.submission_id,
                job_id: view.job_id,
            }),
            Ok(_) => {}
            Err(e) => tracing::warn!(key = %row.key, error = %e, "unreadable job view skipped"),
        }
    }
    Ok(open)
}
