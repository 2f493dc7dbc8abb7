//! `GET /v1/clusters/{id}/jobs/{job_id}/logs`: the log as plain text, whole or in part.

use std::os::unix::fs::FileExt;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::job::JobState;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{Located, RawQuery, locate, number, open_confined, raw_query};
use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection};
use crate::query::unknown;
use crate::{ApiError, AppState};

pub const NEXT_OFFSET: &str = "x-clusterra-next-offset";
pub const LOG_SIZE: &str = "x-clusterra-log-size";
pub const LOG_STATUS: &str = "x-clusterra-log-status";
pub const JOB_STATE: &str = "x-clusterra-job-state";

/// The most lines `tail` takes.
const MAX_TAIL: u64 = 100_000;

/// Which bytes a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// `offset` (+ `limit`), or nothing: from `offset` to the end or `limit` bytes.
    From { offset: u64, limit: Option<u64> },
    /// `tail=N`: the last N lines.
    Tail(u64),
    /// A `Range` header: answered 206.
    Range(RangeSpec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// `bytes=a-b` or `bytes=a-`.
    Span(u64, Option<u64>),
    /// `bytes=-n`.
    Suffix(u64),
}

fn bad_range(size: Option<u64>, message: impl Into<String>, field: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
        message,
    )
    .with_field(field)
    .into_response();
    if let Some(size) = size
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
    {
        response.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    response
}

/// Why a `Range` header is refused: not of the documented form (400), or well formed but not
/// servable (416).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RangeError {
    Malformed(String),
    Unsatisfiable(String),
}

/// Parses a `Range` header value (one byte range; several are refused).
fn parse_range(value: &str) -> Result<RangeSpec, RangeError> {
    parse_range_text(value)
        .map_err(RangeError::Malformed)
        .and_then(|spec| match spec {
            RangeSpec::Span(a, Some(b)) if b < a => Err(RangeError::Unsatisfiable(format!(
                "the range ends ({b}) before it starts ({a})"
            ))),
            spec => Ok(spec),
        })
}

/// The documented form: `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`.
fn parse_range_text(value: &str) -> Result<RangeSpec, String> {
    let spec = value
        .trim()
        .strip_prefix("bytes=")
        .ok_or("only byte ranges are served: Range: bytes=START-END")?;
    if spec.contains(',') {
        return Err("one range per request: Range: bytes=START-END".into());
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or("a range is START-END, START- or -SUFFIX, e.g. bytes=0-1023")?;
    let num = |s: &str| {
        let s = s.trim();
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| format!("{s:?} is not a byte position"))
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => Err("a range needs a start or a suffix length, e.g. bytes=0-1023".into()),
        (true, false) => Ok(RangeSpec::Suffix(num(b)?)),
        (false, true) => Ok(RangeSpec::Span(num(a)?, None)),
        (false, false) => Ok(RangeSpec::Span(num(a)?, Some(num(b)?))),
    }
}

fn boxed(e: ApiError) -> Box<Response> {
    Box::new(e.into_response())
}

fn want(headers: &HeaderMap, query: RawQuery) -> Result<Want, Box<Response>> {
    let q = raw_query(query).map_err(boxed)?;
    unknown(&q, &["offset", "limit", "tail"]).map_err(boxed)?;
    let offset = number(&q, "offset", i64::MAX as u64).map_err(boxed)?;
    let limit = number(&q, "limit", i64::MAX as u64).map_err(boxed)?;
    let tail = number(&q, "tail", MAX_TAIL).map_err(boxed)?;
    let conflict = |field: &str, message: &str| {
        Box::new(
            ApiError::new(StatusCode::BAD_REQUEST, "conflicting_parameters", message)
                .with_field(field)
                .into_response(),
        )
    };
    let range = headers.get(header::RANGE);
    if range.is_some() && (offset.is_some() || limit.is_some() || tail.is_some()) {
        return Err(conflict(
            "headers.range",
            "send either a Range header or offset/limit/tail, not both",
        ));
    }
    if tail.is_some() && (offset.is_some() || limit.is_some()) {
        return Err(conflict(
            "tail",
            "tail counts lines back from the end; it cannot be combined with offset or limit",
        ));
    }
    if let Some(range) = range {
        let malformed = |message: String| {
            Box::new(
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_range", message)
                    .with_field("headers.range")
                    .into_response(),
            )
        };
        let text = range.to_str().map_err(|_| {
            malformed("the Range header is not text: send Range: bytes=START-END".into())
        })?;
        return parse_range(text).map(Want::Range).map_err(|e| match e {
            RangeError::Malformed(m) => malformed(m),
            RangeError::Unsatisfiable(m) => Box::new(bad_range(None, m, "headers.range")),
        });
    }
    Ok(match tail {
        Some(n) => Want::Tail(n),
        None => Want::From {
            offset: offset.unwrap_or(0),
            limit,
        },
    })
}

/// Where the last `lines` lines start. A newline at the very end closes the last line; it does not
/// start an empty one.
fn tail_start(file: &std::fs::File, size: u64, lines: u64) -> std::io::Result<u64> {
    if lines == 0 || size == 0 {
        return Ok(size);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = size;
    let mut seen = 0u64;
    let mut last = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte != b'\n' || (last && at == size - 1) {
                continue;
            }
            seen += 1;
            if seen == lines {
                return Ok(at + 1);
            }
        }
        last = false;
        end = start;
    }
    Ok(0)
}

fn status_of(view_state: JobState, exists: bool) -> &'static str {
    match (exists, view_state) {
        (false, JobState::Pending) => "not-started",
        (false, _) => "missing",
        (true, s) if s.is_terminal() => "complete",
        (true, _) => "growing",
    }
}

fn head(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(name, v);
    }
}

/// The job's log as plain text.
#[utoipa::path(
    get,
    path = "/v1/clusters/{id}/jobs/{job_id}/logs",
    tag = "logs",
    params(("id" = String, Path, description = "Cluster id"), ("job_id" = u64, Path, maximum = 4294967295_i64, description = "Slurm job id (a 32-bit number)"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible"),
        ("offset" = Option<u64>, Query, maximum = 9223372036854775807_i64, description = "First byte to send (default 0)"),
        ("limit" = Option<u64>, Query, maximum = 9223372036854775807_i64, description = "Most bytes to send (default: to the end)"),
        ("tail" = Option<u64>, Query, maximum = 100000, description = "Send the last N lines instead (at most 100000)"),
        ("Range" = Option<String>, Header, pattern = "^bytes=([0-9]{1,18}-[0-9]{0,18}|-[0-9]{1,18})$", description = "One byte range, `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`; answered 206")),
    responses(
        (status = 200, description = "The bytes asked for (empty before the job writes anything); headers X-Clusterra-Next-Offset, X-Clusterra-Log-Size, X-Clusterra-Log-Status (not-started, missing, growing, complete), X-Clusterra-Job-State", content_type = "text/plain"),
        (status = 206, description = "The Range asked for, with Content-Range", content_type = "text/plain"),
        (status = 400, description = "A bad parameter", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "No such job that you can see", body = crate::error::ErrorBody),
        (status = 409, description = "log_unavailable: the job's output file cannot be served — a pattern that cannot be expanded, a file the job does not own (outside its user's area and not named by its job id), a link, or a shared filesystem not mounted on the server", body = crate::error::ErrorBody),
        (status = 416, description = "The range or offset lies beyond the log, or the range ends before it starts", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path((id, job_id)): Path<(String, String)>,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, ApiError> {
    let want = match want(&headers, query) {
        Ok(w) => w,
        Err(response) => return Ok(*response),
    };
    await_projection(&state, projections::views::jobs::NAME, min).await;
    let Located { view, path, root } = locate(&state, &caller, &id, &job_id).await?;
    let file = tokio::task::spawn_blocking(move || open_confined(&root, &path))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut out = HeaderMap::new();
    head(&mut out, JOB_STATE, view.state.as_str());
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let Some(file) = file else {
        head(&mut out, LOG_STATUS, status_of(view.state, false));
        head(&mut out, LOG_SIZE, 0);
        head(&mut out, NEXT_OFFSET, 0);
        return Ok((StatusCode::OK, out, Body::empty()).into_response());
    };
    let size = file
        .metadata()
        .map_err(|e| ApiError::internal(format!("cannot stat the log: {e}")))?
        .len();
    head(&mut out, LOG_STATUS, status_of(view.state, true));
    head(&mut out, LOG_SIZE, size);
    let (status, start, len) = match want {
        Want::From { offset, limit } => {
            if offset > size {
                return Ok(bad_range(
                    Some(size),
                    format!(
                        "offset {offset} is past the end of the log ({size} bytes so far); read from at most {size}"
                    ),
                    "offset",
                ));
            }
            let len = limit.map_or(size - offset, |l| l.min(size - offset));
            (StatusCode::OK, offset, len)
        }
        Want::Tail(lines) => {
            let (file, start) = tokio::task::spawn_blocking(move || {
                tail_start(&file, size, lines).map(|start| (file, start))
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
            return body(file, StatusCode::OK, out, start, size - start).await;
        }
        Want::Range(RangeSpec::Span(a, b)) => {
            if a >= size {
                return Ok(bad_range(
                    Some(size),
                    format!(
                        "the range starts at {a}, past the end of the log ({size} bytes so far)"
                    ),
                    "headers.range",
                ));
            }
            let end = b.map_or(size - 1, |b| b.min(size - 1));
            (StatusCode::PARTIAL_CONTENT, a, end - a + 1)
        }
        Want::Range(RangeSpec::Suffix(n)) => {
            if n == 0 || size == 0 {
                return Ok(bad_range(
                    Some(size),
                    "a suffix range needs at least one byte of log",
                    "headers.range",
                ));
            }
            let start = size.saturating_sub(n);
            (StatusCode::PARTIAL_CONTENT, start, size - start)
        }
    };
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1))
    {
        out.insert(header::CONTENT_RANGE, v);
    }
    body(file, status, out, start, len).await
}

/// Streams `len` bytes from `start`: a 1 GiB log never sits in memory.
async fn body(
    file: std::fs::File,
    status: StatusCode,
    mut out: HeaderMap,
    start: u64,
    len: u64,
) -> Result<Response, ApiError> {
    head(&mut out, NEXT_OFFSET, start + len);
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let mut file = tokio::fs::File::from_std(file);
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
    let stream = ReaderStream::with_capacity(file.take(len), 256 * 1024);
    Ok((status, out, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9"), Ok(RangeSpec::Span(0, Some(9))));
        assert_eq!(parse_range("bytes=5-"), Ok(RangeSpec::Span(5, None)));
        assert_eq!(parse_range("bytes=-3"), Ok(RangeSpec::Suffix(3)));
        assert!(matches!(
            parse_range("bytes=9-0"),
            Err(RangeError::Unsatisfiable(_))
        ));
        for malformed in [
            "bytes=0-1,4-5",
            "lines=0-1",
            "bytes=-",
            "bytes=x-1",
            "bytes=+0-+5",
            ">]<A&'0",
        ] {
            assert!(
                matches!(parse_range(malformed), Err(RangeError::Malformed(_))),
                "{malformed}"
            );
        }
    }

    #[test]
    fn tail_counts_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text = "a\nbb\nccc\n";
        std::fs::write(&path, text).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let size = text.len() as u64;
        assert_eq!(tail_start(&file, size, 1).unwrap(), 5);
        assert_eq!(tail_start(&file, size, 2).unwrap(), 2);
        assert_eq!(tail_start(&file, size, 3).unwrap(), 0);
        assert_eq!(tail_start(&file, size, 99).unwrap(), 0);
        assert_eq!(tail_start(&file, size, 0).unwrap(), size);
        // Without a final newline the unfinished line counts as one.
        std::fs::write(&path, "a\nbb").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(tail_start(&file, 4, 1).unwrap(), 2);
        // Lines longer than the scan block.
        let long = format!("{}\n{}\n", "x".repeat(100_000), "y".repeat(70_000));
        std::fs::write(&path, &long).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(tail_start(&file, long.len() as u64, 1).unwrap(), 100_001);
    }
}
