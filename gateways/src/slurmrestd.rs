//! The slurmrestd adapter (data_parser v0.0.44) behind the Slurm port.
//!
//! Authenticates with Slurm's JWT headers (`X-SLURM-USER-NAME`, `X-SLURM-USER-TOKEN`). Request
//! and response types are separate, as v0.0.44 spells the same field differently in each
//! (`tasks` is a plain int in a request, a `{set, infinite, number}` object in a response), and
//! the response decoder accepts both the object and the bare form of wrapped numbers.
//! Every body is parsed, even on non-2xx answers: Slurm puts its reasons in `errors[]`. An
//! answer that is not a v0.0.44 document ([`document`]) is an error, never an empty result.
//! Each call has a timeout (connection included) and a size limit on its answer; a token file is
//! re-read when it changes. A listing of the whole queue may take longer than other calls on a
//! big, busy cluster: its timeout follows how the last ones ended ([`Listing`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use commands::slurm::{Accepted, SlurmError, SlurmJob, SlurmPort, StateReport};
use domain::job::JobState;
use serde::Deserialize;

/// Slurm's error number that means "no such job": "Invalid job id specified".
const ESLURM_INVALID_JOB_ID: i64 = 2017;

/// A v0.0.44 wrapped number in a response: `{"set", "infinite", "number"}`, or a bare number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum NoVal {
    Wrapped {
        #[serde(default)]
        set: bool,
        #[serde(default)]
        infinite: bool,
        #[serde(default)]
        number: f64,
    },
    Bare(f64),
    #[default]
    Missing,
}

impl NoVal {
    /// The value when one is set (not unset, not infinite).
    pub fn value(self) -> Option<f64> {
        match self {
            NoVal::Wrapped {
                set: true,
                infinite: false,
                number,
            } => Some(number),
            NoVal::Bare(n) => Some(n),
            _ => None,
        }
    }

    fn time(self) -> Option<DateTime<Utc>> {
        self.value()
            .filter(|s| *s > 0.0)
            .and_then(|s| Utc.timestamp_opt(s as i64, 0).single())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExitCode {
    #[serde(default)]
    pub status: Vec<String>,
    #[serde(default)]
    pub return_code: NoVal,
    #[serde(default)]
    pub signal: Option<Signal>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Signal {
    #[serde(default)]
    pub id: NoVal,
    #[serde(default)]
    pub name: Option<String>,
}

/// The fields of `v0.0.44_job_info` Clusterra reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobInfo {
    pub job_id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub job_state: Vec<String>,
    #[serde(default)]
    pub state_reason: Option<String>,
    #[serde(default)]
    pub exit_code: Option<ExitCode>,
    #[serde(default)]
    pub submit_time: NoVal,
    #[serde(default)]
    pub start_time: NoVal,
    #[serde(default)]
    pub end_time: NoVal,
    #[serde(default)]
    pub nodes: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenApiError {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_number: Option<i64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

impl OpenApiError {
    fn readable(&self) -> String {
        let text = self.error.clone().unwrap_or_else(|| "unknown error".into());
        match self.error_number {
            Some(2127) | Some(2019) => {
                format!("{text}: send at least [\"PATH=/usr/bin:/bin\"] as job.environment")
            }
            Some(2014) => format!(
                "{text}: no node shape can satisfy this request (too many CPUs or too much memory?)"
            ),
            Some(2063) => format!("{text}: set job.current_working_directory"),
            Some(2051) => format!("{text}: lower job.time_limit"),
            _ => text,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Warning {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubmitResponse {
    #[serde(default)]
    pub job_id: Option<u64>,
    #[serde(default)]
    pub errors: Vec<OpenApiError>,
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobInfoResponse {
    #[serde(default)]
    pub jobs: Vec<JobInfo>,
    #[serde(default)]
    pub errors: Vec<OpenApiError>,
}

/// `GET /jobs/state/`: each job's id and state (v0.0.44 `JOB_STATE_RESP`; the route table
/// advertises a job-info document, the handler answers this one).
#[derive(Debug, Default, Deserialize)]
pub struct JobStateResponse {
    #[serde(default)]
    pub jobs: Vec<JobStateEntry>,
    #[serde(default)]
    pub errors: Vec<OpenApiError>,
}

/// `GET /ping/` (v0.0.44 `openapi_ping_array_resp`): one entry per controller.
#[derive(Debug, Default, Deserialize)]
pub struct PingResponse {
    #[serde(default)]
    pub pings: Vec<Ping>,
    #[serde(default)]
    pub errors: Vec<OpenApiError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ping {
    #[serde(default)]
    pub responding: bool,
}

/// What a ping's answer says: reachable only when it reports no error and some controller
/// responds (slurmrestd answers a ping even when slurmctld does not).
fn ping_verdict(res: &PingResponse) -> Result<(), SlurmError> {
    if !res.errors.is_empty() {
        return Err(SlurmError::Unavailable(readable(&res.errors)));
    }
    if !res.pings.iter().any(|p| p.responding) {
        return Err(SlurmError::Unavailable(
            "slurmrestd answered a ping, but no Slurm controller responds".into(),
        ));
    }
    Ok(())
}

/// A listing document: what it says went wrong, if anything.
trait ListingDocument {
    fn errors(&self) -> &[OpenApiError];
}

impl ListingDocument for JobInfoResponse {
    fn errors(&self) -> &[OpenApiError] {
        &self.errors
    }
}

impl ListingDocument for JobStateResponse {
    fn errors(&self) -> &[OpenApiError] {
        &self.errors
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobStateEntry {
    /// A string: `"123"`, or `"123_4"` / `"123_[1-3]"` for array tasks, `"123+1"` for
    /// heterogeneous components (a bare number is accepted too).
    pub job_id: JobIdText,
    #[serde(default)]
    pub state: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum JobIdText {
    Number(u64),
    Text(String),
}

impl JobStateEntry {
    /// The port's view, for a plain job id; array tasks and heterogeneous components are left
    /// out (Clusterra's job is looked up by its own id when the listing lacks it).
    pub fn to_port(&self) -> Option<StateReport> {
        let job_id = match &self.job_id {
            JobIdText::Number(n) => *n,
            JobIdText::Text(t) => t.parse().ok()?,
        };
        Some(StateReport {
            job_id,
            state: JobState::from_slurm(&self.state),
        })
    }
}

impl JobInfo {
    /// The port's view of this job.
    pub fn to_port(&self) -> SlurmJob {
        let state = JobState::from_slurm(&self.job_state).unwrap_or_else(|| {
            tracing::warn!(job_id = self.job_id, states = ?self.job_state, "unknown Slurm job state; treating it as PENDING");
            JobState::Pending
        });
        let exit_code = self.exit_code.as_ref().and_then(|e| {
            let signal = e.signal.as_ref().and_then(|s| s.id.value());
            match (e.return_code.value(), signal) {
                (_, Some(sig)) if sig > 0.0 => Some(128 + sig as i32),
                (Some(rc), _) if state.is_terminal() => Some(rc as i32),
                _ => None,
            }
        });
        SlurmJob {
            job_id: self.job_id,
            name: self.name.clone(),
            state,
            reason: self.state_reason.clone(),
            exit_code,
            node: self.nodes.clone().filter(|n| !n.is_empty()),
            submit_time: self.submit_time.time(),
            start_time: self.start_time.time(),
            end_time: self.end_time.time().filter(|_| state.is_terminal()),
            comment: self.comment.clone().filter(|c| !c.is_empty()),
            usage: state.is_terminal().then(unmeasured),
        }
    }
}

/// What slurmctld's job record says of a finished job's use: nothing. CPU time and peak memory
/// are kept by Slurm's accounting (slurmdbd, `GET /slurmdb/v0.0.44/job/{id}`), which the
/// controller's API this adapter reads does not carry.
fn unmeasured() -> commands::slurm::Usage {
    commands::slurm::Usage {
        cpu_ms: None,
        peak_memory_bytes: None,
        source: "none".into(),
        note: Some(
            "Slurm's controller does not report it; only its accounting (slurmdbd) does".into(),
        ),
        partial: false,
    }
}

/// An answer that is not a v0.0.44 document: nothing in it is believed.
fn not_a_document(status: u16, what: &str) -> SlurmError {
    SlurmError::Unavailable(format!(
        "slurmrestd answered HTTP {status} with {what}, not a v0.0.44 document; nothing was read from it"
    ))
}

/// What a body that is not JSON looks like, in a few words (never the body itself).
fn describe_body(body: &str) -> &'static str {
    let t = body.trim_start();
    if t.is_empty() {
        "an empty body"
    } else if t.starts_with('<') {
        "an HTML page (a proxy's error page?)"
    } else {
        "a body that is not JSON"
    }
}

/// Reads a slurmrestd answer as a v0.0.44 document of type `T`, or fails: the body must be a
/// JSON object with `meta` (whose `plugin.data_parser`, when given, is `data_parser/v0.0.44`)
/// and `errors`/`warnings` arrays when present; without errors the status must be 2xx and
/// `required` (the field the answer exists for: `jobs`, `job_id`, `status`) must be there; and
/// every field Clusterra reads must have its v0.0.44 shape. A proxy's HTML 502, a 404 page,
/// `{}` or garbage are all errors, so a caller can never mistake them for "no jobs" or "done".
pub fn document<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &str,
    required: &str,
) -> Result<T, SlurmError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|_| not_a_document(status, describe_body(body)))?;
    let Some(object) = value.as_object() else {
        return Err(not_a_document(status, "JSON that is not an object"));
    };
    let Some(meta) = object.get("meta").and_then(serde_json::Value::as_object) else {
        return Err(not_a_document(status, "a JSON object without `meta`"));
    };
    if let Some(parser) = meta
        .get("plugin")
        .and_then(|p| p.get("data_parser"))
        .and_then(serde_json::Value::as_str)
        && parser != "data_parser/v0.0.44"
    {
        return Err(not_a_document(status, &format!("data parser {parser:?}")));
    }
    for list in ["errors", "warnings"] {
        if object.get(list).is_some_and(|v| !v.is_array()) {
            return Err(not_a_document(
                status,
                &format!("`{list}` that is not a list"),
            ));
        }
    }
    let has_errors = object
        .get("errors")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|e| !e.is_empty());
    if !has_errors {
        if !(200..300).contains(&status) {
            return Err(SlurmError::Unavailable(format!(
                "slurmrestd answered HTTP {status} without saying why"
            )));
        }
        if !object.contains_key(required) {
            return Err(not_a_document(status, &format!("no `{required}`")));
        }
    }
    serde_json::from_value(value).map_err(|e| {
        // The server log gets serde's words (they may quote the body); the error does not.
        tracing::warn!(status, error = %e, "slurmrestd answered a field of the wrong shape");
        not_a_document(status, "a field of the wrong shape")
    })
}

/// Slurm said it does not know the job: error 2017, "Invalid job id specified" (HTTP 404).
fn says_unknown(errors: &[OpenApiError]) -> bool {
    errors
        .iter()
        .any(|e| e.error_number == Some(ESLURM_INVALID_JOB_ID))
}

/// Errors Slurm reported that are not about the job itself: the controller or the REST daemon
/// could not do the call (502 no controller, 503, 504 socket timeout).
fn server_side(status: u16) -> bool {
    matches!(status, 502..=504)
}

fn readable(errors: &[OpenApiError]) -> String {
    errors
        .iter()
        .map(OpenApiError::readable)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One entry of a cancel answer's `status[]`: the signal's outcome for a job or step.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KillStatus {
    #[serde(default)]
    pub error: Option<KillError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct KillError {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub string: Option<String>,
}

/// `v0.0.44_openapi_kill_job_resp`.
#[derive(Debug, Default, Deserialize)]
pub struct KillResponse {
    #[serde(default)]
    pub status: Vec<KillStatus>,
    #[serde(default)]
    pub errors: Vec<OpenApiError>,
}

/// "Job/step already completing or completed": cancelling a finished job is success.
const ESLURM_ALREADY_DONE: i64 = 2021;

/// The verdict on a cancel answer: `Ok` only when Slurm accepted the request.
fn cancel_verdict(status: u16, res: &KillResponse, job_id: u64) -> Result<(), SlurmError> {
    if says_unknown(&res.errors) {
        return Err(SlurmError::UnknownJob(job_id));
    }
    if !res.errors.is_empty() {
        return Err(if server_side(status) {
            SlurmError::Unavailable(readable(&res.errors))
        } else {
            SlurmError::Rejected(res.errors.iter().map(OpenApiError::readable).collect())
        });
    }
    for s in &res.status {
        let Some(e) = &s.error else { continue };
        match e.code {
            None | Some(0) | Some(ESLURM_ALREADY_DONE) => {}
            Some(ESLURM_INVALID_JOB_ID) => return Err(SlurmError::UnknownJob(job_id)),
            Some(code) => {
                return Err(SlurmError::Rejected(vec![
                    e.message
                        .clone()
                        .or_else(|| e.string.clone())
                        .unwrap_or_else(|| format!("Slurm error {code}")),
                ]));
            }
        }
    }
    Ok(())
}

/// Where the JWT comes from: given once, or a file re-read whenever it changes (rotation).
enum Token {
    Fixed(String),
    File {
        path: std::path::PathBuf,
        cached: std::sync::Mutex<FileToken>,
    },
}

struct FileToken {
    /// (modified, length, inode) when last read.
    stamp: Option<(std::time::SystemTime, u64, u64)>,
    token: String,
}

fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl Token {
    /// The token to send now: a file's is re-read when its modification time, size or inode
    /// changed since it was last read (a stat per call; unreadable → the last one read).
    fn current(&self) -> String {
        match self {
            Token::Fixed(t) => t.clone(),
            Token::File { path, cached } => {
                let mut c = cached.lock().unwrap_or_else(|p| p.into_inner());
                let now = stamp(path);
                if now.is_some() && now != c.stamp {
                    match std::fs::read_to_string(path) {
                        Ok(t) => {
                            if t.trim() != c.token {
                                tracing::info!(file = %path.display(), "slurmrestd token file changed; using the new token");
                            }
                            c.token = t.trim().to_string();
                            c.stamp = now;
                        }
                        Err(e) => {
                            tracing::warn!(file = %path.display(), error = %e, "slurmrestd token file unreadable; keeping the last token read")
                        }
                    }
                }
                c.token.clone()
            }
        }
    }

    /// Re-reads a token file whatever its stamp says (after a 401: a rewrite within the
    /// file system's timestamp resolution keeps the stamp). True when the token changed.
    fn reload(&self) -> bool {
        let Token::File { path, cached } = self else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let mut c = cached.lock().unwrap_or_else(|p| p.into_inner());
        c.stamp = stamp(path);
        let changed = text.trim() != c.token;
        c.token = text.trim().to_string();
        changed
    }
}

/// How long one call to slurmrestd may take, connection included, unless set otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a listing of the whole queue is waited for, however slow the last one was
/// (unless the call timeout itself is longer).
pub const MAX_LISTING_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times the last answered listing's duration the next one may take.
const LISTING_SLACK: u32 = 4;

/// How many job ids one `GET /jobs/state/?job_id=…` names ([`SlurmPort::states_of`]).
/// slurmrestd 26.05 answered 5,000 (a 58 KB query) and failed 10,000 (HTTP 500); on a Slurm
/// holding 42,754 jobs, 1,000 ids took 18 ms where the whole listing took 16 s. At most ~18
/// bytes an id, so a query stays under 18 KB.
const STATES_PER_CALL: usize = 1_000;

/// The path of a listing of these jobs' states. The ids are repeated (`job_id=1&job_id=2`):
/// the comma-separated form the reference gives (`job_id=1,2`) fails on slurmrestd 26.05 with
/// HTTP 500 "Unspecified error"; a single id, or the repeated form, works, and ids Slurm does
/// not know are left out of the answer.
fn states_query(ids: &[u64]) -> String {
    use std::fmt::Write as _;
    let mut path = String::with_capacity(14 + ids.len() * 18);
    path.push_str("/jobs/state/");
    for (i, id) in ids.iter().enumerate() {
        let _ = write!(path, "{}job_id={id}", if i == 0 { '?' } else { '&' });
    }
    path
}

/// One kind of listing of the whole queue (`/jobs/state/` or `/jobs/`) and how long the next
/// one may take. Its time grows with the queue and with the load on slurmctld, so a fixed call
/// timeout drops every listing of a big queue on a busy Slurm, each one costing Slurm the work
/// of an answer nobody reads. The bound moves with what Slurm shows ([`next_bound`]):
/// - an answered listing sets it to [`LISTING_SLACK`] times its duration;
/// - a listing that ran out of time while Slurm answered other calls (it is busy, not gone)
///   doubles it;
/// - a listing that ran out of time while nothing else was answered leaves it: silence never
///   raises it, so a Slurm that hangs is found as fast as before.
///
/// It is never below the call timeout and never above [`MAX_LISTING_TIMEOUT`] (unless the call
/// timeout is longer).
#[derive(Default)]
struct Listing {
    /// The bound in milliseconds; 0 before Slurm showed anything.
    bound_ms: AtomicU64,
}

/// What ended one listing, for [`next_bound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// Slurm answered it after this long.
    Answered(Duration),
    /// It ran out of its time (this long) while Slurm answered other calls.
    OutlastedWhileBusy(Duration),
    /// It ran out of time and nothing else was answered meanwhile, or it failed otherwise.
    Other,
}

impl Listing {
    fn timeout(&self, call: Duration) -> Duration {
        call.max(Duration::from_millis(self.bound_ms.load(Ordering::Relaxed)))
    }

    fn ended(&self, how: Listed) {
        let now = Duration::from_millis(self.bound_ms.load(Ordering::Relaxed));
        let next = next_bound(now, how);
        let ms = u64::try_from(next.as_millis()).unwrap_or(u64::MAX);
        self.bound_ms.store(ms, Ordering::Relaxed);
    }
}

/// The bound of the next listing after one that ended `how`, when the bound was `now`.
fn next_bound(now: Duration, how: Listed) -> Duration {
    match how {
        Listed::Answered(took) => took.saturating_mul(LISTING_SLACK),
        Listed::OutlastedWhileBusy(took) => took.saturating_mul(2),
        Listed::Other => now,
    }
    .min(MAX_LISTING_TIMEOUT)
}

/// A slurmrestd endpoint.
pub struct SlurmRestd {
    base: String,
    user: String,
    token: Token,
    timeout: Duration,
    /// The most bytes one answer may have.
    max_answer: usize,
    /// The listings of states and of whole jobs, each with its own bound.
    states: Listing,
    jobs: Listing,
    /// Calls Slurm answered in full (any status), so a listing that ran out of time can tell a
    /// busy Slurm from a silent one.
    answers: AtomicU64,
    http: reqwest::Client,
}

/// The most bytes one slurmrestd answer may have: a listing of 100,000 jobs' states is ~4 MB,
/// a full listing of 10,000 jobs ~82 MB. Anything bigger is refused unread, so a lying proxy
/// cannot fill the server's memory.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 128 * 1024 * 1024;

impl SlurmRestd {
    /// `base` is `http(s)://host:port`; requests go to `{base}/slurm/v0.0.44/…` with this token.
    pub fn new(base: &str, user: &str, token: &str) -> Result<Self, SlurmError> {
        Self::with(base, user, Token::Fixed(token.to_string()))
    }

    /// Like [`SlurmRestd::new`], with the token read from `file` now and re-read whenever the
    /// file changes (and once more on a 401/403), so a rotated token is used without a restart.
    pub fn with_token_file(
        base: &str,
        user: &str,
        file: &std::path::Path,
    ) -> Result<Self, SlurmError> {
        let token = std::fs::read_to_string(file).map_err(|e| {
            SlurmError::Unavailable(format!("the slurmrestd token file is unreadable: {e}"))
        })?;
        Self::with(
            base,
            user,
            Token::File {
                path: file.to_path_buf(),
                cached: std::sync::Mutex::new(FileToken {
                    stamp: stamp(file),
                    token: token.trim().to_string(),
                }),
            },
        )
    }

    fn with(base: &str, user: &str, token: Token) -> Result<Self, SlurmError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| SlurmError::Unavailable(e.to_string()))?;
        Ok(Self {
            base: format!("{}/slurm/v0.0.44", base.trim_end_matches('/')),
            user: user.to_string(),
            token,
            timeout: DEFAULT_CALL_TIMEOUT,
            max_answer: DEFAULT_MAX_ANSWER_BYTES,
            states: Listing::default(),
            jobs: Listing::default(),
            answers: AtomicU64::new(0),
            http,
        })
    }

    /// The most bytes one answer may have ([`DEFAULT_MAX_ANSWER_BYTES`] unless set).
    pub fn max_answer_bytes(mut self, bytes: usize) -> Self {
        self.max_answer = bytes;
        self
    }

    /// How long one call may take, from connecting to the last byte of the answer.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn send(
        &self,
        method: &reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        token: &str,
        timeout: Duration,
    ) -> Result<(u16, String), SlurmError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .timeout(timeout)
            .header("X-SLURM-USER-NAME", &self.user)
            .header("X-SLURM-USER-TOKEN", token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let failed = |e: reqwest::Error| {
            tracing::debug!(%url, error = %e, "slurmrestd call failed");
            SlurmError::Unavailable(if e.is_timeout() {
                format!(
                    "slurmrestd did not answer within {} ms",
                    timeout.as_millis()
                )
            } else if e.is_connect() {
                "could not connect to slurmrestd".to_string()
            } else {
                "the connection to slurmrestd failed mid-answer".to_string()
            })
        };
        let mut res = req.send().await.map_err(failed)?;
        let status = res.status().as_u16();
        let too_big = || {
            SlurmError::Unavailable(format!(
                "slurmrestd answered HTTP {status} with more than {} bytes; nothing was read from it",
                self.max_answer
            ))
        };
        if res
            .content_length()
            .is_some_and(|n| n > self.max_answer as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > self.max_answer {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        // Counted once the whole answer is in: a listing whose own answer stalls after its
        // headers must not count as "Slurm answered other calls meanwhile".
        self.answers.fetch_add(1, Ordering::Relaxed);
        // JSON is UTF-8: anything else is not a document (and is not guessed at).
        let text = String::from_utf8(body)
            .map_err(|_| not_a_document(status, "a body that is not UTF-8"))?;
        Ok((status, text))
    }

    /// One call with the call timeout: its status and body. A refusal of the credentials
    /// re-reads the token file and, when the token changed, tries once more; a second refusal
    /// is an error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), SlurmError> {
        self.call_within(method, path, body, self.timeout).await
    }

    /// A listing of the whole queue at `path`, with the time its bound allows; how it ended
    /// sets the bound of the next ([`Listing`]).
    async fn list<T: serde::de::DeserializeOwned + ListingDocument>(
        &self,
        path: &str,
        pace: &Listing,
    ) -> Result<T, SlurmError> {
        let timeout = pace.timeout(self.timeout);
        let answers = self.answers.load(Ordering::Relaxed);
        let started = Instant::now();
        let answer = self
            .call_within(reqwest::Method::GET, path, None, timeout)
            .await;
        let took = started.elapsed();
        let (status, text) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let busy = self.answers.load(Ordering::Relaxed) > answers;
                pace.ended(if busy && took >= timeout {
                    tracing::debug!(path, timeout_ms = timeout.as_millis() as u64, "a listing ran out of time while Slurm answered other calls; the next may take twice as long");
                    Listed::OutlastedWhileBusy(timeout)
                } else {
                    Listed::Other
                });
                return Err(e);
            }
        };
        let res: T = document(status, &text, "jobs")?;
        if !res.errors().is_empty() {
            return Err(SlurmError::Unavailable(readable(res.errors())));
        }
        pace.ended(Listed::Answered(took));
        Ok(res)
    }

    /// `GET /ping/`: `Ok` when the answer is a v0.0.44 document without errors in which a
    /// controller responds.
    async fn ping(&self) -> Result<(), SlurmError> {
        let (status, text) = self.call(reqwest::Method::GET, "/ping/", None).await?;
        let res: PingResponse = document(status, &text, "pings")?;
        ping_verdict(&res)
    }

    async fn call_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<(u16, String), SlurmError> {
        let refused = |status: u16| matches!(status, 401 | 403 | 511);
        let (status, text) = self
            .send(&method, path, body, &self.token.current(), timeout)
            .await?;
        if !refused(status) {
            return Ok((status, text));
        }
        if self.token.reload() {
            tracing::info!(
                status,
                "slurmrestd refused the token; the token file changed, trying once more"
            );
            let (status, text) = self
                .send(&method, path, body, &self.token.current(), timeout)
                .await?;
            if !refused(status) {
                return Ok((status, text));
            }
        }
        Err(SlurmError::Unavailable(format!(
            "slurmrestd refused the credentials (HTTP {status}); check the cluster's Slurm user and its token file"
        )))
    }
}

#[async_trait]
impl SlurmPort for SlurmRestd {
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError> {
        let (status, text) = self
            .call(reqwest::Method::POST, "/job/submit", Some(body))
            .await?;
        let res: SubmitResponse = document(status, &text, "job_id")?;
        match res.job_id {
            Some(job_id) if res.errors.is_empty() => Ok(Accepted {
                job_id,
                warnings: res
                    .warnings
                    .iter()
                    .filter_map(|w| w.description.clone())
                    .collect(),
            }),
            _ if res.errors.is_empty() => Err(SlurmError::Unavailable(format!(
                "slurmrestd answered {status} without a job id"
            ))),
            _ if server_side(status) => Err(SlurmError::Unavailable(readable(&res.errors))),
            _ => Err(SlurmError::Rejected(
                res.errors.iter().map(OpenApiError::readable).collect(),
            )),
        }
    }

    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        let (status, text) = self
            .call(reqwest::Method::GET, &format!("/job/{job_id}"), None)
            .await?;
        let res: JobInfoResponse = document(status, &text, "jobs")?;
        if says_unknown(&res.errors) {
            return Ok(None);
        }
        if !res.errors.is_empty() {
            return Err(SlurmError::Unavailable(readable(&res.errors)));
        }
        res.jobs
            .iter()
            .find(|j| j.job_id == job_id)
            .map(|j| Some(j.to_port()))
            .ok_or_else(|| {
                SlurmError::Unavailable(format!(
                    "slurmrestd answered a lookup of job {job_id} without that job and without saying it is unknown"
                ))
            })
    }

    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        let res: JobInfoResponse = self.list("/jobs/", &self.jobs).await?;
        Ok(res.jobs.iter().map(JobInfo::to_port).collect())
    }

    async fn states(&self) -> Result<Option<Vec<StateReport>>, SlurmError> {
        let res: JobStateResponse = self.list("/jobs/state/", &self.states).await?;
        Ok(Some(
            res.jobs.iter().filter_map(JobStateEntry::to_port).collect(),
        ))
    }

    /// `GET /jobs/state/?job_id=…&job_id=…`, [`STATES_PER_CALL`] ids a call, one call after
    /// another, each within the call timeout; any call that fails fails the whole listing. No
    /// ids: one `GET /ping/` instead, so a Slurm without open jobs that stops answering is still
    /// found unreachable by the poll cycle, not by the next submit.
    async fn states_of(&self, ids: &[u64]) -> Result<Option<Vec<StateReport>>, SlurmError> {
        if ids.is_empty() {
            self.ping().await?;
            return Ok(Some(Vec::new()));
        }
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(STATES_PER_CALL) {
            let (status, text) = self
                .call(reqwest::Method::GET, &states_query(chunk), None)
                .await?;
            let res: JobStateResponse = document(status, &text, "jobs")?;
            if !res.errors.is_empty() {
                return Err(SlurmError::Unavailable(readable(&res.errors)));
            }
            out.extend(res.jobs.iter().filter_map(JobStateEntry::to_port));
        }
        Ok(Some(out))
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        let (status, text) = self
            .call(reqwest::Method::DELETE, &format!("/job/{job_id}"), None)
            .await?;
        let res: KillResponse = document(status, &text, "status")?;
        cancel_verdict(status, &res, job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../fixtures/slurmrestd/v0.0.44/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn job(name: &str) -> SlurmJob {
        let res: JobInfoResponse = serde_json::from_str(&fixture(name)).unwrap();
        res.jobs[0].to_port()
    }

    #[test]
    fn a_ping_is_an_answer_only_when_a_controller_responds() {
        let res: PingResponse = document(200, &fixture("ping.response.json"), "pings").unwrap();
        assert_eq!(ping_verdict(&res), Ok(()));
        let down: PingResponse = document(
            200,
            r#"{"meta": {}, "errors": [], "pings": [{"hostname": "c", "pinged": "DOWN", "responding": false}]}"#,
            "pings",
        )
        .unwrap();
        assert!(
            matches!(ping_verdict(&down), Err(SlurmError::Unavailable(m)) if m.contains("no Slurm controller"))
        );
        let none: PingResponse =
            document(200, r#"{"meta": {}, "errors": [], "pings": []}"#, "pings").unwrap();
        assert!(ping_verdict(&none).is_err());
        // A document without `pings` is not a ping's answer.
        assert!(document::<PingResponse>(200, r#"{"meta": {}, "errors": []}"#, "pings").is_err());
    }

    #[test]
    fn reads_a_recorded_listing_of_states() {
        let res: JobStateResponse =
            document(200, &fixture("jobs.state.response.json"), "jobs").unwrap();
        let states: Vec<_> = res.jobs.iter().filter_map(JobStateEntry::to_port).collect();
        use JobState::*;
        let expected = [Completed, Failed, Cancelled, Timeout, Completed];
        assert_eq!(states.len(), expected.len());
        for (i, (report, state)) in states.iter().zip(expected).enumerate() {
            assert_eq!((report.job_id, report.state), (i as u64 + 1, Some(state)));
        }
        // Array tasks and heterogeneous components are not plain ids: left out; a bare number
        // is read; a state Clusterra does not know is `None`, not a guess.
        let res: JobStateResponse = document(
            200,
            r#"{"meta": {}, "errors": [], "jobs": [
                {"job_id": "7_[1-3]", "state": ["PENDING"]}, {"job_id": "7_4", "state": ["RUNNING"]},
                {"job_id": "8+1", "state": ["RUNNING"]}, {"job_id": 9, "state": ["RUNNING", "COMPLETING"]},
                {"job_id": "10", "state": ["SOMETHING_NEW"]}]}"#,
            "jobs",
        )
        .unwrap();
        let states: Vec<_> = res.jobs.iter().filter_map(JobStateEntry::to_port).collect();
        assert_eq!(
            states,
            vec![
                StateReport {
                    job_id: 9,
                    state: Some(Running)
                },
                StateReport {
                    job_id: 10,
                    state: None
                },
            ]
        );
    }

    #[test]
    fn reads_recorded_v0044_job_states() {
        let done = job("job.completed.response.json");
        assert_eq!(
            (done.state, done.exit_code, done.node.as_deref()),
            (JobState::Completed, Some(0), Some("vm"))
        );
        assert!(done.start_time.is_some() && done.end_time.is_some());
        let failed = job("job.failed.response.json");
        assert_eq!(
            (failed.state, failed.exit_code, failed.reason.as_deref()),
            (JobState::Failed, Some(3), Some("NonZeroExitCode"))
        );
        let timeout = job("job.timeout.response.json");
        assert_eq!(
            (timeout.state, timeout.exit_code),
            (JobState::Timeout, Some(128 + 15))
        );
        assert_eq!(
            job("job.cancelled.response.json").state,
            JobState::Cancelled
        );
        let running = job("job.running.response.json");
        assert_eq!(
            (running.state, running.exit_code, running.end_time),
            (JobState::Running, None, None)
        );
    }

    #[test]
    fn reads_submit_answers_and_errors() {
        let ok: SubmitResponse = serde_json::from_str(&fixture("submit.response.json")).unwrap();
        assert_eq!((ok.job_id, ok.errors.len()), (Some(1), 0));
        let bad: SubmitResponse =
            serde_json::from_str(&fixture("error.missing-environment.response.json")).unwrap();
        assert_eq!(bad.job_id, None);
        assert!(
            bad.errors[0].readable().contains("PATH="),
            "{}",
            bad.errors[0].readable()
        );
        let unknown: JobInfoResponse =
            serde_json::from_str(&fixture("error.unknown-job.response.json")).unwrap();
        assert!(unknown.jobs.is_empty());
        let cancel: KillResponse =
            serde_json::from_str(&fixture("cancel-finished-job.response.json")).unwrap();
        assert!(
            cancel.errors.is_empty(),
            "cancelling a finished job is not an error"
        );
    }

    #[test]
    fn only_v0044_documents_are_read() {
        let unknown = fixture("error.unknown-job.response.json");
        // Recorded with HTTP 404: a document, and it says "invalid job id".
        let res: JobInfoResponse = document(404, &unknown, "jobs").unwrap();
        assert!(says_unknown(&res.errors));
        let list: JobInfoResponse =
            document(200, &fixture("job.running.response.json"), "jobs").unwrap();
        assert_eq!(list.jobs.len(), 1);
        let submit: SubmitResponse =
            document(200, &fixture("submit.response.json"), "job_id").unwrap();
        assert_eq!(submit.job_id, Some(1));
        let refused: SubmitResponse = document(
            500,
            &fixture("error.missing-environment.response.json"),
            "job_id",
        )
        .unwrap();
        assert_eq!(refused.errors.len(), 1);

        let not = |status: u16, body: &str| {
            let r: Result<JobInfoResponse, _> = document(status, body, "jobs");
            match r {
                Err(SlurmError::Unavailable(m)) => m,
                other => panic!("{status} {body:?} was read: {other:?}"),
            }
        };
        let html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        assert!(not(502, html).contains("HTML"), "{}", not(502, html));
        assert!(not(404, "<h1>Not Found</h1>").contains("HTML"));
        assert!(not(200, "").contains("empty"));
        assert!(not(200, "jobs: []").contains("not JSON"));
        assert!(not(200, "[]").contains("not an object"));
        assert!(not(200, "{}").contains("meta"));
        assert!(
            not(200, r#"{"jobs": []}"#).contains("meta"),
            "no meta, no document"
        );
        assert!(not(200, r#"{"meta": {}}"#).contains("`jobs`"));
        assert!(not(200, r#"{"meta": {}, "jobs": {}}"#).contains("wrong shape"));
        assert!(not(200, r#"{"meta": {}, "jobs": [{"name": "x"}]}"#).contains("wrong shape"));
        assert!(
            not(
                200,
                r#"{"meta": {"plugin": {"data_parser": "data_parser/v0.0.42"}}, "jobs": []}"#
            )
            .contains("v0.0.42")
        );
        assert!(not(200, r#"{"meta": {}, "jobs": [], "errors": "boom"}"#).contains("errors"));
        // A well-formed empty list, but with a status that is not success and no reason.
        assert!(not(500, r#"{"meta": {}, "jobs": [], "errors": []}"#).contains("500"));
        // 404 with a document that does not say "invalid job id" is not "unknown".
        let other_404: JobInfoResponse = document(
            404,
            r#"{"meta": {}, "errors": [{"error": "Unable to find requested URL", "error_number": 9002}]}"#,
            "jobs",
        )
        .unwrap();
        assert!(!says_unknown(&other_404.errors));
    }

    #[test]
    fn cancel_verdicts() {
        let ok: KillResponse = document(200, &fixture("cancel.response.json"), "status").unwrap();
        assert_eq!(cancel_verdict(200, &ok, 4), Ok(()));
        let done: KillResponse =
            document(200, &fixture("cancel-finished-job.response.json"), "status").unwrap();
        assert_eq!(
            cancel_verdict(200, &done, 4),
            Ok(()),
            "cancelling a finished job is not an error"
        );
        let unknown: KillResponse =
            document(404, &fixture("error.unknown-job.response.json"), "status").unwrap();
        assert_eq!(
            cancel_verdict(404, &unknown, 4),
            Err(SlurmError::UnknownJob(4))
        );
        let no_controller: KillResponse = document(
            502,
            r#"{"meta": {}, "errors": [{"error": "Unable to contact slurm controller (connect failure)", "error_number": 1007}]}"#,
            "status",
        )
        .unwrap();
        assert!(matches!(
            cancel_verdict(502, &no_controller, 4),
            Err(SlurmError::Unavailable(_))
        ));
        let denied: KillResponse = document(
            200,
            r#"{"meta": {}, "status": [{"error": {"code": 2002, "message": "Access/permission denied"}, "job_id": {"set": true, "number": 4}}], "errors": []}"#,
            "status",
        )
        .unwrap();
        assert_eq!(
            cancel_verdict(200, &denied, 4),
            Err(SlurmError::Rejected(vec![
                "Access/permission denied".into()
            ]))
        );
        // A proxy's 502 is not a confirmation.
        let r: Result<KillResponse, _> = document(502, "<html>Bad Gateway</html>", "status");
        assert!(matches!(r, Err(SlurmError::Unavailable(_))));
    }

    #[test]
    fn wrapped_numbers_in_both_spellings() {
        let n: NoVal =
            serde_json::from_str(r#"{"set": true, "infinite": false, "number": 30}"#).unwrap();
        assert_eq!(n.value(), Some(30.0));
        let unset: NoVal = serde_json::from_str(r#"{"set": false, "number": 30}"#).unwrap();
        assert_eq!(unset.value(), None);
        let inf: NoVal =
            serde_json::from_str(r#"{"set": true, "infinite": true, "number": 0}"#).unwrap();
        assert_eq!(inf.value(), None);
        let bare: NoVal = serde_json::from_str("42").unwrap();
        assert_eq!(bare.value(), Some(42.0));
    }

    #[test]
    fn a_listings_bound_follows_what_slurm_showed() {
        let ms = Duration::from_millis;
        let busy = Listed::OutlastedWhileBusy;
        // An answer: four times its duration, at most the cap.
        assert_eq!(next_bound(ms(0), Listed::Answered(ms(40))), ms(160));
        assert_eq!(
            next_bound(ms(20_000), Listed::Answered(ms(3_900))),
            ms(15_600)
        );
        assert_eq!(
            next_bound(ms(0), Listed::Answered(ms(9_000))),
            MAX_LISTING_TIMEOUT
        );
        assert_eq!(
            next_bound(ms(0), Listed::Answered(Duration::from_secs(u64::MAX / 2))),
            MAX_LISTING_TIMEOUT
        );
        // Out of time while Slurm answered other calls: twice the time it had, at most the cap.
        assert_eq!(next_bound(ms(7_300), busy(ms(7_300))), ms(14_600));
        assert_eq!(next_bound(ms(0), busy(ms(5_000))), ms(10_000));
        assert_eq!(
            next_bound(ms(20_000), busy(ms(20_000))),
            MAX_LISTING_TIMEOUT
        );
        // Silence, or any other failure, leaves it.
        assert_eq!(next_bound(ms(0), Listed::Other), ms(0));
        assert_eq!(next_bound(ms(7_300), Listed::Other), ms(7_300));

        // The timeout is the bound, never below the call timeout.
        let call = Duration::from_secs(5);
        let listing = Listing::default();
        assert_eq!(listing.timeout(call), call);
        listing.ended(Listed::Answered(ms(1_250)));
        assert_eq!(listing.timeout(call), call);
        listing.ended(Listed::Answered(ms(3_900)));
        assert_eq!(listing.timeout(call), ms(15_600));
        listing.ended(Listed::Other);
        assert_eq!(listing.timeout(call), ms(15_600));
        listing.ended(busy(ms(15_600)));
        assert_eq!(listing.timeout(call), MAX_LISTING_TIMEOUT);
        let long = Duration::from_secs(60);
        assert_eq!(listing.timeout(long), long);
    }
}
