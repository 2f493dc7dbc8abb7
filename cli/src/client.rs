//! The client verbs: `submit`, `jobs`, `job`, `cancel`, talking to a Clusterra API.
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
    cluster: String,
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

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(t: &Target) -> anyhow::Result<Self> {
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

    async fn send(
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

/// Prints the API's answer: the body on success, the error's message on failure.
fn finish(status: u16, body: &Value) -> anyhow::Result<ExitCode> {
    if (200..300).contains(&status) {
        println!("{}", serde_json::to_string_pretty(body)?);
        Ok(ExitCode::SUCCESS)
    } else {
        let e = &body["error"];
        eprintln!(
            "error {status} {}: {}{}",
            e["code"].as_str().unwrap_or("unknown"),
            e["message"].as_str().unwrap_or("the server gave no reason"),
            e["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default()
        );
        Ok(ExitCode::FAILURE)
    }
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

pub async fn submit(
    t: &Target,
    file: Option<PathBuf>,
    template: Option<String>,
    params: &[String],
    key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let body = match (file, template) {
        (Some(f), None) => {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("could not read {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?
        }
        (None, Some(id)) => serde_json::json!({"template_id": id, "params": parse_params(params)?}),
        _ => anyhow::bail!(
            "give a body file (clusterra submit body.json) or --template ID, not both"
        ),
    };
    let c = Client::new(t)?;
    let (status, out) = c
        .send(
            reqwest::Method::POST,
            &format!("/v1/clusters/{}/jobs", t.cluster),
            Some(&body),
            key.as_deref(),
        )
        .await?;
    finish(status, &out)
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

pub async fn job(t: &Target, id: u64) -> anyhow::Result<ExitCode> {
    let c = Client::new(t)?;
    let (status, out) = c
        .send(
            reqwest::Method::GET,
            &format!("/v1/clusters/{}/jobs/{id}", t.cluster),
            None,
            None,
        )
        .await?;
    finish(status, &out)
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
