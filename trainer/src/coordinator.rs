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

use rdkafka::{Message, consumer::Consumer};
use serde_json::{Value, json};
use sluice_core::{
    Context, Shutdown,
    db::DbError,
    events::Envelope,
    kafka, live,
    models::{self, AliasName, Lineage, ModelName, NewVersion},
    parking::{self, WorkKind, WorkParked},
    topics::Topic,
    training::{RunStatus, Split, TestScores, TrialFinished, TrialProgress, event_type},
    work::{self, Backoff},
};
use sluice_nn::Hyper;
use uuid::Uuid;

use crate::{
    evaluation::Paired,
    jobs::limits,
    search::{self, JobRequest, Promote, Strategy},
    snapshot,
    store::{self, Attempts, BestTrial, JobRow, NewTrial, Registered, Registration, TrialRow},
};

/// Runs the coordinator until `shutdown`, recreating the consumer after Kafka errors.
pub async fn run(ctx: Context, shutdown: Shutdown) {
    kafka::keep_consuming("training coordinator", &shutdown, || consume(&ctx, &shutdown)).await;
}

async fn consume(ctx: &Context, shutdown: &Shutdown) -> Result<(), rdkafka::error::KafkaError> {
    let consumer = kafka::consumer(&ctx.config.kafka, &ctx.config.trainer.coordinator_group_id)?;
    consumer.subscribe(&[ctx.topic(Topic::TrainingResults).as_str()])?;
    work::consume(&consumer, shutdown, 1, |message| async move {
        let payload = message.payload().unwrap_or_default();
        let recorded = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot record a training result", || async {
            let handled = handle(ctx, payload).await;
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

impl From<DbError> for Retry {
    fn from(err: DbError) -> Self {
        Self::new(sluice_core::error_chain(&err))
    }
}

impl From<models::RegistryError> for Retry {
    fn from(err: models::RegistryError) -> Self {
        Self::new(sluice_core::error_chain(&err))
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn handle(ctx: &Context, payload: &[u8]) -> Result<(), Retry> {
    match event_type(payload).as_deref() {
        Some("training.trial_progress") => match Envelope::<TrialProgress>::decode(payload) {
            Ok(event) => store::record_progress(ctx, &event.data).await?,
            Err(err) => tracing::error!(error = %err, "undecodable progress event; skipping it"),
        },
        Some("training.trial_finished") => match Envelope::<TrialFinished>::decode(payload) {
            Ok(mut event) => {
                // A success the registration could not use ends the trial as failed, saying why.
                if let Some(reason) = event.data.malformed() {
                    tracing::error!(trial = %event.data.trial_id, reason, "malformed trial result; recording the trial as failed");
                    event.data = event.data.into_failed(format!("the worker's result was malformed: {reason}"));
                }
                if store::record_finished(ctx, &event.data).await? {
                    tracing::info!(job = %event.data.job_id, trial = %event.data.trial_id,
                        outcome = event.data.outcome.as_str(), "trial ended");
                }
                advance(ctx, event.data.job_id).await?;
            }
            Err(err) => tracing::error!(error = %err, "undecodable result event; skipping it"),
        },
        other => tracing::error!(event_type = ?other, "unexpected event on training.results; skipping it"),
    }
    Ok(())
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
#[tracing::instrument(level = "debug", skip(ctx))]
async fn advance(ctx: &Context, job_id: Uuid) -> Result<(), Retry> {
    let Some(job) = store::job(ctx, job_id).await? else {
        return Ok(());
    };
    if job.status.is_final() {
        return Ok(());
    }
    let Ok(request) = serde_json::from_value::<JobRequest>(job.request.clone()) else {
        return fail(ctx, job_id, "the stored job request is unreadable").await;
    };
    let trials = store::trials(ctx, job_id).await?;
    // A request that no longer plans (the limits changed) is left to the counted step below,
    // which fails the job after its attempts instead of retrying forever.
    let strategy = search::strategy_of(&request, limits(ctx)).ok();
    let running = trials.iter().any(|t| !t.status.is_final());
    if let Some(strategy @ Strategy::Asha { .. }) = &strategy {
        let strategy = strategy.clone();
        let finished = asha_view(&trials);
        let mut promotions = search::asha_promotions(&strategy, &finished);
        if promotions.is_empty() && !running {
            promotions.extend(search::asha_final(&strategy, &finished));
        }
        if !promotions.is_empty() {
            return promote(ctx, &job, &request, &trials, promotions).await;
        }
        if running {
            return Ok(());
        }
    } else if let Some(Strategy::Tpe { max_trials }) = strategy {
        // Each ended trial makes room for one proposed from the results so far.
        let ended = trials.iter().filter(|t| t.status.is_final()).count();
        let allowed = (search::TPE_STARTUP + ended).min(max_trials as usize);
        if trials.len() < allowed {
            return propose(ctx, &job, &request, &trials, allowed).await;
        }
        if running {
            return Ok(());
        }
    } else if running {
        return Ok(());
    }
    // The rung has ended: the step begins. Counted before it runs, so a coordinator that dies
    // on it counts too.
    let Some(Attempts { attempts, last_error }) = store::begin_step(ctx, job_id).await? else {
        return Ok(());
    };
    if attempts > ctx.config.trainer.max_step_attempts as i32 {
        let reason = parking::gave_up(attempts - 1, last_error.as_deref());
        return park_step(ctx, job_id, &request.model, attempts - 1, &reason).await;
    }
    step(ctx, &job, &request, &trials).await.map_err(|err| err.in_step(job_id))
}

/// ASHA's view of a job's succeeded trials.
fn asha_view(trials: &[TrialRow]) -> Vec<search::Finished<Uuid>> {
    let parents: HashSet<Uuid> = trials.iter().filter_map(|t| t.parent).collect();
    trials
        .iter()
        .filter(|t| t.status == RunStatus::Succeeded)
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
    job: &JobRow,
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
    if store::queue_after(ctx, job, request, trials.len(), new).await? {
        tracing::info!(job = %job.id, promoted = count, "asha: trials promoted");
    }
    Ok(())
}

/// Queues TPE proposals up to `allowed` trials, unless another delivery already did.
async fn propose(
    ctx: &Context,
    job: &JobRow,
    request: &JobRequest,
    trials: &[TrialRow],
    allowed: usize,
) -> Result<(), Retry> {
    let finished: Vec<(Value, f64)> =
        trials.iter().filter(|t| t.status == RunStatus::Succeeded).map(|t| (t.params.clone(), t.score().0)).collect();
    let mut new = Vec::new();
    for index in trials.len()..allowed {
        let mut hyper = match search::tpe_propose(&request.search, request.seed, index, &finished, limits(ctx)) {
            Ok(hyper) => hyper,
            // Deterministic in the job's seed and the trial's ordinal: a retry proposes the same
            // again, and would hold up every job behind this message.
            Err(err) => return fail(ctx, job.id, &format!("the search cannot propose trial {index}: {err}")).await,
        };
        if let Some(augment) = request.augment {
            hyper.augment = augment;
        }
        new.push(NewTrial { hyper, rung: 0, parent: None, seed: request.trial_seed(index) });
    }
    let proposed = new.len();
    if store::queue_after(ctx, job, request, trials.len(), new).await? {
        tracing::info!(job = %job.id, proposed, "tpe: trials proposed from the results so far");
    }
    Ok(())
}

/// Plans the next rung, or registers the best trial: what follows a rung's end.
async fn step(ctx: &Context, job: &JobRow, request: &JobRequest, trials: &[TrialRow]) -> Result<(), Retry> {
    let job_id = job.id;
    let rung = trials.iter().map(|t| t.rung).max().unwrap_or(0);
    let mut ranked: Vec<&TrialRow> =
        trials.iter().filter(|t| t.rung == rung && t.status == RunStatus::Succeeded).collect();
    ranked.sort_by(by_score);
    let strategy = search::strategy_of(request, limits(ctx)).map_err(|e| Retry::new(e.to_string()))?;
    // (ASHA promotes as trials finish, in `advance`; here its search is over.)
    let budget = ranked.first().map(|t| t.hyper().epochs as u32).unwrap_or(0);
    if let Some((keep, epochs)) = search::next_rung(&strategy, budget, ranked.len()) {
        let promoted = ranked[..keep].iter().map(|t| t.child(rung as u32 + 1, epochs, request.seed)).collect();
        if store::queue_after(ctx, job, request, trials.len(), promoted).await? {
            tracing::info!(job = %job_id, rung = rung + 1, keep, epochs, "successive halving: next rung queued");
        }
        return Ok(());
    }
    let Some(best) = ranked.first() else {
        return fail(ctx, job_id, "every trial failed; see the trials' errors").await;
    };
    // Boxed: registration's future is large and deep.
    Box::pin(finish(ctx, job, request, best)).await
}

/// Gives up on a job whose step used its attempts: the job fails with the reason, a
/// `work.parked` event is enqueued with it, and the coordinator moves on.
async fn park_step(ctx: &Context, job_id: Uuid, model: &str, attempts: i32, reason: &str) -> Result<(), Retry> {
    let event = WorkParked {
        kind: WorkKind::CoordinatorStep,
        id: job_id.to_string(),
        attempts,
        reason: reason.to_owned(),
        detail: json!({"job_id": job_id, "model": model}),
    };
    if store::fail_job(ctx, job_id, reason, Some(event)).await? {
        metrics::counter!("sluice_trainer_steps_parked_total").increment(1);
        metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "failed").increment(1);
        tracing::error!(job = %job_id, attempts, reason, "training job failed: its next step was parked");
    }
    Ok(())
}

async fn fail(ctx: &Context, job_id: Uuid, error: &str) -> Result<(), Retry> {
    if store::fail_job(ctx, job_id, error, None).await? {
        metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "failed").increment(1);
        tracing::warn!(job = %job_id, error, "training job failed");
    }
    Ok(())
}

/// Registers the best trial and applies the promotion policy, in one transaction. Everything it
/// decides from was reported by the workers (validation metrics, the reference, the scores on the
/// test split of the model and of production); only the snapshot's small manifest is read.
#[tracing::instrument(level = "debug", skip_all, fields(job_id = %job.id, trial_id = %best.id))]
async fn finish(ctx: &Context, job: &JobRow, request: &JobRequest, best: &TrialRow) -> Result<(), Retry> {
    let job_id = job.id;
    let model = ModelName::parse(&request.model).map_err(|e| Retry::new(e.to_string()))?;
    let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
    let trial: BestTrial = store::best_trial(ctx, best.id)
        .await?
        .ok_or_else(|| Retry::new(format!("trial {} is gone or has no artifact", best.id)))?;
    let manifest =
        snapshot::manifest(ctx, &trial.snapshot_key, &job.snapshot_id).await.map_err(|e| Retry::new(e.to_string()))?;
    let test_report = trial.test.as_ref().map(|t| t.report.clone());
    let test_accuracy = test_report.as_ref().and_then(|r| r["accuracy"].as_f64());
    let mut metrics = trial.metrics.clone().filter(Value::is_object).unwrap_or_else(|| json!({}));
    if let Some(report) = &test_report {
        metrics["test"] = report.clone();
        metrics["test_accuracy"] = json!(test_accuracy);
    }
    metrics["splits"] = manifest.partition(&request.splits()).sizes();
    let new_version = NewVersion {
        model: model.clone(),
        artifact_key: trial.artifact_key.clone(),
        sha256: trial.sha256.clone(),
        size_bytes: trial.size_bytes,
        architecture: trial.architecture.clone(),
        input_spec: manifest.spec.clone(),
        labels: trial.labels.clone(),
        hyperparameters: trial.params.clone(),
        metrics,
        reference: trial.reference.clone().unwrap_or(Value::Null),
        lineage: Lineage {
            job_id,
            trial_id: best.id,
            snapshot_id: job.snapshot_id.clone(),
            dataset: request.dataset.clone(),
            spec_hash: manifest.spec_hash.clone(),
            sluice_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    };
    // The decision reads production; registration refuses if production moved before it took
    // the model's lock (another job's promotion, a rollback), and the decision is made again.
    let mut tries = 0;
    let (version, decision, promoted) = loop {
        tries += 1;
        let current = {
            let client = ctx.db.get().await.map_err(DbError::from)?;
            models::resolve_alias(&client, &model, &production).await?
        };
        let decision = match (request.promote, &current) {
            (Promote::Never, _) => json!({"policy": "never", "promoted": false}),
            (Promote::Always, _) | (Promote::IfBetter | Promote::IfBetterLive, None) => json!({
                "policy": request.promote, "promoted": true,
                "reason": if current.is_none() { "no production version yet" } else { "policy always" },
                "candidate_test_accuracy": test_accuracy,
            }),
            (Promote::IfBetter, Some(current)) => {
                let test_items: Vec<Uuid> =
                    manifest.partition(&request.splits()).test.iter().map(|&i| manifest.items[i].media_id).collect();
                gate(ctx, &manifest.spec_hash, &test_items, trial.test.as_ref(), current).await
            }
            (Promote::IfBetterLive, Some(current)) => json!({
                "policy": "if_better_live", "promoted": false, "pending": true,
                "candidate_alias": live::CANDIDATE_ALIAS, "production_version": current.version,
                "candidate_test_accuracy": test_accuracy,
                "reason": format!(
                    "registered as `{}`, shadowing production v{}; production moves once feedback on live traffic shows it significantly better",
                    live::CANDIDATE_ALIAS, current.version
                ),
            }),
        };
        let promoted = decision["promoted"] == true;
        let registration = Registration {
            job_id,
            best_trial: best.id,
            version: &new_version,
            template: &serde_json::to_value(request).expect("requests serialise"),
            decision: &decision,
            promote: promoted
                .then(|| format!("training job {job_id}: {}", decision["reason"].as_str().unwrap_or("promoted"))),
            live_against: if decision["pending"] == true {
                decision["production_version"].as_i64().map(|v| v as i32)
            } else {
                None
            },
            decided_against: match request.promote {
                Promote::IfBetter | Promote::IfBetterLive => Some(current.as_ref().map(|c| c.version)),
                Promote::Never | Promote::Always => None,
            },
        };
        match store::register(ctx, registration).await? {
            Registered::Done(version) => break (version, decision, promoted),
            Registered::AlreadyEnded => return Ok(()),
            Registered::ProductionMoved { decided, now } if tries < 3 => {
                tracing::info!(job = %job_id, ?decided, ?now, "production moved while the promotion was decided; deciding again");
            }
            Registered::ProductionMoved { decided, now } => {
                return Err(Retry::new(format!(
                    "production kept moving while the promotion was decided (last v{decided:?} then v{now:?})"
                )));
            }
        }
    };
    if promoted {
        metrics::counter!("sluice_registry_alias_moves_total", "kind" => "production").increment(1);
    }
    metrics::counter!("sluice_trainer_jobs_finished_total", "status" => "succeeded").increment(1);
    tracing::info!(job = %job_id, model = %request.model, version = version.version, promotion = %decision, "training job succeeded");
    Ok(())
}

/// `promote: if_better` against a production version: the workers scored both on the job's test
/// items; the items production was neither trained, selected nor calibrated on are compared, and
/// the candidate must win the exact McNemar test at `trainer.promotion_alpha` by at least
/// `trainer.promotion_min_margin`.
async fn gate(
    ctx: &Context,
    spec_hash: &str,
    test_items: &[Uuid],
    test: Option<&TestScores>,
    current: &models::ModelVersion,
) -> Value {
    let refuse = |reason: String| json!({"policy": "if_better", "promoted": false, "production_version": current.version, "reason": reason});
    if current.input_spec.hash() != spec_hash {
        return refuse(format!(
            "production v{} was trained on another input spec; not comparable on this job's items",
            current.version
        ));
    }
    let Some(test) = test else {
        return refuse("the job has no test items (test_split 0, or too few items); no held-out evidence".into());
    };
    let theirs = match &test.baseline {
        Some(baseline) if baseline.version != current.version => {
            return refuse(format!(
                "production moved from v{} to v{} while the job ran; the trials were compared with v{}",
                baseline.version, current.version, baseline.version
            ));
        }
        None => {
            return refuse(format!(
                "production v{} was set after the job started; its trials were not compared with it",
                current.version
            ));
        }
        Some(_) if test.correct.0.len() != test_items.len() => {
            return refuse(format!(
                "the trial scored {} test items where the split holds {}; not comparable",
                test.correct.0.len(),
                test_items.len()
            ));
        }
        Some(baseline) => match &baseline.correct {
            Some(correct) if correct.0.len() == test_items.len() => &correct.0,
            _ => {
                let note = baseline.note.as_deref().unwrap_or("its scores are incomplete");
                return refuse(format!("production v{} cannot be scored ({note}); not comparable", current.version));
            }
        },
    };
    let seen = production_seen(ctx, current).await;
    let eligible: Vec<usize> = (0..test_items.len())
        .filter(|&position| seen.as_ref().is_none_or(|seen| !seen.contains(&test_items[position])))
        .collect();
    if eligible.is_empty() {
        return refuse(format!(
            "every test item of this job was in production v{}'s training, validation or calibration split",
            current.version
        ));
    }
    let ours: Vec<bool> = eligible.iter().map(|&p| test.correct.0[p]).collect();
    let theirs: Vec<bool> = eligible.iter().map(|&p| theirs[p]).collect();
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
    json!({
        "policy": "if_better", "promoted": promoted, "production_version": current.version,
        "candidate_accuracy": paired.candidate_accuracy, "production_accuracy": paired.production_accuracy,
        "items": paired.items, "candidate_only": paired.candidate_only, "production_only": paired.production_only,
        "p_value": paired.p_value, "alpha": alpha, "min_margin": margin, "reason": reason,
    })
}

/// The media ids production trained, selected or calibrated on: its snapshot's items outside
/// its job's test split. `None` when its job or snapshot cannot be found (then every test item
/// is used, and the reason says so).
async fn production_seen(ctx: &Context, current: &models::ModelVersion) -> Option<HashSet<Uuid>> {
    let (request, key) = store::job_lineage(ctx, current.lineage.job_id).await.ok()??;
    let request: JobRequest = serde_json::from_value(request).ok()?;
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
