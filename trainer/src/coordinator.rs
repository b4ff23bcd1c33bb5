//! The coordinator: consumer group `trainer-coordinator` over `training.results`.
//!
//! It records every epoch and every trial outcome (idempotently: a trial ends once, a replayed
//! epoch changes nothing), and after each outcome advances the job: successive halving queues
//! the next rung from the best trials' checkpoints; a finished search registers the best trial's
//! model and applies the job's `promote` policy (`if_better`: a paired test on held-out items,
//! [`crate::evaluation`]). Registration, the alias move and the job's end
//! are one transaction, so a coordinator killed half-way redoes all of it or none.
//!
//! That step (the next rung's plan, or registration) counts an attempt before it runs and keeps
//! it when it fails while PostgreSQL, S3 and Kafka answer (an outage gives it back). After
//! `trainer.max_step_attempts` the job is failed with the reason and a `work.parked` event
//! instead of being retried forever, and the results behind it flow.

use std::collections::HashSet;
use std::sync::Arc;

use rdkafka::{Message, consumer::Consumer};
use serde_json::{Value, json};
use sluice_core::{
    Context, Shutdown,
    events::Envelope,
    kafka, live,
    models::{self, AliasName, Lineage, ModelName, NewVersion},
    parking::{self, WorkKind, WorkParked},
    reference::top1,
    s3,
    topics::Topic,
    training::{Split, TrialFinished, TrialProgress, event_type},
    work::{self, Backoff},
};
use sluice_nn::{Hyper, Network};
use uuid::Uuid;

use crate::{
    evaluation::{self, Paired, TestReport},
    jobs::limits,
    search::{self, JobRequest, Promote, Strategy},
    snapshot::{self, LoadedSnapshot},
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
    work::consume(&consumer, shutdown, 1, |message| async move {
        let payload = message.payload().unwrap_or_default();
        let recorded = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot record a training result", || async {
            let handled = handle(ctx, cache, payload).await;
            if let Err(Retry { step: Some(job_id), message }) = &handled {
                blame_step(ctx, *job_id, message).await;
            }
            handled
        });
        recorded.await.is_some()
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
    /// `None` for trials made before trials had their own seeds (they used the job's).
    seed: Option<i64>,
    parent: Option<Uuid>,
}

impl TrialRow {
    /// Higher is better: validation accuracy, then lower validation loss.
    fn score(&self) -> (f64, f64) {
        let metric = |name: &str| self.metrics.as_ref().and_then(|m| m[name].as_f64());
        (metric("val_accuracy").unwrap_or(f64::MIN), -metric("val_loss").unwrap_or(f64::MAX))
    }

    fn hyper(&self) -> Hyper {
        serde_json::from_value(self.params.clone()).unwrap_or_default()
    }

    /// The trial that continues this one's checkpoint on `rung` with a budget of `epochs`
    /// (halving's next rung, an ASHA promotion): same parameters and seed.
    fn child(&self, rung: u32, epochs: u32, job_seed: u64) -> NewTrial {
        let mut hyper = self.hyper();
        hyper.epochs = epochs as usize;
        let seed = self.seed.map_or(job_seed, |seed| seed as u64);
        NewTrial { hyper, rung, parent: Some(self.id), seed }
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
            "SELECT id, rung, status, params, metrics, seed, parent FROM training_trials WHERE job_id = $1 ORDER BY ordinal",
            &[&job_id],
        )
        .await?
        .iter()
        .map(|r| TrialRow {
            id: r.get(0),
            rung: r.get(1),
            status: r.get(2),
            params: r.get(3),
            metrics: r.get(4),
            seed: r.get(5),
            parent: r.get(6),
        })
        .collect();
    drop(client);
    // A request that no longer plans (the limits changed) is left to the counted step below,
    // which fails the job after its attempts instead of retrying forever.
    let strategy = search::strategy_of(&request, limits(ctx)).ok();
    let running = trials.iter().any(|t| matches!(t.status.as_str(), "queued" | "running"));
    if let Some(strategy @ Strategy::Asha { .. }) = &strategy {
        let strategy = strategy.clone();
        let finished = asha_view(&trials);
        let mut promotions = search::asha_promotions(&strategy, &finished);
        if promotions.is_empty() && !running {
            promotions.extend(search::asha_final(&strategy, &finished));
        }
        if !promotions.is_empty() {
            return promote(ctx, job_id, &job, &request, &trials, promotions).await;
        }
        if running {
            return Ok(());
        }
    } else if let Some(Strategy::Tpe { max_trials }) = strategy {
        // Each ended trial makes room for one proposed from the results so far.
        let ended = trials.iter().filter(|t| !matches!(t.status.as_str(), "queued" | "running")).count();
        let allowed = (search::TPE_STARTUP + ended).min(max_trials as usize);
        if trials.len() < allowed {
            return propose(ctx, job_id, &job, &request, &trials, allowed).await;
        }
        if running {
            return Ok(());
        }
    } else if running {
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

/// ASHA's view of a job's succeeded trials.
fn asha_view(trials: &[TrialRow]) -> Vec<search::Finished<Uuid>> {
    let parents: HashSet<Uuid> = trials.iter().filter_map(|t| t.parent).collect();
    trials
        .iter()
        .filter(|t| t.status == "succeeded")
        .map(|t| search::Finished {
            id: t.id,
            rung: t.rung as u32,
            epochs: t.hyper().epochs as u32,
            score: t.score(),
            promoted: parents.contains(&t.id),
        })
        .collect()
}

/// Queues ASHA's promotions (each continuing its parent's checkpoint, with its seed), unless
/// the job has ended or a redelivered result already queued them.
async fn promote(
    ctx: &Context,
    job_id: Uuid,
    job: &tokio_postgres::Row,
    request: &JobRequest,
    trials: &[TrialRow],
    promotions: Vec<(Uuid, u32, u32)>,
) -> Result<(), Retry> {
    let by_id: std::collections::HashMap<Uuid, &TrialRow> = trials.iter().map(|t| (t.id, t)).collect();
    let new: Vec<NewTrial> = promotions
        .iter()
        .filter_map(|&(parent, rung, epochs)| Some(by_id.get(&parent)?.child(rung, epochs, request.seed)))
        .collect();
    let count = new.len();
    if store::queue_after(ctx, job_id, request, job, trials.len(), new).await? {
        tracing::info!(job = %job_id, promoted = count, "asha: trials promoted");
    }
    Ok(())
}

/// Queues TPE proposals up to `allowed` trials, unless another delivery already did.
async fn propose(
    ctx: &Context,
    job_id: Uuid,
    job: &tokio_postgres::Row,
    request: &JobRequest,
    trials: &[TrialRow],
    allowed: usize,
) -> Result<(), Retry> {
    let finished: Vec<(Value, f64)> =
        trials.iter().filter(|t| t.status == "succeeded").map(|t| (t.params.clone(), t.score().0)).collect();
    let mut new = Vec::new();
    for index in trials.len()..allowed {
        let mut hyper = search::tpe_propose(&request.search, request.seed, index, &finished, limits(ctx))
            .map_err(|e| Retry::new(e.to_string()))?;
        if let Some(augment) = request.augment {
            hyper.augment = augment;
        }
        new.push(NewTrial { hyper, rung: 0, parent: None, seed: request.trial_seed(index) });
    }
    let proposed = new.len();
    if store::queue_after(ctx, job_id, request, job, trials.len(), new).await? {
        tracing::info!(job = %job_id, proposed, "tpe: trials proposed from the results so far");
    }
    Ok(())
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
    // (ASHA promotes as trials finish, in `advance`; here its search is over.)
    let budget = ranked.first().map(|t| t.hyper().epochs as u32).unwrap_or(0);
    if let Some((keep, epochs)) = search::next_rung(&strategy, budget, ranked.len()) {
        let promoted = ranked[..keep].iter().map(|t| t.child(rung as u32 + 1, epochs, request.seed)).collect();
        if store::queue_after(ctx, job_id, request, job, trials.len(), promoted).await? {
            tracing::info!(job = %job_id, rung = rung + 1, keep, epochs, "successive halving: next rung queued");
        }
        return Ok(());
    }
    let Some(best) = ranked.first() else {
        return fail(ctx, job_id, "every trial failed; see the trials' errors").await;
    };
    // Boxed: registration's future (scoring two models, the paired test) is large and deep.
    Box::pin(finish(ctx, cache, job_id, request, &job.get::<_, String>(2), best)).await
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
    let current = models::resolve_alias(&client, &model, &production).await?;
    drop(client);
    let partition = loaded.snapshot.partition(&request.splits());
    let temperature = row.get::<_, Option<Value>>(4).and_then(|r| r["temperature"].as_f64()).unwrap_or(1.0);
    let candidate_artifact: String = row.get(0);
    let candidate = held_out(ctx, &loaded, &partition.test, &candidate_artifact, temperature).await?;
    let test_report = candidate.as_ref().map(|c| c.report(&labels));
    let decision = match (request.promote, &current) {
        (Promote::Never, _) => json!({"policy": "never", "promoted": false}),
        (Promote::Always, _) | (Promote::IfBetter | Promote::IfBetterLive, None) => json!({
            "policy": request.promote, "promoted": true,
            "reason": if current.is_none() { "no production version yet" } else { "policy always" },
            "candidate_test_accuracy": test_report.as_ref().map(|r| r.accuracy),
        }),
        (Promote::IfBetter, Some(current)) => gate(ctx, &loaded, candidate.as_ref(), current).await?,
        (Promote::IfBetterLive, Some(current)) => json!({
            "policy": "if_better_live", "promoted": false, "pending": true,
            "candidate_alias": live::CANDIDATE_ALIAS, "production_version": current.version,
            "candidate_test_accuracy": test_report.as_ref().map(|r| r.accuracy),
            "reason": format!(
                "registered as `{}`, shadowing production v{}; production moves once feedback on live traffic shows it significantly better",
                live::CANDIDATE_ALIAS, current.version
            ),
        }),
    };
    let mut metrics = row.get::<_, Option<Value>>(3).unwrap_or_else(|| json!({}));
    if let Some(report) = &test_report {
        metrics["test"] = serde_json::to_value(report).expect("reports serialise");
        metrics["test_accuracy"] = json!(report.accuracy);
    }
    metrics["splits"] = partition.sizes();
    let new_version = NewVersion {
        model: model.clone(),
        artifact_key: row.get(0),
        sha256: row.get(1),
        size_bytes: row.get(2),
        architecture: row.get(8),
        input_spec: loaded.snapshot.spec.clone(),
        labels,
        hyperparameters: row.get(5),
        metrics,
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
    if decision["pending"] == true
        && let Some(current) = decision["production_version"].as_i64()
    {
        let candidate = AliasName::parse(live::CANDIDATE_ALIAS).expect("a valid alias");
        let reason = format!("training job {job_id}: candidate for live promotion (if_better_live)");
        models::move_alias(&tx, prefix, &model, &candidate, version.version, "trainer", &reason).await?;
        live::start(&tx, model.as_str(), version.version, current as i32, job_id)
            .await
            .map_err(|e| Retry::new(e.to_string()))?;
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

/// A model's per-item probabilities on a job's test items (`None` when there are none).
struct HeldOut {
    /// Indices into the snapshot's items.
    items: Vec<usize>,
    probabilities: Vec<Vec<f64>>,
    truth: Vec<u32>,
}

impl HeldOut {
    fn report(&self, labels: &[String]) -> TestReport {
        evaluation::report(labels, &self.probabilities, &self.truth)
    }

    /// Per item: is the top class the true one?
    fn correct(&self) -> Vec<bool> {
        self.probabilities.iter().zip(&self.truth).map(|(p, &t)| top1(p).0 == t as usize).collect()
    }
}

/// Scores the artifact at `key` on the snapshot's `items`.
async fn held_out(
    ctx: &Context,
    loaded: &Arc<LoadedSnapshot>,
    items: &[usize],
    key: &str,
    temperature: f64,
) -> Result<Option<HeldOut>, Retry> {
    if items.is_empty() {
        return Ok(None);
    }
    let bytes = s3::get_bytes(&ctx.s3, &ctx.config.s3.bucket, key)
        .await
        .map_err(|e| Retry::new(e.to_string()))?
        .ok_or_else(|| Retry::new(format!("the candidate's artifact {key} is missing")))?;
    let loaded = loaded.clone();
    let items = items.to_vec();
    tokio::task::spawn_blocking(move || {
        let samples = loaded.samples(&items);
        let frames = loaded.frame_counts(&items);
        let network = Network::load(&bytes).map_err(|e| Retry::new(format!("the candidate does not load: {e}")))?;
        let logits = network.logits(&samples.images, samples.labels.len()).map_err(|e| Retry::new(e.to_string()))?;
        let probabilities = evaluation::item_probabilities(&logits, &frames, temperature);
        let truth = items
            .iter()
            .map(|&i| loaded.snapshot.labels.binary_search(&loaded.snapshot.items[i].label).unwrap_or(0) as u32)
            .collect();
        Ok(Some(HeldOut { items, probabilities, truth }))
    })
    .await
    .map_err(|e| Retry::new(format!("scoring panicked: {e}")))?
}

/// `promote: if_better` against a production version: both are scored on the job's test items
/// that production was neither trained, selected nor calibrated on, and the candidate must win
/// the exact McNemar test at `trainer.promotion_alpha` by at least `trainer.promotion_min_margin`.
async fn gate(
    ctx: &Context,
    loaded: &Arc<LoadedSnapshot>,
    candidate: Option<&HeldOut>,
    current: &models::ModelVersion,
) -> Result<Value, Retry> {
    let refuse = |reason: String| json!({"policy": "if_better", "promoted": false, "production_version": current.version, "reason": reason});
    if current.input_spec.hash() != loaded.snapshot.spec_hash {
        return Ok(refuse(format!(
            "production v{} was trained on another input spec; not comparable on this job's items",
            current.version
        )));
    }
    let Some(candidate) = candidate else {
        return Ok(refuse("the job has no test items (test_split 0, or too few items); no held-out evidence".into()));
    };
    let seen = production_seen(ctx, current).await;
    let eligible: Vec<usize> = candidate
        .items
        .iter()
        .enumerate()
        .filter(|&(_, &item)| seen.as_ref().is_none_or(|seen| !seen.contains(&loaded.snapshot.items[item].media_id)))
        .map(|(position, _)| position)
        .collect();
    if eligible.is_empty() {
        return Ok(refuse(format!(
            "every test item of this job was in production v{}'s training, validation or calibration split",
            current.version
        )));
    }
    let items: Vec<usize> = eligible.iter().map(|&p| candidate.items[p]).collect();
    let Some(theirs) = production_correct(ctx, loaded, current, &items).await? else {
        return Ok(refuse(format!("production v{}'s artifact cannot be scored; not comparable", current.version)));
    };
    let ours: Vec<bool> = {
        let all = candidate.correct();
        eligible.iter().map(|&p| all[p]).collect()
    };
    let paired = Paired::new(&ours, &theirs);
    let (alpha, margin) = (ctx.config.trainer.promotion_alpha, ctx.config.trainer.promotion_min_margin);
    let promoted = paired.candidate_wins(alpha, margin);
    let reason = format!(
        "test accuracy {:.4} vs production v{} {:.4} on {} held-out items{}; right where production was wrong on {}, the reverse on {}; exact McNemar p = {:.3e} (alpha {alpha}, margin {margin})",
        paired.candidate_accuracy,
        current.version,
        paired.production_accuracy,
        paired.items,
        if seen.is_some() {
            " neither model trained, selected or calibrated on"
        } else {
            " (production's training data is unknown)"
        },
        paired.candidate_only,
        paired.production_only,
        paired.p_value,
    );
    Ok(json!({
        "policy": "if_better", "promoted": promoted, "production_version": current.version,
        "candidate_accuracy": paired.candidate_accuracy, "production_accuracy": paired.production_accuracy,
        "items": paired.items, "candidate_only": paired.candidate_only, "production_only": paired.production_only,
        "p_value": paired.p_value, "alpha": alpha, "min_margin": margin, "reason": reason,
    }))
}

/// The media ids production trained, selected or calibrated on: its snapshot's items outside
/// its job's test split. `None` when its job or snapshot cannot be found (then every test item
/// is used, and the reason says so).
async fn production_seen(ctx: &Context, current: &models::ModelVersion) -> Option<HashSet<Uuid>> {
    let client = ctx.db.get().await.ok()?;
    let row = client
        .query_opt("SELECT request, snapshot_key FROM training_jobs WHERE id = $1", &[&current.lineage.job_id])
        .await
        .ok()??;
    drop(client);
    let request: JobRequest = serde_json::from_value(row.get::<_, Value>(0)).ok()?;
    let key: Option<String> = row.get(1);
    let snapshot = snapshot::manifest(ctx, &key?, &current.lineage.snapshot_id).await.ok()?;
    let splits = request.splits();
    Some(
        snapshot
            .items
            .iter()
            .filter(|item| splits.of(&snapshot.dataset, item.media_id) != Split::Test)
            .map(|item| item.media_id)
            .collect(),
    )
}

/// Whether production's top class is each item's label (matched by name; a label it does not
/// know is wrong), items scored by their frames' mean probabilities. `None` when it cannot be
/// loaded or run.
async fn production_correct(
    ctx: &Context,
    loaded: &Arc<LoadedSnapshot>,
    current: &models::ModelVersion,
    items: &[usize],
) -> Result<Option<Vec<bool>>, Retry> {
    let bytes = match models::load_artifact(&ctx.s3, &ctx.config.s3.bucket, current).await {
        Ok(bytes) => bytes,
        Err(err @ (models::RegistryError::Tampered { .. } | models::RegistryError::MissingArtifact { .. })) => {
            tracing::warn!(error = %err, "the production artifact cannot be loaded; treating it as not comparable");
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    let their_labels = current.labels.clone();
    let loaded = loaded.clone();
    let items = items.to_vec();
    let scored = tokio::task::spawn_blocking(move || -> Result<Vec<bool>, String> {
        let samples = loaded.samples(&items);
        let frames = loaded.frame_counts(&items);
        let network = Network::load(&bytes).map_err(|e| e.to_string())?;
        let logits = network.logits(&samples.images, samples.labels.len()).map_err(|e| e.to_string())?;
        let probabilities = evaluation::item_probabilities(&logits, &frames, 1.0);
        Ok(probabilities
            .iter()
            .zip(&items)
            .map(|(p, &i)| their_labels.get(top1(p).0) == Some(&loaded.snapshot.items[i].label))
            .collect())
    })
    .await
    .map_err(|e| Retry::new(e.to_string()))?;
    match scored {
        Ok(correct) => Ok(Some(correct)),
        Err(err) => {
            tracing::warn!(error = %err, "cannot score the production model; treating it as not comparable");
            Ok(None)
        }
    }
}
