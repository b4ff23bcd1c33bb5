//! How registry failures and bad path values become HTTP answers.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sluice_core::{
    db::DbError,
    http::ApiError,
    models::{AliasName, ModelName, RegistryError},
    outbox::RelayError,
};

/// A handler's failure: every cause converts into it, so handlers use `?`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryServiceError {
    /// Already an answer: a scope refusal or a request mistake found by the handler.
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl RegistryServiceError {
    /// The answer; 5xx are logged with their cause chain.
    pub(crate) fn to_api(&self) -> ApiError {
        match self {
            Self::Refused(err) => err.clone(),
            Self::Registry(err) => registry_answer(err),
            Self::Db(err) => err.to_api(),
        }
    }
}

impl IntoResponse for RegistryServiceError {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}

/// The answer for a failed registry call. An unknown version named in a request body is 422 (the
/// request is well-formed, the version it names does not exist); a version in the path answers
/// 404 in the handler.
fn registry_answer(err: &RegistryError) -> ApiError {
    match err {
        RegistryError::UnknownModel(name) => not_found("unknown_model", format!("No model named {name}.")),
        RegistryError::UnknownAlias { model, alias } => {
            not_found("unknown_alias", format!("Model {model} has no alias {alias}."))
        }
        RegistryError::UnknownVersion { model, version } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_version",
            format!("Model {model} has no version {version}; `GET /v1/models/{model}/versions` lists them."),
        ),
        RegistryError::TooManyAliases { .. } => {
            ApiError::new(StatusCode::CONFLICT, "too_many_aliases", format!("{}.", capitalised(&err.to_string())))
        }
        RegistryError::Invalid(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_version", format!("{message}."))
        }
        RegistryError::Db(db) => db.to_api(),
        RegistryError::Outbox(RelayError::TooLarge { .. })
        | RegistryError::MissingArtifact { .. }
        | RegistryError::Tampered { .. }
        | RegistryError::Corrupt(_) => ApiError::internal(err),
        RegistryError::S3(_) => {
            ApiError::unavailable_because(err, "The object store is unreachable; nothing was changed. Retry shortly.")
        }
        RegistryError::Outbox(_) => {
            ApiError::unavailable_because(err, "The database is unreachable; nothing was changed. Retry shortly.")
        }
    }
}

/// `text` with its first letter upper-cased, as API messages are written.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

pub(crate) fn not_found(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, code, message)
}

pub(crate) fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// A model name from the path: 400 when invalid, as ingest answers an invalid dataset name.
pub(crate) fn model_name(raw: &str) -> Result<ModelName, ApiError> {
    ModelName::parse(raw).map_err(|e| bad_request(format!("`model`: {}.", e.0)))
}

pub(crate) fn alias_name(raw: &str) -> Result<AliasName, ApiError> {
    AliasName::parse(raw).map_err(|e| bad_request(format!("`alias`: {}.", e.0)))
}

/// A version number from the path.
pub(crate) fn version_number(raw: &str) -> Result<i32, ApiError> {
    positive_version(raw.parse::<i32>().unwrap_or(0))
}

/// Versions are numbered from 1.
pub(crate) fn positive_version(version: i32) -> Result<i32, ApiError> {
    if version > 0 { Ok(version) } else { Err(bad_request("`version`: version numbers are positive integers.".into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(err: impl Into<RegistryServiceError>) -> (u16, &'static str, String) {
        let api = err.into().to_api();
        (api.status.as_u16(), api.code, api.message)
    }

    #[test]
    fn registry_failures_keep_their_status_code_and_message() {
        let unknown = RegistryError::UnknownVersion { model: "m".into(), version: 3 };
        assert_eq!(
            answer(unknown),
            (422, "unknown_version", "Model m has no version 3; `GET /v1/models/m/versions` lists them.".into())
        );
        assert_eq!(answer(RegistryError::UnknownModel("m".into())), (404, "unknown_model", "No model named m.".into()));
        let full = RegistryError::TooManyAliases { model: "m".into(), limit: 100 };
        assert_eq!(
            answer(full),
            (
                409,
                "too_many_aliases",
                "Model m already has 100 aliases, the most a model may have; remove one first.".into()
            )
        );
        assert_eq!(answer(RegistryError::Corrupt("x".into())).0, 500);
        let refused = bad_request("`reason`: at most 1000 characters.".into());
        assert_eq!(answer(refused), (400, "invalid_request", "`reason`: at most 1000 characters.".into()));
    }
}
