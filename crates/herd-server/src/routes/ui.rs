//! The dashboard: `GET /ui` is one self-contained HTML page (embedded, nothing fetched) that
//! polls `GET /ui/api/state` every 2 s. The page is public static HTML; the JSON names every
//! tenant's models, so with a tokens file it needs an admin token (sent as a bearer header).
//!
//! With a job queue (`--jobs-queue-url`) the state has `jobs`: per queue the counts per state
//! and the workers holding leases, read under [`JOBS_READ_TIMEOUT`] so a slow queue store never
//! holds the dashboard up (its error is shown instead). Without one, `jobs.configured` is false.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herd_api::ErrorCode;
use herd_core::{Core, ModelState};
use herd_jobs::{JobsError, Queue};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::bearer;
use crate::error::HttpError;
use crate::AppState;

const PAGE: &str = include_str!("ui/index.html");
/// One memory sample every 5 s, ten minutes of them.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES: usize = 120;
/// How long one dashboard poll waits for the job queue's store before showing an error.
pub const JOBS_READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// At most this many job queues in the table (by name; the rest are counted).
const MAX_QUEUES: usize = 50;

#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// Milliseconds since the epoch.
    t: u64,
    used_bytes: u64,
    budget_bytes: u64,
    hits: u64,
    misses: u64,
    loads: u64,
}

#[derive(Default)]
struct History {
    samples: Mutex<VecDeque<Sample>>,
    sampling: AtomicBool,
}

impl History {
    fn record(&self, core: &Core) {
        let s = core.stats();
        let mut q = self.samples.lock();
        if q.len() == SAMPLES {
            q.pop_front();
        }
        q.push_back(Sample {
            t: now_ms(),
            used_bytes: s.used_bytes,
            budget_bytes: s.budget_bytes,
            hits: s.hits,
            misses: s.misses,
            loads: s.loads,
        });
    }

    /// Starts the sampler once, inside a runtime; it stops when the router is dropped.
    fn ensure_sampling(self: &Arc<Self>, core: &Arc<Core>) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.sampling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let (history, core): (Weak<History>, Weak<Core>) =
            (Arc::downgrade(self), Arc::downgrade(core));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                match (history.upgrade(), core.upgrade()) {
                    (Some(h), Some(c)) => h.record(&c),
                    _ => return,
                }
            }
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
struct UiState {
    app: AppState,
    history: Arc<History>,
}

/// `/ui` and `/ui/api/state`; merged into the main router.
pub fn router(app: AppState) -> Router<AppState> {
    let history = Arc::new(History::default());
    history.ensure_sampling(&app.core);
    Router::new()
        .route("/ui", get(page))
        .route("/ui/api/state", get(api_state))
        .with_state(UiState { app, history })
}

async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

async fn api_state(State(s): State<UiState>, headers: HeaderMap) -> Result<Json<Value>, HttpError> {
    s.app.auth.check_admin(&headers)?;
    s.history.ensure_sampling(&s.app.core);
    let caller = s.app.service.identify(bearer(&headers))?;
    let core = s.app.core.clone();
    let index = tokio::task::spawn_blocking(move || core.index())
        .await
        .map_err(|e| HttpError::new(ErrorCode::Internal, e.to_string()))??;
    let stats = s.app.service.statistics(&caller, None, None)?;
    let source = s.app.core.source();
    let models: Vec<Value> = index
        .into_iter()
        .map(|e| {
            let st = e
                .version
                .as_deref()
                .and_then(|v| stats.iter().find(|m| m.name == e.name && m.version == v));
            let tenant = source
                .get(&e.name)
                .ok()
                .and_then(|m| m.config.tenant.clone());
            json!({
                "name": e.name,
                "version": e.version,
                "state": e.state.as_str(),
                "reason": match &e.state { ModelState::Failed(r) => Some(r.clone()), _ => None },
                "charge_bytes": e.charge,
                "load_seconds": e.load_secs,
                "hits": e.hits,
                "inferences": st.map(|m| m.inference_count).unwrap_or(0),
                "last_inference_ms": st.map(|m| m.last_inference).unwrap_or(0),
                "tenant": tenant,
            })
        })
        .collect();
    let c = s.app.core.stats();
    let lookups = c.hits + c.misses;
    let history: Vec<Sample> = s.history.samples.lock().iter().copied().collect();
    // Loads per minute over the sampled window (needs two samples).
    let load_rate = match (history.first(), history.last()) {
        (Some(a), Some(b)) if b.t > a.t => {
            Some((b.loads - a.loads) as f64 * 60_000.0 / (b.t - a.t) as f64)
        }
        _ => None,
    };
    let depths = s.app.core.queue_depths();
    let jobs = jobs_section(s.app.jobs_queue.as_ref()).await;
    Ok(Json(json!({
        "now_ms": now_ms(),
        "cache": {
            "loaded_models": c.loaded_models,
            "used_bytes": c.used_bytes,
            "budget_bytes": c.budget_bytes,
            "peak_used_bytes": c.peak_used_bytes,
            "hits": c.hits,
            "misses": c.misses,
            "loads": c.loads,
            "load_failures": c.load_failures,
            "evictions": c.evictions,
            "load_seconds_total": c.load_seconds_total,
            "hit_ratio": if lookups == 0 { None } else { Some(c.hits as f64 / lookups as f64) },
            "loads_per_minute": load_rate,
            "queue_depth": depths.iter().map(|(_, d)| d).sum::<usize>(),
        },
        "serving": source.serving(),
        "jobs": jobs,
        "history": history,
        "sample_every_seconds": SAMPLE_EVERY.as_secs(),
        "models": models,
    })))
}

/// The `jobs` part of the state: `{configured: false}` without a queue; else the backend and
/// either `queues` (name, counts per state, distinct lease holders) or `error`.
async fn jobs_section(queue: Option<&Arc<dyn Queue>>) -> Value {
    let Some(q) = queue else {
        return json!({ "configured": false });
    };
    let backend = q.backend();
    let error = match tokio::time::timeout(JOBS_READ_TIMEOUT, read_queues(q.as_ref())).await {
        Ok(Ok((queues, more))) => {
            let workers: BTreeSet<&str> = queues
                .iter()
                .flat_map(|r| r.workers.iter().map(String::as_str))
                .collect();
            return json!({
                "configured": true,
                "backend": backend,
                "queues": queues,
                "more_queues": more,
                "workers": workers.len(),
            });
        }
        Ok(Err(e)) => format!("reading the {backend} job queue failed: {e}"),
        Err(_) => format!(
            "the {backend} job queue did not answer within {} ms",
            JOBS_READ_TIMEOUT.as_millis()
        ),
    };
    tracing::warn!(%error, "dashboard: job queue not shown");
    json!({ "configured": true, "backend": backend, "error": error })
}

#[derive(Debug, Serialize)]
struct QueueRow {
    name: String,
    waiting: u64,
    running: u64,
    delayed: u64,
    dead: u64,
    done: u64,
    /// Distinct worker ids holding an unexpired lease on a job of the queue.
    workers: Vec<String>,
}

/// Every queue's counts and lease holders (the first [`MAX_QUEUES`] by name), and how many
/// queues were left out.
async fn read_queues(q: &dyn Queue) -> Result<(Vec<QueueRow>, usize), JobsError> {
    let mut names = q.queues().await?;
    names.sort();
    names.dedup();
    let more = names.len().saturating_sub(MAX_QUEUES);
    names.truncate(MAX_QUEUES);
    let rows = futures::future::try_join_all(names.into_iter().map(|name| async move {
        let (st, holders) = futures::try_join!(q.stats(&name), q.lease_holders(&name))?;
        let workers: BTreeSet<String> = holders.into_iter().collect();
        Ok::<_, JobsError>(QueueRow {
            name,
            waiting: st.waiting,
            running: st.running,
            delayed: st.delayed,
            dead: st.dead,
            done: st.done,
            workers: workers.into_iter().collect(),
        })
    }))
    .await?;
    Ok((rows, more))
}
