//! The HTTP API.
//!
//! [`app`] builds the router (tests drive it without a socket); [`serve`] runs it on a listener
//! with graceful shutdown.

pub mod error;
mod health;

use std::sync::Arc;

use axum::Router;
use eventlog::Store;
use projections::Projections;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub projections: Arc<Projections>,
}

/// The whole router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
