//! Reading an upload request: the query string, a raw body or a `multipart/form-data` form, its
//! text parts and its files. Files go to an [`upload::Sink`]; nothing here touches PostgreSQL,
//! so the whole path is fuzzed in memory (`fuzz/fuzz_targets/upload_form.rs`).

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use serde_json::Value;
use sluice_core::domain::{DatasetName, Label};
use sluice_core::http::ApiError;

use crate::{
    error::IngestError,
    upload::{self, Sink, Stored},
};

/// Largest `metadata` part (and JSON request body) accepted, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Bytes a multipart upload may hold beyond its files (boundaries, part headers, text parts),
/// as the route's body limit allows (`routes::mod`).
pub const FRAMING_ALLOWANCE: u64 = 1024 * 1024;
/// Longest `source` accepted, in characters.
pub const MAX_SOURCE_CHARS: usize = 512;
/// The text parts an upload may carry, each before the files it applies to.
const TEXT_PARTS: [&str; 4] = ["dataset", "label", "metadata", "source"];

/// Fields shared by every file of one request.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    pub dataset: DatasetName,
    pub label: Option<Label>,
    pub source: Option<String>,
    pub metadata: Option<Value>,
}

/// What one request may cost.
#[derive(Debug, Clone, Copy)]
pub struct FormLimits {
    /// `max_bytes` bounds the files' bytes together.
    pub upload: upload::Limits,
    /// `file` parts per request.
    pub max_parts: usize,
}

/// Reads `request` (its query, then its body), storing each file through `sink` into `files`.
/// On an error the files already stored are left in `files` for the caller to discard.
pub async fn read<K: Sink>(
    sink: &K,
    request: Request,
    limits: FormLimits,
    files: &mut Vec<Stored>,
) -> Result<Fields, IngestError> {
    let (content_type, mut fields) = check_request(&request, limits.upload.max_bytes)?;
    if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        // Bounds what the parser buffers outside part data (a header block that never ends).
        let (request, framing) =
            sluice_core::multipart::guard(request).map_err(|m| IngestError::BadRequest(m.into()))?;
        let mut multipart =
            Multipart::from_request(request, &()).await.map_err(|e| IngestError::BadRequest(e.body_text()))?;
        read_multipart(sink, &mut multipart, &mut fields, files, limits).await.map_err(|err| {
            if framing.tripped() {
                IngestError::BadRequest(sluice_core::multipart::FRAMING_MESSAGE.into())
            } else {
                err
            }
        })?;
    } else {
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let body = request.into_body().into_data_stream();
        files.push(upload::store(sink, limits.upload, &fields.dataset, Some(&essence), body).await?);
    }
    if files.is_empty() {
        return Err(IngestError::BadRequest("the multipart body has no `file` part".into()));
    }
    Ok(fields)
}

/// Checks what can be checked before reading the body: declared length, content type, query.
fn check_request(request: &Request, limit: u64) -> Result<(String, Fields), IngestError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| IngestError::BadRequest("Content-Type is not ASCII".into())))
        .transpose()?
        .unwrap_or_default();
    let lower = content_type.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or_default().trim();
    let multipart = essence == "multipart/form-data";
    if !(multipart
        || essence.starts_with("image/")
        || essence.starts_with("video/")
        || essence == "application/octet-stream")
    {
        return Err(IngestError::Refused(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the file as the body with Content-Type image/*, video/* or application/octet-stream, or as multipart/form-data.",
        )));
    }
    // A multipart body holds its files' bytes plus the framing around them (boundaries, part
    // headers, text parts), for which the body limit allows another MiB.
    let allowed = if multipart { limit.saturating_add(FRAMING_ALLOWANCE) } else { limit };
    let declared_length =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > allowed) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut fields = Fields::default();
    parse_query(request.uri().query().unwrap_or_default(), &mut fields)?;
    Ok((content_type, fields))
}

async fn read_multipart<K: Sink>(
    sink: &K,
    multipart: &mut Multipart,
    fields: &mut Fields,
    files: &mut Vec<Stored>,
    limits: FormLimits,
) -> Result<(), IngestError> {
    let limit = limits.upload.max_bytes;
    let max_parts = limits.max_parts;
    let mut used: u64 = 0;
    let mut parts = 0usize;
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::TooLarge { limit }
        } else {
            IngestError::BadRequest(e.body_text())
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        parts += 1;
        // Files, plus at most one of each text part; anything past that is a part flood.
        if parts > max_parts + TEXT_PARTS.len() || (field.name() == Some("file") && files.len() >= max_parts) {
            return Err(IngestError::TooManyParts { max: max_parts });
        }
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let declared = field.content_type().map(str::to_owned);
                let budget = upload::Limits { max_bytes: limit.saturating_sub(used), ..limits.upload };
                let file = upload::store(sink, budget, &fields.dataset, declared.as_deref(), Box::pin(field))
                    .await
                    .map_err(|err| match err {
                        IngestError::Empty => {
                            IngestError::BadField { field: "file", message: "a file part is empty (zero bytes)".into() }
                        }
                        IngestError::TooLarge { .. } => IngestError::TooLarge { limit },
                        other => other,
                    })?;
                used += file.bytes as u64;
                files.push(file);
            }
            text if TEXT_PARTS.contains(&text) => {
                if !files.is_empty() {
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
                set_field(fields, &name, text)?;
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

fn set_field(common: &mut Fields, name: &str, value: &str) -> Result<(), IngestError> {
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
fn parse_query(query: &str, common: &mut Fields) -> Result<(), IngestError> {
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
