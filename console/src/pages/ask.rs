//! `/ask`: where the agent will answer (issue 19); until then the page says so.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;

use super::ClusterQuery;
use crate::Console;
use crate::session::Session;

pub async fn page(
    State(console): State<Arc<Console>>,
    session: Session,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let frame = match console.frame(&session, q.cluster.as_deref(), "/ask").await {
        Ok(f) => f,
        Err(e) => return console.bare_fail(&e),
    };
    console.page(&frame, "Ask AI", html! {
        div.empty {
            p { "The assistant is not part of this server yet." }
            p { "Until it is, the " a href="/jobs" { "Jobs" } " page shows why a job waits, the " a href="/usage" { "Usage" } " page what you spend, and " code { "clusterra --help" } " everything the command line can do." }
        }
    })
}
