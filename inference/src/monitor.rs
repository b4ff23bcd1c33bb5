//! Live monitoring of served versions, cluster-wide.
//!
//! Every replica publishes each request's prediction statistics to `inference.observations`
//! (keyed by model; fire and forget, so predict never waits on Kafka). The monitor, a consumer
//! group run by every inference process, gives each model to one process: there is one drift
//! window ([`crate::drift`]) and one verdict per model version, however many replicas serve it.
//! After each check the verdict is written to PostgreSQL (`drift_verdicts`), where any replica
//! answers `GET /v1/models/{name}/drift` from, exported as metrics, and sustained covariate shift
//! requests retraining (through the outbox). A window being filled when its model moves to
//! another monitor (a rebalance, a restart) is lost; the consecutive-check count is not. A window
//! still held when its model comes back after another monitor recorded checks is stale: its
//! check is refused (each recorded check follows the one before it) and the window reopened.
//!
//! Feedback (ground truth for a prediction id) updates the version's rolling live accuracy, which
//! can request retraining too.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::{Message, consumer::Consumer, producer::FutureRecord};
use serde::Serialize;
use serde_json::{Value, json};
use sluice_core::{
    Shutdown,
    db::DbError,
    events::Envelope,
    kafka,
    live::{self, LiveOutcome},
    models::{self, ModelName, RegistryError},
    observations::{ObservedImage, RequestObserved},
    outbox::{self, RelayError},
    reference::{Reference, SKETCH_DIMENSIONS},
    topics::Topic,
    work::{self, Backoff},
};

use crate::{
    AppState,
    drift::{DriftKind, DriftState, Observation, Verdict, Window},
    serving::{LoadedVersion, Served},
    store::{self, LiveAccuracy, ShadowPair},
};

/// Why the monitor or the live gate could not read or record what it needed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Outbox(#[from] RelayError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl MonitorError {
    /// Refused for what it holds (too large for the outbox, data PostgreSQL will not store),
    /// not for an outage: retrying cannot help.
    fn refused_for_content(&self) -> bool {
        match self {
            Self::Outbox(RelayError::TooLarge { .. }) => true,
            Self::Db(err) => err.is_data_refusal(),
            Self::Outbox(_) | Self::Registry(_) => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for MonitorError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Db(err.into())
    }
}

impl From<deadpool_postgres::tokio_postgres::Error> for MonitorError {
    fn from(err: deadpool_postgres::tokio_postgres::Error) -> Self {
        Self::Db(err.into())
    }
}

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
    let outcome = match served.ctx.producer.send_nowait(record) {
        Ok(()) => "published",
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
        // The window takes the request once (a check clears it and counts), then only the
        // recording is retried: retrying both fed the request to the fresh window and lost the
        // check, its verdict and any retrain request.
        let checked = work::retry_until(shutdown, Backoff::DEPENDENCY, "the drift monitor cannot open a window", || async {
            observe(served, &mut *windows.lock().await, &event).await.map_err(|e| sluice_core::error_chain(&e))
        })
        .await;
        let Some(verdict) = checked else { return false };
        let Some(verdict) = verdict else { return true };
        let recorded = work::retry_until(shutdown, Backoff::DEPENDENCY, "the drift monitor cannot record a check", || async {
            match record(served, &event, &verdict).await {
                Err(err) if err.refused_for_content() => {
                    tracing::error!(model = %event.model, error = %err, "a drift check cannot be recorded; skipping it");
                    Ok(true)
                }
                other => other.map_err(|e| sluice_core::error_chain(&e)),
            }
        })
        .await;
        if recorded == Some(false) {
            // Another monitor recorded checks since this window opened: its counts (and its
            // observations, from before the gap) are stale. The next request opens a fresh one.
            tracing::info!(model = %event.model, version = event.version, "drift window outdated by another monitor; reopening it");
            windows.lock().await.remove(&(event.model.clone(), event.version));
        }
        recorded.is_some()
    })
    .await
}

/// Feeds one request to its version's window: the verdict when a check ran.
async fn observe(
    served: &Arc<Served>,
    windows: &mut HashMap<(String, i32), Window>,
    event: &RequestObserved,
) -> Result<Option<Verdict>, MonitorError> {
    let config = &served.ctx.config.inference;
    let key = (event.model.clone(), event.version);
    if !windows.contains_key(&key) {
        let Some(window) = open_window(served, &event.model, event.version).await? else {
            return Ok(None);
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
    Ok(window.observe(&observations, config).cloned())
}

/// Records a check's verdict (and the retrain request sustained drift asks for), then exports it;
/// `false` (nothing recorded) when the window's counts are stale ([`store::record_verdict`]).
async fn record(served: &Arc<Served>, event: &RequestObserved, verdict: &Verdict) -> Result<bool, MonitorError> {
    let config = &served.ctx.config.inference;
    // Sustained drift asks for retraining in the verdict's own transaction: a monitor killed
    // after the commit has recorded both or neither.
    let wanted = verdict.kind == DriftKind::CovariateShift || config.retrain_on_label_shift;
    let retrain = (verdict.state == DriftState::Drift
        && wanted
        && verdict.consecutive >= config.drift_sustain_checks
        && config.retrain_on_drift)
        .then(|| served.claim_retrain(&event.model, "drift", json!({"version": event.version, "verdict": verdict})))
        .flatten();
    let recorded = async {
        let mut client = served.ctx.db.get().await?;
        let live = store::live_accuracy(&client, &event.model, event.version, config.live_accuracy_window).await?;
        let tx = client.transaction().await?;
        let prefix = &served.ctx.config.kafka.topic_prefix;
        if !store::record_verdict(&tx, prefix, &event.model, event.version, verdict).await? {
            return Ok(false);
        }
        store::record_check(&tx, &event.model, event.version, verdict, live).await?;
        if let Some(request) = &retrain {
            let topic = served.ctx.topic(Topic::RetrainRequests);
            outbox::enqueue(&tx, &topic, &event.model, request).await?;
        }
        tx.commit().await?;
        Ok::<_, MonitorError>(true)
    }
    .await;
    match (recorded, retrain) {
        (Err(err), Some(_)) => {
            served.retrain_not_requested(&event.model, &sluice_core::error_chain(&err));
            return Err(err);
        }
        (Err(err), None) => return Err(err),
        (Ok(false), retrain) => {
            if retrain.is_some() {
                served.retrain_not_requested(&event.model, "the drift window's counts were stale");
            }
            return Ok(false);
        }
        (Ok(true), Some(_)) => Served::retrain_requested(&event.model, "drift"),
        (Ok(true), None) => {}
    }
    export(&event.model, event.version, verdict);
    Ok(true)
}

/// Most model versions one monitor keeps windows for.
const MAX_WINDOWS: usize = 4096;

/// A window for a registered version, continuing the check counts recorded for it; `None` when
/// the version does not exist.
async fn open_window(served: &Served, model: &str, version: i32) -> Result<Option<Window>, MonitorError> {
    let Ok(name) = ModelName::parse(model) else { return Ok(None) };
    let client = served.ctx.db.get().await?;
    let Some(record) = models::get_version(&client, &name, version).await? else {
        return Ok(None);
    };
    let Ok(reference) = serde_json::from_value::<Reference>(record.reference.clone()) else {
        tracing::warn!(model, version, "the version has no usable drift reference; not monitored");
        return Ok(None);
    };
    let counts = store::check_counts(&client, model, version).await?;
    let mut window = Window::new(reference, record.labels.clone());
    if let Some(counts) = counts {
        window.continue_counts(counts.consecutive, counts.checks);
    }
    Ok(Some(window))
}

fn export(model: &str, version: i32, verdict: &Verdict) {
    let (model, version) = (model.to_owned(), version.to_string());
    for statistic in &verdict.statistics {
        metrics::gauge!("sluice_inference_drift_score", "model" => model.clone(), "version" => version.clone(), "statistic" => statistic.name.clone())
            .set(statistic.t.abs().min(1e6));
    }
    metrics::gauge!("sluice_inference_drift_detected", "model" => model.clone(), "version" => version.clone())
        .set(if verdict.state == DriftState::Drift { 1.0 } else { 0.0 });
    metrics::counter!("sluice_inference_drift_checks_total", "model" => model.clone(), "state" => verdict.state.as_str(), "kind" => verdict.kind.as_str())
        .increment(1);
    if let Some(expected) = verdict.expected_accuracy {
        metrics::gauge!("sluice_inference_expected_accuracy", "model" => model, "version" => version).set(expected);
    }
}

/// The shadow compared with the version it shadows, on the latest inputs both scored: how often
/// they agree and, where feedback came, each one's accuracy and a one-sided exact McNemar test of
/// "the shadow is better".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowComparison {
    pub versions: ComparedVersions,
    /// Inputs both scored.
    pub pairs: usize,
    pub agreement: f64,
    /// Pairs whose answer got feedback.
    pub with_feedback: usize,
    pub primary_accuracy: Option<f64>,
    pub shadow_accuracy: Option<f64>,
    pub shadow_only_right: u64,
    pub primary_only_right: u64,
    pub p_value_shadow_better: f64,
}

/// The versions of the newest pair: the one that answered and the shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ComparedVersions {
    pub primary: i32,
    pub shadow: i32,
}

/// Compares the pairs (newest first); `None` without any.
fn compare(pairs: &[ShadowPair]) -> Option<ShadowComparison> {
    let newest = pairs.first()?;
    let (mut agree, mut scored, mut primary_right, mut shadow_right, mut shadow_only, mut primary_only) =
        (0usize, 0usize, 0usize, 0usize, 0u64, 0u64);
    for pair in pairs {
        agree += usize::from(pair.primary_label == pair.shadow_label);
        if let Some(truth) = &pair.truth {
            scored += 1;
            let (p, s) = (&pair.primary_label == truth, &pair.shadow_label == truth);
            primary_right += usize::from(p);
            shadow_right += usize::from(s);
            shadow_only += u64::from(s && !p);
            primary_only += u64::from(p && !s);
        }
    }
    let rate = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
    Some(ShadowComparison {
        versions: ComparedVersions { primary: newest.primary_version, shadow: newest.shadow_version },
        pairs: pairs.len(),
        agreement: agree as f64 / pairs.len() as f64,
        with_feedback: scored,
        primary_accuracy: rate(primary_right, scored),
        shadow_accuracy: rate(shadow_right, scored),
        shadow_only_right: shadow_only,
        primary_only_right: primary_only,
        p_value_shadow_better: sluice_core::stats::mcnemar_one_sided(shadow_only, primary_only),
    })
}

/// The model's shadow compared with the version it shadows on the latest `live_accuracy_window`
/// inputs both scored (exported as metrics too); `None` without shadow predictions.
pub async fn shadow_comparison(state: &AppState, model: &str) -> Result<Option<ShadowComparison>, DbError> {
    let window = state.served.ctx.config.inference.live_accuracy_window;
    let client = state.served.ctx.db.get().await?;
    let pairs = store::shadow_pairs(&client, model, window).await?;
    drop(client);
    let Some(comparison) = compare(&pairs) else { return Ok(None) };
    if let (Some(p), Some(s)) = (comparison.primary_accuracy, comparison.shadow_accuracy) {
        metrics::gauge!("sluice_inference_shadow_accuracy_difference", "model" => model.to_owned()).set(s - p);
    }
    metrics::gauge!("sluice_inference_shadow_agreement", "model" => model.to_owned()).set(comparison.agreement);
    Ok(Some(comparison))
}

/// `promote: if_better_live` ([`sluice_core::live`]): moves `production` to the candidate once the
/// feedback on the inputs both scored shows it significantly better, or gives the attempt up once
/// it shows it significantly worse.
async fn live_gate(state: &AppState, model: &ModelName, comparison: &ShadowComparison) -> Result<(), MonitorError> {
    let served = &state.served;
    let mut client = served.ctx.db.get().await?;
    let Some(pending) = live::pending(&client, model.as_str()).await? else {
        return Ok(());
    };
    if comparison.versions != (ComparedVersions { primary: pending.production, shadow: pending.candidate }) {
        return Ok(());
    }
    let answers = comparison.with_feedback as u64;
    if answers < served.ctx.config.inference.live_promotion_min_feedback {
        return Ok(());
    }
    let (shadow_only, primary_only) = (comparison.shadow_only_right, comparison.primary_only_right);
    let gain = comparison.shadow_accuracy.unwrap_or(0.0) - comparison.primary_accuracy.unwrap_or(0.0);
    let (alpha, margin) = (served.ctx.config.trainer.promotion_alpha, served.ctx.config.trainer.promotion_min_margin);
    let better = sluice_core::stats::mcnemar_one_sided(shadow_only, primary_only);
    let worse = sluice_core::stats::mcnemar_one_sided(primary_only, shadow_only);
    let reason = format!(
        "live: candidate v{} vs production v{} on {answers} answered inputs both scored: right alone on {shadow_only}, \
         wrong alone on {primary_only}, accuracy gain {gain:.4}; exact McNemar p = {better:.3e} (alpha {alpha}, margin {margin})",
        pending.candidate, pending.production
    );
    let tx = client.transaction().await?;
    let outcome = if better <= alpha && gain >= margin && shadow_only > primary_only {
        let production = models::AliasName::parse(models::AliasName::PRODUCTION).expect("a valid alias");
        if !live::decide(&tx, model.as_str(), pending, LiveOutcome::Promoted, &reason).await? {
            return Ok(());
        }
        let prefix = &served.ctx.config.kafka.topic_prefix;
        models::move_alias(&tx, prefix, model, &production, pending.candidate, "inference:live-gate", &reason).await?;
        LiveOutcome::Promoted
    } else if worse <= alpha {
        if !live::decide(&tx, model.as_str(), pending, LiveOutcome::Rejected, &reason).await? {
            return Ok(());
        }
        LiveOutcome::Rejected
    } else {
        return Ok(());
    };
    tx.commit().await?;
    served.forget_routing(model);
    metrics::counter!("sluice_inference_live_promotions_total", "model" => model.to_string(), "outcome" => outcome.as_str())
        .increment(1);
    tracing::warn!(%model, %outcome, reason, "live promotion decided");
    Ok(())
}

/// The cluster-wide verdict of a version as the monitor last recorded it, with when
/// (`checked_at`).
pub async fn verdict(state: &AppState, model: &str, version: i32) -> Result<Option<Value>, DbError> {
    let client = state.served.ctx.db.get().await?;
    Ok(store::verdict(&client, model, version).await?.map(|stored| {
        let mut verdict = stored.verdict;
        verdict["checked_at"] = json!(stored.checked_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        verdict
    }))
}

/// The version's recorded checks, newest first.
pub async fn history(
    state: &AppState,
    model: &str,
    version: i32,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<store::DriftCheck>, DbError> {
    let client = state.served.ctx.db.get().await?;
    store::drift_history(&client, model, version, before, limit).await
}

/// Live accuracy of a version over its latest `live_accuracy_window` answers with feedback.
pub async fn live_accuracy(state: &AppState, model: &str, version: i32) -> Result<Option<LiveAccuracy>, DbError> {
    let window = state.served.ctx.config.inference.live_accuracy_window;
    let client = state.served.ctx.db.get().await?;
    store::live_accuracy(&client, model, version, window).await
}

/// After feedback: export live accuracy (and the shadow comparison) and request retraining when
/// accuracy is too low.
#[tracing::instrument(skip_all, fields(%model, version))]
pub async fn after_feedback(state: &AppState, model: &ModelName, version: i32) {
    let config = &state.served.ctx.config.inference;
    match shadow_comparison(state, model.as_str()).await {
        Ok(Some(comparison)) => {
            if let Err(err) = live_gate(state, model, &comparison).await {
                tracing::warn!(%model, error = %sluice_core::error_chain(&err), "live promotion check failed; the next feedback retries");
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %sluice_core::error_chain(&err), "cannot compare the shadow"),
    }
    match live_accuracy(state, model.as_str(), version).await {
        Ok(Some(LiveAccuracy { accuracy, answers })) => {
            metrics::gauge!("sluice_inference_live_accuracy", "model" => model.to_string(), "version" => version.to_string())
                .set(accuracy);
            if config.retrain_on_drift
                && config.retrain_below_accuracy > 0.0
                && answers >= config.live_accuracy_min_feedback
                && accuracy < config.retrain_below_accuracy
            {
                let evidence = json!({"version": version, "live_accuracy": accuracy, "answers": answers,
                                      "threshold": config.retrain_below_accuracy});
                state.served.request_retrain(model.as_str(), "live_accuracy", evidence);
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %sluice_core::error_chain(&err), "cannot compute live accuracy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(primary: &str, shadow: &str, truth: Option<&str>) -> ShadowPair {
        ShadowPair {
            primary_version: 1,
            shadow_version: 2,
            primary_label: primary.into(),
            shadow_label: shadow.into(),
            truth: truth.map(str::to_owned),
        }
    }

    #[test]
    fn a_comparison_counts_agreement_and_who_alone_was_right() {
        assert_eq!(compare(&[]), None);
        let pairs = [
            pair("a", "a", Some("a")),
            pair("a", "b", Some("b")),
            pair("a", "b", Some("b")),
            pair("b", "a", Some("b")),
            pair("a", "b", None),
        ];
        let comparison = compare(&pairs).expect("pairs");
        assert_eq!(comparison.versions, ComparedVersions { primary: 1, shadow: 2 });
        assert_eq!((comparison.pairs, comparison.with_feedback), (5, 4));
        assert!((comparison.agreement - 0.2).abs() < 1e-12);
        assert_eq!((comparison.shadow_only_right, comparison.primary_only_right), (2, 1));
        assert_eq!((comparison.primary_accuracy, comparison.shadow_accuracy), (Some(0.5), Some(0.75)));
        let json = serde_json::to_value(&comparison).expect("serialises");
        assert_eq!(json["versions"], json!({"primary": 1, "shadow": 2}));
        assert_eq!(json["with_feedback"], 4);
    }
}
