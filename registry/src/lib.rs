//! Registry: model versions (safetensors in S3, metadata and lineage in PostgreSQL) and movable
//! aliases, announced on `models.events`.
//!
//! The trainer registers versions through `sluice_core::models::register`; this crate serves them
//! over HTTP ([`routes`]: `/v1/models/...`) and moves aliases for people (promote, roll back,
//! delete), each move audited in `alias_history` and published through the outbox. A registry
//! process runs its own outbox relay, so `sluice serve registry` alone publishes every move.
//! Every statement is in `store` or `sluice_core::models`; handlers fail with one error enum
//! (`error::RegistryServiceError`) that becomes the HTTP answer.

mod error;
mod routes;
mod store;

use sluice_core::{Context, Shutdown};
use tokio::task::JoinHandle;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "registry";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(ctx: Context) -> utoipa_axum::router::OpenApiRouter {
    metrics::describe_counter!(
        "sluice_registry_alias_moves_total",
        "Alias moves and deletions recorded (no-op moves are not counted), by kind (production, other)."
    );
    // Series exist from start-up, so rates and alerts see the first move.
    for kind in ["production", "other"] {
        metrics::counter!("sluice_registry_alias_moves_total", "kind" => kind).increment(0);
    }
    routes::router(ctx)
}

/// No workers of its own: alias moves reach `models.events` through the process's outbox relay,
/// which the application starts once for every service.
pub fn spawn_workers(_ctx: &Context, _shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    Vec::new()
}
