//! Signing in: a one-time link (`clusterra token mint --login-link`), or a bearer token pasted
//! into the form (any deployment, JWKS tokens included). Both end in the session cookie.

use std::sync::Arc;

use api::Claims;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use domain::{DomainEvent, SignInLinkUsed};
use eventlog::{ExpectedVersion, LogError, Metadata, NewEvent, StreamId};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::Console;
use crate::layout::problem;
use crate::session::{Session, clear_cookie, login_csrf, login_csrf_ok, safe_next, session_cookie};

/// How long a console session lasts at most: 12 hours (less where the server accepts shorter
/// tokens only).
const SESSION_TTL_S: i64 = 12 * 3600;

/// The longest token a session cookie can hold.
const MAX_TOKEN_BYTES: usize = 3500;

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    code: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    csrf: Option<String>,
    code: Option<String>,
    token: Option<String>,
    next: Option<String>,
}

fn login_page(
    console: &Console,
    next: &str,
    body: Markup,
    status: StatusCode,
    cookie: header::HeaderValue,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { (crate::layout::head_common("Sign in", Some(&console.assets.url("console.css")))) }
            body.login {
                main #main {
                    h1 { "Sign in to Clusterra" }
                    (body)
                    @if !next.is_empty() { p.muted { "After signing in you go to " code { (next) } "." } }
                }
            }
        }
    };
    let mut res = (status, Html(markup.into_string())).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res
}

fn token_form(csrf: &str, next: &str, error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { div.error role="alert" { p { (e) } } }
        form.card method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label for="token" { "Access token" }
            textarea #token name="token" rows="4" required autocomplete="off" spellcheck="false" aria-describedby="token-help" {}
            p #token-help .help {
                "Paste a bearer token from your identity provider, or one from "
                code { "clusterra token mint" } ". It is kept in an HttpOnly cookie, never in the page or its address."
            }
            button type="submit" { "Sign in" }
        }
        p.muted {
            "On the embedded server, ask for a one-time sign-in link: "
            code { "clusterra token mint --data-dir DIR --email you@lab.org --login-link" }
        }
    }
}

/// `GET /login`: the token form, or, with `?code=`, a button that uses the link (a link is used
/// by a POST, so a mail scanner that follows it does not spend it).
pub async fn page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    let (csrf, cookie) = login_csrf(&headers);
    let next = q.next.filter(|n| safe_next(n)).unwrap_or_default();
    let body = match q.code.as_deref() {
        Some(code) => match console.auth.verify_login_code(code) {
            Ok((_, caller)) => html! {
                form.card method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="code" value=(code);
                    input type="hidden" name="next" value=(next);
                    p { "Sign in as " strong { (caller.email.as_str()) } " in workspace " strong { (caller.workspace.as_str()) }
                        @if caller.is_admin() { " (admin)" } "?" }
                    button #use-link type="submit" { "Sign in" }
                }
            },
            Err(e) => token_form(&csrf, &next, Some(&link_error(&e))),
        },
        None => token_form(&csrf, &next, None),
    };
    login_page(&console, &next, body, StatusCode::OK, cookie)
}

fn link_error(e: &api::auth::AuthError) -> String {
    match e {
        api::auth::AuthError::Expired => "This sign-in link expired. Ask for a new one (`clusterra token mint --login-link`).".into(),
        _ => "This sign-in link is not valid for this server. Ask for a new one (`clusterra token mint --login-link`).".into(),
    }
}

/// `POST /login`: uses a link or checks a pasted token, then sets the session cookie.
pub async fn submit(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = form
        .next
        .clone()
        .filter(|n| safe_next(n))
        .unwrap_or_else(|| "/jobs".into());
    if !login_csrf_ok(&headers, form.csrf.as_deref()) {
        return problem(
            StatusCode::FORBIDDEN,
            "csrf_token_invalid",
            "This sign-in form is stale or did not come from this console. Open the sign-in page again.",
        );
    }
    let retry = |message: &str, status: StatusCode| {
        let (csrf, cookie) = login_csrf(&headers);
        login_page(
            &console,
            &next,
            token_form(&csrf, &next, Some(message)),
            status,
            cookie,
        )
    };
    let (token, exp) = if let Some(code) = form.code.as_deref().filter(|c| !c.is_empty()) {
        match use_link(&console, code).await {
            Ok(minted) => minted,
            Err(LinkError::Refused(m)) => return retry(&m, StatusCode::UNAUTHORIZED),
            Err(LinkError::Used) => {
                return retry(
                    "This sign-in link was already used: a link signs in once. Ask for a new one.",
                    StatusCode::CONFLICT,
                );
            }
            Err(LinkError::Internal(e)) => {
                tracing::error!(error = %e, "could not record a sign-in");
                return retry(
                    "Signing in failed on the server; try again in a moment.",
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            }
        }
    } else {
        let token = form.token.as_deref().unwrap_or_default().trim().to_owned();
        // Browsers keep cookies of up to about 4 KiB: a longer token would be dropped silently.
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return retry(
                "Paste an access token of at most 3,500 characters (a browser cannot keep a longer one in its cookie); ask your identity provider for a shorter token.",
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
        match console.auth.verify_until(&token) {
            Ok((_, exp)) => (token, exp),
            Err(e) => {
                return retry(
                    &format!("That token was refused: {e}"),
                    StatusCode::UNAUTHORIZED,
                );
            }
        }
    };
    let max_age = max_age_until(&console, exp);
    let mut res = Redirect::to(&next).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        session_cookie(&headers, &token, max_age),
    );
    res
}

/// Seconds until `exp`, for the cookie's Max-Age (bounded by the longest lifetime accepted).
fn max_age_until(console: &Console, exp: i64) -> i64 {
    (exp - chrono::Utc::now().timestamp()).clamp(0, console.auth.max_lifetime_s())
}

enum LinkError {
    Refused(String),
    Used,
    Internal(String),
}

/// Checks a link, records its use once (stream `login:<link_id>`, expected: no stream), and
/// mints the session's token.
async fn use_link(console: &Console, code: &str) -> Result<(String, i64), LinkError> {
    let (link, caller) = console
        .auth
        .verify_login_code(code)
        .map_err(|e| LinkError::Refused(link_error(&e)))?;
    let now = console.clock.now();
    let event = DomainEvent::SignInLinkUsed(SignInLinkUsed {
        link_id: link.link_id,
        workspace: caller.workspace.clone(),
        email: caller.email.clone(),
        role: caller.role.as_str().into(),
        at: now,
    });
    let stream = StreamId::new(format!("login:{}", link.link_id))
        .map_err(|e| LinkError::Internal(e.to_string()))?;
    let data = event
        .data()
        .map_err(|e| LinkError::Internal(e.to_string()))?;
    let new = NewEvent::new(event.event_type(), data).with_metadata(Metadata {
        actor: Some(caller.email.to_string()),
        role: Some(caller.role.as_str().into()),
        via: Some("console".into()),
        ..Metadata::default()
    });
    match console
        .log
        .append(&stream, ExpectedVersion::NoStream, &[new])
        .await
    {
        Ok(_) => {}
        Err(LogError::VersionConflict { .. }) => return Err(LinkError::Used),
        Err(e) => return Err(LinkError::Internal(e.to_string())),
    }
    let ttl = SESSION_TTL_S.min(console.auth.max_lifetime_s());
    let claims = Claims {
        email: caller.email.to_string(),
        workspace: caller.workspace.to_string(),
        role: caller.role,
        exp: now.timestamp().saturating_add(ttl),
        iat: Some(now.timestamp()),
        nbf: None,
    };
    let token = console
        .auth
        .mint(&claims)
        .map_err(|e| LinkError::Internal(e.to_string()))?;
    Ok((token, claims.exp))
}

#[derive(Debug, Default, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout`: drops the cookie.
pub async fn logout(
    session: Session,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Some(r) = session.csrf_refusal(form.csrf.as_deref()) {
        return r;
    }
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, clear_cookie(&headers));
    res
}
