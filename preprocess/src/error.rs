//! How preprocess's HTTP failures become answers.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{db::DbError, domain::Invalid, http::ApiError};

/// A pipeline route's failure: every cause converts into it, so handlers use `?`.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// Already an answer: a scope refusal.
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error("invalid dataset name: {0}")]
    Dataset(Invalid),
    #[error("no dataset named {0}")]
    UnknownDataset(String),
    #[error("the pipeline spec is not a JSON object")]
    NotAnObject,
    /// The merged spec does not deserialise (an unknown field, a wrong type).
    #[error("the pipeline spec is not valid: {0}")]
    Malformed(serde_json::Error),
    /// A well-formed spec that breaks a rule (a size, a rate, the frame memory bound).
    #[error("the pipeline spec is refused: {0}")]
    InvalidSpec(Invalid),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl PreprocessError {
    /// The answer: 4xx for the request's mistakes; a database failure is [`DbError::to_api`]
    /// (500 when refused, 503 when unreachable, logged with its cause chain).
    pub fn to_api(&self) -> ApiError {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message);
        match self {
            Self::Refused(err) => err.clone(),
            Self::Dataset(e) => bad(format!("`dataset`: {e}.")),
            Self::UnknownDataset(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("No dataset is named {name}: upload or import media into it first."),
            ),
            Self::NotAnObject => bad("Send the pipeline spec as a JSON object.".into()),
            Self::Malformed(e) => bad(format!("The pipeline spec is not valid: {e}.")),
            Self::InvalidSpec(e) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", format!("{e}.")),
            Self::Db(err) => err.to_api(),
        }
    }
}

impl IntoResponse for PreprocessError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}
