//! The slurmrestd adapter (data_parser v0.0.44) behind the Slurm port.
//!
//! Authenticates with Slurm's JWT headers (`X-SLURM-USER-NAME`, `X-SLURM-USER-TOKEN`). Request
//! and response types are separate, as v0.0.44 spells the same field differently in each
//! (`tasks` is a plain int in a request, a `{set, infinite, number}` object in a response), and
//! the response decoder accepts both the object and the bare form of wrapped numbers.
//! Every body is parsed, even on non-2xx answers: Slurm puts its reasons in `errors[]`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use commands::slurm::{Accepted, SlurmError, SlurmJob, SlurmPort};
use domain::job::JobState;
use serde::Deserialize;

/// Slurm's error numbers that mean "no such job".
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

#[derive(Debug, Default, Deserialize)]
pub struct GenericResponse {
    #[serde(default)]
    pub errors: Vec<OpenApiError>,
    #[serde(default)]
    pub warnings: Vec<Warning>,
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
        }
    }
}

/// Slurm's verdict on a job call: `Ok(false)` when the job is unknown (404 or errno 2017), an
/// error for any other reported error, `Ok(true)` otherwise.
fn job_known(status: u16, errors: &[OpenApiError]) -> Result<bool, SlurmError> {
    if status == 404
        || errors
            .iter()
            .any(|e| e.error_number == Some(ESLURM_INVALID_JOB_ID))
    {
        return Ok(false);
    }
    if !errors.is_empty() {
        let reasons: Vec<String> = errors.iter().map(OpenApiError::readable).collect();
        return Err(SlurmError::Unavailable(reasons.join("; ")));
    }
    Ok(true)
}

/// A slurmrestd endpoint.
pub struct SlurmRestd {
    base: String,
    user: String,
    token: String,
    http: reqwest::Client,
}

impl SlurmRestd {
    /// `base` is `http(s)://host:port`; requests go to `{base}/slurm/v0.0.44/…`.
    pub fn new(base: &str, user: &str, token: &str) -> Result<Self, SlurmError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SlurmError::Unavailable(e.to_string()))?;
        Ok(Self {
            base: format!("{}/slurm/v0.0.44", base.trim_end_matches('/')),
            user: user.to_string(),
            token: token.to_string(),
            http,
        })
    }

    async fn call<T: for<'de> Deserialize<'de> + Default>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, T), SlurmError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-SLURM-USER-NAME", &self.user)
            .header("X-SLURM-USER-TOKEN", &self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .map_err(|e| SlurmError::Unavailable(format!("{}: {e}", self.base)))?;
        let status = res.status().as_u16();
        let text = res
            .text()
            .await
            .map_err(|e| SlurmError::Unavailable(e.to_string()))?;
        if status == 401 || status == 403 || status == 511 {
            return Err(SlurmError::Unavailable(format!(
                "slurmrestd refused the credentials ({status}); check the Slurm user and JWT"
            )));
        }
        let parsed = serde_json::from_str(&text).unwrap_or_default();
        Ok((status, parsed))
    }
}

#[async_trait]
impl SlurmPort for SlurmRestd {
    async fn submit(&self, body: &serde_json::Value) -> Result<Accepted, SlurmError> {
        let (status, res): (u16, SubmitResponse) = self
            .call(reqwest::Method::POST, "/job/submit", Some(body))
            .await?;
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
            _ => Err(SlurmError::Rejected(
                res.errors.iter().map(OpenApiError::readable).collect(),
            )),
        }
    }

    async fn job(&self, job_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        let (status, res): (u16, JobInfoResponse) = self
            .call(reqwest::Method::GET, &format!("/job/{job_id}"), None)
            .await?;
        if !job_known(status, &res.errors)? {
            return Ok(None);
        }
        Ok(res
            .jobs
            .iter()
            .find(|j| j.job_id == job_id)
            .map(JobInfo::to_port))
    }

    async fn jobs(&self) -> Result<Vec<SlurmJob>, SlurmError> {
        let (status, res): (u16, JobInfoResponse) =
            self.call(reqwest::Method::GET, "/jobs/", None).await?;
        job_known(status, &res.errors)?;
        Ok(res.jobs.iter().map(JobInfo::to_port).collect())
    }

    async fn cancel(&self, job_id: u64) -> Result<(), SlurmError> {
        let (status, res): (u16, GenericResponse) = self
            .call(reqwest::Method::DELETE, &format!("/job/{job_id}"), None)
            .await?;
        if !job_known(status, &res.errors)? {
            return Err(SlurmError::UnknownJob(job_id));
        }
        Ok(())
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
        let cancel: GenericResponse =
            serde_json::from_str(&fixture("cancel-finished-job.response.json")).unwrap();
        assert!(
            cancel.errors.is_empty(),
            "cancelling a finished job is not an error"
        );
    }

    #[test]
    fn slurm_verdicts() {
        let unknown: JobInfoResponse =
            serde_json::from_str(&fixture("error.unknown-job.response.json")).unwrap();
        // Recorded with HTTP 404; the errno alone must also be enough.
        assert_eq!(job_known(200, &unknown.errors), Ok(false));
        assert_eq!(job_known(404, &[]), Ok(false));
        assert_eq!(job_known(200, &[]), Ok(true));
        let other = OpenApiError {
            error: Some("Invalid partition name specified".into()),
            error_number: Some(2000),
            ..OpenApiError::default()
        };
        assert_eq!(
            job_known(500, &[other]),
            Err(SlurmError::Unavailable(
                "Invalid partition name specified".into()
            ))
        );
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
}
