//! The training contract: dataset snapshots (what a job trains on, frozen and content-addressed),
//! their deterministic train/validation split, the S3 layout of snapshots, checkpoints and
//! artifacts, and the events on `training.trials`, `training.results` and `retrain.requests`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{events::Event, pipeline::PipelineSpec};

/// One labelled item of a snapshot: a media item and its processed outputs (one image, or the
/// sampled frames of a video, all with the item's label).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotItem {
    pub media_id: Uuid,
    pub label: String,
    pub keys: Vec<String>,
}

/// The frozen set of processed, labelled items a training job uses. Its id is the SHA-256 of its
/// canonical JSON (items sorted by media id), so the same data always has the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub dataset: String,
    pub spec: PipelineSpec,
    pub spec_hash: String,
    /// Class labels in index order (sorted), the classifier's output order.
    pub labels: Vec<String>,
    pub items: Vec<SnapshotItem>,
}

impl Snapshot {
    /// Builds a snapshot with items in canonical order and labels sorted.
    pub fn new(dataset: &str, spec: PipelineSpec, mut items: Vec<SnapshotItem>) -> Self {
        items.sort_by_key(|item| item.media_id);
        for item in &mut items {
            item.keys.sort();
        }
        let mut labels: Vec<String> = items.iter().map(|item| item.label.clone()).collect();
        labels.sort();
        labels.dedup();
        let spec_hash = spec.hash();
        Self { dataset: dataset.to_owned(), spec, spec_hash, labels, items }
    }

    /// The content hash (64 hex digits) of the canonical JSON.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_json()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshots serialise")
    }

    /// Splits the items into (train, validation) indices, deterministically from `seed`:
    /// stratified by label, each label's items ordered by a seeded hash of their media id and
    /// the first `fraction` of them (at least one when a label has two or more items) held out.
    /// Items, not frames, are split, so frames of one video never straddle the split.
    pub fn split(&self, seed: u64, fraction: f64) -> (Vec<usize>, Vec<usize>) {
        let mut train = Vec::new();
        let mut validation = Vec::new();
        for label in &self.labels {
            let mut members: Vec<(String, usize)> = self
                .items
                .iter()
                .enumerate()
                .filter(|(_, item)| &item.label == label)
                .map(|(index, item)| {
                    let mut hasher = Sha256::new();
                    hasher.update(seed.to_le_bytes());
                    hasher.update(item.media_id.as_bytes());
                    (hex::encode(hasher.finalize()), index)
                })
                .collect();
            members.sort();
            let held = if members.len() >= 2 {
                ((members.len() as f64 * fraction).round() as usize).clamp(1, members.len() - 1)
            } else {
                0
            };
            validation.extend(members[..held].iter().map(|(_, index)| *index));
            train.extend(members[held..].iter().map(|(_, index)| *index));
        }
        train.sort_unstable();
        validation.sort_unstable();
        (train, validation)
    }
}

/// `snapshots/<dataset>/<snapshot id>.json`.
pub fn snapshot_key(dataset: &str, snapshot_id: &str) -> String {
    format!("snapshots/{dataset}/{snapshot_id}.json")
}

/// `checkpoints/<job>/<trial>.safetensors`: weights, optimiser state and counters after the last
/// completed epoch; a redelivered trial resumes from it.
pub fn checkpoint_key(job_id: Uuid, trial_id: Uuid) -> String {
    format!("checkpoints/{job_id}/{trial_id}.safetensors")
}

/// `models/<model>/<job>/<trial>.safetensors`: a trial's best weights, immutable once written.
pub fn artifact_key(model: &str, job_id: Uuid, trial_id: Uuid) -> String {
    format!("models/{model}/{job_id}/{trial_id}.safetensors")
}

/// The JSON manifest written beside an artifact.
pub fn manifest_key(model: &str, job_id: Uuid, trial_id: Uuid) -> String {
    format!("models/{model}/{job_id}/{trial_id}.json")
}

/// A trial for a worker (on `training.trials`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialAssigned {
    pub job_id: Uuid,
    pub trial_id: Uuid,
    pub model: String,
    pub architecture: String,
    pub snapshot_key: String,
    pub snapshot_id: String,
    /// Hyper-parameters, the full set (defaults filled in).
    pub params: serde_json::Value,
    pub seed: u64,
    pub validation_split: f64,
    /// Successive-halving rung (0 for grid and random).
    pub rung: u32,
    /// A trial of an earlier rung whose checkpoint this one continues from.
    pub parent: Option<Uuid>,
}

impl Event for TrialAssigned {
    const TYPE: &'static str = "training.trial_assigned";
    const SCHEMA_VERSION: u32 = 1;
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: u32,
    pub epochs: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub learning_rate: f64,
    pub seconds: f64,
}

/// A heartbeat after each epoch (on `training.results`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialProgress {
    pub job_id: Uuid,
    pub trial_id: Uuid,
    pub worker: String,
    pub metrics: EpochMetrics,
    /// The epoch this attempt started from: 0 for a fresh start, k when resumed from the
    /// checkpoint of epoch k (a redelivered trial or a halving promotion).
    #[serde(default)]
    pub resumed_from: u32,
}

impl Event for TrialProgress {
    const TYPE: &'static str = "training.trial_progress";
    const SCHEMA_VERSION: u32 = 1;
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl TrialOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialOutcome::Succeeded => "succeeded",
            TrialOutcome::Failed => "failed",
            TrialOutcome::Cancelled => "cancelled",
        }
    }
}

/// A stored artifact: where it is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub key: String,
    pub sha256: String,
    pub size_bytes: i64,
}

/// The end of a trial (on `training.results`), published after its artifact is in S3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialFinished {
    pub job_id: Uuid,
    pub trial_id: Uuid,
    pub worker: String,
    pub outcome: TrialOutcome,
    /// Best-epoch validation metrics and training summary.
    pub metrics: serde_json::Value,
    pub artifact: Option<ArtifactRef>,
    /// Reference statistics for drift detection, computed on the validation split.
    pub reference: serde_json::Value,
    pub error: Option<String>,
    pub duration_ms: i64,
}

impl Event for TrialFinished {
    const TYPE: &'static str = "training.trial_finished";
    const SCHEMA_VERSION: u32 = 1;
}

/// A request to train a model again on current data (on `retrain.requests`, keyed by model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainRequested {
    pub model: String,
    pub reason: String,
    /// What triggered it (drift statistics, live accuracy), kept with the job.
    pub evidence: serde_json::Value,
    pub requested_by: String,
}

impl Event for RetrainRequested {
    const TYPE: &'static str = "retrain.requested";
    const SCHEMA_VERSION: u32 = 1;
}

/// The `type` field of an event, to route messages of several types on one topic.
pub fn event_type(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        event_type: String,
    }
    serde_json::from_slice::<Head>(payload).ok().map(|head| head.event_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u128, label: &str) -> SnapshotItem {
        SnapshotItem { media_id: Uuid::from_u128(n), label: label.into(), keys: vec![format!("k{n}")] }
    }

    #[test]
    fn snapshot_id_depends_on_content_not_order() {
        let a = Snapshot::new("d", PipelineSpec::default(), vec![item(1, "a"), item(2, "b")]);
        let b = Snapshot::new("d", PipelineSpec::default(), vec![item(2, "b"), item(1, "a")]);
        let c = Snapshot::new("d", PipelineSpec::default(), vec![item(2, "a"), item(1, "a")]);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.labels, vec!["a", "b"]);
    }

    #[test]
    fn split_is_stratified_deterministic_and_seeded() {
        let items: Vec<_> = (0..100).map(|n| item(n, if n % 2 == 0 { "even" } else { "odd" })).collect();
        let snapshot = Snapshot::new("d", PipelineSpec::default(), items);
        let (train, validation) = snapshot.split(7, 0.2);
        assert_eq!(validation.len(), 20);
        assert_eq!(train.len(), 80);
        let held_even = validation.iter().filter(|&&i| snapshot.items[i].label == "even").count();
        assert_eq!(held_even, 10);
        assert_eq!(snapshot.split(7, 0.2), (train.clone(), validation.clone()));
        assert_ne!(snapshot.split(8, 0.2).1, validation);
    }

    #[test]
    fn split_keeps_one_item_per_label_for_training() {
        let snapshot = Snapshot::new("d", PipelineSpec::default(), vec![item(1, "a"), item(2, "a"), item(3, "b")]);
        let (train, validation) = snapshot.split(1, 0.9);
        assert_eq!(validation.len(), 1);
        assert_eq!(train.len(), 2);
    }

    #[test]
    fn event_type_is_read_without_knowing_the_payload() {
        let envelope = crate::events::Envelope::new(RetrainRequested {
            model: "m".into(),
            reason: "drift".into(),
            evidence: serde_json::json!({}),
            requested_by: "inference".into(),
        });
        assert_eq!(event_type(&envelope.to_json()).as_deref(), Some("retrain.requested"));
        assert_eq!(event_type(b"not json"), None);
    }
}
