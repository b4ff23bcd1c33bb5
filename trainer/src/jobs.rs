//! Starting a training job: validate the request, freeze the dataset into a snapshot, plan the
//! search, then create the job, its trials and their events in one transaction. Used by
//! `POST /v1/training-jobs` and by retraining requests.

use sluice_core::{Context, domain::DatasetName, models::ModelName};
use sluice_nn::Architecture;
use uuid::Uuid;

use crate::{
    search::{self, InvalidSearch, JobRequest, Limits},
    snapshot,
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
    #[error("{0}")]
    Unavailable(String),
}

impl From<store::StoreError> for StartError {
    fn from(err: store::StoreError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

impl From<snapshot::SnapshotError> for StartError {
    fn from(err: snapshot::SnapshotError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

pub fn limits(ctx: &Context) -> Limits {
    Limits { max_trials: ctx.config.trainer.max_trials, max_epochs: ctx.config.trainer.max_epochs }
}

/// Validates and starts a job; nothing is written anywhere unless it is accepted.
pub async fn start(ctx: &Context, request: &JobRequest, origin: Origin) -> Result<Uuid, StartError> {
    ModelName::parse(&request.model).map_err(|e| StartError::Invalid(format!("`model`: {e}.")))?;
    let dataset = DatasetName::parse(&request.dataset).map_err(|e| StartError::Invalid(format!("`dataset`: {e}.")))?;
    request.architecture.parse::<Architecture>().map_err(|_| {
        StartError::Invalid(format!("`architecture`: unknown architecture {:?}; use mlp or cnn.", request.architecture))
    })?;
    if !(request.validation_split > 0.0 && request.validation_split < 1.0) {
        return Err(StartError::Invalid("`validation_split` must be above 0 and below 1.".into()));
    }
    let plan = search::plan(&request.search, request.seed, limits(ctx))?;
    let exists = ctx
        .db
        .get()
        .await
        .map_err(|e| StartError::Unavailable(e.to_string()))?
        .query_opt("SELECT 1 FROM datasets WHERE name = $1", &[&dataset.as_str()])
        .await
        .map_err(|e| StartError::Unavailable(e.to_string()))?
        .is_some();
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
    let (train, validation) = snapshot.split(request.seed, request.validation_split);
    if train.is_empty() || validation.is_empty() {
        return Err(StartError::Unusable(format!(
            "dataset {:?} has too few items ({}) to hold out a validation split",
            request.dataset,
            snapshot.items.len()
        )));
    }
    let snapshot_id = snapshot.id();
    let snapshot_key = snapshot::store(ctx, &snapshot).await?;
    let id = Uuid::now_v7();
    let trials = plan.trials.into_iter().map(|hyper| NewTrial { hyper, rung: 0, parent: None }).collect();
    store::create_job(
        ctx,
        NewJob {
            id,
            request,
            snapshot: &snapshot,
            snapshot_id: &snapshot_id,
            snapshot_key: &snapshot_key,
            trials,
            origin,
        },
    )
    .await?;
    metrics::counter!("sluice_trainer_jobs_started_total").increment(1);
    tracing::info!(job = %id, model = %request.model, dataset = %request.dataset, snapshot = %snapshot_id, "training job queued");
    Ok(id)
}
