//! Settings: built-in defaults, then a TOML file, then `CLUSTERRA_*` environment variables, then
//! command-line flags — each layer overrides the one before. See docs/configuration.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result, ensure};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Cold-start profiles: what a node takes from launch to ready (`node_profile`, and
/// `clusterra simulate --profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// 2 s, the local executor's default
    Local,
    /// 30 s launch + 30 s network + 20 s registration = 80 s, as on EC2 with Karpenter
    Realistic,
}

impl Profile {
    pub fn cold_start_seconds(self) -> i64 {
        match self {
            Profile::Local => 2,
            Profile::Realistic => 30 + 30 + 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded defaults keep their state (the SQLite database, later secrets and files).
    pub data_dir: PathBuf,
    /// The HTTP listen address.
    pub listen: SocketAddr,
    /// `postgres://…` for PostgreSQL; empty for SQLite at `<data_dir>/clusterra.db`.
    pub database_url: String,
    /// SQLite durability: "normal" (survives process crashes) or "full" (also power loss).
    pub sqlite_synchronous: String,
    /// Database connections in the pool.
    pub db_max_connections: u32,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// Verify RS256 tokens against this JWKS file instead of the local HS256 secret.
    pub jwks_file: Option<PathBuf>,
    /// Verify RS256 tokens against this JWKS URL (fetched at start, refreshed every 10 minutes).
    pub jwks_url: Option<String>,
    /// JWKS mode: the `iss` tokens must carry.
    pub jwt_issuer: Option<String>,
    /// JWKS mode: the `aud` tokens must carry.
    pub jwt_audience: Option<String>,
    /// How long a read with X-Clusterra-Min-Position waits for its projection, in milliseconds.
    pub min_position_wait_ms: u64,
    /// The largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// What `/mnt/efs` is for the local executor; empty = `<data_dir>/efs`.
    pub efs_root: PathBuf,
    /// How often the poll cycle reads job states from Slurm, in milliseconds.
    pub poll_interval_ms: u64,
    /// Where each Slurm cluster's shared filesystem is mounted on this server:
    /// `<dir>/<workspace>.<cluster>`; empty = `<data_dir>/efs-mounts`.
    pub efs_mounts_dir: PathBuf,
    /// How often followed logs are stat'ed (the fallback where file notifications do not arrive,
    /// as on EFS), in milliseconds.
    pub log_poll_interval_ms: u64,
    /// How often an idle SSE stream sends a heartbeat comment, in milliseconds.
    pub sse_heartbeat_ms: u64,
    /// Register the cluster `local` (run by the local executor) in workspace `default` at start;
    /// unset = only with the embedded SQLite default.
    pub default_cluster: Option<bool>,
    /// How many feed entries a live subscriber may fall behind before it is dropped (with a
    /// resume position).
    pub feed_buffer: usize,
    /// Local executor: seconds in one minute of `time_limit` (60; lower only for demos and tests).
    pub executor_minute_seconds: f64,
    /// Local executor: milliseconds between SIGTERM and SIGKILL on cancel and timeout.
    pub executor_grace_ms: u64,
    /// Local executor, server running as root: the unprivileged user jobs run as; unset =
    /// `clusterra-job`, made with `useradd --system` if missing (a named user must exist).
    pub executor_user: Option<String>,
    /// Where the slurmrestd JWTs of registered clusters live: `<workspace>.<cluster>.jwt` files;
    /// empty = `<data_dir>/slurm-tokens`. Each file is re-read when it changes.
    pub slurm_tokens_dir: PathBuf,
    /// How long one call to a slurmrestd may take, connection included, in milliseconds.
    pub slurm_call_timeout_ms: u64,
    /// Calls in a row to a cluster's slurmrestd that got no answer before the server stops
    /// calling it (its circuit breaker opens).
    pub slurm_breaker_failures: u32,
    /// How long an open breaker waits before a probe, in milliseconds; doubled after each failed
    /// probe, up to 16 times this.
    pub slurm_breaker_backoff_ms: u64,
    /// Calls this server makes to one cluster's slurmrestd at once; a call that finds them all
    /// taken for a second is refused, never sent (a submit's key is then free again).
    pub slurm_max_in_flight: usize,
    /// Local executor: jobs running at once (the rest wait PENDING); unset = this machine's
    /// cores; 0 runs nothing (every job stays pending, for benchmarks of the submit path).
    pub executor_slots: Option<usize>,
    /// The S3 endpoint the server uses for the clusters' buckets; empty = the embedded object
    /// store (started in this process on `s3_listen`, files under `<data_dir>/objects`); `aws` =
    /// AWS's own endpoint for `s3_region`.
    pub s3_endpoint: String,
    /// The endpoint presigned URLs carry (the host is signed): what browsers and the CLI reach;
    /// empty = `s3_endpoint` (or the embedded store's address).
    pub s3_public_endpoint: String,
    /// Where the embedded object store listens; port 0 picks a free port.
    pub s3_listen: SocketAddr,
    pub s3_region: String,
    /// Path-style URLs (`host/bucket/key`, true) or virtual-host style (`bucket.host/key`).
    pub s3_path_style: bool,
    /// Static S3 keys; unset = the AWS default chain (environment, web identity, instance
    /// role). The embedded store makes its own (`<data_dir>/s3-secret`) when unset.
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Create a cluster's bucket on first use if it is missing; unset = only for the embedded
    /// store.
    pub s3_create_buckets: Option<bool>,
    /// The node-shape catalog (JSON); empty = the built-in one (fixtures/catalog/shapes.json).
    pub catalog_file: PathBuf,
    /// Memory each node keeps for the system (kubelet, slurmd, the OS), in MiB.
    pub node_reserve_mib: u64,
    /// Memory per vCPU assumed for a job that asks for none, in MiB; unset: what the largest
    /// compute shape keeps per vCPU after `node_reserve_mib`, at most 2048 (2016 by default).
    pub default_mib_per_cpu: Option<u64>,
    /// How long a node set with nothing to do keeps its nodes before it goes to zero, in ms.
    pub scale_idle_window_ms: u64,
    /// Where desired node counts are kept for the edge agent: "embedded" (a table in the
    /// log's database) or "dynamodb".
    pub replica_store: String,
    /// DynamoDB endpoint; empty = AWS's own for `dynamodb_region`.
    pub dynamodb_endpoint: String,
    pub dynamodb_region: String,
    pub dynamodb_table: String,
    /// Create the table if it is missing.
    pub dynamodb_create_table: bool,
    /// Static DynamoDB keys; unset = the AWS default chain.
    pub dynamodb_access_key_id: Option<String>,
    pub dynamodb_secret_access_key: Option<String>,
    /// Local executor nodes' cold start: "local" (2 s) or "realistic" (30 s launch + 30 s
    /// network + 20 s registration = 80 s).
    pub node_profile: String,
    /// Cold start in milliseconds; overrides `node_profile`.
    pub node_cold_start_ms: Option<u64>,
    /// How often the edge agent of the local executor reconciles its nodes, in milliseconds.
    pub agent_interval_ms: u64,
    /// The billing period of bills and quotas: "month" (calendar, UTC), "week" (ISO, from
    /// Monday 00:00 UTC) or "day" (UTC).
    pub billing_period: String,
    /// HTTP edge (the API and the embedded object store, each): from a request's first byte to
    /// the end of its headers, at most this long (ms); also how long a request body may send
    /// nothing.
    pub http_header_timeout_ms: u64,
    /// HTTP edge: how long a connection with no request in progress stays open (ms).
    pub http_idle_timeout_ms: u64,
    /// HTTP edge: connections open at once per listener; more are answered 503 `server_busy`.
    pub http_max_connections: usize,
    /// The largest upload a presigned URL is signed for, in bytes (its exact size is signed in).
    pub max_upload_bytes: u64,
    /// The most bytes one user's keys may take in one cluster's bucket (and `shared/` in it);
    /// 0 = no quota. Checked when an upload URL is signed, and again by the embedded store.
    pub storage_quota_bytes: u64,
    /// The buckets a workspace admin may register a cluster with: patterns with `*`, `?` and
    /// `{workspace}` (a list, or one comma-separated string). Empty = any bucket when the objects
    /// are in the embedded store, none when `s3_endpoint` is set.
    #[serde(deserialize_with = "list_or_string")]
    pub bucket_allow: Vec<String>,
    /// The hosts webhooks may deliver to: host names or IP literals, `*.domain` (any name under
    /// it) or `*` (anywhere); a list, or one comma-separated string. Empty = loopback only
    /// (`127.0.0.1`, `::1`, `localhost`) on the embedded default, no host at all with
    /// PostgreSQL. Checked at registration and at every attempt.
    #[serde(deserialize_with = "list_or_string")]
    pub webhook_allow: Vec<String>,
    /// The key each webhook's signing secret is derived from (32 random bytes, hex, made at the
    /// first start); empty = `<data_dir>/webhook-key`. Replicas must share one.
    pub webhook_key_file: PathBuf,
    /// How long one webhook delivery attempt may take, connecting included, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Ask AI's model: an OpenAI-compatible base URL ending in `/v1`; empty = no agent (its
    /// routes answer 503 `agent_unavailable`).
    pub agent_model_url: String,
    /// The model name sent with each request.
    pub agent_model: String,
    /// A file holding the model server's API key (read at each request).
    pub agent_api_key_file: Option<PathBuf>,
    /// The longest one model request may take, in ms.
    pub agent_model_timeout_ms: u64,
    /// The most tokens one model answer may have.
    pub agent_max_tokens: u32,
    /// Model calls to answer one message, tool rounds included.
    pub agent_max_turns: u32,
    /// User messages one conversation may hold.
    pub agent_max_messages: u32,
    /// Messages one user may send per minute (per replica).
    pub agent_messages_per_minute: u32,
    /// How long a proposal may be confirmed, in seconds.
    pub agent_proposal_ttl_s: u64,
    /// Stop sequences sent with each request (a small model may need `</tool_call>`).
    #[serde(deserialize_with = "list_or_string")]
    pub agent_model_stop: Vec<String>,
    /// The tools offered to the model; empty = all of them (docs/agent.md).
    #[serde(deserialize_with = "list_or_string")]
    pub agent_tools: Vec<String>,
    /// A JSON file of example messages (OpenAI's chat format) put after the system prompt: a
    /// small model needs a few to call tools at all.
    pub agent_examples_file: Option<PathBuf>,
    /// The most nodes one job may ask for; CPUs and memory per job are what the catalog's
    /// biggest shape holds on that many nodes (docs/security.md).
    pub max_nodes_per_job: u32,
    /// The most nodes one node set may have: desired counts are clamped to it.
    pub max_nodes_per_set: u32,
    /// The most GPUs one job may ask for (0: GPU jobs are refused; the catalog has no GPUs).
    pub max_gpus_per_job: u32,
    /// The most nodes the local executor's edge agent launches in one step.
    pub agent_max_launch_per_step: u32,
    /// The longest a token may still be valid for, in seconds: tokens whose `exp` is further
    /// ahead are refused (`token_lifetime_too_long`), and `token mint --ttl` stays within it.
    pub max_token_lifetime_s: i64,
    /// Per-cluster job limits, by `"<workspace>/<cluster>"`; each field unset = the server's.
    pub cluster_limits: std::collections::BTreeMap<String, ClusterLimitsFile>,
}

/// One cluster's job limits in the configuration file (`[cluster_limits."ws/cluster"]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimitsFile {
    pub max_nodes_per_job: Option<u32>,
    pub max_cpus_per_job: Option<u32>,
    pub max_memory_mib_per_job: Option<u64>,
    pub max_gpus_per_job: Option<u32>,
    pub max_nodes_per_set: Option<u32>,
}

/// The example messages of `agent_examples_file`: a JSON array of at most 64 chat messages in
/// OpenAI's format, at most 64 KiB.
fn agent_examples(path: &Path) -> Result<Vec<commands::agent::ChatMessage>> {
    let bad = |why: String| {
        crate::error::Error::settings(format!("agent_examples_file {}: {why}", path.display()))
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if text.len() > 64 * 1024 {
        return Err(bad("larger than 64 KiB".into()));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let items = doc
        .as_array()
        .filter(|a| a.len() <= 64)
        .ok_or_else(|| bad("expected a JSON array of at most 64 messages".into()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            commands::agent::ChatMessage::from_openai(m)
                .map_err(|e| bad(format!("message {i}: {e}")))
        })
        .collect()
}

/// A list, or one string of comma-separated items (as an environment variable gives it).
fn list_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./.clusterra"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: String::new(),
            sqlite_synchronous: "normal".into(),
            db_max_connections: 8,
            log_format: "text".into(),
            jwks_file: None,
            jwks_url: None,
            jwt_issuer: None,
            jwt_audience: None,
            min_position_wait_ms: 5_000,
            body_limit_bytes: 1024 * 1024,
            efs_root: PathBuf::new(),
            poll_interval_ms: 1_000,
            efs_mounts_dir: PathBuf::new(),
            log_poll_interval_ms: 250,
            sse_heartbeat_ms: 15_000,
            feed_buffer: 1_024,
            default_cluster: None,
            executor_minute_seconds: 60.0,
            executor_grace_ms: 5_000,
            executor_user: None,
            executor_slots: None,
            slurm_tokens_dir: PathBuf::new(),
            slurm_call_timeout_ms: 5_000,
            slurm_breaker_failures: 3,
            slurm_breaker_backoff_ms: 10_000,
            slurm_max_in_flight: commands::slurm::DEFAULT_MAX_IN_FLIGHT,
            s3_endpoint: String::new(),
            s3_public_endpoint: String::new(),
            s3_listen: SocketAddr::from(([127, 0, 0, 1], 8014)),
            s3_region: "us-east-1".into(),
            s3_path_style: true,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_create_buckets: None,
            catalog_file: PathBuf::new(),
            node_reserve_mib: 512,
            default_mib_per_cpu: None,
            scale_idle_window_ms: 300_000,
            replica_store: "embedded".into(),
            dynamodb_endpoint: String::new(),
            dynamodb_region: "us-east-1".into(),
            dynamodb_table: "clusterra-replicas".into(),
            dynamodb_create_table: false,
            dynamodb_access_key_id: None,
            dynamodb_secret_access_key: None,
            node_profile: "local".into(),
            node_cold_start_ms: None,
            agent_interval_ms: 250,
            billing_period: "month".into(),
            max_nodes_per_job: domain::scaling::DEFAULT_MAX_NODES_PER_JOB,
            max_nodes_per_set: domain::scaling::DEFAULT_MAX_NODES_PER_SET,
            max_gpus_per_job: 0,
            agent_max_launch_per_step: 32,
            cluster_limits: Default::default(),
            max_token_lifetime_s: api::auth::DEFAULT_MAX_TOKEN_LIFETIME_S,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            http_max_connections: 1024,
            max_upload_bytes: 5 * 1024 * 1024 * 1024,
            storage_quota_bytes: 20 * 1024 * 1024 * 1024,
            bucket_allow: Vec::new(),
            webhook_allow: Vec::new(),
            webhook_key_file: PathBuf::new(),
            webhook_timeout_ms: 10_000,
            agent_model_url: String::new(),
            agent_model: "default".into(),
            agent_api_key_file: None,
            agent_model_timeout_ms: 60_000,
            agent_max_tokens: 512,
            agent_max_turns: 6,
            agent_max_messages: 50,
            agent_messages_per_minute: 10,
            agent_proposal_ttl_s: 600,
            agent_model_stop: Vec::new(),
            agent_tools: Vec::new(),
            agent_examples_file: None,
        }
    }
}

const ENV_KEYS: [&str; 77] = [
    "webhook_allow",
    "webhook_key_file",
    "webhook_timeout_ms",
    "agent_tools",
    "agent_examples_file",
    "agent_model_url",
    "agent_model",
    "agent_api_key_file",
    "agent_model_timeout_ms",
    "agent_max_tokens",
    "agent_max_turns",
    "agent_max_messages",
    "agent_messages_per_minute",
    "agent_proposal_ttl_s",
    "agent_model_stop",
    "max_token_lifetime_s",
    "max_nodes_per_job",
    "max_nodes_per_set",
    "max_gpus_per_job",
    "agent_max_launch_per_step",
    "max_upload_bytes",
    "storage_quota_bytes",
    "bucket_allow",
    "http_header_timeout_ms",
    "http_idle_timeout_ms",
    "http_max_connections",
    "slurm_call_timeout_ms",
    "slurm_breaker_failures",
    "slurm_breaker_backoff_ms",
    "slurm_max_in_flight",
    "billing_period",
    "replica_store",
    "dynamodb_endpoint",
    "dynamodb_region",
    "dynamodb_table",
    "dynamodb_create_table",
    "dynamodb_access_key_id",
    "dynamodb_secret_access_key",
    "node_profile",
    "node_cold_start_ms",
    "agent_interval_ms",
    "scale_idle_window_ms",
    "catalog_file",
    "node_reserve_mib",
    "default_mib_per_cpu",
    "s3_endpoint",
    "s3_public_endpoint",
    "s3_listen",
    "s3_region",
    "s3_path_style",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_create_buckets",
    "default_cluster",
    "feed_buffer",
    "efs_mounts_dir",
    "log_poll_interval_ms",
    "sse_heartbeat_ms",
    "slurm_tokens_dir",
    "jwt_issuer",
    "jwt_audience",
    "executor_slots",
    "efs_root",
    "poll_interval_ms",
    "executor_minute_seconds",
    "executor_grace_ms",
    "executor_user",
    "data_dir",
    "listen",
    "database_url",
    "sqlite_synchronous",
    "db_max_connections",
    "log_format",
    "jwks_file",
    "jwks_url",
    "min_position_wait_ms",
    "body_limit_bytes",
];

/// Flags given on the command line, which win over everything else.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

impl Config {
    /// Loads the layers. `file` is `--config`/`CLUSTERRA_CONFIG`; without it `./clusterra.toml`
    /// is read if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                ensure!(
                    path.is_file(),
                    "config file {} does not exist; pass an existing TOML file to --config",
                    path.display()
                );
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file("clusterra.toml")),
        }
        let config: Config = figment
            .merge(Env::prefixed("CLUSTERRA_").only(&ENV_KEYS))
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration (see docs/configuration.md)")?;
        ensure!(
            matches!(
                config.sqlite_synchronous.as_str(),
                "normal" | "full" | "extra"
            ),
            "sqlite_synchronous must be normal, full or extra, not {:?}",
            config.sqlite_synchronous
        );
        ensure!(
            matches!(config.log_format.as_str(), "text" | "json"),
            "log_format must be text or json, not {:?}",
            config.log_format
        );
        ensure!(
            config.jwks_file.is_none() || config.jwks_url.is_none(),
            "set jwks_file or jwks_url, not both"
        );
        ensure!(
            config.min_position_wait_ms <= 60_000,
            "min_position_wait_ms must be at most 60000 (one minute)"
        );
        ensure!(
            config.body_limit_bytes >= 1024,
            "body_limit_bytes must be at least 1024"
        );
        ensure!(
            (50..=60_000).contains(&config.poll_interval_ms),
            "poll_interval_ms must be from 50 to 60000"
        );
        ensure!(
            (100..=120_000).contains(&config.slurm_call_timeout_ms),
            "slurm_call_timeout_ms must be from 100 to 120000"
        );
        ensure!(
            (1..=1_000).contains(&config.slurm_breaker_failures),
            "slurm_breaker_failures must be from 1 to 1000"
        );
        ensure!(
            (100..=3_600_000).contains(&config.slurm_breaker_backoff_ms),
            "slurm_breaker_backoff_ms must be from 100 to 3600000"
        );
        ensure!(
            (1..=4_096).contains(&config.slurm_max_in_flight),
            "slurm_max_in_flight must be from 1 to 4096"
        );
        ensure!(
            (10..=60_000).contains(&config.log_poll_interval_ms),
            "log_poll_interval_ms must be from 10 to 60000"
        );
        ensure!(
            (16..=1_000_000).contains(&config.feed_buffer),
            "feed_buffer must be from 16 to 1000000"
        );
        ensure!(
            (1_000..=300_000).contains(&config.sse_heartbeat_ms),
            "sse_heartbeat_ms must be from 1000 to 300000"
        );
        ensure!(
            config.executor_minute_seconds > 0.0 && config.executor_minute_seconds <= 60.0,
            "executor_minute_seconds must be more than 0 and at most 60"
        );
        for (name, url) in [
            ("s3_endpoint", &config.s3_endpoint),
            ("s3_public_endpoint", &config.s3_public_endpoint),
        ] {
            ensure!(
                url.is_empty()
                    || (name == "s3_endpoint" && url == "aws")
                    || ((url.starts_with("http://") || url.starts_with("https://"))
                        && !url.contains(['?', '#'])),
                "{name} must be an http:// or https:// URL (a path ends with '/'), not {url:?}"
            );
        }
        for url in [&config.s3_endpoint, &config.s3_public_endpoint] {
            // A path needs its trailing slash, or the SDK glues the bucket onto it.
            let path = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, p)| p);
            ensure!(
                path.is_none_or(|p| p.is_empty() || p.ends_with('/')),
                "an S3 endpoint with a path must end with '/': {url:?}"
            );
        }
        ensure!(
            config.agent_model_url.is_empty()
                || ((config.agent_model_url.starts_with("http://")
                    || config.agent_model_url.starts_with("https://"))
                    && !config.agent_model_url.contains(['?', '#', '@'])
                    && config.agent_model_url.len() <= 2048),
            "agent_model_url must be an http:// or https:// base URL ending in /v1, without credentials (put the key in agent_api_key_file)"
        );
        ensure!(
            !config.agent_model.is_empty() && config.agent_model.len() <= 256,
            "agent_model must be a model name of 1-256 characters"
        );
        ensure!(
            (1_000..=600_000).contains(&config.agent_model_timeout_ms),
            "agent_model_timeout_ms must be from 1000 to 600000"
        );
        ensure!(
            (16..=32_768).contains(&config.agent_max_tokens),
            "agent_max_tokens must be from 16 to 32768"
        );
        ensure!(
            (1..=32).contains(&config.agent_max_turns),
            "agent_max_turns must be from 1 to 32"
        );
        ensure!(
            (1..=1_000).contains(&config.agent_max_messages),
            "agent_max_messages must be from 1 to 1000"
        );
        ensure!(
            (1..=10_000).contains(&config.agent_messages_per_minute),
            "agent_messages_per_minute must be from 1 to 10000"
        );
        ensure!(
            (10..=86_400).contains(&config.agent_proposal_ttl_s),
            "agent_proposal_ttl_s must be from 10 to 86400 (a day)"
        );
        ensure!(
            config.agent_model_stop.len() <= 4
                && config
                    .agent_model_stop
                    .iter()
                    .all(|s| !s.is_empty() && s.len() <= 64),
            "agent_model_stop holds at most 4 stop sequences of 1-64 characters"
        );
        ensure!(
            config.scale_idle_window_ms <= 24 * 3_600_000,
            "scale_idle_window_ms must be at most 86400000 (a day)"
        );
        ensure!(
            config
                .default_mib_per_cpu
                .is_none_or(|m| (64..=1024 * 1024).contains(&m)),
            "default_mib_per_cpu must be from 64 to 1048576"
        );
        ensure!(
            config.s3_access_key_id.is_some() == config.s3_secret_access_key.is_some(),
            "set both s3_access_key_id and s3_secret_access_key, or neither"
        );
        ensure!(
            matches!(config.replica_store.as_str(), "embedded" | "dynamodb"),
            "replica_store must be embedded or dynamodb, not {:?}",
            config.replica_store
        );
        ensure!(
            config.dynamodb_access_key_id.is_some() == config.dynamodb_secret_access_key.is_some(),
            "set both dynamodb_access_key_id and dynamodb_secret_access_key, or neither"
        );
        ensure!(
            config.dynamodb_endpoint.is_empty()
                || config.dynamodb_endpoint.starts_with("http://")
                || config.dynamodb_endpoint.starts_with("https://"),
            "dynamodb_endpoint must be an http:// or https:// URL, not {:?}",
            config.dynamodb_endpoint
        );
        ensure!(
            !config.dynamodb_table.is_empty() && config.dynamodb_table.len() <= 255,
            "dynamodb_table must be 1 to 255 characters"
        );
        ensure!(
            config.profile().is_some(),
            "node_profile must be local or realistic, not {:?}",
            config.node_profile
        );
        ensure!(
            config.node_cold_start_ms.is_none_or(|ms| ms <= 3_600_000),
            "node_cold_start_ms must be at most 3600000 (an hour)"
        );
        ensure!(
            domain::cost::PeriodKind::parse(&config.billing_period).is_some(),
            "billing_period must be month, week or day, not {:?}",
            config.billing_period
        );
        ensure!(
            (10..=60_000).contains(&config.agent_interval_ms),
            "agent_interval_ms must be from 10 to 60000"
        );
        ensure!(
            (100..=600_000).contains(&config.http_header_timeout_ms),
            "http_header_timeout_ms must be from 100 to 600000"
        );
        ensure!(
            (100..=3_600_000).contains(&config.http_idle_timeout_ms),
            "http_idle_timeout_ms must be from 100 to 3600000"
        );
        ensure!(
            (1..=1_000_000).contains(&config.http_max_connections),
            "http_max_connections must be from 1 to 1000000"
        );
        ensure!(
            config.max_upload_bytes >= 1,
            "max_upload_bytes must be at least 1"
        );
        for p in &config.bucket_allow {
            let plain = p.replace("{workspace}", "");
            ensure!(
                !p.is_empty()
                    && p.len() <= 200
                    && plain.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || ".-*?".contains(c)),
                "bucket_allow patterns are bucket names with * (any run), ? (one character) and {{workspace}}, not {p:?}"
            );
        }
        ensure!(
            (1..=10_000).contains(&config.max_nodes_per_set),
            "max_nodes_per_set must be from 1 to 10000"
        );
        ensure!(
            (100..=60_000).contains(&config.webhook_timeout_ms),
            "webhook_timeout_ms must be from 100 to 60000"
        );
        for h in &config.webhook_allow {
            let name = h.trim().trim_start_matches("*.");
            ensure!(
                !name.is_empty()
                    && name.len() <= 253
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]*".contains(c)),
                "webhook_allow entries are host names, IP literals, *.domain or *, not {h:?}"
            );
        }
        ensure!(
            (1..=config.max_nodes_per_set).contains(&config.max_nodes_per_job),
            "max_nodes_per_job must be from 1 to max_nodes_per_set ({})",
            config.max_nodes_per_set
        );
        ensure!(
            config.max_gpus_per_job <= 100_000,
            "max_gpus_per_job must be at most 100000"
        );
        ensure!(
            (1..=1_000).contains(&config.agent_max_launch_per_step),
            "agent_max_launch_per_step must be from 1 to 1000"
        );
        ensure!(
            (60..=365 * 24 * 3600).contains(&config.max_token_lifetime_s),
            "max_token_lifetime_s must be from 60 to 31536000 (a year)"
        );
        for (key, l) in &config.cluster_limits {
            ensure!(
                key.split_once('/').is_some_and(|(w, c)| {
                    domain::WorkspaceId::new(w).is_ok() && domain::ClusterId::new(c).is_ok()
                }),
                "cluster_limits keys are \"<workspace>/<cluster>\", not {key:?}"
            );
            ensure!(
                l.max_nodes_per_set
                    .is_none_or(|n| (1..=10_000).contains(&n))
                    && l.max_nodes_per_job.is_none_or(|n| n >= 1),
                "cluster_limits.{key:?}: node limits must be at least 1 (and max_nodes_per_set at most 10000)"
            );
        }
        Ok(config)
    }

    /// The job limits of every cluster: the server's, and the per-cluster overrides.
    pub fn limits(&self, catalog: &domain::scaling::Catalog) -> commands::jobs::ClusterLimits {
        use domain::scaling::JobLimits;
        let default = JobLimits::from_catalog(
            catalog,
            self.max_nodes_per_job,
            self.max_nodes_per_set,
            self.max_gpus_per_job,
        );
        let clusters = self
            .cluster_limits
            .iter()
            .map(|(key, l)| {
                let base = JobLimits::from_catalog(
                    catalog,
                    l.max_nodes_per_job.unwrap_or(self.max_nodes_per_job),
                    l.max_nodes_per_set.unwrap_or(self.max_nodes_per_set),
                    l.max_gpus_per_job.unwrap_or(self.max_gpus_per_job),
                );
                let limits = JobLimits {
                    max_cpus_per_job: l.max_cpus_per_job.unwrap_or(base.max_cpus_per_job),
                    max_memory_mib_per_job: l
                        .max_memory_mib_per_job
                        .unwrap_or(base.max_memory_mib_per_job),
                    ..base
                };
                (key.clone(), limits)
            })
            .collect();
        commands::jobs::ClusterLimits { default, clusters }
    }

    /// The connection limit and timeouts of each HTTP listener.
    pub fn edge_limits(&self) -> edge::Limits {
        edge::Limits {
            header_timeout: std::time::Duration::from_millis(self.http_header_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.http_idle_timeout_ms),
            max_connections: self.http_max_connections,
        }
    }

    /// The upload limits (`max_upload_bytes`, `storage_quota_bytes`).
    pub fn upload_limits(&self) -> domain::storage::UploadLimits {
        domain::storage::UploadLimits {
            max_upload_bytes: self.max_upload_bytes,
            quota_bytes: (self.storage_quota_bytes > 0).then_some(self.storage_quota_bytes),
        }
    }

    /// Ask AI's agent: its model connection when `agent_model_url` is set, and its limits.
    pub fn agent(&self) -> Result<api::agent::Agent> {
        let mut tools = Vec::new();
        for name in &self.agent_tools {
            let tool = domain::agent::Tool::from_name(name).ok_or_else(|| {
                crate::error::Error::settings(format!(
                    "agent_tools: there is no tool {name:?}; the tools are {}",
                    domain::agent::Tool::ALL.map(|t| t.name()).join(", ")
                ))
            })?;
            tools.push(tool);
        }
        if tools.is_empty() {
            tools = domain::agent::Tool::ALL.to_vec();
        }
        let examples = match &self.agent_examples_file {
            None => Vec::new(),
            Some(path) => agent_examples(path)?,
        };
        let limits = api::agent::AgentLimits {
            max_turns: self.agent_max_turns,
            max_messages: self.agent_max_messages,
            messages_per_minute: self.agent_messages_per_minute,
            proposal_ttl: std::time::Duration::from_secs(self.agent_proposal_ttl_s),
            model_timeout: std::time::Duration::from_millis(self.agent_model_timeout_ms),
            tools,
            examples,
        };
        if self.agent_model_url.is_empty() {
            return Ok(api::agent::Agent::new(None, limits));
        }
        let chat = gateways::chat::OpenAiChat::new(gateways::chat::ChatSettings {
            base_url: self.agent_model_url.clone(),
            model: self.agent_model.clone(),
            api_key_file: self.agent_api_key_file.clone(),
            timeout: std::time::Duration::from_millis(self.agent_model_timeout_ms),
            max_tokens: self.agent_max_tokens,
            stop: self.agent_model_stop.clone(),
        })
        .map_err(|e| crate::error::Error::settings(format!("the agent's model connection: {e}")))?;
        Ok(api::agent::Agent::new(
            Some(std::sync::Arc::new(chat)),
            limits,
        ))
    }

    /// The `bucket_allow` rule in force: `None` = any bucket (all in the embedded store).
    pub fn bucket_allow(&self) -> Option<Vec<String>> {
        if self.bucket_allow.is_empty() && self.embedded_objects() {
            None
        } else {
            Some(self.bucket_allow.clone())
        }
    }

    /// From a node's launch to its being ready (local executor).
    pub fn node_cold_start(&self) -> std::time::Duration {
        let profile = self.profile().unwrap_or(Profile::Local);
        self.node_cold_start_ms.map_or(
            std::time::Duration::from_secs(profile.cold_start_seconds().unsigned_abs()),
            std::time::Duration::from_millis,
        )
    }

    fn profile(&self) -> Option<Profile> {
        <Profile as clap::ValueEnum>::from_str(&self.node_profile, false).ok()
    }

    /// The memory per vCPU of a job that asks for none: the setting, else what fills a compute
    /// node of `catalog` (`Catalog::fitting_mib_per_cpu`).
    pub fn mib_per_cpu(&self, catalog: &domain::scaling::Catalog) -> u64 {
        self.default_mib_per_cpu
            .unwrap_or_else(|| catalog.fitting_mib_per_cpu())
    }

    /// The node-shape catalog: the configured file, or the built-in one.
    pub fn catalog(&self) -> Result<domain::scaling::Catalog> {
        let text = if self.catalog_file.as_os_str().is_empty() {
            include_str!("../../fixtures/catalog/shapes.json").to_string()
        } else {
            std::fs::read_to_string(&self.catalog_file).with_context(|| {
                format!(
                    "could not read catalog_file {}",
                    self.catalog_file.display()
                )
            })?
        };
        domain::scaling::Catalog::parse(&text, self.node_reserve_mib)
            .with_context(|| "the node-shape catalog is not valid (see docs/autoscaling.md)")
    }

    /// Whether files live in the embedded object store.
    pub fn embedded_objects(&self) -> bool {
        self.s3_endpoint.is_empty()
    }

    /// The efs root of the local executor.
    pub fn efs_root(&self) -> PathBuf {
        if self.efs_root.as_os_str().is_empty() {
            self.data_dir.join("efs")
        } else {
            self.efs_root.clone()
        }
    }

    /// Where Slurm clusters' shared filesystems are mounted.
    pub fn efs_mounts_dir(&self) -> PathBuf {
        if self.efs_mounts_dir.as_os_str().is_empty() {
            self.data_dir.join("efs-mounts")
        } else {
            self.efs_mounts_dir.clone()
        }
    }

    /// The directory of slurmrestd tokens.
    pub fn slurm_tokens_dir(&self) -> PathBuf {
        if self.slurm_tokens_dir.as_os_str().is_empty() {
            self.data_dir.join("slurm-tokens")
        } else {
            self.slurm_tokens_dir.clone()
        }
    }

    /// The local HS256 secret's file.
    pub fn secret_path(&self) -> PathBuf {
        self.data_dir.join("jwt-secret")
    }

    /// Where the webhook key is.
    pub fn webhook_key_path(&self) -> PathBuf {
        if self.webhook_key_file.as_os_str().is_empty() {
            self.data_dir.join("webhook-key")
        } else {
            self.webhook_key_file.clone()
        }
    }

    /// The `webhook_allow` list in force: empty = loopback only on the embedded default
    /// (SQLite), no host at all with PostgreSQL (a shared deployment says where webhooks may go).
    pub fn webhook_allow(&self) -> Vec<String> {
        match (self.webhook_allow.is_empty(), self.database_url.is_empty()) {
            (true, true) => domain::webhook::loopback(),
            (true, false) => Vec::new(),
            (false, _) => self.webhook_allow.clone(),
        }
    }

    /// The database URL to open: the configured one, or SQLite in the data dir.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("clusterra.db").display())
        } else {
            self.database_url.clone()
        }
    }

    pub fn open_options(&self) -> eventlog::OpenOptions {
        let mut options = eventlog::OpenOptions::new(self.database_url());
        options.sqlite_synchronous = self.sqlite_synchronous.clone();
        options.max_connections = self.db_max_connections;
        options
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    /// The error and its causes, as `clusterra` prints them.
    fn chain(err: &crate::Error) -> String {
        let mut out = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            out.push_str(&format!(": {e}"));
            source = e.source();
        }
        out
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "clusterra.toml",
                "listen = \"127.0.0.1:9000\"\nlog_format = \"json\"\ndb_max_connections = 3",
            )?;
            jail.set_env("CLUSTERRA_LISTEN", "127.0.0.1:9100");
            jail.set_env("CLUSTERRA_TOKEN", "not a setting: ignored");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert_eq!(c.listen.port(), 9100, "env beats file");
            assert_eq!(c.log_format, "json", "file beats defaults");
            assert_eq!(c.db_max_connections, 3);
            assert_eq!(c.database_url(), "sqlite://./.clusterra/clusterra.db");
            let flags = Overrides {
                listen: Some("127.0.0.1:9200".parse().expect("addr")),
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            };
            let c = Config::load(None, &flags).expect("load");
            assert_eq!(c.listen.port(), 9200, "flags beat env");
            assert_eq!(c.database_url(), "sqlite:///tmp/x/clusterra.db");
            Ok(())
        });
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("clusterra.toml", "lissen = \"127.0.0.1:9000\"")?;
            let err = Config::load(None, &Overrides::default()).expect_err("typo");
            assert!(chain(&err).contains("lissen"), "{}", chain(&err));
            jail.create_file("clusterra.toml", "")?;
            jail.set_env("CLUSTERRA_SQLITE_SYNCHRONOUS", "sometimes");
            let err = Config::load(None, &Overrides::default()).expect_err("bad value");
            assert!(
                chain(&err).contains("sqlite_synchronous"),
                "{}",
                chain(&err)
            );
            jail.set_env("CLUSTERRA_SQLITE_SYNCHRONOUS", "normal");
            for (key, value, says) in [
                ("CLUSTERRA_S3_ENDPOINT", "ftp://store", "s3_endpoint"),
                (
                    "CLUSTERRA_S3_ENDPOINT",
                    "http://store/s3",
                    "must end with '/'",
                ),
                (
                    "CLUSTERRA_S3_ACCESS_KEY_ID",
                    "only-the-id",
                    "s3_secret_access_key",
                ),
            ] {
                jail.set_env(key, value);
                let err = Config::load(None, &Overrides::default()).expect_err(value);
                assert!(chain(&err).contains(says), "{value}: {}", chain(&err));
                jail.set_env(key, "");
            }
            Ok(())
        });
    }

    #[test]
    fn autoscaling_and_cost_settings_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("clusterra.toml", "")?;
            // (key, bad value, what the error names, a good value to put back)
            for (key, bad, says, good) in [
                (
                    "CLUSTERRA_REPLICA_STORE",
                    "redis",
                    "replica_store",
                    "embedded",
                ),
                (
                    "CLUSTERRA_DYNAMODB_ENDPOINT",
                    "ddb:8000",
                    "dynamodb_endpoint",
                    "",
                ),
                ("CLUSTERRA_DYNAMODB_TABLE", "", "dynamodb_table", "t"),
                ("CLUSTERRA_NODE_PROFILE", "slow", "node_profile", "local"),
                (
                    "CLUSTERRA_NODE_COLD_START_MS",
                    "3600001",
                    "node_cold_start_ms",
                    "0",
                ),
                (
                    "CLUSTERRA_AGENT_INTERVAL_MS",
                    "5",
                    "agent_interval_ms",
                    "250",
                ),
                ("CLUSTERRA_BILLING_PERIOD", "year", "billing_period", "week"),
                (
                    "CLUSTERRA_DYNAMODB_ACCESS_KEY_ID",
                    "only-the-id",
                    "dynamodb_secret_access_key",
                    "id",
                ),
            ] {
                jail.set_env(key, bad);
                let err = Config::load(None, &Overrides::default()).expect_err(bad);
                assert!(chain(&err).contains(says), "{bad}: {}", chain(&err));
                jail.set_env(key, good);
            }
            jail.set_env("CLUSTERRA_DYNAMODB_SECRET_ACCESS_KEY", "secret");
            let c = Config::load(None, &Overrides::default()).expect("good values");
            assert_eq!(c.node_cold_start(), std::time::Duration::ZERO);
            assert_eq!(c.billing_period, "week");
            Ok(())
        });
    }

    #[test]
    fn job_limit_and_token_settings_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("clusterra.toml", "")?;
            for (key, bad, says, good) in [
                (
                    "CLUSTERRA_MAX_NODES_PER_SET",
                    "0",
                    "max_nodes_per_set",
                    "256",
                ),
                (
                    "CLUSTERRA_MAX_NODES_PER_JOB",
                    "300",
                    "max_nodes_per_job",
                    "8",
                ),
                (
                    "CLUSTERRA_MAX_GPUS_PER_JOB",
                    "100001",
                    "max_gpus_per_job",
                    "4",
                ),
                (
                    "CLUSTERRA_AGENT_MAX_LAUNCH_PER_STEP",
                    "0",
                    "agent_max_launch_per_step",
                    "16",
                ),
                (
                    "CLUSTERRA_MAX_TOKEN_LIFETIME_S",
                    "31536001",
                    "max_token_lifetime_s",
                    "3600",
                ),
            ] {
                jail.set_env(key, bad);
                let err = Config::load(None, &Overrides::default()).expect_err(bad);
                assert!(chain(&err).contains(says), "{bad}: {}", chain(&err));
                jail.set_env(key, good);
            }
            jail.create_file(
                "clusterra.toml",
                "[cluster_limits.\"not a key\"]\nmax_nodes_per_job = 2\n",
            )?;
            let err = Config::load(None, &Overrides::default()).expect_err("bad key");
            assert!(chain(&err).contains("cluster_limits"), "{}", chain(&err));
            jail.create_file(
                "clusterra.toml",
                "[cluster_limits.\"lab/gpu\"]\nmax_nodes_per_job = 2\nmax_gpus_per_job = 16\n",
            )?;
            let c = Config::load(None, &Overrides::default()).expect("good values");
            let catalog = c.catalog().expect("built-in catalog");
            let limits = c.limits(&catalog);
            assert_eq!(limits.default.max_nodes_per_job, 8);
            assert_eq!(limits.default.max_gpus_per_job, 4);
            let lab = limits.of(
                &domain::WorkspaceId::new("lab").expect("slug"),
                &domain::ClusterId::new("gpu").expect("slug"),
            );
            assert_eq!((lab.max_nodes_per_job, lab.max_gpus_per_job), (2, 16));
            assert_eq!(c.max_token_lifetime_s, 3600);
            Ok(())
        });
    }

    #[test]
    fn edge_upload_and_bucket_settings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "clusterra.toml",
                "bucket_allow = [\"acme-*\", \"lab-{workspace}\"]\nstorage_quota_bytes = 0",
            )?;
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert_eq!(c.bucket_allow, vec!["acme-*", "lab-{workspace}"]);
            assert_eq!(c.bucket_allow(), Some(c.bucket_allow.clone()));
            assert_eq!(c.upload_limits().quota_bytes, None);
            assert_eq!(c.edge_limits().max_connections, 1024);
            assert_eq!(
                c.edge_limits().header_timeout,
                std::time::Duration::from_secs(10)
            );
            // From the environment: one comma-separated string.
            jail.set_env("CLUSTERRA_BUCKET_ALLOW", "a-*, b");
            let c = Config::load(None, &Overrides::default()).expect("load");
            assert_eq!(c.bucket_allow, vec!["a-*", "b"]);
            for (key, bad, says, good) in [
                ("CLUSTERRA_BUCKET_ALLOW", "Acme/*", "bucket_allow", "x"),
                (
                    "CLUSTERRA_HTTP_MAX_CONNECTIONS",
                    "0",
                    "http_max_connections",
                    "10",
                ),
                (
                    "CLUSTERRA_HTTP_HEADER_TIMEOUT_MS",
                    "5",
                    "http_header_timeout_ms",
                    "1000",
                ),
                (
                    "CLUSTERRA_HTTP_IDLE_TIMEOUT_MS",
                    "5",
                    "http_idle_timeout_ms",
                    "1000",
                ),
                ("CLUSTERRA_MAX_UPLOAD_BYTES", "0", "max_upload_bytes", "1"),
            ] {
                jail.set_env(key, bad);
                let err = Config::load(None, &Overrides::default()).expect_err(bad);
                assert!(chain(&err).contains(says), "{bad}: {}", chain(&err));
                jail.set_env(key, good);
            }
            let c = Config::load(None, &Overrides::default()).expect("good values");
            assert_eq!(c.edge_limits().max_connections, 10);
            Ok(())
        });
        // Empty: any bucket of the embedded store, none of an external S3.
        let mut c = Config::default();
        assert_eq!(c.bucket_allow(), None);
        c.s3_endpoint = "aws".into();
        assert_eq!(c.bucket_allow(), Some(vec![]));
    }

    #[test]
    fn cold_start_profiles() {
        let mut c = Config::default();
        assert_eq!(c.node_cold_start(), std::time::Duration::from_secs(2));
        c.node_profile = "realistic".into();
        assert_eq!(c.node_cold_start(), std::time::Duration::from_secs(80));
        c.node_cold_start_ms = Some(1500);
        assert_eq!(c.node_cold_start(), std::time::Duration::from_millis(1500));
    }

    #[test]
    fn agent_settings_are_checked_and_its_examples_read() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("clusterra.toml", "")?;
            // Off by default: no model, every tool, no examples.
            let c = Config::load(None, &Overrides::default()).expect("defaults");
            let agent = c.agent().expect("an agent");
            assert!(agent.model.is_none());
            assert_eq!(agent.limits.tools.len(), domain::agent::Tool::ALL.len());
            for (key, bad, says) in [
                (
                    "CLUSTERRA_AGENT_MODEL_URL",
                    "ftp://model/v1",
                    "agent_model_url",
                ),
                // Credentials belong in agent_api_key_file, and the error never echoes them.
                (
                    "CLUSTERRA_AGENT_MODEL_URL",
                    "http://me:secret@model/v1",
                    "agent_model_url",
                ),
                (
                    "CLUSTERRA_AGENT_MODEL_TIMEOUT_MS",
                    "999",
                    "agent_model_timeout_ms",
                ),
                ("CLUSTERRA_AGENT_MAX_TOKENS", "32769", "agent_max_tokens"),
                ("CLUSTERRA_AGENT_MAX_TURNS", "33", "agent_max_turns"),
                ("CLUSTERRA_AGENT_MAX_MESSAGES", "0", "agent_max_messages"),
                (
                    "CLUSTERRA_AGENT_MESSAGES_PER_MINUTE",
                    "10001",
                    "agent_messages_per_minute",
                ),
                (
                    "CLUSTERRA_AGENT_PROPOSAL_TTL_S",
                    "86401",
                    "agent_proposal_ttl_s",
                ),
                (
                    "CLUSTERRA_AGENT_MODEL_STOP",
                    "a,b,c,d,e",
                    "agent_model_stop",
                ),
            ] {
                jail.set_env(key, bad);
                let err = Config::load(None, &Overrides::default()).expect_err(bad);
                assert!(chain(&err).contains(says), "{bad}: {}", chain(&err));
                assert!(!chain(&err).contains("secret"), "{}", chain(&err));
                jail.clear_env();
            }
            // A tool that does not exist names the ones that do.
            jail.set_env("CLUSTERRA_AGENT_TOOLS", "list_jobs,format_disk");
            let c = Config::load(None, &Overrides::default()).expect("loads");
            let err = c.agent().err().expect("refused");
            assert!(chain(&err).contains("format_disk"), "{}", chain(&err));
            assert!(chain(&err).contains("cancel_job"), "{}", chain(&err));
            jail.set_env("CLUSTERRA_AGENT_TOOLS", "list_jobs, cancel_job");
            jail.set_env("CLUSTERRA_AGENT_MODEL_URL", "http://127.0.0.1:9/v1");
            // Examples: a JSON array of chat messages, each with a role.
            for (text, says) in [
                ("not json", "not JSON"),
                ("{}", "JSON array"),
                ("[{\"content\": \"hi\"}]", "message 0"),
                (
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"id\": \"x\"}]}]",
                    "message 0",
                ),
            ] {
                jail.create_file("examples.json", text)?;
                jail.set_env("CLUSTERRA_AGENT_EXAMPLES_FILE", "examples.json");
                let c = Config::load(None, &Overrides::default()).expect("loads");
                let err = c.agent().err().expect(text);
                assert!(chain(&err).contains(says), "{text}: {}", chain(&err));
            }
            jail.create_file("examples.json", &"x".repeat(64 * 1024 + 1))?;
            let c = Config::load(None, &Overrides::default()).expect("loads");
            assert!(chain(&c.agent().err().expect("too large")).contains("64 KiB"));
            jail.create_file(
                "examples.json",
                r#"[{"role": "user", "content": "Cancel job 17."},
                    {"role": "assistant", "content": "", "tool_calls": [{"id": "e1", "type": "function",
                     "function": {"name": "cancel_job", "arguments": {"job_ids": [17]}}}]},
                    {"role": "tool", "tool_call_id": "e1", "content": "ok"}]"#,
            )?;
            let c = Config::load(None, &Overrides::default()).expect("loads");
            let agent = c.agent().expect("an agent");
            assert!(agent.model.is_some());
            assert_eq!(
                agent.limits.tools,
                [
                    domain::agent::Tool::ListJobs,
                    domain::agent::Tool::CancelJob
                ]
            );
            assert_eq!(agent.limits.examples.len(), 3);
            // Arguments written as an object are carried as their JSON text.
            assert!(matches!(&agent.limits.examples[1],
                commands::agent::ChatMessage::Assistant { tool_calls, .. }
                    if tool_calls[0].arguments == r#"{"job_ids":[17]}"#));
            Ok(())
        });
    }
}
