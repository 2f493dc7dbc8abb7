//! Job logs: range reads (`GET …/logs`) and a live SSE stream (`GET …/logs/stream`).
//!
//! A job's stdout is a file on its cluster's shared filesystem, `/mnt/efs` as the job sees it
//! (`job_<id>.out` unless the body names another file there). The server finds that filesystem
//! at the local executor's efs root for clusters without Slurm, and at
//! `<efs_mounts_dir>/<workspace>.<cluster>` for Slurm clusters. Every open resolves symlinks and
//! refuses a file that lands outside that root, so a job cannot make the server read its secrets.
//! Only the job's owner and workspace admins may read it; anyone else gets the same 404 as for a
//! job that does not exist.

pub mod hub;
pub(crate) mod read;
pub(crate) mod stream;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use projections::views::jobs::JobView;

pub(crate) use crate::query::{RawQuery, number, raw_query};
pub use hub::LogHub;
pub(crate) use read::read;
pub(crate) use stream::stream;

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// The shared mount as jobs see it.
pub const EFS_MOUNT: &str = "/mnt/efs";

/// Where logs are and how they are streamed.
pub struct Logs {
    /// The efs root of clusters run by the local executor.
    pub local_root: PathBuf,
    /// Where each Slurm cluster's shared filesystem is mounted on this server:
    /// `<dir>/<workspace>.<cluster>`.
    pub mounts_dir: PathBuf,
    pub hub: Arc<LogHub>,
    /// How often an idle stream sends a heartbeat comment.
    pub heartbeat: Duration,
    /// The largest chunk one `log` event carries, in bytes.
    pub chunk_bytes: usize,
}

/// A job's log file, located and authorized.
pub(crate) struct Located {
    pub view: JobView,
    /// The file on this server.
    pub path: PathBuf,
    /// The root the file must stay under after symlinks are resolved.
    pub root: PathBuf,
}

fn log_unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "log_unavailable", message)
}

/// Finds the job (404 unless the caller may see it) and its log file.
pub(crate) async fn locate(
    state: &AppState,
    caller: &Caller,
    id: &str,
    job_id: &str,
) -> Result<Located, ApiError> {
    let (cluster, cluster_view) = crate::clusters::visible_cluster(state, caller, id).await?;
    let view = crate::jobs::visible_job(state, caller, &cluster, job_id).await?;
    let root = match cluster_view.slurm {
        None => state.logs.local_root.clone(),
        Some(_) => state
            .logs
            .mounts_dir
            .join(format!("{}.{}", caller.workspace, cluster)),
    };
    let job_side = view
        .stdout
        .clone()
        .unwrap_or_else(|| format!("{EFS_MOUNT}/job_{}.out", view.job_id));
    let rel = job_side
        .strip_prefix(EFS_MOUNT)
        .and_then(|r| r.strip_prefix('/'))
        .map(Path::new)
        .filter(|r| {
            r.components().count() > 0 && r.components().all(|c| matches!(c, Component::Normal(_)))
        })
        .ok_or_else(|| {
            log_unavailable(format!(
                "this job writes its output to {job_side:?}, outside the shared filesystem {EFS_MOUNT}; only logs under {EFS_MOUNT} can be read through the API (set standard_output to e.g. {EFS_MOUNT}/job_%j.out)"
            ))
        })?;
    Ok(Located {
        path: root.join(rel),
        root,
        view,
    })
}

/// Opens the log without following a symlink out of its root. `Ok(None)`: no file (yet).
pub(crate) fn open_confined(root: &Path, path: &Path) -> Result<Option<std::fs::File>, ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(root) = std::fs::canonicalize(root) else {
        return Err(log_unavailable(
            "this cluster's shared filesystem is not mounted on the Clusterra server; an operator must mount it where `efs_mounts_dir` says (docs/logs.md)".into(),
        )
        .with_detail(format!("looked for it at {}", root.display())));
    };
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::internal(format!("cannot resolve the log: {e}"))),
    };
    if !real.starts_with(&root) {
        tracing::warn!(path = %path.display(), real = %real.display(), "a job log resolves outside its shared filesystem; refused");
        return Err(log_unavailable(format!(
            "the job's log file is a link to somewhere outside the shared filesystem {EFS_MOUNT}; it is not served"
        )));
    }
    // O_NONBLOCK: a job that replaced its log by a named pipe must not hang the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(&real);
    let file = match file {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        Ok(_) => {
            return Err(log_unavailable(
                "the job's log path is not a regular file".into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::internal(format!("cannot open the log: {e}"))),
    };
    // A parent directory swapped for a link between the check and the open: what was opened is
    // what counts.
    use std::os::fd::AsRawFd;
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        && !opened.starts_with(&root)
    {
        tracing::warn!(path = %path.display(), opened = %opened.display(), "a job log was swapped for a file outside its shared filesystem; refused");
        return Err(log_unavailable(format!(
            "the job's log file is a link to somewhere outside the shared filesystem {EFS_MOUNT}; it is not served"
        )));
    }
    Ok(Some(file))
}
