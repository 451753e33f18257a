use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Prometheus text format. Gauges that are cheap to read are refreshed at scrape time.
/// With a tokens file it needs an admin token or one with the `metrics` scope: the series name
/// every tenant's models.
pub async fn render(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = s.auth.check_metrics(&headers) {
        return e.into_response();
    }
    let stats = s.core.stats();
    metrics::gauge!("herd_cache_memory_used_bytes").set(stats.used_bytes as f64);
    metrics::gauge!("herd_cache_memory_budget_bytes").set(stats.budget_bytes as f64);
    metrics::gauge!("herd_cache_loaded_models").set(stats.loaded_models as f64);
    metrics::gauge!("herd_cache_shared_weights_bytes").set(stats.shared_bytes as f64);
    let depths = s.core.queue_depths();
    let total: usize = depths.iter().map(|(_, d)| d).sum();
    let max = depths.iter().map(|(_, d)| *d).max().unwrap_or(0);
    metrics::gauge!("herd_queue_depth").set(total as f64);
    metrics::gauge!("herd_queue_depth_max").set(max as f64);
    if let Some(rss) = herd_runtime::memory::rss_bytes() {
        metrics::gauge!("herd_process_resident_memory_bytes").set(rss as f64);
    }
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
