//! Training jobs and trials in PostgreSQL, and the retrain requests received: every statement
//! the trainer runs. Creating a job with its first trials and their events is one transaction;
//! progress and outcomes are recorded idempotently; registering the best trial, moving aliases
//! and ending the job are one transaction. A job's end (`training.job_finished`) and a skipped
//! retrain (`retrain.skipped`) are announced on `notifications` in the transaction that records
//! them. Functions return [`DbError`] and typed rows.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{Value, json};
use sluice_core::{
    Context,
    db::DbError,
    events::Envelope,
    live,
    models::{self, AliasName, ModelName, ModelVersion, NewVersion, RegistryError},
    notifications::{self, RetrainSkipped, TrainingJobFinished},
    outbox,
    parking::WorkParked,
    topics::Topic,
    training::{RunStatus, Snapshot, TestScores, TrialAssigned, TrialFinished, TrialProgress},
};
use sluice_nn::Hyper;
use uuid::Uuid;

use crate::search::JobRequest;

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
    /// The production version every trial is scored against on the test split.
    pub baseline_version: Option<i32>,
}

/// A job as the coordinator plans from it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: Uuid,
    pub status: RunStatus,
    pub request: Value,
    pub snapshot_id: String,
    pub snapshot_key: String,
    pub baseline_version: Option<i32>,
}

/// A trial as the coordinator plans from it.
#[derive(Debug, Clone)]
pub struct TrialRow {
    pub id: Uuid,
    pub rung: i32,
    pub status: RunStatus,
    pub params: Value,
    pub metrics: Option<Value>,
    /// `None` for trials made before trials had their own seeds (they used the job's).
    pub seed: Option<i64>,
    pub parent: Option<Uuid>,
}

/// Attempts at a unit of work (a trial, a coordinator step) and the last failure kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempts {
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// A trial's status and its job's, and which run holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialState {
    pub trial: RunStatus,
    pub job: RunStatus,
    /// The run that last started it ([`mark_running`]).
    pub run: Option<Uuid>,
}

impl TrialState {
    /// Whether the trial should (still) run.
    pub fn wanted(self) -> bool {
        !self.trial.is_final() && !self.job.is_final()
    }
}

/// The best trial of a finished search, with what registering it needs.
#[derive(Debug, Clone)]
pub struct BestTrial {
    pub artifact_key: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub metrics: Option<Value>,
    pub reference: Option<Value>,
    pub params: Value,
    pub labels: Vec<String>,
    pub snapshot_key: String,
    pub architecture: String,
    pub test: Option<TestScores>,
}

const ACTIVE: [RunStatus; 2] = [RunStatus::Queued, RunStatus::Running];

/// Creates the job, its trials and their `training.trials` events in one transaction. A retrain
/// (origin `retrain`) is created only if no job of the model is busy or recent
/// ([`busy_job`]'s rule), checked under a per-model lock in this transaction: two requests
/// handled at once (a rebalance redelivering one mid-start) start one job, and the other is
/// answered with it (`Some`).
#[tracing::instrument(level = "debug", skip_all, fields(job_id = %job.id, model = %job.request.model))]
pub async fn create_job(ctx: &Context, job: NewJob<'_>, retrain_cooldown_secs: f64) -> Result<Option<Uuid>, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    if job.origin.kind == "retrain" {
        let lock = format!("sluice.retrain:{}", job.request.model);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock]).await?;
        if let Some(busy) = busy_job_in(&tx, &job.request.model, retrain_cooldown_secs).await? {
            return Ok(Some(busy));
        }
    }
    let request = serde_json::to_value(job.request).expect("requests serialise");
    tx.execute(
        "INSERT INTO training_jobs (id, model, dataset, architecture, request, snapshot_id, snapshot_key, labels,
                                    items, origin, evidence, requested_by, baseline_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
            &job.baseline_version,
        ],
    )
    .await?;
    let queued = Queued {
        job_id: job.id,
        request: job.request,
        snapshot_id: job.snapshot_id,
        snapshot_key: job.snapshot_key,
        baseline_version: job.baseline_version,
    };
    queue_trials(ctx, &tx, &queued, 0, job.trials).await?;
    tx.commit().await?;
    Ok(None)
}

/// The job-wide fields of the trials queued for it.
struct Queued<'a> {
    job_id: Uuid,
    request: &'a JobRequest,
    snapshot_id: &'a str,
    snapshot_key: &'a str,
    baseline_version: Option<i32>,
}

/// Inserts trials (ordinals continuing after the job's existing ones) and their events.
async fn queue_trials(
    ctx: &Context,
    tx: &deadpool_postgres::Transaction<'_>,
    job: &Queued<'_>,
    first_ordinal: i32,
    trials: Vec<NewTrial>,
) -> Result<(), DbError> {
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
                &job.job_id,
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
            job_id: job.job_id,
            trial_id,
            model: job.request.model.clone(),
            architecture: job.request.architecture.clone(),
            snapshot_key: job.snapshot_key.to_owned(),
            snapshot_id: job.snapshot_id.to_owned(),
            params,
            seed: trial.seed,
            validation_split: job.request.validation_split,
            splits: Some(job.request.splits()),
            rung: trial.rung,
            parent: trial.parent,
            baseline_version: job.baseline_version,
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
#[tracing::instrument(level = "debug", skip_all, fields(job_id = %job.id, new = new.len()))]
pub async fn queue_after(
    ctx: &Context,
    job: &JobRow,
    request: &JobRequest,
    seen: usize,
    new: Vec<NewTrial>,
) -> Result<bool, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let status: RunStatus =
        tx.query_one("SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", &[&job.id]).await?.get("status");
    let count: i64 = tx
        .query_one("SELECT count(*) AS trials FROM training_trials WHERE job_id = $1", &[&job.id])
        .await?
        .get("trials");
    if status.is_final() || count as usize != seen {
        return Ok(false);
    }
    let queued = Queued {
        job_id: job.id,
        request,
        snapshot_id: &job.snapshot_id,
        snapshot_key: &job.snapshot_key,
        baseline_version: job.baseline_version,
    };
    queue_trials(ctx, &tx, &queued, seen as i32, new).await?;
    tx.execute("UPDATE training_jobs SET step_attempts = 0, step_error = NULL WHERE id = $1", &[&job.id]).await?;
    tx.commit().await?;
    Ok(true)
}

/// A trial's status and its job's; `None` for an unknown trial.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn trial_state(ctx: &Context, trial_id: Uuid) -> Result<Option<TrialState>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT t.status AS trial_status, j.status AS job_status, t.run_id
             FROM training_trials t JOIN training_jobs j ON j.id = t.job_id WHERE t.id = $1",
            &[&trial_id],
        )
        .await?;
    Ok(row.map(|r| TrialState { trial: r.get("trial_status"), job: r.get("job_status"), run: r.get("run_id") }))
}

/// A worker's `run` took the trial: it and its job are running, the run holds it (an earlier run
/// still going elsewhere stops at its next epoch), and one more attempt has started (counted
/// before the trial runs, so a worker that dies on it counts). Returns the trial's attempts and
/// the last failure recorded by [`attempt_failed`]; `None` when it already ended.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn mark_running(
    ctx: &Context,
    job_id: Uuid,
    trial_id: Uuid,
    worker: &str,
    run: Uuid,
) -> Result<Option<Attempts>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "UPDATE training_trials SET status = $3, worker = $2, started_at = coalesce(started_at, now()),
                    heartbeat_at = now(), attempts = attempts + 1, run_id = $5
             WHERE id = $1 AND status = ANY($4)
             RETURNING attempts, error",
            &[&trial_id, &worker, &RunStatus::Running, &ACTIVE.as_slice(), &run],
        )
        .await?;
    client
        .execute(
            "UPDATE training_jobs SET status = $2, started_at = coalesce(started_at, now())
             WHERE id = $1 AND status = $3",
            &[&job_id, &RunStatus::Running, &RunStatus::Queued],
        )
        .await?;
    Ok(row.map(|r| Attempts { attempts: r.get("attempts"), last_error: r.get("error") }))
}

/// An attempt at a running trial failed through its own fault: its error is kept for the reason
/// the trial is parked with if it runs out of attempts.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn attempt_failed(ctx: &Context, trial_id: Uuid, error: &str) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    let error = sluice_core::parking::clip(error.to_owned());
    client
        .execute(
            "UPDATE training_trials SET error = $2 WHERE id = $1 AND status = ANY($3)",
            &[&trial_id, &error, &ACTIVE.as_slice()],
        )
        .await?;
    Ok(())
}

/// Gives back the attempt of a run that stopped through no fault of the trial (a dependency was
/// away, or the worker is shutting down).
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn give_back_attempt(ctx: &Context, trial_id: Uuid) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    client
        .execute(
            "UPDATE training_trials SET attempts = greatest(attempts - 1, 0) WHERE id = $1 AND status = ANY($2)",
            &[&trial_id, &ACTIVE.as_slice()],
        )
        .await?;
    Ok(())
}

/// A job, unless it is unknown.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn job(ctx: &Context, job_id: Uuid) -> Result<Option<JobRow>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT id, status, request, snapshot_id, snapshot_key, baseline_version FROM training_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?;
    Ok(row.map(|r| JobRow {
        id: r.get("id"),
        status: r.get("status"),
        request: r.get("request"),
        snapshot_id: r.get("snapshot_id"),
        snapshot_key: r.get("snapshot_key"),
        baseline_version: r.get("baseline_version"),
    }))
}

/// A job's trials in the order they were queued.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn trials(ctx: &Context, job_id: Uuid) -> Result<Vec<TrialRow>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT id, rung, status, params, metrics, seed, parent FROM training_trials WHERE job_id = $1 ORDER BY ordinal",
            &[&job_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TrialRow {
            id: r.get("id"),
            rung: r.get("rung"),
            status: r.get("status"),
            params: r.get("params"),
            metrics: r.get("metrics"),
            seed: r.get("seed"),
            parent: r.get("parent"),
        })
        .collect())
}

/// The coordinator's step after a rung of an active job begins: one more attempt, counted before
/// it runs. Returns the job's step attempts and the last failure [`step_failed`] kept; `None`
/// when the job already ended.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn begin_step(ctx: &Context, job_id: Uuid) -> Result<Option<Attempts>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "UPDATE training_jobs SET step_attempts = step_attempts + 1
             WHERE id = $1 AND status = ANY($2) RETURNING step_attempts, step_error",
            &[&job_id, &ACTIVE.as_slice()],
        )
        .await?;
    Ok(row.map(|r| Attempts { attempts: r.get("step_attempts"), last_error: r.get("step_error") }))
}

/// The step failed through its own fault: its error is kept for the reason the job fails with if
/// the step runs out of attempts.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn step_failed(ctx: &Context, job_id: Uuid, error: &str) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    let error = sluice_core::parking::clip(error.to_owned());
    client.execute("UPDATE training_jobs SET step_error = $2 WHERE id = $1", &[&job_id, &error]).await?;
    Ok(())
}

/// Gives back the attempt of a step that failed because a dependency was away.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn give_back_step(ctx: &Context, job_id: Uuid) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    client
        .execute("UPDATE training_jobs SET step_attempts = greatest(step_attempts - 1, 0) WHERE id = $1", &[&job_id])
        .await?;
    Ok(())
}

/// Fails an active job with `error`, enqueueing `parked` (a `work.parked` event) with it when
/// given, in one transaction. Returns whether the job was active (it is failed now).
#[tracing::instrument(level = "debug", skip(ctx, parked))]
pub async fn fail_job(ctx: &Context, job_id: Uuid, error: &str, parked: Option<WorkParked>) -> Result<bool, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let failed = tx
        .query_opt(
            "UPDATE training_jobs SET status = $3, error = $2, finished_at = now() WHERE id = $1 AND status = ANY($4)
             RETURNING model",
            &[&job_id, &error, &RunStatus::Failed, &ACTIVE.as_slice()],
        )
        .await?;
    if let Some(row) = &failed {
        if let Some(parked) = parked {
            sluice_core::parking::enqueue(&tx, ctx, parked).await?;
        }
        let model: String = row.get("model");
        let finished = job_finished(job_id, &model, RunStatus::Failed, None, false, Some(error));
        notifications::enqueue(&tx, &ctx.config.kafka.topic_prefix, &model, finished).await?;
    }
    tx.commit().await?;
    Ok(failed.is_some())
}

/// The `training.job_finished` notification, enqueued with every job's final status.
fn job_finished(
    job_id: Uuid,
    model: &str,
    status: RunStatus,
    version: Option<i32>,
    promoted: bool,
    error: Option<&str>,
) -> TrainingJobFinished {
    TrainingJobFinished {
        job_id,
        model: model.to_owned(),
        status,
        version,
        promoted,
        error: error.map(|e| sluice_core::parking::clip(e.to_owned())),
    }
}

/// Enqueues a `work.parked` event (one statement, its own transaction).
#[tracing::instrument(level = "debug", skip_all, fields(id = %parked.id))]
pub async fn parked(ctx: &Context, parked: WorkParked) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    sluice_core::parking::enqueue(&client, ctx, parked).await?;
    Ok(())
}

/// Records an epoch; a replayed or older epoch changes nothing.
#[tracing::instrument(level = "debug", skip_all, fields(trial_id = %progress.trial_id, epoch = progress.metrics.epoch))]
pub async fn record_progress(ctx: &Context, progress: &TrialProgress) -> Result<(), DbError> {
    let client = ctx.db.get().await?;
    let metrics = serde_json::to_value(&progress.metrics).expect("metrics serialise");
    client
        .execute(
            "UPDATE training_trials
             SET epoch = $2, metrics = $3, worker = $4,
                 history = history || jsonb_build_array($3::jsonb || jsonb_build_object('worker', $4::text, 'resumed_from', $5::int)),
                 heartbeat_at = now(), status = $6, started_at = coalesce(started_at, now())
             WHERE id = $1 AND status = ANY($7) AND epoch < $2",
            &[
                &progress.trial_id,
                &(progress.metrics.epoch as i32),
                &metrics,
                &progress.worker,
                &(progress.resumed_from as i32),
                &RunStatus::Running,
                &ACTIVE.as_slice(),
            ],
        )
        .await?;
    Ok(())
}

/// Records a trial's end; `false` when it had already ended (a duplicate result).
#[tracing::instrument(level = "debug", skip_all, fields(trial_id = %finished.trial_id, outcome = finished.outcome.as_str()))]
pub async fn record_finished(ctx: &Context, finished: &TrialFinished) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let artifact = finished.artifact.as_ref();
    let test = finished.test.as_ref().map(|t| serde_json::to_value(t).expect("scores serialise"));
    let updated = client
        .execute(
            "UPDATE training_trials
             SET status = $2, worker = $3, metrics = coalesce($4, metrics), artifact_key = $5, sha256 = $6,
                 size_bytes = $7, reference = $8, error = $9, duration_ms = $10, test_scores = $11, finished_at = now()
             WHERE id = $1 AND status = ANY($12)",
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
                &test,
                &ACTIVE.as_slice(),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// The best trial with its job's labels, snapshot and architecture; `None` if it is unknown.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn best_trial(ctx: &Context, trial_id: Uuid) -> Result<Option<BestTrial>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT t.artifact_key, t.sha256, t.size_bytes, t.metrics, t.reference, t.params, t.test_scores,
                    j.labels, j.snapshot_key, j.architecture
             FROM training_trials t JOIN training_jobs j ON j.id = t.job_id WHERE t.id = $1",
            &[&trial_id],
        )
        .await?;
    // A trial recorded as succeeded without its artifact (which the coordinator refuses now) is
    // not a best trial: the step that wants it fails and is retried a bounded number of times.
    let Some(r) = row else { return Ok(None) };
    let (Ok(Some(artifact_key)), Ok(Some(sha256)), Ok(Some(size_bytes))) =
        (r.try_get("artifact_key"), r.try_get("sha256"), r.try_get("size_bytes"))
    else {
        return Ok(None);
    };
    Ok(Some(BestTrial {
        artifact_key,
        sha256,
        size_bytes,
        metrics: r.get("metrics"),
        reference: r.get("reference"),
        params: r.get("params"),
        labels: serde_json::from_value(r.get("labels")).unwrap_or_default(),
        snapshot_key: r.get("snapshot_key"),
        architecture: r.get("architecture"),
        test: r.get::<_, Option<Value>>("test_scores").and_then(|v| serde_json::from_value(v).ok()),
    }))
}

/// The request and snapshot of a job (the lineage of a registered version); `None` if unknown.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn job_lineage(ctx: &Context, job_id: Uuid) -> Result<Option<(Value, Option<String>)>, DbError> {
    let client = ctx.db.get().await?;
    let row = client.query_opt("SELECT request, snapshot_key FROM training_jobs WHERE id = $1", &[&job_id]).await?;
    Ok(row.map(|r| (r.get("request"), r.get("snapshot_key"))))
}

/// How a finished search is registered: the new version, the job's template, the promotion
/// decision, and the alias moves it implies.
#[derive(Debug)]
pub struct Registration<'a> {
    pub job_id: Uuid,
    pub best_trial: Uuid,
    pub version: &'a NewVersion,
    pub template: &'a Value,
    pub decision: &'a Value,
    /// Move `production` to the new version, with this reason.
    pub promote: Option<String>,
    /// Register it as `candidate` shadowing this production version (`if_better_live`).
    pub live_against: Option<i32>,
    /// The production version the decision compared against (`None` inside: there was none),
    /// when the decision depends on it: registration refuses if production has moved since.
    pub decided_against: Option<Option<i32>>,
}

/// What [`register`] did.
#[derive(Debug)]
pub enum Registered {
    Done(Box<ModelVersion>),
    /// The job had already ended (a redelivered result): nothing changed.
    AlreadyEnded,
    /// Production moved after the decision read it (another job's promotion, a rollback):
    /// nothing changed; decide again against the new production.
    ProductionMoved {
        decided: Option<i32>,
        now: Option<i32>,
    },
}

/// Registers the best trial's model, moves the aliases the decision asks for and ends the job,
/// in one transaction, unless the job had already ended or production moved since the decision.
#[tracing::instrument(level = "debug", skip_all, fields(job_id = %r.job_id, model = %r.version.model))]
pub async fn register(ctx: &Context, r: Registration<'_>) -> Result<Registered, RegistryError> {
    let mut client = ctx.db.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await.map_err(DbError::from)?;
    let status: RunStatus = tx
        .query_one("SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", &[&r.job_id])
        .await
        .map_err(DbError::from)?
        .get("status");
    if status.is_final() {
        return Ok(Registered::AlreadyEnded);
    }
    let prefix = &ctx.config.kafka.topic_prefix;
    let model: &ModelName = &r.version.model;
    // Locks the model: production cannot move again until this commits.
    let version = models::register(&tx, prefix, r.version).await?;
    if let Some(decided) = r.decided_against {
        let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
        let now = models::resolve_alias(&tx, model, &production).await?.map(|v| v.version);
        if now != decided {
            return Ok(Registered::ProductionMoved { decided, now });
        }
    }
    models::set_template(&tx, model, r.template).await?;
    if let Some(reason) = &r.promote {
        let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
        models::move_alias(&tx, prefix, model, &production, version.version, "trainer", reason).await?;
    }
    if let Some(current) = r.live_against {
        let candidate = AliasName::parse(live::CANDIDATE_ALIAS).expect("a valid alias");
        let reason = format!("training job {}: candidate for live promotion (if_better_live)", r.job_id);
        models::move_alias(&tx, prefix, model, &candidate, version.version, "trainer", &reason).await?;
        live::start(&tx, model.as_str(), version.version, current, r.job_id).await?;
    }
    tx.execute(
        "UPDATE training_jobs SET status = $5, best_trial = $2, registered_version = $3, promotion = $4,
                finished_at = now(), step_attempts = 0, step_error = NULL
         WHERE id = $1",
        &[&r.job_id, &r.best_trial, &version.version, r.decision, &RunStatus::Succeeded],
    )
    .await
    .map_err(DbError::from)?;
    let finished =
        job_finished(r.job_id, model.as_str(), RunStatus::Succeeded, Some(version.version), r.promote.is_some(), None);
    notifications::enqueue(&tx, prefix, model.as_str(), finished).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(Registered::Done(Box::new(version)))
}

/// How a cancel request ended.
#[derive(Debug, PartialEq)]
pub enum Cancelled {
    Done,
    NotFound,
    AlreadyEnded(RunStatus),
}

/// Cancels a job: queued trials are skipped by workers, running ones stop after their epoch.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn cancel(ctx: &Context, job_id: Uuid) -> Result<Cancelled, DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let Some(row) =
        tx.query_opt("SELECT status, model FROM training_jobs WHERE id = $1 FOR UPDATE", &[&job_id]).await?
    else {
        return Ok(Cancelled::NotFound);
    };
    let status: RunStatus = row.get("status");
    let model: String = row.get("model");
    if status.is_final() {
        return Ok(Cancelled::AlreadyEnded(status));
    }
    tx.execute(
        "UPDATE training_jobs SET status = $2, finished_at = now() WHERE id = $1",
        &[&job_id, &RunStatus::Cancelled],
    )
    .await?;
    tx.execute(
        "UPDATE training_trials SET status = $2, finished_at = now() WHERE job_id = $1 AND status = ANY($3)",
        &[&job_id, &RunStatus::Cancelled, &ACTIVE.as_slice()],
    )
    .await?;
    let finished = job_finished(job_id, &model, RunStatus::Cancelled, None, false, None);
    notifications::enqueue(&tx, &ctx.config.kafka.topic_prefix, &model, finished).await?;
    tx.commit().await?;
    Ok(Cancelled::Done)
}

fn rfc3339(at: Option<DateTime<Utc>>) -> Value {
    at.map(|t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))).unwrap_or(Value::Null)
}

/// The public view of a job: status, every trial, the best trial and the registered version.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn job_view(ctx: &Context, job_id: Uuid) -> Result<Option<Value>, DbError> {
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
                "id": t.get::<_, Uuid>("id"), "ordinal": t.get::<_, i32>("ordinal"), "rung": t.get::<_, i32>("rung"),
                "parent": t.get::<_, Option<Uuid>>("parent"), "params": t.get::<_, Value>("params"),
                "status": t.get::<_, RunStatus>("status"), "worker": t.get::<_, Option<String>>("worker"),
                "epoch": t.get::<_, i32>("epoch"), "epochs": t.get::<_, i32>("epochs"),
                "metrics": t.get::<_, Option<Value>>("metrics"), "history": t.get::<_, Value>("history"),
                "artifact_key": t.get::<_, Option<String>>("artifact_key"),
                "sha256": t.get::<_, Option<String>>("sha256"), "error": t.get::<_, Option<String>>("error"),
                "duration_ms": t.get::<_, Option<i64>>("duration_ms"), "started_at": rfc3339(t.get("started_at")),
                "finished_at": rfc3339(t.get("finished_at")),
            })
        })
        .collect();
    let count = |status: RunStatus| trials.iter().filter(|t| t["status"] == status.as_str()).count();
    let mut summary = json!({"total": trials.len()});
    for &status in RunStatus::ALL {
        summary[status.as_str()] = json!(count(status));
    }
    Ok(Some(json!({
        "id": job.get::<_, Uuid>("id"), "model": job.get::<_, String>("model"),
        "dataset": job.get::<_, String>("dataset"), "architecture": job.get::<_, String>("architecture"),
        "request": job.get::<_, Value>("request"), "status": job.get::<_, RunStatus>("status"),
        "snapshot_id": job.get::<_, String>("snapshot_id"), "labels": job.get::<_, Value>("labels"),
        "items": job.get::<_, i32>("items"), "origin": job.get::<_, String>("origin"),
        "evidence": job.get::<_, Option<Value>>("evidence"), "requested_by": job.get::<_, String>("requested_by"),
        "best_trial": job.get::<_, Option<Uuid>>("best_trial"),
        "registered_version": job.get::<_, Option<i32>>("registered_version"),
        "promotion": job.get::<_, Option<Value>>("promotion"), "error": job.get::<_, Option<String>>("error"),
        "created_at": rfc3339(job.get("created_at")), "started_at": rfc3339(job.get("started_at")),
        "finished_at": rfc3339(job.get("finished_at")),
        "trials_summary": summary, "trials": trials,
    })))
}

/// The newest jobs, optionally of one model.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn list_jobs(ctx: &Context, model: Option<&str>, limit: i64) -> Result<Vec<Value>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT j.id, j.model, j.dataset, j.status, j.origin, j.registered_version, j.created_at, j.finished_at,
                    (SELECT count(*) FROM training_trials t WHERE t.job_id = j.id) AS trials
             FROM training_jobs j WHERE ($1::text IS NULL OR j.model = $1) ORDER BY j.created_at DESC LIMIT $2",
            &[&model, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, Uuid>("id"), "model": r.get::<_, String>("model"),
                "dataset": r.get::<_, String>("dataset"), "status": r.get::<_, RunStatus>("status"),
                "origin": r.get::<_, String>("origin"), "registered_version": r.get::<_, Option<i32>>("registered_version"),
                "created_at": rfc3339(r.get("created_at")), "finished_at": rfc3339(r.get("finished_at")),
                "trials": r.get::<_, i64>("trials"),
            })
        })
        .collect())
}

/// Retrain requests, newest first (`GET /v1/retrain-requests`).
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn retrain_requests(ctx: &Context, model: Option<&str>, limit: i64) -> Result<Vec<Value>, DbError> {
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

/// Whether a retrain request (by event id) was already acted on.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn retrain_seen(ctx: &Context, event_id: Uuid) -> Result<bool, DbError> {
    let client = ctx.db.get().await?;
    let row = client.query_opt("SELECT 1 AS seen FROM retrain_requests WHERE event_id = $1", &[&event_id]).await?;
    Ok(row.is_some())
}

/// The model's job a retrain request coalesces into: one queued or running, or a retrain
/// started within `cooldown_secs`.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn busy_job(ctx: &Context, model: &str, cooldown_secs: f64) -> Result<Option<Uuid>, DbError> {
    let client = ctx.db.get().await?;
    busy_job_in(&client, model, cooldown_secs).await
}

async fn busy_job_in(client: &impl GenericClient, model: &str, cooldown_secs: f64) -> Result<Option<Uuid>, DbError> {
    let row = client
        .query_opt(
            "SELECT id FROM training_jobs WHERE model = $1
               AND (status = ANY($3) OR (origin = 'retrain' AND created_at > now() - make_interval(secs => $2)))
             ORDER BY created_at DESC LIMIT 1",
            &[&model, &cooldown_secs, &ACTIVE.as_slice()],
        )
        .await?;
    Ok(row.map(|r| r.get("id")))
}

/// Records what a retrain request did (once per event id). A skipped request (outcome
/// `skipped: <why>`) is announced with a `retrain.skipped` notification in the same transaction.
#[tracing::instrument(level = "debug", skip(ctx, evidence))]
pub async fn record_retrain(
    ctx: &Context,
    event_id: Uuid,
    model: &str,
    reason: &str,
    evidence: &Value,
    outcome: &str,
    job_id: Option<Uuid>,
) -> Result<(), DbError> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let recorded = tx
        .execute(
            "INSERT INTO retrain_requests (event_id, model, reason, evidence, outcome, job_id)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &model, &reason, evidence, &outcome, &job_id],
        )
        .await?;
    if recorded == 1
        && let Some(why) = outcome.strip_prefix("skipped: ")
    {
        let skipped = RetrainSkipped {
            model: model.to_owned(),
            request_id: event_id,
            requested_for: reason.to_owned(),
            reason: why.to_owned(),
        };
        notifications::enqueue(&tx, &ctx.config.kafka.topic_prefix, model, skipped).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The job's median-rule grace epochs, when its search asked for `early_stopping: median`.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn median_rule(ctx: &Context, job_id: Uuid) -> Result<Option<u32>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT request -> 'search' ->> 'early_stopping' AS rule,
                    (request -> 'search' ->> 'grace_epochs')::int AS grace
             FROM training_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?;
    Ok(row.and_then(|r| {
        let rule: Option<String> = r.get("rule");
        (rule.as_deref() == Some("median")).then(|| r.get::<_, Option<i32>>("grace").unwrap_or(2).max(1) as u32)
    }))
}

/// The trial's own best validation accuracy over the epochs it recorded up to `epoch`: a trial
/// resumed from its checkpoint is compared with its peers on its whole history, as it would
/// have been had it not been interrupted.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn own_best(ctx: &Context, trial_id: Uuid, epoch: u32) -> Result<Option<f64>, DbError> {
    let client = ctx.db.get().await?;
    let row = client
        .query_opt(
            "SELECT (SELECT max((h ->> 'val_accuracy')::float8) FROM jsonb_array_elements(t.history) h
                     WHERE (h ->> 'epoch')::int <= $2) AS best
             FROM training_trials t WHERE t.id = $1",
            &[&trial_id, &(epoch as i32)],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<f64>>("best")))
}

/// The best validation accuracy up to `epoch` of every other trial of the job's `rung` that has
/// reported `epoch` (or later).
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn peers_at_epoch(
    ctx: &Context,
    job_id: Uuid,
    trial_id: Uuid,
    rung: u32,
    epoch: u32,
) -> Result<Vec<f64>, DbError> {
    let client = ctx.db.get().await?;
    let rows = client
        .query(
            "SELECT (SELECT max((h ->> 'val_accuracy')::float8) FROM jsonb_array_elements(t.history) h
                     WHERE (h ->> 'epoch')::int <= $4) AS best
             FROM training_trials t
             WHERE t.job_id = $1 AND t.id <> $2 AND t.rung = $3 AND t.epoch >= $4",
            &[&job_id, &trial_id, &(rung as i32), &(epoch as i32)],
        )
        .await?;
    Ok(rows.iter().filter_map(|r| r.get::<_, Option<f64>>("best")).collect())
}
