//! One file per HTTP resource.

mod health;
mod infer;
mod metrics;
mod models;
mod openai;
pub mod registry;
mod repository;

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v2", get(health::server_metadata))
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
        .route("/metrics", get(metrics::render))
        .fallback(health::not_found)
        .with_state(state)
}
