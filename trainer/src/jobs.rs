//! Starting a training job: validate the request, freeze the dataset into a snapshot, plan the
//! search, then create the job, its trials and their events in one transaction. Used by
//! `POST /v1/training-jobs` and by retraining requests.

use std::collections::HashSet;

use sluice_core::{
    Context,
    config::TrainerConfig,
    db::DbError,
    domain::DatasetName,
    models::{self, AliasName, AutoPromote, ModelName, ModelVersion, RegistryError},
    processed,
    training::{Snapshot, snapshot_key},
};
use sluice_nn::{Architecture, SessionSpec};
use uuid::Uuid;

use crate::{
    search::{self, InvalidSearch, JobRequest, Limits, Promote},
    snapshot::{self, SnapshotError},
    store::{self, NewJob, NewTrial, Origin},
};

/// Why a job was not started; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Invalid(String),
    #[error("dataset {0:?} does not exist")]
    UnknownDataset(String),
    #[error("{0}")]
    Unusable(String),
    #[error(transparent)]
    Search(#[from] InvalidSearch),
    /// PostgreSQL, S3 or the registry could not be used: worth retrying.
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("snapshot: {0}")]
    Snapshot(#[source] SnapshotError),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// The job asks to move `production` further than its starter may.
    #[error("{0}")]
    Forbidden(String),
    /// A retrain found no labelled data that production has not already seen.
    #[error("{0}")]
    NothingNew(String),
    /// A retrain found another job of the model busy or recent when it came to create its own.
    #[error("training job {0} of the model is busy or recent")]
    Coalesced(Uuid),
}

/// Who vouches for a job's `promote`: moving `production` needs `admin`, or the model's
/// auto-promotion policy (set by an admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Started by an admin token: `promote` as requested.
    Admin,
    /// Started by a non-admin token. `explicit`: the request named `promote`, so asking for more
    /// than the policy grants is refused (403); an omitted `promote` falls back to the policy.
    Caller { explicit: bool },
    /// A retrain (drift, feedback): the template's `promote`, capped by the policy.
    Retrain,
}

fn promote_of(policy: AutoPromote) -> Promote {
    match policy {
        AutoPromote::Never => Promote::Never,
        AutoPromote::IfBetter => Promote::IfBetter,
        AutoPromote::Always => Promote::Always,
    }
}

/// The `promote` the job runs with under `grant`, or why the request is refused.
async fn authorize_promotion(
    ctx: &Context,
    model: &ModelName,
    requested: Promote,
    grant: Grant,
) -> Result<Promote, StartError> {
    if grant == Grant::Admin || requested == Promote::Never {
        return Ok(requested);
    }
    let client = ctx.db.get().await.map_err(DbError::from)?;
    let allowed = promote_of(models::policy(&client, model).await?.auto_promote);
    match grant {
        Grant::Caller { explicit: true } if requested > allowed => Err(StartError::Forbidden(format!(
            "`promote`: {requested:?} moves production, which needs the admin scope or an auto-promotion policy \
             an admin sets with PUT /v1/models/{model}/policy (now {allowed:?}); use \"never\" and promote by hand"
        ))),
        _ => Ok(requested.min(allowed)),
    }
}
impl StartError {
    /// An outage: the request may succeed when retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Db(_) | Self::Snapshot(_) | Self::Registry(_))
    }
}

impl From<SnapshotError> for StartError {
    fn from(err: SnapshotError) -> Self {
        Self::Snapshot(err)
    }
}

/// Refuses, before any memory is taken, a network over `trainer.max_trial_parameters` (a huge
/// `hidden` over a large input) or a training step whose activations would pass
/// `trainer.max_trial_batch_mib` (a huge `batch_size` over a large input; a batch holds at most
/// the `train_items`): either would otherwise abort the worker that builds it (and the next
/// one, and the next).
pub fn check_network_size(spec: &SessionSpec, config: &TrainerConfig, train_items: usize) -> Result<(), String> {
    let shape = spec.shape;
    let parameters = spec.parameters();
    let max = config.max_trial_parameters;
    if parameters > max {
        return Err(format!(
            "a {} with hidden = {} over {}×{}×{} inputs has {parameters} parameters, more than trainer.max_trial_parameters ({max}); use fewer hidden units or a smaller pipeline size",
            spec.architecture, spec.hyper.hidden, shape.channels, shape.height, shape.width
        ));
    }
    let batch = spec.hyper.batch_size.min(train_items.max(1)) as u64;
    let mib = batch.saturating_mul(spec.activations_per_sample()).saturating_mul(4) >> 20;
    if mib > config.max_trial_batch_mib {
        return Err(format!(
            "a {} training step on batches of {batch} {}×{}×{} inputs holds about {mib} MiB of activations, more than trainer.max_trial_batch_mib ({}); use a smaller batch_size or pipeline size",
            spec.architecture, shape.channels, shape.height, shape.width, config.max_trial_batch_mib
        ));
    }
    Ok(())
}

/// Refuses a dataset no worker could train on: more classes than `trainer.max_classes` (each
/// trial's report holds a classes × classes matrix), or decoded frames over
/// `trainer.max_snapshot_mib` (a worker holds every frame, and once more split by split).
pub fn check_dataset_size(snapshot: &Snapshot, config: &TrainerConfig) -> Result<(), String> {
    let classes = snapshot.labels.len();
    if classes > config.max_classes {
        return Err(format!(
            "dataset {:?} has {classes} classes, more than trainer.max_classes ({})",
            snapshot.dataset, config.max_classes
        ));
    }
    let shape = snapshot::input_shape(&snapshot.spec);
    let frames: u64 = snapshot.items.iter().map(|item| item.keys.len() as u64).sum();
    let mib = frames.saturating_mul(shape.len() as u64).saturating_mul(2) >> 20;
    if mib > config.max_snapshot_mib {
        return Err(format!(
            "dataset {:?} has {frames} frames of {}×{}×{}: about {mib} MiB in a worker, more than trainer.max_snapshot_mib ({}); use a smaller pipeline size or fewer items",
            snapshot.dataset, shape.channels, shape.height, shape.width, config.max_snapshot_mib
        ));
    }
    Ok(())
}

/// Why a retrain would learn nothing new: the snapshot holds fewer than
/// `trainer.retrain_min_new_items` items (or labels) that production's snapshot did not, under
/// the same pipeline spec. `None` when there is something new, or no
/// production version to compare with.
async fn nothing_new(
    ctx: &Context,
    current: Option<&ModelVersion>,
    snapshot: &Snapshot,
) -> Result<Option<String>, StartError> {
    let Some(current) = current else {
        return Ok(None);
    };
    let lineage = &current.lineage;
    if lineage.spec_hash != snapshot.spec_hash || lineage.dataset != snapshot.dataset {
        return Ok(None);
    }
    if lineage.snapshot_id == snapshot.id() {
        return Ok(Some(format!(
            "the dataset has not changed since production v{}'s snapshot ({} items)",
            current.version,
            snapshot.items.len()
        )));
    }
    let key = snapshot_key(&lineage.dataset, &lineage.snapshot_id);
    let theirs = match snapshot::manifest(ctx, &key, &lineage.snapshot_id).await {
        Ok(theirs) => theirs,
        // Its snapshot is gone: nothing says the data is old, so train.
        Err(SnapshotError::Unusable(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let known: HashSet<(Uuid, &str)> = theirs.items.iter().map(|i| (i.media_id, i.label.as_str())).collect();
    let new = snapshot.items.iter().filter(|i| !known.contains(&(i.media_id, i.label.as_str()))).count();
    let wanted = ctx.config.trainer.retrain_min_new_items.max(1) as usize;
    if new < wanted {
        return Ok(Some(format!(
            "{new} labelled items are new or relabelled since production v{}'s snapshot ({} items then, {} now); \
             a retrain needs {wanted} (trainer.retrain_min_new_items)",
            current.version,
            theirs.items.len(),
            snapshot.items.len()
        )));
    }
    Ok(None)
}

pub fn limits(ctx: &Context) -> Limits {
    Limits { max_trials: ctx.config.trainer.max_trials, max_epochs: ctx.config.trainer.max_epochs }
}

/// Validates and starts a job; nothing is written anywhere unless it is accepted.
pub async fn start(ctx: &Context, request: &JobRequest, origin: Origin, grant: Grant) -> Result<Uuid, StartError> {
    let model = ModelName::parse(&request.model).map_err(|e| StartError::Invalid(format!("`model`: {e}.")))?;
    let mut request = request.clone();
    request.promote = authorize_promotion(ctx, &model, request.promote, grant).await?;
    let request = &request;
    let dataset = DatasetName::parse(&request.dataset).map_err(|e| StartError::Invalid(format!("`dataset`: {e}.")))?;
    let architecture = request.architecture.parse::<Architecture>().map_err(|_| {
        StartError::Invalid(format!("`architecture`: unknown architecture {:?}; use mlp or cnn.", request.architecture))
    })?;
    let splits = request.splits();
    splits
        .validate()
        .map_err(|e| StartError::Invalid(format!("`validation_split`, `calibration_split`, `test_split`: {e}.")))?;
    let mut plan = search::plan(&request.search, request.seed, limits(ctx))?;
    if let Some(augment) = request.augment {
        augment.validate().map_err(|e| StartError::Invalid(format!("`augment`: {e}.")))?;
        plan.trials.iter_mut().for_each(|trial| trial.augment = augment);
    }
    let exists = processed::dataset_exists(&ctx.db.get().await.map_err(DbError::from)?, dataset.as_str()).await?;
    if !exists {
        return Err(StartError::UnknownDataset(request.dataset.clone()));
    }
    let snapshot = snapshot::collect(ctx, dataset.as_str()).await?;
    if snapshot.items.is_empty() {
        return Err(StartError::Unusable(format!(
            "dataset {:?} has no processed, labelled items under its current pipeline spec; push labelled media and wait for preprocessing",
            request.dataset
        )));
    }
    if snapshot.labels.len() < 2 {
        return Err(StartError::Unusable(format!(
            "dataset {:?} has a single class ({:?}); a classifier needs at least two labels",
            request.dataset, snapshot.labels[0]
        )));
    }
    check_dataset_size(&snapshot, &ctx.config.trainer).map_err(StartError::Unusable)?;
    let partition = snapshot.partition(&splits);
    if partition.train.is_empty() || partition.validation.is_empty() {
        return Err(StartError::Unusable(format!(
            "dataset {:?} has too few items ({}) for its splits (train {}, validation {}): push more labelled media",
            request.dataset,
            snapshot.items.len(),
            partition.train.len(),
            partition.validation.len()
        )));
    }
    let current = {
        let client = ctx.db.get().await.map_err(DbError::from)?;
        let production = AliasName::parse(AliasName::PRODUCTION).expect("a valid alias");
        models::resolve_alias(&client, &model, &production).await?
    };
    if grant == Grant::Retrain
        && let Some(reason) = nothing_new(ctx, current.as_ref(), &snapshot).await?
    {
        return Err(StartError::NothingNew(reason));
    }
    // Later rungs change only the epochs, so the first rung's trials bound every network.
    let shape = snapshot::input_shape(&snapshot.spec);
    for hyper in &plan.trials {
        let spec = SessionSpec { architecture, shape, classes: snapshot.labels.len(), hyper: hyper.clone(), seed: 0 };
        check_network_size(&spec, &ctx.config.trainer, snapshot.items.len())
            .map_err(|e| StartError::Invalid(format!("`search`: {e}.")))?;
    }
    let snapshot_id = snapshot.id();
    let snapshot_key = snapshot::store(ctx, &snapshot).await?;
    let id = Uuid::now_v7();
    let trials = plan
        .trials
        .into_iter()
        .enumerate()
        .map(|(ordinal, hyper)| NewTrial { hyper, rung: 0, parent: None, seed: request.trial_seed(ordinal) })
        .collect();
    let created = store::create_job(
        ctx,
        NewJob {
            id,
            request,
            snapshot: &snapshot,
            snapshot_id: &snapshot_id,
            snapshot_key: &snapshot_key,
            trials,
            origin,
            baseline_version: baseline(request.promote, current.as_ref(), &snapshot),
        },
        ctx.config.trainer.retrain_cooldown_secs as f64,
    )
    .await?;
    if let Some(busy) = created {
        return Err(StartError::Coalesced(busy));
    }
    metrics::counter!("sluice_trainer_jobs_started_total").increment(1);
    tracing::info!(job = %id, model = %request.model, dataset = %request.dataset, snapshot = %snapshot_id, "training job queued");
    Ok(id)
}

/// The production version a job's trials are scored against on the test split: for
/// `promote: if_better`, production when its input spec is the snapshot's (otherwise the two
/// are not comparable and the gate says so).
fn baseline(promote: Promote, current: Option<&ModelVersion>, snapshot: &Snapshot) -> Option<i32> {
    let current = current?;
    (promote == Promote::IfBetter && current.input_spec.hash() == snapshot.spec_hash).then_some(current.version)
}
