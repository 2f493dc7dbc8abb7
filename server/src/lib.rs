//! The Clusterra server as a library: its settings ([`Config`]), its wiring ([`Server::build`])
//! and its run ([`Server::run`]): the HTTP API, the projections, and the workers that run in the
//! same process — the poll cycle (reconcile, scaling, quota enforcement; on the leader) and the
//! local executor's edge agent. `clusterra serve` parses settings and calls this; tests can
//! start the same server in-process.

pub mod config;
pub mod error;
pub mod poll;
pub mod secrets;
pub mod store;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use api::{AppState, Authenticator};
use projections::Projections;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::config::{Config, Overrides, Profile};
pub use crate::error::Error;
use crate::error::{Context, Result, ensure};

/// A server wired from its settings, not yet serving.
pub struct Server {
    config: Config,
    state: AppState,
    projections: Arc<Projections>,
    stop: StopOnDrop,
    stop_rx: watch::Receiver<bool>,
    poller: poll::Poller,
    /// The webhook outbox, and the leader flag it runs under.
    outbox: (
        commands::webhooks::Outbox,
        Arc<std::sync::atomic::AtomicBool>,
    ),
    agent: Option<(commands::fleet::EdgeAgent, std::time::Duration)>,
    job_user: gateways::jobuser::Resolved,
    job_user_notes: Vec<String>,
    first_start: bool,
    /// Origins of the object store's presigned URLs (the console's CSP `connect-src`).
    storage_origins: Vec<String>,
}

/// Binds the API's address from the settings, with a sentence that says how to pick another.
pub async fn bind(config: &Config) -> Result<TcpListener> {
    TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "could not listen on {}; pick another address with --listen or CLUSTERRA_LISTEN",
            config.listen
        )
    })
}

impl Server {
    /// Opens the store, starts the projections and the embedded object store, and wires the
    /// API and the workers; nothing is served until [`Server::run`].
    pub async fn build(config: Config) -> Result<Server> {
        raise_open_files(&config);
        // Who local jobs run as, decided first: a server whose jobs run as another user keeps
        // every file it makes from now on to itself (umask 077), the database included.
        let job_user = gateways::jobuser::resolve(config.executor_user.as_deref())
            .context("could not decide who local jobs run as (executor_user)")?;
        if job_user.created {
            tracing::info!(user = %job_user.user.name, "created the system user local jobs run as");
        }
        if job_user.user.switch.is_some() {
            gateways::jobuser::private_umask();
        }
        let store = crate::store::open_store(&config).await?;
        // The embedded defaults come with one cluster to try things on.
        if config
            .default_cluster
            .unwrap_or(store.log.backend() == "sqlite")
            && commands::clusters::ensure_default_cluster(store.log.as_ref())
                .await
                .context("could not register the default cluster")?
        {
            tracing::info!("first start: registered cluster `local` in workspace `default`");
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // From here on, a start-up error (or a server dropped without being run) stops what was
        // started: the projections, the embedded object store.
        let stop = StopOnDrop(stop_tx);
        let catalog = Arc::new(config.catalog()?);
        let mib_per_cpu = config.mib_per_cpu(&catalog);
        let default_workspace = domain::WorkspaceId::new(commands::clusters::DEFAULT_WORKSPACE)
            .context("the default workspace id")?;
        let default_cluster = domain::ClusterId::new(commands::clusters::DEFAULT_CLUSTER)
            .context("the default cluster id")?;
        let local = (default_workspace.clone(), default_cluster.clone());
        let (directory, executor) =
            slurm_directory(&config, catalog.clone(), &job_user.user, local)?;
        let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let billing_period =
            domain::cost::PeriodKind::parse(&config.billing_period).unwrap_or_default();
        let projections = Arc::new(Projections::start(
            store.log.clone(),
            store.read.clone(),
            projections::all_projectors(),
            stop_rx.clone(),
        ));
        let (auth, first_start) = authenticator(&config).await?;
        let (webhook_key, _) = crate::secrets::load_or_create(&config.webhook_key_path())?;
        let webhook_settings = commands::webhooks::OutboxSettings {
            key: Arc::new(webhook_key),
            allow: Arc::new(config.webhook_allow()),
        };
        let (objects, storage_origins) = object_store(&config, stop_rx.clone()).await?;
        // Everything in the data directory exists now: make it the server's alone.
        let mut job_user_notes: Vec<String> = job_user.warning.iter().cloned().collect();
        job_user_notes.extend(
            gateways::jobuser::secure_data_dir(
                &config.data_dir,
                &config.efs_root(),
                &config.data_dir.join("executor").join("scripts"),
                &job_user.user,
            )
            .context("could not make the data directory the server's alone")?,
        );
        let limits = config.limits(&catalog);
        let scaler = Arc::new(
            commands::scaling::Scaler::new(
                catalog.clone(),
                mib_per_cpu,
                chrono::Duration::milliseconds(config.scale_idle_window_ms as i64),
                chrono::Utc::now(),
            )
            .with_limits(limits.clone()),
        );
        let state = AppState {
            store: store.clone(),
            projections: projections.clone(),
            auth,
            metrics: Arc::new(api::Metrics::default()),
            settings: Arc::new(api::Settings {
                min_position_wait: std::time::Duration::from_millis(config.min_position_wait_ms),
                body_limit: config.body_limit_bytes,
                edge: config.edge_limits(),
                bucket_allow: config.bucket_allow(),
                billing_period,
                webhooks: webhook_settings.clone(),
            }),
            slurm: directory.clone(),
            submitter: Arc::new(
                commands::jobs::Submitter::default()
                    .with_shapes(catalog.clone(), mib_per_cpu)
                    .with_limits(limits.clone()),
            ),
            templates: Arc::new(
                commands::templates::Catalog::builtin()
                    .context("the built-in job templates do not load")?,
            ),
            logs: Arc::new(api::logs::Logs {
                local_root: config.efs_root(),
                local_user: job_user.user.name.clone(),
                mounts_dir: config.efs_mounts_dir(),
                hub: api::logs::LogHub::start(
                    store.clone(),
                    std::time::Duration::from_millis(config.log_poll_interval_ms),
                    32 * 1024,
                ),
                heartbeat: std::time::Duration::from_millis(config.sse_heartbeat_ms),
                chunk_bytes: 32 * 1024,
            }),
            feed: Arc::new(api::feed::FeedSettings {
                hub: api::feed::FeedHub::start(store.clone(), &projections, config.feed_buffer)
                    .ok_or_else(|| {
                        crate::error::Error::settings("the feed projection is not running")
                    })?,
                heartbeat: std::time::Duration::from_millis(config.sse_heartbeat_ms),
                max_page_bytes: api::feed::MAX_PAGE_BYTES,
            }),
            storage: api::storage::Storage {
                store: objects,
                uploads: config.upload_limits(),
            },
            cluster_cache: Default::default(),
            scaling: Arc::new(api::nodesets::Scaling {
                catalog: catalog.clone(),
                default_mib_per_cpu: mib_per_cpu,
                leading: leading.clone(),
                scaler: Some(scaler.clone()),
                cold_start: config.node_cold_start(),
                poll_interval: std::time::Duration::from_millis(config.poll_interval_ms),
            }),
            clock: Arc::new(eventlog::SystemClock),
            agent: Arc::new(config.agent()?),
        };
        let replicas = replica_store(&config, &store).await?;
        let poller = crate::poll::Poller {
            store: state.store.clone(),
            directory,
            tokens_dir: config.slurm_tokens_dir(),
            every: std::time::Duration::from_millis(config.poll_interval_ms),
            scaler,
            replicas: replicas.clone(),
            leadership: gateways::leader::Leadership::new(store.db.clone()),
            leading: leading.clone(),
            pricing: domain::cost::Pricing {
                catalog: catalog.clone(),
                default_mib_per_cpu: mib_per_cpu,
            },
            billing_period,
            limits,
            metrics: state.metrics.clone(),
            slurm: crate::poll::SlurmCalls {
                timeout: std::time::Duration::from_millis(config.slurm_call_timeout_ms),
                max_in_flight: config.slurm_max_in_flight,
                breaker: commands::slurm::BreakerSettings {
                    failures: config.slurm_breaker_failures,
                    backoff: std::time::Duration::from_millis(config.slurm_breaker_backoff_ms),
                    max_backoff: std::time::Duration::from_millis(
                        config.slurm_breaker_backoff_ms.saturating_mul(16),
                    ),
                },
            },
        };
        // The local executor's nodes follow the desired counts (without executor_slots).
        let agent = executor.nodes_enabled().then(|| {
            (
                commands::fleet::EdgeAgent {
                    workspace: default_workspace.clone(),
                    cluster: default_cluster.clone(),
                    replicas,
                    fleet: executor.clone(),
                },
                std::time::Duration::from_millis(config.agent_interval_ms),
            )
        });
        let sender = gateways::webhook::HttpWebhookSender::new(std::time::Duration::from_millis(
            config.webhook_timeout_ms,
        ))
        .context("could not make the webhook sender's HTTP client")?;
        let outbox = commands::webhooks::Outbox::new(
            store.log.clone(),
            store.read.clone(),
            Arc::new(sender),
            webhook_settings,
            Arc::new(eventlog::SystemClock),
        );
        Ok(Server {
            outbox: (outbox, leading.clone()),
            config,
            state,
            projections,
            stop,
            stop_rx,
            poller,
            agent,
            job_user,
            job_user_notes,
            first_start,
            storage_origins,
        })
    }

    /// The state the HTTP API is served with (for in-process callers and tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The API and the console behind one set of layers: what [`Server::run`] serves.
    pub fn app(&self) -> axum::Router {
        let api_routes = api::router(self.state.clone());
        let console = console::router(
            api_routes.clone(),
            &self.state,
            &console::Options {
                storage_origins: self.storage_origins.clone(),
            },
        );
        api::layered(api_routes.merge(console), &self.state)
    }

    /// Serves the API on `listener` and runs the workers until `shutdown` completes; then
    /// finishes the requests under way, stops the workers and the projections at a checkpoint.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let store = self.state.store.clone();
        let addr: SocketAddr = listener
            .local_addr()
            .context("the listener has no address")?;
        tracing::info!(%addr, backend = store.log.backend(), data_dir = %self.config.data_dir.display(), "clusterra listening");
        // Tests and scripts read this line to find the port.
        println!("clusterra listening on http://{addr}");
        match self.job_user.user.switch {
            Some((uid, _)) => {
                println!(
                    "local jobs run as {} (uid {uid}), who cannot read the data directory",
                    self.job_user.user.name
                );
                tracing::info!(user = %self.job_user.user.name, uid, "local jobs run as an unprivileged user");
            }
            None => {
                tracing::info!(user = %self.job_user.user.name, "local jobs run as the server's user")
            }
        }
        if store.log.backend() == "postgres" {
            // Replicas share the log, not this machine: say what the local executor is.
            let note = "on PostgreSQL other replicas may share this database; the embedded `local` cluster (the local executor) runs each job on the replica that took it, on that machine. It is a single-machine default: register a Slurm cluster for work that every replica serves";
            println!("NOTE: {note}");
            tracing::info!("{note}");
        }
        for note in &self.job_user_notes {
            println!("WARNING: {note}");
            tracing::warn!("{note}");
        }
        // The first-start token lives 12 h, or less where max_token_lifetime_s says so.
        let ttl = std::time::Duration::from_secs(
            u64::try_from(self.config.max_token_lifetime_s.min(12 * 3600)).unwrap_or(3600),
        );
        let banner = self.first_start.then(|| {
            crate::token::mint(&self.config, "admin@clusterra.local", "default", true, ttl)
        });
        if let Some(Err(e)) = &banner {
            tracing::warn!(error = %e, "could not mint the first-start admin token; mint one with `clusterra token mint`");
        }
        if let Some(Ok(token)) = banner {
            let mut console_addr = addr;
            if console_addr.ip().is_unspecified() {
                console_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            match crate::token::login_link(
                &self.config,
                "admin@clusterra.local",
                "default",
                true,
                std::time::Duration::from_secs(15 * 60),
                Some(&format!("http://{console_addr}")),
            ) {
                Ok(link) => println!(
                    "\nThe console: open this one-time sign-in link within 15 minutes \
                     (another: `clusterra token mint --data-dir {dir} --email you@example.org --login-link`):\n\n  {link}",
                    dir = self.config.data_dir.display()
                ),
                Err(e) => tracing::warn!(error = %e, "could not make the first-start sign-in link"),
            }
            println!(
                "\nFirst start: an admin token for workspace `default`, valid {hours} h \
             (mint more with `clusterra token mint --data-dir {dir} --email you@example.org`):\n\n  \
             export CLUSTERRA_TOKEN={token}\n\nTry:\n\n  \
             curl -s http://{addr}/readyz\n  \
             curl -s http://{addr}/v1/clusters -H \"Authorization: Bearer $CLUSTERRA_TOKEN\"\n",
                dir = self.config.data_dir.display(),
                hours = ttl.as_secs().div_ceil(3600)
            );
        }

        let app = self.app();
        let poller = tokio::spawn(crate::poll::run(self.poller, self.stop_rx.clone()));
        let (outbox, leading) = self.outbox;
        let outbox = tokio::spawn(commands::webhooks::run(
            outbox,
            std::time::Duration::from_secs(1),
            leading,
            self.stop_rx.clone(),
        ));
        let agent = self.agent.map(|(agent, every)| {
            tokio::spawn(crate::poll::agent(
                store.clone(),
                agent,
                every,
                self.stop_rx.clone(),
            ))
        });
        let limits = self.state.settings.edge;
        api::serve(listener, app, limits, shutdown)
            .await
            .context("the HTTP server failed")?;
        tracing::info!("HTTP server stopped; stopping projectors at a checkpoint");
        self.stop.stop();
        if let Err(e) = poller.await {
            tracing::error!(error = %e, "poll cycle ended abnormally");
        }
        if let Err(e) = outbox.await {
            tracing::error!(error = %e, "webhook outbox ended abnormally");
        }
        if let Some(Err(e)) = match agent {
            Some(a) => Some(a.await),
            None => None,
        } {
            tracing::error!(error = %e, "edge agent ended abnormally");
        }
        match Arc::try_unwrap(self.projections) {
            Ok(p) => p.join().await,
            Err(_) => tracing::warn!("projections still referenced at shutdown"),
        }
        Ok(())
    }
}

/// The Slurm behind each cluster: the local executor serves `default/local`; clusters registered
/// with a slurmrestd endpoint are connected by the poll cycle once their token file exists.
fn slurm_directory(
    config: &Config,
    catalog: Arc<domain::scaling::Catalog>,
    user: &gateways::jobuser::JobUser,
    local: (domain::WorkspaceId, domain::ClusterId),
) -> Result<(
    Arc<commands::slurm::LiveDirectory>,
    Arc<gateways::local::LocalExecutor>,
)> {
    let executor = gateways::local::LocalExecutor::open(
        gateways::local::LocalSettings {
            state_dir: config.data_dir.join("executor"),
            efs_root: config.efs_root(),
            grace: std::time::Duration::from_millis(config.executor_grace_ms),
            minute: std::time::Duration::from_secs_f64(config.executor_minute_seconds),
            slots: config.executor_slots.unwrap_or(0),
            // executor_slots set: a fixed number of slots and no nodes.
            nodes: config
                .executor_slots
                .is_none()
                .then(|| gateways::local::NodeSettings {
                    default_mib_per_cpu: config.mib_per_cpu(&catalog),
                    catalog,
                    cold_start: config.node_cold_start(),
                    max_launch_per_step: config.agent_max_launch_per_step,
                }),
            user: user.clone(),
        },
        chrono::Utc::now(),
    )
    .context("could not open the local executor")?;
    let executor = Arc::new(executor);
    let directory = commands::slurm::LiveDirectory::default();
    directory.insert(local.0, local.1, executor.clone());
    Ok((Arc::new(directory), executor))
}

/// Where desired node counts go: a table in the log's database, or DynamoDB.
async fn replica_store(
    config: &Config,
    store: &eventlog::Store,
) -> Result<Arc<dyn commands::replicas::ReplicaStore>> {
    use gateways::replicas::{DynamoReplicas, DynamoSettings, SqlReplicas};
    Ok(match config.replica_store.as_str() {
        "dynamodb" => {
            let settings = DynamoSettings {
                endpoint: (!config.dynamodb_endpoint.is_empty())
                    .then(|| config.dynamodb_endpoint.clone()),
                region: config.dynamodb_region.clone(),
                credentials: config
                    .dynamodb_access_key_id
                    .clone()
                    .zip(config.dynamodb_secret_access_key.clone()),
                table: config.dynamodb_table.clone(),
                create_table: config.dynamodb_create_table,
                timeout: std::time::Duration::from_secs(5),
            };
            let replicas = DynamoReplicas::connect(&settings).await.with_context(|| {
                format!(
                    "could not open the DynamoDB replica store (table {})",
                    settings.table
                )
            })?;
            tracing::info!(table = %settings.table, endpoint = ?settings.endpoint, "replica store: DynamoDB");
            Arc::new(replicas)
        }
        _ => Arc::new(
            SqlReplicas::new(store.db.clone())
                .await
                .context("could not open the embedded replica store")?,
        ),
    })
}

/// The clusters' buckets: on a configured S3 endpoint, or in the embedded object store, which is
/// started here and stops with the server.
async fn object_store(
    config: &Config,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<dyn commands::storage::ObjectStore>, Vec<String>)> {
    use gateways::s3::{S3Settings, S3Store, embedded};
    let mut settings = S3Settings {
        endpoint: (!config.s3_endpoint.is_empty() && config.s3_endpoint != "aws")
            .then(|| config.s3_endpoint.clone()),
        public_endpoint: (!config.s3_public_endpoint.is_empty())
            .then(|| config.s3_public_endpoint.clone()),
        region: config.s3_region.clone(),
        path_style: config.s3_path_style,
        credentials: config
            .s3_access_key_id
            .clone()
            .zip(config.s3_secret_access_key.clone()),
        create_buckets: config
            .s3_create_buckets
            .unwrap_or(config.embedded_objects()),
        timeout: std::time::Duration::from_secs(30),
        filesystem_keys: config.embedded_objects(),
    };
    if config.embedded_objects() {
        let (id, secret) = match settings.credentials.clone() {
            Some(keys) => keys,
            None => {
                let (secret, _) =
                    crate::secrets::load_or_create(&config.data_dir.join("s3-secret"))?;
                (
                    "clusterra".to_string(),
                    String::from_utf8_lossy(&secret).into_owned(),
                )
            }
        };
        let server = embedded::start(
            embedded::EmbeddedSettings {
                root: config.data_dir.join("objects"),
                listen: config.s3_listen,
                access_key: id.clone(),
                secret_key: secret.clone(),
                edge: config.edge_limits(),
                uploads: config.upload_limits(),
            },
            stop,
        )
        .await
        .context("could not start the embedded object store")?;
        let url = format!("http://{}", server.addr);
        println!("embedded object store on {url}");
        settings.endpoint = Some(url);
        // Embedded: always path style (the store does not route bucket host names).
        settings.path_style = true;
        settings.credentials = Some((id, secret));
        tokio::spawn(async move {
            match server.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "embedded object store stopped"),
                Err(e) => tracing::error!(error = %e, "embedded object store task failed"),
            }
        });
    }
    tracing::info!(
        endpoint = settings.endpoint.as_deref().unwrap_or("aws"),
        public_endpoint = settings.public_endpoint.as_deref().unwrap_or("(same)"),
        "object store"
    );
    // Where browsers send presigned uploads: the console's CSP lets them connect there.
    let origins = match settings
        .public_endpoint
        .as_ref()
        .or(settings.endpoint.as_ref())
    {
        // Virtual-host style puts the bucket in the host name: its subdomains too.
        Some(url) if !settings.path_style && !host_is_ip(url) => {
            let origin = origin_of(url);
            let sub = origin.replacen("://", "://*.", 1);
            vec![origin, sub]
        }
        Some(url) => vec![origin_of(url)],
        None => vec!["https://*.amazonaws.com".to_owned()],
    };
    Ok((Arc::new(S3Store::connect(&settings).await), origins))
}

/// Whether a URL's host is an IP address (no subdomains to name).
fn host_is_ip(url: &str) -> bool {
    let origin = origin_of(url);
    let host_port = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host.parse::<std::net::IpAddr>().is_ok()
}

/// `scheme://host[:port]` of a URL (the whole text when it has no path).
fn origin_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_len = rest.find('/').unwrap_or(rest.len());
    url[..url.len() - rest.len() + host_len].to_owned()
}

/// The token verifier: a JWKS when configured, else the local secret. The flag says whether the
/// local secret was created just now (first start).
async fn authenticator(config: &Config) -> Result<(Arc<Authenticator>, bool)> {
    if let Some(path) = &config.jwks_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read jwks_file {}", path.display()))?;
        let auth = Authenticator::from_jwks(&text)
            .with_context(|| format!("jwks_file {}", path.display()))?
            .require(config.jwt_issuer.clone(), config.jwt_audience.clone())
            .max_lifetime(config.max_token_lifetime_s);
        tracing::info!(jwks_file = %path.display(), "verifying RS256 tokens against a JWKS file");
        return Ok((Arc::new(auth), false));
    }
    if let Some(url) = &config.jwks_url {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .context("could not build the JWKS client")?;
        let text = fetch_jwks(&client, url).await?;
        let auth = Arc::new(
            Authenticator::from_jwks(&text)
                .with_context(|| format!("jwks_url {url}"))?
                .require(config.jwt_issuer.clone(), config.jwt_audience.clone())
                .max_lifetime(config.max_token_lifetime_s),
        );
        tracing::info!(jwks_url = %url, "verifying RS256 tokens against a JWKS URL");
        let (refresh, url) = (auth.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(600)).await;
                match fetch_jwks(&client, &url)
                    .await
                    .map(|t| refresh.replace_jwks(&t))
                {
                    Ok(Ok(keys)) => tracing::debug!(keys, "JWKS refreshed"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "JWKS refresh returned unusable keys; keeping the old ones")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the old keys")
                    }
                }
            }
        });
        return Ok((auth, false));
    }
    let (secret, created) = crate::secrets::load_or_create(&config.secret_path())?;
    Ok((
        Arc::new(Authenticator::local(&secret).max_lifetime(config.max_token_lifetime_s)),
        created,
    ))
}

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<String> {
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("could not fetch the JWKS from {url}"))?;
    ensure!(
        response.status().is_success(),
        "the JWKS URL {url} answered {}",
        response.status()
    );
    response
        .text()
        .await
        .with_context(|| format!("could not read the JWKS from {url}"))
}

/// Raises the soft limit of open files to the hard one. Each connection is a descriptor: the
/// connection limits of both listeners must be reached before descriptors run out, so that a
/// full server answers 503 `server_busy` instead of failing to accept. Says so when the limit is
/// still too low.
fn raise_open_files(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, "could not raise the open-file limit");
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    // Two listeners (the API, the embedded object store), their 503 answers, and the rest.
    let needed = 2 * (config.http_max_connections as u64 + 64) + 256;
    if now < needed {
        tracing::warn!(
            open_files = now,
            needed,
            "the open-file limit is below what http_max_connections needs (2 × (it + 64) + 256): \
             raise it (ulimit -n) or lower http_max_connections, or a full server will fail to \
             accept connections instead of answering 503"
        );
    }
}

/// Tells every task started with the server to stop: when the server stops, and when it is
/// dropped (a start-up error after the projections started, or a server never run).
struct StopOnDrop(watch::Sender<bool>);

impl StopOnDrop {
    fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod origin_tests {
    #[test]
    fn origins_and_ip_hosts() {
        assert_eq!(
            super::origin_of("http://127.0.0.1:9000/x"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(super::origin_of("https://s3.example"), "https://s3.example");
        assert!(super::host_is_ip("http://127.0.0.1:9000"));
        assert!(super::host_is_ip("http://[::1]:9000/"));
        assert!(!super::host_is_ip("https://s3.example:443"));
    }
}
