//! The web console against the real binary: sessions, sign-in links, CSRF and headers over
//! plain HTTP; then the pages in a real Chromium (Debian's chromium + chromium-driver, driven
//! over WebDriver with fantoccini). `SKIP_BROWSER=1` skips the browser tests and says so.
//! `CONSOLE_SCREENSHOTS=DIR` makes the browser tests save every page at 1280×800 and 390 px
//! wide (`scripts/screenshots`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tests::{Api, Server, assert_contains, run, stdout};

/// The first-start banner's sign-in link.
fn banner_link(banner: &str) -> String {
    banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http://") && l.contains("/login?code="))
        .expect("the first start prints a sign-in link")
        .to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// The value of `name="NAME" value="…"` in a page.
fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').expect("end of value")].to_string()
}

/// The `NAME=value` of a Set-Cookie header.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// A form POSTed with the session cookie.
async fn post_form<T: serde::Serialize + ?Sized>(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    form: &T,
) -> reqwest::Response {
    http.post(url)
        .header("cookie", session)
        .form(form)
        .send()
        .await
        .expect("POST")
}

/// Uses a sign-in link over HTTP; the answer to the POST.
async fn use_link(http: &reqwest::Client, link: &str) -> reqwest::Response {
    let page = http.get(link).send().await.expect("GET /login");
    assert_eq!(page.status(), 200);
    let login_cookie = set_cookie(&page, "clusterra_login_csrf").expect("a login csrf cookie");
    let cookie = login_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    let html = page.text().await.expect("html");
    let base = &link[..link.find("/login").expect("a login link")];
    http.post(format!("{base}/login"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", hidden(&html, "csrf")),
            ("code", hidden(&html, "code")),
            ("next", "/jobs".into()),
        ])
        .send()
        .await
        .expect("POST /login")
}

/// Signs in over HTTP; the session cookie (`clusterra_session=…`) and the CSRF token.
async fn session(http: &reqwest::Client, base: &str, link: &str) -> (String, String) {
    let res = use_link(http, link).await;
    assert_eq!(res.status(), 303, "signing in redirects");
    let cookie = set_cookie(&res, "clusterra_session").expect("a session cookie");
    let session = cookie.split(';').next().expect("name=value").to_string();
    let page = http
        .get(format!("{base}/jobs"))
        .header("cookie", &session)
        .send()
        .await
        .expect("GET /jobs");
    assert_eq!(page.status(), 200);
    let csrf = hidden(&page.text().await.expect("html"), "csrf");
    (session, csrf)
}

fn started_console() -> (tempfile::TempDir, String, Api, String) {
    started_console_with(&[])
}

fn started_console_with(env: &[(&str, &str)]) -> (tempfile::TempDir, String, Api, String) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let data = dir.path().join("data").to_str().expect("utf-8").to_string();
    let (server, banner) = Server::start_with_env(&["--data-dir", &data], env);
    let link = banner_link(&banner);
    let token = tests::banner_token(&banner).expect("a first-start token");
    let api = Api {
        server,
        token,
        client: reqwest::Client::new(),
    };
    (dir, data, api, link)
}

#[tokio::test]
async fn a_sign_in_link_signs_in_once_and_its_session_is_an_httponly_strict_cookie() {
    let (_dir, _data, api, link) = started_console();
    let http = no_redirects();
    let base = api.server.base.clone();

    // The code in the link is not a bearer token.
    let code = link.split("code=").nth(1).expect("a code");
    let (status, body) = api.get_as("/v1/clusters", code).await;
    assert_eq!(status, 401, "{body}");

    let before = api.log_position().await;
    let res = use_link(&http, &link).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/jobs");
    let cookie = set_cookie(&res, "clusterra_session").expect("a session cookie");
    assert_contains(&cookie, "HttpOnly");
    assert_contains(&cookie, "SameSite=Strict");
    assert_contains(&cookie, "Path=/");
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: not Secure: {cookie}"
    );
    assert_eq!(
        api.log_position().await,
        before + 1,
        "the use is recorded (SignInLinkUsed)"
    );

    // A second use of the same link is refused and records nothing.
    let again = use_link(&http, &link).await;
    assert_eq!(again.status(), 409);
    assert!(set_cookie(&again, "clusterra_session").is_none());
    assert_contains(&again.text().await.expect("html"), "already used");
    assert_eq!(api.log_position().await, before + 1);

    // A link whose signature is not this server's, and one that expired: refused, nothing
    // recorded, no session.
    // One character of the signature changed (inside it: the last one's low bits are padding,
    // and replacing it with 'A' left a signature ending in 'A' unchanged, 1 run in 64).
    let link = tests::login_link(&_data, &base, "ada@lab.org", false);
    let mut chars: Vec<char> = link.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let forged: String = chars.into_iter().collect();
    assert_ne!(forged, link);
    let before = api.log_position().await;
    let page = http.get(&forged).send().await.expect("GET");
    assert_contains(
        &page.text().await.expect("html"),
        "not valid for this server",
    );
    let out = run(&[
        "token",
        "mint",
        "--data-dir",
        &_data,
        "--email",
        "ada@lab.org",
        "--login-link",
        "--url",
        &base,
        "--ttl",
        "1s",
    ]);
    let expired = stdout(&out).trim().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let page = http.get(&expired).send().await.expect("GET");
    assert_contains(&page.text().await.expect("html"), "expired");
    // A pasted token: refused when it is not valid, or longer than a cookie can hold.
    for (token, status, says) in [
        ("not-a-jwt".to_string(), 401, "That token was refused"),
        ("x".repeat(4_000), 422, "at most 3,500 characters"),
    ] {
        let page = http.get(format!("{base}/login")).send().await.expect("GET");
        let cookie = set_cookie(&page, "clusterra_login_csrf").expect("cookie");
        let html = page.text().await.expect("html");
        let res = http
            .post(format!("{base}/login"))
            .header("cookie", cookie.split(';').next().expect("pair"))
            .form(&[("csrf", hidden(&html, "csrf")), ("token", token)])
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), status);
        assert!(set_cookie(&res, "clusterra_session").is_none());
        assert_contains(&res.text().await.expect("html"), says);
    }
    assert_eq!(api.log_position().await, before);

    // Behind a TLS proxy the cookie is Secure.
    let fresh = tests::login_link(&_data, &base, "ada@lab.org", false);
    let page = http
        .get(&fresh)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("GET");
    let login_cookie = set_cookie(&page, "clusterra_login_csrf").expect("cookie");
    assert_contains(&login_cookie, "Secure");
    let html = page.text().await.expect("html");
    let res = http
        .post(format!("{base}/login"))
        .header("x-forwarded-proto", "https")
        .header("cookie", login_cookie.split(';').next().expect("pair"))
        .form(&[
            ("csrf", hidden(&html, "csrf")),
            ("code", hidden(&html, "code")),
        ])
        .send()
        .await
        .expect("POST");
    assert_contains(
        &set_cookie(&res, "clusterra_session").expect("cookie"),
        "Secure",
    );
}

#[tokio::test]
async fn the_submit_form_estimates_without_submitting() {
    let (_dir, _data, api, link) = started_console();
    let http = no_redirects();
    let base = api.server.base.clone();
    let (session, csrf) = session(&http, &base, &link).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the first poll cycles settle
    let before = api.log_position().await;
    let form = vec![
        ("csrf", csrf.as_str()),
        ("template_id", "shell"),
        ("p.command", "echo hi"),
        ("p.minutes", "30"),
    ];
    let res = post_form(
        &http,
        &format!("{base}/jobs/estimate?cluster=local"),
        &session,
        &form,
    )
    .await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    for part in [
        "Estimate",
        "an hour",
        "time limit 30 min",
        "Nothing was submitted",
        "echo hi",
    ] {
        assert_contains(&html, part);
    }
    // A refused form says why, field by field, and estimates nothing.
    let bad = vec![
        ("csrf", csrf.as_str()),
        ("template_id", "shell"),
        ("p.minutes", "30"),
    ];
    let res = post_form(
        &http,
        &format!("{base}/jobs/estimate?cluster=local"),
        &session,
        &bad,
    )
    .await;
    assert_eq!(res.status(), 422);
    let html = res.text().await.expect("html");
    assert_contains(&html, "invalid_param");
    assert!(!html.contains("Nothing was submitted"), "{html}");
    assert_eq!(api.log_position().await, before, "estimates append nothing");
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused_and_change_nothing() {
    let (_dir, _data, api, link) = started_console();
    let http = no_redirects();
    let base = api.server.base.clone();
    let (session, csrf) = session(&http, &base, &link).await;
    let before = api.log_position().await;

    for (path, form) in [
        (
            "/jobs?cluster=local",
            vec![("template_id", "shell"), ("p.command", "echo hi")],
        ),
        (
            "/jobs/estimate?cluster=local",
            vec![("template_id", "shell"), ("p.command", "echo hi")],
        ),
        (
            "/usage/quota",
            vec![
                ("email", "ada@lab.org"),
                ("limit_usd", "5"),
                ("mode", "warn"),
            ],
        ),
        (
            "/files/delete?cluster=local",
            vec![("key", "data/admin@clusterra.local/x"), ("confirm", "yes")],
        ),
        ("/logout", vec![]),
    ] {
        let mut wrong = form.clone();
        wrong.push(("csrf", "0123456789abcdef0123456789abcdef"));
        for body in [form.clone(), wrong] {
            let res = post_form(&http, &format!("{base}{path}"), &session, &body).await;
            assert_eq!(res.status(), 403, "{path} without its CSRF token");
            assert_contains(&res.text().await.expect("html"), "csrf_token_invalid");
        }
    }
    // The upload module's JSON route wants the header.
    let res = http
        .post(format!("{base}/files/presign?cluster=local"))
        .header("cookie", &session)
        .json(&json!({"location": "data", "path": "a.txt", "method": "PUT", "size": 3}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 403);
    assert_eq!(
        api.log_position().await,
        before,
        "a refused form appends nothing"
    );

    // The session cookie reads the API (what EventSource needs) but never writes it.
    let res = http
        .get(format!("{base}/v1/clusters"))
        .header("cookie", &session)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    let res = http
        .post(format!("{base}/v1/clusters/local/jobs"))
        .header("cookie", &session)
        .json(&json!({"template_id": "shell", "params": {"command": "echo hi"}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        res.status(),
        401,
        "a cookie alone does not submit through the API"
    );
    assert_eq!(api.log_position().await, before);

    // With the token, the same form submits (via the console).
    let res = post_form(
        &http,
        &format!("{base}/jobs?cluster=local"),
        &session,
        &[
            ("csrf", csrf.as_str()),
            ("template_id", "shell"),
            ("p.command", "echo hi"),
            ("idempotency_key", "k-1"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_contains(res.headers()["location"].to_str().expect("ascii"), "/jobs/");
    let location = res.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let at: i64 = location
        .split("at=")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("the redirect carries the log position");
    tests::wait_projected(&api.server, at).await;
    let submitted = api.events("JobSubmitted").await;
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0]["data"]["via"], "template");

    // A raw body from the console is recorded as made via the console.
    let raw = json!({"job": {"name": "raw", "script": "#!/bin/bash\necho raw\n", "current_working_directory": "/mnt/efs",
        "environment": ["PATH=/usr/bin:/bin"], "tasks": 1}})
    .to_string();
    let res = post_form(
        &http,
        &format!("{base}/jobs?cluster=local"),
        &session,
        &[("csrf", csrf.as_str()), ("body", raw.as_str())],
    )
    .await;
    assert_eq!(
        res.status(),
        303,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let location = res.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let at: i64 = location
        .split("at=")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("a position");
    tests::wait_projected(&api.server, at).await;
    let submitted = api.events("JobSubmitted").await;
    assert_eq!(submitted[1]["data"]["via"], "console");
}

#[tokio::test]
async fn pages_carry_security_headers_and_bad_input_gets_clear_errors() {
    let (_dir, _data, api, link) = started_console();
    let http = no_redirects();
    let base = api.server.base.clone();
    let (session, csrf) = session(&http, &base, &link).await;

    for path in [
        "/login",
        "/jobs",
        "/submit",
        "/files",
        "/usage",
        "/activity",
        "/nodes",
        "/ask",
    ] {
        let res = http
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().expect("ascii");
        assert_contains(csp, "script-src 'self'");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "same-origin");
        let html = res.text().await.expect("html");
        assert!(!html.contains("<script>"), "{path} has an inline script");
    }
    // Without a session, pages send the browser to sign in, keeping where it was going.
    let res = http
        .get(format!("{base}/usage?cluster=local"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        "/login?next=%2Fusage%3Fcluster%3Dlocal"
    );
    // A next that leaves the site is ignored.
    let res = http
        .get(format!("{base}/login?next=//evil.example/"))
        .send()
        .await
        .expect("GET");
    assert!(!res.text().await.expect("html").contains("evil.example"));
    // An unknown cluster is a page that says so, not a crash.
    let res = http
        .get(format!("{base}/jobs?cluster=nope"))
        .header("cookie", &session)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 404);
    assert_contains(&res.text().await.expect("html"), "no cluster");
    // A template form's bad value comes back at its field, and nothing is submitted.
    let before = api.log_position().await;
    let res = post_form(
        &http,
        &format!("{base}/jobs?cluster=local"),
        &session,
        &[
            ("csrf", csrf.as_str()),
            ("template_id", "shell"),
            ("p.command", "echo hi"),
            ("p.minutes", "999999"),
        ],
    )
    .await;
    assert_eq!(res.status(), 422);
    let html = res.text().await.expect("html");
    assert_contains(&html, "field-error");
    assert_contains(&html, "params.minutes");
    // A raw body that is not JSON.
    let res = post_form(
        &http,
        &format!("{base}/jobs?cluster=local"),
        &session,
        &[("csrf", csrf.as_str()), ("body", "{not json")],
    )
    .await;
    assert_eq!(res.status(), 422);
    assert_contains(&res.text().await.expect("html"), "invalid_json");
    assert_eq!(api.log_position().await, before);
    // Assets are served under hashed names with long cache headers.
    let html = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("html");
    let css = html
        .split("href=\"")
        .find_map(|s| {
            s.starts_with("/assets/console.")
                .then(|| s[..s.find('"').expect("end")].to_string())
        })
        .expect("css link");
    let res = http.get(format!("{base}{css}")).send().await.expect("GET");
    assert_eq!(res.status(), 200);
    assert_contains(
        res.headers()["cache-control"].to_str().expect("ascii"),
        "immutable",
    );
    assert_eq!(
        http.get(format!("{base}/assets/console.nope.css"))
            .send()
            .await
            .expect("GET")
            .status(),
        404
    );
}

// ---- In a real browser ----

/// Whether browser tests run: `SKIP_BROWSER=1` skips them (saying so); otherwise chromedriver
/// must be installed (scripts/test installs it).
fn browser_wanted(test: &str) -> bool {
    if std::env::var("SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPED {test}: SKIP_BROWSER=1 (the console's browser tests need Debian's chromium and chromium-driver)"
        );
        return false;
    }
    assert!(
        std::path::Path::new("/usr/bin/chromedriver").exists(),
        "chromedriver is missing: install Debian's chromium and chromium-driver (scripts/test does), or set SKIP_BROWSER=1"
    );
    true
}

struct Browser {
    client: Client,
    driver: Child,
    shots: Option<std::path::PathBuf>,
}

impl Browser {
    async fn start() -> Browser {
        // Another test of this process may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {"binary": "/usr/lib/chromium/chromium", "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"]}
        }))
        .expect("capabilities");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tests::deadline(Duration::from_secs(20));
        let client = loop {
            match ClientBuilder::rustls()
                .expect("a TLS connector")
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("chromedriver did not start a session: {e}"),
            }
        };
        let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(std::path::PathBuf::from);
        Browser {
            client,
            driver,
            shots,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    async fn fill(&self, css: &str, value: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }

    /// Waits until `css`'s text contains `part` (or panics after `within`).
    async fn wait_text(&self, css: &str, part: &str, within: Duration) -> String {
        let deadline = tests::deadline(within);
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(part) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{css} never showed {part:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn url(&self) -> String {
        self.client.current_url().await.expect("url").to_string()
    }

    /// Saves the page at 1280×800 and 390×844 when CONSOLE_SCREENSHOTS is set.
    async fn shoot(&self, name: &str) {
        let Some(dir) = &self.shots else { return };
        std::fs::create_dir_all(dir).expect("screenshot dir");
        for (w, h, suffix) in [(1280u32, 800u32, "desktop"), (390, 844, "phone")] {
            self.client.set_window_size(w, h).await.expect("resize");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let png = self.client.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("{name}-{suffix}.png")), png)
                .expect("write screenshot");
        }
        self.client
            .set_window_size(1280, 800)
            .await
            .expect("resize");
    }

    async fn close(self) {
        let _ = self.client.clone().close().await;
        // The driver goes with `self` (Drop).
    }
}

impl Drop for Browser {
    /// A test that fails before `close` must not leave chromedriver (and its browser) behind.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Every visible input, select and textarea of the page has a label (a `<label for>`, an
/// enclosing `<label>`, or `aria-label`).
async fn assert_labelled(b: &Browser) {
    let unlabelled = b
        .client
        .execute(
            r#"return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                 .map(e => e.outerHTML);"#,
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(unlabelled, json!([]), "inputs without a label");
}

async fn sign_in(b: &Browser, link: &str) {
    b.goto(link).await;
    b.shoot("login").await;
    b.click("#use-link").await;
    b.wait_text("h1", "Jobs", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn in_a_browser_a_researcher_submits_from_the_form_watches_the_log_sees_cost_and_activity_and_cancels()
 {
    if !browser_wanted("in_a_browser_a_researcher_…") {
        return;
    }
    let (_dir, _data, api, link) = started_console();
    let b = Browser::start().await;
    let base = api.server.base.clone();
    sign_in(&b, &link).await;
    b.shoot("jobs-empty").await;

    // A template job through the generated form.
    b.goto(&format!("{base}/submit?cluster=local&template=shell"))
        .await;
    assert_labelled(&b).await;
    b.fill(
        "#p-command",
        "for i in $(seq 1 30); do echo line $i; sleep 0.1; done; echo all done",
    )
    .await;
    b.fill("#p-minutes", "5").await;
    // The estimate beside the form follows it: five minutes of the job's rate at most.
    let estimate = b
        .wait_text("#estimate", "time limit 5 min", Duration::from_secs(10))
        .await;
    assert_contains(&estimate, "Nothing was submitted");
    b.shoot("submit").await;
    b.click("#submit-job").await;
    b.wait_text("h1", "Job ", Duration::from_secs(10)).await;
    assert_contains(&b.url().await, "/jobs/");
    let log = b
        .wait_text("#log", "all done", Duration::from_secs(60))
        .await;
    assert_contains(&log, "line 1\n");
    assert_contains(&log, "line 30\n");
    b.wait_text("#log-status", "ended: COMPLETED", Duration::from_secs(30))
        .await;
    b.shoot("job").await;

    // A long job: the burn rate is not zero while it runs; cancel it from its page.
    b.goto(&format!("{base}/submit?cluster=local&template=shell"))
        .await;
    b.fill("#p-command", "echo started; sleep 120").await;
    b.click("#submit-job").await;
    b.wait_text("#log", "started", Duration::from_secs(60))
        .await;
    let job_url = b.url().await;
    let job_id: u64 = job_url
        .split("/jobs/")
        .nth(1)
        .and_then(|s| s.split('?').next())
        .and_then(|s| s.parse().ok())
        .expect("a job id in the url");
    // The page shows the burn rate once the poll cycle has recorded the job RUNNING.
    api.wait_state(job_id, &["RUNNING"], Duration::from_secs(30))
        .await;
    b.goto(&format!("{base}/usage?cluster=local")).await;
    let rate = b
        .client
        .find(Locator::Css("#burn-rate .money"))
        .await
        .expect("burn rate")
        .attr("title")
        .await
        .expect("attr")
        .expect("a title");
    let usd: f64 = rate.trim_end_matches(" USD").parse().expect("a number");
    assert!(usd > 0.0, "burn rate while a job runs: {rate}");
    b.shoot("usage").await;

    b.goto(&format!("{base}/activity?cluster=local")).await;
    b.wait_text("#feed", &format!("{job_id}"), Duration::from_secs(10))
        .await;
    let feed = b.text("#feed").await;
    assert_contains(&feed, "JobSubmitted");
    b.shoot("activity").await;
    b.goto(&format!("{base}/nodes?cluster=local")).await;
    b.shoot("nodes").await;

    b.goto(&job_url).await;
    b.click("#confirm-cancel").await;
    b.click("#cancel-job").await;
    b.wait_text("#job-state", "CANCELLED", Duration::from_secs(30))
        .await;
    let job = api.job(job_id).await;
    assert_eq!(job["state"], "CANCELLED");
    assert_eq!(job["cancel_requested_by"], "admin@clusterra.local");

    b.goto(&format!("{base}/jobs?cluster=local")).await;
    b.wait_text("table.jobs", "CANCELLED", Duration::from_secs(5))
        .await;
    b.shoot("jobs").await;
    b.close().await;
}

#[tokio::test]
async fn in_a_browser_ask_ai_streams_its_reply_and_a_proposal_runs_only_when_confirmed() {
    use tests::model::{Reply, ScriptedModel, call};
    if !browser_wanted("in_a_browser_ask_ai_…") {
        return;
    }
    let model = ScriptedModel::start().await;
    let env = model.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_dir, _data, api, link) = started_console_with(&env);
    let (status, out) = api
        .submit(
            json!({"job": {"name": "long-run", "script": "#!/bin/sh\nsleep 300\n",
            "environment": ["PATH=/usr/bin:/bin"], "current_working_directory": "/mnt/efs"}}),
        )
        .await;
    assert_eq!(status, 201, "{out}");
    let job = out["job_id"].as_u64().expect("a job id");
    model.script([
        Reply::Calls(vec![call("c1", "cancel_job", json!({ "job_ids": [job] }))]),
        Reply::Text(format!("I can cancel job {job} once you confirm it below.")),
    ]);
    let b = Browser::start().await;
    let base = api.server.base.clone();
    sign_in(&b, &link).await;
    b.goto(&format!("{base}/ask?cluster=local")).await;
    assert_labelled(&b).await;
    b.fill("#ask-text", &format!("Please cancel job {job}."))
        .await;
    b.click("#ask-send").await;
    b.wait_text(
        "#chat",
        "once you confirm it below",
        Duration::from_secs(30),
    )
    .await;
    let card = b
        .wait_text(
            "#chat article.proposal",
            "cancel_job",
            Duration::from_secs(10),
        )
        .await;
    assert_contains(&card, "long-run");
    assert_contains(&card, "1 job will be cancelled");
    assert_contains(&b.url().await, "conversation=");
    b.shoot("ask").await;
    // Shown, not run.
    assert_ne!(api.job(job).await["state"], "CANCELLED");
    b.click("#chat article.proposal button.danger").await;
    b.wait_text(
        "#chat",
        "Result: cancel asked for job",
        Duration::from_secs(30),
    )
    .await;
    api.wait_state(job, &["CANCELLED"], Duration::from_secs(30))
        .await;
    b.close().await;
}

#[tokio::test]
async fn in_a_browser_the_log_panel_keeps_its_last_lines_of_a_fast_job_and_the_facts_follow() {
    if !browser_wanted("in_a_browser_the_log_panel_…") {
        return;
    }
    let (_dir, _data, api, link) = started_console();
    let b = Browser::start().await;
    let base = api.server.base.clone();
    sign_in(&b, &link).await;
    b.goto(&format!("{base}/submit?cluster=local&template=shell"))
        .await;
    // 20,000 lines as fast as the job can print them.
    b.fill("#p-command", "seq 1 20000 | sed 's/^/row /'; echo finished")
        .await;
    b.click("#submit-job").await;
    b.wait_text("#log-status", "ended: COMPLETED", Duration::from_secs(60))
        .await;
    let log = b.text("#log").await;
    assert!(
        log.trim_end().ends_with("row 20000\nfinished"),
        "the end is there: {}",
        &log[log.len().saturating_sub(100)..]
    );
    let lines = log.lines().count();
    assert!(
        (5_000..=6_001).contains(&lines),
        "the panel keeps about its last 5,000 lines: {lines}"
    );
    // The page answers at once (the panel did not freeze it).
    let t = std::time::Instant::now();
    let n = b
        .client
        .execute(
            "return document.querySelectorAll('dl.facts dd').length",
            vec![],
        )
        .await
        .expect("script");
    assert!(n.as_u64().unwrap_or(0) > 5);
    assert!(t.elapsed() < Duration::from_secs(2));
    // The facts followed the job to its end without a reload: its node and end time are there.
    b.wait_text("dl.facts", "COMPLETED", Duration::from_secs(10))
        .await;
    let facts = b.text("dl.facts").await;
    assert!(!facts.contains("not placed yet"), "{facts}");
    assert!(
        b.client.find(Locator::Css("#cancel")).await.is_err(),
        "no cancel form for an ended job"
    );
    b.close().await;
}

#[tokio::test]
async fn in_a_browser_a_5_mb_file_goes_up_to_the_store_and_comes_back_byte_identical() {
    if !browser_wanted("in_a_browser_a_5_mb_file_…") {
        return;
    }
    let (dir, _data, api, link) = started_console();
    let b = Browser::start().await;
    let base = api.server.base.clone();
    sign_in(&b, &link).await;

    let file = dir.path().join("sample.bin");
    let bytes: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &bytes).expect("write the sample");
    b.goto(&format!("{base}/files?cluster=local&location=data"))
        .await;
    let input = b
        .client
        .find(Locator::Css("#upload-file"))
        .await
        .expect("file input");
    input
        .send_keys(file.to_str().expect("utf-8"))
        .await
        .expect("choose the file");
    b.fill("#upload-path", "runs/sample.bin").await;
    b.click("#upload-button").await;
    b.wait_text("table.files", "runs/sample.bin", Duration::from_secs(60))
        .await;
    assert_contains(&b.text("table.files").await, "5.0 MiB");
    b.shoot("files").await;
    assert_labelled(&b).await;

    // The download button's POST answers with a redirect to a presigned GET: fetch it from
    // the page and hash what comes back.
    let digest = b
        .client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const form = document.querySelector('form[action^="/files/download"]');
               fetch(form.action, {method: 'POST', body: new URLSearchParams(new FormData(form))})
                 .then(r => r.arrayBuffer())
                 .then(b => crypto.subtle.digest('SHA-256', b).then(d => done([b.byteLength, Array.from(new Uint8Array(d)).map(x => x.toString(16).padStart(2, '0')).join('')])))
                 .catch(e => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("download in the page");
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(&bytes));
    assert_eq!(
        digest,
        json!([bytes.len(), want]),
        "the downloaded file is the uploaded one"
    );
    let _ = api;
    b.close().await;
}

#[tokio::test]
async fn in_a_browser_an_admin_sets_a_quota_and_a_user_gets_no_admin_page() {
    if !browser_wanted("in_a_browser_an_admin_sets_a_quota_…") {
        return;
    }
    let (_dir, data, api, link) = started_console();
    let base = api.server.base.clone();
    let b = Browser::start().await;
    sign_in(&b, &link).await;
    b.goto(&format!("{base}/usage?cluster=local")).await;
    b.fill("#q-email", "ada@lab.org").await;
    b.fill("#q-limit", "25").await;
    b.client
        .find(Locator::Css("#q-mode option[value=block_and_kill]"))
        .await
        .expect("option")
        .click()
        .await
        .expect("pick");
    b.fill("#q-buffer", "10").await;
    b.click("#set-quota").await;
    b.wait_text("table.users", "ada@lab.org", Duration::from_secs(10))
        .await;
    let (status, quota) = api.get("/v1/workspaces/default/quotas/ada@lab.org").await;
    assert_eq!(status, 200, "{quota}");
    assert_eq!(quota["mode"], "block_and_kill");
    b.close().await;

    // Ada is a plain user: no workspace table, no quota form; the quota route refuses her.
    let b = Browser::start().await;
    sign_in(&b, &tests::login_link(&data, &base, "ada@lab.org", false)).await;
    b.goto(&format!("{base}/usage?cluster=local")).await;
    b.wait_text("h1", "Usage", Duration::from_secs(5)).await;
    assert!(
        b.client.find(Locator::Css("#quota-form")).await.is_err(),
        "a user sees no quota form"
    );
    assert!(
        b.client.find(Locator::Css("table.users")).await.is_err(),
        "a user sees no one else's usage"
    );
    let page = b.text("main").await;
    assert_contains(&page, "block_and_kill");
    let status = b
        .client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const csrf = document.querySelector('meta[name="csrf-token"]').content;
               fetch('/usage/quota', {method: 'POST', redirect: 'manual', body: new URLSearchParams({csrf, email: 'ada@lab.org', limit_usd: '100000', mode: 'warn'})})
                 .then(r => done(r.status)).catch(e => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("post from the page");
    assert_eq!(
        status,
        json!(403),
        "a user cannot set a quota through the console"
    );
    // From the browser itself: a cancel posted without the page's CSRF token is refused.
    let refused = b
        .client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch('/jobs/1/cancel?cluster=local', {method: 'POST', redirect: 'manual', body: new URLSearchParams({confirm: 'yes'})})
                 .then(r => r.text().then(t => done([r.status, t.includes('csrf_token_invalid')]))).catch(e => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("post from the page");
    assert_eq!(refused, json!([403, true]));
    let (_, quota) = api.get("/v1/workspaces/default/quotas/ada@lab.org").await;
    assert_eq!(quota["limit_usd"], "25.000000", "unchanged");
    b.close().await;
}
