//! The slurmrestd adapter against small real HTTP servers that answer what a broken proxy, a
//! wrong path or a rotated token make a slurmrestd answer: an HTML 502, a 404 page, garbage
//! JSON, a refused token, or nothing at all. None of it may read as "no jobs", "unknown job" or
//! "cancelled".

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use commands::slurm::{SlurmError, SlurmPort};
use gateways::slurmrestd::SlurmRestd;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../fixtures/slurmrestd/v0.0.44/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the server answers every request with, and the token it wants (if any).
#[derive(Clone)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

struct Canned {
    answer: Mutex<Answer>,
    wanted_token: Mutex<Option<String>>,
    calls: AtomicUsize,
    /// How long the server waits before it answers, in milliseconds.
    delay_ms: AtomicU64,
    /// How much longer it takes to answer a listing of states (`…/jobs/state/`).
    listing_delay_ms: AtomicU64,
}

/// A real HTTP server on a loopback port that answers every request with `canned`.
async fn serve(canned: Arc<Canned>) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let canned = canned.clone();
        async move {
            canned.calls.fetch_add(1, Ordering::SeqCst);
            let mut delay = canned.delay_ms.load(Ordering::SeqCst);
            if uri.path().ends_with("/jobs/state/") {
                delay += canned.listing_delay_ms.load(Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let wanted = canned.wanted_token.lock().unwrap().clone();
            if let Some(wanted) = wanted {
                let sent = headers
                    .get("x-slurm-user-token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if sent != wanted {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [("content-type", "text/plain")],
                        "Authentication failure".to_string(),
                    );
                }
            }
            let a = canned.answer.lock().unwrap().clone();
            (
                StatusCode::from_u16(a.status).unwrap(),
                [("content-type", a.content_type)],
                a.body,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn canned(status: u16, content_type: &'static str, body: &str) -> Arc<Canned> {
    Arc::new(Canned {
        answer: Mutex::new(Answer {
            status,
            content_type,
            body: body.to_string(),
        }),
        wanted_token: Mutex::new(None),
        calls: AtomicUsize::new(0),
        delay_ms: AtomicU64::new(0),
        listing_delay_ms: AtomicU64::new(0),
    })
}

fn submit_body() -> serde_json::Value {
    serde_json::json!({"job": {"script": "#!/bin/bash\ntrue", "environment": ["PATH=/bin"], "current_working_directory": "/tmp"}})
}

#[tokio::test]
async fn answers_that_are_not_v0044_documents_are_errors_never_empty_lists() {
    let bad: &[(u16, &str, &str)] = &[
        (
            502,
            "text/html",
            "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>",
        ),
        (
            404,
            "text/html",
            "<html><body><h1>404 Not Found</h1></body></html>",
        ),
        (200, "application/json", "{}"),
        (200, "application/json", r#"{"jobs": []}"#),
        (200, "application/json", r#"{"meta": {}, "jobs": "none"}"#),
        (
            200,
            "application/json",
            "{\"meta\": {}, \"jobs\": [{\"job_i",
        ),
        (200, "text/plain", "OK"),
        (
            503,
            "application/json",
            r#"{"meta": {}, "jobs": [], "errors": []}"#,
        ),
    ];
    for (status, content_type, body) in bad {
        let server = canned(*status, content_type, body);
        let slurm = SlurmRestd::new(&serve(server.clone()).await, "root", "t").unwrap();
        let what = format!("HTTP {status} {body:?}");
        match slurm.jobs().await {
            Err(SlurmError::Unavailable(m)) => assert!(!m.is_empty()),
            other => panic!("{what}: jobs() gave {other:?}"),
        }
        match slurm.states().await {
            Err(SlurmError::Unavailable(_)) => {}
            other => panic!("{what}: states() gave {other:?}"),
        }
        match slurm.job(5).await {
            Err(SlurmError::Unavailable(_)) => {}
            other => panic!("{what}: job(5) gave {other:?}, never \"unknown\""),
        }
        match slurm.cancel(5).await {
            Err(SlurmError::Unavailable(_)) => {}
            other => panic!("{what}: cancel(5) gave {other:?}, never a confirmation"),
        }
        match slurm.submit(&submit_body()).await {
            Err(SlurmError::Unavailable(_)) => {}
            other => panic!("{what}: submit gave {other:?}"),
        }
        assert_eq!(server.calls.load(Ordering::SeqCst), 5);
    }
}

#[tokio::test]
async fn only_invalid_job_id_means_unknown() {
    // What slurmrestd v0.0.44 answers for a job id it does not know (recorded: HTTP 404).
    let server = canned(
        404,
        "application/json",
        &fixture("error.unknown-job.response.json"),
    );
    let slurm = SlurmRestd::new(&serve(server).await, "root", "t").unwrap();
    assert_eq!(slurm.job(999_999).await, Ok(None));
    assert_eq!(
        slurm.cancel(999_999).await,
        Err(SlurmError::UnknownJob(999_999))
    );
    // The same errno in a list answer is an error, not an empty list.
    assert!(slurm.jobs().await.is_err());

    // A slurmctld that cannot be reached, as slurmrestd reports it: no answer, not a refusal.
    let body = r#"{"meta": {"plugin": {"data_parser": "data_parser/v0.0.44"}}, "errors": [{"error": "Unable to contact slurm controller (connect failure)", "error_number": 1007}], "warnings": []}"#;
    let server = canned(502, "application/json", body);
    let slurm = SlurmRestd::new(&serve(server).await, "root", "t").unwrap();
    assert!(matches!(
        slurm.submit(&submit_body()).await,
        Err(SlurmError::Unavailable(_))
    ));
    assert!(matches!(
        slurm.cancel(4).await,
        Err(SlurmError::Unavailable(_))
    ));
    assert!(matches!(
        slurm.job(4).await,
        Err(SlurmError::Unavailable(_))
    ));

    // The recorded answers still read as before.
    let server = canned(
        200,
        "application/json",
        &fixture("job.running.response.json"),
    );
    let slurm = SlurmRestd::new(&serve(server).await, "root", "t").unwrap();
    let jobs = slurm.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    let one = slurm.job(jobs[0].job_id).await.unwrap().unwrap();
    assert_eq!(one.state, domain::job::JobState::Running);
    // A lookup answered without the job asked for, and without "invalid job id": not unknown.
    assert!(slurm.job(jobs[0].job_id + 1).await.is_err());
    let server = canned(200, "application/json", &fixture("cancel.response.json"));
    let slurm = SlurmRestd::new(&serve(server).await, "root", "t").unwrap();
    assert_eq!(slurm.cancel(4).await, Ok(()));
    let server = canned(
        500,
        "application/json",
        &fixture("error.missing-environment.response.json"),
    );
    let slurm = SlurmRestd::new(&serve(server).await, "root", "t").unwrap();
    assert!(matches!(
        slurm.submit(&submit_body()).await,
        Err(SlurmError::Rejected(_))
    ));
}

/// A real TCP listener that accepts every connection and keeps it open, never finishing an
/// answer: with `start`, it reads the request and writes `start` (headers, part of a body);
/// without, it never reads or writes. Returns its URL and the connections it holds.
async fn holding_server(
    start: Option<&'static [u8]>,
) -> (String, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            if let Some(start) = start {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(start).await;
            }
            keep.lock().unwrap().push(socket);
        }
    });
    (format!("http://{addr}"), held)
}

#[tokio::test]
async fn a_slurmrestd_that_accepts_and_never_answers_costs_one_timeout() {
    let (url, held) = holding_server(None).await;
    let slurm = SlurmRestd::new(&url, "root", "t")
        .unwrap()
        .call_timeout(Duration::from_millis(300));
    let started = Instant::now();
    assert_unavailable(
        slurm.jobs().await,
        "300 ms",
        "expected Slurm to be unavailable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the call reached the listener"
    );
}

/// Asserts `result` is `Unavailable` with a message containing `says` (`why` says what is checked).
fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, SlurmError>, says: &str, why: &str) {
    match result {
        Err(SlurmError::Unavailable(m)) => assert!(m.contains(says), "{why}: {m}"),
        other => panic!("{why}: {other:?}"),
    }
}

/// A busy Slurm with a big queue lists it slower than it answers other calls: once a listing
/// was answered, the next may take four times as long before it is dropped, while a lookup and
/// a listing from a port that never had an answer keep the call timeout.
#[tokio::test]
async fn a_listing_may_take_as_long_as_the_last_answered_one_allows() {
    let states = canned(
        200,
        "application/json",
        &fixture("jobs.state.response.json"),
    );
    let url = serve(states.clone()).await;
    let port = || {
        SlurmRestd::new(&url, "root", "t")
            .unwrap()
            .call_timeout(Duration::from_millis(300))
    };
    let slurm = port();
    states.delay_ms.store(200, Ordering::SeqCst);
    assert!(slurm.states().await.unwrap().is_some());

    // Slurm slows down past the call timeout.
    states.delay_ms.store(600, Ordering::SeqCst);
    let started = Instant::now();
    assert!(
        slurm.states().await.unwrap().is_some(),
        "the slower listing was waited for"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_unavailable(
        slurm.job(1).await,
        "300 ms",
        "a lookup keeps the call timeout",
    );
    assert_unavailable(
        port().states().await,
        "300 ms",
        "a port never answered keeps the call timeout",
    );
    // The ~600 ms listing allows ~2.4 s; one slower than that is dropped at that bound.
    states.delay_ms.store(5_000, Ordering::SeqCst);
    let started = Instant::now();
    assert_unavailable(
        slurm.states().await,
        "within 2",
        "expected Slurm to be unavailable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A fast answer brings the bound back down to the call timeout.
    states.delay_ms.store(0, Ordering::SeqCst);
    assert!(slurm.states().await.unwrap().is_some());
    states.delay_ms.store(600, Ordering::SeqCst);
    assert_unavailable(
        slurm.states().await,
        "300 ms",
        "expected Slurm to be unavailable",
    );
}

/// A listing that runs out of time while Slurm answers other calls meanwhile (a busy Slurm,
/// not a gone one) gets twice the time next; one that runs out while nothing else is answered
/// does not, so a Slurm that hangs keeps being dropped at the call timeout.
#[tokio::test]
async fn a_listing_outlasted_while_slurm_answers_other_calls_gets_longer_next_time() {
    let states = canned(
        200,
        "application/json",
        &fixture("jobs.state.response.json"),
    );
    let url = serve(states.clone()).await;
    let slurm = SlurmRestd::new(&url, "root", "t")
        .unwrap()
        .call_timeout(Duration::from_millis(300));
    states.listing_delay_ms.store(500, Ordering::SeqCst);
    // Nothing else asked meanwhile: dropped at 300 ms, twice.
    for _ in 0..2 {
        let started = Instant::now();
        assert_unavailable(
            slurm.states().await,
            "within 300 ms",
            "expected Slurm to be unavailable",
        );
        assert!(started.elapsed() < Duration::from_millis(450));
    }
    // Lookups answered while the listing waits: it is dropped at 300 ms once more, and the next
    // listing has 600 ms, enough for this one.
    let (listing, looked) = tokio::join!(slurm.states(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        slurm.job(1).await
    });
    assert!(
        looked.is_err(),
        "the canned answer is not a job: {looked:?}"
    );
    assert_unavailable(listing, "within 300 ms", "expected Slurm to be unavailable");
    assert!(
        slurm.states().await.unwrap().is_some(),
        "the next listing had twice the time"
    );
}

/// A listing whose own answer stalls after its headers (a lying proxy) is silence, not a busy
/// Slurm: its bound is not raised, so every such listing is dropped at the call timeout.
#[tokio::test]
async fn a_listing_that_stalls_mid_answer_keeps_the_call_timeout() {
    // Headers and the first byte of a body that never ends.
    let (url, held) = holding_server(Some(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{",
    ))
    .await;
    let slurm = SlurmRestd::new(&url, "root", "t")
        .unwrap()
        .call_timeout(Duration::from_millis(300));
    for _ in 0..3 {
        let started = Instant::now();
        assert_unavailable(slurm.states().await, "within 300 ms", "a stalled listing");
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        held.lock().unwrap().len(),
        3,
        "each listing got its headers"
    );
}

#[tokio::test]
async fn an_answer_over_the_size_limit_is_refused_unread() {
    let jobs: Vec<String> = (1..=100)
        .map(|id| format!(r#"{{"job_id": "{id}", "state": ["PENDING"]}}"#))
        .collect();
    let body = format!(
        r#"{{"meta": {{}}, "errors": [], "jobs": [{}]}}"#,
        jobs.join(",")
    );
    assert!(body.len() > 2_048);
    let url = serve(canned(200, "application/json", &body)).await;
    let small = SlurmRestd::new(&url, "root", "t")
        .unwrap()
        .max_answer_bytes(1_024);
    assert_unavailable(
        small.states().await,
        "more than 1024 bytes",
        "expected Slurm to be unavailable",
    );
    let roomy = SlurmRestd::new(&url, "root", "t").unwrap();
    assert_eq!(roomy.states().await.unwrap().unwrap().len(), 100);
}

#[tokio::test]
async fn a_rotated_token_file_is_used_without_a_restart() {
    let server = canned(
        200,
        "application/json",
        &fixture("job.running.response.json"),
    );
    *server.wanted_token.lock().unwrap() = Some("token-one".into());
    let url = serve(server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.c1.jwt");
    std::fs::write(&file, "token-one\n").unwrap();
    let slurm = SlurmRestd::with_token_file(&url, "root", &file).unwrap();
    assert_eq!(slurm.jobs().await.unwrap().len(), 1);

    // Slurm's key rotated: the old token is refused until the file has the new one.
    *server.wanted_token.lock().unwrap() = Some("token-two".into());
    assert_unavailable(
        slurm.jobs().await,
        "credentials",
        "expected Slurm to be unavailable",
    );
    std::fs::write(&file, "token-two\n").unwrap();
    assert_eq!(
        slurm.jobs().await.unwrap().len(),
        1,
        "the new token is read from the changed file"
    );

    // A rotation the file's stamp does not show (same size, same inode, same modification
    // time, as within one tick of a coarse clock): the 401 makes it re-read, then retry once.
    let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
    *server.wanted_token.lock().unwrap() = Some("token-3re".into());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        f.write_all(b"token-3re\n").unwrap();
        f.set_modified(modified).unwrap();
    }
    let before = server.calls.load(Ordering::SeqCst);
    assert_eq!(slurm.jobs().await.unwrap().len(), 1);
    assert_eq!(
        server.calls.load(Ordering::SeqCst) - before,
        2,
        "refused once, then retried once with the re-read token"
    );
    // A token that is simply wrong is not retried forever: one call, one refusal.
    *server.wanted_token.lock().unwrap() = Some("someone-else".into());
    let before = server.calls.load(Ordering::SeqCst);
    assert!(slurm.jobs().await.is_err());
    assert_eq!(server.calls.load(Ordering::SeqCst) - before, 1);
}

/// A listing of some jobs' states asks slurmrestd for those ids only, a thousand a call, and
/// gives back what every call answered; a call that fails fails the whole listing; no ids make
/// one ping.
#[tokio::test]
async fn a_listing_of_some_jobs_asks_for_them_in_bounded_calls() {
    // Answers each `…/jobs/state/?job_id=…` with the ids it names, PENDING, and records how
    // many each call named; a call that names `poison` gets an HTML 502.
    let asked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let poison = Arc::new(AtomicU64::new(u64::MAX));
    let app = {
        let (asked, poison) = (asked.clone(), poison.clone());
        axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (asked, poison) = (asked.clone(), poison.clone());
            async move {
                if uri.path().ends_with("/ping/") {
                    asked.lock().unwrap().push(0);
                    return (StatusCode::OK, fixture("ping.response.json"));
                }
                assert!(uri.path().ends_with("/jobs/state/"), "{uri}");
                let ids: Vec<u64> = uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .map(|kv| kv.strip_prefix("job_id=").unwrap().parse().unwrap())
                    .collect();
                asked.lock().unwrap().push(ids.len());
                if ids.contains(&poison.load(Ordering::SeqCst)) {
                    return (StatusCode::BAD_GATEWAY, "<html>502</html>".to_string());
                }
                let jobs: Vec<_> = ids
                    .iter()
                    .map(|id| serde_json::json!({"job_id": id.to_string(), "state": ["PENDING"]}))
                    .collect();
                let doc =
                    serde_json::json!({"jobs": jobs, "meta": {}, "errors": [], "warnings": []});
                (StatusCode::OK, doc.to_string())
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let slurm = SlurmRestd::new(&url, "root", "t").unwrap();

    let ids: Vec<u64> = (1..=2_500).map(|i| i * 7).collect();
    let states = slurm.states_of(&ids).await.unwrap().unwrap();
    assert_eq!(*asked.lock().unwrap(), vec![1_000, 1_000, 500]);
    let listed: Vec<u64> = states.iter().map(|r| r.job_id).collect();
    assert_eq!(listed, ids);
    assert!(
        states
            .iter()
            .all(|r| r.state == Some(domain::job::JobState::Pending))
    );

    // No ids: no listing, one ping (a Slurm without open jobs is still watched).
    asked.lock().unwrap().clear();
    assert_eq!(slurm.states_of(&[]).await.unwrap(), Some(vec![]));
    assert_eq!(*asked.lock().unwrap(), vec![0]);
    asked.lock().unwrap().clear();

    // The second call fails: the listing is an error, not the first call's thousand jobs.
    poison.store(ids[1_500], Ordering::SeqCst);
    assert_unavailable(
        slurm.states_of(&ids).await,
        "502",
        "a listing with a failed call",
    );
    assert_eq!(*asked.lock().unwrap(), vec![1_000, 1_000]);
}
