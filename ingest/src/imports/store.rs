//! PostgreSQL records of bulk imports: every statement on `imports`, `import_items` and
//! `import_attempts`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use sluice_core::{
    Context,
    db::DbError,
    parking::{self, WorkKind, WorkParked},
};
use uuid::Uuid;

/// How long a worker holds an import without renewing.
const LEASE: &str = "30 seconds";

sluice_core::text_enum! {
    /// Where an import is (`imports.status`): `queued` until a worker claims it, `running` while
    /// one holds it (or until its lease expires and another takes it over), then `succeeded` once
    /// the listing is exhausted or `failed` when its bucket cannot be read.
    pub enum ImportStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

sluice_core::text_enum! {
    /// What became of one source object (`import_items.outcome`).
    pub enum ItemOutcome {
        Accepted = "accepted",
        /// Its bytes were already in the dataset.
        Duplicate = "duplicate",
        /// Refused (not media Sluice takes, a bad folder name) or given up after its attempts.
        Rejected = "rejected",
    }
}

/// An import a worker holds: where its objects are and where they go, and the claim it holds
/// the import under (`imports.lease_owner`).
#[derive(Debug)]
pub struct Import {
    pub id: Uuid,
    pub lease: Uuid,
    pub dataset: String,
    pub bucket: String,
    pub prefix: String,
}

/// Queues an import; `prefix` is already normalised.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id, dataset = %dataset))]
pub async fn create(ctx: &Context, id: Uuid, dataset: &str, bucket: &str, prefix: &str) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    client
        .execute(
            "INSERT INTO imports (id, dataset, bucket, prefix) VALUES ($1, $2, $3, $4)",
            &[&id, &dataset, &bucket, &prefix],
        )
        .await?;
    Ok(())
}

/// Takes the oldest queued import, or a running one whose worker's lease expired, under a fresh
/// lease of its own; returns it with the last source key already handled.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn claim(ctx: &Context) -> Result<Option<(Import, Option<String>)>, DbError> {
    let client = ctx.db.get().await?;
    let lease = Uuid::new_v4();
    let claimed = client
        .query_opt(
            &format!(
                "UPDATE imports SET status = $1, lease_owner = $2, lease_until = now() + interval '{LEASE}',
                        updated_at = now()
                 WHERE id = (SELECT id FROM imports
                             WHERE status IN ('queued', 'running') AND (lease_until IS NULL OR lease_until < now())
                             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, dataset, bucket, prefix, cursor"
            ),
            &[&ImportStatus::Running, &lease],
        )
        .await?;
    Ok(claimed.map(|row| {
        let import = Import {
            id: row.get("id"),
            lease,
            dataset: row.get("dataset"),
            bucket: row.get("bucket"),
            prefix: row.get("prefix"),
        };
        (import, row.get("cursor"))
    }))
}

/// The listing is exhausted: the import succeeded and its attempts are forgotten. `false` when
/// the lease was no longer this worker's (the new holder ends it).
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %import.id))]
pub async fn succeed(ctx: &Context, import: &Import) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    // The holder is checked on the row the update locks (a plain SELECT would read a snapshot
    // taken before another worker's claim).
    let ended = client
        .query_opt(
            "WITH ended AS (
                 UPDATE imports SET status = $2, finished_at = now(), updated_at = now(), lease_until = NULL
                 WHERE id = $1 AND lease_owner = $3 AND status = 'running' RETURNING id),
             done AS (DELETE FROM import_attempts WHERE import_id IN (SELECT id FROM ended))
             SELECT id FROM ended",
            &[&import.id, &ImportStatus::Succeeded, &import.lease],
        )
        .await?;
    Ok(ended.is_some())
}

/// The import cannot go on (its bucket is gone or unreadable), for `error`; `false` when the
/// lease was no longer this worker's.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %import.id))]
pub async fn fail(ctx: &Context, import: &Import, error: &str) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let ended = client
        .execute(
            "UPDATE imports SET status = $3, error = $2, finished_at = now(), updated_at = now(), lease_until = NULL
             WHERE id = $1 AND lease_owner = $4",
            &[&import.id, &error, &ImportStatus::Failed, &import.lease],
        )
        .await?;
    Ok(ended == 1)
}

/// Which of `keys` the import has already recorded (a resumed import skips them).
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id, keys = keys.len()))]
pub async fn recorded_keys(ctx: &Context, id: Uuid, keys: &[String]) -> Result<Vec<String>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query("SELECT source_key FROM import_items WHERE import_id = $1 AND source_key = ANY($2)", &[&id, &keys])
        .await?;
    Ok(rows.iter().map(|r| r.get("source_key")).collect())
}

/// A page is done: a resumed import starts after `cursor`; the lease is renewed. `false` when
/// the lease is no longer this worker's: it stops.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %import.id))]
pub async fn advance(ctx: &Context, import: &Import, cursor: &str) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let held = client
        .execute(
            &format!(
                "UPDATE imports SET cursor = $2, lease_until = now() + interval '{LEASE}', updated_at = now()
                 WHERE id = $1 AND lease_owner = $3 AND status = 'running'"
            ),
            &[&import.id, &cursor, &import.lease],
        )
        .await?;
    Ok(held == 1)
}

/// Extends the worker's lease; `false` when it is no longer this worker's (it expired and
/// another took the import over): the worker stops.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %import.id))]
pub async fn renew(ctx: &Context, import: &Import) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let held = client
        .execute(
            &format!(
                "UPDATE imports SET lease_until = now() + interval '{LEASE}', updated_at = now()
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
            ),
            &[&import.id, &import.lease],
        )
        .await?;
    Ok(held == 1)
}

/// Records an imported source object, in the transaction that records its media row.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id, media_id = %media_id))]
pub async fn record_item<C: GenericClient>(
    client: &C,
    id: Uuid,
    key: &str,
    outcome: ItemOutcome,
    media_id: Uuid,
) -> Result<(), DbError> {
    let statement = client
        .prepare_cached("INSERT INTO import_items (import_id, source_key, outcome, media_id) VALUES ($1, $2, $3, $4)")
        .await?;
    client.execute(&statement, &[&id, &key, &outcome, &media_id]).await?;
    Ok(())
}

/// Records a source object as rejected, with the answer an upload of it would have had.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id, code = %code))]
pub async fn reject_item(ctx: &Context, id: Uuid, key: &str, code: &str, message: &str) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    client
        .execute(
            "INSERT INTO import_items (import_id, source_key, outcome, error_code, error_message)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&id, &key, &ItemOutcome::Rejected, &code, &message],
        )
        .await?;
    Ok(())
}

/// Attempts so far at one source object (this one included) and the last failure kept.
#[derive(Debug)]
pub struct Attempts {
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Counts one more attempt at `key`.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id))]
pub async fn begin_attempt(ctx: &Context, id: Uuid, key: &str) -> Result<Attempts, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_one(
            "INSERT INTO import_attempts (import_id, source_key, attempts) VALUES ($1, $2, 1)
             ON CONFLICT (import_id, source_key) DO UPDATE SET attempts = import_attempts.attempts + 1
             RETURNING attempts, last_error",
            &[&id, &key],
        )
        .await?;
    Ok(Attempts { attempts: row.get("attempts"), last_error: row.get("last_error") })
}

/// An attempt at `key` failed for its own reason: keeps `error` and lets the import be taken
/// again only after `retry_in_secs`.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %import.id, retry_in_secs = retry_in_secs))]
pub async fn attempt_failed(
    ctx: &Context,
    import: &Import,
    key: &str,
    error: &str,
    retry_in_secs: f64,
) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    client
        .execute(
            "UPDATE import_attempts SET last_error = $3 WHERE import_id = $1 AND source_key = $2",
            &[&import.id, &key, &error],
        )
        .await?;
    client
        .execute(
            "UPDATE imports SET lease_until = now() + make_interval(secs => $2), updated_at = now()
             WHERE id = $1 AND lease_owner = $3",
            &[&import.id, &retry_in_secs, &import.lease],
        )
        .await?;
    Ok(())
}

/// An attempt at `key` failed because a dependency was away: it does not count.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id))]
pub async fn give_back_attempt(ctx: &Context, id: Uuid, key: &str) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    client
        .execute(
            "UPDATE import_attempts SET attempts = greatest(attempts - 1, 0) WHERE import_id = $1 AND source_key = $2",
            &[&id, &key],
        )
        .await?;
    Ok(())
}

/// Records `key` as rejected for good (`gave_up`, for `reason`) with a `work.parked` event, and
/// forgets its attempts, in one transaction. `false` when it was already recorded (no event).
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %import.id, attempts = attempts))]
pub async fn park(ctx: &Context, import: &Import, key: &str, attempts: i32, reason: &str) -> Result<bool, DbError> {
    let mut client = ctx.db.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let inserted = tx
        .execute(
            "INSERT INTO import_items (import_id, source_key, outcome, error_code, error_message)
             VALUES ($1, $2, $3, 'gave_up', $4) ON CONFLICT DO NOTHING",
            &[&import.id, &key, &ItemOutcome::Rejected, &reason],
        )
        .await
        .map_err(DbError::from)?;
    tx.execute("DELETE FROM import_attempts WHERE import_id = $1 AND source_key = $2", &[&import.id, &key])
        .await
        .map_err(DbError::from)?;
    if inserted == 1 {
        let parked = WorkParked {
            kind: WorkKind::ImportObject,
            id: format!("{}/{key}", import.id),
            attempts,
            reason: reason.to_owned(),
            detail: json!({"import_id": import.id, "dataset": import.dataset, "bucket": import.bucket, "key": key}),
        };
        parking::enqueue(&tx, ctx, parked).await?;
    }
    tx.commit().await.map_err(DbError::from)?;
    Ok(inserted == 1)
}

/// An import's progress (`GET /v1/imports/{id}`).
#[derive(Debug)]
pub struct Progress {
    pub dataset: String,
    pub bucket: String,
    pub prefix: String,
    pub status: ImportStatus,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub accepted: i64,
    pub duplicates: i64,
    pub rejected: i64,
    /// The first 100 rejected objects, by key.
    pub errors: Vec<Rejection>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One rejected source object and why.
#[derive(Debug)]
pub struct Rejection {
    pub key: String,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// The import `id`'s progress, or `None`.
#[tracing::instrument(level = "debug", skip_all, fields(import_id = %id))]
pub async fn progress(ctx: &Context, id: Uuid) -> Result<Option<Progress>, DbError> {
    let client = ctx.db.get().await?;
    let Some(row) = client
        .query_opt(
            "SELECT dataset, bucket, prefix, status, error, created_at, finished_at FROM imports WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let counts: Vec<(ItemOutcome, i64)> = client
        .query("SELECT outcome, count(*) AS count FROM import_items WHERE import_id = $1 GROUP BY outcome", &[&id])
        .await?
        .iter()
        .map(|r| (r.get("outcome"), r.get("count")))
        .collect();
    let count = |outcome| counts.iter().find(|(o, _)| *o == outcome).map_or(0, |(_, n)| *n);
    let errors = client
        .query(
            "SELECT source_key, error_code, error_message FROM import_items
             WHERE import_id = $1 AND outcome = $2 ORDER BY source_key LIMIT 100",
            &[&id, &ItemOutcome::Rejected],
        )
        .await?
        .iter()
        .map(|r| Rejection { key: r.get("source_key"), code: r.get("error_code"), message: r.get("error_message") })
        .collect();
    Ok(Some(Progress {
        dataset: row.get("dataset"),
        bucket: row.get("bucket"),
        prefix: row.get("prefix"),
        status: row.get("status"),
        error: row.get("error"),
        accepted: count(ItemOutcome::Accepted),
        duplicates: count(ItemOutcome::Duplicate),
        rejected: count(ItemOutcome::Rejected),
        errors,
        created_at: row.get("created_at"),
        finished_at: row.get("finished_at"),
    }))
}
