//! Everything an inference handler can answer besides success, and the HTTP answer for each.
//!
//! Handlers return `Result<_, InferenceError>` and use `?`; `/v1` answers
//! `{"error": {"code", "message"}}` ([`ApiError`]), `/v2` the same status and message in the
//! Open Inference Protocol's `{"error": "..."}` ([`crate::v2::V2Error`]). 5xx answers are logged
//! with their whole cause chain.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{db::DbError, http::ApiError, models::RegistryError, s3::S3Error};

use crate::serving::ServeError;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// An answer already shaped: a client mistake, a missing scope, an unknown id (or an error
    /// already rendered, and logged, to count it in a metric).
    #[error(transparent)]
    Refused(#[from] ApiError),
    /// The model, alias or version cannot be served.
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// A registry read (a model's versions) failed.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// Object storage failed while a batch job was being submitted.
    #[error("object storage: {0}")]
    Storage(#[from] S3Error),
    /// The version's micro-batcher could not score the request.
    #[error("the model could not score the request: {0}")]
    Scoring(String),
    /// A blocking task (image preparation) panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<deadpool_postgres::PoolError> for InferenceError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Db(err.into())
    }
}

impl InferenceError {
    /// `400 invalid_request`: the request is malformed; `message` says how to fix it.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::refused(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::refused(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `404 unknown_model`, as the registry answers for a model that does not exist.
    pub fn unknown_model(model: &impl std::fmt::Display) -> Self {
        Self::refused(StatusCode::NOT_FOUND, "unknown_model", format!("No model named {model}."))
    }

    /// Any other client-facing refusal.
    pub fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused(ApiError::new(status, code, message))
    }

    /// The HTTP answer. A 5xx logs the whole cause chain, so call it once per error.
    pub fn to_api(&self) -> ApiError {
        match self {
            Self::Refused(answer) => answer.clone(),
            Self::Serve(err) => serve_answer(err),
            Self::Db(err) => {
                // Status, code and the logged chain from core; the message as inference always said it.
                let mut answer = err.to_api();
                if !err.is_refusal() {
                    answer.message = "The database is unreachable; retry shortly.".to_owned();
                }
                answer
            }
            Self::Registry(err) => ApiError::unavailable_because(err, "The registry is unreachable; retry shortly."),
            Self::Storage(err) => {
                ApiError::unavailable_because(err, "A dependency (PostgreSQL or S3) is unreachable; retry shortly.")
            }
            Self::Scoring(cause) => {
                ApiError::unavailable_because(self, format!("The model could not score the request: {cause}."))
            }
            Self::Task(err) => ApiError::internal(err),
        }
    }
}

fn serve_answer(err: &ServeError) -> ApiError {
    let message = format!("{err}.");
    match err {
        // The registry's codes for the same conditions.
        ServeError::UnknownModel(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_model", message),
        ServeError::UnknownAlias { .. } => ApiError::new(StatusCode::NOT_FOUND, "unknown_alias", message),
        ServeError::UnknownVersion { .. } => ApiError::new(StatusCode::NOT_FOUND, "unknown_version", message),
        ServeError::Unloadable { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "model_unloadable", message),
        ServeError::Unavailable(_) => {
            ApiError::unavailable_because(err, "The registry (PostgreSQL or S3) is unreachable; retry shortly.")
        }
    }
}

impl IntoResponse for InferenceError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_the_status_and_code_inference_answers_with() {
        let cases = [
            (InferenceError::invalid("x"), StatusCode::BAD_REQUEST, "invalid_request"),
            (InferenceError::not_found("x"), StatusCode::NOT_FOUND, "not_found"),
            (ServeError::UnknownModel("m".into()).into(), StatusCode::NOT_FOUND, "unknown_model"),
            (
                ServeError::UnknownAlias { model: "m".into(), alias: "a".into() }.into(),
                StatusCode::NOT_FOUND,
                "unknown_alias",
            ),
            (
                ServeError::UnknownVersion { model: "m".into(), version: 2 }.into(),
                StatusCode::NOT_FOUND,
                "unknown_version",
            ),
            (
                ServeError::Unloadable { model: "m".into(), version: 1, reason: "r".into() }.into(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "model_unloadable",
            ),
            (ServeError::Unavailable("down".into()).into(), StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable"),
            (InferenceError::Scoring("gone".into()), StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable"),
        ];
        for (err, status, code) in cases {
            let answer = err.to_api();
            assert_eq!((answer.status, answer.code), (status, code), "{err}");
        }
        let scoring = InferenceError::Scoring("the batcher stopped".into()).to_api();
        assert_eq!(scoring.message, "The model could not score the request: the batcher stopped.");
    }

    #[test]
    fn an_unavailable_answer_says_when_to_retry() {
        let response = InferenceError::Scoring("gone".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "5");
    }
}
