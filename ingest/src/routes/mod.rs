//! The ingest HTTP API: `POST/GET/PATCH /v1/media`, `GET /v1/datasets[/{name}]`, bulk imports.

mod datasets;
mod media;

use axum::{Router, http::StatusCode, routing::get};
use sluice_core::{Context, http::ApiError};
use uuid::Uuid;

/// Largest `metadata` part (and JSON request body) accepted, in bytes.
pub(crate) const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest `source` accepted, in characters.
pub(crate) const MAX_SOURCE_CHARS: usize = 512;

pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/media", axum::routing::post(media::post_media))
        .route("/v1/media/{id}", get(media::get_media).patch(media::patch_media))
        .route("/v1/datasets", get(datasets::list_datasets))
        .route("/v1/datasets/{name}", get(datasets::get_dataset))
        .route("/v1/datasets/{name}/imports", axum::routing::post(datasets::post_import))
        .route("/v1/imports/{id}", get(datasets::get_import))
        .with_state(ctx)
}

pub(crate) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "Media ids are UUIDs."))
}
