//! Production data back into training: the contract between inference, which decides which
//! served inputs to keep, and ingest, which stores them as unlabelled media like any upload.
//!
//! Inference writes a kept input's bytes to `captures/<model>/<prediction id>` and enqueues a
//! [`MediaCaptured`] event (outbox, topic `media.captures`); ingest's capture consumer reads the
//! object, checks and stores it under `raw/` (sniffing, dedup by SHA-256, the outbox's
//! `media.ingested`), records the media row with `captured_from` = the prediction, and deletes the
//! capture object. Feedback on the prediction labels the item ([`label_captured`]), before or
//! after ingest has recorded it; preprocessing and the next training snapshot follow as for any
//! labelled upload, so a drift-triggered retrain learns the new conditions.

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{db::DbError, domain::DatasetName, events::Event};

/// Which served inputs of a model are stored, and where (`capture_policies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapturePolicy {
    /// The dataset captured inputs go to (created on first use).
    pub dataset: String,
    /// Fraction of all predictions kept, at random.
    #[serde(default)]
    pub random_rate: f64,
    /// Every prediction whose calibrated confidence is below this is kept (the most informative
    /// ones to label); 0 turns it off.
    #[serde(default)]
    pub below_confidence: f64,
    /// While the model's drift verdict is `drift`, this fraction is kept (on top of the others).
    #[serde(default)]
    pub during_drift_rate: f64,
}

impl CapturePolicy {
    pub fn validate(&self) -> Result<(), String> {
        DatasetName::parse(&self.dataset).map_err(|e| format!("`dataset`: {}", e.0))?;
        for (name, value) in [
            ("random_rate", self.random_rate),
            ("below_confidence", self.below_confidence),
            ("during_drift_rate", self.during_drift_rate),
        ] {
            if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
                return Err(format!("`{name}` must be between 0 and 1, got {value}"));
            }
        }
        Ok(())
    }

    /// Whether to keep a prediction with this calibrated confidence; `draw` is uniform in [0, 1).
    pub fn keeps(&self, confidence: f64, drifting: bool, draw: f64) -> Option<&'static str> {
        if confidence < self.below_confidence {
            Some("low_confidence")
        } else if drifting && draw < self.during_drift_rate {
            Some("drift")
        } else if draw < self.random_rate {
            Some("random")
        } else {
            None
        }
    }
}

/// A served input kept for training (on `media.captures`, keyed by model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaCaptured {
    pub prediction_id: Uuid,
    pub model: String,
    pub version: i32,
    pub dataset: String,
    /// The bytes as the client sent them, under [`capture_key`].
    pub key: String,
    /// What the model said, and how sure it was (the labelling queue's order).
    pub predicted: String,
    pub confidence: f64,
    /// `random`, `low_confidence` or `drift`.
    pub why: String,
}

impl Event for MediaCaptured {
    const TYPE: &'static str = "media.captured";
    const SCHEMA_VERSION: u32 = 1;
}

/// Where kept inputs wait for ingest (which deletes each once stored; the orphan sweeper the
/// rest after `ingest.orphan_grace_secs`).
pub const CAPTURES_PREFIX: &str = "captures/";

/// `captures/<model>/<prediction id>`: where a kept input waits for ingest.
pub fn capture_key(model: &str, prediction_id: Uuid) -> String {
    format!("{CAPTURES_PREFIX}{model}/{prediction_id}")
}

/// The policy of `model`, if it has one.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn policy<C: GenericClient>(client: &C, model: &str) -> Result<Option<CapturePolicy>, DbError> {
    let row = client
        .query_opt(
            "SELECT dataset, random_rate, below_confidence, during_drift_rate FROM capture_policies WHERE model = $1",
            &[&model],
        )
        .await?;
    Ok(row.map(|r| CapturePolicy {
        dataset: r.get("dataset"),
        random_rate: r.get("random_rate"),
        below_confidence: r.get("below_confidence"),
        during_drift_rate: r.get("during_drift_rate"),
    }))
}

/// Sets (or with `None` removes) the policy of `model`.
#[tracing::instrument(level = "debug", skip(client, policy))]
pub async fn set_policy<C: GenericClient>(
    client: &C,
    model: &str,
    policy: Option<&CapturePolicy>,
    actor: &str,
) -> Result<(), DbError> {
    match policy {
        Some(p) => {
            client
                .execute(
                    "INSERT INTO capture_policies (model, dataset, random_rate, below_confidence, during_drift_rate, updated_by)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (model) DO UPDATE SET dataset = $2, random_rate = $3, below_confidence = $4,
                         during_drift_rate = $5, updated_by = $6, updated_at = now()",
                    &[&model, &p.dataset, &p.random_rate, &p.below_confidence, &p.during_drift_rate, &actor],
                )
                .await?;
        }
        None => {
            client.execute("DELETE FROM capture_policies WHERE model = $1", &[&model]).await?;
        }
    }
    Ok(())
}

/// Labels the media item captured from `prediction_id`, if ingest has recorded it: feedback is
/// ground truth for that input. Returns whether an item was labelled.
#[tracing::instrument(level = "debug", skip(client, label))]
pub async fn label_captured<C: GenericClient>(client: &C, prediction_id: Uuid, label: &str) -> Result<bool, DbError> {
    let updated = client
        .execute(
            "UPDATE media SET label = $2, updated_at = now() WHERE captured_from = $1 AND label IS DISTINCT FROM $2",
            &[&prediction_id, &label],
        )
        .await?;
    Ok(updated > 0)
}

/// The media items ingest recorded from the inputs of `prediction_ids` (prediction id → media
/// id), for the predictions a capture policy kept.
#[tracing::instrument(level = "debug", skip_all, fields(predictions = prediction_ids.len()))]
pub async fn captured_media<C: GenericClient>(
    client: &C,
    prediction_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Uuid>, DbError> {
    let rows =
        client.query("SELECT captured_from, id FROM media WHERE captured_from = ANY($1)", &[&prediction_ids]).await?;
    Ok(rows.iter().map(|row| (row.get("captured_from"), row.get("id"))).collect())
}

/// The feedback label given to a prediction so far, for a capture recorded after its feedback.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn feedback_label<C: GenericClient>(client: &C, prediction_id: Uuid) -> Result<Option<String>, DbError> {
    let row = client
        .query_opt("SELECT feedback_label FROM predictions WHERE id = $1 AND NOT shadow", &[&prediction_id])
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>("feedback_label")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CapturePolicy {
        CapturePolicy { dataset: "field".into(), random_rate: 0.1, below_confidence: 0.5, during_drift_rate: 0.8 }
    }

    #[test]
    fn policies_keep_low_confidence_drift_and_a_random_share() {
        let p = policy();
        assert_eq!(p.keeps(0.4, false, 0.99), Some("low_confidence"));
        assert_eq!(p.keeps(0.9, true, 0.5), Some("drift"));
        assert_eq!(p.keeps(0.9, false, 0.5), None);
        assert_eq!(p.keeps(0.9, false, 0.05), Some("random"));
    }

    #[test]
    fn policies_are_validated() {
        assert!(policy().validate().is_ok());
        assert!(CapturePolicy { random_rate: 1.5, ..policy() }.validate().is_err());
        assert!(CapturePolicy { below_confidence: f64::NAN, ..policy() }.validate().is_err());
        assert!(CapturePolicy { dataset: "no spaces".into(), ..policy() }.validate().is_err());
    }
}
