//! Dataset statistics and bulk imports.

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    domain::{DatasetName, Label},
    http::{ApiError, Caller, Page},
    uploads::MediaStatus,
};
use uuid::Uuid;

use super::rfc3339;
use crate::form::MAX_METADATA_BYTES;
use crate::{error::IngestError, imports::store::ImportStatus, store};

/// Every dataset with its counts by status and by label.
#[utoipa::path(get, path = "/v1/datasets", tag = "ingest", security(("bearer" = ["ingest"]), ("bearer" = ["train"])),
    responses((status = 200, description = "`{\"datasets\": [...]}`", body = Object)))]
#[tracing::instrument(skip_all)]
pub(super) async fn list_datasets(State(ctx): State<Context>, caller: Caller) -> Result<Json<Value>, IngestError> {
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let datasets = stats_json(store::dataset_counts(&ctx, None).await?);
    Ok(Json(json!({ "datasets": datasets })))
}

/// A dataset's counts by status and by label.
#[utoipa::path(get, path = "/v1/datasets/{name}", tag = "ingest", security(("bearer" = ["ingest"]), ("bearer" = ["train"])), params(("name" = String, Path, description = "The dataset's name.")),
    responses((status = 200, description = "The dataset.", body = Object),
        (status = 400, description = "A malformed dataset name.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No dataset of this name.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(dataset = %name))]
pub(super) async fn get_dataset(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, IngestError> {
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let name = parse_dataset(&name)?;
    let mut datasets = stats_json(store::dataset_counts(&ctx, Some(&name)).await?);
    if datasets.is_empty() {
        return Err(IngestError::NotFound(format!("dataset named {name}")));
    }
    Ok(Json(datasets.remove(0)))
}

fn parse_dataset(name: &str) -> Result<DatasetName, IngestError> {
    DatasetName::parse(name).map_err(|e| IngestError::BadField { field: "dataset", message: e.0 })
}

/// Per-dataset totals by status and by label, from counts ordered by dataset.
fn stats_json(counts: Vec<store::DatasetCount>) -> Vec<Value> {
    let mut datasets: Vec<Value> = Vec::new();
    for row in counts {
        if datasets.last().is_none_or(|d| d["name"] != row.dataset.as_str()) {
            datasets.push(json!({
                "name": row.dataset, "created_at": rfc3339(Some(row.created_at)),
                "total": 0, "by_status": {}, "by_label": {}, "unlabelled": 0,
            }));
        }
        let entry = datasets.last_mut().expect("pushed above");
        let count = row.count;
        // A dataset without media has one row: no status, a count of 0.
        let Some(status) = row.status.filter(|_| count > 0) else { continue };
        entry["total"] = json!(entry["total"].as_i64().unwrap_or(0) + count);
        let by_status = &mut entry["by_status"][status.as_str()];
        *by_status = json!(by_status.as_i64().unwrap_or(0) + count);
        let slot = match row.label.as_deref() {
            Some(label) => &mut entry["by_label"][label],
            None => &mut entry["unlabelled"],
        };
        *slot = json!(slot.as_i64().unwrap_or(0) + count);
    }
    datasets
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct QueueQuery {
    limit: Option<String>,
}

/// `GET /v1/datasets/{name}/labelling-queue[?limit=]`: the dataset's unlabelled items, most
/// informative first (captured inputs the model was least sure of, then the newest). Label one
/// with `PATCH /v1/media/{id}`, or by feedback on the prediction it was captured from.
#[utoipa::path(get, path = "/v1/datasets/{name}/labelling-queue", tag = "ingest", security(("bearer" = ["ingest"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The dataset's name."), ("limit" = Option<i64>, Query, description = "At most this many, 1 to 500 (default 50).")),
    responses((status = 200, description = "`{\"dataset\", \"unlabelled\", \"items\": [...]}`", body = Object),
        (status = 400, description = "A malformed dataset name or query.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No dataset of this name.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(dataset = %name))]
pub(super) async fn labelling_queue(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<QueueQuery>,
) -> Result<Json<Value>, IngestError> {
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let name = parse_dataset(&name)?;
    // Outside 1-500 is 400, as every list answers (it was clamped silently).
    let limit = Page::parse(query.limit.as_deref(), None, 50, 500)?.limit;
    let queue = store::labelling_queue(&ctx, &name, limit)
        .await?
        .ok_or_else(|| IngestError::NotFound(format!("dataset named {name}")))?;
    let items: Vec<Value> = queue
        .items
        .iter()
        .map(|item| {
            json!({
                "id": item.id, "kind": item.kind,
                "status": item.status, "source": item.source,
                "captured_from": item.captured_from,
                "capture": item.metadata.get("capture").cloned(),
                "created_at": rfc3339(Some(item.created_at)),
            })
        })
        .collect();
    Ok(Json(json!({"dataset": name.as_str(), "unlabelled": queue.unlabelled, "items": items})))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct MediaQuery {
    status: Option<String>,
    label: Option<String>,
    unlabelled: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/datasets/{name}/media`: a page of the dataset's items, newest first.
#[utoipa::path(get, path = "/v1/datasets/{name}/media", tag = "ingest", security(("bearer" = ["ingest"]), ("bearer" = ["train"])),
    params(("name" = String, Path, description = "The dataset's name."),
        ("status" = Option<String>, Query, description = "Only items with this status: `accepted`, `processing`, `processed` or `failed`."),
        ("label" = Option<String>, Query, description = "Only items with this label."),
        ("unlabelled" = Option<bool>, Query, description = "`true`: only items without a label."),
        ("before" = Option<String>, Query, description = "The next page: items older than this media id (the previous answer's `next_before`)."),
        ("limit" = Option<i64>, Query, description = "At most this many, 1 to 200 (default 60).")),
    responses((status = 200, description = "`{\"dataset\", \"items\": [{\"id\", \"kind\", \"content_type\", \"status\", \"label\", \"error\", \"width\", \"height\", \"bytes\", \"outputs\", \"created_at\"}], \"next_before\"}`; `next_before` is null on the last page.", body = Object),
        (status = 400, description = "A malformed dataset name or query.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No dataset of this name.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(dataset = %name))]
pub(super) async fn list_media(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<MediaQuery>,
) -> Result<Json<Value>, IngestError> {
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let name = parse_dataset(&name)?;
    let bad = |field: &'static str, message: &str| IngestError::BadField { field, message: message.to_owned() };
    let status = query
        .status
        .as_deref()
        .map(|s| {
            s.parse::<MediaStatus>().map_err(|_| bad("status", "must be accepted, processing, processed or failed"))
        })
        .transpose()?;
    let label = query
        .label
        .as_deref()
        .map(|l| Label::parse(l).map_err(|e| IngestError::BadField { field: "label", message: e.0 }))
        .transpose()?;
    let unlabelled = match query.unlabelled.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad("unlabelled", "must be true or false")),
    };
    if unlabelled && label.is_some() {
        return Err(bad("unlabelled", "cannot be combined with label"));
    }
    let page = Page::parse(query.limit.as_deref(), query.before.as_deref(), 60, 200)?;
    let filter = store::MediaFilter { status, label, unlabelled, before: page.before };
    let items = store::dataset_media(&ctx, &name, &filter, page.limit)
        .await?
        .ok_or_else(|| IngestError::NotFound(format!("dataset named {name}")))?;
    let next_before = (items.len() as i64 == page.limit).then(|| items.last().map(|m| m.id)).flatten();
    let items: Vec<Value> = items
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "kind": m.kind, "content_type": m.content_type, "status": m.status,
                "label": m.label, "error": m.error, "width": m.width, "height": m.height,
                "bytes": m.bytes, "outputs": m.outputs, "created_at": rfc3339(Some(m.created_at)),
            })
        })
        .collect();
    Ok(Json(json!({"dataset": name.as_str(), "items": items, "next_before": next_before})))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    bucket: Option<String>,
    #[serde(default)]
    prefix: String,
}

/// Imports objects already in S3, laid out as `prefix/<label>/<file>`.
#[utoipa::path(post, path = "/v1/datasets/{name}/imports", tag = "ingest", security(("bearer" = ["ingest"])), params(("name" = String, Path, description = "The dataset's name.")),
    request_body(content = Object, description = "`{\"bucket\"?, \"prefix\"}` (bucket: Sluice's own by default).", content_type = "application/json"),
    responses((status = 202, description = "`{\"id\", \"status\": \"queued\", \"dataset\", \"bucket\", \"prefix\"}`", body = Object),
        (status = 400, description = "A malformed dataset name, body, bucket or prefix.", body = sluice_core::api_doc::ErrorBody),
        (status = 403, description = "The bucket is not one imports may read (`ingest.import_buckets`).", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "The bucket does not exist or is not readable.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(dataset = %name, import_id = tracing::field::Empty))]
pub(super) async fn post_import(
    State(ctx): State<Context>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), IngestError> {
    caller.require(Scope::Ingest)?;
    let dataset = parse_dataset(&name)?;
    let bytes = sluice_core::http::read_body(body, MAX_METADATA_BYTES).await.map_err(ApiError::from)?;
    let request: ImportRequest = serde_json::from_slice(&bytes)
        .map_err(|e| IngestError::BadRequest(format!("send {{\"bucket\": \"...\", \"prefix\": \"...\"}} ({e})")))?;
    let bucket = request.bucket.unwrap_or_else(|| ctx.config.s3.bucket.clone());
    if !sluice_core::s3::is_valid_bucket_name(&bucket) {
        return Err(IngestError::BadField { field: "bucket", message: "is not a valid S3 bucket name".into() });
    }
    if request.prefix.len() > 1024 || request.prefix.chars().any(char::is_control) {
        return Err(IngestError::BadField {
            field: "prefix",
            message: "at most 1024 bytes, no control characters".into(),
        });
    }
    let own = ctx.config.s3.bucket.as_str();
    if bucket != own && !ctx.config.ingest.import_buckets.iter().any(|b| b == &bucket) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bucket_not_allowed",
            format!(
                "Imports may read from {own} and the buckets listed in ingest.import_buckets; {bucket} is not one."
            ),
        )
        .into());
    }
    let prefix = crate::imports::normalize_prefix(&request.prefix);
    if bucket == own
        && let Some(area) = sluice_core::s3::own_area_overlap(&prefix)
    {
        return Err(IngestError::BadField {
            field: "prefix",
            message: format!("must not overlap Sluice's own objects ({area} in its bucket); upload to another prefix"),
        });
    }
    if let Err(err) = sluice_core::s3::check_bucket(&ctx.s3, &bucket).await {
        let why = match err.code() {
            Some("NotFound" | "NoSuchBucket") => "was not found",
            Some("Forbidden" | "AccessDenied") => "is not readable with Sluice's credentials",
            _ => return Err(IngestError::Storage(err)),
        };
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unusable_bucket",
            format!("Bucket {bucket} {why}."),
        )
        .into());
    }
    let id = crate::imports::create(&ctx, &dataset, &bucket, &request.prefix).await?;
    tracing::Span::current().record("import_id", tracing::field::display(id));
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": ImportStatus::Queued, "dataset": dataset, "bucket": bucket, "prefix": prefix})),
    ))
}

/// An import's progress: accepted, duplicate and rejected objects.
#[utoipa::path(get, path = "/v1/imports/{id}", tag = "ingest", security(("bearer" = ["ingest"])),
    params(("id" = String, Path, description = "The import's id (a UUID).")),
    responses((status = 200, description = "The import.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No import has this id.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(import_id = %id))]
pub(super) async fn get_import(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, IngestError> {
    caller.require_any(&[Scope::Ingest])?;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "Import ids are UUIDs."))?;
    let status = crate::imports::status_json(&ctx, id)
        .await?
        .ok_or_else(|| IngestError::NotFound(format!("import with id {id}")))?;
    Ok(Json(status))
}
