//! Uploading, reading and relabelling media.

use std::time::Instant;

use axum::{
    Json,
    body::Body,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use sluice_core::{Context, auth::Scope, domain::Label, http::Caller};

use super::parse_id;
use crate::{
    error::IngestError,
    form::{self, FormLimits, MAX_METADATA_BYTES},
    store::{self, NewMedia},
    upload,
};

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
    // A refused body is drained by the listener's lingering close (`http::with_limits`).
    let limits = FormLimits {
        upload: upload::Limits::from_config(&ctx.config, ctx.config.http.max_body_bytes),
        max_parts: ctx.config.http.max_parts,
    };
    let mut stored = Vec::new();
    let fields = match form::read(&upload::S3(ctx), request, limits, &mut stored).await {
        Ok(fields) => fields,
        Err(err) => {
            let keys: Vec<String> = stored.iter().map(|s| s.key.clone()).collect();
            upload::discard(ctx, &keys).await;
            return Err(err);
        }
    };
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
            Err(err)
        }
    }
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
