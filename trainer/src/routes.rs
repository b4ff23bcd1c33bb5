//! `POST /v1/training-jobs`, `GET /v1/training-jobs[/{id}]`, `POST /v1/training-jobs/{id}/cancel`,
//! `GET /v1/retrain-requests`.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    http::{ApiError, Caller},
};
use uuid::Uuid;

use crate::{
    error::TrainerError,
    jobs::{self, Grant},
    search::JobRequest,
    store::{self, Cancelled, Origin},
};

type Answer<T = Json<Value>> = Result<T, TrainerError>;

pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/training-jobs", post(create).get(list))
        .route("/v1/training-jobs/{id}", get(show))
        .route("/v1/training-jobs/{id}/cancel", post(cancel))
        .route("/v1/retrain-requests", get(retrain_requests))
        .with_state(ctx)
}

fn job_id(raw: &str) -> Result<Uuid, TrainerError> {
    Uuid::parse_str(raw).map_err(|_| TrainerError::UnknownJob)
}

#[tracing::instrument(skip_all, fields(caller = %caller.0.name))]
async fn create(State(ctx): State<Context>, caller: Caller, body: Bytes) -> Answer<(StatusCode, Json<Value>)> {
    caller.require(Scope::Train)?;
    let mut explicit_promote = false;
    let request: JobRequest = serde_json::from_slice::<Value>(&body)
        .and_then(|value| {
            explicit_promote = value.get("promote").is_some();
            serde_json::from_value(value)
        })
        .map_err(|err| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("Malformed training job: {err}."))
        })?;
    let origin = Origin { kind: "api", requested_by: caller.0.name.clone(), evidence: None };
    let grant = if caller.is_admin() { Grant::Admin } else { Grant::Caller { explicit: explicit_promote } };
    let id = jobs::start(&ctx, &request, origin, grant).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id, "status": "queued"}))))
}

/// `GET /v1/retrain-requests[?model=&limit=]`: the retrain requests received (drift, feedback),
/// newest first, with what each did: `started` (and the job), `coalesced` into a running or
/// recent job, `skipped` (nothing new to learn) or `refused`.
#[tracing::instrument(skip_all)]
async fn retrain_requests(State(ctx): State<Context>, caller: Caller, Query(query): Query<ListQuery>) -> Answer {
    caller.require_any(&[Scope::Train])?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let requests = store::retrain_requests(&ctx, query.model.as_deref(), limit).await?;
    Ok(Json(json!({"requests": requests})))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    model: Option<String>,
    limit: Option<i64>,
}

#[tracing::instrument(skip_all)]
async fn list(State(ctx): State<Context>, caller: Caller, Query(query): Query<ListQuery>) -> Answer {
    caller.require_any(&[Scope::Train])?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let jobs = store::list_jobs(&ctx, query.model.as_deref(), limit).await?;
    Ok(Json(json!({"jobs": jobs})))
}

#[tracing::instrument(skip_all, fields(job_id = %id))]
async fn show(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Answer {
    caller.require_any(&[Scope::Train])?;
    let id = job_id(&id)?;
    let view = store::job_view(&ctx, id).await?.ok_or(TrainerError::UnknownJob)?;
    Ok(Json(view))
}

#[tracing::instrument(skip_all, fields(job_id = %id))]
async fn cancel(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Answer {
    caller.require(Scope::Train)?;
    let id = job_id(&id)?;
    match store::cancel(&ctx, id).await? {
        Cancelled::Done => {
            metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "cancelled").increment(1);
            Ok(Json(json!({"id": id, "status": "cancelled"})))
        }
        Cancelled::NotFound => Err(TrainerError::UnknownJob),
        Cancelled::AlreadyEnded(status) => Err(TrainerError::JobEnded(status)),
    }
}
