//! Preprocess: a Kafka consumer group over `media.ingested`.
//!
//! Workers resize images and extract video frames, write the outputs to S3 and record them in
//! PostgreSQL, then announce `media.processed`. The worker lands with the preprocess issue (#5);
//! today this crate contributes no routes or workers beyond the shared ops endpoints.

use axum::Router;
use sluice_core::Context;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "preprocess";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(_ctx: Context) -> Router {
    Router::new()
}
