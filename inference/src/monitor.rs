//! Live monitoring of served versions, cluster-wide.
//!
//! Every replica publishes each request's prediction statistics to `inference.observations`
//! (keyed by model; fire and forget, so predict never waits on Kafka). The monitor, a consumer
//! group run by every inference process, gives each model to one process: there is one drift
//! window ([`crate::drift`]) and one verdict per model version, however many replicas serve it.
//! After each check the verdict is written to PostgreSQL (`drift_verdicts`), where any replica
//! answers `GET /v1/models/{name}/drift` from, exported as metrics, and sustained covariate shift
//! requests retraining (through the outbox). A window being filled when its model moves to
//! another monitor (a rebalance, a restart) is lost; the consecutive-check count is not.
//!
//! Feedback (ground truth for a prediction id) updates the version's rolling live accuracy, which
//! can request retraining too.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::{Message, consumer::Consumer, producer::FutureRecord};
use serde_json::{Value, json};
use sluice_core::{
    Shutdown,
    events::Envelope,
    kafka, live,
    models::{self, ModelName},
    observations::{ObservedImage, RequestObserved},
    reference::{Reference, SKETCH_DIMENSIONS},
    topics::Topic,
    work::{self, Backoff},
};

use crate::{
    AppState,
    drift::{Observation, Verdict, Window},
    serving::{LoadedVersion, Served},
};

/// Publishes one request's predictions for the monitor. Never waits: a full producer queue drops
/// them (counted), which only thins the window.
pub fn publish(served: &Served, loaded: &LoadedVersion, observations: &[Observation]) {
    let event = Envelope::new(RequestObserved {
        model: loaded.version.model.to_string(),
        version: loaded.version.version,
        images: observations
            .iter()
            .map(|o| ObservedImage {
                class: o.class as u32,
                confidence: o.confidence as f32,
                brightness: o.brightness as f32,
                sharpness: o.sharpness as f32,
                embedding: o.embedding.map(|e| e.to_vec()).unwrap_or_default(),
            })
            .collect(),
    });
    let topic = served.ctx.topic(Topic::InferenceObservations);
    let payload = event.to_json();
    let key = loaded.version.model.to_string();
    let record = FutureRecord::to(topic.as_str()).key(&key).payload(&payload);
    let outcome = match served.ctx.producer.send_result(record) {
        Ok(_delivery) => "published",
        Err(_) => "dropped",
    };
    metrics::counter!("sluice_inference_observations_total", "outcome" => outcome).increment(1);
}

pub async fn run(served: Arc<Served>, shutdown: Shutdown) {
    kafka::keep_consuming("drift monitor", &shutdown, || consume(&served, &shutdown)).await;
}

async fn consume(served: &Arc<Served>, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let ctx = &served.ctx;
    let consumer = kafka::background_consumer(&ctx.config.kafka, &ctx.config.inference.monitor_group_id)?;
    consumer.subscribe(&[ctx.topic(Topic::InferenceObservations).as_str()])?;
    // The windows of the models this monitor holds (a fresh map after every reconnect).
    let windows = tokio::sync::Mutex::new(HashMap::<(String, i32), Window>::new());
    let windows = &windows;
    work::consume(&consumer, shutdown, 1, |message| async move {
        let event = match Envelope::<RequestObserved>::decode(message.payload().unwrap_or_default()) {
            Ok(event) => event.data,
            Err(err) => {
                tracing::warn!(error = %err, "undecodable observation; skipping it");
                return true;
            }
        };
        work::retry_until(shutdown, Backoff::DEPENDENCY, "the drift monitor cannot record a check", || async {
            observe(served, &mut *windows.lock().await, &event).await
        })
        .await
        .is_some()
    })
    .await
}

/// Feeds one request to its version's window; records and acts on the verdict when a check ran.
async fn observe(
    served: &Arc<Served>,
    windows: &mut HashMap<(String, i32), Window>,
    event: &RequestObserved,
) -> Result<(), String> {
    let config = &served.ctx.config.inference;
    let key = (event.model.clone(), event.version);
    if !windows.contains_key(&key) {
        let Some(window) = open_window(served, &event.model, event.version).await? else {
            return Ok(());
        };
        // Bounded like the model cache: a monitor holding many models forgets the idlest.
        if windows.len() >= MAX_WINDOWS {
            windows.clear();
        }
        windows.insert(key.clone(), window);
    }
    let window = windows.get_mut(&key).expect("inserted above");
    let observations: Vec<Observation> = event
        .images
        .iter()
        .map(|i| Observation {
            class: i.class as usize,
            confidence: f64::from(i.confidence),
            brightness: f64::from(i.brightness),
            sharpness: f64::from(i.sharpness),
            embedding: <[f32; SKETCH_DIMENSIONS]>::try_from(i.embedding.as_slice()).ok(),
        })
        .collect();
    let Some(verdict) = window.observe(&observations, config).cloned() else {
        return Ok(());
    };
    record(served, &event.model, event.version, &verdict).await?;
    export(&event.model, event.version, &verdict);
    let wanted = verdict.kind == "covariate_shift" || config.retrain_on_label_shift;
    if verdict.state == "drift"
        && wanted
        && verdict.consecutive >= config.drift_sustain_checks
        && config.retrain_on_drift
    {
        let evidence = json!({"version": event.version, "verdict": verdict});
        served.request_retrain(&event.model, "drift", evidence).await;
    }
    Ok(())
}

/// Most model versions one monitor keeps windows for.
const MAX_WINDOWS: usize = 4096;

/// A window for a registered version, continuing the check counts recorded for it; `None` when
/// the version does not exist.
async fn open_window(served: &Served, model: &str, version: i32) -> Result<Option<Window>, String> {
    let Ok(name) = ModelName::parse(model) else { return Ok(None) };
    let client = served.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let Some(record) = models::get_version(&client, &name, version).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let Ok(reference) = serde_json::from_value::<Reference>(record.reference.clone()) else {
        tracing::warn!(model, version, "the version has no usable drift reference; not monitored");
        return Ok(None);
    };
    let counts = client
        .query_opt(
            "SELECT consecutive, checks FROM drift_verdicts WHERE model = $1 AND version = $2",
            &[&model, &version],
        )
        .await
        .map_err(|e| sluice_core::error_chain(&e))?
        .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1) as u64));
    let mut window = Window::new(reference, record.labels.clone());
    if let Some((consecutive, checks)) = counts {
        window.continue_counts(consecutive, checks);
    }
    Ok(Some(window))
}

async fn record(served: &Served, model: &str, version: i32, verdict: &Verdict) -> Result<(), String> {
    let client = served.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let json = serde_json::to_value(verdict).expect("verdicts serialise");
    client
        .execute(
            "INSERT INTO drift_verdicts (model, version, state, kind, consecutive, checks, verdict)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (model, version) DO UPDATE SET state = $3, kind = $4, consecutive = $5, checks = $6,
                 verdict = $7, updated_at = now()",
            &[
                &model,
                &version,
                &verdict.state,
                &verdict.kind,
                &(verdict.consecutive as i32),
                &(verdict.checks as i64),
                &json,
            ],
        )
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    Ok(())
}

fn export(model: &str, version: i32, verdict: &Verdict) {
    let (model, version) = (model.to_owned(), version.to_string());
    for statistic in &verdict.statistics {
        metrics::gauge!("sluice_inference_drift_score", "model" => model.clone(), "version" => version.clone(), "statistic" => statistic.name.clone())
            .set(statistic.t.abs().min(1e6));
    }
    metrics::gauge!("sluice_inference_drift_detected", "model" => model.clone(), "version" => version.clone())
        .set(if verdict.state == "drift" { 1.0 } else { 0.0 });
    metrics::counter!("sluice_inference_drift_checks_total", "model" => model.clone(), "state" => verdict.state, "kind" => verdict.kind)
        .increment(1);
    if let Some(expected) = verdict.expected_accuracy {
        metrics::gauge!("sluice_inference_expected_accuracy", "model" => model, "version" => version).set(expected);
    }
}

/// The shadow compared with the version it shadows, on the latest `live_accuracy_window`
/// inputs both scored: how often they agree and, where feedback came, each one's accuracy and a
/// one-sided exact McNemar test of "the shadow is better". `None` without shadow predictions.
pub async fn shadow_comparison(state: &AppState, model: &str) -> Result<Option<Value>, String> {
    let window = state.served.ctx.config.inference.live_accuracy_window;
    let client = state.served.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let rows = client
        .query(
            "SELECT p.version, s.version, p.label, s.label, p.feedback_label FROM predictions s
             JOIN predictions p ON p.id = s.shadow_of
             WHERE s.model = $1 AND s.shadow ORDER BY s.created_at DESC LIMIT $2",
            &[&model, &window],
        )
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let (mut agree, mut scored, mut primary_right, mut shadow_right, mut shadow_only, mut primary_only) =
        (0usize, 0usize, 0usize, 0usize, 0u64, 0u64);
    for row in &rows {
        let (primary, shadow): (String, String) = (row.get(2), row.get(3));
        agree += usize::from(primary == shadow);
        if let Some(truth) = row.get::<_, Option<String>>(4) {
            scored += 1;
            let (p, s) = (primary == truth, shadow == truth);
            primary_right += usize::from(p);
            shadow_right += usize::from(s);
            shadow_only += u64::from(s && !p);
            primary_only += u64::from(p && !s);
        }
    }
    let rate = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
    let (primary_accuracy, shadow_accuracy) = (rate(primary_right, scored), rate(shadow_right, scored));
    if let (Some(p), Some(s)) = (primary_accuracy, shadow_accuracy) {
        metrics::gauge!("sluice_inference_shadow_accuracy_difference", "model" => model.to_owned()).set(s - p);
    }
    let agreement = agree as f64 / rows.len() as f64;
    metrics::gauge!("sluice_inference_shadow_agreement", "model" => model.to_owned()).set(agreement);
    Ok(Some(json!({
        "versions": {"primary": rows[0].get::<_, i32>(0), "shadow": rows[0].get::<_, i32>(1)},
        "pairs": rows.len(),
        "agreement": agreement,
        "with_feedback": scored,
        "primary_accuracy": primary_accuracy,
        "shadow_accuracy": shadow_accuracy,
        "shadow_only_right": shadow_only,
        "primary_only_right": primary_only,
        "p_value_shadow_better": sluice_core::stats::mcnemar_one_sided(shadow_only, primary_only),
    })))
}

/// `promote: if_better_live` ([`sluice_core::live`]): moves `production` to the candidate once the
/// feedback on the inputs both scored shows it significantly better, or gives the attempt up once
/// it shows it significantly worse.
async fn live_gate(state: &AppState, model: &str, comparison: &Value) -> Result<(), String> {
    let served = &state.served;
    let mut client = served.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let Some(pending) = live::pending(&client, model).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let versions = (comparison["versions"]["primary"].as_i64(), comparison["versions"]["shadow"].as_i64());
    if versions != (Some(i64::from(pending.production)), Some(i64::from(pending.candidate))) {
        return Ok(());
    }
    let answers = comparison["with_feedback"].as_u64().unwrap_or(0);
    if answers < served.ctx.config.inference.live_promotion_min_feedback {
        return Ok(());
    }
    let (shadow_only, primary_only) =
        (comparison["shadow_only_right"].as_u64().unwrap_or(0), comparison["primary_only_right"].as_u64().unwrap_or(0));
    let gain =
        comparison["shadow_accuracy"].as_f64().unwrap_or(0.0) - comparison["primary_accuracy"].as_f64().unwrap_or(0.0);
    let (alpha, margin) = (served.ctx.config.trainer.promotion_alpha, served.ctx.config.trainer.promotion_min_margin);
    let better = sluice_core::stats::mcnemar_one_sided(shadow_only, primary_only);
    let worse = sluice_core::stats::mcnemar_one_sided(primary_only, shadow_only);
    let reason = format!(
        "live: candidate v{} vs production v{} on {answers} answered inputs both scored: right alone on {shadow_only}, \
         wrong alone on {primary_only}, accuracy gain {gain:.4}; exact McNemar p = {better:.3e} (alpha {alpha}, margin {margin})",
        pending.candidate, pending.production
    );
    let tx = client.transaction().await.map_err(|e| sluice_core::error_chain(&e))?;
    let outcome = if better <= alpha && gain >= margin && shadow_only > primary_only {
        let name = ModelName::parse(model).map_err(|e| e.to_string())?;
        let production = models::AliasName::parse(models::AliasName::PRODUCTION).expect("a valid alias");
        if !live::decide(&tx, model, "promoted", &reason).await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        let prefix = &served.ctx.config.kafka.topic_prefix;
        models::move_alias(&tx, prefix, &name, &production, pending.candidate, "inference:live-gate", &reason)
            .await
            .map_err(|e| e.to_string())?;
        "promoted"
    } else if worse <= alpha {
        if !live::decide(&tx, model, "rejected", &reason).await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        "rejected"
    } else {
        return Ok(());
    };
    tx.commit().await.map_err(|e| sluice_core::error_chain(&e))?;
    served.forget_routing(&ModelName::parse(model).map_err(|e| e.to_string())?);
    metrics::counter!("sluice_inference_live_promotions_total", "model" => model.to_owned(), "outcome" => outcome)
        .increment(1);
    tracing::warn!(model, outcome, reason, "live promotion decided");
    Ok(())
}

/// The cluster-wide verdict of a version, as the monitor last recorded it.
pub async fn verdict(state: &AppState, model: &str, version: i32) -> Result<Option<Value>, String> {
    let client = state.served.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let row = client
        .query_opt(
            "SELECT verdict, updated_at FROM drift_verdicts WHERE model = $1 AND version = $2",
            &[&model, &version],
        )
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    Ok(row.map(|r| {
        let mut verdict: Value = r.get(0);
        let at: chrono::DateTime<chrono::Utc> = r.get(1);
        verdict["checked_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        verdict
    }))
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

/// After feedback: export live accuracy (and the shadow comparison) and request retraining when
/// accuracy is too low.
pub async fn after_feedback(state: &AppState, model: &str, version: i32) {
    let config = &state.served.ctx.config.inference;
    match shadow_comparison(state, model).await {
        Ok(Some(comparison)) => {
            if let Err(err) = live_gate(state, model, &comparison).await {
                tracing::warn!(model, error = %err, "live promotion check failed; the next feedback retries");
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "cannot compare the shadow"),
    }
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
