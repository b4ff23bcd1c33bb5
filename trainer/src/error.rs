//! Everything a trainer HTTP handler can fail with, and the answer for each.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{db::DbError, http::ApiError, training::RunStatus};

use crate::jobs::StartError;

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A client mistake or a missing scope, already in the API's shape.
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("no training job has this id")]
    UnknownJob,
    #[error("the job is already {0}")]
    JobEnded(RunStatus),
}

impl TrainerError {
    fn to_api(&self) -> ApiError {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match self {
            Self::Refused(api) => api.clone(),
            Self::Db(err) => err.to_api(),
            Self::UnknownJob => ApiError::new(StatusCode::NOT_FOUND, "not_found", "No training job has this id."),
            Self::JobEnded(status) => ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("The job is already {status}; only queued or running jobs can be cancelled."),
            ),
            Self::Start(err) => match err {
                StartError::Invalid(message) => ApiError::new(unprocessable, "invalid_request", message.clone()),
                StartError::UnknownDataset(name) => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_dataset",
                    format!("Dataset {name:?} does not exist; push media to it first."),
                ),
                StartError::Unusable(message) => {
                    ApiError::new(unprocessable, "dataset_not_trainable", format!("{message}."))
                }
                StartError::Search(err) => ApiError::new(unprocessable, "invalid_search", format!("{err}.")),
                StartError::Db(err) if err.is_refusal() => ApiError::internal(err),
                StartError::Db(_) | StartError::Snapshot(_) | StartError::Registry(_) => {
                    ApiError::unavailable_because(err, "A dependency (PostgreSQL or S3) is unreachable; retry shortly.")
                }
                StartError::Forbidden(message) => {
                    ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("{message}."))
                }
                StartError::NothingNew(message) => {
                    ApiError::new(StatusCode::CONFLICT, "nothing_new", format!("{message}."))
                }
                StartError::Coalesced(job) => ApiError::new(
                    StatusCode::CONFLICT,
                    "job_busy",
                    format!("Training job {job} of this model is running or just ran; follow it instead."),
                ),
            },
        }
    }
}

impl IntoResponse for TrainerError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}
