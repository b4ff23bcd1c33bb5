//! The model registry's contract: validated model and alias names, immutable numbered versions
//! with their lineage, movable aliases with an audit trail, and the `models.events` events.
//!
//! Every write runs in the caller's PostgreSQL transaction and first takes the model's row lock,
//! so version numbers are dense (1, 2, 3, ...) under concurrent registration and each model's
//! changes happen one after another. Each change bumps the model's `revision` and enqueues one
//! event through the outbox, keyed by model name on the compacted `models.events` topic. Every
//! event carries the model's whole alias map after the change, so the last event kept for a model
//! is enough to rebuild its aliases, and a consumer drops an event whose `revision` is not above
//! the last one it applied (relays may publish out of order). So that this map, and with it every
//! event, stays far below Kafka's message limit, a model has at most [`MAX_ALIASES`] aliases
//! (names are at most 63 characters: about 7 KB at most). Artifacts (safetensors in S3) are
//! checked against their registered size and SHA-256 on every [`load_artifact`].

mod artifact;
mod events;
mod names;
mod policy;
mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use artifact::load_artifact;
pub use events::{AliasMoved, AliasRemoved, ModelEvent, ModelVersionRegistered};
pub use names::{AliasName, ModelName};
pub use policy::{AutoPromote, MAX_PROTECTED_ALIASES, Policy, policy, set_policy};
pub use store::{
    AliasState, MAX_ALIASES, alias_state, aliases, exists, get_template, get_version, move_alias, register,
    remove_alias, resolve_alias, set_template, version_numbers, version_summaries,
};

use crate::{db::DbError, outbox::RelayError, pipeline::PipelineSpec, s3::S3Error};

/// Where a version came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Lineage {
    pub job_id: Uuid,
    pub trial_id: Uuid,
    /// The dataset snapshot the trial trained on (`snapshots/<dataset>/<snapshot_id>.json`).
    pub snapshot_id: String,
    pub dataset: String,
    /// Hash of the pipeline spec the training images were made with.
    pub spec_hash: String,
    pub sluice_version: String,
}

/// What [`register`] records.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NewVersion {
    pub model: ModelName,
    pub artifact_key: String,
    /// Lower-case hex SHA-256 of the artifact's bytes.
    pub sha256: String,
    pub size_bytes: i64,
    /// `mlp` or `cnn`.
    pub architecture: String,
    /// The pipeline spec the data was made with: inference prepares inputs the same way.
    pub input_spec: PipelineSpec,
    /// Class labels in the network's output order.
    pub labels: Vec<String>,
    pub hyperparameters: Value,
    /// `{"val_accuracy", "val_loss", "epochs", ...}`.
    pub metrics: Value,
    /// Drift reference statistics (class frequencies, confidence histogram, input statistics,
    /// calibration temperature) measured on the validation split.
    pub reference: Value,
    pub lineage: Lineage,
}

impl NewVersion {
    /// Refuses what would make an unloadable version.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let invalid = |message: &str| Err(RegistryError::Invalid(message.to_owned()));
        if self.artifact_key.is_empty() {
            return invalid("artifact_key must not be empty");
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return invalid("sha256 must be 64 lower-case hex digits");
        }
        if self.size_bytes < 0 {
            return invalid("size_bytes must not be negative");
        }
        if self.architecture.is_empty() {
            return invalid("architecture must not be empty");
        }
        if self.labels.is_empty() {
            return invalid("a model needs at least one class label");
        }
        Ok(())
    }
}

/// A registered, immutable version.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ModelVersion {
    pub model: ModelName,
    pub version: i32,
    pub artifact_key: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub architecture: String,
    pub input_spec: PipelineSpec,
    pub labels: Vec<String>,
    pub hyperparameters: Value,
    pub metrics: Value,
    pub reference: Value,
    pub lineage: Lineage,
    #[serde(with = "crate::events::rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// The outcome of [`move_alias`]: the audit entry it wrote, or `changed: false` when the alias
/// already pointed at the version (nothing was written or published).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AliasMove {
    pub model: ModelName,
    pub alias: AliasName,
    pub from: Option<i32>,
    pub to: i32,
    pub actor: String,
    pub reason: String,
    #[serde(with = "crate::events::rfc3339")]
    pub at: DateTime<Utc>,
    pub changed: bool,
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no model named {0}")]
    UnknownModel(String),
    #[error("model {model} has no version {version}")]
    UnknownVersion { model: String, version: i32 },
    #[error("model {model} has no alias {alias}")]
    UnknownAlias { model: String, alias: String },
    /// Every `models.events` event carries the whole alias map: it must stay small.
    #[error("model {model} already has {limit} aliases, the most a model may have; remove one first")]
    TooManyAliases { model: String, limit: usize },
    #[error("invalid model version: {0}")]
    Invalid(String),
    #[error("artifact {key} is missing from object storage")]
    MissingArtifact { key: String },
    #[error("artifact {key} does not match its registration ({detail}); refusing to load it")]
    Tampered { key: String, detail: String },
    #[error("a stored registry row is unreadable: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("object storage: {0}")]
    S3(#[from] S3Error),
    #[error("outbox: {0}")]
    Outbox(RelayError),
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Query(err))
    }
}

impl From<RelayError> for RegistryError {
    fn from(err: RelayError) -> Self {
        match err {
            RelayError::Db(err) => Self::Db(err),
            other => Self::Outbox(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> NewVersion {
        NewVersion {
            model: ModelName::parse("shapes").expect("valid"),
            artifact_key: "models/shapes/a/b.safetensors".into(),
            sha256: "ab".repeat(32),
            size_bytes: 10,
            architecture: "cnn".into(),
            input_spec: PipelineSpec::default(),
            labels: vec!["circle".into(), "square".into()],
            hyperparameters: serde_json::json!({}),
            metrics: serde_json::json!({}),
            reference: serde_json::json!({}),
            lineage: Lineage {
                job_id: Uuid::nil(),
                trial_id: Uuid::nil(),
                snapshot_id: "s".into(),
                dataset: "d".into(),
                spec_hash: "h".into(),
                sluice_version: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn new_versions_need_a_hex_digest_a_size_and_labels() {
        assert!(version().validate().is_ok());
        let mut upper = version();
        upper.sha256 = "AB".repeat(32);
        let mut short = version();
        short.sha256 = "ab".into();
        let mut negative = version();
        negative.size_bytes = -1;
        let mut unlabelled = version();
        unlabelled.labels.clear();
        for bad in [upper, short, negative, unlabelled] {
            assert!(matches!(bad.validate(), Err(RegistryError::Invalid(_))), "{bad:?}");
        }
    }
}
