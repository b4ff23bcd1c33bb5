//! Retraining: consumer group `trainer-retrain` over `retrain.requests`.
//!
//! A request starts a job from the model's last job template on the dataset's current data,
//! unless the model already has a job queued or running, or a retraining started within
//! `trainer.retrain_cooldown_secs`: a burst of requests starts one job; or when the dataset holds
//! no labelled item production's snapshot did not (the retrain would learn nothing new: it is
//! `skipped`, with the reason, in `GET /v1/retrain-requests` and
//! `sluice_trainer_retrains_skipped_total`). Every request is recorded
//! by event id with its outcome, so a redelivered request is recognised and changes nothing.

use rdkafka::{Message, consumer::Consumer};
use serde_json::json;
use sluice_core::{
    Context, Shutdown,
    db::DbError,
    events::Envelope,
    kafka,
    models::{self, ModelName},
    topics::Topic,
    training::RetrainRequested,
    work::{self, Backoff},
};
use uuid::Uuid;

use crate::{
    jobs::{self, Grant, StartError},
    search::JobRequest,
    store::{self, Origin},
};

pub async fn run(ctx: Context, shutdown: Shutdown) {
    kafka::keep_consuming("retrain requests", &shutdown, || consume(&ctx, &shutdown)).await;
}

async fn consume(ctx: &Context, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let consumer = kafka::background_consumer(&ctx.config.kafka, &ctx.config.trainer.retrain_group_id)?;
    consumer.subscribe(&[ctx.topic(Topic::RetrainRequests).as_str()])?;
    work::consume(&consumer, shutdown, 1, |message| async move {
        let event = match Envelope::<RetrainRequested>::decode(message.payload().unwrap_or_default()) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(error = %err, "undecodable retrain request; skipping it");
                return true;
            }
        };
        work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot act on a retrain request", || {
            handle(ctx, event.event_id, &event.data)
        })
        .await
        .is_some()
    })
    .await
}

/// Acts on one request; `Err` only for failures worth retrying.
#[tracing::instrument(level = "debug", skip_all, fields(event_id = %event_id, model = %request.model))]
async fn handle(ctx: &Context, event_id: Uuid, request: &RetrainRequested) -> Result<(), String> {
    let db = |e: DbError| sluice_core::error_chain(&e);
    if ModelName::parse(&request.model).is_err() {
        tracing::error!(event_id = %event_id, "a retrain request names no valid model; skipping it");
        return Ok(());
    }
    if store::retrain_seen(ctx, event_id).await.map_err(db)? {
        return Ok(());
    }
    let cooldown = ctx.config.trainer.retrain_cooldown_secs as f64;
    let busy = store::busy_job(ctx, &request.model, cooldown).await.map_err(db)?;
    let (outcome, job_id) = match busy {
        Some(job) => ("coalesced".to_owned(), Some(job)),
        None => match template(ctx, &request.model).await? {
            None => ("refused: the model has no training job to repeat".to_owned(), None),
            Some(template) => {
                let origin = Origin {
                    kind: "retrain",
                    requested_by: request.requested_by.clone(),
                    evidence: Some(json!({"reason": request.reason, "evidence": request.evidence})),
                };
                match jobs::start(ctx, &template, origin, Grant::Retrain).await {
                    Ok(job) => {
                        metrics::counter!("sluice_trainer_retrain_jobs_total").increment(1);
                        ("started".to_owned(), Some(job))
                    }
                    Err(err) if err.is_transient() => return Err(sluice_core::error_chain(&err)),
                    // Another request for the model started a job meanwhile.
                    Err(StartError::Coalesced(job)) => ("coalesced".to_owned(), Some(job)),
                    Err(StartError::NothingNew(reason)) => {
                        metrics::counter!("sluice_trainer_retrains_skipped_total", "reason" => "no_new_data")
                            .increment(1);
                        (format!("skipped: {reason}"), None)
                    }
                    Err(refused) => (format!("refused: {refused}"), None),
                }
            }
        },
    };
    tracing::info!(model = %request.model, reason = %request.reason, %outcome, job = ?job_id, "retrain request handled");
    store::record_retrain(ctx, event_id, &request.model, &request.reason, &request.evidence, &outcome, job_id)
        .await
        .map_err(db)
}

/// The request of the model's last training job, the template a retraining repeats.
async fn template(ctx: &Context, model: &str) -> Result<Option<JobRequest>, String> {
    let Ok(name) = ModelName::parse(model) else {
        return Ok(None);
    };
    let client = ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
    let stored = models::get_template(&client, &name).await.map_err(|e| sluice_core::error_chain(&e))?;
    Ok(stored.and_then(|value| serde_json::from_value(value).ok()))
}
