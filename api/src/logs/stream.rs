//! `GET /v1/clusters/{id}/jobs/{job_id}/logs/stream`: the log as Server-Sent Events.
//!
//! Events (docs/logs.md):
//! - `log`: `{"offset": START, "text": "..."}`, or `{"offset": START, "base64": "..."}` when the
//!   chunk is not valid UTF-8. `id` is the byte offset after the chunk, so `Last-Event-ID`
//!   resumes exactly there. A chunk is at most `chunk_bytes` and never splits a UTF-8 character
//!   unless the file itself ends inside one; long lines are simply cut into several chunks.
//! - `reset`: `{"reason": "truncated"|"replaced"|"removed", "offset": N}`: the file shrank below
//!   what was sent, or is another file now; reading starts again at 0 of what is there (`id: 0`).
//! - `end`: `{"state", "exit_code", "offset"}` once the job is final and every byte was sent; then
//!   the stream closes.
//!
//! Idle streams get a `: heartbeat` comment; the first frame carries a `retry` hint. Frames are
//! rendered with [`crate::sse`]; a follower at the end of the log sends the hub's shared frame.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::hub::{Follow, Identity, JobEnd, JobRef};
use super::{Located, RawQuery, locate, number, open_confined, raw_query};
use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection};
use crate::query::unknown;
use crate::{ApiError, AppState};

/// The reconnect delay suggested to clients.
const RETRY: Duration = Duration::from_secs(2);
/// The shortest time between two events of one follower while the log grows.
const MIN_GAP: Duration = Duration::from_millis(20);

/// One client's position in one log.
struct Tail {
    path: PathBuf,
    root: PathBuf,
    offset: u64,
    file: Option<(Arc<std::fs::File>, Identity)>,
    follow: Follow,
    chunk: usize,
    done: bool,
    /// Wait for a change before looking again (the last frame left this follower caught up).
    wait_first: bool,
    heartbeat: Duration,
    sent_at: Instant,
    /// The job's end when it had ended before the stream started.
    known_end: Option<JobEnd>,
}

/// What one look at the file found.
enum Look {
    Bytes(Vec<u8>),
    Reset(&'static str),
    /// Nothing new (or no file yet).
    Idle,
    Failed(String),
}

/// Looks at the file once: blocking I/O, run on the blocking pool.
fn look(
    root: &std::path::Path,
    path: &std::path::Path,
    current: &mut Option<(Arc<std::fs::File>, Identity)>,
    offset: u64,
    chunk: usize,
) -> Look {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if current.take().is_some() {
                Look::Reset("removed")
            } else {
                Look::Idle
            };
        }
        Err(e) => return Look::Failed(e.to_string()),
    };
    let identity = (meta.dev(), meta.ino());
    if current.as_ref().is_some_and(|(_, id)| *id != identity) {
        *current = None;
        return Look::Reset("replaced");
    }
    if current.is_none() {
        match open_confined(root, path) {
            Ok(Some(f)) => {
                let id = f.metadata().map(|m| (m.dev(), m.ino())).unwrap_or(identity);
                *current = Some((Arc::new(f), id));
            }
            Ok(None) => return Look::Idle,
            Err(e) => return Look::Failed(e.message),
        }
    }
    let Some((file, _)) = current.as_ref() else {
        return Look::Idle;
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return Look::Failed(e.to_string()),
    };
    if len < offset {
        return Look::Reset("truncated");
    }
    if len == offset {
        return Look::Idle;
    }
    let want = ((len - offset) as usize).min(chunk);
    let mut buf = vec![0u8; want];
    match file.read_at(&mut buf, offset) {
        Ok(0) => Look::Idle,
        Ok(n) => {
            buf.truncate(n);
            Look::Bytes(buf)
        }
        Err(e) => Look::Failed(e.to_string()),
    }
}

/// Cuts a chunk so it does not end inside a UTF-8 character; `None` when all of it is the start
/// of one character and more bytes may still come.
pub(super) fn utf8_cut(mut bytes: Vec<u8>, more_may_come: bool) -> Option<Vec<u8>> {
    match std::str::from_utf8(&bytes) {
        Ok(_) => Some(bytes),
        Err(e) if e.error_len().is_none() && more_may_come => {
            if e.valid_up_to() == 0 {
                None
            } else {
                bytes.truncate(e.valid_up_to());
                Some(bytes)
            }
        }
        Err(_) => Some(bytes),
    }
}

/// The `log` frame of `bytes` read at `start`.
pub(super) fn log_frame(start: u64, bytes: Vec<u8>) -> Bytes {
    let end = start + bytes.len() as u64;
    let data = match String::from_utf8(bytes) {
        Ok(text) => json!({"offset": start, "text": text}),
        Err(e) => {
            json!({"offset": start, "base64": base64::engine::general_purpose::STANDARD.encode(e.into_bytes())})
        }
    };
    crate::sse::frame(Some("log"), Some(&end.to_string()), &data.to_string())
}

impl Tail {
    async fn next(&mut self) -> Option<Bytes> {
        let frame = self.next_frame().await;
        self.sent_at = Instant::now();
        frame
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if self.wait_first {
                let quiet_until = self.sent_at + self.heartbeat;
                match tokio::time::timeout_at(quiet_until, self.follow.rx.changed()).await {
                    Err(_) => return Some(crate::sse::heartbeat()),
                    Ok(Err(_)) => return None,
                    Ok(Ok(())) => self.wait_first = false,
                }
                // Coalesce: a log written line by line would otherwise be one event per line.
                // At most one event per MIN_GAP per follower keeps the event rate (and the
                // browser's work) bounded at the cost of at most MIN_GAP of latency.
                let since = self.sent_at.elapsed();
                if since < MIN_GAP {
                    tokio::time::sleep(MIN_GAP - since).await;
                }
            }
            let tick = self.follow.rx.borrow_and_update().clone();
            let end = tick.end.or(self.known_end);
            // The hub already read what comes next: send it. One chunk goes out as the hub
            // rendered it; several (this follower fell a little behind) as one event.
            if let Some((_, id)) = &self.file
                && let Some(chunks) = tick.chunks_from(*id, self.offset, 4 * self.chunk)
                && let Some(last) = chunks.last()
            {
                let start = self.offset;
                self.offset = last.end;
                // Wait for a change only when nothing the hub already read is left to send.
                let newest = tick.recent.back().map_or(last.end, |c| c.end);
                self.wait_first = end.is_none() && last.end == newest;
                return Some(if chunks.len() == 1 {
                    last.frame.clone()
                } else {
                    let raw: Vec<u8> = chunks.iter().flat_map(|c| c.raw.iter().copied()).collect();
                    log_frame(start, raw)
                });
            }
            let (root, path, offset, chunk) = (
                self.root.clone(),
                self.path.clone(),
                self.offset,
                self.chunk,
            );
            let mut current = self.file.take();
            let looked = tokio::task::spawn_blocking(move || {
                let found = look(&root, &path, &mut current, offset, chunk);
                (found, current)
            })
            .await;
            let (found, current) = match looked {
                Ok(x) => x,
                Err(e) => (Look::Failed(e.to_string()), None),
            };
            self.file = current;
            match found {
                Look::Bytes(bytes) => {
                    let n = bytes.len() as u64;
                    let more = end.is_none() || self.offset + n < self.file_len();
                    if let Some(bytes) = utf8_cut(bytes, more) {
                        let start = self.offset;
                        self.offset += bytes.len() as u64;
                        return Some(log_frame(start, bytes));
                    }
                    self.wait_first = true;
                }
                Look::Reset(reason) => {
                    let was = self.offset;
                    self.offset = 0;
                    return Some(crate::sse::frame(
                        Some("reset"),
                        Some("0"),
                        &json!({"reason": reason, "offset": was}).to_string(),
                    ));
                }
                Look::Failed(message) => {
                    tracing::warn!(path = %self.path.display(), %message, "log stream failed");
                    self.done = true;
                    return Some(crate::sse::frame(
                        Some("error"),
                        None,
                        &json!({"code": "log_unreadable", "message": message}).to_string(),
                    ));
                }
                Look::Idle => {
                    if let Some(JobEnd { state, exit_code }) = end {
                        self.done = true;
                        return Some(crate::sse::frame(
                            Some("end"),
                            Some(&self.offset.to_string()),
                            &json!({"state": state.as_str(), "exit_code": exit_code, "offset": self.offset}).to_string(),
                        ));
                    }
                    self.wait_first = true;
                }
            }
        }
    }

    fn file_len(&self) -> u64 {
        self.file
            .as_ref()
            .and_then(|(f, _)| f.metadata().ok())
            .map_or(0, |m| m.len())
    }
}

/// Where a stream starts: `Last-Event-ID` (a reconnect) wins over `?offset=`.
fn start_offset(headers: &HeaderMap, query: RawQuery) -> Result<u64, ApiError> {
    let q = raw_query(query)?;
    unknown(&q, &["offset"])?;
    if let Some(id) = crate::sse::last_event_id(headers, "a byte offset")? {
        return Ok(id);
    }
    Ok(number(&q, "offset", i64::MAX as u64)?.unwrap_or(0))
}

/// Follow the job's log live.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/jobs/{job_id}/logs/stream",
    tag = "logs",
    params(("id" = String, Path, description = "Cluster id"), ("job_id" = u64, Path, maximum = 4294967295_i64, description = "Slurm job id (a 32-bit number)"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible"),
        ("offset" = Option<u64>, Query, maximum = 9223372036854775807_i64, description = "Byte offset to start at (default 0)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event (a byte offset); wins over offset")),
    responses(
        (status = 200, description = "text/event-stream of `log`, `reset`, `error` and `end` events (docs/logs.md)", content_type = "text/event-stream"),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such job that you can see", body = crate::error::ErrorBody),
        (status = 409, description = "log_unavailable: the job's output file cannot be served — a pattern that cannot be expanded, a file the job does not own (outside its user's area and not named by its job id), a link, or a shared filesystem not mounted on the server", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path((id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let offset = start_offset(&headers, query)?;
    await_projection(&state, projections::views::jobs::NAME, min).await;
    let Located { view, path, root } = locate(&state, &caller, &id, &job_id).await?;
    let follow = state.logs.hub.follow(
        &path,
        &root,
        JobRef {
            workspace: view.workspace.clone(),
            cluster: view.cluster_id.clone(),
            job_id: view.job_id,
        },
    );
    // The job may have ended long ago: know it at once instead of after a polling tick.
    let known_end = view.state.is_terminal().then_some(JobEnd {
        state: view.state,
        exit_code: view.exit_code,
    });
    let tail = Tail {
        path,
        root,
        offset,
        file: None,
        follow,
        chunk: state.logs.chunk_bytes,
        done: false,
        wait_first: false,
        heartbeat: state.logs.heartbeat,
        sent_at: Instant::now(),
        known_end,
    };
    let hello = crate::sse::hello("clusterra log stream", RETRY);
    let frames = futures::stream::once(async move { hello })
        .chain(futures::stream::unfold(tail, |mut tail| async move {
            tail.next().await.map(|f| (f, tail))
        }));
    Ok(crate::sse::response(frames))
}

#[cfg(test)]
mod tests {
    use super::{Look, look, utf8_cut};

    #[test]
    fn a_replaced_truncated_or_removed_log_is_a_reset_not_a_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job_1.out");
        std::fs::write(&path, "first file\n").unwrap();
        let mut current = None;
        let Look::Bytes(b) = look(dir.path(), &path, &mut current, 0, 1024) else {
            panic!("the file's bytes")
        };
        assert_eq!(b, b"first file\n");
        // Replaced by another file (a new inode at the same path).
        let other = dir.path().join("new");
        std::fs::write(&other, "second\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(matches!(
            look(dir.path(), &path, &mut current, 11, 1024),
            Look::Reset("replaced")
        ));
        // Read again from 0 of the new file; then it shrinks below what was sent.
        assert!(matches!(
            look(dir.path(), &path, &mut current, 0, 1024),
            Look::Bytes(_)
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2)
            .unwrap();
        assert!(matches!(
            look(dir.path(), &path, &mut current, 7, 1024),
            Look::Reset("truncated")
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            look(dir.path(), &path, &mut current, 0, 1024),
            Look::Reset("removed")
        ));
        assert!(matches!(
            look(dir.path(), &path, &mut current, 0, 1024),
            Look::Idle
        ));
    }

    #[test]
    fn a_log_replaced_by_a_named_pipe_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job_1.out");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut current = None;
        match look(dir.path(), &path, &mut current, 0, 1024) {
            Look::Failed(message) => assert!(message.contains("not a regular file"), "{message}"),
            _ => panic!("a named pipe must not be read"),
        }
    }

    #[test]
    fn a_log_reached_through_any_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("efs");
        std::fs::create_dir_all(root.join("users/bob@lab.org")).unwrap();
        let secret = dir.path().join("jwt-secret");
        std::fs::write(&secret, "s3cr3t").unwrap();
        let other = root.join("job_7.out");
        std::fs::write(&other, "another job's output").unwrap();
        let refused = |path: &std::path::Path| {
            let mut current = None;
            match look(&root, path, &mut current, 0, 1024) {
                Look::Failed(message) => assert!(message.contains("link"), "{message}"),
                _ => panic!("{} must not be read", path.display()),
            }
        };
        // Out of the root, to the server's secret.
        let path = root.join("job_1.out");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        refused(&path);
        // Inside the root, to another job's file: a symbolic link, a hard link, a linked folder.
        let path = root.join("users/bob@lab.org/mine.out");
        std::os::unix::fs::symlink(&other, &path).unwrap();
        refused(&path);
        let path = root.join("users/bob@lab.org/hard.out");
        std::fs::hard_link(&other, &path).unwrap();
        refused(&path);
        refused(&other);
        std::os::unix::fs::symlink(&root, root.join("users/bob@lab.org/all")).unwrap();
        refused(&root.join("users/bob@lab.org/all/job_7.out"));
        // A plain file is read.
        let path = root.join("users/bob@lab.org/plain.out");
        std::fs::write(&path, "mine").unwrap();
        let mut current = None;
        assert!(matches!(
            look(&root, &path, &mut current, 0, 1024),
            Look::Bytes(_)
        ));
    }

    #[test]
    fn chunks_do_not_split_characters_while_the_file_grows() {
        let euro = "€".as_bytes().to_vec(); // 3 bytes
        let mut partial = b"ab".to_vec();
        partial.extend_from_slice(&euro[..2]);
        assert_eq!(utf8_cut(partial.clone(), true), Some(b"ab".to_vec()));
        // The file ended inside the character: send what is there.
        assert_eq!(utf8_cut(partial.clone(), false), Some(partial));
        assert_eq!(utf8_cut(euro[..1].to_vec(), true), None);
        // Invalid bytes in the middle are sent as they are (base64 downstream).
        assert_eq!(
            utf8_cut(vec![b'a', 0xff, b'b'], true),
            Some(vec![b'a', 0xff, b'b'])
        );
    }
}
