//! `GET /metrics`: Prometheus text format — requests and latencies by route, the log position,
//! and every projection's position and lag.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

// Every label value comes from a closed set: a request's method and path are chosen by whoever
// sends it, and one new value per request would grow `/metrics` without bound (5,000 requests
// with 2,000-character methods once made it 208 MB). See [`method_label`] and [`route_label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

/// The `method` label: one of the standard methods, or `other` for anything else (an extension
/// method of any length is still one label value).
pub(crate) fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

/// The `route` label: the route template the request matched, as written in the route table
/// (never the raw path, so ids do not explode the label set), or `unmatched`.
pub(crate) fn route_label(matched: Option<&str>) -> &'static str {
    static ROUTES: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| crate::routes().into_iter().map(|r| r.path).collect());
    matched
        .and_then(|m| ROUTES.iter().find(|r| **r == m).copied())
        .unwrap_or("unmatched")
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
    poll_cycles: Counter,
    poll_cycle_duration: Histogram,
    poll_cycle_last: Gauge<f64, std::sync::atomic::AtomicU64>,
    poll_events: Counter,
}

impl Metrics {
    /// One poll cycle of the leader ended: how long it took (catching up with the log, then every
    /// cluster's pass and the quota pass) and how many log events it read.
    pub fn poll_cycle(&self, took: std::time::Duration, events: u64) {
        self.poll_cycles.inc();
        self.poll_cycle_duration.observe(took.as_secs_f64());
        self.poll_cycle_last.set(took.as_secs_f64());
        self.poll_events.inc_by(events);
    }
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
        let poll_cycles = Counter::default();
        let poll_cycle_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let poll_cycle_last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let poll_events = Counter::default();
        registry.register(
            "poll_cycles",
            "Poll cycles this process ran as the leader",
            poll_cycles.clone(),
        );
        registry.register(
            "poll_cycle_duration_seconds",
            "How long each poll cycle took: catching up with the log, every cluster's pass, quotas",
            poll_cycle_duration.clone(),
        );
        registry.register(
            "poll_cycle_last_duration_seconds",
            "How long the last poll cycle took",
            poll_cycle_last.clone(),
        );
        registry.register(
            "poll_events_read",
            "Log events the poll cycle read to keep its open-job index",
            poll_events.clone(),
        );
        Self {
            poll_cycles,
            poll_cycle_duration,
            poll_cycle_last,
            poll_events,
            registry: Mutex::new(registry),
            requests,
            latency,
            log_position,
            projection_position,
            projection_lag,
        }
    }
}

/// Middleware: counts and times every request under its method and route template, both from a
/// closed set ([`method_label`], [`route_label`]).
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_label(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels { method, route })
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

/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text exposition format (Prometheus scrapes it)", content_type = "application/openmetrics-text"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_a_closed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        for odd in ["FOO", "get", &"X".repeat(2_000)] {
            let m = Method::from_bytes(odd.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{odd:.20}");
        }
        assert_eq!(route_label(Some("/v1/clusters/{id}")), "/v1/clusters/{id}");
        assert_eq!(route_label(None), "unmatched");
        // A template that is not in the route table (it cannot happen through the router, but
        // the label set does not depend on that).
        assert_eq!(route_label(Some("/v1/whatever/{x}")), "unmatched");
    }

    #[test]
    fn many_odd_requests_do_not_grow_the_exposition() {
        let m = Metrics::default();
        for i in 0..500 {
            let method = Method::from_bytes(format!("M{i}{}", "X".repeat(200)).as_bytes()).unwrap();
            m.requests
                .get_or_create(&RequestLabels {
                    method: method_label(&method),
                    route: route_label(Some(&format!("/nope/{i}"))),
                    status: 405,
                })
                .inc();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry.lock().unwrap()).unwrap();
        assert!(
            text.contains(r#"clusterra_http_requests_total{method="other",route="unmatched",status="405"} 500"#),
            "{text}"
        );
        assert!(text.len() < 4_096, "{} bytes", text.len());
    }
}
