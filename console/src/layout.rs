//! The page shell (cluster picker, navigation, who is signed in) and small shared pieces.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::Console;
use crate::call::{Fail, seg};
use crate::session::Session;

/// What every signed-in page shows around its content.
pub struct Frame<'a> {
    pub session: &'a Session,
    pub clusters: Vec<String>,
    /// The cluster the page is about (`?cluster=`, default the first one the user can see);
    /// `None` when the workspace has none.
    pub cluster: Option<String>,
    /// The navigation entry of this page.
    pub active: &'static str,
}

const NAV: &[(&str, &str)] = &[
    ("/jobs", "Jobs"),
    ("/submit", "Submit"),
    ("/files", "Files"),
    ("/usage", "Usage"),
    ("/activity", "Activity"),
    ("/nodes", "Nodes"),
    ("/ask", "Ask AI"),
];

impl Console {
    /// The frame of a page: the clusters the caller can see and the one asked for.
    pub async fn frame<'a>(
        &self,
        session: &'a Session,
        wanted: Option<&str>,
        active: &'static str,
    ) -> Result<Frame<'a>, Fail> {
        let list = self.get(session, "/v1/clusters").await?;
        let clusters: Vec<String> = list["clusters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let cluster = match wanted.filter(|w| !w.is_empty()) {
            Some(w) if clusters.iter().any(|c| c == w) => Some(w.to_owned()),
            Some(w) => {
                return Err(Fail {
                    status: StatusCode::NOT_FOUND,
                    code: "cluster_not_found".into(),
                    message: format!(
                        "There is no cluster {w:?} in your workspace. Pick one from the list above."
                    ),
                    field: Some("cluster".into()),
                    details: Vec::new(),
                });
            }
            None => clusters.first().cloned(),
        };
        Ok(Frame {
            session,
            clusters,
            cluster,
            active,
        })
    }

    /// The frame of a page about one cluster, and that cluster; or the page to answer instead:
    /// the error, or, when the workspace has no cluster, an empty state saying what to do.
    pub async fn cluster_frame<'a>(
        &self,
        session: &'a Session,
        wanted: Option<&str>,
        active: &'static str,
        title: &str,
    ) -> Result<(Frame<'a>, String), Response> {
        let frame = self
            .frame(session, wanted, active)
            .await
            .map_err(|e| self.bare_fail(&e))?;
        match frame.cluster.clone() {
            Some(cluster) => Ok((frame, cluster)),
            None => Err(self.page(
                &frame,
                title,
                empty(
                    "Your workspace has no cluster yet.",
                    html! { "A workspace admin registers one through the API: " code { "POST /v1/clusters" } " (docs/api.md)." },
                ),
            )),
        }
    }

    /// A whole page: the shell around `body`.
    pub fn page(&self, frame: &Frame<'_>, title: &str, body: Markup) -> Response {
        let caller = &frame.session.caller;
        let q = frame
            .cluster
            .as_deref()
            .map(|c| format!("?cluster={}", seg(c)))
            .unwrap_or_default();
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    (head_common(title, Some(&self.assets.url("console.css"))))
                    meta name="csrf-token" content=(frame.session.csrf);
                    script type="module" src=(self.assets.url("console.js")) {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        a.brand href={"/jobs" (q)} { "Clusterra" }
                        form.picker method="get" action=(frame.active) {
                            label for="cluster-picker" { "Cluster" }
                            select #cluster-picker name="cluster" data-autosubmit {
                                @for c in &frame.clusters {
                                    option value=(c) selected[frame.cluster.as_deref() == Some(c.as_str())] { (c) }
                                }
                            }
                            noscript { button type="submit" { "Go" } }
                        }
                        nav aria-label="Main" {
                            ul {
                                @for (path, label) in NAV {
                                    li {
                                        a href={(path) (q)} aria-current=[(*path == frame.active).then_some("page")] { (label) }
                                    }
                                }
                            }
                        }
                        div.who {
                            span { (caller.email.as_str()) }
                            @if caller.is_admin() { span.badge.admin { "admin" } }
                            " "
                            span.muted { (caller.workspace.as_str()) }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(frame.session.csrf);
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        };
        Html(markup.into_string()).into_response()
    }

    /// An API error shown in the page's shell.
    pub fn fail_page(&self, frame: &Frame<'_>, title: &str, fail: &Fail) -> Response {
        let mut res = self.page(frame, title, error_box(fail));
        *res.status_mut() = fail.status;
        res
    }

    /// An API error shown in the page's shell, with a link back to where the form was.
    pub fn fail_back(
        &self,
        frame: &Frame<'_>,
        title: &str,
        fail: &Fail,
        back: (&str, &str),
    ) -> Response {
        let (href, label) = back;
        let mut res = self.page(
            frame,
            title,
            maud::html! { (error_box(fail)) p { a href=(href) { (label) } } },
        );
        *res.status_mut() = fail.status;
        res
    }

    /// An error before a frame could be made (the cluster list itself failed).
    pub fn bare_fail(&self, fail: &Fail) -> Response {
        let code = if fail.code.is_empty() {
            "error"
        } else {
            &fail.code
        };
        problem(fail.status, code, &fail.message)
    }
}

/// What every page's `<head>` holds: charset, viewport, title, no favicon request, the
/// stylesheet when given.
pub fn head_common(title: &str, css: Option<&str>) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · Clusterra" }
        link rel="icon" href="data:,";
        @if let Some(css) = css { link rel="stylesheet" href=(css); }
    }
}

/// A small standalone page for an error outside the shell.
pub fn problem(status: StatusCode, code: &str, message: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_common("Something went wrong", None)) }
            body {
                main {
                    h1 { "Something went wrong" }
                    p role="alert" { (message) }
                    p { "Error code: " code { (code) } }
                    p { a href="/jobs" { "Back to your jobs" } " · " a href="/login" { "Sign in" } }
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// An API error as a box: its sentence, its code, the field at fault.
pub fn error_box(fail: &Fail) -> Markup {
    html! {
        div.error role="alert" {
            p { (fail.message) }
            @if fail.details.len() > 1 {
                ul { @for (field, message) in &fail.details { li { @if !field.is_empty() { code { (field) } ": " } (message) } } }
            }
            p.muted { "Code " code { (fail.code) } @if let Some(f) = &fail.field { " · field " code { (f) } } }
        }
    }
}

/// A time the browser shows in its own zone (the module rewrites it); UTC without scripts.
pub fn time(t: Option<&str>) -> Markup {
    match t {
        Some(t) => {
            html! { time datetime=(t) { (t.replace('T', " ").split('.').next().unwrap_or(t).trim_end_matches('Z')) " UTC" } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// US dollars as the API writes them (`"12.345678"`), shown to the cent with the currency.
pub fn money(usd: Option<&str>) -> Markup {
    let Some(text) = usd else {
        return html! { span.muted { "—" } };
    };
    let shown = text
        .parse::<f64>()
        .map(|v| format!("${v:.2}"))
        .unwrap_or_else(|_| text.to_owned());
    html! { span.money title={ (text) " USD" } { (shown) " " abbr title="US dollars" { "USD" } } }
}

/// A job state as a coloured label.
pub fn state_badge(state: &str) -> Markup {
    html! { span class={ "state state-" (state.to_ascii_lowercase()) } { (state) } }
}

/// An empty state: what there is not, and what to do next.
pub fn empty(what: &str, next: Markup) -> Markup {
    html! { div.empty { p { (what) } p { (next) } } }
}
