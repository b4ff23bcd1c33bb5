//! Poison isolation for every unit of work Sluice retries: outbox rows, trials, batch-prediction
//! chunks, import objects and the training coordinator's steps. (Preprocess does the same for
//! media items and dead-letters them on `media.dlq`.)
//!
//! Each unit counts its attempts in PostgreSQL *before* it runs, so work that kills its worker
//! (an allocation abort, an OOM kill) is counted as surely as work that fails. An attempt that
//! failed only because a dependency was away is given back ([`dependencies_up`] decides), so an
//! outage never parks healthy work. A unit that has used its attempts is parked as failed with
//! its reason ([`gave_up`]), a `work.parked` event on `work.dlq` ([`enqueue`]) and its
//! component's `..._parked_total` counter, and the work queued behind it flows.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Context, db,
    events::{Envelope, Event},
    outbox::{self, RelayError},
    s3,
    topics::Topic,
};

/// How long each dependency gets to answer when a failure is being blamed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest reason a parked unit carries; the rest of a long error chain is cut.
const MAX_REASON_CHARS: usize = 2_000;

/// What kind of work was parked.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum WorkKind {
    /// An outbox row Kafka kept refusing.
    OutboxRow,
    /// A training trial that failed or killed its workers on every delivery.
    Trial,
    /// A chunk of a batch prediction.
    BatchChunk,
    /// One source object of a bulk import.
    ImportObject,
    /// The coordinator's step after a rung of a training job ended.
    CoordinatorStep,
}

impl WorkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::OutboxRow => "outbox_row",
            WorkKind::Trial => "trial",
            WorkKind::BatchChunk => "batch_chunk",
            WorkKind::ImportObject => "import_object",
            WorkKind::CoordinatorStep => "coordinator_step",
        }
    }
}

/// A unit of work was parked (`work.parked` on `work.dlq`, keyed by `id`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkParked {
    pub kind: WorkKind,
    /// The unit: the outbox row's id, the trial's id, `<job>/<chunk>`, `<import>/<key>`, or the
    /// training job's id for a coordinator step.
    pub id: String,
    pub attempts: i32,
    pub reason: String,
    /// Where the unit belongs (its job, topic, bucket, ...), for whoever inspects or replays it.
    pub detail: Value,
}

impl Event for WorkParked {
    const TYPE: &'static str = "work.parked";
    const SCHEMA_VERSION: u32 = 1;
}

/// Enqueues `parked` on `work.dlq` inside the caller's transaction (the one that parks the unit).
/// A unit is parked once, so the event is named by the unit: parking it again after a kill
/// between its steps (a trial's parked event and its failed result) is the same event, which
/// the outbox writes once and consumers know by its id.
pub async fn enqueue<C: GenericClient>(client: &C, ctx: &Context, parked: WorkParked) -> Result<(), RelayError> {
    let key = parked.id.clone();
    let event = Envelope::caused_by(&format!("{}/{key}", parked.kind.as_str()), parked);
    outbox::enqueue(client, &ctx.topic(Topic::WorkDlq), &key, &event).await
}

/// The reason a unit is parked with: how many attempts it had and what the last one said (none
/// when every attempt ended with its worker).
pub fn gave_up(attempts: i32, last_error: Option<&str>) -> String {
    let reason = match last_error {
        Some(error) => format!("gave up after {attempts} attempts; the last one failed: {error}"),
        None => format!("gave up after {attempts} attempts: each one stopped its worker before it ended"),
    };
    clip(reason)
}

/// `text` cut to at most [`MAX_REASON_CHARS`] characters.
pub fn clip(text: String) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Whether PostgreSQL, Kafka and S3 (Sluice's bucket and `buckets`) answer now. Asked after an
/// attempt failed: when they do, the failure was the work's own and the attempt stands; when one
/// does not, the world was at fault and the attempt is given back.
pub async fn dependencies_up(ctx: &Context, buckets: &[&str]) -> bool {
    let postgres = async { matches!(tokio::time::timeout(PROBE_TIMEOUT, db::check(&ctx.db)).await, Ok(Ok(()))) };
    let kafka = kafka_up(ctx);
    let s3 = async {
        let mut all = vec![ctx.config.s3.bucket.as_str()];
        all.extend(buckets.iter().copied().filter(|b| *b != ctx.config.s3.bucket));
        for bucket in all {
            let check = tokio::time::timeout(PROBE_TIMEOUT, s3::check_bucket(&ctx.s3, bucket)).await;
            if !matches!(check, Ok(Ok(()))) {
                return false;
            }
        }
        true
    };
    let (postgres, kafka, s3) = tokio::join!(postgres, kafka, s3);
    postgres && kafka && s3
}

/// Whether the Kafka cluster answers a metadata request now.
pub async fn kafka_up(ctx: &Context) -> bool {
    ctx.kafka_reachable(PROBE_TIMEOUT).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_how_many_attempts_and_what_the_last_one_said() {
        assert_eq!(gave_up(3, None), "gave up after 3 attempts: each one stopped its worker before it ended");
        assert_eq!(gave_up(2, Some("S3: 400")), "gave up after 2 attempts; the last one failed: S3: 400");
        let long = gave_up(5, Some(&"é".repeat(10_000)));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1, "cut, with an ellipsis");
    }

    #[test]
    fn parked_events_name_their_kind_in_snake_case() {
        let parked = WorkParked {
            kind: WorkKind::BatchChunk,
            id: "job/0".into(),
            attempts: 5,
            reason: "r".into(),
            detail: serde_json::json!({}),
        };
        let json = serde_json::to_value(Envelope::new(parked)).expect("serialises");
        assert_eq!(json["type"], "work.parked");
        assert_eq!(json["data"]["kind"], WorkKind::BatchChunk.as_str());
    }
}
