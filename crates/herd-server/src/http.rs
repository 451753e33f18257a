//! The HTTP listener: what keeps a client from holding the server.
//!
//! - **Header read timeout**: a connection that does not send a whole request head within
//!   `header_read_timeout` is closed (hyper's own timer; it also closes idle keep-alive
//!   connections), so a client sending one byte a minute cannot hold a connection.
//! - **Body read timeout**: the whole body must arrive within `body_read_timeout` of the head;
//!   else 408 with herd's JSON error and the connection is closed.
//! - **Connection limit**: at most `max_connections` open connections; one more is answered 503
//!   with `Retry-After` and closed at once.
//! - **In-flight limit**: at most `max_in_flight` requests being handled (health probes and
//!   `/metrics` are not counted); one more is answered 503 with `Retry-After`.
//! - **Body memory**: request bodies held at once (each charged twice its length: the bytes and
//!   their decoded tensors) are bounded by `max_body_memory`; a request that cannot get room
//!   within the body read timeout is answered 503 with `Retry-After`.
//! - **413** for a body over `--max-body` is herd's JSON error naming the limit (see [`crate::app`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use herd_api::units::human_bytes;
use herd_api::ErrorCode;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::HttpError;

/// The listener's limits. `Settings::http_limits` builds them from flags; the defaults are the
/// flags' defaults.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body (413 beyond it).
    pub max_body_bytes: usize,
    /// Time a connection has to send a whole request head (and how long it may sit idle).
    pub header_read_timeout: Duration,
    /// Time a request has to send its whole body after its head.
    pub body_read_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// Requests handled at once (health and metrics not counted).
    pub max_in_flight: usize,
    /// Bytes of request bodies held at once (each body charged twice its length).
    pub max_body_memory: u64,
    /// How long shutdown waits for requests in flight before closing their connections.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 64 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_in_flight: 512,
            max_body_memory: 512 << 20,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Body memory is counted in KiB permits (a semaphore holds at most `u32::MAX` per acquire).
const PERMIT_BYTES: u64 = 1024;
/// A body is charged this many times its length: the bytes, and the tensors decoded from them.
pub const BODY_CHARGE_FACTOR: u64 = 2;

struct Guards {
    limits: HttpLimits,
    in_flight: Arc<Semaphore>,
    body_memory: Arc<Semaphore>,
    body_memory_permits: u32,
}

/// Wraps `app` with the in-flight limit, the body memory bound and the body read timeout.
pub fn harden(app: Router, limits: &HttpLimits) -> Router {
    let body_memory_permits =
        (limits.max_body_memory / PERMIT_BYTES).clamp(1, u32::MAX as u64 / 2) as u32;
    let guards = Arc::new(Guards {
        limits: limits.clone(),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
        body_memory: Arc::new(Semaphore::new(body_memory_permits as usize)),
        body_memory_permits,
    });
    app.layer(axum::middleware::from_fn_with_state(guards, guard))
}

/// An error answer in the caller's dialect: OpenAI error objects under `/v1` (but not the
/// registry API), herd's `{"error", "code"}` elsewhere; `Retry-After` where the code says so.
fn error_response(path: &str, code: ErrorCode, message: String) -> Response {
    if path.starts_with("/v1/") && !path.starts_with("/v1/registry") {
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            axum::Json(herd_api::openai::ErrorBody::new(code, message, None)),
        )
            .into_response();
        if let Some(secs) = code.retry_after_secs() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return r;
    }
    HttpError::new(code, message).into_response()
}

fn exempt(path: &str) -> bool {
    path.starts_with("/v2/health/") || path == "/metrics"
}

fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn has_body(req: &Request) -> bool {
    declared_length(req).is_some_and(|n| n > 0)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
}

fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn guard(State(g): State<Arc<Guards>>, req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let Ok(_in_flight) = g.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("herd_http_rejected_total", "reason" => "in_flight").increment(1);
        return error_response(
            &path,
            ErrorCode::Unavailable,
            format!(
                "the server is handling its limit of {} requests at once (--max-in-flight); retry later",
                g.limits.max_in_flight
            ),
        );
    };
    let max_body = g.limits.max_body_bytes as u64;
    if let Some(n) = declared_length(&req) {
        if n > max_body {
            return closing(too_large(&path, max_body, Some(n)));
        }
    }
    let _body_memory = if has_body(&req) {
        // A chunked body of unknown length is charged as if it were as large as allowed, and so
        // is a compressed one (it may decompress up to the limit).
        let compressed = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let len = match compressed {
            true => max_body,
            false => declared_length(&req).unwrap_or(max_body),
        };
        let want = (len.saturating_mul(BODY_CHARGE_FACTOR)).div_ceil(PERMIT_BYTES);
        let want = want.clamp(1, g.body_memory_permits as u64) as u32;
        let acquire = g.body_memory.clone().acquire_many_owned(want);
        match tokio::time::timeout(g.limits.body_read_timeout, acquire).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                metrics::counter!("herd_http_rejected_total", "reason" => "body_memory")
                    .increment(1);
                return closing(error_response(
                    &path,
                    ErrorCode::Unavailable,
                    format!(
                        "request bodies being read already hold the limit of {} (--max-body-memory); retry later",
                        human_bytes(g.limits.max_body_memory)
                    ),
                ));
            }
        }
    } else {
        None
    };
    let timed_out = Arc::new(AtomicBool::new(false));
    let timeout = g.limits.body_read_timeout;
    let flag = timed_out.clone();
    let req = req.map(move |b| {
        Body::new(DeadlineBody {
            inner: b,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timed_out: flag,
        })
    });
    let resp = next.run(req).await;
    if timed_out.load(Ordering::Relaxed) {
        metrics::counter!("herd_http_rejected_total", "reason" => "body_timeout").increment(1);
        return closing(error_response(
            &path,
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {:.1} s (--body-read-timeout)",
                timeout.as_secs_f64()
            ),
        ));
    }
    resp
}

/// herd's JSON 413 for a body over `--max-body` (an OpenAI error object under `/v1`).
pub(crate) fn too_large(path: &str, max_body: u64, got: Option<u64>) -> Response {
    metrics::counter!("herd_http_rejected_total", "reason" => "body_size").increment(1);
    let got = got
        .map(|n| format!(" (this one is {})", human_bytes(n)))
        .unwrap_or_default();
    error_response(
        path,
        ErrorCode::PayloadTooLarge,
        format!(
            "request body is larger than the limit of {} bytes ({}, --max-body){got}",
            max_body,
            human_bytes(max_body)
        ),
    )
}

/// Turns axum's plain-text 413 (a chunked body that ran over the limit while being read) into
/// herd's JSON error, and answers a declared `Content-Length` over the limit before reading.
pub(crate) async fn json_413(max_body: u64, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if let Some(n) = declared_length(&req) {
        if n > max_body {
            return closing(too_large(&path, max_body, Some(n)));
        }
    }
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return closing(too_large(&path, max_body, None));
    }
    resp
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new("request body read timeout"))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then drains: idle
/// connections close at once, requests in flight get `limits.shutdown_grace` to finish.
pub async fn serve_listener(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = harden(app, &limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("herd_http_rejected_total", "reason" => "connections").increment(1);
            tokio::spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs_f64(),
            "requests still in flight after the shutdown grace period; closing them"
        );
    }
    Ok(())
}

/// One connection over the limit: a 503 with `Retry-After`, then close, without reading.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = serde_json::json!({
        "error": format!("the server holds its limit of {limit} open connections (--max-connections); retry later"),
        "code": ErrorCode::Unavailable.as_str(),
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Binds `addr` (port 0 picks a free port) and serves with `limits` in the background.
pub async fn spawn_with(
    app: Router,
    addr: SocketAddr,
    limits: HttpLimits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(serve_listener(
        listener,
        app,
        limits,
        std::future::pending::<()>(),
    ));
    Ok((bound, handle))
}
