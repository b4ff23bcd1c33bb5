//! Inference: serves model versions over HTTP, hot-swaps when aliases move, measures drift and
//! asks for retraining.
//!
//! Requests enter at `POST /v1/models/{name}/predict` ([`predict`]); the version is loaded on
//! first use and verified against its registered sha256 ([`serving`]); images are prepared with
//! the version's input spec by `sluice-media`, the same code preprocess used for its training
//! data, and scored through the version's micro-batcher ([`microbatch`]). Predictions are recorded
//! in PostgreSQL off the request path ([`recorder`], [`store`]) and feed the version's drift window
//! ([`drift`], [`monitor`]), whose verdicts and label-free accuracy estimate are exported as
//! metrics and at `GET /v1/models/{name}/drift`. Alias moves arrive on `models.events`
//! ([`follower`]); sustained drift or low live accuracy publishes `retrain.requests`.
//!
//! Batch predictions ([`batch_jobs`]) enter at `POST /v1/batch-predictions`, travel as
//! `predictions.batch` events through the outbox, and leave as JSON lines in S3.

pub mod batch_jobs;
pub mod drift;
pub mod error;
pub mod follower;
pub mod microbatch;
pub mod monitor;
pub mod predict;
pub mod recorder;
mod routes;
pub mod serving;
pub mod store;
pub mod v2;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use sluice_core::{Context, Shutdown};
use tokio::task::JoinHandle;

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "inference";

/// Shared by the routes and the workers of one process.
#[derive(Debug, Clone)]
pub struct AppState {
    pub served: Arc<serving::Served>,
    pub recorder: recorder::Recorder,
}

impl axum::extract::FromRef<AppState> for Context {
    fn from_ref(state: &AppState) -> Context {
        state.served.ctx.clone()
    }
}

/// The inference service of one process: its routes and the workers they rely on (the
/// prediction recorder and the `models.events` follower) share one state.
#[derive(Debug)]
pub struct Inference {
    state: AppState,
    writer: recorder::Writer,
}

impl Inference {
    /// The routes' state; nothing runs until [`Inference::spawn_workers`].
    pub fn new(ctx: Context) -> Self {
        describe_metrics();
        sluice_media::describe_metrics();
        let (recorder, writer) = recorder::Recorder::new();
        Self { state: AppState { served: serving::Served::new(ctx), recorder }, writer }
    }

    pub fn router(&self) -> Router {
        let max_predict_bytes = self.state.served.ctx.config.inference.max_predict_bytes;
        Router::new()
            .route(
                "/v1/models/{name}/predict",
                post(predict::predict)
                    .layer(DefaultBodyLimit::max(self.state.served.ctx.config.inference.max_predict_bytes)),
            )
            .route("/v1/models/{name}/drift", get(routes::drift))
            .route("/v1/models/{name}/routing", get(routes::get_routing).put(routes::put_routing))
            .route("/v1/models/{name}/capture", get(routes::get_capture).put(routes::put_capture))
            .route("/v1/feedback", post(routes::feedback))
            .route("/v2", get(v2::server_metadata))
            .route("/v2/health/live", get(v2::live))
            .route("/v2/health/ready", get(v2::ready))
            .route("/v2/models/{name}", get(v2::model_metadata))
            .route("/v2/models/{name}/versions/{version}", get(v2::model_metadata))
            .route("/v2/models/{name}/ready", get(v2::model_ready))
            .route("/v2/models/{name}/versions/{version}/ready", get(v2::model_ready))
            .route("/v2/models/{name}/infer", post(v2::infer).layer(DefaultBodyLimit::max(max_predict_bytes)))
            .route(
                "/v2/models/{name}/versions/{version}/infer",
                post(v2::infer).layer(DefaultBodyLimit::max(max_predict_bytes)),
            )
            .route("/v1/batch-predictions", post(batch_jobs::routes::create))
            .route("/v1/batch-predictions/{id}", get(batch_jobs::routes::show))
            .with_state(self.state.clone())
    }

    /// The follower, the batch-prediction worker, the drift monitor and the prediction writer
    /// (which, on shutdown, writes what it holds: the process stops it after its last request).
    pub fn spawn_workers(self, shutdown: &Shutdown) -> Vec<JoinHandle<()>> {
        let served = &self.state.served;
        let follower = tokio::spawn(follower::run(served.clone(), shutdown.clone()));
        let batch = tokio::spawn(batch_jobs::worker::run(served.clone(), shutdown.clone()));
        let monitor = tokio::spawn(monitor::run(served.clone(), shutdown.clone()));
        let writer = tokio::spawn(self.writer.run(served.ctx.clone(), shutdown.clone()));
        vec![follower, batch, monitor, writer]
    }
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    metrics::counter!("sluice_inference_records_dropped_total").increment(0);
    metrics::counter!("sluice_inference_batch_chunks_parked_total").increment(0);
    describe_counter!(
        "sluice_inference_requests_total",
        "Predict requests answered, by model, version, alias, status."
    );
    describe_histogram!(
        "sluice_inference_request_duration_seconds",
        Unit::Seconds,
        "Predict request time, end to end."
    );
    describe_histogram!(
        "sluice_inference_model_duration_seconds",
        Unit::Seconds,
        "Time to score one batch through the model."
    );
    describe_histogram!("sluice_inference_batch_size", "Images per scored batch (micro-batching).");
    describe_counter!("sluice_inference_predictions_total", "Predictions by predicted class.");
    describe_histogram!("sluice_inference_confidence", "Calibrated top-1 confidence of predictions.");
    describe_counter!("sluice_inference_errors_total", "Refused or failed predict requests, by reason.");
    describe_counter!("sluice_inference_model_loads_total", "Model version loads, by outcome (loaded, refused).");
    describe_counter!(
        "sluice_inference_model_evictions_total",
        "Loaded model versions dropped to keep inference.max_loaded_versions and max_loaded_bytes."
    );
    describe_gauge!("sluice_inference_served_version", "Version each served alias points at in this process.");
    describe_gauge!("sluice_inference_live_accuracy", "Accuracy over the latest feedback, per version.");
    describe_gauge!(
        "sluice_inference_expected_accuracy",
        "Mean calibrated confidence over the last drift window: accuracy estimated without labels."
    );
    describe_gauge!(
        "sluice_inference_drift_score",
        "|t| of each drift test of the last window (class:<label>, confidence, brightness, sharpness)."
    );
    describe_counter!("sluice_inference_drift_checks_total", "Drift checks run, by state and kind of shift.");
    describe_counter!(
        "sluice_inference_live_promotions_total",
        "if_better_live decisions, by outcome (promoted, rejected)."
    );
    describe_gauge!(
        "sluice_inference_shadow_agreement",
        "Share of the latest shadowed inputs on which the shadow and the answered version agree."
    );
    describe_gauge!(
        "sluice_inference_shadow_accuracy_difference",
        "Shadow accuracy minus answered accuracy on the latest shadowed inputs that got feedback."
    );
    describe_counter!(
        "sluice_inference_observations_total",
        "Requests' prediction statistics sent to the drift monitor, by outcome (published, dropped)."
    );
    describe_counter!(
        "sluice_inference_captures_total",
        "Served inputs kept by capture policies, by why (random, low_confidence, drift) and outcome (enqueued, dropped, failed)."
    );
    describe_gauge!("sluice_inference_drift_detected", "1 while the window's verdict is drift.");
    describe_counter!("sluice_inference_retrain_requests_total", "Retrain requests published, by reason.");
    describe_counter!(
        "sluice_inference_batch_items_total",
        "Batch-prediction items written, by model and outcome (predicted, missing, undecodable, parked)."
    );
    describe_counter!(
        "sluice_inference_batch_chunks_parked_total",
        "Batch-prediction chunks parked as failed after inference.batch_max_attempts attempts."
    );
    describe_counter!(
        "sluice_inference_records_dropped_total",
        "Prediction records dropped because PostgreSQL fell behind."
    );
}
