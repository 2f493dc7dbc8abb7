//! The HTTP edge of every listener of `clusterra serve` (the API and the embedded object store):
//! an accept loop over hyper's HTTP/1 connections with
//!
//! - a connection limit: past `max_connections` open connections a new one is answered
//!   `503 server_busy` (a JSON error body, `Retry-After: 1`) and closed, without reading its
//!   request, so the connections already open keep being served;
//! - a header-read timeout: a connection that has started a request must finish its request line
//!   and headers within `header_timeout`, or it is closed (a slowloris client that sends half a
//!   request line and nothing more holds its connection that long, no longer);
//! - an idle keep-alive timeout: a connection with no request in progress that sends nothing for
//!   `idle_timeout` is closed;
//! - a stalled-body timeout: a request body that sends nothing for `header_timeout` is cut (the
//!   handler sees a body error);
//! - graceful shutdown: when `shutdown` resolves the listener closes, idle connections close, and
//!   requests in flight finish; [`serve`] returns when every connection has ended.
//!
//! A connection is "in a request" from the moment its request head is parsed until its response
//! body has been sent (a live event stream is one long request, never idle).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// The error code of the answer to a connection over the limit.
pub const BUSY_CODE: &str = "server_busy";

/// How many over-the-limit connections are answered at once; past that they are closed
/// without an answer (each answer holds a socket for at most a second).
const BUSY_ANSWERS: usize = 64;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// How long a connection with no request in progress stays open.
    pub idle_timeout: Duration,
    /// Connections open at once; more are answered 503 `server_busy`.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// The JSON body of the 503 answer to a connection over the limit.
pub fn busy_body(max_connections: usize) -> String {
    let message = format!(
        "the server has {max_connections} connections open, its limit (http_max_connections); retry in a moment"
    );
    format!(r#"{{"error":{{"code":"{BUSY_CODE}","message":"{message}","field":null}}}}"#)
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then lets requests in
/// flight finish and returns once every connection has ended. `name` names the listener in the
/// log.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    name: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let busy = Arc::new(Semaphore::new(BUSY_ANSWERS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionRefused) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a little for some to close.
                    tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(connection(
                    stream,
                    app.clone(),
                    limits,
                    stop_rx.clone(),
                    permit,
                ));
            }
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        listener = name,
                        max_connections = max,
                        "connection limit reached; new connections are answered 503 server_busy"
                    );
                }
                if let Ok(answer) = busy.clone().try_acquire_owned() {
                    tokio::spawn(refuse(stream, max, answer));
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it ends.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// Answers 503 `server_busy` and closes.
async fn refuse(mut stream: TcpStream, max: usize, _answer: OwnedSemaphorePermit) {
    let body = busy_body(max);
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Take what the client already sent, so that closing does not reset the connection
        // before it has read the answer.
        let mut buf = [0u8; 8192];
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// One connection, until it ends, times out, or (at shutdown) finishes its request.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let in_service = activity.clone();
    let body_timeout = limits.header_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = in_service.begin();
        let app = app.clone();
        async move {
            let req = req.map(|b| Body::new(Stalling::new(b, body_timeout)));
            let response = app.oneshot(req).await;
            response.map(|r| {
                r.map(|inner| {
                    Body::new(Guarded {
                        inner,
                        _guard: guard,
                    })
                })
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // A backstop only: the watchdog below closes such a connection first.
        .header_read_timeout(limits.header_timeout + limits.idle_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("connection closed: no complete request within its timeout");
                    return;
                }
            }
            () = activity.changed.notified() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its timeouts.
struct Activity {
    /// Requests whose response has not been sent completely.
    in_flight: AtomicUsize,
    clock: Mutex<Clock>,
    /// Woken when the deadline may have moved.
    changed: Notify,
}

struct Clock {
    /// Since when no request has been in progress.
    idle_since: Instant,
    /// When the first byte of the next request arrived (while idle).
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            clock: Mutex::new(Clock {
                idle_since: Instant::now(),
                head_started: None,
            }),
            changed: Notify::new(),
        }
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request head was parsed.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.clock().head_started = None;
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Bytes arrived.
    fn read(&self) {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return;
        }
        let mut clock = self.clock();
        if clock.head_started.is_none() {
            clock.head_started = Some(Instant::now());
            drop(clock);
            self.changed.notify_one();
        }
    }

    /// When this connection is to be closed, if nothing happens before; `None` while a request
    /// is in progress.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let clock = self.clock();
        Some(match clock.head_started {
            Some(at) => at + limits.header_timeout,
            None => clock.idle_since + limits.idle_timeout,
        })
    }
}

/// A request in progress; dropped when its response body has been sent (or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut clock = self.0.clock();
            clock.idle_since = Instant::now();
            clock.head_started = None;
        }
        self.0.changed.notify_one();
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that holds its request's [`InFlight`] until it is sent.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when nothing arrives for `timeout`.
struct Stalling {
    inner: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stalling {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
        }
    }
}

/// The request body stalled.
#[derive(Debug)]
pub struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body sent nothing for {} ms",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for BodyStalled {}

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_the_json_error_shape() {
        let body: serde_json::Value = serde_json::from_str(&busy_body(7)).unwrap();
        assert_eq!(body["error"]["code"], BUSY_CODE);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("7 connections")
        );
        assert_eq!(body["error"]["field"], serde_json::Value::Null);
    }
}
