//! Uploading, reading and relabelling media.

use std::time::Instant;

use axum::{
    Json,
    body::Body,
    extract::{FromRequest, Multipart, Path, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    auth::Scope,
    domain::{DatasetName, Label},
    http::Caller,
};

use super::{MAX_METADATA_BYTES, MAX_SOURCE_CHARS, parse_id};
use crate::{
    error::IngestError,
    store::{self, NewMedia},
    upload,
};

/// Fields shared by every file of one request.
#[derive(Debug, Default)]
struct Common {
    dataset: DatasetName,
    label: Option<Label>,
    source: Option<String>,
    metadata: Option<Value>,
}

pub(super) async fn post_media(State(ctx): State<Context>, caller: Caller, request: Request) -> Response {
    let started = Instant::now();
    if let Err(err) = caller.require(Scope::Ingest) {
        return err.into_response();
    }
    match ingest_request(&ctx, request).await {
        Ok(items) => {
            metrics::histogram!("sluice_ingest_upload_duration_seconds").record(started.elapsed().as_secs_f64());
            for item in &items {
                let outcome = if item.duplicate { "duplicate" } else { "accepted" };
                metrics::counter!("sluice_ingest_uploads_total", "kind" => item.kind.clone(), "outcome" => outcome)
                    .increment(1);
            }
            (StatusCode::ACCEPTED, Json(json!({ "items": items }))).into_response()
        }
        Err(err) => {
            metrics::counter!("sluice_ingest_rejected_total", "reason" => err.reason()).increment(1);
            err.into_response()
        }
    }
}

async fn ingest_request(ctx: &Context, request: Request) -> Result<Vec<store::Accepted>, IngestError> {
    let limit = ctx.config.http.max_body_bytes;
    // A refused body is drained by the listener's lingering close (`http::with_limits`).
    let (content_type, mut common) = check_request(&request, limit)?;
    let mut stored = Vec::new();
    let result = if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        match Multipart::from_request(request, &()).await {
            Ok(mut multipart) => read_multipart(ctx, &mut multipart, &mut common, &mut stored, limit).await,
            Err(e) => Err(IngestError::BadRequest(e.body_text())),
        }
    } else {
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let body = request.into_body().into_data_stream();
        upload::store(ctx, &common.dataset, Some(&essence), body, limit).await.map(|s| stored.push(s))
    };
    if let Err(err) = result {
        let keys: Vec<String> = stored.iter().map(|s| s.key.clone()).collect();
        upload::discard(ctx, &keys).await;
        return Err(err);
    }
    if stored.is_empty() {
        return Err(IngestError::BadRequest("the multipart body has no `file` part".into()));
    }
    let keys: Vec<String> = stored.iter().map(|s| s.key.clone()).collect();
    let items = stored
        .into_iter()
        .map(|stored| NewMedia {
            stored,
            dataset: common.dataset.clone(),
            label: common.label.clone(),
            source: common.source.clone(),
            metadata: common.metadata.clone().unwrap_or_else(|| json!({})),
            import: None,
        })
        .collect();
    match store::record(ctx, items).await {
        Ok((accepted, redundant)) => {
            upload::discard(ctx, &redundant).await;
            Ok(accepted)
        }
        Err(err) => {
            upload::discard_unrecorded(ctx, &keys).await;
            Err(err)
        }
    }
}

/// Checks what can be checked before reading the body: declared length, content type, query.
fn check_request(request: &Request, limit: u64) -> Result<(String, Common), IngestError> {
    let declared_length =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limit) {
        return Err(IngestError::TooLarge { limit });
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| IngestError::BadRequest("Content-Type is not ASCII".into())))
        .transpose()?
        .unwrap_or_default();
    let lower = content_type.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or_default().trim();
    if !(essence == "multipart/form-data"
        || essence.starts_with("image/")
        || essence.starts_with("video/")
        || essence == "application/octet-stream")
    {
        return Err(IngestError::BadRequest(
            "send the file as the body with Content-Type image/*, video/* or application/octet-stream, or as multipart/form-data".into(),
        ));
    }
    let mut common = Common::default();
    parse_query(request.uri().query().unwrap_or_default(), &mut common)?;
    Ok((content_type, common))
}

async fn read_multipart(
    ctx: &Context,
    multipart: &mut Multipart,
    common: &mut Common,
    stored: &mut Vec<upload::Stored>,
    limit: u64,
) -> Result<(), IngestError> {
    let mut used: u64 = 0;
    let max_parts = ctx.config.http.max_parts;
    let mut parts = 0usize;
    while let Some(field) = multipart.next_field().await.map_err(|e| IngestError::BadRequest(e.body_text()))? {
        parts += 1;
        // Files, plus at most one of each text part; anything past that is a part flood.
        if parts > max_parts + TEXT_PARTS.len() || (field.name() == Some("file") && stored.len() >= max_parts) {
            return Err(IngestError::TooManyParts { max: max_parts });
        }
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let declared = field.content_type().map(str::to_owned);
                let budget = limit.saturating_sub(used);
                let file = upload::store(ctx, &common.dataset, declared.as_deref(), Box::pin(field), budget)
                    .await
                    .map_err(|err| match err {
                        IngestError::Empty => {
                            IngestError::BadField { field: "file", message: "a file part is empty (zero bytes)".into() }
                        }
                        IngestError::TooLarge { .. } => IngestError::TooLarge { limit },
                        other => other,
                    })?;
                used += file.bytes as u64;
                stored.push(file);
            }
            text if TEXT_PARTS.contains(&text) => {
                if !stored.is_empty() {
                    return Err(IngestError::BadRequest(format!(
                        "send the `{name}` part before the `file` parts it applies to"
                    )));
                }
                let bytes = read_bounded(field, MAX_METADATA_BYTES)
                    .await
                    .map_err(|message| IngestError::BadField { field: field_name(&name), message })?;
                let text = std::str::from_utf8(&bytes).map_err(|_| IngestError::BadField {
                    field: field_name(&name),
                    message: "must be UTF-8 text".into(),
                })?;
                set_field(common, &name, text)?;
            }
            other => {
                return Err(IngestError::BadRequest(format!(
                    "unknown part `{}`; expected file, dataset, label, metadata or source",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(())
}

/// The text parts an upload may carry, each before the files it applies to.
const TEXT_PARTS: [&str; 4] = ["dataset", "label", "metadata", "source"];

/// Reads a text part, refusing it as soon as it passes `max` bytes.
async fn read_bounded(mut field: axum::extract::multipart::Field<'_>, max: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| e.body_text())? {
        if bytes.len() + chunk.len() > max {
            return Err(format!("at most {max} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn field_name(name: &str) -> &'static str {
    match name {
        "dataset" => "dataset",
        "label" => "label",
        "metadata" => "metadata",
        _ => "source",
    }
}

fn set_field(common: &mut Common, name: &str, value: &str) -> Result<(), IngestError> {
    let bad = |field: &'static str, message: String| IngestError::BadField { field, message };
    match name {
        "dataset" => common.dataset = DatasetName::parse(value).map_err(|e| bad("dataset", e.0))?,
        "label" => common.label = Some(Label::parse(value).map_err(|e| bad("label", e.0))?),
        "source" => {
            if value.chars().count() > MAX_SOURCE_CHARS || value.chars().any(char::is_control) {
                return Err(bad("source", format!("at most {MAX_SOURCE_CHARS} characters, no control characters")));
            }
            common.source = Some(value.to_owned());
        }
        "metadata" => {
            if value.len() > MAX_METADATA_BYTES {
                return Err(bad("metadata", format!("at most {MAX_METADATA_BYTES} bytes")));
            }
            let parsed: Value =
                serde_json::from_str(value).map_err(|e| bad("metadata", format!("is not valid JSON ({e})")))?;
            if !parsed.is_object() {
                return Err(bad("metadata", "must be a JSON object".into()));
            }
            if parsed.to_string().contains("\\u0000") {
                return Err(bad("metadata", "must not contain NUL characters".into()));
            }
            common.metadata = Some(parsed);
        }
        other => {
            return Err(IngestError::BadRequest(format!(
                "unknown query parameter `{}`",
                other.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Strict `application/x-www-form-urlencoded` parsing: invalid UTF-8 is an error, not U+FFFD.
fn parse_query(query: &str, common: &mut Common) -> Result<(), IngestError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| IngestError::BadRequest("the query string is not valid UTF-8".into()))
        };
        let key = decode(raw_key)?;
        let value = decode(raw_value)?;
        set_field(common, &key, &value)?;
    }
    Ok(())
}

pub(super) async fn get_media(State(ctx): State<Context>, caller: Caller, Path(id): Path<String>) -> Response {
    if let Err(err) = caller.require_any(&[Scope::Ingest, Scope::Train]) {
        return err.into_response();
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    match store::media_json(&ctx, id).await {
        Ok(Some(media)) => Json(media).into_response(),
        Ok(None) => IngestError::NotFound(format!("media with id {id}")).into_response(),
        Err(err) => err.into_response(),
    }
}

pub(super) async fn patch_media(
    State(ctx): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    if let Err(err) = caller.require(Scope::Ingest) {
        return err.into_response();
    }
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let bytes = match axum::body::to_bytes(body, MAX_METADATA_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return IngestError::BadRequest("the body is too large for a label change".into()).into_response(),
    };
    let label = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) if map.len() == 1 && map.contains_key("label") => match &map["label"] {
            Value::Null => None,
            Value::String(text) => match Label::parse(text) {
                Ok(label) => Some(label),
                Err(e) => return IngestError::BadField { field: "label", message: e.0 }.into_response(),
            },
            _ => {
                return IngestError::BadField { field: "label", message: "must be a string or null".into() }
                    .into_response();
            }
        },
        _ => return IngestError::BadRequest("send {\"label\": \"...\"}".into()).into_response(),
    };
    match store::set_label(&ctx, id, label.as_ref()).await {
        Ok(true) => match store::media_json(&ctx, id).await {
            Ok(Some(media)) => Json(media).into_response(),
            Ok(None) => IngestError::NotFound(format!("media with id {id}")).into_response(),
            Err(err) => err.into_response(),
        },
        Ok(false) => IngestError::NotFound(format!("media with id {id}")).into_response(),
        Err(err) => err.into_response(),
    }
}
