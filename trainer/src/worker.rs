//! The trainer worker: consumer group `trainer` over `training.trials`, one trial at a time.
//!
//! Per trial: skip it if it already ended or its job was cancelled; load the job's snapshot
//! (kept in memory for the next trial of the same job); resume from the trial's last epoch
//! checkpoint in S3 if one exists (a redelivered trial) or from its parent's (a halving
//! promotion); train epoch by epoch off the async runtime, writing a checkpoint and publishing a
//! progress event after each; write the best weights and a manifest to S3; publish the result;
//! and only then store the message's offset. A worker killed mid-trial leaves the offset
//! unstored: the group hands the trial to another worker, which resumes from the checkpoint.
//!
//! Poison trials: every run counts an attempt before it starts (given back when it stopped for
//! an outage or a shutdown), so a trial that kills its worker (an allocation abort) is seen by
//! the next delivery with its attempts used up: after `trainer.max_trial_attempts` it is failed
//! without running, with a `work.parked` event, and the trials queued behind it flow. A network
//! over `trainer.max_trial_parameters` is refused before any memory is taken.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{Message, consumer::Consumer};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_core::{
    Context, Shutdown,
    events::Envelope,
    kafka::{self, SluiceConsumer},
    models::{self, ModelName, RegistryError},
    parking::{self, WorkKind, WorkParked},
    reference::{Reference, top1},
    s3,
    topics::Topic,
    training::{
        ArtifactRef, BaselineScores, EpochMetrics, Hits, Splits, TestScores, TrialAssigned, TrialFinished,
        TrialOutcome, TrialProgress, artifact_key, checkpoint_key, manifest_key,
    },
    work::{self, Backoff, Failure, Run, Settled},
};
use sluice_nn::{Architecture, Hyper, Network, Samples, Session, SessionSpec};
use uuid::Uuid;

use crate::{
    evaluation, jobs, search,
    snapshot::{self, LoadedSnapshot},
    store::{self, Attempts},
};

impl From<snapshot::SnapshotError> for Failure {
    fn from(err: snapshot::SnapshotError) -> Self {
        match err {
            snapshot::SnapshotError::Unusable(message) => Failure::Poison(message),
            other => Failure::Retry(other.to_string()),
        }
    }
}

/// This process's name in trial records: host and process id.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "trainer" } else { &host }, std::process::id())
}

/// Runs the worker until `shutdown`, recreating the consumer after Kafka errors.
pub async fn run(ctx: Context, shutdown: Shutdown, cache: snapshot::Cache) {
    let worker = worker_name();
    kafka::keep_consuming("trainer worker", &shutdown, || consume(&ctx, &shutdown, &cache, &worker)).await;
}

fn trial_consumer(ctx: &Context) -> Result<kafka::ClosesInBackground<SluiceConsumer>, rdkafka::error::KafkaError> {
    let trainer = &ctx.config.trainer;
    let mut config = kafka::consumer_config(&ctx.config.kafka, &trainer.group_id);
    // Trials are placed round the partitions in order; round-robin assignment then gives every
    // worker an even share. The loop polls while a trial runs (work::consume_long); the poll
    // interval only bounds a consumer loop that stopped altogether.
    config
        .set("partition.assignment.strategy", "roundrobin")
        .set("max.poll.interval.ms", (trainer.max_trial_secs * 1000).min(i32::MAX as u64).to_string())
        .set("queued.max.messages.kbytes", "64");
    kafka::create(&config, &ctx.config.kafka)
}

async fn consume(
    ctx: &Context,
    shutdown: &Shutdown,
    cache: &snapshot::Cache,
    worker: &str,
) -> Result<(), rdkafka::error::KafkaError> {
    let consumer = Arc::new(trial_consumer(ctx)?);
    let topic = ctx.topic(Topic::TrainingTrials);
    consumer.subscribe(&[topic.as_str()])?;
    let lag = tokio::spawn(kafka::report_lag(consumer.clone(), topic.to_string(), ctx.config.trainer.group_id.clone()));
    // A trial runs for minutes or hours: the loop polls meanwhile, so rebalances do not wait for it.
    let holder = &consumer;
    let result = work::consume_long(&consumer, shutdown, 1, |message| async move {
        match Envelope::<TrialAssigned>::decode(message.payload().unwrap_or_default()) {
            Ok(envelope) => {
                let run = Run::default();
                let done = handle(ctx, &envelope.data, shutdown, cache, worker, &run).await;
                run.answer(done, holder, &message)
            }
            Err(err) => {
                tracing::error!(error = %err, offset = message.offset(), "undecodable trial event; skipping it");
                true
            }
        }
    })
    .await;
    lag.abort();
    result
}

/// Runs one trial to a published result; `false` when shutdown interrupted it. A run that
/// another worker's run took over stops at its next epoch (or its next retry), publishes
/// nothing and yields its trial ([`Run::yield_unit`]).
async fn handle(
    ctx: &Context,
    trial: &TrialAssigned,
    shutdown: &Shutdown,
    cache: &snapshot::Cache,
    worker: &str,
    run: &Run,
) -> bool {
    let started = Instant::now();
    let backoff = Backoff { first: Duration::from_millis(500), max: Duration::from_secs(10) };
    let settled = work::settle(shutdown, backoff, "trial interrupted", || async {
        match train(ctx, trial, shutdown, cache, worker, started, run).await {
            Err(Failure::Retry(reason)) => {
                // The attempt stands only when the failure was the trial's own.
                let counts = parking::dependencies_up(ctx, &[]).await;
                let recorded = match (counts, run.uncount()) {
                    (true, _) => store::attempt_failed(ctx, trial.trial_id, &reason).await,
                    (false, true) => store::give_back_attempt(ctx, trial.trial_id).await,
                    (false, false) => Ok(()),
                };
                if let Err(err) = recorded {
                    tracing::warn!(error = %err, "cannot record the failed attempt");
                }
                Err(Failure::Retry(format!("trial {} (attempt counted: {counts}): {reason}", trial.trial_id)))
            }
            Err(Failure::Interrupted) => {
                if run.uncount() {
                    give_back(ctx, trial).await;
                }
                Err(Failure::Interrupted)
            }
            other => other,
        }
    });
    let finished = match settled.await {
        None => return false,
        Some(Settled::Done(None)) => return true,
        Some(Settled::Done(Some(finished))) => finished,
        Some(Settled::Poison(reason)) => {
            tracing::warn!(trial = %trial.trial_id, %reason, "trial failed");
            ended(trial, worker, TrialOutcome::Failed, Some(reason), started)
        }
    };
    // The result must be acknowledged before the offset is stored.
    let key = trial.job_id.to_string();
    let finished = fit_in_a_message(finished);
    let event = Envelope::new(finished.clone());
    let published = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot publish a trial result", || {
        kafka::send(ctx, Topic::TrainingResults, &key, &event)
    });
    if published.await.is_none() {
        return false;
    }
    metrics::counter!("sluice_trainer_trials_total", "outcome" => finished.outcome.as_str()).increment(1);
    metrics::histogram!("sluice_trainer_trial_duration_seconds").record(started.elapsed().as_secs_f64());
    true
}

/// Records that the trial is parked (`work.parked`, the metric); `false` when shutdown came first.
async fn park(ctx: &Context, trial: &TrialAssigned, attempts: i32, reason: &str, shutdown: &Shutdown) -> bool {
    let event = WorkParked {
        kind: WorkKind::Trial,
        id: trial.trial_id.to_string(),
        attempts,
        reason: reason.to_owned(),
        detail: json!({"job_id": trial.job_id, "model": trial.model, "params": trial.params}),
    };
    let recorded = work::retry_until(shutdown, Backoff::DEPENDENCY, "cannot record a parked trial", || {
        store::parked(ctx, event.clone())
    });
    if recorded.await.is_none() {
        return false;
    }
    metrics::counter!("sluice_trainer_trials_parked_total").increment(1);
    true
}

/// Gives back the attempt of a run that stopped through no fault of the trial (best effort).
async fn give_back(ctx: &Context, trial: &TrialAssigned) {
    let done = tokio::time::timeout(Duration::from_secs(2), store::give_back_attempt(ctx, trial.trial_id));
    if !matches!(done.await, Ok(Ok(()))) {
        tracing::warn!(trial = %trial.trial_id, "could not give back the attempt of an interrupted trial");
    }
}

/// Room left in a Kafka message for the envelope around a result.
const ENVELOPE_ROOM: usize = 4 * 1024;

/// A result that fits one Kafka message, which the broker and librdkafka refuse past about 1 MB
/// at once, every time: sent as it is, a too-large result would be retried forever and hold up
/// the trials queued behind it. A test report over many classes carries a k×k confusion matrix
/// (a million cells at 1,000 classes): it goes first, then the per-class rows, each replaced by
/// a note; the accuracy, macro F1, calibration and per-item hits stay, so the promotion gate keeps
/// its evidence. What still does not fit becomes a failed trial that says why.
fn fit_in_a_message(mut finished: TrialFinished) -> TrialFinished {
    let fits = |f: &TrialFinished| {
        serde_json::to_vec(f).is_ok_and(|bytes| bytes.len() + ENVELOPE_ROOM <= sluice_core::outbox::MAX_EVENT_BYTES)
    };
    for field in ["confusion_matrix", "per_class"] {
        if fits(&finished) {
            return finished;
        }
        if let Some(report) = finished.test.as_mut().and_then(|test| test.report.as_object_mut())
            && report.remove(field).is_some()
        {
            report.insert(format!("{field}_omitted"), json!("too large for one Kafka message"));
        }
    }
    if fits(&finished) {
        return finished;
    }
    let bytes = serde_json::to_vec(&finished).map_or(0, |b| b.len());
    tracing::warn!(trial = %finished.trial_id, bytes, "a trial result does not fit a Kafka message; reporting the trial failed");
    finished.into_failed(format!(
        "the trial's result is {bytes} bytes, over the {}-byte limit of a Kafka message",
        sluice_core::outbox::MAX_EVENT_BYTES
    ))
}

fn ended(
    trial: &TrialAssigned,
    worker: &str,
    outcome: TrialOutcome,
    error: Option<String>,
    started: Instant,
) -> TrialFinished {
    TrialFinished {
        job_id: trial.job_id,
        trial_id: trial.trial_id,
        worker: worker.to_owned(),
        outcome,
        metrics: serde_json::Value::Null,
        artifact: None,
        reference: serde_json::Value::Null,
        error,
        duration_ms: started.elapsed().as_millis() as i64,
        test: None,
    }
}

/// Whether `run` should go on with the trial: it is still wanted and no later run took it.
async fn run_state(ctx: &Context, trial: &TrialAssigned, run: Uuid) -> Result<RunState, Failure> {
    Ok(match store::trial_state(ctx, trial.trial_id).await? {
        Some(state) if !state.wanted() => RunState::Ended,
        Some(state) if state.run.is_some_and(|holder| holder != run) => RunState::TakenOver,
        Some(_) => RunState::Going,
        None => RunState::Ended,
    })
}

/// Notes that another worker's run took the trial over: this run ends with nothing to publish,
/// and gives its attempt back, since it stopped through no fault of the trial (the run that took
/// over counted its own), so a trial moved between live workers by rebalances is never parked.
async fn taken_over(ctx: &Context, trial: &TrialAssigned, run: &Run) -> Option<TrialFinished> {
    tracing::warn!(trial = %trial.trial_id, "another worker took the trial over; stopping this run");
    metrics::counter!("sluice_trainer_trials_taken_over_total").increment(1);
    if run.uncount() {
        give_back(ctx, trial).await;
    }
    run.yield_unit();
    None
}

enum RunState {
    Going,
    /// The trial ended or its job was cancelled.
    Ended,
    /// Another worker's run started it since (this worker's partition was given away).
    TakenOver,
}

/// Trains the trial; `Ok(None)` when there is nothing to do (ended or cancelled job).
async fn train(
    ctx: &Context,
    trial: &TrialAssigned,
    shutdown: &Shutdown,
    cache: &snapshot::Cache,
    worker: &str,
    started: Instant,
    run: &Run,
) -> Result<Option<TrialFinished>, Failure> {
    let state = run_state(ctx, trial, run.id).await?;
    if matches!(state, RunState::Ended) {
        tracing::info!(trial = %trial.trial_id, "trial already ended or its job was cancelled; skipping");
        return Ok(None);
    }
    let hyper: Hyper = serde_json::from_value(trial.params.clone())
        .map_err(|e| Failure::Poison(format!("unreadable parameters: {e}")))?;
    let architecture: Architecture = trial
        .architecture
        .parse()
        .map_err(|_| Failure::Poison(format!("unknown architecture {}", trial.architecture)))?;
    // A retry after a dependency came back (a host cut off, then back) must not take the trial
    // back from the run that resumed it meanwhile; a new delivery does take it over.
    if run.started() && matches!(state, RunState::TakenOver) {
        return Ok(taken_over(ctx, trial, run).await);
    }
    // Counted before anything can go wrong, so a run that kills this process counts too.
    let Some(Attempts { attempts, last_error }) =
        store::mark_running(ctx, trial.job_id, trial.trial_id, worker, run.id).await?
    else {
        return Ok(None);
    };
    run.start();
    run.count_attempt();
    let max_attempts = ctx.config.trainer.max_trial_attempts as i32;
    if attempts > max_attempts {
        let reason = parking::gave_up(attempts - 1, last_error.as_deref());
        tracing::error!(trial = %trial.trial_id, attempts = attempts - 1, %reason, "trial parked");
        if !park(ctx, trial, attempts - 1, &reason, shutdown).await {
            return Err(Failure::Interrupted);
        }
        return Err(Failure::Poison(reason));
    }
    let loaded = cache.load(ctx, &trial.snapshot_key, &trial.snapshot_id).await?;
    let classes = loaded.snapshot.labels.len();
    let spec = SessionSpec { architecture, shape: loaded.shape, classes, hyper: hyper.clone(), seed: trial.seed };
    jobs::check_network_size(&spec, &ctx.config.trainer, loaded.snapshot.items.len()).map_err(Failure::Poison)?;
    // Trials queued before three-way splits held out `validation_split` only.
    let splits = trial.splits.unwrap_or(Splits {
        validation: trial.validation_split,
        calibration: 0.0,
        test: 0.0,
        seed: trial.seed,
    });
    let partition = loaded.snapshot.partition(&splits);
    let train_set = Arc::new(loaded.samples(&partition.train));
    let val_set = Arc::new(loaded.samples(&partition.validation));
    // The temperature and the drift reference are fitted apart from early stopping; with no
    // calibration split (a job that asked for none) the validation split does it.
    let calibration_set =
        if partition.calibration.is_empty() { None } else { Some(loaded.samples(&partition.calibration)) };
    let bucket = &ctx.config.s3.bucket;
    let own_checkpoint = checkpoint_key(trial.job_id, trial.trial_id);
    let mut session = match s3::get_bytes(&ctx.s3, bucket, &own_checkpoint).await? {
        Some(bytes) => {
            tracing::info!(trial = %trial.trial_id, "resuming the trial from its last checkpoint");
            metrics::counter!("sluice_trainer_trials_resumed_total").increment(1);
            Session::resume(spec, &bytes).map_err(|e| Failure::Poison(format!("unusable checkpoint: {e}")))?
        }
        None => match trial.parent {
            Some(parent) => {
                let bytes = s3::get_bytes(&ctx.s3, bucket, &checkpoint_key(trial.job_id, parent))
                    .await?
                    .ok_or_else(|| Failure::Poison(format!("the checkpoint of parent trial {parent} is missing")))?;
                Session::promote(spec, &bytes)
                    .map_err(|e| Failure::Poison(format!("unusable parent checkpoint: {e}")))?
            }
            None => Session::new(spec).map_err(|e| Failure::Poison(e.to_string()))?,
        },
    };
    let resumed_from = session.epochs_done() as u32;
    let median_grace = store::median_rule(ctx, trial.job_id).await?;
    let mut best_accuracy = match median_grace {
        Some(_) if resumed_from > 0 => store::own_best(ctx, trial.trial_id, resumed_from).await?.unwrap_or(f64::MIN),
        _ => f64::MIN,
    };
    let mut pruned_at = None;
    let mut timed_out_at = None;
    // `max_trial_secs` is also the consumer's poll interval: past it the group gives the trial
    // to another worker. The trial stops with its best weights with a tenth of it left to finish.
    let time_limit = Duration::from_secs(ctx.config.trainer.max_trial_secs).mul_f64(0.9);
    while !session.finished() {
        if shutdown.is_cancelled() {
            return Err(Failure::Interrupted);
        }
        match run_state(ctx, trial, run.id).await? {
            RunState::Going => {}
            RunState::Ended => {
                tracing::info!(trial = %trial.trial_id, "job cancelled; stopping the trial");
                return Ok(Some(ended(trial, worker, TrialOutcome::Cancelled, None, started)));
            }
            RunState::TakenOver => return Ok(taken_over(ctx, trial, run).await),
        }
        let (train_set, val_set) = (train_set.clone(), val_set.clone());
        let epoch = tokio::task::spawn_blocking(move || {
            let report = session.run_epoch(&train_set, &val_set);
            (session, report)
        });
        // The loop polls while the trial runs, so nothing else bounds a stuck epoch.
        let left = Duration::from_secs(ctx.config.trainer.max_trial_secs).saturating_sub(started.elapsed());
        let (returned, report) = tokio::time::timeout(left, epoch)
            .await
            .map_err(|_| Failure::Poison("an epoch ran past trainer.max_trial_secs".to_owned()))?
            .map_err(|e| Failure::Poison(format!("training panicked: {e}")))?;
        session = returned;
        let report = report.map_err(|e| Failure::Poison(format!("training failed: {e}")))?;
        metrics::histogram!("sluice_trainer_epoch_duration_seconds").record(report.seconds);
        let checkpoint = session.checkpoint().map_err(|e| Failure::Poison(e.to_string()))?;
        s3::put_bytes(&ctx.s3, bucket, &own_checkpoint, checkpoint, "application/octet-stream").await?;
        let progress = TrialProgress {
            job_id: trial.job_id,
            trial_id: trial.trial_id,
            worker: worker.to_owned(),
            metrics: EpochMetrics {
                epoch: report.epoch as u32,
                epochs: hyper.epochs as u32,
                train_loss: report.train_loss,
                train_accuracy: report.train_accuracy,
                val_loss: report.val_loss,
                val_accuracy: report.val_accuracy,
                learning_rate: report.learning_rate,
                seconds: report.seconds,
            },
            resumed_from,
        };
        kafka::send(ctx, Topic::TrainingResults, &trial.job_id.to_string(), &Envelope::new(progress))
            .await
            .map_err(Failure::Retry)?;
        best_accuracy = best_accuracy.max(report.val_accuracy);
        if !session.finished() && started.elapsed() >= time_limit {
            tracing::warn!(trial = %trial.trial_id, epoch = report.epoch, limit_secs = ctx.config.trainer.max_trial_secs,
                "the trial reached its time limit; finishing it with its best weights so far");
            metrics::counter!("sluice_trainer_trials_timed_out_total").increment(1);
            timed_out_at = Some(report.epoch as u32);
            break;
        }
        if let Some(grace) = median_grace
            && !session.finished()
        {
            let epoch = report.epoch as u32;
            let peers = store::peers_at_epoch(ctx, trial.job_id, trial.trial_id, trial.rung, epoch).await?;
            if search::median_stops(best_accuracy, &peers, epoch, grace) {
                tracing::info!(trial = %trial.trial_id, epoch, "median rule: below the median of its peers; stopping");
                metrics::counter!("sluice_trainer_trials_pruned_total").increment(1);
                pruned_at = Some(epoch);
                break;
            }
        }
    }
    let sets = Sets {
        validation: &val_set,
        calibration: calibration_set.as_ref(),
        test: &partition.test,
        loaded: &loaded,
        sizes: partition.sizes(),
        pruned_at,
        timed_out_at,
    };
    finish(ctx, trial, &session, sets, classes, worker, started).await.map(Some)
}

/// The held-out samples a finished trial is described with.
struct Sets<'a> {
    validation: &'a Samples,
    calibration: Option<&'a Samples>,
    /// The test items (indices into the snapshot), scored here so the coordinator need not load
    /// the snapshot again.
    test: &'a [usize],
    loaded: &'a LoadedSnapshot,
    /// Items per split.
    sizes: serde_json::Value,
    /// The epoch the median rule stopped the trial at, if it did.
    pruned_at: Option<u32>,
    /// The epoch the trial's time limit (`trainer.max_trial_secs`) stopped it at, if it did.
    timed_out_at: Option<u32>,
}

/// Writes the best weights and their manifest, and describes the result.
async fn finish(
    ctx: &Context,
    trial: &TrialAssigned,
    session: &Session,
    sets: Sets<'_>,
    classes: usize,
    worker: &str,
    started: Instant,
) -> Result<TrialFinished, Failure> {
    let artifact = session.export_best().map_err(|e| Failure::Poison(e.to_string()))?;
    let evaluation = session.evaluate_best(sets.validation).map_err(|e| Failure::Poison(e.to_string()))?;
    let (calibrated_on, calibration, calibration_eval) = match sets.calibration {
        Some(samples) => {
            let eval = session.evaluate_best(samples).map_err(|e| Failure::Poison(e.to_string()))?;
            ("calibration", samples, eval)
        }
        None => ("validation", sets.validation, evaluation.clone()),
    };
    let mut reference = Reference::compute(
        &calibration.images,
        calibration.shape.channels,
        &calibration.labels,
        &calibration_eval.logits,
        classes,
    );
    let (mut logits, mut embeddings) = session.scores_best(calibration).map_err(|e| Failure::Poison(e.to_string()))?;
    reference.add_embeddings(&logits, &embeddings);
    if sets.calibration.is_some() {
        // Validation only chose the epoch: its embeddings are as unseen as calibration's.
        let (more_logits, more_embeddings) =
            session.scores_best(sets.validation).map_err(|e| Failure::Poison(e.to_string()))?;
        logits.extend(more_logits);
        embeddings.extend(more_embeddings);
    }
    reference.add_embedding_sample(&logits, &embeddings);
    let test = test_scores(ctx, trial, session, sets.loaded, sets.test, reference.temperature).await?;
    let sha256 = hex::encode(Sha256::digest(&artifact));
    let size_bytes = artifact.len() as i64;
    let key = artifact_key(&trial.model, trial.job_id, trial.trial_id, &sha256);
    let bucket = &ctx.config.s3.bucket;
    let metrics = json!({
        "val_accuracy": evaluation.accuracy,
        "val_loss": evaluation.loss,
        "epochs": session.epochs_done(),
        "calibrated_temperature": reference.temperature,
        "calibrated_on": calibrated_on,
        "validation_samples": sets.validation.labels.len(),
        "calibration_samples": calibration.labels.len(),
        "splits": sets.sizes,
        "pruned_at_epoch": sets.pruned_at,
        "time_limit_at_epoch": sets.timed_out_at,
    });
    let manifest = json!({
        "job_id": trial.job_id, "trial_id": trial.trial_id, "model": trial.model,
        "architecture": trial.architecture, "params": trial.params, "seed": trial.seed,
        "snapshot_id": trial.snapshot_id, "sha256": sha256, "size_bytes": size_bytes, "metrics": metrics,
        "sluice_version": env!("CARGO_PKG_VERSION"),
    });
    s3::put_bytes(&ctx.s3, bucket, &key, artifact, "application/octet-stream").await?;
    let manifest = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
    s3::put_bytes(
        &ctx.s3,
        bucket,
        &manifest_key(&trial.model, trial.job_id, trial.trial_id, &sha256),
        manifest,
        "application/json",
    )
    .await?;
    Ok(TrialFinished {
        job_id: trial.job_id,
        trial_id: trial.trial_id,
        worker: worker.to_owned(),
        outcome: TrialOutcome::Succeeded,
        metrics,
        artifact: Some(ArtifactRef { key, sha256, size_bytes }),
        reference: serde_json::to_value(reference).expect("references serialise"),
        error: None,
        duration_ms: started.elapsed().as_millis() as i64,
        test,
    })
}

/// The trial's best weights on the test items (each item's frames averaged, at the calibrated
/// `temperature`), and the baseline version on the same items when the trial names one.
async fn test_scores(
    ctx: &Context,
    trial: &TrialAssigned,
    session: &Session,
    loaded: &LoadedSnapshot,
    items: &[usize],
    temperature: f64,
) -> Result<Option<TestScores>, Failure> {
    if items.is_empty() {
        return Ok(None);
    }
    let samples = loaded.samples(items);
    let frames = loaded.frame_counts(items);
    let labels = &loaded.snapshot.labels;
    let evaluation = session.evaluate_best(&samples).map_err(|e| Failure::Poison(e.to_string()))?;
    let probabilities = evaluation::item_probabilities(&evaluation.logits, &frames, temperature);
    let truth: Vec<u32> =
        items.iter().map(|&i| labels.binary_search(&loaded.snapshot.items[i].label).unwrap_or(0) as u32).collect();
    let correct = Hits(probabilities.iter().zip(&truth).map(|(p, &t)| top1(p).0 == t as usize).collect());
    let report = evaluation::report(labels, &probabilities, &truth);
    let baseline = match trial.baseline_version {
        Some(version) => Some(baseline_scores(ctx, trial, version, loaded, items, samples).await?),
        None => None,
    };
    Ok(Some(TestScores { correct, report: serde_json::to_value(report).expect("reports serialise"), baseline }))
}

/// Whether the baseline version's top class is each item's label (matched by name; a label it
/// does not know is wrong). An artifact that cannot be loaded or run is reported as such (the
/// gate then refuses); an outage is retried.
async fn baseline_scores(
    ctx: &Context,
    trial: &TrialAssigned,
    version: i32,
    loaded: &LoadedSnapshot,
    items: &[usize],
    samples: Samples,
) -> Result<BaselineScores, Failure> {
    let unscored = |note: String| {
        tracing::warn!(trial = %trial.trial_id, version, %note, "the baseline cannot be scored");
        Ok(BaselineScores { version, correct: None, note: Some(note) })
    };
    let model = ModelName::parse(&trial.model).map_err(|e| Failure::Poison(e.to_string()))?;
    let stored = {
        let client = ctx.db.get().await.map_err(sluice_core::db::DbError::from)?;
        models::get_version(&client, &model, version).await
    };
    let baseline = match stored {
        Ok(Some(baseline)) => baseline,
        Ok(None) => return unscored(format!("model {model} has no version {version}")),
        Err(err) => return Err(Failure::Retry(sluice_core::error_chain(&err))),
    };
    let bytes = match models::load_artifact(&ctx.s3, &ctx.config.s3.bucket, &baseline).await {
        Ok(bytes) => bytes,
        Err(err @ (RegistryError::Tampered { .. } | RegistryError::MissingArtifact { .. })) => {
            return unscored(err.to_string());
        }
        Err(err) => return Err(Failure::Retry(sluice_core::error_chain(&err))),
    };
    let frames = loaded.frame_counts(items);
    let truth: Vec<String> = items.iter().map(|&i| loaded.snapshot.items[i].label.clone()).collect();
    let their_labels = baseline.labels.clone();
    let scored = tokio::task::spawn_blocking(move || -> Result<Vec<bool>, String> {
        let network = Network::load(&bytes).map_err(|e| e.to_string())?;
        let logits = network.logits(&samples.images, samples.labels.len()).map_err(|e| e.to_string())?;
        let probabilities = evaluation::item_probabilities(&logits, &frames, 1.0);
        Ok(probabilities.iter().zip(&truth).map(|(p, label)| their_labels.get(top1(p).0) == Some(label)).collect())
    })
    .await
    .map_err(|e| Failure::Poison(format!("scoring the baseline panicked: {e}")))?;
    match scored {
        Ok(correct) => Ok(BaselineScores { version, correct: Some(Hits(correct)), note: None }),
        Err(err) => unscored(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::training::{Hits, TestScores};

    fn result(classes: usize, items: usize) -> TrialFinished {
        let labels: Vec<String> = (0..classes).map(|c| format!("class-{c:04}")).collect();
        let truth: Vec<u32> = (0..items).map(|i| (i % classes) as u32).collect();
        let probabilities: Vec<Vec<f64>> = truth
            .iter()
            .map(|&t| (0..classes).map(|c| if c == t as usize { 0.9 } else { 0.1 / classes as f64 }).collect())
            .collect();
        let report = evaluation::report(&labels, &probabilities, &truth);
        TrialFinished {
            job_id: Uuid::nil(),
            trial_id: Uuid::nil(),
            worker: "w".into(),
            outcome: TrialOutcome::Succeeded,
            metrics: json!({"val_accuracy": 0.9}),
            artifact: None,
            reference: serde_json::Value::Null,
            error: None,
            duration_ms: 1,
            test: Some(TestScores {
                correct: Hits(vec![true; items]),
                report: serde_json::to_value(report).expect("report"),
                baseline: None,
            }),
        }
    }

    #[test]
    fn a_result_over_many_classes_drops_its_matrix_to_fit_a_kafka_message() {
        let small = result(10, 500);
        assert_eq!(fit_in_a_message(small.clone()), small, "a result that fits is sent as it is");

        let wide = fit_in_a_message(result(1000, 5000));
        assert!(
            serde_json::to_vec(&Envelope::new(wide.clone())).expect("json").len()
                <= sluice_core::outbox::MAX_EVENT_BYTES
        );
        assert_eq!(wide.outcome, TrialOutcome::Succeeded);
        let test = wide.test.expect("the test scores stay");
        assert_eq!(test.correct.0.len(), 5000, "the gate's per-item evidence stays");
        assert!(test.report.get("confusion_matrix").is_none() && test.report["confusion_matrix_omitted"].is_string());
        assert_eq!(test.report["accuracy"], json!(1.0));

        let mut huge = result(3, 10);
        huge.metrics = json!({"history": "x".repeat(2_000_000)});
        let failed = fit_in_a_message(huge);
        assert_eq!(failed.outcome, TrialOutcome::Failed);
        assert!(failed.error.expect("why").contains("over the 900000-byte limit"));
    }
}
