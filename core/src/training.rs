//! The training contract: dataset snapshots (what a job trains on, frozen and content-addressed),
//! their deterministic train/validation/calibration/test split, the S3 layout of snapshots, checkpoints and
//! artifacts, and the events on `training.trials`, `training.results` and `retrain.requests`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{events::Event, pipeline::PipelineSpec};

crate::text_enum! {
    /// A training job's or trial's status (`training_jobs.status`, `training_trials.status`).
    pub enum RunStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    /// Whether nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

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

    /// Each item's split under `splits`, as indices into `items`. Items, not frames, are split,
    /// so the frames of one video stay together. Only when the hash leaves the validation split
    /// empty (a dataset of a handful of items) does the training item with the lowest draw move
    /// there, so early stopping has something to look at.
    pub fn partition(&self, splits: &Splits) -> Partition {
        let mut partition = Partition::default();
        let mut lowest_train: Option<(f64, usize)> = None;
        for (index, item) in self.items.iter().enumerate() {
            let draw = splits.draw(&self.dataset, item.media_id);
            match splits.split_of_draw(draw) {
                Split::Train => {
                    partition.train.push(index);
                    if lowest_train.is_none_or(|(lowest, _)| draw < lowest) {
                        lowest_train = Some((draw, index));
                    }
                }
                Split::Validation => partition.validation.push(index),
                Split::Calibration => partition.calibration.push(index),
                Split::Test => partition.test.push(index),
            }
        }
        if partition.validation.is_empty()
            && partition.train.len() >= 2
            && let Some((_, index)) = lowest_train
        {
            partition.train.retain(|&i| i != index);
            partition.validation.push(index);
        }
        partition
    }
}

/// The part of a dataset an item belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Fits the weights.
    Train,
    /// Early stopping and ranking trials.
    Validation,
    /// Fits the softmax temperature behind the label-free accuracy estimate and the drift
    /// reference.
    Calibration,
    /// Only for reporting and for the promotion gate.
    Test,
}

/// How a job divides its dataset: the fractions held out of training, and the seed of the hash
/// that assigns items. An item's split is a pure function of (dataset, media id, seed), so it
/// never changes as the dataset grows: an item a model trained on never lands in a later job's
/// test split under the same seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    pub validation: f64,
    pub calibration: f64,
    pub test: f64,
    pub seed: u64,
}

impl Default for Splits {
    fn default() -> Self {
        Self { validation: 0.15, calibration: 0.1, test: 0.15, seed: 0 }
    }
}

impl Splits {
    /// Each fraction in [0, 1), validation above 0, and at least 10 % left to train on.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [("validation", self.validation), ("calibration", self.calibration), ("test", self.test)] {
            if !(value.is_finite() && (0.0..1.0).contains(&value)) {
                return Err(format!("the {name} fraction must be at least 0 and below 1, got {value}"));
            }
        }
        if self.validation <= 0.0 {
            return Err("the validation fraction must be above 0 (it drives early stopping)".into());
        }
        if self.validation + self.calibration + self.test > 0.9 {
            return Err("validation, calibration and test together may hold out at most 0.9".into());
        }
        Ok(())
    }

    /// The split of one item: the first 8 bytes of SHA-256(dataset, NUL, media id, seed), as a
    /// fraction of 2^64, against the cumulative fractions (test first, then calibration, then
    /// validation; the rest trains).
    pub fn of(&self, dataset: &str, media_id: Uuid) -> Split {
        self.split_of_draw(self.draw(dataset, media_id))
    }

    /// An item's uniform draw in [0, 1).
    fn draw(&self, dataset: &str, media_id: Uuid) -> f64 {
        let mut hasher = Sha256::new();
        hasher.update(dataset.as_bytes());
        hasher.update([0]);
        hasher.update(media_id.as_bytes());
        hasher.update(self.seed.to_le_bytes());
        let digest = hasher.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / 2f64.powi(64)
    }

    fn split_of_draw(&self, draw: f64) -> Split {
        if draw < self.test {
            Split::Test
        } else if draw < self.test + self.calibration {
            Split::Calibration
        } else if draw < self.test + self.calibration + self.validation {
            Split::Validation
        } else {
            Split::Train
        }
    }
}

/// A snapshot's items by split (indices into its `items`, ascending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub calibration: Vec<usize>,
    pub test: Vec<usize>,
}

impl Partition {
    /// Item counts per split, as versions and jobs report them.
    pub fn sizes(&self) -> serde_json::Value {
        serde_json::json!({
            "train": self.train.len(),
            "validation": self.validation.len(),
            "calibration": self.calibration.len(),
            "test": self.test.len(),
        })
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

/// `models/<model>/<job>/<trial>-<sha256 prefix>.safetensors`: a trial's best weights, named by
/// their content, so an object is never overwritten with other bytes: a trial run twice (its
/// first worker killed after reporting, the redelivery resuming from a checkpoint and training
/// on) writes a second object instead of replacing the one its recorded result names (the local
/// S3 has no versioning and ignores conditional PUTs to catch it otherwise).
pub fn artifact_key(model: &str, job_id: Uuid, trial_id: Uuid, sha256: &str) -> String {
    format!("models/{model}/{job_id}/{trial_id}-{}.safetensors", sha_prefix(sha256))
}

/// The JSON manifest written beside an artifact (same name, `.json`).
pub fn manifest_key(model: &str, job_id: Uuid, trial_id: Uuid, sha256: &str) -> String {
    format!("models/{model}/{job_id}/{trial_id}-{}.json", sha_prefix(sha256))
}

/// The first 16 hex digits of a digest (64 bits: no two artifacts of one trial share them).
fn sha_prefix(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
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
    /// The job's splits; absent in trials queued before three-way splits, which held out
    /// `validation_split` only.
    #[serde(default)]
    pub splits: Option<Splits>,
    /// Successive-halving rung (0 for grid and random).
    pub rung: u32,
    /// A trial of an earlier rung whose checkpoint this one continues from.
    pub parent: Option<Uuid>,
    /// The production version the job compares its model with (`promote: if_better`): the
    /// worker, which holds the data, scores it on the same test items as the trial's model.
    #[serde(default)]
    pub baseline_version: Option<i32>,
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
    /// The model on the job's test split (none when the job holds no test items).
    #[serde(default)]
    pub test: Option<TestScores>,
}

/// A trial's model on its job's test split, scored by the worker that trained it and holds the
/// data, so the coordinator registers and gates the best trial without loading the snapshot.
/// Items are in the order of the snapshot's test split (`Snapshot::partition`), which the
/// coordinator recomputes from the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestScores {
    /// Per item: is the model's top class (frames' mean, calibrated) the item's label?
    pub correct: Hits,
    /// Accuracy, macro F1, per-class metrics, confusion matrix and calibration on these items.
    pub report: serde_json::Value,
    /// The baseline version on the same items, when the trial was given one.
    pub baseline: Option<BaselineScores>,
}

/// The baseline (production) version on a trial's test items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineScores {
    pub version: i32,
    /// Per item: is its top class the item's label (matched by name)? `None` when its artifact
    /// could not be scored, `note` saying why.
    pub correct: Option<Hits>,
    pub note: Option<String>,
}

/// Right or wrong per item, written as a string of `1` and `0` so a result for a test split of
/// 100,000 items stays far below a Kafka message's limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hits(pub Vec<bool>);

impl Serialize for Hits {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|&hit| if hit { '1' } else { '0' }).collect();
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Hits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.chars()
            .map(|c| match c {
                '1' => Ok(true),
                '0' => Ok(false),
                other => Err(serde::de::Error::custom(format!("{other:?} in a hit string"))),
            })
            .collect::<Result<_, _>>()
            .map(Hits)
    }
}

impl TrialFinished {
    /// The same trial ended as failed with `error`, keeping none of what a success carries.
    pub fn into_failed(self, error: String) -> Self {
        Self {
            outcome: TrialOutcome::Failed,
            metrics: serde_json::Value::Null,
            artifact: None,
            reference: serde_json::Value::Null,
            error: Some(error),
            test: None,
            ..self
        }
    }

    /// What makes a result unusable, checked before it is recorded: a success must name an
    /// artifact of its own trial (`models/<model>/<job>/<trial>-<sha>.safetensors`, a sha256, a
    /// size) and carry validation metrics (an object with `val_accuracy` in 0..=1) and reference
    /// statistics, since registering the best trial relies on all of them.
    pub fn malformed(&self) -> Option<String> {
        if self.outcome != TrialOutcome::Succeeded {
            return None;
        }
        let Some(artifact) = &self.artifact else { return Some("a succeeded trial without an artifact".into()) };
        let sha_ok =
            artifact.sha256.len() == 64 && artifact.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !sha_ok {
            return Some("the artifact's sha256 is not 64 lowercase hex digits".into());
        }
        let own = format!("/{}/{}-{}.safetensors", self.job_id, self.trial_id, sha_prefix(&artifact.sha256));
        if !artifact.key.starts_with("models/") || !artifact.key.ends_with(&own) || artifact.key.len() > 1024 {
            return Some(format!("the artifact key {:?} is not this trial's", artifact.key));
        }
        if artifact.size_bytes <= 0 {
            return Some("the artifact's size is not positive".into());
        }
        let accuracy = self.metrics.as_object().and_then(|m| m.get("val_accuracy")).and_then(serde_json::Value::as_f64);
        if !accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)) {
            return Some("the metrics hold no val_accuracy between 0 and 1".into());
        }
        if let Err(err) = serde_json::from_value::<crate::reference::Reference>(self.reference.clone()) {
            return Some(format!("the reference statistics are unreadable: {err}"));
        }
        None
    }
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

    #[test]
    fn a_success_result_must_hold_what_registration_needs() {
        let (job_id, trial_id, sha256) = (Uuid::now_v7(), Uuid::now_v7(), "ab".repeat(32));
        let images = [vec![0u8; 12], vec![255u8; 12]].concat();
        let reference = crate::reference::Reference::compute(&images, 3, &[0, 1], &[vec![5.0, 0.0], vec![0.0, 5.0]], 2);
        let good = TrialFinished {
            job_id,
            trial_id,
            worker: "w".into(),
            outcome: TrialOutcome::Succeeded,
            metrics: serde_json::json!({"val_accuracy": 0.75, "val_loss": null}),
            artifact: Some(ArtifactRef { key: artifact_key("m", job_id, trial_id, &sha256), sha256, size_bytes: 10 }),
            reference: serde_json::to_value(&reference).expect("serialises"),
            error: None,
            duration_ms: 1,
            test: None,
        };
        assert_eq!(good.malformed(), None);
        let broken = |change: fn(&mut TrialFinished)| {
            let mut result = good.clone();
            change(&mut result);
            result.malformed()
        };
        assert!(broken(|r| r.artifact = None).is_some());
        assert!(broken(|r| r.artifact.as_mut().expect("artifact").sha256 = "AB".repeat(32)).is_some());
        assert!(broken(|r| r.artifact.as_mut().expect("artifact").key = "snapshots/x/manifest.json".into()).is_some());
        assert!(broken(|r| r.trial_id = Uuid::now_v7()).is_some(), "another trial's artifact");
        assert!(broken(|r| r.artifact.as_mut().expect("artifact").size_bytes = 0).is_some());
        assert!(broken(|r| r.metrics = serde_json::json!([1])).is_some());
        assert!(broken(|r| r.metrics = serde_json::json!({"val_accuracy": 2})).is_some());
        assert!(broken(|r| r.reference = serde_json::Value::Null).is_some());
        assert_eq!(
            broken(|r| {
                r.outcome = TrialOutcome::Failed;
                r.artifact = None
            }),
            None,
            "only successes"
        );
    }

    #[test]
    fn a_trials_artifacts_with_other_bytes_get_other_keys() {
        let (job, trial) = (Uuid::now_v7(), Uuid::now_v7());
        let (a, b) = ("a".repeat(64), format!("{}b", "a".repeat(15)));
        assert_eq!(artifact_key("m", job, trial, &a), artifact_key("m", job, trial, &a));
        assert_ne!(artifact_key("m", job, trial, &a), artifact_key("m", job, trial, &b));
        assert_eq!(artifact_key("m", job, trial, &a), format!("models/m/{job}/{trial}-{}.safetensors", &a[..16]));
        assert_ne!(manifest_key("m", job, trial, &a), manifest_key("m", job, trial, &b));
    }

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
    fn splits_follow_the_fractions_and_are_seeded() {
        let items: Vec<_> = (0..4000).map(|n| item(n, if n % 2 == 0 { "even" } else { "odd" })).collect();
        let snapshot = Snapshot::new("d", PipelineSpec::default(), items);
        let splits = Splits::default();
        let partition = snapshot.partition(&splits);
        let share = |part: &Vec<usize>| part.len() as f64 / 4000.0;
        assert!((share(&partition.test) - 0.15).abs() < 0.03, "{}", share(&partition.test));
        assert!((share(&partition.calibration) - 0.1).abs() < 0.03);
        assert!((share(&partition.validation) - 0.15).abs() < 0.03);
        assert!((share(&partition.train) - 0.6).abs() < 0.03);
        assert_eq!(snapshot.partition(&splits), partition);
        let reseeded = snapshot.partition(&Splits { seed: 1, ..splits });
        assert_ne!(reseeded.test, partition.test);
        let elsewhere = Snapshot::new("e", PipelineSpec::default(), snapshot.items.clone()).partition(&splits);
        assert_ne!(elsewhere.test, partition.test, "the dataset name is part of the hash");
    }

    #[test]
    fn an_items_split_never_changes_as_the_dataset_grows() {
        let splits = Splits::default();
        let small = Snapshot::new("d", PipelineSpec::default(), (0..200).map(|n| item(n, "a")).collect());
        let grown = Snapshot::new("d", PipelineSpec::default(), (0..1000).map(|n| item(n * 7 % 1000, "a")).collect());
        let partition = grown.partition(&splits);
        for (index, item) in small.items.iter().enumerate() {
            let before = splits.of("d", item.media_id);
            let after = grown.items.iter().position(|i| i.media_id == item.media_id).expect("still there");
            let now = [
                (&partition.train, Split::Train),
                (&partition.validation, Split::Validation),
                (&partition.calibration, Split::Calibration),
                (&partition.test, Split::Test),
            ]
            .into_iter()
            .find(|(part, _)| part.contains(&after))
            .map(|(_, split)| split);
            assert_eq!(now, Some(before), "item {index}");
        }
    }

    #[test]
    fn a_tiny_dataset_still_gets_a_validation_item() {
        let splits = Splits::default();
        for seed in 0..50u128 {
            let items = (0..4).map(|n| item(seed * 100 + n, "a")).collect();
            let partition = Snapshot::new("d", PipelineSpec::default(), items).partition(&splits);
            let held = partition.validation.len() + partition.calibration.len() + partition.test.len();
            if partition.train.len() + partition.validation.len() >= 2 {
                assert!(!partition.validation.is_empty(), "{partition:?}");
            }
            assert_eq!(partition.train.len() + held, 4);
        }
    }

    #[test]
    fn splits_validate_their_fractions() {
        assert!(Splits::default().validate().is_ok());
        assert!(Splits { validation: 0.0, ..Splits::default() }.validate().is_err());
        assert!(Splits { test: -0.1, ..Splits::default() }.validate().is_err());
        assert!(Splits { test: f64::NAN, ..Splits::default() }.validate().is_err());
        assert!(Splits { validation: 0.5, calibration: 0.3, test: 0.2, seed: 0 }.validate().is_err());
        assert!(Splits { calibration: 0.0, test: 0.0, ..Splits::default() }.validate().is_ok());
    }

    #[test]
    fn hits_round_trip_as_a_compact_string() {
        let hits = Hits(vec![true, false, false, true]);
        let json = serde_json::to_string(&hits).expect("test value");
        assert_eq!(json, "\"1001\"");
        assert_eq!(serde_json::from_str::<Hits>(&json).expect("test value"), hits);
        assert!(serde_json::from_str::<Hits>("\"10x\"").is_err());
        let big = Hits(vec![true; 100_000]);
        assert!(serde_json::to_vec(&big).expect("test value").len() < 100_010);
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
