//! Training jobs and trials in PostgreSQL: creating a job with its first trials and their events
//! in one transaction, recording progress and outcomes idempotently, cancelling, and the job view
//! of `GET /v1/training-jobs/{id}`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sluice_core::{
    Context,
    events::Envelope,
    outbox,
    topics::Topic,
    training::{Snapshot, TrialAssigned, TrialFinished, TrialProgress},
};
use sluice_nn::Hyper;
use uuid::Uuid;

use crate::search::JobRequest;

/// A storage failure (PostgreSQL or the outbox): transient, the caller retries or answers 503.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self(sluice_core::error_chain(&err))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self(sluice_core::error_chain(&err))
    }
}

impl From<outbox::RelayError> for StoreError {
    fn from(err: outbox::RelayError) -> Self {
        Self(err.to_string())
    }
}

/// Where a job came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub kind: &'static str,
    pub requested_by: String,
    pub evidence: Option<Value>,
}

/// A new trial to queue.
#[derive(Debug, Clone)]
pub struct NewTrial {
    pub hyper: Hyper,
    pub rung: u32,
    pub parent: Option<Uuid>,
    /// Seeds the trial's initial weights, shuffling and dropout ([`crate::search::JobRequest::trial_seed`]).
    pub seed: u64,
}

/// Everything a job needs to be created.
#[derive(Debug)]
pub struct NewJob<'a> {
    pub id: Uuid,
    pub request: &'a JobRequest,
    pub snapshot: &'a Snapshot,
    pub snapshot_id: &'a str,
    pub snapshot_key: &'a str,
    pub trials: Vec<NewTrial>,
    pub origin: Origin,
}

/// Creates the job, its trials and their `training.trials` events in one transaction.
pub async fn create_job(ctx: &Context, job: NewJob<'_>) -> Result<(), StoreError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let request = serde_json::to_value(job.request).expect("requests serialise");
    tx.execute(
        "INSERT INTO training_jobs (id, model, dataset, architecture, request, snapshot_id, snapshot_key, labels,
                                    items, origin, evidence, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &job.id,
            &job.request.model,
            &job.request.dataset,
            &job.request.architecture,
            &request,
            &job.snapshot_id,
            &job.snapshot_key,
            &json!(job.snapshot.labels),
            &(job.snapshot.items.len() as i32),
            &job.origin.kind,
            &job.origin.evidence,
            &job.origin.requested_by,
        ],
    )
    .await?;
    queue_trials(ctx, &tx, job.id, job.request, job.snapshot_id, job.snapshot_key, 0, job.trials).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts trials (ordinals continuing after the job's existing ones) and their events.
#[allow(clippy::too_many_arguments)]
pub async fn queue_trials(
    ctx: &Context,
    tx: &deadpool_postgres::Transaction<'_>,
    job_id: Uuid,
    request: &JobRequest,
    snapshot_id: &str,
    snapshot_key: &str,
    first_ordinal: i32,
    trials: Vec<NewTrial>,
) -> Result<(), StoreError> {
    let topic = ctx.topic(Topic::TrainingTrials);
    for (i, trial) in trials.into_iter().enumerate() {
        let ordinal = first_ordinal + i as i32;
        let trial_id = Uuid::now_v7();
        let params = serde_json::to_value(&trial.hyper).expect("hyper-parameters serialise");
        tx.execute(
            "INSERT INTO training_trials (id, job_id, ordinal, rung, parent, params, epochs, seed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &trial_id,
                &job_id,
                &ordinal,
                &(trial.rung as i32),
                &trial.parent,
                &params,
                &(trial.hyper.epochs as i32),
                &(trial.seed as i64),
            ],
        )
        .await?;
        let event = Envelope::new(TrialAssigned {
            job_id,
            trial_id,
            model: request.model.clone(),
            architecture: request.architecture.clone(),
            snapshot_key: snapshot_key.to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            params,
            seed: trial.seed,
            validation_split: request.validation_split,
            splits: Some(request.splits()),
            rung: trial.rung,
            parent: trial.parent,
        });
        // Trials go round the partitions so every worker of the group gets its share.
        let partition = ordinal % ctx.config.kafka.partitions;
        outbox::enqueue_to_partition(tx, &topic, &trial_id.to_string(), Some(partition), &event).await?;
    }
    Ok(())
}

/// Queues `new` trials for a job whose trials the caller planned from (`seen` of them), in one
/// transaction that also clears the step's failed attempts; nothing when the job has ended or
/// trials were queued since (a redelivered result got there first). Returns whether it queued.
pub async fn queue_after(
    ctx: &Context,
    job_id: Uuid,
    request: &JobRequest,
    job: &tokio_postgres::Row,
    seen: usize,
    new: Vec<NewTrial>,
) -> Result<bool, StoreError> {
    let (snapshot_id, snapshot_key): (String, String) = (job.get("snapshot_id"), job.get("snapshot_key"));
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let status: String =
        tx.query_one("SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", &[&job_id]).await?.get(0);
    let count: i64 = tx.query_one("SELECT count(*) FROM training_trials WHERE job_id = $1", &[&job_id]).await?.get(0);
    if !matches!(status.as_str(), "queued" | "running") || count as usize != seen {
        return Ok(false);
    }
    queue_trials(ctx, &tx, job_id, request, &snapshot_id, &snapshot_key, seen as i32, new).await?;
    tx.execute("UPDATE training_jobs SET step_attempts = 0, step_error = NULL WHERE id = $1", &[&job_id]).await?;
    tx.commit().await?;
    Ok(true)
}

/// A trial's status and its job's status; `None` for an unknown trial.
pub async fn trial_state(ctx: &Context, trial_id: Uuid) -> Result<Option<(String, String)>, StoreError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT t.status, j.status FROM training_trials t JOIN training_jobs j ON j.id = t.job_id WHERE t.id = $1",
            &[&trial_id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// A worker took the trial: it and its job are running, and one more attempt has started
/// (counted before the trial runs, so a worker that dies on it counts). Returns the trial's
/// attempts and the last failure recorded by [`attempt_failed`]; `None` when it already ended.
pub async fn mark_running(
    ctx: &Context,
    job_id: Uuid,
    trial_id: Uuid,
    worker: &str,
) -> Result<Option<(i32, Option<String>)>, StoreError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "UPDATE training_trials SET status = 'running', worker = $2, started_at = coalesce(started_at, now()),
                    heartbeat_at = now(), attempts = attempts + 1
             WHERE id = $1 AND status IN ('queued', 'running')
             RETURNING attempts, error",
            &[&trial_id, &worker],
        )
        .await?;
    client
        .execute(
            "UPDATE training_jobs SET status = 'running', started_at = coalesce(started_at, now())
             WHERE id = $1 AND status = 'queued'",
            &[&job_id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// An attempt at a running trial failed through its own fault: its error is kept for the reason
/// the trial is parked with if it runs out of attempts.
pub async fn attempt_failed(ctx: &Context, trial_id: Uuid, error: &str) -> Result<(), StoreError> {
    let client = ctx.db.get().await?;
    let error = sluice_core::parking::clip(error.to_owned());
    client
        .execute(
            "UPDATE training_trials SET error = $2 WHERE id = $1 AND status IN ('queued', 'running')",
            &[&trial_id, &error],
        )
        .await?;
    Ok(())
}

/// Gives back the attempt of a run that stopped through no fault of the trial (a dependency was
/// away, or the worker is shutting down).
pub async fn give_back_attempt(ctx: &Context, trial_id: Uuid) -> Result<(), StoreError> {
    let client = ctx.db.get().await?;
    client
        .execute(
            "UPDATE training_trials SET attempts = greatest(attempts - 1, 0)
             WHERE id = $1 AND status IN ('queued', 'running')",
            &[&trial_id],
        )
        .await?;
    Ok(())
}

/// The coordinator's step after a rung of an active job begins: one more attempt, counted before
/// it runs. Returns the job's step attempts and the last failure [`step_failed`] kept; `None`
/// when the job already ended.
pub async fn begin_step(ctx: &Context, job_id: Uuid) -> Result<Option<(i32, Option<String>)>, StoreError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "UPDATE training_jobs SET step_attempts = step_attempts + 1
             WHERE id = $1 AND status IN ('queued', 'running') RETURNING step_attempts, step_error",
            &[&job_id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The step failed through its own fault: its error is kept for the reason the job fails with if
/// the step runs out of attempts.
pub async fn step_failed(ctx: &Context, job_id: Uuid, error: &str) -> Result<(), StoreError> {
    let client = ctx.db.get().await?;
    let error = sluice_core::parking::clip(error.to_owned());
    client.execute("UPDATE training_jobs SET step_error = $2 WHERE id = $1", &[&job_id, &error]).await?;
    Ok(())
}

/// Gives back the attempt of a step that failed because a dependency was away.
pub async fn give_back_step(ctx: &Context, job_id: Uuid) -> Result<(), StoreError> {
    let client = ctx.db.get().await?;
    client
        .execute("UPDATE training_jobs SET step_attempts = greatest(step_attempts - 1, 0) WHERE id = $1", &[&job_id])
        .await?;
    Ok(())
}

/// Enqueues a `work.parked` event (one statement, its own transaction).
pub async fn parked(ctx: &Context, parked: sluice_core::parking::WorkParked) -> Result<(), StoreError> {
    let client = ctx.db.get().await?;
    sluice_core::parking::enqueue(&client, ctx, parked).await?;
    Ok(())
}

/// Records an epoch; a replayed or older epoch changes nothing.
pub async fn record_progress(ctx: &Context, progress: &TrialProgress) -> Result<(), StoreError> {
    let client = ctx.db.get().await?;
    let metrics = serde_json::to_value(&progress.metrics).expect("metrics serialise");
    client
        .execute(
            "UPDATE training_trials
             SET epoch = $2, metrics = $3, worker = $4,
                 history = history || jsonb_build_array($3::jsonb || jsonb_build_object('worker', $4::text, 'resumed_from', $5::int)),
                 heartbeat_at = now(), status = 'running', started_at = coalesce(started_at, now())
             WHERE id = $1 AND status IN ('queued', 'running') AND epoch < $2",
            &[&progress.trial_id, &(progress.metrics.epoch as i32), &metrics, &progress.worker, &(progress.resumed_from as i32)],
        )
        .await?;
    Ok(())
}

/// Records a trial's end; `false` when it had already ended (a duplicate result).
pub async fn record_finished(ctx: &Context, finished: &TrialFinished) -> Result<bool, StoreError> {
    let client = ctx.db.get().await?;
    let artifact = finished.artifact.as_ref();
    let updated = client
        .execute(
            "UPDATE training_trials
             SET status = $2, worker = $3, metrics = coalesce($4, metrics), artifact_key = $5, sha256 = $6,
                 size_bytes = $7, reference = $8, error = $9, duration_ms = $10, finished_at = now()
             WHERE id = $1 AND status IN ('queued', 'running')",
            &[
                &finished.trial_id,
                &finished.outcome.as_str(),
                &finished.worker,
                &Some(&finished.metrics).filter(|m| !m.is_null()),
                &artifact.map(|a| a.key.as_str()),
                &artifact.map(|a| a.sha256.as_str()),
                &artifact.map(|a| a.size_bytes),
                &Some(&finished.reference).filter(|r| !r.is_null()),
                &finished.error,
                &finished.duration_ms,
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// How a cancel request ended.
#[derive(Debug, PartialEq)]
pub enum Cancelled {
    Done,
    NotFound,
    AlreadyEnded(String),
}

/// Cancels a job: queued trials are skipped by workers, running ones stop after their epoch.
pub async fn cancel(ctx: &Context, job_id: Uuid) -> Result<Cancelled, StoreError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx.query_opt("SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", &[&job_id]).await? else {
        return Ok(Cancelled::NotFound);
    };
    let status: String = row.get(0);
    if !matches!(status.as_str(), "queued" | "running") {
        return Ok(Cancelled::AlreadyEnded(status));
    }
    tx.execute("UPDATE training_jobs SET status = 'cancelled', finished_at = now() WHERE id = $1", &[&job_id]).await?;
    tx.execute(
        "UPDATE training_trials SET status = 'cancelled', finished_at = now()
         WHERE job_id = $1 AND status IN ('queued', 'running')",
        &[&job_id],
    )
    .await?;
    tx.commit().await?;
    Ok(Cancelled::Done)
}

fn rfc3339(at: Option<DateTime<Utc>>) -> Value {
    at.map(|t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))).unwrap_or(Value::Null)
}

/// The public view of a job: status, every trial, the best trial and the registered version.
pub async fn job_view(ctx: &Context, job_id: Uuid) -> Result<Option<Value>, StoreError> {
    let client = ctx.db.get().await?;
    let Some(job) = client
        .query_opt(
            "SELECT id, model, dataset, architecture, request, status, snapshot_id, labels, items, origin, evidence,
                    requested_by, best_trial, registered_version, promotion, error, created_at, started_at, finished_at
             FROM training_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let trials = client
        .query(
            "SELECT id, ordinal, rung, parent, params, status, worker, epoch, epochs, metrics, history, artifact_key,
                    sha256, error, duration_ms, started_at, finished_at
             FROM training_trials WHERE job_id = $1 ORDER BY ordinal",
            &[&job_id],
        )
        .await?;
    let trials: Vec<Value> = trials
        .iter()
        .map(|t| {
            json!({
                "id": t.get::<_, Uuid>(0), "ordinal": t.get::<_, i32>(1), "rung": t.get::<_, i32>(2),
                "parent": t.get::<_, Option<Uuid>>(3), "params": t.get::<_, Value>(4),
                "status": t.get::<_, String>(5), "worker": t.get::<_, Option<String>>(6),
                "epoch": t.get::<_, i32>(7), "epochs": t.get::<_, i32>(8), "metrics": t.get::<_, Option<Value>>(9),
                "history": t.get::<_, Value>(10), "artifact_key": t.get::<_, Option<String>>(11),
                "sha256": t.get::<_, Option<String>>(12), "error": t.get::<_, Option<String>>(13),
                "duration_ms": t.get::<_, Option<i64>>(14), "started_at": rfc3339(t.get(15)),
                "finished_at": rfc3339(t.get(16)),
            })
        })
        .collect();
    let count = |status: &str| trials.iter().filter(|t| t["status"] == status).count();
    let summary = json!({
        "total": trials.len(), "queued": count("queued"), "running": count("running"),
        "succeeded": count("succeeded"), "failed": count("failed"), "cancelled": count("cancelled"),
    });
    Ok(Some(json!({
        "id": job.get::<_, Uuid>(0), "model": job.get::<_, String>(1), "dataset": job.get::<_, String>(2),
        "architecture": job.get::<_, String>(3), "request": job.get::<_, Value>(4), "status": job.get::<_, String>(5),
        "snapshot_id": job.get::<_, String>(6), "labels": job.get::<_, Value>(7), "items": job.get::<_, i32>(8),
        "origin": job.get::<_, String>(9), "evidence": job.get::<_, Option<Value>>(10),
        "requested_by": job.get::<_, String>(11), "best_trial": job.get::<_, Option<Uuid>>(12),
        "registered_version": job.get::<_, Option<i32>>(13), "promotion": job.get::<_, Option<Value>>(14),
        "error": job.get::<_, Option<String>>(15), "created_at": rfc3339(job.get(16)),
        "started_at": rfc3339(job.get(17)), "finished_at": rfc3339(job.get(18)),
        "trials_summary": summary, "trials": trials,
    })))
}

/// The newest jobs, optionally of one model.
pub async fn list_jobs(ctx: &Context, model: Option<&str>, limit: i64) -> Result<Vec<Value>, StoreError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT j.id, j.model, j.dataset, j.status, j.origin, j.registered_version, j.created_at, j.finished_at,
                    (SELECT count(*) FROM training_trials t WHERE t.job_id = j.id)
             FROM training_jobs j WHERE ($1::text IS NULL OR j.model = $1) ORDER BY j.created_at DESC LIMIT $2",
            &[&model, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, Uuid>(0), "model": r.get::<_, String>(1), "dataset": r.get::<_, String>(2),
                "status": r.get::<_, String>(3), "origin": r.get::<_, String>(4),
                "registered_version": r.get::<_, Option<i32>>(5), "created_at": rfc3339(r.get(6)),
                "finished_at": rfc3339(r.get(7)), "trials": r.get::<_, i64>(8),
            })
        })
        .collect())
}

/// Retrain requests, newest first (`GET /v1/retrain-requests`).
pub async fn retrain_requests(ctx: &Context, model: Option<&str>, limit: i64) -> Result<Vec<Value>, StoreError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT event_id, model, reason, evidence, outcome, job_id, received_at FROM retrain_requests
             WHERE ($1::text IS NULL OR model = $1) ORDER BY received_at DESC LIMIT $2",
            &[&model, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let outcome: String = r.get("outcome");
            // `skipped: <reason>` and `refused: <reason>` keep their reason in the same column.
            let (kind, detail) = match outcome.split_once(": ") {
                Some((kind, detail)) => (kind.to_owned(), Some(detail.to_owned())),
                None => (outcome.clone(), None),
            };
            json!({
                "event_id": r.get::<_, Uuid>("event_id"), "model": r.get::<_, String>("model"),
                "reason": r.get::<_, String>("reason"), "evidence": r.get::<_, Value>("evidence"),
                "outcome": kind, "detail": detail, "job_id": r.get::<_, Option<Uuid>>("job_id"),
                "received_at": rfc3339(r.get("received_at")),
            })
        })
        .collect())
}

/// The job's median-rule grace epochs, when its search asked for `early_stopping: median`.
pub async fn median_rule(ctx: &Context, job_id: Uuid) -> Result<Option<u32>, StoreError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT request -> 'search' ->> 'early_stopping', (request -> 'search' ->> 'grace_epochs')::int
             FROM training_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?;
    Ok(row.and_then(|r| {
        let rule: Option<String> = r.get(0);
        (rule.as_deref() == Some("median")).then(|| r.get::<_, Option<i32>>(1).unwrap_or(2).max(1) as u32)
    }))
}

/// The best validation accuracy up to `epoch` of every other trial of the job's `rung` that has
/// reported `epoch` (or later).
pub async fn peers_at_epoch(
    ctx: &Context,
    job_id: Uuid,
    trial_id: Uuid,
    rung: u32,
    epoch: u32,
) -> Result<Vec<f64>, StoreError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT (SELECT max((h ->> 'val_accuracy')::float8) FROM jsonb_array_elements(t.history) h
                     WHERE (h ->> 'epoch')::int <= $4)
             FROM training_trials t
             WHERE t.job_id = $1 AND t.id <> $2 AND t.rung = $3 AND t.epoch >= $4",
            &[&job_id, &trial_id, &(rung as i32), &(epoch as i32)],
        )
        .await?;
    Ok(rows.iter().filter_map(|r| r.get::<_, Option<f64>>(0)).collect())
}
