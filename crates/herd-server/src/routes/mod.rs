//! One file per HTTP resource.

mod health;
mod infer;
mod infinity;
pub mod jobs;
mod metrics;
mod models;
mod openai;
pub mod registry;
mod repository;
mod rerank;
mod stats;
mod tei;
mod ui;
pub(crate) mod v2_compression;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use herd_core::Timing;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v2", get(health::server_metadata))
        .route("/v2/models/stats", get(stats::all))
        .route("/v2/models/{model}/stats", get(stats::model))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(stats::version),
        )
        .route("/v2/models/{model}/config", get(models::config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(models::config_version),
        )
        .route("/v2/models/{model}", get(models::metadata))
        .route("/v2/models/{model}/ready", get(models::ready))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(models::metadata_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(models::ready_version),
        )
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer_version),
        )
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository::unload),
        )
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::get_model))
        .route("/metrics", get(metrics::render))
        .merge(ui::router(state.clone()))
        .merge(tei::router())
        .merge(infinity::router())
        .merge(rerank::router())
        .fallback(health::not_found)
        .with_state(state)
}

/// Per-stage timings as headers (milliseconds), the same for every dialect.
pub(crate) fn timing_headers(h: &mut HeaderMap, t: &Timing, batch_rows: usize) {
    let ms = |d: Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).ok();
    for (name, d) in [
        ("x-load-time", t.load),
        ("x-queue-time", t.queue),
        ("x-inference-time", t.inference),
        ("x-total-time", t.total),
    ] {
        if let Some(v) = ms(d) {
            h.insert(name, v);
        }
    }
    h.insert("x-batch-rows", HeaderValue::from(batch_rows));
}
