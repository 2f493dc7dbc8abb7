//! Console sessions: an HttpOnly, SameSite=Strict cookie holding a bearer token, and the CSRF
//! token derived from it.

use std::sync::Arc;

use api::Caller;
use api::auth::SESSION_COOKIE;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use sha2::Digest;

use crate::Console;

/// The form field (and `X-CSRF-Token` header) every state-changing console request carries.
pub const CSRF_FIELD: &str = "csrf";

/// The CSRF token of a session: derived from its token, which another site cannot read (the
/// cookie is HttpOnly), so it cannot compute this either.
pub fn csrf_token(session_token: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"clusterra console csrf v1\0");
    h.update(session_token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A signed-in browser.
pub struct Session {
    pub token: String,
    pub caller: Caller,
    pub csrf: String,
}

impl Session {
    /// The refusal of a state-changing request whose CSRF token is not this session's.
    pub fn csrf_refusal(&self, sent: Option<&str>) -> Option<Response> {
        match sent {
            Some(s) if constant_time_eq(s.as_bytes(), self.csrf.as_bytes()) => None,
            _ => Some(crate::layout::problem(
                StatusCode::FORBIDDEN,
                "csrf_token_invalid",
                "This form is stale or did not come from this console. Go back, reload the page and try again.",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Arc<Console>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || {
            // After signing in the browser GETs `next`: a form's path would be a 405.
            let page = parts.method == axum::http::Method::GET;
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| page && safe_next(p))
                .unwrap_or("/jobs");
            let target: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", next)
                .finish();
            Redirect::to(&format!("/login?{target}")).into_response()
        };
        // Two session cookies (one planted with a narrower path by another page of this
        // host, say) are no session: which one the browser meant cannot be told.
        if session_cookies(&parts.headers) > 1 {
            let mut res = to_login();
            res.headers_mut()
                .append(header::SET_COOKIE, clear_cookie(&parts.headers));
            return Err(res);
        }
        let Some(token) = api::auth::session_token(&parts.headers) else {
            return Err(to_login());
        };
        match console.auth.verify(&token) {
            Ok(caller) => {
                tracing::Span::current().record("caller", caller.email.as_str());
                Ok(Session {
                    csrf: csrf_token(&token),
                    token,
                    caller,
                })
            }
            // An expired or foreign session: sign in again, and drop the stale cookie.
            Err(_) => {
                let mut res = to_login();
                res.headers_mut()
                    .append(header::SET_COOKIE, clear_cookie(&parts.headers));
                Err(res)
            }
        }
    }
}

fn session_cookies(headers: &HeaderMap) -> usize {
    api::auth::cookie_values(headers, SESSION_COOKIE).len()
}

/// Whether `next` is a path of this console: visible ASCII only (browsers drop tabs and line
/// breaks from URLs, so `/\t/evil.example` would become `//evil.example`), no backslash, not
/// scheme-relative, not the sign-in page.
pub fn safe_next(next: &str) -> bool {
    next.starts_with('/')
        && next.bytes().all(|b| (0x21..=0x7e).contains(&b))
        && !next.contains('\\')
        && !next.starts_with("//")
        && !next.starts_with("/login")
        && next.len() <= 1024
}

/// Whether a state-changing request came from a page of this console: a browser names the
/// page's origin in `Origin` on every POST; one that names another origin (another site, or
/// another port of this host such as the object store, which shares this host's cookies) is
/// refused. A request without `Origin` (not a browser) passes: the CSRF token still guards it.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Whether the browser reached us over TLS (directly, or through a proxy that says so): the
/// cookie is then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` of this console: HttpOnly, SameSite=Strict, Secure over TLS.
fn set_cookie(
    headers: &HeaderMap,
    name: &'static str,
    value: String,
    path: &'static str,
    max_age: cookie::time::Duration,
) -> HeaderValue {
    let c = Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls(headers))
        .path(path)
        .max_age(max_age)
        .build();
    HeaderValue::from_str(&c.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The `Set-Cookie` of a new session, living `max_age_s`.
pub fn session_cookie(headers: &HeaderMap, token: &str, max_age_s: i64) -> HeaderValue {
    let age = cookie::time::Duration::seconds(max_age_s.max(0));
    set_cookie(headers, SESSION_COOKIE, token.to_owned(), "/", age)
}

/// The `Set-Cookie` that ends a session.
pub fn clear_cookie(headers: &HeaderMap) -> HeaderValue {
    let age = cookie::time::Duration::ZERO;
    set_cookie(headers, SESSION_COOKIE, String::new(), "/", age)
}

/// The double-submit cookie of the sign-in form (there is no session yet to derive a token
/// from): a random value set with the form, which must come back in the form's field.
pub const LOGIN_CSRF_COOKIE: &str = "clusterra_login_csrf";

/// A new random login CSRF value and its `Set-Cookie`.
pub fn login_csrf(headers: &HeaderMap) -> (String, HeaderValue) {
    let mut bytes = [0u8; 16];
    // The OS random source failing leaves zeros: the form then works only for a browser that
    // got this very cookie, which is still no way in for another site (SameSite=Strict).
    let _ = getrandom::fill(&mut bytes);
    let value = hex::encode(bytes);
    let age = cookie::time::Duration::minutes(30);
    let cookie = set_cookie(headers, LOGIN_CSRF_COOKIE, value.clone(), "/login", age);
    (value, cookie)
}

/// The login CSRF cookie the browser sent.
pub fn login_csrf_sent(headers: &HeaderMap) -> Option<String> {
    api::auth::cookie_values(headers, LOGIN_CSRF_COOKIE)
        .into_iter()
        .next()
}

/// Compares a login form's CSRF field with its cookie.
pub fn login_csrf_ok(headers: &HeaderMap, sent: Option<&str>) -> bool {
    match (login_csrf_sent(headers), sent) {
        (Some(c), Some(s)) => !c.is_empty() && constant_time_eq(c.as_bytes(), s.as_bytes()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_paths_stay_on_this_site() {
        assert!(safe_next("/jobs?cluster=local"));
        assert!(!safe_next("//evil.example/"));
        assert!(!safe_next("/\\evil.example"));
        assert!(!safe_next("https://evil.example/"));
        assert!(!safe_next("/login?next=/login"));
        assert!(!safe_next("/\t/evil.example"));
        assert!(!safe_next("/jobs\\x"));
        assert!(!safe_next("/jobs x"));
    }

    #[test]
    fn origins_must_match_the_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "no Origin: not a browser");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8014"),
        );
        assert!(
            !same_origin(&h),
            "the object store's port is another origin"
        );
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert_eq!(csrf_token("a").len(), 32);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
