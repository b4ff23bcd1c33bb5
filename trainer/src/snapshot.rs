//! Dataset snapshots: freezing what a job trains on, and loading it into memory on a worker.
//!
//! A job freezes the dataset's processed, labelled items under the current pipeline spec into a
//! manifest in S3 whose content hash is the snapshot id. Workers stream the outputs from S3 with
//! bounded concurrency, decode them to `u8` CHW tensors and keep the last snapshot in memory, so
//! the trials of one job on one worker download and decode the data once.

use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt, stream};
use sluice_core::{
    Context,
    db::DbError,
    pipeline::{Color, PipelineSpec, current_spec},
    processed,
    s3::{self, S3Error},
    training::{Snapshot, snapshot_key},
};
use sluice_media::Pixels;
use sluice_nn::{InputShape, Samples};

/// Why a snapshot could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The data cannot be used (missing or undecodable objects): the trial fails.
    #[error("{0}")]
    Unusable(String),
}

/// Collects the dataset's processed, labelled items under its current spec.
pub async fn collect(ctx: &Context, dataset: &str) -> Result<Snapshot, SnapshotError> {
    let client = ctx.db.get().await.map_err(DbError::from)?;
    let spec = current_spec(&client, dataset).await.map_err(DbError::from)?;
    let items = processed::labelled_outputs(&client, dataset, &spec.hash()).await?;
    Ok(Snapshot::new(dataset, spec, items))
}

/// Stores the manifest (content-addressed: writing it twice writes the same bytes) and returns
/// its key.
pub async fn store(ctx: &Context, snapshot: &Snapshot) -> Result<String, SnapshotError> {
    let key = snapshot_key(&snapshot.dataset, &snapshot.id());
    s3::put_bytes(&ctx.s3, &ctx.config.s3.bucket, &key, snapshot.to_json(), "application/json").await?;
    Ok(key)
}

/// A snapshot decoded into memory: each item's frames, `u8` CHW, one after another.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub id: String,
    pub snapshot: Snapshot,
    pub shape: InputShape,
    frames: Vec<Vec<u8>>,
}

impl LoadedSnapshot {
    /// Each item's number of frames (its rows in [`LoadedSnapshot::samples`]).
    pub fn frame_counts(&self, items: &[usize]) -> Vec<usize> {
        items.iter().map(|&index| self.frames[index].len() / self.shape.len().max(1)).collect()
    }

    /// The samples (every frame of every item) of the given item indices.
    pub fn samples(&self, items: &[usize]) -> Samples {
        let frame_len = self.shape.len();
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for &index in items {
            let item = &self.snapshot.items[index];
            let class = self.snapshot.labels.binary_search(&item.label).expect("labels come from the items") as u32;
            let data = &self.frames[index];
            images.extend_from_slice(data);
            labels.extend(std::iter::repeat_n(class, data.len() / frame_len));
        }
        Samples { shape: self.shape, images, labels }
    }
}

/// The last snapshot this process loaded, shared by the trials that follow.
#[derive(Debug, Default, Clone)]
pub struct Cache(Arc<Mutex<Option<Arc<LoadedSnapshot>>>>);

impl Cache {
    /// Returns the snapshot, loading it from S3 unless it is the one already in memory.
    pub async fn load(&self, ctx: &Context, key: &str, id: &str) -> Result<Arc<LoadedSnapshot>, SnapshotError> {
        if let Some(hit) = self.0.lock().expect("cache lock").as_ref().filter(|loaded| loaded.id == id) {
            metrics::counter!("sluice_trainer_snapshot_loads_total", "source" => "memory").increment(1);
            return Ok(hit.clone());
        }
        let loaded = Arc::new(fetch(ctx, key, id).await?);
        metrics::counter!("sluice_trainer_snapshot_loads_total", "source" => "s3").increment(1);
        *self.0.lock().expect("cache lock") = Some(loaded.clone());
        Ok(loaded)
    }
}

/// A stored snapshot's manifest (its item list), without its images.
pub async fn manifest(ctx: &Context, key: &str, id: &str) -> Result<Snapshot, SnapshotError> {
    let manifest = s3::get_bytes(&ctx.s3, &ctx.config.s3.bucket, key)
        .await?
        .ok_or_else(|| SnapshotError::Unusable(format!("snapshot manifest {key} is missing")))?;
    let snapshot: Snapshot = serde_json::from_slice(&manifest)
        .map_err(|e| SnapshotError::Unusable(format!("snapshot manifest {key} is unreadable: {e}")))?;
    if snapshot.id() != id {
        return Err(SnapshotError::Unusable(format!("snapshot manifest {key} does not hash to {id}")));
    }
    Ok(snapshot)
}

async fn fetch(ctx: &Context, key: &str, id: &str) -> Result<LoadedSnapshot, SnapshotError> {
    let bucket = &ctx.config.s3.bucket;
    let snapshot = manifest(ctx, key, id).await?;
    let shape = input_shape(&snapshot.spec);
    let keys: Vec<(usize, String)> =
        snapshot.items.iter().enumerate().flat_map(|(i, item)| item.keys.iter().map(move |k| (i, k.clone()))).collect();
    let mut frames = vec![Vec::new(); snapshot.items.len()];
    // Downloads run `load_concurrency` at a time; decoding runs on the blocking pool. Only the
    // decoded frames are kept, never all the encoded bytes at once.
    let mut decoded = stream::iter(keys)
        .map(|(item, key)| async move {
            let bytes = s3::get_bytes(&ctx.s3, bucket, &key)
                .await?
                .ok_or_else(|| SnapshotError::Unusable(format!("processed output {key} is missing")))?;
            let pixels = tokio::task::spawn_blocking(move || decode(&bytes, shape).map_err(|e| format!("{key}: {e}")))
                .await
                .map_err(|e| SnapshotError::Unusable(format!("decoding panicked: {e}")))?
                .map_err(SnapshotError::Unusable)?;
            Ok::<_, SnapshotError>((item, pixels))
        })
        .buffered(ctx.config.trainer.load_concurrency);
    while let Some((item, pixels)) = decoded.try_next().await? {
        frames[item].extend_from_slice(&pixels);
    }
    Ok(LoadedSnapshot { id: id.to_owned(), snapshot, shape, frames })
}

/// The shape of the images a pipeline spec makes: what a network trained on them takes in.
pub fn input_shape(spec: &PipelineSpec) -> InputShape {
    InputShape {
        channels: if spec.color == Color::Gray { 1 } else { 3 },
        height: spec.height as usize,
        width: spec.width as usize,
    }
}

/// Decodes one processed output to `u8` CHW at the snapshot's shape (outputs are made at that
/// size; anything else is resized, so a hand-placed object cannot break a job).
fn decode(bytes: &[u8], shape: InputShape) -> Result<Vec<u8>, image::ImageError> {
    let image = image::load_from_memory(bytes)?;
    let (w, h) = (shape.width as u32, shape.height as u32);
    let image = if image.width() != w || image.height() != h {
        image.resize_exact(w, h, image::imageops::FilterType::Triangle)
    } else {
        image
    };
    let pixels = if shape.channels == 1 { Pixels::Gray(image.to_luma8()) } else { Pixels::Rgb(image.to_rgb8()) };
    Ok(sluice_media::to_chw(&pixels))
}
