//! `GET /metrics`: Prometheus text format — requests and latencies by route, the log position,
//! and every projection's position and lag.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    log_position: Gauge,
    projection_position: Family<ProjectionLabels, Gauge>,
    projection_lag: Family<ProjectionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("clusterra");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let log_position = Gauge::default();
        let projection_position = Family::<ProjectionLabels, Gauge>::default();
        let projection_lag = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "log_position",
            "The event log's newest position",
            log_position.clone(),
        );
        registry.register(
            "projection_position",
            "The last log position each projection applied",
            projection_position.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Events each projection still has to apply",
            projection_lag.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            log_position,
            projection_position,
            projection_lag,
        }
    }
}

/// Middleware: counts and times every request under its route template (never the raw path, so
/// ids do not explode the label set).
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed);
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let head = state
        .store
        .log
        .head()
        .await
        .map(|h| h.position)
        .unwrap_or(-1);
    let m = &state.metrics;
    m.log_position.set(head);
    for (name, status) in state.projections.statuses() {
        let labels = ProjectionLabels {
            projection: name.to_string(),
        };
        m.projection_position
            .get_or_create(&labels)
            .set(status.position);
        m.projection_lag
            .get_or_create(&labels)
            .set((head - status.position).max(0));
    }
    let mut text = String::new();
    let encoded = {
        let registry = m.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
    };
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            crate::ApiError::internal(format!("could not encode metrics: {e}")).into_response()
        }
    }
}
