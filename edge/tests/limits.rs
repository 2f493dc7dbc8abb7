//! The edge's limits on a real socket: stalled clients, the connection limit, idle keep-alive,
//! stalled bodies and graceful shutdown.

#![allow(clippy::unwrap_used)] // a test may panic on what it did not expect

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use edge::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Running {
    let app = Router::new()
        .route("/hi", get(|| async { "hi" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "slow"
            }),
        )
        .route(
            "/echo",
            post(|body: String| async move { format!("{} bytes", body.len()) }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(edge::serve(listener, app, limits, "test", async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

fn limits(header_ms: u64, idle_ms: u64, max: usize) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_connections: max,
    }
}

/// Sends `request` on a new connection and reads until the server closes it (or 5 s).
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = sent(addr, request.as_bytes()).await;
    read_to_close(&mut s, Duration::from_secs(5)).await.0
}

/// A new connection to `addr` that has sent `bytes`.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Reads until EOF; the text and whether EOF came within `within`.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

const HI: &str = "GET /hi HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

async fn stalled(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sent(addr, b"GET /hi HT").await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_neither_block_others_nor_stay_open() {
    let server = start(limits(1_000, 30_000, 1024)).await;
    let mut held = stalled(server.addr, 300).await;
    let started = Instant::now();
    let answer = exchange(server.addr, HI).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hi"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Each stalled connection is closed once its header timeout has passed.
    for s in &mut held {
        let (text, closed) = read_to_close(s, Duration::from_secs(3)).await;
        assert!(closed, "a stalled connection stayed open");
        assert!(!text.contains("200"), "{text}");
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_connections_get_a_json_503_until_slots_free_up() {
    let server = start(limits(1_000, 30_000, 8)).await;
    let mut held = stalled(server.addr, 8).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = exchange(server.addr, HI).await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("retry-after: 1"), "{busy}");
    let body = busy.split("\r\n\r\n").nth(1).unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "server_busy", "{body}");
    for s in &mut held {
        assert!(read_to_close(s, Duration::from_secs(3)).await.1);
    }
    let ok = exchange(server.addr, HI).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_are_not() {
    let server = start(limits(300, 600, 16)).await;
    // A request that takes longer than both timeouts is not cut.
    let mut s = sent(server.addr, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("slow"),
        "{text}"
    );
    // Then, kept alive and idle, it is closed after the idle timeout (not the header timeout).
    let since = Instant::now();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(closed);
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2_500),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_cut() {
    let server = start(limits(400, 30_000, 16)).await;
    let half = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf";
    let mut s = sent(server.addr, half).await;
    let since = Instant::now();
    let (text, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(closed, "{text}");
    assert!(!text.contains("100 bytes"), "{text}");
    assert!(since.elapsed() < Duration::from_secs(2));
    // A whole body is fine.
    let ok = exchange(
        server.addr,
        "POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 4\r\n\r\nfull",
    )
    .await;
    assert!(ok.ends_with("4 bytes"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let mut server = start(limits(1_000, 30_000, 16)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut busy = sent(server.addr, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = server.stop.take().unwrap().send(());
    let (text, closed) = read_to_close(&mut busy, Duration::from_secs(3)).await;
    assert!(closed);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("slow"),
        "{text}"
    );
    assert!(read_to_close(&mut idle, Duration::from_secs(1)).await.1);
    tokio::time::timeout(Duration::from_secs(2), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}
