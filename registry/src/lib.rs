//! Registry: model versions (safetensors in S3, metadata and lineage in PostgreSQL) and movable
//! aliases, announced on `models.events`.
//!
//! The routes land with the training and registry issue (#6); today this crate contributes no
//! routes beyond the shared ops endpoints.

use axum::Router;
use sluice_core::Context;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "registry";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(_ctx: Context) -> Router {
    Router::new()
}
