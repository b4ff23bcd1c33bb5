//! Inference's tables: `predictions` (served and shadow predictions, feedback), `model_routing`
//! (canary and shadow) and `drift_verdicts` (the monitor's last check per version). Batch jobs
//! have their own ([`crate::batch_jobs`]); capture policies and live promotions are shared with
//! other services through `sluice_core::{capture, live}`.
//!
//! Every function takes a client (or transaction) and returns typed values or [`DbError`].

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use sluice_core::{
    db::DbError,
    notifications::{self, DriftVerdictChanged},
};
use uuid::Uuid;

use crate::{
    drift::{DriftKind, DriftState, Verdict},
    recorder::Record,
    serving::Routing,
};

/// Writes `batch` in one statement; ids already recorded are skipped, so a retry is harmless.
#[tracing::instrument(level = "debug", skip_all, fields(records = batch.len()))]
pub async fn insert_predictions(client: &impl GenericClient, batch: &[Record]) -> Result<(), DbError> {
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    let models: Vec<&str> = batch.iter().map(|r| r.model.as_str()).collect();
    let versions: Vec<i32> = batch.iter().map(|r| r.version).collect();
    let aliases: Vec<Option<&str>> = batch.iter().map(|r| r.alias.as_deref()).collect();
    let labels: Vec<&str> = batch.iter().map(|r| r.label.as_str()).collect();
    let confidences: Vec<f64> = batch.iter().map(|r| r.confidence).collect();
    let tops: Vec<&Value> = batch.iter().map(|r| &r.top).collect();
    let stats: Vec<&Value> = batch.iter().map(|r| &r.stats).collect();
    let shadows: Vec<bool> = batch.iter().map(|r| r.shadow).collect();
    let jobs: Vec<Option<Uuid>> = batch.iter().map(|r| r.batch).collect();
    let shadowed: Vec<Option<Uuid>> = batch.iter().map(|r| r.shadow_of).collect();
    client
        .execute(
            // A shadow prediction written after its answer got feedback takes that feedback:
            // the shadow is scored late, and the comparison must not lose it.
            "INSERT INTO predictions (id, model, version, alias, label, confidence, top, stats, shadow, batch_id,
                                      shadow_of, feedback_label, feedback_at)
             SELECT n.*, answered.feedback_label, answered.feedback_at
             FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::float8[],
                         $7::jsonb[], $8::jsonb[], $9::bool[], $10::uuid[], $11::uuid[])
                  AS n(id, model, version, alias, label, confidence, top, stats, shadow, batch_id, shadow_of)
             LEFT JOIN predictions answered ON answered.id = n.shadow_of
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &models, &versions, &aliases, &labels, &confidences, &tops, &stats, &shadows, &jobs, &shadowed],
        )
        .await?;
    Ok(())
}

/// An answered (not shadow) prediction: which version made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub model: String,
    pub version: i32,
}

/// The answered prediction `id`, if it has been recorded.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn answered(client: &impl GenericClient, id: Uuid) -> Result<Option<Answered>, DbError> {
    let row = client.query_opt("SELECT model, version FROM predictions WHERE id = $1 AND NOT shadow", &[&id]).await?;
    Ok(row.map(|row| Answered { model: row.get("model"), version: row.get("version") }))
}

/// A served prediction, as `GET /v1/models/{name}/predictions` lists it.
#[derive(Debug)]
pub struct RecentPrediction {
    pub id: Uuid,
    pub version: i32,
    pub alias: Option<String>,
    pub label: String,
    pub confidence: f64,
    pub top: Value,
    pub feedback_label: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The newest `limit` predictions served for `model` (not shadow scores, not batch jobs), older
/// than the prediction `before` when given.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn recent_predictions(
    client: &impl GenericClient,
    model: &str,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RecentPrediction>, DbError> {
    let rows = client
        .query(
            "SELECT id, version, alias, label, confidence, top, feedback_label, created_at FROM predictions p
             WHERE model = $1 AND batch_id IS NULL AND NOT shadow
               AND ($2::uuid IS NULL OR (created_at, id) < (SELECT b.created_at, b.id FROM predictions b WHERE b.id = $2))
             ORDER BY created_at DESC, id DESC LIMIT $3",
            &[&model, &before, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| RecentPrediction {
            id: row.get("id"),
            version: row.get("version"),
            alias: row.get("alias"),
            label: row.get("label"),
            confidence: row.get("confidence"),
            top: row.get("top"),
            feedback_label: row.get("feedback_label"),
            created_at: row.get("created_at"),
        })
        .collect())
}

/// Ground truth for prediction `id` and the shadow predictions of the same input (scored with it).
#[tracing::instrument(level = "debug", skip(client, label))]
pub async fn record_feedback(client: &impl GenericClient, id: Uuid, label: &str) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE predictions SET feedback_label = $2, feedback_at = now() WHERE id = $1 OR shadow_of = $1",
            &[&id, &label],
        )
        .await?;
    Ok(())
}

/// One input scored by a model's shadow and by the version that answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowPair {
    pub primary_version: i32,
    pub shadow_version: i32,
    pub primary_label: String,
    pub shadow_label: String,
    /// The feedback on the answer, if any came.
    pub truth: Option<String>,
}

/// The latest `limit` inputs the model's shadow scored, newest first.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn shadow_pairs(client: &impl GenericClient, model: &str, limit: i64) -> Result<Vec<ShadowPair>, DbError> {
    let rows = client
        .query(
            "SELECT p.version AS primary_version, s.version AS shadow_version, p.label AS primary_label,
                    s.label AS shadow_label, p.feedback_label AS truth
             FROM predictions s JOIN predictions p ON p.id = s.shadow_of
             WHERE s.model = $1 AND s.shadow ORDER BY s.created_at DESC LIMIT $2",
            &[&model, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ShadowPair {
            primary_version: row.get("primary_version"),
            shadow_version: row.get("shadow_version"),
            primary_label: row.get("primary_label"),
            shadow_label: row.get("shadow_label"),
            truth: row.get("truth"),
        })
        .collect())
}

/// A version's accuracy over its latest feedback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveAccuracy {
    pub accuracy: f64,
    /// Answers with feedback it was measured on.
    pub answers: i64,
}

/// The version's accuracy over its latest `window` answers with feedback; `None` before any.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn live_accuracy(
    client: &impl GenericClient,
    model: &str,
    version: i32,
    window: i64,
) -> Result<Option<LiveAccuracy>, DbError> {
    let row = client
        .query_one(
            "SELECT avg((feedback_label = label)::int)::float8 AS accuracy, count(*) AS answers FROM (
                 SELECT label, feedback_label FROM predictions
                 WHERE model = $1 AND version = $2 AND feedback_at IS NOT NULL AND NOT shadow
                 ORDER BY feedback_at DESC LIMIT $3) recent",
            &[&model, &version, &window],
        )
        .await?;
    let answers: i64 = row.get("answers");
    Ok(row.get::<_, Option<f64>>("accuracy").map(|accuracy| LiveAccuracy { accuracy, answers }))
}

/// The model's routing; `None` when it has never been set.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn routing(client: &impl GenericClient, model: &str) -> Result<Option<Routing>, DbError> {
    let row = client
        .query_opt("SELECT canary_alias, canary_percent, shadow_alias FROM model_routing WHERE model = $1", &[&model])
        .await?;
    Ok(row.map(|row| Routing {
        canary_alias: row.get("canary_alias"),
        canary_percent: row.get("canary_percent"),
        shadow_alias: row.get("shadow_alias"),
    }))
}

/// Sets the model's routing; `false` when no model has this name.
#[tracing::instrument(level = "debug", skip(client, routing))]
pub async fn set_routing(
    client: &impl GenericClient,
    model: &str,
    routing: &Routing,
    actor: &str,
) -> Result<bool, DbError> {
    let updated = client
        .execute(
            "INSERT INTO model_routing (model, canary_alias, canary_percent, shadow_alias, updated_by)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM models WHERE name = $1)
             ON CONFLICT (model) DO UPDATE SET canary_alias = $2, canary_percent = $3, shadow_alias = $4,
                 updated_by = $5, updated_at = now()",
            &[&model, &routing.canary_alias, &routing.canary_percent, &routing.shadow_alias, &actor],
        )
        .await?;
    Ok(updated > 0)
}

/// The check counts a version's verdicts carry over when its window moves to another monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckCounts {
    pub consecutive: u32,
    pub checks: u64,
}

/// The check counts recorded for a version, if any check was.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn check_counts(
    client: &impl GenericClient,
    model: &str,
    version: i32,
) -> Result<Option<CheckCounts>, DbError> {
    let row = client
        .query_opt(
            "SELECT consecutive, checks FROM drift_verdicts WHERE model = $1 AND version = $2",
            &[&model, &version],
        )
        .await?;
    Ok(row.map(|row| CheckCounts {
        consecutive: row.get::<_, i32>("consecutive").max(0) as u32,
        checks: row.get::<_, i64>("checks").max(0) as u64,
    }))
}

/// Records a version's latest verdict (one row per version). A verdict whose state or kind
/// differs from the previous one (or a version's first) is announced with a
/// `drift.verdict_changed` notification on `<prefix>notifications`: pass a transaction, so the
/// event exists exactly when the verdict does. `false` (nothing written) when the verdict does
/// not follow the recorded one (check n + 1 after check n): its window was opened before
/// another monitor recorded checks for the version (the model's partition moved away and back),
/// so its counts are stale.
#[tracing::instrument(level = "debug", skip(client, verdict), fields(state = %verdict.state))]
pub async fn record_verdict(
    client: &impl GenericClient,
    prefix: &str,
    model: &str,
    version: i32,
    verdict: &Verdict,
) -> Result<bool, DbError> {
    let json = serde_json::to_value(verdict).expect("verdicts serialise");
    let previous = client
        .query_opt(
            "SELECT state, kind, checks FROM drift_verdicts WHERE model = $1 AND version = $2 FOR UPDATE",
            &[&model, &version],
        )
        .await?;
    let recorded_checks = previous.as_ref().map_or(0, |row| row.get::<_, i64>("checks"));
    if recorded_checks + 1 != verdict.checks as i64 {
        return Ok(false);
    }
    let previous = previous.map(|row| (row.get::<_, DriftState>("state"), row.get::<_, DriftKind>("kind")));
    if previous != Some((verdict.state, verdict.kind)) {
        let changed = DriftVerdictChanged {
            model: model.to_owned(),
            version,
            from: previous.map(|(state, _)| state.to_string()),
            to: verdict.state.to_string(),
            kind: verdict.kind.to_string(),
            consecutive: verdict.consecutive,
            checks: verdict.checks,
            expected_accuracy: verdict.expected_accuracy,
        };
        notifications::enqueue(client, prefix, model, changed).await?;
    }
    client
        .execute(
            "INSERT INTO drift_verdicts (model, version, state, kind, consecutive, checks, verdict)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (model, version) DO UPDATE SET state = $3, kind = $4, consecutive = $5, checks = $6,
                 verdict = $7, updated_at = now()",
            &[
                &model,
                &version,
                &verdict.state,
                &verdict.kind,
                &(verdict.consecutive as i32),
                &(verdict.checks as i64),
                &json,
            ],
        )
        .await?;
    Ok(true)
}

/// Checks kept per version in `drift_checks`; older ones are deleted as new ones arrive.
pub const CHECKS_KEPT: i64 = 1_000;

/// Appends a check to the version's history (a replayed check number is kept once) and forgets
/// checks older than the newest [`CHECKS_KEPT`].
#[tracing::instrument(level = "debug", skip(client, verdict))]
pub async fn record_check(
    client: &impl GenericClient,
    model: &str,
    version: i32,
    verdict: &Verdict,
    live: Option<LiveAccuracy>,
) -> Result<(), DbError> {
    let check = verdict.checks as i64;
    let statistics = serde_json::to_value(&verdict.statistics).expect("statistics serialise");
    client
        .execute(
            "INSERT INTO drift_checks (model, version, check_no, state, kind, expected_accuracy, live_accuracy,
                 live_answers, statistics)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (model, version, check_no) DO NOTHING",
            &[
                &model,
                &version,
                &check,
                &verdict.state,
                &verdict.kind,
                &verdict.expected_accuracy,
                &live.map(|l| l.accuracy),
                &live.map_or(0, |l| l.answers),
                &statistics,
            ],
        )
        .await?;
    client
        .execute(
            "DELETE FROM drift_checks WHERE model = $1 AND version = $2 AND check_no <= $3",
            &[&model, &version, &(check - CHECKS_KEPT)],
        )
        .await?;
    Ok(())
}

/// One recorded drift check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftCheck {
    /// The version's check count at this check.
    pub check: i64,
    pub checked_at: DateTime<Utc>,
    pub state: DriftState,
    pub kind: DriftKind,
    /// Mean calibrated confidence: accuracy estimated without labels.
    pub expected_accuracy: Option<f64>,
    /// Accuracy on the latest answers with feedback when the check ran.
    pub live_accuracy: Option<f64>,
    pub live_accuracy_answers: i64,
    /// Each statistic: `name`, `kind`, `value`, `expected`, `t`, `p_value`, `threshold`, `drifted`.
    pub statistics: Value,
}

/// The version's newest `limit` checks before check number `before` (all when `None`), newest first.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn drift_history(
    client: &impl GenericClient,
    model: &str,
    version: i32,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<DriftCheck>, DbError> {
    let rows = client
        .query(
            "SELECT check_no, checked_at, state, kind, expected_accuracy, live_accuracy, live_answers, statistics
             FROM drift_checks WHERE model = $1 AND version = $2 AND ($3::bigint IS NULL OR check_no < $3)
             ORDER BY check_no DESC LIMIT $4",
            &[&model, &version, &before, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DriftCheck {
            check: row.get("check_no"),
            checked_at: row.get("checked_at"),
            state: row.get("state"),
            kind: row.get("kind"),
            expected_accuracy: row.get("expected_accuracy"),
            live_accuracy: row.get("live_accuracy"),
            live_accuracy_answers: row.get("live_answers"),
            statistics: row.get("statistics"),
        })
        .collect())
}

/// A version's verdict as the monitor last recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVerdict {
    /// The [`Verdict`] as JSON (rows written by other releases may hold other fields).
    pub verdict: Value,
    pub checked_at: DateTime<Utc>,
}

#[tracing::instrument(level = "debug", skip(client))]
pub async fn verdict(client: &impl GenericClient, model: &str, version: i32) -> Result<Option<StoredVerdict>, DbError> {
    let row = client
        .query_opt(
            "SELECT verdict, updated_at FROM drift_verdicts WHERE model = $1 AND version = $2",
            &[&model, &version],
        )
        .await?;
    Ok(row.map(|row| StoredVerdict { verdict: row.get("verdict"), checked_at: row.get("updated_at") }))
}

/// Whether the version's last verdict is drift.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn drifting(client: &impl GenericClient, model: &str, version: i32) -> Result<bool, DbError> {
    let row = client
        .query_opt(
            "SELECT 1 AS drifting FROM drift_verdicts WHERE model = $1 AND version = $2 AND state = $3",
            &[&model, &version, &DriftState::Drift],
        )
        .await?;
    Ok(row.is_some())
}

// Registry reads `sluice_core::models` does not offer yet (the registry owns `models`); they move
// there once it does.
