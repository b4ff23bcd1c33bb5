//! Scoring one chunk of a job: fetch its objects (bounded concurrency), prepare them with the
//! version's input spec off the async runtime, score them through the version's batcher, and
//! render one JSON line per item. Deterministic: the same chunk always renders the same bytes.

use std::ops::Range;

use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Map, Value, json};
use sluice_core::{
    Context,
    batch_predictions::{BatchItem, BatchManifest, batch_prediction_id},
    s3::{self, ObjectRead, S3Error},
};

use super::store::Job;
use crate::{predict::rank, recorder::Record, serving::LoadedVersion};

/// Objects fetched and prepared at once per chunk.
const PREPARE_AT_ONCE: usize = 4;

/// A scored chunk, ready to be written.
#[derive(Debug)]
pub struct Scored {
    /// The part object's body: one JSON line per item, in manifest order.
    pub lines: Vec<u8>,
    /// The chunk's predictions, for the `predictions` table.
    pub records: Vec<Record>,
    /// Items by outcome (`predicted`, `missing`, `too_large`, `undecodable`), for metrics.
    pub outcomes: Vec<(&'static str, u64)>,
}

/// Why a chunk could not be scored now; the job retries it.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{0}")]
    Scoring(String),
}

/// The item indices of chunk `chunk`.
pub fn range(job: &Job, chunk: usize) -> Range<usize> {
    let start = chunk * job.chunk_size;
    start..(start + job.chunk_size).min(job.total)
}

pub async fn score(
    ctx: &Context,
    loaded: &LoadedVersion,
    job: &Job,
    manifest: &BatchManifest,
    chunk: usize,
) -> Result<Scored, ChunkError> {
    let indices = range(job, chunk);
    let items = &manifest.items[indices.clone()];
    let bucket = manifest.bucket.as_str();
    let spec = loaded.version.input_spec.clone();
    let keys: Vec<String> = items.iter().map(|item| item.key.clone()).collect();
    let max_pixels = ctx.config.inference.max_image_pixels;
    let max_bytes = ctx.config.inference.max_predict_bytes as u64;
    // Each object is prepared as soon as it arrives, so a chunk holds at most PREPARE_AT_ONCE
    // objects' bytes at a time, each at most `inference.max_predict_bytes` (what one predict
    // request may send); what is kept is the prepared input, a few KiB an item.
    let prepared: Vec<Result<Vec<u8>, (&'static str, String)>> = stream::iter(keys)
        .map(|key| {
            // Owned: the futures run inside a stream that must be Send for any lifetime.
            let (ctx, bucket, spec) = (ctx.clone(), bucket.to_owned(), spec.clone());
            fetch_and_prepare(ctx, bucket, key, spec, max_bytes, max_pixels)
        })
        .buffered(PREPARE_AT_ONCE)
        .try_collect()
        .await?;
    let pixels: Vec<&[u8]> = prepared.iter().filter_map(|p| p.as_deref().ok()).collect();
    let logits = logits(loaded, &pixels, ctx.config.inference.max_batch).await?;
    let mut logits = logits.into_iter();
    let mut scored = Scored { lines: Vec::new(), records: Vec::new(), outcomes: Vec::new() };
    for ((index, item), prepared) in indices.zip(items).zip(&prepared) {
        let mut line = describe(index, item);
        let outcome = match prepared {
            Ok(pixels) => {
                let row = logits.next().expect("one row of logits per prepared image");
                let mut ranked = rank(loaded, &row, pixels, job.top_k, batch_prediction_id(job.id, index)).record;
                ranked.alias.clone_from(&job.alias);
                ranked.batch = Some(job.id);
                line.insert("prediction_id".into(), json!(ranked.id));
                line.insert("predicted".into(), json!(ranked.label));
                line.insert("top".into(), ranked.top.clone());
                scored.records.push(ranked);
                "predicted"
            }
            Err((outcome, error)) => {
                line.insert("error".into(), json!(error));
                outcome
            }
        };
        serde_json::to_writer(&mut scored.lines, &line).expect("lines serialise");
        scored.lines.push(b'\n');
        match scored.outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => scored.outcomes.push((outcome, 1)),
        }
    }
    Ok(scored)
}

/// One item's object, read within `max_bytes` and prepared off the runtime; an item-level
/// outcome (`missing`, `too_large`, `undecodable`) is a line of the part, a storage error the
/// chunk's retry.
async fn fetch_and_prepare(
    ctx: Context,
    bucket: String,
    key: String,
    spec: sluice_core::pipeline::PipelineSpec,
    max_bytes: u64,
    max_pixels: u64,
) -> Result<Result<Vec<u8>, (&'static str, String)>, ChunkError> {
    let bytes = match s3::get_bytes_bounded(&ctx.s3, &bucket, &key, max_bytes).await? {
        ObjectRead::Bytes(bytes) => bytes,
        ObjectRead::Missing => return Ok(Err(("missing", "the object no longer exists".to_owned()))),
        ObjectRead::TooLarge(size) => {
            return Ok(Err((
                "too_large",
                format!("the object is over inference.max_predict_bytes ({max_bytes} bytes; {size} read or declared)"),
            )));
        }
    };
    tokio::task::spawn_blocking(move || {
        sluice_media::prepare(&bytes, &spec, max_pixels)
            .map_err(|e| ("undecodable", format!("the image cannot be used: {e}")))
    })
    .await
    .map_err(|e| ChunkError::Scoring(format!("preparing panicked: {e}")))
}

/// The part object of a chunk parked after its attempts ran out: each of its items gets its line,
/// with `reason` as its error, so every item of the job still has exactly one line.
pub fn parked(job: &Job, manifest: &BatchManifest, chunk: usize, reason: &str) -> (Vec<u8>, u64) {
    let indices = range(job, chunk);
    let mut lines = Vec::new();
    let items = &manifest.items[indices.clone()];
    for (index, item) in indices.zip(items) {
        let mut line = describe(index, item);
        line.insert("error".into(), json!(reason));
        serde_json::to_writer(&mut lines, &line).expect("lines serialise");
        lines.push(b'\n');
    }
    (lines, items.len() as u64)
}

/// What a line says of its item before scoring: index, key, and media id and label when known.
fn describe(index: usize, item: &BatchItem) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("index".into(), json!(index));
    line.insert("key".into(), json!(item.key));
    if let Some(media_id) = item.media_id {
        line.insert("media_id".into(), json!(media_id));
    }
    if let Some(label) = &item.label {
        line.insert("label".into(), json!(label));
    }
    line
}

/// Scores prepared images through the version's batcher, `max_batch` at a time so live requests
/// on the same version keep their turn.
async fn logits(loaded: &LoadedVersion, pixels: &[&[u8]], max_batch: usize) -> Result<Vec<Vec<f32>>, ChunkError> {
    let mut rows = Vec::with_capacity(pixels.len());
    for slice in pixels.chunks(max_batch.max(1)) {
        let images: Vec<u8> = slice.concat();
        let scored = loaded.batcher.score(images, slice.len()).await.map_err(ChunkError::Scoring)?;
        rows.extend(scored.into_iter().map(|s| s.logits));
    }
    Ok(rows)
}
