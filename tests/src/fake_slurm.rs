//! A small slurmrestd stand-in for end-to-end tests: a real HTTP server on a loopback port that
//! keeps jobs and answers the v0.0.44 calls Clusterra makes (submit, list, list states, one job,
//! cancel) with documents shaped like the recorded ones in `fixtures/slurmrestd/v0.0.44/` — or,
//! on demand, with what a broken proxy answers (any status and body), or with nothing at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Like slurmrestd.
    Slurm,
    /// Every request gets this status, content type and body (an nginx 502 page, a 404 page,
    /// garbage JSON…).
    Canned(u16, &'static str, String),
    /// Requests are read and never answered.
    Hang,
}

/// One job the fake Slurm keeps.
#[derive(Debug, Clone)]
pub struct FakeJob {
    pub name: String,
    pub comment: String,
    /// Slurm's state name: PENDING, RUNNING, COMPLETED, CANCELLED…
    pub state: String,
    pub submit_time: i64,
}

#[derive(Debug)]
pub struct State {
    pub mode: Mode,
    pub jobs: BTreeMap<u64, FakeJob>,
    /// Job ids a DELETE was accepted for, in order.
    pub cancels: Vec<u64>,
    /// Requests received, in any mode.
    pub requests: usize,
    /// How long a submit takes before Slurm takes the job (zero unless set): a slow controller.
    pub submit_delay: std::time::Duration,
    /// Submits received in Slurm mode, counted before their delay.
    pub submits_started: usize,
}

/// A running fake slurmrestd; stops with the test's runtime.
#[derive(Clone)]
pub struct FakeSlurm {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

fn meta() -> Value {
    json!({
        "plugin": {"type": "openapi/slurmctld", "name": "Slurm OpenAPI slurmctld",
                   "data_parser": "data_parser/v0.0.44", "accounting_storage": ""},
        "client": {"source": "127.0.0.1", "user": "root", "group": "root"},
        "command": [],
        "slurm": {"version": {"major": "26", "micro": "5", "minor": "05"}, "release": "26.05.5", "cluster": "fake"}
    })
}

fn wrapped(n: i64) -> Value {
    json!({"set": n > 0, "infinite": false, "number": n})
}

fn job_info(id: u64, j: &FakeJob) -> Value {
    let ended = !matches!(j.state.as_str(), "PENDING" | "RUNNING");
    json!({
        "job_id": id,
        "name": j.name,
        "job_state": [j.state],
        "state_reason": "None",
        "comment": j.comment,
        "nodes": if j.state == "PENDING" { "" } else { "fake-0" },
        "submit_time": wrapped(j.submit_time),
        "start_time": wrapped(if j.state == "PENDING" { 0 } else { j.submit_time + 1 }),
        "end_time": wrapped(if ended { j.submit_time + 2 } else { 0 }),
        "exit_code": {"status": [if ended { "SUCCESS" } else { "PENDING" }],
                      "return_code": {"set": ended, "infinite": false, "number": 0},
                      "signal": {"id": {"set": false, "infinite": false, "number": 0}, "name": ""}}
    })
}

fn unknown_job(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "jobs": [], "last_backfill": wrapped(0), "last_update": wrapped(0), "meta": meta(),
            "errors": [{"description": format!("Unable to query JobId={id}"), "error_number": 2017,
                        "error": "Invalid job id specified", "source": "_handle_job_get"}],
            "warnings": []
        })),
    )
        .into_response()
}

impl FakeSlurm {
    pub async fn start() -> FakeSlurm {
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Slurm,
            jobs: BTreeMap::new(),
            cancels: Vec::new(),
            requests: 0,
            submit_delay: std::time::Duration::ZERO,
            submits_started: 0,
        }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, _headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move { answer(&state, method, uri, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeSlurm {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Sets job `id`'s state (Slurm's name).
    pub fn set_state(&self, id: u64, state: &str) {
        if let Some(j) = self.lock().jobs.get_mut(&id) {
            j.state = state.to_string();
        }
    }

    /// Makes every later submit wait `delay` before the job is taken and answered.
    pub fn set_submit_delay(&self, delay: std::time::Duration) {
        self.lock().submit_delay = delay;
    }

    pub fn cancels(&self) -> Vec<u64> {
        self.lock().cancels.clone()
    }

    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Submits received in Slurm mode so far, those still in their delay included.
    pub fn submits_started(&self) -> usize {
        self.lock().submits_started
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn answer(state: &Mutex<State>, method: Method, uri: Uri, body: Bytes) -> Response {
    let (mode, submit_delay) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        (s.mode.clone(), s.submit_delay)
    };
    match mode {
        Mode::Hang => std::future::pending::<Response>().await,
        Mode::Canned(status, content_type, text) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [("content-type", content_type)],
            text,
        )
            .into_response(),
        Mode::Slurm => {
            let path = uri.path().trim_end_matches('/');
            let Some(rest) = path.strip_prefix("/slurm/v0.0.44") else {
                return (StatusCode::NOT_FOUND, "Unable to find requested URL").into_response();
            };
            // A slow controller: the submit waits before the job is taken (not holding the lock).
            if method == Method::POST && rest == "/job/submit" {
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .submits_started += 1;
                tokio::time::sleep(submit_delay).await;
            }
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            match (method, rest) {
                (Method::POST, "/job/submit") => {
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let id = s.jobs.keys().last().copied().unwrap_or(0) + 1;
                    s.jobs.insert(
                        id,
                        FakeJob {
                            name: body["job"]["name"].as_str().unwrap_or("job").into(),
                            comment: body["job"]["comment"].as_str().unwrap_or("").into(),
                            state: "PENDING".into(),
                            submit_time: chrono::Utc::now().timestamp(),
                        },
                    );
                    axum::Json(
                        json!({"job_id": id, "step_id": "batch", "job_submit_user_msg": "",
                        "meta": meta(), "errors": [], "warnings": []}),
                    )
                    .into_response()
                }
                (Method::GET, "/jobs") => {
                    let jobs: Vec<Value> = s.jobs.iter().map(|(id, j)| job_info(*id, j)).collect();
                    axum::Json(
                        json!({"jobs": jobs, "last_backfill": wrapped(0), "last_update": wrapped(0),
                        "meta": meta(), "errors": [], "warnings": []}),
                    )
                    .into_response()
                }
                (Method::GET, "/ping") => axum::Json(json!({
                    "pings": [{"hostname": "fake", "pinged": "UP", "responding": true,
                        "latency": 100, "mode": "primary", "primary": true}],
                    "meta": meta(), "errors": [], "warnings": []}))
                .into_response(),
                (Method::GET, "/jobs/state") => {
                    // `?job_id=1&job_id=2` names the jobs wanted (unknown ids are left out),
                    // as slurmrestd 26.05 does; no query lists every job.
                    let wanted: Option<std::collections::HashSet<u64>> = uri.query().map(|q| {
                        q.split('&')
                            .filter_map(|kv| kv.strip_prefix("job_id="))
                            .filter_map(|id| id.parse().ok())
                            .collect()
                    });
                    let jobs: Vec<Value> = s
                        .jobs
                        .iter()
                        .filter(|(id, _)| wanted.as_ref().is_none_or(|w| w.contains(id)))
                        .map(|(id, j)| json!({"job_id": id.to_string(), "state": [j.state]}))
                        .collect();
                    axum::Json(json!({"jobs": jobs, "meta": meta(), "errors": [], "warnings": []}))
                        .into_response()
                }
                (m, r) if r.starts_with("/job/") => {
                    let id_text = &r["/job/".len()..];
                    let Some(id) = id_text
                        .parse::<u64>()
                        .ok()
                        .filter(|id| s.jobs.contains_key(id))
                    else {
                        return unknown_job(id_text);
                    };
                    if m == Method::DELETE {
                        s.cancels.push(id);
                        if let Some(j) = s.jobs.get_mut(&id)
                            && matches!(j.state.as_str(), "PENDING" | "RUNNING")
                        {
                            j.state = "CANCELLED".into();
                        }
                        axum::Json(
                            json!({"status": [], "meta": meta(), "errors": [], "warnings": []}),
                        )
                        .into_response()
                    } else {
                        let j = &s.jobs[&id];
                        axum::Json(json!({"jobs": [job_info(id, j)], "last_backfill": wrapped(0),
                            "last_update": wrapped(0), "meta": meta(), "errors": [], "warnings": []}))
                        .into_response()
                    }
                }
                _ => (StatusCode::NOT_FOUND, "Unable to find requested URL").into_response(),
            }
        }
    }
}
