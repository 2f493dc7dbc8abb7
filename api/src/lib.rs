//! The HTTP API.
//!
//! [`app`] builds the router (tests drive it without a socket); [`serve`] runs it on a listener
//! with graceful shutdown. Every route is added through one table ([`routes`]), which the tests
//! hold against the OpenAPI document.

pub mod agent;
pub mod auth;
pub mod clusters;
pub mod consistency;
mod efficiency;
pub mod error;
mod estimate;
pub mod feed;
mod health;
mod jobs;
pub mod json;
pub mod logs;
mod metrics;
pub mod nodesets;
pub mod openapi;
mod query;
pub mod quotas;
pub mod sse;
pub mod storage;
mod templates;
pub mod usage;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, Request};
use axum::routing::{MethodRouter, delete, get, post};
use commands::jobs::Submitter;
use commands::slurm::SlurmDirectory;
use commands::templates::Catalog;
use eventlog::Store;
use projections::Projections;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{Authenticator, Caller, Claims, Role};
pub use error::ApiError;
pub use metrics::Metrics;

/// Limits and timeouts of the API.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a read with `X-Clusterra-Min-Position` waits for its projection at most.
    pub min_position_wait: Duration,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Connection limit and timeouts of the listener.
    pub edge: edge::Limits,
    /// The buckets a workspace admin may give a cluster (`bucket_allow` patterns,
    /// `domain::storage::bucket_allowed`); `None` = any (every bucket is in the embedded store).
    pub bucket_allow: Option<Vec<String>>,
    /// The billing period of bills and quotas.
    pub billing_period: domain::cost::PeriodKind,
    /// The webhook key and `webhook_allow`.
    pub webhooks: commands::webhooks::OutboxSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_position_wait: Duration::from_secs(5),
            body_limit: 1024 * 1024,
            edge: edge::Limits::default(),
            bucket_allow: None,
            billing_period: domain::cost::PeriodKind::default(),
            webhooks: commands::webhooks::OutboxSettings {
                key: Arc::new(Vec::new()),
                allow: Arc::new(domain::webhook::loopback()),
            },
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub projections: Arc<Projections>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    /// Which Slurm serves which cluster.
    pub slurm: Arc<dyn SlurmDirectory>,
    pub submitter: Arc<Submitter>,
    pub templates: Arc<Catalog>,
    /// Where job logs are and how they are followed.
    pub logs: Arc<logs::Logs>,
    /// The live event feeds.
    pub feed: Arc<feed::FeedSettings>,
    /// The clusters' buckets.
    pub storage: storage::Storage,
    /// Cluster views already read.
    pub cluster_cache: Arc<clusters::ClusterCache>,
    /// The node-shape catalog.
    pub scaling: Arc<nodesets::Scaling>,
    /// What "now" is for the routes that compute with time (usage, quotas, grants): the system
    /// clock in a server, a fixed one where a test needs it.
    pub clock: Arc<dyn eventlog::Clock>,
    /// Ask AI: the model and its limits (a disabled agent answers 503 `agent_unavailable`).
    pub agent: Arc<agent::Agent>,
}

/// Marks a request the console makes to the API in-process (a request extension, which no
/// client can set): its submissions are recorded as made `via` the console.
#[derive(Debug, Clone, Copy)]
pub struct FromConsole;

/// Marks a request the agent makes to the API in-process when a confirmed proposal runs (a
/// request extension, which no client can set): its submissions are recorded as made `via` the
/// agent.
#[derive(Debug, Clone, Copy)]
pub struct FromAgent;

/// One route the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
}

#[derive(Default)]
struct Table {
    router: Router<AppState>,
    specs: Vec<RouteSpec>,
}

impl Table {
    fn add(mut self, method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        self.specs.push(RouteSpec { method, path });
        self.router = self.router.route(path, handler);
        self
    }
}

fn table() -> Table {
    Table::default()
        .add(Method::GET, "/healthz", get(health::healthz))
        .add(Method::GET, "/readyz", get(health::readyz))
        .add(Method::GET, "/metrics", get(metrics::metrics))
        .add(Method::GET, "/openapi.json", get(openapi::json))
        .add(Method::GET, "/docs", get(openapi::docs))
        .add(Method::POST, "/v1/clusters", post(clusters::register))
        .add(Method::GET, "/v1/clusters", get(clusters::list))
        .add(Method::GET, "/v1/clusters/{id}", get(clusters::get_one))
        .add(Method::POST, "/v1/clusters/{id}/jobs", post(jobs::submit))
        .add(
            Method::POST,
            "/v1/clusters/{id}/jobs/estimate",
            post(estimate::estimate),
        )
        .add(Method::GET, "/v1/clusters/{id}/jobs", get(jobs::list))
        .add(
            Method::GET,
            "/v1/clusters/{id}/jobs/{job_id}",
            get(jobs::get_one),
        )
        .add(
            Method::DELETE,
            "/v1/clusters/{id}/jobs/{job_id}",
            delete(jobs::cancel),
        )
        .add(
            Method::GET,
            "/v1/clusters/{id}/jobs/{job_id}/logs",
            get(logs::read),
        )
        .add(
            Method::GET,
            "/v1/clusters/{id}/jobs/{job_id}/logs/stream",
            get(logs::stream),
        )
        .add(
            Method::GET,
            "/v1/clusters/{id}/nodesets",
            get(nodesets::list),
        )
        .add(Method::GET, "/v1/clusters/{id}/events", get(feed::list))
        .add(
            Method::GET,
            "/v1/clusters/{id}/events/stream",
            get(feed::stream),
        )
        .add(
            Method::POST,
            "/v1/clusters/{id}/storage/presigned-url",
            post(storage::presign),
        )
        .add(
            Method::GET,
            "/v1/clusters/{id}/storage/objects",
            get(storage::list),
        )
        .add(
            Method::DELETE,
            "/v1/clusters/{id}/storage/objects",
            delete(storage::delete),
        )
        .add(Method::GET, "/v1/users/me", get(usage::me))
        .add(Method::GET, "/v1/users/me/usage", get(usage::my_series))
        .add(
            Method::GET,
            "/v1/users/me/efficiency",
            get(efficiency::mine),
        )
        .add(
            Method::GET,
            "/v1/workspaces/{ws}/efficiency",
            get(efficiency::workspace),
        )
        .add(
            Method::POST,
            "/v1/users/me/webhooks",
            post(webhooks::register),
        )
        .add(Method::GET, "/v1/users/me/webhooks", get(webhooks::list))
        .add(
            Method::DELETE,
            "/v1/users/me/webhooks/{id}",
            delete(webhooks::remove),
        )
        .add(
            Method::GET,
            "/v1/users/me/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .add(
            Method::GET,
            "/v1/workspaces/{ws}/usage",
            get(usage::workspace_usage),
        )
        .add(
            Method::PUT,
            "/v1/workspaces/{ws}/quotas/{email}",
            axum::routing::put(quotas::put_quota),
        )
        .add(
            Method::GET,
            "/v1/workspaces/{ws}/quotas/{email}",
            get(quotas::get_quota),
        )
        .add(
            Method::DELETE,
            "/v1/workspaces/{ws}/quotas/{email}",
            delete(quotas::delete_quota),
        )
        .add(
            Method::POST,
            "/v1/clusters/{id}/agent/conversations",
            post(agent::start),
        )
        .add(
            Method::GET,
            "/v1/clusters/{id}/agent/conversations/{cid}",
            get(agent::get_conversation),
        )
        .add(
            Method::POST,
            "/v1/clusters/{id}/agent/conversations/{cid}/messages",
            post(agent::post_message),
        )
        .add(
            Method::GET,
            "/v1/clusters/{id}/agent/proposals",
            get(agent::list_proposals),
        )
        .add(
            Method::POST,
            "/v1/clusters/{id}/agent/proposals/{pid}/confirm",
            post(agent::confirm),
        )
        .add(
            Method::POST,
            "/v1/clusters/{id}/agent/proposals/{pid}/reject",
            post(agent::reject),
        )
        .add(Method::GET, "/v1/templates", get(templates::list))
        .add(Method::GET, "/v1/templates/{id}", get(templates::get_one))
}

/// Every route the router serves, in the order they were added.
pub fn routes() -> Vec<RouteSpec> {
    table().specs
}

/// The API's routes with their state, without the layers every request passes through: the
/// console calls the API in-process through this router.
pub fn router(state: AppState) -> Router {
    // The body limit here too: a request made in-process does not pass `layered`'s.
    let limit = DefaultBodyLimit::max(state.settings.body_limit);
    table()
        .router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(limit)
        .with_state(state)
}

/// `routes` (the API's, with anything merged into them) behind the layers every request passes:
/// the body limit, error logging, metrics, request ids and tracing.
pub fn layered(routes: Router, state: &AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, caller = tracing::field::Empty)
    });
    routes
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .layer(axum::middleware::from_fn(error::log_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// The whole API router.
pub fn app(state: AppState) -> Router {
    layered(router(state.clone()), &state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes in-flight requests.
/// The connection limit and the header and idle timeouts are `limits` ([`edge::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: edge::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    edge::serve(listener, app, limits, "api", shutdown).await
}
