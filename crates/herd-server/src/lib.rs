//! The HTTP layer of herd.
//!
//! Owns: the axum routes (KServe v2 inference and metadata, the repository extension, health,
//! Prometheus metrics), bearer-token auth with tenants, the serve [`Settings`], and telemetry
//! setup. Handlers parse, call one core method, and map the result; errors become HTTP answers
//! in [`error`] only. Must not contain serving logic (that is `herd-core`). The serving assembly
//! ([`serving`]: one `ServeSettings`, one `serve()`, the registry model source, the channel
//! watcher and its swap policy) lives here so `herd serve` only parses flags and calls it.

pub mod auth;
pub mod error;
pub mod http;
mod routes;
pub mod service;
pub mod serving;
pub mod settings;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use herd_core::Core;
use metrics_exporter_prometheus::PrometheusHandle;

pub use http::{serve_listener, spawn_with, HttpLimits};
/// The jobs API (`/v1/jobs`); `herd serve --jobs-queue-url` merges it into the app.
pub use routes::jobs::router as jobs_router;
/// The registry REST API; `herd serve --channel` mounts it with
/// `app.nest("/v1/registry", registry_router(registry, auth))`.
pub use routes::registry::router as registry_router;
pub use settings::Settings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    pub auth: Arc<auth::Auth>,
    pub metrics: Option<PrometheusHandle>,
    /// Readiness: set by the preload task and the shutdown signal.
    pub health: Arc<service::Health>,
    /// The protocol-neutral operations every route calls.
    pub service: service::Service,
    /// The job queue of the jobs API (`--jobs-queue-url`), read by the dashboard.
    pub jobs_queue: Option<Arc<dyn herd_jobs::Queue>>,
}

impl AppState {
    /// A state that is not ready until [`AppState::start`] has preloaded the pinned models.
    pub fn new(
        core: Arc<Core>,
        auth: Arc<auth::Auth>,
        metrics: Option<PrometheusHandle>,
    ) -> AppState {
        let health = Arc::new(service::Health::starting());
        AppState {
            service: service::Service::new(core.clone(), auth.clone(), health.clone()),
            core,
            auth,
            metrics,
            health,
            jobs_queue: None,
        }
    }

    /// The same state with the jobs API's queue (the dashboard shows its depths and workers).
    pub fn with_jobs_queue(mut self, queue: Arc<dyn herd_jobs::Queue>) -> AppState {
        self.jobs_queue = Some(queue);
        self
    }

    /// Preloads the pinned models in the background; the server turns ready when they are
    /// loaded (a pinned model that fails to load is logged and shown in the index).
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let (core, health) = (self.core.clone(), self.health.clone());
        tokio::spawn(async move {
            let pinned = core.preload_pinned().await;
            if pinned > 0 {
                tracing::info!(pinned, "pinned models preloaded");
            }
            health.mark_started();
        })
    }
}

/// The whole HTTP application (tests call it without a socket or bind it to port 0).
/// A body over `max_body_bytes` gets herd's JSON 413 naming the limit.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let max = max_body_bytes as u64;
    routes::router(state)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(move |req, next| {
            routes::v2_compression::codec(max, req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            http::json_413(max, req, next)
        }))
}

/// Binds `addr` and serves until ctrl-c / SIGTERM with the default [`HttpLimits`], draining
/// requests in flight (see [`serve_with`]).
pub async fn serve(
    app: Router,
    addr: SocketAddr,
    health: Arc<service::Health>,
    drain_delay: Duration,
) -> std::io::Result<()> {
    serve_with(app, addr, HttpLimits::default(), health, drain_delay).await
}

/// Binds `addr` and serves with `limits` (header and body read timeouts, connection and
/// in-flight limits, body memory) until ctrl-c / SIGTERM, draining requests in flight. On the
/// signal readiness turns false at once; the listener keeps accepting for `drain_delay` (so
/// load balancers see the 503 and move away; a second signal cuts the wait short), then closes;
/// requests in flight get `limits.shutdown_grace` to finish.
pub async fn serve_with(
    app: Router,
    addr: SocketAddr,
    limits: HttpLimits,
    health: Arc<service::Health>,
    drain_delay: Duration,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_bound(listener, app, limits, health, drain_delay).await
}

/// [`serve_with`] on a listener already bound (so the caller knows its address first).
pub async fn serve_bound(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    health: Arc<service::Health>,
    drain_delay: Duration,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "herd is serving");
    serve_listener(listener, app, limits, async move {
        shutdown_signal().await;
        health.begin_drain();
        if !drain_delay.is_zero() {
            tracing::info!(
                ?drain_delay,
                "not ready; closing the listener after the drain delay"
            );
            tokio::select! {
                _ = tokio::time::sleep(drain_delay) => {},
                _ = shutdown_signal() => {},
            }
        }
    })
    .await
}

/// Binds `addr` (port 0 picks a free port) and serves in the background with the default
/// [`HttpLimits`]; returns the bound address. For the demo, benchmarks and tests.
pub async fn spawn(
    app: Router,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    spawn_with(app, addr, HttpLimits::default()).await
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
