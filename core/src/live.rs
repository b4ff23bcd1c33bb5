//! Promotion on live evidence (`promote: if_better_live`), shared by the trainer, which starts
//! one, and inference, which decides it.
//!
//! The job's candidate is registered under the [`CANDIDATE_ALIAS`] alias and made the model's
//! shadow: every answered request is scored by it too (`shadow_of`). Feedback on the answers
//! scores both; once the candidate is significantly better on the live inputs both scored (a
//! one-sided exact McNemar test at `trainer.promotion_alpha`, with at least
//! `inference.live_promotion_min_feedback` answers and `trainer.promotion_min_margin`),
//! inference moves `production` to it; if it is significantly worse, the attempt is rejected.
//! Either way the shadow is cleared.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::db::DbError;

/// The alias a live candidate is registered under.
pub const CANDIDATE_ALIAS: &str = "candidate";

crate::text_enum! {
    /// How a live promotion was decided (`live_promotions.outcome`).
    pub enum LiveOutcome {
        Promoted = "promoted",
        Rejected = "rejected",
        /// Production was moved to another version first (a rollback, another job's promotion):
        /// the comparison's baseline is gone.
        Superseded = "superseded",
    }
}

/// A model's undecided live promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub candidate: i32,
    pub production: i32,
}

/// Starts (or restarts) a live promotion: the candidate shadows production from now on.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn start<C: GenericClient>(
    client: &C,
    model: &str,
    candidate: i32,
    production: i32,
    job_id: Uuid,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO live_promotions (model, candidate_version, production_version, job_id)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (model) DO UPDATE SET candidate_version = $2, production_version = $3, job_id = $4,
                 started_at = now(), decided_at = NULL, outcome = NULL, reason = NULL",
            &[&model, &candidate, &production, &job_id],
        )
        .await?;
    client
        .execute(
            "INSERT INTO model_routing (model, shadow_alias, updated_by) VALUES ($1, $2, 'trainer')
             ON CONFLICT (model) DO UPDATE SET shadow_alias = $2, updated_by = 'trainer', updated_at = now()",
            &[&model, &CANDIDATE_ALIAS],
        )
        .await?;
    Ok(())
}

/// The model's undecided live promotion, if any.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn pending<C: GenericClient>(client: &C, model: &str) -> Result<Option<Pending>, DbError> {
    let row = client
        .query_opt(
            "SELECT candidate_version, production_version FROM live_promotions WHERE model = $1 AND decided_at IS NULL",
            &[&model],
        )
        .await?;
    Ok(row.map(|r| Pending { candidate: r.get("candidate_version"), production: r.get("production_version") }))
}

/// Production moved to `production` by anything but the live gate promoting the candidate: a
/// pending promotion was measured against a production that no longer serves, and would never
/// be decided (the gate compares the candidate with the production it started against) while
/// the candidate shadowed every request. It ends as superseded and its shadowing stops, in the
/// move's transaction. `true` when one ended.
pub async fn supersede<C: GenericClient>(client: &C, model: &str, production: i32) -> Result<bool, DbError> {
    let reason = format!("production moved to v{production} before live feedback decided");
    let ended = client
        .execute(
            "UPDATE live_promotions SET decided_at = now(), outcome = $2, reason = $3
             WHERE model = $1 AND decided_at IS NULL AND candidate_version <> $4",
            &[&model, &LiveOutcome::Superseded, &reason, &production],
        )
        .await?;
    if ended == 1 {
        stop_shadowing(client, model).await?;
    }
    Ok(ended == 1)
}

/// Records the decision on `pending` and stops the shadowing; `false` when another process
/// decided first, or the promotion pending now is another one (a job restarted it with another
/// candidate, or production moved) than the one the evidence was gathered for.
#[tracing::instrument(level = "debug", skip(client, reason))]
pub async fn decide<C: GenericClient>(
    client: &C,
    model: &str,
    pending: Pending,
    outcome: LiveOutcome,
    reason: &str,
) -> Result<bool, DbError> {
    let decided = client
        .execute(
            "UPDATE live_promotions SET decided_at = now(), outcome = $2, reason = $3
             WHERE model = $1 AND decided_at IS NULL AND candidate_version = $4 AND production_version = $5",
            &[&model, &outcome, &reason, &pending.candidate, &pending.production],
        )
        .await?;
    if decided == 1 {
        stop_shadowing(client, model).await?;
    }
    Ok(decided == 1)
}

/// Stops the candidate's shadowing of `model` (if the candidate is what shadows it).
async fn stop_shadowing<C: GenericClient>(client: &C, model: &str) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE model_routing SET shadow_alias = NULL, updated_by = 'live-gate', updated_at = now()
             WHERE model = $1 AND shadow_alias = $2",
            &[&model, &CANDIDATE_ALIAS],
        )
        .await?;
    Ok(())
}
