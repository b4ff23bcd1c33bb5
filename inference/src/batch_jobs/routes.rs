//! `POST /v1/batch-predictions` and `GET /v1/batch-predictions/{id}`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    api_doc::ErrorBody,
    auth::Scope,
    batch_predictions::{BatchManifest, BatchStatus, batch_manifest_key, batch_part_key, batch_prefix},
    domain::DatasetName,
    http::Caller,
    models::AliasName,
};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    freeze::{self, Source},
    store::{self, JobView, NewJob},
};
use crate::{
    AppState,
    error::InferenceError,
    predict::{model_name, target},
    serving::Target,
};

/// Most classes a line may list.
const MAX_TOP_K: usize = 100;

/// A batch prediction: one model version over a dataset, or over the objects under an S3 prefix.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    /// The model's name.
    model: String,
    /// The alias whose version is pinned at submission (not with `version`); default `production`.
    alias: Option<String>,
    /// The version (not with `alias`).
    #[schema(minimum = 1)]
    version: Option<i32>,
    /// A dataset: its processed media under its current pipeline spec (not with `bucket`/`prefix`).
    dataset: Option<String>,
    /// A bucket (Sluice's own, or one of `ingest.import_buckets`), with `prefix`.
    bucket: Option<String>,
    /// Every object under this prefix of `bucket` (at most 1024 bytes).
    prefix: Option<String>,
    /// Classes listed per item, 1 to 100 (default 3).
    #[schema(minimum = 1, maximum = 100)]
    top_k: Option<usize>,
}

/// Exactly one source: a dataset, or a bucket and a prefix.
fn source(request: &BatchRequest) -> Result<Source, InferenceError> {
    match (&request.dataset, &request.bucket, &request.prefix) {
        (Some(dataset), None, None) => DatasetName::parse(dataset)
            .map(Source::Dataset)
            .map_err(|e| InferenceError::invalid(format!("`dataset`: {e}."))),
        (None, Some(bucket), Some(prefix)) => {
            if !sluice_core::s3::is_valid_bucket_name(bucket) {
                return Err(InferenceError::invalid("`bucket` is not a valid S3 bucket name."));
            }
            if prefix.len() > 1024 || prefix.chars().any(char::is_control) {
                return Err(InferenceError::invalid("`prefix` is at most 1024 bytes, without control characters."));
            }
            Ok(Source::Prefix { bucket: bucket.clone(), prefix: prefix.clone() })
        }
        (None, None, None) => Err(InferenceError::invalid("Give a `dataset`, or a `bucket` and a `prefix`, to score.")),
        (Some(_), _, _) => Err(InferenceError::invalid("Give a `dataset` or a `bucket` and a `prefix`, not both.")),
        (None, _, _) => Err(InferenceError::invalid("`bucket` and `prefix` go together.")),
    }
}

/// Queues a batch prediction: pins the version, freezes the items, queues the job.
///
/// Results are written to S3 as JSON lines under `result_prefix`, one part per chunk; follow the
/// job at `GET /v1/batch-predictions/{id}`.
#[utoipa::path(post, path = "/v1/batch-predictions", tag = "batch",
    security(("bearer" = ["predict"])),
    request_body = BatchRequest,
    responses(
        (status = 202, description = "Queued: `{\"id\", \"status\", \"model\", \"version\", \"total\", \"chunks\", \"result_prefix\"}`.", body = Object),
        (status = 400, description = "A malformed body, model name, alias, version, `top_k` or source (give a `dataset`, or a `bucket` and a `prefix`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `predict` scope, or the bucket is not one batch predictions may read (`bucket_not_allowed`: Sluice's bucket and `ingest.import_buckets`).", body = ErrorBody),
        (status = 404, description = "No such model, alias, version or dataset.", body = ErrorBody),
        (status = 413, description = "The body is over `http.max_request_bytes`.", body = ErrorBody),
        (status = 422, description = "Nothing to score, or too much: the dataset has no processed items (`no_processed_items`), the prefix no objects (`no_objects`), the bucket is missing or unreadable (`unusable_bucket`), or there are over 100,000 items (`too_many_items`).", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(batch_job = tracing::field::Empty, model = tracing::field::Empty))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), InferenceError> {
    caller.require(Scope::Predict)?;
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| InferenceError::invalid(format!("Malformed batch prediction request: {e}.")))?;
    let model = model_name(&request.model)?;
    tracing::Span::current().record("model", tracing::field::display(&model));
    let top_k = request.top_k.unwrap_or(3);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(InferenceError::invalid(format!("`top_k` must be between 1 and {MAX_TOP_K}.")));
    }
    let target = target(request.alias.as_deref(), request.version)?
        .unwrap_or_else(|| Target::Alias(AliasName::parse(AliasName::PRODUCTION).expect("a valid alias")));
    let source = source(&request)?;
    // Scoring a dataset reads it (which items it holds, how many): the scopes that read
    // datasets, besides `predict`.
    if matches!(source, Source::Dataset(_)) {
        caller.require_any(&[Scope::Ingest, Scope::Train])?;
    }
    let ctx = &state.served.ctx;
    let version = state.served.pin(&model, &target).await?;
    let (bucket, items) = freeze::items(ctx, &source).await?;
    let id = Uuid::now_v7();
    tracing::Span::current().record("batch_job", tracing::field::display(id));
    let job = NewJob {
        id,
        model: model.to_string(),
        alias: match &target {
            Target::Alias(alias) => Some(alias.to_string()),
            Target::Version(_) => None,
        },
        version,
        source: source.to_json(),
        top_k: top_k as i32,
        total: items.len() as i32,
        chunk_size: ctx.config.inference.batch_chunk.min(i32::MAX as usize) as i32,
        manifest_key: batch_manifest_key(id),
        result_prefix: batch_prefix(id),
        requested_by: caller.0.name.clone(),
    };
    // Written on a task of its own, so a client that hangs up (or the request's deadline) cannot
    // stop it between the manifest's PUT and the job's transaction and leave the manifest behind.
    let stored = tokio::spawn({
        let (ctx, job) = (ctx.clone(), job.clone());
        async move { freeze::store(&ctx, &job, &BatchManifest { job_id: id, bucket, items }).await }
    });
    stored.await??;
    tracing::info!(job = %id, model = %model, version, items = job.total, "batch prediction queued");
    let answer = json!({"id": id, "status": BatchStatus::Queued, "model": job.model, "version": version,
                        "total": job.total, "chunks": job.chunks(), "result_prefix": job.result_prefix});
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// A batch prediction's status, progress, and the result parts written so far.
#[utoipa::path(get, path = "/v1/batch-predictions/{id}", tag = "batch",
    security(("bearer" = ["predict"])),
    params(("id" = String, Path, description = "The job's id (a UUID).")),
    responses(
        (status = 200, description = "The job: `status`, `progress`, `chunks_done` of `chunks`, the result `parts` written so far, `failed_chunks`, `error` and timestamps.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = ErrorBody),
        (status = 404, description = "No batch prediction has this id.", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(batch_job = %id))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, InferenceError> {
    caller.require(Scope::Predict)?;
    let id = sluice_core::http::path_id(&id, "Batch prediction")?;
    let job = store::view(&state.served.ctx, id)
        .await?
        .ok_or_else(|| InferenceError::not_found("No batch prediction has this id."))?;
    Ok(Json(render(&job)))
}

fn rfc3339(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::from(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
}

/// A job as the API shows it: its row, its progress and the part objects written so far.
fn render(job: &JobView) -> Value {
    let parts: Vec<String> = (0..job.chunks_done.max(0) as usize).map(|chunk| batch_part_key(job.id, chunk)).collect();
    json!({
        "id": job.id,
        "model": job.model,
        "alias": job.alias,
        "version": job.version,
        "source": job.source,
        "top_k": job.top_k,
        "status": job.status,
        "total": job.total,
        "chunk_size": job.chunk_size,
        "chunks": job.chunks,
        "chunks_done": job.chunks_done,
        "progress": f64::from(job.chunks_done) / f64::from(job.chunks.max(1)),
        "manifest_key": job.manifest_key,
        "result_prefix": job.result_prefix,
        "parts": parts,
        "error": job.error,
        "failed_chunks": job.failed_chunks,
        "requested_by": job.requested_by,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "updated_at": rfc3339(job.updated_at),
        "finished_at": rfc3339(job.finished_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> BatchRequest {
        serde_json::from_value(body).expect("a well-formed request")
    }

    #[test]
    fn exactly_one_source_is_accepted() {
        let dataset = source(&request(json!({"model": "m", "dataset": "shapes"})));
        assert!(matches!(dataset, Ok(Source::Dataset(d)) if d.as_str() == "shapes"));
        let prefix = source(&request(json!({"model": "m", "bucket": "sluice", "prefix": "in/"})));
        assert!(matches!(prefix, Ok(Source::Prefix { bucket, prefix }) if bucket == "sluice" && prefix == "in/"));
        for body in [
            json!({"model": "m"}),
            json!({"model": "m", "dataset": "shapes", "bucket": "sluice", "prefix": "in/"}),
            json!({"model": "m", "dataset": "shapes", "prefix": "in/"}),
            json!({"model": "m", "bucket": "sluice"}),
            json!({"model": "m", "prefix": "in/"}),
            json!({"model": "m", "dataset": "Not A Dataset"}),
            json!({"model": "m", "bucket": "Bad_Bucket", "prefix": "in/"}),
            json!({"model": "m", "bucket": "sluice", "prefix": "a\nb"}),
        ] {
            let refused = source(&request(body.clone())).expect_err("refused");
            assert_eq!(refused.to_api().status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_value::<BatchRequest>(json!({"model": "m", "datasets": "x"})).is_err());
    }
}
