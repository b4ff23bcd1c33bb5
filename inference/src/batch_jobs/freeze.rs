//! Freezing a job's items at submission: a dataset's processed media under its current pipeline
//! spec, or the objects under an S3 prefix; then the manifest in S3 and the job row with its event.
//! Every check runs before anything is written, so a refused request leaves nothing behind.

use axum::http::StatusCode;
use sluice_core::{
    Context,
    batch_predictions::{BatchItem, BatchManifest},
    db::DbError,
    domain::DatasetName,
    pipeline::current_spec,
    processed,
    s3::{self, S3Error},
};

use super::{
    MAX_ITEMS,
    store::{self, NewJob},
};
use crate::error::InferenceError;

/// Where a job's items come from.
#[derive(Debug, Clone)]
pub enum Source {
    Dataset(DatasetName),
    Prefix { bucket: String, prefix: String },
}

impl Source {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Source::Dataset(dataset) => serde_json::json!({"dataset": dataset}),
            Source::Prefix { bucket, prefix } => serde_json::json!({"bucket": bucket, "prefix": prefix}),
        }
    }
}

fn unusable(code: &'static str, message: String) -> InferenceError {
    InferenceError::refused(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

fn too_many() -> InferenceError {
    unusable("too_many_items", format!("A batch holds at most {MAX_ITEMS} items; split it over several prefixes."))
}

/// The items of `source` in scoring order, and the bucket they are in.
pub async fn items(ctx: &Context, source: &Source) -> Result<(String, Vec<BatchItem>), InferenceError> {
    match source {
        Source::Dataset(dataset) => Ok((ctx.config.s3.bucket.clone(), dataset_items(ctx, dataset).await?)),
        Source::Prefix { bucket, prefix } => Ok((bucket.clone(), prefix_items(ctx, bucket, prefix).await?)),
    }
}

/// The dataset's processed media (labelled or not), each by the output of its first frame.
async fn dataset_items(ctx: &Context, dataset: &DatasetName) -> Result<Vec<BatchItem>, InferenceError> {
    let client = ctx.db.get().await?;
    if !processed::dataset_exists(&client, dataset.as_str()).await? {
        return Err(InferenceError::not_found(format!("No dataset named {dataset}.")));
    }
    let spec_hash = current_spec(&client, dataset.as_str()).await.map_err(DbError::from)?.hash();
    let items: Vec<BatchItem> = processed::first_outputs(&client, dataset.as_str(), &spec_hash, MAX_ITEMS as i64 + 1)
        .await?
        .into_iter()
        .map(|output| BatchItem { media_id: Some(output.media_id), label: output.label, key: output.key })
        .collect();
    if items.is_empty() {
        return Err(unusable(
            "no_processed_items",
            format!("Dataset {dataset} has no processed items under its current pipeline; wait for preprocessing."),
        ));
    }
    if items.len() > MAX_ITEMS {
        return Err(too_many());
    }
    Ok(items)
}

/// Every object under `prefix` in `bucket` (folders markers left out), sorted by key.
async fn prefix_items(ctx: &Context, bucket: &str, prefix: &str) -> Result<Vec<BatchItem>, InferenceError> {
    let own = ctx.config.s3.bucket.as_str();
    if bucket != own && !ctx.config.ingest.import_buckets.iter().any(|b| b == bucket) {
        return Err(InferenceError::refused(
            StatusCode::FORBIDDEN,
            "bucket_not_allowed",
            format!(
                "Batch predictions may read from {own} and the buckets in ingest.import_buckets; {bucket} is not one."
            ),
        ));
    }
    if bucket == own
        && let Some(area) = s3::own_area_overlap(prefix)
    {
        return Err(InferenceError::invalid(format!(
            "The prefix must not overlap Sluice's own objects ({area} in its bucket); put the images under another prefix."
        )));
    }
    let mut keys = s3::list_keys(&ctx.s3, bucket, prefix, MAX_ITEMS).await.map_err(|e| listing_error(bucket, e))?;
    if keys.len() > MAX_ITEMS {
        return Err(too_many());
    }
    if keys.is_empty() {
        return Err(unusable("no_objects", format!("No objects under {prefix:?} in bucket {bucket}.")));
    }
    keys.sort();
    Ok(keys.into_iter().map(|key| BatchItem { key, media_id: None, label: None }).collect())
}

fn listing_error(bucket: &str, err: S3Error) -> InferenceError {
    let why = match err.code() {
        Some("NotFound" | "NoSuchBucket") => "was not found",
        Some("Forbidden" | "AccessDenied") => "is not readable with Sluice's credentials",
        _ => return err.into(),
    };
    unusable("unusable_bucket", format!("Bucket {bucket} {why}."))
}

/// Writes the manifest, then the job row and its event in one transaction; removes the manifest
/// again if the transaction fails.
pub async fn store(ctx: &Context, job: &NewJob, manifest: &BatchManifest) -> Result<(), InferenceError> {
    let body = serde_json::to_vec(manifest).expect("manifests serialise");
    let bucket = &ctx.config.s3.bucket;
    s3::put_bytes(&ctx.s3, bucket, &job.manifest_key, body, "application/json").await?;
    if let Err(err) = store::queue(ctx, job).await {
        if let Err(cleanup) = ctx.s3.delete_object().bucket(bucket).key(&job.manifest_key).send().await {
            tracing::warn!(error = %S3Error::from_sdk("DeleteObject", cleanup), key = %job.manifest_key,
                "cannot remove the manifest of a job that was not queued");
        }
        return Err(err.into());
    }
    Ok(())
}
