//! Webhooks: `POST|GET /v1/users/me/webhooks`, `DELETE /v1/users/me/webhooks/{id}` and
//! `GET /v1/users/me/webhooks/{id}/deliveries`. A user manages their own webhooks only; what is
//! delivered is their jobs' starts and ends and their quota's warnings and enforcement
//! (`domain::webhook`), by the outbox in `commands::webhooks`. docs/webhooks.md says how a
//! receiver checks a delivery.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use commands::webhooks::WebhookError;
use domain::webhook::{self, Kind};
use projections::views::webhooks::{self as views, DeliveryView, HookView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::consistency::{MinPosition, await_projection, position_header};
use crate::json::ApiJson;
use crate::query::{RawQuery, number, raw_query, unknown};
use crate::{ApiError, AppState};

/// Body of `POST /v1/users/me/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Where deliveries are POSTed: `http(s)://host[:port]/path`, at most 2,048 bytes, no user
    /// or password, no fragment; the host must be in the server's `webhook_allow` list
    /// (loopback only on the embedded default).
    #[schema(example = "http://127.0.0.1:9000/clusterra")]
    pub url: String,
    /// What to deliver: 1 to 4 of `job.started`, `job.ended`, `quota.warning`, `quota.enforced`.
    #[schema(value_type = Vec<EventName>, min_items = 1, max_items = 4, example = json!(["job.started", "job.ended"]))]
    pub events: Vec<String>,
}

/// An event a webhook can be told about (read as text, so that a wrong one is refused with its
/// field, `invalid_events`).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // only the document's
pub enum EventName {
    #[schema(rename = "job.started")]
    JobStarted,
    #[schema(rename = "job.ended")]
    JobEnded,
    #[schema(rename = "quota.warning")]
    QuotaWarning,
    #[schema(rename = "quota.enforced")]
    QuotaEnforced,
}

/// How a receiver checks a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningBody {
    /// `HMAC-SHA256`.
    pub algorithm: String,
    /// The header with `v1=<hex HMAC>`.
    pub signature_header: String,
    /// The header with the signed Unix time in seconds.
    pub timestamp_header: String,
    /// The header with the delivery's id, the same on every attempt.
    pub id_header: String,
    /// What is signed.
    pub signed: String,
    /// How far the timestamp may be from the receiver's clock, in seconds.
    pub tolerance_seconds: i64,
}

fn signing() -> SigningBody {
    SigningBody {
        algorithm: "HMAC-SHA256".into(),
        signature_header: "Clusterra-Webhook-Signature".into(),
        timestamp_header: "Clusterra-Webhook-Timestamp".into(),
        id_header: "Clusterra-Webhook-Id".into(),
        signed: "<timestamp header>.<raw body>".into(),
        tolerance_seconds: webhook::TOLERANCE_SECONDS,
    }
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryBody {
    /// `<webhook id>:<log position>:<n>`, the same on every attempt of one delivery.
    pub delivery_id: String,
    /// The log position of the event delivered.
    pub position: i64,
    #[schema(example = "job.ended")]
    pub event: String,
    pub job_id: Option<u64>,
    pub attempt: u32,
    /// `delivered`, `failed` (tried again at `next_attempt_at`) or `gave_up`.
    pub outcome: String,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

fn delivery(d: DeliveryView) -> DeliveryBody {
    DeliveryBody {
        delivery_id: d.delivery_id,
        position: d.position,
        event: d.event.as_str().into(),
        job_id: d.job_id,
        attempt: d.attempt,
        outcome: d.outcome,
        status: d.status,
        error: d.error,
        duration_ms: d.duration_ms,
        at: d.at,
        next_attempt_at: d.next_attempt_at,
    }
}

/// A webhook (its secret is shown once, when it is registered).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookBody {
    pub webhook_id: uuid::Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Its latest delivery attempt, if any.
    pub last_attempt: Option<DeliveryBody>,
}

fn hook_body(h: HookView) -> WebhookBody {
    WebhookBody {
        webhook_id: h.webhook_id,
        url: h.url,
        events: h.events.iter().map(|k| k.as_str().to_string()).collect(),
        created_at: h.created_at,
        last_attempt: h.last_attempt.map(delivery),
    }
}

/// The answer to a registration: the webhook and its signing secret, shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    pub webhook_id: uuid::Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The HMAC key of its signatures: keep it; it is not shown again.
    #[schema(example = "whsec_3f0c…")]
    pub secret: String,
    pub signing: SigningBody,
    pub position: i64,
}

/// `GET /v1/users/me/webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookBody>,
}

/// `GET /v1/users/me/webhooks/{id}/deliveries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryBody>,
    /// Pass as `before` for older attempts; null on the last page.
    pub next_before: Option<i64>,
}

/// The answer to a removal.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    pub webhook_id: uuid::Uuid,
    pub position: i64,
}

fn invalid(code: &'static str, field: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
}

/// The URL as it will be called, or why it may not be.
fn check_url(state: &AppState, text: &str) -> Result<String, ApiError> {
    let bad = |why: &str| invalid("invalid_url", "url", format!("url {why}"));
    if text.len() > webhook::MAX_URL_BYTES {
        return Err(bad(&format!(
            "is longer than {} bytes",
            webhook::MAX_URL_BYTES
        )));
    }
    let url = url::Url::parse(text).map_err(|e| {
        bad(&format!(
            "is not an absolute http(s) URL ({e}), e.g. http://127.0.0.1:9000/hook"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "may not carry a user or password: deliveries are signed, so the receiver checks the signature instead",
        ));
    }
    if url.fragment().is_some() {
        return Err(bad("may not have a #fragment"));
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(bad("has no host"));
    };
    if !webhook::host_allowed(&state.settings.webhooks.allow, host) {
        return Err(invalid(
            "webhook_host_not_allowed",
            "url",
            format!(
                "this server does not deliver webhooks to {host}; its operator lists the hosts it may in webhook_allow"
            ),
        ));
    }
    Ok(url.to_string())
}

fn check_events(events: &[String]) -> Result<Vec<Kind>, ApiError> {
    if events.is_empty() || events.len() > Kind::ALL.len() {
        return Err(invalid(
            "invalid_events",
            "events",
            "events must name 1 to 4 of job.started, job.ended, quota.warning, quota.enforced"
                .into(),
        ));
    }
    let mut kinds = events
        .iter()
        .map(|e| {
            Kind::parse(e).ok_or_else(|| {
                invalid(
                    "invalid_events",
                    "events",
                    format!(
                        "{e:?} is not an event; events are job.started, job.ended, quota.warning and quota.enforced"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

fn webhook_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| not_found())
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "webhook_not_found",
        "you have no webhook with this id; list yours with GET /v1/users/me/webhooks",
    )
    .with_field("id")
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            e @ WebhookError::TooMany(_) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_webhooks", e.to_string())
            }
            WebhookError::NotFound(_) => not_found(),
            WebhookError::Log(e) => e.into(),
            e @ WebhookError::Encode(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// Register a webhook: your jobs' starts and ends and your quota's warnings, POSTed and signed.
#[utoipa::path(post, path = "/v1/users/me/webhooks", tag = "webhooks",
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "Registered; the secret is shown only now", body = Registered),
        (status = 409, description = "`too_many_webhooks`: you have 10; remove one first", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_url`, `webhook_host_not_allowed` or `invalid_events` (the field says which)", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<WebhookRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let url = check_url(&state, &req.url)?;
    let events = check_events(&req.events)?;
    let now = state.clock.now();
    let (id, position) = commands::webhooks::register(
        state.store.log.as_ref(),
        &caller.workspace,
        &caller.email,
        &url,
        events.clone(),
        crate::clusters::metadata(&caller),
        now,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        position_header(position),
        Json(Registered {
            webhook_id: id,
            url,
            events: events.iter().map(|k| k.as_str().to_string()).collect(),
            created_at: now,
            secret: webhook::secret_of(&state.settings.webhooks.key, id),
            signing: signing(),
            position,
        }),
    ))
}

/// Your webhooks, with each one's latest delivery attempt.
#[utoipa::path(get, path = "/v1/users/me/webhooks", tag = "webhooks",
    params(("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible, e.g. a webhook just registered")),
    responses((status = 200, description = "Your webhooks", body = WebhookList)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
) -> Result<impl IntoResponse, ApiError> {
    let headers = await_projection(&state, views::NAME, min).await;
    let hooks = views::of_user(
        state.store.read.as_ref(),
        &caller.workspace,
        caller.email.as_str(),
    )
    .await?;
    Ok((
        headers,
        Json(WebhookList {
            webhooks: hooks.into_iter().map(hook_body).collect(),
        }),
    ))
}

/// Remove one of your webhooks: nothing more is delivered to it.
#[utoipa::path(delete, path = "/v1/users/me/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 404, description = "`webhook_not_found`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = webhook_id(&id)?;
    let position = commands::webhooks::remove(
        state.store.log.as_ref(),
        &caller.workspace,
        &caller.email,
        id,
        crate::clusters::metadata(&caller),
        state.clock.now(),
    )
    .await?;
    Ok((
        position_header(position),
        Json(Removed {
            webhook_id: id,
            position,
        }),
    ))
}

/// A webhook's delivery attempts, newest first.
#[utoipa::path(get, path = "/v1/users/me/webhooks/{id}/deliveries", tag = "webhooks",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 500, description = "At most this many (default 100)"),
        ("before" = Option<u64>, Query, description = "Attempts before this one (a previous page's `next_before`)"),
        ("X-Clusterra-Min-Position" = Option<i64>, Header, description = "Wait (bounded) until this log position is visible"),
    ),
    responses(
        (status = 200, description = "Delivery attempts", body = DeliveryPage),
        (status = 404, description = "`webhook_not_found`", body = crate::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    min: MinPosition,
    Path(id): Path<String>,
    query: RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let q = raw_query(query)?;
    unknown(&q, &["limit", "before"])?;
    let limit = match number(&q, "limit", 500)? {
        Some(0) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_number",
                "limit must be a whole number from 1 to 500",
            )
            .with_field("limit"));
        }
        l => l.unwrap_or(100) as usize,
    };
    let before = number(&q, "before", i64::MAX as u64)?.map(|b| b as i64);
    let id = webhook_id(&id)?;
    let headers = await_projection(&state, views::NAME, min).await;
    let read = state.store.read.as_ref();
    // Only the caller's own: another user's id is "not found".
    if views::get(read, &caller.workspace, caller.email.as_str(), id)
        .await?
        .is_none()
    {
        return Err(not_found());
    }
    let page = views::deliveries(read, id, before, limit + 1).await?;
    let more = page.len() > limit;
    let deliveries: Vec<DeliveryView> = page.into_iter().take(limit).collect();
    let next_before = more
        .then(|| deliveries.last().map(|d| d.attempt_position))
        .flatten();
    Ok((
        headers,
        Json(DeliveryPage {
            deliveries: deliveries.into_iter().map(delivery).collect(),
            next_before,
        }),
    ))
}
