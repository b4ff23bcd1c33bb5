//! Trainer: a coordinator fans trials out on `training.trials`; workers train and report on
//! `training.results`; the best model is registered.
//!
//! The coordinator and workers land with the training issue (#6); today this crate contributes
//! no routes or workers beyond the shared ops endpoints.

use axum::Router;
use sluice_core::Context;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "trainer";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(_ctx: Context) -> Router {
    Router::new()
}
