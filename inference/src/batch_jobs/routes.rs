//! `POST /v1/batch-predictions` and `GET /v1/batch-predictions/{id}`.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use sluice_core::{
    auth::Scope,
    batch_predictions::{BatchManifest, batch_manifest_key, batch_prefix},
    domain::DatasetName,
    http::{ApiError, Caller},
    models::AliasName,
};
use uuid::Uuid;

use super::{
    freeze::{self, Source},
    store::{self, NewJob},
};
use crate::{
    AppState,
    predict::{model_name, serve_error, target},
    serving::Target,
};

/// Most classes a line may list.
const MAX_TOP_K: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    model: String,
    alias: Option<String>,
    version: Option<i32>,
    dataset: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    top_k: Option<usize>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// Exactly one source: a dataset, or a bucket and a prefix.
fn source(request: &BatchRequest) -> Result<Source, ApiError> {
    match (&request.dataset, &request.bucket, &request.prefix) {
        (Some(dataset), None, None) => {
            DatasetName::parse(dataset).map(Source::Dataset).map_err(|e| bad(format!("`dataset`: {e}.")))
        }
        (None, Some(bucket), Some(prefix)) => {
            if !sluice_core::s3::is_valid_bucket_name(bucket) {
                return Err(bad("`bucket` is not a valid S3 bucket name."));
            }
            if prefix.len() > 1024 || prefix.chars().any(char::is_control) {
                return Err(bad("`prefix` is at most 1024 bytes, without control characters."));
            }
            Ok(Source::Prefix { bucket: bucket.clone(), prefix: prefix.clone() })
        }
        (None, None, None) => Err(bad("Give a `dataset`, or a `bucket` and a `prefix`, to score.")),
        (Some(_), _, _) => Err(bad("Give a `dataset` or a `bucket` and a `prefix`, not both.")),
        (None, _, _) => Err(bad("`bucket` and `prefix` go together.")),
    }
}

/// `POST /v1/batch-predictions`: pins the version, freezes the items, queues the job.
pub async fn create(State(state): State<AppState>, caller: Caller, body: Bytes) -> Response {
    match submit(&state, &caller, &body).await {
        Ok(answer) => (StatusCode::ACCEPTED, Json(answer)).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn submit(state: &AppState, caller: &Caller, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    caller.require(Scope::Predict)?;
    let request: BatchRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("Malformed batch prediction request: {e}.")))?;
    let model = model_name(&request.model)?;
    let top_k = request.top_k.unwrap_or(3);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(bad(format!("`top_k` must be between 1 and {MAX_TOP_K}.")));
    }
    let target = target(request.alias.as_deref(), request.version)?
        .unwrap_or_else(|| Target::Alias(AliasName::parse(AliasName::PRODUCTION).expect("a valid alias")));
    let source = source(&request)?;
    let ctx = &state.served.ctx;
    let version = state.served.pin(&model, &target).await.map_err(serve_error)?;
    let (bucket, items) = freeze::items(ctx, &source).await?;
    let id = Uuid::now_v7();
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
    freeze::store(ctx, &job, &BatchManifest { job_id: id, bucket, items }).await?;
    tracing::info!(job = %id, model = %model, version, items = job.total, "batch prediction queued");
    Ok(json!({"id": id, "status": "queued", "model": job.model, "version": version, "total": job.total,
              "chunks": job.chunks(), "result_prefix": job.result_prefix}))
}

/// `GET /v1/batch-predictions/{id}`: status, progress, and the result parts written so far.
pub async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Response {
    if let Err(err) = caller.require(Scope::Predict) {
        return err.into_response();
    }
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "No batch prediction has this id.");
    let Ok(id) = Uuid::parse_str(&id) else { return not_found().into_response() };
    match store::status_json(&state.served.ctx, id).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => not_found().into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "batch prediction store failed");
            ApiError::unavailable("The database is unreachable; retry shortly.").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> BatchRequest {
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
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_value::<BatchRequest>(json!({"model": "m", "datasets": "x"})).is_err());
    }
}
