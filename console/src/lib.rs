//! The web console, served by `clusterra serve` at `/` on the API's port.
//!
//! Pages are rendered on the server with compile-time templates ([`maud`]) from the answers of
//! the API's own handlers, called in-process through the API's router with the session's token
//! ([`call`]): the console sees exactly what `curl` sees, with the same checks of who may touch
//! what, and writes nothing the API would not. Forms post to the page's own path and carry a
//! CSRF token; a few small browser modules (one embedded file, `assets/console.js`) do what the
//! browser must: follow a job's log and the cluster's feed over SSE, upload to a presigned URL
//! with a progress bar, show times in the browser's zone. No inline script: the
//! Content-Security-Policy forbids it. See docs/console.md.

mod assets;
mod call;
mod layout;
mod pages;
mod session;

use std::sync::Arc;

use api::{AppState, Authenticator};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};

pub use session::{CSRF_FIELD, csrf_token};

/// What the console's handlers reach.
pub struct Console {
    /// The API's router, called in-process with the session's token.
    api: Router,
    auth: Arc<Authenticator>,
    log: Arc<dyn eventlog::EventLog>,
    clock: Arc<dyn eventlog::Clock>,
    assets: assets::Assets,
    /// The Content-Security-Policy of every page.
    csp: HeaderValue,
}

/// Settings of the console.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Origins the browser may send files to and fetch them from (the object store's presigned
    /// URLs), for the Content-Security-Policy's `connect-src`, e.g. `http://127.0.0.1:9000`.
    pub storage_origins: Vec<String>,
}

type Shared = Arc<Console>;

/// The console's routes. `api` is [`api::router`] of the same state: the console calls it
/// in-process. Merge the result into the API's router before [`api::layered`].
pub fn router(api: Router, state: &AppState, options: &Options) -> Router {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {origins}; form-action 'self' {origins}; frame-ancestors 'none'; \
         base-uri 'none'",
        origins = options.storage_origins.join(" ")
    );
    let console = Arc::new(Console {
        api,
        auth: state.auth.clone(),
        log: state.store.log.clone(),
        clock: state.clock.clone(),
        assets: assets::Assets::embedded(),
        csp: HeaderValue::from_str(csp.trim()).unwrap_or(HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        )),
    });
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login::page).post(pages::login::submit))
        .route("/logout", post(pages::login::logout))
        .route("/jobs", get(pages::jobs::list).post(pages::submit::post))
        .route("/jobs/estimate", post(pages::submit::estimate))
        .route("/jobs/{job_id}", get(pages::job::page))
        .route("/jobs/{job_id}/cancel", post(pages::job::cancel))
        .route("/submit", get(pages::submit::page))
        .route("/files", get(pages::files::page))
        .route("/files/presign", post(pages::files::presign))
        .route("/files/download", post(pages::files::download))
        .route("/files/delete", post(pages::files::delete))
        .route("/usage", get(pages::usage::page))
        .route("/usage/quota", post(pages::usage::set_quota))
        .route("/activity", get(pages::activity::page))
        .route("/nodes", get(pages::nodes::page))
        .route("/ask", get(pages::ask::page))
        .route("/ask/messages", post(pages::ask::message))
        .route("/ask/proposals/{pid}/{what}", post(pages::ask::decide))
        .route("/assets/{name}", get(assets::serve))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            security_headers,
        ))
        .with_state(console)
}

/// The headers every console answer carries; a state-changing request from another origin is
/// refused before it reaches a handler ([`session::same_origin`]).
async fn security_headers(
    axum::extract::State(console): axum::extract::State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let mut res = if req.method() != axum::http::Method::GET
        && req.method() != axum::http::Method::HEAD
        && !session::same_origin(req.headers())
    {
        layout::problem(
            axum::http::StatusCode::FORBIDDEN,
            "cross_origin_refused",
            "This form was sent from another site or port. Open the console itself and try again.",
        )
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, console.csp.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}
