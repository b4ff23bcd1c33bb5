//! Ingest: media enters Sluice here.
//!
//! `POST /v1/media` streams each upload into S3 while hashing and validating it (type sniffed
//! from the bytes, image dimensions from the header, truncation checked at the end), then one
//! PostgreSQL transaction records the media row and a `media.ingested` outbox row. The relay
//! (`sluice_core::outbox`) publishes outbox rows to Kafka, so an accepted upload survives a broker outage.
//! Objects whose transaction failed are deleted at once or by the [`sweeper`]. Objects already in
//! S3 come in through resumable bulk [`imports`].
//!
//! Every SQL statement lives in a store module, [`store`] (datasets and media) or
//! [`imports::store`] (imports), whose functions return typed rows and
//! `sluice_core::db::DbError`; every handler answers with an [`error::IngestError`].

pub mod captures;
pub mod error;
pub mod form;
pub mod imports;
mod routes;
pub mod sniff;
pub mod store;
pub mod sweeper;
pub mod upload;

use sluice_core::{Context, Shutdown};
use tokio::task::JoinHandle;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "ingest";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(ctx: Context) -> utoipa_axum::router::OpenApiRouter {
    describe_metrics();
    routes::router(ctx)
}

/// The background work of an ingest process: bulk imports, the orphan sweeper and captured
/// served inputs (the process's
/// one outbox relay is started by the application).
pub fn spawn_workers(ctx: &Context, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(imports::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(sweeper::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(captures::run(ctx.clone(), shutdown.clone())),
    ]
}

fn describe_metrics() {
    metrics::describe_counter!(
        "sluice_ingest_uploads_total",
        "Files accepted, by kind and outcome (accepted, duplicate)."
    );
    metrics::describe_counter!("sluice_ingest_rejected_total", "Upload requests rejected, by reason.");
    metrics::describe_counter!("sluice_ingest_received_bytes_total", metrics::Unit::Bytes, "Bytes of media stored.");
    metrics::describe_histogram!(
        "sluice_ingest_upload_duration_seconds",
        metrics::Unit::Seconds,
        "Time to accept one upload request, from first byte to answer."
    );
    metrics::describe_counter!("sluice_ingest_orphans_removed_total", "Unreferenced raw objects and uploads removed.");
    metrics::describe_counter!(
        "sluice_ingest_import_objects_parked_total",
        "Import objects recorded as rejected (gave_up) after ingest.import_max_attempts attempts."
    );
    // Series exist from start-up, so rates and alerts see the first event.
    metrics::counter!("sluice_ingest_orphans_removed_total").increment(0);
    metrics::counter!("sluice_ingest_import_objects_parked_total").increment(0);
    metrics::describe_counter!(
        "sluice_ingest_captures_total",
        "Served inputs kept by capture policies, by outcome (stored, duplicate, refused, redelivered, missing)."
    );
}
