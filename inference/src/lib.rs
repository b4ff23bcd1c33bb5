//! Inference: serves a model alias over HTTP, hot-swaps on `models.events`, measures drift and
//! asks for retraining on `retrain.requests`.
//!
//! The routes land with the inference issue (#7); today this crate contributes no routes beyond
//! the shared ops endpoints.

use axum::Router;
use sluice_core::Context;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "inference";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(_ctx: Context) -> Router {
    Router::new()
}
