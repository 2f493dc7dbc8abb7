//! The client verbs: `submit`, `jobs`, `job`, `cancel`, `logs`, `events`, talking to a Clusterra API.
//!
//! Where: `--url`/`--token`, else `CLUSTERRA_URL`/`CLUSTERRA_TOKEN`, else the profile file
//! (`$XDG_CONFIG_HOME/clusterra/profile.toml` or `~/.config/clusterra/profile.toml`, keys `url`
//! and `token`), else `http://127.0.0.1:8080` with no token.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Args, Clone, Debug)]
pub struct Target {
    /// API base URL [env: CLUSTERRA_URL; default: profile, else http://127.0.0.1:8080]
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Bearer token [env: CLUSTERRA_TOKEN; default: profile]
    #[arg(long, value_name = "JWT")]
    token: Option<String>,
    /// Cluster id
    #[arg(long, default_value = "local")]
    pub cluster: String,
}

#[derive(serde::Deserialize, Default)]
struct Profile {
    url: Option<String>,
    token: Option<String>,
}

fn profile() -> Profile {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    dir.map(|d| d.join("clusterra/profile.toml"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| toml_profile(&t))
        .unwrap_or_default()
}

fn toml_profile(text: &str) -> Option<Profile> {
    use figment::providers::{Format, Toml};
    figment::Figment::from(Toml::string(text)).extract().ok()
}

pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(t: &Target) -> anyhow::Result<Self> {
        let p = profile();
        let base = t
            .url
            .clone()
            .or_else(|| std::env::var("CLUSTERRA_URL").ok())
            .or(p.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = t
            .token
            .clone()
            .or_else(|| std::env::var("CLUSTERRA_TOKEN").ok())
            .or(p.token);
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Clusterra-Via", "cli");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.with_context(|| {
            format!(
                "could not reach {}; is `clusterra serve` running?",
                self.base
            )
        })?;
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

impl Client {
    /// A POST whose answer is a stream (Ask AI's reply): no overall timeout, only one for
    /// connecting; the caller reads the body as it comes.
    pub(crate) async fn stream_post(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<reqwest::Response> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        let mut req = http.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().await.with_context(|| {
            format!(
                "could not reach {}; is `clusterra serve` running?",
                self.base
            )
        })
    }
}

/// Prints the API's answer: the body on success, the error's message on failure.
pub(crate) fn finish(status: u16, body: &Value) -> anyhow::Result<ExitCode> {
    if (200..300).contains(&status) {
        println!("{}", serde_json::to_string_pretty(body)?);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", error_line(status, body));
        Ok(ExitCode::FAILURE)
    }
}

/// One line for an error answer: `error 403 code: message (field f)`.
pub(crate) fn error_line(status: u16, body: &Value) -> String {
    let e = &body["error"];
    format!(
        "error {status} {}: {}{}",
        e["code"].as_str().unwrap_or("unknown"),
        e["message"].as_str().unwrap_or("the server gave no reason"),
        e["field"]
            .as_str()
            .map(|f| format!(" (field {f})"))
            .unwrap_or_default()
    )
}

/// Parses `k=v` params; `v` is JSON if it parses as JSON, else a string.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<Value> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--param {pair:?}: use name=value"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(Value::Object(map))
}

/// A submission's body: a v0.0.44 body file, or a template with its parameters.
pub fn submit_body(
    file: Option<PathBuf>,
    template: Option<String>,
    params: &[String],
) -> anyhow::Result<Value> {
    Ok(match (file, template) {
        (Some(f), None) => {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("could not read {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?
        }
        (None, Some(id)) => serde_json::json!({"template_id": id, "params": parse_params(params)?}),
        _ => anyhow::bail!(
            "give a body file (clusterra submit body.json) or --template ID, not both"
        ),
    })
}

pub async fn submit(t: &Target, body: &Value, key: Option<String>) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let (status, out) = c
        .send(
            reqwest::Method::POST,
            &format!("/v1/clusters/{}/jobs", t.cluster),
            Some(body),
            key.as_deref(),
        )
        .await?;
    finish(status, &out)
}

/// `clusterra submit --dry-run`: the estimate, in words; nothing is submitted.
pub async fn estimate(t: &Target, body: &Value) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let (status, out) = c
        .send(
            reqwest::Method::POST,
            &format!("/v1/clusters/{}/jobs/estimate", t.cluster),
            Some(body),
            None,
        )
        .await?;
    if !(200..300).contains(&status) {
        return finish(status, &out);
    }
    print!("{}", estimate_text(&out));
    Ok(ExitCode::SUCCESS)
}

/// An estimate as lines of text (control characters of server text stripped).
pub fn estimate_text(e: &Value) -> String {
    let s = |v: &Value| -> String {
        v.as_str()
            .map(|t| t.chars().filter(|c| !c.is_control()).collect())
            .unwrap_or_else(|| v.to_string())
    };
    let p = &e["placement"];
    let mut out = format!(
        "placement  {} × {} ({}-{}), {} vCPUs and {} MiB on each
",
        s(&p["nodes"]),
        s(&p["instance_type"]),
        s(&p["family"]),
        s(&p["size"]),
        s(&p["vcpus_per_node"]),
        s(&p["memory_mib_per_node"]),
    );
    out += &format!(
        "rate       ${} an hour
",
        s(&e["rate_usd_per_hour"])
    );
    match e["max_cost_usd"].as_str() {
        Some(max) => {
            out += &format!(
                "max cost   ${max} (time limit {} min)
",
                s(&e["time_limit_minutes"])
            )
        }
        None => {
            out += "max cost   unbounded (no time limit)
"
        }
    }
    let start = &e["expected_start"];
    out += &format!(
        "starts     {} ({}): {}
",
        s(&start["at"]),
        s(&start["kind"]),
        s(&start["reason"])
    );
    let q = &e["quota"];
    out += &format!(
        "quota      {} after it{}
",
        s(&q["status_after"]),
        q["remaining_usd"]
            .as_str()
            .map(|r| format!(", ${r} of the limit left"))
            .unwrap_or_else(|| ", no quota".into())
    );
    for w in e["warnings"].as_array().into_iter().flatten() {
        out += &format!(
            "warning    {}: {}
",
            s(&w["field"]),
            s(&w["message"])
        );
    }
    out += "nothing was submitted (--dry-run)
";
    out
}

pub async fn jobs(
    t: &Target,
    state: Option<String>,
    user: Option<String>,
    template: Option<String>,
) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let mut query = Vec::new();
    for (k, v) in [("state", state), ("user", user), ("template", template)] {
        if let Some(v) = v {
            query.push(format!("{k}={v}"));
        }
    }
    let path = format!(
        "/v1/clusters/{}/jobs{}{}",
        t.cluster,
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let (status, out) = c.send(reqwest::Method::GET, &path, None, None).await?;
    if !(200..300).contains(&status) {
        return finish(status, &out);
    }
    println!(
        "{:<8} {:<11} {:<5} {:<24} {:<24} PENDING REASON",
        "JOB", "STATE", "EXIT", "NAME", "USER"
    );
    for j in out["jobs"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<11} {:<5} {:<24} {:<24} {}",
            j["job_id"],
            j["state"].as_str().unwrap_or(""),
            j["exit_code"]
                .as_i64()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            j["name"].as_str().unwrap_or(""),
            j["user"].as_str().unwrap_or(""),
            j["pending_reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `clusterra job ID`: the job in a few lines, with its efficiency report once it ended.
pub async fn job(t: &Target, id: u64, json: bool) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let (status, out) = c
        .send(
            reqwest::Method::GET,
            &format!("/v1/clusters/{}/jobs/{id}", t.cluster),
            None,
            None,
        )
        .await?;
    if json || !(200..300).contains(&status) {
        return finish(status, &out);
    }
    print!("{}", job_text(&out));
    Ok(ExitCode::SUCCESS)
}

/// What `clusterra job` prints of a job's detail.
pub fn job_text(j: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "job {} {:?}: {}{}\n",
        j["job_id"],
        j["name"].as_str().unwrap_or(""),
        s(&j["state"]),
        j["exit_code"]
            .as_i64()
            .map(|e| format!(" (exit code {e})"))
            .unwrap_or_default()
    );
    out.push_str(&format!(
        "  owner      {} (via {}) on cluster {}\n",
        s(&j["user"]),
        s(&j["via"]),
        s(&j["cluster_id"])
    ));
    out.push_str(&format!(
        "  times      submitted {}, started {}, ended {}\n",
        s(&j["submitted_at"]),
        s(&j["started_at"]),
        s(&j["ended_at"])
    ));
    let shape = &j["shape"];
    out.push_str(&format!(
        "  asked      {} CPU(s), {}, {} node(s), {}\n",
        shape["cpus"],
        shape["memory_mib"]
            .as_u64()
            .map(|m| format!("{m} MiB"))
            .unwrap_or_else(|| "default memory".into()),
        shape["nodes"],
        shape["time_limit_minutes"]
            .as_u64()
            .map(|m| format!("time limit {m} min"))
            .unwrap_or_else(|| "no time limit".into())
    ));
    if let Some(r) = j["pending_reason"].as_str() {
        out.push_str(&format!("  waiting    {r}\n"));
    }
    out.push_str(&format!(
        "  cost       ${} at ${}/hour\n",
        s(&j["cost_usd"]),
        s(&j["rate_usd_per_hour"])
    ));
    let e = &j["efficiency"];
    if e.is_null() {
        if j["ended_at"].is_null() {
            out.push_str("  efficiency when it ends\n");
        } else if j["started_at"].is_null() {
            out.push_str("  efficiency none: the job never ran\n");
        } else {
            out.push_str("  efficiency not recorded for this job\n");
        }
        return out;
    }
    let percent = |v: &Value| {
        v.as_f64()
            .map(|p| format!("{p}%"))
            .unwrap_or_else(|| "not measured".into())
    };
    out.push_str(&format!(
        "  CPU        {}{}\n",
        percent(&e["cpu_percent"]),
        e["cpu_seconds"]
            .as_f64()
            .map(|c| format!(" ({c:.1} CPU-seconds)"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "  memory     {} of {} MiB{}\n",
        percent(&e["memory_percent"]),
        e["memory_asked_mib"],
        e["peak_memory_bytes"]
            .as_u64()
            .map(|b| format!(" (peak {:.1} MiB)", b as f64 / 1_048_576.0))
            .unwrap_or_default()
    ));
    if let Some(w) = e["wasted_usd"].as_str() {
        out.push_str(&format!("  wasted     ${w}\n"));
    }
    out.push_str(&format!("  hint       {}\n", s(&e["hint"])));
    out
}

/// `clusterra me`: who you are, what your jobs cost, your quota and where you stand.
pub async fn me(t: &Target, json: bool) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let (status, out) = c
        .send(reqwest::Method::GET, "/v1/users/me", None, None)
        .await?;
    if json || !(200..300).contains(&status) {
        return finish(status, &out);
    }
    let s = |k: &str| out[k].as_str().unwrap_or("?").to_string();
    println!(
        "{} ({}) in workspace {}",
        s("email"),
        s("role"),
        s("workspace")
    );
    println!(
        "billing period  {} .. {}",
        out["period"]["start"].as_str().unwrap_or("?"),
        out["period"]["end"].as_str().unwrap_or("?")
    );
    println!(
        "burn rate       ${}/hour ({} running jobs)",
        s("burn_rate_usd_per_hour"),
        out["running_jobs"]
    );
    println!("pending bill    ${}", s("pending_bill_usd"));
    println!("projected spend ${}", s("projected_spend_usd"));
    match out["quota"].as_object() {
        Some(q) => println!(
            "quota           ${} ({}, buffer {}%)",
            q.get("limit_usd").and_then(Value::as_str).unwrap_or("?"),
            q.get("mode").and_then(Value::as_str).unwrap_or("?"),
            q.get("buffer_percent").cloned().unwrap_or(Value::Null)
        ),
        None => println!("quota           none"),
    }
    println!("status          {}", s("status"));
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(t: &Target, id: u64) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let (status, out) = c
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/clusters/{}/jobs/{id}", t.cluster),
            None,
            None,
        )
        .await?;
    finish(status, &out)
}

/// `clusterra logs`: the log to stdout, byte for byte. With `follow`, the SSE stream until the
/// job ends, reconnecting with `Last-Event-ID` when the connection drops.
pub async fn logs(
    t: &Target,
    id: u64,
    follow: bool,
    tail: Option<u64>,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    use std::io::Write;
    let c = Client::new(t)?;
    let path = format!("/v1/clusters/{}/jobs/{id}/logs", t.cluster);
    // No overall timeout: a log can be large and a stream lasts as long as the job.
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let request = |url: String| {
        let mut r = http.get(url).header("X-Clusterra-Via", "cli");
        if let Some(token) = &c.token {
            r = r.bearer_auth(token);
        }
        r
    };
    let unreachable = || format!("could not reach {}; is `clusterra serve` running?", c.base);
    let mut out = std::io::stdout().lock();
    if !follow {
        let url = match tail {
            Some(n) => format!("{}{path}?tail={n}", c.base),
            None => format!("{}{path}", c.base),
        };
        let res = request(url).send().await.with_context(unreachable)?;
        let status = res.status().as_u16();
        if !res.status().is_success() {
            return finish(status, &res.json().await.unwrap_or(Value::Null));
        }
        if res
            .headers()
            .get("x-clusterra-log-status")
            .map(|v| v.as_bytes())
            == Some(b"not-started")
        {
            eprintln!("job {id} has not started yet; nothing written so far");
        }
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("the log download was cut off")?)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut req = request(format!("{}{path}/stream", c.base));
        if let Some(last) = &last_id {
            req = req.header("Last-Event-ID", last);
        }
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) if failures < 5 && last_id.is_some() => {
                failures += 1;
                eprintln!("connection lost ({e}); resuming");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).with_context(unreachable),
        };
        if !res.status().is_success() {
            let status = res.status().as_u16();
            return finish(status, &res.json().await.unwrap_or(Value::Null));
        }
        let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("stream interrupted ({e}); resuming");
                    break;
                }
            };
            failures = 0;
            match event.event.as_str() {
                "log" => {
                    let data: Value = serde_json::from_str(&event.data)?;
                    if let Some(text) = data["text"].as_str() {
                        out.write_all(text.as_bytes())?;
                    } else if let Some(b64) = data["base64"].as_str() {
                        use base64::Engine;
                        out.write_all(&base64::engine::general_purpose::STANDARD.decode(b64)?)?;
                    }
                    out.flush()?;
                }
                "reset" => {
                    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    eprintln!(
                        "\n[the log was {} after {} bytes; printing it again from the start]",
                        data["reason"].as_str().unwrap_or("reset"),
                        data["offset"]
                    );
                }
                "end" => {
                    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    eprintln!(
                        "[job {id} ended: {}, exit code {}]",
                        data["state"].as_str().unwrap_or("?"),
                        data["exit_code"]
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                "error" => {
                    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    anyhow::bail!(
                        "the server could not read the log: {}",
                        data["message"].as_str().unwrap_or("no reason given")
                    );
                }
                _ => {}
            }
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
        }
        failures += 1;
        if failures > 5 {
            anyhow::bail!("the log stream kept dropping; giving up");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn print_event(e: &Value, json: bool) {
    if json {
        println!("{e}");
    } else {
        println!(
            "{:>8}  {}  {}",
            e["position"],
            e["time"].as_str().unwrap_or(""),
            e["summary"].as_str().unwrap_or("")
        );
    }
}

/// `clusterra events`: the last `limit` entries oldest first, or with `follow` the live stream
/// (resuming with `Last-Event-ID` when dropped or disconnected).
pub async fn events(
    t: &Target,
    follow: bool,
    types: Option<String>,
    job: Option<u64>,
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use futures::StreamExt;
    let c = Client::new(t)?;
    let mut filters = Vec::new();
    if let Some(types) = &types {
        filters.push(format!("type={types}"));
    }
    if let Some(job) = job {
        filters.push(format!("job_id={job}"));
    }
    let path = format!("/v1/clusters/{}/events", t.cluster);
    if !follow {
        filters.push(format!("limit={limit}"));
        let (status, out) = c
            .send(
                reqwest::Method::GET,
                &format!("{path}?order=desc&{}", filters.join("&")),
                None,
                None,
            )
            .await?;
        if !(200..300).contains(&status) {
            return finish(status, &out);
        }
        for e in out["events"].as_array().into_iter().flatten().rev() {
            print_event(e, json);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut req = http
            .get(format!("{}{path}/stream?{}", c.base, filters.join("&")))
            .header("X-Clusterra-Via", "cli");
        if let Some(token) = &c.token {
            req = req.bearer_auth(token);
        }
        if let Some(last) = &last_id {
            req = req.header("Last-Event-ID", last);
        }
        let res = match req.send().await {
            Ok(r) => r,
            Err(e) if failures < 5 => {
                failures += 1;
                eprintln!("could not reach {} ({e}); retrying", c.base);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).context("the event stream is unreachable"),
        };
        if !res.status().is_success() {
            let status = res.status().as_u16();
            return finish(status, &res.json().await.unwrap_or(Value::Null));
        }
        let mut events = eventsource_stream::Eventsource::eventsource(res.bytes_stream());
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            failures = 0;
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            match event.event.as_str() {
                "dropped" => eprintln!("[fell behind; resuming after {}]", event.id),
                _ if event.data.is_empty() => {}
                _ => {
                    if let Ok(e) = serde_json::from_str::<Value>(&event.data) {
                        print_event(&e, json);
                    }
                }
            }
        }
        failures += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn params() {
        let v = super::parse_params(&[
            "command=echo hi".into(),
            "minutes=5".into(),
            "values=[1,2]".into(),
        ])
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"command": "echo hi", "minutes": 5, "values": [1, 2]})
        );
        assert!(super::parse_params(&["nope".into()]).is_err());
    }
}
