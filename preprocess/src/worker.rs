//! The `media.ingested` consumer: exactly-once effects over at-least-once delivery.
//!
//! Up to `preprocess.concurrency` messages are processed at once ([`work::consume`]): a
//! partition's offset is stored only up to its first unfinished item, so a crash or rebalance
//! replays only what had not finished, while a slow item (a long video) holds no other item
//! back. Replays change nothing (outputs are keyed by media, spec and frame; rows are upserts;
//! finished items are skipped). Transient failures (S3 or PostgreSQL away) retry with backoff
//! without advancing the offset; what can never be processed is recorded as failed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use rdkafka::{Message, consumer::Consumer, message::OwnedMessage};
use sluice_core::{
    Context, Shutdown,
    events::Envelope,
    kafka,
    pipeline::{MediaFailed, Output, PipelineSpec, output_key},
    s3::S3Error,
    topics::Topic,
    uploads::MediaIngested,
    work::{self, Backoff, Failure},
};

use tokio::io::AsyncWriteExt;

use crate::{imaging, store, video};

/// Runs the consumer until `shutdown`, recreating it after Kafka errors.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    kafka::keep_consuming("preprocess", &shutdown, || consume(&ctx, &shutdown)).await;
}

async fn consume(ctx: &Context, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let consumer = Arc::new(kafka::consumer(&ctx.config.kafka, &ctx.config.preprocess.group_id)?);
    let topic = ctx.topic(Topic::MediaIngested);
    consumer.subscribe(&[topic.as_str()])?;
    let lag =
        tokio::spawn(kafka::report_lag(consumer.clone(), topic.to_string(), ctx.config.preprocess.group_id.clone()));
    let concurrency = ctx.config.preprocess.concurrency;
    let turns = &Turns::default();
    let result = work::consume(&consumer, shutdown, concurrency, |message| handle(ctx, message, shutdown, turns)).await;
    lag.abort();
    result
}

/// Items run side by side (up to `preprocess.concurrency`), except one that an earlier delivery
/// started and never finished: it may be what killed that worker, so it runs alone. A crash
/// then counts an attempt against that item only, and the items that happened to run beside a
/// poison one are not given up with it.
#[derive(Debug, Default)]
struct Turns(tokio::sync::RwLock<()>);

enum Turn<'a> {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'a, ()>),
}

impl Turns {
    /// Waits for the item's turn: alone (every other item finished first, none starts until it
    /// ends) or beside the others.
    async fn take(&self, alone: bool) -> Turn<'_> {
        if alone { Turn::Alone(self.0.write().await) } else { Turn::Shared(self.0.read().await) }
    }
}

/// Processes one message to a durable end; `false` only when shutdown interrupted its retries.
async fn handle(ctx: &Context, message: OwnedMessage, shutdown: &Shutdown, turns: &Turns) -> bool {
    let source = format!("{}/{}/{}", message.topic(), message.partition(), message.offset());
    let event = match Envelope::<MediaIngested>::decode(message.payload().unwrap_or_default()) {
        Ok(envelope) => envelope.data,
        Err(err) => {
            let failed = MediaFailed { media_id: None, dataset: None, reason: err.to_string(), source };
            return record_failure(ctx, failed, None, "undecodable_event", "unknown", shutdown).await.is_some();
        }
    };
    // Whether the next try counts as an attempt ([`process`]): the first does, and one after a
    // timeout. Whether the tries run alone is decided at each counted try: an earlier delivery
    // (or try) that started the item left it unfinished.
    let (counts, alone) = (AtomicBool::new(true), AtomicBool::new(false));
    let (event, source, counts, alone) = (&event, &source, &counts, &alone);
    let settled = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot preprocess an item yet", || async move {
        let started = Instant::now();
        let Some((item, state)) = store::item(ctx, event.media_id).await? else {
            tracing::warn!(media = %event.media_id, "event for unknown media; skipping");
            return Ok(true);
        };
        let spec = store::spec(ctx, &item.dataset).await?;
        let spec_hash = spec.hash();
        if state.settled_under(&spec_hash) {
            return Ok(true);
        }
        if counts.load(Ordering::Relaxed) {
            alone.store(state.attempts > 0, Ordering::Relaxed);
        }
        let alone = alone.load(Ordering::Relaxed);
        let _turn = tokio::select! {
            turn = turns.take(alone) => turn,
            () = shutdown.cancelled() => return Ok(false),
        };
        match process(ctx, &item, &spec, &spec_hash, Tries { counts, alone }).await {
            Ok(()) => {
                metrics::histogram!("sluice_preprocess_item_duration_seconds", "kind" => item.kind.clone())
                    .record(started.elapsed().as_secs_f64());
                Ok(true)
            }
            Err(Failure::Poison(reason)) => {
                tracing::info!(media = %item.media_id, %reason, "media failed preprocessing");
                let failed = MediaFailed {
                    media_id: Some(item.media_id),
                    dataset: Some(item.dataset.clone()),
                    reason,
                    source: source.clone(),
                };
                match record_failure(ctx, failed, Some(&spec_hash), "undecodable_media", &item.kind, shutdown).await {
                    Some(true) => Ok(true),
                    Some(false) => Err(Failure::Retry(spec_changed(&item))),
                    None => Ok(false),
                }
            }
            Err(Failure::Interrupted) => Ok(false),
            Err(retry @ Failure::Retry(_)) => {
                metrics::counter!("sluice_preprocess_retries_total").increment(1);
                Err(retry)
            }
        }
    });
    settled.await.unwrap_or(false)
}

/// Why an outcome worked out under an older spec is not recorded.
fn spec_changed(item: &MediaIngested) -> String {
    format!("the pipeline spec of {} changed while media {} was processed; redoing it", item.dataset, item.media_id)
}

/// Records an item that can never be processed: `Some(false)` when the item's spec changed
/// meanwhile (nothing recorded), `None` when shutdown came first.
async fn record_failure(
    ctx: &Context,
    failed: MediaFailed,
    spec_hash: Option<&str>,
    reason: &'static str,
    kind: &str,
    shutdown: &Shutdown,
) -> Option<bool> {
    let recorded = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot record a failure", || {
        store::fail(ctx, failed.clone(), spec_hash)
    });
    let recorded = recorded.await?;
    if recorded {
        metrics::counter!("sluice_preprocess_failed_total", "kind" => kind.to_owned(), "reason" => reason).increment(1);
    }
    Some(recorded)
}

/// One item not yet settled under the current spec: fetch, transform, store.
#[tracing::instrument(skip_all, fields(media = %item.media_id, dataset = %item.dataset, kind = %item.kind))]
async fn process(
    ctx: &Context,
    item: &MediaIngested,
    spec: &PipelineSpec,
    spec_hash: &str,
    tries: Tries<'_>,
) -> Result<(), Failure> {
    // The first try of a delivery counts an attempt, and a try after a timeout (the next one is
    // taken alone, on a less busy worker); other retries within it (an outage) do not.
    let new_attempt = tries.counts.swap(false, Ordering::Relaxed);
    let attempts = store::mark_processing(ctx, item.media_id, new_attempt).await?;
    let max_attempts = ctx.config.preprocess.max_attempts;
    if new_attempt && attempts > max_attempts as i32 {
        // Every earlier delivery started this item and never finished: it kills the worker.
        return Err(Failure::Poison(format!(
            "gave up after {} attempts: every earlier attempt stopped its worker mid-item",
            attempts - 1
        )));
    }
    let started = Instant::now();
    let fetch_started = Instant::now();
    let object = ctx.s3.get_object().bucket(&ctx.config.s3.bucket).key(&item.raw_key).send().await.map_err(|e| {
        let err = S3Error::from_sdk("GetObject", e);
        if err.code() == Some("NoSuchKey") {
            Failure::Poison(format!("the raw object {} is missing", item.raw_key))
        } else {
            Failure::Retry(err.to_string())
        }
    })?;
    // Animated GIFs are sampled like videos; a still GIF (no frame duration) is an image. What
    // ffmpeg reads goes to a temporary file as it arrives: a video (up to `http.max_body_bytes`)
    // is never held in memory.
    let mut outputs = Vec::new();
    let mut body = Some(object.body);
    if item.kind == "video" || item.content_type == "image/gif" {
        let dir = tempfile::tempdir().map_err(|e| Failure::Retry(e.to_string()))?;
        let input = dir.path().join("input");
        let mut file = tokio::fs::File::create(&input).await.map_err(|e| Failure::Retry(e.to_string()))?;
        let mut stream = body.take().expect("the body is read once");
        while let Some(chunk) = stream.try_next().await.map_err(|e| Failure::Retry(e.to_string()))? {
            file.write_all(&chunk).await.map_err(|e| Failure::Retry(e.to_string()))?;
        }
        file.flush().await.map_err(|e| Failure::Retry(e.to_string()))?;
        drop(file);
        metrics::histogram!("sluice_preprocess_stage_duration_seconds", "stage" => "fetch")
            .record(fetch_started.elapsed().as_secs_f64());
        let attempt = Attempt { number: attempts, max: max_attempts as i32, tries };
        outputs = sample_frames(ctx, item, spec, spec_hash, &input, attempt).await?;
        if outputs.is_empty() && item.kind == "video" {
            return Err(Failure::Poison(video::VideoError::NoFrames.to_string()));
        }
        if outputs.is_empty() {
            // A still GIF: decoded as an image, from the copy on disk.
            let bytes = tokio::fs::read(&input).await.map_err(|e| Failure::Retry(e.to_string()))?;
            body = Some(aws_sdk_s3::primitives::ByteStream::from(bytes));
        }
    }
    if outputs.is_empty() {
        let body = body.expect("images keep their body");
        let bytes = body.collect().await.map_err(|e| Failure::Retry(e.to_string()))?.into_bytes();
        if item.kind != "video" && item.content_type != "image/gif" {
            metrics::histogram!("sluice_preprocess_stage_duration_seconds", "stage" => "fetch")
                .record(fetch_started.elapsed().as_secs_f64());
        }
        let max_pixels = ctx.config.ingest.max_image_pixels;
        let job_spec = spec.clone();
        let (png, width, height) = tokio::task::spawn_blocking(move || imaging::process(&bytes, &job_spec, max_pixels))
            .await
            .map_err(|e| Failure::Poison(format!("the image decoder crashed: {e}")))?
            .map_err(|e| Failure::Poison(e.to_string()))?;
        let output = Output {
            key: output_key(&item.dataset, spec_hash, item.media_id, 0),
            width,
            height,
            frame_index: 0,
            timestamp_ms: None,
        };
        outputs.push((output, png));
    }

    let store_started = Instant::now();
    for (output, png) in &outputs {
        ctx.s3
            .put_object()
            .bucket(&ctx.config.s3.bucket)
            .key(&output.key)
            .content_type("image/png")
            .body(png.clone().into())
            .send()
            .await
            .map_err(|e| Failure::Retry(S3Error::from_sdk("PutObject", e).to_string()))?;
    }
    let outputs: Vec<Output> = outputs.into_iter().map(|(o, _)| o).collect();
    if !store::finish(ctx, item, spec_hash, &outputs, started.elapsed().as_millis() as i64).await? {
        return Err(Failure::Retry(spec_changed(item)));
    }
    metrics::histogram!("sluice_preprocess_stage_duration_seconds", "stage" => "store")
        .record(store_started.elapsed().as_secs_f64());
    metrics::counter!("sluice_preprocess_processed_total", "kind" => item.kind.clone()).increment(1);
    Ok(())
}

/// How a delivery's tries of an item go: whether the next one counts as an attempt, and whether
/// this one runs alone ([`Turns`]).
#[derive(Clone, Copy)]
struct Tries<'a> {
    counts: &'a AtomicBool,
    alone: bool,
}

/// The item's attempt in progress: its number and the most it gets.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    number: i32,
    max: i32,
    tries: Tries<'a>,
}

/// Samples a video's frames with ffmpeg, from the temporary copy of the object at `input`;
/// empty when ffmpeg finds no frame to sample (a still GIF). A timeout while other items ran
/// beside it is retried once, as a new attempt run alone ([`Turns`]), rather than failing the
/// item: a busy worker slows ffmpeg down too. A timeout alone fails it.
async fn sample_frames(
    ctx: &Context,
    item: &MediaIngested,
    spec: &PipelineSpec,
    spec_hash: &str,
    input: &std::path::Path,
    attempt: Attempt<'_>,
) -> Result<Vec<(Output, Vec<u8>)>, Failure> {
    let config = &ctx.config.preprocess;
    let Some(demuxer) = video::demuxer(&item.content_type) else {
        return Err(Failure::Poison(format!("{} is not a video type ffmpeg is given", item.content_type)));
    };
    let frames = match video::extract(input, demuxer, spec, config.ffmpeg_timeout_ms, config.ffmpeg_memory_mib).await {
        Ok(frames) => frames,
        Err(video::VideoError::NoFrames) => Vec::new(),
        Err(err @ video::VideoError::Spawn(_)) => return Err(Failure::Retry(err.to_string())),
        Err(err @ video::VideoError::Timeout(_)) => {
            let Attempt { number, max, tries } = attempt;
            // Once, beside other items: the retry runs alone. A timeout alone is the video's own.
            if !tries.alone && number < max {
                tries.counts.store(true, Ordering::Relaxed);
                return Err(Failure::Retry(format!("{err} beside other items; trying it again alone")));
            }
            return Err(Failure::Poison(format!("{err} (attempt {number}, run alone: {})", tries.alone)));
        }
        Err(err) => return Err(Failure::Poison(err.to_string())),
    };
    Ok(frames
        .into_iter()
        .map(|frame| {
            let output = Output {
                key: output_key(&item.dataset, spec_hash, item.media_id, frame.index),
                width: spec.width,
                height: spec.height,
                frame_index: frame.index,
                timestamp_ms: Some(frame.timestamp_ms),
            };
            (output, frame.png)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Turns;

    #[tokio::test]
    async fn an_item_run_alone_waits_for_the_others_and_holds_back_new_ones() {
        let turns = Turns::default();
        let waits = |turn| async move { tokio::time::timeout(Duration::from_millis(50), turn).await.is_err() };
        let (first, second) = (turns.take(false).await, turns.take(false).await);
        assert!(waits(turns.take(true)).await, "a suspect waits while others run");
        drop((first, second));
        let alone = turns.take(true).await;
        assert!(waits(turns.take(false)).await, "nothing starts beside it");
        assert!(waits(turns.take(true)).await, "nor another suspect");
        drop(alone);
        assert!(!waits(turns.take(false)).await, "then the rest flows");
    }
}
