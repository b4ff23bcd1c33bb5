//! The batch-prediction contract: the `predictions.batch` event, the S3 layout of a job (its
//! frozen manifest and its result parts), and the ids its predictions get.
//!
//! A job's items are frozen at submission into `batch-predictions/<id>/manifest.json`; workers
//! score them in fixed chunks, chunk `n` becoming `batch-predictions/<id>/part-<n:05>.jsonl`.
//! Prediction ids are derived from the job id and the item's index, so a chunk scored twice
//! (after a crash) writes the same lines under the same ids.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::events::Event;

crate::text_enum! {
    /// A batch-prediction job's status (`batch_predictions.status`).
    pub enum BatchStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// A queued batch-prediction job (on `predictions.batch`, keyed by job id). The job's row and
/// manifest hold everything else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPredictionRequested {
    pub job_id: Uuid,
}

impl Event for BatchPredictionRequested {
    const TYPE: &'static str = "predictions.batch_requested";
    const SCHEMA_VERSION: u32 = 1;
}

/// One item to score: an object key in the manifest's bucket, and for dataset items the media
/// id and label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The frozen item list of a job, in scoring order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchManifest {
    pub job_id: Uuid,
    /// The bucket every item's key is in.
    pub bucket: String,
    pub items: Vec<BatchItem>,
}

/// `batch-predictions/<id>/`: where a job's manifest and results live.
pub fn batch_prefix(job_id: Uuid) -> String {
    format!("batch-predictions/{job_id}/")
}

/// `batch-predictions/<id>/manifest.json`.
pub fn batch_manifest_key(job_id: Uuid) -> String {
    format!("{}manifest.json", batch_prefix(job_id))
}

/// `batch-predictions/<id>/part-<chunk:05>.jsonl`: one JSON line per item of the chunk.
pub fn batch_part_key(job_id: Uuid, chunk: usize) -> String {
    format!("{}part-{chunk:05}.jsonl", batch_prefix(job_id))
}

/// The id of the prediction for item `index` of a job: the same every time the item is scored.
pub fn batch_prediction_id(job_id: Uuid, index: usize) -> Uuid {
    let digest = Sha256::new().chain_update(job_id.as_bytes()).chain_update((index as u64).to_le_bytes()).finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_keys_sort_in_chunk_order() {
        let job = Uuid::from_u128(7);
        assert_eq!(batch_part_key(job, 3), format!("batch-predictions/{job}/part-00003.jsonl"));
        assert!(batch_part_key(job, 9) < batch_part_key(job, 10));
        assert!(batch_manifest_key(job).starts_with(&batch_prefix(job)));
    }

    #[test]
    fn prediction_ids_are_stable_per_job_and_item() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(batch_prediction_id(a, 5), batch_prediction_id(a, 5));
        assert_ne!(batch_prediction_id(a, 5), batch_prediction_id(a, 6));
        assert_ne!(batch_prediction_id(a, 5), batch_prediction_id(b, 5));
    }

    #[test]
    fn manifest_items_omit_what_they_do_not_know() {
        let item = BatchItem { key: "in/a.png".into(), media_id: None, label: None };
        assert_eq!(serde_json::to_string(&item).expect("json"), r#"{"key":"in/a.png"}"#);
    }
}
