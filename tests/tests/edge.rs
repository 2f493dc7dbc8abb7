//! The HTTP edge of the real binary (issue 15, items 5, 6 and 17): metric labels that clients
//! cannot grow, stalled clients that neither starve the API nor the embedded object store, the
//! connection limit's 503, graceful shutdown with a request in flight, and the operator's bucket
//! allow-list.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Api, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `host:port` of a base URL.
fn host(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// The embedded object store's address, from what the server printed at start.
fn store_of(printed: &str) -> String {
    printed
        .lines()
        .find_map(|l| l.strip_prefix("embedded object store on "))
        .map(host)
        .expect("the server printed the object store's address")
}

/// `n` connections that each sent half a request line and nothing more.
async fn stalled(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HT").await.unwrap();
        out.push(s);
    }
    out
}

/// Whether the server closed `s` within `within` (without answering a 200).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut got = Vec::new();
    // The read ends at the end of the stream or at an error (a reset): closed, either way.
    let closed = tokio::time::timeout(within, s.read_to_end(&mut got))
        .await
        .is_ok();
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "a stalled request was answered"
    );
    closed
}

/// One plain request on a new connection: status and body.
async fn plain(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_stay_a_closed_set_whatever_clients_send() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let client = reqwest::Client::new();
    for i in 0..200 {
        let method =
            reqwest::Method::from_bytes(format!("M{i}{}", "X".repeat(2_000)).as_bytes()).unwrap();
        let res = client
            .request(method, server.url("/v1/clusters"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        let res = client
            .get(server.url(&format!("/no/such/{i}/{}", "p".repeat(300))))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("XXXX") && !text.contains("pppp"), "{text}");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_starve_neither_the_api_nor_the_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let (server, printed) = Server::start_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("CLUSTERRA_HTTP_HEADER_TIMEOUT_MS", "1500")],
    );
    let api = host(&server.base);
    let store = store_of(&printed);
    let started = Instant::now();
    let mut held = stalled(&api, 300).await;
    held.extend(stalled(&store, 300).await);
    // Everyone else is still answered, at once.
    let asked = Instant::now();
    assert_eq!(plain(&api, "/healthz").await.0, 200);
    let (status, body) = plain(&store, "/local/anything").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // The stalled ones are closed once the header timeout has passed.
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(5)).await);
    }
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    assert_eq!(plain(&api, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_new_connections_get_a_json_503() {
    let dir = tempfile::tempdir().unwrap();
    let (server, printed) = Server::start_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[
            ("CLUSTERRA_HTTP_HEADER_TIMEOUT_MS", "1000"),
            ("CLUSTERRA_HTTP_MAX_CONNECTIONS", "20"),
        ],
    );
    let api = host(&server.base);
    let store = store_of(&printed);
    for addr in [&api, &store] {
        let mut held = stalled(addr, 20).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = plain(addr, "/healthz").await;
        assert_eq!(status, 503, "{addr}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "server_busy", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("http_max_connections")
        );
        for s in &mut held {
            assert!(closed_within(s, Duration::from_secs(4)).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _) = plain(addr, "/healthz").await;
        assert_ne!(
            status, 503,
            "{addr}: slots free up once the stalled are closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight() {
    let (_dir, _, api) = tests::started_in_temp_dir(&[("CLUSTERRA_MIN_POSITION_WAIT_MS", "2000")]);
    // A read that waits (bounded) for a log position that will not come.
    let slow = {
        let client = api.client.clone();
        let url = api.server.url("/v1/clusters");
        let token = api.token.clone();
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .header("X-Clusterra-Min-Position", "1000000")
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Api { server, .. } = api;
    let stopping = tokio::task::spawn_blocking(move || server.stop());
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    assert_eq!(stopping.await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_use_only_buckets_the_operator_allows() {
    let (_dir, _, api) =
        tests::started_in_temp_dir(&[("CLUSTERRA_BUCKET_ALLOW", "lab-*, {workspace}-archive")]);
    let cluster = |id: &str, bucket: &str| {
        json!({"id": id, "name": id, "region": "local", "bucket": bucket,
            "slurm": {"url": "http://127.0.0.1:9", "user": "slurm"}})
    };
    let register = |body: Value| api.post_as("/v1/clusters", &api.token, body);
    for bucket in ["company-payroll", "lab", "other-archive"] {
        let (status, out) = register(cluster("c1", bucket)).await;
        assert_eq!(status, 422, "{bucket}: {out}");
        assert_eq!(out["error"]["code"], "bucket_not_allowed", "{out}");
        assert_eq!(out["error"]["field"], "bucket", "{out}");
    }
    for (id, bucket) in [("c2", "lab-gpu"), ("c3", "default-archive")] {
        let (status, out) = register(cluster(id, bucket)).await;
        assert_eq!(status, 201, "{bucket}: {out}");
    }
}
