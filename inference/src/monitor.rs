//! Live monitoring of served versions: every request's predictions feed its version's drift
//! window ([`crate::drift`]); each check exports the statistics, and sustained covariate shift
//! requests retraining. Feedback
//! (ground truth for a prediction id) updates the version's rolling live accuracy, which can
//! request retraining too.

use serde_json::json;
use sluice_core::config::InferenceConfig;

use crate::{AppState, drift::Observation, serving::Loaded};

/// Adds one request's predictions to its version's window; acts on the verdict when a check ran.
pub async fn observe(state: &AppState, loaded: &Loaded, request: &[Observation], config: &InferenceConfig) {
    let verdict = {
        let mut window = loaded.window.lock().expect("window lock");
        window.observe(request, config).cloned()
    };
    let Some(verdict) = verdict else { return };
    let model = loaded.version.model.to_string();
    let version = loaded.version.version.to_string();
    for statistic in &verdict.statistics {
        metrics::gauge!("sluice_inference_drift_score", "model" => model.clone(), "version" => version.clone(), "statistic" => statistic.name.clone())
            .set(statistic.t.abs().min(1e6));
    }
    metrics::gauge!("sluice_inference_drift_detected", "model" => model.clone(), "version" => version.clone())
        .set(if verdict.state == "drift" { 1.0 } else { 0.0 });
    metrics::counter!("sluice_inference_drift_checks_total", "model" => model.clone(), "state" => verdict.state, "kind" => verdict.kind)
        .increment(1);
    if let Some(expected) = verdict.expected_accuracy {
        metrics::gauge!("sluice_inference_expected_accuracy", "model" => model.clone(), "version" => version.clone())
            .set(expected);
    }
    let wanted = verdict.kind == "covariate_shift" || config.retrain_on_label_shift;
    if verdict.state == "drift" && wanted && verdict.consecutive >= config.drift_sustain_checks && config.retrain_on_drift {
        let evidence = json!({"version": loaded.version.version, "verdict": verdict});
        state.served.request_retrain(&model, "drift", evidence).await;
    }
}

/// Live accuracy of a version over its latest feedback: (accuracy, answers).
pub async fn live_accuracy(state: &AppState, model: &str, version: i32) -> Result<Option<(f64, i64)>, String> {
    let window = state.served.ctx.config.inference.live_accuracy_window;
    let client = state.served.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let row = client
        .query_one(
            "SELECT avg((feedback_label = label)::int)::float8, count(*) FROM (
                 SELECT label, feedback_label FROM predictions
                 WHERE model = $1 AND version = $2 AND feedback_at IS NOT NULL AND NOT shadow
                 ORDER BY feedback_at DESC LIMIT $3) recent",
            &[&model, &version, &window],
        )
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let answers: i64 = row.get(1);
    Ok(row.get::<_, Option<f64>>(0).map(|accuracy| (accuracy, answers)))
}

/// After feedback: export live accuracy and request retraining when it is too low.
pub async fn after_feedback(state: &AppState, model: &str, version: i32) {
    let config = &state.served.ctx.config.inference;
    match live_accuracy(state, model, version).await {
        Ok(Some((accuracy, answers))) => {
            metrics::gauge!("sluice_inference_live_accuracy", "model" => model.to_owned(), "version" => version.to_string())
                .set(accuracy);
            if config.retrain_on_drift
                && config.retrain_below_accuracy > 0.0
                && answers >= config.live_accuracy_min_feedback
                && accuracy < config.retrain_below_accuracy
            {
                let evidence = json!({"version": version, "live_accuracy": accuracy, "answers": answers,
                                      "threshold": config.retrain_below_accuracy});
                state.served.request_retrain(model, "live_accuracy", evidence).await;
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "cannot compute live accuracy"),
    }
}
