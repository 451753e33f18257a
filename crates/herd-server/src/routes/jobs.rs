//! The jobs API under `/v1/jobs`, thin over `herd_jobs::api::JobsApi` (the rules live there):
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/jobs` `{queue?, kind: "batch-infer" \| "template", params, priority?, max_attempts?, timeout_secs?}` | enqueue (202) |
//! | GET | `/v1/jobs?queue=&state=&limit=` | the caller's jobs, newest first |
//! | GET | `/v1/jobs/{id}` | one job |
//! | POST | `/v1/jobs/{id}/cancel` | cancel a waiting, delayed or running job |
//! | POST | `/v1/jobs/{id}/requeue` | bring a dead job back |
//! | GET | `/v1/jobs/{id}/results` | a done job's result file (JSONL) |
//!
//! Tokens: a tenant enqueues batch-infer over its own models only (403 for another tenant's
//! model, 404 for an unknown one) and sees only its own jobs (another tenant's job is 404).
//! `command` jobs come only from the operator's templates; a client's command line is 403.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use herd_api::jobs::{EnqueueRequest, JobList};
use herd_api::ErrorCode;
use herd_jobs::api::{redacted, Caller, JobsApi};
use herd_jobs::{Job, JobState};
use serde::Deserialize;

use crate::auth::{bearer, Principal};
use crate::error::HttpError;
use crate::service::Service;

#[derive(Clone)]
struct JobsState {
    service: Service,
    api: Arc<JobsApi>,
}

/// The `/v1/jobs` routes (full paths; merge into the app).
pub fn router(service: Service, api: Arc<JobsApi>) -> Router {
    Router::new()
        .route("/v1/jobs", get(list).post(enqueue))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/requeue", post(requeue))
        .route("/v1/jobs/{id}/results", get(results))
        .with_state(JobsState { service, api })
}

fn caller(s: &JobsState, headers: &HeaderMap) -> Result<Caller, HttpError> {
    let c = s.service.identify(bearer(headers)).map_err(HttpError)?;
    Ok(match c.0 {
        Principal::Open | Principal::Admin => Caller::Operator,
        Principal::Tenant(t) => Caller::Tenant(t),
    })
}

fn view(job: Job) -> Json<Job> {
    Json(redacted(job))
}

async fn enqueue(
    State(s): State<JobsState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Job>), HttpError> {
    let who = caller(&s, &headers)?;
    let req: EnqueueRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            ErrorCode::InvalidInput,
            format!("job request is not valid JSON of the expected shape: {e}"),
        )
    })?;
    if let Some((model, version)) = JobsApi::batch_model(&req)? {
        // The tenant rules of inference: 404 for an unknown model, 403 for another tenant's.
        let c = s.service.identify(bearer(&headers)).map_err(HttpError)?;
        s.service
            .authorize(&c, &model, version.as_deref())
            .map_err(HttpError)?;
    }
    let job = s.api.enqueue(&who, req).await?;
    tracing::info!(job_id = %job.id, kind = job.spec.kind.name(), owner = ?job.spec.owner, "job enqueued through the API");
    Ok((StatusCode::ACCEPTED, view(job)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(s): State<JobsState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList<Job>>, HttpError> {
    let who = caller(&s, &headers)?;
    let state = q.state.as_deref().map(str::parse::<JobState>).transpose()?;
    let jobs = s
        .api
        .list(&who, q.queue, state, q.limit.unwrap_or(100))
        .await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(redacted).collect(),
    }))
}

async fn show(
    State(s): State<JobsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Job>, HttpError> {
    let who = caller(&s, &headers)?;
    Ok(view(s.api.show(&who, &id).await?))
}

async fn cancel(
    State(s): State<JobsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Job>, HttpError> {
    let who = caller(&s, &headers)?;
    Ok(view(s.api.cancel(&who, &id).await?))
}

async fn requeue(
    State(s): State<JobsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Job>, HttpError> {
    let who = caller(&s, &headers)?;
    Ok(view(s.api.requeue(&who, &id).await?))
}

async fn results(
    State(s): State<JobsState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let who = caller(&s, &headers)?;
    let location = s.api.result_location(&who, &id).await?;
    let stream = herd_jobs::storage::read_stream(&location).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
