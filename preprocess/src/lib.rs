//! Preprocess: a Kafka consumer group over `media.ingested` that turns accepted media into
//! training-ready data.
//!
//! Each worker ([`worker`]) fetches the raw object, resizes images ([`imaging`]) or samples video
//! frames with ffmpeg ([`video`]) according to the dataset's pipeline spec, writes the outputs to
//! S3, records them in PostgreSQL and announces `media.processed` through the outbox. Undecodable
//! media end `failed` with a reason and a `media.dlq` event. A reconciler re-enqueues items stuck
//! in `accepted` or `processing` whose event was lost, telling them from items merely queued in
//! a Kafka backlog by the event's recorded offset and the group's committed offset.
//! Routes: `PUT/GET /v1/datasets/{name}/pipeline`, `POST /v1/datasets/{name}/reprocess`,
//! failing with [`error::PreprocessError`]. Every PostgreSQL statement is in [`store`].

/// Decoding and resizing live in `sluice-media`, shared with inference.
pub use sluice_media::imaging;
pub mod error;
mod routes;
pub mod store;
pub mod video;
pub mod worker;

use std::time::Duration;

use sluice_core::{Context, Shutdown};
use tokio::task::JoinHandle;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "preprocess";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(ctx: Context) -> utoipa_axum::router::OpenApiRouter {
    describe_metrics();
    routes::router(ctx)
}

/// The worker and the reconciler (`media.processed` and `media.dlq` leave through the
/// process's outbox relay, started by the application).
pub fn spawn_workers(ctx: &Context, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(worker::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(reconciler(ctx.clone(), shutdown.clone())),
    ]
}

async fn reconciler(ctx: Context, shutdown: Shutdown) {
    let after = ctx.config.preprocess.reconcile_after_secs;
    let every = Duration::from_secs((after / 4).clamp(1, 60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        match store::reconcile(&ctx, after as f64).await {
            Ok(found) => {
                metrics::gauge!("sluice_preprocess_overdue_queued").set(found.queued as f64);
                if found.reenqueued > 0 {
                    metrics::counter!("sluice_preprocess_reenqueued_total").increment(found.reenqueued);
                    tracing::info!(
                        items = found.reenqueued,
                        still_queued = found.queued,
                        "re-enqueued media whose events were lost"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "reconciler failed"),
        }
    }
}

fn describe_metrics() {
    // Series exist from start-up, so rates and alerts see the first event of each kind.
    for (kind, reason) in
        [("image", "undecodable_media"), ("video", "undecodable_media"), ("unknown", "undecodable_event")]
    {
        metrics::counter!("sluice_preprocess_failed_total", "kind" => kind, "reason" => reason).increment(0);
    }
    metrics::counter!("sluice_preprocess_retries_total").increment(0);
    metrics::counter!("sluice_preprocess_reenqueued_total").increment(0);
    metrics::counter!("sluice_preprocess_frames_extracted_total").increment(0);
    metrics::describe_counter!("sluice_preprocess_processed_total", "Media items processed, by kind.");
    metrics::describe_counter!(
        "sluice_preprocess_failed_total",
        "Media items that failed for good, by kind and reason."
    );
    metrics::describe_counter!(
        "sluice_preprocess_retries_total",
        "Transient failures retried (S3 or PostgreSQL away)."
    );
    metrics::describe_counter!("sluice_preprocess_frames_extracted_total", "Video frames extracted.");
    metrics::describe_counter!(
        "sluice_preprocess_reenqueued_total",
        "Items re-enqueued by the reconciler because their media.ingested event was lost."
    );
    metrics::describe_gauge!(
        "sluice_preprocess_overdue_queued",
        "Items past the reconcile deadline whose event is still queued (outbox or Kafka backlog)."
    );
    metrics::describe_histogram!(
        "sluice_preprocess_stage_duration_seconds",
        metrics::Unit::Seconds,
        "Time per I/O stage of one item (fetch, store)."
    );
    sluice_media::describe_metrics();
    metrics::describe_histogram!(
        "sluice_preprocess_item_duration_seconds",
        metrics::Unit::Seconds,
        "Time to process one item end to end, by kind."
    );
}
