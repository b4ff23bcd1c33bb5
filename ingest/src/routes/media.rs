//! Uploading, reading and relabelling media.

use std::time::Instant;

use axum::{
    Json,
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    domain::Label,
    http::{ApiError, Caller},
    s3,
};

use super::{parse_id, rfc3339};
use crate::{
    error::IngestError,
    form::{self, FormLimits, MAX_METADATA_BYTES},
    store::{self, NewMedia},
    upload,
};

/// A media file's bytes (JPEG, PNG, WebP, GIF, BMP, TIFF; MP4, MOV, WebM, MKV, AVI).
#[derive(Debug, utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct MediaBytes(Vec<u8>);

/// Several files in one upload, with their dataset, label and metadata.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// One or more files.
    file: Vec<MediaBytes>,
    /// The dataset (default `default`).
    dataset: Option<String>,
    /// The files' label.
    label: Option<String>,
    /// A JSON object kept with every file.
    metadata: Option<String>,
}

/// Uploads media: a raw body (`Content-Type: image/*` or `video/*`, query `dataset`, `label`,
/// `source`) or `multipart/form-data` with `file` parts and optional `dataset`, `label`,
/// `metadata` (a JSON object) text parts. The type is sniffed from the bytes; the same bytes in
/// the same dataset are stored once (`duplicate: true`).
#[utoipa::path(post, path = "/v1/media", tag = "ingest", security(("bearer" = ["ingest"])),
    params(
        ("dataset" = Option<String>, Query, description = "The dataset (default `default`); raw bodies only."),
        ("label" = Option<String>, Query, description = "The items' label; raw bodies only."),
        ("source" = Option<String>, Query, description = "Where the file came from (kept as metadata); raw bodies only."),
    ),
    request_body(content((MediaBytes = "image/*"), (MediaBytes = "video/*"), (UploadForm = "multipart/form-data")),
        description = "The file's bytes, or a multipart form."),
    responses(
        (status = 202, description = "`{\"items\": [{\"id\", \"dataset\", \"label\", \"kind\", \"content_type\", \"bytes\", \"sha256\", \"status\": \"accepted\", \"duplicate\"}]}`", body = Object),
        (status = 400, description = "An empty upload, a malformed form, dataset, label or metadata.", body = sluice_core::api_doc::ErrorBody),
        (status = 413, description = "Over the size limit, or too many files in one request.", body = sluice_core::api_doc::ErrorBody),
        (status = 415, description = "Not a supported image or video, or a declared type the bytes contradict.", body = sluice_core::api_doc::ErrorBody),
        (status = 422, description = "Truncated or malformed media, or too many pixels.", body = sluice_core::api_doc::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(dataset = tracing::field::Empty, files = tracing::field::Empty))]
pub(super) async fn post_media(
    State(ctx): State<Context>,
    caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<Value>), IngestError> {
    let started = Instant::now();
    caller.require(Scope::Ingest)?;
    let items = ingest_request(&ctx, request).await.inspect_err(|err| {
        metrics::counter!("sluice_ingest_rejected_total", "reason" => err.reason()).increment(1);
    })?;
    metrics::histogram!("sluice_ingest_upload_duration_seconds").record(started.elapsed().as_secs_f64());
    for item in &items {
        let outcome = if item.duplicate { "duplicate" } else { "accepted" };
        metrics::counter!("sluice_ingest_uploads_total", "kind" => item.kind.clone(), "outcome" => outcome)
            .increment(1);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "items": items }))))
}

/// Files stored for a request whose form is still being read. If the request ends there (its
/// deadline passed, or its client left and the server dropped it), no error path runs: the
/// objects are deleted in the background when this is dropped, so a request answered 503 leaves
/// nothing behind either. Before any commit, no media row can refer to them.
struct Uncommitted<'a> {
    ctx: &'a Context,
    stored: Vec<upload::Stored>,
}

impl Drop for Uncommitted<'_> {
    fn drop(&mut self) {
        if self.stored.is_empty() {
            return;
        }
        let keys: Vec<String> = self.stored.iter().map(|s| s.key.clone()).collect();
        let ctx = self.ctx.clone();
        tracing::info!(files = keys.len(), "an upload ended before its commit; deleting what it stored");
        tokio::spawn(async move { upload::discard(&ctx, &keys).await });
    }
}

async fn ingest_request(ctx: &Context, request: Request) -> Result<Vec<store::Accepted>, IngestError> {
    // A refused body is drained by the listener's lingering close (`http::with_limits`).
    let limits = FormLimits {
        upload: upload::Limits::from_config(&ctx.config, ctx.config.http.max_body_bytes),
        max_parts: ctx.config.http.max_parts,
    };
    let mut pending = Uncommitted { ctx, stored: Vec::new() };
    let fields = match form::read(&upload::S3(ctx), request, limits, &mut pending.stored).await {
        Ok(fields) => fields,
        Err(err) => {
            let keys: Vec<String> = pending.stored.iter().map(|s| s.key.clone()).collect();
            upload::discard(ctx, &keys).await;
            pending.stored.clear();
            return Err(err);
        }
    };
    // From here the commit decides what is kept: a request dropped during it leaves its objects
    // to `discard_unrecorded`'s rule, applied by the orphan sweeper (a commit's outcome is not
    // known to a future that was dropped).
    let stored = std::mem::take(&mut pending.stored);
    let span = tracing::Span::current();
    span.record("dataset", tracing::field::display(&fields.dataset));
    span.record("files", stored.len());
    let keys: Vec<String> = stored.iter().map(|s| s.key.clone()).collect();
    let items = stored
        .into_iter()
        .map(|stored| NewMedia {
            stored,
            dataset: fields.dataset.clone(),
            label: fields.label.clone(),
            source: fields.source.clone(),
            metadata: fields.metadata.clone().unwrap_or_else(|| json!({})),
            import: None,
            captured_from: None,
        })
        .collect();
    match store::record(ctx, items).await {
        Ok((accepted, redundant)) => {
            upload::discard(ctx, &redundant).await;
            Ok(accepted)
        }
        Err(err) => {
            upload::discard_unrecorded(ctx, &keys).await;
            Err(err.into())
        }
    }
}

/// A media item: status, error, raw object and processed outputs.
#[utoipa::path(get, path = "/v1/media/{id}", tag = "ingest", security(("bearer" = ["ingest"]), ("bearer" = ["train"])), params(("id" = String, Path, description = "The media item's id (a UUID).")),
    responses((status = 200, description = "The item.", body = Object),
        (status = 400, description = "The id is not a UUID.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No media item has this id.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub(super) async fn get_media(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, IngestError> {
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let id = parse_id(&id)?;
    let media = store::media(&ctx, id).await?.ok_or_else(|| IngestError::NotFound(format!("media with id {id}")))?;
    Ok(Json(media_json(&media)))
}

/// Labels or relabels an item (`{"label": "..."}`, or `null` to clear it).
#[utoipa::path(patch, path = "/v1/media/{id}", tag = "ingest", security(("bearer" = ["ingest"])), params(("id" = String, Path, description = "The media item's id (a UUID).")),
    request_body(content = Object, description = "`{\"label\": \"...\" | null}`", content_type = "application/json"),
    responses((status = 200, description = "The item after the change.", body = Object),
        (status = 400, description = "The id is not a UUID, or the body is not `{\"label\": ...}` with a valid label.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No media item has this id.", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub(super) async fn patch_media(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, IngestError> {
    caller.require(Scope::Ingest)?;
    let id = parse_id(&id)?;
    let bytes = sluice_core::http::read_body(body, MAX_METADATA_BYTES).await.map_err(ApiError::from)?;
    let label = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) if map.len() == 1 && map.contains_key("label") => match &map["label"] {
            Value::Null => None,
            Value::String(text) => {
                Some(Label::parse(text).map_err(|e| IngestError::BadField { field: "label", message: e.0 })?)
            }
            _ => return Err(IngestError::BadField { field: "label", message: "must be a string or null".into() }),
        },
        _ => return Err(IngestError::BadRequest("send {\"label\": \"...\"}".into())),
    };
    let not_found = || IngestError::NotFound(format!("media with id {id}"));
    if !store::set_label(&ctx, id, label.as_ref()).await? {
        return Err(not_found());
    }
    let media = store::media(&ctx, id).await?.ok_or_else(not_found)?;
    Ok(Json(media_json(&media)))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ContentQuery {
    variant: Option<String>,
    output: Option<String>,
}

/// What `GET /v1/media/{id}/content` may send: only types Sluice itself sniffed or wrote, each
/// under a policy that runs nothing, so a hostile upload cannot become a page on this origin.
const CONTENT_POLICY: &str = "default-src 'none'; sandbox";

/// A media item's bytes: the raw upload, or one of its processed outputs (PNG).
#[utoipa::path(get, path = "/v1/media/{id}/content", tag = "ingest", security(("bearer" = ["ingest"]), ("bearer" = ["train"])),
    params(("id" = String, Path, description = "The media item's id (a UUID)."),
        ("variant" = Option<String>, Query, description = "`processed` (default): an output of the current pipeline spec, as PNG; `raw`: the uploaded bytes."),
        ("output" = Option<u32>, Query, description = "Which output, in frame order (default 0: the first; videos have one per extracted frame).")),
    responses((status = 200, description = "The bytes, streamed.", content((MediaBytes = "image/png"), (MediaBytes = "image/*"), (MediaBytes = "video/*"))),
        (status = 400, description = "The id is not a UUID, or a malformed variant or output.", body = sluice_core::api_doc::ErrorBody),
        (status = 404, description = "No media item has this id, or it has no such output (yet).", body = sluice_core::api_doc::ErrorBody)))]
#[tracing::instrument(skip_all, fields(media_id = %id))]
pub(super) async fn get_content(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ContentQuery>,
) -> Result<axum::response::Response, IngestError> {
    use axum::http::{HeaderValue, header};
    caller.require_any(&[Scope::Ingest, Scope::Train])?;
    let id = parse_id(&id)?;
    let raw = match query.variant.as_deref() {
        None | Some("processed") => false,
        Some("raw") => true,
        Some(_) => {
            return Err(IngestError::BadField { field: "variant", message: "must be `raw` or `processed`".into() });
        }
    };
    let index = match query.output.as_deref() {
        None => 0,
        Some(text) => text.parse::<usize>().map_err(|_| IngestError::BadField {
            field: "output",
            message: "must be a whole number (0 is the first output)".into(),
        })?,
    };
    let objects =
        store::media_objects(&ctx, id).await?.ok_or_else(|| IngestError::NotFound(format!("media with id {id}")))?;
    let (key, content_type) = if raw {
        (objects.raw_key, objects.content_type)
    } else {
        let key = objects.outputs.into_iter().nth(index).ok_or_else(|| {
            IngestError::NotFound(format!("output {index} of media {id} (it may not be processed yet)"))
        })?;
        (key, "image/png".to_owned())
    };
    let object = s3::get_stream(&ctx.s3, &ctx.config.s3.bucket, &key)
        .await
        .map_err(IngestError::Storage)?
        .ok_or_else(|| IngestError::NotFound(format!("stored bytes of media {id}")))?;
    let length = object.length;
    let mut response = axum::response::Response::new(Body::from_stream(object.into_chunks()));
    let headers = response.headers_mut();
    // Only the types ingest sniffed (image/*, video/*) or preprocess wrote (PNG) are ever sent.
    let content_type = HeaderValue::from_str(&content_type)
        .ok()
        .filter(|_| content_type.starts_with("image/") || content_type.starts_with("video/"))
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_POLICY));
    // An output's key names its spec, and raw bytes never change: browsers may keep them a while.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    Ok(response)
}

/// The body of `GET /v1/media/{id}`.
fn media_json(media: &store::Media) -> Value {
    let outputs: Vec<Value> = media
        .outputs
        .iter()
        .map(|o| {
            json!({
                "key": o.key, "width": o.width, "height": o.height,
                "frame_index": o.frame_index, "timestamp_ms": o.timestamp_ms,
            })
        })
        .collect();
    json!({
        "id": media.id,
        "dataset": media.dataset,
        "label": media.label,
        "kind": media.kind,
        "content_type": media.content_type,
        "status": media.status,
        "error": media.error,
        "raw": {"key": media.raw_key, "bytes": media.bytes, "sha256": media.sha256},
        "width": media.width,
        "height": media.height,
        "metadata": media.metadata,
        "source": media.source,
        "outputs": outputs,
        "created_at": rfc3339(Some(media.created_at)),
        "processed_at": rfc3339(media.processed_at),
    })
}
