//! Served inputs back into datasets: consumer group `ingest.capture_group_id` over
//! `media.captures` ([`sluice_core::capture`]).
//!
//! Each kept input is stored like an upload: read from its `captures/` object, sniffed and
//! checked, written under `raw/`, recorded (deduplicated by SHA-256 in its dataset) with its
//! `media.ingested` outbox row and `captured_from` = the prediction. A label already given to
//! the prediction as feedback comes with it. The capture object is deleted once the item is
//! recorded (or refused). Redelivery is harmless: an item already recorded for the prediction is
//! not recorded twice.

use rdkafka::{Message, consumer::Consumer};
use serde_json::json;
use sluice_core::{
    Context, Shutdown,
    capture::{MediaCaptured, capture_key},
    domain::{DatasetName, Label},
    events::Envelope,
    kafka, s3,
    topics::Topic,
    work::{self, Backoff},
};

use crate::{
    error::IngestError,
    store::{self, NewMedia},
    upload,
};

pub async fn run(ctx: Context, shutdown: Shutdown) {
    kafka::keep_consuming("captured inputs", &shutdown, || consume(&ctx, &shutdown)).await;
}

async fn consume(ctx: &Context, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let consumer = kafka::background_consumer(&ctx.config.kafka, &ctx.config.ingest.capture_group_id)?;
    consumer.subscribe(&[ctx.topic(Topic::MediaCaptures).as_str()])?;
    work::consume(&consumer, shutdown, 1, |message| async move {
        let event = match Envelope::<MediaCaptured>::decode(message.payload().unwrap_or_default()) {
            Ok(event) => event.data,
            Err(err) => {
                tracing::error!(error = %err, "undecodable capture event; skipping it");
                return true;
            }
        };
        // Inference writes each capture under the one key its prediction names; an event naming
        // any other object (one of the bucket's models, raw videos or snapshots) is not read,
        // and above all not deleted.
        if event.key != capture_key(&event.model, event.prediction_id) {
            tracing::error!(prediction = %event.prediction_id, "a capture event names an object outside its capture key; skipping it");
            return true;
        }
        let outcome = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot store a captured input yet", || async {
            match handle(ctx, &event).await {
                Err(err) if !err.is_transient() => {
                    // The bytes cannot become media (not an image Sluice takes, too large).
                    tracing::warn!(prediction = %event.prediction_id, error = %err, "captured input refused");
                    discard(ctx, &event.key).await;
                    Ok("refused")
                }
                other => other,
            }
        })
        .await;
        if let Some(outcome) = outcome {
            metrics::counter!("sluice_ingest_captures_total", "outcome" => outcome).increment(1);
        }
        outcome.is_some()
    })
    .await
}

/// Stores one captured input; `Ok` with what happened, `Err` for a refusal or an outage.
#[tracing::instrument(skip_all, fields(prediction_id = %event.prediction_id, dataset = %event.dataset))]
async fn handle(ctx: &Context, event: &MediaCaptured) -> Result<&'static str, IngestError> {
    if store::is_captured(ctx, event.prediction_id).await? {
        // An earlier delivery stored it and may have died before catching feedback up.
        store::label_from_feedback(ctx, event.prediction_id).await?;
        discard(ctx, &event.key).await;
        return Ok("redelivered");
    }
    let dataset =
        DatasetName::parse(&event.dataset).map_err(|e| IngestError::BadField { field: "dataset", message: e.0 })?;
    let feedback = store::feedback_label(ctx, event.prediction_id).await?;
    let label = feedback.as_deref().and_then(|l| Label::parse(l).ok());
    // At most one predict request's bytes (`inference.max_predict_bytes`).
    let limit = ctx.config.inference.max_predict_bytes as u64;
    let bytes = match s3::get_bytes_bounded(&ctx.s3, &ctx.config.s3.bucket, &event.key, limit)
        .await
        .map_err(IngestError::Storage)?
    {
        s3::ObjectRead::Bytes(bytes) => bytes,
        // Already stored and deleted by an earlier delivery that died before its offset, or
        // removed by hand: nothing to do.
        s3::ObjectRead::Missing => return Ok("missing"),
        s3::ObjectRead::TooLarge(_) => return Err(IngestError::TooLarge { limit }),
    };
    let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
    let limits = upload::Limits::from_config(&ctx.config, ctx.config.http.max_body_bytes);
    let stored = upload::store(&upload::S3(ctx), limits, &dataset, None, Box::pin(body)).await?;
    let item = NewMedia {
        stored: stored.clone(),
        dataset,
        label,
        source: Some(format!("capture:{}/v{}/{}", event.model, event.version, event.prediction_id)),
        metadata: json!({"capture": {
            "model": event.model, "version": event.version, "prediction_id": event.prediction_id,
            "predicted": event.predicted, "confidence": event.confidence, "why": event.why,
        }}),
        import: None,
        captured_from: Some(event.prediction_id),
    };
    match store::record(ctx, vec![item]).await {
        Ok((accepted, redundant)) => {
            upload::discard(ctx, &redundant).await;
            store::label_from_feedback(ctx, event.prediction_id).await?;
            discard(ctx, &event.key).await;
            Ok(if accepted.first().is_some_and(|a| a.duplicate) { "duplicate" } else { "stored" })
        }
        Err(err) => {
            upload::discard_unrecorded(ctx, &[stored.key]).await;
            Err(err.into())
        }
    }
}

async fn discard(ctx: &Context, key: &str) {
    if let Err(err) = ctx.s3.delete_object().bucket(&ctx.config.s3.bucket).key(key).send().await {
        tracing::warn!(key, error = %err, "cannot delete a capture object; it stays until removed");
    }
}
