//! The `batch_predictions` table: queuing a job with its outbox event, reading it back, and the
//! worker's conditional progress updates; and the read of a dataset's items a job freezes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    batch_predictions::{BatchPredictionRequested, BatchStatus},
    db::DbError,
    events::Envelope,
    outbox,
    parking::{self, WorkKind, WorkParked},
    topics::Topic,
};
use uuid::Uuid;

/// A job as submitted: the version is pinned and the item list already frozen in S3.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub model: String,
    pub alias: Option<String>,
    pub version: i32,
    pub source: Value,
    pub top_k: i32,
    pub total: i32,
    pub chunk_size: i32,
    pub manifest_key: String,
    pub result_prefix: String,
    pub requested_by: String,
}

impl NewJob {
    pub fn chunks(&self) -> i32 {
        (self.total + self.chunk_size - 1) / self.chunk_size
    }
}

/// What a worker needs of a job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub model: String,
    pub alias: Option<String>,
    pub version: i32,
    pub status: BatchStatus,
    pub top_k: usize,
    pub total: usize,
    pub chunk_size: usize,
    pub chunks: usize,
    pub chunks_done: usize,
    pub manifest_key: String,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        matches!(self.status, BatchStatus::Succeeded | BatchStatus::Failed)
    }
}

/// Records the job and its `predictions.batch` event in one transaction.
#[tracing::instrument(level = "debug", skip_all, fields(batch_job = %job.id, model = %job.model, version = job.version))]
pub async fn queue(ctx: &Context, job: &NewJob) -> Result<(), DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO batch_predictions (id, model, alias, version, source, top_k, total, chunk_size, chunks,
                                        manifest_key, result_prefix, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &job.id,
            &job.model,
            &job.alias,
            &job.version,
            &job.source,
            &job.top_k,
            &job.total,
            &job.chunk_size,
            &job.chunks(),
            &job.manifest_key,
            &job.result_prefix,
            &job.requested_by,
        ],
    )
    .await?;
    let event = Envelope::new(BatchPredictionRequested { job_id: job.id });
    outbox::enqueue(&tx, &ctx.topic(Topic::PredictionsBatch), &job.id.to_string(), &event).await?;
    tx.commit().await?;
    Ok(())
}

/// A stored count as a size (the table's checks keep them non-negative).
fn size(row: &deadpool_postgres::tokio_postgres::Row, column: &str) -> usize {
    row.get::<_, i32>(column).max(0) as usize
}

#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn load(ctx: &Context, id: Uuid) -> Result<Option<Job>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT id, model, alias, version, status, top_k, total, chunk_size, chunks, chunks_done, manifest_key
             FROM batch_predictions WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| Job {
        id: row.get("id"),
        model: row.get("model"),
        alias: row.get("alias"),
        version: row.get("version"),
        status: row.get("status"),
        top_k: size(&row, "top_k"),
        total: size(&row, "total"),
        chunk_size: size(&row, "chunk_size"),
        chunks: size(&row, "chunks"),
        chunks_done: size(&row, "chunks_done"),
        manifest_key: row.get("manifest_key"),
    }))
}

/// Marks the job running (keeping its first start time).
#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn start(ctx: &Context, id: Uuid, run: Uuid) -> Result<(), DbError> {
    ctx.db
        .get()
        .await?
        .execute(
            "UPDATE batch_predictions SET status = $2, started_at = COALESCE(started_at, now()), updated_at = now(),
                 run_id = $4
             WHERE id = $1 AND status IN ($3, $2)",
            &[&id, &BatchStatus::Running, &BatchStatus::Queued, &run],
        )
        .await?;
    Ok(())
}

/// Whether a later run (another delivery of the job) took it over from `run`.
#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn taken_over(ctx: &Context, id: Uuid, run: Uuid) -> Result<bool, DbError> {
    let row = ctx.db.get().await?.query_opt("SELECT run_id FROM batch_predictions WHERE id = $1", &[&id]).await?;
    Ok(row.and_then(|row| row.get::<_, Option<Uuid>>("run_id")).is_some_and(|holder| holder != run))
}

/// Records chunk `chunk` as written, unless the job has moved on (another worker wrote it too):
/// `true` when this call advanced it. The next chunk starts with no attempts.
#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn advance(ctx: &Context, id: Uuid, chunk: usize) -> Result<bool, DbError> {
    let (done, next) = (chunk as i32, chunk as i32 + 1);
    let updated = ctx
        .db
        .get()
        .await?
        .execute(
            "UPDATE batch_predictions SET chunks_done = $3, chunk_attempts = 0, chunk_error = NULL, updated_at = now()
             WHERE id = $1 AND chunks_done = $2 AND status = $4",
            &[&id, &done, &next, &BatchStatus::Running],
        )
        .await?;
    Ok(updated == 1)
}

/// The attempts at a chunk so far, this one included, and the last failure [`chunk_failed`]
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkAttempt {
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// An attempt at chunk `chunk` starts: counted before it runs, so a chunk that kills its worker
/// counts too. `None` when the job has moved past it or ended.
#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn begin_chunk(ctx: &Context, id: Uuid, chunk: usize) -> Result<Option<ChunkAttempt>, DbError> {
    let row = ctx
        .db
        .get()
        .await?
        .query_opt(
            "UPDATE batch_predictions SET chunk_attempts = chunk_attempts + 1, updated_at = now()
             WHERE id = $1 AND chunks_done = $2 AND status = $3
             RETURNING chunk_attempts, chunk_error",
            &[&id, &(chunk as i32), &BatchStatus::Running],
        )
        .await?;
    Ok(row.map(|row| ChunkAttempt { attempts: row.get("chunk_attempts"), last_error: row.get("chunk_error") }))
}

/// The attempt at chunk `chunk` failed: with `counts` (the failure was the chunk's own) its error
/// is kept for the reason the chunk may be parked with; without (a dependency was away), the
/// attempt is given back.
#[tracing::instrument(level = "debug", skip(ctx, error), fields(batch_job = %id))]
pub async fn chunk_failed(ctx: &Context, id: Uuid, chunk: usize, error: &str, counts: bool) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    let chunk = chunk as i32;
    if counts {
        let error = parking::clip(error.to_owned());
        client
            .execute(
                "UPDATE batch_predictions SET chunk_error = $3 WHERE id = $1 AND chunks_done = $2",
                &[&id, &chunk, &error],
            )
            .await?;
    } else {
        client
            .execute(
                "UPDATE batch_predictions SET chunk_attempts = greatest(chunk_attempts - 1, 0)
                 WHERE id = $1 AND chunks_done = $2",
                &[&id, &chunk],
            )
            .await?;
    }
    Ok(())
}

/// Parks chunk `chunk` (its part object already written with the reason on every line): the job
/// moves past it, records it in `failed_chunks`, and a `work.parked` event is enqueued, in one
/// transaction. `false` when the job had already moved on.
#[tracing::instrument(level = "debug", skip(ctx, reason, detail), fields(batch_job = %id))]
pub async fn park_chunk(
    ctx: &Context,
    id: Uuid,
    chunk: usize,
    attempts: i32,
    reason: &str,
    detail: Value,
) -> Result<bool, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let (done, next) = (chunk as i32, chunk as i32 + 1);
    let failed = json!([{"chunk": chunk, "attempts": attempts, "reason": reason}]);
    let updated = tx
        .execute(
            "UPDATE batch_predictions
             SET chunks_done = $3, chunk_attempts = 0, chunk_error = NULL, failed_chunks = failed_chunks || $4,
                 updated_at = now()
             WHERE id = $1 AND chunks_done = $2 AND status = $5",
            &[&id, &done, &next, &failed, &BatchStatus::Running],
        )
        .await?;
    if updated == 1 {
        let parked = WorkParked {
            kind: WorkKind::BatchChunk,
            id: format!("{id}/{chunk}"),
            attempts,
            reason: reason.to_owned(),
            detail,
        };
        parking::enqueue(&tx, ctx, parked).await?;
    }
    tx.commit().await?;
    Ok(updated == 1)
}

/// Ends the job: `succeeded` when `error` is `None`, else `failed` with the reason. A job whose
/// every chunk was parked scored nothing: it fails too, pointing at `failed_chunks`.
#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn finish(ctx: &Context, id: Uuid, error: Option<&str>) -> Result<(), DbError> {
    ctx.db
        .get()
        .await?
        .execute(
            "UPDATE batch_predictions
             SET status = CASE WHEN $2::text IS NOT NULL OR jsonb_array_length(failed_chunks) = chunks
                               THEN $3 ELSE $4 END,
                 error = coalesce($2, CASE WHEN jsonb_array_length(failed_chunks) = chunks
                                           THEN 'every chunk was parked; see failed_chunks' END),
                 finished_at = now(), updated_at = now()
             WHERE id = $1 AND status IN ($5, $6)",
            &[&id, &error, &BatchStatus::Failed, &BatchStatus::Succeeded, &BatchStatus::Queued, &BatchStatus::Running],
        )
        .await?;
    Ok(())
}

/// A job as `GET /v1/batch-predictions/{id}` shows it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub id: Uuid,
    pub model: String,
    pub alias: Option<String>,
    pub version: i32,
    pub source: Value,
    pub top_k: i32,
    pub status: BatchStatus,
    pub total: i32,
    pub chunk_size: i32,
    pub chunks: i32,
    pub chunks_done: i32,
    pub manifest_key: String,
    pub result_prefix: String,
    pub error: Option<String>,
    /// `[{"chunk", "attempts", "reason"}]`: the chunks parked after their attempts ran out.
    pub failed_chunks: Value,
    pub requested_by: String,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[tracing::instrument(level = "debug", skip(ctx), fields(batch_job = %id))]
pub async fn view(ctx: &Context, id: Uuid) -> Result<Option<JobView>, DbError> {
    let row = ctx
        .db
        .get()
        .await?
        .query_opt(
            "SELECT model, alias, version, source, top_k, status, total, chunk_size, chunks, chunks_done,
                    manifest_key, result_prefix, error, requested_by, created_at, started_at, updated_at, finished_at,
                    failed_chunks
             FROM batch_predictions WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|row| JobView {
        id,
        model: row.get("model"),
        alias: row.get("alias"),
        version: row.get("version"),
        source: row.get("source"),
        top_k: row.get("top_k"),
        status: row.get("status"),
        total: row.get("total"),
        chunk_size: row.get("chunk_size"),
        chunks: row.get("chunks"),
        chunks_done: row.get("chunks_done"),
        manifest_key: row.get("manifest_key"),
        result_prefix: row.get("result_prefix"),
        error: row.get("error"),
        failed_chunks: row.get("failed_chunks"),
        requested_by: row.get("requested_by"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        updated_at: row.get("updated_at"),
        finished_at: row.get("finished_at"),
    }))
}

// A read of preprocess's tables that `sluice_core::processed` does not offer yet; it moves there
// once it does.
