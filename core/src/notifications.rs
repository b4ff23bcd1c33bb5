//! The events on `notifications` (keyed by model name, one partition): state changes that people
//! outside Sluice want to hear about and that no other topic carries. Webhooks deliver them, with
//! the `model.*` events of `models.events`.
//!
//! Each is enqueued through the outbox ([`enqueue`]) in the transaction that makes the change it
//! announces, so it exists exactly when the change does: the drift monitor's verdict
//! (`inference` store), a training job ending and a retrain request skipped (`trainer` store).

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    events::{Envelope, Event},
    outbox::{self, RelayError},
    topics::Topic,
    training::RunStatus,
};

/// A served version's drift verdict changed state or kind (`drift.verdict_changed`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DriftVerdictChanged {
    pub model: String,
    pub version: i32,
    /// The state before this check (`insufficient_data`, `ok`, `drift`); `None` for a version's
    /// first verdict.
    pub from: Option<String>,
    pub to: String,
    /// Which shift the window shows (`none`, `label_shift`, `covariate_shift`).
    pub kind: String,
    /// Consecutive drifted checks, this one included.
    pub consecutive: u32,
    pub checks: u64,
    /// Accuracy estimated without labels, when the window could estimate it.
    pub expected_accuracy: Option<f64>,
}

impl Event for DriftVerdictChanged {
    const TYPE: &'static str = "drift.verdict_changed";
    const SCHEMA_VERSION: u32 = 1;
}

/// A training job ended: succeeded, failed or cancelled (`training.job_finished`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrainingJobFinished {
    pub job_id: Uuid,
    pub model: String,
    pub status: RunStatus,
    /// The version it registered (succeeded jobs).
    pub version: Option<i32>,
    /// Whether it moved `production` to that version.
    pub promoted: bool,
    /// Why it failed.
    pub error: Option<String>,
}

impl Event for TrainingJobFinished {
    const TYPE: &'static str = "training.job_finished";
    const SCHEMA_VERSION: u32 = 1;
}

/// A retrain request started nothing because there was nothing new to learn from
/// (`retrain.skipped`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RetrainSkipped {
    pub model: String,
    /// The `retrain.requests` event that was skipped.
    pub request_id: Uuid,
    /// Why retraining was requested (`drift`, `accuracy`, ...).
    pub requested_for: String,
    /// Why it was skipped.
    pub reason: String,
}

impl Event for RetrainSkipped {
    const TYPE: &'static str = "retrain.skipped";
    const SCHEMA_VERSION: u32 = 1;
}

/// Enqueues `event` on `<prefix>notifications`, keyed by `model`, inside the caller's
/// transaction (the one making the change it announces).
pub async fn enqueue<C: GenericClient, T: Event>(
    client: &C,
    prefix: &str,
    model: &str,
    event: T,
) -> Result<(), RelayError> {
    outbox::enqueue(client, &Topic::Notifications.qualified(prefix), model, &Envelope::new(event)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_carry_their_type_and_decode_back() {
        let finished = Envelope::new(TrainingJobFinished {
            job_id: Uuid::now_v7(),
            model: "shapes".into(),
            status: RunStatus::Failed,
            version: None,
            promoted: false,
            error: Some("out of attempts".into()),
        });
        let json: serde_json::Value = serde_json::from_slice(&finished.to_json()).expect("JSON");
        assert_eq!(json["type"], "training.job_finished");
        assert_eq!(json["data"]["status"], "failed");
        let back = Envelope::<TrainingJobFinished>::decode(&finished.to_json()).expect("decodes");
        assert_eq!(back.data, finished.data);
        let skipped = Envelope::new(RetrainSkipped {
            model: "shapes".into(),
            request_id: Uuid::now_v7(),
            requested_for: "drift".into(),
            reason: "nothing new".into(),
        });
        assert!(Envelope::<DriftVerdictChanged>::decode(&skipped.to_json()).is_err(), "types are checked");
    }
}
