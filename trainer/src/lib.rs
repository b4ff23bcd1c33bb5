//! Trainer: distributed hyper-parameter search over Kafka.
//!
//! `POST /v1/training-jobs` ([`jobs`]) freezes the dataset into a snapshot, expands the search
//! space into trials ([`search`]) and queues them on `training.trials` through the outbox.
//! Workers ([`worker`], group `trainer`) train one trial at a time with `sluice-nn`, checkpoint
//! every epoch to S3, score their model (and the production version a job compares with) on the
//! job's test split, and report on `training.results`. The coordinator ([`coordinator`]) records
//! every result in PostgreSQL, runs the search's later rungs, and registers the best model in the
//! registry tables, applying the job's promotion policy from what the workers reported: only
//! workers load snapshots. [`retrain`] turns `retrain.requests` into jobs from the model's last
//! template.
//!
//! Data flows one way: snapshots are frozen from preprocess's tables through
//! `sluice_core::processed`, the registry's tables are written through `sluice_core::models`,
//! and every statement on the trainer's own tables is in [`store`]. HTTP handlers answer with
//! [`error::TrainerError`].

pub mod coordinator;
pub mod error;
pub mod evaluation;
pub mod jobs;
pub mod retrain;
mod routes;
pub mod search;
pub mod snapshot;
pub mod store;
pub mod worker;

use sluice_core::{Context, Shutdown};
use tokio::task::JoinHandle;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "trainer";

/// This service's HTTP routes, merged with the ops endpoints by the `sluice` binary.
pub fn router(ctx: Context) -> utoipa_axum::router::OpenApiRouter {
    describe_metrics();
    routes::router(ctx)
}

/// A trainer worker, the coordinator and the retrain consumer (trials and model events leave
/// through the process's outbox relay, started by the application). Several trainer processes share trials through the `trainer` group.
pub fn spawn_workers(ctx: &Context, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(worker::run(ctx.clone(), shutdown.clone(), snapshot::Cache::default())),
        tokio::spawn(coordinator::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(retrain::run(ctx.clone(), shutdown.clone())),
    ]
}

fn describe_metrics() {
    // Series exist from start-up, so rates and alerts see the first event of each kind.
    metrics::counter!("sluice_trainer_jobs_started_total").increment(0);
    for status in ["succeeded", "failed", "cancelled"] {
        metrics::counter!("sluice_trainer_jobs_finished_total", "status" => status).increment(0);
        metrics::counter!("sluice_trainer_trials_total", "outcome" => status).increment(0);
    }
    metrics::counter!("sluice_trainer_trials_resumed_total").increment(0);
    metrics::counter!("sluice_trainer_retrain_jobs_total").increment(0);
    metrics::counter!("sluice_trainer_trials_parked_total").increment(0);
    metrics::counter!("sluice_trainer_steps_parked_total").increment(0);
    for source in ["memory", "s3"] {
        metrics::counter!("sluice_trainer_snapshot_loads_total", "source" => source).increment(0);
    }
    metrics::describe_counter!("sluice_trainer_jobs_started_total", "Training jobs queued.");
    metrics::describe_counter!("sluice_trainer_jobs_finished_total", "Training jobs ended, by status.");
    metrics::describe_counter!("sluice_trainer_trials_total", "Trials ended on this worker, by outcome.");
    metrics::describe_counter!("sluice_trainer_trials_resumed_total", "Trials resumed from an epoch checkpoint.");
    metrics::describe_counter!("sluice_trainer_retrain_jobs_total", "Jobs started by retrain requests.");
    metrics::describe_counter!(
        "sluice_trainer_trials_parked_total",
        "Trials failed without running again after trainer.max_trial_attempts deliveries started them."
    );
    metrics::describe_counter!(
        "sluice_trainer_steps_parked_total",
        "Jobs failed because the coordinator's next step failed trainer.max_step_attempts times."
    );
    metrics::describe_counter!("sluice_trainer_snapshot_loads_total", "Snapshot loads, by source (memory or s3).");
    metrics::describe_histogram!(
        "sluice_trainer_epoch_duration_seconds",
        metrics::Unit::Seconds,
        "Time to train and validate one epoch."
    );
    metrics::describe_histogram!(
        "sluice_trainer_trial_duration_seconds",
        metrics::Unit::Seconds,
        "Time from taking a trial to publishing its result."
    );
}
