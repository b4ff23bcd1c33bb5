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

use axum::extract::DefaultBodyLimit;
use sluice_core::{Context, Shutdown};
use tokio::task::JoinHandle;
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouterExt},
    routes,
};

/// The service's name in `sluice serve <name>`, logs and metrics.
pub const NAME: &str = "inference";

/// Shared by the routes and the workers of one process.
#[derive(Debug, Clone)]
pub struct AppState {
    pub served: Arc<serving::Served>,
    pub recorder: recorder::Recorder,
    /// Shadow scorings in flight in this process ([`predict::SHADOWS_IN_FLIGHT`] at most): they
    /// outlive the request that started them, so they are bounded here, not by its deadline.
    pub shadows: Arc<tokio::sync::Semaphore>,
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
        let shadows = Arc::new(tokio::sync::Semaphore::new(predict::SHADOWS_IN_FLIGHT));
        Self { state: AppState { served: serving::Served::new(ctx), recorder, shadows }, writer }
    }

    /// Every route with its OpenAPI description (`utoipa_axum::routes!` registers both at once).
    pub fn router(&self) -> OpenApiRouter {
        api(self.state.served.ctx.config.inference.max_predict_bytes).with_state(self.state.clone())
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

/// The routes, stateless: predict and V2 infer take bodies up to `max_predict_bytes`, the others
/// the process-wide `http.max_request_bytes`. Each path is registered once, with all its methods.
fn api(max_predict_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(predict::predict).layer(DefaultBodyLimit::max(max_predict_bytes)))
        .routes(routes!(routes::drift))
        .routes(routes!(routes::drift_history))
        .routes(routes!(routes::recent_predictions))
        .routes(routes!(routes::get_routing, routes::put_routing))
        .routes(routes!(routes::get_capture, routes::put_capture))
        .routes(routes!(routes::feedback))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(v2::server_metadata))
                .routes(routes!(v2::live))
                .routes(routes!(v2::ready))
                .routes(routes!(v2::model_metadata))
                .routes(routes!(v2::version_metadata))
                .routes(routes!(v2::model_ready))
                .routes(routes!(v2::version_ready))
                .routes(routes!(v2::infer).layer(DefaultBodyLimit::max(max_predict_bytes)))
                .routes(routes!(v2::version_infer).layer(DefaultBodyLimit::max(max_predict_bytes)))
                .layer(axum::middleware::map_response(v2::protocol_errors)),
        )
        .routes(routes!(batch_jobs::routes::create))
        .routes(routes!(batch_jobs::routes::show))
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
    describe_counter!(
        "sluice_inference_shadow_skipped_total",
        "Requests not scored by their shadow alias because as many shadow scorings were already running."
    );
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
        "Batch-prediction items written, by model and outcome (predicted, missing, too_large, undecodable, parked)."
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is in the description, with the scopes that grant it (none for the V2 server
    /// metadata and health), and every operation is named once.
    #[test]
    fn every_route_is_described_with_its_scopes() {
        let spec = api(1024).into_openapi();
        let mut described = Vec::new();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in &spec.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                let Some(operation) = operation else { continue };
                let scopes: Vec<String> = operation
                    .security
                    .iter()
                    .flatten()
                    .map(|requirement| serde_json::to_value(requirement).expect("serialises"))
                    .flat_map(|value| value["bearer"].as_array().cloned().unwrap_or_default())
                    .filter_map(|scope| scope.as_str().map(str::to_owned))
                    .collect();
                assert!(ids.insert(operation.operation_id.clone()), "{method} {path}: a duplicate operation id");
                assert!(
                    operation.responses.responses.contains_key("200")
                        || operation.responses.responses.contains_key("202")
                );
                described.push(format!("{method} {path} {}", scopes.join("|")));
            }
        }
        described.sort();
        let expected = [
            "GET /v1/batch-predictions/{id} predict",
            "GET /v1/models/{name}/capture predict|train",
            "GET /v1/models/{name}/drift predict|train",
            "GET /v1/models/{name}/drift/history predict|train",
            "GET /v1/models/{name}/predictions predict|train",
            "GET /v1/models/{name}/routing predict|train",
            "GET /v2 ",
            "GET /v2/health/live ",
            "GET /v2/health/ready ",
            "GET /v2/models/{name} predict",
            "GET /v2/models/{name}/ready predict",
            "GET /v2/models/{name}/versions/{version} predict",
            "GET /v2/models/{name}/versions/{version}/ready predict",
            "POST /v1/batch-predictions predict",
            "POST /v1/feedback predict",
            "POST /v1/models/{name}/predict predict",
            "POST /v2/models/{name}/infer predict",
            "POST /v2/models/{name}/versions/{version}/infer predict",
            "PUT /v1/models/{name}/capture admin",
            "PUT /v1/models/{name}/routing admin",
        ];
        assert_eq!(described, expected);
    }
}
