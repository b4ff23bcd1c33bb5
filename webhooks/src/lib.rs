//! Webhooks: Sluice's events delivered to URLs an admin subscribed, signed, retried and recorded.
//!
//! Data enters from Kafka: the fan-out consumer ([`fanout`], group `webhooks.group_id`) reads
//! `models.events` (versions registered, aliases moved or removed) and `notifications` (drift
//! verdicts changed, training jobs finished, retrains skipped; enqueued through the outbox in the
//! transaction of each change, `sluice_core::notifications`), and writes one delivery row per
//! subscribed webhook. The delivery worker ([`delivery`]) claims due rows from PostgreSQL and
//! POSTs each event to its URL, signed with the webhook's secret ([`signature`]), only to
//! addresses the policy allows ([`address`]); it records every attempt and retries failures with
//! exponential backoff and jitter until `webhooks.max_attempts`. Admins manage webhooks and read
//! their delivery history over HTTP ([`routes`]: `/v1/webhooks`). Every statement is in
//! [`store`]; handlers fail with one error enum (`error::WebhooksError`).
//!
//! Delivery is at least once (a receiver deduplicates on `Sluice-Event-Id`) and unordered.

pub mod address;
mod delivery;
mod error;
mod fanout;
mod routes;
pub mod signature;
mod store;
pub mod subscription;

use std::sync::Arc;

use sluice_core::{Context, Shutdown};
use tokio::{sync::Notify, task::JoinHandle};

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "webhooks";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(ctx: Context) -> utoipa_axum::router::OpenApiRouter {
    describe_metrics();
    routes::router(ctx)
}

/// The fan-out consumer and the delivery worker; fan-out wakes the worker when it adds
/// deliveries, so an event this process reads is attempted at once.
pub fn spawn_workers(ctx: &Context, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    let wake = Arc::new(Notify::new());
    vec![
        tokio::spawn(fanout::run(ctx.clone(), shutdown.clone(), wake.clone())),
        tokio::spawn(delivery::run(ctx.clone(), shutdown.clone(), wake)),
    ]
}

fn describe_metrics() {
    metrics::describe_counter!(
        "sluice_webhooks_deliveries_created_total",
        "Deliveries created: one per event per webhook subscribed to its type."
    );
    metrics::describe_counter!(
        "sluice_webhooks_attempts_total",
        "Delivery attempts, by outcome (delivered, http_error, timeout, unreachable, address_refused)."
    );
    metrics::describe_counter!(
        "sluice_webhooks_deliveries_total",
        "Deliveries finished, by outcome (delivered, or failed after webhooks.max_attempts)."
    );
    metrics::describe_histogram!(
        "sluice_webhooks_attempt_duration_seconds",
        metrics::Unit::Seconds,
        "Time from sending a delivery to the receiver's answer (or the timeout)."
    );
    metrics::describe_gauge!("sluice_webhooks_pending", "Deliveries not yet delivered or failed.");
    // Series exist from start-up, so rates and alerts see the first event of each kind.
    metrics::counter!("sluice_webhooks_deliveries_created_total").increment(0);
    for outcome in ["delivered", "http_error", "timeout", "unreachable", "address_refused"] {
        metrics::counter!("sluice_webhooks_attempts_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["delivered", "failed"] {
        metrics::counter!("sluice_webhooks_deliveries_total", "outcome" => outcome).increment(0);
    }
}
