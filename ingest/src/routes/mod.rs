//! The ingest HTTP API: `POST/GET/PATCH /v1/media`, `GET /v1/datasets[/{name}]`, bulk imports.

mod datasets;
mod media;

use axum::extract::DefaultBodyLimit;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_core::{Context, http::ApiError};
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouterExt},
    routes,
};
use uuid::Uuid;

pub fn router(ctx: Context) -> OpenApiRouter {
    // Uploads stream to S3 under `http.max_body_bytes` (counted on the files' bytes, so the
    // framework's limit leaves room for multipart framing), not the JSON routes' default limit.
    let files_limit = usize::try_from(ctx.config.http.max_body_bytes).unwrap_or(usize::MAX);
    let upload_limit = DefaultBodyLimit::max(files_limit.saturating_add(crate::form::FRAMING_ALLOWANCE as usize));
    OpenApiRouter::new()
        .routes(routes!(media::post_media).layer(upload_limit))
        .routes(routes!(media::get_media, media::patch_media))
        .routes(routes!(media::get_content))
        .routes(routes!(datasets::list_datasets))
        .routes(routes!(datasets::get_dataset))
        .routes(routes!(datasets::labelling_queue))
        .routes(routes!(datasets::list_media))
        .routes(routes!(datasets::post_import))
        .routes(routes!(datasets::get_import))
        .with_state(ctx)
}

pub(crate) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    sluice_core::http::path_id(raw, "Media")
}

/// A time as the API writes it (RFC 3339, milliseconds, `Z`), or `null`.
fn rfc3339(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}
