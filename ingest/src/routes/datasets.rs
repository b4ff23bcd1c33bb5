//! Dataset statistics and bulk imports.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use sluice_core::{
    Context,
    auth::Scope,
    domain::DatasetName,
    http::{ApiError, Caller},
};
use uuid::Uuid;

use crate::form::MAX_METADATA_BYTES;
use crate::{error::IngestError, store};

pub(super) async fn list_datasets(State(ctx): State<Context>, caller: Caller) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Ingest, Scope::Train]) {
        return err.into_response();
    }
    match store::dataset_stats(&ctx, None).await {
        Ok(datasets) => Json(json!({ "datasets": datasets })).into_response(),
        Err(err) => err.into_response(),
    }
}

pub(super) async fn get_dataset(State(ctx): State<Context>, caller: Caller, Path(name): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Ingest, Scope::Train]) {
        return err.into_response();
    }
    let name = match DatasetName::parse(&name) {
        Ok(name) => name,
        Err(e) => return IngestError::BadField { field: "dataset", message: e.0 }.into_response(),
    };
    match store::dataset_stats(&ctx, Some(&name)).await {
        Ok(mut datasets) if !datasets.is_empty() => Json(datasets.remove(0)).into_response(),
        Ok(_) => IngestError::NotFound(format!("dataset named {name}")).into_response(),
        Err(err) => err.into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct QueueQuery {
    limit: Option<i64>,
}

/// `GET /v1/datasets/{name}/labelling-queue[?limit=]`: the dataset's unlabelled items, most
/// informative first (captured inputs the model was least sure of, then the newest). Label one
/// with `PATCH /v1/media/{id}`, or by feedback on the prediction it was captured from.
pub(super) async fn labelling_queue(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<QueueQuery>,
) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Ingest, Scope::Train]) {
        return err.into_response();
    }
    let name = match DatasetName::parse(&name) {
        Ok(name) => name,
        Err(e) => return IngestError::BadField { field: "dataset", message: e.0 }.into_response(),
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    match store::labelling_queue(&ctx, &name, limit).await {
        Ok(Some(queue)) => Json(queue).into_response(),
        Ok(None) => IngestError::NotFound(format!("dataset named {name}")).into_response(),
        Err(err) => err.into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    bucket: Option<String>,
    #[serde(default)]
    prefix: String,
}

pub(super) async fn post_import(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    if let Err(err) = caller.require(Scope::Ingest) {
        return err.into_response();
    }
    let dataset = match DatasetName::parse(&name) {
        Ok(name) => name,
        Err(e) => return IngestError::BadField { field: "dataset", message: e.0 }.into_response(),
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_METADATA_BYTES).await else {
        return IngestError::BadRequest("the body is too large".into()).into_response();
    };
    let request: ImportRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(e) => {
            return IngestError::BadRequest(format!("send {{\"bucket\": \"...\", \"prefix\": \"...\"}} ({e})"))
                .into_response();
        }
    };
    let bucket = request.bucket.unwrap_or_else(|| ctx.config.s3.bucket.clone());
    if !sluice_core::s3::is_valid_bucket_name(&bucket) {
        return IngestError::BadField { field: "bucket", message: "is not a valid S3 bucket name".into() }
            .into_response();
    }
    if request.prefix.len() > 1024 || request.prefix.chars().any(char::is_control) {
        return IngestError::BadField { field: "prefix", message: "at most 1024 bytes, no control characters".into() }
            .into_response();
    }
    let own = ctx.config.s3.bucket.as_str();
    if bucket != own && !ctx.config.ingest.import_buckets.iter().any(|b| b == &bucket) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "bucket_not_allowed",
            format!(
                "Imports may read from {own} and the buckets listed in ingest.import_buckets; {bucket} is not one."
            ),
        )
        .into_response();
    }
    let prefix = crate::imports::normalize_prefix(&request.prefix);
    if bucket == own && ["raw/", "processed/"].iter().any(|p| prefix.starts_with(p) || p.starts_with(prefix.as_str())) {
        return IngestError::BadField {
            field: "prefix",
            message: "must not overlap Sluice's own raw/ and processed/ areas; upload to another prefix".into(),
        }
        .into_response();
    }
    if let Err(err) = sluice_core::s3::check_bucket(&ctx.s3, &bucket).await {
        let status = match err.code() {
            Some("NotFound" | "NoSuchBucket") => Some("was not found"),
            Some("Forbidden" | "AccessDenied") => Some("is not readable with Sluice's credentials"),
            _ => None,
        };
        return match status {
            Some(why) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unusable_bucket", format!("Bucket {bucket} {why}."))
                    .into_response()
            }
            None => IngestError::Storage(err).into_response(),
        };
    }
    match crate::imports::create(&ctx, &dataset, &bucket, &request.prefix).await {
        Ok(id) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "status": "queued", "dataset": dataset, "bucket": bucket,
                        "prefix": crate::imports::normalize_prefix(&request.prefix)})),
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

pub(super) async fn get_import(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Ingest]) {
        return err.into_response();
    }
    let id = match Uuid::parse_str(&id) {
        Ok(id) => id,
        Err(_) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "Import ids are UUIDs.").into_response(),
    };
    match crate::imports::status_json(&ctx, id).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => IngestError::NotFound(format!("import with id {id}")).into_response(),
        Err(err) => err.into_response(),
    }
}
