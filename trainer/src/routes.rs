//! `POST /v1/training-jobs`, `GET /v1/training-jobs[/{id}]`, `POST /v1/training-jobs/{id}/cancel`,
//! `GET /v1/retrain-requests`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    http::{ApiError, Caller},
    models::ModelName,
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    error::TrainerError,
    jobs::{self, Grant},
    search::JobRequest,
    store::{self, Cancelled, Origin},
};

type Answer<T = Json<Value>> = Result<T, TrainerError>;

pub fn router(ctx: Context) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(retrain_requests))
        .with_state(ctx)
}

fn job_id(raw: &str) -> Result<Uuid, TrainerError> {
    Ok(sluice_core::http::path_id(raw, "Training job")?)
}

/// Starts a hyper-parameter search: freezes the dataset into a snapshot, plans the trials and queues them.
#[utoipa::path(post, path = "/v1/training-jobs", tag = "training",
    description = "Body: `{\"model\", \"dataset\", \"architecture\": \"mlp\"|\"cnn\", \"search\": {\"strategy\": \"grid\"|\"random\"|\"halving\"|\"asha\"|\"tpe\", \"max_trials\", \"space\": {...}}, \"validation_split\", \"calibration_split\", \"test_split\", \"seed\", \"augment\", \"promote\": \"never\"|\"if_better\"|\"if_better_live\"|\"always\"}`. A `promote` that moves production needs `admin` or the model's auto-promotion policy.",
    security(("bearer" = ["train"])),
    request_body(content = Object, description = "The job request.", content_type = "application/json"),
    responses((status = 202, description = "`{\"id\", \"status\": \"queued\"}`", body = Object),
        (status = 400, description = "The body is not a job request.", body = sluice_core::api_doc::ErrorBody),
        (status = 403, description = "`promote` moves production beyond what the caller or the policy may.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "The dataset does not exist.", body = sluice_core::api_doc::ErrorBody),
        (status = 409, description = "A retrain would learn nothing new.", body = sluice_core::api_doc::ErrorBody),
        (status = 413, description = "The body is too large.", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "Invalid fields, search or splits, or a dataset that cannot be trained on.", body = sluice_core::api_doc::ErrorBody)))]
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
#[utoipa::path(get, path = "/v1/retrain-requests", tag = "training", security(("bearer" = ["train"])), params(("limit" = Option<i64>, Query, description = "At most this many, 1 to 500 (default 50)."), ("model" = Option<String>, Query, description = "Only this model's.")),
    responses((status = 200, description = "`{\"requests\": [...]}` with what each did.", body = Object),
        (status = 400, description = "A malformed query.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn retrain_requests(State(ctx): State<Context>, caller: Caller, Query(query): Query<ListQuery>) -> Answer {
    caller.require_any(&[Scope::Train])?;
    let model = query.model()?;
    let requests = store::retrain_requests(&ctx, model.as_ref().map(ModelName::as_str), query.limit()?).await?;
    Ok(Json(json!({"requests": requests})))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    model: Option<String>,
    limit: Option<i64>,
}

impl ListQuery {
    /// The model filter, checked like every model name (a name that cannot exist is refused
    /// rather than sent to PostgreSQL, which refuses a NUL byte with an error).
    fn model(&self) -> Result<Option<ModelName>, TrainerError> {
        self.model
            .as_deref()
            .map(ModelName::parse)
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("`model`: {e}.")).into())
    }

    /// 1 to 500 (default 50); outside it a 400, as the other list routes answer, rather than a
    /// quietly different page size.
    fn limit(&self) -> Result<i64, TrainerError> {
        match self.limit {
            None => Ok(50),
            Some(limit) if (1..=500).contains(&limit) => Ok(limit),
            Some(_) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "`limit` must be 1 to 500.").into())
            }
        }
    }
}

/// The newest training jobs.
#[utoipa::path(get, path = "/v1/training-jobs", tag = "training", security(("bearer" = ["train"])), params(("limit" = Option<i64>, Query, description = "At most this many, 1 to 500 (default 50)."), ("model" = Option<String>, Query, description = "Only this model's.")),
    responses((status = 200, description = "`{\"jobs\": [...]}`", body = Object),
        (status = 400, description = "A malformed query.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all)]
async fn list(State(ctx): State<Context>, caller: Caller, Query(query): Query<ListQuery>) -> Answer {
    caller.require_any(&[Scope::Train])?;
    let model = query.model()?;
    let jobs = store::list_jobs(&ctx, model.as_ref().map(ModelName::as_str), query.limit()?).await?;
    Ok(Json(json!({"jobs": jobs})))
}

/// A job: status, every trial with its parameters, metrics, history and worker, the best trial and the version it registered.
#[utoipa::path(get, path = "/v1/training-jobs/{id}", tag = "training", security(("bearer" = ["train"])), params(("id" = String, Path, description = "The training job's id (a UUID).")),
    responses((status = 200, description = "The job.", body = Object), (status = 400, description = "The id is not a UUID.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No training job has this id.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(job_id = %id))]
async fn show(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Answer {
    caller.require_any(&[Scope::Train])?;
    let id = job_id(&id)?;
    let view = store::job_view(&ctx, id).await?.ok_or(TrainerError::UnknownJob)?;
    Ok(Json(view))
}

/// Cancels a queued or running job: queued trials are skipped, running ones stop after their epoch.
#[utoipa::path(post, path = "/v1/training-jobs/{id}/cancel", tag = "training", security(("bearer" = ["train"])), params(("id" = String, Path, description = "The training job's id (a UUID).")),
    responses((status = 200, description = "`{\"id\", \"status\": \"cancelled\"}`", body = Object), (status = 400, description = "The id is not a UUID.", body = sluice_core::api_doc::ErrorBody), (status = 404, description = "No training job has this id.", body = sluice_core::api_doc::ErrorBody),
        (status = 409, description = "The job already ended.", body = sluice_core::api_doc::ErrorBody)))]
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
