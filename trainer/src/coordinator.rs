//! The coordinator: consumer group `trainer-coordinator` over `training.results`.
//!
//! It records every epoch and every trial outcome (idempotently: a trial ends once, a replayed
//! epoch changes nothing), and after each outcome advances the job: successive halving queues
//! the next rung from the best trials' checkpoints; a finished search registers the best trial's
//! model and applies the job's `promote` policy. Registration, the alias move and the job's end
//! are one transaction, so a coordinator killed half-way redoes all of it or none.
//!
//! That step (the next rung's plan, or registration) counts an attempt before it runs and keeps
//! it when it fails while PostgreSQL, S3 and Kafka answer (an outage gives it back). After
//! `trainer.max_step_attempts` the job is failed with the reason and a `work.parked` event
//! instead of being retried forever, and the results behind it flow.

use std::time::Duration;

use rdkafka::{Message, consumer::Consumer};
use serde_json::{Value, json};
use sluice_core::{
    Context, Shutdown,
    events::Envelope,
    kafka,
    models::{self, AliasName, Lineage, ModelName, NewVersion},
    parking::{self, WorkKind, WorkParked},
    topics::Topic,
    training::{TrialFinished, TrialProgress, event_type},
};
use sluice_nn::{Hyper, Network};
use uuid::Uuid;

use crate::{
    jobs::limits,
    search::{self, JobRequest, Promote},
    snapshot,
    store::{self, NewTrial, StoreError},
};

/// Runs the coordinator until `shutdown`, recreating the consumer after Kafka errors.
pub async fn run(ctx: Context, shutdown: Shutdown, cache: snapshot::Cache) {
    kafka::keep_consuming("training coordinator", &shutdown, || consume(&ctx, &shutdown, &cache)).await;
}

async fn consume(
    ctx: &Context,
    shutdown: &Shutdown,
    cache: &snapshot::Cache,
) -> Result<(), rdkafka::error::KafkaError> {
    let consumer = kafka::consumer(&ctx.config.kafka, &ctx.config.trainer.coordinator_group_id)?;
    consumer.subscribe(&[ctx.topic(Topic::TrainingResults).as_str()])?;
    kafka::consume_in_order(&consumer, shutdown, |message| async move {
        let payload = message.payload().unwrap_or_default();
        let mut backoff = Duration::from_millis(200);
        while let Err(err) = handle(ctx, cache, payload).await {
            if let Some(job_id) = err.step {
                blame_step(ctx, job_id, &err.message).await;
            }
            tracing::warn!(error = %err, retry_in = ?backoff, "cannot record a training result; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        true
    })
    .await
}

/// A job's step failed: its attempt stands when the dependencies answer (the failure was the
/// step's own, kept as the reason it may be parked with), and is given back when one does not.
async fn blame_step(ctx: &Context, job_id: Uuid, error: &str) {
    let counts = parking::dependencies_up(ctx, &[]).await;
    let recorded =
        if counts { store::step_failed(ctx, job_id, error).await } else { store::give_back_step(ctx, job_id).await };
    if let Err(err) = recorded {
        tracing::warn!(job = %job_id, error = %err, "cannot record the failed step attempt");
    }
}

/// A failure worth retrying (PostgreSQL, S3 or the registry away, or a step that failed).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Retry {
    message: String,
    /// The job whose step (plan or registration) failed: its attempt is kept or given back.
    step: Option<Uuid>,
}

impl Retry {
    fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), step: None }
    }

    fn in_step(self, job_id: Uuid) -> Self {
        Self { step: Some(job_id), ..self }
    }
}

impl From<StoreError> for Retry {
    fn from(err: StoreError) -> Self {
        Self::new(err.to_string())
    }
}

impl From<tokio_postgres::Error> for Retry {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::new(sluice_core::error_chain(&err))
    }
}

impl From<deadpool_postgres::PoolError> for Retry {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::new(sluice_core::error_chain(&err))
    }
}

impl From<models::RegistryError> for Retry {
    fn from(err: models::RegistryError) -> Self {
        Self::new(err.to_string())
    }
}

async fn handle(ctx: &Context, cache: &snapshot::Cache, payload: &[u8]) -> Result<(), Retry> {
    match event_type(payload).as_deref() {
        Some("training.trial_progress") => match Envelope::<TrialProgress>::decode(payload) {
            Ok(event) => store::record_progress(ctx, &event.data).await?,
            Err(err) => tracing::error!(error = %err, "undecodable progress event; skipping it"),
        },
        Some("training.trial_finished") => match Envelope::<TrialFinished>::decode(payload) {
            Ok(event) => {
                if store::record_finished(ctx, &event.data).await? {
                    tracing::info!(job = %event.data.job_id, trial = %event.data.trial_id,
                        outcome = event.data.outcome.as_str(), "trial ended");
                }
                advance(ctx, cache, event.data.job_id).await?;
            }
            Err(err) => tracing::error!(error = %err, "undecodable result event; skipping it"),
        },
        other => tracing::error!(event_type = ?other, "unexpected event on training.results; skipping it"),
    }
    Ok(())
}

#[derive(Debug)]
struct TrialRow {
    id: Uuid,
    rung: i32,
    status: String,
    params: Value,
    metrics: Option<Value>,
}

impl TrialRow {
    /// Higher is better: validation accuracy, then lower validation loss.
    fn score(&self) -> (f64, f64) {
        let metric = |name: &str| self.metrics.as_ref().and_then(|m| m[name].as_f64());
        (metric("val_accuracy").unwrap_or(f64::MIN), -metric("val_loss").unwrap_or(f64::MAX))
    }
}

fn by_score(a: &&TrialRow, b: &&TrialRow) -> std::cmp::Ordering {
    let (a, b) = (a.score(), b.score());
    b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1))
}

/// Moves a job on once every trial of its current rung has ended.
async fn advance(ctx: &Context, cache: &snapshot::Cache, job_id: Uuid) -> Result<(), Retry> {
    let client = ctx.db.get().await?;
    let Some(job) = client
        .query_opt("SELECT status, request, snapshot_id, snapshot_key FROM training_jobs WHERE id = $1", &[&job_id])
        .await?
    else {
        return Ok(());
    };
    let status: String = job.get(0);
    if !matches!(status.as_str(), "queued" | "running") {
        return Ok(());
    }
    let Ok(request) = serde_json::from_value::<JobRequest>(job.get(1)) else {
        return fail(ctx, job_id, "the stored job request is unreadable").await;
    };
    let trials: Vec<TrialRow> = client
        .query(
            "SELECT id, rung, status, params, metrics FROM training_trials WHERE job_id = $1 ORDER BY ordinal",
            &[&job_id],
        )
        .await?
        .iter()
        .map(|r| TrialRow { id: r.get(0), rung: r.get(1), status: r.get(2), params: r.get(3), metrics: r.get(4) })
        .collect();
    drop(client);
    if trials.iter().any(|t| matches!(t.status.as_str(), "queued" | "running")) {
        return Ok(());
    }
    // The rung has ended: the step begins. Counted before it runs, so a coordinator that dies
    // on it counts too.
    let Some((attempts, last_error)) = store::begin_step(ctx, job_id).await? else {
        return Ok(());
    };
    if attempts > ctx.config.trainer.max_step_attempts as i32 {
        let reason = parking::gave_up(attempts - 1, last_error.as_deref());
        return park_step(ctx, job_id, &request.model, attempts - 1, &reason).await;
    }
    step(ctx, cache, job_id, &job, &request, &trials).await.map_err(|err| err.in_step(job_id))
}

/// Plans the next rung, or registers the best trial: what follows a rung's end.
async fn step(
    ctx: &Context,
    cache: &snapshot::Cache,
    job_id: Uuid,
    job: &tokio_postgres::Row,
    request: &JobRequest,
    trials: &[TrialRow],
) -> Result<(), Retry> {
    let rung = trials.iter().map(|t| t.rung).max().unwrap_or(0);
    let mut ranked: Vec<&TrialRow> = trials.iter().filter(|t| t.rung == rung && t.status == "succeeded").collect();
    ranked.sort_by(by_score);
    let strategy = search::strategy_of(request, limits(ctx)).map_err(|e| Retry::new(e.to_string()))?;
    if let Some((keep, epochs)) = search::next_rung(&strategy, rung as u32, ranked.len()) {
        let promoted = ranked[..keep]
            .iter()
            .map(|t| {
                let mut hyper: Hyper = serde_json::from_value(t.params.clone()).unwrap_or_default();
                hyper.epochs = epochs as usize;
                NewTrial { hyper, rung: rung as u32 + 1, parent: Some(t.id) }
            })
            .collect();
        let snapshot_id: String = job.get(2);
        let snapshot_key: String = job.get(3);
        let mut client = ctx.db.get().await?;
        let tx = client.transaction().await?;
        let locked: String =
            tx.query_one("SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", &[&job_id]).await?.get(0);
        let next_exists = tx
            .query_opt("SELECT 1 FROM training_trials WHERE job_id = $1 AND rung > $2", &[&job_id, &rung])
            .await?
            .is_some();
        if matches!(locked.as_str(), "queued" | "running") && !next_exists {
            let ordinal = trials.len() as i32;
            store::queue_trials(ctx, &tx, job_id, request, &snapshot_id, &snapshot_key, ordinal, promoted).await?;
            tx.execute("UPDATE training_jobs SET step_attempts = 0, step_error = NULL WHERE id = $1", &[&job_id])
                .await?;
            tx.commit().await?;
            tracing::info!(job = %job_id, rung = rung + 1, keep, epochs, "successive halving: next rung queued");
        }
        return Ok(());
    }
    let Some(best) = ranked.first() else {
        return fail(ctx, job_id, "every trial failed; see the trials' errors").await;
    };
    finish(ctx, cache, job_id, request, &job.get::<_, String>(2), best).await
}

/// Gives up on a job whose step used its attempts: the job fails with the reason, a
/// `work.parked` event is enqueued with it, and the coordinator moves on.
async fn park_step(ctx: &Context, job_id: Uuid, model: &str, attempts: i32, reason: &str) -> Result<(), Retry> {
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let updated = tx
        .execute(
            "UPDATE training_jobs SET status = 'failed', error = $2, finished_at = now()
             WHERE id = $1 AND status IN ('queued', 'running')",
            &[&job_id, &reason],
        )
        .await?;
    if updated == 1 {
        let event = WorkParked {
            kind: WorkKind::CoordinatorStep,
            id: job_id.to_string(),
            attempts,
            reason: reason.to_owned(),
            detail: json!({"job_id": job_id, "model": model}),
        };
        parking::enqueue(&tx, ctx, event).await.map_err(StoreError::from)?;
    }
    tx.commit().await?;
    if updated == 1 {
        metrics::counter!("sluice_trainer_steps_parked_total").increment(1);
        metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "failed").increment(1);
        tracing::error!(job = %job_id, attempts, reason, "training job failed: its next step was parked");
    }
    Ok(())
}

async fn fail(ctx: &Context, job_id: Uuid, error: &str) -> Result<(), Retry> {
    let client = ctx.db.get().await?;
    let updated = client
        .execute(
            "UPDATE training_jobs SET status = 'failed', error = $2, finished_at = now()
             WHERE id = $1 AND status IN ('queued', 'running')",
            &[&job_id, &error],
        )
        .await?;
    if updated == 1 {
        metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "failed").increment(1);
        tracing::warn!(job = %job_id, error, "training job failed");
    }
    Ok(())
}

/// Registers the best trial and applies the promotion policy, in one transaction.
async fn finish(
    ctx: &Context,
    cache: &snapshot::Cache,
    job_id: Uuid,
    request: &JobRequest,
    snapshot_id: &str,
    best: &TrialRow,
) -> Result<(), Retry> {
    let model = ModelName::parse(&request.model).map_err(|e| Retry::new(e.to_string()))?;
    let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
    let client = ctx.db.get().await?;
    let row = client
        .query_one(
            "SELECT t.artifact_key, t.sha256, t.size_bytes, t.metrics, t.reference, t.params, j.labels, j.snapshot_key,
                    j.architecture
             FROM training_trials t JOIN training_jobs j ON j.id = t.job_id WHERE t.id = $1",
            &[&best.id],
        )
        .await?;
    let labels: Vec<String> = serde_json::from_value(row.get(6)).unwrap_or_default();
    let snapshot_key: String = row.get(7);
    let loaded = cache.load(ctx, &snapshot_key, snapshot_id).await.map_err(|e| Retry::new(e.to_string()))?;
    let (candidate_accuracy, negative_loss) = best.score();
    let candidate_loss = -negative_loss;
    let current = models::resolve_alias(&client, &model, &production).await?;
    drop(client);
    let decision = match (request.promote, &current) {
        (Promote::Never, _) => json!({"policy": "never", "promoted": false}),
        (Promote::Always, _) | (Promote::IfBetter, None) => json!({
            "policy": request.promote, "promoted": true,
            "reason": if current.is_none() { "no production version yet" } else { "policy always" },
            "candidate_accuracy": candidate_accuracy,
        }),
        (Promote::IfBetter, Some(current)) => {
            let (_, validation) = loaded.snapshot.split(request.seed, request.validation_split);
            let samples = loaded.samples(&validation);
            match production_score(ctx, current, &labels, &loaded.snapshot.spec_hash, &samples).await? {
                // Better: more accurate, or as accurate with a lower loss (more confident when right).
                Some((accuracy, loss)) => json!({
                    "policy": "if_better",
                    "promoted": candidate_accuracy > accuracy || (candidate_accuracy == accuracy && candidate_loss < loss),
                    "candidate_accuracy": candidate_accuracy, "candidate_loss": candidate_loss,
                    "production_version": current.version, "production_accuracy": accuracy, "production_loss": loss,
                    "reason": format!(
                        "validation accuracy {candidate_accuracy:.4} (loss {candidate_loss:.4}) vs production v{} {accuracy:.4} (loss {loss:.4}) on the same split",
                        current.version
                    ),
                }),
                None => json!({
                    "policy": "if_better", "promoted": false, "production_version": current.version,
                    "reason": "production was trained on another input spec; not comparable on this split",
                }),
            }
        }
    };
    let new_version = NewVersion {
        model: model.clone(),
        artifact_key: row.get(0),
        sha256: row.get(1),
        size_bytes: row.get(2),
        architecture: row.get(8),
        input_spec: loaded.snapshot.spec.clone(),
        labels,
        hyperparameters: row.get(5),
        metrics: row.get::<_, Option<Value>>(3).unwrap_or(Value::Null),
        reference: row.get::<_, Option<Value>>(4).unwrap_or(Value::Null),
        lineage: Lineage {
            job_id,
            trial_id: best.id,
            snapshot_id: snapshot_id.to_owned(),
            dataset: request.dataset.clone(),
            spec_hash: loaded.snapshot.spec_hash.clone(),
            sluice_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    };
    let mut client = ctx.db.get().await?;
    let tx = client.transaction().await?;
    let status: String =
        tx.query_one("SELECT status FROM training_jobs WHERE id = $1 FOR UPDATE", &[&job_id]).await?.get(0);
    if !matches!(status.as_str(), "queued" | "running") {
        return Ok(());
    }
    let prefix = &ctx.config.kafka.topic_prefix;
    let version = models::register(&tx, prefix, &new_version).await?;
    let template = serde_json::to_value(request).expect("requests serialise");
    models::set_template(&tx, &model, &template).await?;
    if decision["promoted"] == true {
        let reason = format!("training job {job_id}: {}", decision["reason"].as_str().unwrap_or("promoted"));
        models::move_alias(&tx, prefix, &model, &production, version.version, "trainer", &reason).await?;
    }
    tx.execute(
        "UPDATE training_jobs SET status = 'succeeded', best_trial = $2, registered_version = $3, promotion = $4,
                finished_at = now(), step_attempts = 0, step_error = NULL
         WHERE id = $1",
        &[&job_id, &best.id, &version.version, &decision],
    )
    .await?;
    tx.commit().await?;
    if decision["promoted"] == true {
        metrics::counter!("sluice_registry_alias_moves_total", "kind" => "production").increment(1);
    }
    metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "succeeded").increment(1);
    tracing::info!(job = %job_id, model = %request.model, version = version.version, promotion = %decision, "training job succeeded");
    Ok(())
}

/// The production version's accuracy and mean cross-entropy on this job's validation samples,
/// matching classes by label name (a label it does not know counts as wrong); `None` when it was
/// trained on inputs of another shape.
async fn production_score(
    ctx: &Context,
    current: &models::ModelVersion,
    labels: &[String],
    spec_hash: &str,
    samples: &sluice_nn::Samples,
) -> Result<Option<(f64, f64)>, Retry> {
    if current.input_spec.hash() != spec_hash {
        return Ok(None);
    }
    let bytes = match models::load_artifact(&ctx.s3, &ctx.config.s3.bucket, current).await {
        Ok(bytes) => bytes,
        Err(err @ (models::RegistryError::Tampered { .. } | models::RegistryError::MissingArtifact { .. })) => {
            tracing::warn!(error = %err, "the production artifact cannot be loaded; treating it as not comparable");
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    let their_labels = current.labels.clone();
    let truth: Vec<String> = samples.labels.iter().map(|&i| labels[i as usize].clone()).collect();
    let images = samples.images.clone();
    let n = samples.labels.len();
    let score = tokio::task::spawn_blocking(move || -> Result<(f64, f64), String> {
        let network = Network::load(&bytes).map_err(|e| e.to_string())?;
        let logits = network.logits(&images, n).map_err(|e| e.to_string())?;
        let (mut correct, mut loss) = (0usize, 0f64);
        for (row, truth) in logits.iter().zip(&truth) {
            let probabilities = sluice_core::reference::softmax(row, 1.0);
            let (predicted, _) = sluice_core::reference::top1(&probabilities);
            correct += usize::from(their_labels.get(predicted) == Some(truth));
            let p = their_labels.iter().position(|l| l == truth).map(|i| probabilities[i]).unwrap_or(0.0);
            loss -= p.max(1e-12).ln();
        }
        Ok((correct as f64 / n.max(1) as f64, loss / n.max(1) as f64))
    })
    .await
    .map_err(|e| Retry::new(e.to_string()))?;
    match score {
        Ok(score) => Ok(Some(score)),
        Err(err) => {
            tracing::warn!(error = %err, "cannot score the production model; treating it as not comparable");
            Ok(None)
        }
    }
}
