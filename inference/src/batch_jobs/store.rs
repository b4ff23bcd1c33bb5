//! The `batch_predictions` table: queuing a job with its outbox event, reading it back, and the
//! worker's conditional progress updates.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    batch_predictions::{BatchPredictionRequested, batch_part_key},
    db::DbError,
    events::Envelope,
    outbox::{self, RelayError},
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
    pub status: String,
    pub top_k: usize,
    pub total: usize,
    pub chunk_size: usize,
    pub chunks: usize,
    pub chunks_done: usize,
    pub manifest_key: String,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed")
    }
}

/// Records the job and its `predictions.batch` event in one transaction.
pub async fn queue(ctx: &Context, job: &NewJob) -> Result<(), RelayError> {
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

const JOB_COLUMNS: &str =
    "id, model, alias, version, status, top_k, total, chunk_size, chunks, chunks_done, manifest_key";

pub async fn load(ctx: &Context, id: Uuid) -> Result<Option<Job>, DbError> {
    let client = ctx.db.get().await?;
    let row = client.query_opt(&format!("SELECT {JOB_COLUMNS} FROM batch_predictions WHERE id = $1"), &[&id]).await?;
    let count = |row: &deadpool_postgres::tokio_postgres::Row, i: usize| row.get::<_, i32>(i).max(0) as usize;
    Ok(row.map(|row| Job {
        id: row.get(0),
        model: row.get(1),
        alias: row.get(2),
        version: row.get(3),
        status: row.get(4),
        top_k: count(&row, 5),
        total: count(&row, 6),
        chunk_size: count(&row, 7),
        chunks: count(&row, 8),
        chunks_done: count(&row, 9),
        manifest_key: row.get(10),
    }))
}

/// Marks the job running (keeping its first start time).
pub async fn start(ctx: &Context, id: Uuid) -> Result<(), DbError> {
    ctx.db
        .get()
        .await?
        .execute(
            "UPDATE batch_predictions SET status = 'running', started_at = COALESCE(started_at, now()),
                 updated_at = now()
             WHERE id = $1 AND status IN ('queued', 'running')",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Records chunk `chunk` as written, unless the job has moved on (another worker wrote it too):
/// `true` when this call advanced it. The next chunk starts with no attempts.
pub async fn advance(ctx: &Context, id: Uuid, chunk: usize) -> Result<bool, DbError> {
    let (done, next) = (chunk as i32, chunk as i32 + 1);
    let updated = ctx
        .db
        .get()
        .await?
        .execute(
            "UPDATE batch_predictions SET chunks_done = $3, chunk_attempts = 0, chunk_error = NULL, updated_at = now()
             WHERE id = $1 AND chunks_done = $2 AND status = 'running'",
            &[&id, &done, &next],
        )
        .await?;
    Ok(updated == 1)
}

/// An attempt at chunk `chunk` starts: counted before it runs, so a chunk that kills its worker
/// counts too. Returns the chunk's attempts and the last failure [`chunk_failed`] kept; `None`
/// when the job has moved past it or ended.
pub async fn begin_chunk(ctx: &Context, id: Uuid, chunk: usize) -> Result<Option<(i32, Option<String>)>, DbError> {
    let row = ctx
        .db
        .get()
        .await?
        .query_opt(
            "UPDATE batch_predictions SET chunk_attempts = chunk_attempts + 1, updated_at = now()
             WHERE id = $1 AND chunks_done = $2 AND status = 'running'
             RETURNING chunk_attempts, chunk_error",
            &[&id, &(chunk as i32)],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The attempt at chunk `chunk` failed: with `counts` (the failure was the chunk's own) its error
/// is kept for the reason the chunk may be parked with; without (a dependency was away), the
/// attempt is given back.
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
pub async fn park_chunk(
    ctx: &Context,
    id: Uuid,
    chunk: usize,
    attempts: i32,
    reason: &str,
    detail: Value,
) -> Result<bool, RelayError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let (done, next) = (chunk as i32, chunk as i32 + 1);
    let failed = json!([{"chunk": chunk, "attempts": attempts, "reason": reason}]);
    let updated = tx
        .execute(
            "UPDATE batch_predictions
             SET chunks_done = $3, chunk_attempts = 0, chunk_error = NULL, failed_chunks = failed_chunks || $4,
                 updated_at = now()
             WHERE id = $1 AND chunks_done = $2 AND status = 'running'",
            &[&id, &done, &next, &failed],
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
pub async fn finish(ctx: &Context, id: Uuid, error: Option<&str>) -> Result<(), DbError> {
    ctx.db
        .get()
        .await?
        .execute(
            "UPDATE batch_predictions
             SET status = CASE WHEN $2::text IS NOT NULL OR jsonb_array_length(failed_chunks) = chunks
                               THEN 'failed' ELSE 'succeeded' END,
                 error = coalesce($2, CASE WHEN jsonb_array_length(failed_chunks) = chunks
                                           THEN 'every chunk was parked; see failed_chunks' END),
                 finished_at = now(), updated_at = now()
             WHERE id = $1 AND status IN ('queued', 'running')",
            &[&id, &error],
        )
        .await?;
    Ok(())
}

fn rfc3339(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::from(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
}

/// `GET /v1/batch-predictions/{id}` as JSON, or `None`.
pub async fn status_json(ctx: &Context, id: Uuid) -> Result<Option<Value>, DbError> {
    let Some(row) = ctx
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
        .await?
    else {
        return Ok(None);
    };
    let (total, chunks, done): (i32, i32, i32) = (row.get(6), row.get(8), row.get(9));
    let parts: Vec<String> = (0..done.max(0) as usize).map(|chunk| batch_part_key(id, chunk)).collect();
    Ok(Some(json!({
        "id": id,
        "model": row.get::<_, String>(0),
        "alias": row.get::<_, Option<String>>(1),
        "version": row.get::<_, i32>(2),
        "source": row.get::<_, Value>(3),
        "top_k": row.get::<_, i32>(4),
        "status": row.get::<_, String>(5),
        "total": total,
        "chunk_size": row.get::<_, i32>(7),
        "chunks": chunks,
        "chunks_done": done,
        "progress": f64::from(done) / f64::from(chunks.max(1)),
        "manifest_key": row.get::<_, String>(10),
        "result_prefix": row.get::<_, String>(11),
        "parts": parts,
        "error": row.get::<_, Option<String>>(12),
        "failed_chunks": row.get::<_, Value>(18),
        "requested_by": row.get::<_, String>(13),
        "created_at": rfc3339(row.get(14)),
        "started_at": rfc3339(row.get(15)),
        "updated_at": rfc3339(row.get(16)),
        "finished_at": rfc3339(row.get(17)),
    })))
}
