//! The batch worker: consumer group `inference.batch_group_id` over `predictions.batch`, one job
//! at a time.
//!
//! Per job: load the pinned version and the frozen manifest, then for each chunk from
//! `chunks_done` on: score it, record its predictions (ids derived from job and item, so a redo
//! inserts nothing twice), write its part object, and advance `chunks_done` past it only if no one
//! else did. A worker killed mid-job redoes at most the chunk it was on, overwriting the same
//! object with the same lines. The offset is stored once the job has ended (`succeeded`, or
//! `failed` for what can never work); S3 and PostgreSQL outages are retried with backoff.
//!
//! A poison chunk does not hold the job: each attempt at a chunk is counted before it runs (and
//! given back when it failed because a dependency was away), and once a chunk has used
//! `inference.batch_max_attempts` its part object is written with the reason on each of its
//! items' lines, it is recorded in `failed_chunks` with a `work.parked` event and
//! `sluice_inference_batch_chunks_parked_total`, and the job goes on with the next chunk.

use std::{sync::Arc, time::Duration};

use rdkafka::{Message, consumer::Consumer};
use sluice_core::{
    Context, Shutdown,
    batch_predictions::{BatchManifest, BatchPredictionRequested, batch_part_key},
    db::DbError,
    events::Envelope,
    kafka::{self, SluiceConsumer},
    models::ModelName,
    parking, s3,
    topics::Topic,
    work::{self, Backoff, Failure, Run, Settled},
};
use uuid::Uuid;

use super::{
    chunk,
    store::{self, ChunkAttempt, Job},
};
use crate::{
    recorder::Record,
    serving::{ServeError, Served},
};

/// How long to wait between retries of a job whose dependencies are away.
const BACKOFF: Backoff = Backoff { first: Duration::from_millis(500), max: Duration::from_secs(10) };

/// Runs the worker until `shutdown`, recreating the consumer after Kafka errors.
pub async fn run(served: Arc<Served>, shutdown: Shutdown) {
    kafka::keep_consuming("batch predictions", &shutdown, || consume(&served, &shutdown)).await;
}

fn consumer(ctx: &Context) -> Result<kafka::ClosesInBackground<SluiceConsumer>, rdkafka::error::KafkaError> {
    let mut config = kafka::consumer_config(&ctx.config.kafka, &ctx.config.inference.batch_group_id);
    kafka::background(&mut config, &ctx.config.kafka);
    // Jobs run for long: the loop polls meanwhile (work::consume_long), so rebalances need not
    // wait for a job; prefetch little (jobs are small events).
    config.set("queued.max.messages.kbytes", "64");
    kafka::create(&config, &ctx.config.kafka)
}

async fn consume(served: &Arc<Served>, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let ctx = &served.ctx;
    let consumer = consumer(ctx)?;
    consumer.subscribe(&[ctx.topic(Topic::PredictionsBatch).as_str()])?;
    let holder = &consumer;
    work::consume_long(&consumer, shutdown, 1, |message| async move {
        match Envelope::<BatchPredictionRequested>::decode(message.payload().unwrap_or_default()) {
            Ok(envelope) => {
                let run = Run::default();
                let done = handle(served, envelope.data.job_id, shutdown, &run).await;
                run.answer(done, holder, &message)
            }
            Err(err) => {
                tracing::error!(error = %err, offset = message.offset(), "undecodable batch prediction event; skipping it");
                true
            }
        }
    })
    .await
}

/// Runs one job to its end (`failed` for what can never work); `false` when shutdown
/// interrupted it. A run that another process's run took over stops before its next chunk and
/// yields the job ([`Run::yield_unit`]).
async fn handle(served: &Served, id: Uuid, shutdown: &Shutdown, run: &Run) -> bool {
    let settled =
        work::settle(shutdown, BACKOFF, "batch prediction interrupted", || run_job(served, id, shutdown, run));
    match settled.await {
        None => false,
        Some(Settled::Done(())) => true,
        Some(Settled::Poison(reason)) => {
            tracing::warn!(job = %id, %reason, "batch prediction failed");
            let failed = work::retry_until(shutdown, BACKOFF, "cannot record a failed batch prediction", || {
                store::finish(&served.ctx, id, Some(&reason))
            });
            failed.await.is_some()
        }
    }
}

fn stop_taken_over(id: Uuid, run: &Run) {
    tracing::warn!(job = %id, "another process took the batch prediction over; stopping this run");
    run.yield_unit();
}

/// Scores the job's remaining chunks and ends it.
async fn run_job(served: &Served, id: Uuid, shutdown: &Shutdown, run: &Run) -> Result<(), Failure> {
    let ctx = &served.ctx;
    let Some(job) = store::load(ctx, id).await? else {
        tracing::warn!(job = %id, "no batch prediction has this id; skipping its event");
        return Ok(());
    };
    if job.is_finished() {
        return Ok(());
    }
    // A retry must not take the job back from a run that took it over meanwhile; a new delivery
    // takes it over.
    if run.started() && store::taken_over(ctx, id, run.id).await? {
        stop_taken_over(id, run);
        return Ok(());
    }
    store::start(ctx, id, run.id).await?;
    run.start();
    let model = ModelName::parse(&job.model).map_err(|e| Failure::Poison(format!("model name: {e}")))?;
    let loaded = served.load(&model, job.version).await.map_err(|err| match err {
        ServeError::Unavailable(reason) => Failure::Retry(reason),
        other => Failure::Poison(other.to_string()),
    })?;
    let manifest = manifest(ctx, &job).await?;
    let max_attempts = ctx.config.inference.batch_max_attempts as i32;
    let mut next = job.chunks_done;
    while next < job.chunks {
        if shutdown.is_cancelled() {
            return Err(Failure::Interrupted);
        }
        if store::taken_over(ctx, id, run.id).await? {
            stop_taken_over(id, run);
            return Ok(());
        }
        // Counted before the chunk runs, so a chunk that kills its worker counts too.
        let begun = store::begin_chunk(ctx, id, next).await?;
        let advanced = match begun {
            None => false,
            Some(ChunkAttempt { attempts, last_error }) if attempts > max_attempts => {
                let reason = parking::gave_up(attempts - 1, last_error.as_deref());
                park(ctx, &job, &manifest, next, attempts - 1, &reason).await?
            }
            Some(_) => match write_chunk(served, &loaded, &job, &manifest, next).await {
                Ok(advanced) => advanced,
                Err(reason) => {
                    // A user's bucket gone or closed to Sluice stays so: the job fails saying
                    // why, rather than waiting for it with its attempts given back forever.
                    if manifest.bucket != ctx.config.s3.bucket
                        && let Some(refusal) = s3::bucket_refuses(&ctx.s3, &manifest.bucket).await
                    {
                        let error = format!("chunk {next}: {reason}; {refusal}");
                        store::finish(ctx, id, Some(&error)).await?;
                        tracing::warn!(job = %id, error, "batch prediction failed: its source bucket refuses Sluice");
                        return Ok(());
                    }
                    // The attempt stands only when the failure was the chunk's own.
                    let counts = parking::dependencies_up(ctx, &[manifest.bucket.as_str()]).await;
                    store::chunk_failed(ctx, id, next, &reason, counts).await?;
                    return Err(Failure::Retry(format!("chunk {next}: {reason}")));
                }
            },
        };
        if advanced {
            next += 1;
        } else {
            // Another worker got here too (a rebalance): go on from where the job stands.
            match store::load(ctx, id).await? {
                Some(now) if now.is_finished() => return Ok(()),
                Some(now) if now.chunks_done > next => next = now.chunks_done,
                now => {
                    let done = now.map(|job| job.chunks_done);
                    return Err(Failure::Retry(format!("chunk {next} was written but the job shows {done:?} done")));
                }
            }
        }
    }
    store::finish(ctx, id, None).await?;
    tracing::info!(job = %id, items = job.total, chunks = job.chunks, "batch prediction ended");
    Ok(())
}

/// Scores, records and writes one chunk and advances the job past it; `Ok(false)` when the job
/// had already moved on. Any failure is the chunk's attempt failing.
async fn write_chunk(
    served: &Served,
    loaded: &crate::serving::LoadedVersion,
    job: &Job,
    manifest: &BatchManifest,
    chunk: usize,
) -> Result<bool, String> {
    let ctx = &served.ctx;
    let scored = chunk::score(ctx, loaded, job, manifest, chunk).await.map_err(|e| e.to_string())?;
    record(ctx, &scored.records).await.map_err(|e| sluice_core::error_chain(&e))?;
    let key = batch_part_key(job.id, chunk);
    s3::put_bytes(&ctx.s3, &ctx.config.s3.bucket, &key, scored.lines, "application/x-ndjson")
        .await
        .map_err(|e| e.to_string())?;
    let advanced = store::advance(ctx, job.id, chunk).await.map_err(|e| sluice_core::error_chain(&e))?;
    if advanced {
        for (outcome, count) in scored.outcomes {
            metrics::counter!("sluice_inference_batch_items_total", "model" => job.model.clone(), "outcome" => outcome)
                .increment(count);
        }
    }
    Ok(advanced)
}

/// Records the chunk's predictions (ids derived from job and item: a redone chunk adds nothing).
async fn record(ctx: &Context, records: &[Record]) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    crate::store::insert_predictions(&client, records).await
}

/// Parks a chunk out of attempts: its part object says why on each item's line, then the job
/// moves past it. `Ok(false)` when the job had already moved on.
async fn park(
    ctx: &Context,
    job: &Job,
    manifest: &BatchManifest,
    chunk: usize,
    attempts: i32,
    reason: &str,
) -> Result<bool, Failure> {
    tracing::error!(job = %job.id, chunk, attempts, reason, "batch chunk parked");
    let (lines, items) = chunk::parked(job, manifest, chunk, reason);
    let key = batch_part_key(job.id, chunk);
    s3::put_bytes(&ctx.s3, &ctx.config.s3.bucket, &key, lines, "application/x-ndjson").await?;
    let detail = serde_json::json!({"job_id": job.id, "chunk": chunk, "model": job.model, "part": key});
    let parked = store::park_chunk(ctx, job.id, chunk, attempts, reason, detail).await?;
    if parked {
        metrics::counter!("sluice_inference_batch_chunks_parked_total").increment(1);
        metrics::counter!("sluice_inference_batch_items_total", "model" => job.model.clone(), "outcome" => "parked")
            .increment(items);
    }
    Ok(parked)
}

/// The job's frozen item list; a missing or unreadable one fails the job.
async fn manifest(ctx: &Context, job: &Job) -> Result<BatchManifest, Failure> {
    let key = &job.manifest_key;
    let bytes = s3::get_bytes(&ctx.s3, &ctx.config.s3.bucket, key)
        .await?
        .ok_or_else(|| Failure::Poison(format!("the manifest {key} is missing")))?;
    let manifest: BatchManifest = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Poison(format!("the manifest {key} is unreadable: {e}")))?;
    if manifest.job_id != job.id || manifest.items.len() != job.total {
        return Err(Failure::Poison(format!("the manifest {key} does not match the job ({} items)", job.total)));
    }
    Ok(manifest)
}
