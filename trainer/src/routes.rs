//! `POST /v1/training-jobs`, `GET /v1/training-jobs[/{id}]`, `POST /v1/training-jobs/{id}/cancel`,
//! `GET /v1/retrain-requests`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;
use sluice_core::{
    Context,
    auth::Scope,
    http::{ApiError, Caller},
};
use uuid::Uuid;

use crate::{
    jobs::{self, Grant, StartError},
    search::JobRequest,
    store::{self, Cancelled, Origin},
};

pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/training-jobs", post(create).get(list))
        .route("/v1/training-jobs/{id}", get(show))
        .route("/v1/training-jobs/{id}/cancel", post(cancel))
        .route("/v1/retrain-requests", get(retrain_requests))
        .with_state(ctx)
}

fn unavailable(err: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "training store failed");
    ApiError::unavailable("A dependency (PostgreSQL or S3) is unreachable; retry shortly.")
}

fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "No training job has this id."))
}

async fn create(State(ctx): State<Context>, caller: Caller, body: Bytes) -> Response {
    if let Err(err) = caller.require(Scope::Train) {
        return err.into_response();
    }
    let mut explicit_promote = false;
    let request: JobRequest = match serde_json::from_slice::<serde_json::Value>(&body).and_then(|value| {
        explicit_promote = value.get("promote").is_some();
        serde_json::from_value(value)
    }) {
        Ok(request) => request,
        Err(err) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("Malformed training job: {err}."),
            )
            .into_response();
        }
    };
    let origin = Origin { kind: "api", requested_by: caller.0.name.clone(), evidence: None };
    let grant = if caller.is_admin() { Grant::Admin } else { Grant::Caller { explicit: explicit_promote } };
    match jobs::start(&ctx, &request, origin, grant).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({"id": id, "status": "queued"}))).into_response(),
        Err(err) => start_error(err).into_response(),
    }
}

fn start_error(err: StartError) -> ApiError {
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    match err {
        StartError::Invalid(message) => ApiError::new(unprocessable, "invalid_request", message),
        StartError::UnknownDataset(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_dataset",
            format!("Dataset {name:?} does not exist; push media to it first."),
        ),
        StartError::Unusable(message) => ApiError::new(unprocessable, "dataset_not_trainable", format!("{message}.")),
        StartError::Search(err) => ApiError::new(unprocessable, "invalid_search", format!("{err}.")),
        StartError::Unavailable(message) => unavailable(&message),
        StartError::Forbidden(message) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("{message}.")),
        StartError::NothingNew(message) => ApiError::new(StatusCode::CONFLICT, "nothing_new", format!("{message}.")),
    }
}

/// `GET /v1/retrain-requests[?model=&limit=]`: the retrain requests received (drift, feedback),
/// newest first, with what each did: `started` (and the job), `coalesced` into a running or
/// recent job, `skipped` (nothing new to learn) or `refused`.
async fn retrain_requests(State(ctx): State<Context>, caller: Caller, Query(query): Query<ListQuery>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Train]) {
        return err.into_response();
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    match store::retrain_requests(&ctx, query.model.as_deref(), limit).await {
        Ok(requests) => Json(json!({"requests": requests})).into_response(),
        Err(err) => unavailable(&err).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    model: Option<String>,
    limit: Option<i64>,
}

async fn list(State(ctx): State<Context>, caller: Caller, Query(query): Query<ListQuery>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Train]) {
        return err.into_response();
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    match store::list_jobs(&ctx, query.model.as_deref(), limit).await {
        Ok(jobs) => Json(json!({"jobs": jobs})).into_response(),
        Err(err) => unavailable(&err).into_response(),
    }
}

async fn show(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Train]) {
        return err.into_response();
    }
    let id = match job_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    match store::job_view(&ctx, id).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => ApiError::new(StatusCode::NOT_FOUND, "not_found", "No training job has this id.").into_response(),
        Err(err) => unavailable(&err).into_response(),
    }
}

async fn cancel(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Response {
    if let Err(err) = caller.require(Scope::Train) {
        return err.into_response();
    }
    let id = match job_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    match store::cancel(&ctx, id).await {
        Ok(Cancelled::Done) => {
            metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "cancelled").increment(1);
            Json(json!({"id": id, "status": "cancelled"})).into_response()
        }
        Ok(Cancelled::NotFound) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "No training job has this id.").into_response()
        }
        Ok(Cancelled::AlreadyEnded(status)) => ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("The job is already {status}; only queued or running jobs can be cancelled."),
        )
        .into_response(),
        Err(err) => unavailable(&err).into_response(),
    }
}
