//! Ingest: media enters Sluice here.
//!
//! `POST /v1/media` validates uploads, writes raw bytes to S3, records a media row and an outbox
//! row in one PostgreSQL transaction, and a relay publishes `media.ingested`. The routes land with
//! the ingest issue (#4); today this crate contributes no routes beyond the shared ops endpoints.

use axum::Router;
use sluice_core::Context;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "ingest";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(_ctx: Context) -> Router {
    Router::new()
}
