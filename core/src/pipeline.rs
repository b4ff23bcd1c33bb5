//! The preprocessing contract: a dataset's pipeline spec (versioned by content hash), the S3
//! layout of processed outputs, and the `media.processed` / `media.dlq` events.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{domain::Invalid, events::Event};

/// How an image is brought to the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scale to cover the target, then crop the centre.
    Cover,
    /// Scale to fit inside the target, then pad with black.
    Contain,
    /// Stretch to the target, ignoring the aspect ratio.
    Fill,
}

/// Output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Rgb,
    Gray,
}

/// Output encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Png,
}

/// Which video frames are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VideoSampling {
    /// Frames per second sampled (ignored when `keyframes` is set).
    pub fps: f64,
    /// At most this many frames per video.
    pub max_frames: u32,
    /// Keep only key frames instead of sampling at `fps`.
    #[serde(default)]
    pub keyframes: bool,
}

/// What preprocess makes of every item of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Output width in pixels, 1 to 4096.
    pub width: u32,
    /// Output height in pixels, 1 to 4096.
    pub height: u32,
    pub fit: Fit,
    pub color: Color,
    pub format: OutputFormat,
    pub video: VideoSampling,
}

impl Default for PipelineSpec {
    /// 64×64, cover, RGB, PNG; video at 1 fps, at most 32 frames.
    fn default() -> Self {
        Self {
            width: 64,
            height: 64,
            fit: Fit::Cover,
            color: Color::Rgb,
            format: OutputFormat::Png,
            video: VideoSampling { fps: 1.0, max_frames: 32, keyframes: false },
        }
    }
}

impl PipelineSpec {
    /// Largest output side accepted.
    pub const MAX_SIDE: u32 = 4096;
    /// Most raw frame bytes one video may produce (they are buffered before encoding).
    pub const MAX_FRAME_BYTES: u64 = 256 * 1024 * 1024;

    pub fn validate(&self) -> Result<(), Invalid> {
        let side = 1..=Self::MAX_SIDE;
        if !side.contains(&self.width) || !side.contains(&self.height) {
            return Err(Invalid(format!("width and height must be between 1 and {}", Self::MAX_SIDE)));
        }
        if !(self.video.fps > 0.0 && self.video.fps <= 60.0) {
            return Err(Invalid("video.fps must be above 0 and at most 60".into()));
        }
        if !(1..=1000).contains(&self.video.max_frames) {
            return Err(Invalid("video.max_frames must be between 1 and 1000".into()));
        }
        // ffmpeg's frames are held in memory before encoding: bound them.
        let raw = u64::from(self.width) * u64::from(self.height) * 3 * u64::from(self.video.max_frames);
        if raw > Self::MAX_FRAME_BYTES {
            return Err(Invalid(format!(
                "width × height × 3 × video.max_frames must stay under {} MiB; lower the size or the frame count",
                Self::MAX_FRAME_BYTES / (1024 * 1024)
            )));
        }
        Ok(())
    }

    /// The spec's version: the first 16 hex digits of the SHA-256 of its canonical JSON.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("specs serialise");
        hex::encode(Sha256::digest(canonical))[..16].to_owned()
    }
}

/// A dataset's current spec: the one set with `PUT /v1/datasets/{name}/pipeline`, else the default.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %dataset))]
pub async fn current_spec<C>(client: &C, dataset: &str) -> Result<PipelineSpec, tokio_postgres::Error>
where
    C: deadpool_postgres::GenericClient,
{
    let statement = client.prepare_cached("SELECT spec FROM pipelines WHERE dataset = $1").await?;
    Ok(spec_of(client.query_opt(&statement, &[&dataset]).await?))
}

/// Whether `spec_hash` is the dataset's current spec, with its pipeline row locked until `tx`
/// ends (a spec change waits for it). A worker's outcome under an older spec is stale then: it
/// must not overwrite what another worker recorded under the current one.
pub async fn spec_is_current(
    tx: &deadpool_postgres::Transaction<'_>,
    dataset: &str,
    spec_hash: &str,
) -> Result<bool, tokio_postgres::Error> {
    let statement = tx.prepare_cached("SELECT spec FROM pipelines WHERE dataset = $1 FOR SHARE").await?;
    Ok(spec_of(tx.query_opt(&statement, &[&dataset]).await?).hash() == spec_hash)
}

fn spec_of(row: Option<tokio_postgres::Row>) -> PipelineSpec {
    match row {
        Some(row) => serde_json::from_value(row.get::<_, serde_json::Value>("spec")).unwrap_or_default(),
        None => PipelineSpec::default(),
    }
}

/// `processed/<dataset>/<spec hash>/<media id>/<frame index>.png`: one key per
/// (media, spec, frame), so a redelivered event overwrites the same objects.
/// Longest side of an image Sluice decodes, whatever its pixel count (JPEG's own maximum). A
/// 50,000,000×1 image is within the pixel limit, but resizing it takes filter weights for every
/// source column: gigabytes for one request.
pub const MAX_IMAGE_SIDE: u32 = 65_535;

/// An image over the size limits, by the size its header gives: nothing should be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OversizeImage {
    #[error("the image claims {width}×{height} pixels, over the limit of {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("the image claims {width}×{height} pixels; no side may be over {max} pixels")]
    SideTooLong { width: u32, height: u32, max: u32 },
}

/// The pixel limit, and [`MAX_IMAGE_SIDE`] however few pixels there are.
pub fn check_image_size(width: u32, height: u32, max_pixels: u64) -> Result<(), OversizeImage> {
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(OversizeImage::TooManyPixels { width, height, limit: max_pixels });
    }
    if width.max(height) > MAX_IMAGE_SIDE {
        return Err(OversizeImage::SideTooLong { width, height, max: MAX_IMAGE_SIDE });
    }
    Ok(())
}

pub fn output_key(dataset: &str, spec_hash: &str, media_id: Uuid, frame_index: u32) -> String {
    format!("processed/{dataset}/{spec_hash}/{media_id}/{frame_index:05}.png")
}

/// One processed output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub key: String,
    pub width: u32,
    pub height: u32,
    pub frame_index: u32,
    /// Position in the video; `None` for images.
    pub timestamp_ms: Option<i64>,
}

/// A media item became training-ready data under a spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaProcessed {
    pub media_id: Uuid,
    pub dataset: String,
    pub label: Option<String>,
    pub kind: String,
    pub spec_hash: String,
    pub outputs: Vec<Output>,
}

impl Event for MediaProcessed {
    const TYPE: &'static str = "media.processed";
    const SCHEMA_VERSION: u32 = 1;
}

/// A media item that can never be processed, with the reason (on `media.dlq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaFailed {
    pub media_id: Option<Uuid>,
    pub dataset: Option<String>,
    pub reason: String,
    /// The offending message's topic, partition and offset.
    pub source: String,
}

impl Event for MediaFailed {
    const TYPE: &'static str = "media.failed";
    const SCHEMA_VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `pipeline_spec` fuzz target: without exact float parsing, a spec with an
    /// `fps` of many digits hashed differently after a trip through its own JSON (and so through
    /// PostgreSQL), and preprocess would have written its outputs under another spec hash.
    #[test]
    fn a_specs_hash_survives_its_own_json_whatever_the_digits() {
        let text = r#"{"width": 62, "height": 63, "fit": "cover", "color": "rgb", "format": "png",
            "video": {"fps": 0.01110000014528416505301053836, "max_frames": 32, "keyframes": false}}"#;
        let spec: PipelineSpec = serde_json::from_str(text).expect("a spec");
        let again: PipelineSpec = serde_json::from_slice(&serde_json::to_vec(&spec).expect("json")).expect("a spec");
        assert_eq!(again, spec);
        assert_eq!(again.hash(), spec.hash());
    }

    #[test]
    fn the_hash_changes_with_the_spec_and_only_then() {
        let a = PipelineSpec::default();
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.width = 128;
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
    }

    #[test]
    fn refuses_sizes_and_rates_out_of_range() {
        let mut spec = PipelineSpec { width: 0, ..PipelineSpec::default() };
        assert!(spec.validate().is_err());
        spec.width = 64;
        spec.video.fps = 0.0;
        assert!(spec.validate().is_err());
        assert!(PipelineSpec::default().validate().is_ok());
    }
}
