//! Job logs: range reads (`GET …/logs`) and a live SSE stream (`GET …/logs/stream`).
//!
//! A job's stdout is a file on its cluster's shared filesystem, `/mnt/efs` as the job sees it
//! (`job_<id>.out` unless the body names another file there, with Slurm's filename patterns
//! expanded by `domain::filename`, as the local executor does). The server finds that filesystem
//! at the local executor's efs root for clusters without Slurm, and at
//! `<efs_mounts_dir>/<workspace>.<cluster>` for Slurm clusters. Only a file the job owns is served
//! (its user's area or a file named by its job id: two jobs never resolve to one file), and only
//! when reached without any link, so a job can neither read another job's output through its own
//! log nor make the server read its secrets. Only the job's owner and workspace admins may read
//! it; anyone else gets the same 404 as for a job that does not exist.

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
    /// The Unix user the local executor's jobs run as (what `%u` stands for there).
    pub local_user: String,
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

/// Finds the job (404 unless the caller may see it) and its log file: the stdout file its recorded
/// body names, expanded by the one expansion the local executor uses
/// ([`domain::filename::stdout_file`]), and only if that file is the job's own
/// ([`domain::filename::owned`]): under its user's area, or named by its job id. Anything else —
/// a pattern that cannot be expanded, a file another job could name — is 409 `log_unavailable`
/// saying why; there is no fallback to another file.
pub(crate) async fn locate(
    state: &AppState,
    caller: &Caller,
    id: &str,
    job_id: &str,
) -> Result<Located, ApiError> {
    use domain::filename::{self, JobNames};
    let (cluster, cluster_view) = crate::clusters::visible_cluster(state, caller, id).await?;
    let view = crate::jobs::visible_job(state, caller, &cluster, job_id).await?;
    let (root, unix_user) = match &cluster_view.slurm {
        None => (state.logs.local_root.clone(), state.logs.local_user.clone()),
        Some(slurm) => (
            state
                .logs
                .mounts_dir
                .join(format!("{}.{}", caller.workspace, cluster)),
            slurm.user.clone(),
        ),
    };
    let body = submitted_body(state, &view).await?;
    let Some(job) = body.get("job").filter(|j| j.is_object()) else {
        return Err(log_unavailable(
            "this job's submission body was not recorded (it was adopted from Slurm), so the file its output goes to is unknown".into(),
        ));
    };
    if job
        .get("array")
        .is_some_and(|a| !a.is_null() && a.as_str() != Some(""))
    {
        return Err(log_unavailable(
            "this is a job array: each task writes its own file, and the API serves the log of single jobs only".into(),
        ));
    }
    let first_node = view.node.as_deref().and_then(filename::first_node);
    let names = JobNames {
        job_id: view.job_id,
        name: filename::job_name(job),
        user: Some(unix_user.as_str()),
        array_task: None,
        first_node: first_node.as_deref(),
    };
    let expanded = filename::stdout_file(job, &names).map_err(|e| {
        log_unavailable(format!(
            "this job's standard_output cannot be expanded: {e}; use e.g. {EFS_MOUNT}/job_%j.out"
        ))
    })?;
    let (rel, _) = filename::owned(&expanded, EFS_MOUNT, &view.user).map_err(|e| {
        if !matches!(e, filename::NotOwned::Outside { .. }) {
            tracing::info!(job_id = view.job_id, user = %view.user, path = %expanded.path, "a job's log is not its own file; not served");
        }
        log_unavailable(format!("this job's log is not served: {e}"))
    })?;
    Ok(Located {
        path: root.join(rel),
        root,
        view,
    })
}

/// The body recorded in the job's `JobSubmitted`: the first event of its stream for jobs from
/// before the write-ahead request, else after its `JobSubmissionRequested` (and any failed
/// attempts before it). A stream is read until its `JobSubmitted`, a few events at most.
async fn submitted_body(state: &AppState, view: &JobView) -> Result<serde_json::Value, ApiError> {
    let stream = eventlog::StreamId::new(view.stream_id.clone())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut from = 0;
    loop {
        let batch = state.store.log.read_stream(&stream, from, 16).await?;
        let Some(last) = batch.last() else {
            return Err(ApiError::internal(format!(
                "job stream {} has no JobSubmitted",
                view.stream_id
            )));
        };
        from = last.stream_version;
        for event in &batch {
            match domain::DomainEvent::decode(&event.event_type, event.schema_version, &event.data)
            {
                Ok(Some(domain::DomainEvent::JobSubmitted(j))) => return Ok(j.body),
                Ok(_) => {}
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "job stream {}: {e}",
                        view.stream_id
                    )));
                }
            }
        }
    }
}

/// Opens the log at `path` (under `root`), only if that exact path is a regular file with one
/// name: no symbolic link anywhere below the root (a job could point its own log at another
/// job's file or at the server's secrets), no second hard link (the same through a link), no
/// pipe. `Ok(None)`: no file (yet).
pub(crate) fn open_confined(root: &Path, path: &Path) -> Result<Option<std::fs::File>, ApiError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(real_root) = std::fs::canonicalize(root) else {
        return Err(log_unavailable(
            "this cluster's shared filesystem is not mounted on the Clusterra server; an operator must mount it where `efs_mounts_dir` says (docs/logs.md)".into(),
        )
        .with_detail(format!("looked for it at {}", root.display())));
    };
    let Some(expected) = path
        .strip_prefix(root)
        .ok()
        .filter(|rel| rel.components().all(|c| matches!(c, Component::Normal(_))))
        .map(|rel| real_root.join(rel))
    else {
        return Err(ApiError::internal(format!(
            "the log {} is not under {}",
            path.display(),
            root.display()
        )));
    };
    let linked = || {
        tracing::warn!(path = %path.display(), "a job log path goes through a symbolic link or has other names; refused");
        log_unavailable(format!(
            "the job's log file is reached through a link (a symbolic link or another hard link); it is not served — a log must be a plain file under {EFS_MOUNT}"
        ))
    };
    match std::fs::canonicalize(&expected) {
        Ok(real) if real == expected => {}
        Ok(_) => return Err(linked()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::internal(format!("cannot resolve the log: {e}"))),
    }
    // O_NONBLOCK: a job that replaced its log by a named pipe must not hang the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(&expected);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(linked()),
        Err(e) => return Err(ApiError::internal(format!("cannot open the log: {e}"))),
    };
    match file.metadata() {
        Ok(m) if !m.is_file() => {
            return Err(log_unavailable(
                "the job's log path is not a regular file".into(),
            ));
        }
        Ok(m) if m.nlink() > 1 => return Err(linked()),
        Ok(_) => {}
        Err(e) => return Err(ApiError::internal(format!("cannot stat the log: {e}"))),
    }
    // A parent directory swapped for a link between the check and the open: what was opened is
    // what counts.
    use std::os::fd::AsRawFd;
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        && opened != expected
    {
        return Err(linked());
    }
    Ok(Some(file))
}
